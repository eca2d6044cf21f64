//! `media-node`: parses the command line, installs logging, runs the node.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = media_node::Args::parse();
    media_node::init_process();
    media_node::run(args).await
}

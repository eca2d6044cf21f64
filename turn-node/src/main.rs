//! `turn-node`: parses the command line, installs logging, runs the node.

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = turn_node::Args::parse();
    turn_node::init_process();
    turn_node::run(args).await
}

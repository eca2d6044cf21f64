//! `turn-node`: parses the command line, installs logging, runs the node.

use clap::Parser;

/// mimalloc instead of glibc malloc: the relay allocates per packet, as the media node does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = turn_node::Args::parse();
    turn_node::init_process();
    turn_node::run(args).await
}

//! `turn-node`: parses the command line, installs logging, runs the node.

use fleet_proto::ids::NodeKind;

/// mimalloc instead of glibc malloc: the relay allocates per packet, as the media node does.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: turn_node::Args = fleet_node::parse_node_args(NodeKind::Turn);
    turn_node::init_process();
    turn_node::run(args).await
}

//! `media-node`: parses the command line, installs logging, runs the node.

use fleet_proto::ids::NodeKind;

/// mimalloc, as in `fleet` (which runs the same node as `fleet media-node`): the SFU allocates
/// per packet (RTP buffers, interceptor and channel items). Measured with the forwarding bench
/// (16 calls): glibc malloc/free were about 12% of the profile, yet the switch moved the CPU
/// per forwarded packet only within noise (41.3 → 40.8 µs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: media_node::Args = fleet_node::parse_node_args(NodeKind::Media);
    media_node::init_process();
    media_node::run(args).await
}

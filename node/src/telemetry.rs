//! The node's Prometheus metrics, kept in a recorder of its own.
//!
//! The recorder is never installed process-wide: node code records through
//! [`NodeMetrics::record`], so `run` can be called more than once in one process (tests, or the
//! controller's `fleet media-node` subcommand next to the controller's own recorder).

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};

use fleet_proto::ids::{NodeId, NodeKind};

/// A node's metrics registry; every series carries `node_id` and `kind` labels.
pub struct NodeMetrics {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
}

impl std::fmt::Debug for NodeMetrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeMetrics").finish_non_exhaustive()
    }
}

impl NodeMetrics {
    /// A fresh registry for one node.
    pub fn new(node_id: &NodeId, kind: NodeKind) -> Self {
        let recorder = PrometheusBuilder::new()
            .add_global_label("node_id", node_id.as_str())
            .add_global_label("kind", kind.as_str())
            .build_recorder();
        let handle = recorder.handle();
        Self { recorder, handle }
    }

    /// Runs `f` with this registry as the recorder for the `metrics` macros (on this thread).
    pub fn record<T>(&self, f: impl FnOnce() -> T) -> T {
        metrics::with_local_recorder(&self.recorder, f)
    }

    /// The Prometheus text exposition of everything recorded.
    pub fn render(&self) -> String {
        self.handle.render()
    }
}

//! The controller's side of the node link: turns QUIC link events into calls on the pure
//! [`Fleet`](fleet_core::Fleet) and routes command results back.

use std::sync::Arc;

use fleet_link::{CommandSender, ConnId, LinkHandler};
use fleet_proto::{Hello, NodeId, Report};

use crate::state::AppState;
use fleet_core::NodeStatus;

/// Sessions of a report applied per hold of the fleet lock (a few hundred microseconds).
const REPORT_STEP: usize = 500;

/// Feeds link events to the fleet.
pub struct LinkShell {
    pub state: Arc<AppState>,
}

impl LinkHandler for LinkShell {
    fn on_hello(&self, conn: ConnId, hello: &Hello, commands: CommandSender) -> Result<(), String> {
        let now = self.state.now();
        self.state
            .fleet()
            .on_hello(now, conn, hello)
            .map_err(|e| e.to_string())?;
        self.state.attach(hello.node_id.clone(), conn, commands);
        tracing::info!(node = %hello.node_id, kind = %hello.kind, region = %hello.region, "node connected");
        metrics::counter!("fleet_link_hellos_total").increment(1);
        Ok(())
    }

    fn on_report(&self, conn: ConnId, node: &NodeId, mut report: Report) {
        let now = self.state.now();
        let relay_started = std::mem::take(&mut report.relay_started);
        let notice = report.notice;
        let (noticed_before, mut applying) = {
            let mut fleet = self.state.fleet();
            let noticed_before = fleet.registry().get(node).and_then(|n| n.notice);
            (noticed_before, fleet.begin_report(now, conn, node, report))
        };
        // The node's previous session list is freed, and its session changes applied a step
        // at a time, with the lock released in between: placement never waits for a whole
        // busy report.
        drop(std::mem::take(&mut applying.replaced));
        while self
            .state
            .fleet()
            .continue_report(&mut applying, REPORT_STEP)
        {}
        if let Some(n) = notice
            && noticed_before.map(|b| b.kind) != Some(n.kind)
        {
            tracing::warn!(%node, notice = n.kind.as_str(), stops_at_unix_ms = ?n.at_unix_ms,
                "the cloud is taking the node's machine back: no new sessions there");
            metrics::counter!("fleet_machine_notices_total", "kind" => n.kind.as_str())
                .increment(1);
        }
        crate::demand::relay_started(&self.state, &relay_started);
        metrics::counter!("fleet_link_reports_total").increment(1);
    }

    fn on_command_result(&self, _conn: ConnId, node: &NodeId, id: u64, error: Option<String>) {
        let Some(pending) = self.state.take_pending(id) else {
            return;
        };
        let Some(error) = error else {
            return;
        };
        tracing::warn!(%node, %error, "node refused a command");
        self.state
            .fleet()
            .on_command_refused(node, &pending.command);
    }

    fn on_closed(&self, conn: ConnId, node: &NodeId, reason: &str) {
        let now = self.state.now();
        let died = {
            let mut fleet = self.state.fleet();
            let was_alive = fleet
                .registry()
                .get(node)
                .is_some_and(|n| n.status != NodeStatus::Dead);
            fleet.on_closed(now, conn, node);
            // A drained node leaving with no session left is the end of a drain, not a death.
            fleet
                .registry()
                .get(node)
                .filter(|n| was_alive && n.status == NodeStatus::Dead && !n.left_drained)
                .map(|n| (n.region.to_string(), n.kind))
        };
        if let Some((region, kind)) = died {
            crate::metrics::node_died(region, kind);
        }
        self.state.detach(node, conn);
        tracing::info!(%node, reason, "node link closed");
    }
}

//! The replay's policy turn: the live controller's autoscaler tick carried out as its shell
//! carries it out (`ours`), or the Kubernetes HPA baseline with a ReplicaSet's victims (`hpa`).

use std::sync::Arc;

use fleet_core::Now;
use fleet_core::autoscale::{Step, StepReason};
use fleet_proto::{NodeKind, NodeState};

use super::{Policy, World};
use crate::hpa::{HpaConfig, HpaPod, replica_set_victims};

impl World<'_> {
    /// The policy's turn.
    pub(super) fn scale(&mut self, now: Now) {
        match self.policy {
            Policy::Ours => self.scale_ours(now),
            Policy::Hpa(config) => self.scale_hpa(now, &config),
        }
    }

    /// The live controller's autoscaler tick, carried out as its shell does.
    fn scale_ours(&mut self, now: Now) {
        self.bookings.expire(now.unix_ms);
        let ticks = self.autoscaler.tick(
            now,
            &self.fleet,
            &self.machines,
            &self.bookings,
            &mut self.rng,
        );
        for tick in ticks {
            let Some(&p) = self.pool_of.get(&tick.pool) else {
                continue;
            };
            for (step, reason) in tick.steps {
                self.carry_out(now, p, step, reason);
            }
        }
    }

    fn carry_out(&mut self, now: Now, p: usize, step: Step, reason: StepReason) {
        match step {
            Step::Launch { nodes } => {
                self.count("launch", nodes.len() as u64);
                for f in nodes {
                    self.launch(p, f.node, f.zone, now);
                }
            }
            Step::Drain {
                node,
                deadline_unix_ms,
            } => {
                self.count("drain", 1);
                if let Ok(out) = self.fleet.drain(&node, deadline_unix_ms) {
                    self.deliver(now, vec![out]);
                }
            }
            Step::Undrain { node } => {
                self.count("undrain", 1);
                if let Ok(out) = self.fleet.undrain(&node) {
                    self.deliver(now, vec![out]);
                }
            }
            Step::Terminate { node, .. } => {
                self.count("terminate", 1);
                if let Some(&slot) = self.by_id.get(&node) {
                    self.terminate(now, slot, reason.as_str());
                }
            }
            Step::LaunchRefused { count, .. } => self.count("launch_refused", u64::from(count)),
        }
    }

    /// The HPA baseline over every pool.
    fn scale_hpa(&mut self, now: Now, config: &HpaConfig) {
        let mut by_pool: Vec<Vec<(usize, HpaPod)>> = vec![Vec::new(); self.keys.len()];
        for &slot in &self.active {
            let Some(n) = self.nodes[slot].as_ref().filter(|n| !n.terminating) else {
                continue;
            };
            let used = match self.keys[n.pool].kind {
                NodeKind::Media => n.core.capacity_used(),
                NodeKind::Turn => n.allocations,
            };
            let pod = HpaPod {
                id: n.id.clone(),
                ready: n.conn.is_some() && n.core.state() == NodeState::Serving,
                used,
                capacity: n.core.capacity_total(),
                created_ms: n.launched_ms,
            };
            by_pool[n.pool].push((slot, pod));
        }
        for (p, pods) in by_pool.into_iter().enumerate() {
            let policy = &self.setup.pools[p].1.policy;
            let (bounds, target) = ((policy.min, policy.max), policy.target_utilization);
            let list: Vec<HpaPod> = pods.iter().map(|(_, pod)| pod.clone()).collect();
            let desired = self.hpa[p].decide(config, now.mono_ms, &list, bounds, target) as usize;
            if desired > list.len() {
                let add = desired - list.len();
                self.count("launch", add as u64);
                let zones = Arc::clone(&self.setup.pools[p].1.zones);
                for i in 0..add {
                    let id = self.mint(&self.keys[p].clone());
                    let zone = zones.get((list.len() + i) % zones.len().max(1)).cloned();
                    self.launch(p, id, zone.unwrap_or_default(), now);
                }
            } else if desired < list.len() {
                for victim in replica_set_victims(&list, list.len() - desired) {
                    let Some(&slot) = self.by_id.get(&victim) else {
                        continue;
                    };
                    let ready = pods.iter().any(|(s, pod)| *s == slot && pod.ready);
                    if ready {
                        self.count("drain", 1);
                        if let Some(n) = self.nodes[slot].as_mut() {
                            // SIGTERM: the pod drains itself for its grace period.
                            n.core.drain(now.unix_ms + config.grace_ms);
                            n.terminating = true;
                            n.dirty = true;
                        }
                    } else {
                        self.count("terminate", 1);
                        self.terminate(now, slot, "scale_down");
                    }
                }
            }
        }
    }
}

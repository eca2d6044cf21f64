//! The baseline: the Kubernetes Horizontal Pod Autoscaler as documented (autoscaling/v2 with
//! its default behaviour), over one pool's pods, and the ReplicaSet's choice of which pods go
//! when it scales down. This is what an operator would run instead of the fleet's autoscaler,
//! so it is modelled here (not in `fleet-core`): utilization is its only signal (no bookings,
//! no unmet demand), and its victims are chosen without looking at live sessions.
//!
//! - Every `sync_ms` (15 s): usage ratio = (used / capacity over ready pods) / target; within
//!   the 0.1 tolerance nothing changes; else desired = ⌈ratio × ready pods⌉. When scaling up
//!   and some pods are not ready yet, those count as 0 % used and the ratio is recomputed over
//!   all pods; if that flips the direction or falls within tolerance, nothing changes
//!   (the replica calculator's rule for unready pods).
//! - Scale-up: at most max(100 %, 4 pods) more per 15 s period. Scale-down: the highest
//!   recommendation of the last 300 s (stabilization window), 100 % per period.
//! - Clamped to [min, max], min at least 1 (an HPA cannot scale from 0 replicas).
//! - Victims (ReplicaSet `ActivePodsWithRanks`, simplified to what differs here): pods not
//!   ready first, then the newest; sessions are ignored. A victim gets SIGTERM and drains for
//!   `terminationGracePeriodSeconds` (the default 18000 s is LiveKit's Helm chart's).

use std::collections::VecDeque;

use fleet_core::Millis;
use fleet_proto::NodeId;

/// The HPA's settings (Kubernetes defaults, LiveKit's grace period).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HpaConfig {
    /// `--horizontal-pod-autoscaler-sync-period`.
    pub sync_ms: Millis,
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub tolerance: f64,
    /// Scale-up policies: this percent of the current replicas, or this many pods, per period
    /// (whichever is more).
    pub up_percent: u32,
    pub up_pods: u32,
    /// Scale-down stabilization window.
    pub down_stabilization_ms: Millis,
    /// `terminationGracePeriodSeconds` of the pods, in ms.
    pub grace_ms: Millis,
}

impl Default for HpaConfig {
    fn default() -> Self {
        HpaConfig {
            sync_ms: 15_000,
            tolerance: 0.1,
            up_percent: 100,
            up_pods: 4,
            down_stabilization_ms: 300_000,
            grace_ms: 18_000_000,
        }
    }
}

/// One pod of the pool as the HPA and the ReplicaSet see it (terminating pods are not listed).
#[derive(Debug, Clone, PartialEq)]
pub struct HpaPod {
    pub id: NodeId,
    /// Ready (serving); a pod still booting is not.
    pub ready: bool,
    /// Capacity units used (the metric), and the pod's capacity (the "request").
    pub used: u64,
    pub capacity: u64,
    /// When the pod was created.
    pub created_ms: Millis,
}

/// One pool's HPA: the replica count it last set and its recent recommendations.
#[derive(Debug, Clone, Default)]
pub struct HpaScaler {
    /// (time, recommendation), oldest first, within the stabilization window.
    recommendations: VecDeque<(Millis, u32)>,
}

impl HpaScaler {
    /// The replica count the HPA sets at `now`, given the pool's current (non-terminating)
    /// pods, the bounds and the target utilization.
    pub fn decide(
        &mut self,
        config: &HpaConfig,
        now: Millis,
        pods: &[HpaPod],
        (min, max): (u32, u32),
        target: f64,
    ) -> u32 {
        let min = min.max(1);
        let max = max.max(min);
        let current = u32::try_from(pods.len()).unwrap_or(u32::MAX);
        let recommendation = recommend(config, pods, target).unwrap_or(current);
        self.recommendations.push_back((now, recommendation));
        while let Some(&(t, _)) = self.recommendations.front()
            && now.saturating_sub(t) > config.down_stabilization_ms
        {
            self.recommendations.pop_front();
        }
        // Scale-down stabilization: the highest recommendation of the window; scale-up acts on
        // the current one.
        let stabilized = if recommendation >= current {
            recommendation
        } else {
            let highest = self
                .recommendations
                .iter()
                .map(|&(_, r)| r)
                .max()
                .unwrap_or(recommendation);
            highest.min(current)
        };
        let up_limit = current
            .saturating_add(current.saturating_mul(config.up_percent) / 100)
            .max(current.saturating_add(config.up_pods));
        stabilized.min(up_limit).clamp(min, max)
    }
}

/// The replica calculator: the desired count from the pods' utilization, `None` without any
/// ready pod (no metrics: the HPA leaves the count alone).
fn recommend(config: &HpaConfig, pods: &[HpaPod], target: f64) -> Option<u32> {
    let ready: Vec<&HpaPod> = pods.iter().filter(|p| p.ready).collect();
    let capacity: u64 = ready.iter().map(|p| p.capacity).sum();
    if ready.is_empty() || capacity == 0 || target <= 0.0 {
        return None;
    }
    let used: u64 = ready.iter().map(|p| p.used).sum();
    let current = pods.len() as u32;
    let ratio = used as f64 / capacity as f64 / target;
    let unready = pods.len() - ready.len();
    let within = |r: f64| (r - 1.0).abs() <= config.tolerance;
    if unready == 0 || ratio <= 1.0 {
        if within(ratio) {
            return Some(current);
        }
        return Some(ceil_u32(ratio * ready.len() as f64));
    }
    // Scaling up with pods not ready yet: they count as using nothing.
    let per_pod = capacity as f64 / ready.len() as f64;
    let all = pods.len() as f64;
    let new_ratio = used as f64 / (per_pod * all) / target;
    if within(new_ratio) || new_ratio <= 1.0 {
        return Some(current);
    }
    Some(ceil_u32(new_ratio * all).max(current))
}

fn ceil_u32(x: f64) -> u32 {
    // Guard against 2.0000000001 becoming 3 from float noise.
    let x = (x - 1e-9).ceil();
    if x <= 0.0 {
        0
    } else if x >= f64::from(u32::MAX) {
        u32::MAX
    } else {
        x as u32
    }
}

/// The pods a ReplicaSet deletes to go down by `count`: not ready first, then the newest
/// (live sessions are not looked at).
pub fn replica_set_victims(pods: &[HpaPod], count: usize) -> Vec<NodeId> {
    let mut order: Vec<&HpaPod> = pods.iter().collect();
    order.sort_by(|a, b| {
        a.ready
            .cmp(&b.ready)
            .then(b.created_ms.cmp(&a.created_ms))
            .then(a.id.cmp(&b.id))
    });
    order
        .into_iter()
        .take(count)
        .map(|p| p.id.clone())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(i: usize, ready: bool, used: u64, created_ms: Millis) -> HpaPod {
        HpaPod {
            id: NodeId::parse(&format!("pod-{i}")).expect("id"),
            ready,
            used,
            capacity: 100,
            created_ms,
        }
    }

    fn pods(n: usize, used: u64) -> Vec<HpaPod> {
        (0..n).map(|i| pod(i, true, used, 0)).collect()
    }

    /// The documented step response: a jump in load scales up by at most max(100 %, 4 pods)
    /// per sync, load falling back scales down only after the 300 s window, and within the
    /// tolerance nothing moves.
    #[test]
    fn step_response_as_documented() {
        let c = HpaConfig::default();
        let mut hpa = HpaScaler::default();
        let bounds = (1, 50);
        // 2 pods at 50 % against a 50 % target: on target.
        assert_eq!(hpa.decide(&c, 0, &pods(2, 50), bounds, 0.5), 2);
        // 54 %: within the 0.1 tolerance (ratio 1.08).
        assert_eq!(hpa.decide(&c, 15_000, &pods(2, 54), bounds, 0.5), 2);
        // Load steps to 100 % (ratio 2): ⌈2 × 2⌉ = 4, within max(2 × 2, 2 + 4) = 6.
        assert_eq!(hpa.decide(&c, 30_000, &pods(2, 100), bounds, 0.5), 4);
        // 4 pods at 100 % of a 10 % target wants 40; the period allows max(8, 8) = 8.
        assert_eq!(hpa.decide(&c, 45_000, &pods(4, 100), bounds, 0.1), 8);
        // 8 pods, load gone (1 %): wants 1, but the window still holds the 8-pod
        // recommendations of the last 300 s... (the highest within the window, capped at current).
        assert_eq!(hpa.decide(&c, 60_000, &pods(8, 1), bounds, 0.5), 8);
        assert_eq!(hpa.decide(&c, 200_000, &pods(8, 1), bounds, 0.5), 8);
        // ...until they age out: 300 s after the last high recommendation (45 s).
        assert_eq!(hpa.decide(&c, 345_000, &pods(8, 1), bounds, 0.5), 8);
        assert_eq!(hpa.decide(&c, 346_000, &pods(8, 1), bounds, 0.5), 1);
        // Bounds hold.
        let mut hpa = HpaScaler::default();
        assert_eq!(hpa.decide(&c, 0, &pods(3, 100), (1, 4), 0.5), 4);
        assert_eq!(hpa.decide(&c, 0, &pods(1, 0), (0, 4), 0.5), 1);
    }

    /// Pods still booting count as idle when scaling up: no second round of launches for load
    /// the booting pods will take.
    #[test]
    fn unready_pods_count_as_idle_when_scaling_up() {
        let c = HpaConfig::default();
        let mut hpa = HpaScaler::default();
        // 2 ready pods at 80 % + 2 booting against a 50 % target: over all 4 pods the usage
        // is 40 %, below target, so nothing changes.
        let mut p = pods(2, 80);
        p.push(pod(2, false, 0, 10));
        p.push(pod(3, false, 0, 10));
        assert_eq!(hpa.decide(&c, 0, &p, (1, 50), 0.5), 4);
        // At 100 %: over 4 pods 50 % = target, within tolerance: still 4.
        for x in p.iter_mut().filter(|x| x.ready) {
            x.used = 100;
        }
        assert_eq!(hpa.decide(&c, 15_000, &p, (1, 50), 0.5), 4);
        // Without metrics (nothing ready) the count stays.
        let booting = vec![pod(0, false, 0, 0), pod(1, false, 0, 0)];
        assert_eq!(hpa.decide(&c, 30_000, &booting, (1, 50), 0.5), 2);
    }

    #[test]
    fn victims_are_unready_then_newest_whatever_they_host() {
        let p = vec![
            pod(0, true, 90, 100),
            pod(1, true, 0, 50),
            pod(2, false, 0, 10),
            pod(3, true, 10, 300),
        ];
        let ids: Vec<String> = replica_set_victims(&p, 3)
            .iter()
            .map(ToString::to_string)
            .collect();
        // The empty pod-1 is kept (oldest) while the busy pod-0 goes.
        assert_eq!(ids, vec!["pod-2", "pod-3", "pod-0"]);
    }
}

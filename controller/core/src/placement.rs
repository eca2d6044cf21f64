//! Placement decisions (DESIGN.md "Placement"): rank regions by the worse participant's
//! estimated RTT (ties favour headroom), then pick a SERVING node with room by
//! power-of-two-choices with a pack or spread preference; spill to the next region within an RTT
//! budget when the best one is full. TURN: the nearest region with healthy TURN nodes, per
//! participant. Pure functions over the [`Registry`]; randomness comes from the caller's RNG.

use fleet_geo::{Location, dot_to_km, estimate_rtt_ms};
use fleet_proto::{NodeId, NodeKind, RegionId};
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::registry::{Pool, Registry};
use super::{ConfigIssue, Millis};

/// Which of two candidate nodes wins.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// The emptier node: lower load per call, more room for a session to grow.
    #[default]
    Spread,
    /// The fuller node that still fits: fewer machines busy, emptier ones can be scaled down.
    Pack,
}

/// Placement tuning: the `[placement]` section of the controller's config file, as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    pub strategy: Strategy,
    /// How much worse (ms of estimated RTT) a spill region may be than the best region.
    pub rtt_budget_ms: f64,
    /// Regions whose estimated RTTs differ by less than this are a tie, broken by headroom.
    pub tie_ms: f64,
    /// How long placement holds capacity for a session its node has not reported.
    pub reservation_ttl_ms: Millis,
    /// Largest session.
    pub max_participants: usize,
    /// TURN nodes handed to each participant.
    pub turn_servers_per_participant: usize,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            strategy: Strategy::Spread,
            rtt_budget_ms: 100.0,
            tie_ms: 5.0,
            reservation_ttl_ms: 10_000,
            max_participants: 6,
            turn_servers_per_participant: 2,
        }
    }
}

impl PlacementConfig {
    /// Checks the ranges serde cannot.
    pub fn validate(&self) -> Result<(), ConfigIssue> {
        if !(self.rtt_budget_ms.is_finite() && self.rtt_budget_ms >= 0.0) {
            return Err(ConfigIssue::new("rtt_budget_ms", "expected a number >= 0"));
        }
        if !(self.tie_ms.is_finite() && self.tie_ms >= 0.0) {
            return Err(ConfigIssue::new("tie_ms", "expected a number >= 0"));
        }
        if !(100..=600_000).contains(&self.reservation_ttl_ms) {
            return Err(ConfigIssue::new(
                "reservation_ttl_ms",
                "expected 100..=600000",
            ));
        }
        if !(2..=64).contains(&self.max_participants) {
            return Err(ConfigIssue::new("max_participants", "expected 2..=64"));
        }
        if !(1..=8).contains(&self.turn_servers_per_participant) {
            return Err(ConfigIssue::new(
                "turn_servers_per_participant",
                "expected 1..=8",
            ));
        }
        Ok(())
    }
}

/// Why no node was chosen.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PlacementError {
    #[error("a session needs at least one participant")]
    NoParticipants,
    #[error("no serving media node in any region")]
    NoNodes,
    #[error(
        "no media node with room for the session within {budget_ms} ms of the best region ({preferred_region})"
    )]
    NoCapacity {
        preferred_region: RegionId,
        budget_ms: f64,
    },
}

/// A chosen media node.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Index of the node in the registry table.
    pub node_idx: u32,
    /// The region it is in.
    pub region_idx: usize,
    /// The best region for the participants, which may differ when full.
    pub preferred_region_idx: usize,
    /// Estimated RTT of the worse participant to the chosen region.
    pub worse_rtt_ms: f64,
}

impl Choice {
    /// Whether the session spilled out of its best region.
    pub fn spilled(&self) -> bool {
        self.region_idx != self.preferred_region_idx
    }
}

/// Placement over a region catalog, with the regions' unit vectors precomputed.
#[derive(Debug, Clone)]
pub struct Placer {
    config: PlacementConfig,
    region_vectors: Vec<[f64; 3]>,
}

thread_local! {
    /// Scratch space for region ranking, so a decision allocates nothing.
    static RANKED: std::cell::RefCell<Vec<(usize, f64)>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The dot product of unit vectors whose estimated RTT is `rtt_ms` (inverse of
/// `estimate_rtt_ms(dot_to_km(d))`), slightly loosened so rounding never drops a boundary region.
fn rtt_to_dot(rtt_ms: f64) -> f64 {
    let km =
        (rtt_ms - estimate_rtt_ms(0.0)).max(0.0) / (estimate_rtt_ms(1.0) - estimate_rtt_ms(0.0));
    let angle = km / fleet_geo::EARTH_RADIUS_KM;
    if angle >= std::f64::consts::PI {
        -1.0
    } else {
        angle.cos() - 1e-9
    }
}

#[inline]
fn dot(a: &[f64; 3], b: &[f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

impl Placer {
    /// A placer for the regions of `registry`'s catalog.
    pub fn new(config: PlacementConfig, registry: &Registry) -> Placer {
        let region_vectors = registry
            .catalog()
            .regions()
            .iter()
            .map(|r| r.location().unit_vector())
            .collect();
        Placer {
            config,
            region_vectors,
        }
    }

    /// The tuning in force.
    pub fn config(&self) -> &PlacementConfig {
        &self.config
    }

    /// Regions that have SERVING nodes of `kind`, best first: by the worse participant's
    /// estimated RTT, and by free capacity among regions within `tie_ms` of each other. Each
    /// entry is (region index, worse RTT in ms). Regions more than `horizon_ms` worse than the
    /// best are left out (they are never used), which keeps the cost to one dot product per
    /// region and participant plus a few `acos`.
    pub fn rank_regions(
        &self,
        registry: &Registry,
        kind: NodeKind,
        participants: &[[f64; 3]],
        horizon_ms: f64,
        out: &mut Vec<(usize, f64)>,
    ) {
        out.clear();
        for (r, v) in self.region_vectors.iter().enumerate() {
            if registry.pool(r, kind).serving.is_empty() {
                continue;
            }
            let worst = participants
                .iter()
                .map(|p| dot(p, v))
                .fold(f64::INFINITY, f64::min);
            out.push((r, worst));
        }
        // A larger dot product of unit vectors is a shorter great circle. Find the best, turn
        // the horizon into a dot-product threshold, and sort only the regions within it.
        let Some(max_dot) = out.iter().map(|e| e.1).reduce(f64::max) else {
            return;
        };
        let best = estimate_rtt_ms(dot_to_km(max_dot));
        let horizon = horizon_ms.max(self.config.tie_ms);
        let threshold = rtt_to_dot(best + horizon);
        out.retain(|e| e.1 >= threshold);
        for e in out.iter_mut() {
            e.1 = estimate_rtt_ms(dot_to_km(e.1));
        }
        out.sort_unstable_by(|a, b| a.1.total_cmp(&b.1));
        // Ties favour headroom: among the leading regions within tie_ms, more free capacity first.
        let tied = out
            .iter()
            .take_while(|e| e.1 - best < self.config.tie_ms)
            .count();
        if tied > 1 {
            out[..tied].sort_by(|a, b| {
                let fa = registry.pool(a.0, kind).free;
                let fb = registry.pool(b.0, kind).free;
                fb.cmp(&fa).then(a.1.total_cmp(&b.1))
            });
        }
    }

    /// Chooses a media node with room for `cost` for participants at `participants` (unit
    /// vectors), never `exclude`.
    pub fn choose_media(
        &self,
        registry: &Registry,
        participants: &[[f64; 3]],
        cost: u64,
        exclude: Option<&NodeId>,
        rng: &mut impl Rng,
    ) -> Result<Choice, PlacementError> {
        if participants.is_empty() {
            return Err(PlacementError::NoParticipants);
        }
        RANKED.with_borrow_mut(|ranked| {
            let budget = self.config.rtt_budget_ms;
            self.rank_regions(registry, NodeKind::Media, participants, budget, ranked);
            let Some(&(preferred, best_rtt)) = ranked.first() else {
                return Err(PlacementError::NoNodes);
            };
            let exclude_idx = exclude.and_then(|id| registry.index_of(id));
            for &(region, rtt) in ranked.iter() {
                if rtt > best_rtt + budget {
                    break;
                }
                let pool = registry.pool(region, NodeKind::Media);
                if pool.free < cost {
                    continue;
                }
                // On-demand nodes first; a spot node only when none of them fits.
                let split = pool.on_demand as usize;
                let picked = self
                    .pick_in_pool(pool, 0..split, cost, exclude_idx, rng)
                    .or_else(|| {
                        self.pick_in_pool(pool, split..pool.serving.len(), cost, exclude_idx, rng)
                    });
                if let Some(node_idx) = picked {
                    return Ok(Choice {
                        node_idx,
                        region_idx: region,
                        preferred_region_idx: preferred,
                        worse_rtt_ms: rtt,
                    });
                }
            }
            Err(PlacementError::NoCapacity {
                preferred_region: registry.catalog().regions()[preferred].id.clone(),
                budget_ms: budget,
            })
        })
    }

    /// Power-of-two-choices among the nodes at positions `range` of a pool's serving list that
    /// fit `cost`; a full scan only when random probes keep missing (a nearly full pool).
    fn pick_in_pool(
        &self,
        pool: &Pool,
        range: std::ops::Range<usize>,
        cost: u64,
        exclude: Option<u32>,
        rng: &mut impl Rng,
    ) -> Option<u32> {
        let n = range.len();
        let pool = PoolSlice {
            serving: &pool.serving[range.clone()],
            node_free: &pool.node_free[range],
        };
        let fits = |pos: usize| pool.node_free[pos] >= cost && Some(pool.serving[pos]) != exclude;
        let better = |a: usize, b: usize| -> usize {
            let (fa, fb) = (pool.node_free[a], pool.node_free[b]);
            match self.config.strategy {
                Strategy::Spread if fb > fa => b,
                Strategy::Pack if fb < fa => b,
                _ => a,
            }
        };
        match n {
            0 => return None,
            1 => return fits(0).then_some(pool.serving[0]),
            _ => {}
        }
        for _ in 0..4 {
            let i = rng.random_range(0..n);
            let mut j = rng.random_range(0..n - 1);
            if j >= i {
                j += 1;
            }
            match (fits(i), fits(j)) {
                (true, true) => return Some(pool.serving[better(i, j)]),
                (true, false) => return Some(pool.serving[i]),
                (false, true) => return Some(pool.serving[j]),
                (false, false) => {}
            }
        }
        (0..n)
            .filter(|&pos| fits(pos))
            .reduce(better)
            .map(|pos| pool.serving[pos])
    }

    /// TURN nodes for a participant at `location`: up to `turn_servers_per_participant` SERVING
    /// TURN nodes of the nearest region that has any, the less loaded first.
    pub fn choose_turn(
        &self,
        registry: &Registry,
        location: Location,
        rng: &mut impl Rng,
    ) -> Vec<u32> {
        let p = [location.unit_vector()];
        let Some(region) = RANKED.with_borrow_mut(|ranked| {
            self.rank_regions(registry, NodeKind::Turn, &p, 0.0, ranked);
            ranked.first().map(|e| e.0)
        }) else {
            return Vec::new();
        };
        let pool = registry.pool(region, NodeKind::Turn);
        let want = self
            .config
            .turn_servers_per_participant
            .min(pool.serving.len());
        let mut chosen: Vec<u32> = Vec::with_capacity(want);
        if pool.serving.len() <= want {
            chosen.extend_from_slice(&pool.serving);
        } else {
            let start = rng.random_range(0..pool.serving.len());
            let mut candidates: Vec<u32> = pool
                .serving
                .iter()
                .cycle()
                .skip(start)
                .take(pool.serving.len().min(want * 2))
                .copied()
                .collect();
            candidates.sort_by_key(|&i| std::cmp::Reverse(registry.at(i).free()));
            chosen.extend(candidates.into_iter().take(want));
        }
        chosen.sort_by_key(|&i| std::cmp::Reverse(registry.at(i).free()));
        chosen
    }
}

/// Some positions of a pool's serving list (one market's nodes) and their free capacity.
struct PoolSlice<'a> {
    serving: &'a [u32],
    node_free: &'a [u64],
}

//! Which market a pool's new node is bought on: on-demand for the predictable baseline, spot
//! (cheaper, reclaimable with two minutes' notice) above it where that is safe.
//!
//! A pool's [`MarketMix`] says how many nodes are always on-demand (`on_demand_base`) and which
//! share of the nodes above that base may be spot (`spot_share_above_base`), the split EC2's
//! own fleets use. A therapy call is critical, so a media pool's spot nodes are also capped to
//! its idle buffer (the nodes that `buffer_sessions` keeps free): placement gives them sessions
//! only when no on-demand node fits, and scale-down takes them first; TURN pools may be spot
//! up to their share (a participant gets several TURN servers, and a relay lost mid-call is
//! replaced by an ICE restart). The default mix is on-demand only.

use fleet_proto::{Market, NodeKind};
use serde::{Deserialize, Serialize};

/// A pool's split between markets.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct MarketMix {
    /// Nodes that are on-demand whatever the size.
    pub on_demand_base: u32,
    /// The share (0..=1) of the nodes above the base that may be spot.
    pub spot_share_above_base: f64,
}

impl MarketMix {
    /// Whether any node may be spot.
    pub fn uses_spot(&self) -> bool {
        self.spot_share_above_base > 0.0
    }

    /// The on-demand nodes a pool of `total` nodes keeps: the base, and the on-demand share of
    /// the nodes above it (rounded up: spot only where the share allows a whole node).
    pub fn on_demand_of(&self, total: u32) -> u32 {
        let above = total.saturating_sub(self.on_demand_base);
        let share = (1.0 - self.spot_share_above_base.clamp(0.0, 1.0)) * f64::from(above);
        // A share that is a whole number up to float noise stays that number.
        let on_demand_above = (share - 1e-9).ceil().max(0.0) as u32;
        total.min(self.on_demand_base) + on_demand_above.min(above)
    }
}

/// The markets of `count` new nodes for a pool of `kind` that has `on_demand` and `spot`
/// nodes (not counting draining ones), with at most `spot_cap` spot nodes in all (a media
/// pool's buffer; `u32::MAX` for no cap).
pub fn launch_markets(
    mix: &MarketMix,
    kind: NodeKind,
    mut on_demand: u32,
    mut spot: u32,
    spot_cap: u32,
    count: u32,
) -> Vec<Market> {
    let cap = match kind {
        NodeKind::Media => spot_cap,
        NodeKind::Turn => u32::MAX,
    };
    (0..count)
        .map(|_| {
            let total = on_demand + spot + 1;
            if mix.uses_spot() && on_demand >= mix.on_demand_of(total) && spot < cap {
                spot += 1;
                Market::Spot
            } else {
                on_demand += 1;
                Market::OnDemand
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mix(base: u32, share: f64) -> MarketMix {
        MarketMix {
            on_demand_base: base,
            spot_share_above_base: share,
        }
    }

    #[test]
    fn the_base_is_on_demand_and_the_share_above_it_spot() {
        let m = mix(2, 0.5);
        let got = launch_markets(&m, NodeKind::Turn, 0, 0, u32::MAX, 6);
        use Market::{OnDemand as O, Spot as S};
        assert_eq!(got, vec![O, O, O, S, O, S]);
        assert_eq!(m.on_demand_of(6), 4);
        assert_eq!(mix(0, 1.0).on_demand_of(5), 0);
        assert_eq!(mix(3, 1.0).on_demand_of(2), 2);
    }

    #[test]
    fn the_default_mix_is_on_demand_only() {
        let got = launch_markets(&MarketMix::default(), NodeKind::Turn, 3, 0, u32::MAX, 4);
        assert!(got.iter().all(|m| *m == Market::OnDemand));
    }

    #[test]
    fn a_media_pool_is_spot_only_up_to_its_buffer() {
        let m = mix(1, 1.0);
        let got = launch_markets(&m, NodeKind::Media, 1, 0, 1, 3);
        assert_eq!(got, vec![Market::Spot, Market::OnDemand, Market::OnDemand]);
        // A TURN pool has no such cap.
        let got = launch_markets(&m, NodeKind::Turn, 1, 0, 1, 3);
        assert!(got.iter().all(|m| *m == Market::Spot));
    }

    #[test]
    fn existing_nodes_count_toward_the_split() {
        // Two spot nodes already: the next ones restore the 50 % share.
        let got = launch_markets(&mix(0, 0.5), NodeKind::Turn, 0, 2, u32::MAX, 2);
        assert_eq!(got, vec![Market::OnDemand, Market::OnDemand]);
    }
}

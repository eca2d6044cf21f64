//! What the pools' machines cost per hour, and the caps that bound it.
//!
//! A pool's machines are priced from the config's price table (`[[prices]]`: per region and
//! kind, an on-demand and a spot price per machine-hour; spot falls back to on-demand). Every
//! machine that exists counts — serving, starting, draining, and launches not yet listed —
//! since each is billed until it is terminated. A launch that would take a pool past its
//! `max_hourly_cost`, or the fleet past `max_hourly_total`, is refused (the decision log says
//! which cap); the pool launches again once room appears (a node drained and terminated, or a
//! cap raised).

use fleet_proto::{Market, NodeKind, RegionId};

use super::pools::PoolKey;
use serde::Serialize;

/// The entry of a price table (`of` gives each entry's region, or `None` for every region,
/// and kind) that prices `key`'s machines: its region's own, else its kind's default.
pub fn price_entry<'a, T>(
    table: &'a [T],
    key: &PoolKey,
    of: impl Fn(&T) -> (Option<&RegionId>, NodeKind),
) -> Option<&'a T> {
    table
        .iter()
        .find(|e| of(e) == (Some(&key.region), key.kind))
        .or_else(|| table.iter().find(|e| of(e) == (None, key.kind)))
}

/// One pool's prices per machine-hour.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PoolPrices {
    /// 0 when the pool is not priced.
    pub on_demand: f64,
    /// Absent: spot machines cost the on-demand price (the cap stays safe).
    pub spot: Option<f64>,
}

impl PoolPrices {
    /// The hourly price of one machine bought on `market`.
    pub fn hourly(&self, market: Market) -> f64 {
        match market {
            Market::OnDemand => self.on_demand,
            Market::Spot => self.spot.unwrap_or(self.on_demand),
        }
    }
}

/// A pool's hourly cost, by market.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct PoolCost {
    pub on_demand: f64,
    pub spot: f64,
}

impl PoolCost {
    /// Both markets.
    pub fn total(&self) -> f64 {
        self.on_demand + self.spot
    }

    /// Adds one machine.
    pub fn add(&mut self, market: Market, hourly: f64) {
        match market {
            Market::OnDemand => self.on_demand += hourly,
            Market::Spot => self.spot += hourly,
        }
    }
}

/// Which cap refused a launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CostCap {
    /// The pool's `max_hourly_cost`.
    Pool,
    /// The fleet's `max_hourly_total`.
    Total,
}

/// The room left under the caps during one tick: launches take from it in the order they are
/// decided.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostBudget {
    /// The whole fleet's hourly cost so far.
    pub total: f64,
    pub total_cap: Option<f64>,
}

/// Small slack for float sums: a launch that exactly meets a cap is allowed.
const EPSILON: f64 = 1e-9;

impl CostBudget {
    /// Whether one more machine at `hourly` fits under the pool's cap (its cost so far
    /// `pool`) and the fleet's; if so it is counted.
    pub fn take(
        &mut self,
        pool: &mut PoolCost,
        pool_cap: Option<f64>,
        market: Market,
        hourly: f64,
    ) -> Result<(), (CostCap, f64, f64)> {
        if let Some(cap) = pool_cap
            && pool.total() + hourly > cap + EPSILON
        {
            return Err((CostCap::Pool, pool.total() + hourly, cap));
        }
        if let Some(cap) = self.total_cap
            && self.total + hourly > cap + EPSILON
        {
            return Err((CostCap::Total, self.total + hourly, cap));
        }
        pool.add(market, hourly);
        self.total += hourly;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launches_take_room_until_a_cap_refuses() {
        let prices = PoolPrices {
            on_demand: 1.0,
            spot: Some(0.25),
        };
        let mut budget = CostBudget {
            total: 3.0,
            total_cap: Some(5.0),
        };
        let mut pool = PoolCost {
            on_demand: 2.0,
            spot: 0.0,
        };
        // The pool's cap is 3.5: one on-demand machine fits, then two spot ones.
        let cap = Some(3.5);
        let on_demand = prices.hourly(Market::OnDemand);
        let spot = prices.hourly(Market::Spot);
        assert_eq!(
            budget.take(&mut pool, cap, Market::OnDemand, on_demand),
            Ok(())
        );
        assert_eq!(
            budget.take(&mut pool, cap, Market::OnDemand, on_demand),
            Err((CostCap::Pool, 4.0, 3.5))
        );
        assert_eq!(budget.take(&mut pool, cap, Market::Spot, spot), Ok(()));
        assert_eq!(budget.take(&mut pool, cap, Market::Spot, spot), Ok(()));
        assert_eq!(pool.total(), 3.5);
        // Now the fleet's total is 4.5: a pool without a cap is stopped by the total's.
        let mut other = PoolCost::default();
        assert_eq!(
            budget.take(&mut other, None, Market::OnDemand, on_demand),
            Err((CostCap::Total, 5.5, 5.0))
        );
        assert_eq!(budget.take(&mut other, None, Market::Spot, spot), Ok(()));
        assert_eq!(budget.total, 4.75);
    }

    #[test]
    fn spot_without_its_own_price_costs_on_demand() {
        let p = PoolPrices {
            on_demand: 0.3,
            spot: None,
        };
        assert_eq!(p.hourly(Market::Spot), 0.3);
    }
}

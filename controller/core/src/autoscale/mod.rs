//! Autoscaling decisions (DESIGN.md "Autoscaling"), pure: each (region, kind) pool has a
//! [`PoolPolicy`]; a [`PoolScaler`] turns the pool's nodes and its demand signals into a
//! [`Decision`] (the size it should have and the launches, undrains, drains and terminations
//! that get it there, each with its reason and inputs). Schedules ([`schedule`]) and bookings
//! ([`bookings`]) feed the demand. The controller's scaler loop carries decisions out through a
//! pool provider; the trace simulator replays demand through the same functions.

pub mod bookings;
pub mod cost;
pub mod decide;
pub mod markets;
pub mod policy;
pub mod pools;
pub mod schedule;
pub mod victims;

pub use bookings::{Booking, BookingBook, BookingError};
pub use cost::{CostBudget, CostCap, PoolCost, PoolPrices, price_entry};
pub use decide::{Action, Decision, Demand, Inputs, PoolNode, PoolNodeState, PoolScaler, Reason};
pub use markets::{MarketMix, launch_markets};
pub use policy::{PolicyPatch, PoolPolicy};
pub use pools::{
    Autoscaler, InFlight, Machine, PoolKey, PoolSetup, PoolState, PoolTick, Step, StepReason,
    WalkInRate,
};
pub use schedule::{ScheduleRule, floor_at, time_zone};

#[cfg(test)]
mod tests;

//! `fleet_geo`: where things are and how far apart.
//!
//! * [`Location`]: a validated latitude/longitude.
//! * [`great_circle_km`], [`estimate_rtt_ms`], [`dot_to_km`]: distance and the RTT model used to
//!   rank regions.
//! * [`RegionCatalog`]: the regions, lookup by id and the nearest region to a point.
//! * [`GeoIp`]: IP address to location through a MaxMind DB (MaxMind City or DB-IP flat schema).
//!
//! Tests build their own databases with the `.mmdb` writer in `fleet-testkit`.

mod catalog;
mod distance;
mod error;
mod geoip;
mod location;

pub use catalog::{RegionCatalog, RegionInfo};
pub use distance::{
    EARTH_RADIUS_KM, FIBRE_KM_PER_MS, LAST_MILE_RTT_MS, ROUTE_STRETCH, dot_to_km, estimate_rtt_ms,
    great_circle_km,
};
pub use error::GeoError;
pub use geoip::{GeoIp, IpLocation, truncate_ip};
pub use location::Location;

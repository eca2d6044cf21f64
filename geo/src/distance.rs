//! Great-circle distance and the round-trip-time model used to rank regions.

use crate::location::Location;

/// Mean Earth radius in kilometres (IUGG), used by every distance here.
pub const EARTH_RADIUS_KM: f64 = 6371.0;

/// Fixed last-mile cost in milliseconds added to every RTT estimate (access network, NAT,
/// Wi-Fi, the node's own queues).
pub const LAST_MILE_RTT_MS: f64 = 4.0;

/// How much longer real fibre routes are than the great circle between their ends.
pub const ROUTE_STRETCH: f64 = 1.5;

/// Speed of light in fibre in kilometres per millisecond (about 2/3 of c: 200,000 km/s).
pub const FIBRE_KM_PER_MS: f64 = 200.0;

/// Great-circle distance in kilometres between two points (haversine formula, Earth radius
/// [`EARTH_RADIUS_KM`]).
pub fn great_circle_km(a: Location, b: Location) -> f64 {
    let (lat1, lat2) = (a.lat.to_radians(), b.lat.to_radians());
    let d_lat = lat2 - lat1;
    let d_lon = (b.lon - a.lon).to_radians();
    let h = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
    // Rounding can push `h` a hair outside 0..=1 for antipodal points.
    2.0 * EARTH_RADIUS_KM * h.clamp(0.0, 1.0).sqrt().asin()
}

/// Estimated round-trip time in milliseconds for a path whose great-circle length is `km`.
///
/// The model: light in fibre travels about 200,000 km/s ([`FIBRE_KM_PER_MS`]), real routes are
/// about 1.5 times longer than the great circle ([`ROUTE_STRETCH`]), the signal goes there and
/// back, and every path pays a fixed 4 ms of last mile ([`LAST_MILE_RTT_MS`]):
///
/// `rtt_ms = 4.0 + 2.0 * km * 1.5 / 200.0`
///
/// So 1,000 km is about 19 ms and London to Kampala (about 6,500 km) about 102 ms. It is a
/// ranking heuristic, monotonic in distance, not a measurement. Negative or NaN distances count
/// as zero.
pub fn estimate_rtt_ms(km: f64) -> f64 {
    let km = km.max(0.0);
    LAST_MILE_RTT_MS + 2.0 * km * ROUTE_STRETCH / FIBRE_KM_PER_MS
}

/// Converts the dot product of two unit vectors (see [`Location::unit_vector`]) to the
/// great-circle distance in kilometres between their points.
///
/// The dot product is clamped to -1..=1 before `acos`, so rounding never produces NaN. Callers
/// can rank candidates by dot product (larger is nearer) and convert only the winners.
pub fn dot_to_km(dot: f64) -> f64 {
    EARTH_RADIUS_KM * dot.clamp(-1.0, 1.0).acos()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loc(lat: f64, lon: f64) -> Location {
        Location::new(lat, lon).expect("valid test coordinates")
    }

    const LONDON: (f64, f64) = (51.5074, -0.1278);
    const KAMPALA: (f64, f64) = (0.3476, 32.5825);
    const DUBLIN: (f64, f64) = (53.3498, -6.2603);

    #[test]
    fn london_kampala() {
        let km = great_circle_km(loc(LONDON.0, LONDON.1), loc(KAMPALA.0, KAMPALA.1));
        assert!((6400.0..=6700.0).contains(&km), "{km}");
    }

    #[test]
    fn dublin_london() {
        let km = great_circle_km(loc(DUBLIN.0, DUBLIN.1), loc(LONDON.0, LONDON.1));
        assert!((440.0..=480.0).contains(&km), "{km}");
    }

    #[test]
    fn antipodes_are_half_the_circumference() {
        let km = great_circle_km(loc(10.0, 20.0), loc(-10.0, -160.0));
        assert!((km - 20_015.0).abs() < 2.0, "{km}");
        let poles = great_circle_km(loc(90.0, 0.0), loc(-90.0, 0.0));
        assert!((poles - 20_015.0).abs() < 2.0, "{poles}");
    }

    #[test]
    fn distance_is_symmetric_and_zero_to_self() {
        let (a, b) = (loc(LONDON.0, LONDON.1), loc(KAMPALA.0, KAMPALA.1));
        assert!((great_circle_km(a, b) - great_circle_km(b, a)).abs() < 1e-9);
        assert_eq!(great_circle_km(a, a), 0.0);
    }

    #[test]
    fn dot_product_path_matches_haversine() {
        let pairs = [
            (loc(LONDON.0, LONDON.1), loc(KAMPALA.0, KAMPALA.1)),
            (loc(DUBLIN.0, DUBLIN.1), loc(LONDON.0, LONDON.1)),
            (loc(-33.87, 151.21), loc(40.71, -74.0)),
        ];
        for (a, b) in pairs {
            let (u, v) = (a.unit_vector(), b.unit_vector());
            let dot = u[0] * v[0] + u[1] * v[1] + u[2] * v[2];
            let km = dot_to_km(dot);
            let expected = great_circle_km(a, b);
            assert!((km - expected).abs() < 0.01, "{km} vs {expected}");
        }
    }

    #[test]
    fn dot_to_km_clamps_rounding_errors() {
        assert_eq!(dot_to_km(1.000_000_001), 0.0);
        let far = dot_to_km(-1.000_000_001);
        assert!((far - std::f64::consts::PI * EARTH_RADIUS_KM).abs() < 1e-9);
    }

    #[test]
    fn rtt_follows_the_documented_model_and_is_monotonic() {
        assert_eq!(estimate_rtt_ms(0.0), 4.0);
        assert!((estimate_rtt_ms(1000.0) - 19.0).abs() < 1e-9);
        assert_eq!(estimate_rtt_ms(-5.0), 4.0);
        assert_eq!(estimate_rtt_ms(f64::NAN), 4.0);
        let mut previous = estimate_rtt_ms(0.0);
        for step in 1..=400 {
            let rtt = estimate_rtt_ms(f64::from(step) * 50.0);
            assert!(rtt > previous, "not increasing at {step}");
            previous = rtt;
        }
    }
}

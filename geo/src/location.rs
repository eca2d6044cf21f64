//! A validated point on the Earth's surface (degrees, WGS 84 style latitude/longitude).

use serde::{Deserialize, Serialize};

use crate::error::GeoError;

/// A point on the Earth: latitude in -90..=90 and longitude in -180..=180 degrees, both finite.
///
/// [`Location::new`] validates; deserializing (for example from a JSON API body) validates the
/// same way, so a `Location` that came from outside is always in range. The fields stay public
/// for cheap reads and for code that builds locations from trusted constants.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedLocation")]
pub struct Location {
    /// Latitude in degrees, positive north.
    pub lat: f64,
    /// Longitude in degrees, positive east.
    pub lon: f64,
}

/// The wire shape of a [`Location`] before validation.
#[derive(Deserialize)]
struct UncheckedLocation {
    lat: f64,
    lon: f64,
}

impl TryFrom<UncheckedLocation> for Location {
    type Error = GeoError;

    fn try_from(raw: UncheckedLocation) -> Result<Self, Self::Error> {
        Location::new(raw.lat, raw.lon)
    }
}

/// Checks one coordinate: finite and inside `min..=max`.
fn check(field: &'static str, value: f64, min: f64, max: f64) -> Result<f64, GeoError> {
    if value.is_finite() && (min..=max).contains(&value) {
        Ok(value)
    } else {
        Err(GeoError::InvalidCoordinate {
            field,
            value,
            min,
            max,
        })
    }
}

impl Location {
    /// Validates latitude (-90..=90) and longitude (-180..=180), both finite; the error names the
    /// bad field and value.
    pub fn new(lat: f64, lon: f64) -> Result<Location, GeoError> {
        let lat = check("latitude", lat, -90.0, 90.0)?;
        let lon = check("longitude", lon, -180.0, 180.0)?;
        Ok(Location { lat, lon })
    }

    /// Unit vector `(x, y, z)` of this point on the unit sphere.
    ///
    /// The dot product of two unit vectors is the cosine of the angle between the points, so
    /// ranking candidates by descending dot product ranks them by ascending great-circle distance
    /// without any trigonometry per comparison (see [`crate::dot_to_km`]).
    pub fn unit_vector(&self) -> [f64; 3] {
        let (lat, lon) = (self.lat.to_radians(), self.lon.to_radians());
        let (sin_lat, cos_lat) = lat.sin_cos();
        let (sin_lon, cos_lon) = lon.sin_cos();
        [cos_lat * cos_lon, cos_lat * sin_lon, sin_lat]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_valid_and_boundary_values() {
        for (lat, lon) in [(0.0, 0.0), (90.0, 180.0), (-90.0, -180.0), (51.5, -0.12)] {
            let loc = Location::new(lat, lon).expect("valid coordinates");
            assert_eq!((loc.lat, loc.lon), (lat, lon));
        }
    }

    #[test]
    fn rejects_nan_infinite_and_out_of_range() {
        let cases = [
            (f64::NAN, 0.0, "latitude"),
            (0.0, f64::NAN, "longitude"),
            (f64::INFINITY, 0.0, "latitude"),
            (0.0, f64::NEG_INFINITY, "longitude"),
            (90.0001, 0.0, "latitude"),
            (-91.0, 0.0, "latitude"),
            (0.0, 180.5, "longitude"),
            (0.0, -181.0, "longitude"),
        ];
        for (lat, lon, bad) in cases {
            match Location::new(lat, lon) {
                Err(GeoError::InvalidCoordinate { field, .. }) => {
                    assert_eq!(field, bad, "({lat}, {lon})");
                }
                other => panic!("({lat}, {lon}) should be rejected, got {other:?}"),
            }
        }
    }

    #[test]
    fn error_message_names_field_and_value() {
        let err = Location::new(95.5, 0.0).expect_err("out of range");
        let msg = err.to_string();
        assert!(msg.contains("latitude"), "{msg}");
        assert!(msg.contains("95.5"), "{msg}");
    }

    #[test]
    fn unit_vector_has_length_one_and_known_axes() {
        let v = Location::new(12.3, -45.6).expect("valid").unit_vector();
        let len = (v[0] * v[0] + v[1] * v[1] + v[2] * v[2]).sqrt();
        assert!((len - 1.0).abs() < 1e-12, "length {len}");
        let north = Location::new(90.0, 0.0).expect("valid").unit_vector();
        assert!((north[2] - 1.0).abs() < 1e-12);
        let east = Location::new(0.0, 90.0).expect("valid").unit_vector();
        assert!((east[1] - 1.0).abs() < 1e-12);
    }

    #[test]
    fn deserializing_validates() {
        let ok: Location = serde_json::from_str(r#"{"lat": 0.35, "lon": 32.58}"#).expect("valid");
        assert_eq!(ok, Location::new(0.35, 32.58).expect("valid"));
        let err = serde_json::from_str::<Location>(r#"{"lat": 0.0, "lon": 200.0}"#)
            .expect_err("longitude out of range");
        assert!(err.to_string().contains("longitude"), "{err}");
        let back = serde_json::to_string(&ok).expect("serialize");
        assert_eq!(back, r#"{"lat":0.35,"lon":32.58}"#);
    }
}

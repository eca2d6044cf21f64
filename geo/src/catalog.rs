//! The region catalog: which regions exist, where they are, and which is nearest to a point.

use std::collections::HashMap;

use fleet_proto::RegionId;
use serde::{Deserialize, Serialize};

use crate::error::GeoError;
use crate::location::Location;

/// One region: an id such as `eu-west-2`, a human name and the coordinates of its city.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RegionInfo {
    /// Id: 1 to 32 characters of `a-z`, `0-9` and `-` (checked when it is parsed).
    pub id: RegionId,
    /// Human-readable name, for example `Europe (London)`.
    pub name: String,
    /// Latitude in degrees.
    pub lat: f64,
    /// Longitude in degrees.
    pub lon: f64,
    /// The region's IANA time zone (schedules are in local time), e.g. `Europe/London`;
    /// UTC when not given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
}

impl RegionInfo {
    /// The region's coordinates as a [`Location`] (not re-validated: a [`RegionCatalog`] has
    /// already checked them).
    pub fn location(&self) -> Location {
        Location {
            lat: self.lat,
            lon: self.lon,
        }
    }
}

/// A validated, ordered list of regions with lookup by id and nearest-region search.
#[derive(Debug, Clone)]
pub struct RegionCatalog {
    regions: Vec<RegionInfo>,
    by_id: HashMap<RegionId, usize>,
    /// Unit vectors of `regions`, same order, for dot-product nearest search.
    units: Vec<[f64; 3]>,
}

fn dot(a: [f64; 3], b: [f64; 3]) -> f64 {
    a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
}

impl RegionCatalog {
    /// Validates the list: non-empty, ids unique (their form is checked by [`RegionId`]),
    /// coordinates finite and in range. Errors name the region and the field.
    pub fn new(regions: Vec<RegionInfo>) -> Result<RegionCatalog, GeoError> {
        if regions.is_empty() {
            return Err(GeoError::EmptyCatalog);
        }
        let mut by_id = HashMap::with_capacity(regions.len());
        let mut units = Vec::with_capacity(regions.len());
        for (position, region) in regions.iter().enumerate() {
            let location = Location::new(region.lat, region.lon).map_err(|err| {
                let field = match &err {
                    GeoError::InvalidCoordinate {
                        field: "longitude", ..
                    } => "lon",
                    _ => "lat",
                };
                GeoError::InvalidRegion {
                    region: region.id.to_string(),
                    field,
                    reason: err.to_string(),
                }
            })?;
            if let Some(first) = by_id.insert(region.id.clone(), position) {
                return Err(GeoError::DuplicateRegion {
                    id: region.id.to_string(),
                    first,
                    second: position,
                });
            }
            units.push(location.unit_vector());
        }
        Ok(RegionCatalog {
            regions,
            by_id,
            units,
        })
    }

    /// The region with this id.
    pub fn get(&self, id: &(impl AsRef<str> + ?Sized)) -> Option<&RegionInfo> {
        self.index_of(id).and_then(|i| self.regions.get(i))
    }

    /// Position of the region with this id in [`RegionCatalog::regions`].
    pub fn index_of(&self, id: &(impl AsRef<str> + ?Sized)) -> Option<usize> {
        self.by_id.get(id.as_ref()).copied()
    }

    /// All regions, in the order given to [`RegionCatalog::new`].
    pub fn regions(&self) -> &[RegionInfo] {
        &self.regions
    }

    /// Number of regions (never zero).
    pub fn len(&self) -> usize {
        self.regions.len()
    }

    /// Always `false`: a catalog holds at least one region.
    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }

    /// Unit vectors of the regions, same order as [`RegionCatalog::regions`], for callers that
    /// rank regions by dot product.
    pub fn unit_vectors(&self) -> &[[f64; 3]] {
        &self.units
    }

    /// The region nearest to `loc` by great-circle distance; on an exact tie the earlier one in
    /// the list.
    pub fn nearest(&self, loc: Location) -> &RegionInfo {
        let target = loc.unit_vector();
        let mut best = 0;
        let mut best_dot = f64::NEG_INFINITY;
        for (i, unit) in self.units.iter().enumerate() {
            let d = dot(*unit, target);
            if d > best_dot {
                best = i;
                best_dot = d;
            }
        }
        // `best` is always a valid index: the catalog is never empty.
        &self.regions[best]
    }
}

/// The default regions: AWS region ids placed at the coordinates of their cities.
const DEFAULT_REGIONS: &[(&str, &str, f64, f64, &str)] = &[
    (
        "af-south-1",
        "Africa (Cape Town)",
        -33.9249,
        18.4241,
        "Africa/Johannesburg",
    ),
    (
        "eu-west-1",
        "Europe (Ireland)",
        53.3498,
        -6.2603,
        "Europe/Dublin",
    ),
    (
        "eu-west-2",
        "Europe (London)",
        51.5074,
        -0.1278,
        "Europe/London",
    ),
    (
        "eu-central-1",
        "Europe (Frankfurt)",
        50.1109,
        8.6821,
        "Europe/Berlin",
    ),
    (
        "eu-north-1",
        "Europe (Stockholm)",
        59.3293,
        18.0686,
        "Europe/Stockholm",
    ),
    (
        "me-central-1",
        "Middle East (UAE)",
        25.2048,
        55.2708,
        "Asia/Dubai",
    ),
    (
        "us-east-1",
        "US East (N. Virginia)",
        39.0438,
        -77.4874,
        "America/New_York",
    ),
    (
        "us-east-2",
        "US East (Ohio)",
        39.9612,
        -82.9988,
        "America/New_York",
    ),
    (
        "us-west-2",
        "US West (Oregon)",
        45.8399,
        -119.7006,
        "America/Los_Angeles",
    ),
    (
        "ca-central-1",
        "Canada (Central)",
        45.5019,
        -73.5674,
        "America/Toronto",
    ),
    (
        "sa-east-1",
        "South America (Sao Paulo)",
        -23.5505,
        -46.6333,
        "America/Sao_Paulo",
    ),
    (
        "ap-south-1",
        "Asia Pacific (Mumbai)",
        19.0760,
        72.8777,
        "Asia/Kolkata",
    ),
    (
        "ap-southeast-1",
        "Asia Pacific (Singapore)",
        1.3521,
        103.8198,
        "Asia/Singapore",
    ),
    (
        "ap-northeast-1",
        "Asia Pacific (Tokyo)",
        35.6762,
        139.6503,
        "Asia/Tokyo",
    ),
    (
        "ap-southeast-2",
        "Asia Pacific (Sydney)",
        -33.8688,
        151.2093,
        "Australia/Sydney",
    ),
    (
        "ap-east-1",
        "Asia Pacific (Hong Kong)",
        22.3193,
        114.1694,
        "Asia/Hong_Kong",
    ),
];

impl Default for RegionCatalog {
    /// Sixteen AWS regions at their cities: Cape Town, Dublin, London, Frankfurt, Stockholm,
    /// Dubai (UAE), Ashburn (N. Virginia), Columbus (Ohio), Boardman (Oregon), Montreal,
    /// Sao Paulo, Mumbai, Singapore, Tokyo, Sydney and Hong Kong.
    fn default() -> Self {
        // Built directly (the constants are checked by a unit test: all 16 parse), so this
        // cannot fail.
        let regions: Vec<RegionInfo> = DEFAULT_REGIONS
            .iter()
            .filter_map(|&(id, name, lat, lon, tz)| {
                Some(RegionInfo {
                    id: RegionId::parse(id).ok()?,
                    name: name.to_owned(),
                    lat,
                    lon,
                    time_zone: Some(tz.to_owned()),
                })
            })
            .collect();
        let by_id = regions
            .iter()
            .enumerate()
            .map(|(i, r)| (r.id.clone(), i))
            .collect();
        let units = regions.iter().map(|r| r.location().unit_vector()).collect();
        RegionCatalog {
            regions,
            by_id,
            units,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(id: &str, lat: f64, lon: f64) -> RegionInfo {
        RegionInfo {
            id: RegionId::parse(id).expect("valid test region id"),
            name: format!("Region {id}"),
            lat,
            lon,
            time_zone: None,
        }
    }

    fn loc(lat: f64, lon: f64) -> Location {
        Location::new(lat, lon).expect("valid test coordinates")
    }

    #[test]
    fn default_catalog_passes_validation() {
        let default = RegionCatalog::default();
        let validated = RegionCatalog::new(default.regions().to_vec()).expect("defaults are valid");
        assert_eq!(validated.len(), 16);
        assert_eq!(default.len(), 16);
        assert!(!default.is_empty());
        for (i, r) in default.regions().iter().enumerate() {
            assert_eq!(default.index_of(&r.id), Some(i));
            assert_eq!(validated.index_of(&r.id), Some(i));
        }
        assert_eq!(default.unit_vectors(), validated.unit_vectors());
    }

    #[test]
    fn default_catalog_has_the_named_regions() {
        let catalog = RegionCatalog::default();
        let london = catalog.get("eu-west-2").expect("london");
        assert!((london.lat - 51.5).abs() < 0.1 && (london.lon + 0.13).abs() < 0.1);
        let sydney = catalog.get("ap-southeast-2").expect("sydney");
        assert!(sydney.lat < -33.0 && sydney.lon > 151.0);
        assert!(catalog.get("mars-east-1").is_none());
        assert_eq!(catalog.index_of("af-south-1"), Some(0));
    }

    #[test]
    fn nearest_picks_the_closest_city() {
        let catalog = RegionCatalog::default();
        let cases = [
            ((0.3476, 32.5825), "me-central-1"), // Kampala: Dubai ~3,600 km, Cape Town ~4,000 km
            ((48.8566, 2.3522), "eu-west-2"),    // Paris
            ((52.52, 13.405), "eu-central-1"),   // Berlin
            ((40.7128, -74.006), "us-east-1"),   // New York
            ((47.6062, -122.3321), "us-west-2"), // Seattle
            ((-34.6037, -58.3816), "sa-east-1"), // Buenos Aires
            ((-37.8136, 144.9631), "ap-southeast-2"), // Melbourne
            ((37.5665, 126.978), "ap-northeast-1"), // Seoul
            ((13.7563, 100.5018), "ap-southeast-1"), // Bangkok
            ((-26.2041, 28.0473), "af-south-1"), // Johannesburg
            ((53.3498, -6.2603), "eu-west-1"),   // Dublin itself
        ];
        for ((lat, lon), expected) in cases {
            assert_eq!(
                catalog.nearest(loc(lat, lon)).id,
                expected,
                "({lat}, {lon})"
            );
        }
    }

    #[test]
    fn nearest_prefers_the_earlier_region_on_a_tie() {
        let catalog =
            RegionCatalog::new(vec![region("b", 0.0, 10.0), region("a", 0.0, -10.0)]).expect("ok");
        assert_eq!(catalog.nearest(loc(0.0, 0.0)).id, "b");
    }

    #[test]
    fn rejects_empty_catalog() {
        assert!(matches!(
            RegionCatalog::new(Vec::new()),
            Err(GeoError::EmptyCatalog)
        ));
    }

    #[test]
    fn rejects_duplicate_ids() {
        let err = RegionCatalog::new(vec![
            region("eu-west-1", 53.0, -6.0),
            region("us-east-1", 39.0, -77.0),
            region("eu-west-1", 51.0, 0.0),
        ])
        .expect_err("duplicate");
        match &err {
            GeoError::DuplicateRegion { id, first, second } => {
                assert_eq!((id.as_str(), *first, *second), ("eu-west-1", 0, 2));
            }
            other => panic!("wrong error {other:?}"),
        }
        assert!(err.to_string().contains("eu-west-1"));
    }

    #[test]
    fn rejects_bad_coordinates_naming_region_and_field() {
        let err = RegionCatalog::new(vec![region("ok-1", 0.0, 0.0), region("north-x", 91.0, 0.0)])
            .expect_err("bad lat");
        match &err {
            GeoError::InvalidRegion { region, field, .. } => {
                assert_eq!((region.as_str(), *field), ("north-x", "lat"));
            }
            other => panic!("wrong error {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("north-x") && msg.contains("91"), "{msg}");

        let err = RegionCatalog::new(vec![region("east-x", 0.0, f64::NAN)]).expect_err("bad lon");
        assert!(matches!(err, GeoError::InvalidRegion { field: "lon", .. }));
    }

    #[test]
    fn rejects_bad_ids_when_read() {
        let long = "a".repeat(33);
        for bad in ["", "EU-West-1", "eu_west_1", "eu west", "é", long.as_str()] {
            let json = format!(r#"{{"id": "{bad}", "name": "x", "lat": 0, "lon": 0}}"#);
            let err = serde_json::from_str::<RegionInfo>(&json).expect_err(bad);
            assert!(err.to_string().contains("region id"), "{bad:?}: {err}");
        }
        let max = "a".repeat(32);
        assert!(RegionCatalog::new(vec![region(&max, 0.0, 0.0)]).is_ok());
        assert!(RegionCatalog::new(vec![region("0-9-az", 0.0, 0.0)]).is_ok());
    }
}

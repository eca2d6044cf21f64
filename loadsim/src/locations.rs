//! Where simulated participants are: a file of `lat,lon,weight` lines (or the built-in world
//! default), from which each participant's location is drawn in proportion to the weights.

use fleet_geo::Location;
use rand::Rng;

/// Why a locations file was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LocationsError {
    /// A line that is not `lat,lon,weight`.
    #[error("line {line}: {message} (expected `lat,lon,weight`, e.g. `51.5,-0.1,3`)")]
    Line { line: usize, message: String },
    /// No line with a positive weight.
    #[error("no location with a positive weight")]
    Empty,
}

/// Weighted locations to draw participants from.
#[derive(Debug, Clone)]
pub struct Locations {
    places: Vec<Location>,
    /// Running sums of the weights, for drawing.
    cumulative: Vec<f64>,
}

/// The built-in world: cities weighted roughly by where a teletherapy platform's users are.
const WORLD: &str = "\
# lat,lon,weight
51.51,-0.13,6
48.86,2.35,4
52.52,13.40,4
40.42,-3.70,3
0.35,32.58,2
-1.29,36.82,2
6.52,3.38,2
40.71,-74.00,8
41.88,-87.63,4
34.05,-118.24,5
43.65,-79.38,3
19.43,-99.13,3
-23.55,-46.63,4
19.08,72.88,6
28.61,77.21,5
12.97,77.59,4
1.35,103.82,2
35.68,139.69,3
-33.87,151.21,2
";

impl Locations {
    /// Parses `lat,lon,weight` lines; blank lines and `#` comments are skipped.
    pub fn parse(text: &str) -> Result<Locations, LocationsError> {
        let mut places = Vec::new();
        let mut cumulative = Vec::new();
        let mut total = 0.0;
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |message: String| LocationsError::Line {
                line: i + 1,
                message,
            };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [lat, lon, weight] = fields[..] else {
                return Err(bad(format!("{} fields", fields.len())));
            };
            let number = |name: &str, v: &str| {
                v.parse::<f64>()
                    .ok()
                    .filter(|x| x.is_finite())
                    .ok_or_else(|| bad(format!("{name} {v:?} is not a number")))
            };
            let location = Location::new(number("lat", lat)?, number("lon", lon)?)
                .map_err(|e| bad(e.to_string()))?;
            let weight = number("weight", weight)?;
            if weight < 0.0 {
                return Err(bad(format!("weight {weight} is negative")));
            }
            if weight > 0.0 {
                total += weight;
                places.push(location);
                cumulative.push(total);
            }
        }
        if places.is_empty() {
            return Err(LocationsError::Empty);
        }
        Ok(Locations { places, cumulative })
    }

    /// The built-in world default.
    pub fn world() -> Locations {
        Locations::parse(WORLD).unwrap_or_else(|_| Locations {
            places: vec![Location {
                lat: 51.51,
                lon: -0.13,
            }],
            cumulative: vec![1.0],
        })
    }

    /// Draws a location in proportion to the weights.
    pub fn pick(&self, rng: &mut impl Rng) -> Location {
        let total = self.cumulative.last().copied().unwrap_or(0.0);
        let x = rng.random::<f64>() * total;
        let i = self.cumulative.partition_point(|&c| c <= x);
        self.places[i.min(self.places.len() - 1)]
    }

    /// How many places there are.
    pub fn len(&self) -> usize {
        self.places.len()
    }

    /// Never true: a parsed set has at least one place.
    pub fn is_empty(&self) -> bool {
        self.places.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    #[test]
    fn draws_follow_the_weights_and_zero_weights_never_come_up() {
        let l = Locations::parse("# two cities\n10,20,3\n\n-5,6,1\n7,8,0\n").unwrap();
        assert_eq!(l.len(), 2);
        let mut rng = rand::rngs::SmallRng::seed_from_u64(1);
        let first = (0..4000).filter(|_| l.pick(&mut rng).lat == 10.0).count();
        assert!((2800..3200).contains(&first), "{first} of 4000");
        assert!(Locations::world().len() > 10);
    }

    #[test]
    fn bad_lines_are_named() {
        let err = |t: &str| Locations::parse(t).unwrap_err().to_string();
        assert!(err("1,2,3\n1,2\n").starts_with("line 2: 2 fields"));
        assert!(err("x,2,3").contains("lat \"x\" is not a number"));
        assert!(err("91,2,3").starts_with("line 1:"));
        assert!(err("1,2,-1").contains("negative"));
        assert_eq!(err("1,2,0"), "no location with a positive weight");
    }
}

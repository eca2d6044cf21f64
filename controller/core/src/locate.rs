//! Where a participant is, from what a request says about them (DESIGN.md "Placement" step 1):
//! an explicit location wins over a region hint, which wins over the GeoIP location of their
//! address, which wins over the default. The shell parses and looks things up; the order is
//! decided here, once.

use fleet_geo::{Location, RegionCatalog, RegionInfo};

/// What is known about where one participant is.
#[derive(Debug, Clone, Copy, Default)]
pub struct LocationClues<'a> {
    /// Coordinates the app sent (already validated).
    pub location: Option<Location>,
    /// A region id the app sent as a hint.
    pub region: Option<&'a str>,
    /// Where GeoIP puts the participant's address, when it knows.
    pub geoip: Option<Location>,
}

/// A region hint that names no region of the catalog.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown region {0:?}")]
pub struct UnknownRegion(pub String);

/// The participant's location by precedence: explicit > region hint > GeoIP > `default`.
pub fn locate(
    catalog: &RegionCatalog,
    clues: &LocationClues<'_>,
    default: Location,
) -> Result<Location, UnknownRegion> {
    if let Some(l) = clues.location {
        return Ok(l);
    }
    if let Some(r) = clues.region {
        return catalog
            .get(r)
            .map(|info| info.location())
            .ok_or_else(|| UnknownRegion(r.chars().take(64).collect()));
    }
    Ok(clues.geoip.unwrap_or(default))
}

/// The region whose farthest participant is nearest: where a session of these participants
/// goes when every region has room (bookings are planned there). `None` without participants.
pub fn best_region<'c>(
    catalog: &'c RegionCatalog,
    participants: &[Location],
) -> Option<&'c RegionInfo> {
    let units: Vec<[f64; 3]> = participants.iter().map(|l| l.unit_vector()).collect();
    let dot = |a: &[f64; 3], b: &[f64; 3]| a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
    // The farthest participant has the smallest dot product; keep the region maximizing it.
    let worst = |region: &[f64; 3]| {
        units
            .iter()
            .map(|u| dot(region, u))
            .fold(f64::INFINITY, f64::min)
    };
    let (best, _) = catalog
        .unit_vectors()
        .iter()
        .enumerate()
        .map(|(i, r)| (i, worst(r)))
        .filter(|_| !units.is_empty())
        .fold(None, |acc: Option<(usize, f64)>, (i, d)| match acc {
            Some((_, best)) if best >= d => acc,
            _ => Some((i, d)),
        })?;
    catalog.regions().get(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    const LONDON: Location = Location {
        lat: 51.51,
        lon: -0.13,
    };
    const KAMPALA: Location = Location {
        lat: 0.35,
        lon: 32.58,
    };
    const NOWHERE: Location = Location { lat: 0.0, lon: 0.0 };

    #[test]
    fn stronger_clues_win() {
        let catalog = RegionCatalog::default();
        let mumbai = catalog.get("ap-south-1").expect("region").location();
        let all = LocationClues {
            location: Some(LONDON),
            region: Some("ap-south-1"),
            geoip: Some(KAMPALA),
        };
        assert_eq!(locate(&catalog, &all, NOWHERE), Ok(LONDON));
        let no_explicit = LocationClues {
            location: None,
            ..all
        };
        assert_eq!(locate(&catalog, &no_explicit, NOWHERE), Ok(mumbai));
        let geoip_only = LocationClues {
            geoip: Some(KAMPALA),
            ..LocationClues::default()
        };
        assert_eq!(locate(&catalog, &geoip_only, NOWHERE), Ok(KAMPALA));
        assert_eq!(
            locate(&catalog, &LocationClues::default(), NOWHERE),
            Ok(NOWHERE)
        );
    }

    #[test]
    fn an_unknown_region_hint_is_refused_even_with_geoip() {
        let clues = LocationClues {
            region: Some("mars-1"),
            geoip: Some(KAMPALA),
            ..LocationClues::default()
        };
        assert_eq!(
            locate(&RegionCatalog::default(), &clues, NOWHERE),
            Err(UnknownRegion("mars-1".into()))
        );
    }

    #[test]
    fn the_best_region_minimizes_the_farthest_participant() {
        let catalog = RegionCatalog::default();
        let best = |ps: &[Location]| best_region(&catalog, ps).map(|r| r.id.to_string());
        assert_eq!(best(&[LONDON]).as_deref(), Some("eu-west-2"));
        // London and Kampala: somewhere between them beats London's own region.
        let both = best(&[LONDON, KAMPALA]).unwrap_or_default();
        assert_ne!(both, "eu-west-2");
        assert_ne!(both, "af-south-1");
        assert_eq!(best(&[]), None);
    }
}

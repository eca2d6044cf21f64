//! IP address to location through a MaxMind DB (`.mmdb`) file.
//!
//! Two record schemas are understood, chosen per record by the fields present:
//!
//! * MaxMind GeoIP2 / GeoLite2-City: `location.latitude`, `location.longitude`,
//!   `country.iso_code`, `city.names.en`.
//! * ip-location-db / DB-IP "city" (flat): top-level `latitude`, `longitude`, `country_code`,
//!   `city`. Coordinates may be stored as float, double, integer or string.
//!
//! IPv4-mapped IPv6 addresses (`::ffff:a.b.c.d`, as dual-stack sockets report them) are looked
//! up as the IPv4 address. Errors show the address truncated to its /24 or /48, never in full.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use serde::Deserialize;
use serde::de::{self, IgnoredAny, MapAccess, Visitor};

use crate::error::GeoError;
use crate::location::Location;

/// What a lookup found: the location plus country and city when the record has them.
#[derive(Debug, Clone, PartialEq)]
pub struct IpLocation {
    /// Coordinates of the record.
    pub location: Location,
    /// ISO 3166-1 alpha-2 country code, when present and non-empty.
    pub country_code: Option<String>,
    /// English city name, when present and non-empty.
    pub city: Option<String>,
}

/// An open GeoIP database held in memory.
#[derive(Debug)]
pub struct GeoIp {
    reader: maxminddb::Reader<Vec<u8>>,
}

/// The address as it may appear in errors and logs: its /24 (IPv4) or /48 (IPv6) network.
pub fn truncate_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let masked = Ipv4Addr::from(u32::from(v4) & 0xFFFF_FF00);
            format!("{masked}/24")
        }
        IpAddr::V6(v6) => {
            let masked = Ipv6Addr::from(u128::from(v6) & !((1u128 << 80) - 1));
            format!("{masked}/48")
        }
    }
}

impl GeoIp {
    /// Reads and checks a database file; the error says which file and why.
    pub fn open(path: &Path) -> Result<GeoIp, GeoError> {
        let bytes = std::fs::read(path).map_err(|source| GeoError::ReadDatabase {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_source(bytes, || format!("file {}", path.display()))
    }

    /// Checks a database already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<GeoIp, GeoError> {
        Self::from_source(bytes, || "from memory".to_owned())
    }

    fn from_source(bytes: Vec<u8>, origin: impl Fn() -> String) -> Result<GeoIp, GeoError> {
        let reader =
            maxminddb::Reader::from_source(bytes).map_err(|source| GeoError::InvalidDatabase {
                origin: origin(),
                source,
            })?;
        Ok(GeoIp { reader })
    }

    /// The database's `database_type` metadata, for example `GeoLite2-City` or `DBIP-City-Lite`.
    pub fn database_type(&self) -> &str {
        &self.reader.metadata().database_type
    }

    /// Location of `ip`.
    ///
    /// `Ok(None)` when the address is not in the database, the record has no coordinates, or
    /// the address is IPv6 and the database is IPv4-only. Errors when the database turns out to
    /// be corrupt at that address or the record's coordinates are unusable.
    pub fn lookup(&self, ip: IpAddr) -> Result<Option<IpLocation>, GeoError> {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            IpAddr::V4(_) => ip,
        };
        if ip.is_ipv6() && self.reader.metadata().ip_version == 4 {
            return Ok(None);
        }
        let lookup_error = |source| GeoError::Lookup {
            network: truncate_ip(ip),
            source,
        };
        let result = self.reader.lookup(ip).map_err(lookup_error)?;
        let Some(record) = result.decode::<RawRecord>().map_err(lookup_error)? else {
            return Ok(None);
        };
        record
            .into_ip_location()
            .map_err(|reason| GeoError::InvalidRecord {
                network: truncate_ip(ip),
                reason,
            })
    }
}

/// The fields of either schema that a lookup uses; everything else is skipped.
#[derive(Deserialize, Default)]
#[serde(default)]
struct RawRecord {
    // MaxMind City.
    location: Option<RawLocation>,
    country: Option<RawCountry>,
    // Both: a map with `names.en` (MaxMind) or a plain string (flat).
    city: Option<CityName>,
    // Flat (ip-location-db / DB-IP).
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
    country_code: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawLocation {
    latitude: Option<Coordinate>,
    longitude: Option<Coordinate>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RawCountry {
    iso_code: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct Names {
    en: Option<String>,
}

impl RawRecord {
    fn into_ip_location(self) -> Result<Option<IpLocation>, String> {
        let nested = self
            .location
            .and_then(|l| l.latitude.zip(l.longitude))
            .and_then(|(lat, lon)| lat.0.zip(lon.0));
        let flat = self
            .latitude
            .zip(self.longitude)
            .and_then(|(lat, lon)| lat.0.zip(lon.0));
        let Some((lat, lon)) = nested.or(flat) else {
            return Ok(None);
        };
        let location = Location::new(lat, lon).map_err(|err| err.to_string())?;
        let country_code = self
            .country
            .and_then(|c| c.iso_code)
            .or(self.country_code)
            .filter(|s| !s.is_empty());
        let city = self.city.and_then(|c| c.0).filter(|s| !s.is_empty());
        Ok(Some(IpLocation {
            location,
            country_code,
            city,
        }))
    }
}

/// A coordinate stored as any number type or as a decimal string; `None` for an empty string.
struct Coordinate(Option<f64>);

impl<'de> Deserialize<'de> for Coordinate {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CoordinateVisitor)
    }
}

struct CoordinateVisitor;

impl Visitor<'_> for CoordinateVisitor {
    type Value = Coordinate;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a coordinate as a number or a decimal string")
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Coordinate, E> {
        Ok(Coordinate(Some(v)))
    }

    fn visit_f32<E: de::Error>(self, v: f32) -> Result<Coordinate, E> {
        // Via the shortest decimal form, so 51.5074f32 becomes 51.5074 rather than 51.50739669…
        let v = v.to_string().parse::<f64>().unwrap_or(f64::from(v));
        Ok(Coordinate(Some(v)))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Coordinate, E> {
        Ok(Coordinate(Some(v as f64)))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Coordinate, E> {
        Ok(Coordinate(Some(v as f64)))
    }

    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Coordinate, E> {
        Ok(Coordinate(Some(v as f64)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Coordinate, E> {
        let trimmed = v.trim();
        if trimmed.is_empty() {
            return Ok(Coordinate(None));
        }
        trimmed
            .parse::<f64>()
            .map(|x| Coordinate(Some(x)))
            .map_err(|_| E::custom(format!("coordinate {trimmed:?} is not a number")))
    }
}

/// A city name: MaxMind's map (`names.en`) or the flat schema's string.
struct CityName(Option<String>);

impl<'de> Deserialize<'de> for CityName {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(CityNameVisitor)
    }
}

struct CityNameVisitor;

impl<'de> Visitor<'de> for CityNameVisitor {
    type Value = CityName;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a city name string or a map with names.en")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<CityName, E> {
        Ok(CityName(Some(v.to_owned())))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<CityName, A::Error> {
        let mut name = None;
        while let Some(key) = map.next_key::<String>()? {
            if key == "names" {
                name = map.next_value::<Names>()?.en;
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(CityName(name))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truncation_hides_host_bits() {
        assert_eq!(
            truncate_ip("203.0.113.77".parse().expect("ip")),
            "203.0.113.0/24"
        );
        assert_eq!(
            truncate_ip("2001:db8:1234:5678::9".parse().expect("ip")),
            "2001:db8:1234::/48"
        );
    }
}

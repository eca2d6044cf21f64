//! The crate's error type: every failure says what was wrong and where.

use std::path::PathBuf;

/// Errors from location validation, the region catalog and GeoIP lookups.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GeoError {
    /// A latitude or longitude is not finite or outside its range.
    #[error("invalid {field} {value}: must be a finite number in {min}..={max}")]
    InvalidCoordinate {
        /// `"latitude"` or `"longitude"`.
        field: &'static str,
        /// The rejected value.
        value: f64,
        /// Smallest allowed value.
        min: f64,
        /// Largest allowed value.
        max: f64,
    },

    /// A region catalog must hold at least one region.
    #[error("region catalog is empty: at least one region is required")]
    EmptyCatalog,

    /// One field of one region in a catalog is invalid.
    #[error("region {region:?}: invalid {field}: {reason}")]
    InvalidRegion {
        /// The region's id as given (may itself be the invalid part).
        region: String,
        /// `"id"`, `"lat"` or `"lon"`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },

    /// Two regions in a catalog share an id.
    #[error("duplicate region id {id:?} (regions #{first} and #{second} in the list)")]
    DuplicateRegion {
        /// The repeated id.
        id: String,
        /// Position of the first region with that id.
        first: usize,
        /// Position of the repeated one.
        second: usize,
    },

    /// The GeoIP database file could not be read.
    #[error("cannot read GeoIP database file {}: {source}", path.display())]
    ReadDatabase {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },

    /// The bytes are not a valid MaxMind DB.
    #[error("GeoIP database {origin} is not a valid MaxMind DB: {source}")]
    InvalidDatabase {
        /// Where the bytes came from (`file <path>` or `from memory`).
        origin: String,
        /// What the reader found wrong.
        #[source]
        source: maxminddb::MaxMindDbError,
    },

    /// A lookup failed because the database's tree or data is corrupt or has unexpected types.
    #[error("GeoIP lookup in {network} failed: {source}")]
    Lookup {
        /// The looked-up address truncated to its /24 (IPv4) or /48 (IPv6): logs carry no full IPs.
        network: String,
        /// What the reader found wrong.
        #[source]
        source: maxminddb::MaxMindDbError,
    },

    /// A record was found but its content is unusable (for example a latitude out of range).
    #[error("GeoIP record for {network} is invalid: {reason}")]
    InvalidRecord {
        /// The looked-up address truncated to its /24 (IPv4) or /48 (IPv6).
        network: String,
        /// What is wrong with the record.
        reason: String,
    },
}

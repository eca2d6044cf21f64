//! A small MaxMind DB (`.mmdb`) writer for tests: tests write the tiny databases they need
//! instead of ever using a downloaded one ([`write_test_geoip`] is the one the end-to-end tests
//! share).
//!
//! It follows the MaxMind DB File Format Specification 2.0:
//!
//! * **Search tree.** A binary trie over the address bits, most significant first. Each node
//!   holds two records (left = bit 0, right = bit 1). A record value `< node_count` is another
//!   node, `== node_count` means "no data", and `> node_count` points into the data section at
//!   offset `value - node_count - 16`. Records are 24, 28 or 32 bits: 24-bit nodes are 6 bytes
//!   (left then right, big-endian); 28-bit nodes are 7 bytes, the middle byte holding the high
//!   nibble of the left record then the high nibble of the right; 32-bit nodes are 8 bytes.
//!   The writer picks the smallest record size that fits, or a larger one when asked.
//! * **IPv4 in IPv6.** Databases are IPv6 trees (`ip_version` 6) with IPv4 networks stored under
//!   `::/96` the way MaxMind does, so readers find IPv4 addresses from the node reached by 96
//!   zero bits. [`MmdbWriter::new_ipv4_only`] builds an `ip_version` 4 tree instead.
//! * **Separator.** 16 zero bytes between the tree and the data section.
//! * **Data section.** Each field starts with a control byte: type in the top 3 bits, size in
//!   the low 5. Types above 7 are "extended": type bits 0 and a second byte holding
//!   `type - 7`. Sizes 0..=28 are inline; 29, 30 and 31 mean 1, 2 or 3 more big-endian bytes
//!   holding `size - 29`, `size - 285` and `size - 65,821`. Unsigned integers use as few bytes
//!   as their value needs.
//! * **Metadata.** `"\xAB\xCD\xEFMaxMind.com"` followed by a map: binary format version 2.0,
//!   `build_epoch`, `database_type`, `description`, `ip_version`, `languages`, `node_count`,
//!   `record_size`.
//!
//! Later inserts win: inserting a network replaces whatever earlier data it covers, and an
//! insert inside an earlier, larger network keeps the earlier data for the rest of it.

use std::net::IpAddr;
use std::path::Path;
use std::time::{SystemTime, UNIX_EPOCH};

/// The writer was given something the format cannot hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MmdbError {
    /// A network the tree cannot hold.
    #[error("invalid network {network}: {reason}")]
    InvalidNetwork {
        /// The network as given (`address/prefix`).
        network: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A value the format cannot encode.
    #[error("value cannot be encoded in a MaxMind DB: {reason}")]
    InvalidValue {
        /// What is wrong with it.
        reason: String,
    },
}

/// Marks the start of the metadata section.
pub const METADATA_START_MARKER: &[u8] = b"\xAB\xCD\xEFMaxMind.com";

/// Length of the all-zero separator between search tree and data section.
const DATA_SECTION_SEPARATOR_LEN: usize = 16;

/// Largest size (string bytes, map entries, array elements) a control byte can express.
pub const MAX_FIELD_SIZE: usize = 65_821 + 0x00FF_FFFF;

/// Longest `database_type` kept; longer ones are cut at a character boundary.
const MAX_DATABASE_TYPE_LEN: usize = 255;

const TYPE_STRING: u8 = 2;
const TYPE_DOUBLE: u8 = 3;
const TYPE_UINT16: u8 = 5;
const TYPE_UINT32: u8 = 6;
const TYPE_MAP: u8 = 7;
const TYPE_UINT64: u8 = 9;
const TYPE_ARRAY: u8 = 11;
const TYPE_BOOL: u8 = 14;
const TYPE_FLOAT: u8 = 15;

/// A value in the data section.
#[derive(Debug, Clone, PartialEq)]
pub enum MmdbValue {
    /// UTF-8 string (type 2).
    String(String),
    /// 64-bit IEEE float (type 3).
    Double(f64),
    /// 32-bit IEEE float (type 15).
    Float(f32),
    /// Unsigned 32-bit integer (type 6).
    U32(u32),
    /// Unsigned 16-bit integer (type 5).
    U16(u16),
    /// Unsigned 64-bit integer (type 9).
    U64(u64),
    /// Boolean (type 14).
    Bool(bool),
    /// Map with string keys (type 7), in the given order.
    Map(Vec<(String, MmdbValue)>),
    /// Array (type 11).
    Array(Vec<MmdbValue>),
}

impl MmdbValue {
    /// Shorthand for [`MmdbValue::String`].
    pub fn string(s: impl Into<String>) -> MmdbValue {
        MmdbValue::String(s.into())
    }

    /// Shorthand for a [`MmdbValue::Map`] from `(key, value)` pairs.
    pub fn map<K: Into<String>>(entries: impl IntoIterator<Item = (K, MmdbValue)>) -> MmdbValue {
        MmdbValue::Map(entries.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }
}

/// One record of a search-tree node while building.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Record {
    /// No data for this branch.
    Empty,
    /// Index of another node in `MmdbWriter::nodes`.
    Node(usize),
    /// Index into `MmdbWriter::values`.
    Data(usize),
}

/// Builds a MaxMind DB in memory. See the module docs for the format.
#[derive(Debug, Clone)]
pub struct MmdbWriter {
    database_type: String,
    description: String,
    ip_version: u16,
    min_record_size: u16,
    build_epoch: u64,
    /// `nodes[0]` is the root; nodes no longer reachable after overwrites are skipped on output.
    nodes: Vec<[Record; 2]>,
    /// Encoded data-section bytes of each inserted value.
    values: Vec<Vec<u8>>,
}

impl MmdbWriter {
    /// An IPv6 database (`ip_version` 6) whose IPv4 networks live under `::/96`, so a reader's
    /// IPv4 lookups work. `database_type` is stored in the metadata (for example
    /// `GeoLite2-City`); it is cut to 255 bytes.
    pub fn new(database_type: &str) -> Self {
        Self::with_ip_version(database_type, 6)
    }

    /// An IPv4-only database (`ip_version` 4): only IPv4 networks can be inserted.
    pub fn new_ipv4_only(database_type: &str) -> Self {
        Self::with_ip_version(database_type, 4)
    }

    fn with_ip_version(database_type: &str, ip_version: u16) -> Self {
        let mut end = database_type.len().min(MAX_DATABASE_TYPE_LEN);
        while !database_type.is_char_boundary(end) {
            end -= 1;
        }
        let build_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        MmdbWriter {
            database_type: database_type[..end].to_owned(),
            description: "Test database written by fleet_geo::mmdb_writer".to_owned(),
            ip_version,
            min_record_size: 24,
            build_epoch,
            nodes: vec![[Record::Empty; 2]],
            values: Vec::new(),
        }
    }

    /// Uses records of at least `bits` bits (24, 28 or 32); a larger size is still chosen when
    /// the database needs it.
    pub fn set_record_size(&mut self, bits: u16) -> Result<(), MmdbError> {
        if !matches!(bits, 24 | 28 | 32) {
            return Err(MmdbError::InvalidValue {
                reason: format!("record size {bits} is not 24, 28 or 32"),
            });
        }
        self.min_record_size = bits;
        Ok(())
    }

    /// Sets the metadata's `build_epoch` (seconds since 1970; defaults to now).
    pub fn set_build_epoch(&mut self, epoch_secs: u64) {
        self.build_epoch = epoch_secs;
    }

    /// Stores `value` for the network `network/prefix_len`. Host bits below the prefix are
    /// ignored. IPv4 networks go under `::/96` (prefix + 96) in an IPv6 database.
    ///
    /// Errors: prefix longer than the address, a zero-length prefix in an IPv4-only database
    /// (the root cannot hold data), an IPv6 network in an IPv4-only database, or a value the
    /// format cannot encode (a string, map or array larger than [`MAX_FIELD_SIZE`]).
    pub fn insert(
        &mut self,
        network: IpAddr,
        prefix_len: u8,
        value: MmdbValue,
    ) -> Result<(), MmdbError> {
        let invalid = |reason: &str| MmdbError::InvalidNetwork {
            network: format!("{network}/{prefix_len}"),
            reason: reason.to_owned(),
        };
        let (bits, depth): (u128, u32) = match (network, self.ip_version) {
            (IpAddr::V4(v4), 4) => {
                if prefix_len > 32 {
                    return Err(invalid("an IPv4 prefix is at most 32 bits"));
                }
                (u128::from(u32::from(v4)) << 96, u32::from(prefix_len))
            }
            (IpAddr::V4(v4), _) => {
                if prefix_len > 32 {
                    return Err(invalid("an IPv4 prefix is at most 32 bits"));
                }
                (u128::from(u32::from(v4)), u32::from(prefix_len) + 96)
            }
            (IpAddr::V6(_), 4) => {
                return Err(invalid(
                    "IPv6 networks cannot be stored in an IPv4-only database",
                ));
            }
            (IpAddr::V6(v6), _) => {
                if prefix_len > 128 {
                    return Err(invalid("an IPv6 prefix is at most 128 bits"));
                }
                (u128::from(v6), u32::from(prefix_len))
            }
        };
        if depth == 0 {
            return Err(invalid(
                "a zero-length prefix would put data at the tree's root, which the format cannot hold",
            ));
        }
        let mut encoded = Vec::new();
        encode_value(&value, &mut encoded)?;
        let data = self.values.len();
        self.values.push(encoded);

        // Bit `i` of the (left-aligned) 128-bit key.
        let bit = |i: u32| ((bits >> (127 - i)) & 1) as usize;
        let mut node = 0usize;
        for i in 0..depth - 1 {
            let side = bit(i);
            node = match self.nodes[node][side] {
                Record::Node(next) => next,
                Record::Empty => self.add_node(node, side, [Record::Empty; 2]),
                // Splitting an earlier, larger network: both halves keep its data.
                Record::Data(d) => self.add_node(node, side, [Record::Data(d); 2]),
            };
        }
        self.nodes[node][bit(depth - 1)] = Record::Data(data);
        Ok(())
    }

    /// Appends a node and links it as `side` child of `parent`; returns its index.
    fn add_node(&mut self, parent: usize, side: usize, records: [Record; 2]) -> usize {
        let index = self.nodes.len();
        self.nodes.push(records);
        self.nodes[parent][side] = Record::Node(index);
        index
    }

    /// The whole database: search tree, 16-byte separator, data section, metadata marker and
    /// metadata map.
    pub fn to_bytes(&self) -> Vec<u8> {
        // Number the reachable nodes breadth-first (root = 0) and lay out the data they use.
        let mut order = vec![0usize];
        let mut number = vec![None; self.nodes.len()];
        number[0] = Some(0u32);
        let mut data_offset: Vec<Option<usize>> = vec![None; self.values.len()];
        let mut data = Vec::new();
        let mut next = 0;
        while let Some(&index) = order.get(next) {
            next += 1;
            for record in self.nodes[index] {
                match record {
                    Record::Node(child) if number[child].is_none() => {
                        number[child] = Some(order.len() as u32);
                        order.push(child);
                    }
                    Record::Data(d) if data_offset[d].is_none() => {
                        data_offset[d] = Some(data.len());
                        data.extend_from_slice(&self.values[d]);
                    }
                    _ => {}
                }
            }
        }
        let node_count = order.len() as u64;
        let largest_record = node_count + DATA_SECTION_SEPARATOR_LEN as u64 + data.len() as u64;
        let needed = if largest_record < 1 << 24 {
            24
        } else if largest_record < 1 << 28 {
            28
        } else {
            32
        };
        let record_size = needed.max(self.min_record_size);

        let resolve = |record: Record| -> u32 {
            let value = match record {
                Record::Empty => node_count,
                Record::Node(child) => u64::from(number[child].unwrap_or(0)),
                Record::Data(d) => {
                    node_count
                        + DATA_SECTION_SEPARATOR_LEN as u64
                        + data_offset[d].unwrap_or(0) as u64
                }
            };
            value as u32
        };

        let node_bytes = usize::from(record_size / 4);
        let mut out = Vec::with_capacity(order.len() * node_bytes + 16 + data.len() + 256);
        for &index in &order {
            let [left, right] = self.nodes[index].map(resolve);
            let (l, r) = (left.to_be_bytes(), right.to_be_bytes());
            match record_size {
                24 => {
                    out.extend_from_slice(&l[1..]);
                    out.extend_from_slice(&r[1..]);
                }
                28 => {
                    out.extend_from_slice(&l[1..]);
                    out.push(((l[0] & 0x0F) << 4) | (r[0] & 0x0F));
                    out.extend_from_slice(&r[1..]);
                }
                _ => {
                    out.extend_from_slice(&l);
                    out.extend_from_slice(&r);
                }
            }
        }
        out.extend_from_slice(&[0u8; DATA_SECTION_SEPARATOR_LEN]);
        out.extend_from_slice(&data);
        out.extend_from_slice(METADATA_START_MARKER);
        let metadata = MmdbValue::map([
            ("binary_format_major_version", MmdbValue::U16(2)),
            ("binary_format_minor_version", MmdbValue::U16(0)),
            ("build_epoch", MmdbValue::U64(self.build_epoch)),
            ("database_type", MmdbValue::string(&self.database_type)),
            (
                "description",
                MmdbValue::map([("en", MmdbValue::string(&self.description))]),
            ),
            ("ip_version", MmdbValue::U16(self.ip_version)),
            ("languages", MmdbValue::Array(vec![MmdbValue::string("en")])),
            ("node_count", MmdbValue::U32(node_count as u32)),
            ("record_size", MmdbValue::U16(record_size)),
        ]);
        // Cannot fail: every string in the metadata is short.
        if let Err(err) = encode_value(&metadata, &mut out) {
            debug_assert!(false, "metadata encoding failed: {err}");
        }
        out
    }

    /// Writes [`MmdbWriter::to_bytes`] to a file.
    pub fn write_to(&self, path: &Path) -> std::io::Result<()> {
        std::fs::write(path, self.to_bytes())
    }
}

/// Appends a control byte (and extended-type and size bytes) for a field.
fn encode_control(type_num: u8, size: usize, out: &mut Vec<u8>) -> Result<(), MmdbError> {
    let (size_bits, extra): (u8, Vec<u8>) = match size {
        0..=28 => (size as u8, Vec::new()),
        29..=284 => (29, vec![(size - 29) as u8]),
        285..=65_820 => (30, ((size - 285) as u16).to_be_bytes().to_vec()),
        _ if size <= MAX_FIELD_SIZE => (31, ((size - 65_821) as u32).to_be_bytes()[1..].to_vec()),
        _ => {
            return Err(MmdbError::InvalidValue {
                reason: format!("size {size} exceeds the format's maximum of {MAX_FIELD_SIZE}"),
            });
        }
    };
    if type_num <= 7 {
        out.push((type_num << 5) | size_bits);
    } else {
        out.push(size_bits);
        out.push(type_num - 7);
    }
    out.extend_from_slice(&extra);
    Ok(())
}

/// Appends an unsigned integer using as few big-endian bytes as it needs.
fn encode_uint(type_num: u8, be_bytes: &[u8], out: &mut Vec<u8>) -> Result<(), MmdbError> {
    let first = be_bytes
        .iter()
        .position(|&b| b != 0)
        .unwrap_or(be_bytes.len());
    let significant = &be_bytes[first..];
    encode_control(type_num, significant.len(), out)?;
    out.extend_from_slice(significant);
    Ok(())
}

fn encode_string(s: &str, out: &mut Vec<u8>) -> Result<(), MmdbError> {
    encode_control(TYPE_STRING, s.len(), out)?;
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

/// Appends the data-section encoding of `value`.
fn encode_value(value: &MmdbValue, out: &mut Vec<u8>) -> Result<(), MmdbError> {
    match value {
        MmdbValue::String(s) => encode_string(s, out)?,
        MmdbValue::Double(x) => {
            encode_control(TYPE_DOUBLE, 8, out)?;
            out.extend_from_slice(&x.to_be_bytes());
        }
        MmdbValue::Float(x) => {
            encode_control(TYPE_FLOAT, 4, out)?;
            out.extend_from_slice(&x.to_be_bytes());
        }
        MmdbValue::U16(x) => encode_uint(TYPE_UINT16, &x.to_be_bytes(), out)?,
        MmdbValue::U32(x) => encode_uint(TYPE_UINT32, &x.to_be_bytes(), out)?,
        MmdbValue::U64(x) => encode_uint(TYPE_UINT64, &x.to_be_bytes(), out)?,
        MmdbValue::Bool(b) => encode_control(TYPE_BOOL, usize::from(*b), out)?,
        MmdbValue::Map(entries) => {
            encode_control(TYPE_MAP, entries.len(), out)?;
            for (key, item) in entries {
                encode_string(key, out)?;
                encode_value(item, out)?;
            }
        }
        MmdbValue::Array(items) => {
            encode_control(TYPE_ARRAY, items.len(), out)?;
            for item in items {
                encode_value(item, out)?;
            }
        }
    }
    Ok(())
}

/// A record shaped like MaxMind GeoIP2/GeoLite2-City: `city.names.en`, `country.iso_code`,
/// `country.names.en`, `location.latitude`/`longitude` (doubles) and `location.accuracy_radius`.
pub fn maxmind_city_record(lat: f64, lon: f64, country: &str, city: &str) -> MmdbValue {
    MmdbValue::map([
        (
            "city",
            MmdbValue::map([
                ("geoname_id", MmdbValue::U32(1)),
                ("names", MmdbValue::map([("en", MmdbValue::string(city))])),
            ]),
        ),
        (
            "country",
            MmdbValue::map([
                ("iso_code", MmdbValue::string(country)),
                (
                    "names",
                    MmdbValue::map([("en", MmdbValue::string(country))]),
                ),
            ]),
        ),
        (
            "location",
            MmdbValue::map([
                ("accuracy_radius", MmdbValue::U16(20)),
                ("latitude", MmdbValue::Double(lat)),
                ("longitude", MmdbValue::Double(lon)),
            ]),
        ),
    ])
}

/// A record shaped like the ip-location-db / DB-IP "city" databases: top-level `city`,
/// `country_code`, `latitude` and `longitude` (32-bit floats, as those files use).
pub fn flat_city_record(lat: f64, lon: f64, country: &str, city: &str) -> MmdbValue {
    MmdbValue::map([
        ("city", MmdbValue::string(city)),
        ("country_code", MmdbValue::string(country)),
        ("latitude", MmdbValue::Float(lat as f32)),
        ("longitude", MmdbValue::Float(lon as f32)),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(value: &MmdbValue) -> Vec<u8> {
        let mut out = Vec::new();
        encode_value(value, &mut out).expect("encodable");
        out
    }

    #[test]
    fn control_bytes_follow_the_spec() {
        assert_eq!(encoded(&MmdbValue::U16(0)), [0xA0]);
        assert_eq!(encoded(&MmdbValue::U16(0x0102)), [0xA2, 0x01, 0x02]);
        assert_eq!(encoded(&MmdbValue::U32(256)), [0xC2, 0x01, 0x00]);
        // Extended types: type bits 0, then `type - 7`.
        assert_eq!(encoded(&MmdbValue::U64(1)), [0x01, 0x02, 0x01]);
        assert_eq!(encoded(&MmdbValue::Bool(true)), [0x01, 0x07]);
        assert_eq!(encoded(&MmdbValue::Bool(false)), [0x00, 0x07]);
        assert_eq!(encoded(&MmdbValue::Array(Vec::new())), [0x00, 0x04]);
        assert_eq!(
            encoded(&MmdbValue::Float(1.0)),
            [0x04, 0x08, 0x3F, 0x80, 0x00, 0x00]
        );
        assert_eq!(encoded(&MmdbValue::Double(1.0))[..2], [0x68, 0x3F]);
        assert_eq!(
            encoded(&MmdbValue::map([("a", MmdbValue::U16(1))])),
            [0xE1, 0x41, b'a', 0xA1, 0x01]
        );
    }

    #[test]
    fn long_sizes_use_extra_bytes() {
        let header = |len: usize| encoded(&MmdbValue::String("x".repeat(len)))[..4].to_vec();
        assert_eq!(header(28)[0], 0x5C);
        assert_eq!(header(29)[..2], [0x5D, 0x00]);
        assert_eq!(header(284)[..2], [0x5D, 0xFF]);
        assert_eq!(header(285)[..3], [0x5E, 0x00, 0x00]);
        assert_eq!(header(65_820)[..3], [0x5E, 0xFF, 0xFF]);
        assert_eq!(header(65_821), [0x5F, 0x00, 0x00, 0x00]);
        assert_eq!(header(65_821 + 0x010203), [0x5F, 0x01, 0x02, 0x03]);
    }

    #[test]
    fn tree_layout_for_one_ipv4_network() {
        let mut w = MmdbWriter::new_ipv4_only("T");
        w.insert("128.0.0.0".parse().expect("ip"), 1, MmdbValue::U16(1))
            .expect("insert");
        let bytes = w.to_bytes();
        // One node: left = empty (node_count 1), right = data at offset 0 (1 + 16 + 0).
        assert_eq!(bytes[..6], [0, 0, 1, 0, 0, 17]);
        assert_eq!(bytes[6..22], [0u8; 16]);
        assert_eq!(bytes[22..24], [0xA1, 0x01]);
        assert_eq!(
            bytes[24..24 + METADATA_START_MARKER.len()],
            *METADATA_START_MARKER
        );
    }

    #[test]
    fn long_database_type_is_cut_at_a_char_boundary() {
        let w = MmdbWriter::new(&"é".repeat(200));
        assert!(w.database_type.len() <= MAX_DATABASE_TYPE_LEN);
        assert!(w.database_type.chars().all(|c| c == 'é'));
    }
}

/// Test IPs (documentation ranges) and where [`write_test_geoip`] puts them.
pub mod test_ips {
    /// London, MaxMind schema.
    pub const LONDON: &str = "198.51.100.7";
    /// Kampala, flat DB-IP schema.
    pub const KAMPALA: &str = "203.0.113.9";
    /// New York, MaxMind schema.
    pub const NEW_YORK: &str = "192.0.2.44";
    /// Mumbai, flat schema, IPv6.
    pub const MUMBAI: &str = "2001:db8:91::5";
}

/// Writes the GeoIP database the end-to-end tests share: both schemas, IPv4 and IPv6, placing
/// the [`test_ips`].
pub fn write_test_geoip(path: &Path) -> std::io::Result<()> {
    let mut w = MmdbWriter::new("Fleet-Test-City");
    let rows: [(&str, u8, MmdbValue); 4] = [
        (
            "198.51.100.0",
            24,
            maxmind_city_record(51.51, -0.13, "GB", "London"),
        ),
        (
            "192.0.2.0",
            24,
            maxmind_city_record(40.71, -74.0, "US", "New York"),
        ),
        (
            "203.0.113.0",
            24,
            flat_city_record(0.35, 32.58, "UG", "Kampala"),
        ),
        (
            "2001:db8:91::",
            48,
            flat_city_record(19.08, 72.88, "IN", "Mumbai"),
        ),
    ];
    for (network, prefix, record) in rows {
        let ip: IpAddr = network
            .parse()
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
        w.insert(ip, prefix, record)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    }
    w.write_to(path)
}

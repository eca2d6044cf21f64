//! Round trips through the test `.mmdb` writer and the real `maxminddb` reader, for both record
//! schemas, both address families, misses, broken files and garbage input.

use std::net::IpAddr;

use fleet_geo::{GeoError, GeoIp, Location};
use fleet_testkit::mmdb::{
    MAX_FIELD_SIZE, METADATA_START_MARKER, MmdbError, MmdbValue, MmdbWriter, flat_city_record,
    maxmind_city_record,
};

fn ip(s: &str) -> IpAddr {
    s.parse().expect("test address")
}

fn insert(writer: &mut MmdbWriter, network: &str, prefix: u8, value: MmdbValue) {
    writer
        .insert(ip(network), prefix, value)
        .expect("insert test network");
}

/// A MaxMind-City-shaped database with London (IPv4), Kampala (IPv4) and Sydney (IPv6).
fn maxmind_db() -> MmdbWriter {
    let mut w = MmdbWriter::new("GeoLite2-City");
    insert(
        &mut w,
        "81.2.69.0",
        24,
        maxmind_city_record(51.5074, -0.1278, "GB", "London"),
    );
    insert(
        &mut w,
        "41.190.0.0",
        16,
        maxmind_city_record(0.3476, 32.5825, "UG", "Kampala"),
    );
    insert(
        &mut w,
        "2001:db8::",
        32,
        maxmind_city_record(-33.8688, 151.2093, "AU", "Sydney"),
    );
    w
}

fn lookup(db: &GeoIp, addr: &str) -> Option<fleet_geo::IpLocation> {
    db.lookup(ip(addr)).expect("lookup succeeds")
}

fn assert_at(found: &fleet_geo::IpLocation, lat: f64, lon: f64) {
    assert!(
        (found.location.lat - lat).abs() < 1e-4 && (found.location.lon - lon).abs() < 1e-4,
        "{found:?} is not at ({lat}, {lon})"
    );
}

#[test]
fn maxmind_schema_round_trip_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("city.mmdb");
    maxmind_db().write_to(&path).expect("write");
    let db = GeoIp::open(&path).expect("open");
    assert_eq!(db.database_type(), "GeoLite2-City");

    let london = lookup(&db, "81.2.69.142").expect("london found");
    assert_eq!(
        london.location,
        Location::new(51.5074, -0.1278).expect("valid")
    );
    assert_eq!(london.country_code.as_deref(), Some("GB"));
    assert_eq!(london.city.as_deref(), Some("London"));

    let kampala = lookup(&db, "41.190.255.1").expect("kampala found");
    assert_at(&kampala, 0.3476, 32.5825);
    assert_eq!(kampala.city.as_deref(), Some("Kampala"));

    let sydney = lookup(&db, "2001:db8:ffff::1").expect("sydney found");
    assert_at(&sydney, -33.8688, 151.2093);
    assert_eq!(sydney.country_code.as_deref(), Some("AU"));

    // IPv4-mapped IPv6 addresses are looked up as IPv4.
    let mapped = lookup(&db, "::ffff:81.2.69.1").expect("mapped found");
    assert_eq!(mapped.city.as_deref(), Some("London"));
}

#[test]
fn written_database_is_what_maxmind_expects() {
    let bytes = maxmind_db().to_bytes();
    let reader = maxminddb::Reader::from_source(bytes).expect("reader");
    reader.verify().expect("database verifies");
    let meta = reader.metadata();
    assert_eq!(meta.ip_version, 6);
    assert_eq!(meta.record_size, 24);
    assert_eq!(meta.binary_format_major_version, 2);
    assert_eq!(meta.languages, vec!["en".to_owned()]);

    // The official GeoIP2 City model reads our MaxMind-shaped records.
    let result = reader.lookup(ip("81.2.69.142")).expect("lookup");
    let city: maxminddb::geoip2::City = result.decode().expect("decode").expect("found");
    assert_eq!(city.country.iso_code, Some("GB"));
    assert_eq!(city.city.names.english, Some("London"));
    assert_eq!(city.location.latitude, Some(51.5074));
    // IPv4 networks sit under ::/96, so the reported prefix is the IPv4 one.
    let network = result.network().expect("network");
    assert_eq!(network.to_string(), "81.2.69.0/24");

    let v6 = reader.lookup(ip("2001:db8::5")).expect("lookup v6");
    assert_eq!(v6.network().expect("network").to_string(), "2001:db8::/32");
}

#[test]
fn flat_schema_with_float_double_and_string_coordinates() {
    let mut w = MmdbWriter::new("DBIP-City-Lite");
    insert(
        &mut w,
        "1.0.0.0",
        24,
        flat_city_record(51.5074, -0.1278, "GB", "London"),
    );
    let double = MmdbValue::map([
        ("city", MmdbValue::string("Kampala")),
        ("country_code", MmdbValue::string("UG")),
        ("latitude", MmdbValue::Double(0.3476)),
        ("longitude", MmdbValue::Double(32.5825)),
    ]);
    insert(&mut w, "2.0.0.0", 8, double);
    let string = MmdbValue::map([
        ("city", MmdbValue::string("Sao Paulo")),
        ("country_code", MmdbValue::string("BR")),
        ("latitude", MmdbValue::string("-23.5505")),
        ("longitude", MmdbValue::string("-46.6333")),
        ("state1", MmdbValue::string("Sao Paulo")),
        ("postcode", MmdbValue::string("")),
    ]);
    insert(&mut w, "2a00:1450::", 32, string);
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    assert_eq!(db.database_type(), "DBIP-City-Lite");

    let london = lookup(&db, "1.0.0.200").expect("float record");
    assert_eq!(
        london.location,
        Location::new(51.5074, -0.1278).expect("valid")
    );
    assert_eq!(london.country_code.as_deref(), Some("GB"));
    assert_eq!(london.city.as_deref(), Some("London"));

    let kampala = lookup(&db, "2.200.3.4").expect("double record");
    assert_eq!(
        kampala.location,
        Location::new(0.3476, 32.5825).expect("valid")
    );
    assert_eq!(kampala.city.as_deref(), Some("Kampala"));

    let sao_paulo = lookup(&db, "2a00:1450:4001::1").expect("string record");
    assert_eq!(
        sao_paulo.location,
        Location::new(-23.5505, -46.6333).expect("valid")
    );
    assert_eq!(sao_paulo.country_code.as_deref(), Some("BR"));
}

#[test]
fn misses_and_records_without_coordinates_are_none() {
    let mut w = maxmind_db();
    let asn = MmdbValue::map([
        ("autonomous_system_number", MmdbValue::U32(64_512)),
        (
            "autonomous_system_organization",
            MmdbValue::string("Example"),
        ),
    ]);
    insert(&mut w, "192.0.2.0", 24, asn);
    let only_latitude = MmdbValue::map([("latitude", MmdbValue::Double(10.0))]);
    insert(&mut w, "198.51.100.0", 24, only_latitude);
    let empty_strings = MmdbValue::map([
        ("latitude", MmdbValue::string("")),
        ("longitude", MmdbValue::string("")),
        ("city", MmdbValue::string("Nowhere")),
    ]);
    insert(&mut w, "203.0.113.0", 24, empty_strings);
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");

    for miss in [
        "81.2.70.1",
        "8.8.8.8",
        "0.0.0.0",
        "255.255.255.255",
        "2001:db9::1",
        "::1",
    ] {
        assert_eq!(db.lookup(ip(miss)).expect("lookup"), None, "{miss}");
    }
    for no_coordinates in ["192.0.2.1", "198.51.100.1", "203.0.113.1"] {
        assert_eq!(
            db.lookup(ip(no_coordinates)).expect("lookup"),
            None,
            "{no_coordinates}"
        );
    }
    // The neighbours still resolve, so the misses are real misses.
    assert!(lookup(&db, "81.2.69.0").is_some());
    assert!(lookup(&db, "81.2.69.255").is_some());
}

#[test]
fn empty_database_finds_nothing() {
    let db = GeoIp::from_bytes(MmdbWriter::new("Empty").to_bytes()).expect("open");
    assert_eq!(db.lookup(ip("1.2.3.4")).expect("lookup"), None);
    assert_eq!(db.lookup(ip("2001:db8::1")).expect("lookup"), None);
}

#[test]
fn ipv6_only_database_misses_ipv4() {
    let mut w = MmdbWriter::new("V6");
    insert(
        &mut w,
        "2001:db8::",
        32,
        maxmind_city_record(1.0, 2.0, "XX", "X"),
    );
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    assert_eq!(db.lookup(ip("1.2.3.4")).expect("lookup"), None);
    assert!(lookup(&db, "2001:db8::1").is_some());
}

#[test]
fn ipv4_only_database_answers_ipv4_and_returns_none_for_ipv6() {
    let mut w = MmdbWriter::new_ipv4_only("GeoLite2-City");
    insert(
        &mut w,
        "81.2.69.0",
        24,
        maxmind_city_record(51.5074, -0.1278, "GB", "London"),
    );
    assert!(matches!(
        w.insert(ip("2001:db8::"), 32, MmdbValue::Bool(true)),
        Err(MmdbError::InvalidNetwork { .. })
    ));
    let bytes = w.to_bytes();
    let reader = maxminddb::Reader::from_source(bytes.clone()).expect("reader");
    assert_eq!(reader.metadata().ip_version, 4);
    reader.verify().expect("verifies");

    let db = GeoIp::from_bytes(bytes).expect("open");
    assert_eq!(
        lookup(&db, "81.2.69.9").expect("found").city.as_deref(),
        Some("London")
    );
    assert_eq!(db.lookup(ip("2001:db8::1")).expect("not an error"), None);
    assert_eq!(db.lookup(ip("::1")).expect("not an error"), None);
    // Mapped addresses still work: they are IPv4.
    assert!(lookup(&db, "::ffff:81.2.69.9").is_some());
}

#[test]
fn later_inserts_override_only_what_they_cover() {
    let mut w = MmdbWriter::new("Overlap");
    insert(
        &mut w,
        "10.0.0.0",
        8,
        flat_city_record(1.0, 1.0, "AA", "Wide"),
    );
    insert(
        &mut w,
        "10.1.2.0",
        24,
        flat_city_record(2.0, 2.0, "BB", "Narrow"),
    );
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    assert_eq!(
        lookup(&db, "10.1.2.3").and_then(|l| l.city).as_deref(),
        Some("Narrow")
    );
    assert_eq!(
        lookup(&db, "10.1.3.3").and_then(|l| l.city).as_deref(),
        Some("Wide")
    );
    assert_eq!(
        lookup(&db, "10.200.0.1").and_then(|l| l.city).as_deref(),
        Some("Wide")
    );

    // Re-inserting the wide network replaces the narrow one inside it.
    insert(
        &mut w,
        "10.0.0.0",
        8,
        flat_city_record(3.0, 3.0, "CC", "Again"),
    );
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    assert_eq!(
        lookup(&db, "10.1.2.3").and_then(|l| l.city).as_deref(),
        Some("Again")
    );
    let reader = maxminddb::Reader::from_source(w.to_bytes()).expect("reader");
    reader.verify().expect("unreachable nodes are not written");
}

#[test]
fn host_bits_below_the_prefix_are_ignored() {
    let mut w = MmdbWriter::new("Hostbits");
    insert(
        &mut w,
        "192.0.2.77",
        24,
        flat_city_record(5.0, 6.0, "ZZ", "Z"),
    );
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    assert!(lookup(&db, "192.0.2.1").is_some());
    assert!(lookup(&db, "192.0.3.1").is_none());
}

#[test]
fn host_routes_and_short_prefixes() {
    let mut w = MmdbWriter::new("Edges");
    insert(
        &mut w,
        "0.0.0.0",
        0,
        flat_city_record(1.0, 1.0, "AA", "All IPv4"),
    );
    insert(
        &mut w,
        "9.9.9.9",
        32,
        flat_city_record(2.0, 2.0, "BB", "Host"),
    );
    insert(
        &mut w,
        "8000::",
        1,
        flat_city_record(3.0, 3.0, "CC", "Upper half"),
    );
    insert(
        &mut w,
        "2001:db8::1",
        128,
        flat_city_record(4.0, 4.0, "DD", "Host6"),
    );
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");
    let city = |a: &str| lookup(&db, a).and_then(|l| l.city);
    assert_eq!(city("1.2.3.4").as_deref(), Some("All IPv4"));
    assert_eq!(city("9.9.9.9").as_deref(), Some("Host"));
    assert_eq!(city("9.9.9.8").as_deref(), Some("All IPv4"));
    assert_eq!(city("ffff::1").as_deref(), Some("Upper half"));
    assert_eq!(city("2001:db8::1").as_deref(), Some("Host6"));
    assert_eq!(city("2001:db8::2"), None);
}

#[test]
fn writer_rejects_bad_networks_and_record_sizes() {
    let mut w = MmdbWriter::new("Bad");
    let err = w
        .insert(ip("1.2.3.0"), 33, MmdbValue::Bool(true))
        .expect_err("prefix too long");
    assert!(err.to_string().contains("1.2.3.0/33"), "{err}");
    assert!(w.insert(ip("::"), 129, MmdbValue::Bool(true)).is_err());
    assert!(w.insert(ip("::"), 0, MmdbValue::Bool(true)).is_err());
    let mut v4 = MmdbWriter::new_ipv4_only("Bad");
    assert!(v4.insert(ip("0.0.0.0"), 0, MmdbValue::Bool(true)).is_err());
    assert!(w.set_record_size(26).is_err());
    let huge = "x".repeat(MAX_FIELD_SIZE + 1);
    assert!(matches!(
        w.insert(ip("1.0.0.0"), 8, MmdbValue::String(huge)),
        Err(MmdbError::InvalidValue { .. })
    ));
}

#[test]
fn every_record_size_reads_back() {
    for bits in [24u16, 28, 32] {
        let mut w = maxmind_db();
        w.set_record_size(bits).expect("valid size");
        let bytes = w.to_bytes();
        let reader = maxminddb::Reader::from_source(bytes.clone()).expect("reader");
        assert_eq!(reader.metadata().record_size, bits);
        reader.verify().expect("verifies");
        let db = GeoIp::from_bytes(bytes).expect("open");
        assert_eq!(
            lookup(&db, "81.2.69.1").and_then(|l| l.city).as_deref(),
            Some("London")
        );
        assert_eq!(
            lookup(&db, "2001:db8::1").and_then(|l| l.city).as_deref(),
            Some("Sydney")
        );
        assert_eq!(db.lookup(ip("8.8.8.8")).expect("lookup"), None);
    }
}

#[test]
fn large_data_section_switches_to_28_bit_records() {
    // Two 9 MB fillers push the third record past 2^24, which 24-bit records cannot address.
    let filler = || MmdbValue::String("f".repeat(9_000_000));
    let mut w = MmdbWriter::new("Big");
    insert(&mut w, "1.0.0.0", 8, filler());
    insert(&mut w, "2.0.0.0", 8, filler());
    insert(
        &mut w,
        "3.0.0.0",
        8,
        flat_city_record(7.0, 8.0, "GG", "Far"),
    );
    let bytes = w.to_bytes();
    let reader = maxminddb::Reader::from_source(bytes.clone()).expect("reader");
    assert_eq!(reader.metadata().record_size, 28);
    let db = GeoIp::from_bytes(bytes).expect("open");
    let far = lookup(&db, "3.3.3.3").expect("found past 2^24");
    assert_eq!(far.city.as_deref(), Some("Far"));
}

#[test]
fn every_value_type_and_size_encoding_round_trips() {
    let sizes = [0usize, 1, 28, 29, 284, 285, 65_820, 65_821, 70_000];
    let mut w = MmdbWriter::new("Types");
    let mut expected = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let s = "s".repeat(*size);
        let network = format!("10.{i}.0.0");
        insert(&mut w, &network, 16, MmdbValue::String(s.clone()));
        expected.push((network, serde_json::Value::String(s)));
    }
    let long_array: Vec<MmdbValue> = (0..300u32).map(MmdbValue::U32).collect();
    let mixed = MmdbValue::map([
        ("u16_zero", MmdbValue::U16(0)),
        ("u16_max", MmdbValue::U16(u16::MAX)),
        ("u32_small", MmdbValue::U32(200)),
        ("u32_max", MmdbValue::U32(u32::MAX)),
        ("u64_max", MmdbValue::U64(u64::MAX)),
        ("true", MmdbValue::Bool(true)),
        ("false", MmdbValue::Bool(false)),
        ("float", MmdbValue::Float(1.5)),
        ("double", MmdbValue::Double(-2.25)),
        ("array", MmdbValue::Array(long_array)),
        (
            "nested",
            MmdbValue::map([("deeper", MmdbValue::map([("x", MmdbValue::U16(7))]))]),
        ),
    ]);
    insert(&mut w, "11.0.0.0", 8, mixed);
    let reader = maxminddb::Reader::from_source(w.to_bytes()).expect("reader");
    reader.verify().expect("verifies");
    for (network, want) in expected {
        let got: serde_json::Value = reader
            .lookup(ip(&network))
            .expect("lookup")
            .decode()
            .expect("decode")
            .expect("found");
        assert_eq!(got, want, "{network}");
    }
    let got: serde_json::Value = reader
        .lookup(ip("11.1.1.1"))
        .expect("lookup")
        .decode()
        .expect("decode")
        .expect("found");
    let want = serde_json::json!({
        "u16_zero": 0, "u16_max": 65535, "u32_small": 200, "u32_max": 4294967295u64,
        "u64_max": u64::MAX, "true": true, "false": false, "float": 1.5, "double": -2.25,
        "array": (0..300).collect::<Vec<u32>>(), "nested": {"deeper": {"x": 7}},
    });
    assert_eq!(got, want);
}

#[test]
fn unusable_coordinates_are_errors_not_panics() {
    let mut w = MmdbWriter::new("Broken");
    insert(
        &mut w,
        "1.0.0.0",
        8,
        flat_city_record(123.0, 0.0, "XX", "Off the globe"),
    );
    let text = MmdbValue::map([
        ("latitude", MmdbValue::string("north")),
        ("longitude", MmdbValue::string("1.0")),
    ]);
    insert(&mut w, "2.0.0.0", 8, text);
    let wrong_type = MmdbValue::map([
        ("latitude", MmdbValue::Bool(true)),
        ("longitude", MmdbValue::Double(1.0)),
    ]);
    insert(&mut w, "3.0.0.0", 8, wrong_type);
    insert(&mut w, "4.0.0.0", 8, MmdbValue::string("not a map"));
    let db = GeoIp::from_bytes(w.to_bytes()).expect("open");

    let err = db.lookup(ip("1.2.3.4")).expect_err("latitude 123");
    assert!(matches!(err, GeoError::InvalidRecord { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("latitude") && msg.contains("1.2.3.0/24"),
        "{msg}"
    );
    assert!(!msg.contains("1.2.3.4"), "full address leaked: {msg}");

    for addr in ["2.2.2.2", "3.3.3.3", "4.4.4.4"] {
        let err = db.lookup(ip(addr)).expect_err(addr);
        assert!(matches!(err, GeoError::Lookup { .. }), "{addr}: {err:?}");
    }
}

#[test]
fn broken_files_are_errors_naming_the_problem() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.mmdb");
    let err = GeoIp::open(&missing).expect_err("missing file");
    assert!(matches!(err, GeoError::ReadDatabase { .. }));
    assert!(err.to_string().contains("missing.mmdb"), "{err}");

    let text = dir.path().join("text.mmdb");
    std::fs::write(&text, "this is not a database").expect("write");
    let err = GeoIp::open(&text).expect_err("not a database");
    assert!(matches!(err, GeoError::InvalidDatabase { .. }));
    assert!(err.to_string().contains("text.mmdb"), "{err}");

    let good = maxmind_db().to_bytes();
    assert!(GeoIp::from_bytes(Vec::new()).is_err());
    // Cut inside the metadata map.
    assert!(GeoIp::from_bytes(good[..good.len() - 10].to_vec()).is_err());
    // Cut inside the search tree: the metadata marker is gone.
    assert!(GeoIp::from_bytes(good[..20].to_vec()).is_err());
    // Metadata without a tree in front of it.
    let marker = good
        .windows(METADATA_START_MARKER.len())
        .rposition(|w| w == METADATA_START_MARKER)
        .expect("marker present");
    assert!(GeoIp::from_bytes(good[marker..].to_vec()).is_err());
}

/// A small deterministic xorshift generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }

    fn byte(&mut self) -> u8 {
        self.next().to_le_bytes()[0]
    }

    fn addr(&mut self) -> IpAddr {
        if self.next().is_multiple_of(2) {
            IpAddr::from(
                self.next().to_le_bytes()[..4]
                    .try_into()
                    .unwrap_or([0u8; 4]),
            )
        } else {
            let mut b = [0u8; 16];
            b[..8].copy_from_slice(&self.next().to_le_bytes());
            b[8..].copy_from_slice(&self.next().to_le_bytes());
            IpAddr::from(b)
        }
    }
}

const PROBES: [&str; 6] = [
    "81.2.69.142",
    "41.190.1.1",
    "2001:db8::1",
    "1.1.1.1",
    "::",
    "ffff::1",
];

/// Opens `bytes` and, if that works, looks up a few addresses; any result is fine, a panic is not.
fn probe(bytes: Vec<u8>, rng: &mut Rng) -> bool {
    let Ok(db) = GeoIp::from_bytes(bytes) else {
        return false;
    };
    let _ = db.database_type();
    for addr in PROBES {
        let _ = db.lookup(ip(addr));
    }
    for _ in 0..4 {
        let _ = db.lookup(rng.addr());
    }
    true
}

#[test]
fn random_garbage_never_panics() {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let marker = METADATA_START_MARKER;
    for round in 0..2_000 {
        let len = (rng.next() % 512) as usize;
        let mut bytes: Vec<u8> = (0..len).map(|_| rng.byte()).collect();
        if round % 2 == 0 {
            // Give the reader a marker so it gets as far as parsing metadata.
            let at = if len == 0 {
                0
            } else {
                (rng.next() as usize) % len
            };
            bytes.splice(at..at, marker.iter().copied());
        }
        probe(bytes, &mut rng);
    }
}

#[test]
fn corrupting_any_byte_of_a_valid_database_never_panics() {
    let good = maxmind_db().to_bytes();
    let mut rng = Rng(0xD1B5_4A32_D192_ED03);
    let mut opened = 0;
    for position in 0..good.len() {
        for replacement in [0x00, 0xFF, good[position] ^ 0x80, rng.byte()] {
            let mut bad = good.clone();
            bad[position] = replacement;
            if probe(bad, &mut rng) {
                opened += 1;
            }
        }
    }
    // Most single-byte changes still leave a database that opens, so lookups were exercised.
    assert!(opened > good.len(), "only {opened} corrupted copies opened");
    // Truncations at every length.
    for len in 0..good.len() {
        probe(good[..len].to_vec(), &mut rng);
    }
}

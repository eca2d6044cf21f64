//! Codec tests: round trips of every message, and a fuzz-style run of ~100k random and mutated
//! frames through `decode` checking it never panics and classifies each input correctly.

use fleet_proto::codec::{DecodeError, MAX_FRAME_LEN, decode, encode};
use fleet_proto::messages::{Command, ControllerMessage, NodeMessage, PROTOCOL_VERSION};
use fleet_testkit::messages::{controller_messages, hello, node_messages, report};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[test]
fn every_message_round_trips() {
    for msg in node_messages() {
        let frame = encode(&msg);
        let (back, used) = decode::<NodeMessage>(&frame)
            .expect("decodes")
            .expect("complete");
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
    }
    for msg in controller_messages() {
        let frame = encode(&msg);
        let (back, used) = decode::<ControllerMessage>(&frame)
            .expect("decodes")
            .expect("complete");
        assert_eq!(back, msg);
        assert_eq!(used, frame.len());
    }
}

#[test]
fn frame_layout_and_wire_names() {
    let frame = encode(&ControllerMessage::Command {
        id: 3,
        command: Command::Drain {
            deadline_unix_ms: 5,
        },
    });
    let len = u32::from_be_bytes([frame[0], frame[1], frame[2], frame[3]]) as usize;
    assert_eq!(len, frame.len() - 4);
    assert_eq!(frame[4], PROTOCOL_VERSION);
    let json: serde_json::Value = serde_json::from_slice(&frame[5..]).expect("json");
    assert_eq!(
        json,
        serde_json::json!({"type": "command", "id": 3,
            "command": {"type": "drain", "deadline_unix_ms": 5}})
    );
}

#[test]
fn unknown_fields_are_ignored_and_load_fields_default() {
    let body = br#"{"type":"report","seq":1,"state":"serving","sessions":[],"extra":1,
        "load":{"cpu":0.5,"future_field":true}}"#;
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(body);
    let (msg, _) = decode::<NodeMessage>(&frame)
        .expect("decodes")
        .expect("complete");
    let NodeMessage::Report(report) = msg else {
        panic!("not a report: {msg:?}");
    };
    assert_eq!(report.load.cpu, 0.5);
    assert_eq!(report.load.capacity_total, 0);
}

#[test]
fn invalid_ids_are_malformed() {
    let body =
        br#"{"type":"command","id":1,"command":{"type":"close_session","session":"bad id"}}"#;
    let mut frame = ((body.len() + 1) as u32).to_be_bytes().to_vec();
    frame.push(PROTOCOL_VERSION);
    frame.extend_from_slice(body);
    match decode::<ControllerMessage>(&frame) {
        Err(DecodeError::Malformed(m)) => assert!(m.contains("session id contains ' '"), "{m}"),
        other => panic!("expected Malformed, got {other:?}"),
    }
}

#[test]
fn decodes_back_to_back_frames_and_partial_input() {
    let a = encode(&NodeMessage::Hello(hello()));
    let b = encode(&NodeMessage::Report(report()));
    let mut both = a.clone();
    both.extend_from_slice(&b);
    let (first, used) = decode::<NodeMessage>(&both).expect("ok").expect("some");
    assert_eq!(first, NodeMessage::Hello(hello()));
    assert_eq!(used, a.len());
    let (second, used2) = decode::<NodeMessage>(&both[used..])
        .expect("ok")
        .expect("some");
    assert_eq!(second, NodeMessage::Report(report()));
    assert_eq!(used2, b.len());
    for cut in 0..a.len() {
        assert!(
            matches!(decode::<NodeMessage>(&a[..cut]), Ok(None)),
            "prefix of {cut} bytes"
        );
    }
}

/// What `decode` must say about `buf`, derived from the frame rules independently of the codec.
#[derive(Debug)]
enum Expect {
    NeedMore,
    TooLarge(usize),
    Empty,
    Version(u8),
    /// A complete frame of this total size with the right version: Ok or Malformed.
    Body(usize),
}

fn classify(buf: &[u8]) -> Expect {
    if buf.len() < 4 {
        return Expect::NeedMore;
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Expect::TooLarge(len);
    }
    if len == 0 {
        return Expect::Empty;
    }
    if buf.len() < 4 + len {
        return Expect::NeedMore;
    }
    if buf[4] != PROTOCOL_VERSION {
        return Expect::Version(buf[4]);
    }
    Expect::Body(4 + len)
}

fn check<T: serde::de::DeserializeOwned + std::fmt::Debug>(buf: &[u8], counts: &mut [usize; 6]) {
    let got = decode::<T>(buf);
    let expect = classify(buf);
    match (&expect, &got) {
        (Expect::NeedMore, Ok(None)) => counts[0] += 1,
        (Expect::TooLarge(len), Err(DecodeError::TooLarge { len: l, max }))
            if l == len && *max == MAX_FRAME_LEN =>
        {
            counts[1] += 1
        }
        (Expect::Empty, Err(DecodeError::Empty)) => counts[2] += 1,
        (Expect::Version(v), Err(DecodeError::UnsupportedVersion { got, supported }))
            if got == v && *supported == PROTOCOL_VERSION =>
        {
            counts[3] += 1
        }
        (Expect::Body(_), Err(DecodeError::Malformed(_))) => counts[4] += 1,
        (Expect::Body(n), Ok(Some((_, used)))) if used == n => counts[5] += 1,
        _ => panic!("input {buf:?}: expected {expect:?}, got {got:?}"),
    }
}

#[test]
fn fuzz_random_and_mutated_frames() {
    let mut rng = StdRng::seed_from_u64(0x5eed_f1ee7);
    let seeds: Vec<Vec<u8>> = node_messages()
        .iter()
        .map(encode)
        .chain(controller_messages().iter().map(encode))
        .collect();
    let mut counts = [0usize; 6];
    for i in 0..100_000u32 {
        let seed = &seeds[rng.random_range(0..seeds.len())];
        let buf: Vec<u8> = match i % 8 {
            // Pure random bytes of random length.
            0 => {
                let n = rng.random_range(0..64);
                let mut b: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                // Sometimes a zero length field, which must be Empty.
                if rng.random_bool(0.2) && b.len() >= 4 {
                    b[..4].fill(0);
                }
                b
            }
            // Random bytes behind a plausible header.
            1 => {
                let n = rng.random_range(1..48usize);
                let mut b = (n as u32).to_be_bytes().to_vec();
                b.push(PROTOCOL_VERSION);
                b.extend((1..n).map(|_| rng.random::<u8>()));
                b
            }
            // Bit flips anywhere.
            2 => {
                let mut b = seed.clone();
                for _ in 0..rng.random_range(1..4) {
                    let at = rng.random_range(0..b.len());
                    b[at] ^= 1 << rng.random_range(0..8);
                }
                b
            }
            // Truncation.
            3 => seed[..rng.random_range(0..seed.len())].to_vec(),
            // Length field tampering (small deltas).
            4 => {
                let mut b = seed.clone();
                let len = u32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                let delta: i64 = rng.random_range(-8..=8);
                let new = (i64::from(len) + delta).clamp(0, i64::from(u32::MAX)) as u32;
                b[..4].copy_from_slice(&new.to_be_bytes());
                b
            }
            // Huge lengths.
            5 => {
                let mut b = seed.clone();
                let new = rng.random_range((MAX_FRAME_LEN as u32 - 2)..=u32::MAX);
                b[..4].copy_from_slice(&new.to_be_bytes());
                b
            }
            // Wrong version.
            6 => {
                let mut b = seed.clone();
                b[4] = rng.random_range(0..=255);
                b
            }
            // Valid frame followed by garbage (only the first frame is consumed).
            _ => {
                let mut b = seed.clone();
                b.extend((0..rng.random_range(0..16)).map(|_| rng.random::<u8>()));
                b
            }
        };
        check::<NodeMessage>(&buf, &mut counts);
        check::<ControllerMessage>(&buf, &mut counts);
    }
    // Every class of outcome was exercised.
    assert!(counts.iter().all(|&c| c > 100), "{counts:?}");
}

//! Frames on async streams: round trips, truncation, refusals, and oversized writes.

use fleet_link::framing::{read_message, write_message, write_messages};
use fleet_proto::codec::{DecodeError, MAX_FRAME_LEN, decode, encode};
use fleet_proto::messages::NodeMessage;
use fleet_testkit::messages::node_messages;

#[tokio::test]
async fn async_read_write() {
    let mut buf = Vec::new();
    for msg in node_messages() {
        write_message(&mut buf, &msg).await.expect("write");
    }
    let mut reader: &[u8] = &buf;
    for msg in node_messages() {
        let got = read_message::<NodeMessage, _>(&mut reader)
            .await
            .expect("read");
        assert_eq!(got, Some(msg));
    }
    let end = read_message::<NodeMessage, _>(&mut reader)
        .await
        .expect("clean end");
    assert_eq!(end, None);
    // Written as one batch, the same frames byte for byte.
    let mut batch = Vec::new();
    write_messages(&mut batch, &node_messages())
        .await
        .expect("write batch");
    assert_eq!(batch, buf);

    let first_len = encode(&node_messages()[0]).len();
    for cut in [1, 3, 4, 5, first_len / 2, first_len - 1] {
        let mut reader: &[u8] = &buf[..cut];
        let got = read_message::<NodeMessage, _>(&mut reader).await;
        assert!(
            matches!(got, Err(DecodeError::Truncated)),
            "cut {cut}: {got:?}"
        );
    }

    let mut huge: &[u8] = &[0xff, 0xff, 0xff, 0xff, 1];
    let got = read_message::<NodeMessage, _>(&mut huge).await;
    assert!(matches!(got, Err(DecodeError::TooLarge { .. })), "{got:?}");
    let mut wrong: &[u8] = &[0, 0, 0, 3, 9, b'{', b'}'];
    let got = read_message::<NodeMessage, _>(&mut wrong).await;
    assert!(
        matches!(got, Err(DecodeError::UnsupportedVersion { got: 9, .. })),
        "{got:?}"
    );
    let mut empty: &[u8] = &[0, 0, 0, 0];
    let got = read_message::<NodeMessage, _>(&mut empty).await;
    assert!(matches!(got, Err(DecodeError::Empty)), "{got:?}");
}

#[tokio::test]
async fn oversized_messages_are_not_written() {
    let msg = NodeMessage::CommandResult {
        id: 1,
        error: Some("x".repeat(MAX_FRAME_LEN)),
    };
    let mut buf = Vec::new();
    let err = write_message(&mut buf, &msg).await.err();
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::InvalidInput)
    );
    assert!(buf.is_empty());
    // In a batch, one oversized message keeps the whole batch from being written.
    let fine = NodeMessage::CommandResult { id: 2, error: None };
    let err = write_messages(&mut buf, &[fine, msg.clone()]).await.err();
    assert_eq!(
        err.map(|e| e.kind()),
        Some(std::io::ErrorKind::InvalidInput)
    );
    assert!(buf.is_empty());
    // encode produces it, but decode refuses it.
    let frame = encode(&msg);
    assert!(matches!(
        decode::<NodeMessage>(&frame),
        Err(DecodeError::TooLarge { .. })
    ));
}

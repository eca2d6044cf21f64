//! Helpers shared by the turn-node tests.

use std::net::SocketAddr;
use std::time::Duration;

use stun::message::{CLASS_REQUEST, Getter, METHOD_ALLOCATE, Message, MessageType, Setter};
use tokio::net::UdpSocket;

/// Sends an unauthenticated Allocate from a fresh UDP socket and returns the error code of the
/// answer (`None` when no error answer arrives within 10 s).
pub async fn unauthenticated_allocate_error(server: SocketAddr) -> Option<u16> {
    let mut m = Message::new();
    let setters: Vec<Box<dyn Setter>> = vec![
        Box::new(stun::agent::TransactionId::new()),
        Box::new(MessageType::new(METHOD_ALLOCATE, CLASS_REQUEST)),
        Box::new(turn::proto::reqtrans::RequestedTransport::default()),
    ];
    m.build(&setters).ok()?;
    let socket = UdpSocket::bind("127.0.0.1:0").await.ok()?;
    socket.send_to(&m.raw, server).await.ok()?;
    let mut buf = [0u8; 1500];
    let (n, _) = tokio::time::timeout(Duration::from_secs(10), socket.recv_from(&mut buf))
        .await
        .ok()?
        .ok()?;
    let mut r = Message::new();
    r.raw = buf[..n].to_vec();
    r.decode().ok()?;
    let mut code = stun::error_code::ErrorCodeAttribute::default();
    code.get_from(&r).ok()?;
    Some(code.code.0)
}

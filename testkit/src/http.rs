//! Minimal HTTP/1.1 GETs on loopback for probing nodes and controllers in tests, one blocking and
//! one async, with no HTTP client library in between: `(status, body)`.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

fn request(host: &str, path: &str) -> String {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n")
}

fn parse_response(raw: &str) -> anyhow::Result<(u16, String)> {
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("no HTTP status in {raw:?}"))?;
    let body = raw
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

/// A blocking GET (for code without an async runtime).
pub fn http_get_sync(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(request(&addr.to_string(), path).as_bytes())?;
    let mut buf = String::new();
    s.read_to_string(&mut buf)?;
    parse_response(&buf)
}

/// An async GET to `addr` (`host:port`); panics when the server cannot be reached or answers
/// something that is not HTTP.
pub async fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    s.write_all(request(addr, path).as_bytes())
        .await
        .expect("write");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).await.expect("read");
    parse_response(&String::from_utf8_lossy(&raw)).expect("an HTTP response")
}

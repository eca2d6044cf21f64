//! Waiting for a condition in tests without fixed sleeps: poll until it holds or a deadline.

use std::time::{Duration, Instant};

/// How often the waits poll.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `f` until it returns `Some` or `timeout` passes (`None`).
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls `cond` until it holds; panics naming `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let held = eventually(timeout, || std::future::ready(cond().then_some(()))).await;
    assert!(
        held.is_some(),
        "timed out after {timeout:?} waiting for {what}"
    );
}

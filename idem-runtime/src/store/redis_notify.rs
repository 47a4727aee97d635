//! Completion pushed from Redis to waiting duplicates (`on_conflict = "wait"` and webhooks).
//!
//! The complete and release scripts `PUBLISH` the storage key on [`CHANNEL`]. Each `RedisStore`
//! keeps one subscriber connection (in a cluster, to any node: classic pub/sub is broadcast over
//! the cluster bus) and wakes the local waiters of that key. The push only shortens the wait:
//! waiters also re-read the record every [`POLL_EVERY`](super::waiters::POLL_EVERY), so a lost message, a reconnecting
//! subscriber or a lease that simply ran out (a crashed worker publishes nothing) still end the
//! wait, just later.

use futures_util::StreamExt;
use std::sync::Weak;
use std::time::Duration;

pub(crate) use super::waiters::Waiters;

/// The channel completions are published on.
pub const CHANNEL: &str = "idem:done";

/// Keeps one subscription alive for as long as `waiters` is, reconnecting with a short backoff
/// and trying each of `urls` in turn.
pub(crate) async fn subscribe(urls: Vec<String>, waiters: Weak<Waiters>) {
    let mut attempt = 0usize;
    loop {
        if waiters.strong_count() == 0 {
            return;
        }
        let url = &urls[attempt % urls.len().max(1)];
        attempt += 1;
        match listen(url, &waiters).await {
            Ok(()) => tracing::info!("idem: Redis completion subscription ended; reconnecting"),
            Err(error) => {
                tracing::debug!(%error, "idem: Redis completion subscription failed; retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen(url: &str, waiters: &Weak<Waiters>) -> redis::RedisResult<()> {
    let client = redis::Client::open(url)?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(CHANNEL).await?;
    let mut messages = pubsub.on_message();
    // Wake up now and then even without messages, to notice that the store was dropped.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Some(w) = waiters.upgrade() else {
            return Ok(());
        };
        match next {
            Ok(Some(msg)) => {
                if let Ok(key) = std::str::from_utf8(msg.get_payload_bytes()) {
                    w.wake(key);
                }
            }
            Ok(None) => return Ok(()),
            Err(_) => {}
        }
    }
}

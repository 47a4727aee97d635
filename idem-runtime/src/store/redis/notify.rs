//! Completion pushed from Redis to waiting duplicates (`on_conflict = "wait"` and webhooks).
//!
//! The complete and release scripts `PUBLISH` the storage key on [`CHANNEL`]. Each `RedisStore`
//! keeps one subscriber connection (in a cluster, to any node: classic pub/sub is broadcast over
//! the cluster bus) and wakes the local waiters of that key. The push only shortens the wait:
//! waiters also re-read the record every [`POLL_EVERY`](super::waiters::POLL_EVERY), so a lost message, a reconnecting
//! subscriber or a lease that simply ran out (a crashed worker publishes nothing) still end the
//! wait, just later.

use futures_util::StreamExt;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::conn::SentinelConn;
pub(crate) use crate::store::waiters::Waiters;

/// The channel completions are published on.
pub(super) const CHANNEL: &str = "idem:done";

/// Where the subscriber connects.
pub(super) enum Target {
    /// Each of these in turn (one server, or a cluster's seed nodes).
    Urls(Vec<String>),
    /// Whichever master the Sentinels name at each (re)connection.
    Sentinel(Arc<SentinelConn>),
}

/// Keeps one subscription alive for as long as `waiters` is, reconnecting with a short backoff
/// (to the next URL, or to the master the Sentinels name now).
pub(super) async fn subscribe(target: Target, waiters: Weak<Waiters>) {
    let mut attempt = 0usize;
    loop {
        if waiters.strong_count() == 0 {
            return;
        }
        let client = match &target {
            Target::Urls(urls) if urls.is_empty() => return,
            Target::Urls(urls) => redis::Client::open(urls[attempt % urls.len()].as_str()),
            Target::Sentinel(s) => s.master().await,
        };
        attempt += 1;
        let listened = match client {
            Ok(client) => listen(client, &waiters).await,
            Err(e) => Err(e),
        };
        match listened {
            Ok(()) => tracing::info!("idem: Redis completion subscription ended; reconnecting"),
            Err(error) => {
                tracing::debug!(%error, "idem: Redis completion subscription failed; retrying")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn listen(client: redis::Client, waiters: &Weak<Waiters>) -> redis::RedisResult<()> {
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

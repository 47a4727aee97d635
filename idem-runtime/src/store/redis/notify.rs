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

/// The channel completions, releases and purges are published on (the storage key).
pub(super) const CHANNEL: &str = "idem:done";
/// The channel purges are published on (the storage key), for other instances' replay caches.
pub(super) const PURGED: &str = "idem:purged";
/// The channel erasures are published on (the storage-key prefix).
pub(super) const ERASED: &str = "idem:erased";

/// Where a subscription delivers: local waiters, and the store's invalidation channel.
pub(super) struct Sinks {
    pub(super) waiters: Weak<Waiters>,
    pub(super) invalidations: tokio::sync::broadcast::Sender<crate::store::Invalidation>,
}

/// Where the subscriber connects.
pub(super) enum Target {
    /// Each of these in turn (one server, or a cluster's seed nodes).
    Urls(Vec<String>),
    /// Whichever master the Sentinels name at each (re)connection.
    Sentinel(Arc<SentinelConn>),
}

/// Keeps one subscription alive for as long as `waiters` is, reconnecting with a short backoff
/// (to the next URL, or to the master the Sentinels name now).
pub(super) async fn subscribe(target: Target, sinks: Sinks) {
    let mut attempt = 0usize;
    loop {
        if sinks.waiters.strong_count() == 0 {
            return;
        }
        let client = match &target {
            Target::Urls(urls) if urls.is_empty() => return,
            Target::Urls(urls) => redis::Client::open(urls[attempt % urls.len()].as_str()),
            Target::Sentinel(s) => s.master().await,
        };
        attempt += 1;
        let listened = match client {
            Ok(client) => listen(client, &sinks).await,
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

async fn listen(client: redis::Client, sinks: &Sinks) -> redis::RedisResult<()> {
    use crate::store::Invalidation;
    let mut pubsub = client.get_async_pubsub().await?;
    // One SUBSCRIBE for the three channels: one round trip.
    pubsub.subscribe(&[CHANNEL, PURGED, ERASED]).await?;
    // Whatever was published while this subscription was down is lost: caches start afresh.
    let _ = sinks.invalidations.send(Invalidation::All);
    let mut messages = pubsub.on_message();
    // Wake up now and then even without messages, to notice that the store was dropped.
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), messages.next()).await;
        let Some(w) = sinks.waiters.upgrade() else {
            return Ok(());
        };
        match next {
            Ok(Some(msg)) => {
                let Ok(payload) = std::str::from_utf8(msg.get_payload_bytes()) else {
                    continue;
                };
                match msg.get_channel_name() {
                    PURGED => {
                        let _ = sinks
                            .invalidations
                            .send(Invalidation::Key(payload.to_owned()));
                    }
                    ERASED => {
                        let _ = sinks
                            .invalidations
                            .send(Invalidation::Prefix(payload.to_owned()));
                    }
                    _ => w.wake(payload),
                }
            }
            Ok(None) => return Ok(()),
            Err(_) => {}
        }
    }
}

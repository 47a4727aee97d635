//! Local waiters of records, woken by a store's completion push (Redis pub/sub, PostgreSQL
//! `LISTEN`/`NOTIFY`). The push only shortens a wait: waiters re-read the record every
//! [`POLL_EVERY`] as well, so a lost message still ends the wait, later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a waiter re-reads the record when no push arrives.
pub const POLL_EVERY: Duration = Duration::from_millis(250);

/// Local waiters, by storage key.
#[derive(Default)]
pub(crate) struct Waiters {
    by_key: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    /// The notifier of `key`, shared by everyone waiting on it here.
    pub fn register(&self, key: &str) -> Arc<Notify> {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(key).and_then(Weak::upgrade) {
            return n;
        }
        if map.len() >= 1024 {
            map.retain(|_, w| w.strong_count() > 0);
        }
        let n = Arc::new(Notify::new());
        map.insert(key.to_owned(), Arc::downgrade(&n));
        n
    }

    /// Wakes everyone here waiting on `key`.
    pub fn wake(&self, key: &str) {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(key).and_then(Weak::upgrade) {
            n.notify_waiters();
        }
    }
}

/// Waits on `key` until `done` says the record left its in-progress state, `timeout` passes, or
/// (between reads) a push for `key` arrives.
pub(crate) async fn wait_for<F, Fut, E>(
    waiters: &Waiters,
    key: &str,
    timeout: Duration,
    mut done: F,
) -> Result<(), E>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool, E>>,
{
    let until = tokio::time::Instant::now() + timeout;
    let notify = waiters.register(key);
    loop {
        // Created before the read: a completion pushed in between still wakes it.
        let notified = notify.notified();
        if done().await? {
            return Ok(());
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            return Ok(());
        }
        let _ = tokio::time::timeout((until - now).min(POLL_EVERY), notified).await;
    }
}

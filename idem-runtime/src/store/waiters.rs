//! Local waiters of records, woken by a store's completion push (Redis pub/sub, PostgreSQL
//! `LISTEN`/`NOTIFY`). The push only shortens a wait: waiters re-read the record every
//! [`POLL_EVERY`] as well, so a lost message still ends the wait, later.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Notify;

/// How often a waiter re-reads the record when no push arrives.
pub(super) const POLL_EVERY: Duration = Duration::from_millis(250);

/// Local waiters, by storage key.
#[derive(Default)]
pub(crate) struct Waiters {
    by_key: Mutex<HashMap<String, Weak<Notify>>>,
}

impl Waiters {
    /// The notifier of `key`, shared by everyone waiting on it here.
    pub(super) fn register(&self, key: &str) -> Arc<Notify> {
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
    pub(super) fn wake(&self, key: &str) {
        let map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = map.get(key).and_then(Weak::upgrade) {
            n.notify_waiters();
        }
    }
}

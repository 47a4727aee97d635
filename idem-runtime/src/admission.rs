//! Per-principal admission of new keys: one principal cannot take a shared store for everyone.
//!
//! A token bucket per principal tag, in this process: `limit` new keys per `per`, refilled
//! continuously. It is consulted only when a `begin` acquired a key (a new operation): replays and
//! answers to duplicates are never limited. A refused acquisition is released at once and answered
//! 429 with `Retry-After`, to that principal only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use crate::clock::Instant;

/// Buckets kept before full ones (principals idle for a whole window) are dropped.
const MAX_BUCKETS: usize = 65_536;

/// The limiter of one app.
#[derive(Debug)]
pub(crate) struct Admission {
    capacity: f64,
    per_sec: f64,
    buckets: Mutex<HashMap<String, (f64, Instant)>>,
}

impl Admission {
    /// At most `limit` new keys per principal per `per` (a burst of `limit`, then a steady
    /// `limit / per`).
    pub(crate) fn new(limit: u32, per: Duration) -> Self {
        let capacity = f64::from(limit.max(1));
        Admission {
            capacity,
            per_sec: capacity / per.as_secs_f64().max(0.001),
            buckets: Mutex::default(),
        }
    }

    /// Takes one new key for principal `tag`: `Err` with how long until one is available.
    /// Whether `tag` may start a new operation now, without spending its token: `Err` with the
    /// wait when it is over its limit (a request that is no new operation may still go on).
    pub(crate) fn peek(&self, tag: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let Some((tokens, at)) = buckets.get(tag) else {
            return Ok(());
        };
        let tokens =
            (tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.capacity);
        if tokens >= 1.0 {
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - tokens) / self.per_sec))
        }
    }

    pub(crate) fn admit(&self, tag: &str) -> Result<(), Duration> {
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.len() >= MAX_BUCKETS && !buckets.contains_key(tag) {
            let (capacity, per_sec) = (self.capacity, self.per_sec);
            buckets.retain(|_, (tokens, at)| {
                *tokens + now.duration_since(*at).as_secs_f64() * per_sec < capacity
            });
        }
        let (tokens, at) = buckets
            .entry(tag.to_owned())
            .or_insert((self.capacity, now));
        *tokens =
            (*tokens + now.duration_since(*at).as_secs_f64() * self.per_sec).min(self.capacity);
        *at = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - *tokens) / self.per_sec))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_refusals_for_that_principal_only() {
        let a = Admission::new(3, Duration::from_secs(60));
        for _ in 0..3 {
            assert!(a.admit("flooder").is_ok());
        }
        let wait = a.admit("flooder").unwrap_err();
        assert!(
            wait > Duration::from_secs(10) && wait <= Duration::from_secs(20),
            "{wait:?}"
        );
        assert!(a.admit("someone-else").is_ok());
    }
}

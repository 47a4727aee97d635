//! The one clock the runtime reads: tokio's [`Instant`](tokio::time::Instant) for leases, TTLs,
//! waits and rate limits, and [`wall`] for the few wall-clock times it shows (the
//! `Idempotency-Expires` header, a record's acquisition time, webhook timestamps).
//!
//! Outside a runtime whose clock is paused, tokio's `Instant` is `std::time::Instant`. A
//! simulation on a current-thread runtime started paused (`tokio::time::pause`, feature
//! `test-util`) moves this clock with `tokio::time::advance` — leases lapse and records expire
//! in virtual time, and one seed gives one history — with no cost on the request path of a real
//! one. (A `MemoryStore`'s sweeper is a thread of its own, on the real clock: a simulation builds
//! its store with `sweep_every(None)`, expiry then being checked on every read.)

use std::time::SystemTime;

pub(crate) use tokio::time::Instant;

/// The wall clock, moved by as much as the runtime's clock was moved (a paused clock advanced
/// past real time, or left behind it); `SystemTime::now()` on a real clock.
pub(crate) fn wall() -> SystemTime {
    let now = SystemTime::now();
    let real = std::time::Instant::now();
    let ours = Instant::now().into_std();
    if ours >= real {
        now + (ours - real)
    } else {
        now - (real - ours)
    }
}

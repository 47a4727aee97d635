//! One record of the memory store, and what it answers.

use std::sync::Arc;
use tokio::sync::Notify;

use crate::clock::Instant;
use crate::store::Begin;
use crate::{FencingToken, Fingerprint, Record, RecordState, StoredResponse};

/// One record: its fingerprint, state, expiry and attempt count, and its size in the store.
pub(super) struct Entry {
    pub(super) fingerprint: Fingerprint,
    pub(super) state: EntryState,
    /// When the record goes away entirely (TTL of a completed one; `keep` otherwise).
    pub(super) expires_at: Instant,
    pub(super) attempt: u32,
    pub(super) acquired_at: Instant,
    pub(super) size: usize,
}

/// In progress (with its lease), completed, or released.
pub(super) enum EntryState {
    InProgress {
        token: FencingToken,
        /// Wakes the duplicates waiting for it (`on_conflict = "wait"`); made by the first.
        done: Option<Arc<Notify>>,
        lease_until: Instant,
        /// Made by `begin_tentative` and not confirmed yet: gone once its lease lapsed.
        tentative: bool,
    },
    Completed(StoredResponse),
    /// Free again (released); kept only to count attempts.
    Released,
}

impl EntryState {
    /// Drops the state, waking the duplicates waiting on it if it was in progress.
    pub(super) fn drop_waking(self) {
        if let EntryState::InProgress {
            done: Some(done), ..
        } = self
        {
            done.notify_waiters();
        }
    }
}

impl Entry {
    /// The record as `get` reports it: `None` unless live.
    pub(super) fn record(&self, now: Instant) -> Option<Record> {
        if !self.is_live(now) {
            return None;
        }
        let (state, until) = match &self.state {
            EntryState::InProgress {
                token, lease_until, ..
            } => (RecordState::InProgress { token: *token }, *lease_until),
            EntryState::Completed(r) => (
                RecordState::Completed {
                    response: r.clone(),
                },
                self.expires_at,
            ),
            EntryState::Released => return None,
        };
        Some(Record {
            fingerprint: self.fingerprint,
            state,
            attempt: self.attempt,
            acquired_at: Some(
                crate::clock::wall() - now.saturating_duration_since(self.acquired_at),
            ),
            expires_in: until - now,
        })
    }

    /// `begin`'s answer for this record, live at `now`, to a request with `fingerprint`.
    pub(super) fn answer(&self, fingerprint: &Fingerprint, now: Instant) -> Begin {
        if self.fingerprint != *fingerprint {
            return Begin::Mismatch;
        }
        match &self.state {
            EntryState::InProgress { lease_until, .. } => Begin::InProgress {
                lease_left: *lease_until - now,
            },
            EntryState::Completed(r) => Begin::Replay(r.clone()),
            EntryState::Released => unreachable!("a released record is never live"),
        }
    }

    /// Drops the entry, waking the duplicates waiting for it.
    pub(super) fn drop_waking(self) {
        self.state.drop_waking();
    }

    /// The lease of this record in progress now ends at `until` (and the record lives at least
    /// as long); `confirm`: it is no longer tentative.
    pub(super) fn renew(&mut self, until: Instant, confirm: bool) {
        if let EntryState::InProgress {
            tentative,
            lease_until,
            ..
        } = &mut self.state
        {
            *lease_until = until;
            *tentative &= !confirm;
        }
        self.expires_at = self.expires_at.max(until);
    }

    /// Made by `begin_tentative` and not confirmed yet.
    pub(super) fn is_tentative(&self) -> bool {
        matches!(
            self.state,
            EntryState::InProgress {
                tentative: true,
                ..
            }
        )
    }

    /// Whether the record still blocks a new acquisition: a completed record within its TTL, or
    /// an in-progress one within its lease. Only such records are never evicted.
    pub(super) fn is_live(&self, now: Instant) -> bool {
        match &self.state {
            EntryState::Completed(_) => self.expires_at > now,
            EntryState::InProgress { lease_until, .. } => *lease_until > now,
            EntryState::Released => false,
        }
    }
}

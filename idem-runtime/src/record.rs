//! Records: what a store keeps per key (the response itself is [`StoredResponse`]).

use std::time::Duration;

use crate::{Fingerprint, StoredResponse};

/// Identifies one holder of a key's lease. A store hands out a new, larger token on every
/// acquisition, and refuses `complete`/`renew`/`release` from any other token (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// The state of one key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// A handler holds the lease and is running.
    InProgress {
        /// The lease holder.
        token: FencingToken,
    },
    /// The handler finished; its response is replayed until the record expires.
    Completed {
        /// The response to replay.
        response: StoredResponse,
    },
}

/// A record as read back from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the request that created the record.
    pub fingerprint: Fingerprint,
    /// In progress or completed.
    pub state: RecordState,
    /// Which acquisition of the key produced this state (1 for the first).
    pub attempt: u32,
    /// When that acquisition happened (the store's clock), if the store knows.
    pub acquired_at: Option<std::time::SystemTime>,
    /// Time left until the lease (in progress) or the TTL (completed) runs out.
    pub expires_in: Duration,
}

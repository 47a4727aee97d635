//! What a run recorded, in virtual time (ms since its start): every send and what came back,
//! every effect a handler had, every fault as it happened. The oracle reads nothing else.

use serde::{Deserialize, Serialize};
use std::sync::Mutex;

/// One thing that happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Event {
    /// A client sent request `req` of operation `op` to `instance`.
    Send {
        req: u64,
        op: usize,
        instance: usize,
        at: u64,
        /// The body's variant (another payload under the same key when it differs).
        variant: u8,
        /// A proxy appended another account in front of the client's.
        doubled: bool,
    },
    /// Request `req` got an answer.
    Answer {
        req: u64,
        at: u64,
        status: u16,
        /// The body, as text (lossy).
        body: String,
        /// `Retry-After`, in seconds.
        retry_after: Option<u64>,
    },
    /// Right after request `req` (of `op`) was refused for its account's admission limit
    /// (429), the store was read for its key: whether a record of it was there.
    Inspected {
        req: u64,
        op: usize,
        at: u64,
        recorded: bool,
    },
    /// Request `req` got no answer: the client hung up, or its instance was killed or down.
    Lost { req: u64, at: u64, why: String },
    /// A handler had its effect for operation `op` (request `req`) on `instance`; its run began
    /// at `began` (virtual ms) and the effect is number `id`.
    Effect {
        id: u64,
        op: usize,
        req: u64,
        instance: usize,
        began: u64,
        at: u64,
        /// The payload (body variant) it was had for.
        #[serde(default)]
        variant: u64,
    },
    /// The handler that had effect `id` returned at `at`.
    Returned { id: u64, at: u64 },
    /// A handler began a run of operation `op` (request `req`) on `instance` — with an effect
    /// or not (a 503 first) — handed `downstream` as the key to send downstream (none when it
    /// ran unprotected).
    Ran {
        op: usize,
        req: u64,
        instance: usize,
        at: u64,
        downstream: Option<String>,
    },
    /// A `Steps` operation's foreign step charged the processor for operation `op` (request
    /// `req`) on `instance`, under downstream key `key` (the processor takes one charge per key).
    Charged {
        op: usize,
        req: u64,
        instance: usize,
        at: u64,
        key: String,
    },
    /// A fault began on `instance` (`what`, as planned) at `at`, lasting until `until` for the
    /// lasting ones.
    Fault {
        instance: usize,
        what: String,
        at: u64,
        until: Option<u64>,
    },
}

impl Event {
    /// When it happened (virtual ms).
    pub fn at(&self) -> u64 {
        match self {
            Event::Send { at, .. }
            | Event::Answer { at, .. }
            | Event::Lost { at, .. }
            | Event::Inspected { at, .. }
            | Event::Effect { at, .. }
            | Event::Returned { at, .. }
            | Event::Ran { at, .. }
            | Event::Charged { at, .. }
            | Event::Fault { at, .. } => *at,
        }
    }
}

/// `events` with those of one virtual instant in a fixed order: what one scenario always
/// records. (Tasks woken at one instant may run in another order from one run to the next —
/// the runtime's hash maps are seeded per process — and record their events in that order.)
pub fn canonical(events: &[Event]) -> Vec<Event> {
    let mut out = events.to_vec();
    out.sort_by_cached_key(|e| (e.at(), format!("{e:?}")));
    out
}

/// The events of one run, in order.
#[derive(Debug, Default)]
pub struct History {
    events: Mutex<Vec<Event>>,
}

impl History {
    /// Records `event`.
    pub fn push(&self, event: Event) {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(event);
    }

    /// What was recorded so far.
    pub fn events(&self) -> Vec<Event> {
        self.events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

//! Per-principal caps of the memory store: what one principal may hold, and what each holds.

use std::collections::HashMap;
use std::sync::Mutex;

use crate::StorageKey;

/// What one principal may hold, and what each holds: records and bytes, by principal tag.
pub(super) struct Principals {
    pub(super) records: usize,
    pub(super) bytes: usize,
    pub(super) held: Mutex<HashMap<u64, (usize, usize)>>,
}

impl Principals {
    fn tag(key: &StorageKey) -> u64 {
        u64::from_str_radix(key.principal_tag(), 16).unwrap_or(0)
    }

    /// Whether `key`'s principal may take one more record of `size` bytes.
    pub(super) fn admits(&self, key: &StorageKey, size: usize) -> bool {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let (records, bytes) = held.get(&Self::tag(key)).copied().unwrap_or((0, 0));
        records < self.records && bytes + size <= self.bytes
    }

    /// Adds (or, negative, removes) records and bytes to `key`'s principal.
    pub(super) fn charge(&self, key: &StorageKey, records: isize, bytes: isize) {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let tag = Self::tag(key);
        let entry = held.entry(tag).or_insert((0, 0));
        entry.0 = entry.0.saturating_add_signed(records);
        entry.1 = entry.1.saturating_add_signed(bytes);
        if entry.0 == 0 {
            held.remove(&tag);
        }
    }
}

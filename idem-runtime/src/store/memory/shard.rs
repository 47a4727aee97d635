//! One shard of the memory store's map: a hash table whose slots keep each key's hash beside
//! it. Growing the table then moves slots without hashing any key again — a key's text lives in
//! an allocation of its own, so hashing it again is a cache miss for every record moved, and a
//! growing store moves every record about once per doubling.

use hashbrown::HashTable;
use std::hash::BuildHasher;

use super::entry::Entry;
use crate::StorageKey;

/// A storage key with its hash under the store's hasher: computed once per store call.
#[derive(Clone, Copy)]
pub(super) struct Hashed<'k> {
    pub(super) hash: u64,
    pub(super) key: &'k StorageKey,
}

impl<'k> Hashed<'k> {
    /// `key` hashed by `hasher`. Storage keys are HMAC outputs, but without an app secret anyone
    /// can compute them: the hasher is seeded per store, so nobody can aim keys at one bucket.
    pub(super) fn new(hasher: &foldhash::fast::RandomState, key: &'k StorageKey) -> Self {
        Hashed {
            hash: hasher.hash_one(key.as_str()),
            key,
        }
    }

    /// Which of `shards` shards holds it. Storage keys end in hex of a SHA-256, so their last
    /// bytes are uniformly spread (the flood test's resident-memory bound was calibrated on
    /// this choice; a choice by hash bits measured 18 % more).
    pub(super) fn shard(&self, shards: usize) -> usize {
        self.key
            .as_str()
            .bytes()
            .rev()
            .take(4)
            .fold(0usize, |acc, b| {
                acc.wrapping_mul(31).wrapping_add(usize::from(b))
            })
            % shards
    }
}

struct Slot {
    hash: u64,
    key: StorageKey,
    entry: Entry,
}

/// One shard's records.
#[derive(Default)]
pub(super) struct Shard {
    table: HashTable<Slot>,
}

impl Shard {
    /// How many records it holds.
    pub(super) fn len(&self) -> usize {
        self.table.len()
    }

    /// The entry of `at`, if any.
    pub(super) fn get(&self, at: Hashed<'_>) -> Option<&Entry> {
        self.table
            .find(at.hash, |s| s.key == *at.key)
            .map(|s| &s.entry)
    }

    /// The entry of `at`, if any, to change.
    pub(super) fn get_mut(&mut self, at: Hashed<'_>) -> Option<&mut Entry> {
        self.table
            .find_mut(at.hash, |s| s.key == *at.key)
            .map(|s| &mut s.entry)
    }

    /// Whether `at` has an entry.
    pub(super) fn contains(&self, at: Hashed<'_>) -> bool {
        self.get(at).is_some()
    }

    /// Adds the entry of `at`, which has none.
    pub(super) fn insert_new(&mut self, at: Hashed<'_>, entry: Entry) {
        self.table.insert_unique(
            at.hash,
            Slot {
                hash: at.hash,
                key: at.key.clone(),
                entry,
            },
            |s| s.hash,
        );
    }

    /// Takes the entry of `at` out, if any.
    pub(super) fn remove(&mut self, at: Hashed<'_>) -> Option<Entry> {
        match self.table.find_entry(at.hash, |s| s.key == *at.key) {
            Ok(found) => Some(found.remove().0.entry),
            Err(_) => None,
        }
    }

    /// Every record, with its key.
    pub(super) fn iter(&self) -> impl Iterator<Item = (&StorageKey, &Entry)> {
        self.table.iter().map(|s| (&s.key, &s.entry))
    }

    /// Takes out every record `doomed` picks, and gives each to `gone` with its key.
    pub(super) fn remove_where(
        &mut self,
        mut doomed: impl FnMut(&StorageKey, &Entry) -> bool,
        mut gone: impl FnMut(StorageKey, Entry),
    ) {
        for slot in self.table.extract_if(|s| doomed(&s.key, &s.entry)) {
            gone(slot.key, slot.entry);
        }
    }
}

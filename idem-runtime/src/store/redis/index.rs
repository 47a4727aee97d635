//! The per-principal index of a Redis Cluster store, so that erasing one principal never scans
//! the keyspace.
//!
//! A principal's records hash to every slot (their keys carry no hash tag, so load spreads over
//! the cluster). Each record is therefore indexed **in its own slot**: `begin`, when it acquires a
//! key, adds the record's key to the set `<prefix>ix:{<t>}:<principal tag>`, where `<t>` is a short
//! string chosen to hash to the record's slot — the same script, the same slot, no extra round
//! trip. Erasing a principal visits its set in each of the 16384 slots (`SPOP` 1000 and `UNLINK`
//! per call, 32 calls in flight): work in proportion to the slots and the principal's records,
//! never to the keyspace.
//!
//! Cost: one `SADD` and one `PTTL` per acquisition inside `begin`, and per live record about the
//! length of its key (~90 bytes) plus a set entry; each set expires with the longest-lived record
//! added to it (members of records that expired earlier stay until then).

use std::sync::OnceLock;

use super::conn::Conn;
use super::{corrupt, failed};
use crate::{StorageKey, StoreError};

const SLOTS: usize = 16384;

/// Pops up to 1000 keys from the index set and unlinks them: how many it popped, and how many
/// records were still there.
const ERASE: &str = r"
local members = redis.call('SPOP', KEYS[1], 1000)
local removed = 0
for _, k in ipairs(members) do removed = removed + redis.call('UNLINK', k) end
return {#members, removed}
";

/// The slot of `key`, as Redis Cluster computes it (CRC16/XMODEM of the hash tag, or of the
/// whole key without one).
pub(super) fn slot_of(key: &[u8]) -> usize {
    let tagged = key.iter().position(|&b| b == b'{').and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|&b| b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    usize::from(crc16::State::<crc16::XMODEM>::calculate(
        tagged.unwrap_or(key),
    )) % SLOTS
}

/// For each slot, a short string that hashes to it (found once by counting up).
fn slot_tags() -> &'static [String] {
    static TAGS: OnceLock<Vec<String>> = OnceLock::new();
    TAGS.get_or_init(|| {
        let mut tags = vec![String::new(); SLOTS];
        let mut left = SLOTS;
        let mut n = 0u64;
        while left > 0 {
            let t = n.to_string();
            let slot = slot_of(t.as_bytes());
            if tags[slot].is_empty() {
                tags[slot] = t;
                left -= 1;
            }
            n += 1;
        }
        tags
    })
}

/// The index set of `principal_prefix` (`<prefix><tag>-`) in `slot`.
fn index_in(principal_prefix: &str, slot: usize) -> Option<String> {
    let body = principal_prefix.strip_suffix('-')?;
    let at = body.len().checked_sub(crate::secret::TAG_LEN)?;
    let (prefix, tag) = (body.get(..at)?, body.get(at..)?);
    Some(format!("{prefix}ix:{{{}}}:{tag}", slot_tags()[slot]))
}

/// The index set `key` is added to: the one of its principal, in its own slot.
pub(super) fn index_of(key: &StorageKey) -> Option<String> {
    let full = key.as_str();
    let principal_prefix =
        full.get(..full.len() - key.status_id().len() + crate::secret::TAG_LEN + 1)?;
    index_in(principal_prefix, slot_of(full.as_bytes()))
}

/// Erases every record indexed under `principal_prefix`, slot by slot; how many records went.
pub(super) async fn erase(conn: &Conn, principal_prefix: &str) -> Result<u64, StoreError> {
    use futures_util::stream::{self, StreamExt, TryStreamExt};
    if index_in(principal_prefix, 0).is_none() {
        return Err(StoreError::Config(
            format!("`{principal_prefix}` is not a principal's key prefix").into(),
        ));
    }
    stream::iter(0..SLOTS)
        .map(|slot| async move {
            let Some(index) = index_in(principal_prefix, slot) else {
                return Ok(0);
            };
            let mut removed = 0u64;
            loop {
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(ERASE).arg(1).arg(&index);
                let answer = conn.query(&cmd).await.map_err(failed)?;
                let (popped, gone): (u64, u64) =
                    redis::from_redis_value(answer).map_err(|_| corrupt("erase answer"))?;
                removed += gone;
                if popped < 1000 {
                    return Ok::<u64, StoreError>(removed);
                }
            }
        })
        .buffer_unordered(32)
        .try_fold(0u64, |sum, n| async move { Ok(sum + n) })
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_slot_has_a_tag_that_hashes_to_it() {
        let tags = slot_tags();
        assert_eq!(tags.len(), SLOTS);
        for (slot, t) in tags.iter().enumerate() {
            assert_eq!(slot_of(format!("x{{{t}}}y").as_bytes()), slot);
        }
        // Known values from the Redis Cluster specification.
        assert_eq!(slot_of(b"123456789"), 0x31c3 % SLOTS);
        assert_eq!(slot_of(b"{user1000}.following"), slot_of(b"user1000"));
    }

    #[test]
    fn a_record_is_indexed_in_its_own_slot_under_its_principal() {
        let key = crate::secret::KeyDerivation::keyed(b"s").storage_key(
            "idem:",
            "e",
            b"acct_a",
            &crate::key::parse_key(b"k").expect("a key"),
        );
        let index = index_of(&key).expect("an index");
        assert_eq!(slot_of(index.as_bytes()), slot_of(key.as_str().as_bytes()));
        assert!(index.starts_with("idem:ix:{"));
        assert!(index.ends_with(key.principal_tag()));
    }
}

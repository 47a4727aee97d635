//! `begin` on PostgreSQL: one statement that takes a free record or shows the live one.

use bytes::Bytes;
use std::time::Duration;

use super::{failed, ms, PostgresStore};
use crate::store::{Begin, StoreError};
use crate::{FencingToken, Fingerprint, StorageKey, StoredResponse};

impl PostgresStore {
    /// `begin`; `state` `t` for `begin_tentative` (see `Store::begin_tentative`).
    pub(super) async fn begin_as(
        &self,
        key: &StorageKey,
        fingerprint: &Fingerprint,
        lease: Duration,
        keep: Duration,
        state: &str,
    ) -> Result<Begin, StoreError> {
        // A live row (completed, or leased) is read and returned without writing or locking
        // anything: replays and duplicates in flight cost one indexed read. Otherwise the insert
        // (or the takeover of a released, lapsed or expired row) happens in the same statement;
        // its `WHERE` re-checks the row under its lock, for a rival that got there first.
        let client = self.client().await?;
        // Prepared once per connection: after that, `begin` is one round trip.
        let statement = client
            .prepare_cached(&self.sql.begin)
            .await
            .map_err(failed)?;
        let (lease_ms, keep_ms) = (ms(lease), ms(keep));
        // A concurrent insert committed between this statement's snapshot and its conflict
        // check leaves it with no row to show: ask again, once.
        for _ in 0..2 {
            let rows = client
                .query(
                    &statement,
                    &[
                        &key.as_str(),
                        &fingerprint.0.as_slice(),
                        &lease_ms,
                        &keep_ms,
                        &state,
                    ],
                )
                .await
                .map_err(failed)?;
            let Some(row) = rows.first() else { continue };
            if row.get::<_, bool>(0) {
                return Ok(Begin::Acquired {
                    token: FencingToken(row.get::<_, i64>(1) as u64),
                    attempt: row.get::<_, i32>(2).max(1) as u32,
                });
            }
            let fp: Vec<u8> = row.get(3);
            if fp != fingerprint.0 {
                return Ok(Begin::Mismatch);
            }
            let state: String = row.get(4);
            return match state.as_str() {
                "p" | "t" => Ok(Begin::InProgress {
                    lease_left: Duration::from_millis(row.get::<_, i64>(5).max(0) as u64),
                }),
                _ => {
                    let raw: Option<Vec<u8>> = row.get(6);
                    let resp = StoredResponse::decode(Bytes::from(raw.unwrap_or_default()))
                        .map_err(|e| StoreError::Corrupt(Box::new(e)))?;
                    Ok(Begin::Replay(resp))
                }
            };
        }
        Err(StoreError::Corrupt(
            "begin found neither a free nor a live record".into(),
        ))
    }
}

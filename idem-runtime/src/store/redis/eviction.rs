//! Eviction: under any `maxmemory-policy` but `noeviction`, Redis may drop records when it runs
//! out of memory — every record carries a TTL, so `volatile-*` policies reach them too — and a
//! retry of a finished operation then runs again. The store refuses such a Redis at connect, and
//! checks again every ten seconds (a failover or a `CONFIG SET` may change it): a Redis that
//! starts evicting makes the store fail closed (503) until it is fixed. With
//! [`allow_eviction`](super::RedisStoreBuilder::allow_eviction) the store runs anyway, and logs
//! every growth of `evicted_keys` as an error (metric `idem_redis_evicted_keys_total`).

use redis::Value;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Weak;
use std::time::Duration;

use super::conn::Conn;
use crate::store::StoreError;

/// How often the policy and the eviction count are read again.
const WATCH_EVERY: Duration = Duration::from_secs(10);

/// What the watcher found, read by every call.
#[derive(Debug, Default)]
pub(super) struct Watch {
    /// A policy that evicts was found and eviction is not allowed: calls fail closed.
    refused: AtomicBool,
    /// `evicted_keys` summed over the nodes at the last look.
    evicted: AtomicU64,
}

impl Watch {
    /// `Err` while the store refuses to run on an evicting Redis.
    pub(super) fn check(&self) -> Result<(), StoreError> {
        if self.refused.load(Ordering::Relaxed) {
            Err(StoreError::Config(
                "Redis may evict idempotency records (maxmemory-policy is not noeviction); \
                 refusing until it is fixed"
                    .into(),
            ))
        } else {
            Ok(())
        }
    }
}

fn text(v: &Value) -> Option<String> {
    match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        Value::VerbatimString { text, .. } => Some(text.clone()),
        _ => None,
    }
}

/// The policy in a `CONFIG GET maxmemory-policy` answer (an array or, in RESP3, a map).
fn from_config(v: &Value) -> Option<String> {
    match v {
        Value::Array(items) => items.get(1).and_then(text),
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v)),
        _ => None,
    }
}

/// A field of an `INFO` answer.
fn info_field(v: &Value, field: &str) -> Option<String> {
    let info = text(v)?;
    info.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .map(|s| s.trim().to_owned())
}

/// The `maxmemory-policy` of every node that matters, by name: `CONFIG GET`, or where a
/// managed service forbids `CONFIG`, `INFO memory`.
async fn policies(conn: &Conn) -> Result<Vec<(String, String)>, StoreError> {
    let mut config = redis::cmd("CONFIG");
    config.arg("GET").arg("maxmemory-policy");
    if let Ok(answers) = conn.on_every_node(&config).await {
        let found: Option<Vec<_>> = answers
            .iter()
            .map(|(node, v)| from_config(v).map(|p| (node.clone(), p)))
            .collect();
        if let Some(found) = found.filter(|f| !f.is_empty()) {
            return Ok(found);
        }
    }
    let mut info = redis::cmd("INFO");
    info.arg("memory");
    let answers = conn.on_every_node(&info).await.map_err(super::failed)?;
    answers
        .iter()
        .map(|(node, v)| {
            info_field(v, "maxmemory_policy")
                .map(|p| (node.clone(), p))
                .ok_or_else(|| {
                    StoreError::Config(
                        format!(
                            "cannot read maxmemory-policy on {node} (neither CONFIG GET nor \
                             INFO memory)"
                        )
                        .into(),
                    )
                })
        })
        .collect()
}

/// The first node whose policy evicts, with its policy.
fn evicting(found: &[(String, String)]) -> Option<&(String, String)> {
    found.iter().find(|(_, p)| p != "noeviction")
}

/// The error of a store that will not run on an evicting Redis.
fn refusal(node: &str, policy: &str) -> StoreError {
    StoreError::Config(
        format!(
            "Redis maxmemory-policy is `{policy}` on {node}: it may evict idempotency records, \
             and a retry of a finished operation would then run again. Set `maxmemory-policy \
             noeviction` (CONFIG SET maxmemory-policy noeviction, and in redis.conf), or accept \
             the risk with RedisStoreBuilder::allow_eviction()"
        )
        .into(),
    )
}

/// At connect: `Err` when a node may evict and eviction is not allowed; the policy found
/// otherwise (logged as an error when it evicts).
pub(super) async fn check(conn: &Conn, allow: bool, watch: &Watch) -> Result<String, StoreError> {
    let found = policies(conn).await?;
    watch
        .evicted
        .store(evicted(conn).await.unwrap_or(0), Ordering::Relaxed);
    match evicting(&found) {
        Some((node, policy)) if !allow => Err(refusal(node, policy)),
        Some((node, policy)) => {
            tracing::error!(node, policy, "idem: Redis may evict idempotency records (maxmemory-policy is not noeviction); allow_eviction() is on, so the store runs anyway and reports every eviction");
            Ok(policy.clone())
        }
        None => Ok("noeviction".into()),
    }
}

/// `evicted_keys` summed over the nodes.
async fn evicted(conn: &Conn) -> Option<u64> {
    let mut info = redis::cmd("INFO");
    info.arg("stats");
    let answers = conn.on_every_node(&info).await.ok()?;
    answers
        .iter()
        .map(|(_, v)| info_field(v, "evicted_keys")?.parse::<u64>().ok())
        .sum()
}

/// Every ten seconds while `watch` lives: the policy again (refusing, or accepting again once
/// fixed), and evictions since the last look.
pub(super) async fn watch_forever(conn: Conn, allow: bool, watch: Weak<Watch>) {
    loop {
        tokio::time::sleep(WATCH_EVERY).await;
        let Some(w) = watch.upgrade() else { return };
        if let Ok(found) = policies(&conn).await {
            match evicting(&found) {
                Some((node, policy)) if !allow => {
                    if !w.refused.swap(true, Ordering::Relaxed) {
                        tracing::error!(error = %refusal(node, policy), "idem: Redis now may evict records; the store fails closed until it is fixed");
                    }
                }
                _ => {
                    if w.refused.swap(false, Ordering::Relaxed) {
                        tracing::info!(
                            "idem: Redis no longer evicts records; the store serves again"
                        );
                    }
                }
            }
        }
        if let Some(now) = evicted(&conn).await {
            let before = w.evicted.swap(now, Ordering::Relaxed);
            if now > before {
                let n = now - before;
                crate::observe::count_by(crate::observe::metric::REDIS_EVICTED_KEYS_TOTAL, n);
                tracing::error!(evicted = n, "idem: Redis evicted keys; idempotency records among them are gone, and retries of those operations run again");
            }
        }
    }
}

//! The Redis store's scripts at their edges: a key retried past the record's six attempt digits,
//! and a burst of calls meeting scripts the server lost (one reload, not one per call).

mod common;

use common::redis::{available, RedisServer};
use idem::{Begin, Fingerprint, RedisStore, StorageKey, Store};
use std::time::Duration;

const LEASE: Duration = Duration::from_secs(30);
const KEEP: Duration = Duration::from_secs(3600);

fn key(name: &str) -> StorageKey {
    StorageKey::scoped(
        "idem:",
        "scripts",
        b"",
        &idem::IdempotencyKey::parse(name.as_bytes()).expect("a valid key"),
    )
}

/// A store on a private server, with `k` acquired and released once: its record stands, free,
/// with its counters.
async fn released_record(name: &str) -> (RedisServer, RedisStore, StorageKey, Fingerprint, u64) {
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    let k = key(name);
    let fp = Fingerprint::strict("POST", "/", "", b"");
    let Ok(Begin::Acquired { token, .. }) = store.begin(&k, &fp, LEASE, KEEP).await else {
        panic!("acquire");
    };
    store.release(&k, token).await.expect("release");
    (redis, store, k, fp, token.0)
}

/// Overwrites bytes `at` of `k`'s record with `with`, keeping its TTL.
async fn forge(redis: &RedisServer, k: &StorageKey, at: std::ops::Range<usize>, with: &[u8]) {
    let client = redis::Client::open(redis.url()).expect("client");
    let mut c = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let mut raw: Vec<u8> = redis::cmd("GET")
        .arg(k.as_str())
        .query_async(&mut c)
        .await
        .expect("GET");
    raw[at].copy_from_slice(with);
    let () = redis::cmd("SET")
        .arg(k.as_str())
        .arg(raw)
        .arg("KEEPTTL")
        .query_async(&mut c)
        .await
        .expect("SET");
}

/// A record released for the 999 999th time: the next acquisition keeps a well-formed record
/// (attempt clamped to six digits), so a duplicate still sees it in progress.
#[actix_web::test]
async fn attempts_past_six_digits_keep_the_record_well_formed() {
    if !available("attempts_past_six_digits_keep_the_record_well_formed") {
        return;
    }
    let (redis, store, k, fp, _) = released_record("many-attempts").await;
    // Forge the attempt counter: bytes 49..55 of the record hold it as six digits.
    forge(&redis, &k, 49..55, b"999999").await;

    match store.begin(&k, &fp, LEASE, KEEP).await {
        Ok(Begin::Acquired { attempt, .. }) => assert_eq!(attempt, 999_999, "clamped"),
        other => panic!("expected an acquisition, got {other:?}"),
    }
    assert!(
        matches!(
            store.begin(&k, &fp, LEASE, KEEP).await,
            Ok(Begin::InProgress { .. })
        ),
        "the lease just taken keeps a duplicate out"
    );
    let record = store.get(&k).await.expect("get").expect("a live record");
    assert_eq!(record.attempt, 999_999);
}

/// Scripts lost (restart, failover, `SCRIPT FLUSH`) under a burst of calls: every call succeeds
/// through `EVAL`, and the scripts are loaded again once, not once per call.
#[actix_web::test]
async fn lost_scripts_are_reloaded_once_for_a_burst() {
    if !available("lost_scripts_are_reloaded_once_for_a_burst") {
        return;
    }
    let redis = RedisServer::start();
    let store = RedisStore::connect(&redis.url()).await.expect("connect");
    redis.cli(&["SCRIPT", "FLUSH"]);
    redis.cli(&["CONFIG", "RESETSTAT"]);
    let calls = (0..40).map(|i| {
        let store = store.clone();
        async move { store.get(&key(&format!("burst-{i}"))).await }
    });
    for answer in futures_util::future::join_all(calls).await {
        assert!(answer.expect("no call fails").is_none());
    }
    // Let the background reload finish.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let loads = redis.calls("script|load");
    assert!(
        (1..=12).contains(&loads),
        "one reload of the six scripts (two at most, if a call met the lost scripts after the \
         first ended); got {loads} SCRIPT LOADs"
    );
}

/// Fencing tokens grow per key even when the server's clock is behind the last token (a failover
/// to a replica with a slower clock, or a clock step): the next token is the previous one + 1.
#[actix_web::test]
async fn tokens_grow_per_key_even_when_the_clock_is_behind() {
    if !available("tokens_grow_per_key_even_when_the_clock_is_behind") {
        return;
    }
    let (redis, store, k, fp, token) = released_record("clock-behind").await;
    // Forge a token from a clock a day ahead of this server's: bytes 33..49 hold it.
    let ahead = token + 86_400 * 1_000_000;
    forge(&redis, &k, 33..49, format!("{ahead:016}").as_bytes()).await;
    match store.begin(&k, &fp, LEASE, KEEP).await {
        Ok(Begin::Acquired { token, .. }) => {
            assert_eq!(token.0, ahead + 1, "larger than every earlier token")
        }
        other => panic!("expected an acquisition, got {other:?}"),
    }
}

//! Every outcome is counted and logged; keys appear only hashed, credentials never; operators can
//! inspect and purge a record.

mod common;

use common::{start, Charge, TestServer};
use idem::MemoryStore;
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

const RAW_KEY: &str = "RAW-KEY-SECRET-7c1f";
const AUTH: &str = "Bearer TOKEN-SECRET-9a2e";

struct Captured {
    metrics: Snapshotter,
    logs: Arc<Mutex<Vec<u8>>>,
}

/// Held by the tests that read the recorder's counters: a snapshot takes them (a counter read
/// by one test would be missing from another's).
static COUNTERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// One recorder and one log sink for this test binary.
fn captured() -> &'static Captured {
    static CAPTURED: OnceLock<Captured> = OnceLock::new();
    CAPTURED.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let metrics = recorder.snapshotter();
        recorder.install().expect("the only metrics recorder");
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let sink = logs.clone();
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(move || Sink(sink.clone()))
            .init();
        Captured { metrics, logs }
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Sink {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `idem_requests_total` by outcome, summed over endpoints.
fn outcomes(c: &Captured) -> HashMap<String, u64> {
    let mut out = HashMap::new();
    for (key, _, _, value) in c.metrics.snapshot().into_vec() {
        let k = key.key();
        if k.name() != "idem_requests_total" {
            continue;
        }
        let outcome = k
            .labels()
            .find(|l| l.key() == "outcome")
            .map(|l| l.value().to_owned())
            .unwrap_or_default();
        if let DebugValue::Counter(n) = value {
            *out.entry(outcome).or_default() += n;
        }
    }
    out
}

fn metric_names(c: &Captured) -> Vec<String> {
    c.metrics
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, ..)| k.key().name().to_owned())
        .collect()
}

fn charge(amount: i64, delay_ms: u64) -> Charge {
    Charge { amount, delay_ms }
}

async fn post(srv: &TestServer, path: &str, key: &str, body: &Charge) -> reqwest::Response {
    srv.post(path, key)
        .header("Authorization", AUTH)
        .json(body)
        .send()
        .await
        .unwrap()
}

#[actix_web::test]
async fn every_outcome_is_counted_and_logged_without_secrets() {
    let _counters = COUNTERS.lock().await;
    let c = captured();
    let srv = start(Some(common::builder().build()));

    assert_eq!(
        post(&srv, "/charge", RAW_KEY, &charge(1, 0)).await.status(),
        201
    ); // executed
    assert!(post(&srv, "/charge", RAW_KEY, &charge(1, 0))
        .await
        .headers()
        .contains_key("idempotent-replayed")); // replayed
    assert_eq!(
        post(&srv, "/charge", RAW_KEY, &charge(2, 0)).await.status(),
        422
    ); // mismatch
    assert_eq!(srv.client_post_without_key("/charge").await, 400); // rejected

    // conflict, accepted and waited: a duplicate while the first runs.
    for (path, key, expect) in [
        ("/charge", "c1", 409),
        ("/accepted", "a1", 202),
        ("/wait", "w1", 201),
    ] {
        let first = {
            let req = srv
                .post(path, key)
                .header("Authorization", AUTH)
                .json(&charge(3, 400));
            actix_web::rt::spawn(req.send())
        };
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            post(&srv, path, key, &charge(3, 400)).await.status(),
            expect,
            "{path}"
        );
        first.await.unwrap().unwrap();
    }

    // store_error: a store with no room.
    let full = start(Some(
        common::builder()
            .store(MemoryStore::builder().max_bytes(0).build())
            .build(),
    ));
    assert_eq!(
        post(&full, "/charge", "s1", &charge(1, 0)).await.status(),
        503
    );

    let counted = outcomes(c);
    for outcome in [
        "executed",
        "replayed",
        "mismatch",
        "rejected",
        "conflict",
        "accepted",
        "waited",
        "store_error",
    ] {
        assert!(
            counted.get(outcome).copied().unwrap_or(0) >= 1,
            "{outcome} not counted: {counted:?}"
        );
    }
    let names = metric_names(c);
    for name in [
        "idem_store_call_seconds",
        "idem_store_full_total",
        "idem_memory_store_bytes",
        "idem_memory_store_entries",
    ] {
        assert!(names.iter().any(|n| n == name), "{name} missing: {names:?}");
    }

    let logs = String::from_utf8_lossy(&c.logs.lock().unwrap()).into_owned();
    for outcome in [
        "executed",
        "replayed",
        "mismatch",
        "rejected",
        "conflict",
        "accepted",
        "waited",
        "store_error",
    ] {
        assert!(
            logs.contains(&format!("outcome=\"{outcome}\"")),
            "no {outcome} event:\n{logs}"
        );
    }
    assert!(
        logs.contains("idem{endpoint="),
        "events carry the request span"
    );
    assert!(!logs.contains(RAW_KEY), "a raw key reached the logs");
    assert!(
        !logs.contains("TOKEN-SECRET"),
        "a credential reached the logs"
    );
}

#[actix_web::test]
async fn operators_inspect_and_purge_a_record() {
    let _ = captured();
    let srv = start(Some(common::builder().build()));
    let idem = srv.idem.clone().expect("registered");
    // The endpoint's name: its method and route pattern (no `name` on it); the principal: what
    // the scope reads (the tests scope by the `Authorization` header).
    let endpoint = "POST /charge";
    let principal = AUTH;

    assert!(idem
        .inspect(endpoint, principal, "op-1")
        .await
        .unwrap()
        .is_none());
    assert_eq!(
        post(&srv, "/charge", "op-1", &charge(5, 0)).await.status(),
        201
    );
    let info = idem
        .inspect(endpoint, principal, "op-1")
        .await
        .unwrap()
        .expect("a record");
    assert_eq!(info.state, "completed");
    assert_eq!(info.status, Some(201));
    assert_eq!(info.attempt, 1);
    assert!(info.age_ms.is_some_and(|a| a < 60_000));
    assert!(info.expires_in_ms > 0);
    assert_eq!(info.fingerprint.len(), 64);
    assert!(!info.storage_key.contains("op-1"));
    // Another principal's view of the same key: nothing.
    assert!(idem.inspect(endpoint, "", "op-1").await.unwrap().is_none());

    assert!(idem.purge(endpoint, principal, "op-1").await.unwrap());
    assert!(!idem.purge(endpoint, principal, "op-1").await.unwrap());
    let again = post(&srv, "/charge", "op-1", &charge(5, 0)).await;
    assert!(
        !again.headers().contains_key("idempotent-replayed"),
        "purged: the retry runs afresh"
    );
    assert_eq!(srv.count(|c| &c.charge), 2);
    assert!(idem.inspect(endpoint, principal, "bad key").await.is_err());
}

/// An operation the completer finishes under a previous secret counts in
/// `idem_earlier_secret_total`, as one a client's retry resumes does: the counter that tells an
/// operator when the old secret can go (docs/secrets.md, step 3) sees every record still in use
/// under it.
#[actix_web::test]
async fn a_completer_resume_under_a_previous_secret_is_counted() {
    use common::gate::{completer, crashed, scoped_builder, stop, Crashed, Kind};
    use common::rides::{until_receipt, SECRET};
    let _counters = COUNTERS.lock().await;
    let c = captured();
    let Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    }) = crashed(
        "a_completer_resume_under_a_previous_secret_is_counted",
        "obs-rot-1",
    )
    .await
    else {
        return;
    };
    let earlier = || counter(c, "idem_earlier_secret_total");
    // A snapshot takes the counters: this one starts from what it reads now, nothing.
    let _ = earlier();
    let rotated = scoped_builder(
        Kind::Header,
        &store,
        true,
        "idem:",
        "a-newer-secret-0123456789abcdef",
    )
    .previous_secrets([SECRET.as_bytes().to_vec()])
    .build();
    let running = completer(rotated, &world, &gate, 3);
    until_receipt(&db, &tables[0], Duration::from_secs(10)).await;
    stop(running).await;
    assert_eq!(earlier(), 1, "counted once");
    common::rides::drop_tables(&db, &tables).await;
}

/// The value of the counter `name`, summed over its labels.
fn counter(c: &Captured, name: &str) -> u64 {
    c.metrics
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == name)
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

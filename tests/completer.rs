//! The completer against production conditions, in-process on the local PostgreSQL: it resumes
//! the operation it claimed under that operation's recorded identity (whatever the re-sent
//! request would derive), claims only its own app's operations, does not count a rolling
//! deploy's refusals as attempts, and keeps no credential once the operation is over.

mod common;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, AUTHORIZATION};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpMessage};
use common::pg;
use common::rides::{
    die_after_first_step, drop_tables, kinds, post_as, rides, setup, stored_requests,
    until_receipt, until_receipts, World, SECRET,
};
use idem::Idempotency;
use idem_runtime::Resumed;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// What the app's auth middleware inserts: the account a request belongs to.
#[derive(Clone)]
struct Account(String);

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The app's credentials (bearer tokens, each valid or not) and how many requests its gateway
/// refuses next (answering with `refuse_with`), as a rolling deploy does.
#[derive(Default)]
struct Gate {
    tokens: Mutex<HashMap<String, bool>>,
    refuse: AtomicU32,
    refuse_with: Mutex<Vec<u16>>,
    /// Let the completer's requests through (`Resumed`), whatever their token.
    trust_resumed: AtomicBool,
}

/// The app's middleware: refuses while told to (409/429/503), refuses unknown or revoked
/// tokens (401), and sets the account from `X-Account-Id` (a gateway authenticated it).
async fn auth(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let gate = req
        .app_data::<web::Data<Gate>>()
        .cloned()
        .expect("the gate");
    if gate
        .refuse
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        let mut codes = gate.refuse_with.lock().unwrap();
        let code = codes.pop().unwrap_or(503);
        let status = actix_web::http::StatusCode::from_u16(code).unwrap();
        return Err(actix_web::error::InternalError::new("deploying", status).into());
    }
    if gate.trust_resumed.load(Ordering::SeqCst) {
        if let Some(resumed) = Resumed::of(req.request()) {
            // The completer finishing an operation this account started: trusted without a
            // token, the account taken from the record.
            let account = Account(resumed.principal().unwrap_or_default().to_owned());
            req.extensions_mut().insert(account);
            return next.call(req).await;
        }
    }
    let token = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let valid = token.is_some_and(|t| gate.tokens.lock().unwrap().get(&t) == Some(&true));
    if !valid {
        return Err(actix_web::error::ErrorUnauthorized(
            "unknown or revoked token",
        ));
    }
    let account = req
        .headers()
        .get("x-account-id")
        .and_then(|v| v.to_str().ok())
        .map(|v| Account(v.to_owned()));
    if let Some(a) = account {
        req.extensions_mut().insert(a);
    }
    next.call(req).await
}

/// The ways an app says who a request belongs to.
#[derive(Clone, Copy, Debug)]
enum Kind {
    Authorization,
    Header,
    Extension,
    Closure,
}

const KINDS: [Kind; 4] = [
    Kind::Authorization,
    Kind::Header,
    Kind::Extension,
    Kind::Closure,
];

/// The app's `Idempotency` on `store`, scoped as `kind` says, under `prefix` and `secret`.
fn scoped(
    kind: Kind,
    store: &idem_runtime::PostgresStore,
    renew: bool,
    prefix: &str,
    secret: &str,
) -> Idempotency {
    let b = Idempotency::builder();
    let b = match kind {
        Kind::Authorization => b.scope_by_header(AUTHORIZATION),
        Kind::Header => b.scope_by_header(HeaderName::from_static("x-account-id")),
        Kind::Extension => b.scope_by_extension::<Account>(),
        Kind::Closure => b.scope(|req| {
            req.headers()
                .get("x-account-id")
                .and_then(|v| v.to_str().ok())
                .map(|v| format!("account:{v}"))
        }),
    };
    b.secret(secret.to_owned())
        .key_prefix(prefix)
        .store_timeout(Duration::from_millis(300))
        .renew_leases(renew)
        .named_store("pg", store.clone())
        .build()
}

/// The app: `idem`, the world, the gate in front of `rides`.
macro_rules! app {
    ($idem:expr, $world:expr, $gate:expr) => {
        actix_web::App::new()
            .app_data($idem)
            .app_data($world)
            .app_data($gate)
            .service(web::scope("").wrap(from_fn(auth)).service(rides))
    };
}

/// A completer over the app of `idem`, `world` and `gate`.
fn completer(
    idem: Idempotency,
    world: &web::Data<World>,
    gate: &web::Data<Gate>,
    max_attempts: u32,
) -> idem_runtime::Completer {
    let (world, gate) = (world.clone(), gate.clone());
    idem.completer()
        .every(Duration::from_millis(100))
        .backoff(Duration::from_millis(100))
        .max_attempts(max_attempts)
        .start({
            let idem = idem.clone();
            move || app!(idem, world, gate)
        })
}

/// Stops a completer from a thread of its own: its store calls may need this runtime (the
/// pool's connections were opened here), so blocking this thread on its end could deadlock.
async fn stop(c: idem_runtime::Completer) {
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
}

/// The credentials and account of ada's requests.
fn ada(token: &'static str) -> [(&'static str, &'static str); 2] {
    [("authorization", token), ("x-account-id", "acct_ada")]
}

/// Starts an operation on an instance that dies after its first step (it hangs there, its
/// lease not renewed).
async fn abandon(idem: Idempotency, world: &web::Data<World>, gate: &web::Data<Gate>, key: &str) {
    let dying = actix_web::test::init_service(app!(idem, world.clone(), gate.clone())).await;
    let headers = ada("Bearer tok-1");
    let request = post_as(&dying, "/rides", key, &headers, json!({ "rider": "ada" }));
    die_after_first_step(world, request).await;
}

fn gate() -> web::Data<Gate> {
    let gate = Gate::default();
    gate.tokens.lock().unwrap().insert("tok-1".into(), true);
    web::Data::new(gate)
}

/// One operation abandoned after its first step and finished by the completer, its keys scoped
/// as `kind` says. With `rotate`, the client's token is replaced between the crash and the
/// completion (the old one revoked) and the app lets `Resumed` requests through. Asserts one
/// ride, one charge, one downstream key, no stored request left, and the client's replay —
/// except when the scope is the rotated credential itself (another principal: why the builder
/// advises scoping by account). `false` when there is no PostgreSQL (skipped).
async fn resume_case(test: &str, kind: Kind, key: &str, rotate: bool) -> bool {
    let Some((store, world, db, tables)) = setup(test).await else {
        return false;
    };
    let gate = gate();
    let idem = |renew| scoped(kind, &store, renew, "idem:", SECRET);
    abandon(idem(false), &world, &gate, key).await;
    let token = if rotate {
        let mut tokens = gate.tokens.lock().unwrap();
        tokens.insert("tok-1".into(), false);
        tokens.insert("tok-2".into(), true);
        gate.trust_resumed.store(true, Ordering::SeqCst);
        "Bearer tok-2"
    } else {
        "Bearer tok-1"
    };
    let c = completer(idem(true), &world, &gate, 5);
    until_receipt(&db, &tables[0], Duration::from_secs(5)).await;
    // Another completer pass, had it started a second operation, would show here.
    tokio::time::sleep(Duration::from_millis(400)).await;
    stop(c).await;
    let case = format!("{kind:?}, rotated: {rotate}");
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 1),
        "{case}: rides, receipts"
    );
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1, "{case}");
    assert_eq!(world.distinct_downstream_keys(), 1, "{case}");
    assert_eq!(stored_requests(&db, &tables[1]).await, 0, "{case}");
    if !(rotate && matches!(kind, Kind::Authorization)) {
        let live =
            actix_web::test::init_service(app!(idem(true), world.clone(), gate.clone())).await;
        let (status, replayed, body) =
            post_as(&live, "/rides", key, &ada(token), json!({ "rider": "ada" })).await;
        assert_eq!((status, replayed), (201, true), "{case}: {body}");
        assert_eq!(kinds(&db, &tables[0]).await, (1, 1), "{case}");
        assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1, "{case}");
    }
    drop_tables(&db, &tables).await;
    true
}

/// Under every kind of scope, the completer resumes the operation it claimed — the recorded
/// storage key and principal, not what the re-sent request (which carries only some headers)
/// would derive: one ride, one charge, one downstream key, and the client's retry replays.
#[actix_web::test]
async fn the_completer_resumes_under_the_recorded_identity() {
    for kind in KINDS {
        if !resume_case(
            "the_completer_resumes_under_the_recorded_identity",
            kind,
            "k1",
            false,
        )
        .await
        {
            return;
        }
    }
}

/// The client's credential is rotated between the crash and the completion (the old token
/// revoked): an app whose auth lets the completer's `Resumed` requests through gets the
/// operation finished once, under every kind of scope, and the client's retry with its new
/// token replays it.
#[actix_web::test]
async fn a_rotated_credential_does_not_stop_the_completer() {
    for kind in KINDS {
        if !resume_case(
            "a_rotated_credential_does_not_stop_the_completer",
            kind,
            "r1",
            true,
        )
        .await
        {
            return;
        }
    }
    // An app whose auth refuses the completer's old token: the completer cannot finish it, and
    // the client's retry with the new token resumes it — still one ride, one downstream key.
    let Some((store, world, db, tables)) =
        setup("a_rotated_credential_does_not_stop_the_completer").await
    else {
        return;
    };
    let gate = gate();
    abandon(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        &world,
        &gate,
        "r2",
    )
    .await;
    gate.tokens.lock().unwrap().insert("tok-1".into(), false);
    gate.tokens.lock().unwrap().insert("tok-2".into(), true);
    let c = completer(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        &world,
        &gate,
        2,
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(c).await;
    assert_eq!(
        kinds(&db, &tables[0]).await,
        (1, 0),
        "refused by the app's auth"
    );
    let live = actix_web::test::init_service(app!(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        world.clone(),
        gate.clone()
    ))
    .await;
    let (status, replayed, body) = post_as(
        &live,
        "/rides",
        "r2",
        &ada("Bearer tok-2"),
        json!({"rider": "ada"}),
    )
    .await;
    assert_eq!((status, replayed), (201, false), "{body}");
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    assert_eq!(world.distinct_downstream_keys(), 1);
    drop_tables(&db, &tables).await;
}

/// Two apps share one table under their own `key_prefix` (and secrets): each completer claims
/// only its own app's operations. The other app's abandoned operation is neither re-sent, nor
/// charged its attempts, nor marked failed; its own completer finishes it.
#[actix_web::test]
async fn completers_of_two_apps_on_one_table_leave_each_other_alone() {
    let Some((store, world, db, tables)) =
        setup("completers_of_two_apps_on_one_table_leave_each_other_alone").await
    else {
        return;
    };
    let gate = gate();
    let other = "another-apps-secret-0123456789abcdef";
    abandon(
        scoped(Kind::Header, &store, false, "a:", SECRET),
        &world,
        &gate,
        "k5",
    )
    .await;
    // App b's completer, eager to give up: one attempt.
    let b = completer(
        scoped(Kind::Header, &store, true, "b:", other),
        &world,
        &gate,
        1,
    );
    tokio::time::sleep(Duration::from_millis(2000)).await;
    stop(b).await;
    let row = db
        .query_one(
            &format!(
                "SELECT attempts, failed_at IS NULL FROM {}_requests",
                tables[1]
            ),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(
        (row.get::<_, i32>(0), row.get::<_, bool>(1)),
        (0, true),
        "app b's completer left app a's operation alone"
    );
    assert_eq!(kinds(&db, &tables[0]).await, (1, 0));
    let _a = completer(
        scoped(Kind::Header, &store, true, "a:", SECRET),
        &world,
        &gate,
        1,
    );
    until_receipt(&db, &tables[0], Duration::from_secs(5)).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// An operation left unfinished past its record's expiry (its row not reaped yet) is over: the
/// key is free for a new operation of its client. The completer does not start it again — a
/// second ride, and a charge under a new downstream key the processor cannot deduplicate.
#[actix_web::test]
async fn the_completer_leaves_an_expired_operation_alone() {
    let Some((store, world, db, tables)) =
        setup("the_completer_leaves_an_expired_operation_alone").await
    else {
        return;
    };
    let gate = gate();
    let idem = |renew| scoped(Kind::Header, &store, renew, "idem:", SECRET);
    abandon(idem(false), &world, &gate, "x1").await;
    let expire = format!(
        "UPDATE {} SET expires_at = now() - interval '1 second', lease_until = now() - interval '1 second'",
        tables[1]
    );
    db.batch_execute(&expire).await.unwrap();
    let c = completer(idem(true), &world, &gate, 5);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (1, 0), "not run again");
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 0);
    drop_tables(&db, &tables).await;
}

/// During a rolling deploy the completer's requests meet 409 (the client's own retry holds the
/// key), 429 and 503 (draining): none of them uses up an attempt, so an operation with
/// `max_attempts(2)` still finishes after four such answers.
#[actix_web::test]
async fn a_rolling_deploy_does_not_use_up_attempts() {
    let Some((store, world, db, tables)) = setup("a_rolling_deploy_does_not_use_up_attempts").await
    else {
        return;
    };
    let gate = gate();
    abandon(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        &world,
        &gate,
        "k6",
    )
    .await;
    *gate.refuse_with.lock().unwrap() = vec![503, 429, 409, 503];
    gate.refuse.store(4, Ordering::SeqCst);
    let _c = completer(
        scoped(Kind::Header, &store, true, "idem:", SECRET),
        &world,
        &gate,
        2,
    );
    until_receipt(&db, &tables[0], Duration::from_secs(10)).await;
    assert_eq!(
        gate.refuse.load(Ordering::SeqCst),
        0,
        "all four refusals were met"
    );
    assert_eq!(kinds(&db, &tables[0]).await, (1, 1));
    assert_eq!(world.processor_calls.load(Ordering::SeqCst), 1);
    drop_tables(&db, &tables).await;
}

/// `pg_dump --data-only` of the test database contains `marker`.
fn dump_contains(marker: &str) -> bool {
    let out = std::process::Command::new("pg_dump")
        .args(["--data-only", "--dbname", &pg::config()])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).contains(marker)
}

/// A marker no other test writes.
fn marker(what: &str) -> String {
    format!("marker-{what}-{}-{:x}", std::process::id(), rand_u64())
}

fn rand_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(7);
    h.finish()
}

/// Credentials a stored request held are gone once its operation is over: finished by the
/// client, or by the completer after a crash. Without an app secret `Steps` is refused with a
/// clear error and nothing is stored.
#[actix_web::test]
async fn no_credential_outlives_its_operation() {
    let Some((store, world, db, tables)) = setup("no_credential_outlives_its_operation").await
    else {
        return;
    };
    let gate = gate();
    let token = marker("bearer");
    let cookie = format!("session={}", marker("cookie"));
    gate.tokens.lock().unwrap().insert(token.clone(), true);
    let bearer = format!("Bearer {token}");
    let headers = [
        ("authorization", bearer.as_str()),
        ("cookie", cookie.as_str()),
        ("x-account-id", "acct_ada"),
    ];
    let idem = || scoped(Kind::Header, &store, true, "idem:", SECRET);
    let app = actix_web::test::init_service(app!(idem(), world.clone(), gate.clone())).await;
    let (status, _, body) = post_as(&app, "/rides", "m1", &headers, json!({"rider": "ada"})).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        0,
        "finished by its client"
    );
    // Crashed after its first step, finished by the completer.
    let dying = actix_web::test::init_service(app!(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        world.clone(),
        gate.clone()
    ))
    .await;
    let request = post_as(&dying, "/rides", "m2", &headers, json!({"rider": "ada"}));
    die_after_first_step(&world, request).await;
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        1,
        "kept while unfinished"
    );
    let sealed = db
        .query_one(&format!("SELECT request FROM {}_requests", tables[1]), &[])
        .await
        .unwrap()
        .get::<_, Vec<u8>>(0);
    assert!(
        !String::from_utf8_lossy(&sealed).contains("marker-"),
        "sealed at rest"
    );
    let c = completer(idem(), &world, &gate, 5);
    until_receipts(&db, &tables[0], 2, Duration::from_secs(5)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop(c).await;
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2));
    assert_eq!(
        stored_requests(&db, &tables[1]).await,
        0,
        "finished by the completer"
    );
    assert!(!dump_contains(&token), "no bearer token in the database");
    assert!(!dump_contains("marker-cookie"), "no cookie in the database");

    // Without an app secret: refused at the first request, nothing stored.
    let plain = Idempotency::builder()
        .scope_by_header(HeaderName::from_static("x-account-id"))
        .store_timeout(Duration::from_millis(300))
        .named_store("pg", store.clone())
        .build();
    let app = actix_web::test::init_service(app!(plain, world.clone(), gate.clone())).await;
    let (status, _, body) = post_as(&app, "/rides", "m3", &headers, json!({"rider": "ada"})).await;
    assert_eq!(status, 500, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .is_some_and(|d| d.contains("secret")),
        "{body}"
    );
    assert_eq!(stored_requests(&db, &tables[1]).await, 0);
    assert_eq!(kinds(&db, &tables[0]).await, (2, 2), "nothing ran");
    assert!(!dump_contains(&token));
    drop_tables(&db, &tables).await;
}

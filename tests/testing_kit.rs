//! The testing kit from a user's point of view: a sample app with one correct handler and three
//! broken ones — `assert_idempotent` passes the first and names each broken one's problem — and
//! the store-fault rows of the failure table driven through `FaultyStore`.

mod common;

use actix_web::dev::{Service, ServiceRequest};
use actix_web::{post, web, HttpMessage, HttpResponse};
// `idem::testing` with the `testing` feature; a package cannot turn its own feature on for its tests.
use idem::{idempotent, Idempotency, MemoryStore};
use idem_runtime::testing::{
    assert_idempotent, check_idempotent, check_idempotent_at, Fault, FaultyStore, Op, Probe,
};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Effects per endpoint: what a real app would count as charges made.
#[derive(Default)]
struct Effects {
    correct: AtomicU64,
    middleware: AtomicU64,
    leaky: AtomicU64,
    failing: AtomicU64,
}

#[post("/correct")]
#[idempotent(name = "correct")]
async fn correct(fx: web::Data<Effects>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(50)).await;
    let n = fx.correct.fetch_add(1, Ordering::SeqCst) + 1;
    HttpResponse::Created().json(serde_json::json!({ "charge": n }))
}

/// Broken: the charge is made by a middleware, outside the attribute (see `serve`).
#[post("/middleware")]
#[idempotent(name = "middleware")]
async fn middleware() -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(50)).await;
    HttpResponse::Created().finish()
}

/// Broken: echoes the caller's request id and keeps it for replay.
#[post("/leaky")]
#[idempotent(name = "leaky", replay_headers = ["x-request-id"])]
async fn leaky(req: actix_web::HttpRequest, fx: web::Data<Effects>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(50)).await;
    fx.leaky.fetch_add(1, Ordering::SeqCst);
    let id = req
        .headers()
        .get("x-request-id")
        .cloned()
        .unwrap_or_else(|| actix_web::http::header::HeaderValue::from_static("none"));
    HttpResponse::Created()
        .insert_header(("x-request-id", id))
        .finish()
}

/// Broken: charges, then answers 500 — under `result` a 5xx is not kept.
#[post("/failing")]
#[idempotent(name = "failing", guarantee = "result")]
async fn failing(fx: web::Data<Effects>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(50)).await;
    fx.failing.fetch_add(1, Ordering::SeqCst);
    HttpResponse::InternalServerError().finish()
}

/// Fails open: runs unprotected when the store is down (never when it is full, nor while a
/// duplicate waits on it).
#[post("/proceed")]
#[idempotent(
    name = "proceed",
    on_conflict = "wait",
    wait_timeout = "5s",
    on_store_error = "proceed"
)]
async fn proceed(fx: web::Data<Effects>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(300)).await;
    fx.correct.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

/// Outlives its lease: renewed (every 300 ms, above the app's 200 ms store deadline) while it
/// runs.
#[post("/long")]
#[idempotent(name = "long", lease = "900ms")]
async fn long(fx: web::Data<Effects>) -> HttpResponse {
    tokio::time::sleep(Duration::from_millis(2000)).await;
    fx.correct.fetch_add(1, Ordering::SeqCst);
    HttpResponse::Created().finish()
}

fn serve(idem: Idempotency, fx: web::Data<Effects>) -> (String, actix_web::dev::ServerHandle) {
    let (addr, handle) = common::serve(2, move |cfg| {
        let fx2 = fx.clone();
        cfg.app_data(idem.clone())
            .app_data(fx.clone())
            .service(correct)
            .service(proceed)
            .service(long)
            .service(leaky)
            .service(failing)
            .service(
                web::scope("")
                    .wrap_fn(move |req: ServiceRequest, srv| {
                        if req.path() == "/middleware" {
                            fx2.middleware.fetch_add(1, Ordering::SeqCst);
                        }
                        req.extensions_mut().insert(());
                        srv.call(req)
                    })
                    .service(middleware),
            );
    });
    (format!("http://{addr}"), handle)
}

fn probe(path: &str, fx: &web::Data<Effects>, pick: fn(&Effects) -> &AtomicU64) -> Probe {
    let fx = Arc::clone(fx);
    Probe::post(path, move || pick(&fx).load(Ordering::SeqCst)).json(r#"{"amount": 1}"#)
}

#[actix_rt::test]
async fn the_kit_passes_a_correct_handler_and_names_each_broken_one() {
    let fx = web::Data::new(Effects::default());
    let (base, handle) = serve(common::builder().build(), fx.clone());

    let report = check_idempotent_at(&base, &probe("/correct", &fx, |f| &f.correct)).await;
    assert!(report.is_clean(), "{report}");

    for (path, pick, expected) in [
        (
            "/middleware",
            (|f| &f.middleware) as fn(&Effects) -> &AtomicU64,
            "outside the #[idempotent] handler",
        ),
        (
            "/leaky",
            |f| &f.leaky,
            "carries the first request's own X-Request-Id",
        ),
        ("/failing", |f| &f.failing, "a 5xx is not kept"),
    ] {
        let report = check_idempotent_at(&base, &probe(path, &fx, pick)).await;
        assert!(!report.is_clean(), "{path} passed");
        assert!(
            report.to_string().contains(expected),
            "{path}: expected a problem naming `{expected}`, got:\n{report}"
        );
    }
    handle.stop(true).await;
}

/// The same checks on an app inside the test (`actix_web::test::init_service`), no server.
#[actix_rt::test]
async fn the_kit_checks_an_app_in_the_test_itself() {
    let fx = web::Data::new(Effects::default());
    let app = actix_web::test::init_service(
        actix_web::App::new()
            .app_data(common::builder().build())
            .app_data(fx.clone())
            .service(correct)
            .service(leaky),
    )
    .await;
    assert_idempotent(&app, &probe("/correct", &fx, |f| &f.correct)).await;
    let report = check_idempotent(&app, &probe("/leaky", &fx, |f| &f.leaky)).await;
    assert!(
        report
            .to_string()
            .contains("carries the first request's own X-Request-Id"),
        "{report}"
    );
}

/// Unit tests that want the handler alone: no key needed, every call runs it.
#[actix_rt::test]
async fn a_disabled_idempotency_runs_the_handler_alone() {
    let fx = web::Data::new(Effects::default());
    let (base, handle) = serve(Idempotency::disabled(), fx.clone());
    for _ in 0..2 {
        let r = common::client()
            .post(format!("{base}/correct"))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), 201);
        assert!(!r.headers().contains_key("idempotent-replayed"));
    }
    assert_eq!(fx.correct.load(Ordering::SeqCst), 2);
    handle.stop(true).await;
}

/// An app on a `FaultyStore`, and a way to post to its correct endpoint.
struct Faulty {
    store: FaultyStore<MemoryStore>,
    fx: web::Data<Effects>,
    base: String,
    handle: actix_web::dev::ServerHandle,
}

/// The app, warmed up: its first request also checks the app secret through the store (in the
/// background), and that `begin` must not take a fault meant for a request.
async fn faulty() -> Faulty {
    let store = FaultyStore::new(MemoryStore::default());
    let fx = web::Data::new(Effects::default());
    let idem = common::builder()
        .store(store.clone())
        .store_timeout(Duration::from_millis(200))
        .build();
    let (base, handle) = serve(idem, fx.clone());
    let app = Faulty {
        store,
        fx,
        base,
        handle,
    };
    assert_eq!(app.pay("warm-up").await.status(), 201);
    while app.store.calls(Op::Begin) < 2 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app
}

impl Faulty {
    async fn pay(&self, key: &str) -> reqwest::Response {
        self.post("/correct", key).await
    }

    async fn post(&self, path: &str, key: &str) -> reqwest::Response {
        common::client()
            .post(format!("{}{path}", self.base))
            .header("Idempotency-Key", key)
            .send()
            .await
            .expect("request")
    }

    fn charges(&self) -> u64 {
        self.fx.correct.load(Ordering::SeqCst)
    }
}

/// Failure table: the store is down when a request begins → 503 + Retry-After, nothing runs.
#[actix_rt::test]
async fn store_down_at_begin_is_a_503_and_nothing_runs() {
    let app = faulty().await;
    app.store.inject(Op::Begin, Fault::Fail, 1);
    let resp = app.pay("down-1").await;
    assert!(resp.headers().contains_key("retry-after"));
    common::problem(resp, 503).await;
    assert_eq!(app.charges(), 1, "only the warm-up ran");
    assert_eq!(
        app.pay("down-1").await.status(),
        201,
        "served once the store is back"
    );
    assert_eq!(app.charges(), 2);
    app.handle.stop(true).await;
}

/// Failure table: the store answers slower than the deadline → 503, nothing runs.
#[actix_rt::test]
async fn a_store_slower_than_its_deadline_is_a_503_and_nothing_runs() {
    let app = faulty().await;
    app.store
        .inject(Op::Begin, Fault::Delay(Duration::from_secs(2)), 1);
    common::problem(app.pay("slow-1").await, 503).await;
    assert_eq!(app.charges(), 1, "only the warm-up ran");
    app.handle.stop(true).await;
}

/// Failure table: storing the response fails, or its answer is lost → the client still gets
/// its response, the completion is retried, and a retry replays: one charge.
#[actix_rt::test]
async fn a_failed_or_lost_completion_still_replays_once() {
    let app = faulty().await;
    for (key, fault) in [("lost-1", Fault::LoseAnswer), ("failed-1", Fault::Fail)] {
        let before = app.charges();
        app.store.inject(Op::Complete, fault, 1);
        assert_eq!(app.pay(key).await.status(), 201);
        let replay = loop {
            let r = app.pay(key).await;
            if r.status() != 409 {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(replay.status(), 201, "{fault:?}");
        assert_eq!(replay.headers()["idempotent-replayed"], "true", "{fault:?}");
        assert_eq!(app.charges(), before + 1, "{fault:?}: one charge");
    }
    assert!(
        app.store.calls(Op::Complete) >= 4,
        "the completions were retried"
    );
    app.handle.stop(true).await;
}

/// Failure table: under `on_store_error = "proceed"` a store that is down runs the handler
/// unprotected, but a *full* store is an answer, not an outage: 503, nothing runs.
#[actix_rt::test]
async fn proceed_runs_unprotected_when_the_store_is_down_but_never_when_it_is_full() {
    let app = faulty().await;
    app.store.inject(Op::Begin, Fault::Full, 1);
    common::problem(app.post("/proceed", "full-1").await, 503).await;
    assert_eq!(app.charges(), 1, "only the warm-up ran");
    app.store.inject(Op::Begin, Fault::Fail, 1);
    assert_eq!(app.post("/proceed", "down-1").await.status(), 201);
    assert_eq!(app.charges(), 2, "ran unprotected, as the endpoint chose");
    app.handle.stop(true).await;
}

/// Failure table: the store fails while a duplicate waits for the first request (`wait`, even
/// under `proceed`): the store already said the key is held, so the duplicate gets 503 and never
/// runs; the first completes and its retry replays.
#[actix_rt::test]
async fn a_store_failure_while_a_duplicate_waits_never_runs_it() {
    let app = faulty().await;
    let base = app.base.clone();
    let first = actix_web::rt::spawn(async move {
        common::client()
            .post(format!("{base}/proceed"))
            .header("Idempotency-Key", "w-1")
            .send()
            .await
            .expect("first")
            .status()
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    app.store.inject(Op::Wait, Fault::Fail, 1);
    let dup = app.post("/proceed", "w-1").await;
    assert!(dup.headers().contains_key("retry-after"));
    common::problem(dup, 503).await;
    assert_eq!(first.await.expect("first task"), 201);
    let replay = app.post("/proceed", "w-1").await;
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(
        app.charges(),
        2,
        "the warm-up and the first: the duplicate never ran"
    );
    app.handle.stop(true).await;
}

/// Failure table: a duplicate waited for the first request (`wait` under `proceed`), woke when
/// it completed, and then met a store error on its next `begin`: the store already said
/// another request held this key, so the duplicate gets 503 and never runs unprotected.
#[actix_rt::test]
async fn a_store_failure_after_a_wait_never_runs_the_duplicate() {
    let app = faulty().await;
    let base = app.base.clone();
    let begins = app.store.calls(Op::Begin);
    let first = actix_web::rt::spawn(async move {
        common::client()
            .post(format!("{base}/proceed"))
            .header("Idempotency-Key", "w-2")
            .send()
            .await
            .expect("first")
            .status()
    });
    while app.store.calls(Op::Begin) < begins + 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let base = app.base.clone();
    let dup = actix_web::rt::spawn(async move {
        common::client()
            .post(format!("{base}/proceed"))
            .header("Idempotency-Key", "w-2")
            .send()
            .await
            .expect("duplicate")
    });
    // The duplicate's first `begin` answered "in progress"; its next one (after the wake-up)
    // fails.
    while app.store.calls(Op::Begin) < begins + 2 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    app.store.inject(Op::Begin, Fault::Fail, 1);
    assert_eq!(first.await.expect("first task"), 201);
    let dup = dup.await.expect("duplicate task");
    assert!(dup.headers().contains_key("retry-after"));
    common::problem(dup, 503).await;
    assert_eq!(
        app.charges(),
        2,
        "the warm-up and the first: the duplicate never ran"
    );
    app.handle.stop(true).await;
}

/// Remaining windows: a store slower than lease/6 on every renewal loses a short lease (each
/// renewal gets at most lease/6; `/long` has a 900 ms lease, so 150 ms), and a duplicate after
/// it runs once more — the documented bound, and no more than one.
#[actix_rt::test]
async fn a_store_slower_than_a_sixth_of_the_lease_loses_it_once() {
    let app = faulty().await;
    let base = app.base.clone();
    let send_long = |key: &'static str| {
        let base = base.clone();
        async move {
            common::client()
                .post(format!("{base}/long"))
                .header("Idempotency-Key", key)
                .send()
                .await
                .expect("long")
                .status()
        }
    };
    app.store
        .inject(Op::Renew, Fault::Delay(Duration::from_millis(400)), 50);
    let first = actix_web::rt::spawn(send_long("slow-renew"));
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let dup = send_long("slow-renew").await;
    assert_eq!(dup.as_u16(), 201, "the lease lapsed: the duplicate ran");
    let _ = first.await;
    assert_eq!(app.charges(), 3, "the warm-up, then once more: not more");
    app.handle.stop(true).await;
}

/// Failure table: the store stalls during renewals (each longer than the store deadline): the
/// renewals run beside the handler and are tried again; duplicates get 409 throughout; one
/// execution.
#[actix_rt::test]
async fn renewals_that_stall_never_let_a_duplicate_in() {
    let app = faulty().await;
    let base = app.base.clone();
    let first = actix_web::rt::spawn(async move {
        common::client()
            .post(format!("{base}/long"))
            .header("Idempotency-Key", "long-1")
            .send()
            .await
            .expect("first")
            .status()
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    app.store
        .inject(Op::Renew, Fault::Delay(Duration::from_millis(250)), 2);
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let dup = app.post("/long", "long-1").await;
        // Only the first's own answer, replayed, may end the 409s.
        assert!(
            dup.status() == 409 || dup.headers().contains_key("idempotent-replayed"),
            "a duplicate got {}",
            dup.status()
        );
    }
    assert_eq!(first.await.expect("first task"), 201);
    assert_eq!(app.store.faults_fired(), 2, "both stalls happened");
    assert!(app.store.calls(Op::Renew) >= 3, "renewals were tried again");
    assert_eq!(
        app.charges(),
        2,
        "the warm-up and the first: nothing ran twice"
    );
    app.handle.stop(true).await;
}

/// Makes its charge, then — when asked to — crashes before answering (a crash point).
#[post("/crashy")]
#[idempotent(name = "crashy", lease = "3s")]
async fn crashy(
    req: actix_web::HttpRequest,
    fx: web::Data<Effects>,
    store: web::Data<FaultyStore<MemoryStore>>,
) -> HttpResponse {
    fx.correct.fetch_add(1, Ordering::SeqCst);
    if req.headers().contains_key("x-crash") {
        store.crash();
    }
    HttpResponse::Created().finish()
}

/// A crash between the handler's effect and its completion, then a restart: the retry waits out
/// the crashed attempt's lease (409) and then runs once more — the documented at-least-once
/// window of a cache store, which a user's test can now show for their own handler.
#[actix_rt::test]
async fn a_crash_after_the_effect_runs_it_once_more_after_the_lease() {
    let memory = MemoryStore::default();
    let fx = web::Data::new(Effects::default());
    let start = |store: FaultyStore<MemoryStore>| {
        let idem = common::builder()
            .store(store.clone())
            .store_timeout(Duration::from_millis(200))
            .build();
        let (fx, store) = (fx.clone(), web::Data::new(store));
        common::serve(1, move |cfg| {
            cfg.app_data(idem.clone())
                .app_data(fx.clone())
                .app_data(store.clone())
                .service(crashy);
        })
    };
    let (crashing, crashed) = start(FaultyStore::new(memory.clone()));
    let first = common::client()
        .post(format!("http://{crashing}/crashy"))
        .header("Idempotency-Key", "c-1")
        .header("x-crash", "1")
        .send()
        .await
        .expect("first");
    assert_eq!(
        first.status(),
        201,
        "the crashed instance still answered its client"
    );
    crashed.stop(false).await;

    let (restarted, handle) = start(FaultyStore::new(memory));
    let retry = || {
        common::client()
            .post(format!("http://{restarted}/crashy"))
            .header("Idempotency-Key", "c-1")
            .send()
    };
    assert_eq!(
        retry().await.expect("retry").status(),
        409,
        "within the lease"
    );
    let later = loop {
        let r = retry().await.expect("retry");
        if r.status() != 409 {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(later.status(), 201);
    assert_eq!(
        fx.correct.load(Ordering::SeqCst),
        2,
        "the effect ran once more"
    );
    assert_eq!(
        retry().await.expect("retry").headers()["idempotent-replayed"],
        "true",
        "and from then on replays"
    );
    handle.stop(true).await;
}

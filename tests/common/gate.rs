//! The completer's test app, in-process on the local PostgreSQL: the rides app
//! (`super::rides`) behind an auth middleware (`Gate`) that knows tokens, sets the account from
//! `X-Account-Id`, can trust the completer's `Resumed` requests and can refuse requests as a
//! rolling deploy does; scoped by any kind of scope; with its completer.

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceFactory, ServiceRequest, ServiceResponse};
use actix_web::http::header::{HeaderName, AUTHORIZATION};
use actix_web::middleware::{from_fn, Next};
use actix_web::{web, HttpMessage};
use idem::{Idempotency, IdempotencyBuilder, Scoped};
use idem_runtime::Resumed;
use serde_json::json;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use super::rides::{die_after_first_step, post_as, rides, World, SECRET};

/// What the app's auth middleware inserts: the account a request belongs to.
#[derive(Clone)]
pub struct Account(pub String);

impl std::fmt::Display for Account {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The app's credentials (bearer tokens, each valid or not) and how many requests its gateway
/// refuses next (answering with `refuse_with`), as a rolling deploy does.
#[derive(Default)]
pub struct Gate {
    pub tokens: Mutex<HashMap<String, bool>>,
    pub refuse: AtomicU32,
    pub refuse_with: Mutex<Vec<u16>>,
    /// Let the completer's requests through (`Resumed`), whatever their token.
    pub trust_resumed: AtomicBool,
}

/// The app's middleware: refuses while told to (409/429/503), refuses unknown or revoked
/// tokens (401), and sets the account from `X-Account-Id` (a gateway authenticated it).
pub async fn auth(
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
pub enum Kind {
    Authorization,
    Header,
    Extension,
    Closure,
}

pub const KINDS: [Kind; 4] = [
    Kind::Authorization,
    Kind::Header,
    Kind::Extension,
    Kind::Closure,
];

/// The builder of the app's `Idempotency` on `store`, scoped as `kind` says, under `prefix`
/// and `secret`.
pub fn scoped_builder(
    kind: Kind,
    store: &idem_runtime::PostgresStore,
    renew: bool,
    prefix: &str,
    secret: &str,
) -> IdempotencyBuilder<Scoped> {
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
}

/// The app's `Idempotency` on `store`, scoped as `kind` says, under `prefix` and `secret`.
pub fn scoped(
    kind: Kind,
    store: &idem_runtime::PostgresStore,
    renew: bool,
    prefix: &str,
    secret: &str,
) -> Idempotency {
    scoped_builder(kind, store, renew, prefix, secret).build()
}

/// The app: `idem`, the world, the gate in front of `rides`.
pub fn app(
    idem: Idempotency,
    world: web::Data<World>,
    gate: web::Data<Gate>,
) -> actix_web::App<
    impl ServiceFactory<
        ServiceRequest,
        Config = (),
        Response = ServiceResponse<impl MessageBody>,
        Error = actix_web::Error,
        InitError = (),
    >,
> {
    actix_web::App::new()
        .app_data(idem)
        .app_data(world)
        .app_data(gate)
        .service(web::scope("").wrap(from_fn(auth)).service(rides))
}

/// A completer over the app of `idem`, `world` and `gate`.
pub fn completer(
    idem: Idempotency,
    world: &web::Data<World>,
    gate: &web::Data<Gate>,
    max_attempts: u32,
) -> idem_runtime::Completer {
    let (world, gate) = (world.clone(), gate.clone());
    let app_idem = idem.clone();
    idem.completer()
        .every(Duration::from_millis(100))
        .backoff(Duration::from_millis(100))
        .max_attempts(max_attempts)
        .start(move || app(app_idem, world, gate))
}

/// Stops a completer from a thread of its own: its store calls may need this runtime (the
/// pool's connections were opened here), so blocking this thread on its end could deadlock.
pub async fn stop(c: idem_runtime::Completer) {
    tokio::task::spawn_blocking(move || c.stop()).await.unwrap();
}

/// The credentials and account of ada's requests.
pub fn ada(token: &'static str) -> [(&'static str, &'static str); 2] {
    [("authorization", token), ("x-account-id", "acct_ada")]
}

/// Starts an operation on an instance that dies after its first step (it hangs there, its
/// lease not renewed).
pub async fn abandon(
    idem: Idempotency,
    world: &web::Data<World>,
    gate: &web::Data<Gate>,
    key: &str,
) {
    let dying = actix_web::test::init_service(app(idem, world.clone(), gate.clone())).await;
    let headers = ada("Bearer tok-1");
    let request = post_as(&dying, "/rides", key, &headers, json!({ "rider": "ada" }));
    die_after_first_step(world, request).await;
}

/// A gate that knows one valid token, `tok-1`.
pub fn gate() -> web::Data<Gate> {
    let gate = Gate::default();
    gate.tokens.lock().unwrap().insert("tok-1".into(), true);
    web::Data::new(gate)
}

/// A completer test's world (see [`crashed`]).
pub struct Crashed {
    pub store: idem_runtime::PostgresStore,
    pub world: web::Data<World>,
    pub db: idem_runtime::tokio_postgres::Client,
    pub tables: Vec<String>,
    pub gate: web::Data<Gate>,
}

/// The world of a completer test in which ada's operation `key` (keys scoped by
/// `X-Account-Id`) was abandoned after its first step; `None` (skipped) without PostgreSQL.
pub async fn crashed(test: &str, key: &str) -> Option<Crashed> {
    let (store, world, db, tables) = super::rides::setup(test).await?;
    let gate = gate();
    abandon(
        scoped(Kind::Header, &store, false, "idem:", SECRET),
        &world,
        &gate,
        key,
    )
    .await;
    Some(Crashed {
        store,
        world,
        db,
        tables,
        gate,
    })
}

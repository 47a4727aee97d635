//! One generation of an app instance: its `FaultyStore` over the store every instance shares,
//! one `Idempotency` per endpoint (each endpoint's scope, admission limit, cache and response
//! limit), the actix-web app (the attribute's runtime entry point, in-process) and the tower
//! layers of the endpoints it serves.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use actix_web::dev::Service as _;
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use idem_runtime::__private_v0_1::{KeySource, Policy};
use idem_runtime::testing::FaultyStore;
use idem_runtime::{CachedStore, Guarantee, Idempotency, OnConflict, OnStoreError};

use crate::actix_app::{Mode, Route};
use crate::effects::{Effects, CHARGE};
use crate::scenario::{Adapter, Conflict, Endpoint, KeyFrom, Rotation, Scenario};
use crate::shared_store::SharedStore;
use crate::world::{Life, World};

/// The header a request's id travels in (the handler records it with its effect).
pub const REQ_HEADER: &str = "x-sim-req";
/// The header an account travels in (the scope of scoped endpoints).
pub const ACCOUNT_HEADER: &str = "x-account";
/// `max_response_bytes` of an endpoint with small responses.
pub const SMALL_RESPONSE: usize = 256;
/// The app secret (the old one of a rotation).
const OLD: &[u8] = b"the-simulated-app-secret-0123456789";
/// The new secret of a rotation.
const NEW: &[u8] = b"the-simulated-new-secret-0123456789";

/// Which build of the app an instance runs: its step of the scenario's rotation (if any).
#[derive(Debug, Clone, Copy)]
pub struct Build<'a> {
    pub rotation: Option<&'a Rotation>,
    pub step: u8,
}

impl Build<'_> {
    /// `builder` with this build's secrets (docs/secrets.md's steps; without a rotation, the
    /// one secret).
    fn secrets<S>(
        &self,
        builder: idem_runtime::IdempotencyBuilder<S>,
    ) -> idem_runtime::IdempotencyBuilder<S> {
        let Some(rotation) = self.rotation else {
            return builder.secret(OLD.to_vec());
        };
        let old = |b: idem_runtime::IdempotencyBuilder<S>| match rotation.adopt {
            true => b,
            false => b.secret(OLD.to_vec()),
        };
        match self.step {
            0 => old(builder),
            1 => old(builder).previous_secrets([NEW.to_vec()]),
            _ => {
                let b = builder.secret(NEW.to_vec());
                match rotation.adopt {
                    true => b.previously_without_secret(),
                    false => b.previous_secrets([OLD.to_vec()]),
                }
            }
        }
    }
}

/// What a request got: its status, body and `Retry-After`; `None` when the app failed to answer
/// at all (an actix error, a broken body).
pub type Answered = Option<(u16, Bytes, Option<u64>)>;

type Call = Pin<Box<dyn Future<Output = Answered>>>;

/// A running generation of an instance.
pub struct Generation {
    /// Its store: faults go here.
    pub faulty: FaultyStore<SharedStore>,
    /// One per endpoint, in order.
    pub idems: Vec<Idempotency>,
    actix: Rc<dyn Fn(actix_http::Request) -> Call>,
    tower: Vec<Option<TowerService>>,
    /// Its completer, if it serves `Steps` endpoints (stopped when dropped: with the kill).
    _completer: Option<idem_runtime::Completer>,
}

type TowerService = idem_runtime::tower::IdempotencyService<Handler>;

/// The endpoint's policy, made once per set of options (a policy is `'static`).
pub(crate) fn policy(index: usize, e: &Endpoint, s: &Scenario) -> &'static Policy {
    type Options = (usize, u8, u8, bool, u8, u64, u64, u64, bool);
    static MADE: OnceLock<Mutex<HashMap<Options, &'static Policy>>> = OnceLock::new();
    let options: Options = (
        index,
        e.guarantee as u8,
        e.on_conflict as u8,
        e.proceed,
        e.key_from as u8,
        e.lease_ms,
        e.ttl_ms,
        s.scale,
        e.transactional,
    );
    let mut made = MADE
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    made.entry(options).or_insert_with(|| {
        const NAMES: [&str; 3] = ["ep0", "ep1", "ep2"];
        let mut p = Policy::new("idem_sim::endpoint");
        p.name = Some(NAMES[index % 3]);
        p.lease = Duration::from_millis(e.lease_ms);
        p.ttl = Duration::from_millis(e.ttl_ms);
        p.guarantee = match e.guarantee {
            crate::scenario::Guarantee::Strict => Guarantee::Strict,
            crate::scenario::Guarantee::Result => Guarantee::Result,
            crate::scenario::Guarantee::Semantic => Guarantee::Semantic,
        };
        p.fingerprint = &["/op", "/principal", "/variant"];
        p.on_conflict = match e.on_conflict {
            Conflict::RetryAfter => OnConflict::RetryAfter,
            Conflict::Wait => OnConflict::Wait,
            Conflict::Accepted => OnConflict::Accepted,
        };
        p.wait_timeout = Duration::from_millis(s.ms(5_000));
        p.on_store_error = if e.proceed {
            OnStoreError::Proceed
        } else {
            OnStoreError::Reject
        };
        p.transactional = e.transactional;
        p.key = match e.key_from {
            KeyFrom::Header => &[],
            KeyFrom::Query => &[KeySource::Query("idempotency_key")],
        };
        Box::leak(Box::new(p))
    })
}

/// The path of endpoint `i`.
pub fn path(i: usize) -> String {
    format!("/ep{i}")
}

/// The tower layer's inner service: the shared handler.
#[derive(Clone)]
pub struct Handler {
    pub(crate) world: Arc<World>,
    life: Arc<Life>,
    generation: u32,
    instance: usize,
    work: Duration,
}

impl Handler {
    /// The handler's answer to request `req_id`; `downstream`: the downstream key its context
    /// hands it (none when it runs without one: unprotected); `write`: where its effect is
    /// written, if anywhere.
    pub(crate) async fn answer<W: Effects>(
        self,
        req_id: u64,
        downstream: Option<String>,
        body: &[u8],
        write: Option<W>,
    ) -> (u16, Vec<u8>) {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
            return (400, b"{}".to_vec());
        };
        let n = |k: &str| v.get(k).and_then(serde_json::Value::as_u64).unwrap_or(0);
        let run = crate::world::Run {
            instance: self.instance,
            req: req_id,
            op: n("op") as usize,
            principal: n("principal"),
            variant: n("variant"),
            downstream,
        };
        self.world
            .handle(&self.life, self.generation, run, self.work, write)
            .await
    }
}

pub(crate) fn req_id(value: Option<&[u8]>) -> u64 {
    value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

impl tower_service::Service<http::Request<Full<Bytes>>> for Handler {
    type Response = http::Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Full<Bytes>>) -> Self::Future {
        let handler = self.clone();
        Box::pin(async move {
            let id = req_id(req.headers().get(REQ_HEADER).map(|v| v.as_bytes()));
            let downstream = req
                .extensions()
                .get::<idem_runtime::IdempotencyContext>()
                .map(|c| c.downstream_key(CHARGE));
            let body = req
                .into_body()
                .collect()
                .await
                .map(|c| c.to_bytes())
                .unwrap_or_default();
            let (status, out) = handler
                .answer(id, downstream, &body, None::<crate::effects::Untracked>)
                .await;
            let mut response = http::Response::new(Full::new(Bytes::from(out)));
            *response.status_mut() =
                http::StatusCode::from_u16(status).unwrap_or(http::StatusCode::OK);
            response.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            Ok(response)
        })
    }
}

impl Generation {
    /// Starts generation `generation` of instance `instance` on `store`, as `build`.
    pub async fn start(
        world: &Arc<World>,
        life: &Arc<Life>,
        instance: usize,
        store: &SharedStore,
        scenario: &Scenario,
        build: Build<'_>,
    ) -> Generation {
        let endpoints = &scenario.endpoints;
        let generation = life.generation();
        // (The reader, instance `usize::MAX`, is nobody's: its slow calls are not a fault.)
        let observed = match instance {
            usize::MAX => store.clone(),
            i => store.for_instance(world, i),
        };
        let faulty = FaultyStore::new(observed);
        let idems: Vec<Idempotency> = endpoints
            .iter()
            .map(|e| idem_for(e, &faulty, build, scenario))
            .collect();
        let handler = |e: &Endpoint| Handler {
            world: world.clone(),
            life: life.clone(),
            generation,
            instance,
            work: Duration::from_millis(e.work_ms),
        };
        let tower = endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| {
                (e.adapter == Adapter::Tower).then(|| {
                    let layer = idem_runtime::tower::IdempotencyLayer::new(
                        &idems[i],
                        policy(i, e, scenario),
                    );
                    tower_layer_apply(layer, handler(e))
                })
            })
            .collect();
        let routes: Vec<Route> = endpoints
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == Adapter::Actix)
            .map(|(i, e)| Route {
                index: i,
                policy: policy(i, e, scenario),
                idem: idems[i].clone(),
                handler: handler(e),
                effects: match (&world.effects_table, e.steps, e.transactional) {
                    (Some(t), true, _) => Mode::Steps(t.clone()),
                    (Some(t), _, true) => Mode::Transactional(t.clone()),
                    _ => Mode::Plain,
                },
            })
            .collect();
        // The completer of an instance serving `Steps` endpoints: the same app, built again on
        // its own thread (it stops with the generation).
        let completer = endpoints
            .iter()
            .position(|e| e.steps && e.adapter == Adapter::Actix)
            .filter(|_| instance != usize::MAX)
            .map(|i| {
                let routes = routes.clone();
                idems[i]
                    .completer()
                    .every(Duration::from_millis(scenario.ms(1000)))
                    .backoff(Duration::from_millis(scenario.ms(1000)))
                    .start(move || crate::actix_app::app(&routes))
            });
        let app = crate::actix_app::app(&routes);
        let service = Rc::new(actix_web::test::init_service(app).await);
        let actix: Rc<dyn Fn(actix_http::Request) -> Call> = Rc::new(move |req| {
            let service = service.clone();
            Box::pin(async move {
                let response = service.call(req).await.ok()?;
                let status = response.status().as_u16();
                let retry_after =
                    retry_after(response.headers().get("retry-after").map(|v| v.as_bytes()));
                let body = actix_web::body::to_bytes(response.into_body()).await.ok()?;
                Some((status, body, retry_after))
            })
        });
        Generation {
            faulty,
            idems,
            actix,
            tower,
            _completer: completer,
        }
    }

    /// Sends a request to endpoint `i` (through its adapter) and reads its whole answer.
    pub fn call(
        &self,
        i: usize,
        uri: &str,
        headers: &[(&str, String)],
        body: Bytes,
    ) -> Pin<Box<dyn Future<Output = Answered>>> {
        match self.tower.get(i).cloned().flatten() {
            Some(mut service) => {
                let mut req = http::Request::post(uri);
                for (name, value) in headers {
                    req = req.header(*name, value.as_str());
                }
                let Ok(req) = req.body(Full::new(body)) else {
                    return Box::pin(async { None });
                };
                Box::pin(async move {
                    use tower_service::Service;
                    let response = service.call(req).await.ok()?;
                    let status = response.status().as_u16();
                    let retry_after =
                        retry_after(response.headers().get("retry-after").map(|v| v.as_bytes()));
                    let body = response.into_body().collect().await.ok()?.to_bytes();
                    Some((status, body, retry_after))
                })
            }
            None => {
                let mut req = actix_web::test::TestRequest::post().uri(uri);
                for (name, value) in headers {
                    req = req.append_header((*name, value.as_str()));
                }
                (self.actix)(req.set_payload(body).to_request())
            }
        }
    }
}

fn tower_layer_apply(
    layer: idem_runtime::tower::IdempotencyLayer,
    handler: Handler,
) -> TowerService {
    use tower_layer::Layer;
    layer.layer(handler)
}

fn retry_after(v: Option<&[u8]>) -> Option<u64> {
    v.and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.trim().parse().ok())
}

/// The `Idempotency` of endpoint `e` on `store`, as `build`.
fn idem_for(
    e: &Endpoint,
    store: &FaultyStore<SharedStore>,
    build: Build<'_>,
    s: &Scenario,
) -> Idempotency {
    let b = Idempotency::builder();
    let b = if e.scoped {
        b.scope_by_header(actix_web::http::header::HeaderName::from_static(
            ACCOUNT_HEADER,
        ))
    } else {
        b.unscoped()
    };
    let b = if e.anonymous { b.allow_anonymous() } else { b };
    let b = build
        .secrets(b)
        .store_timeout(Duration::from_millis(s.store_timeout_ms()));
    let b = match e.admission {
        Some(n) => b.admission_limit(n, Duration::from_millis(s.ms(10_000))),
        None => b,
    };
    let b = if e.small_responses {
        b.max_response_bytes(SMALL_RESPONSE)
    } else {
        b
    };
    if e.cache {
        b.store(CachedStore::new(store.clone(), 1 << 20)).build()
    } else {
        b.store(store.clone()).build()
    }
}

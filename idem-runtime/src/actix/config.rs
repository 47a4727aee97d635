//! `Idempotency`: one app's idempotency layer (store, settings) and its builder.

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest};
use std::sync::Arc;
use std::time::Duration;

use super::webhook::WebhookConfig;
use crate::engine::Engine;
use crate::store::Store;
use crate::MemoryStore;

type ScopeFn = dyn Fn(&HttpRequest) -> Option<String> + Send + Sync;

/// The idempotency layer of one app: its store and settings, shared by every worker.
///
/// Register it with `App::new().app_data(idem.clone())`; every `#[idempotent]` handler finds it
/// there.
///
/// ```
/// use idem_runtime::{Idempotency, MemoryStore};
/// let idem = Idempotency::builder()
///     .store(MemoryStore::default())
///     .scope(|req| req.headers().get("x-account").and_then(|v| v.to_str().ok()).map(String::from))
///     .build();
/// # let _ = idem;
/// ```
#[derive(Clone)]
pub struct Idempotency {
    pub(super) shared: Arc<Shared>,
}

pub(super) struct Shared {
    pub(super) engine: Arc<Engine>,
    pub(super) named: Vec<(String, Arc<Engine>)>,
    pub(super) header: HeaderName,
    pub(super) prefix: String,
    pub(super) scope: Option<Arc<ScopeFn>>,
    pub(super) max_response: usize,
    pub(super) status_path: String,
    pub(super) webhook: WebhookConfig,
    /// Operations in flight, for a graceful shutdown.
    pub(super) inflight: Arc<super::shutdown::Inflight>,
    /// Endpoints whose lease was found too short for its renewals (logged once each).
    pub(super) short_leases: std::sync::Mutex<Vec<&'static str>>,
}

impl std::fmt::Debug for Idempotency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Idempotency")
            .field("engine", &self.shared.engine)
            .field("header", &self.shared.header)
            .field("prefix", &self.shared.prefix)
            .finish_non_exhaustive()
    }
}

/// Builder for [`Idempotency`].
pub struct IdempotencyBuilder {
    store: Option<Arc<dyn Store>>,
    named: Vec<(String, Arc<dyn Store>)>,
    header: HeaderName,
    prefix: String,
    store_timeout: Duration,
    replay_headers: Vec<String>,
    scope: Option<Arc<ScopeFn>>,
    max_response: usize,
    status_path: String,
    webhook: WebhookConfig,
    renew_leases: bool,
}

impl Idempotency {
    /// Starts a builder: memory store, `Idempotency-Key` header, 2 s store deadline.
    pub fn builder() -> IdempotencyBuilder {
        IdempotencyBuilder {
            store: None,
            named: Vec::new(),
            header: HeaderName::from_static("idempotency-key"),
            prefix: "idem:".into(),
            store_timeout: Duration::from_secs(2),
            replay_headers: Vec::new(),
            scope: None,
            max_response: 8 << 20,
            status_path: "/idempotency".into(),
            webhook: WebhookConfig::default(),
            renew_leases: true,
        }
    }

    /// The engine (store, deadlines, replay allow-list).
    pub fn engine(&self) -> &Arc<Engine> {
        &self.shared.engine
    }

    /// The engine of the named store `name` (`store = "name"` on an endpoint), or of the default
    /// store for `None`.
    pub fn engine_for(&self, name: Option<&str>) -> Option<&Arc<Engine>> {
        match name {
            None => Some(&self.shared.engine),
            Some(n) => self
                .shared
                .named
                .iter()
                .find(|(name, _)| name == n)
                .map(|(_, e)| e),
        }
    }

    /// Every engine: the default store's first, then the named ones.
    pub(super) fn engines(&self) -> impl Iterator<Item = &Arc<Engine>> {
        std::iter::once(&self.shared.engine).chain(self.shared.named.iter().map(|(_, e)| e))
    }

    /// Who sent `req`, hashed: the builder's scope function, or by default a hash of the
    /// `Authorization` header; empty for anonymous requests.
    pub fn principal(&self, req: &HttpRequest) -> String {
        match &self.shared.scope {
            Some(f) => f(req).unwrap_or_default(),
            None => req
                .headers()
                .get(actix_web::http::header::AUTHORIZATION)
                .map(|v| crate::fingerprint::sha256_hex(v.as_bytes()))
                .unwrap_or_default(),
        }
    }

    /// The prefix of every storage key.
    pub fn prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// Where status resources live (`on_conflict = "accepted"`), default `/idempotency`.
    pub fn status_path(&self) -> &str {
        &self.shared.status_path
    }

    /// The status resource for `on_conflict = "accepted"`: `GET {status_path}/{id}` answers 202
    /// while the request runs, its stored response once done, and 404 when unknown, expired or
    /// asked for by another principal. Mount it next to the handlers:
    ///
    /// ```
    /// # use idem_runtime::Idempotency;
    /// let idem = Idempotency::builder().build();
    /// let app = actix_web::App::new().app_data(idem.clone()).service(idem.status_service());
    /// # let _ = app;
    /// ```
    pub fn status_service(&self) -> actix_web::Resource {
        let path = format!("{}/{{id}}", self.shared.status_path.trim_end_matches('/'));
        web::resource(path).route(web::get().to(super::status::status))
    }
}

impl IdempotencyBuilder {
    /// The store records live in (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.store = Some(Arc::new(store));
        self
    }

    /// Registers `store` under `name`, for endpoints that say `store = "name"` (a durable store
    /// for payments, say, next to a fast default).
    pub fn named_store(mut self, name: impl Into<String>, store: impl Store) -> Self {
        self.named.push((name.into(), Arc::new(store)));
        self
    }

    /// The request header carrying the key (default `Idempotency-Key`).
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.header = name;
        self
    }

    /// Prefix of every storage key (default `idem:`), to share a store between apps.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// Deadline of every single store call (default 2 s).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.store_timeout = timeout;
        self
    }

    /// Response headers replayed on top of the defaults (`Content-Type`, `Location`, `ETag`,
    /// `Link`, …). Credentials, `Date` and hop-by-hop headers are never replayed.
    pub fn replay_headers<I, S>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.replay_headers
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Who sent a request: keys are scoped by it, so two principals never see each other's
    /// responses. Return `None` for anonymous requests. The default hashes the `Authorization`
    /// header when present. The value is hashed before use; it never reaches the store.
    pub fn scope<F>(mut self, f: F) -> Self
    where
        F: Fn(&HttpRequest) -> Option<String> + Send + Sync + 'static,
    {
        self.scope = Some(Arc::new(f));
        self
    }

    /// Largest handler response stored for replay (default 8 MiB). A larger one still reaches
    /// its client in full, and the operation still counts as done: the record keeps its status
    /// and a `urn:idem:problem:response-not-kept` body instead, which is what retries get. Size
    /// this above your largest response.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.max_response = bytes;
        self
    }

    /// Path of the status resources of `on_conflict = "accepted"` (default `/idempotency`);
    /// mount them with [`Idempotency::status_service`].
    pub fn status_path(mut self, path: impl Into<String>) -> Self {
        self.status_path = path.into();
        self
    }

    /// URLs that `on_conflict = "webhook"` may call back: a callback is allowed when its scheme,
    /// host and port equal one of these and its path lies under that one's path. Unparsable
    /// entries are ignored (and logged).
    pub fn webhook_allow<I, S>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        for u in urls {
            match reqwest::Url::parse(u.as_ref()) {
                Ok(url) => self.webhook.allow.push(url),
                Err(e) => {
                    tracing::error!(url = u.as_ref(), error = %e, "idem: ignoring an unparsable webhook allow-list entry")
                }
            }
        }
        self
    }

    /// The secret webhook deliveries are signed with (HMAC-SHA256 over the body, in the
    /// `Idempotency-Signature: sha256=<hex>` header).
    pub fn webhook_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.webhook.secret = Arc::new(secret.into());
        self
    }

    /// Per-attempt timeout of a webhook delivery (default 5 s).
    pub fn webhook_timeout(mut self, timeout: Duration) -> Self {
        self.webhook.timeout = timeout;
        self
    }

    /// Delivery attempts (default 4) and the first backoff (default 200 ms, doubling).
    pub fn webhook_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.webhook.attempts = attempts.max(1);
        self.webhook.backoff = first_backoff;
        self
    }

    /// How long a webhook waits for the first request to complete (default 5 min).
    pub fn webhook_wait_max(mut self, max: Duration) -> Self {
        self.webhook.wait_max = max;
        self
    }

    /// Test hook: no lease renewal (see the fault suite). Never turn this off in production.
    #[doc(hidden)]
    pub fn renew_leases(mut self, on: bool) -> Self {
        self.renew_leases = on;
        self
    }

    /// Finishes the builder.
    pub fn build(self) -> Idempotency {
        let engine = |store: Arc<dyn Store>| {
            let engine = Engine::new(store, self.store_timeout, &self.replay_headers);
            Arc::new(if self.renew_leases {
                engine
            } else {
                engine.without_lease_renewal()
            })
        };
        let default = engine(
            self.store
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryStore::default())),
        );
        let named = self
            .named
            .iter()
            .map(|(n, s)| (n.clone(), engine(s.clone())))
            .collect();
        Idempotency {
            shared: Arc::new(Shared {
                engine: default,
                named,
                header: self.header,
                prefix: self.prefix,
                scope: self.scope,
                max_response: self.max_response,
                status_path: self.status_path,
                webhook: self.webhook,
                inflight: Arc::default(),
                short_leases: Default::default(),
            }),
        }
    }
}

/// The app's `Idempotency`, registered with `.app_data(idem)` or as `web::Data`.
pub(super) fn find(req: &HttpRequest) -> Option<Idempotency> {
    req.app_data::<Idempotency>().cloned().or_else(|| {
        req.app_data::<web::Data<Idempotency>>()
            .map(|d| d.get_ref().clone())
    })
}

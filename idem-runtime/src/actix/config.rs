//! `Idempotency`: one app's idempotency layer (store, settings) and its builder.

use actix_web::http::header::HeaderName;
use actix_web::{web, HttpRequest};
use std::sync::Arc;
use std::time::Duration;

#[cfg(feature = "tower")]
use super::scope::http_extension;
use super::scope::{actix_extension, Scope};
pub use super::scope::{NoScope, ScopeChosen, Scoped};
use crate::engine::Engine;
#[cfg(feature = "webhook")]
use crate::flow::receivers::WebhookConfig;
use crate::secret::KeyDerivation;
use crate::store::Store;
use crate::MemoryStore;

/// The idempotency layer of one app: its store and settings, shared by every worker.
///
/// Register it with `App::new().app_data(idem.clone())`; every `#[idempotent]` handler finds it
/// there. The builder must be told who a request belongs to (keys are scoped by it) before it
/// builds: by a request extension your auth middleware inserts, a header, a closure, or
/// explicitly nobody (`unscoped()`, for an app with one tenant).
///
/// ```
/// use idem_runtime::{Idempotency, MemoryStore};
///
/// /// What the app's auth middleware inserts into each request's extensions.
/// #[derive(Clone)]
/// struct AccountId(String);
/// impl std::fmt::Display for AccountId {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str(&self.0)
///     }
/// }
///
/// let idem = Idempotency::builder()
///     .store(MemoryStore::default())
///     .scope_by_extension::<AccountId>()
///     .secret(b"32 random bytes shared by every instance".to_vec())
///     .build();
/// # let _ = idem;
/// ```
#[derive(Clone)]
pub struct Idempotency {
    pub(crate) shared: Arc<Shared>,
}

pub(crate) struct Shared {
    pub(crate) engine: Arc<Engine>,
    pub(crate) named: Vec<(String, Arc<Engine>)>,
    pub(crate) header: HeaderName,
    pub(crate) prefix: String,
    pub(crate) scope: Scope,
    /// Whether keyed requests without a principal run, in the anonymous scope
    /// ([`IdempotencyBuilder::allow_anonymous`]).
    pub(crate) anonymous: bool,
    /// Endpoints that refused a keyed request without a principal (logged once each).
    pub(crate) missing_principals: std::sync::Mutex<Vec<&'static str>>,
    /// How storage keys are derived (keyed by the app secret, when there is one).
    pub(crate) derivation: Arc<KeyDerivation>,
    /// The derivations of the previous secrets, newest first: looked up, never written.
    pub(crate) earlier: Vec<Arc<KeyDerivation>>,
    /// Seals stored responses (with an app secret).
    pub(crate) sealer: Option<Arc<crate::seal::Sealer>>,
    /// Whether kept responses carry `Idempotency-Expires`.
    pub(crate) expiry_header: bool,
    /// `Idempotency::disabled()`: handlers run plainly.
    pub(crate) disabled: bool,
    pub(crate) max_response: usize,
    pub(crate) status_path: String,
    #[cfg(feature = "webhook")]
    pub(crate) webhook: WebhookConfig,
    /// Webhook deliveries pending, one per key and callback URL.
    #[cfg(feature = "webhook")]
    pub(crate) deliveries: Arc<crate::flow::webhook::Deliveries>,
    /// The endpoint names claimed so far, with their handlers.
    pub(crate) names: super::names::Names,
    /// Operations in flight, for a graceful shutdown.
    pub(crate) inflight: Arc<super::shutdown::Inflight>,
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

/// Builder for [`Idempotency`]. `S` records whether the scope was chosen: [`build`](Self::build)
/// exists only once it was.
pub struct IdempotencyBuilder<S = NoScope> {
    pub(crate) settings: Settings,
    scope: S,
}

impl<S> std::fmt::Debug for IdempotencyBuilder<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdempotencyBuilder").finish_non_exhaustive()
    }
}

/// Everything a builder holds besides its scope.
pub(crate) struct Settings {
    store: Option<Arc<dyn Store>>,
    named: Vec<(String, Arc<dyn Store>)>,
    header: HeaderName,
    prefix: String,
    store_timeout: Duration,
    replay_headers: Vec<String>,
    pub(crate) secret: Option<Vec<u8>>,
    /// Secrets used before `secret`, for lookup only (`previous_secrets`).
    pub(crate) previous_secrets: Vec<Vec<u8>>,
    /// Whether records written without a secret are looked up too
    /// (`previously_without_secret`).
    pub(crate) previously_without_secret: bool,
    pub(crate) sealing_keys: Vec<Vec<u8>>,
    expiry_header: bool,
    /// Set only by [`Idempotency::disabled`].
    disabled: bool,
    admission: Option<(u32, Duration)>,
    max_response: usize,
    status_path: String,
    #[cfg(feature = "webhook")]
    pub(crate) webhook: WebhookConfig,
    renew_leases: bool,
    max_run_time: Duration,
    anonymous: bool,
}

impl Idempotency {
    /// An `Idempotency` under which every `#[idempotent]` handler runs as if the attribute were
    /// not there: no key required, nothing stored, nothing replayed. For unit tests that want a
    /// handler alone; never for a server.
    ///
    /// ```
    /// let idem = idem_runtime::Idempotency::disabled();
    /// # let _ = idem;
    /// ```
    pub fn disabled() -> Idempotency {
        let mut builder = Idempotency::builder().unscoped();
        builder.settings.disabled = true;
        builder.build()
    }

    /// Starts a builder: memory store, `Idempotency-Key` header, 2 s store deadline, no secret,
    /// and no scope yet (choose one before `build()`).
    pub fn builder() -> IdempotencyBuilder {
        IdempotencyBuilder {
            settings: Settings {
                store: None,
                named: Vec::new(),
                header: HeaderName::from_static("idempotency-key"),
                prefix: "idem:".into(),
                store_timeout: Duration::from_secs(2),
                replay_headers: Vec::new(),
                secret: None,
                previous_secrets: Vec::new(),
                previously_without_secret: false,
                sealing_keys: Vec::new(),
                expiry_header: true,
                disabled: false,
                admission: None,
                max_response: 8 << 20,
                status_path: "/idempotency".into(),
                #[cfg(feature = "webhook")]
                webhook: WebhookConfig::default(),
                renew_leases: true,
                max_run_time: Engine::DEFAULT_MAX_RUN_TIME,
                anonymous: false,
            },
            scope: NoScope,
        }
    }

    /// The engine of the named store `name` (`store = "name"` on an endpoint), or of the default
    /// store for `None`.
    pub(crate) fn engine_for(&self, name: Option<&str>) -> Option<&Arc<Engine>> {
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
    pub(crate) fn engines(&self) -> impl Iterator<Item = &Arc<Engine>> {
        std::iter::once(&self.shared.engine).chain(self.shared.named.iter().map(|(_, e)| e))
    }

    /// Who sent `req`, as the builder's scope says — what its keys are scoped by, and what the
    /// operator API (`inspect`, `purge`, `erase_principal`) takes: `Some("")` for an unscoped
    /// app and for anonymous requests (with `allow_anonymous`), `None` when idem refuses a
    /// keyed request for its principal (none where the app does not allow anonymous requests,
    /// or a scope header sent twice or not UTF-8) — never a fallback to the shared scope. It is
    /// only ever hashed (keyed by the app secret) into storage keys. A request the completer
    /// re-sent belongs to the principal its operation was recorded under (see `Resumed`),
    /// whatever its headers say.
    pub fn principal(&self, req: &HttpRequest) -> Option<String> {
        self.principal_of(req).ok()
    }

    /// The principal a keyed request `req` runs under, or the problem it is refused with: the
    /// scope header sent twice (or as a list), or no principal where the app does not allow
    /// anonymous requests.
    pub(crate) fn principal_of(
        &self,
        req: &HttpRequest,
    ) -> Result<String, crate::problem::Problem> {
        #[cfg(feature = "postgres")]
        if let Some(recorded) = super::resumed::principal(req) {
            return Ok(recorded);
        }
        self.shared.scope.of(req).principal(self.shared.anonymous)
    }

    /// Checks, on every store, that all instances of this app derive storage keys with the same
    /// secret (or all with none): `Ok(false)` when one does not — a retry reaching it would run
    /// again. Call it at startup to refuse to start on a mismatch; the adapter also runs it in
    /// the background on the first request and every five minutes, logging a mismatch as an
    /// error (`idem_secret_mismatch_total`).
    pub async fn check_secret(&self) -> Result<bool, crate::StoreError> {
        let mut agreed = true;
        for engine in self.engines() {
            agreed &= crate::secret::agree(
                engine,
                self.prefix(),
                &self.shared.derivation,
                &self.shared.earlier,
            )
            .await?;
            // Checked: the first request need not check again.
            engine.secret_check_done(true);
        }
        Ok(agreed)
    }

    /// Runs the secret check on `engine` in the background when one is due.
    pub(crate) fn check_secret_when_due(&self, engine: &Arc<Engine>) {
        if !engine.secret_check_due() {
            return;
        }
        let (idem, engine) = (self.clone(), engine.clone());
        // tokio's spawn: under actix-web and under a tower service alike.
        tokio::spawn(async move {
            let done = crate::secret::agree(
                &engine,
                idem.prefix(),
                &idem.shared.derivation,
                &idem.shared.earlier,
            )
            .await;
            engine.secret_check_done(done.is_ok());
        });
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
    /// let idem = Idempotency::builder().unscoped().build();
    /// let app = actix_web::App::new().app_data(idem.clone()).service(idem.status_service());
    /// # let _ = app;
    /// ```
    pub fn status_service(&self) -> actix_web::Resource {
        let path = format!("{}/{{id}}", self.shared.status_path.trim_end_matches('/'));
        web::resource(path).route(web::get().to(super::status::status))
    }
}

impl<S> IdempotencyBuilder<S> {
    /// The store records live in (default: a fresh [`MemoryStore`]).
    pub fn store(mut self, store: impl Store) -> Self {
        self.settings.store = Some(Arc::new(store));
        self
    }

    /// Registers `store` under `name`, for endpoints that say `store = "name"` (a durable store
    /// for payments, say, next to a fast default).
    pub fn named_store(mut self, name: impl Into<String>, store: impl Store) -> Self {
        self.settings.named.push((name.into(), Arc::new(store)));
        self
    }

    /// The request header carrying the key (default `Idempotency-Key`).
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.settings.header = name;
        self
    }

    /// Prefix of every storage key (default `idem:`), to share a store between apps.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = prefix.into();
        self
    }

    /// Deadline of every single store call (default 2 s).
    pub fn store_timeout(mut self, timeout: Duration) -> Self {
        self.settings.store_timeout = timeout;
        self
    }

    /// Response headers replayed on top of the defaults (`Content-Type`, `Location`, `ETag`,
    /// `Link`, …). Credentials, `Date` and hop-by-hop headers are never replayed.
    pub fn replay_headers<I, N>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.settings
            .replay_headers
            .extend(names.into_iter().map(Into::into));
        self
    }

    /// Who sent a request, as a function of it: keys are scoped by it, so two principals never
    /// see each other's records. Return the *account* (not a credential, which rotates), or
    /// `None` for a request that has none: a keyed one is then refused (400 `principal-missing`)
    /// unless [`allow_anonymous`](Self::allow_anonymous). The value is only ever hashed, keyed by
    /// the app [`secret`](Self::secret); it never reaches the store.
    pub fn scope<F>(self, f: F) -> IdempotencyBuilder<Scoped>
    where
        F: Fn(&HttpRequest) -> Option<String> + Send + Sync + 'static,
    {
        self.with_scope(Scope::Func(Arc::new(f)))
    }

    /// Scopes keys by the value of type `T` that the app's own auth middleware inserts into each
    /// request's extensions (`req.extensions_mut().insert(AccountId(..))` on actix-web, the
    /// same on an `http` request under tower). A keyed request without one is refused (400
    /// `principal-missing`) unless [`allow_anonymous`](Self::allow_anonymous).
    pub fn scope_by_extension<T>(self) -> IdempotencyBuilder<Scoped>
    where
        T: std::fmt::Display + Send + Sync + 'static,
    {
        self.with_scope(Scope::Extension {
            actix: actix_extension::<T>,
            #[cfg(feature = "tower")]
            http: http_extension::<T>,
        })
    }

    /// Scopes keys by the value of request header `name` (set by a gateway that authenticated the
    /// request, say `X-Account-Id`; it must *replace* the client's). A keyed request without it
    /// is refused (400 `principal-missing`) unless [`allow_anonymous`](Self::allow_anonymous); one
    /// with two values, a comma list (except in `Authorization`) or bytes that are not UTF-8 is
    /// refused (400 `scope-ambiguous`).
    pub fn scope_by_header(self, name: HeaderName) -> IdempotencyBuilder<Scoped> {
        self.with_scope(Scope::Header(name))
    }

    /// Lets keyed requests that carry no principal run — no scope header (or an empty one), no
    /// extension, the scope closure returned `None` — all in one anonymous scope of their own,
    /// apart from every principal's (any anonymous caller may replay another's response). Off
    /// by default: such a request is refused with 400 `urn:idem:problem:principal-missing`,
    /// since it usually means the scope is read before the app's authentication set it (an
    /// extractor authenticates after idem ran: authenticate in middleware). Requests without a
    /// key are not concerned.
    pub fn allow_anonymous(mut self) -> Self {
        self.settings.anonymous = true;
        self
    }

    /// Every request in one scope: for an app with a single tenant, where any caller may replay
    /// any other caller's response.
    pub fn unscoped(self) -> IdempotencyBuilder<Scoped> {
        self.with_scope(Scope::Unscoped)
    }

    fn with_scope(self, scope: Scope) -> IdempotencyBuilder<Scoped> {
        IdempotencyBuilder {
            settings: self.settings,
            scope: Scoped(scope),
        }
    }

    /// The app secret, shared by every instance of the app (at least 32 random bytes; keep it
    /// with your other secrets). Principals and keys become storage keys through HMACs under
    /// sub-keys of it, so a store dump or a log line gives no offline oracle for account ids.
    /// Without one, the same derivation runs under a public key (logged as a warning at build).
    /// Every instance must use the same secret: instances that disagree derive other storage
    /// keys, so a retry reaching another instance would run again; they notice it through the
    /// store and log it as an error (`idem_secret_mismatch_total`). Changing the secret alone
    /// orphans the records written under the old one; rotate it with
    /// [`previous_secrets`](Self::previous_secrets), and adopt a first one with
    /// [`previously_without_secret`](Self::previously_without_secret) (docs/secrets.md).
    ///
    /// With a secret, stored responses are also sealed (encryption at rest) and fingerprints
    /// keyed; [`sealing_keys`](Self::sealing_keys) gives rotatable keys for the sealing.
    pub fn secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.settings.secret = Some(secret.into());
        self
    }

    /// Keys that seal stored responses, newest first, instead of the app
    /// [`secret`](Self::secret) (see "What the store holds" in the guide). New records are sealed
    /// under the first; a record opens under whichever key sealed it. To rotate: put a new key
    /// first and deploy it everywhere; remove the old one once the longest `ttl` has passed
    /// since. A record sealed under a removed key is refused (500 `record-unreadable`), never
    /// replayed nor run again. Each key should be at least 32 random bytes. The app secret is
    /// rotated another way, with [`previous_secrets`](Self::previous_secrets): it derives
    /// storage keys.
    pub fn sealing_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.settings.sealing_keys = keys.into_iter().map(Into::into).collect();
        self
    }

    /// Whether responses that are kept for replay carry `Idempotency-Expires: <HTTP-date>`: when
    /// the record goes, after which a retry with the same key runs as a new operation (the
    /// endpoint's `ttl`, or `client_error_ttl` for a 4xx). On by default; the first answer and
    /// every replay carry the same date. Not a standard header: the Idempotency-Key draft asks
    /// servers to publish their expiry policy and names none.
    pub fn expiry_header(mut self, on: bool) -> Self {
        self.settings.expiry_header = on;
        self
    }

    /// At most `limit` new operations (keys) per principal per `per`, in this instance: a burst
    /// of `limit`, refilled steadily. A principal over it gets 429 `urn:idem:problem:too-many-keys`
    /// with `Retry-After`; other principals, and replays of anyone's finished operations, are not
    /// affected. Anonymous requests count as one principal. Off by default; for a memory store,
    /// [`MemoryStoreBuilder::per_principal`](crate::MemoryStoreBuilder::per_principal) also caps
    /// what one principal may hold.
    pub fn admission_limit(mut self, limit: u32, per: Duration) -> Self {
        self.settings.admission = Some((limit, per));
        self
    }

    /// Largest handler response stored for replay (default 8 MiB). A larger one still reaches
    /// its client in full, and the operation still counts as done: the record keeps its status
    /// and a `urn:idem:problem:response-not-kept` body instead, which is what retries get. Size
    /// this above your largest response.
    pub fn max_response_bytes(mut self, bytes: usize) -> Self {
        self.settings.max_response = bytes;
        self
    }

    /// Path of the status resources of `on_conflict = "accepted"` (default `/idempotency`);
    /// mount them with [`Idempotency::status_service`].
    pub fn status_path(mut self, path: impl Into<String>) -> Self {
        self.settings.status_path = path.into();
        self
    }

    /// How long a handler's lease is renewed at most (default: an hour). A handler still
    /// running after it keeps running, but its key is no longer held: once its lease lapses, a
    /// retry takes the key over and runs the operation again, and this handler's completion is
    /// fenced out. Without it, a handler that never finishes (a hung downstream call without a
    /// timeout) holds its key forever — 409 to every retry, out of every completer's reach.
    /// Set it above the longest run you expect.
    pub fn max_run_time(mut self, max: Duration) -> Self {
        self.settings.max_run_time = max;
        self
    }

    /// Test hook: no lease renewal (see the fault suite). Never turn this off in production.
    #[doc(hidden)]
    pub fn renew_leases(mut self, on: bool) -> Self {
        self.settings.renew_leases = on;
        self
    }

    /// Finishes the builder; it must have been told who a request belongs to (a scope method
    /// or [`unscoped`](Self::unscoped)), or this does not compile.
    pub fn build(self) -> Idempotency
    where
        S: ScopeChosen,
    {
        let Scoped(scope) = self.scope.chosen();
        let settings = self.settings;
        let derivation = match &settings.secret {
            Some(secret) => {
                if secret.len() < 16 {
                    tracing::warn!(
                        bytes = secret.len(),
                        "idem: the app secret is short; use at least 32 random bytes"
                    );
                }
                KeyDerivation::keyed(secret)
            }
            None => {
                tracing::warn!("idem: no app secret (IdempotencyBuilder::secret): storage keys are derived under a public key, so a store dump lets anyone confirm a guessed account id offline. Adopt one in the three steps of IdempotencyBuilder::previously_without_secret, or retries across the deploy run again");
                KeyDerivation::unkeyed()
            }
        };
        let admission = settings
            .admission
            .map(|(limit, per)| Arc::new(crate::admission::Admission::new(limit, per)));
        let engine = |store: Arc<dyn Store>| {
            let engine = Engine::new(store, settings.store_timeout, &settings.replay_headers)
                .with_admission(admission.clone())
                .with_max_run_time(settings.max_run_time);
            Arc::new(if settings.renew_leases {
                engine
            } else {
                engine.without_lease_renewal()
            })
        };
        let default = engine(
            settings
                .store
                .clone()
                .unwrap_or_else(|| Arc::new(MemoryStore::default())),
        );
        let named = settings
            .named
            .iter()
            .map(|(n, s)| (n.clone(), engine(s.clone())))
            .collect();
        let earlier = settings.earlier();
        let sealer = settings.sealer();
        Idempotency {
            shared: Arc::new(Shared {
                engine: default,
                named,
                header: settings.header,
                prefix: settings.prefix,
                scope,
                anonymous: settings.anonymous,
                missing_principals: Default::default(),
                derivation: Arc::new(derivation),
                earlier,
                sealer,
                expiry_header: settings.expiry_header,
                disabled: settings.disabled,
                max_response: settings.max_response,
                status_path: settings.status_path,
                #[cfg(feature = "webhook")]
                webhook: settings.webhook,
                names: Default::default(),
                #[cfg(feature = "webhook")]
                deliveries: Arc::default(),
                inflight: Arc::default(),
            }),
        }
    }
}

/// The app's `Idempotency`, registered with `.app_data(idem)` or as `web::Data`.
pub(crate) fn find(req: &HttpRequest) -> Option<Idempotency> {
    req.app_data::<Idempotency>().cloned().or_else(|| {
        req.app_data::<web::Data<Idempotency>>()
            .map(|d| d.get_ref().clone())
    })
}

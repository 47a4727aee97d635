//! Delivery of `on_conflict = "webhook"` (cargo feature `webhook`): a duplicate that arrives
//! while the first request runs gets 202, and once the first completes its stored response is POSTed to the duplicate's
//! `Idempotency-Callback` URL, signed with HMAC-SHA256 under the app's webhook secret.
//!
//! Only URLs matching the app's allow-list are ever called (scheme, host and port equal, path
//! under the allowed one); redirects are not followed; each attempt has a timeout and failed
//! attempts are retried a bounded number of times with exponential backoff. One delivery per key
//! and callback URL, however many duplicates ask for it; at most a bounded number of deliveries
//! pending in the app (a duplicate past it gets 503); every store call under the store deadline.
//!
//! The signature and the headers are in [`crate::webhook`].

use reqwest::Url;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::Head;
use crate::actix::{Idempotency, IdempotencyBuilder};
use crate::engine::{deadline, Engine};
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::webhook::{
    signature_header, Delivery, CALLBACK_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, STATUS_HEADER,
};
use crate::{IdempotencyKey, OnConflict, Policy, RecordState, StorageKey, StoredResponse};

/// The webhook settings (cargo feature `webhook`).
impl<S> IdempotencyBuilder<S> {
    /// URLs that `on_conflict = "webhook"` may call back: a callback is allowed when its scheme,
    /// host and port equal one of these and its path lies under that one's path. Unparsable
    /// entries are ignored (and logged).
    pub fn webhook_allow<I, U>(mut self, urls: I) -> Self
    where
        I: IntoIterator<Item = U>,
        U: AsRef<str>,
    {
        for u in urls {
            match Url::parse(u.as_ref()) {
                Ok(url) => self.settings.webhook.allow.push(Receiver {
                    url,
                    secrets: Arc::from(Vec::new()),
                }),
                Err(e) => {
                    tracing::error!(url = u.as_ref(), error = %e, "idem: ignoring an unparsable webhook allow-list entry")
                }
            }
        }
        self
    }

    /// The secret webhook deliveries are signed with, shared with their receivers (see
    /// [`webhook`](crate::webhook) for the signature and its
    /// [`verify`](crate::webhook::verify)er). Required by every endpoint with
    /// `on_conflict = "webhook"`: without it they answer 500, never an unsigned delivery. Keep it
    /// apart from the app [`secret`](IdempotencyBuilder::secret): this one is given to third parties.
    pub fn webhook_secret(mut self, secret: impl Into<Vec<u8>>) -> Self {
        self.settings.webhook.secret = Arc::new(secret.into());
        self
    }

    /// A callback receiver with signing secrets of its own (in a multi-tenant app, one per
    /// customer): callbacks under `url` are allowed as with [`webhook_allow`](Self::webhook_allow),
    /// and their deliveries are signed under `secrets` instead of the app-wide
    /// [`webhook_secret`](Self::webhook_secret), so that no receiver holds a secret that
    /// verifies another's deliveries. Give two while the receiver's secret rotates, the new one
    /// first: every delivery carries a signature under each, and the receiver verifies with
    /// either; drop the old one once the receiver uses the new. Where several receivers match
    /// a callback, the one with the longest path decides. An empty `secrets` is ignored (and
    /// logged).
    pub fn webhook_receiver<I, K>(mut self, url: impl AsRef<str>, secrets: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        let secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        match Url::parse(url.as_ref()) {
            Ok(_) if secrets.is_empty() => {
                tracing::error!(
                    url = url.as_ref(),
                    "idem: ignoring a webhook receiver without a secret"
                )
            }
            Ok(url) => self.settings.webhook.allow.push(Receiver {
                url,
                secrets: Arc::from(secrets),
            }),
            Err(e) => {
                tracing::error!(url = url.as_ref(), error = %e, "idem: ignoring an unparsable webhook receiver")
            }
        }
        self
    }

    /// Per-attempt timeout of a webhook delivery (default 5 s).
    pub fn webhook_timeout(mut self, timeout: Duration) -> Self {
        self.settings.webhook.timeout = timeout;
        self
    }

    /// Delivery attempts (default 4) and the first backoff (default 200 ms, doubling).
    pub fn webhook_retries(mut self, attempts: u32, first_backoff: Duration) -> Self {
        self.settings.webhook.attempts = attempts.max(1);
        self.settings.webhook.backoff = first_backoff;
        self
    }

    /// How long a webhook waits for the first request to complete (default 5 min).
    pub fn webhook_wait_max(mut self, max: Duration) -> Self {
        self.settings.webhook.wait_max = max;
        self
    }
}

/// A request's callback URL, and the client's own key the delivery carries for correlation.
pub(crate) type Callback = Option<(Url, String)>;

/// The callback a request names. One that is present but not allowed is refused before
/// anything runs; a missing one only matters if the request turns out to be a duplicate.
pub(crate) fn callback(
    req: &impl Head,
    policy: &Policy,
    config: &WebhookConfig,
    key: &IdempotencyKey,
) -> Result<Callback, CallbackError> {
    match req.header(CALLBACK_HEADER) {
        Some(v) if policy.on_conflict == OnConflict::Webhook => config
            .check(v)
            .map(|url| Some((url, key.as_str().to_owned()))),
        _ => Ok(None),
    }
}

/// The body of the 202 a duplicate of a webhook endpoint gets (`application/json`).
pub(crate) const ACCEPTED_BODY: &str = r#"{"status":"processing","delivery":"webhook"}"#;

/// What a duplicate of a webhook endpoint gets: `Ok` for 202 ([`ACCEPTED_BODY`]), with one
/// delivery per key and callback URL however many duplicates ask; `Err` with the problem — 400
/// without a callback, 503 when too many deliveries are pending.
pub(crate) fn answer(
    idem: &Idempotency,
    engine: Arc<Engine>,
    key: StorageKey,
    callback: Callback,
) -> Result<(), Problem> {
    let Some((url, raw_key)) = callback else {
        return Err(Problem::new(
            ProblemKind::CallbackInvalid,
            CallbackError::Missing.to_string(),
        ));
    };
    match idem.shared.deliveries.claim(&key, &url) {
        Claim::Pending => Ok(()),
        Claim::Full => Err(Problem::new(
            ProblemKind::StoreUnavailable,
            "too many webhook deliveries are pending on this server; retry with the same key \
             later",
        )
        .retry_after(5)),
        Claim::New(slot) => {
            let config = idem.shared.webhook.clone();
            idem.spawn_tracked(async move {
                deliver_when_done(engine, config, key, raw_key, url).await;
                drop(slot);
            });
            Ok(())
        }
    }
}

/// 500 for a webhook endpoint on an app without a webhook secret: deliveries are never signed
/// with an empty key. Logged once.
pub(crate) fn secret_missing(policy: &Policy) -> Problem {
    static LOGGED: AtomicBool = AtomicBool::new(false);
    if !LOGGED.swap(true, Ordering::Relaxed) {
        tracing::error!(endpoint = policy.endpoint, "idem: on_conflict = \"webhook\" needs a webhook secret: add `.webhook_receiver(url, [secret])` or `.webhook_secret(…)` to the Idempotency builder");
    }
    observe::outcome(policy.endpoint, None, Outcome::Rejected);
    Problem::new(
        ProblemKind::Internal,
        "this endpoint answers duplicates by webhook, but the server has no webhook secret \
         (`webhook_secret`, or a `webhook_receiver` of its own) to sign deliveries with",
    )
}

/// One allowed callback origin and path, with the secrets its deliveries are signed under
/// (none: the app-wide webhook secret).
#[derive(Clone)]
pub(crate) struct Receiver {
    pub url: Url,
    pub secrets: Arc<[Vec<u8>]>,
}

/// The app's webhook settings (see the `webhook_*` methods of the builder).
#[derive(Clone)]
pub(crate) struct WebhookConfig {
    pub allow: Vec<Receiver>,
    pub secret: Arc<Vec<u8>>,
    pub timeout: Duration,
    pub attempts: u32,
    pub backoff: Duration,
    pub wait_max: Duration,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            allow: Vec::new(),
            secret: Arc::new(Vec::new()),
            timeout: Duration::from_secs(5),
            attempts: 4,
            backoff: Duration::from_millis(200),
            wait_max: Duration::from_secs(300),
        }
    }
}

/// Why a callback URL was refused (400).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub(crate) enum CallbackError {
    /// The duplicate carried no callback header.
    #[error("this endpoint answers duplicates by webhook: send an Idempotency-Callback header with an allowed URL")]
    Missing,
    /// Not a URL, or not http(s).
    #[error("the Idempotency-Callback header is not an http(s) URL")]
    Malformed,
    /// Not on the app's allow-list.
    #[error("the Idempotency-Callback URL is not on this server's allow-list")]
    NotAllowed,
}

impl WebhookConfig {
    /// Parses and checks one callback header value against the allow-list.
    pub(crate) fn check(&self, raw: &[u8]) -> Result<Url, CallbackError> {
        let text = std::str::from_utf8(raw).map_err(|_| CallbackError::Malformed)?;
        let url = Url::parse(text.trim()).map_err(|_| CallbackError::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return Err(CallbackError::Malformed);
        }
        match self.secrets_for(&url) {
            Some(_) => Ok(url),
            None => Err(CallbackError::NotAllowed),
        }
    }

    /// Whether any delivery can be signed: an app-wide secret, or a receiver with its own.
    pub(crate) fn can_sign(&self) -> bool {
        !self.secret.is_empty() || self.allow.iter().any(|r| !r.secrets.is_empty())
    }

    /// The secrets deliveries to `url` are signed under: those of the most specific receiver
    /// that allows it (the longest path), or the app-wide secret for one without its own;
    /// `None` when no receiver allows it or there is nothing to sign with.
    pub(crate) fn secrets_for(&self, url: &Url) -> Option<Vec<&[u8]>> {
        let receiver = self
            .allow
            .iter()
            .filter(|r| {
                let a = &r.url;
                a.scheme() == url.scheme()
                    && a.host_str() == url.host_str()
                    && a.port_or_known_default() == url.port_or_known_default()
                    && under(url.path(), a.path())
            })
            // The longest path; of equal ones, one with secrets of its own (a plain
            // `webhook_allow` entry for the same URL, listed before or after, never downgrades a
            // receiver to the app-wide secret).
            .max_by_key(|r| {
                (
                    r.url.path().trim_end_matches('/').len(),
                    !r.secrets.is_empty(),
                )
            })?;
        let secrets: Vec<&[u8]> = if receiver.secrets.is_empty() {
            Some(self.secret.as_slice())
                .filter(|s| !s.is_empty())
                .into_iter()
                .collect()
        } else {
            receiver.secrets.iter().map(Vec::as_slice).collect()
        };
        (!secrets.is_empty()).then_some(secrets)
    }
}

/// Whether `path` is `base` or below it, segment-wise (`/hooks` allows `/hooks/x`, not
/// `/hooksevil`).
fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base || base.is_empty() || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}

/// The deliveries pending in one app: one per key and callback URL, at most `max` in all.
#[derive(Default)]
pub(crate) struct Deliveries {
    pending: std::sync::Mutex<std::collections::HashSet<(String, String)>>,
}

/// What [`Deliveries::claim`] found.
pub(crate) enum Claim {
    /// A new delivery: make it, then drop the guard.
    New(DeliveryGuard),
    /// The same delivery is already pending: nothing to do.
    Pending,
    /// Too many deliveries pending.
    Full,
}

/// Holds one pending delivery's place.
pub(crate) struct DeliveryGuard {
    deliveries: Arc<Deliveries>,
    slot: (String, String),
}

impl Drop for DeliveryGuard {
    fn drop(&mut self) {
        self.deliveries
            .pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.slot);
    }
}

/// Most webhook deliveries pending in one app at once.
pub(crate) const MAX_PENDING_DELIVERIES: usize = 1024;

impl Deliveries {
    /// Claims the delivery of `key`'s response to `url`.
    pub(crate) fn claim(self: &Arc<Self>, key: &StorageKey, url: &Url) -> Claim {
        let slot = (key.as_str().to_owned(), url.as_str().to_owned());
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if pending.contains(&slot) {
            return Claim::Pending;
        }
        if pending.len() >= MAX_PENDING_DELIVERIES {
            return Claim::Full;
        }
        pending.insert(slot.clone());
        Claim::New(DeliveryGuard {
            deliveries: self.clone(),
            slot,
        })
    }
}

/// Waits for the record of `key` to complete, then delivers its response to `url`. Runs in its
/// own task, after the duplicate already got its 202.
pub(crate) async fn deliver_when_done(
    engine: Arc<Engine>,
    config: WebhookConfig,
    key: StorageKey,
    raw_key: String,
    url: Url,
) {
    let until = tokio::time::Instant::now() + config.wait_max;
    let limit = engine.store_timeout();
    // After a failed read or wait: a store that fails at once must not turn this loop into a
    // busy one. 100 ms, doubling up to 5 s; reset by an answer.
    let mut backoff = None::<Duration>;
    let response = loop {
        if let Some(pause) = backoff {
            let pause = pause.min(until.saturating_duration_since(tokio::time::Instant::now()));
            tokio::time::sleep(pause).await;
        }
        match deadline("get", limit, engine.store().get(&key)).await {
            Ok(Some(rec)) => match rec.state {
                RecordState::Completed { response } => match key.open(response) {
                    Ok(response) => break response,
                    Err(why) => {
                        crate::engine::unreadable("webhook delivery", &key, why);
                        return;
                    }
                },
                RecordState::InProgress { .. } => backoff = None,
            },
            Ok(None) => {
                tracing::warn!(key = %key, "idem: the request a webhook waited for was released or expired; nothing to deliver");
                return;
            }
            Err(error) => {
                tracing::warn!(key = %key, %error, "idem: webhook wait: store read failed; retrying");
                backoff = Some(next_backoff(backoff));
            }
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            tracing::warn!(key = %key, "idem: the request a webhook waited for did not complete in time; nothing delivered");
            return;
        }
        let left = until - now;
        match deadline("wait", left + limit, engine.store().wait(&key, left)).await {
            Ok(()) => {}
            Err(_) => backoff = Some(next_backoff(backoff)),
        }
    };
    post(&config, &url, &raw_key, &response).await;
}

/// The next pause of the webhook wait's backoff: 100 ms, then doubling, at most 5 s.
fn next_backoff(last: Option<Duration>) -> Duration {
    last.map_or(Duration::from_millis(100), |d| {
        (d * 2).min(Duration::from_secs(5))
    })
}

/// A fresh delivery id: 128 random bits in hex.
fn delivery_id() -> String {
    use chacha20poly1305::aead::rand_core::RngCore;
    let mut bytes = [0u8; 16];
    chacha20poly1305::aead::OsRng.fill_bytes(&mut bytes);
    let mut id = String::with_capacity(32);
    crate::fingerprint::push_hex(&mut id, &bytes);
    id
}

async fn post(config: &WebhookConfig, url: &Url, raw_key: &str, response: &StoredResponse) {
    let client = match reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(config.timeout)
        .no_proxy()
        .build()
    {
        Ok(c) => c,
        Err(error) => {
            tracing::error!(%error, "idem: cannot build the webhook client");
            return;
        }
    };
    let timestamp = crate::clock::wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let Some(secrets) = config.secrets_for(url) else {
        tracing::error!(%url, "idem: no secret to sign a webhook delivery with; nothing sent");
        return;
    };
    let id = delivery_id();
    let origin = url.origin().ascii_serialization();
    let delivery = Delivery {
        id: &id,
        origin: &origin,
        key: raw_key,
        status: response.status(),
        body: response.body(),
    };
    let signature = signature_header(&secrets, timestamp, &delivery);
    let content_type = response
        .headers()
        .find(|(n, _)| *n == "content-type")
        .map(|(_, v)| v);
    let mut delay = config.backoff;
    for attempt in 1..=config.attempts.max(1) {
        let mut req = client
            .post(url.clone())
            .header(SIGNATURE_HEADER, &signature)
            .header(DELIVERY_HEADER, &id)
            .header(STATUS_HEADER, response.status().to_string())
            .header("idempotency-key", raw_key)
            .header(crate::actix::REPLAYED_HEADER, "true")
            .body(response.body().clone());
        if let Some(ct) = content_type {
            req = req.header("content-type", ct);
        }
        match req.send().await {
            Ok(r) if r.status().is_success() => return,
            // A client error will not get better by retrying.
            Ok(r) if r.status().is_client_error() => {
                tracing::warn!(status = r.status().as_u16(), %url, "idem: webhook receiver refused the delivery");
                return;
            }
            Ok(r) => {
                tracing::warn!(status = r.status().as_u16(), attempt, %url, "idem: webhook delivery failed")
            }
            Err(error) => tracing::warn!(%error, attempt, %url, "idem: webhook delivery failed"),
        }
        if attempt < config.attempts {
            tokio::time::sleep(delay).await;
            delay = delay.saturating_mul(2);
        }
    }
    tracing::error!(%url, "idem: webhook delivery abandoned after every attempt");
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(allow: &[&str]) -> WebhookConfig {
        WebhookConfig {
            allow: allow
                .iter()
                .map(|a| Receiver {
                    url: Url::parse(a).unwrap(),
                    secrets: Arc::from(vec![b"s".to_vec()]),
                })
                .collect(),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn allow_list_matches_origin_and_path_prefix() {
        let c = config(&["http://127.0.0.1:9000/hooks"]);
        assert!(c.check(b"http://127.0.0.1:9000/hooks").is_ok());
        assert!(c.check(b"http://127.0.0.1:9000/hooks/pay?x=1").is_ok());
        for bad in [
            "http://127.0.0.1:9001/hooks",
            "https://127.0.0.1:9000/hooks",
            "http://127.0.0.2:9000/hooks",
            "http://127.0.0.1:9000/hooksevil",
            "http://127.0.0.1:9000/other",
        ] {
            assert_eq!(
                c.check(bad.as_bytes()),
                Err(CallbackError::NotAllowed),
                "{bad}"
            );
        }
        assert_eq!(
            c.check(b"ftp://127.0.0.1:9000/hooks"),
            Err(CallbackError::Malformed)
        );
        assert_eq!(c.check(b"not a url"), Err(CallbackError::Malformed));
        assert_eq!(
            c.check(b"http://user:pw@127.0.0.1:9000/hooks"),
            Err(CallbackError::Malformed)
        );
        assert_eq!(
            config(&[]).check(b"http://127.0.0.1:9000/hooks"),
            Err(CallbackError::NotAllowed)
        );
    }

    /// A receiver given its own secret and also listed by `webhook_allow` (after it, or before)
    /// keeps its own secret: the plain entry never downgrades it to the app-wide one.
    #[test]
    fn a_receivers_own_secret_wins_over_a_plain_entry_for_the_same_url() {
        let own = Receiver {
            url: Url::parse("http://127.0.0.1:9000/hooks").unwrap(),
            secrets: Arc::from(vec![b"own".to_vec()]),
        };
        let plain = Receiver {
            url: Url::parse("http://127.0.0.1:9000/hooks/").unwrap(),
            secrets: Arc::from(Vec::new()),
        };
        let url = Url::parse("http://127.0.0.1:9000/hooks/in").unwrap();
        for allow in [vec![own.clone(), plain.clone()], vec![plain, own]] {
            let c = WebhookConfig {
                allow,
                secret: Arc::new(b"app-wide".to_vec()),
                ..WebhookConfig::default()
            };
            assert_eq!(c.secrets_for(&url), Some(vec![&b"own"[..]]));
        }
    }
}

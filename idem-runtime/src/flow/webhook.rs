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

use super::receivers::{CallbackError, Secrets, WebhookConfig};
use super::Head;
use crate::actix::Idempotency;
use crate::engine::{deadline, Engine};
use crate::observe::{self, Outcome};
use crate::problem::{Problem, ProblemKind};
use crate::webhook::{
    signature_header, Delivery, CALLBACK_HEADER, DELIVERY_HEADER, SIGNATURE_HEADER, STATUS_HEADER,
};
use crate::{IdempotencyKey, OnConflict, Policy, RecordState, StorageKey, StoredResponse};

/// The webhook settings (cargo feature `webhook`).
/// Where a duplicate's response goes: the callback URL, the client's own key the delivery
/// carries for correlation, and the secrets it is signed under (the receiver's, chosen for the
/// request's principal).
pub(crate) struct Target {
    url: Url,
    raw_key: String,
    secrets: Secrets,
}

/// A request's callback, if it names one.
pub(crate) type Callback = Option<Target>;

/// The callback a request names. One that is present but not allowed is refused before
/// anything runs; a missing one only matters if the request turns out to be a duplicate.
pub(crate) fn callback(
    req: &impl Head,
    policy: &Policy,
    config: &WebhookConfig,
    key: &IdempotencyKey,
    principal: &str,
) -> Result<Callback, CallbackError> {
    match req.header(CALLBACK_HEADER) {
        Some(v) if policy.on_conflict == OnConflict::Webhook => {
            config.check(v, principal).map(|(url, secrets)| {
                Some(Target {
                    url,
                    raw_key: key.as_str().to_owned(),
                    secrets,
                })
            })
        }
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
    let Some(Target {
        url,
        raw_key,
        secrets,
    }) = callback
    else {
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
                deliver_when_done(engine, config, key, raw_key, url, secrets).await;
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
    secrets: Secrets,
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
    post(&config, &url, &raw_key, &secrets, &response).await;
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

async fn post(
    config: &WebhookConfig,
    url: &Url,
    raw_key: &str,
    secrets: &[Vec<u8>],
    response: &StoredResponse,
) {
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
    let secrets: Vec<&[u8]> = secrets.iter().map(Vec::as_slice).collect();
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

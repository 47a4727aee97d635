//! `on_conflict = "webhook"`: a duplicate that arrives while the first request runs gets 202, and
//! once the first completes its stored response is POSTed to the duplicate's
//! `Idempotency-Callback` URL, signed with HMAC-SHA256 under the app's webhook secret.
//!
//! Only URLs matching the app's allow-list are ever called (scheme, host and port equal, path
//! under the allowed one); redirects are not followed; each attempt has a timeout and failed
//! attempts are retried a bounded number of times with exponential backoff. One delivery per key
//! and callback URL, however many duplicates ask for it; at most a bounded number of deliveries
//! pending in the app (a duplicate past it gets 503); every store call under the store deadline.
//!
//! **The signature.** `Idempotency-Signature: t=<unix seconds>,v1=<hex>`, where `<hex>` is
//! HMAC-SHA256 under the webhook secret of `"<t>.<idempotency key>.<status>."` followed by the
//! body: the receiver learns the delivery is the server's, for that key and that status, and
//! recent. [`verify`] checks one (receivers in Rust can use it as is; the recipe is four lines in
//! any language); a delivery older than the tolerance (say 5 minutes) is refused as a replay.
//!
//! ```
//! use idem_runtime::actix::webhook::{sign, verify_at};
//! use std::time::{Duration, UNIX_EPOCH};
//! let header = sign(b"whsec", 1_700_000_000, "order-1", 201, b"{}");
//! let now = UNIX_EPOCH + Duration::from_secs(1_700_000_030);
//! let tolerance = Duration::from_secs(300);
//! assert!(verify_at(b"whsec", &header, "order-1", 201, b"{}", tolerance, now).is_ok());
//! assert!(verify_at(b"whsec", &header, "order-2", 201, b"{}", tolerance, now).is_err());
//! ```

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::{deadline, Engine};
use crate::{RecordState, StorageKey, StoredResponse};

/// Request header naming where the response of a waiting duplicate is delivered.
pub const CALLBACK_HEADER: &str = "idempotency-callback";
/// Header of each delivery carrying `t=<unix seconds>,v1=<hex>` (see the module docs).
pub const SIGNATURE_HEADER: &str = "idempotency-signature";
/// Header of each delivery carrying the original response's status code.
pub const STATUS_HEADER: &str = "idempotency-status";

/// The app's webhook settings (see the `webhook_*` methods of the builder).
#[derive(Clone)]
pub(crate) struct WebhookConfig {
    pub allow: Vec<Url>,
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
pub enum CallbackError {
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
    pub fn check(&self, raw: &[u8]) -> Result<Url, CallbackError> {
        let text = std::str::from_utf8(raw).map_err(|_| CallbackError::Malformed)?;
        let url = Url::parse(text.trim()).map_err(|_| CallbackError::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return Err(CallbackError::Malformed);
        }
        let allowed = self.allow.iter().any(|a| {
            a.scheme() == url.scheme()
                && a.host_str() == url.host_str()
                && a.port_or_known_default() == url.port_or_known_default()
                && under(url.path(), a.path())
        });
        if allowed {
            Ok(url)
        } else {
            Err(CallbackError::NotAllowed)
        }
    }
}

/// Whether `path` is `base` or below it, segment-wise (`/hooks` allows `/hooks/x`, not
/// `/hooksevil`).
fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base || base.is_empty() || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
}

fn signer(secret: &[u8], timestamp: u64, key: &str, status: u16, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret)
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(format!("{timestamp}.{key}.{status}.").as_bytes());
    mac.update(body);
    mac
}

/// The `Idempotency-Signature` value of a delivery: `t=<timestamp>,v1=<hex HMAC-SHA256(secret,
/// "<timestamp>.<key>.<status>." ‖ body)>`.
pub fn sign(secret: &[u8], timestamp: u64, key: &str, status: u16, body: &[u8]) -> String {
    let mut out = format!("t={timestamp},v1=");
    let tag = signer(secret, timestamp, key, status, body)
        .finalize()
        .into_bytes();
    crate::fingerprint::push_hex(&mut out, &tag);
    out
}

/// Why a delivery's signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// Not `t=<seconds>,v1=<64 hex>`.
    #[error("the Idempotency-Signature header is malformed")]
    Malformed,
    /// Signed too long ago (or too far in the future): a replayed delivery.
    #[error("the delivery's timestamp is outside the tolerance")]
    Stale,
    /// No `v1` signature matches this key, status and body under the secret.
    #[error("the signature does not match")]
    Mismatch,
}

/// Verifies the `Idempotency-Signature` `header` of a delivery carrying `key` (its
/// `Idempotency-Key` header), `status` (its `Idempotency-Status`) and `body`, signed at most
/// `tolerance` ago (or ahead, for clock skew). The comparison is constant-time; several `v1=`
/// entries are accepted (any may match).
pub fn verify(
    secret: &[u8],
    header: &str,
    key: &str,
    status: u16,
    body: &[u8],
    tolerance: Duration,
) -> Result<(), SignatureError> {
    verify_at(
        secret,
        header,
        key,
        status,
        body,
        tolerance,
        std::time::SystemTime::now(),
    )
}

/// [`verify`] at the time `now`.
pub fn verify_at(
    secret: &[u8],
    header: &str,
    key: &str,
    status: u16,
    body: &[u8],
    tolerance: Duration,
    now: std::time::SystemTime,
) -> Result<(), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some(("v1", hex)) => signatures.push(decode_hex(hex).ok_or(SignatureError::Malformed)?),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    let signed = std::time::UNIX_EPOCH + Duration::from_secs(timestamp);
    let skew = now
        .duration_since(signed)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or(Duration::MAX);
    if skew > tolerance {
        return Err(SignatureError::Stale);
    }
    let mac = signer(secret, timestamp, key, status, body);
    if signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 64 || !hex.is_ascii() {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
        .collect()
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
    let response = loop {
        match deadline("get", limit, engine.store().get(&key)).await {
            Ok(Some(rec)) => match rec.state {
                RecordState::Completed { response } => break response,
                RecordState::InProgress { .. } => {}
            },
            Ok(None) => {
                tracing::warn!(key = %key, "idem: the request a webhook waited for was released or expired; nothing to deliver");
                return;
            }
            Err(error) => {
                tracing::warn!(key = %key, %error, "idem: webhook wait: store read failed; retrying")
            }
        }
        let now = tokio::time::Instant::now();
        if now >= until {
            tracing::warn!(key = %key, "idem: the request a webhook waited for did not complete in time; nothing delivered");
            return;
        }
        let left = until - now;
        let _ = deadline("wait", left + limit, engine.store().wait(&key, left)).await;
    };
    post(&config, &url, &raw_key, &response).await;
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
    let timestamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let signature = sign(
        &config.secret,
        timestamp,
        raw_key,
        response.status,
        &response.body,
    );
    let content_type = response
        .headers
        .iter()
        .find(|(n, _)| n == "content-type")
        .map(|(_, v)| v.clone());
    let mut delay = config.backoff;
    for attempt in 1..=config.attempts.max(1) {
        let mut req = client
            .post(url.clone())
            .header(SIGNATURE_HEADER, &signature)
            .header(STATUS_HEADER, response.status.to_string())
            .header("idempotency-key", raw_key)
            .header(super::REPLAYED_HEADER, "true")
            .body(response.body.clone());
        if let Some(ct) = &content_type {
            req = req.header("content-type", ct.as_ref());
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
            allow: allow.iter().map(|a| Url::parse(a).unwrap()).collect(),
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

    #[test]
    fn signature_is_hmac_sha256_of_timestamp_key_status_and_body() {
        // RFC 4231 test case 2, with the message split where the signer joins its parts.
        assert_eq!(
            sign(b"Jefe", 1, "what", 200, b"do ya want for nothing?"),
            format!("t=1,v1={}", {
                let mut m = Hmac::<Sha256>::new_from_slice(b"Jefe").unwrap();
                m.update(b"1.what.200.do ya want for nothing?");
                let mut s = String::new();
                crate::fingerprint::push_hex(&mut s, &m.finalize().into_bytes());
                s
            })
        );
    }

    #[test]
    fn forged_tampered_and_stale_deliveries_fail() {
        use std::time::UNIX_EPOCH;
        let t = 1_700_000_000;
        let at = |secs| UNIX_EPOCH + Duration::from_secs(secs);
        let tol = Duration::from_secs(300);
        let h = sign(b"s", t, "k", 201, b"{}");
        assert_eq!(
            verify_at(b"s", &h, "k", 201, b"{}", tol, at(t + 10)),
            Ok(())
        );
        assert_eq!(
            verify_at(b"s", &h, "k", 201, b"{}", tol, at(t - 10)),
            Ok(()),
            "skew"
        );
        let forged = sign(b"not the secret", t, "k", 201, b"{}");
        for (header, key, status, body, now, want) in [
            (
                forged.as_str(),
                "k",
                201,
                &b"{}"[..],
                at(t),
                SignatureError::Mismatch,
            ),
            (
                h.as_str(),
                "k2",
                201,
                b"{}",
                at(t),
                SignatureError::Mismatch,
            ),
            (h.as_str(), "k", 500, b"{}", at(t), SignatureError::Mismatch),
            (
                h.as_str(),
                "k",
                201,
                b"{ }",
                at(t),
                SignatureError::Mismatch,
            ),
            (
                h.as_str(),
                "k",
                201,
                b"{}",
                at(t + 301),
                SignatureError::Stale,
            ),
            ("v1=00", "k", 201, b"{}", at(t), SignatureError::Malformed),
            ("t=1", "k", 201, b"{}", at(t), SignatureError::Malformed),
        ] {
            assert_eq!(
                verify_at(b"s", header, key, status, body, tol, now),
                Err(want),
                "{header} {key} {status}"
            );
        }
    }
}

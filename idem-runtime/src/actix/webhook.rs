//! `on_conflict = "webhook"`: a duplicate that arrives while the first request runs gets 202, and
//! once the first completes its stored response is POSTed to the duplicate's
//! `Idempotency-Callback` URL, signed with HMAC-SHA256 under the app's secret.
//!
//! Only URLs matching the app's allow-list are ever called (scheme, host and port equal, path
//! under the allowed one); redirects are not followed; each attempt has a timeout and failed
//! attempts are retried a bounded number of times with exponential backoff.

use hmac::{Hmac, Mac};
use reqwest::Url;
use sha2::Sha256;
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Engine;
use crate::{RecordState, StorageKey, StoredResponse};

/// Request header naming where the response of a waiting duplicate is delivered.
pub const CALLBACK_HEADER: &str = "idempotency-callback";
/// Header of each delivery carrying `sha256=<hex of HMAC-SHA256(secret, body)>`.
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

/// `sha256=<hex>` of HMAC-SHA256 over `body` under `secret`.
pub fn sign(secret: &[u8], body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes a key of any length");
    mac.update(body);
    let mut out = String::from("sha256=");
    crate::fingerprint::push_hex(&mut out, &mac.finalize().into_bytes());
    out
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
    let response = loop {
        match engine.store().get(&key).await {
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
        let _ = engine.store().wait(&key, until - now).await;
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
    let signature = sign(&config.secret, &response.body);
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
    fn signature_is_rfc4231_hmac_sha256() {
        // RFC 4231 test case 2.
        assert_eq!(
            sign(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }
}

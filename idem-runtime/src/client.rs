//! The client half of the pattern (feature `client`): one logical operation is one UUIDv4
//! `Idempotency-Key`, sent again on every retry, so a retry can never charge twice.
//!
//! Retried: connection errors, timeouts, 5xx (503 included), 409 (the first attempt is still
//! running) and 429, with exponential backoff and full jitter, honouring `Retry-After`, for a
//! bounded number of attempts. Never retried: 400 and every other 4xx (returned as they are),
//! and 422, which becomes [`ClientError::KeyReused`].
//!
//! ```no_run
//! # async fn demo() -> Result<(), idem_runtime::client::ClientError> {
//! use idem_runtime::client::Client;
//! let client = Client::new();
//! let op = client.operation();            // one key for this payment, however many tries
//! let resp = op
//!     .post_json("http://127.0.0.1:8080/payments", &serde_json::json!({"amount": 1000, "currency": "EUR"}))
//!     .await?;
//! println!("{} after {} attempt(s), key {}", resp.status(), op.attempts(), op.key());
//! # Ok(()) }
//! ```

use reqwest::StatusCode;
use serde::Serialize;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How often and how patiently to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (default 8).
    pub max_attempts: u32,
    /// Backoff before the second attempt (default 100 ms), doubled for each later one.
    pub base_delay: Duration,
    /// Cap on one backoff (default 5 s).
    pub max_delay: Duration,
    /// Cap on a server's `Retry-After` (default 30 s), so no server can stall us for long.
    pub max_retry_after: Duration,
    /// Timeout of one attempt (default 10 s).
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 8,
            base_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// 422: this key was already used for a request with another payload. Start a new
    /// operation (a new key) for a new request.
    #[error("the idempotency key was already used with a different payload: {detail}")]
    KeyReused {
        /// The server's `detail`, if it sent problem+json.
        detail: String,
    },
    /// Every attempt failed with something retryable.
    #[error("gave up after {attempts} attempts: {last}")]
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// What the last attempt ran into.
        last: String,
    },
    /// The request could not be built (bad URL, body not serializable).
    #[error("the request could not be built: {0}")]
    Request(String),
}

/// A retrying HTTP client for idempotent endpoints.
#[derive(Debug, Clone)]
pub struct Client {
    http: reqwest::Client,
    policy: RetryPolicy,
    header: String,
}

impl Default for Client {
    fn default() -> Self {
        Self::new()
    }
}

impl Client {
    /// A client with the default [`RetryPolicy`].
    pub fn new() -> Self {
        Self::with_policy(RetryPolicy::default())
    }

    /// A client with `policy`.
    pub fn with_policy(policy: RetryPolicy) -> Self {
        let http = reqwest::Client::builder()
            .timeout(policy.attempt_timeout)
            .build()
            .unwrap_or_default();
        Client {
            http,
            policy,
            header: "Idempotency-Key".into(),
        }
    }

    /// Uses `http` (its proxies, TLS, pool) for the requests.
    pub fn with_http(mut self, http: reqwest::Client) -> Self {
        self.http = http;
        self
    }

    /// The header the key is sent in (default `Idempotency-Key`).
    pub fn header_name(mut self, name: impl Into<String>) -> Self {
        self.header = name.into();
        self
    }

    /// Starts one logical operation, with a fresh UUIDv4 key.
    pub fn operation(&self) -> Operation<'_> {
        self.operation_with_key(uuid::Uuid::new_v4().to_string())
    }

    /// Resumes an operation whose key was kept (after a crash of the client, say).
    pub fn operation_with_key(&self, key: impl Into<String>) -> Operation<'_> {
        Operation {
            client: self,
            key: key.into(),
            attempts: AtomicU32::new(0),
        }
    }

    /// `POST url` with a JSON body as one new operation.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
    ) -> Result<reqwest::Response, ClientError> {
        self.operation().post_json(url, body).await
    }
}

/// One logical operation: every attempt carries the same key.
#[derive(Debug)]
pub struct Operation<'a> {
    client: &'a Client,
    key: String,
    attempts: AtomicU32,
}

impl Operation<'_> {
    /// The key every attempt of this operation sends.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Attempts made so far.
    pub fn attempts(&self) -> u32 {
        self.attempts.load(Ordering::Relaxed)
    }

    /// `POST url` with `body` as JSON, retried as the module documentation says.
    pub async fn post_json<T: Serialize + ?Sized>(
        &self,
        url: &str,
        body: &T,
    ) -> Result<reqwest::Response, ClientError> {
        let body = serde_json::to_vec(body).map_err(|e| ClientError::Request(e.to_string()))?;
        let policy = &self.client.policy;
        let mut last = String::new();
        for attempt in 1..=policy.max_attempts.max(1) {
            self.attempts.store(attempt, Ordering::Relaxed);
            let sent = self
                .client
                .http
                .post(url)
                .header(self.client.header.as_str(), self.key.as_str())
                .header("content-type", "application/json")
                .body(body.clone())
                .send()
                .await;
            let retry_after = match sent {
                Ok(resp) => match resp.status() {
                    StatusCode::UNPROCESSABLE_ENTITY => {
                        let detail = resp
                            .bytes()
                            .await
                            .ok()
                            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                            .and_then(|v| v["detail"].as_str().map(String::from))
                            .unwrap_or_default();
                        return Err(ClientError::KeyReused { detail });
                    }
                    s if s == StatusCode::CONFLICT
                        || s == StatusCode::TOO_MANY_REQUESTS
                        || s.is_server_error() =>
                    {
                        last = format!("HTTP {s}");
                        retry_after(&resp)
                    }
                    _ => return Ok(resp),
                },
                Err(e) if e.is_builder() => return Err(ClientError::Request(e.to_string())),
                Err(e) => {
                    last = e.to_string();
                    None
                }
            };
            if attempt < policy.max_attempts {
                tokio::time::sleep(delay(policy, attempt, retry_after)).await;
            }
        }
        Err(ClientError::GaveUp {
            attempts: policy.max_attempts.max(1),
            last,
        })
    }
}

fn retry_after(resp: &reqwest::Response) -> Option<Duration> {
    resp.headers()
        .get("retry-after")?
        .to_str()
        .ok()?
        .trim()
        .parse::<u64>()
        .ok()
        .map(Duration::from_secs)
}

/// `Retry-After` when the server sent one (capped), else full jitter: a uniform pick in
/// `0 ..= min(max_delay, base · 2^(attempt-1))`.
fn delay(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(ra) = retry_after {
        return ra.min(policy.max_retry_after);
    }
    let exp = policy
        .base_delay
        .saturating_mul(1u32 << (attempt - 1).min(20))
        .min(policy.max_delay);
    exp.mul_f64(fastrand::f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_bounded_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..40 {
            assert!(delay(&p, attempt, None) <= p.max_delay);
        }
        assert_eq!(
            delay(&p, 1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            delay(&p, 1, Some(Duration::from_secs(3600))),
            p.max_retry_after
        );
    }
}

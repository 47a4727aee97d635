//! The callbacks an app allows and the secrets their deliveries are signed under: the
//! builder's `webhook_*` settings, receivers (each with secrets of its own, and maybe an owning
//! principal), and the check of a duplicate's `Idempotency-Callback` against them.

use reqwest::Url;
use std::sync::Arc;
use std::time::Duration;

use crate::actix::IdempotencyBuilder;

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
                    owner: None,
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

    /// A callback receiver with signing secrets of its own: callbacks under `url` are allowed
    /// as with [`webhook_allow`](Self::webhook_allow), and their deliveries are signed under
    /// `secrets` instead of the app-wide [`webhook_secret`](Self::webhook_secret), so that no
    /// receiver holds a secret that verifies another's deliveries. Give two while the
    /// receiver's secret rotates, the new one first: every delivery carries a signature under
    /// each, and the receiver verifies with either; drop the old one once the receiver uses the
    /// new. Where several receivers match a callback, the one with the longest path decides.
    /// An empty `secrets` is ignored (and logged).
    ///
    /// Any principal's request may name this receiver: a tenant that names another's receiver
    /// gets its own response delivered there, signed under that receiver's secret. In a
    /// multi-tenant app, give each customer's receiver to its principal with
    /// [`webhook_receiver_of`](Self::webhook_receiver_of).
    pub fn webhook_receiver<I, K>(self, url: impl AsRef<str>, secrets: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.receiver(None, url.as_ref(), secrets)
    }

    /// [`webhook_receiver`](Self::webhook_receiver) for the requests of one principal only (what
    /// the app's scope gives: the `scope_by_header` value, the `scope_by_extension` value as
    /// text, the `scope` closure's answer). Another principal's request that names it is
    /// refused (400 `callback-invalid`): one tenant cannot have a delivery signed for another's
    /// receiver. Where an owned receiver and one without owner match a callback equally, the
    /// owned one decides.
    pub fn webhook_receiver_of<I, K>(
        self,
        principal: impl Into<String>,
        url: impl AsRef<str>,
        secrets: I,
    ) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        self.receiver(Some(principal.into()), url.as_ref(), secrets)
    }

    fn receiver<I, K>(mut self, owner: Option<String>, url: &str, secrets: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Vec<u8>>,
    {
        let secrets: Vec<Vec<u8>> = secrets
            .into_iter()
            .map(Into::into)
            .filter(|s| !s.is_empty())
            .collect();
        match Url::parse(url) {
            Ok(_) if secrets.is_empty() => {
                tracing::error!(url, "idem: ignoring a webhook receiver without a secret")
            }
            Ok(parsed) => self.settings.webhook.allow.push(Receiver {
                url: parsed,
                secrets: Arc::from(secrets),
                owner,
            }),
            Err(e) => {
                tracing::error!(url, error = %e, "idem: ignoring an unparsable webhook receiver")
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

/// The secrets one receiver's deliveries are signed under, the newest first.
pub(crate) type Secrets = Arc<[Vec<u8>]>;

/// One allowed callback origin and path, with the secrets its deliveries are signed under
/// (none: the app-wide webhook secret).
#[derive(Clone)]
pub(crate) struct Receiver {
    pub url: Url,
    pub secrets: Secrets,
    /// The principal whose requests may name it (`webhook_receiver_of`); `None`: any.
    pub owner: Option<String>,
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
    pub(crate) fn check(
        &self,
        raw: &[u8],
        principal: &str,
    ) -> Result<(Url, Secrets), CallbackError> {
        let text = std::str::from_utf8(raw).map_err(|_| CallbackError::Malformed)?;
        let url = Url::parse(text.trim()).map_err(|_| CallbackError::Malformed)?;
        if !matches!(url.scheme(), "http" | "https") || !url.username().is_empty() {
            return Err(CallbackError::Malformed);
        }
        match self.secrets_for(&url, principal) {
            Some(secrets) => Ok((url, secrets)),
            None => Err(CallbackError::NotAllowed),
        }
    }

    /// Whether any delivery can be signed: an app-wide secret, or a receiver with its own.
    pub(crate) fn can_sign(&self) -> bool {
        !self.secret.is_empty() || self.allow.iter().any(|r| !r.secrets.is_empty())
    }

    /// The secrets the deliveries of `principal`'s requests to `url` are signed under: those of
    /// the most specific receiver that allows it (the longest path), or the app-wide secret for
    /// one without its own; `None` when no receiver allows it, when the most specific one
    /// belongs to another principal, or when there is nothing to sign with.
    pub(crate) fn secrets_for(&self, url: &Url, principal: &str) -> Option<Secrets> {
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
            // The longest path; of equal ones, the principal's own, then one with secrets of
            // its own (a plain `webhook_allow` entry for the same URL, listed before or after,
            // never downgrades a receiver to the app-wide secret).
            .max_by_key(|r| {
                (
                    r.url.path().trim_end_matches('/').len(),
                    r.owner.as_deref() == Some(principal),
                    !r.secrets.is_empty(),
                )
            })?;
        if receiver.owner.as_deref().is_some_and(|o| o != principal) {
            return None;
        }
        if receiver.secrets.is_empty() {
            return (!self.secret.is_empty()).then(|| Arc::from(vec![self.secret.to_vec()]));
        }
        Some(receiver.secrets.clone())
    }
}

/// Whether `path` is `base` or below it, segment-wise (`/hooks` allows `/hooks/x`, not
/// `/hooksevil`).
fn under(path: &str, base: &str) -> bool {
    let base = base.trim_end_matches('/');
    path == base || base.is_empty() || path.strip_prefix(base).is_some_and(|r| r.starts_with('/'))
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
                    owner: None,
                })
                .collect(),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn allow_list_matches_origin_and_path_prefix() {
        let c = config(&["http://127.0.0.1:9000/hooks"]);
        assert!(c
            .check(b"http://127.0.0.1:9000/hooks", "")
            .map(|_| ())
            .is_ok());
        assert!(c
            .check(b"http://127.0.0.1:9000/hooks/pay?x=1", "")
            .map(|_| ())
            .is_ok());
        for bad in [
            "http://127.0.0.1:9001/hooks",
            "https://127.0.0.1:9000/hooks",
            "http://127.0.0.2:9000/hooks",
            "http://127.0.0.1:9000/hooksevil",
            "http://127.0.0.1:9000/other",
        ] {
            assert_eq!(
                c.check(bad.as_bytes(), "").map(|_| ()),
                Err(CallbackError::NotAllowed),
                "{bad}"
            );
        }
        assert_eq!(
            c.check(b"ftp://127.0.0.1:9000/hooks", "").map(|_| ()),
            Err(CallbackError::Malformed)
        );
        assert_eq!(
            c.check(b"not a url", "").map(|_| ()),
            Err(CallbackError::Malformed)
        );
        assert_eq!(
            c.check(b"http://user:pw@127.0.0.1:9000/hooks", "")
                .map(|_| ()),
            Err(CallbackError::Malformed)
        );
        assert_eq!(
            config(&[])
                .check(b"http://127.0.0.1:9000/hooks", "")
                .map(|_| ()),
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
            owner: None,
        };
        let plain = Receiver {
            url: Url::parse("http://127.0.0.1:9000/hooks/").unwrap(),
            secrets: Arc::from(Vec::new()),
            owner: None,
        };
        let url = Url::parse("http://127.0.0.1:9000/hooks/in").unwrap();
        for allow in [vec![own.clone(), plain.clone()], vec![plain, own]] {
            let c = WebhookConfig {
                allow,
                secret: Arc::new(b"app-wide".to_vec()),
                ..WebhookConfig::default()
            };
            assert_eq!(
                c.secrets_for(&url, "").as_deref(),
                Some(&[b"own".to_vec()][..])
            );
        }
    }
}

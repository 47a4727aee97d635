//! The demo's accounts (and its app secret), whatever the framework: `Authorization: Bearer <api key>`, each key
//! belonging to an account. Idempotency keys are scoped by the *account*, so a rotated key of the
//! same account replays, and another account's request never reaches this one's records.
//!
//! Keys: `IDEM_DEMO_KEYS="sk_x=acct_x,sk_y=acct_y"`, by default `sk_test_a1` and `sk_test_a2`
//! (a rotation) for `acct_a` and `sk_test_b1` for `acct_b`. No `Authorization` at all is the
//! anonymous account `acct_public`, so plain `curl` lines work; an unknown or malformed key is
//! 401.

use std::collections::HashMap;
use std::sync::Arc;

/// The account a request belongs to: what the idempotency keys are scoped by.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AccountId(pub String);

impl std::fmt::Display for AccountId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// The account of requests without `Authorization`.
pub const ANONYMOUS: &str = "acct_public";

/// API key → account.
#[derive(Clone)]
pub struct ApiKeys(Arc<HashMap<String, String>>);

impl ApiKeys {
    /// From `IDEM_DEMO_KEYS`, or the default keys.
    pub fn from_env() -> Self {
        let spec = std::env::var("IDEM_DEMO_KEYS")
            .ok()
            .filter(|s| !s.trim().is_empty())
            .unwrap_or_else(|| "sk_test_a1=acct_a,sk_test_a2=acct_a,sk_test_b1=acct_b".into());
        let keys = spec
            .split(',')
            .filter_map(|pair| {
                let (key, account) = pair.split_once('=')?;
                let (key, account) = (key.trim(), account.trim());
                (!key.is_empty() && !account.is_empty())
                    .then(|| (key.to_owned(), account.to_owned()))
            })
            .collect();
        ApiKeys(Arc::new(keys))
    }

    /// The account of a request with this `Authorization` value: anonymous without one, `None`
    /// for a key that is unknown or not a bearer token.
    pub fn account(&self, authorization: Option<&[u8]>) -> Option<String> {
        let Some(value) = authorization else {
            return Some(ANONYMOUS.to_owned());
        };
        let value = std::str::from_utf8(value).ok()?;
        let (scheme, key) = value.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        self.0.get(key.trim()).cloned()
    }
}

/// The app secret every instance shares (`IDEM_SECRET`); without one, the demo's public
/// development secret, announced on stderr.
pub fn app_secret() -> String {
    std::env::var("IDEM_SECRET").unwrap_or_else(|_| {
        eprintln!(
            "IDEM_SECRET is not set: using the demo's DEVELOPMENT secret, which is public; set \
             IDEM_SECRET (32+ random bytes) for anything real"
        );
        "payments-demo-secret: set IDEM_SECRET in production".into()
    })
}

//! A request read for the store, whatever the framework: its key found (a form key after the
//! body is read), its body read up to the endpoint's limit and decoded when the fingerprint
//! needs it, and its storage key and fingerprint derived. The adapter supplies its body stream
//! through [`BodySource`].

use bytes::Bytes;

use super::request::{decode, find_key, fingerprint, missing_key};
use super::{content_length, Head};
use crate::actix::Idempotency;
use crate::key::IdempotencyKey;
use crate::problem::{Problem, ProblemKind};
use crate::rotation::Earlier;
use crate::secret::KeyDerivation;
use crate::{Fingerprint, Guarantee, KeySource, Policy, StorageKey};

/// A framework's request body, not read yet.
pub(crate) trait BodySource {
    /// Reads it whole (raw, still compressed if it was sent so), refusing more than `limit`
    /// bytes (`declared` is its `Content-Length`, if any); through
    /// [`read_whole`](super::chunks::read_whole).
    fn read(
        self,
        declared: Option<u64>,
        limit: usize,
    ) -> impl std::future::Future<Output = Result<Bytes, Problem>>;
}

/// The body of a request that runs without a key: read already (a form was searched for a key),
/// or not.
pub(crate) enum Unkeyed<S> {
    /// Not read: hand it to the handler as it is.
    Unread(S),
    /// Read, raw.
    Read(Bytes),
}

/// A request with its key, read and derived.
pub(crate) struct Keyed<T> {
    /// Where its record lives.
    pub(crate) storage_key: StorageKey,
    /// The request's fingerprint (keyed by the app secret).
    pub(crate) fingerprint: Fingerprint,
    /// Its storage keys and fingerprints under the previous secrets (looked up, never written).
    pub(crate) earlier: Vec<Earlier>,
    /// The previous secret's derivation `storage_key` is under, when the completer resumes an
    /// operation started before a rotation (`None`: the current secret's).
    pub(crate) derivation: Option<std::sync::Arc<KeyDerivation>>,
    /// The body, raw.
    pub(crate) body: Bytes,
    /// What the adapter's `after_key` check returned.
    pub(crate) checked: T,
}

/// What [`prepare`] made of a request.
pub(crate) enum Prepared<S, T> {
    /// It has a key: ask the store.
    Keyed(Keyed<T>),
    /// No key, and the endpoint does not require one: run the handler plainly.
    Unkeyed(Unkeyed<S>),
    /// Refused before the store was asked (400, 413…).
    Refused(Problem),
}

/// Reads `req` for the store: its key, body and fingerprint, its storage key under
/// `principal` (a keyed request without a usable one is refused with its problem). `after_key`
/// runs once the key and the principal are known and before the body is read (a webhook
/// callback is checked there).
pub(crate) async fn prepare<S: BodySource, T>(
    idem: &Idempotency,
    policy: &Policy,
    req: &impl Head,
    principal: &Result<String, Problem>,
    body: S,
    after_key: impl FnOnce(&IdempotencyKey, &str) -> Result<T, Problem>,
) -> Prepared<S, T> {
    let shared = &idem.shared;
    let content_type = req
        .header("content-type")
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    let limit = policy.max_body;
    // A key in a form field needs the body first; otherwise the body is read once the key is
    // known to be valid.
    // The body decoded (gunzipped…) once, when a form key or a `result`/`semantic` fingerprint
    // needs it.
    let (body, mut decoded) = if policy.key.iter().any(|s| matches!(s, KeySource::Form(_))) {
        let raw = match body.read(content_length(req), limit).await {
            Ok(b) => b,
            Err(p) => return Prepared::Refused(p),
        };
        match decode(req, &raw, limit) {
            Ok(d) => (Unkeyed::Read(raw), Some(d)),
            Err(p) => return Prepared::Refused(p),
        }
    } else {
        (Unkeyed::Unread(body), None)
    };
    let form = match (&body, &decoded) {
        (_, Some(Some(plain))) => Some(&plain[..]),
        (Unkeyed::Read(raw), _) => Some(&raw[..]),
        (Unkeyed::Unread(_), _) => None,
    };
    let key = match find_key(req, policy, shared.header.as_str(), &content_type, form) {
        Ok(Some(key)) => key,
        Ok(None) if policy.required => {
            return Prepared::Refused(Problem::new(
                ProblemKind::KeyMissing,
                missing_key(policy, shared.header.as_str()),
            ))
        }
        Ok(None) => return Prepared::Unkeyed(body),
        Err(detail) => return Prepared::Refused(Problem::new(ProblemKind::KeyInvalid, detail)),
    };
    let principal = match principal {
        Ok(p) => p,
        Err(problem) => return Prepared::Refused(refuse_principal(idem, policy, problem)),
    };
    let checked = match after_key(&key, principal) {
        Ok(t) => t,
        Err(p) => return Prepared::Refused(p),
    };
    let body = match body {
        Unkeyed::Read(raw) => raw,
        Unkeyed::Unread(source) => match source.read(content_length(req), limit).await {
            Ok(b) => b,
            Err(p) => return Prepared::Refused(p),
        },
    };
    if decoded.is_none() && policy.guarantee != Guarantee::Strict {
        decoded = match decode(req, &body, limit) {
            Ok(d) => Some(d),
            Err(p) => return Prepared::Refused(p),
        };
    }
    let decoded = decoded.as_ref().and_then(|d| d.as_deref());
    let raw = fingerprint(req, policy, &content_type, &body, decoded);
    let under = |d: &KeyDerivation| {
        let storage_key = d
            .storage_key(&shared.prefix, policy.endpoint, principal.as_bytes(), &key)
            .sealed_with(shared.seal_for(d, key.as_str()));
        (storage_key, d.fingerprint(raw))
    };
    let (storage_key, fingerprint) = under(&shared.derivation);
    let earlier = shared
        .earlier
        .iter()
        .map(|d| {
            let (key, fingerprint) = under(d);
            Earlier {
                key,
                fingerprint,
                derivation: d.clone(),
            }
        })
        .collect();
    Prepared::Keyed(Keyed {
        storage_key,
        fingerprint,
        earlier,
        derivation: None,
        body,
        checked,
    })
}

/// A keyed request refused for its principal: counted, and the first of each endpoint logged
/// (a missing principal usually means the scope is read before the app's authentication set
/// it: every such request of the endpoint fails alike).
fn refuse_principal(idem: &Idempotency, policy: &Policy, problem: &Problem) -> Problem {
    let metric = match problem.kind {
        ProblemKind::PrincipalMissing => crate::observe::metric::PRINCIPAL_MISSING_TOTAL,
        _ => crate::observe::metric::SCOPE_AMBIGUOUS_TOTAL,
    };
    crate::observe::count(metric);
    if problem.kind == ProblemKind::PrincipalMissing
        && crate::observe::first_time(&idem.shared.missing_principals, policy.endpoint)
    {
        tracing::error!(endpoint = policy.endpoint, "idem: a keyed request without a principal was refused (400 principal-missing); set the scope in middleware, before the handler's extractors, or allow anonymous requests on the builder (logged once per endpoint)");
    }
    problem.clone()
}

//! The app secret and what is derived from it: how a request's principal and key become a
//! storage key.
//!
//! One secret serves the whole library; each use gets a sub-key of its own,
//! `HMAC-SHA256(secret, "idem/v2/<use>")`, so that no two uses share a key. Principal tags and
//! storage keys are then HMACs under those sub-keys: a store dump or a log line gives no offline
//! oracle for account ids or credentials. Every instance of an app must use the same secret (or
//! none): otherwise each computes other storage keys for the same request, and a retry that
//! reaches another instance runs again. [`KeyDerivation::verifier`] is what instances compare
//! through the store to notice that.
//!
//! Without a secret the same construction runs under a fixed, public key: storage keys stay
//! stable and unguessable without the idempotency key, but a low-entropy principal (an account
//! id) can be confirmed offline from a dump.

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::sync::OnceLock;

use crate::key::{IdempotencyKey, StorageKey};

pub(crate) type HmacSha256 = Hmac<Sha256>;

/// The key of the unkeyed derivation: public, so that an app without a secret still derives the
/// same storage keys on every instance.
const PUBLIC_KEY: &[u8] = b"idem/v2/no-secret";

/// Hex digits of the principal tag at the start of every status id.
pub(crate) const TAG_LEN: usize = 16;
/// Length of a status id: tag, dash, 64 hex digits.
pub(crate) const ID_LEN: usize = TAG_LEN + 1 + 64;

/// How storage keys are derived from (endpoint, principal, key): keyed by the app's secret, or
/// by a public key when there is none.
#[derive(Clone)]
pub(crate) struct KeyDerivation {
    tag: HmacSha256,
    id: HmacSha256,
    fingerprint: HmacSha256,
    downstream: HmacSha256,
    verifier: [u8; 32],
    keyed: bool,
    /// The tag of the empty principal (an unscoped app's every key), computed once.
    unscoped_tag: String,
}

impl std::fmt::Debug for KeyDerivation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyDerivation")
            .field("keyed", &self.keyed)
            .finish_non_exhaustive()
    }
}

/// HMAC-SHA256 keyed by `key`: the one constructor every keyed hash of the crate uses.
pub(crate) fn mac(key: &[u8]) -> HmacSha256 {
    // HMAC takes a key of any length.
    HmacSha256::new_from_slice(key).unwrap_or_else(|_| unreachable!("HMAC accepts any key length"))
}

/// `HMAC-SHA256(secret, "idem/v2/" + purpose)`: the sub-key of one use of the secret.
pub(crate) fn sub_key(secret: &[u8], purpose: &str) -> [u8; 32] {
    let mut m = mac(secret);
    m.update(b"idem/v2/");
    m.update(purpose.as_bytes());
    m.finalize().into_bytes().into()
}

/// The 16-hex tag of `principal` under the tag sub-key `mac`.
fn compute_tag(mac: &HmacSha256, principal: &[u8]) -> String {
    let mut m = mac.clone();
    m.update(principal);
    let mut tag = String::with_capacity(64);
    crate::fingerprint::push_hex(&mut tag, &m.finalize().into_bytes());
    tag.truncate(TAG_LEN);
    tag
}

impl KeyDerivation {
    /// Storage keys keyed by `secret` (at least 32 random bytes are advised).
    pub(crate) fn keyed(secret: &[u8]) -> Self {
        Self::with(secret, true)
    }

    /// Storage keys under the public key: stable across instances, but a principal can be
    /// confirmed offline from a store dump.
    pub(crate) fn unkeyed() -> Self {
        Self::with(PUBLIC_KEY, false)
    }

    /// The shared unkeyed derivation.
    pub(crate) fn public() -> &'static Self {
        static PUBLIC: OnceLock<KeyDerivation> = OnceLock::new();
        PUBLIC.get_or_init(Self::unkeyed)
    }

    fn with(secret: &[u8], keyed: bool) -> Self {
        let tag = mac(&sub_key(secret, "principal-tag"));
        KeyDerivation {
            unscoped_tag: compute_tag(&tag, b""),
            tag,
            id: mac(&sub_key(secret, "storage-key")),
            fingerprint: mac(&sub_key(secret, "fingerprint")),
            downstream: mac(&sub_key(secret, "downstream")),
            verifier: sub_key(secret, "verifier"),
            keyed,
        }
    }

    /// Whether this derivation is keyed by an app secret (not the public key).
    pub(crate) fn is_keyed(&self) -> bool {
        self.keyed
    }

    /// A value every instance with the same secret (or none) computes alike, and that says
    /// nothing about the secret: what instances compare to find that they disagree.
    pub(crate) fn verifier(&self) -> [u8; 32] {
        self.verifier
    }

    /// The fingerprint a record keeps of a request: `HMAC(sub_key, fingerprint)`. A plain hash
    /// of a low-entropy body (an amount and a currency) would let anyone holding a store dump
    /// confirm a guess offline; keyed, it says nothing without the secret.
    pub(crate) fn fingerprint(&self, fp: crate::Fingerprint) -> crate::Fingerprint {
        let mut m = self.fingerprint.clone();
        m.update(&fp.0);
        crate::Fingerprint(m.finalize().into_bytes().into())
    }

    /// The key a step of the operation `storage_key` sends downstream (a payment processor's
    /// own `Idempotency-Key`): hex of `HMAC(sub_key, storage key ‖ 0 ‖ step)`, truncated to 128
    /// bits. The same on every attempt and every instance with this secret; unguessable
    /// without it, and unlinkable to the client's raw key.
    ///
    /// With `operation` (a multi-step operation's id: a key reused after its record expired
    /// starts another one), `HMAC(sub_key, storage key ‖ 1 ‖ operation ‖ step)`: each operation
    /// under the key gets keys of its own, so a processor that still remembers the earlier
    /// operation's key does not answer the new one with the old charge.
    pub(crate) fn downstream_key(
        &self,
        storage_key: &str,
        operation: Option<i64>,
        step: &str,
    ) -> String {
        let mut m = self.downstream.clone();
        m.update(storage_key.as_bytes());
        match operation {
            Some(op) => {
                m.update(&[1]);
                m.update(&op.to_be_bytes());
            }
            None => m.update(&[0]),
        }
        m.update(step.as_bytes());
        let mut out = String::with_capacity(32);
        crate::fingerprint::push_hex(&mut out, &m.finalize().into_bytes()[..16]);
        out
    }

    /// What every storage key of `principal` starts with: `prefix ‖ tag ‖ "-"`.
    pub(crate) fn principal_prefix(&self, prefix: &str, principal: &[u8]) -> String {
        format!("{prefix}{}-", self.tag(principal))
    }

    /// The 16-hex tag of `principal`.
    fn tag(&self, principal: &[u8]) -> String {
        if principal.is_empty() {
            return self.unscoped_tag.clone();
        }
        compute_tag(&self.tag, principal)
    }

    /// The storage key of `key` sent by `principal` to `endpoint`:
    /// `prefix ‖ tag(principal) ‖ "-" ‖ hex(HMAC(endpoint ‖ principal ‖ key))`, each part
    /// length-prefixed.
    pub(crate) fn storage_key(
        &self,
        prefix: &str,
        endpoint: &str,
        principal: &[u8],
        key: &IdempotencyKey,
    ) -> StorageKey {
        let mut m = self.id.clone();
        for part in [endpoint.as_bytes(), principal, key.as_str().as_bytes()] {
            m.update(&(part.len() as u64).to_be_bytes());
            m.update(part);
        }
        let mut full = String::with_capacity(prefix.len() + ID_LEN);
        full.push_str(prefix);
        if principal.is_empty() {
            full.push_str(&self.unscoped_tag);
        } else {
            full.push_str(&self.tag(principal));
        }
        full.push('-');
        crate::fingerprint::push_hex(&mut full, &m.finalize().into_bytes());
        StorageKey::from_parts(full, prefix.len())
    }

    /// The storage key a status id names, if `id` is well formed and belongs to `principal`.
    pub(crate) fn status_key(
        &self,
        prefix: &str,
        id: &str,
        principal: &[u8],
    ) -> Option<StorageKey> {
        let well_formed = id.len() == ID_LEN
            && id.as_bytes()[TAG_LEN] == b'-'
            && id
                .bytes()
                .enumerate()
                .all(|(i, b)| i == TAG_LEN || matches!(b, b'0'..=b'9' | b'a'..=b'f'));
        (well_formed && id[..TAG_LEN] == self.tag(principal))
            .then(|| StorageKey::from_parts(format!("{prefix}{id}"), prefix.len()))
    }
}

/// How long the shared check record lives, and how often an instance checks again.
const CHECK_KEEP: std::time::Duration = std::time::Duration::from_secs(15 * 60);
pub(crate) const CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// Whether the instances of this app (`prefix`) on `engine`'s store agree on the secrets, as
/// far as this instance can tell; `Ok(false)` is logged as an error
/// (`idem_secret_mismatch_total`). Two checks, refreshed every [`CHECK_EVERY`]:
/// - one record for the whole app holds the verifier of the secret its first instance writes
///   under: another one is a disagreement unless it is one of this instance's secrets (a
///   rotation in progress);
/// - one record per secret written under and check period lists the secrets *every* instance
///   writing under it looks under (the intersection of their lists: `derivation`, then
///   `earlier`): an instance that writes under one of this instance's secrets but does not look
///   under this instance's own would run a retry that reached the other again — a rotation that
///   skipped its first step, or started its second before the first was done everywhere.
pub(crate) async fn agree(
    engine: &crate::engine::Engine,
    prefix: &str,
    derivation: &KeyDerivation,
    earlier: &[std::sync::Arc<KeyDerivation>],
) -> Result<bool, crate::StoreError> {
    let mine: Vec<[u8; 32]> = std::iter::once(derivation.verifier())
        .chain(earlier.iter().map(|d| d.verifier()))
        .collect();
    let app = check_key(prefix, "v2");
    let mut agreed = match publish(engine, &app, mine[0], &[], CHECK_KEEP).await? {
        None => true,
        Some(theirs) => mine.contains(&theirs),
    };
    // What every instance writing under this secret looks under, this period: the
    // intersection of their lists (an instance that lacks one of them shrinks it; periods make
    // it grow back once that instance is gone).
    let period = period_now();
    merge(engine, &set_key(prefix, &mine[0], period), &mine).await?;
    for other in &mine {
        for p in [period, period.saturating_sub(1)] {
            if let Some(theirs) = list(engine, &set_key(prefix, other, p)).await? {
                agreed &= theirs.is_empty() || theirs.contains(&mine[0]);
            }
        }
    }
    if !agreed {
        crate::observe::count(crate::observe::metric::SECRET_MISMATCH_TOTAL);
        tracing::error!(prefix, "idem: instances of this app disagree on the app secret: another instance writes under a secret this one does not look under (or the other way round), so a retry that reaches it runs the operation again. Give every instance the same IdempotencyBuilder::secret, or rotate it in the three steps of IdempotencyBuilder::previous_secrets");
    }
    Ok(agreed)
}

/// The check record `name` of the app `prefix`.
fn check_key(prefix: &str, name: &str) -> StorageKey {
    let key =
        crate::key::parse_key(name.as_bytes()).unwrap_or_else(|_| unreachable!("a valid key"));
    StorageKey::scoped(prefix, "idem.secret-check", b"", &key)
}

/// The record listing what every instance writing under the secret of `verifier` looks under,
/// in the check period `period`.
fn set_key(prefix: &str, verifier: &[u8; 32], period: u64) -> StorageKey {
    let mut name = String::from("set-");
    crate::fingerprint::push_hex(&mut name, &verifier[..8]);
    check_key(prefix, &format!("{name}-{period}"))
}

/// The current check period: the wall clock in two [`CHECK_EVERY`]s. Every instance serving
/// requests checks at least once per period, so the lists of a period and of the one before it
/// hold every live instance — and an instance gone for two periods (20 minutes) is gone from
/// them.
fn period_now() -> u64 {
    crate::clock::wall()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() / (2 * CHECK_EVERY.as_secs()))
}

/// The verifiers the record `key` lists; `None` when there is none (yet).
async fn list(
    engine: &crate::engine::Engine,
    key: &StorageKey,
) -> Result<Option<Vec<[u8; 32]>>, crate::StoreError> {
    let Some(record) = engine.get(key).await? else {
        return Ok(None);
    };
    let crate::RecordState::Completed { response } = record.state else {
        return Ok(None);
    };
    Ok(Some(
        response
            .body()
            .chunks_exact(32)
            .map(|c| <[u8; 32]>::try_from(c).unwrap_or([0; 32]))
            .collect(),
    ))
}

/// Narrows the list of `key` to what `mine` (this instance's verifiers, its own first) holds
/// too, or starts it with `mine`. Two instances merging at once may lose one narrowing: the next
/// check (every [`CHECK_EVERY`]) makes it again.
async fn merge(
    engine: &crate::engine::Engine,
    key: &StorageKey,
    mine: &[[u8; 32]],
) -> Result<(), crate::StoreError> {
    let found = list(engine, key).await?;
    let merged: Vec<[u8; 32]> = match &found {
        None => mine.to_vec(),
        Some(theirs) => mine
            .iter()
            .filter(|v| theirs.contains(v))
            .copied()
            .collect(),
    };
    if found.as_ref() == Some(&merged) {
        return Ok(());
    }
    publish(engine, key, mine[0], &merged.concat(), 2 * CHECK_KEEP).await?;
    Ok(())
}

/// Writes `key` with fingerprint `verifier` and body `body` for `keep`, replacing
/// what is there when `body` is not empty (the per-secret lists, merged by [`merge`]).
/// `Some(theirs)`: the app record already held another verifier, kept.
async fn publish(
    engine: &crate::engine::Engine,
    key: &StorageKey,
    verifier: [u8; 32],
    body: &[u8],
    keep: std::time::Duration,
) -> Result<Option<[u8; 32]>, crate::StoreError> {
    use crate::store::Begin;
    let fp = crate::Fingerprint(verifier);
    let lease = std::time::Duration::from_secs(10);
    let store = engine.store();
    let limit = engine.store_timeout();
    for _ in 0..2 {
        let begun = crate::engine::deadline("begin", limit, store.begin(key, &fp, lease, keep));
        match begun.await? {
            Begin::Acquired { token, .. } => {
                let mark = crate::StoredResponse::new(204, None::<(&str, &str)>, body);
                let completed = store.complete(key, token, &mark, keep);
                crate::engine::deadline("complete", limit, completed).await?;
                return Ok(None);
            }
            Begin::Replay(_) | Begin::InProgress { .. } if body.is_empty() => return Ok(None),
            // Refreshed: written again with this instance's list.
            Begin::Replay(_) | Begin::InProgress { .. } | Begin::Mismatch if !body.is_empty() => {
                engine.purge(key).await?;
            }
            _ => {
                let found = engine.get(key).await?;
                return Ok(Some(found.map_or(verifier, |r| r.fingerprint.0)));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key::parse_key;

    /// Storage keys and fingerprints are what records are found by: a release that derived them
    /// differently would run every operation retried across its deploy again. Pinned here.
    #[test]
    fn derivations_are_stable_across_releases() {
        let key = parse_key(b"order-1").unwrap();
        let fp = crate::Fingerprint::strict("POST", "/payments", "application/json", b"{}");
        for (d, expected) in [
            (KeyDerivation::unkeyed(), ["p:e3ca4e490151bbce-f04451f386006778d0ba73796b53875d0d8c8257521f9b9d36129a9a32c7d035", "p:2b8c2814681d8e9c-27858bf0fd50a8d368dd01eba3ac30ddfc7c7b886ac991523000c4aaf29a8877", "701558fa97b05525f4e56350457a58178e818bc6a9b9e7133906c3e93fca2638"]),
            (
                KeyDerivation::keyed(b"secret-a"),
                ["p:ab3ecc6e85ef9d59-b19b7630e1fa382eed0c5f23b8c823462c32e9926a0a633bf5827c9b2c8e9e46", "p:d313190b55f15c24-019db42d62325dad5e2bcc033389c462936533441be372a5f55508efa6848e7d", "f2400a19005dd6fc2b884b91c76243be0fccfc58d11956d1aaa2cc6b8d478329"],
            ),
        ] {
            let got = [
                d.storage_key("p:", "POST /payments", b"", &key).as_str().to_owned(),
                d.storage_key("p:", "POST /payments", b"acct_a", &key).as_str().to_owned(),
                d.fingerprint(fp).to_hex(),
            ];
            assert_eq!(got, expected.map(String::from));
        }
    }

    #[test]
    fn secrets_separate_storage_keys_and_tags() {
        let key = parse_key(b"order-1").unwrap();
        let a = KeyDerivation::keyed(b"secret-a").storage_key("p:", "e", b"acct_a", &key);
        let b = KeyDerivation::keyed(b"secret-b").storage_key("p:", "e", b"acct_a", &key);
        let none = KeyDerivation::unkeyed().storage_key("p:", "e", b"acct_a", &key);
        assert_ne!(a, b);
        assert_ne!(a, none);
        assert_eq!(
            a,
            KeyDerivation::keyed(b"secret-a").storage_key("p:", "e", b"acct_a", &key),
            "stable"
        );
        assert_ne!(
            a,
            KeyDerivation::keyed(b"secret-a").storage_key("p:", "e", b"acct_b", &key),
            "principals never share a key"
        );
        assert_eq!(a.status_id().len(), ID_LEN);
    }

    #[test]
    fn a_status_id_opens_only_for_its_principal() {
        let kd = KeyDerivation::keyed(b"s");
        let key = kd.storage_key("p:", "e", b"acct_a", &parse_key(b"k").unwrap());
        assert_eq!(
            kd.status_key("p:", key.status_id(), b"acct_a"),
            Some(key.clone())
        );
        assert_eq!(kd.status_key("p:", key.status_id(), b"acct_b"), None);
        assert_eq!(
            KeyDerivation::unkeyed().status_key("p:", key.status_id(), b"acct_a"),
            None
        );
        assert_eq!(kd.status_key("p:", "zz", b"acct_a"), None);
    }

    #[test]
    fn fingerprints_are_keyed_by_the_secret() {
        let fp = crate::Fingerprint([7; 32]);
        let a = KeyDerivation::keyed(b"s").fingerprint(fp);
        assert_eq!(a, KeyDerivation::keyed(b"s").fingerprint(fp), "stable");
        assert_ne!(a, fp);
        assert_ne!(a, KeyDerivation::keyed(b"t").fingerprint(fp));
        assert_ne!(a, KeyDerivation::unkeyed().fingerprint(fp));
    }

    #[test]
    fn verifiers_agree_only_on_the_same_secret() {
        assert_eq!(
            KeyDerivation::keyed(b"s").verifier(),
            KeyDerivation::keyed(b"s").verifier()
        );
        assert_ne!(
            KeyDerivation::keyed(b"s").verifier(),
            KeyDerivation::keyed(b"t").verifier()
        );
        assert_ne!(
            KeyDerivation::keyed(b"s").verifier(),
            KeyDerivation::unkeyed().verifier()
        );
    }
}

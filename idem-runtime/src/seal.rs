//! Encryption at rest: with an app secret, what a store keeps of a response (its headers and
//! body) is sealed with ChaCha20-Poly1305 under a key of its own record, which only a request
//! carrying the raw idempotency key can derive.
//!
//! **Record keys.** `HKDF-SHA256(salt = sub_key(secret, "record-seal"), ikm = raw key,
//! info = "idem/v2/record:" ‖ storage key)`. The store holds neither the raw key (only an HMAC of
//! it, in the storage key) nor the secret, so a store dump, a backup or someone who can read
//! records by storage key learns nothing of a response; the secret alone does not open a record
//! either. The status code stays in clear (the operator API shows it, and the TTL of 4xx answers
//! depends on it) but is authenticated.
//!
//! **The sealed form** is a [`StoredResponse`] that stores keep like any other: the same status,
//! one pseudo-header `:sealed` (no real header name starts with a colon) holding the 4-byte id of
//! the secret that sealed it, and a body of `nonce(12) ‖ ciphertext ‖ tag(16)` over the encoded
//! response. The associated data binds it to its storage key and status, so a record copied over
//! another key, or edited, fails to open: it is refused (500 `record-unreadable`), logged, and
//! never replayed nor run again.
//!
//! **Status tokens.** The status resource of `on_conflict = "accepted"` has no raw key; the
//! `Location` it hands out carries `?t=<token>`: the raw key sealed under
//! `sub_key(secret, "status-token")`, bound to the storage key. Whoever holds the `Location` (the
//! client that sent the raw key) can read the result; a log line holding it is useless without
//! the secret.
//!
//! **Rotation.** Sealing keys are the app secret's, or a list given with
//! `IdempotencyBuilder::sealing_keys`, newest first: records are sealed under the newest and open
//! under whichever sealed them (named by a 4-byte id) until they expire. The app secret itself
//! names records (storage keys) and is not rotated this way: a record must be found under the
//! same storage key after its sealing key is removed, to be refused rather than run again.

use chacha20poly1305::aead::{Aead, AeadCore, KeyInit, OsRng, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use hkdf::Hkdf;
use sha2::Sha256;
use std::sync::Arc;

use crate::StoredResponse;

/// The pseudo-header that marks a sealed response; a colon never starts a real header name.
const SEALED: &str = ":sealed";
const NONCE: usize = 12;
const TAG: usize = 16;
const KID: usize = 4;

/// Why a stored response could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Unreadable {
    /// Sealed under a secret this app no longer has (removed from the rotation list).
    #[error("it was sealed under a secret this app no longer has")]
    UnknownSecret,
    /// The authentication failed: copied from another key, edited, or opened with another raw
    /// key.
    #[error("it does not authenticate: copied from another key or altered")]
    Forged,
    /// Sealed, but this request carries no key to open it with (a status URL without its
    /// token), or the app has no secret any more.
    #[error("it is sealed and nothing here can open it")]
    NoKey,
    /// In clear, where this app seals every record: not written by it.
    #[error("it is not sealed, and this app seals every record")]
    Unsealed,
}

/// One secret's sealing material.
struct Secret {
    kid: [u8; KID],
    salt: [u8; 32],
    token: ChaCha20Poly1305,
    /// Keys the status-token nonce (see [`RecordSeal::status_token`]).
    token_nonce: crate::secret::HmacSha256,
}

/// The app's secrets as sealing keys, newest first.
pub(crate) struct Sealer {
    secrets: Vec<Secret>,
    /// Whether new records are sealed: not by an app without a secret that adopts one (it
    /// opens what instances with the secret sealed, and writes in clear as before).
    seals: bool,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sealer")
            .field("secrets", &self.secrets.len())
            .finish_non_exhaustive()
    }
}

impl Sealer {
    /// Sealing under `secrets` (newest first); `None` without any.
    pub(crate) fn new(secrets: &[Vec<u8>]) -> Option<Arc<Sealer>> {
        Self::with(secrets, true)
    }

    /// Opening under `secrets`, sealing nothing: an app without a secret that adopts one (it
    /// looks under it: see `IdempotencyBuilder::previously_without_secret`). `None` without
    /// any.
    pub(crate) fn open_only(secrets: &[Vec<u8>]) -> Option<Arc<Sealer>> {
        Self::with(secrets, false)
    }

    fn with(secrets: &[Vec<u8>], seals: bool) -> Option<Arc<Sealer>> {
        if secrets.is_empty() {
            return None;
        }
        let secrets = secrets
            .iter()
            .map(|s| {
                let id = crate::secret::sub_key(s, "seal-id");
                let mut kid = [0; KID];
                kid.copy_from_slice(&id[..KID]);
                Secret {
                    kid,
                    salt: crate::secret::sub_key(s, "record-seal"),
                    token: ChaCha20Poly1305::new(Key::from_slice(&crate::secret::sub_key(
                        s,
                        "status-token",
                    ))),
                    token_nonce: crate::secret::mac(&crate::secret::sub_key(
                        s,
                        "status-token-nonce",
                    )),
                }
            })
            .collect();
        Some(Arc::new(Sealer { secrets, seals }))
    }

    /// What seals and opens the record `storage_key` of a request carrying `raw`.
    pub(crate) fn record(self: &Arc<Self>, raw: &str) -> RecordSeal {
        RecordSeal {
            sealer: self.clone(),
            raw: Arc::from(raw),
            seals: self.seals,
            in_clear: false,
        }
    }

    /// The record seal a status token carries, if it is one of this app's for `storage_key`.
    pub(crate) fn from_token(
        self: &Arc<Self>,
        storage_key: &str,
        token: &str,
    ) -> Option<RecordSeal> {
        let bytes = crate::fingerprint::decode_hex(token, 1024)?;
        if bytes.len() < KID + NONCE + TAG {
            return None;
        }
        let (kid, rest) = bytes.split_at(KID);
        let (nonce, sealed) = rest.split_at(NONCE);
        let secret = self.secrets.iter().find(|s| s.kid == kid)?;
        let raw = secret
            .token
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: storage_key.as_bytes(),
                },
            )
            .ok()?;
        Some(self.record(std::str::from_utf8(&raw).ok()?))
    }

    /// `data` sealed under the newest secret alone, for what the server must open again without
    /// the client's raw key: the request a completer re-sends, a step's recorded result.
    /// `purpose` names what it is (and its place: `"step:2:charge"`); the blob opens only for
    /// the same purpose and storage key. The form is `kid ‖ nonce ‖ ciphertext ‖ tag`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn seal_blob(&self, purpose: &str, storage_key: &str, data: &[u8]) -> Vec<u8> {
        let secret = &self.secrets[0];
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let sealed = Self::blob_cipher(secret, purpose, storage_key)
            .encrypt(
                &nonce,
                Payload {
                    msg: data,
                    aad: &secret.kid,
                },
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 seals any length we store"));
        let mut out = Vec::with_capacity(KID + NONCE + sealed.len());
        out.extend_from_slice(&secret.kid);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&sealed);
        out
    }

    /// What [`seal_blob`](Self::seal_blob) sealed for `purpose` and `storage_key`.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub(crate) fn open_blob(
        &self,
        purpose: &str,
        storage_key: &str,
        blob: &[u8],
    ) -> Result<Vec<u8>, Unreadable> {
        if blob.len() < KID + NONCE + TAG {
            return Err(Unreadable::Forged);
        }
        let (kid, rest) = blob.split_at(KID);
        let (nonce, sealed) = rest.split_at(NONCE);
        let secret = self
            .secrets
            .iter()
            .find(|s| s.kid == kid)
            .ok_or(Unreadable::UnknownSecret)?;
        Self::blob_cipher(secret, purpose, storage_key)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: kid,
                },
            )
            .map_err(|_| Unreadable::Forged)
    }

    /// `HKDF-SHA256(salt = the record-seal salt, ikm = "", info = "idem/v2/blob:" ‖ purpose ‖
    /// 0 ‖ storage key)`: no raw key in it, so the secret alone opens it.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    fn blob_cipher(secret: &Secret, purpose: &str, storage_key: &str) -> ChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(&secret.salt), b"");
        let mut okm = [0u8; 32];
        hk.expand_multi_info(
            &[
                b"idem/v2/blob:",
                purpose.as_bytes(),
                b"\0",
                storage_key.as_bytes(),
            ],
            &mut okm,
        )
        .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
        ChaCha20Poly1305::new(Key::from_slice(&okm))
    }

    fn cipher(secret: &Secret, storage_key: &str, raw: &str) -> ChaCha20Poly1305 {
        let hk = Hkdf::<Sha256>::new(Some(&secret.salt), raw.as_bytes());
        let mut okm = [0u8; 32];
        hk.expand_multi_info(&[b"idem/v2/record:", storage_key.as_bytes()], &mut okm)
            .unwrap_or_else(|_| unreachable!("32 bytes is a valid HKDF-SHA256 output length"));
        ChaCha20Poly1305::new(Key::from_slice(&okm))
    }
}

/// What seals and opens one record: the app's secrets and the request's raw key.
#[derive(Clone)]
pub(crate) struct RecordSeal {
    sealer: Arc<Sealer>,
    raw: Arc<str>,
    /// Whether the record is written sealed (under the newest secret).
    seals: bool,
    /// Whether a record in clear opens (as itself): one written without a secret, under the
    /// public derivation, while the app adopts a secret.
    in_clear: bool,
}

impl std::fmt::Debug for RecordSeal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordSeal").finish_non_exhaustive()
    }
}

/// The associated data of a sealed response: what it may not be moved away from.
fn aad(kid: &[u8], status: u16, storage_key: &str) -> Vec<u8> {
    let mut aad = Vec::with_capacity(16 + KID + 2 + storage_key.len());
    aad.extend_from_slice(b"idem/v2/sealed:");
    aad.extend_from_slice(kid);
    aad.extend_from_slice(&status.to_be_bytes());
    aad.extend_from_slice(storage_key.as_bytes());
    aad
}

/// Whether `response` is in the sealed form, and under which secret.
fn sealed_by(response: &StoredResponse) -> Option<&[u8]> {
    let mut headers = response.headers();
    match (headers.next(), headers.next()) {
        (Some((name, kid)), None) if name == SEALED => Some(kid),
        _ => None,
    }
}

impl RecordSeal {
    /// This seal for a record under a storage key derived from a secret (`keyed`) or from the
    /// public key. Under a secret's key a record is always sealed — also by an app without a
    /// secret that adopts one and resumes an operation there (its sealer opens only, but the
    /// instances with the secret must read it) — and one in clear is refused. Under the public
    /// key, one in clear opens (it was written without a secret); the app seals what it writes
    /// there if it has a secret.
    pub(crate) fn for_derivation(mut self, keyed: bool) -> Self {
        self.seals |= keyed;
        self.in_clear = !keyed;
        self
    }

    /// `response` sealed under the newest secret, for the record `storage_key` (as it is, by
    /// an app that seals nothing).
    pub(crate) fn seal(&self, storage_key: &str, response: &StoredResponse) -> StoredResponse {
        if !self.seals {
            return response.clone();
        }
        let secret = &self.sealer.secrets[0];
        let cipher = Sealer::cipher(secret, storage_key, &self.raw);
        let nonce = ChaCha20Poly1305::generate_nonce(&mut OsRng);
        let plain = response.encode();
        let aad = aad(&secret.kid, response.status(), storage_key);
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: &plain,
                    aad: &aad,
                },
            )
            .unwrap_or_else(|_| unreachable!("ChaCha20-Poly1305 seals any length we store"));
        let mut body = Vec::with_capacity(NONCE + sealed.len());
        body.extend_from_slice(&nonce);
        body.extend_from_slice(&sealed);
        StoredResponse::new(response.status(), [(SEALED, &secret.kid[..])], body)
    }

    /// The response a sealed `stored` holds, for the record `storage_key`.
    pub(crate) fn open(
        &self,
        storage_key: &str,
        stored: &StoredResponse,
    ) -> Result<StoredResponse, Unreadable> {
        let Some(kid) = sealed_by(stored) else {
            return match self.in_clear {
                true => Ok(stored.clone()),
                false => Err(Unreadable::Unsealed),
            };
        };
        let secret = self
            .sealer
            .secrets
            .iter()
            .find(|s| s.kid == kid)
            .ok_or(Unreadable::UnknownSecret)?;
        if stored.body().len() < NONCE + TAG {
            return Err(Unreadable::Forged);
        }
        let (nonce, sealed) = stored.body().split_at(NONCE);
        let plain = Sealer::cipher(secret, storage_key, &self.raw)
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: sealed,
                    aad: &aad(kid, stored.status(), storage_key),
                },
            )
            .map_err(|_| Unreadable::Forged)?;
        let inner = StoredResponse::decode(plain.into()).map_err(|_| Unreadable::Forged)?;
        if inner.status() != stored.status() {
            return Err(Unreadable::Forged);
        }
        Ok(inner)
    }

    /// A status token for the record `storage_key`: hex of the newest secret's id, a nonce and
    /// the raw key sealed under its status-token key, bound to the storage key. The same for
    /// every duplicate, so that one operation has one status URL: the nonce is an HMAC of the
    /// storage key, and a nonce repeats only for the same storage key — hence the same raw key,
    /// the same plaintext — which reveals nothing but that equality.
    /// `None` from an app that seals nothing: its records open without one.
    pub(crate) fn status_token(&self, storage_key: &str) -> Option<String> {
        use hmac::Mac;
        if !self.seals {
            return None;
        }
        let secret = &self.sealer.secrets[0];
        let mut mac = secret.token_nonce.clone();
        mac.update(storage_key.as_bytes());
        let digest = mac.finalize().into_bytes();
        let nonce = *Nonce::from_slice(&digest[..NONCE]);
        let sealed = secret
            .token
            .encrypt(
                &nonce,
                Payload {
                    msg: self.raw.as_bytes(),
                    aad: storage_key.as_bytes(),
                },
            )
            .unwrap_or_else(|_| unreachable!("a raw key is at most 255 bytes"));
        let mut out = String::with_capacity(2 * (KID + NONCE + sealed.len()));
        crate::fingerprint::push_hex(&mut out, &secret.kid);
        crate::fingerprint::push_hex(&mut out, &nonce);
        crate::fingerprint::push_hex(&mut out, &sealed);
        Some(out)
    }
}

/// Whether `stored` is sealed: what a request without a record seal cannot open.
pub(crate) fn is_sealed(stored: &StoredResponse) -> bool {
    sealed_by(stored).is_some()
}

#[cfg(test)]
#[path = "seal_tests.rs"]
mod tests;

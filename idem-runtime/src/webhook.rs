//! Signed webhook deliveries (`on_conflict = "webhook"`, cargo feature `webhook`): a duplicate
//! that arrives while the first request runs gets 202, and once the first completes its stored
//! response is POSTed to the duplicate's `Idempotency-Callback` URL, signed with HMAC-SHA256
//! under the app's webhook secret. This module holds what a receiver needs: the headers and the
//! signature check (always compiled, so a receiver needs no HTTP client).
//!
//! **The signatures.** `Idempotency-Signature: t=<unix seconds>,v1=<hex>,v2=<hex>`, signed under
//! the receiver's own secret ([`webhook_receiver`](crate::IdempotencyBuilder::webhook_receiver);
//! the app-wide `webhook_secret` for receivers without one); while a receiver's secret rotates,
//! one `v1`/`v2` pair per secret.
//! - `v1`: HMAC-SHA256 of `"<t>.<idempotency key>.<status>."` followed by the body — the
//!   receiver learns the delivery is the server's, for that key and that status, and recent.
//!   [`verify`] checks it.
//! - `v2` (check this one): HMAC-SHA256 of length-prefixed parts — a tag, `t`, the delivery id
//!   ([`DELIVERY_HEADER`]), the receiver's origin, the key, the status and the body (see
//!   [`Delivery`]) — which also binds *which receiver* it was made for and *which delivery* it
//!   is: a receiver cannot pass a delivery it got on to another, and one that remembers the ids
//!   it accepted refuses a replay. [`verify_delivery`] checks it.
//!
//! A delivery older than the tolerance (say 5 minutes) is refused as a replay either way.
//!
//! ```
//! use idem_runtime::webhook::{sign, verify_at};
//! use std::time::{Duration, UNIX_EPOCH};
//! let header = sign(b"whsec", 1_700_000_000, "order-1", 201, b"{}");
//! let now = UNIX_EPOCH + Duration::from_secs(1_700_000_030);
//! let tolerance = Duration::from_secs(300);
//! assert!(verify_at(b"whsec", &header, "order-1", 201, b"{}", tolerance, now).is_ok());
//! assert!(verify_at(b"whsec", &header, "order-2", 201, b"{}", tolerance, now).is_err());
//! ```

use hmac::{Hmac, Mac};
use sha2::Sha256;
use std::time::Duration;

/// Request header naming where the response of a waiting duplicate is delivered.
pub const CALLBACK_HEADER: &str = "idempotency-callback";
/// Header of each delivery carrying `t=<unix seconds>,v1=<hex>,v2=<hex>` (see the module docs).
pub const SIGNATURE_HEADER: &str = "idempotency-signature";
/// Header of each delivery carrying the original response's status code.
pub const STATUS_HEADER: &str = "idempotency-status";

fn signer(secret: &[u8], timestamp: u64, key: &str, status: u16, body: &[u8]) -> Hmac<Sha256> {
    let mut mac = crate::secret::mac(secret);
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
        crate::clock::wall(),
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
    check(header, "v1", tolerance, now, |t| {
        signer(secret, t, key, status, body)
    })
}

/// Header of each delivery carrying its id: the same on every attempt of one delivery, unique
/// across deliveries. `v2` signatures bind it: a receiver that remembers the ids it accepted
/// (for the tolerance) refuses a replayed delivery.
pub const DELIVERY_HEADER: &str = "idempotency-delivery";

/// What a `v2` signature binds: the delivery's id, the receiver's origin, the idempotency key,
/// the status and the body.
#[derive(Debug, Clone, Copy)]
pub struct Delivery<'a> {
    /// The delivery's id ([`DELIVERY_HEADER`]).
    pub id: &'a str,
    /// The origin the delivery was sent to, as `scheme://host[:port]` (the port only when not
    /// the scheme's default): the receiver's own, so that a delivery made for a receiver at
    /// another origin does not verify here (receivers on one origin are told apart by their
    /// secrets only).
    pub origin: &'a str,
    /// The client's idempotency key (the delivery's `Idempotency-Key` header).
    pub key: &'a str,
    /// The original response's status ([`STATUS_HEADER`]).
    pub status: u16,
    /// The delivery's body.
    pub body: &'a [u8],
}

/// HMAC-SHA256 under `secret` of the `v2` message: `"idem-webhook-v2"`, the timestamp (decimal),
/// the delivery id, the origin, the key, the status (decimal) and the body, each prefixed by its
/// length as 8 bytes big-endian — no separator a key or an origin could contain.
fn signer_v2(secret: &[u8], timestamp: u64, d: &Delivery<'_>) -> Hmac<Sha256> {
    let mut mac = crate::secret::mac(secret);
    let (t, status) = (timestamp.to_string(), d.status.to_string());
    for part in [
        &b"idem-webhook-v2"[..],
        t.as_bytes(),
        d.id.as_bytes(),
        d.origin.as_bytes(),
        d.key.as_bytes(),
        status.as_bytes(),
        d.body,
    ] {
        mac.update(&(part.len() as u64).to_be_bytes());
        mac.update(part);
    }
    mac
}

/// The `Idempotency-Signature` value of a delivery signed under each of `secrets` (one, or two
/// while a receiver's secret rotates): `t=<timestamp>`, then for each secret a `v1=` (what
/// [`sign`] signs, unchanged) and a `v2=` (see [`Delivery`]).
pub fn signature_header(secrets: &[&[u8]], timestamp: u64, delivery: &Delivery<'_>) -> String {
    let mut out = format!("t={timestamp}");
    for secret in secrets {
        let v1 = signer(
            secret,
            timestamp,
            delivery.key,
            delivery.status,
            delivery.body,
        );
        out.push_str(",v1=");
        crate::fingerprint::push_hex(&mut out, &v1.finalize().into_bytes());
        out.push_str(",v2=");
        let v2 = signer_v2(secret, timestamp, delivery);
        crate::fingerprint::push_hex(&mut out, &v2.finalize().into_bytes());
    }
    out
}

/// Verifies the `v2` signatures of a delivery's `Idempotency-Signature` `header` under `secret`
/// (any `v2=` entry may match: during a rotation the server signs under both secrets), signed
/// at most `tolerance` ago (or ahead). Unlike [`verify`], this binds the receiver's origin and
/// the delivery id: a delivery made for a receiver at another origin, even one holding the same
/// secret, fails here; remember the accepted ids for the tolerance to refuse replays.
pub fn verify_delivery(
    secret: &[u8],
    header: &str,
    delivery: &Delivery<'_>,
    tolerance: Duration,
) -> Result<(), SignatureError> {
    verify_delivery_at(secret, header, delivery, tolerance, crate::clock::wall())
}

/// [`verify_delivery`] at the time `now`.
pub fn verify_delivery_at(
    secret: &[u8],
    header: &str,
    delivery: &Delivery<'_>,
    tolerance: Duration,
    now: std::time::SystemTime,
) -> Result<(), SignatureError> {
    check(header, "v2", tolerance, now, |t| {
        signer_v2(secret, t, delivery)
    })
}

/// Whether any `version=` signature of `header` matches the MAC `mac` makes for its timestamp,
/// signed within `tolerance` of `now`.
fn check(
    header: &str,
    version: &str,
    tolerance: Duration,
    now: std::time::SystemTime,
    mac: impl FnOnce(u64) -> Hmac<Sha256>,
) -> Result<(), SignatureError> {
    let (timestamp, signatures) = parse(header, version)?;
    fresh(timestamp, tolerance, now)?;
    let mac = mac(timestamp);
    if signatures
        .iter()
        .any(|sig| mac.clone().verify_slice(sig).is_ok())
    {
        Ok(())
    } else {
        Err(SignatureError::Mismatch)
    }
}

/// The timestamp and the `version=` signatures of a header.
fn parse(header: &str, version: &str) -> Result<(u64, Vec<Vec<u8>>), SignatureError> {
    let mut timestamp = None;
    let mut signatures = Vec::new();
    for part in header.split(',') {
        match part.trim().split_once('=') {
            Some(("t", t)) => timestamp = t.parse::<u64>().ok(),
            Some((v, hex)) if v == version => signatures.push(
                crate::fingerprint::decode_hex(hex, 32)
                    .filter(|s| s.len() == 32)
                    .ok_or(SignatureError::Malformed)?,
            ),
            _ => {}
        }
    }
    let timestamp = timestamp.ok_or(SignatureError::Malformed)?;
    if signatures.is_empty() {
        return Err(SignatureError::Malformed);
    }
    Ok((timestamp, signatures))
}

/// `Err(Stale)` when `timestamp` is more than `tolerance` away from `now`.
fn fresh(
    timestamp: u64,
    tolerance: Duration,
    now: std::time::SystemTime,
) -> Result<(), SignatureError> {
    // A timestamp past what `SystemTime` holds is no time at all: stale.
    let Some(signed) = std::time::UNIX_EPOCH.checked_add(Duration::from_secs(timestamp)) else {
        return Err(SignatureError::Stale);
    };
    let skew = now
        .duration_since(signed)
        .or_else(|e| Ok::<_, ()>(e.duration()))
        .unwrap_or(Duration::MAX);
    if skew > tolerance {
        Err(SignatureError::Stale)
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A timestamp past what `SystemTime` holds (an attacker's header: no secret needed to send
    /// one) is stale, never a panic, for both verifiers.
    #[test]
    fn a_hostile_timestamp_is_stale_not_a_panic() {
        let tolerance = Duration::from_secs(300);
        for t in ["9223372036854775808", "18446744073709551615"] {
            let v1 = format!("t={t},v1={}", "0".repeat(64));
            assert_eq!(
                verify(b"s", &v1, "k", 200, b"", tolerance),
                Err(SignatureError::Stale)
            );
            let v2 = format!("t={t},v2={}", "0".repeat(64));
            let delivery = Delivery {
                id: "x",
                origin: "http://a",
                key: "k",
                status: 200,
                body: b"",
            };
            assert_eq!(
                verify_delivery(b"s", &v2, &delivery, tolerance),
                Err(SignatureError::Stale)
            );
        }
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

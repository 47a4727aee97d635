//! SHA-256 request fingerprints: "is this retry the same request as the first one?"

use sha2::{Digest, Sha256};

/// SHA-256 over the parts of a request that must match for a retry to be a replay.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The `strict` fingerprint: method, path with query, content type and the exact body bytes
    /// (as received, before any `Content-Encoding` is undone).
    ///
    /// ```
    /// use idem_runtime::Fingerprint;
    /// let a = Fingerprint::strict("POST", "/p", "application/json", br#"{"a":1}"#);
    /// let b = Fingerprint::strict("POST", "/p", "application/json", br#"{"a": 1}"#);
    /// assert_ne!(a, b);
    /// ```
    pub fn strict(method: &str, path_and_query: &str, content_type: &str, body: &[u8]) -> Self {
        let mut h = Sha256::new();
        // Length prefixes keep the parts from bleeding into each other.
        for part in [
            method.as_bytes(),
            path_and_query.as_bytes(),
            content_type.as_bytes(),
            body,
        ] {
            h.update((part.len() as u64).to_be_bytes());
            h.update(part);
        }
        Fingerprint(h.finalize().into())
    }

    /// Lower-case hex, for logs and operators.
    pub fn to_hex(&self) -> String {
        let mut s = String::with_capacity(64);
        push_hex(&mut s, &self.0);
        s
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", self.to_hex())
    }
}

pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// Hex of SHA-256 of `bytes`; used to turn credentials into an opaque principal.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(64);
    push_hex(&mut s, &Sha256::digest(bytes));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_part_counts() {
        let base = Fingerprint::strict("POST", "/p?x=1", "application/json", b"{}");
        assert_eq!(
            base,
            Fingerprint::strict("POST", "/p?x=1", "application/json", b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::strict("PUT", "/p?x=1", "application/json", b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::strict("POST", "/p?x=2", "application/json", b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::strict("POST", "/p?x=1", "text/plain", b"{}")
        );
        assert_ne!(
            base,
            Fingerprint::strict("POST", "/p?x=1", "application/json", b"{ }")
        );
        assert_ne!(
            Fingerprint::strict("POST", "/p", "a", b"b"),
            Fingerprint::strict("POST", "/p", "ab", b"")
        );
    }

    #[test]
    fn hex_is_sha256() {
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

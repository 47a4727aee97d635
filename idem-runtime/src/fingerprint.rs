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
        // Length prefixes keep the parts from bleeding into each other.
        Self::parts(&[
            method.as_bytes(),
            path_and_query.as_bytes(),
            content_type.as_bytes(),
            body,
        ])
    }

    /// The `result` fingerprint: like [`strict`](Self::strict), but a JSON body counts by its
    /// canonical form (key order, whitespace, escapes and number spelling do not matter) and the
    /// content type by its media type alone. A body that is not JSON counts by its exact bytes.
    ///
    /// ```
    /// use idem_runtime::Fingerprint;
    /// let a = Fingerprint::result("POST", "/p", "application/json", br#"{"a":1,"b":2}"#);
    /// let b = Fingerprint::result("POST", "/p", "application/json; charset=utf-8", br#"{ "b": 2, "a": 1.0 }"#);
    /// assert_eq!(a, b);
    /// ```
    pub fn result(method: &str, path_and_query: &str, content_type: &str, body: &[u8]) -> Self {
        let media = media_type(content_type);
        let (m, p) = (method.as_bytes(), path_and_query.as_bytes());
        match crate::canonical::canonicalize(body) {
            Some(canon) => Self::parts(&[m, p, media.as_bytes(), b"json", &canon]),
            None => Self::parts(&[m, p, media.as_bytes(), b"raw", body]),
        }
    }

    /// The `semantic` fingerprint: method, path with query, and the canonical value at each JSON
    /// pointer (a missing field counts as `null`). Nothing else in the body matters. A body that
    /// is not JSON counts by its exact bytes.
    ///
    /// ```
    /// use idem_runtime::Fingerprint;
    /// let ptrs = ["/amount", "/currency"];
    /// let a = Fingerprint::semantic("POST", "/p", &ptrs, br#"{"amount":5,"currency":"EUR","note":"x"}"#);
    /// let b = Fingerprint::semantic("POST", "/p", &ptrs, br#"{"currency":"EUR","amount":5.0,"note":"y"}"#);
    /// assert_eq!(a, b);
    /// ```
    pub fn semantic(method: &str, path_and_query: &str, pointers: &[&str], body: &[u8]) -> Self {
        let Some(json) = crate::canonical::parse(body) else {
            return Self::parts(&[method.as_bytes(), path_and_query.as_bytes(), b"raw", body]);
        };
        let mut fields = Vec::new();
        for p in pointers {
            fields.extend_from_slice(&(p.len() as u64).to_be_bytes());
            fields.extend_from_slice(p.as_bytes());
            json.pointer(p)
                .unwrap_or(&crate::canonical::Json::Null)
                .encode(&mut fields);
        }
        Self::parts(&[
            method.as_bytes(),
            path_and_query.as_bytes(),
            b"fields",
            &fields,
        ])
    }

    fn parts(parts: &[&[u8]]) -> Self {
        let mut h = Sha256::new();
        for part in parts {
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

/// `application/json; charset=utf-8` → `application/json`.
fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(HEX[usize::from(b >> 4)] as char);
        out.push(HEX[usize::from(b & 0xf)] as char);
    }
}

/// The bytes `hex` spells (two hex digits per byte, either case), if it is at most `max`
/// bytes of them; `None` for anything else.
pub(crate) fn decode_hex(hex: &str, max: usize) -> Option<Vec<u8>> {
    let digits = hex.as_bytes();
    if !digits.len().is_multiple_of(2) || digits.len() > 2 * max {
        return None;
    }
    let nibble = |d: u8| char::from(d).to_digit(16).map(|n| n as u8);
    digits
        .chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let mut s = String::new();
        push_hex(&mut s, &[0, 0xab, 0xff]);
        assert_eq!(decode_hex(&s, 3), Some(vec![0, 0xab, 0xff]));
        assert_eq!(decode_hex("ABff", 2), Some(vec![0xab, 0xff]));
        for bad in ["0", "zz", "+f", "0g", "é0"] {
            assert_eq!(decode_hex(bad, 8), None, "{bad}");
        }
        assert_eq!(decode_hex("0000", 1), None, "over the limit");
    }

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
    fn hex_is_lower_case_and_complete() {
        let mut s = String::new();
        push_hex(&mut s, &Sha256::digest(b"abc"));
        assert_eq!(
            s,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

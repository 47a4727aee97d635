//! `Idempotency-Key` parsing.
//!
//! The IETF draft (draft-ietf-httpapi-idempotency-key-header) defines the header as an RFC 8941
//! Item whose value is an sf-string (`Idempotency-Key: "8e03978e-40d5-43e8-bc93-6894a57f9324"`).
//! Most clients in the wild (Stripe's among them) send a bare token instead, so both are accepted.

use thiserror::Error;

use crate::StoredResponse;

/// Longest key accepted, in characters (Stripe's limit, and the draft's recommendation).
pub(crate) const MAX_KEY_LEN: usize = 255;

/// A validated idempotency key: 1–255 printable ASCII characters.
///
/// The raw key never reaches a store or a log line: it is only hashed into a
/// [`StorageKey`].
#[derive(Clone, PartialEq, Eq)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    /// Parses one key as a client sends it: a bare token or an RFC 8941 sf-string, 1–255
    /// printable ASCII characters.
    ///
    /// ```
    /// use idem_runtime::IdempotencyKey;
    /// assert_eq!(IdempotencyKey::parse(b"\"order-1\"").unwrap().as_str(), "order-1");
    /// assert!(IdempotencyKey::parse(b"").is_err());
    /// ```
    pub fn parse(raw: &[u8]) -> Result<Self, KeyError> {
        parse_key(raw)
    }

    /// The key as the client sent it (after sf-string unescaping).
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

// Keys are client secrets of a sort (whoever knows one can read the cached response), so Debug
// does not print them.
impl std::fmt::Debug for IdempotencyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "IdempotencyKey({} chars)", self.0.len())
    }
}

/// Why a key was refused. Every variant maps to 400.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The header was sent more than once.
    #[error("the idempotency key header was sent more than once; send exactly one")]
    Repeated,
    /// The value is empty (or an empty sf-string).
    #[error("the idempotency key is empty; send 1 to 255 printable ASCII characters")]
    Empty,
    /// More than 255 characters.
    #[error("the idempotency key is {0} characters long; at most 255 are allowed")]
    TooLong(usize),
    /// A byte outside printable ASCII (control characters, non-ASCII, ...).
    #[error("the idempotency key contains a character outside printable ASCII (0x20-0x7E)")]
    InvalidCharacter,
    /// A value starting with `"` that is not a well-formed RFC 8941 sf-string.
    #[error("the idempotency key starts with '\"' but is not a valid RFC 8941 string")]
    MalformedString,
}

/// Parses the values of every occurrence of the key header.
///
/// Returns `Ok(None)` when the header is absent.
///
/// ```ignore
/// // Crate-internal: `IdempotencyKey::parse` is the public way in.
/// let key = parse_key_headers([&b"\"abc-123\""[..]]).unwrap().unwrap();
/// assert_eq!(key.as_str(), "abc-123");
/// assert!(parse_key_headers([&b"a"[..], &b"b"[..]]).is_err());
/// ```
pub(crate) fn parse_key_headers<'a, I>(values: I) -> Result<Option<IdempotencyKey>, KeyError>
where
    I: IntoIterator<Item = &'a [u8]>,
{
    let mut values = values.into_iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Repeated);
    }
    parse_key(first).map(Some)
}

/// Parses one header value: a bare token or an sf-string.
pub fn parse_key(raw: &[u8]) -> Result<IdempotencyKey, KeyError> {
    let value = trim_ows(raw);
    let key = if value.first() == Some(&b'"') {
        parse_sf_string(value)?
    } else {
        // A bare token: printable, no spaces (a space here usually means two headers were
        // folded into one by a proxy: "k1, k2").
        if value.contains(&b' ') {
            return Err(KeyError::InvalidCharacter);
        }
        value.to_vec()
    };
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.iter().any(|b| !(0x20..=0x7e).contains(b)) {
        return Err(KeyError::InvalidCharacter);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong(key.len()));
    }
    // Every byte is printable ASCII, so this cannot fail; map it anyway rather than unwrap.
    String::from_utf8(key)
        .map(IdempotencyKey)
        .map_err(|_| KeyError::InvalidCharacter)
}

fn trim_ows(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// RFC 8941 §4.2.5: DQUOTE *( unescaped / "\" ( DQUOTE / "\" ) ) DQUOTE, nothing after it.
fn parse_sf_string(v: &[u8]) -> Result<Vec<u8>, KeyError> {
    let mut out = Vec::with_capacity(v.len());
    let mut i = 1;
    while i < v.len() {
        match v[i] {
            b'\\' => match v.get(i + 1) {
                Some(c @ (b'"' | b'\\')) => {
                    out.push(*c);
                    i += 2;
                }
                _ => return Err(KeyError::MalformedString),
            },
            b'"' => {
                return if i + 1 == v.len() {
                    Ok(out)
                } else {
                    Err(KeyError::MalformedString)
                };
            }
            c if (0x20..=0x7e).contains(&c) => {
                out.push(c);
                i += 1;
            }
            _ => return Err(KeyError::InvalidCharacter),
        }
    }
    Err(KeyError::MalformedString)
}

/// The name a record is stored under:
/// `prefix + tag(principal) + "-" + hex(HMAC(endpoint ‖ principal ‖ key))`, the HMACs keyed by
/// sub-keys of the app secret ([`IdempotencyBuilder::secret`](crate::IdempotencyBuilder::secret)).
///
/// Each hashed part is length-prefixed so that no two different triples collide, and everything
/// is hex so that no client-chosen byte (a `{…}` hash tag, say) reaches the store. The 16-hex
/// principal tag lets a status resource check, without a lookup, that a status id belongs to the
/// principal asking for it.
#[derive(Clone)]
pub struct StorageKey {
    full: String,
    id_at: usize,
    /// What seals and opens this key's response, when the app has a secret and the raw key is
    /// known (see `seal.rs`); not part of the key's identity.
    seal: Option<crate::seal::RecordSeal>,
}

impl PartialEq for StorageKey {
    fn eq(&self, other: &Self) -> bool {
        self.full == other.full && self.id_at == other.id_at
    }
}

impl Eq for StorageKey {}

impl std::hash::Hash for StorageKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.full.hash(state);
        self.id_at.hash(state);
    }
}

impl StorageKey {
    /// A storage key from its full text and where its id starts.
    pub(crate) fn from_parts(full: String, id_at: usize) -> Self {
        StorageKey {
            full,
            id_at,
            seal: None,
        }
    }

    /// This key, whose response is sealed and opened with `seal`.
    pub(crate) fn sealed_with(mut self, seal: Option<crate::seal::RecordSeal>) -> Self {
        self.seal = seal;
        self
    }

    /// The response as this key's record keeps it: sealed when the key has a seal.
    pub(crate) fn to_stored<'r>(
        &self,
        response: &'r StoredResponse,
    ) -> std::borrow::Cow<'r, StoredResponse> {
        match &self.seal {
            Some(seal) => std::borrow::Cow::Owned(seal.seal(&self.full, response)),
            None => std::borrow::Cow::Borrowed(response),
        }
    }

    /// The response this key's record holds, opened: what a replay sends.
    pub(crate) fn open(
        &self,
        stored: StoredResponse,
    ) -> Result<StoredResponse, crate::seal::Unreadable> {
        match &self.seal {
            Some(seal) => seal.open(&self.full, &stored),
            None if crate::seal::is_sealed(&stored) => Err(crate::seal::Unreadable::NoKey),
            None => Ok(stored),
        }
    }

    /// A token for this key's status URL that lets its holder read the sealed result; `None`
    /// when records are not sealed.
    pub(crate) fn status_token(&self) -> Option<String> {
        self.seal.as_ref().and_then(|s| s.status_token(&self.full))
    }

    /// Derives the storage key of `key` sent by `principal` to `endpoint` as an app without a
    /// secret does (the derivation under the public key). An app with a
    /// [`secret`](crate::IdempotencyBuilder::secret) derives other keys; to find its records, go
    /// through [`Idempotency::inspect`](crate::Idempotency::inspect).
    pub fn scoped(prefix: &str, endpoint: &str, principal: &[u8], key: &IdempotencyKey) -> Self {
        crate::secret::KeyDerivation::public().storage_key(prefix, endpoint, principal, key)
    }

    /// The storage key a status id names, if `id` is well formed and belongs to `principal`
    /// (unkeyed derivation).
    pub fn from_status_id(prefix: &str, id: &str, principal: &[u8]) -> Option<Self> {
        crate::secret::KeyDerivation::public().status_key(prefix, id, principal)
    }

    /// The unguessable, principal-bound id of this record, for status URLs.
    pub fn status_id(&self) -> &str {
        &self.full[self.id_at..]
    }

    /// The tag of the principal this key belongs to (16 hex digits; keyed by the app secret):
    /// what per-principal limits count by.
    pub fn principal_tag(&self) -> &str {
        let id = self.status_id();
        id.get(..crate::secret::TAG_LEN).unwrap_or(id)
    }

    /// The key as the store sees it.
    pub fn as_str(&self) -> &str {
        &self.full
    }
}

impl std::fmt::Debug for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StorageKey({})", self.full)
    }
}

impl std::fmt::Display for StorageKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.full)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn one(v: &str) -> Result<IdempotencyKey, KeyError> {
        parse_key(v.as_bytes())
    }

    #[test]
    fn bare_and_quoted_forms_agree() {
        assert_eq!(one("abc").unwrap().as_str(), "abc");
        assert_eq!(one("\"abc\"").unwrap().as_str(), "abc");
        assert_eq!(one("  abc\t").unwrap().as_str(), "abc");
        assert_eq!(one(r#""a\"b\\c""#).unwrap().as_str(), r#"a"b\c"#);
        assert_eq!(one("\"a b\"").unwrap().as_str(), "a b");
    }

    #[test]
    fn limits() {
        assert_eq!(one(&"k".repeat(255)).unwrap().as_str().len(), 255);
        assert_eq!(one(&"k".repeat(256)), Err(KeyError::TooLong(256)));
        assert_eq!(one(""), Err(KeyError::Empty));
        assert_eq!(one("\"\""), Err(KeyError::Empty));
        assert_eq!(one("   "), Err(KeyError::Empty));
    }

    #[test]
    fn rejects_bad_characters_and_strings() {
        assert_eq!(one("a\u{1}b"), Err(KeyError::InvalidCharacter));
        assert_eq!(one("a\u{7f}"), Err(KeyError::InvalidCharacter));
        assert_eq!(one("clé"), Err(KeyError::InvalidCharacter));
        assert_eq!(one("k1, k2"), Err(KeyError::InvalidCharacter));
        assert_eq!(one("\"abc"), Err(KeyError::MalformedString));
        assert_eq!(one("\"abc\"x"), Err(KeyError::MalformedString));
        assert_eq!(one(r#""a\x""#), Err(KeyError::MalformedString));
        assert_eq!(one("\"a\tb\""), Err(KeyError::InvalidCharacter));
    }

    #[test]
    fn scoping_separates_endpoints_principals_and_keys() {
        let k = one("k").unwrap();
        let a = StorageKey::scoped("idem:", "m::create", b"alice", &k);
        assert!(a.as_str().starts_with("idem:"));
        assert_eq!(a.as_str().len(), 5 + 16 + 1 + 64);
        assert_eq!(a.status_id(), &a.as_str()[5..]);
        assert_eq!(
            StorageKey::from_status_id("idem:", a.status_id(), b"alice"),
            Some(a.clone())
        );
        assert_eq!(
            StorageKey::from_status_id("idem:", a.status_id(), b"bob"),
            None
        );
        assert_eq!(
            StorageKey::from_status_id("idem:", "../etc", b"alice"),
            None
        );
        let upper = a.status_id().to_ascii_uppercase();
        assert_eq!(StorageKey::from_status_id("idem:", &upper, b"alice"), None);
        assert_eq!(a, StorageKey::scoped("idem:", "m::create", b"alice", &k));
        assert_ne!(a, StorageKey::scoped("idem:", "m::create", b"bob", &k));
        assert_ne!(a, StorageKey::scoped("idem:", "m::other", b"alice", &k));
        // Length prefixes: moving a byte between parts changes the hash.
        let k2 = one("ek").unwrap();
        assert_ne!(
            StorageKey::scoped("", "m::creat", b"ealice", &k2),
            StorageKey::scoped("", "m::create", b"alice", &k2)
        );
    }

    #[test]
    fn header_count() {
        assert_eq!(parse_key_headers(std::iter::empty()), Ok(None));
        assert_eq!(
            parse_key_headers([&b"a"[..], &b"a"[..]]),
            Err(KeyError::Repeated)
        );
    }
}

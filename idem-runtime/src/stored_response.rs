//! The stored response: what a record keeps of a handler's answer, in one buffer.
//!
//! A response is kept in its own encoding (the format stores write): a version byte, the status,
//! the header count, length-prefixed names and values, then the raw body. Building one is one
//! buffer, cloning one (every replay) is a reference count, and a store that keeps bytes writes
//! the buffer as it is and reads it back without copying.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// A handler response as kept for replay: status, allow-listed headers, body bytes.
///
/// Cheap to clone: the headers and the body share one immutable buffer.
///
/// ```
/// use idem_runtime::StoredResponse;
/// let r = StoredResponse::new(201, [("content-type", "application/json")], "{\"id\":1}");
/// assert_eq!(r.status(), 201);
/// assert_eq!(r.headers().collect::<Vec<_>>(), [("content-type", &b"application/json"[..])]);
/// assert_eq!(&r.body()[..], b"{\"id\":1}");
/// assert_eq!(idem_runtime::StoredResponse::decode(r.encode()), Ok(r));
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct StoredResponse {
    status: u16,
    /// How many headers `encoded` holds.
    count: u16,
    /// The whole encoding: version, status, count, headers, body.
    encoded: Bytes,
    /// The body: the end of `encoded`.
    body: Bytes,
}

/// A stored response that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stored response is corrupt: {0}")]
pub struct DecodeError(&'static str);

const FORMAT_V1: u8 = 1;
/// Version, status, header count.
const PREAMBLE: usize = 5;
/// A header's name and value lengths.
const PREFIXES: usize = 6;

impl StoredResponse {
    /// A response with `status`, `headers` (lower-case names and raw values, in the order the
    /// handler set them) and `body`, copied into one buffer (so a record never holds a larger
    /// buffer its body was a slice of).
    ///
    /// A header that cannot be encoded (a name over 64 KiB, a value over 4 GiB, past the
    /// 65,535th) is left out.
    pub fn new<N, V>(
        status: u16,
        headers: impl IntoIterator<Item = (N, V)>,
        body: impl AsRef<[u8]>,
    ) -> Self
    where
        N: AsRef<str>,
        V: AsRef<[u8]>,
    {
        let body = body.as_ref();
        // Room for a few headers; more grow the buffer once.
        let mut out = BytesMut::with_capacity(PREAMBLE + 160 + body.len());
        out.put_u8(FORMAT_V1);
        out.put_u16(status);
        out.put_u16(0);
        let mut count: u16 = 0;
        for (name, value) in headers {
            let (name, value) = (name.as_ref().as_bytes(), value.as_ref());
            let (Ok(n), Ok(v)) = (u16::try_from(name.len()), u32::try_from(value.len())) else {
                continue;
            };
            if count == u16::MAX {
                break;
            }
            count += 1;
            out.put_u16(n);
            out.put_slice(name);
            out.put_u32(v);
            out.put_slice(value);
        }
        out[3..PREAMBLE].copy_from_slice(&count.to_be_bytes());
        let body_at = out.len();
        out.put_slice(body);
        let encoded = out.freeze();
        Self {
            status,
            count,
            body: encoded.slice(body_at..),
            encoded,
        }
    }

    /// This response with header `name` added after the others (a copy).
    pub(crate) fn with_header(&self, name: &str, value: &[u8]) -> Self {
        let headers = self.headers().chain(std::iter::once((name, value)));
        Self::new(self.status, headers, &self.body)
    }

    /// HTTP status code.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// Header names (lower case) and raw values, in the order the handler set them.
    pub fn headers(&self) -> StoredHeaders<'_> {
        StoredHeaders {
            rest: &self.encoded[PREAMBLE..self.encoded.len() - self.body.len()],
            left: self.count,
        }
    }

    /// The headers with each value as [`Bytes`] sharing this response's buffer (no copy).
    pub(crate) fn shared_headers(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        self.headers()
            .map(|(name, value)| (name, self.encoded.slice_ref(value)))
    }

    /// The body, exactly as the handler produced it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Approximate bytes this response occupies; what memory caps count.
    pub fn size(&self) -> usize {
        // The body, each header's name and value plus 16, and 16: what the format's lengths
        // and the bookkeeping around them cost.
        self.encoded.len() - PREAMBLE + (16 - PREFIXES) * usize::from(self.count) + 16
    }

    /// Compact encoding: version, status, header count, then length-prefixed names and values,
    /// then the raw body. Overhead is a few bytes per header. The response's own buffer: no copy.
    pub fn encode(&self) -> Bytes {
        self.encoded.clone()
    }

    /// Inverse of [`encode`](Self::encode); never panics on arbitrary input. The response keeps
    /// `buf` (no copy).
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let [version, s0, s1, c0, c1, ..] = buf[..] else {
            return Err(DecodeError("truncated"));
        };
        if version != FORMAT_V1 {
            return Err(DecodeError("unknown format version"));
        }
        let count = u16::from_be_bytes([c0, c1]);
        let mut at = PREAMBLE;
        for _ in 0..count {
            let n = usize::from(u16::from_be_bytes(
                take(&buf, &mut at, 2)?
                    .try_into()
                    .map_err(|_| DecodeError("truncated"))?,
            ));
            std::str::from_utf8(take(&buf, &mut at, n)?)
                .map_err(|_| DecodeError("header name is not UTF-8"))?;
            let v = u32::from_be_bytes(
                take(&buf, &mut at, 4)?
                    .try_into()
                    .map_err(|_| DecodeError("truncated"))?,
            );
            take(&buf, &mut at, v as usize)?;
        }
        Ok(Self {
            status: u16::from_be_bytes([s0, s1]),
            count,
            body: buf.slice(at..),
            encoded: buf,
        })
    }
}

/// The next `n` bytes of `buf` from `at`, moving `at` past them.
fn take<'b>(buf: &'b [u8], at: &mut usize, n: usize) -> Result<&'b [u8], DecodeError> {
    let part = at
        .checked_add(n)
        .and_then(|end| buf.get(*at..end))
        .ok_or(DecodeError("truncated"))?;
    *at += n;
    Ok(part)
}

impl std::fmt::Debug for StoredResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoredResponse")
            .field("status", &self.status)
            .field(
                "headers",
                &self
                    .headers()
                    .map(|(n, v)| (n, String::from_utf8_lossy(v)))
                    .collect::<Vec<_>>(),
            )
            .field("body", &self.body)
            .finish()
    }
}

/// The headers of a [`StoredResponse`]: name and raw value, in the order the handler set them.
#[derive(Debug, Clone)]
pub struct StoredHeaders<'a> {
    /// The encoded headers not yet read (checked when the response was made or decoded).
    rest: &'a [u8],
    left: u16,
}

impl<'a> Iterator for StoredHeaders<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        if self.left == 0 {
            return None;
        }
        self.left -= 1;
        let mut at = 0;
        let rest = self.rest;
        let n = take(rest, &mut at, 2).ok()?;
        let name = take(rest, &mut at, usize::from(u16::from_be_bytes([n[0], n[1]]))).ok()?;
        let v = take(rest, &mut at, 4).ok()?;
        let value = take(
            rest,
            &mut at,
            u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize,
        )
        .ok()?;
        self.rest = &rest[at..];
        // Names were checked to be UTF-8 when the response was made or decoded.
        Some((std::str::from_utf8(name).unwrap_or_default(), value))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::from(self.left), Some(usize::from(self.left)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_overhead() {
        let r = StoredResponse::new(
            201,
            [
                ("content-type", "application/json"),
                ("location", "/payments/1"),
            ],
            vec![7u8; 10 * 1024],
        );
        let enc = r.encode();
        assert!(enc.len() <= r.body().len() + 64);
        let back = StoredResponse::decode(enc).unwrap();
        assert_eq!(back, r);
        assert_eq!(
            back.headers().collect::<Vec<_>>(),
            [
                ("content-type", &b"application/json"[..]),
                ("location", &b"/payments/1"[..])
            ]
        );
        assert_eq!(back.body().len(), 10 * 1024);
        assert_eq!(back.status(), 201);
    }

    /// What memory caps count is what it was when headers were a vector of pairs.
    #[test]
    fn size_counts_body_headers_and_bookkeeping() {
        let r = StoredResponse::new(200, [("etag", "\"x\""), ("location", "/a")], "hello");
        assert_eq!(r.size(), 5 + (4 + 3 + 16) + (8 + 2 + 16) + 16);
        assert_eq!(
            StoredResponse::new(204, None::<(&str, &str)>, "").size(),
            16
        );
    }

    #[test]
    fn decode_never_panics_on_truncation() {
        let r = StoredResponse::new(200, [("etag", "\"x\"")], "hello");
        let enc = r.encode();
        for cut in 0..enc.len() {
            let _ = StoredResponse::decode(enc.slice(..cut));
        }
        assert!(StoredResponse::decode(Bytes::from_static(b"\x09abcd")).is_err());
        // A header length past the end, a name that is not UTF-8.
        assert!(
            StoredResponse::decode(Bytes::from_static(b"\x01\x00\xc8\x00\x01\xff\xff")).is_err()
        );
        assert!(StoredResponse::decode(Bytes::from_static(
            b"\x01\x00\xc8\x00\x01\x00\x01\xff\x00\x00\x00\x00"
        ))
        .is_err());
    }

    /// Headers that cannot be encoded are left out, not truncated into a corrupt record.
    #[test]
    fn unencodable_headers_are_left_out() {
        let long = "x".repeat(70_000);
        let r = StoredResponse::new(200, [(long.as_str(), "v"), ("etag", "1")], "b");
        assert_eq!(r.headers().collect::<Vec<_>>(), [("etag", &b"1"[..])]);
        assert_eq!(StoredResponse::decode(r.encode()), Ok(r));
    }

    /// A replay's values share the response's buffer.
    #[test]
    fn shared_headers_do_not_copy() {
        let r = StoredResponse::new(201, [("location", "/p/1")], "{}");
        let (name, value) = r.shared_headers().next().unwrap();
        assert_eq!((name, &value[..]), ("location", &b"/p/1"[..]));
        let range = r.encode().as_ptr_range();
        assert!(range.contains(&value.as_ptr()));
    }
}

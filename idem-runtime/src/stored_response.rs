//! The stored response: what a record keeps of a handler's answer.
//!
//! Its fields are private so that how a record holds a response can change without breaking a
//! store or a test built on it. Today it is a list of headers and a body, each its own
//! allocation: one buffer per record (its encoding, with the body a slice of it) was measured
//! and made the worker slower under glibc's allocator (BENCHMARKS.md, "Session 8").

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

/// A handler response as kept for replay: status, allow-listed headers, body bytes.
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
    headers: Vec<(Box<str>, Bytes)>,
    body: Bytes,
}

/// A stored response that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stored response is corrupt: {0}")]
pub struct DecodeError(&'static str);

const FORMAT_V1: u8 = 1;
/// Version, status, header count.
const PREAMBLE: usize = 5;

impl StoredResponse {
    /// A response with `status`, `headers` (lower-case names and raw values, in the order the
    /// handler set them) and `body`, copied (so a record never holds a larger buffer its body was
    /// a slice of).
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
        let headers = headers
            .into_iter()
            .filter(|(name, value)| {
                u16::try_from(name.as_ref().len()).is_ok()
                    && u32::try_from(value.as_ref().len()).is_ok()
            })
            .take(usize::from(u16::MAX))
            .map(|(name, value)| {
                (
                    Box::<str>::from(name.as_ref()),
                    Bytes::copy_from_slice(value.as_ref()),
                )
            })
            .collect();
        Self {
            status,
            headers,
            body: Bytes::copy_from_slice(body.as_ref()),
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
            inner: self.headers.iter(),
        }
    }

    /// The headers with each value as [`Bytes`] shared with this response (no copy).
    pub(crate) fn shared_headers(&self) -> impl Iterator<Item = (&str, Bytes)> + '_ {
        self.headers
            .iter()
            .map(|(name, value)| (&**name, value.clone()))
    }

    /// The body, exactly as the handler produced it.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// Approximate bytes this response occupies; what memory caps count.
    pub fn size(&self) -> usize {
        // The body, each header's name and value plus 16, and 16: what the allocations and the
        // bookkeeping around them cost.
        self.body.len()
            + self
                .headers()
                .map(|(n, v)| n.len() + v.len() + 16)
                .sum::<usize>()
            + 16
    }

    /// Compact encoding: version, status, header count, then length-prefixed names and values,
    /// then the raw body. Overhead is a few bytes per header.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.size());
        out.put_u8(FORMAT_V1);
        out.put_u16(self.status);
        out.put_u16(self.headers.len() as u16);
        for (name, value) in self.headers() {
            // Both fit: `new` and `decode` checked.
            out.put_u16(name.len() as u16);
            out.put_slice(name.as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Inverse of [`encode`](Self::encode); never panics on arbitrary input. The values and the
    /// body are slices of `buf` (no copy).
    pub fn decode(buf: Bytes) -> Result<Self, DecodeError> {
        let [version, s0, s1, c0, c1, ..] = buf[..] else {
            return Err(DecodeError("truncated"));
        };
        if version != FORMAT_V1 {
            return Err(DecodeError("unknown format version"));
        }
        let count = u16::from_be_bytes([c0, c1]);
        let mut at = PREAMBLE;
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            let n = take(&buf, &mut at, 2)?;
            let n = usize::from(u16::from_be_bytes([n[0], n[1]]));
            let name = std::str::from_utf8(take(&buf, &mut at, n)?)
                .map_err(|_| DecodeError("header name is not UTF-8"))?;
            let name = Box::<str>::from(name);
            let v = take(&buf, &mut at, 4)?;
            let v = u32::from_be_bytes([v[0], v[1], v[2], v[3]]) as usize;
            let value = buf.slice_ref(take(&buf, &mut at, v)?);
            headers.push((name, value));
        }
        Ok(Self {
            status: u16::from_be_bytes([s0, s1]),
            headers,
            body: buf.slice(at..),
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
    inner: std::slice::Iter<'a, (Box<str>, Bytes)>,
}

impl<'a> Iterator for StoredHeaders<'a> {
    type Item = (&'a str, &'a [u8]);

    fn next(&mut self) -> Option<Self::Item> {
        self.inner.next().map(|(name, value)| (&**name, &value[..]))
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
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

    /// A replay's values share the response's bytes; a decoded response shares the buffer.
    #[test]
    fn shared_headers_and_decoded_parts_do_not_copy() {
        let r = StoredResponse::new(201, [("location", "/p/1")], "{}");
        let (name, value) = r.shared_headers().next().unwrap();
        assert_eq!((name, &value[..]), ("location", &b"/p/1"[..]));
        assert_eq!(value.as_ptr(), r.headers().next().unwrap().1.as_ptr());
        let encoded = r.encode();
        let range = encoded.as_ptr_range();
        let back = StoredResponse::decode(encoded.clone()).unwrap();
        assert!(range.contains(&back.body().as_ptr()));
        assert!(range.contains(&back.headers().next().unwrap().1.as_ptr()));
    }
}

//! Records (what a store keeps per key) and the stored response, with a compact binary encoding
//! for stores that keep bytes (the body stays raw bytes, never a JSON array of numbers).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::time::Duration;
use thiserror::Error;

use crate::Fingerprint;

/// Identifies one holder of a key's lease. A store hands out a new, larger token on every
/// acquisition, and refuses `complete`/`renew`/`release` from any other token (fencing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct FencingToken(pub u64);

/// A handler response as kept for replay: status, allow-listed headers, body bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    /// HTTP status code.
    pub status: u16,
    /// Header names (lower case) and raw values, in the order the handler set them.
    pub headers: Vec<(String, Bytes)>,
    /// The body, exactly as the handler produced it.
    pub body: Bytes,
}

/// The state of one key's record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordState {
    /// A handler holds the lease and is running.
    InProgress {
        /// The lease holder.
        token: FencingToken,
    },
    /// The handler finished; its response is replayed until the record expires.
    Completed {
        /// The response to replay.
        response: StoredResponse,
    },
}

/// A record as read back from a store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// Fingerprint of the request that created the record.
    pub fingerprint: Fingerprint,
    /// In progress or completed.
    pub state: RecordState,
    /// Which acquisition of the key produced this state (1 for the first).
    pub attempt: u32,
    /// When that acquisition happened (the store's clock), if the store knows.
    pub acquired_at: Option<std::time::SystemTime>,
    /// Time left until the lease (in progress) or the TTL (completed) runs out.
    pub expires_in: Duration,
}

/// A stored response that could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("stored response is corrupt: {0}")]
pub struct DecodeError(&'static str);

const FORMAT_V1: u8 = 1;

impl StoredResponse {
    /// Approximate bytes this response occupies; what memory caps count.
    pub fn size(&self) -> usize {
        self.body.len()
            + self
                .headers
                .iter()
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
        for (name, value) in &self.headers {
            out.put_u16(name.len() as u16);
            out.put_slice(name.as_bytes());
            out.put_u32(value.len() as u32);
            out.put_slice(value);
        }
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Inverse of [`encode`](Self::encode); never panics on arbitrary input.
    pub fn decode(mut buf: Bytes) -> Result<Self, DecodeError> {
        fn need(buf: &Bytes, n: usize) -> Result<(), DecodeError> {
            if buf.remaining() < n {
                Err(DecodeError("truncated"))
            } else {
                Ok(())
            }
        }
        need(&buf, 5)?;
        if buf.get_u8() != FORMAT_V1 {
            return Err(DecodeError("unknown format version"));
        }
        let status = buf.get_u16();
        let count = buf.get_u16();
        let mut headers = Vec::with_capacity(usize::from(count).min(64));
        for _ in 0..count {
            need(&buf, 2)?;
            let n = usize::from(buf.get_u16());
            need(&buf, n)?;
            let name = String::from_utf8(buf.split_to(n).to_vec())
                .map_err(|_| DecodeError("header name is not UTF-8"))?;
            need(&buf, 4)?;
            let v = buf.get_u32() as usize;
            need(&buf, v)?;
            headers.push((name, buf.split_to(v)));
        }
        Ok(StoredResponse {
            status,
            headers,
            body: buf,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_overhead() {
        let r = StoredResponse {
            status: 201,
            headers: vec![
                (
                    "content-type".into(),
                    Bytes::from_static(b"application/json"),
                ),
                ("location".into(), Bytes::from_static(b"/payments/1")),
            ],
            body: Bytes::from(vec![7u8; 10 * 1024]),
        };
        let enc = r.encode();
        assert!(enc.len() <= r.body.len() + 64);
        assert_eq!(StoredResponse::decode(enc).unwrap(), r);
    }

    #[test]
    fn decode_never_panics_on_truncation() {
        let r = StoredResponse {
            status: 200,
            headers: vec![("etag".into(), Bytes::from_static(b"\"x\""))],
            body: Bytes::from_static(b"hello"),
        };
        let enc = r.encode();
        for cut in 0..enc.len() {
            let _ = StoredResponse::decode(enc.slice(..cut));
        }
        assert!(StoredResponse::decode(Bytes::from_static(b"\x09abcd")).is_err());
    }
}

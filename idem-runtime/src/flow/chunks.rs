//! A body read chunk by chunk, whatever the framework: a request body read whole up to the
//! endpoint's limit, a handler's response read up to `max_response_bytes`. The usual body of one
//! chunk is kept as it came (no copy); several are joined once.

use bytes::{Bytes, BytesMut};
use std::collections::VecDeque;
use std::future::Future;

use super::{body_too_large, body_unreadable};
use crate::problem::Problem;

/// A framework's body, read one chunk of data at a time.
pub(crate) trait Chunked {
    /// The next chunk of data (trailers are skipped); `None` at the end, `Err` with what went
    /// wrong when the body failed.
    fn next_chunk(&mut self) -> impl Future<Output = Option<Result<Bytes, String>>>;
}

/// Why a response was not kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotKept {
    /// Larger than the app's `max_response_bytes`.
    TooLarge,
    /// Its body stream failed.
    BodyFailed,
    /// The endpoint redacts, and the body is not JSON those pointers apply to.
    Unredactable,
}

/// The chunks read so far, and their total length.
#[derive(Default)]
pub(crate) struct Chunks {
    /// In order.
    pub(crate) read: VecDeque<Bytes>,
    /// Their total length.
    pub(crate) total: usize,
}

impl Chunks {
    fn push(&mut self, chunk: Bytes) {
        self.total += chunk.len();
        self.read.push_back(chunk);
    }

    /// All of it, in one piece.
    pub(crate) fn join(mut self) -> Bytes {
        match self.read.len() {
            0 => Bytes::new(),
            1 => self.read.pop_front().unwrap_or_default(),
            _ => {
                let mut all = BytesMut::with_capacity(self.total);
                self.read.iter().for_each(|c| all.extend_from_slice(c));
                all.freeze()
            }
        }
    }
}

/// Reads `body` whole (raw), refusing more than `limit` bytes (413; `declared` is its
/// `Content-Length`, if any) and a body that fails (400).
pub(crate) async fn read_whole(
    body: &mut impl Chunked,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, Problem> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(body_too_large(limit));
    }
    let mut chunks = Chunks::default();
    while let Some(chunk) = body.next_chunk().await {
        chunks.push(chunk.map_err(body_unreadable)?);
        if chunks.total > limit {
            return Err(body_too_large(limit));
        }
    }
    Ok(chunks.join())
}

/// Reads a handler's response body up to `limit` (`declared`: its exact size, if known): what
/// was read, and whether all of it was (`Err` says why not: over the limit, or the body failed;
/// the rest is still in `body`).
pub(crate) async fn read_capped(
    body: &mut impl Chunked,
    declared: Option<u64>,
    limit: usize,
) -> (Chunks, Result<(), NotKept>) {
    let mut chunks = Chunks::default();
    if declared.is_some_and(|n| n > limit as u64) {
        return (chunks, Err(NotKept::TooLarge));
    }
    while let Some(chunk) = body.next_chunk().await {
        match chunk {
            Ok(chunk) => {
                chunks.push(chunk);
                if chunks.total > limit {
                    return (chunks, Err(NotKept::TooLarge));
                }
            }
            Err(error) => {
                tracing::error!(%error, "idem: the handler's response body failed while it was read; the operation ran, so the record keeps a \"response not kept\" marker");
                return (chunks, Err(NotKept::BodyFailed));
            }
        }
    }
    (chunks, Ok(()))
}

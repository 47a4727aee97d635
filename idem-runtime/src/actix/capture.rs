//! Response capture on actix-web: the handler's response is read up to `max_response_bytes` and
//! split into what the client gets now and what is stored for replay (what is kept:
//! `flow/capture.rs`).
//!
//! A response that cannot be kept still reaches its client whole: what was read, then the rest
//! of the stream; the record keeps the "response not kept" marker.

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::HttpResponse;
use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Idempotency;
use crate::flow::capture::{keep, not_kept, NotKept};
use crate::{Policy, StoredResponse};

type BodyError = Box<dyn std::error::Error>;

/// Reads the handler's response up to the app's `max_response_bytes` and returns what the client
/// gets and what is stored: the response itself, or the "not kept" marker when it is too large
/// or its body fails.
pub(super) async fn capture(
    idem: &Idempotency,
    policy: &Policy,
    resp: HttpResponse,
) -> (HttpResponse, StoredResponse) {
    let limit = idem.shared.max_response;
    let (head, mut body) = resp.into_parts();
    let size = body.size();
    let mut read = VecDeque::new();
    let mut total = 0usize;
    let outcome = match size {
        BodySize::Sized(n) if n > limit as u64 => Err(NotKept::TooLarge),
        _ => loop {
            match std::future::poll_fn(|cx| Pin::new(&mut body).poll_next(cx)).await {
                None => break Ok(()),
                Some(Ok(chunk)) => {
                    total += chunk.len();
                    read.push_back(chunk);
                    if total > limit {
                        break Err(NotKept::TooLarge);
                    }
                }
                Some(Err(error)) => {
                    tracing::error!(%error, "idem: the handler's response body failed while it was read; the operation ran, so the record keeps a \"response not kept\" marker");
                    break Err(NotKept::BodyFailed);
                }
            }
        },
    };
    let status = head.status().as_u16();
    match outcome {
        Ok(()) => {
            let bytes = match read.len() {
                0 => Bytes::new(),
                1 => read.pop_front().unwrap_or_default(),
                _ => {
                    let mut all = bytes::BytesMut::with_capacity(total);
                    read.iter().for_each(|c| all.extend_from_slice(c));
                    all.freeze()
                }
            };
            let headers = head
                .headers()
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()));
            let stored = keep(idem, policy, status, headers, &bytes);
            (head.set_body(BoxBody::new(bytes)), stored)
        }
        Err(why) => {
            let content_type = head
                .headers()
                .get(CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let stored = not_kept(status, content_type.as_deref(), why, limit);
            let tail = match why {
                NotKept::TooLarge | NotKept::Unredactable => Tail::Body(body),
                // The client sees the stream fail where it failed.
                NotKept::BodyFailed => Tail::Failed,
            };
            let client = head.set_body(BoxBody::new(Replayed { read, tail, size }));
            (client, stored)
        }
    }
}

/// What follows the chunks already read.
enum Tail {
    /// The rest of the handler's body.
    Body(BoxBody),
    /// The handler's body failed here.
    Failed,
}

/// The client's copy of a response that was not kept: the chunks read while capturing, then the
/// tail; the original size (and so `Content-Length`) is kept.
struct Replayed {
    read: VecDeque<Bytes>,
    tail: Tail,
    size: BodySize,
}

impl MessageBody for Replayed {
    type Error = BodyError;

    fn size(&self) -> BodySize {
        self.size
    }

    fn poll_next(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Bytes, Self::Error>>> {
        let this = self.get_mut();
        if let Some(chunk) = this.read.pop_front() {
            return Poll::Ready(Some(Ok(chunk)));
        }
        match &mut this.tail {
            Tail::Body(body) => Pin::new(body).poll_next(cx),
            Tail::Failed => {
                // Once: the connection is aborted after an error.
                this.tail = Tail::Body(BoxBody::new(()));
                Poll::Ready(Some(Err("the handler's response body failed"
                    .to_owned()
                    .into())))
            }
        }
    }
}

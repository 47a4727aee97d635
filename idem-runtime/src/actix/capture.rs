//! Response capture on actix-web: the handler's response is read up to `max_response_bytes` and
//! split into what the client gets now and what is stored for replay (what is kept:
//! `flow/capture.rs`).
//!
//! A response that cannot be kept still reaches its client whole: what was read, then the rest
//! of the stream; the record keeps the "response not kept" marker.

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::HttpResponse;
use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Idempotency;
use crate::engine::Ticket;
use crate::flow::capture::{record, ClientBody};
use crate::flow::chunks::NotKept;
use crate::flow::chunks::{read_capped, Chunked};
use crate::flow::execute::expiry_date;
use crate::{Policy, StoredResponse};

type BodyError = Box<dyn std::error::Error>;

/// Reads the handler's response up to the app's `max_response_bytes` and returns what the client
/// gets and what is stored: the response itself, or the "not kept" marker when it is too large
/// or its body fails.
pub(super) async fn capture(
    idem: &Idempotency,
    policy: &Policy,
    ticket: &Ticket,
    resp: HttpResponse,
) -> (HttpResponse, StoredResponse) {
    let (head, mut body) = resp.into_parts();
    let size = body.size();
    let declared = match size {
        BodySize::Sized(n) => Some(n),
        _ => None,
    };
    let read = read_capped(&mut body, declared, idem.shared.max_response).await;
    let headers = || {
        head.headers()
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    };
    let status = head.status().as_u16();
    let expires = expiry_date(idem, ticket, status);
    let (client, stored) = record(idem, policy, status, headers, read, expires.as_deref());
    let client = match client {
        ClientBody::Whole(bytes) => BoxBody::new(bytes),
        ClientBody::Partial(read, why) => {
            let tail = match why {
                // The client sees the stream fail where it failed.
                NotKept::BodyFailed => Tail::Failed,
                NotKept::TooLarge | NotKept::Unredactable => Tail::Body(body),
            };
            BoxBody::new(Replayed { read, tail, size })
        }
    };
    (head.set_body(client), stored)
}

impl Chunked for BoxBody {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| Pin::new(&mut *self).poll_next(cx))
            .await
            .map(|chunk| chunk.map_err(|e| e.to_string()))
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

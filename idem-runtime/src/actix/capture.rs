//! Response capture: the handler's response is read up to `max_response_bytes` and split into
//! what the client gets now and what is stored for replay.
//!
//! A response that cannot be kept (larger than the limit, or whose body stream fails) still ran
//! the operation, so it is never a reason to run it again: the client gets the handler's real
//! response (what was read, then the rest of the stream), and the record is completed with a
//! documented marker — the original status and an `application/problem+json` body of type
//! `urn:idem:problem:response-not-kept` naming the original content type. Retries get that
//! marker, with `Idempotent-Replayed: true`.

use actix_web::body::{BodySize, BoxBody, MessageBody};
use actix_web::http::header::CONTENT_TYPE;
use actix_web::HttpResponse;
use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::Idempotency;
use crate::engine::NEVER_REPLAYED;
use crate::problem::ProblemKind;
use crate::{Policy, StoredResponse};

type BodyError = Box<dyn std::error::Error>;

/// Why a response was not kept for replay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NotKept {
    TooLarge,
    BodyFailed,
    /// The endpoint redacts, and the body is not JSON those pointers apply to.
    Unredactable,
}

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
            let stored = match redacted(policy, &bytes) {
                Some(body) => StoredResponse {
                    status,
                    headers: replayed_headers(idem, policy, &head),
                    body,
                },
                None => {
                    tracing::warn!(endpoint = policy.endpoint, status, "idem: this endpoint redacts its stored responses, and this body is not JSON the pointers apply to; it is not kept, and retries get a \"response not kept\" marker");
                    not_kept(&head, NotKept::Unredactable, limit)
                }
            };
            (head.set_body(BoxBody::new(bytes)), stored)
        }
        Err(why) => {
            if why == NotKept::TooLarge {
                tracing::error!(limit, status, "idem: the handler's response is larger than max_response_bytes; it is sent in full but not kept, and retries get a \"response not kept\" marker instead of running the operation again");
            }
            let stored = not_kept(&head, why, limit);
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

/// The body to keep: a copy of `body`, or, when the endpoint redacts, the JSON document with each
/// pointer's value replaced by `"[redacted]"` (a pointer that matches nothing is fine). `None`
/// when the endpoint redacts and the body is not a JSON document.
///
/// A copy, not `body` itself: a body may be a slice of a larger buffer (a request body echoed
/// from the connection's read buffer, a part of a cached file), and a record that shared it would
/// hold the whole buffer for its TTL — memory no store limit counts.
fn redacted(policy: &Policy, body: &Bytes) -> Option<Bytes> {
    if policy.redact.is_empty() {
        return Some(Bytes::copy_from_slice(body));
    }
    let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    for pointer in policy.redact {
        if let Some(v) = doc.pointer_mut(pointer) {
            *v = serde_json::Value::String("[redacted]".into());
        }
    }
    serde_json::to_vec(&doc).ok().map(Bytes::from)
}

/// The response headers kept for replay: the app's allow-list and the endpoint's own, never the
/// ones in [`NEVER_REPLAYED`].
fn replayed_headers(
    idem: &Idempotency,
    policy: &Policy,
    head: &HttpResponse<()>,
) -> Vec<(String, Bytes)> {
    let engine = &idem.shared.engine;
    head.headers()
        .iter()
        .filter(|(name, _)| {
            let name = name.as_str();
            engine.is_replayed(name)
                || (policy.replay_headers.contains(&name) && !NEVER_REPLAYED.contains(&name))
        })
        .map(|(name, value)| {
            (
                name.as_str().to_owned(),
                Bytes::copy_from_slice(value.as_bytes()),
            )
        })
        .collect()
}

/// The record of an operation whose response was not kept: its status, and a problem body that
/// says so and names the original content type.
/// Counted in `idem_response_not_kept_total`.
fn not_kept(head: &HttpResponse<()>, why: NotKept, limit: usize) -> StoredResponse {
    crate::observe::count(crate::observe::metric::RESPONSE_NOT_KEPT_TOTAL);
    let status = head.status().as_u16();
    let content_type = head
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let content_type = content_type.as_deref();
    let kind = ProblemKind::ResponseNotKept;
    let detail = match why {
        NotKept::TooLarge => format!(
            "the operation ran once; its response was larger than the server keeps for replay \
             ({limit} bytes), so it is not repeated here. Do not retry it: look the result up \
             through the API instead"
        ),
        NotKept::BodyFailed => "the operation ran once; its response body failed while it was \
                                sent, so it was not kept. Do not retry it: look the result up \
                                through the API instead"
            .to_owned(),
        NotKept::Unredactable => "the operation ran once; its response could not be redacted \
                                  as this endpoint requires before keeping it, so it was not \
                                  kept. Do not retry it: look the result up through the API \
                                  instead"
            .to_owned(),
    };
    let body = serde_json::json!({
        "type": kind.type_uri(),
        "title": kind.title(),
        "status": status,
        "detail": detail,
        "original_content_type": content_type,
        "reason": match why {
            NotKept::TooLarge => "too-large",
            NotKept::BodyFailed => "body-failed",
            NotKept::Unredactable => "unredactable",
        },
    });
    StoredResponse {
        status,
        headers: vec![(
            CONTENT_TYPE.as_str().to_owned(),
            Bytes::from_static(b"application/problem+json"),
        )],
        body: serde_json::to_vec(&body).unwrap_or_default().into(),
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

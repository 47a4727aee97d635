//! What a record keeps of a handler's response, whatever the framework: its status, the headers
//! replays carry, and its body (redacted where the endpoint says so) — or, when the response
//! cannot be kept (larger than the limit, a body that failed, a body that cannot be redacted),
//! a documented marker: the original status and an `application/problem+json` body of type
//! `urn:idem:problem:response-not-kept` naming the original content type. The operation ran, so
//! that is never a reason to run it again.

use bytes::Bytes;
use std::collections::VecDeque;

use super::chunks::{Chunks, NotKept};

use crate::actix::Idempotency;
use crate::engine::NEVER_REPLAYED;
use crate::flow::execute::EXPIRES_HEADER;
use crate::problem::ProblemKind;
use crate::{Policy, StoredResponse};

/// What the client gets of a response read by
/// [`read_capped`](super::chunks::read_capped): all of it in one piece, or the chunks read
/// before it was cut short — the rest of the handler's body (or its failure) follows.
pub(crate) enum ClientBody {
    /// The whole body.
    Whole(Bytes),
    /// What was read; why the response is not kept.
    Partial(VecDeque<Bytes>, NotKept),
}

/// The record of a response read as `read` says, and what its client gets. `headers` gives every
/// response header (lowercase name and value) each time it is called; `expires` (the
/// [`EXPIRES_HEADER`] date, when the app sends it) is kept with them, so that every replay says
/// the same.
pub(crate) fn record<'h, H: Iterator<Item = (&'h str, &'h [u8])>>(
    idem: &Idempotency,
    policy: &Policy,
    status: u16,
    headers: impl Fn() -> H,
    read: (Chunks, Result<(), NotKept>),
    expires: Option<&'h str>,
) -> (ClientBody, StoredResponse) {
    match read {
        (chunks, Ok(())) => {
            let bytes = chunks.join();
            let stored = keep(idem, policy, status, headers, &bytes, expires);
            (ClientBody::Whole(bytes), stored)
        }
        (chunks, Err(why)) => {
            let limit = idem.shared.max_response;
            let stored = not_kept(status, content_type(headers()), why, limit, expires);
            (ClientBody::Partial(chunks.read, why), stored)
        }
    }
}

/// The record of a response read whole: status, kept headers and body — or the marker when the
/// endpoint redacts and the body is not JSON.
///
/// The record has its own copy of the body ([`StoredResponse::new`] copies), never `body` itself:
/// a body may be a slice of a larger buffer (a request body echoed from the connection's read
/// buffer, a part of a cached file), and a record that shared it would hold the whole buffer for
/// its TTL — memory no store limit counts.
fn keep<'h, H: Iterator<Item = (&'h str, &'h [u8])>>(
    idem: &Idempotency,
    policy: &Policy,
    status: u16,
    headers: impl Fn() -> H,
    body: &Bytes,
    expires: Option<&'h str>,
) -> StoredResponse {
    let kept = |body: &[u8]| {
        let replayed = headers()
            .filter(|(name, _)| replays(idem, policy, name))
            .chain(expiry(expires));
        StoredResponse::new(status, replayed, body)
    };
    if policy.redact.is_empty() {
        return kept(body);
    }
    match redacted(policy, body) {
        Some(body) => kept(&body),
        None => {
            tracing::warn!(endpoint = policy.endpoint, status, "idem: this endpoint redacts its stored responses, and this body is not JSON the pointers apply to; it is not kept, and retries get a \"response not kept\" marker");
            not_kept(
                status,
                content_type(headers()),
                NotKept::Unredactable,
                0,
                expires,
            )
        }
    }
}

/// The response's content type, if it has one.
fn content_type<'h>(mut headers: impl Iterator<Item = (&'h str, &'h [u8])>) -> Option<String> {
    headers
        .find(|(name, _)| *name == "content-type")
        .map(|(_, value)| String::from_utf8_lossy(value).into_owned())
}

/// The [`EXPIRES_HEADER`] a record keeps, if the app sends it.
fn expiry(expires: Option<&str>) -> Option<(&'static str, &[u8])> {
    expires.map(|date| (EXPIRES_HEADER, date.as_bytes()))
}

/// Whether response header `name` is replayed: the app's allow-list and the endpoint's own,
/// never the ones in [`NEVER_REPLAYED`], nor the handler's own [`EXPIRES_HEADER`] when the app
/// sends the record's.
fn replays(idem: &Idempotency, policy: &Policy, name: &str) -> bool {
    if name == EXPIRES_HEADER && idem.shared.expiry_header {
        // The record's own date is kept instead.
        return false;
    }
    idem.shared.engine.is_replayed(name)
        || (policy.replay_headers.contains(&name) && !NEVER_REPLAYED.contains(&name))
}

/// The JSON document `body` with each of the endpoint's pointers' value replaced by
/// `"[redacted]"` (a pointer that matches nothing is fine). `None` when the body is not a JSON
/// document.
fn redacted(policy: &Policy, body: &[u8]) -> Option<Vec<u8>> {
    let mut doc: serde_json::Value = serde_json::from_slice(body).ok()?;
    for pointer in policy.redact {
        if let Some(v) = doc.pointer_mut(pointer) {
            *v = serde_json::Value::String("[redacted]".into());
        }
    }
    serde_json::to_vec(&doc).ok()
}

/// The record of an operation whose response was not kept: its status, and a problem body that
/// says so and names the original content type. Counted in `idem_response_not_kept_total`.
fn not_kept(
    status: u16,
    content_type: Option<String>,
    why: NotKept,
    limit: usize,
    expires: Option<&str>,
) -> StoredResponse {
    crate::observe::count(crate::observe::metric::RESPONSE_NOT_KEPT_TOTAL);
    if why == NotKept::TooLarge {
        tracing::error!(limit, status, "idem: the handler's response is larger than max_response_bytes; it is sent in full but not kept, and retries get a \"response not kept\" marker instead of running the operation again");
    }
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
    let headers = [("content-type", &b"application/problem+json"[..])];
    StoredResponse::new(
        status,
        headers.into_iter().chain(expiry(expires)),
        serde_json::to_vec(&body).unwrap_or_default(),
    )
}

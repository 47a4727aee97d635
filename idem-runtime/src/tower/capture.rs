//! Response capture under tower: the inner service's response is read up to
//! `max_response_bytes` and split into what the client gets now and what is stored for replay
//! (what is kept: `flow/capture.rs`). A response that cannot be kept still reaches its client
//! whole: what was read, then the rest of the body.

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame};
use std::pin::Pin;
use std::task::{Context, Poll};

use super::body::{BoxError, IdemBody};
use crate::actix::Idempotency;
use crate::engine::Ticket;
use crate::flow::capture::{record, ClientBody};
use crate::flow::chunks::read_capped;
use crate::flow::chunks::NotKept;
use crate::flow::execute::expiry_date;
use crate::{Policy, StoredResponse};

/// Reads the inner service's response and returns what the client gets and what is stored.
pub(super) async fn capture<RB>(
    idem: &Idempotency,
    policy: &Policy,
    ticket: &Ticket,
    resp: Response<RB>,
) -> (Response<IdemBody>, StoredResponse)
where
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let (parts, body) = resp.into_parts();
    let mut body = Box::pin(body);
    let declared = body.size_hint().exact();
    let read = read_capped(&mut body, declared, idem.shared.max_response).await;
    let headers = || {
        parts
            .headers
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_bytes()))
    };
    let status = parts.status.as_u16();
    let expires = expiry_date(idem, ticket, status);
    let (client, stored) = record(idem, policy, status, headers, read, expires.as_deref());
    let client = match client {
        ClientBody::Whole(bytes) => IdemBody::full(bytes),
        // The client sees the body fail where the handler's did.
        ClientBody::Partial(read, NotKept::BodyFailed) => IdemBody::rest(read, Some(Failed(true))),
        ClientBody::Partial(read, _) => IdemBody::rest(read, Some(body)),
    };
    (Response::from_parts(parts, client), stored)
}

/// The client's copy of a body that failed: it fails where the handler's did.
struct Failed(bool);

impl Body for Failed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if std::mem::take(&mut this.0) {
            return Poll::Ready(Some(Err("the handler's response body failed".into())));
        }
        Poll::Ready(None)
    }
}

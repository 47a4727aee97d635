//! Response capture under tower: the inner service's response is read up to
//! `max_response_bytes` and split into what the client gets now and what is stored for replay
//! (what is kept: `flow/capture.rs`). A response that cannot be kept still reaches its client
//! whole: what was read, then the rest of the body.

use bytes::Bytes;
use http::Response;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::body::{BoxError, IdemBody};
use crate::actix::Idempotency;
use crate::flow::capture::{keep, not_kept, NotKept};
use crate::{Policy, StoredResponse};

/// Reads the inner service's response and returns what the client gets and what is stored.
pub(super) async fn capture<RB>(
    idem: &Idempotency,
    policy: &Policy,
    resp: Response<RB>,
) -> (Response<IdemBody>, StoredResponse)
where
    RB: Body<Data = Bytes> + Send + 'static,
    RB::Error: Into<BoxError>,
{
    let limit = idem.shared.max_response;
    let (parts, body) = resp.into_parts();
    let status = parts.status.as_u16();
    let mut body = Box::pin(body);
    let mut read = VecDeque::new();
    let mut total = 0usize;
    let outcome = match body.size_hint().exact() {
        Some(n) if n > limit as u64 => Err(NotKept::TooLarge),
        _ => loop {
            match body.frame().await {
                None => break Ok(()),
                Some(Ok(frame)) => {
                    let Ok(data) = frame.into_data() else {
                        continue; // trailers are not kept
                    };
                    total += data.len();
                    read.push_back(data);
                    if total > limit {
                        break Err(NotKept::TooLarge);
                    }
                }
                Some(Err(error)) => {
                    let error: BoxError = error.into();
                    tracing::error!(%error, "idem: the handler's response body failed while it was read; the operation ran, so the record keeps a \"response not kept\" marker");
                    break Err(NotKept::BodyFailed);
                }
            }
        },
    };
    match outcome {
        Ok(()) => {
            let bytes = match read.len() {
                0 => Bytes::new(),
                1 => read.pop_front().unwrap_or_default(),
                _ => {
                    let mut all = Vec::with_capacity(total);
                    read.iter().for_each(|c| all.extend_from_slice(c));
                    all.into()
                }
            };
            let headers = parts
                .headers
                .iter()
                .map(|(name, value)| (name.as_str(), value.as_bytes()));
            let stored = keep(idem, policy, status, headers, &bytes);
            (Response::from_parts(parts, IdemBody::full(bytes)), stored)
        }
        Err(why) => {
            let content_type = parts
                .headers
                .get(http::header::CONTENT_TYPE)
                .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
            let stored = not_kept(status, content_type.as_deref(), why, limit);
            let client = match why {
                NotKept::BodyFailed => IdemBody::rest(read, Some(Failed(true))),
                _ => IdemBody::rest(read, Some(body)),
            };
            (Response::from_parts(parts, client), stored)
        }
    }
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

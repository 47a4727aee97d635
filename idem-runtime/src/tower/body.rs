//! `http` 1 requests and responses for the shared flow: a request's head read through
//! [`Head`], its body read up to the endpoint's limit, and the layer's response body
//! ([`IdemBody`]): whole bytes (a replay, a problem, a kept response), or a response that was
//! not kept — what was read, then the rest of the handler's body.

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::BodyExt;
use std::collections::VecDeque;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::flow::chunks::{read_whole, Chunked};
use crate::flow::execute::Answer;
use crate::flow::prepare::BodySource;
use crate::flow::status::{accepted_body, location};
use crate::flow::Head;
use crate::problem::Problem;
use crate::StoredResponse;

/// The error of a response body: whatever the handler's body failed with.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

impl Head for http::request::Parts {
    fn method(&self) -> &str {
        self.method.as_str()
    }

    fn path(&self) -> &str {
        self.uri.path()
    }

    fn query(&self) -> &str {
        self.uri.query().unwrap_or("")
    }

    fn path_and_query(&self) -> &str {
        self.uri.path_and_query().map_or("/", |p| p.as_str())
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers.get_all(name).into_iter().map(|v| v.as_bytes())
    }
}

/// A request body not read yet.
pub(super) struct Unread<B>(pub(super) B);

impl<B> BodySource for Unread<B>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    async fn read(self, declared: Option<u64>, limit: usize) -> Result<Bytes, Problem> {
        read_whole(&mut Request(Box::pin(self.0)), declared, limit).await
    }
}

/// A request body being read.
struct Request<B>(Pin<Box<B>>);

impl<B> Chunked for Request<B>
where
    B: Body<Data = Bytes> + Send,
    B::Error: std::fmt::Display,
{
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        Some(next_data(self.0.as_mut()).await?.map_err(|e| e.to_string()))
    }
}

impl<B> Chunked for Pin<Box<B>>
where
    B: Body<Data = Bytes> + Send,
    B::Error: Into<BoxError>,
{
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        Some(
            next_data(self.as_mut())
                .await?
                .map_err(|e| e.into().to_string()),
        )
    }
}

/// The next frame of data of `body`, skipping trailers.
async fn next_data<B: Body<Data = Bytes>>(
    mut body: Pin<&mut B>,
) -> Option<Result<Bytes, B::Error>> {
    loop {
        match std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(data)),
                Err(_) => continue, // trailers
            },
            Err(e) => return Some(Err(e)),
        }
    }
}

/// The body of every response the layer answers with.
pub struct IdemBody(Inner);

enum Inner {
    /// Whole: sent in one frame.
    Full(Option<Bytes>),
    /// What was read of the handler's body, then the rest of it.
    Rest {
        read: VecDeque<Bytes>,
        rest: Option<UnsyncBoxBody<Bytes, BoxError>>,
    },
}

impl std::fmt::Debug for IdemBody {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.0 {
            Inner::Full(_) => "IdemBody::Full",
            Inner::Rest { .. } => "IdemBody::Rest",
        })
    }
}

impl IdemBody {
    /// A whole body.
    pub(super) fn full(bytes: Bytes) -> Self {
        IdemBody(Inner::Full((!bytes.is_empty()).then_some(bytes)))
    }

    /// `read`, then what is left of `rest`.
    pub(super) fn rest<B>(read: VecDeque<Bytes>, rest: Option<B>) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        IdemBody(Inner::Rest {
            read,
            rest: rest.map(|b| b.map_err(Into::into).boxed_unsync()),
        })
    }

    /// The handler's own body, passed through.
    pub(super) fn of<B>(body: B) -> Self
    where
        B: Body<Data = Bytes> + Send + 'static,
        B::Error: Into<BoxError>,
    {
        Self::rest(VecDeque::new(), Some(body))
    }
}

impl Body for IdemBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().0 {
            Inner::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Inner::Rest { read, rest } => {
                if let Some(chunk) = read.pop_front() {
                    return Poll::Ready(Some(Ok(Frame::data(chunk))));
                }
                match rest {
                    Some(body) => Pin::new(body).poll_frame(cx),
                    None => Poll::Ready(None),
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.0 {
            Inner::Full(bytes) => bytes.is_none(),
            Inner::Rest { read, rest } => {
                read.is_empty() && rest.as_ref().is_none_or(|b| b.is_end_stream())
            }
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.0 {
            Inner::Full(bytes) => {
                SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64))
            }
            Inner::Rest { read, rest } => {
                let read: u64 = read.iter().map(|c| c.len() as u64).sum();
                let mut hint = rest
                    .as_ref()
                    .map_or(SizeHint::with_exact(0), |b| b.size_hint());
                hint.set_lower(hint.lower() + read);
                if let Some(upper) = hint.upper() {
                    hint.set_upper(upper + read);
                }
                hint
            }
        }
    }
}

impl Answer for Response<IdemBody> {
    fn problem(p: &Problem) -> Self {
        let status = StatusCode::from_u16(p.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = Response::new(IdemBody::full(p.to_json().into()));
        *resp.status_mut() = status;
        let headers = resp.headers_mut();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(secs) = p.retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(secs));
        }
        resp
    }

    fn is_server_error(&self) -> bool {
        self.status().is_server_error()
    }

    fn set_header(&mut self, name: &'static str, value: &str) {
        if let Ok(v) = HeaderValue::from_str(value) {
            self.headers_mut().insert(HeaderName::from_static(name), v);
        }
    }

    fn replay(stored: &StoredResponse) -> Self {
        replay(stored)
    }

    /// 202 Accepted pointing at the status resource of `key`.
    fn accepted(status_path: &str, key: &crate::StorageKey) -> Self {
        let location = location(status_path, key);
        let mut resp = Response::new(IdemBody::full(accepted_body(&location).into()));
        *resp.status_mut() = StatusCode::ACCEPTED;
        let headers = resp.headers_mut();
        headers.insert(http::header::RETRY_AFTER, HeaderValue::from_static("1"));
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Ok(v) = HeaderValue::from_str(&location) {
            headers.insert(http::header::LOCATION, v);
        }
        resp
    }

    /// 202 for a duplicate of a webhook endpoint: the first response is delivered to its
    /// callback.
    #[cfg(feature = "webhook")]
    fn webhook_accepted() -> Self {
        let mut resp = Response::new(IdemBody::full(crate::flow::webhook::ACCEPTED_BODY.into()));
        *resp.status_mut() = StatusCode::ACCEPTED;
        resp.headers_mut().insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        resp
    }
}

/// The replay of a stored response: status, stored headers, body, and
/// `Idempotent-Replayed: true`.
pub(super) fn replay(stored: &StoredResponse) -> Response<IdemBody> {
    let Ok(status) = StatusCode::from_u16(stored.status()) else {
        return Answer::problem(&Problem::new(
            crate::problem::ProblemKind::Internal,
            "the stored response has an invalid status",
        ));
    };
    let mut resp = Response::new(IdemBody::full(stored.body().clone()));
    *resp.status_mut() = status;
    let headers = resp.headers_mut();
    for (name, value) in stored.shared_headers() {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_maybe_shared(value),
        ) {
            headers.append(n, v);
        }
    }
    headers.insert(
        HeaderName::from_static(crate::actix::REPLAYED_HEADER),
        HeaderValue::from_static("true"),
    );
    resp
}

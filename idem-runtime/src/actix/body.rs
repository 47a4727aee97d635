//! The request as actix-web hands it over: its head read through [`Head`], and its body
//! buffered (raw, still compressed if it was sent so) up to the endpoint's limit.

use actix_web::{dev, web, HttpRequest, HttpResponse};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use super::problem_response;
use crate::flow::{body_too_large, body_unreadable, content_length, Head};

impl Head for HttpRequest {
    fn method(&self) -> &str {
        HttpRequest::method(self).as_str()
    }

    fn path(&self) -> &str {
        HttpRequest::path(self)
    }

    fn query(&self) -> &str {
        self.query_string()
    }

    fn path_and_query(&self) -> &str {
        self.uri().path_and_query().map_or("/", |p| p.as_str())
    }

    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]> {
        self.headers().get_all(name).map(|v| v.as_bytes())
    }
}

/// The request body: still a stream, or read into memory (raw, before any decompression).
pub(super) enum Body {
    /// Not read yet.
    Raw(web::Payload),
    /// Read, raw (still compressed if it was sent so).
    Buffered(Bytes),
}

impl Body {
    pub(super) async fn buffer(
        self,
        req: &HttpRequest,
        limit: usize,
    ) -> Result<Bytes, HttpResponse> {
        match self {
            Body::Raw(payload) => buffer_body(req, payload, limit).await,
            Body::Buffered(b) => Ok(b),
        }
    }

    pub(super) fn into_payload(self) -> dev::Payload {
        match self {
            Body::Raw(payload) => payload.into_inner(),
            Body::Buffered(b) => dev::Payload::from(b),
        }
    }
}

/// Reads the raw body (still compressed, if it was sent compressed), refusing more than `limit`.
pub(super) async fn buffer_body(
    req: &HttpRequest,
    mut payload: web::Payload,
    limit: usize,
) -> Result<Bytes, HttpResponse> {
    let too_large = || problem_response(&body_too_large(limit));
    let declared = content_length(req);
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    // The usual body arrives in one chunk: keep that chunk rather than copying it.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| problem_response(&body_unreadable(e)))?;
        total += chunk.len();
        if total > limit {
            return Err(too_large());
        }
        match first.take() {
            None if buf.is_empty() => first = Some(chunk),
            earlier => {
                if let Some(earlier) = earlier {
                    buf.reserve(declared.map_or(0, |n| n as usize).min(limit));
                    buf.extend_from_slice(&earlier);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    Ok(first.unwrap_or_else(|| buf.freeze()))
}

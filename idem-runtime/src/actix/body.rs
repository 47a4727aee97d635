//! The request as actix-web hands it over: its head read through [`Head`], and its body
//! read (raw, still compressed if it was sent so) up to the endpoint's limit.

use actix_web::{web, HttpRequest};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::flow::{body_too_large, body_unreadable, Head};
use crate::problem::Problem;

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

impl crate::flow::prepare::BodySource for web::Payload {
    async fn read(self, declared: Option<u64>, limit: usize) -> Result<Bytes, Problem> {
        buffer_body(self, declared, limit).await
    }
}

/// Reads the raw body (still compressed, if it was sent compressed), refusing more than `limit`.
async fn buffer_body(
    mut payload: web::Payload,
    declared: Option<u64>,
    limit: usize,
) -> Result<Bytes, Problem> {
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(body_too_large(limit));
    }
    // The usual body arrives in one chunk: keep that chunk rather than copying it.
    let mut first: Option<Bytes> = None;
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(body_unreadable)?;
        total += chunk.len();
        if total > limit {
            return Err(body_too_large(limit));
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

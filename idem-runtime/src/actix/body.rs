//! The request as actix-web hands it over: its head read through [`Head`], and its body
//! read (raw, still compressed if it was sent so) up to the endpoint's limit.

use actix_web::{web, HttpRequest};
use bytes::Bytes;
use futures_util::StreamExt;

use crate::flow::chunks::{read_whole, Chunked};
use crate::flow::prepare::BodySource;
use crate::flow::Head;
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

impl BodySource for web::Payload {
    async fn read(mut self, declared: Option<u64>, limit: usize) -> Result<Bytes, Problem> {
        read_whole(&mut self, declared, limit).await
    }
}

impl Chunked for web::Payload {
    async fn next_chunk(&mut self) -> Option<Result<Bytes, String>> {
        self.next()
            .await
            .map(|chunk| chunk.map_err(|e| e.to_string()))
    }
}

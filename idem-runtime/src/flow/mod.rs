//! The idempotency flow as every adapter runs it, whatever the web framework: what a request is
//! read as ([`Head`]), its key and fingerprint ([`request`]), and one execution from the lease
//! taken to the record written ([`execute`]). The adapters (`actix`, `tower`) only translate
//! their request and response types and spawn the execution on their runtime.

pub(crate) mod capture;
pub(crate) mod execute;
pub(crate) mod prepare;
pub(crate) mod request;

use crate::problem::{Problem, ProblemKind};

/// What the flow reads of a request's head, whatever the framework's request type.
pub(crate) trait Head {
    /// The method, as sent (`POST`).
    fn method(&self) -> &str;
    /// The path, without the query.
    fn path(&self) -> &str;
    /// The query string, without `?` (empty when there is none).
    fn query(&self) -> &str;
    /// The path and query as sent; `/` when the target has none.
    fn path_and_query(&self) -> &str;
    /// Each value of header `name` (lowercase), in order.
    fn header_values<'a>(&'a self, name: &str) -> impl Iterator<Item = &'a [u8]>;
    /// The first value of header `name`.
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.header_values(name).next()
    }
}

/// 413 for a body over the endpoint's limit.
pub(crate) fn body_too_large(limit: usize) -> Problem {
    Problem::new(
        ProblemKind::BodyTooLarge,
        format!("the request body is larger than this endpoint's limit of {limit} bytes"),
    )
}

/// 400 for a body that could not be read.
pub(crate) fn body_unreadable(e: impl std::fmt::Display) -> Problem {
    Problem::new(
        ProblemKind::BodyUnreadable,
        format!("the request body could not be read: {e}"),
    )
}

/// The declared `Content-Length`, if it is one.
pub(crate) fn content_length(req: &impl Head) -> Option<u64> {
    std::str::from_utf8(req.header("content-length")?)
        .ok()?
        .trim()
        .parse()
        .ok()
}

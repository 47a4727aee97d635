//! `on_conflict = "accepted"` under tower: the status resource as a service (the 202 that points
//! at it is built by `body.rs`; what they answer: `flow/status.rs`).

use http::{Request, Response};
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use super::body::{replay, IdemBody};
use crate::actix::Idempotency;
use crate::flow::execute::Answer;
use crate::flow::status::{lookup, Status};
use crate::problem::{Problem, ProblemKind};

/// The status resources of `on_conflict = "accepted"` endpoints, as a tower service: `GET
/// {status_path}/{id}` answers 202 while the request runs, its stored response once done, and
/// 404 when unknown, expired or asked for by another principal. Mount it where the app's
/// `status_path` says (default `/idempotency`), e.g. with axum:
/// `.route_service("/idempotency/{id}", StatusService::new(&idem))`.
#[derive(Clone)]
pub struct StatusService {
    idem: Idempotency,
}

impl std::fmt::Debug for StatusService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusService")
            .field("path", &self.idem.status_path())
            .finish()
    }
}

impl StatusService {
    /// The status resources of `idem`'s endpoints.
    pub fn new(idem: &Idempotency) -> Self {
        StatusService { idem: idem.clone() }
    }
}

impl<B> tower_service::Service<Request<B>> for StatusService {
    type Response = Response<IdemBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<IdemBody>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let idem = self.idem.clone();
        let (parts, _) = req.into_parts();
        Box::pin(async move {
            let prefix = format!("{}/", idem.status_path().trim_end_matches('/'));
            let Some(id) = parts.uri.path().strip_prefix(&prefix) else {
                return Ok(Answer::problem(&Problem::new(
                    ProblemKind::StatusNotFound,
                    "this is not a status resource's path",
                )));
            };
            let principal = match super::principal(&idem, &parts) {
                Ok(Ok(p)) => p,
                Ok(Err(p)) | Err(p) => return Ok(Answer::problem(&p)),
            };
            let query = parts.uri.query().unwrap_or("");
            Ok(match lookup(&idem, &principal, id, query).await {
                Status::Done(response) => replay(&response),
                Status::Running(key) => Answer::accepted(idem.status_path(), &key),
                Status::Problem(p) => Answer::problem(&p),
            })
        })
    }
}

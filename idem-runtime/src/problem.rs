//! RFC 9457 problem details: every error idem returns to a client is one of these.

use serde::Serialize;

/// Each case a client can meet, with a stable `type` URI (DESIGN §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ProblemKind {
    /// No key where the endpoint requires one (400).
    KeyMissing,
    /// Key malformed, too long or repeated (400).
    KeyInvalid,
    /// Same key, different payload (422).
    KeyReused,
    /// Same key, first request still running (409).
    InProgress,
    /// Body over the endpoint's limit (413).
    BodyTooLarge,
    /// The request body could not be read (400).
    BodyUnreadable,
    /// Store unavailable, slow or full (503).
    StoreUnavailable,
    /// An extractor of the handler refused the request (its own status, usually 400).
    RequestInvalid,
    /// The `Idempotency-Callback` URL is missing (for a duplicate), malformed or not allowed (400).
    CallbackInvalid,
    /// The status resource is unknown, expired or another principal's (404).
    StatusNotFound,
    /// The handler panicked or its response could not be stored (500).
    HandlerFailed,
    /// The app has no `Idempotency` registered, or another server-side fault (500).
    Internal,
    /// The replay of an operation that ran, but whose response could not be kept (too large,
    /// or its body failed while it was sent): the original status, this body. The operation is
    /// not run again.
    ResponseNotKept,
    /// 500: the operation ran, but its stored response cannot be opened (sealed under a secret
    /// the app no longer has, or altered in the store); it is neither replayed nor run again.
    RecordUnreadable,
    /// The server is shutting down and starts no new operation; retry, with the same key, on
    /// another instance or later (503).
    ShuttingDown,
    /// This principal started more new operations than it may, or holds as many records as it
    /// may; other principals are not affected (429).
    TooManyKeys,
    /// 500: the steps an attempt calls differ from those an earlier attempt of the operation
    /// recorded (the handler's code changed between them); no finished step is skipped
    /// silently, and nothing is kept, so a retry after a fix runs on from the recorded steps.
    StepsChanged,
    /// 500, kept: an operation the completer could not finish in its attempts; it is not run
    /// again, and its finished steps stay as they are.
    OperationFailed,
    /// The header the app scopes keys by came with more than one value (two lines, or a
    /// comma-separated list): who the request belongs to is ambiguous (400). A gateway that
    /// appends its authenticated value instead of replacing the client's produces this.
    ScopeAmbiguous,
    /// A keyed request to a scoped app carries no principal (no scope header, no extension,
    /// the scope closure returned none), and the app does not allow anonymous requests (400).
    PrincipalMissing,
}

impl ProblemKind {
    /// HTTP status for this case.
    pub fn status(self) -> u16 {
        match self {
            ProblemKind::KeyMissing
            | ProblemKind::KeyInvalid
            | ProblemKind::BodyUnreadable
            | ProblemKind::RequestInvalid
            | ProblemKind::CallbackInvalid
            | ProblemKind::ScopeAmbiguous
            | ProblemKind::PrincipalMissing => 400,
            ProblemKind::StatusNotFound => 404,
            ProblemKind::KeyReused => 422,
            ProblemKind::TooManyKeys => 429,
            ProblemKind::InProgress => 409,
            ProblemKind::BodyTooLarge => 413,
            ProblemKind::StoreUnavailable | ProblemKind::ShuttingDown => 503,
            ProblemKind::HandlerFailed
            | ProblemKind::Internal
            | ProblemKind::ResponseNotKept
            | ProblemKind::RecordUnreadable
            | ProblemKind::StepsChanged
            | ProblemKind::OperationFailed => 500,
        }
    }

    /// The stable `type` member.
    pub fn type_uri(self) -> &'static str {
        match self {
            ProblemKind::KeyMissing => "urn:idem:problem:key-missing",
            ProblemKind::KeyInvalid => "urn:idem:problem:key-invalid",
            ProblemKind::KeyReused => "urn:idem:problem:key-reused",
            ProblemKind::InProgress => "urn:idem:problem:in-progress",
            ProblemKind::BodyTooLarge => "urn:idem:problem:body-too-large",
            ProblemKind::BodyUnreadable => "urn:idem:problem:body-unreadable",
            ProblemKind::StoreUnavailable => "urn:idem:problem:store-unavailable",
            ProblemKind::RequestInvalid => "urn:idem:problem:request-invalid",
            ProblemKind::CallbackInvalid => "urn:idem:problem:callback-invalid",
            ProblemKind::StatusNotFound => "urn:idem:problem:status-not-found",
            ProblemKind::HandlerFailed => "urn:idem:problem:handler-failed",
            ProblemKind::Internal => "urn:idem:problem:internal",
            ProblemKind::ResponseNotKept => "urn:idem:problem:response-not-kept",
            ProblemKind::RecordUnreadable => "urn:idem:problem:record-unreadable",
            ProblemKind::ShuttingDown => "urn:idem:problem:shutting-down",
            ProblemKind::TooManyKeys => "urn:idem:problem:too-many-keys",
            ProblemKind::StepsChanged => "urn:idem:problem:steps-changed",
            ProblemKind::OperationFailed => "urn:idem:problem:operation-failed",
            ProblemKind::ScopeAmbiguous => "urn:idem:problem:scope-ambiguous",
            ProblemKind::PrincipalMissing => "urn:idem:problem:principal-missing",
        }
    }

    /// The short, fixed `title` member.
    pub fn title(self) -> &'static str {
        match self {
            ProblemKind::KeyMissing => "Idempotency-Key is missing",
            ProblemKind::KeyInvalid => "Idempotency-Key is invalid",
            ProblemKind::KeyReused => "Idempotency-Key reused with a different payload",
            ProblemKind::InProgress => "A request with this Idempotency-Key is in progress",
            ProblemKind::BodyTooLarge => "Request body too large",
            ProblemKind::BodyUnreadable => "Request body could not be read",
            ProblemKind::StoreUnavailable => "Idempotency store unavailable",
            ProblemKind::RequestInvalid => "Request rejected",
            ProblemKind::CallbackInvalid => "Idempotency-Callback refused",
            ProblemKind::StatusNotFound => "Idempotency status not found",
            ProblemKind::HandlerFailed => "Handler failed",
            ProblemKind::Internal => "Idempotency layer misconfigured",
            ProblemKind::ResponseNotKept => "The operation ran; its response was not kept",
            ProblemKind::RecordUnreadable => {
                "The operation ran; its stored response cannot be read"
            }
            ProblemKind::ShuttingDown => "Server shutting down",
            ProblemKind::TooManyKeys => "Too many new idempotency keys",
            ProblemKind::StepsChanged => "The operation's steps changed between attempts",
            ProblemKind::OperationFailed => "The operation could not be finished",
            ProblemKind::ScopeAmbiguous => "Who the request belongs to is ambiguous",
            ProblemKind::PrincipalMissing => "The request does not say who it belongs to",
        }
    }
}

/// One problem response: kind, a specific `detail`, and an optional `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Which case.
    pub kind: ProblemKind,
    /// A human-readable explanation of this occurrence.
    pub detail: String,
    /// Status when it differs from the kind's own (extractor errors keep theirs).
    pub status_override: Option<u16>,
    /// Seconds for the `Retry-After` header.
    pub retry_after: Option<u64>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    type_: &'a str,
    title: &'a str,
    status: u16,
    detail: &'a str,
}

impl Problem {
    /// A problem of `kind` with `detail`.
    pub fn new(kind: ProblemKind, detail: impl Into<String>) -> Self {
        Problem {
            kind,
            detail: detail.into(),
            status_override: None,
            retry_after: None,
        }
    }

    /// Uses `status` instead of the kind's own.
    pub fn with_status(mut self, status: u16) -> Self {
        self.status_override = Some(status);
        self
    }

    /// The HTTP status of this problem.
    pub fn status(&self) -> u16 {
        self.status_override.unwrap_or(self.kind.status())
    }

    /// Adds `Retry-After: secs` (at least 1).
    pub fn retry_after(mut self, secs: u64) -> Self {
        self.retry_after = Some(secs.max(1));
        self
    }

    /// The `application/problem+json` body.
    pub fn to_json(&self) -> Vec<u8> {
        let body = Body {
            type_: self.kind.type_uri(),
            title: self.kind.title(),
            status: self.status(),
            detail: &self.detail,
        };
        // Serializing a struct of strings and a number cannot fail.
        serde_json::to_vec(&body).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_is_rfc9457() {
        let p = Problem::new(ProblemKind::KeyReused, "different body").retry_after(0);
        let v: serde_json::Value = serde_json::from_slice(&p.to_json()).unwrap();
        assert_eq!(v["status"], 422);
        assert_eq!(v["type"], "urn:idem:problem:key-reused");
        assert_eq!(v["detail"], "different body");
        assert_eq!(p.retry_after, Some(1));
    }
}

//! [`Resumed`]: what the completer's re-sent request carries, so that it resumes the operation
//! it claimed — under that operation's storage key and principal — whatever the re-sent request
//! itself would derive.

use actix_web::{HttpMessage, HttpRequest};

use crate::flow::prepare::Keyed;
use crate::problem::{Problem, ProblemKind};
use crate::StorageKey;

/// In the extensions of a request the [completer](crate::Completer) re-sends: the operation it
/// resumes. Only the completer puts it there (extensions never come from the network), and
/// idem runs such a request under the operation's **recorded** principal and storage key,
/// whatever its headers would derive — a re-sent request carries only some of the client's
/// headers, and the credential it carries may have been rotated since.
///
/// An app whose authentication would refuse the re-sent request (its token revoked or rotated
/// since the crash) can let it through by this value, and take the account from
/// [`principal`](Self::principal):
///
/// ```ignore
/// if let Some(resumed) = Resumed::of(req.request()) {
///     // The completer finishing an operation this account started.
///     req.extensions_mut().insert(AccountId(resumed.principal().unwrap_or_default().into()));
///     return next.call(req).await;
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Resumed {
    pub(crate) key: String,
    pub(crate) principal: Option<String>,
    /// How far the request got in idem (see [`Stage`]), for the completer to read afterwards.
    pub(crate) stage: std::sync::Arc<std::sync::atomic::AtomicU8>,
}

/// How far a re-sent request got: what its answer means to the completer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Stage {
    /// It never reached an `#[idempotent]` endpoint (a middleware answered, or the route now
    /// leads elsewhere).
    Outside = 0,
    /// It reached idem, which answered before the handler ran (in progress, a limit, a drain).
    Reached = 1,
    /// Its handler ran (or the operation's failure was recorded): an attempt.
    Ran = 2,
}

impl Stage {
    /// The stage a request's `Resumed::stage` cell says it got to.
    pub(crate) fn of(cell: &std::sync::atomic::AtomicU8) -> Stage {
        match cell.load(std::sync::atomic::Ordering::SeqCst) {
            0 => Stage::Outside,
            1 => Stage::Reached,
            _ => Stage::Ran,
        }
    }
}

/// Notes, on the completer's request `req`, that it got as far as `stage`.
pub(crate) fn reached(req: &HttpRequest, stage: Stage) {
    if let Some(r) = req.extensions().get::<Resumed>() {
        r.stage
            .fetch_max(stage as u8, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Resumed {
    /// The operation `req` resumes, if the completer sent it.
    pub fn of(req: &HttpRequest) -> Option<Resumed> {
        req.extensions().get::<Resumed>().cloned()
    }

    /// The principal the operation was started by, as the app's scope gave it then (`None` for
    /// an operation recorded before idem kept it).
    pub fn principal(&self) -> Option<&str> {
        self.principal.as_deref()
    }

    /// The status id of the operation's record (as in status URLs and logs).
    pub fn status_id(&self) -> &str {
        let at = self.key.len().saturating_sub(crate::secret::ID_LEN);
        self.key.get(at..).unwrap_or(&self.key)
    }
}

/// The recorded principal of a request the completer re-sent.
pub(crate) fn principal(req: &HttpRequest) -> Option<String> {
    req.extensions()
        .get::<Resumed>()
        .and_then(|r| r.principal.clone())
}

/// The keyed request `keyed` as the completer's request must run it: under the record it
/// resumes — derived under the current secret, or under a previous one when the secret was
/// rotated since the operation started (it then keeps that secret's downstream keys). `Err`
/// when neither leads to that record (the endpoint was renamed, or its secret is unknown here):
/// never run, it would start a second operation. Any other request is left as it is.
pub(crate) fn under_recorded<T>(req: &HttpRequest, keyed: Keyed<T>) -> Result<Keyed<T>, Problem> {
    let recorded = match req.extensions().get::<Resumed>() {
        None => return Ok(keyed),
        // Its operation lives under the current secret: it looks nowhere else.
        Some(resumed) if resumed.key == keyed.storage_key.as_str() => {
            return Ok(Keyed {
                earlier: Vec::new(),
                ..keyed
            })
        }
        Some(resumed) => resumed.key.clone(),
    };
    let Some(earlier) = keyed
        .earlier
        .iter()
        .find(|e| e.key.as_str() == recorded)
        .cloned()
    else {
        return Err(mismatch(req, None).unwrap_or_else(|| {
            Problem::new(
                ProblemKind::Internal,
                "the completer's request does not lead to the operation it resumes",
            )
        }));
    };
    // Resumed under a previous secret: counted as a look that found its record is (an
    // operator waits for this counter to stop before forgetting the old secret).
    crate::observe::count(crate::observe::metric::EARLIER_SECRET_TOTAL);
    Ok(Keyed {
        storage_key: earlier.key,
        fingerprint: earlier.fingerprint,
        earlier: Vec::new(),
        derivation: Some(earlier.derivation),
        ..keyed
    })
}

/// `Some(problem)` when `req` is the completer's and `derived` (what its key, endpoint and
/// principal derive) is not the record it resumes: the endpoint was renamed or the secret
/// changed in between. Never run: it would start a second operation.
pub(crate) fn mismatch(req: &HttpRequest, derived: Option<&StorageKey>) -> Option<Problem> {
    let extensions = req.extensions();
    let resumed = extensions.get::<Resumed>()?;
    if derived.is_some_and(|d| d.as_str() == resumed.key) {
        return None;
    }
    tracing::error!(
        record = resumed.status_id(),
        "idem: the completer's request does not lead to the operation it resumes (the endpoint's name, key sources, prefix or secret changed?); not run"
    );
    Some(Problem::new(
        ProblemKind::Internal,
        "the completer's request does not lead to the operation it resumes; it is not run",
    ))
}

/// `Some(problem)` when `req` is the completer's and its `begin` started a new operation
/// (`attempt` 1): the operation it resumes expired (or was reaped) between the claim and this
/// request. Never run: its steps are gone, and its downstream keys would be new ones.
pub(crate) fn started_anew(req: &HttpRequest, attempt: u32) -> Option<Problem> {
    let extensions = req.extensions();
    let resumed = extensions.get::<Resumed>()?;
    if attempt > 1 {
        return None;
    }
    tracing::warn!(
        record = resumed.status_id(),
        "idem: the operation the completer resumes expired before its request ran; not started again"
    );
    Some(Problem::new(
        ProblemKind::Internal,
        "the operation the completer resumes expired; it is not started again",
    ))
}

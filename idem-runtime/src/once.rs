//! Idempotent functions: code that is not an HTTP handler — a queue consumer under at-least-once
//! delivery, a scheduled job, a webhook receiver, an outbound call — run once per key on the
//! same engine, stores and records as the HTTP adapters.

use futures_util::FutureExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::panic::AssertUnwindSafe;
use std::time::Duration;

use crate::actix::Idempotency;
use crate::engine::{Decision, Engine, Ticket};
use crate::flow::execute::{settle, settle_release, ReleaseOnDrop, Verdict};
use crate::key::IdempotencyKey;
use crate::problem::ProblemKind;
use crate::{Fingerprint, Guarantee, KeyError, OnConflict, Policy, StoredResponse};

/// One idempotent function of an app: its name (what its records are found by, like an
/// endpoint's), TTL, lease, and what a duplicate in flight does. From [`Idempotency::once`].
///
/// ```
/// # async fn demo() -> Result<(), idem_runtime::OnceError<std::io::Error>> {
/// use idem_runtime::{Idempotency, MemoryStore};
/// use std::time::Duration;
///
/// let idem = Idempotency::builder().store(MemoryStore::default()).unscoped().build();
/// let apply = idem.once("ledger.apply").ttl(Duration::from_secs(24 * 3600));
/// // The message's own id is the key; its payload the arguments.
/// let receipt: u64 = apply
///     .run("msg-1700000000000-0", &("acct-1", 4200), async || {
///         // The effect, once. Its value is stored and handed to every retry.
///         Ok::<_, std::io::Error>(4200)
///     })
///     .await?;
/// assert_eq!(receipt, 4200);
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(demo()).unwrap();
/// ```
///
/// What a call with a key does: runs `f` when the key is new (or its earlier run failed), and
/// stores its value (JSON) for `ttl`; returns that stored value, deserialized, when the key ran
/// already with the same arguments; refuses ([`OnceError::KeyReused`]) when it ran with other
/// arguments; and while another call with the key runs, waits for its value (`wait`) or refuses
/// ([`OnceError::InProgress`]). An `Err` from `f` or a panic stores nothing: the next call runs
/// it again. Every error says whether the function ran ([`OnceError::ran`]).
///
/// An effect and its record are two writes: a crash between them runs the effect again on the
/// next delivery. Where that matters, `run_in_tx` (feature `postgres`, a `PostgresStore`) commits the
/// effect's SQL and the record in one transaction.
#[derive(Clone)]
pub struct Once {
    idem: Idempotency,
    policy: Policy,
    /// Whether [`Once::lease`] chose the lease (otherwise it follows the ttl).
    lease_set: bool,
}

impl std::fmt::Debug for Once {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Once")
            .field("name", &self.policy.endpoint)
            .field("ttl", &self.policy.ttl)
            .finish_non_exhaustive()
    }
}

/// Why an idempotent function's call did not return its value. [`ran`](Self::ran) says whether
/// the function ran.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OnceError<E> {
    /// The key is not a valid idempotency key (1 to 255 printable ASCII characters). Did not run.
    #[error("invalid idempotency key: {0}")]
    KeyInvalid(KeyError),
    /// The arguments could not be serialized (for the fingerprint). Did not run.
    #[error("the arguments cannot be serialized: {0}")]
    Arguments(String),
    /// The key already ran with other arguments: a new operation needs a new key. Did not run.
    #[error("this key already ran with other arguments")]
    KeyReused,
    /// Another call with this key is running (and `wait` was not set, or ran out): it did not
    /// run here; it may be running elsewhere — call again with the same key for its value.
    #[error("another call with this key is running")]
    InProgress,
    /// The store failed or refused before the function ran (unreachable, full, over a limit).
    /// Did not run; call again with the same key.
    #[error("the idempotency store failed: {0}")]
    Store(String),
    /// The function ran and returned this error; nothing was stored, so the next call with the
    /// key runs it again.
    #[error("the function failed: {0}")]
    Failed(E),
    /// The function panicked; nothing was stored, so the next call runs it again.
    #[error("the function panicked")]
    Panicked,
    /// The key ran before, but its stored value cannot be read as this type (or opened): it is
    /// not run again.
    #[error("the stored result cannot be read: {0}")]
    Unreadable(String),
    /// The function ran in its transaction, and whether `COMMIT` happened is unknown: the next
    /// call with the key returns its value if it committed, runs it once if not.
    #[error("the transaction's commit did not answer: {0}")]
    CommitUnknown(String),
}

impl<E> OnceError<E> {
    /// Whether the function ran: `Some(false)` when it did not, `Some(true)` when it did (its
    /// effects happened, or were rolled back with its transaction as [`Failed`](Self::Failed)
    /// says), `None` when this call cannot know (running elsewhere, a commit unanswered).
    pub fn ran(&self) -> Option<bool> {
        match self {
            OnceError::KeyInvalid(_)
            | OnceError::Arguments(_)
            | OnceError::KeyReused
            | OnceError::Store(_) => Some(false),
            OnceError::Failed(_) | OnceError::Panicked | OnceError::Unreadable(_) => Some(true),
            OnceError::InProgress | OnceError::CommitUnknown(_) => None,
        }
    }
}

/// What `begin` decided for a call.
pub(crate) enum Began<T> {
    /// It ran before: its value.
    Done(T),
    /// Run it, under this lease.
    Run(Ticket),
}

impl Idempotency {
    /// The idempotent function `name`: its records are found by this name and the key, on this
    /// app's default store (see [`Once::store`]), under its secret and prefix. TTL 24 h, lease
    /// 30 s, a duplicate in flight refused ([`Once::wait`] to wait instead).
    pub fn once(&self, name: &'static str) -> Once {
        let mut policy = Policy::new(name);
        policy.name = Some(name);
        Once {
            idem: self.clone(),
            policy,
            lease_set: false,
        }
    }
}

impl Once {
    /// How long a value is kept, and so how long a key is remembered (default 24 h). The
    /// default lease follows it: 30 s, or half a shorter `ttl`, as on `#[idempotent]`.
    ///
    /// # Panics
    ///
    /// When `ttl` is outside 1 s ..= 30 days, or a lease set with [`lease`](Self::lease) is not
    /// shorter than it: the attribute refuses both at compile time (a lease that outlives its
    /// record cannot fence anything).
    pub fn ttl(mut self, ttl: Duration) -> Self {
        in_range(self.policy.endpoint, "ttl", ttl, TTL_RANGE);
        self.policy.ttl = ttl;
        if !self.lease_set {
            self.policy.lease = Policy::DEFAULT_LEASE.min(ttl / 2);
        }
        self.check_lease();
        self
    }

    /// How long a running call holds its key before another may take it over; renewed while
    /// the function runs (default 30 s, or half a shorter `ttl`).
    ///
    /// # Panics
    ///
    /// When `lease` is outside 100 ms ..= 1 h, or not shorter than the ttl (see
    /// [`ttl`](Self::ttl)), as the attribute refuses them.
    pub fn lease(mut self, lease: Duration) -> Self {
        in_range(self.policy.endpoint, "lease", lease, LEASE_RANGE);
        self.policy.lease = lease;
        self.lease_set = true;
        self.check_lease();
        self
    }

    /// The attribute's rule between the two: the lease is shorter than the ttl.
    fn check_lease(&self) {
        let (lease, ttl) = (self.policy.lease, self.policy.ttl);
        assert!(
            lease < ttl,
            "idem: `{}`: the lease ({lease:?}) must be shorter than the ttl ({ttl:?})",
            self.policy.endpoint
        );
    }

    /// A duplicate call while one runs waits up to `timeout` for its value, instead of
    /// [`OnceError::InProgress`] at once.
    ///
    /// # Panics
    ///
    /// When `timeout` is outside 1 ms ..= 300 s, as the attribute's `wait_timeout`.
    pub fn wait(mut self, timeout: Duration) -> Self {
        in_range(self.policy.endpoint, "wait", timeout, WAIT_RANGE);
        self.policy.on_conflict = OnConflict::Wait;
        self.policy.wait_timeout = timeout;
        self
    }

    /// The named store of the app (`IdempotencyBuilder::named_store`) instead of its default.
    pub fn store(mut self, name: &'static str) -> Self {
        self.policy.store = Some(name);
        self
    }

    /// Fingerprints only these fields of the arguments (JSON pointers into their serialized
    /// form, canonical: key order and number spelling do not matter), like
    /// `guarantee = "semantic"`: a retry whose other fields differ (a timestamp, a trace id) is
    /// the same call.
    pub fn semantic(mut self, fields: &'static [&'static str]) -> Self {
        self.policy.guarantee = Guarantee::Semantic;
        self.policy.fingerprint = fields;
        self
    }

    /// Runs `f` once for `key` and `args`; see [`Once`] for what each case returns.
    /// Run inline: dropping the returned future while `f` runs releases the key, and the next
    /// call runs `f` again.
    pub async fn run<A, T, E, F>(&self, key: &str, args: &A, f: F) -> Result<T, OnceError<E>>
    where
        A: Serialize + ?Sized,
        T: Serialize + DeserializeOwned,
        F: AsyncFnOnce() -> Result<T, E>,
    {
        let ticket = match self.begin(key, args).await? {
            Began::Done(value) => return Ok(value),
            Began::Run(ticket) => ticket,
        };
        let mut armed = ReleaseOnDrop::new(&self.idem, &ticket);
        let ran = ticket
            .keep_alive(AssertUnwindSafe(f()).catch_unwind())
            .await;
        armed.disarm();
        match ran {
            Ok(Ok(value)) => {
                settle(&self.idem, &ticket, Verdict::Keep((), stored(&value))).await;
                Ok(value)
            }
            Ok(Err(e)) => {
                settle_release(&self.idem, &ticket).await;
                Err(OnceError::Failed(e))
            }
            Err(_) => {
                tracing::error!(
                    function = self.policy.endpoint,
                    "idem: an idempotent function panicked; its key was released"
                );
                settle_release(&self.idem, &ticket).await;
                Err(OnceError::Panicked)
            }
        }
    }

    /// The engine this function's records live on.
    pub(crate) fn engine(&self) -> Result<&std::sync::Arc<Engine>, String> {
        self.idem.engine_for(self.policy.store).ok_or_else(|| {
            format!(
                "the store `{}` is not registered on the Idempotency builder",
                self.policy.store.unwrap_or_default()
            )
        })
    }

    /// The app this function belongs to.
    #[cfg(feature = "postgres")]
    pub(crate) fn idem(&self) -> &Idempotency {
        &self.idem
    }

    /// Finds `key`'s record for `args`: its value, or the lease to run under.
    pub(crate) async fn begin<A, T, E>(&self, key: &str, args: &A) -> Result<Began<T>, OnceError<E>>
    where
        A: Serialize + ?Sized,
        T: DeserializeOwned,
    {
        let key = IdempotencyKey::parse(key.as_bytes()).map_err(OnceError::KeyInvalid)?;
        let engine = self.engine().map_err(OnceError::Store)?;
        let body = serde_json::to_vec(args).map_err(|e| OnceError::Arguments(e.to_string()))?;
        let policy = &self.policy;
        let name = policy.endpoint;
        let fingerprint = match policy.guarantee {
            Guarantee::Semantic => Fingerprint::semantic("CALL", name, policy.fingerprint, &body),
            _ => Fingerprint::strict("CALL", name, "application/json", &body),
        };
        let shared = &self.idem.shared;
        let under = |d: &crate::secret::KeyDerivation| {
            let storage_key = d
                .storage_key(&shared.prefix, name, b"", &key)
                .sealed_with(shared.seal_for(d, key.as_str()));
            (storage_key, d.fingerprint(fingerprint))
        };
        let (storage_key, fingerprint) = under(&shared.derivation);
        let earlier: Vec<_> = shared
            .earlier
            .iter()
            .map(|d| {
                let (key, fingerprint) = under(d);
                crate::rotation::Earlier {
                    key,
                    fingerprint,
                    derivation: d.clone(),
                }
            })
            .collect();
        match engine
            .begin(policy, storage_key, fingerprint, &earlier)
            .await
        {
            Decision::Replay { response, .. } => serde_json::from_slice(response.body())
                .map(Began::Done)
                .map_err(|e| OnceError::Unreadable(e.to_string())),
            Decision::Execute(ticket) => Ok(Began::Run(ticket)),
            Decision::Reject(p) => Err(match p.kind {
                ProblemKind::KeyReused => OnceError::KeyReused,
                ProblemKind::InProgress => OnceError::InProgress,
                ProblemKind::RecordUnreadable => OnceError::Unreadable(p.detail),
                _ => OnceError::Store(p.detail),
            }),
            // Neither arises: a function fails closed and has no status resource or webhook.
            Decision::Unprotected | Decision::Accepted(_) | Decision::Webhook(_) => {
                Err(OnceError::Store("the store could not be used".into()))
            }
        }
    }
}

/// The record of a value: JSON, or — when it cannot be serialized — a marker that no type
/// reads, so that the call is never run again for want of a readable value.
pub(crate) fn stored<T: Serialize>(value: &T) -> StoredResponse {
    let body = serde_json::to_vec(value).unwrap_or_else(|error| {
        tracing::error!(%error, "idem: an idempotent function's value cannot be serialized; its record keeps a marker, and calls with its key get OnceError::Unreadable");
        b"\"idem: the value could not be serialized\" trailing".to_vec()
    });
    StoredResponse::new(200, [("content-type", "application/json")], body)
}

/// The ranges the attribute accepts (`idem-macros`' `validate.rs`): ttl, lease, wait.
const TTL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(30 * 86_400));
const LEASE_RANGE: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(3600));
const WAIT_RANGE: (Duration, Duration) = (Duration::from_millis(1), Duration::from_secs(300));

/// Panics, naming the function and the option, when `value` is outside `(low, high)`.
fn in_range(name: &str, option: &str, value: Duration, (low, high): (Duration, Duration)) {
    assert!(
        (low..=high).contains(&value),
        "idem: `{name}`: `{option}` ({value:?}) must lie in {low:?} ..= {high:?}, as on #[idempotent]"
    );
}

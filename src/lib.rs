#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc = include_str!("../README.md")]
//!
//! ---
//!
//! # The API
//!
//! What to read next: the attribute's options on [`idempotent`]; the app's settings on
//! [`IdempotencyBuilder`]; the stores ([`MemoryStore`], `RedisStore`, `PostgresStore`); the
//! answers a client can get on [`ProblemKind`]. The repository's `docs/` has the failure
//! behaviour, the stores in production and the architecture.

#[doc = include_str!("../docs/attribute.md")]
pub use idem_macros::idempotent;

pub use idem_runtime::{
    form_key, form_key_input, Guarantee, Idempotency, IdempotencyBuilder, IdempotencyContext,
    NoScope, OnConflict, OnStoreError, OperatorError, Problem, ProblemKind, RecordInfo,
    ScopeChosen, Scoped, DEFAULT_REPLAYED, NEVER_REPLAYED,
};

/// Idempotent functions (not HTTP handlers): `idem.once("name").run(key, &args, async || …)`.
pub use idem_runtime::{Once, OnceError};

/// Stores: the ones idem ships, and what a store of your own implements.
pub use idem_runtime::{
    Begin, CachedStore, Fenced, FencingToken, Fingerprint, IdempotencyKey, Invalidation, KeyError,
    MemoryStore, MemoryStoreBuilder, Record, RecordState, StorageKey, Store, StoreError,
    StoredHeaders, StoredResponse, TransactionalStore,
};

#[cfg(feature = "redis")]
pub use idem_runtime::{RedisStore, RedisStoreBuilder};

#[cfg(feature = "postgres")]
pub use idem_runtime::{
    deadpool_postgres, tokio_postgres, Completer, CompleterBuilder, IdemTx, PostgresStore,
    PostgresStoreBuilder, PostgresTls, Resumed, StepError, Steps, TxClient, TxEnded,
};

pub use idem_runtime::webhook;

#[cfg(feature = "client")]
pub use idem_runtime::client;

#[cfg(feature = "conformance")]
pub use idem_runtime::{conformance, store_conformance_tests};

#[cfg(feature = "testing")]
pub use idem_runtime::testing;

#[cfg(feature = "utoipa")]
pub use idem_runtime::openapi;

/// The idempotency layer for tower services (axum, hyper): feature `tower`.
#[cfg(feature = "tower")]
pub use idem_runtime::tower;

/// One endpoint's policy for the tower layer (`idem::tower::IdempotencyLayer`, feature `tower`): the options of [`idempotent`], checked the same way at compile time, as a
/// `&'static` policy. `name` is required — a tower layer does not know the route a request
/// matched, and the name is what records are found by: give an actix-web handler of the same
/// endpoint the same name and both serve the same records.
///
/// ```
/// let policy = idem::policy!(name = "payments.create", ttl = "24h", on_conflict = "wait");
/// # let _ = policy;
/// ```
///
/// ```compile_fail
/// // No name: refused.
/// let policy = idem::policy!(ttl = "24h");
/// ```
pub use idem_macros::policy;

/// What `#[idempotent]` expands to calls. **Not public API**: it changes with the macro in any
/// release, and its path carries the version so that mismatched crates fail to compile.
#[doc(hidden)]
pub use idem_runtime::__private_v0_1;

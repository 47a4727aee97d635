//! The engine of [idem](https://crates.io/crates/idem): `Idempotency-Key` parsing, request
//! fingerprints, the record state machine, stores, and the actix-web adapter.
//!
//! Users depend on the `idem` facade, which re-exports this crate and the `#[idempotent]`
//! attribute. The core (keys, fingerprints, records, stores, [`engine`]) knows nothing of any web
//! framework; [`actix`] adapts it to actix-web.
#![warn(missing_docs)]

pub mod actix;
mod admission;
pub mod canonical;
#[cfg(feature = "client")]
pub mod client;
#[cfg(feature = "conformance")]
pub mod conformance;
pub mod engine;
pub mod fingerprint;
pub mod key;
pub mod key_source;
pub mod observe;
pub mod policy;
pub mod problem;
pub mod record;
pub mod secret;
pub mod store;
mod ticket;

#[doc(hidden)]
pub mod __private;

#[cfg(feature = "postgres")]
pub use actix::{IdemTx, TxClient, TxEnded};
pub use actix::{
    Idempotency, IdempotencyBuilder, IdempotencyContext, NoScope, OperatorError, RecordInfo,
    ScopeChosen, Scoped,
};
/// The connection pool `PostgresStore` and `IdemTx` use, re-exported for the same reason.
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
pub use engine::Engine;
pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError, StorageKey};
pub use key_source::{form_key, form_key_input, KeySource};
pub use policy::{Guarantee, OnConflict, OnStoreError, Policy};
pub use problem::{Problem, ProblemKind};
pub use record::{FencingToken, Record, RecordState, StoredResponse};
pub use store::memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresStore, PostgresStoreBuilder, Tls as PostgresTls};
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};
pub use store::{Begin, Fenced, Store, StoreError};
/// The PostgreSQL client `IdemTx` hands out, re-exported so that handlers use the same version.
#[cfg(feature = "postgres")]
pub use tokio_postgres;

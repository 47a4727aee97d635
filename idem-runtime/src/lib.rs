//! The engine of [idem](https://crates.io/crates/idem): `Idempotency-Key` parsing, request
//! fingerprints, the record state machine, stores, and the actix-web adapter.
//!
//! Users depend on the `idem` facade, which re-exports what they use of this crate and the
//! `#[idempotent]` attribute. The core (keys, fingerprints, records, stores, the engine) knows
//! nothing of any web framework; the `actix` module adapts it to actix-web.
//!
//! Only what the facade re-exports is public here; the modules are not.
#![warn(missing_docs, missing_debug_implementations, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod actix;
mod admission;
mod canonical;
#[cfg(feature = "client")]
pub mod client;
mod clock;
#[cfg(feature = "conformance")]
pub mod conformance;
pub(crate) mod engine;
pub(crate) mod fingerprint;
mod flow;
pub(crate) mod key;
mod key_source;
pub(crate) mod observe;
mod once;
#[cfg(feature = "postgres")]
mod once_tx;
#[cfg(feature = "utoipa")]
#[cfg_attr(docsrs, doc(cfg(feature = "utoipa")))]
pub mod openapi;
pub(crate) mod policy;
mod principal;
pub(crate) mod problem;
pub(crate) mod record;
mod rotation;
mod seal;
pub(crate) mod secret;
mod store;
mod stored_response;
#[cfg(feature = "testing")]
#[cfg_attr(docsrs, doc(cfg(feature = "testing")))]
pub mod testing;
mod ticket;
#[cfg(feature = "tower")]
#[cfg_attr(docsrs, doc(cfg(feature = "tower")))]
pub mod tower;
pub mod webhook;

#[doc(hidden)]
#[path = "private.rs"]
pub mod __private_v0_1;

/// Internals reached by this crate's own property tests and benches. **Not public API.**
#[doc(hidden)]
pub mod __support {
    /// The canonical JSON parser fingerprints use.
    pub mod canonical {
        pub use crate::canonical::*;
    }
    /// Key sources: where a request's key is read from.
    pub mod key_source {
        pub use crate::key_source::*;
    }
    pub use crate::key::parse_key;

    /// One record's sealing as a request with an app secret does it (`seal.rs`), for the micro
    /// benchmark: each call derives the record key (HKDF) and runs the AEAD.
    #[derive(Debug)]
    pub struct RecordSealing(crate::seal::RecordSeal);

    impl RecordSealing {
        /// Sealing under `secret` for a request carrying `raw`.
        pub fn new(secret: &[u8], raw: &str) -> Self {
            let sealer = crate::seal::Sealer::new(&[secret.to_vec()])
                .unwrap_or_else(|| unreachable!("one secret"));
            RecordSealing(sealer.record(raw))
        }

        /// `response` sealed for the record `storage_key`.
        pub fn seal(
            &self,
            storage_key: &str,
            response: &crate::StoredResponse,
        ) -> crate::StoredResponse {
            self.0.seal(storage_key, response)
        }

        /// The response a sealed record holds, if it opens.
        pub fn open(
            &self,
            storage_key: &str,
            sealed: &crate::StoredResponse,
        ) -> Option<crate::StoredResponse> {
            self.0.open(storage_key, sealed).ok()
        }
    }
}

#[cfg(feature = "postgres")]
pub use actix::{
    Completer, CompleterBuilder, IdemTx, Resumed, StepError, Steps, TxClient, TxEnded,
};
pub use actix::{
    Idempotency, IdempotencyBuilder, IdempotencyContext, NoScope, OperatorError, RecordInfo,
    ScopeChosen, Scoped,
};
/// The connection pool `PostgresStore` and `IdemTx` use, re-exported for the same reason.
#[cfg(feature = "postgres")]
pub use deadpool_postgres;
pub use engine::{DEFAULT_REPLAYED, NEVER_REPLAYED};
pub use fingerprint::Fingerprint;
pub use key::{IdempotencyKey, KeyError, StorageKey};
pub(crate) use key_source::KeySource;
pub use key_source::{form_key, form_key_input};
pub use once::{Once, OnceError};
pub(crate) use policy::Policy;
pub use policy::{Guarantee, OnConflict, OnStoreError};
pub use problem::{Problem, ProblemKind};
pub use record::{FencingToken, Record, RecordState};
pub use store::cache::CachedStore;
pub use store::memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "postgres")]
pub use store::postgres::{PostgresStore, PostgresStoreBuilder, Tls as PostgresTls};
#[cfg(feature = "redis")]
pub use store::redis::{RedisStore, RedisStoreBuilder};
pub use store::{Begin, Fenced, Invalidation, Store, StoreError, TransactionalStore};
pub use stored_response::{DecodeError, StoredHeaders, StoredResponse};
/// The PostgreSQL client `IdemTx` hands out, re-exported so that handlers use the same version.
#[cfg(feature = "postgres")]
pub use tokio_postgres;

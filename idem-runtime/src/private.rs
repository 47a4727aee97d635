//! What the code `#[idempotent]` generates calls.
//!
//! **Not public API.** Nothing here is covered by semver: it changes with the macro, in any
//! release. Its path carries the version (`__private_v0_1`), so that an `idem-macros` and an
//! `idem-runtime` of different versions fail to compile together instead of misbehaving.

pub use crate::actix::{run, HandlerResult};
pub use crate::key_source::KeySource;
pub use crate::policy::{Guarantee, OnConflict, OnStoreError, Policy};
pub use actix_web;

/// `Duration::from_millis` as a const fn path the macro can name.
pub const fn millis(ms: u64) -> core::time::Duration {
    core::time::Duration::from_millis(ms)
}

/// Called in a constant by endpoints with `on_conflict = "webhook"`: compiles to nothing with
/// the `webhook` feature, and is a compile error naming the feature without it.
pub const fn needs_webhook_feature() {
    #[cfg(not(feature = "webhook"))]
    panic!(
        "`on_conflict = \"webhook\"` needs idem's `webhook` cargo feature (on by default): \
         enable it, or choose another `on_conflict`"
    );
}

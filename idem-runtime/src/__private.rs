//! What the code `#[idempotent]` generates calls. Not public API: it may change in any release.

pub use crate::actix::{run, HandlerResult};
pub use crate::key_source::KeySource;
pub use crate::policy::{Guarantee, OnConflict, OnStoreError, Policy};
pub use actix_web;

/// `Duration::from_millis` as a const fn path the macro can name.
pub const fn millis(ms: u64) -> core::time::Duration {
    core::time::Duration::from_millis(ms)
}

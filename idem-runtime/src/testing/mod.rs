//! Testing kit (cargo feature `testing`): prove *your* handlers idempotent, and see what your
//! app does when its store misbehaves.
//!
//! - [`FaultyStore`]: wrap any store and script failures, delays and lost answers per operation.
//! - [`Idempotency::disabled`](crate::Idempotency::disabled): handlers alone, for unit tests.
//! - [`assert_idempotent`]: retries, parallel duplicates, a changed body and a client hang-up
//!   against your running app, with every misbehaviour in one failure message.

mod faulty;
mod probe;

pub use faulty::{Fault, FaultyStore, Op};
pub use probe::{assert_idempotent, check_idempotent, Probe, Report};

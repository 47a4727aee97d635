//! Testing kit (cargo feature `testing`): prove *your* handlers idempotent, and see what your
//! app does when its store misbehaves.
//!
//! - [`FaultyStore`]: wrap any store and script failures, delays and lost answers per operation.
//! - [`Idempotency::disabled`](crate::Idempotency::disabled): handlers alone, for unit tests.
//! - [`assert_idempotent`] (an app in the test, from `actix_web::test::init_service`) and
//!   [`assert_idempotent_at`] (a running server): retries, parallel duplicates, a changed body and
//!   a client hang-up, with every misbehaviour in one failure message.

mod faulty;
mod probe;

pub use faulty::{Condition, Fault, FaultyStore, Op};
pub use probe::{
    assert_idempotent, assert_idempotent_at, check_idempotent, check_idempotent_at, Probe, Report,
    TestApp,
};

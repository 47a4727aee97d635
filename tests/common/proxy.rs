//! The TCP fault proxy lives with the simulator, which uses it too.
#[allow(unused_imports)]
pub use idem_sim::proxy::FaultProxy;

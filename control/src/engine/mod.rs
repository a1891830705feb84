//! The rollout engine: decides what each service's route serves and why.
//!
//! - [`rollout`]: the pure state machine, one state type per strategy; time is an argument.
//! - [`analysis`]: conditions (CEL) and metric providers (builtin, Prometheus, web).
//! - [`state`]: atomic persistence of rollout state in `stateDir`.
//! - [`driver`]: the single task that owns the route table's `Publisher` and runs the engine.

pub mod analysis;
pub mod driver;
pub mod hooks;
pub mod rollout;
pub mod state;

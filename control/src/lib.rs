//! weir's control plane and the `weir` binary's library half.
//!
//! # Layout
//! - [`app`]: wiring — loads the config, binds listeners, starts the data plane, the driver, the
//!   admin API and the reload watcher; drains on shutdown.
//! - [`driver`]: the single owner of the route table's `Publisher`: applies configs, ticks
//!   rollouts, takes measurements, runs operator commands, persists state.
//! - [`rollout`]: the pure rollout state machine (steps, analysis runs, Flagger progression).
//! - [`analysis`]: conditions (CEL) and metric providers (builtin, Prometheus, web).
//! - [`state`]: atomic persistence of rollout state in `stateDir`.
//! - [`status`]: the serializable view the admin API and CLI show.
//! - [`reload`]: file watching (notify + debouncer), SIGHUP, loading and certificate reading.
//! - [`admin`]: the admin HTTP API.
//! - [`telemetry`]: logging setup.

pub mod admin;
pub mod analysis;
pub mod app;
pub mod backend;
pub mod driver;
pub mod reload;
pub mod rollout;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod traffic;

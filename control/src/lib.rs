//! weir's control plane and the `weir` binary's library half.
//!
//! # Layout
//! - [`app`]: wiring — loads the config, binds listeners, starts the data plane, the driver, the
//!   admin API and the reload watcher; drains on shutdown.
//! - [`driver`]: the single owner of the route table's `Publisher`; applies configs.
//! - [`reload`]: file watching (notify + debouncer), SIGHUP, loading and certificate reading.
//! - [`admin`]: the admin HTTP API (`/metrics`, `/healthz`, `/readyz`).
//! - [`telemetry`]: logging setup.

pub mod admin;
pub mod app;
pub mod driver;
pub mod reload;
pub mod telemetry;

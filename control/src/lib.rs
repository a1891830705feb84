//! weir's control plane and the `weir` binary's library half.
//!
//! # Layout
//! - [`acme`]: automatic certificates (`listeners[].tls.acme`): orders, renewals, the challenge
//!   store handed to the data plane.
//! - [`app`]: wiring — loads the config, binds listeners, starts the data plane, the driver, the
//!   admin API and the reload watcher; drains on shutdown.
//! - [`engine`]: the rollout engine — the pure per-strategy state machines, analysis (conditions and
//!   providers), persistence, and the driver that is the only writer of the route table.
//! - [`api`]: the admin HTTP server and the versioned types it serves (`/api/v1`), which are not
//!   the persisted state.
//! - [`health`]: active health checks of upstreams (`services[].healthCheck`), one task per
//!   upstream, flipping the data plane's shared health state.
//! - [`reload`]: the file watcher (notify + debouncer), SIGHUP, loading and certificate reading.
//! - [`resolve`]: upstream host names, resolved at load and re-resolved on a timer off the
//!   control thread.
//! - [`demo`]: demo backends and a paced traffic generator, for `weir demo`, tests and benchmarks.
//! - [`import`]: `weir import`: Argo Rollouts and Flagger manifests → a weir config.
//! - [`telemetry`]: logging setup.
//! - [`memory`]: memory-pressure shedding (`limits.maxMemory`): the RSS sampler, cgroup limits.
//! - [`loadtest`]: the built-in load test (`webhooks[].loadTest`): paced traffic to a canary
//!   through the data plane, pinned to its version.
//! - [`listeners`]: listener settings on reload (new connections get them) and the listener
//!   changes that need a restart.
//! - [`notify`]: notifications (`notifications[]`): rollout events posted to Slack, Teams,
//!   Discord or any JSON endpoint, off the control loop.
//! - [`state_dir`]: where state lives without `stateDir` (`$STATE_DIRECTORY`, or next to the
//!   config file); [`config_report`]: the config generation and digest weir applied.
//! - [`series`]: the dashboard's per-version time series (rate, success, latency), a bounded
//!   ring sampled from the in-process stats.
//! - [`upgrade`]: zero-downtime restart and binary upgrade (socket hand-over to a new process).
//!
//! The operator CLI (`weir get`, `promote`, …) and the `weir demo` runner live with the binary
//! (`src/main.rs`, `src/cli/`): they only talk to the admin API.

pub mod acme;
pub mod api;
pub mod app;
pub mod config_report;
pub mod demo;
pub mod engine;
pub mod health;
pub mod import;
pub mod listeners;
pub mod loadtest;
pub mod memory;
pub mod notify;
pub mod reload;
pub mod resolve;
pub mod series;
pub mod state_dir;
pub mod telemetry;
pub mod upgrade;

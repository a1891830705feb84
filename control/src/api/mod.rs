//! The admin API: the HTTP server (`/metrics`, health, `/api/v1/…`, SSE) and the versioned types it
//! serves. The types in [`v1`] are a view built from the engine's state, never the persisted state
//! itself, so the state file can change shape without breaking API clients.

pub mod dashboard;
pub mod metrics;
pub mod server;
pub mod v1;

//! Demo backends and a paced traffic generator: what `weir demo`, the end-to-end tests and the
//! benchmarks run against.

pub mod backend;
pub mod traffic;

//! [`Weir`]: the whole of weir in-process — `weir_control::app::start` on a config file in a
//! temporary folder, the way `weir run` starts it — with helpers to rewrite that file (in place or
//! atomically, like editors do), follow the route table generation and wait for a service's rollout
//! status to reach a state.
//!
//! Config templates name addresses as `${name}` ([`fill`]); listeners and the admin API should be on
//! `127.0.0.1:0` (the bound ports are in [`Weir::addr`] and [`Weir::admin`]).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tempfile::TempDir;
use tokio::time::Instant;
use weir_control::api::v1::{ServiceStatus, Status};
use weir_control::app::{self, RunOptions, Running};

/// The listener and admin blocks most tests use: everything on `127.0.0.1:0`.
pub const HEADER: &str =
    "listeners:\n  - name: public\n    address: 127.0.0.1:0\nadmin:\n  address: 127.0.0.1:0\n";

/// Replaces every `${name}` in `template` with the address of the same name; panics on a
/// placeholder without a value.
pub fn fill(template: &str, vars: &[(&str, SocketAddr)]) -> String {
    let mut text = template.to_string();
    for (name, addr) in vars {
        text = text.replace(&format!("${{{name}}}"), &addr.to_string());
    }
    if let Some(at) = text.find("${") {
        let rest = &text[at..];
        let end = rest.find('}').map_or(rest.len(), |i| i + 1);
        panic!("no value for placeholder {} in test config", &rest[..end]);
    }
    text
}

/// How [`Weir`] runs.
#[derive(Clone, Debug)]
pub struct Options {
    /// How often the config file is re-read besides file events (default 200 ms; make it long to
    /// test the file watcher alone).
    pub poll_interval: Duration,
    /// Data-plane worker threads (default 1).
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            poll_interval: Duration::from_millis(200),
            workers: 1,
        }
    }
}

/// A running weir on a config file in its own temporary folder. Dropping it (e.g. when a test
/// panics) drops the data plane's server handle, which stops the workers; [`Weir::shutdown`] also
/// waits for them.
pub struct Weir {
    dir: TempDir,
    path: PathBuf,
    running: Option<Running>,
}

impl Weir {
    /// Writes `yaml` to `weir.yaml` in a new temporary folder and starts weir on it.
    pub async fn start(yaml: &str) -> Weir {
        Weir::start_with(yaml, Options::default()).await
    }

    /// [`Weir::start`] with options.
    pub async fn start_with(yaml: &str, options: Options) -> Weir {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, yaml).expect("write the config");
        Weir::start_at(dir, path, options).await
    }

    /// Starts weir on `path` (inside `dir`, which the caller prepared).
    pub async fn start_at(dir: TempDir, path: PathBuf, options: Options) -> Weir {
        let running = app::start(RunOptions {
            config_path: path.clone(),
            workers: options.workers,
            drain_timeout: Duration::from_secs(2),
            access_log: false,
            access_log_format: Default::default(),
            poll_interval: options.poll_interval,
        })
        .await
        .unwrap_or_else(|error| panic!("weir does not start: {error}"));
        Weir {
            dir,
            path,
            running: Some(running),
        }
    }

    /// [`Weir::start`] resolving upstream host names with `lookup` instead of the system
    /// resolver; the start's error if weir does not start.
    pub async fn try_start_with_lookup(
        yaml: &str,
        lookup: weir_control::resolve::Lookup,
    ) -> Result<Weir, app::StartError> {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let path = dir.path().join("weir.yaml");
        std::fs::write(&path, yaml).expect("write the config");
        let options = RunOptions {
            config_path: path.clone(),
            workers: 1,
            drain_timeout: Duration::from_secs(2),
            access_log: false,
            access_log_format: Default::default(),
            poll_interval: Options::default().poll_interval,
        };
        let mut inherited = weir_control::upgrade::Inherited::default();
        let running = app::start_with_lookup(options, &mut inherited, lookup).await?;
        Ok(Weir {
            dir,
            path,
            running: Some(running),
        })
    }

    /// The running weir.
    pub fn running(&self) -> &Running {
        self.running.as_ref().expect("weir is running")
    }

    /// The temporary folder holding the config.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The config file weir watches.
    pub fn config_path(&self) -> &Path {
        &self.path
    }

    /// The first client listener's address.
    pub fn addr(&self) -> SocketAddr {
        self.running().listener_addrs()[0].1
    }

    /// The admin API's address.
    pub fn admin(&self) -> SocketAddr {
        self.running().admin_addr()
    }

    /// The route table generation now.
    pub fn generation(&self) -> u64 {
        *self.running().generation().borrow()
    }

    /// Waits until the generation is past `after`; returns it. Panics after `timeout`.
    pub async fn wait_generation_after(&self, after: u64, timeout: Duration) -> u64 {
        let mut generation = self.running().generation();
        let waited = tokio::time::timeout(timeout, generation.wait_for(|g| *g > after)).await;
        match waited {
            Ok(Ok(generation)) => *generation,
            Ok(Err(_)) => panic!("the driver stopped"),
            Err(_) => panic!("after {timeout:?}: the generation is still {after}"),
        }
    }

    /// Every service's status now.
    pub fn statuses(&self) -> Arc<Status> {
        self.running().driver().status()
    }

    /// `service`'s status now (with details).
    pub fn status(&self, service: &str) -> ServiceStatus {
        self.statuses()
            .service(service)
            .unwrap_or_else(|| panic!("no service {service:?}"))
            .clone()
    }

    /// Waits until `service`'s status satisfies `done` and returns that status; panics with the
    /// last status after `timeout`.
    pub async fn wait_until(
        &self,
        service: &str,
        timeout: Duration,
        what: &str,
        done: impl Fn(&ServiceStatus) -> bool,
    ) -> ServiceStatus {
        let mut statuses = self.running().driver().watch_status();
        let deadline = Instant::now() + timeout;
        loop {
            let current = statuses.borrow_and_update().service(service).cloned();
            if let Some(status) = current.as_ref().filter(|s| done(s)) {
                return status.clone();
            }
            match tokio::time::timeout_at(deadline, statuses.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => panic!("the driver stopped while waiting for {what}"),
                Err(_) => panic!(
                    "after {timeout:?}, {service} never got to {what}; last status: {}",
                    describe(current.as_ref())
                ),
            }
        }
    }

    /// Overwrites the config file in place (truncate and write, like `echo > file`).
    pub fn write_in_place(&self, text: &str) {
        std::fs::write(&self.path, text).expect("write the config in place");
    }

    /// Replaces the config file atomically: writes a temporary file next to it and renames it over
    /// the config (what most editors and config-management tools do).
    pub fn write_atomic(&self, text: &str) {
        let tmp = self.dir.path().join(".weir.yaml.swp");
        std::fs::write(&tmp, text).expect("write the temporary config");
        std::fs::rename(&tmp, &self.path).expect("rename the config into place");
    }

    /// Stops weir: drains the data plane and stops every task.
    pub async fn shutdown(mut self) {
        if let Some(running) = self.running.take() {
            tokio::time::timeout(Duration::from_secs(15), running.shutdown())
                .await
                .expect("weir stops within 15 s");
        }
    }
}

/// A status as one line, for failure messages.
pub fn describe(status: Option<&ServiceStatus>) -> String {
    match status {
        None => "none".into(),
        Some(s) => format!(
            "phase {:?}, revision {}, step {}/{}, weight {}, stable {}, canary {:?}: {}",
            s.phase,
            s.revision,
            s.step_index,
            s.step_count,
            s.canary_weight,
            s.stable_version,
            s.canary_version,
            s.message
        ),
    }
}

//! Config reloads: watch the config file (and the certificate files it names) with notify's
//! debouncer, reload on SIGHUP, and hand every successfully loaded config to the driver.
//!
//! The watcher watches folders, not files, so that editors that write a temp file and rename it, and
//! config-management tools that swap a symlink, are both seen. Every trigger re-reads the files and
//! compares their bytes with the last attempt, so a burst of events is one reload and an unchanged
//! file is none. A file that does not load is logged with every problem and counted; the driver
//! never hears of it and the last good config keeps serving.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::mpsc;
use weir_config::{ConfigError, Model};
use weir_proxy::routes::TlsMaterial;
use weir_proxy::tls::CertificatePem;

mod expressions;
mod upstream_ca;

/// The bytes of the config file and of every file it names, by path.
type Fingerprint = Vec<(PathBuf, Vec<u8>)>;

/// A config that loaded, with the certificate material its TLS listeners need.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The validated model.
    pub model: Model,
    /// PEM material by listener name.
    pub tls: BTreeMap<String, TlsMaterial>,
    /// The bytes of the config file and every certificate file, to tell real changes from noise.
    fingerprint: Vec<(PathBuf, Vec<u8>)>,
}

impl Loaded {
    /// The config file's bytes this was loaded from.
    pub fn config_bytes(&self) -> &[u8] {
        self.fingerprint
            .first()
            .map_or(&[], |(_, bytes)| bytes.as_slice())
    }
}

/// Why a config could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The file did not load or validate.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A certificate or key file could not be read.
    #[error("{at}: cannot read {path}: {source}")]
    ReadCertificate {
        /// Field path of the file in the config.
        at: String,
        /// The file.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A version's `tls.caFile` (at `at`) is not a usable CA file.
    #[error("{at}: {source}")]
    UpstreamCa {
        /// Field path of the file in the config.
        at: String,
        /// What is wrong with it.
        #[source]
        source: weir_proxy::UpstreamTlsError,
    },
    /// Conditions or `jsonPath`s that do not compile, one line each with its field path.
    #[error("{}", .0.join("\n"))]
    Expressions(Vec<String>),
    /// A certificate or key could not be used.
    #[error("listeners[{listener}].tls: {source}")]
    Tls {
        /// Listener index.
        listener: usize,
        /// The TLS error.
        #[source]
        source: weir_proxy::tls::TlsError,
    },
}

impl ReloadError {
    /// One line per problem.
    pub fn problems(&self) -> Vec<String> {
        match self {
            ReloadError::Config(error) => error.problems(),
            ReloadError::Expressions(problems) => problems.clone(),
            other => vec![other.to_string()],
        }
    }
}

/// Counts reload attempts by result (`weir_config_reloads_total{result}`).
pub type ReloadCounter = Family<Vec<(&'static str, &'static str)>, Counter>;

/// Loads the config at `path` and reads its certificate files; checks that every certificate can be
/// used, so that a bad PEM is rejected like any other invalid config.
pub fn load(path: &Path) -> Result<Loaded, ReloadError> {
    let text = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut model = weir_config::load(path)?;
    crate::state_dir::fill(&mut model, path);
    let problems = expressions::check(&model);
    if !problems.is_empty() {
        return Err(ReloadError::Expressions(problems));
    }
    let mut fingerprint = vec![(path.to_path_buf(), text)];
    upstream_ca::read(&mut model, &mut fingerprint)?;
    let mut tls = BTreeMap::new();
    for (idx, listener) in model.listeners.iter().enumerate() {
        let Some(settings) = &listener.tls else {
            continue;
        };
        let mut certificates = Vec::new();
        for (cert_idx, files) in settings.certificates.iter().enumerate() {
            let read = |file: &Path, field: &str| {
                std::fs::read(file).map_err(|source| ReloadError::ReadCertificate {
                    at: format!("listeners[{idx}].tls.certificates[{cert_idx}].{field}"),
                    path: file.to_path_buf(),
                    source,
                })
            };
            let cert_chain = read(&files.cert_file, "certFile")?;
            let private_key = read(&files.key_file, "keyFile")?;
            fingerprint.push((files.cert_file.clone(), cert_chain.clone()));
            fingerprint.push((files.key_file.clone(), private_key.clone()));
            certificates.push(CertificatePem {
                origin: files.cert_file.display().to_string(),
                cert_chain,
                private_key,
            });
        }
        // An ACME listener's own certificate is added by `crate::acme` (the files may be none).
        if !(certificates.is_empty() && settings.acme.is_some()) {
            weir_proxy::tls::server_config(&certificates).map_err(|source| ReloadError::Tls {
                listener: idx,
                source,
            })?;
        }
        let acme = None;
        tls.insert(listener.name.clone(), TlsMaterial { certificates, acme });
    }
    Ok(Loaded {
        model,
        tls,
        fingerprint,
    })
}

/// The folders to watch for `path` and the files of a fingerprint: each file's folder, and the folder
/// of the file a symlink resolves to.
fn watch_dirs(path: &Path, fingerprint: Option<&[(PathBuf, Vec<u8>)]>) -> BTreeSet<PathBuf> {
    let mut files = vec![path.to_path_buf()];
    if let Some(fingerprint) = fingerprint {
        files.extend(fingerprint.iter().map(|(p, _)| p.clone()));
    }
    let mut dirs = BTreeSet::new();
    for file in files {
        for candidate in [Some(file.clone()), std::fs::canonicalize(&file).ok()]
            .into_iter()
            .flatten()
        {
            if let Some(parent) = candidate.parent() {
                let parent = if parent.as_os_str().is_empty() {
                    Path::new(".")
                } else {
                    parent
                };
                dirs.insert(parent.to_path_buf());
            }
        }
    }
    dirs
}

/// How long a file that failed to load is given to finish being written before it counts.
const SETTLE: Duration = Duration::from_millis(150);

/// Why a reload was attempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// A watched folder changed (or the periodic check ran).
    FileEvent,
    /// SIGHUP or an explicit request: reload even if nothing changed.
    Forced,
}

/// How a config file is read and checked: [`load`] in production; tests substitute a slow or
/// failing one. It runs on a blocking thread, never on the control thread.
pub type Loader = Arc<dyn Fn(&Path) -> Result<Loaded, ReloadError> + Send + Sync>;

/// The production [`Loader`]: [`load`].
pub fn default_loader() -> Loader {
    Arc::new(load)
}

/// What one attempt found, computed on a blocking thread.
enum Attempt {
    /// A file event, and the files are what the last attempt saw.
    Unchanged,
    /// The config loaded; the folders to watch for it.
    Loaded(Box<Loaded>, BTreeSet<PathBuf>),
    /// The config did not load; the files' bytes when it was tried.
    Failed(ReloadError, Fingerprint),
}

/// Watches `path` and sends each config that loads and differs from the last one to `apply`.
/// `triggers` carries SIGHUPs and other forced reloads. Returns when `apply` is closed.
///
/// Everything that touches the file system or the resolver (reading the files, parsing and
/// validating, resolving upstream host names, reading certificates, canonicalizing watched
/// paths) runs off the control thread: the attempts through `loader` on `offload` (the driver's
/// reload thread, see [`Offload`]), the rest on tokio's blocking pool. So a slow disk or DNS
/// server never stalls the control thread, which also runs the rollout ticks and the admin API.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    path: PathBuf,
    initial: Option<Loaded>,
    mut triggers: mpsc::UnboundedReceiver<Trigger>,
    apply: mpsc::Sender<Box<Loaded>>,
    counter: ReloadCounter,
    poll_interval: Duration,
    loader: Loader,
    offload: Offload,
) {
    let (events_tx, mut events) = mpsc::unbounded_channel::<()>();
    let events_tx_retry = events_tx.clone();
    let mut debouncer = match new_debouncer(Duration::from_millis(100), None, move |result| {
        if let Ok(events) = result {
            let events: Vec<notify_debouncer_full::DebouncedEvent> = events;
            if !events.is_empty() {
                let _ = events_tx.send(());
            }
        }
    }) {
        Ok(debouncer) => Some(debouncer),
        Err(error) => {
            tracing::warn!(%error, "cannot watch the config file; relying on SIGHUP and polling");
            None
        }
    };
    let mut watched = BTreeSet::new();
    let mut last_attempt: Option<Arc<Fingerprint>> =
        initial.as_ref().map(|l| Arc::new(l.fingerprint.clone()));
    let mut update_watches = |dirs: BTreeSet<PathBuf>, watched: &mut BTreeSet<PathBuf>| {
        let Some(debouncer) = debouncer.as_mut() else {
            return;
        };
        for dir in dirs {
            if !watched.contains(&dir) {
                match debouncer.watch(&dir, RecursiveMode::NonRecursive) {
                    Ok(()) => {
                        watched.insert(dir);
                    }
                    Err(error) => {
                        tracing::warn!(dir = %dir.display(), %error, "cannot watch folder")
                    }
                }
            }
        }
    };
    let initial_dirs = {
        let path = path.clone();
        let fingerprint = last_attempt.clone();
        blocking(move || watch_dirs(&path, fingerprint.as_deref().map(Vec::as_slice)))
            .await
            .unwrap_or_default()
    };
    drop(initial);
    update_watches(initial_dirs, &mut watched);
    let mut poll = tokio::time::interval(poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let trigger = tokio::select! {
            Some(()) = events.recv() => Trigger::FileEvent,
            Some(trigger) = triggers.recv() => trigger,
            _ = poll.tick() => Trigger::FileEvent,
            _ = apply.closed() => return,
        };
        let attempt = {
            let path = path.clone();
            let last = last_attempt.clone();
            let loader = loader.clone();
            offload
                .run(move || {
                    let current = fingerprint_files(&path, last.as_deref().map(Vec::as_slice));
                    if trigger == Trigger::FileEvent
                        && last.as_deref().map(Vec::as_slice) == Some(current.as_slice())
                    {
                        return Attempt::Unchanged;
                    }
                    match loader(&path) {
                        Ok(loaded) => {
                            let dirs = watch_dirs(&path, Some(&loaded.fingerprint));
                            Attempt::Loaded(Box::new(loaded), dirs)
                        }
                        Err(error) => Attempt::Failed(error, current),
                    }
                })
                .await
        };
        let Some(attempt) = attempt else {
            tracing::error!("the config reload task panicked; the last good config keeps serving");
            continue;
        };
        match attempt {
            Attempt::Unchanged => {}
            Attempt::Loaded(loaded, dirs) => {
                last_attempt = Some(Arc::new(loaded.fingerprint.clone()));
                update_watches(dirs, &mut watched);
                tracing::info!(path = %path.display(), "config loaded");
                if apply.send(loaded).await.is_err() {
                    return;
                }
            }
            Attempt::Failed(error, current) => {
                // An editor writing in place may still be writing: if the files change within a
                // moment, judge the newer content instead of counting a half-written file.
                if trigger == Trigger::FileEvent {
                    tokio::time::sleep(SETTLE).await;
                    let now = {
                        let path = path.clone();
                        let last = last_attempt.clone();
                        blocking(move || {
                            fingerprint_files(&path, last.as_deref().map(Vec::as_slice))
                        })
                        .await
                    };
                    if now.as_ref() != Some(&current) {
                        let _ = events_tx_retry.send(());
                        continue;
                    }
                }
                last_attempt = Some(Arc::new(current));
                counter.get_or_create(&vec![("result", "failure")]).inc();
                let problems = error.problems();
                tracing::error!(
                    path = %path.display(),
                    problems = problems.len(),
                    "config rejected; the last good config keeps serving"
                );
                for problem in problems {
                    tracing::error!("  {problem}");
                }
            }
        }
    }
}

/// Runs `work` on tokio's blocking pool; `None` if it panicked.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> Option<T> {
    tokio::task::spawn_blocking(work).await.ok()
}

/// One work item for the [`Offload`] thread.
type Job = Box<dyn FnOnce() + Send>;

/// One long-lived thread (`weir-reload`) for the heavy, allocation-rich work of reloads: reading,
/// parsing and validating the config, compiling its route table, and freeing the config and the
/// table it replaced. Doing all of it on one thread keeps it off the control thread and, as
/// importantly for memory, keeps each reload's allocations and frees in one allocator heap: the
/// next reload reuses the pages the last one freed. Spread over tokio's blocking pool (a thread
/// per concurrent task, each with its own heap, freeing what others allocated), the same work
/// left RSS growing with every reload. Jobs run in order. The thread ends when every handle is
/// dropped. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Offload {
    jobs: std::sync::mpsc::Sender<Job>,
}

impl Offload {
    /// Starts the thread. If it cannot be started, jobs run on tokio's blocking pool instead.
    pub fn spawn() -> Offload {
        let (jobs, queue) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new()
            .name("weir-reload".into())
            .spawn(move || {
                for job in queue {
                    job();
                }
            });
        if let Err(error) = started {
            tracing::error!(%error, "cannot start the reload thread: reloads use the blocking pool");
        }
        Offload { jobs }
    }

    /// Runs `work` on the thread and waits for it; `None` if it panicked.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Option<T> {
        let (done, result) = tokio::sync::oneshot::channel();
        let job: Job = Box::new(move || {
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            let _ = done.send(outcome.ok());
        });
        if let Err(std::sync::mpsc::SendError(job)) = self.jobs.send(job) {
            // The thread never started.
            let _ = tokio::task::spawn_blocking(job).await;
        }
        result.await.ok().flatten()
    }

    /// Frees `value` on the thread (a replaced config or table: thousands of allocations),
    /// without waiting.
    pub fn dispose<T: Send + 'static>(&self, value: T) {
        // If the thread never started, the value is freed here, with the returned job.
        let _ = self.jobs.send(Box::new(move || drop(value)));
    }
}

/// The current bytes of the config file and of the files the last attempt named.
fn fingerprint_files(path: &Path, last: Option<&[(PathBuf, Vec<u8>)]>) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = vec![path.to_path_buf()];
    if let Some(last) = last {
        files.extend(last.iter().skip(1).map(|(p, _)| p.clone()));
    }
    files
        .into_iter()
        .map(|file| {
            let bytes = std::fs::read(&file).unwrap_or_default();
            (file, bytes)
        })
        .collect()
}

/// Shared handle to the counter, registered once.
pub fn new_counter() -> ReloadCounter {
    Family::default()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use tokio::time::Instant;
    use weir_proxy::Stats;

    use super::*;
    use crate::engine::driver::{CommandError, Driver};
    use crate::engine::rollout::Command;

    /// A reload whose loading blocks for 5 s (a resolver that hangs on a new host name, a slow
    /// disk) leaves the control loop free: operator commands are answered at once and the
    /// rollout keeps stepping on its 100 ms ticks; the reload applies when the load is done.
    #[tokio::test]
    async fn a_slow_load_does_not_stall_the_control_loop() {
        const SLOW: Duration = Duration::from_secs(5);
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.yaml");
        let mut steps = String::new();
        for weight in (5..=95).step_by(5) {
            steps.push_str(&format!(
                "          - setWeight: {weight}\n          - pause: {{ duration: 200ms }}\n"
            ));
        }
        let config = format!(
            r#"listeners: [{{ name: public, address: "127.0.0.1:0" }}]
services:
  - name: checkout
    stable: {{ version: v1, upstreams: ["127.0.0.1:9001"] }}
    canary: {{ version: v2, upstreams: ["127.0.0.1:9002"] }}
    strategy:
      canary:
        steps:
{steps}"#
        );
        std::fs::write(&path, config).expect("write");
        let mut loaded = load(&path).expect("loads");
        // What is measured is the loop's freedom from a slow load, not state writes (the loop
        // awaits those by design, and an fsync on a busy test machine can take a second).
        loaded.model.state_dir = None;
        let reloads = ReloadCounter::default();
        let (driver, _routes, handle) =
            Driver::new(loaded.clone(), Stats::new(), reloads.clone()).expect("driver");
        let (apply_tx, apply_rx) = mpsc::channel(4);
        let driver_task = tokio::spawn(driver.run(apply_rx));

        let (slow_started, mut started_rx) = tokio::sync::watch::channel(false);
        let slow_loads = Arc::new(AtomicU32::new(0));
        let loader: Loader = {
            let slow_loads = slow_loads.clone();
            Arc::new(move |path: &Path| {
                slow_loads.fetch_add(1, Ordering::SeqCst);
                slow_started.send_replace(true);
                std::thread::sleep(SLOW);
                load(path)
            })
        };
        let (triggers_tx, triggers_rx) = mpsc::unbounded_channel();
        let reload_task = tokio::spawn(run(
            path.clone(),
            Some(loaded),
            triggers_rx,
            apply_tx,
            reloads.clone(),
            Duration::from_secs(3600),
            loader,
            handle.offload(),
        ));
        triggers_tx.send(Trigger::Forced).expect("trigger");
        started_rx
            .wait_for(|started| *started)
            .await
            .expect("the slow load starts");
        let load_started = Instant::now();

        let generation = handle.generation();
        let first_generation = *generation.borrow();
        let mut probes = 0u32;
        let mut slowest = Duration::ZERO;
        while load_started.elapsed() < SLOW - Duration::from_millis(500) {
            let at = Instant::now();
            let answer = handle.command("nope", Command::Pause).await;
            assert!(matches!(answer, Err(CommandError::UnknownService(_))));
            slowest = slowest.max(at.elapsed());
            probes += 1;
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let published = *generation.borrow() - first_generation;
        let success = || reloads.get_or_create(&vec![("result", "success")]).get();
        assert_eq!(success(), 0, "the reload is still loading");
        let deadline = Instant::now() + Duration::from_secs(10);
        while success() == 0 {
            assert!(Instant::now() < deadline, "the reload never applied");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let applied_after = load_started.elapsed();
        eprintln!(
            "slow load ({SLOW:?} blocking): {probes} commands through the control loop meanwhile, slowest {:.1} ms; {published} tables published by rollout ticks meanwhile; reload applied {:.2} s after the load began",
            slowest.as_secs_f64() * 1e3,
            applied_after.as_secs_f64()
        );
        assert!(
            slowest < Duration::from_millis(500),
            "a command waited {slowest:?}"
        );
        assert!(
            published >= 5,
            "the rollout stalled: {published} tables in {SLOW:?}"
        );
        assert_eq!(slow_loads.load(Ordering::SeqCst), 1);
        reload_task.abort();
        driver_task.abort();
        let _ = reload_task.await;
        let _ = driver_task.await;
    }
}

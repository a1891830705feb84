//! The driver: the single task that owns the route table's [`Publisher`]. Config reloads, rollout
//! decisions, measurements and operator commands all pass through its one event loop, so they can
//! never race, and every weight change is persisted in the order that keeps a crash safe.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::time::Instant;
use weir_config::{Model, Provider, Service};
use weir_proxy::routes::{Policy, TlsMaterial};
use weir_proxy::stats::Window;
use weir_proxy::{Publisher, RouteTable, Stats};

use crate::api::v1::{self as status, Status};
use crate::config_report::ConfigReport;
use crate::engine::analysis::{self, Outcome};
use crate::engine::rollout::blue_green;
use crate::engine::rollout::{Command, Ctx, Due, Effects, Event, Rollout};
use crate::engine::state::{Encoded, Prepared, StateError, Store};
use crate::reload::{Loaded, Offload, ReloadCounter};
use crate::resolve::Dns;

/// How often rollouts are evaluated.
const TICK: Duration = Duration::from_millis(100);
/// How often the stats window is sampled.
const SAMPLE: Duration = Duration::from_secs(1);
/// How long after a failed save it is tried again (a narrowing, already served), or a refused
/// widening is attempted again.
const SAVE_RETRY: Duration = Duration::from_secs(1);
/// The longest window kept when the config asks for none longer.
const MIN_RETENTION: Duration = Duration::from_secs(600);

/// What the driver reacts to.
pub enum Input {
    /// A config file that loaded.
    Config(Box<Loaded>),
    /// An operator command, answered on `reply`.
    Command {
        /// The service.
        service: String,
        /// The command.
        command: Command,
        /// The answer.
        reply: oneshot::Sender<Result<(), CommandError>>,
    },
    /// Hand-over to a new weir process (binary upgrade): `true` stops every rollout decision
    /// and state write once the state on disk is current (refused while a save is pending, so
    /// the new process never reads an older state than was served); `false` resumes.
    Freeze {
        /// Freeze or resume.
        frozen: bool,
        /// The answer.
        reply: oneshot::Sender<Result<(), String>>,
    },
    /// An external measurement came back.
    Measured {
        /// The service.
        service: String,
        /// The revision it was taken for (stale results are dropped).
        revision: u64,
        /// The run.
        run_id: u64,
        /// The metric.
        metric_idx: usize,
        /// What was measured.
        outcome: Outcome,
    },
    /// A webhook answered (see `engine/hooks.rs`).
    Hooked {
        /// The service.
        service: String,
        /// The revision it was asked for (stale answers are dropped).
        revision: u64,
        /// The hook's name.
        hook: String,
        /// The hooks' epoch it was asked in.
        epoch: u64,
        /// The answer.
        answer: crate::engine::rollout::HookAnswer,
    },
}

/// Why a command was refused.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No such service.
    #[error("no service named {0:?}")]
    UnknownService(String),
    /// The service has no rollout strategy.
    #[error("service {0:?} has no rollout strategy: its canary weight comes from the config file")]
    NoStrategy(String),
    /// The command does not apply in the current phase.
    #[error("{0}")]
    Refused(String),
    /// weir is shutting down.
    #[error("weir is shutting down")]
    Closed,
}

/// Wall-clock milliseconds that advance with tokio's clock (so tests can run on a paused clock).
#[derive(Clone, Copy, Debug)]
struct Clock {
    base_ms: u64,
    base: Instant,
}

impl Clock {
    fn new() -> Clock {
        let base_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clock {
            base_ms,
            base: Instant::now(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.base_ms + crate::engine::rollout::run::millis(self.base.elapsed())
    }
}

/// Why the driver could not start.
#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    /// The first table could not be built.
    #[error(transparent)]
    Build(#[from] weir_proxy::routes::BuildError),
    /// The state folder could not be created.
    #[error(transparent)]
    State(#[from] StateError),
}

/// The driver's state.
pub struct Driver {
    publisher: Publisher,
    stats: Stats,
    window: Window,
    /// The config served; shared with the route table built from it (which compares the next
    /// config with it to reuse what did not change).
    model: Arc<Model>,
    /// Shared with the blocking task that builds a reloaded table.
    tls: Arc<BTreeMap<String, TlsMaterial>>,
    reloads: ReloadCounter,
    generation: watch::Sender<u64>,
    store: Store,
    rollouts: BTreeMap<String, Rollout>,
    clock: Clock,
    events: broadcast::Sender<Event>,
    status: watch::Sender<Arc<Status>>,
    inputs_tx: mpsc::Sender<Input>,
    inputs: mpsc::Receiver<Input>,
    last_sample: Option<Instant>,
    /// The client listeners' bound addresses, for `{{preview.url}}` (a port 0 in the config is
    /// known only once bound); the config's addresses when not given.
    listener_addrs: BTreeMap<String, SocketAddr>,
    /// Services whose latest state is served but not on disk (a narrowing whose save failed),
    /// with when to try again: saved on every tick until it succeeds.
    unsaved: BTreeMap<String, Instant>,
    /// Services whose widening could not be written (so was not published), with when to try
    /// again: their rollout is not ticked until then.
    held: BTreeMap<String, Instant>,
    /// Handing over to a new process: no decisions, no writes (see [`Input::Freeze`]).
    frozen: bool,
    /// A digest of the state each service's file holds (what this process last wrote): a save
    /// of identical bytes is skipped, so a reload of many services does not rewrite and fsync
    /// every file while the driver's loop waits.
    on_disk: HashMap<String, Digest>,
    /// Measurements that came back while frozen, handled again if the hand-over fails.
    deferred: Vec<Input>,
    /// Upstream host names' current addresses, overlaid on every model served (see
    /// [`Driver::set_dns`]); `None`: literal addresses only.
    dns: Option<Dns>,
    /// Called with each reloaded model once it is served (listener settings, memory limit).
    on_applied: Option<OnApplied>,
    /// The reload thread: compiles reloaded tables and frees replaced ones (and configs).
    offload: Offload,
    /// Positions in `model.services` of the services with a strategy, in file order.
    with_strategy: Vec<usize>,
    /// The config generation and file digest applied (`GET /api/v1/config`).
    config: ConfigReport,
    /// The webhooks' calls, event queues, counter and load-test targets.
    hooks: crate::engine::hooks::Hooks,
}

/// What the driver calls with every config it applies.
pub type OnApplied = Box<dyn FnMut(&Model) + Send>;

/// Handles to a running driver.
#[derive(Clone)]
pub struct Handle {
    inputs: mpsc::Sender<Input>,
    events: broadcast::Sender<Event>,
    status: watch::Receiver<Arc<Status>>,
    generation: watch::Receiver<u64>,
    offload: Offload,
    config: ConfigReport,
    load_targets: watch::Receiver<Vec<weir_config::LoadTarget>>,
    webhook_calls: crate::engine::hooks::WebhookCounter,
}

// === impl Driver ===

impl Driver {
    /// Restores every rollout from `stateDir`, builds the first table and creates the route channel.
    pub fn new(
        loaded: Loaded,
        stats: Stats,
        reloads: ReloadCounter,
    ) -> Result<(Driver, weir_proxy::Routes, Handle), DriverError> {
        let store = Store::open(loaded.model.state_dir.as_deref())?;
        if !store.is_persistent() && loaded.model.services.iter().any(|s| s.strategy.is_some()) {
            tracing::warn!("no state folder: rollout state is kept in memory only and a restart starts rollouts over");
        }
        let config = ConfigReport::new(Path::new(""), loaded.model.state_dir.as_deref());
        config.applied(
            crate::config_report::loaded_digest(&loaded),
            Clock::new().now_ms(),
        );
        let clock = Clock::new();
        let now_ms = clock.now_ms();
        let mut rollouts = BTreeMap::new();
        for service in loaded
            .model
            .services
            .iter()
            .filter(|s| s.strategy.is_some())
        {
            let rollout = restore(&store, service, &loaded.model, now_ms)?;
            rollouts.insert(service.name.clone(), rollout);
        }
        let policies = policies(&rollouts);
        let model = Arc::new(loaded.model);
        let table =
            RouteTable::build_shared(&model, &policies, &loaded.tls, &stats, &RouteTable::empty())?;
        let (publisher, routes) = weir_proxy::channel(table);
        let (generation, generation_rx) = watch::channel(1);
        let (events, _) = broadcast::channel(1024);
        let (status_tx, status_rx) = watch::channel(Arc::new(Status::default()));
        let (inputs_tx, inputs) = mpsc::channel(256);
        let retention = max_window(&model).max(MIN_RETENTION);
        let (mut hooks, load_targets) = crate::engine::hooks::Hooks::new();
        hooks.configure(&model);
        let webhook_calls = hooks.counter();
        let mut driver = Driver {
            publisher,
            window: Window::new(stats.clone(), retention),
            stats,
            model,
            tls: Arc::new(loaded.tls),
            reloads,
            generation,
            store,
            rollouts,
            clock,
            events,
            status: status_tx,
            inputs_tx: inputs_tx.clone(),
            inputs,
            last_sample: None,
            listener_addrs: BTreeMap::new(),
            unsaved: BTreeMap::new(),
            on_disk: HashMap::new(),
            offload: Offload::spawn(),
            with_strategy: Vec::new(),
            held: BTreeMap::new(),
            frozen: false,
            deferred: Vec::new(),
            dns: None,
            on_applied: None,
            config: config.clone(),
            hooks,
        };
        driver.with_strategy = with_strategy(&driver.model);
        // The first events (rollouts restored or started) are sent when `run` starts, so
        // subscribers of the returned handle (notifications) see them.
        driver.persist_all();
        driver.refresh_status();
        driver.hooks.publish_load_targets(&driver.rollouts);
        let handle = Handle {
            inputs: inputs_tx,
            events: driver.events.clone(),
            status: status_rx,
            generation: generation_rx,
            offload: driver.offload.clone(),
            config,
            load_targets,
            webhook_calls,
        };
        Ok((driver, routes, handle))
    }

    /// Calls `hook` with every reloaded config once its table is served.
    pub fn on_applied(&mut self, hook: OnApplied) {
        self.on_applied = Some(hook);
    }

    /// The config file weir runs, told to `post-rollout` and `rollback` webhooks.
    pub fn set_config_path(&mut self, path: &std::path::Path) {
        self.hooks.set_config_file(path);
    }

    /// Gives the client listeners' bound addresses (by name), used for `{{preview.url}}`.
    pub fn set_listener_addrs(&mut self, addrs: impl IntoIterator<Item = (String, SocketAddr)>) {
        self.listener_addrs = addrs.into_iter().collect();
    }

    /// Serves upstream host names with `dns`'s answers: they are overlaid on every loaded model,
    /// and a changed answer publishes a table when an upstream's addresses changed. The model
    /// given to [`Driver::new`] must already be resolved ([`Dns::resolve_model`]).
    pub fn set_dns(&mut self, dns: Dns) {
        dns.track(&self.model);
        self.dns = Some(dns);
    }

    /// Runs until every [`Handle`] and the config sender are gone, or `shutdown` fires.
    pub async fn run(mut self, mut configs: mpsc::Receiver<Box<Loaded>>) {
        self.flush_events();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut configs_open = true;
        let mut dns_changes = self.dns.as_ref().map(Dns::changes);
        loop {
            tokio::select! {
                () = next_change(&mut dns_changes) => self.on_dns_change(),
                _ = tick.tick(), if !self.frozen => self.on_tick().await,
                // While frozen, a new config waits in the channel (the new process reads the file).
                loaded = configs.recv(), if configs_open && !self.frozen => match loaded {
                    Some(loaded) => self.apply(*loaded).await,
                    None => configs_open = false,
                },
                Some(input) = self.inputs.recv() => self.on_input(input).await,
            }
        }
    }

    async fn on_input(&mut self, input: Input) {
        match input {
            Input::Freeze { frozen, reply } => {
                let _ = reply.send(self.freeze(frozen).await);
            }
            Input::Config(_) if self.frozen => {
                // Handing over: the new process reads the config file itself.
            }
            measured @ (Input::Measured { .. } | Input::Hooked { .. }) if self.frozen => {
                // Kept for a failed hand-over (the new process measures again).
                self.deferred.push(measured);
            }
            Input::Command { reply, .. } if self.frozen => {
                let _ = reply.send(Err(CommandError::Refused(
                    "weir is handing over to a new process (binary upgrade): try again in a moment"
                        .into(),
                )));
            }
            Input::Config(loaded) => self.apply(*loaded).await,
            Input::Command {
                service,
                command,
                reply,
            } => {
                let result = self.command(&service, command).await;
                let _ = reply.send(result);
            }
            Input::Measured {
                service,
                revision,
                run_id,
                metric_idx,
                outcome,
            } => {
                self.answered(service, revision, |rollout, ctx, now_ms| {
                    rollout.record(ctx, run_id, metric_idx, &outcome, now_ms)
                })
                .await;
            }
            Input::Hooked {
                service,
                revision,
                hook,
                epoch,
                answer,
            } => {
                self.answered(service, revision, |rollout, ctx, now_ms| {
                    rollout.record_hook(ctx, &hook, epoch, &answer, now_ms)
                })
                .await;
            }
        }
    }

    /// A spawned task's answer (a measurement, a webhook call) for `service`'s `revision`:
    /// `record` gives it to the rollout; an answer for another revision (or a service gone from
    /// the config) is stale and dropped.
    async fn answered(
        &mut self,
        service: String,
        revision: u64,
        record: impl FnOnce(&mut Rollout, Ctx<'_>, u64) -> Effects,
    ) {
        let now_ms = self.clock.now_ms();
        let Some(config) = self.model.services.iter().find(|s| s.name == service) else {
            return;
        };
        let Some(rollout) = self.rollouts.get_mut(&service) else {
            return;
        };
        if rollout.revision != revision {
            return;
        }
        let before = self.store.is_persistent().then(|| rollout.clone());
        let ctx = Ctx {
            service: config,
            templates: &self.model.analysis_templates,
        };
        let effects = record(rollout, ctx, now_ms);
        self.commit(vec![(service, effects, before)]).await;
    }

    async fn freeze(&mut self, frozen: bool) -> Result<(), String> {
        if !frozen {
            self.frozen = false;
            let deferred = std::mem::take(&mut self.deferred);
            if !deferred.is_empty() {
                let inputs = self.inputs_tx.clone();
                tokio::spawn(async move {
                    for input in deferred {
                        let _ = inputs.send(input).await;
                    }
                });
            }
            tracing::info!("hand-over ended: rollouts go on in this process");
            return Ok(());
        }
        let unsaved: Vec<String> = self.unsaved.keys().cloned().collect();
        self.save_now(unsaved).await;
        if !self.unsaved.is_empty() {
            let services: Vec<&str> = self.unsaved.keys().map(String::as_str).collect();
            return Err(format!(
                "the rollout state of {} is not saved yet (see the log): a new process would read an older state",
                services.join(", ")
            ));
        }
        self.frozen = true;
        tracing::info!("handing over to a new process: rollout decisions stop here");
        Ok(())
    }

    async fn command(&mut self, service: &str, command: Command) -> Result<(), CommandError> {
        let now_ms = self.clock.now_ms();
        let Some(config) = self.model.services.iter().find(|s| s.name == service) else {
            return Err(CommandError::UnknownService(service.to_string()));
        };
        let Some(rollout) = self.rollouts.get_mut(service) else {
            return Err(CommandError::NoStrategy(service.to_string()));
        };
        let before = self.store.is_persistent().then(|| rollout.clone());
        let ctx = Ctx {
            service: config,
            templates: &self.model.analysis_templates,
        };
        let effects = rollout
            .command(ctx, command, now_ms)
            .map_err(CommandError::Refused)?;
        tracing::info!(service, ?command, "operator command");
        let refused = self
            .commit(vec![(service.to_string(), effects, before)])
            .await;
        if let Some(error) = refused.into_iter().next() {
            return Err(CommandError::Refused(error));
        }
        // Let the new step start at once rather than at the next tick.
        self.on_tick().await;
        Ok(())
    }

    async fn on_tick(&mut self) {
        let now = Instant::now();
        let retry: Vec<String> = self
            .unsaved
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(service, _)| service.clone())
            .collect();
        if !retry.is_empty() {
            self.save_now(retry).await;
        }
        if self
            .last_sample
            .is_none_or(|last| now.duration_since(last) >= SAMPLE)
        {
            self.window.sample(now);
            self.last_sample = Some(now);
        }
        let now_ms = self.clock.now_ms();
        let mut changed = Vec::new();
        let mut external = Vec::new();
        // Only the services with a strategy (a tick used to look every service up, 100,000
        // string comparisons per tick with 10,000 services).
        for &idx in &self.with_strategy {
            let Some(service) = self.model.services.get(idx) else {
                continue;
            };
            let Some(rollout) = self.rollouts.get_mut(&service.name) else {
                continue;
            };
            if !rollout.active() {
                continue;
            }
            if self.held.get(&service.name).is_some_and(|at| now < *at) {
                continue;
            }
            let before = self.store.is_persistent().then(|| rollout.clone());
            let ctx = Ctx {
                service,
                templates: &self.model.analysis_templates,
            };
            let window = &self.window;
            let name = service.name.as_str();
            let mut effects = rollout.tick(ctx, now_ms, &mut |query| {
                analysis::provider::builtin(query.provider, window, name, query.version, now)
            });
            let revision = rollout.revision;
            let mut due = std::mem::take(&mut effects.due);
            if !due.is_empty() {
                if let Some(url) =
                    blue_green::preview_url(service, &self.model.listeners, &self.listener_addrs)
                {
                    let host = blue_green::preview_host(service);
                    for due in &mut due {
                        blue_green::fill_preview_url(&mut due.args.args, &url, host.as_deref());
                    }
                }
            }
            external.extend(due.into_iter().map(|due| (name.to_string(), revision, due)));
            let before = before.filter(|_| effects.changed && effects.widened);
            changed.push((service.name.clone(), effects, before));
        }
        for (service, revision, due) in external {
            self.spawn_measurement(service, revision, due);
        }
        self.commit(changed).await;
    }

    fn spawn_measurement(&self, service: String, revision: u64, due: Due) {
        let inputs = self.inputs_tx.clone();
        tokio::spawn(async move {
            let outcome = match &due.metric.provider {
                Provider::Prometheus(provider) => {
                    analysis::provider::prometheus(provider, &due.args).await
                }
                Provider::Web(provider) => analysis::provider::web(provider, &due.args).await,
                Provider::Exec(provider) => analysis::provider::exec(provider, &due.args).await,
                Provider::Datadog(provider) => {
                    analysis::provider::datadog(provider, &due.args).await
                }
                Provider::Builtin(_) => {
                    Outcome::Error("builtin metrics are measured by the driver".into())
                }
            };
            let _ = inputs
                .send(Input::Measured {
                    service,
                    revision,
                    run_id: due.run_id,
                    metric_idx: due.metric_idx,
                    outcome,
                })
                .await;
        });
    }

    /// Acts on what rollout operations did: saves the services whose state changed and publishes
    /// a table when a policy changed. A change that narrows canary traffic (a lower weight, a
    /// route removed) is saved before the table is published, one that widens it after, so a
    /// crash in between never leaves more canary traffic on disk than was served.
    ///
    /// Saving never blocks the control thread (it runs on the blocking pool) and fails safe: a
    /// narrowing is published even when its save fails, and saved again every [`SAVE_RETRY`]
    /// until it succeeds; a widening is first written to its temporary file (where a full disk or
    /// a permission problem shows) and, when that fails, not published: the rollout goes back to
    /// `before` (its state before the operation) with an event saying why, and tries again after
    /// [`SAVE_RETRY`]. Returns the refusals' messages.
    async fn commit(&mut self, changes: Vec<(String, Effects, Option<Rollout>)>) -> Vec<String> {
        let mut widened = Vec::new();
        let mut narrowed = Vec::new();
        let mut events = Vec::new();
        let mut publish = false;
        let mut any = false;
        let mut hook_calls = Vec::new();
        for (service, mut effects, before) in changes {
            let calls = std::mem::take(&mut effects.hooks);
            let ended = effects.ended.take();
            if !calls.is_empty() || ended.is_some() {
                hook_calls.push((service.clone(), calls, ended));
            }
            any |= effects.changed || effects.policy_changed || !effects.events.is_empty();
            if effects.changed {
                if effects.widened {
                    widened.push((service, before));
                } else {
                    narrowed.push(service);
                }
            }
            publish |= effects.policy_changed;
            events.extend(effects.events);
        }
        if !any {
            self.dispatch_hooks(hook_calls);
            return Vec::new();
        }
        self.save_now(narrowed).await;
        let (prepared, refused) = self.prepare_widened(widened, &mut events).await;
        self.dispatch_hooks(hook_calls);
        if publish {
            self.publish_current();
        }
        if !prepared.is_empty() {
            let results = blocking(move || {
                prepared
                    .into_iter()
                    .map(|(service, before, prepared, digest)| {
                        (service, before, prepared.commit(), digest)
                    })
                    .collect::<Vec<_>>()
            })
            .await;
            let mut reverted = false;
            for (service, before, result, digest) in results {
                match result {
                    Ok(()) => {
                        self.on_disk.insert(service.clone(), digest);
                        self.held.remove(&service);
                    }
                    Err(error) => {
                        // Already served, not on disk: serve the saved state again (a narrowing,
                        // whose file is the one on disk).
                        tracing::error!(service, %error, "cannot save rollout state: going back to the saved state");
                        if let Some(before) = before {
                            self.rollouts.insert(service.clone(), before);
                            reverted = true;
                        }
                        self.held.insert(service, Instant::now() + SAVE_RETRY);
                    }
                }
            }
            if reverted {
                self.publish_current();
            }
        }
        self.send_events(events);
        self.refresh_status();
        self.announce_generation();
        self.hooks.publish_load_targets(&self.rollouts);
        refused
    }

    /// Makes the webhook calls operations asked for, and tells `post-rollout` hooks when a
    /// revision ended.
    #[allow(clippy::type_complexity)]
    fn dispatch_hooks(
        &mut self,
        calls: Vec<(
            String,
            Vec<crate::engine::rollout::HookCall>,
            Option<(Event, bool)>,
        )>,
    ) {
        for (service, calls, ended) in calls {
            // A widening that could not be saved went back to the state before it (see
            // `prepare_widened`): what that state does not hold in flight, or a revision it did
            // not end, is not sent (the next tick asks again).
            let Some(rollout) = self.rollouts.get(&service) else {
                continue;
            };
            let revision = rollout.revision;
            let calls: Vec<_> = calls
                .into_iter()
                .filter(|c| {
                    c.epoch == rollout.hooks.epoch && rollout.hooks.in_flight.contains(&c.hook.name)
                })
                .collect();
            let ended = ended.filter(|_| {
                matches!(
                    rollout.phase,
                    crate::engine::rollout::Phase::Healthy
                        | crate::engine::rollout::Phase::Degraded
                )
            });
            for call in calls {
                self.hooks
                    .call(service.clone(), revision, call, self.inputs_tx.clone());
            }
            if let Some((event, aborted)) = ended {
                self.hooks.ended(&service, &event, aborted);
            }
        }
    }

    /// Writes the temporary files of widened services; those that fail go back to their state
    /// before the operation (their events are replaced by one saying why).
    async fn prepare_widened(
        &mut self,
        widened: Vec<(String, Option<Rollout>)>,
        events: &mut Vec<Event>,
    ) -> (
        Vec<(String, Option<Rollout>, Prepared, Digest)>,
        Vec<String>,
    ) {
        let mut refused = Vec::new();
        let mut encoded = Vec::new();
        for (service, before) in widened {
            let Some(rollout) = self.rollouts.get(&service) else {
                continue;
            };
            // The file is about to change (or, on a failure, hold something else).
            self.on_disk.remove(&service);
            match self.store.encode(rollout) {
                Ok(Some(bytes)) => {
                    let digest = Digest::of(bytes.bytes());
                    encoded.push((service, before, bytes, digest));
                }
                Ok(None) => {}
                Err(error) => tracing::error!(service, %error, "cannot encode rollout state"),
            }
        }
        if encoded.is_empty() {
            return (Vec::new(), refused);
        }
        let results = blocking(move || {
            encoded
                .into_iter()
                .map(|(service, before, bytes, digest)| (service, before, bytes.prepare(), digest))
                .collect::<Vec<_>>()
        })
        .await;
        let mut prepared = Vec::new();
        for (service, before, result, digest) in results {
            let error = match result {
                Ok(ready) => {
                    prepared.push((service, before, ready, digest));
                    continue;
                }
                Err(error) => error,
            };
            let Some(mut before) = before else {
                continue;
            };
            let message = format!(
                "cannot save rollout state ({error}): canary traffic stays at {}%; trying again every {}s",
                before.weight(),
                SAVE_RETRY.as_secs()
            );
            tracing::error!(service, %error, "cannot save rollout state: the widening is not published");
            events.retain(|event| event.service != service);
            if !self.held.contains_key(&service) {
                events.push(before.event(self.clock.now_ms(), "StateNotSaved", message.clone()));
            }
            before.message = message.clone();
            self.rollouts.insert(service.clone(), before);
            self.held.insert(service, Instant::now() + SAVE_RETRY);
            refused.push(message);
        }
        (prepared, refused)
    }

    /// Saves these services' current state off the control thread and waits for it; a failure
    /// is logged, announced once, and retried from the tick.
    async fn save_now(&mut self, services: Vec<String>) {
        let mut encoded: Vec<(String, Encoded, Digest)> = Vec::new();
        for service in services {
            let Some(rollout) = self.rollouts.get(&service) else {
                self.unsaved.remove(&service);
                continue;
            };
            match self.store.encode(rollout) {
                Ok(Some(bytes)) => {
                    let digest = Digest::of(bytes.bytes());
                    // The file already holds exactly this (a reload that changed nothing for
                    // this rollout): nothing to write.
                    if !self.unsaved.contains_key(&service)
                        && self.on_disk.get(&service) == Some(&digest)
                    {
                        continue;
                    }
                    encoded.push((service, bytes, digest));
                }
                Ok(None) => {}
                Err(error) => tracing::error!(service, %error, "cannot encode rollout state"),
            }
        }
        if encoded.is_empty() {
            return;
        }
        let results = blocking(move || {
            encoded
                .into_iter()
                .map(|(service, bytes, digest)| {
                    let result = bytes.prepare().and_then(Prepared::commit);
                    (service, result, digest)
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut events = Vec::new();
        for (service, result, digest) in results {
            if result.is_ok() {
                self.on_disk.insert(service.clone(), digest);
            } else {
                // Whatever the file holds now, it is not known to be this.
                self.on_disk.remove(&service);
            }
            match result {
                Ok(()) => {
                    self.held.remove(&service);
                    if self.unsaved.remove(&service).is_some() {
                        tracing::info!(service, "rollout state saved");
                    }
                }
                Err(error) => {
                    tracing::error!(service, %error, "cannot save rollout state: serving it anyway (it narrows canary traffic) and trying again");
                    let first = self
                        .unsaved
                        .insert(service.clone(), Instant::now() + SAVE_RETRY)
                        .is_none();
                    if let (true, Some(rollout)) = (first, self.rollouts.get(&service)) {
                        events.push(rollout.event(
                            self.clock.now_ms(),
                            "StateNotSaved",
                            format!("cannot save rollout state ({error}): served anyway (it narrows canary traffic); trying again every {}s", SAVE_RETRY.as_secs()),
                        ));
                    }
                }
            }
        }
        self.send_events(events);
    }

    /// Tells watchers a new table is out, once everything it implies (counters, status) is
    /// visible: whoever waits for a generation then reads a consistent view.
    fn announce_generation(&self) {
        self.generation
            .send_replace(self.publisher.current().generation());
    }

    /// Saves every rollout, blocking (at start-up, before the loop runs); failures are retried
    /// from the tick.
    fn persist_all(&mut self) {
        let now = Instant::now();
        for (service, rollout) in &self.rollouts {
            let saved = self
                .store
                .encode(rollout)
                .and_then(|encoded| match encoded {
                    Some(encoded) => {
                        let digest = Digest::of(encoded.bytes());
                        encoded.prepare()?.commit()?;
                        Ok(Some(digest))
                    }
                    None => Ok(None),
                });
            match saved {
                Ok(Some(digest)) => {
                    self.on_disk.insert(service.clone(), digest);
                }
                Ok(None) => {}
                Err(error) => {
                    tracing::error!(service, %error, "cannot save rollout state; trying again");
                    self.unsaved.insert(service.clone(), now + SAVE_RETRY);
                }
            }
        }
    }

    /// Sends events not yet returned in effects (those of a restore at start-up).
    fn flush_events(&mut self) {
        let events: Vec<Event> = self
            .rollouts
            .values_mut()
            .flat_map(|rollout| rollout.take_events())
            .collect();
        self.send_events(events);
    }

    fn send_events(&mut self, events: Vec<Event>) {
        self.hooks.events(&events);
        for event in events {
            tracing::info!(target: "weir::rollout", service = %event.service, revision = event.revision, kind = %event.kind, "{}", event.message);
            let _ = self.events.send(event);
        }
    }

    fn refresh_status(&self) {
        let mut status = status::build(
            &self.model,
            &self.rollouts,
            &self.publisher.current(),
            self.clock.now_ms(),
        );
        // Every service of the config applied has observed its generation.
        let observed = self.config.generation();
        for service in &mut status.services {
            service.observed_generation = observed;
        }
        self.status.send_replace(Arc::new(status));
    }

    /// Publishes a table with the current policies if any differs from what is served. Only
    /// the services whose policy changed are compiled again (the table reuses the others'
    /// routes), so this stays cheap on the control thread however many services there are.
    fn publish_current(&mut self) {
        let policies = policies(&self.rollouts);
        let current = self.publisher.current();
        // Services without a rollout serve their file weight, which no tick changes.
        let same = policies
            .iter()
            .all(|(name, policy)| current.service(name).map(|r| r.policy()) == Some(policy));
        if same {
            return;
        }
        let built =
            RouteTable::build_shared(&self.model, &policies, &self.tls, &self.stats, &current);
        match built {
            Ok(table) => {
                self.publisher.publish(table);
            }
            Err(error) => tracing::error!(%error, "cannot publish a route table"),
        }
    }

    /// Saves the narrowed services of a reload (off the control thread) then publishes its
    /// table; the rollouts become the driver's when it is out.
    async fn publish_reloaded(
        &mut self,
        model: &Arc<Model>,
        tls: &Arc<BTreeMap<String, TlsMaterial>>,
        policies: BTreeMap<String, Policy>,
        rollouts: BTreeMap<String, Rollout>,
        narrowed: Vec<String>,
    ) -> Result<u64, String> {
        // Narrowing changes are saved before the table goes out (see `commit`). The rollouts are
        // swapped in for the save and back if the table cannot be built.
        let previous = std::mem::replace(&mut self.rollouts, rollouts);
        let gone: BTreeSet<String> = self
            .unsaved
            .keys()
            .filter(|s| !self.rollouts.contains_key(*s))
            .cloned()
            .collect();
        for service in gone {
            self.unsaved.remove(&service);
        }
        let rollouts = &self.rollouts;
        self.held
            .retain(|service, _| rollouts.contains_key(service));
        self.on_disk
            .retain(|service, _| rollouts.contains_key(service));
        self.save_now(narrowed).await;
        // The table is compiled on the reload thread: with thousands of services (all of them
        // new on the first reload after a start, or when every upstream moved) compiling takes
        // tens of milliseconds that the admin API, which shares this thread, must not wait.
        // Nothing else changes the served table meanwhile: the driver's loop waits here.
        let current = self.publisher.current();
        let built = {
            let (model, tls, stats) = (Arc::clone(model), Arc::clone(tls), self.stats.clone());
            let current = Arc::clone(&current);
            self.offload
                .run(move || RouteTable::build_shared(&model, &policies, &tls, &stats, &current))
                .await
        };
        match built {
            Some(Ok(table)) => {
                let generation = self.publisher.publish(table);
                // The replaced table (and, below, the replaced model) are freed on the reload
                // thread too, unless a worker still holds the table (then that worker frees it).
                self.offload.dispose(current);
                Ok(generation)
            }
            Some(Err(error)) => {
                self.rollouts = previous;
                Err(error.to_string())
            }
            None => {
                self.rollouts = previous;
                Err("building the route table panicked".into())
            }
        }
    }

    /// An upstream host name resolves to new addresses: overlays them on the served model and
    /// publishes a table (same policies) only if an upstream's addresses changed; only the
    /// services whose upstreams moved are compiled again. Neither a rollout decision nor a state
    /// write, so it also runs while frozen.
    fn on_dns_change(&mut self) {
        let Some(dns) = &self.dns else {
            return;
        };
        let mut model = Model::clone(&self.model);
        if !dns.overlay(&mut model) {
            return;
        }
        let model = Arc::new(model);
        let policies = policies(&self.rollouts);
        let current = self.publisher.current();
        match RouteTable::build_shared(&model, &policies, &self.tls, &self.stats, &current) {
            Ok(table) => {
                let generation = self.publisher.publish(table);
                let replaced = std::mem::replace(&mut self.model, model);
                self.offload.dispose(replaced);
                tracing::info!(generation, "upstream addresses changed");
                self.announce_generation();
            }
            Err(error) => tracing::error!(%error, "cannot publish a route table"),
        }
    }

    /// Applies a reloaded config: reconciles rollouts with it, then builds and publishes its table,
    /// or keeps the current one.
    pub async fn apply(&mut self, mut loaded: Loaded) {
        // The resolver's current answers win over those the loader saw: a DNS change while the
        // file was being loaded is not lost.
        if let Some(dns) = &self.dns {
            dns.overlay(&mut loaded.model);
        }
        if loaded.model.admin != self.model.admin || loaded.model.state_dir != self.model.state_dir
        {
            tracing::warn!("admin or stateDir settings changed: they take effect after a restart");
        }
        let now_ms = self.clock.now_ms();
        let digest = crate::config_report::loaded_digest(&loaded);
        let model = Arc::new(loaded.model);
        let tls = Arc::new(loaded.tls);
        let mut rollouts = BTreeMap::new();
        let mut narrowed = Vec::new();
        let mut widened = Vec::new();
        let mut events = Vec::new();
        for service in model.services.iter().filter(|s| s.strategy.is_some()) {
            let (mut rollout, fresh) = match self.rollouts.get(&service.name) {
                Some(existing) => (existing.clone(), false),
                None => match restore(&self.store, service, &model, now_ms) {
                    Ok(rollout) => (rollout, true),
                    Err(error) => {
                        self.reloads
                            .get_or_create(&vec![("result", "failure")])
                            .inc();
                        tracing::error!(%error, "config rejected; the last good config keeps serving");
                        self.config.refused(digest, vec![error.to_string()], now_ms);
                        return;
                    }
                },
            };
            let ctx = Ctx {
                service,
                templates: &model.analysis_templates,
            };
            let effects = rollout.reconcile(ctx, now_ms);
            // Only what changed (or was never saved) is written: a reload of many services does
            // not rewrite every file.
            if fresh || effects.changed || self.unsaved.contains_key(&service.name) {
                if effects.widened {
                    widened.push(service.name.clone());
                } else {
                    narrowed.push(service.name.clone());
                }
            }
            events.extend(rollout.take_events());
            events.extend(effects.events);
            rollouts.insert(service.name.clone(), rollout);
        }
        let policies = policies(&rollouts);
        match self
            .publish_reloaded(&model, &tls, policies, rollouts, narrowed)
            .await
        {
            Ok(generation) => {
                let replaced = std::mem::replace(&mut self.model, model);
                self.offload.dispose(replaced);
                self.with_strategy = with_strategy(&self.model);
                self.hooks.configure(&self.model);
                self.tls = tls;
                if let Some(dns) = &self.dns {
                    dns.track(&self.model);
                }
                if let Some(hook) = self.on_applied.as_mut() {
                    hook(&self.model);
                }
                // A widening from a reload (rare: reconcile mostly narrows) is saved after it
                // is served; a failed save is retried from the tick.
                self.save_now(widened).await;
                self.reloads
                    .get_or_create(&vec![("result", "success")])
                    .inc();
                let config_generation = self.config.applied(digest, now_ms);
                tracing::info!(
                    generation,
                    config_generation,
                    services = self.model.services.len(),
                    "config applied"
                );
                self.send_events(events);
                self.refresh_status();
                self.announce_generation();
                self.hooks.publish_load_targets(&self.rollouts);
            }
            Err(error) => {
                self.reloads
                    .get_or_create(&vec![("result", "failure")])
                    .inc();
                tracing::error!(%error, "config rejected; the last good config keeps serving");
                self.config.refused(digest, vec![error.to_string()], now_ms);
            }
        }
    }
}

/// Loads a service's saved rollout, or starts one; an unreadable file pauses the rollout with
/// stable at 100%. A file from a newer weir, or a symbolic link, is an error: it is left as it is
/// and weir does not start (or the reload is rejected).
fn restore(
    store: &Store,
    service: &Service,
    model: &Model,
    now_ms: u64,
) -> Result<Rollout, StateError> {
    let ctx = Ctx {
        service,
        templates: &model.analysis_templates,
    };
    match store.load(&service.name) {
        Ok(Some(mut rollout)) => {
            tracing::info!(service = %service.name, revision = rollout.revision, step = rollout.step_index() + 1, weight = %rollout.weight(), phase = ?rollout.phase, "restored rollout state");
            let effects = rollout.reconcile(ctx, now_ms);
            // Handed out by the caller's `flush_events`.
            rollout.new_events.extend(effects.events);
            Ok(rollout)
        }
        Ok(None) => {
            let mut rollout = Rollout::new(service);
            let effects = rollout.reconcile(ctx, now_ms);
            rollout.new_events.extend(effects.events);
            Ok(rollout)
        }
        Err(error @ (StateError::NewerFormat { .. } | StateError::Symlink { .. })) => Err(error),
        Err(error) => {
            let aside = store.quarantine(&service.name);
            tracing::error!(service = %service.name, %error, kept_as = ?aside, "rollout state unreadable: serving stable at 100% and pausing the rollout");
            Ok(Rollout::unreadable(service, &error.to_string(), now_ms))
        }
    }
}

/// Waits for the next change of upstream addresses; never, without a resolver.
async fn next_change(changes: &mut Option<watch::Receiver<u64>>) {
    match changes {
        Some(rx) => {
            if rx.changed().await.is_err() {
                // The resolver state is gone (never while the driver holds it): stop listening.
                *changes = None;
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending::<()>().await,
    }
}

/// Runs blocking file work (fsync, rename) on tokio's blocking pool, off the control thread.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    match tokio::task::spawn_blocking(work).await {
        Ok(value) => value,
        // The work never panics on an I/O error (those are values); a panic in it is a bug and
        // carries on here. A blocking task is cancelled only when the runtime shuts down, which
        // drops this future first: `into_panic` is never reached for a cancellation.
        Err(error) => std::panic::resume_unwind(error.into_panic()),
    }
}

/// The policy of every service with a rollout. The others serve their file weight, which is
/// what [`RouteTable::build`] gives a service it has no policy for.
fn policies(rollouts: &BTreeMap<String, Rollout>) -> BTreeMap<String, Policy> {
    rollouts
        .iter()
        .map(|(name, rollout)| (name.clone(), rollout.policy()))
        .collect()
}

/// Positions of the services with a strategy, in file order.
fn with_strategy(model: &Model) -> Vec<usize> {
    model
        .services
        .iter()
        .enumerate()
        .filter(|(_, s)| s.strategy.is_some())
        .map(|(idx, _)| idx)
        .collect()
}

/// A 128-bit digest of a state file's bytes (two SipHash passes with different prefixes): an
/// accidental match is out of reach, and the bytes are weir's own serialization.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Digest(u64, u64);

impl Digest {
    fn of(bytes: &[u8]) -> Digest {
        let half = |prefix: u8| {
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            prefix.hash(&mut hasher);
            bytes.hash(&mut hasher);
            hasher.finish()
        };
        Digest(half(0), half(1))
    }
}

/// The longest builtin window any metric or check asks for.
fn max_window(model: &Model) -> Duration {
    let templates = model
        .analysis_templates
        .iter()
        .flat_map(|t| &t.metrics)
        .filter_map(|m| match &m.provider {
            Provider::Builtin(b) => Some(b.window),
            _ => None,
        });
    let checks = model
        .services
        .iter()
        .filter_map(|s| s.strategy.as_ref()?.progression())
        .flat_map(|p| p.checks.iter().map(|c| c.window));
    templates.chain(checks).max().unwrap_or(Duration::ZERO)
}

// === impl Handle ===

impl Handle {
    /// Sends an operator command and waits for the answer.
    pub async fn command(&self, service: &str, command: Command) -> Result<(), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Command {
                service: service.to_string(),
                command,
                reply,
            })
            .await
            .map_err(|_| CommandError::Closed)?;
        answer.await.map_err(|_| CommandError::Closed)?
    }

    /// Freezes the driver for a hand-over to a new process, or resumes it (see [`Input::Freeze`]).
    pub async fn freeze(&self, frozen: bool) -> Result<(), CommandError> {
        let (reply, answer) = oneshot::channel();
        self.inputs
            .send(Input::Freeze { frozen, reply })
            .await
            .map_err(|_| CommandError::Closed)?;
        answer
            .await
            .map_err(|_| CommandError::Closed)?
            .map_err(CommandError::Refused)
    }

    /// The latest status of every service.
    pub fn status(&self) -> Arc<Status> {
        self.status.borrow().clone()
    }

    /// A receiver that sees every status change.
    pub fn watch_status(&self) -> watch::Receiver<Arc<Status>> {
        self.status.clone()
    }

    /// Every event from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.events.subscribe()
    }

    /// The config generation and file digest applied, and the last refusal.
    pub fn config_report(&self) -> &ConfigReport {
        &self.config
    }

    /// The published table's generation, updated on every publish.
    pub fn generation(&self) -> watch::Receiver<u64> {
        self.generation.clone()
    }

    /// The services whose canary is load-tested now (see `engine/hooks.rs`), updated only
    /// when the set changes.
    pub fn load_targets(&self) -> watch::Receiver<Vec<weir_config::LoadTarget>> {
        self.load_targets.clone()
    }

    /// `weir_webhook_calls_total`, for the metrics registry.
    pub fn webhook_calls(&self) -> crate::engine::hooks::WebhookCounter {
        self.webhook_calls.clone()
    }

    /// The driver's reload thread, for the config loader (see [`Offload`]).
    pub fn offload(&self) -> Offload {
        self.offload.clone()
    }
}

#[cfg(test)]
mod tests {
    use weir_config::{
        CanarySteps, HeaderRoute, RequestMatch, Step, StrategyKind, StringMatch, Weight,
    };

    use super::*;

    const CONFIG: &str = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: checkout
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      canary:
        steps:
          - setWeight: 10
"#;

    /// Waits (up to 5 s) until the served table satisfies `ready`.
    async fn served(routes: &weir_proxy::Routes, ready: impl Fn(&Policy) -> bool) -> Policy {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let table = routes.current();
            let policy = table
                .service("checkout")
                .map(|s| s.policy().clone())
                .unwrap_or_default();
            if ready(&policy) {
                return policy;
            }
            assert!(Instant::now() < deadline, "never served: {policy:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn route_steps_are_published_and_saved_and_end_with_the_rollout() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.yaml");
        let state = dir.path().join("state");
        std::fs::write(&path, format!("stateDir: {}\n{CONFIG}", state.display())).expect("write");
        let mut loaded = crate::reload::load(&path).expect("loads");
        let beta = HeaderRoute {
            name: "beta".into(),
            any_of: vec![vec![RequestMatch::Header {
                name: "x-beta".into(),
                value: StringMatch::Exact("yes".into()),
            }]],
        };
        loaded.model.services[0]
            .strategy
            .as_mut()
            .expect("strategy")
            .kind = StrategyKind::Steps(CanarySteps {
            steps: vec![Step::SetHeaderRoute(beta.clone()), Step::Pause(None)],
            background: None,
        });
        let (driver, routes, handle) =
            Driver::new(loaded, Stats::new(), ReloadCounter::default()).expect("driver");
        let (_configs, configs_rx) = mpsc::channel(1);
        let task = tokio::spawn(driver.run(configs_rx));

        let policy = served(&routes, |p| !p.header_routes.is_empty()).await;
        assert_eq!(policy.header_routes, vec![beta]);
        assert_eq!(policy.weight, Weight::ZERO);
        let file = state.join("services/checkout.json");
        let saved = std::fs::read_to_string(&file).expect("state saved");
        assert!(
            saved.contains(r#""headerRoutes""#) && saved.contains("x-beta"),
            "{saved}"
        );

        handle
            .command("checkout", Command::Abort)
            .await
            .expect("aborted");
        let policy = served(&routes, |p| p.header_routes.is_empty()).await;
        assert_eq!(policy, Policy::from(Weight::ZERO));
        let saved: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&file).expect("state saved")).expect("json");
        let in_state = &saved["rollout"]["strategy"]["routes"]["headerRoutes"];
        assert_eq!(
            in_state,
            &serde_json::json!([]),
            "routes end with the rollout"
        );
        task.abort();
    }

    /// A state folder on a 16 KiB tmpfs (unmounted on drop) that can be filled up; where mounting
    /// is not permitted (not root), a folder made read-only instead.
    struct SmallDisk {
        dir: tempfile::TempDir,
        mounted: bool,
    }

    impl SmallDisk {
        fn new() -> SmallDisk {
            let dir = tempfile::tempdir().expect("temp dir");
            let state = dir.path().join("state");
            std::fs::create_dir(&state).expect("state dir");
            let mounted = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=16k", "tmpfs"])
                .arg(&state)
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if !mounted {
                eprintln!("cannot mount a tmpfs: a read-only state folder stands for a full disk");
            }
            SmallDisk { dir, mounted }
        }

        fn state(&self) -> std::path::PathBuf {
            self.dir.path().join("state")
        }

        fn config(&self, steps: &str) -> Loaded {
            let path = self.dir.path().join("weir.yaml");
            let text = format!(
                "stateDir: {}\nlisteners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nservices:\n  - name: checkout\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\n    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"] }}\n    strategy:\n      canary:\n        steps:\n{steps}",
                self.state().display()
            );
            std::fs::write(&path, text).expect("write");
            crate::reload::load(&path).expect("loads")
        }

        /// Fills the disk (or makes the services folder read-only).
        fn fill(&self) {
            let services = self.state().join("services");
            if !self.mounted {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o500))
                    .expect("chmod");
                return;
            }
            let mut filler = std::fs::File::create(self.state().join("filler")).expect("filler");
            let chunk = [0u8; 512];
            while std::io::Write::write_all(&mut filler, &chunk).is_ok() {}
        }

        fn free(&self) {
            let services = self.state().join("services");
            if !self.mounted {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&services, std::fs::Permissions::from_mode(0o700))
                    .expect("chmod");
                return;
            }
            std::fs::remove_file(self.state().join("filler")).expect("filler removed");
        }

        fn saved(&self) -> serde_json::Value {
            let file = self.state().join("services/checkout.json");
            serde_json::from_slice(&std::fs::read(file).expect("state file")).expect("json")
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            if self.mounted {
                let _ = std::process::Command::new("umount")
                    .arg(self.state())
                    .status();
            }
        }
    }

    fn weight_of(routes: &weir_proxy::Routes) -> f64 {
        routes
            .current()
            .service("checkout")
            .map_or(-1.0, |s| s.policy().weight.percent())
    }

    async fn next_event(events: &mut broadcast::Receiver<Event>, kind: &str) -> Event {
        tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match events.recv().await {
                    Ok(event) if event.kind == kind => return event,
                    Ok(_) => {}
                    Err(error) => panic!("events: {error}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no {kind} event within 5 s"))
    }

    /// Waits (up to 5 s) until the state file satisfies `done`.
    async fn saved_until(disk: &SmallDisk, done: impl Fn(&serde_json::Value) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let file = disk.state().join("services/checkout.json");
            if let Some(saved) = std::fs::read(&file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            {
                if done(&saved) {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "never saved");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn an_abort_on_a_full_disk_is_served_saved_when_space_returns_and_survives_a_restart() {
        let started = std::time::SystemTime::now();
        let disk = SmallDisk::new();
        let steps = "          - setWeight: 50\n          - pause: {}\n";
        let (driver, routes, handle) =
            Driver::new(disk.config(steps), Stats::new(), ReloadCounter::default())
                .expect("driver");
        let mut events = handle.subscribe();
        let (_configs, configs_rx) = mpsc::channel(1);
        let task = tokio::spawn(driver.run(configs_rx));
        served(&routes, |p| p.weight.percent() == 50.0).await;
        saved_until(&disk, |s| s["rollout"]["strategy"]["weightBp"] == 5000).await;

        disk.fill();
        handle
            .command("checkout", Command::Abort)
            .await
            .expect("the abort is accepted on a full disk");
        assert_eq!(weight_of(&routes), 0.0, "the abort is served at once");
        let event = next_event(&mut events, "StateNotSaved").await;
        assert!(event.message.contains("trying again"), "{}", event.message);
        assert_eq!(
            disk.saved()["rollout"]["strategy"]["weightBp"],
            5000,
            "the disk still holds the old state"
        );

        disk.free();
        saved_until(&disk, |s| s["rollout"]["strategy"]["weightBp"] == 0).await;
        task.abort();
        let _ = task.await;

        // A restart reads the abort back: weight 0 from the first table.
        let (_driver, routes, _handle) =
            Driver::new(disk.config(steps), Stats::new(), ReloadCounter::default())
                .expect("driver");
        assert_eq!(weight_of(&routes), 0.0, "the restart stays at weight 0");
        eprintln!(
            "abort on a full {} disk: served at 0% at once, saved by the retry once space returned, restart at 0% ({:?})",
            if disk.mounted { "16 KiB tmpfs" } else { "read-only" },
            started.elapsed().unwrap_or_default()
        );
    }

    #[tokio::test]
    async fn an_increase_that_cannot_be_saved_is_not_published() {
        let disk = SmallDisk::new();
        let steps = "          - setWeight: 10\n          - pause: {}\n          - setWeight: 40\n          - pause: {}\n";
        let (driver, routes, handle) =
            Driver::new(disk.config(steps), Stats::new(), ReloadCounter::default())
                .expect("driver");
        let mut events = handle.subscribe();
        let (_configs, configs_rx) = mpsc::channel(1);
        let task = tokio::spawn(driver.run(configs_rx));
        served(&routes, |p| p.weight.percent() == 10.0).await;
        saved_until(&disk, |s| s["rollout"]["strategy"]["weightBp"] == 1000).await;

        disk.fill();
        // Leaving the pause is accepted (it widens nothing by itself); the next step's increase
        // cannot be written, so it is not published and the rollout says why.
        let answer = handle
            .command("checkout", Command::Promote { full: false })
            .await;
        if let Err(error) = &answer {
            assert!(
                error.to_string().contains("cannot save rollout state"),
                "{error}"
            );
        }
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let event = next_event(&mut events, "StateNotSaved").await;
                if event.message.contains("stays at 10%") {
                    return event;
                }
            }
        })
        .await
        .expect("a StateNotSaved event for the increase");
        assert_eq!(event.weight, 10.0);
        // Several retries later, still 10%: nothing widened while it cannot be saved.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(weight_of(&routes), 10.0, "the increase is not published");
        assert_eq!(handle.status().services[0].canary_weight, 10.0);
        assert_eq!(disk.saved()["rollout"]["strategy"]["weightBp"], 1000);
        assert!(
            handle.status().services[0]
                .message
                .contains("cannot save rollout state"),
            "{}",
            handle.status().services[0].message
        );

        // Once the state can be written, the rollout goes on by itself.
        disk.free();
        served(&routes, |p| p.weight.percent() == 40.0).await;
        saved_until(&disk, |s| s["rollout"]["strategy"]["weightBp"] == 4000).await;
        eprintln!("promote on a full disk: the increase to 40% not published (10% served and on disk for 1.5 s of retries); once space returned: 40% served and saved");
        task.abort();
        let _ = task.await;
    }

    /// A config of `services` services (every tenth with a rollout held at 10%), s7's stable
    /// upstream on `port`.
    fn many_services(state: &std::path::Path, services: usize, port: u16) -> String {
        let mut text = format!(
            "stateDir: {}\nlisteners: [{{ name: public, address: \"127.0.0.1:0\" }}]\nservices:\n",
            state.display()
        );
        for n in 0..services {
            let stable = if n == 7 { port } else { 9001 };
            text.push_str(&format!(
                "  - name: s{n}\n    match: {{ hosts: [\"s{n}.example\"] }}\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:{stable}\"] }}\n    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"] }}\n"
            ));
            if n % 10 == 0 {
                text.push_str("    strategy:\n      canary:\n        steps:\n          - setWeight: 10\n          - pause: {}\n");
            }
        }
        text
    }

    /// A reload that changes nothing compiles no route again (every route of the new table is
    /// the old one's `Arc`, with its stats handles) and rewrites no state file; a reload that
    /// moves one service's upstream compiles that service only, which serves the new address.
    #[tokio::test]
    async fn a_reload_reuses_unchanged_routes_and_rewrites_no_unchanged_state() {
        const SERVICES: usize = 300;
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("weir.yaml");
        let state = dir.path().join("state");
        std::fs::write(&path, many_services(&state, SERVICES, 9001)).expect("write");
        let stats = Stats::new();
        let reloads = ReloadCounter::default();
        let applied = || reloads.get_or_create(&vec![("result", "success")]).get();
        let (driver, routes, _handle) = Driver::new(
            crate::reload::load(&path).expect("loads"),
            stats.clone(),
            reloads.clone(),
        )
        .expect("driver");
        let (configs, configs_rx) = mpsc::channel(4);
        let task = tokio::spawn(driver.run(configs_rx));
        let files: Vec<std::path::PathBuf> = (0..SERVICES)
            .step_by(10)
            .map(|n| state.join(format!("services/s{n}.json")))
            .collect();
        // Every rollout at its indefinite pause, at 10%, and saved so.
        let deadline = Instant::now() + Duration::from_secs(10);
        while !files.iter().all(|file| {
            std::fs::read(file)
                .ok()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
                .is_some_and(|s| {
                    s["rollout"]["strategy"]["weightBp"] == 1000
                        && s["rollout"]["phase"] == "Paused"
                })
        }) {
            assert!(Instant::now() < deadline, "rollouts never paused at 10%");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let inodes = || -> Vec<u64> {
            use std::os::unix::fs::MetadataExt;
            files
                .iter()
                .map(|f| std::fs::metadata(f).expect("state file").ino())
                .collect()
        };
        let reload = |port: u16| {
            std::fs::write(&path, many_services(&state, SERVICES, port)).expect("write");
            Box::new(crate::reload::load(&path).expect("loads"))
        };

        let wait_applied = |count: u64| async move {
            let deadline = Instant::now() + Duration::from_secs(10);
            while applied() < count {
                assert!(Instant::now() < deadline, "the reload is never applied");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        let before = routes.current();
        let saved = inodes();
        configs.send(reload(9001)).await.expect("driver runs");
        wait_applied(1).await;
        let after = routes.current();
        let reused = after.shared_routes(&before);
        assert_eq!(
            reused,
            SERVICES,
            "every route reused (generations {} → {})",
            before.generation(),
            after.generation()
        );
        let rewritten = saved
            .iter()
            .zip(inodes())
            .filter(|(a, b)| **a != *b)
            .count();
        assert_eq!(rewritten, 0, "no unchanged state file is written again");
        assert!(Arc::ptr_eq(
            after.service("s3").expect("s3").stable().stats(),
            &stats.handle("s3", "v1")
        ));

        let after = routes.current();
        configs.send(reload(9009)).await.expect("driver runs");
        wait_applied(2).await;
        let moved = routes.current();
        assert_eq!(
            moved.shared_routes(&after),
            SERVICES - 1,
            "generations {} → {}",
            after.generation(),
            moved.generation()
        );
        let s7 = moved.service("s7").expect("s7");
        assert_eq!(
            s7.stable().upstream_addrs().collect::<Vec<_>>(),
            vec!["127.0.0.1:9009".parse::<SocketAddr>().expect("addr")]
        );
        assert!(Arc::ptr_eq(
            s7.stable().stats(),
            after.service("s7").expect("s7").stable().stats()
        ));
        assert_eq!(
            weight_of_service(&moved, "s0"),
            10.0,
            "rollouts keep their weight"
        );
        eprintln!(
            "reload of {SERVICES} unchanged services: {reused} of {SERVICES} routes reused, {rewritten} of {} state files rewritten; one upstream moved: {} reused, 1 recompiled",
            files.len(),
            moved.shared_routes(&after)
        );
        task.abort();
        let _ = task.await;
    }

    fn weight_of_service(table: &RouteTable, name: &str) -> f64 {
        table
            .service(name)
            .map_or(-1.0, |s| s.policy().weight.percent())
    }
}

//! Notifications (`notifications[]`, `services[].notifications`): rollout events posted to Slack,
//! Microsoft Teams, Discord or any JSON endpoint, off the control loop.
//!
//! One dispatcher task subscribes to the driver's event broadcast ([`Notify::run`]). For each
//! event it finds the `on` value ([`message::trigger`]) and puts a message in the bounded queue
//! of every notifier of the event's service that asked for it. The driver never waits: the
//! broadcast never blocks its sender, and a full queue drops its oldest message. Each notifier has
//! its own worker task that delivers its queue in order ([`deliver`]: timeout, retries with a
//! doubling backoff, `Retry-After`), so a dead endpoint only delays its own messages.
//!
//! A reload ([`Notify::hook`], called by the driver once a config is served) changes the
//! notifiers in place: a notifier that stays keeps its queue and worker and uses its new settings
//! from the next message on; a new one gets a worker; a removed one is stopped (how many messages
//! it still had waiting is logged) and its series are removed. The hook runs before the driver broadcasts the reload's events,
//! and the dispatcher looks at settings before events, so a reload's own events already go to its
//! notifiers.
//!
//! `weir_notifications_total{notifier,result}` counts, per notifier: `delivered`, `failed`
//! (given up: a 4xx answer, retries exhausted, an unreadable `urlFile`), `retried` (an attempt
//! that failed and will be tried again), `dropped` (a message pushed out of a full queue, or
//! events missed because the dispatcher fell behind the broadcast, counted for every notifier).

mod deliver;
pub mod message;

#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use weir_config::{Model, Notifier};

use crate::engine::rollout::Event;
use message::Item;

/// What the notifications need from a config.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settings {
    /// The notifiers.
    pub notifiers: Vec<Notifier>,
    /// Each service's notifier names (services without any are left out).
    pub services: BTreeMap<String, Vec<String>>,
}

impl Settings {
    /// The notification settings of `model`.
    pub fn from_model(model: &Model) -> Settings {
        Settings {
            notifiers: model.notifications.clone(),
            services: model
                .services
                .iter()
                .filter(|s| !s.notifications.is_empty())
                .map(|s| (s.name.clone(), s.notifications.clone()))
                .collect(),
        }
    }
}

/// The `result` label of `weir_notifications_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    Delivered,
    Failed,
    Retried,
    Dropped,
}

impl Outcome {
    const ALL: [Outcome; 4] = [
        Outcome::Delivered,
        Outcome::Failed,
        Outcome::Retried,
        Outcome::Dropped,
    ];

    fn as_str(self) -> &'static str {
        match self {
            Outcome::Delivered => "delivered",
            Outcome::Failed => "failed",
            Outcome::Retried => "retried",
            Outcome::Dropped => "dropped",
        }
    }
}

/// `weir_notifications_total{notifier,result}`.
#[derive(Clone, Debug, Default)]
pub(crate) struct Counters(Family<Vec<(&'static str, String)>, Counter>);

impl Counters {
    fn labels(notifier: &str, outcome: Outcome) -> Vec<(&'static str, String)> {
        vec![
            ("notifier", notifier.to_string()),
            ("result", outcome.as_str().to_string()),
        ]
    }

    pub(crate) fn inc(&self, notifier: &str, outcome: Outcome) {
        self.add(notifier, outcome, 1);
    }

    fn add(&self, notifier: &str, outcome: Outcome, by: u64) {
        self.0
            .get_or_create(&Self::labels(notifier, outcome))
            .inc_by(by);
    }

    /// Every series of `notifier` exists (at 0), so `rate()` and alerts work from the start.
    fn create(&self, notifier: &str) {
        for outcome in Outcome::ALL {
            let _ = self.0.get_or_create(&Self::labels(notifier, outcome));
        }
    }

    fn remove(&self, notifier: &str) {
        for outcome in Outcome::ALL {
            self.0.remove(&Self::labels(notifier, outcome));
        }
    }
}

/// The notifications of one weir: settings from the served config, counters, and the task that
/// delivers ([`Notify::run`]).
pub struct Notify {
    settings: watch::Sender<Arc<Settings>>,
    counters: Counters,
    config_file: Arc<Path>,
}

impl Notify {
    /// Notifications configured by `model`, loaded from `config_file` (named in `Aborted`
    /// messages, so a pipeline knows which file to revert).
    pub fn new(model: &Model, config_file: &Path) -> Notify {
        let config_file: PathBuf =
            std::path::absolute(config_file).unwrap_or_else(|_| config_file.to_path_buf());
        let (settings, _) = watch::channel(Arc::new(Settings::from_model(model)));
        Notify {
            settings,
            counters: Counters::default(),
            config_file: config_file.into(),
        }
    }

    /// Registers `weir_notifications_total{notifier,result}`.
    pub fn register(&self, registry: &mut Registry) {
        for notifier in &self.settings.borrow().notifiers {
            self.counters.create(&notifier.name);
        }
        registry.register(
            "weir_notifications",
            "Notification deliveries per notifier by result (delivered, failed, retried, dropped)",
            self.counters.0.clone(),
        );
    }

    /// What the driver calls with every config it serves: the new notifiers apply from the next
    /// event on. Cheap (a comparison, a clone of the notification settings when they changed).
    pub fn hook(&self) -> impl FnMut(&Model) + Send + 'static {
        let settings = self.settings.clone();
        move |model: &Model| {
            let next = Settings::from_model(model);
            settings.send_if_modified(|current| {
                if **current == next {
                    return false;
                }
                *current = Arc::new(next);
                true
            });
        }
    }

    /// The dispatcher: runs until `events` closes (or the task is aborted, which stops every
    /// notifier's worker too). Subscribe before the driver runs, so no event is missed.
    pub fn run(&self, events: broadcast::Receiver<Event>) -> impl Future<Output = ()> + Send {
        let dispatcher = Dispatcher {
            settings: self.settings.subscribe(),
            counters: self.counters.clone(),
            config_file: self.config_file.clone(),
            workers: BTreeMap::new(),
            services: BTreeMap::new(),
            client: None,
        };
        dispatcher.run(events)
    }
}

/// A notifier's bounded queue: the dispatcher pushes (never waits), the worker pops.
#[derive(Debug)]
struct Queue {
    items: Mutex<VecDeque<Item>>,
    ready: tokio::sync::Notify,
}

impl Queue {
    fn new() -> Queue {
        Queue {
            items: Mutex::new(VecDeque::new()),
            ready: tokio::sync::Notify::new(),
        }
    }

    /// Adds `item`; when `capacity` is reached, the oldest waiting items make room and are
    /// returned (to be counted).
    fn push(&self, item: Item, capacity: usize) -> usize {
        let mut items = self.items.lock().unwrap_or_else(PoisonError::into_inner);
        let mut dropped = 0;
        while items.len() >= capacity.max(1) {
            items.pop_front();
            dropped += 1;
        }
        items.push_back(item);
        drop(items);
        self.ready.notify_one();
        dropped
    }

    async fn pop(&self) -> Item {
        loop {
            let next = self
                .items
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .pop_front();
            if let Some(item) = next {
                return item;
            }
            // `notify_one` stores a permit when no one waits: a push between the check and
            // here still wakes this.
            self.ready.notified().await;
        }
    }

    fn len(&self) -> usize {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

/// One notifier's queue and worker task (stopped when dropped).
struct Worker {
    notifier: Arc<Notifier>,
    settings: watch::Sender<Arc<Notifier>>,
    queue: Arc<Queue>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.task.abort();
    }
}

struct Dispatcher {
    settings: watch::Receiver<Arc<Settings>>,
    counters: Counters,
    config_file: Arc<Path>,
    workers: BTreeMap<String, Worker>,
    services: BTreeMap<String, Vec<String>>,
    /// Built with the first notifier (loading the system's roots takes a moment).
    client: Option<deliver::Client>,
}

impl Dispatcher {
    async fn run(mut self, mut events: broadcast::Receiver<Event>) {
        let current = self.settings.borrow_and_update().clone();
        self.reconcile(&current);
        loop {
            tokio::select! {
                // Settings first: a reload's hook runs before its events are broadcast.
                biased;
                changed = self.settings.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let current = self.settings.borrow_and_update().clone();
                    self.reconcile(&current);
                }
                received = events.recv() => match received {
                    Ok(event) => self.dispatch(event),
                    Err(RecvError::Lagged(missed)) => {
                        tracing::warn!(target: "weir::notify", missed, "notifications fell behind the event stream; events were missed");
                        for name in self.workers.keys() {
                            self.counters.add(name, Outcome::Dropped, missed);
                        }
                    }
                    Err(RecvError::Closed) => return,
                },
            }
        }
    }

    fn reconcile(&mut self, settings: &Settings) {
        self.services = settings.services.clone();
        let removed: Vec<String> = self
            .workers
            .keys()
            .filter(|name| !settings.notifiers.iter().any(|n| &n.name == *name))
            .cloned()
            .collect();
        for name in removed {
            if let Some(worker) = self.workers.remove(&name) {
                let waiting = worker.queue.len() as u64;
                if waiting > 0 {
                    tracing::warn!(target: "weir::notify", notifier = %name, waiting, "notifier removed from the config; its waiting messages are dropped");
                }
                drop(worker);
                self.counters.remove(&name);
            }
        }
        for notifier in &settings.notifiers {
            self.counters.create(&notifier.name);
            match self.workers.get_mut(&notifier.name) {
                Some(worker) if *worker.notifier == *notifier => {}
                Some(worker) => {
                    worker.notifier = Arc::new(notifier.clone());
                    worker.settings.send_replace(worker.notifier.clone());
                }
                None => {
                    let client = self.client.get_or_insert_with(deliver::Client::new).clone();
                    let notifier = Arc::new(notifier.clone());
                    let (settings, settings_rx) = watch::channel(notifier.clone());
                    let queue = Arc::new(Queue::new());
                    let task = tokio::spawn(work(
                        queue.clone(),
                        settings_rx,
                        client,
                        self.counters.clone(),
                    ));
                    self.workers.insert(
                        notifier.name.clone(),
                        Worker {
                            notifier,
                            settings,
                            queue,
                            task,
                        },
                    );
                }
            }
        }
    }

    fn dispatch(&self, event: Event) {
        let Some(on) = message::trigger(&event) else {
            return;
        };
        let Some(names) = self.services.get(&event.service) else {
            return;
        };
        let event = Arc::new(event);
        for name in names {
            let Some(worker) = self.workers.get(name) else {
                continue;
            };
            if !worker.notifier.on.contains(&on) {
                continue;
            }
            let item = Item {
                event: event.clone(),
                on,
                config_file: self.config_file.clone(),
            };
            let dropped = worker.queue.push(item, worker.notifier.queue_size);
            if dropped > 0 {
                tracing::warn!(target: "weir::notify", notifier = %name, dropped, queue_size = worker.notifier.queue_size, "notification queue full: the oldest messages were dropped");
                self.counters.add(name, Outcome::Dropped, dropped as u64);
            }
        }
    }
}

/// A notifier's worker: delivers its queue in order, with the settings current at each message.
async fn work(
    queue: Arc<Queue>,
    settings: watch::Receiver<Arc<Notifier>>,
    client: deliver::Client,
    counters: Counters,
) {
    loop {
        let item = queue.pop().await;
        let notifier = settings.borrow().clone();
        deliver::deliver(&client, &notifier, &item, &counters).await;
    }
}

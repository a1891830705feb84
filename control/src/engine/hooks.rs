//! The driver's side of the webhooks (`rollout/hooks.rs` decides): every call runs on its own
//! task with the hook's timeout, off the driver's loop, and answers through
//! [`Input::Hooked`]; `post-rollout` calls are fire-and-forget; `event` hooks get every event of
//! their service in order from one bounded queue per hook (full: the event is dropped and
//! counted, never waited for). `weir_webhook_calls_total{service,webhook,result}` counts every
//! call (`result`: `success`, `failure` (non-2xx), `timeout`, `error` (no exchange), `dropped`);
//! label values are bounded (names from the config, five results).
//!
//! It also publishes the built-in load test's targets ([`Hooks::publish_load_targets`]): the
//! services whose canary analysis runs now and that have a `loadTest` hook.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tokio::sync::{mpsc, watch};
use weir_config::{LoadTarget, Model, Webhook, WebhookKind};

use crate::engine::analysis::provider::http::{self, FetchError};
use crate::engine::driver::Input;
use crate::engine::rollout::{Event, HookAnswer, HookCall, Payload, Rollout};

/// `weir_webhook_calls_total{service,webhook,result}`.
pub type WebhookCounter = Family<Vec<(&'static str, String)>, Counter>;

/// Events queued per `event` hook before new ones are dropped (and counted).
const EVENT_QUEUE: usize = 256;
/// The most of a refusing hook's body quoted in the rollout's message.
const QUOTED_BODY: usize = 200;

/// The webhooks' shell state, owned by the driver.
pub struct Hooks {
    counter: WebhookCounter,
    config_file: Option<String>,
    /// The hooks of each service that has any.
    by_service: HashMap<String, Arc<[Webhook]>>,
    /// The services with a `loadTest` hook, in file order, with their load tests.
    load_tests: Vec<(String, Vec<weir_config::LoadTest>)>,
    /// One sender task per `event` hook, by (service, hook).
    queues: HashMap<(String, String), EventQueue>,
    load_targets: watch::Sender<Vec<LoadTarget>>,
}

struct EventQueue {
    hook: Webhook,
    tx: mpsc::Sender<Payload>,
}

// === impl Hooks ===

impl Hooks {
    /// No hooks yet (see [`Hooks::configure`]); the receiver sees the load-test targets.
    pub fn new() -> (Hooks, watch::Receiver<Vec<LoadTarget>>) {
        let (load_targets, rx) = watch::channel(Vec::new());
        let hooks = Hooks {
            counter: WebhookCounter::default(),
            config_file: None,
            by_service: HashMap::new(),
            load_tests: Vec::new(),
            queues: HashMap::new(),
            load_targets,
        };
        (hooks, rx)
    }

    /// The call counter, for the metrics registry.
    pub fn counter(&self) -> WebhookCounter {
        self.counter.clone()
    }

    /// The config file weir runs, sent to `post-rollout`, `rollback` and abort `event` hooks.
    pub fn set_config_file(&mut self, path: &std::path::Path) {
        self.config_file = Some(path.display().to_string());
    }

    /// Takes the hooks of `model` (a new or reloaded config): the event queues of hooks that
    /// are gone or changed end once they have sent what they hold.
    pub fn configure(&mut self, model: &Model) {
        self.by_service = model
            .services
            .iter()
            .filter_map(|s| {
                let hooks = &s.strategy.as_ref()?.webhooks;
                (!hooks.is_empty()).then(|| (s.name.clone(), Arc::from(hooks.as_slice())))
            })
            .collect();
        self.load_tests = model
            .services
            .iter()
            .filter_map(|s| {
                let hooks = &s.strategy.as_ref()?.webhooks;
                let loads: Vec<_> = hooks
                    .iter()
                    .filter_map(Webhook::load_test)
                    .cloned()
                    .collect();
                (!loads.is_empty()).then(|| (s.name.clone(), loads))
            })
            .collect();
        let by_service = &self.by_service;
        self.queues.retain(|(service, name), queue| {
            by_service
                .get(service)
                .and_then(|hooks| hooks.iter().find(|h| &h.name == name))
                .is_some_and(|hook| *hook == queue.hook)
        });
    }

    /// Makes `call` on its own task; its answer comes back as [`Input::Hooked`].
    pub fn call(
        &self,
        service: String,
        revision: u64,
        mut call: HookCall,
        inputs: mpsc::Sender<Input>,
    ) {
        self.fill_revert(&mut call.payload);
        let counter = self.counter.clone();
        tokio::spawn(async move {
            let answer = post(&counter, &service, &call.hook, &call.payload).await;
            let _ = inputs
                .send(Input::Hooked {
                    service,
                    revision,
                    hook: call.hook.name,
                    epoch: call.epoch,
                    answer,
                })
                .await;
        });
    }

    /// Tells `service`'s `post-rollout` hooks that the revision ended with `event`.
    pub fn ended(&self, service: &str, event: &Event, aborted: bool) {
        let Some(hooks) = self.by_service.get(service) else {
            return;
        };
        for hook in hooks
            .iter()
            .filter(|h| h.kind == WebhookKind::PostRollout && h.url().is_some())
        {
            let mut payload = Payload::post_rollout(hook, event, aborted);
            self.fill_revert(&mut payload);
            let (counter, hook, service) =
                (self.counter.clone(), hook.clone(), service.to_string());
            tokio::spawn(async move {
                let answer = post(&counter, &service, &hook, &payload).await;
                if !answer.ok {
                    tracing::warn!(service, webhook = %hook.name, "post-rollout webhook failed: {}", answer.message);
                }
            });
        }
    }

    /// Queues `events` for their services' `event` hooks.
    pub fn events(&mut self, events: &[Event]) {
        for event in events {
            let Some(hooks) = self.by_service.get(&event.service).cloned() else {
                continue;
            };
            for hook in hooks
                .iter()
                .filter(|h| h.kind == WebhookKind::Event && h.url().is_some())
            {
                let mut payload = Payload::for_event(hook, event);
                self.fill_revert(&mut payload);
                let key = (event.service.clone(), hook.name.clone());
                let queue = self
                    .queues
                    .entry(key)
                    .or_insert_with(|| spawn_queue(&self.counter, &event.service, hook));
                if queue.tx.try_send(payload).is_err() {
                    count(&self.counter, &event.service, &hook.name, "dropped");
                    tracing::warn!(service = %event.service, webhook = %hook.name, "event webhook queue full: event dropped");
                }
            }
        }
    }

    /// Publishes the load-test targets of `rollouts` (only when the set changed). Looks only at
    /// the services with a `loadTest` hook.
    pub fn publish_load_targets(&self, rollouts: &BTreeMap<String, Rollout>) {
        let mut targets = Vec::new();
        for (service, loads) in &self.load_tests {
            let Some(rollout) = rollouts.get(service) else {
                continue;
            };
            let Some(version) = rollout.canary_version.as_ref() else {
                continue;
            };
            if !rollout.analysis_running() {
                continue;
            }
            for load in loads {
                targets.push(LoadTarget {
                    service: service.clone(),
                    version: version.clone(),
                    load: load.clone(),
                });
            }
        }
        self.load_targets.send_if_modified(|current| {
            if *current == targets {
                false
            } else {
                *current = targets;
                true
            }
        });
    }

    fn fill_revert(&self, payload: &mut Payload) {
        if let Some(revert) = payload.revert.as_mut() {
            revert.config_file.clone_from(&self.config_file);
        }
    }
}

fn spawn_queue(counter: &WebhookCounter, service: &str, hook: &Webhook) -> EventQueue {
    let (tx, mut rx) = mpsc::channel::<Payload>(EVENT_QUEUE);
    let (counter, service, task_hook) = (counter.clone(), service.to_string(), hook.clone());
    tokio::spawn(async move {
        while let Some(payload) = rx.recv().await {
            let answer = post(&counter, &service, &task_hook, &payload).await;
            if !answer.ok {
                tracing::warn!(service, webhook = %task_hook.name, "event webhook failed: {}", answer.message);
            }
        }
    });
    EventQueue {
        hook: hook.clone(),
        tx,
    }
}

fn count(counter: &WebhookCounter, service: &str, hook: &str, result: &'static str) {
    counter
        .get_or_create(&vec![
            ("service", service.to_string()),
            ("webhook", hook.to_string()),
            ("result", result.to_string()),
        ])
        .inc();
}

/// POSTs `payload` as JSON to the hook's URL within its timeout, and counts the call.
async fn post(
    counter: &WebhookCounter,
    service: &str,
    hook: &Webhook,
    payload: &Payload,
) -> HookAnswer {
    let Some(url) = hook.url() else {
        return HookAnswer {
            ok: true,
            message: "no URL".into(),
        };
    };
    let body = match serde_json::to_string(payload) {
        Ok(body) => body,
        Err(error) => {
            count(counter, service, &hook.name, "error");
            return HookAnswer {
                ok: false,
                message: format!("cannot encode the body: {error}"),
            };
        }
    };
    let headers = [("content-type".to_string(), "application/json".to_string())];
    let result = http::fetch("POST", url, &headers, Some(body), hook.timeout).await;
    let (answer, label) = match result {
        Ok(response) if response.status.is_success() => (
            HookAnswer {
                ok: true,
                message: format!("answered {}", response.status.as_u16()),
            },
            "success",
        ),
        Ok(response) => {
            let text = String::from_utf8_lossy(&response.body);
            let text: String = text.trim().chars().take(QUOTED_BODY).collect();
            let message = if text.is_empty() {
                format!("answered {}", response.status.as_u16())
            } else {
                format!("answered {}: {text}", response.status.as_u16())
            };
            (HookAnswer { ok: false, message }, "failure")
        }
        Err(error @ FetchError::Timeout(_)) => (
            HookAnswer {
                ok: false,
                message: error.to_string(),
            },
            "timeout",
        ),
        Err(error) => (
            HookAnswer {
                ok: false,
                message: error.to_string(),
            },
            "error",
        ),
    };
    count(counter, service, &hook.name, label);
    answer
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::engine::rollout::{Command, Ctx};

    #[tokio::test]
    async fn load_targets_are_the_canaries_under_analysis_and_change_only_with_the_set() {
        let yaml = r#"
listeners: [{ name: public, address: "127.0.0.1:0" }]
services:
  - name: quiet
    stable: { version: v1, upstreams: ["127.0.0.1:9001"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9002"] }
    strategy:
      canary:
        analysis:
          interval: 10s
          threshold: 2
          stepWeight: 50
          maxWeight: 50
          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]
        webhooks:
          - { name: load, loadTest: { rate: 20, path: /health } }
  - name: other
    match: { hosts: [other.example.com] }
    stable: { version: v1, upstreams: ["127.0.0.1:9003"] }
    canary: { version: v2, upstreams: ["127.0.0.1:9004"] }
    strategy: { canary: { steps: [{ setWeight: 10 }] } }
"#;
        let model = weir_config::parse(yaml, Path::new("/")).expect("valid");
        let (mut hooks, mut targets) = Hooks::new();
        hooks.configure(&model);
        let mut rollouts = BTreeMap::new();
        for service in &model.services {
            let mut rollout = Rollout::new(service);
            let ctx = Ctx {
                service,
                templates: &model.analysis_templates,
            };
            let _ = rollout.reconcile(ctx, 0);
            rollouts.insert(service.name.clone(), rollout);
        }
        hooks.publish_load_targets(&rollouts);
        assert!(targets.has_changed().expect("open"));
        let now = targets.borrow_and_update().clone();
        assert_eq!(now.len(), 1, "{now:?}");
        assert_eq!(
            (
                now[0].service.as_str(),
                now[0].version.as_str(),
                now[0].load.rate
            ),
            ("quiet", "v2", 20)
        );
        hooks.publish_load_targets(&rollouts);
        assert!(
            !targets.has_changed().expect("open"),
            "the same set is not sent again"
        );
        let ctx = Ctx {
            service: &model.services[0],
            templates: &model.analysis_templates,
        };
        let quiet = rollouts.get_mut("quiet").expect("quiet");
        let _ = quiet.command(ctx, Command::Pause, 1).expect("pause");
        hooks.publish_load_targets(&rollouts);
        assert!(
            targets.borrow_and_update().is_empty(),
            "an operator pause stops it"
        );
        let quiet = rollouts.get_mut("quiet").expect("quiet");
        let _ = quiet.command(ctx, Command::Resume, 2).expect("resume");
        hooks.publish_load_targets(&rollouts);
        assert_eq!(targets.borrow_and_update().len(), 1, "resumed");
        let _ = rollouts
            .get_mut("quiet")
            .expect("quiet")
            .command(ctx, Command::Abort, 3)
            .expect("abort");
        hooks.publish_load_targets(&rollouts);
        assert!(targets.borrow_and_update().is_empty(), "an abort stops it");
    }
}

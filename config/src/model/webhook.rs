//! `strategy.canary.webhooks`: Flagger's eight webhook kinds (issue #9).

use std::collections::BTreeMap;
use std::time::Duration;

use super::loadtest::LoadTest;

/// One entry of `strategy.canary.webhooks`: an HTTP POST with a JSON body that gates, checks or
/// is told about the rollout, as Flagger's webhooks.
#[derive(Clone, Debug, PartialEq)]
pub struct Webhook {
    /// `name` (required, unique in the list).
    pub name: String,
    /// `type` (default `rollout`, as in Flagger).
    pub kind: WebhookKind,
    /// `url`, or, for `type: rollout` only, `loadTest` (weir sends the traffic itself).
    pub target: WebhookTarget,
    /// `timeout` (default [`Webhook::DEFAULT_TIMEOUT`], at most [`Webhook::MAX_TIMEOUT`]): a call
    /// unanswered by then fails (a gate stays closed, a check fails) and the connection is dropped.
    pub timeout: Duration,
    /// `interval` (default: the analysis `interval` of a Flagger progression or A/B test, else
    /// [`Webhook::DEFAULT_INTERVAL`]; at least [`Webhook::MIN_INTERVAL`]): how often a gate, a
    /// `pre-rollout`, `rollout` or `rollback` hook is asked again.
    pub interval: Duration,
    /// `metadata` (default none): string pairs sent in the body.
    pub metadata: BTreeMap<String, String>,
}

impl Webhook {
    /// `timeout` when not written: 10s (Flagger's).
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The longest `timeout` accepted: 10m.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(600);
    /// `interval` when neither the hook nor a Flagger analysis gives one: 10s.
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(10);
    /// The shortest `interval` accepted: 100ms (a hook is never asked in a busy loop).
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);

    /// The URL called, when the hook calls one (not a load test).
    pub fn url(&self) -> Option<&str> {
        match &self.target {
            WebhookTarget::Url(url) => Some(url),
            WebhookTarget::LoadTest(_) => None,
        }
    }

    /// The built-in load test, for `type: rollout` with `loadTest`.
    pub fn load_test(&self) -> Option<&LoadTest> {
        match &self.target {
            WebhookTarget::LoadTest(load) => Some(load),
            WebhookTarget::Url(_) => None,
        }
    }
}

/// What a webhook entry calls.
#[derive(Clone, Debug, PartialEq)]
pub enum WebhookTarget {
    /// `url`: an `http://` or `https://` URL.
    Url(String),
    /// `loadTest`: no call; weir load-tests the canary while analysis runs.
    LoadTest(LoadTest),
}

/// Flagger's webhook types.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WebhookKind {
    /// `confirm-rollout`: asked before a revision moves any traffic; holds until 2xx.
    ConfirmRollout,
    /// `pre-rollout`: before traffic moves; a failure counts toward the failure limit.
    PreRollout,
    /// `rollout`: at every check; a failure is a failed check.
    Rollout,
    /// `confirm-traffic-increase`: before each weight increase; holds until 2xx.
    ConfirmTrafficIncrease,
    /// `confirm-promotion`: before promotion; holds until 2xx.
    ConfirmPromotion,
    /// `post-rollout`: told the outcome after promotion or abort.
    PostRollout,
    /// `rollback`: asked every interval while the rollout is in progress; 2xx aborts.
    Rollback,
    /// `event`: receives every event.
    Event,
}

impl WebhookKind {
    /// Every kind, in the order of a rollout.
    pub const ALL: [WebhookKind; 8] = [
        WebhookKind::ConfirmRollout,
        WebhookKind::PreRollout,
        WebhookKind::Rollout,
        WebhookKind::ConfirmTrafficIncrease,
        WebhookKind::ConfirmPromotion,
        WebhookKind::PostRollout,
        WebhookKind::Rollback,
        WebhookKind::Event,
    ];

    /// The config's (and Flagger's) spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            WebhookKind::ConfirmRollout => "confirm-rollout",
            WebhookKind::PreRollout => "pre-rollout",
            WebhookKind::Rollout => "rollout",
            WebhookKind::ConfirmTrafficIncrease => "confirm-traffic-increase",
            WebhookKind::ConfirmPromotion => "confirm-promotion",
            WebhookKind::PostRollout => "post-rollout",
            WebhookKind::Rollback => "rollback",
            WebhookKind::Event => "event",
        }
    }

    /// The kind the config spells `name`.
    pub fn parse(name: &str) -> Option<WebhookKind> {
        WebhookKind::ALL.into_iter().find(|k| k.as_str() == name)
    }

    /// A gate: holds the rollout (an operator wait) until it answers 2xx.
    pub fn is_gate(self) -> bool {
        matches!(
            self,
            WebhookKind::ConfirmRollout
                | WebhookKind::ConfirmTrafficIncrease
                | WebhookKind::ConfirmPromotion
        )
    }
}

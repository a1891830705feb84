//! `notifications[]` and `services[].notifications` (issue #9): messages to Slack, Microsoft
//! Teams, Discord or any JSON endpoint when a rollout does something worth telling people about.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// `notifications[]`: one place rollout messages are posted to.
///
/// Delivery runs off the control loop, one bounded queue per notifier: a slow or dead endpoint
/// never delays a rollout. Failures are logged (target `weir::notify`) and counted in
/// `weir_notifications_total{notifier,result}`, never fatal.
#[derive(Clone, Debug, PartialEq)]
pub struct Notifier {
    /// `name` (required, unique): what `services[].notifications` refers to, and the `notifier`
    /// label of `weir_notifications_total`.
    pub name: String,
    /// `kind` (required): the body's shape.
    pub kind: NotifierKind,
    /// Where messages are posted: `url`, or `urlFile` (exactly one of them).
    pub target: NotifierTarget,
    /// `on` (default [`NotifyOn::DEFAULT`]: `Aborted`, `Promoted`): which rollout events are sent.
    pub on: Vec<NotifyOn>,
    /// `headers` (only for `kind: generic`, default none): added to every request, as a mapping
    /// `{Name: value}`.
    pub headers: Vec<(String, String)>,
    /// `channel` (only for `kind: slack`, default: the webhook's own channel): overrides the
    /// channel (`#deploys`) where the webhook allows it.
    pub channel: Option<String>,
    /// `username` (`kind: slack` or `discord`, default: the webhook's own name): the name the
    /// message is posted under.
    pub username: Option<String>,
    /// `timeout` (default [`Notifier::DEFAULT_TIMEOUT`], 10s; at most
    /// [`Notifier::MAX_TIMEOUT`], 60s): one delivery attempt (connect, send, answer) past it is
    /// abandoned and, like a connection error, retried.
    pub timeout: Duration,
    /// `retries` (default [`Notifier::DEFAULT_RETRIES`], 3; at most [`Notifier::MAX_RETRIES`],
    /// 10): attempts after the first when the endpoint cannot be reached, times out, or answers
    /// 429 or 5xx. Any other answer outside 2xx is a failure at once.
    pub retries: u32,
    /// `retryBackoff` (default [`Notifier::DEFAULT_RETRY_BACKOFF`], 1s): the wait before the
    /// first retry, doubled before each next one, capped at [`Notifier::MAX_BACKOFF`] (30s). A
    /// `Retry-After` answer is honoured up to [`Notifier::MAX_RETRY_AFTER`] (60s).
    pub retry_backoff: Duration,
    /// `queueSize` (default [`Notifier::DEFAULT_QUEUE_SIZE`], 100; between 1 and
    /// [`Notifier::MAX_QUEUE_SIZE`], 10,000): messages waiting for delivery. When full, the
    /// oldest waiting message is dropped (counted `dropped`), so memory stays bounded whatever
    /// the endpoint does.
    pub queue_size: usize,
}

impl Notifier {
    /// Default of [`Notifier::timeout`].
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
    /// The longest `timeout` accepted.
    pub const MAX_TIMEOUT: Duration = Duration::from_secs(60);
    /// Default of [`Notifier::retries`].
    pub const DEFAULT_RETRIES: u32 = 3;
    /// The most `retries` accepted.
    pub const MAX_RETRIES: u32 = 10;
    /// Default of [`Notifier::retry_backoff`].
    pub const DEFAULT_RETRY_BACKOFF: Duration = Duration::from_secs(1);
    /// The longest wait between two attempts (the doubled backoff stops growing there).
    pub const MAX_BACKOFF: Duration = Duration::from_secs(30);
    /// The longest `Retry-After` honoured.
    pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
    /// Default of [`Notifier::queue_size`].
    pub const DEFAULT_QUEUE_SIZE: usize = 100;
    /// The largest `queueSize` accepted.
    pub const MAX_QUEUE_SIZE: usize = 10_000;
}

/// `notifications[].kind`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum NotifierKind {
    /// `slack`: Slack's incoming-webhook JSON (`text` and a colored attachment with fields).
    Slack,
    /// `msteams`: a Microsoft Teams connector MessageCard.
    MsTeams,
    /// `discord`: a Discord webhook (`content` and one embed).
    Discord,
    /// `generic`: a JSON object with every field of the event (documented in docs/delivery-pipelines.md, "Notifications").
    Generic,
}

impl NotifierKind {
    /// Every kind, as written in the file.
    pub const ALL: [NotifierKind; 4] = [
        NotifierKind::Slack,
        NotifierKind::MsTeams,
        NotifierKind::Discord,
        NotifierKind::Generic,
    ];

    /// The kind as written in the file.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifierKind::Slack => "slack",
            NotifierKind::MsTeams => "msteams",
            NotifierKind::Discord => "discord",
            NotifierKind::Generic => "generic",
        }
    }
}

/// Where a notifier posts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotifierTarget {
    /// `url`: the URL as written (`http://` or `https://`).
    Url(String),
    /// `urlFile`: a file holding the URL (absolute path), read at every delivery so a rotated
    /// secret needs no reload; a missing or unreadable file fails that delivery, naming the file.
    File(PathBuf),
}

/// What a notifier is sent: one rollout event kind, as written in `on`.
///
/// Mapping from the engine's events (`GET /api/v1/events` kinds):
/// `Started` ← `Started`, `Retry`; `StepCompleted` ← `Advance`, `AnalysisPassed`,
/// `Promoted step`, `Switched`; `Paused` ← `Paused`; `Resumed` ← `Resumed`; `AnalysisFailed` ←
/// `Halt`; `AnalysisInconclusive` ← `Inconclusive`; `MeasurementError` ← `MeasurementError`;
/// `Aborted` ← `Rollback` that ends in phase `Degraded` (analysis, deadline or operator abort);
/// `RolledBack` ← any other `Rollback` (the canary removed from the config), `Undo`;
/// `Superseded` ← `Superseded`; `Promoted` ← `Promoted`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NotifyOn {
    /// A rollout of a new canary started (or an aborted one was retried).
    Started,
    /// The rollout moved on: a new weight, a passed analysis step, a step skipped by an
    /// operator, a blue-green switch.
    StepCompleted,
    /// The rollout waits for an operator.
    Paused,
    /// The rollout goes on after a pause.
    Resumed,
    /// A measurement or check failed (its metric, value, condition and window).
    AnalysisFailed,
    /// A measurement could not decide (no data, too few requests).
    AnalysisInconclusive,
    /// A provider could not be queried.
    MeasurementError,
    /// The canary was aborted: stable serves everything.
    Aborted,
    /// The canary was rolled back without an abort (removed from the config, or `undo`).
    RolledBack,
    /// Another canary version replaced the one being rolled out.
    Superseded,
    /// The canary was promoted to stable.
    Promoted,
}

impl NotifyOn {
    /// Every value, in the order docs/delivery-pipelines.md lists them.
    pub const ALL: [NotifyOn; 11] = [
        NotifyOn::Started,
        NotifyOn::StepCompleted,
        NotifyOn::Paused,
        NotifyOn::Resumed,
        NotifyOn::AnalysisFailed,
        NotifyOn::AnalysisInconclusive,
        NotifyOn::MeasurementError,
        NotifyOn::Aborted,
        NotifyOn::RolledBack,
        NotifyOn::Superseded,
        NotifyOn::Promoted,
    ];

    /// `on` when not written.
    pub const DEFAULT: [NotifyOn; 2] = [NotifyOn::Aborted, NotifyOn::Promoted];

    /// The value as written in `on`.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyOn::Started => "Started",
            NotifyOn::StepCompleted => "StepCompleted",
            NotifyOn::Paused => "Paused",
            NotifyOn::Resumed => "Resumed",
            NotifyOn::AnalysisFailed => "AnalysisFailed",
            NotifyOn::AnalysisInconclusive => "AnalysisInconclusive",
            NotifyOn::MeasurementError => "MeasurementError",
            NotifyOn::Aborted => "Aborted",
            NotifyOn::RolledBack => "RolledBack",
            NotifyOn::Superseded => "Superseded",
            NotifyOn::Promoted => "Promoted",
        }
    }

    /// The value written as `name`.
    pub fn parse(name: &str) -> Option<NotifyOn> {
        NotifyOn::ALL.into_iter().find(|on| on.as_str() == name)
    }
}

impl fmt::Display for NotifyOn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

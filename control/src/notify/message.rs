//! What a notifier is told: which rollout events map to which `on` value ([`trigger`]), and the
//! body each kind of endpoint expects ([`body`]), kept within that service's size limits.

use std::borrow::Cow;
use std::path::Path;
use std::sync::Arc;

use serde_json::{json, Value};
use weir_config::{Notifier, NotifierKind, NotifyOn};

use crate::engine::rollout::{Event, Phase};

/// Slack: text of a message and of an attachment (Slack truncates a section's text at 3,000).
const SLACK_TEXT_MAX: usize = 3_000;
/// Teams: a MessageCard's whole payload must stay under 28 KB.
const TEAMS_TEXT_MAX: usize = 6_000;
/// Discord: `content` at most 2,000 characters.
const DISCORD_CONTENT_MAX: usize = 2_000;
/// Discord: an embed's title at most 256 characters.
const DISCORD_TITLE_MAX: usize = 256;
/// Discord: an embed's description at most 4,096 characters (and 6,000 for the whole embed).
const DISCORD_DESCRIPTION_MAX: usize = 3_500;
/// Discord: a field's value at most 1,024 characters.
const DISCORD_FIELD_MAX: usize = 1_024;
/// Generic: the message (an event's line is short; a measurement's message is bounded, still).
const GENERIC_TEXT_MAX: usize = 16_000;
/// A field value (service, version names) in any body.
const FIELD_MAX: usize = 256;

/// One message waiting for delivery.
#[derive(Clone, Debug)]
pub(crate) struct Item {
    /// The event.
    pub(crate) event: Arc<Event>,
    /// What it is, in `on` terms.
    pub(crate) on: NotifyOn,
    /// The config file weir runs from (for the revert information of `Aborted`).
    pub(crate) config_file: Arc<Path>,
}

/// The `on` value an event is sent under, if any (the mapping is documented on [`NotifyOn`]).
pub fn trigger(event: &Event) -> Option<NotifyOn> {
    Some(match event.kind.as_str() {
        "Started" | "Retry" => NotifyOn::Started,
        "Advance" | "AnalysisPassed" | "Promoted step" | "Switched" => NotifyOn::StepCompleted,
        "Paused" => NotifyOn::Paused,
        "Resumed" => NotifyOn::Resumed,
        "Halt" => NotifyOn::AnalysisFailed,
        "Inconclusive" => NotifyOn::AnalysisInconclusive,
        "MeasurementError" => NotifyOn::MeasurementError,
        "Rollback" if event.phase == Phase::Degraded => NotifyOn::Aborted,
        "Rollback" | "Undo" => NotifyOn::RolledBack,
        "Superseded" => NotifyOn::Superseded,
        "Promoted" => NotifyOn::Promoted,
        _ => return None,
    })
}

/// The JSON body `notifier` posts for `item`.
pub(crate) fn body(notifier: &Notifier, item: &Item) -> Value {
    match notifier.kind {
        NotifierKind::Slack => slack(notifier, item),
        NotifierKind::MsTeams => teams(item),
        NotifierKind::Discord => discord(notifier, item),
        NotifierKind::Generic => generic(notifier, item),
    }
}

/// The canary's name for messages.
fn canary(event: &Event) -> &str {
    event.canary_version.as_deref().unwrap_or("(no canary)")
}

/// One line saying what happened, e.g. `checkout: v2 aborted, v1 serves 100%`.
pub(crate) fn title(item: &Item) -> String {
    let event = &item.event;
    let canary = canary(event);
    let stable = &event.stable_version;
    let what = match item.on {
        NotifyOn::Started => format!("rollout of {canary} started (stable {stable})"),
        NotifyOn::StepCompleted => format!(
            "{canary} completed step {} (canary weight {}%)",
            event.step + 1,
            event.weight
        ),
        NotifyOn::Paused => format!("rollout of {canary} paused at {}%", event.weight),
        NotifyOn::Resumed => format!("rollout of {canary} resumed at {}%", event.weight),
        NotifyOn::AnalysisFailed => format!("analysis of {canary} failed"),
        NotifyOn::AnalysisInconclusive => format!("analysis of {canary} inconclusive"),
        NotifyOn::MeasurementError => format!("measurement error while judging {canary}"),
        NotifyOn::Aborted => format!("{canary} aborted, {stable} serves 100%"),
        NotifyOn::RolledBack => format!("{canary} rolled back, {stable} serves 100%"),
        NotifyOn::Superseded => format!("rollout of {canary} superseded"),
        NotifyOn::Promoted => format!("{canary} promoted to stable"),
    };
    format!("{}: {what}", event.service)
}

/// Good news, bad news, needs a look, or news.
fn severity(on: NotifyOn) -> (&'static str, u32) {
    match on {
        NotifyOn::Promoted => ("#2eb886", 0x2e_b8_86),
        NotifyOn::Aborted | NotifyOn::AnalysisFailed | NotifyOn::MeasurementError => {
            ("#d50200", 0xd5_02_00)
        }
        NotifyOn::Paused
        | NotifyOn::AnalysisInconclusive
        | NotifyOn::RolledBack
        | NotifyOn::Superseded => ("#daa038", 0xda_a0_38),
        NotifyOn::Started | NotifyOn::StepCompleted | NotifyOn::Resumed => ("#439fe0", 0x43_9f_e0),
    }
}

/// The facts every message carries besides its line: (name, value).
fn facts(event: &Event) -> Vec<(&'static str, String)> {
    vec![
        ("Service", truncate(&event.service, FIELD_MAX).into_owned()),
        (
            "Stable",
            truncate(&event.stable_version, FIELD_MAX).into_owned(),
        ),
        ("Canary", truncate(canary(event), FIELD_MAX).into_owned()),
        ("Step", (event.step + 1).to_string()),
        ("Weight", format!("{}%", event.weight)),
        ("Revision", event.revision.to_string()),
        ("Phase", format!("{:?}", event.phase)),
    ]
}

/// Slack's incoming-webhook JSON: `text` (the notification and fallback) and one colored
/// attachment with the event's line and its facts. `&`, `<` and `>` are escaped as Slack asks,
/// so a measured value cannot mention `<!channel>` or forge a link.
fn slack(notifier: &Notifier, item: &Item) -> Value {
    let event = &item.event;
    let title = slack_escape(&title(item));
    let message = slack_escape(&event.message);
    let mut body = json!({
        "text": truncate(&title, SLACK_TEXT_MAX),
        "attachments": [{
            "color": severity(item.on).0,
            "fallback": truncate(&format!("{title}: {message}"), SLACK_TEXT_MAX),
            "title": truncate(&title, SLACK_TEXT_MAX),
            "text": truncate(&message, SLACK_TEXT_MAX),
            "fields": facts(event)
                .into_iter()
                .map(|(name, value)| json!({"title": name, "value": slack_escape(&value), "short": true}))
                .collect::<Vec<_>>(),
            "footer": format!("weir · {}", item.on),
            "ts": event.at_ms / 1000,
        }],
    });
    if let Some(channel) = &notifier.channel {
        body["channel"] = json!(channel);
    }
    if let Some(username) = &notifier.username {
        body["username"] = json!(username);
    }
    body
}

/// Slack's control characters in message text.
fn slack_escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// A Microsoft Teams connector MessageCard.
fn teams(item: &Item) -> Value {
    let event = &item.event;
    let title = title(item);
    json!({
        "@type": "MessageCard",
        "@context": "https://schema.org/extensions",
        "themeColor": severity(item.on).0.trim_start_matches('#'),
        "summary": truncate(&title, FIELD_MAX),
        "title": truncate(&title, TEAMS_TEXT_MAX),
        "sections": [{
            "activityTitle": item.on.as_str(),
            "activitySubtitle": rfc3339(event.at_ms),
            "text": truncate(&event.message, TEAMS_TEXT_MAX),
            "facts": facts(event)
                .into_iter()
                .map(|(name, value)| json!({"name": name, "value": value}))
                .collect::<Vec<_>>(),
            "markdown": false,
        }],
    })
}

/// A Discord webhook: `content` and one embed with the facts as inline fields.
fn discord(notifier: &Notifier, item: &Item) -> Value {
    let event = &item.event;
    let title = title(item);
    let mut embed = json!({
        "title": truncate(&title, DISCORD_TITLE_MAX),
        "description": truncate(&event.message, DISCORD_DESCRIPTION_MAX),
        "color": severity(item.on).1,
        "fields": facts(event)
            .into_iter()
            .map(|(name, value)| json!({
                "name": name,
                "value": truncate(&value, DISCORD_FIELD_MAX),
                "inline": true,
            }))
            .collect::<Vec<_>>(),
        "footer": {"text": format!("weir · {}", item.on)},
    });
    if let Some(at) = rfc3339(event.at_ms) {
        embed["timestamp"] = json!(at);
    }
    let mut body = json!({
        "content": truncate(&title, DISCORD_CONTENT_MAX),
        "embeds": [embed],
        "allowed_mentions": {"parse": []},
    });
    if let Some(username) = &notifier.username {
        body["username"] = json!(username);
    }
    body
}

/// Every field of the event, plus `revert` on `Aborted`: what a pipeline needs to revert the
/// commit that named the aborted canary.
fn generic(notifier: &Notifier, item: &Item) -> Value {
    let event = &item.event;
    let mut body = json!({
        "notifier": notifier.name,
        "event": item.on.as_str(),
        "kind": event.kind,
        "summary": title(item),
        "message": truncate(&event.message, GENERIC_TEXT_MAX),
        "service": event.service,
        "revision": event.revision,
        "stableVersion": event.stable_version,
        "canaryVersion": event.canary_version,
        "step": event.step,
        "weight": event.weight,
        "phase": format!("{:?}", event.phase),
        "atMs": event.at_ms,
        "at": rfc3339(event.at_ms),
        "configFile": item.config_file.display().to_string(),
    });
    if item.on == NotifyOn::Aborted {
        body["revert"] = json!({
            "configFile": item.config_file.display().to_string(),
            "service": event.service,
            "abortedVersion": event.canary_version,
            "stableVersion": event.stable_version,
            "revision": event.revision,
        });
    }
    body
}

/// `ms` since the epoch as RFC 3339 (UTC), if representable.
fn rfc3339(ms: u64) -> Option<String> {
    let nanos = i128::from(ms).checked_mul(1_000_000)?;
    time::OffsetDateTime::from_unix_timestamp_nanos(nanos)
        .ok()?
        .format(&time::format_description::well_known::Rfc3339)
        .ok()
}

/// `text` cut to at most `max` characters, ending in `…` when cut.
pub(crate) fn truncate(text: &str, max: usize) -> Cow<'_, str> {
    match text.char_indices().nth(max) {
        None => Cow::Borrowed(text),
        Some(_) => {
            let keep = max.saturating_sub(1);
            let end = text.char_indices().nth(keep).map_or(text.len(), |(i, _)| i);
            Cow::Owned(format!("{}…", &text[..end]))
        }
    }
}

//! Pure rendering of what the admin API returns: the service table, the detail view, the
//! history table, the one-line results of operator commands and the progress lines of
//! `weir status`. Times are shown in UTC (the CLI has no time-zone database).

use std::fmt::Write as _;

use weir_control::api::v1::{BlueGreenStatus, Rules, ServiceStatus};
use weir_control::engine::rollout::run::{AnalysisRun, MetricRun, RunKind, RunPhase};
use weir_control::engine::rollout::{Event, Phase, Revision};

/// Cells in a weight bar.
const BAR_CELLS: usize = 10;
/// Finished analysis runs the detail view shows (running ones are always shown).
const SHOWN_FINISHED_RUNS: usize = 2;
/// Measurements shown per metric.
const SHOWN_MEASUREMENTS: usize = 3;
/// Events the detail view shows.
const SHOWN_EVENTS: usize = 10;
/// The narrowest a truncated last column gets.
const MIN_LAST_COLUMN: usize = 20;

/// An operator command, as `weir <verb> SERVICE` names it (the control plane's own type).
pub use weir_control::engine::rollout::Command as Action;

/// `20%`, `12.5%`, `33.33%`.
pub fn percent(weight: f64) -> String {
    let rounded = (weight * 100.0).round() / 100.0;
    let text = format!("{rounded:.2}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    format!("{text}%")
}

/// `██░░░░░░░░  20%`: ten cells, any traffic at all shows at least one filled cell and anything
/// short of everything leaves at least one empty.
pub fn weight_bar(weight: f64) -> String {
    let weight = if weight.is_finite() {
        weight.clamp(0.0, 100.0)
    } else {
        0.0
    };
    let mut filled = (weight / 100.0 * BAR_CELLS as f64).round() as usize;
    if weight > 0.0 {
        filled = filled.max(1);
    }
    if weight < 100.0 {
        filled = filled.min(BAR_CELLS - 1);
    }
    format!(
        "{}{} {:>4}",
        "█".repeat(filled),
        "░".repeat(BAR_CELLS - filled),
        percent(weight)
    )
}

/// `3/6` (1-based, the current step), `it 2/3` (iterations passed, Flagger A/B), or `-` before
/// the first rollout and without steps.
pub fn step_label(status: &ServiceStatus) -> String {
    if status.step_count == 0 || status.revision == 0 {
        return "-".into();
    }
    if let Some(progress) = status.progress.as_ref().filter(|p| p.unit == "iteration") {
        return format!("it {}/{}", progress.current, progress.total);
    }
    let current = (status.step_index + 1).min(status.step_count);
    format!("{current}/{}", status.step_count)
}

/// `14:03:07` (UTC) from milliseconds since the Unix epoch.
pub fn clock(at_ms: u64) -> String {
    let secs = at_ms / 1000;
    format!(
        "{:02}:{:02}:{:02}",
        (secs / 3600) % 24,
        (secs / 60) % 60,
        secs % 60
    )
}

/// `2025-03-14T14:03:07Z` from milliseconds since the Unix epoch.
pub fn timestamp(at_ms: u64) -> String {
    let (year, month, day) = civil_from_days(at_ms / 1000 / 86_400);
    format!("{year:04}-{month:02}-{day:02}T{}Z", clock(at_ms))
}

/// Howard Hinnant's `civil_from_days`, for days since 1970-01-01.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

/// Cuts `text` to `width` characters, ending in `…` when it had to cut; newlines become spaces.
pub fn truncate(text: &str, width: usize) -> String {
    let text = text.replace(['\n', '\r'], " ");
    if text.chars().count() <= width {
        return text;
    }
    if width == 0 {
        return String::new();
    }
    let mut cut: String = text.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

/// A measured value: numbers with at most four decimals, strings bare, `-` when absent.
pub fn value(value: Option<&serde_json::Value>) -> String {
    match value {
        None | Some(serde_json::Value::Null) => "-".into(),
        Some(serde_json::Value::String(text)) => truncate(text, 24),
        Some(serde_json::Value::Number(number)) => {
            if number.is_i64() || number.is_u64() {
                number.to_string()
            } else {
                let float = number.as_f64().unwrap_or(f64::NAN);
                let text = format!("{float:.4}");
                text.trim_end_matches('0').trim_end_matches('.').to_string()
            }
        }
        Some(other) => truncate(&other.to_string(), 24),
    }
}

/// `10m`, `1m30s`, `500ms`.
pub fn duration(duration: std::time::Duration) -> String {
    weir_control::engine::rollout::humantime(duration)
}

/// Columns separated by two spaces; the last one is cut to what is left of `width`.
fn table(headers: &[&str], rows: &[Vec<String>], width: usize) -> String {
    let columns = headers.len();
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate().take(columns.saturating_sub(1)) {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let fixed: usize = widths
        .iter()
        .take(columns.saturating_sub(1))
        .map(|w| w + 2)
        .sum();
    let last = width.saturating_sub(fixed).max(MIN_LAST_COLUMN);
    let header: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    let mut out = String::new();
    for row in std::iter::once(&header).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < columns {
                let cell = cell.replace(['\n', '\r'], " ");
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(&cell);
                line.push_str(&" ".repeat(pad + 2));
            } else {
                line.push_str(&truncate(cell, last));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// `weir get`: one line per service, the message cut to fit `width`.
pub fn render_table(services: &[ServiceStatus], width: usize) -> String {
    if services.is_empty() {
        return "no services configured\n".into();
    }
    let rows: Vec<Vec<String>> = services
        .iter()
        .map(|s| {
            vec![
                s.name.clone(),
                format!("{:?}", s.phase),
                step_label(s),
                weight_bar(s.canary_weight),
                s.stable_version.clone(),
                s.canary_version.clone().unwrap_or_else(|| "-".into()),
                s.message.clone(),
            ]
        })
        .collect();
    table(
        &[
            "NAME", "PHASE", "STEP", "WEIGHT", "STABLE", "CANARY", "MESSAGE",
        ],
        &rows,
        width,
    )
}

/// What a pause reason (as the admin API spells it) asks of the operator.
pub fn pause_reason(reason: &str) -> String {
    match reason {
        "Step" => "a pause step: promote to go on, abort to roll back".into(),
        "Operator" => "paused by an operator: resume to go on, abort to roll back".into(),
        "Inconclusive" => {
            "the analysis was inconclusive: resume to measure again, promote to skip the step, abort to roll back".into()
        }
        "StateUnreadable" => {
            "the state file could not be read: promote or resume restarts from step 1, abort abandons the rollout".into()
        }
        other => other.into(),
    }
}

/// `weir get SERVICE`: the header, the steps, the analysis runs and the latest events.
pub fn render_detail(status: &ServiceStatus) -> String {
    let mut out = String::new();
    let details = status.details.as_ref();
    let _ = write!(out, "{}  {:?}", status.name, status.phase);
    match details {
        Some(_) if status.revision > 0 => {
            let _ = writeln!(out, "  (revision {}, {})", status.revision, status.strategy);
        }
        Some(_) => {
            let _ = writeln!(out, "  ({})", status.strategy);
        }
        None if status.revision > 0 => {
            let _ = writeln!(out, "  (revision {})", status.revision);
        }
        None => out.push('\n'),
    }
    let mut field = |label: &str, text: &str| {
        let _ = writeln!(out, "  {:<9}{text}", format!("{label}:"));
    };
    match details {
        Some(d) if d.config_stable_version != status.stable_version => field(
            "Stable",
            &format!(
                "{} (the config names {})",
                status.stable_version, d.config_stable_version
            ),
        ),
        _ => field("Stable", &status.stable_version),
    }
    field("Canary", status.canary_version.as_deref().unwrap_or("-"));
    field("Weight", &weight_bar(status.canary_weight));
    match &status.progress {
        Some(progress) if progress.unit == "iteration" => field(
            "Passed",
            &format!("{}/{} iterations", progress.current, progress.total),
        ),
        _ if status.step_count > 0 => field("Step", &step_label(status)),
        _ => {}
    }
    field("Message", &status.message);
    if let Some(d) = details {
        let awaiting = d
            .blue_green
            .as_ref()
            .is_some_and(|bg| bg.phase.as_deref() == Some("awaitingPromotion"));
        match &d.pause_reason {
            Some(reason) if reason == "Step" && awaiting => field(
                "Paused",
                "the preview is up: promote switches all traffic, abort turns the preview off",
            ),
            Some(reason) => field("Paused", &pause_reason(reason)),
            None => {}
        }
        if let Some(bg) = &d.blue_green {
            render_blue_green(&mut field, bg);
        }
        if let Some((failed, threshold)) = d.failed_checks {
            field(
                "Checks",
                &format!("{failed} failed (the rollout aborts at {threshold})"),
            );
        }
    }
    let Some(details) = details else {
        return out;
    };
    render_rules(&mut out, &details.rules);

    if !details.steps.is_empty() {
        out.push_str("\nSteps:\n");
        for step in &details.steps {
            let marker = match step.state.as_str() {
                "completed" => '✔',
                "current" => '▶',
                _ => '·',
            };
            let _ = writeln!(
                out,
                "  {marker} {:>2}  {}",
                step.index + 1,
                step.description
            );
        }
    }

    if !details.analysis_runs.is_empty() {
        out.push_str("\nAnalysis (times UTC):\n");
        let running = details
            .analysis_runs
            .iter()
            .filter(|r| r.phase == RunPhase::Running);
        let finished = details
            .analysis_runs
            .iter()
            .filter(|r| r.phase != RunPhase::Running)
            .take(SHOWN_FINISHED_RUNS);
        for run in running.chain(finished) {
            render_run(&mut out, run);
        }
        let hidden = details
            .analysis_runs
            .iter()
            .filter(|r| r.phase != RunPhase::Running)
            .count()
            .saturating_sub(SHOWN_FINISHED_RUNS);
        if hidden > 0 {
            let _ = writeln!(out, "  … and {hidden} older finished run(s)");
        }
    }

    if !details.events.is_empty() {
        out.push_str("\nEvents (times UTC):\n");
        let skip = details.events.len().saturating_sub(SHOWN_EVENTS);
        let shown: Vec<&Event> = details.events.iter().skip(skip).collect();
        let kind_width = shown
            .iter()
            .map(|e| e.kind.chars().count())
            .max()
            .unwrap_or(0);
        for event in shown {
            let _ = writeln!(
                out,
                "  {}  {:<kind_width$}  {}",
                clock(event.at_ms),
                event.kind,
                event.message
            );
        }
    }
    out
}

/// The rules in force besides the weight, one per line.
fn render_rules(out: &mut String, rules: &Rules) {
    let mut lines: Vec<(String, String)> = Vec::new();
    for route in &rules.header_routes {
        lines.push((
            format!("header route {}", route.name),
            format!("{} → canary", route.conditions),
        ));
    }
    for route in &rules.mirror_routes {
        lines.push((
            format!("mirror route {}", route.name),
            format!(
                "{} of {} copied to the canary",
                percent(route.percentage),
                route.conditions
            ),
        ));
    }
    if let Some(affinity) = &rules.session_affinity {
        let text = match &affinity.max_age {
            Some(max_age) => format!("{} {} (Max-Age {max_age})", affinity.kind, affinity.name),
            None => format!("{} {} (hashed)", affinity.kind, affinity.name),
        };
        lines.push(("sticky versions".into(), text));
    }
    if let Some(preview) = &rules.preview {
        let mut parts = Vec::new();
        if !preview.hosts.is_empty() {
            parts.push(format!("hosts {}", preview.hosts.join(", ")));
        }
        if let Some(listener) = &preview.listener {
            parts.push(format!("listener {listener}"));
        }
        if let Some(headers) = &preview.headers {
            parts.push(headers.clone());
        }
        let state = if preview.active {
            "reaches the new version"
        } else {
            "reaches stable (no preview up)"
        };
        lines.push(("preview".into(), format!("{} — {state}", parts.join("; "))));
    }
    if lines.is_empty() {
        return;
    }
    out.push_str("\nRules:\n");
    let width = lines
        .iter()
        .map(|(l, _)| l.chars().count())
        .max()
        .unwrap_or(0);
    for (label, text) in lines {
        let _ = writeln!(out, "  {label:<width$}  {text}");
    }
}

/// The blue-green lines of `weir get SERVICE`: phase, preview, switch and the kept old version.
fn render_blue_green(field: &mut impl FnMut(&str, &str), bg: &BlueGreenStatus) {
    if let Some(phase) = &bg.phase {
        field("Phase", phase);
    }
    let mut reach = Vec::new();
    if !bg.preview_hosts.is_empty() {
        reach.push(format!("hosts {}", bg.preview_hosts.join(", ")));
    }
    if let Some(listener) = &bg.preview_listener {
        reach.push(format!("listener {listener}"));
    }
    if let Some(headers) = &bg.preview_headers {
        reach.push(headers.clone());
    }
    let state = if bg.preview_up {
        "up (reaches the canary)"
    } else {
        "down (reaches stable)"
    };
    field("Preview", &format!("{state}: {}", reach.join("; ")));
    if let Some(at) = bg.auto_promotion_at_ms {
        field(
            "Switch",
            &format!("automatic at {} UTC (autoPromotionSeconds)", clock(at)),
        );
    } else if !bg.auto_promotion_enabled && bg.switched_at_ms.is_none() && bg.phase.is_some() {
        field("Switch", "waits for weir promote");
    }
    if let (Some(blue), Some(at)) = (&bg.blue_version, bg.scale_down_at_ms) {
        field(
            "Blue",
            &format!(
                "{blue} kept until {} UTC: undo switches back at once",
                clock(at)
            ),
        );
    }
}

fn render_run(out: &mut String, run: &AnalysisRun) {
    let kind = match &run.kind {
        RunKind::Inline { step } => format!("step {} analysis", step + 1),
        RunKind::Background => "background analysis".into(),
        RunKind::Check { check } => format!("check {check}"),
    };
    let _ = write!(
        out,
        "  #{} {kind}  {:?}  since {}",
        run.id,
        run.phase,
        clock(run.started_at_ms)
    );
    if !run.args.is_empty() {
        let args: Vec<String> = run.args.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = write!(out, "  args {}", args.join(" "));
    }
    out.push('\n');
    if !run.message.is_empty() {
        let _ = writeln!(out, "    {}", run.message);
    }
    for metric in &run.metrics {
        render_metric(out, metric);
    }
}

fn render_metric(out: &mut String, metric: &MetricRun) {
    let name = if metric.template == metric.name {
        metric.name.clone()
    } else {
        format!("{}/{}", metric.template, metric.name)
    };
    let mut counts = vec![format!("{} measured", metric.count)];
    for (n, label) in [
        (metric.successful, "successful"),
        (metric.failed, "failed"),
        (metric.inconclusive, "inconclusive"),
        (metric.errors, "error"),
    ] {
        if n > 0 {
            counts.push(format!("{n} {label}"));
        }
    }
    let dry_run = if metric.dry_run { "  (dry run)" } else { "" };
    let _ = writeln!(
        out,
        "    {name}  {:?}  {}{dry_run}",
        metric.phase,
        counts.join(", ")
    );
    let skip = metric.measurements.len().saturating_sub(SHOWN_MEASUREMENTS);
    let shown: Vec<_> = metric.measurements.iter().skip(skip).collect();
    let values: Vec<String> = shown.iter().map(|m| value(m.value.as_ref())).collect();
    let value_width = values.iter().map(|v| v.chars().count()).max().unwrap_or(0);
    for (measurement, value) in shown.iter().zip(&values) {
        let verdict = format!("{:?}", measurement.verdict).to_lowercase();
        let _ = writeln!(
            out,
            "      {}  {value:>value_width$}  {verdict:<12}  {}",
            clock(measurement.at_ms),
            measurement.message
        );
    }
}

/// `weir history SERVICE`: one line per revision, oldest first.
pub fn render_history(name: &str, revisions: &[Revision], width: usize) -> String {
    if revisions.is_empty() {
        return format!("{name} has no rollouts yet\n");
    }
    let rows: Vec<Vec<String>> = revisions
        .iter()
        .map(|r| {
            vec![
                r.revision.to_string(),
                r.version.clone(),
                r.from_version.clone(),
                timestamp(r.started_at_ms),
                r.ended_at_ms.map_or_else(|| "-".into(), timestamp),
                format!("{:?}", r.outcome),
                if r.message.is_empty() {
                    "-".into()
                } else {
                    r.message.clone()
                },
            ]
        })
        .collect();
    table(
        &[
            "REVISION", "VERSION", "FROM", "STARTED", "ENDED", "OUTCOME", "MESSAGE",
        ],
        &rows,
        width,
    )
}

/// The one-line result of an operator command: `checkout: promoted step 5 — phase
/// Progressing, weight 50%`. `before` is the status just before the command, when known.
pub fn action_result(
    action: Action,
    before: Option<&ServiceStatus>,
    after: &ServiceStatus,
) -> String {
    let canary = after
        .canary_version
        .as_deref()
        .or(before.and_then(|b| b.canary_version.as_deref()))
        .unwrap_or("the canary");
    let step = |status: &ServiceStatus| (status.step_index + 1).min(status.step_count.max(1));
    // What the strategy calls the place a promote moves on from (blue-green phases, A/B
    // iterations), when the status before says.
    let strategy = match before.unwrap_or(after).strategy.as_str() {
        // An older weir sent the strategy with the details only.
        "" => "steps",
        strategy => strategy,
    };
    let phase_before = before
        .and_then(|b| b.details.as_ref())
        .and_then(|d| d.strategy_phase.as_deref());
    let iteration = before
        .and_then(|b| b.progress.as_ref())
        .filter(|p| p.unit == "iteration");
    let what = match action {
        Action::Promote { full: true } => {
            format!("promoted {canary} fully (remaining steps skipped)")
        }
        Action::Promote { full: false } => match (phase_before, iteration, before) {
            (Some("preview" | "prePromotionAnalysis"), _, _) => {
                "skipped the pre-promotion analysis".into()
            }
            (Some("awaitingPromotion"), _, _) => format!("switched all traffic to {canary}"),
            (Some("postPromotionAnalysis"), _, _) => {
                format!("skipped the post-promotion analysis: {canary} promoted")
            }
            (_, Some(progress), _) => {
                format!("counted iteration {} as passed", progress.current + 1)
            }
            (_, _, Some(before)) if before.step_count > 0 => {
                format!("promoted step {}", step(before))
            }
            _ => "promoted the current step".into(),
        },
        Action::Abort => format!("aborted {canary}"),
        Action::Retry if strategy == "blueGreen" => {
            format!("retrying {canary} from the preview")
        }
        Action::Retry if strategy == "iterations" => {
            format!("retrying {canary} from iteration 1")
        }
        Action::Retry => format!("retrying {canary} from step 1"),
        Action::Pause if after.step_count > 0 => format!("paused at step {}", step(after)),
        Action::Pause => "paused".into(),
        Action::Resume if after.step_count > 0 => format!("resumed at step {}", step(after)),
        Action::Resume => "resumed".into(),
        Action::Undo => format!("undone: {} is stable again", after.stable_version),
    };
    format!(
        "{}: {what} — phase {:?}, weight {}",
        after.name,
        after.phase,
        percent(after.canary_weight)
    )
}

/// A `weir status` progress line: `14:03:07 checkout: Progressing, step 3/6 (analysis
/// success-rate), weight 10% — message`.
pub fn progress_line(status: &ServiceStatus, now_ms: u64) -> String {
    let mut line = format!("{} {}: {:?}", clock(now_ms), status.name, status.phase);
    if status.step_count > 0 && status.revision > 0 {
        let _ = write!(line, ", step {}", step_label(status));
        let description = status
            .details
            .as_ref()
            .and_then(|d| d.steps.get(status.step_index))
            .map(|s| s.description.as_str());
        if let Some(description) = description {
            let _ = write!(line, " ({description})");
        }
    }
    let _ = write!(line, ", weight {}", percent(status.canary_weight));
    if !status.message.is_empty() {
        let _ = write!(line, " — {}", status.message);
    }
    line
}

/// What `weir status` prints a new progress line for: the revision, step, weight and phase
/// (not the message, which changes with every measurement).
pub fn progress_key(status: &ServiceStatus) -> (u64, usize, u64, Phase) {
    (
        status.revision,
        status.step_index,
        status.canary_weight.to_bits(),
        status.phase,
    )
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use weir_control::api::v1::{Details, StepStatus};
    use weir_control::engine::analysis::Verdict;
    use weir_control::engine::rollout::run::Measurement;
    use weir_control::engine::rollout::RevisionOutcome;

    use super::*;

    /// 2025-03-14T14:03:07Z.
    const AT: u64 = 1_741_960_987_000;

    fn summary(name: &str, phase: Phase, weight: f64) -> ServiceStatus {
        ServiceStatus {
            name: name.into(),
            phase,
            strategy: "steps".into(),
            message: format!("{name} is doing things at weight {weight}"),
            revision: 3,
            stable_version: "v1".into(),
            canary_version: Some("v2".into()),
            canary_weight: weight,
            step_index: 2,
            step_count: 6,
            progress: None,
            observed_generation: 1,
            details: None,
        }
    }

    fn detailed() -> ServiceStatus {
        let steps = [
            "setWeight 10",
            "pause 10s",
            "analysis success-rate",
            "setWeight 50",
            "pause (until promoted)",
            "setWeight 100",
        ];
        let measurement = |offset: u64, value: f64, verdict: Verdict| Measurement {
            at_ms: AT + offset * 5000,
            value: Some(serde_json::json!(value)),
            verdict,
            message: format!("{value} >= 0.99 over 30s (1184 requests)"),
        };
        let run = AnalysisRun {
            id: 2,
            kind: RunKind::Inline { step: 2 },
            args: BTreeMap::from([("service".to_string(), "checkout".to_string())]),
            metrics: vec![MetricRun {
                template: "success-rate".into(),
                name: "success-rate".into(),
                measurements: (0..5)
                    .map(|i| {
                        measurement(
                            i,
                            0.99512345 - i as f64 * 0.1,
                            if i == 4 {
                                Verdict::Failed
                            } else {
                                Verdict::Successful
                            },
                        )
                    })
                    .collect(),
                count: 5,
                successful: 4,
                failed: 1,
                inconclusive: 0,
                errors: 0,
                consecutive_errors: 0,
                next_at_ms: AT + 30_000,
                phase: RunPhase::Running,
                dry_run: false,
                in_flight: false,
            }],
            phase: RunPhase::Running,
            message: String::new(),
            started_at_ms: AT,
        };
        let events = (0..12)
            .map(|i| Event {
                at_ms: AT + i * 1000,
                service: "checkout".into(),
                revision: 3,
                kind: if i % 2 == 0 {
                    "Advance".into()
                } else {
                    "Measurement".into()
                },
                message: format!("event number {i}"),
                weight: 10.0,
                phase: Phase::Progressing,
                stable_version: "v1".into(),
                canary_version: Some("v2".into()),
                step: 1,
            })
            .collect();
        ServiceStatus {
            details: Some(Details {
                config_stable_version: "v1".into(),
                strategy_phase: None,
                rules: Rules::default(),
                steps: steps
                    .iter()
                    .enumerate()
                    .map(|(index, description)| StepStatus {
                        index,
                        description: description.to_string(),
                        state: match index {
                            0 | 1 => "completed",
                            2 => "current",
                            _ => "pending",
                        }
                        .into(),
                    })
                    .collect(),
                pause_reason: None,
                failed_checks: None,
                blue_green: None,
                pause_ends_at_ms: None,
                conditions: Vec::new(),
                analysis_runs: vec![run],
                events,
                history: Vec::new(),
            }),
            ..summary("checkout", Phase::Progressing, 10.0)
        }
    }

    #[test]
    fn weight_bars_round_but_never_lie_about_zero_or_full() {
        assert_eq!(weight_bar(0.0), "░░░░░░░░░░   0%");
        assert_eq!(weight_bar(20.0), "██░░░░░░░░  20%");
        assert_eq!(weight_bar(1.0), "█░░░░░░░░░   1%");
        assert_eq!(weight_bar(99.0), "█████████░  99%");
        assert_eq!(weight_bar(100.0), "██████████ 100%");
        assert_eq!(weight_bar(12.5), "█░░░░░░░░░ 12.5%");
        assert_eq!(weight_bar(f64::NAN), "░░░░░░░░░░   0%");
    }

    #[test]
    fn percentages_drop_needless_decimals() {
        assert_eq!(percent(50.0), "50%");
        assert_eq!(percent(12.5), "12.5%");
        assert_eq!(percent(33.333), "33.33%");
    }

    #[test]
    fn times_are_utc() {
        assert_eq!(clock(AT), "14:03:07");
        assert_eq!(timestamp(AT), "2025-03-14T14:03:07Z");
        assert_eq!(timestamp(0), "1970-01-01T00:00:00Z");
        // A leap day.
        assert_eq!(timestamp(951_782_400_000), "2000-02-29T00:00:00Z");
        assert_eq!(duration(std::time::Duration::from_secs(600)), "10m");
        assert_eq!(duration(std::time::Duration::from_millis(500)), "500ms");
    }

    #[test]
    fn values_are_compact() {
        assert_eq!(value(None), "-");
        assert_eq!(value(Some(&serde_json::json!(0.99512345))), "0.9951");
        assert_eq!(value(Some(&serde_json::json!(12.0))), "12");
        assert_eq!(value(Some(&serde_json::json!(1184))), "1184");
        assert_eq!(value(Some(&serde_json::json!("ok"))), "ok");
    }

    #[test]
    fn truncation_marks_the_cut() {
        assert_eq!(truncate("short", 10), "short");
        assert_eq!(truncate("a longer message", 8), "a longe…");
        assert_eq!(truncate("two\nlines", 20), "two lines");
    }

    #[test]
    fn the_table_aligns_columns_and_cuts_the_message() {
        let mut healthy = summary("search", Phase::Healthy, 0.0);
        healthy.revision = 0;
        healthy.canary_version = None;
        healthy.message = "2024.1 serves 100%".into();
        let mut long = summary("checkout", Phase::Progressing, 20.0);
        long.message = "x".repeat(200);
        let table = render_table(&[long, healthy], 100);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert_eq!(
            lines[0],
            "NAME      PHASE        STEP  WEIGHT           STABLE  CANARY  MESSAGE"
        );
        assert!(lines[1]
            .starts_with("checkout  Progressing  3/6   ██░░░░░░░░  20%  v1      v2      xxx"));
        assert!(lines[1].ends_with('…'));
        assert_eq!(lines[1].chars().count(), 100);
        assert_eq!(
            lines[2],
            "search    Healthy      -     ░░░░░░░░░░   0%  v1      -       2024.1 serves 100%"
        );
        assert_eq!(render_table(&[], 100), "no services configured\n");
    }

    #[test]
    fn the_detail_view_shows_steps_measurements_and_recent_events() {
        let text = render_detail(&detailed());
        assert!(
            text.starts_with("checkout  Progressing  (revision 3, steps)\n"),
            "{text}"
        );
        assert!(text.contains("  Weight:  █░░░░░░░░░  10%\n"), "{text}");
        assert!(text.contains("  Step:    3/6\n"), "{text}");
        assert!(text.contains("  ✔  1  setWeight 10\n  ✔  2  pause 10s\n  ▶  3  analysis success-rate\n  ·  4  setWeight 50\n"), "{text}");
        assert!(
            text.contains("  #2 step 3 analysis  Running  since 14:03:07  args service=checkout\n"),
            "{text}"
        );
        assert!(
            text.contains("    success-rate  Running  5 measured, 4 successful, 1 failed\n"),
            "{text}"
        );
        // The last three measurements only.
        assert!(!text.contains("      14:03:12  0.8951"), "{text}");
        assert!(
            text.contains("      14:03:17  0.7951  successful    0.7951"),
            "{text}"
        );
        assert!(
            text.contains("      14:03:27  0.5951  failed        0.5951"),
            "{text}"
        );
        // The last ten events only, kinds aligned.
        assert!(!text.contains("event number 1\n"), "{text}");
        assert!(
            text.contains("  14:03:09  Advance      event number 2\n"),
            "{text}"
        );
        assert!(
            text.contains("  14:03:18  Measurement  event number 11\n"),
            "{text}"
        );
        assert!(!text.contains("Paused:"), "{text}");
    }

    #[test]
    fn the_detail_view_shows_the_blue_green_phase_preview_and_kept_blue() {
        let mut status = detailed();
        status.phase = Phase::Paused;
        status.strategy = "blueGreen".into();
        if let Some(details) = status.details.as_mut() {
            details.pause_reason = Some("Step".into());
            details.analysis_runs.clear();
            details.events.clear();
            details.blue_green = Some(BlueGreenStatus {
                phase: Some("awaitingPromotion".into()),
                preview_up: true,
                preview_hosts: vec!["preview.orders.example.com".into()],
                preview_listener: Some("preview".into()),
                preview_headers: Some("header x-preview: exact \"1\"".into()),
                auto_promotion_enabled: false,
                auto_promotion_seconds: None,
                auto_promotion_at_ms: None,
                switched_at_ms: None,
                blue_version: None,
                scale_down_at_ms: None,
            });
        }
        let text = render_detail(&status);
        assert!(text.contains("  Phase:   awaitingPromotion\n"), "{text}");
        assert!(
            text.contains("  Paused:  the preview is up: promote switches all traffic, abort turns the preview off\n"),
            "{text}"
        );
        assert!(
            text.contains("  Preview: up (reaches the canary): hosts preview.orders.example.com; listener preview; header x-preview: exact \"1\"\n"),
            "{text}"
        );
        assert!(
            text.contains("  Switch:  waits for weir promote\n"),
            "{text}"
        );

        if let Some(bg) = status.details.as_mut().and_then(|d| d.blue_green.as_mut()) {
            bg.phase = Some("scaleDownDelay".into());
            bg.preview_up = false;
            bg.switched_at_ms = Some(1_700_000_000_000);
            bg.blue_version = Some("v1".into());
            bg.scale_down_at_ms = Some(1_700_000_030_000);
        }
        let text = render_detail(&status);
        assert!(text.contains("  Phase:   scaleDownDelay\n"), "{text}");
        assert!(text.contains("  Preview: down (reaches stable)"), "{text}");
        assert!(
            text.contains("  Blue:    v1 kept until 22:13:50 UTC: undo switches back at once\n"),
            "{text}"
        );
    }

    #[test]
    fn the_detail_view_explains_pauses_and_a_promoted_stable() {
        let mut status = detailed();
        status.phase = Phase::Paused;
        status.stable_version = "v2".into();
        if let Some(details) = status.details.as_mut() {
            details.pause_reason = Some("Step".into());
            details.failed_checks = Some((1, 5));
            details.analysis_runs.clear();
            details.events.clear();
        }
        let text = render_detail(&status);
        assert!(
            text.contains("  Stable:  v2 (the config names v1)\n"),
            "{text}"
        );
        assert!(
            text.contains("  Paused:  a pause step: promote to go on, abort to roll back\n"),
            "{text}"
        );
        assert!(
            text.contains("  Checks:  1 failed (the rollout aborts at 5)\n"),
            "{text}"
        );
        assert!(!text.contains("Analysis"), "{text}");
        assert!(!text.contains("Events"), "{text}");
    }

    #[test]
    fn history_lists_revisions_with_utc_times() {
        let revisions = vec![
            Revision {
                revision: 1,
                version: "v2".into(),
                from_version: "v1".into(),
                started_at_ms: AT,
                ended_at_ms: Some(AT + 60_000),
                outcome: RevisionOutcome::Aborted,
                message: "success-rate failed 2 time(s)".into(),
            },
            Revision {
                revision: 2,
                version: "v3".into(),
                from_version: "v1".into(),
                started_at_ms: AT + 120_000,
                ended_at_ms: None,
                outcome: RevisionOutcome::Progressing,
                message: String::new(),
            },
        ];
        let text = render_history("checkout", &revisions, 120);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "REVISION  VERSION  FROM  STARTED               ENDED                 OUTCOME      MESSAGE");
        assert_eq!(lines[1], "1         v2       v1    2025-03-14T14:03:07Z  2025-03-14T14:04:07Z  Aborted      success-rate failed 2 time(s)");
        assert_eq!(
            lines[2],
            "2         v3       v1    2025-03-14T14:05:07Z  -                     Progressing  -"
        );
        assert_eq!(
            render_history("checkout", &[], 120),
            "checkout has no rollouts yet\n"
        );
    }

    #[test]
    fn action_results_name_what_happened() {
        let before = summary("checkout", Phase::Paused, 50.0);
        let mut after = summary("checkout", Phase::Progressing, 50.0);
        after.step_index = 3;
        assert_eq!(
            action_result(Action::Promote { full: false }, Some(&before), &after),
            "checkout: promoted step 3 — phase Progressing, weight 50%"
        );
        assert_eq!(
            action_result(Action::Promote { full: false }, None, &after),
            "checkout: promoted the current step — phase Progressing, weight 50%"
        );
        let mut aborted = summary("checkout", Phase::Degraded, 0.0);
        aborted.message = "v2 aborted".into();
        assert_eq!(
            action_result(Action::Abort, Some(&before), &aborted),
            "checkout: aborted v2 — phase Degraded, weight 0%"
        );
        let full = summary("checkout", Phase::Healthy, 100.0);
        assert_eq!(
            action_result(Action::Promote { full: true }, Some(&before), &full),
            "checkout: promoted v2 fully (remaining steps skipped) — phase Healthy, weight 100%"
        );
        assert_eq!(
            action_result(Action::Pause, Some(&before), &before),
            "checkout: paused at step 3 — phase Paused, weight 50%"
        );
        assert_eq!(Action::Undo.verb(), "undo");
    }

    #[test]
    fn action_results_speak_each_strategys_language() {
        let mut waiting = detailed();
        waiting.strategy = "blueGreen".into();
        if let Some(d) = waiting.details.as_mut() {
            d.strategy_phase = Some("awaitingPromotion".into());
        }
        let switched = summary("checkout", Phase::Progressing, 100.0);
        assert_eq!(
            action_result(Action::Promote { full: false }, Some(&waiting), &switched),
            "checkout: switched all traffic to v2 — phase Progressing, weight 100%"
        );
        if let Some(d) = waiting.details.as_mut() {
            d.strategy_phase = Some("postPromotionAnalysis".into());
        }
        assert!(
            action_result(Action::Promote { full: false }, Some(&waiting), &switched)
                .contains("skipped the post-promotion analysis: v2 promoted")
        );
        assert!(action_result(Action::Retry, Some(&waiting), &switched)
            .contains("retrying v2 from the preview"));
        let mut ab = summary("search", Phase::Progressing, 0.0);
        ab.progress = Some(weir_control::api::v1::Progress {
            unit: "iteration".into(),
            current: 1,
            total: 3,
            text: "iteration 1/3".into(),
        });
        assert!(
            action_result(Action::Promote { full: false }, Some(&ab), &ab)
                .contains("counted iteration 2 as passed"),
        );
    }

    #[test]
    fn progress_lines_name_the_step() {
        let status = detailed();
        assert_eq!(
            progress_line(&status, AT),
            "14:03:07 checkout: Progressing, step 3/6 (analysis success-rate), weight 10% — checkout is doing things at weight 10"
        );
        let mut other = status.clone();
        other.canary_weight = 20.0;
        assert_ne!(progress_key(&status), progress_key(&other));
    }

    #[test]
    fn the_detail_view_lists_the_rules_in_force_and_iterations() {
        use weir_control::api::v1::{
            AffinityStatus, HeaderRouteStatus, MirrorRouteStatus, PreviewStatus, Progress,
        };
        let mut status = detailed();
        status.progress = Some(Progress {
            unit: "iteration".into(),
            current: 2,
            total: 3,
            text: "iteration 2/3".into(),
        });
        status.step_count = 3;
        status.strategy = "iterations".into();
        if let Some(details) = status.details.as_mut() {
            details.rules = Rules {
                header_routes: vec![HeaderRouteStatus {
                    name: "ab-test".into(),
                    conditions: r#"header x-beta: exact "yes""#.into(),
                }],
                mirror_routes: vec![MirrorRouteStatus {
                    name: "shadow".into(),
                    percentage: 50.0,
                    conditions: r#"method: exact "GET""#.into(),
                }],
                session_affinity: Some(AffinityStatus {
                    kind: "cookie".into(),
                    name: "weir-checkout".into(),
                    max_age: Some("24h".into()),
                }),
                preview: Some(PreviewStatus {
                    active: false,
                    hosts: vec!["preview.orders.example.com".into()],
                    listener: None,
                    headers: None,
                }),
            };
        }
        let text = render_detail(&status);
        for needle in [
            "(revision 3, iterations)",
            "Passed:  2/3 iterations",
            "Rules:",
            r#"header route ab-test  header x-beta: exact "yes" → canary"#,
            r#"mirror route shadow   50% of method: exact "GET" copied to the canary"#,
            "sticky versions       cookie weir-checkout (Max-Age 24h)",
            "preview               hosts preview.orders.example.com — reaches stable (no preview up)",
        ] {
            assert!(text.contains(needle), "{needle:?} missing from\n{text}");
        }
        assert_eq!(step_label(&status), "it 2/3");
    }
}

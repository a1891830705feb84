//! Argo blue-green (`strategy.blueGreen`): the new version ("green", the config's canary) is
//! reachable through a preview while production gets stable ("blue") only; pre-promotion analysis
//! runs against the preview; then, after an operator or a timer, all traffic switches at once;
//! post-promotion analysis watches the new version and a failure switches back at once; after a
//! promotion the old version is kept for `scaleDownDelay`, during which `undo` switches back.
//!
//! The phases, in order: [`BlueGreenPhase::Preview`] → [`BlueGreenPhase::PrePromotion`] (only
//! with `prePromotionAnalysis`) → [`BlueGreenPhase::AwaitingPromotion`] → the switch →
//! [`BlueGreenPhase::Switched`] (post-promotion analysis) → promotion →
//! [`BlueGreenPhase::ScalingDown`] → [`BlueGreenPhase::Done`]. Waiting for an operator or for
//! `autoPromotionSeconds` never counts toward `progressDeadline`; an analysis phase that takes
//! longer aborts (and, after the switch, switches back).

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use serde::{Deserialize, Serialize};
use weir_config::{BlueGreen, HeaderRoute, HostPattern, Listener, Service, Strategy, WebhookKind};

use super::deadline::run_due_ms;
use super::routes::HeaderRouteState;
use super::run::{millis, AnalysisRun, RunKind, RunPhase};
use super::{
    humantime, run_failure, run_summary, Ctx, PauseReason, Phase, RevisionOutcome, Rollout,
    StrategyState,
};

/// Phases of a blue-green revision, as shown in the status (one "step" each).
pub const PHASES: usize = 5;

/// The placeholder analysis arguments use for the preview's address.
pub const PREVIEW_URL: &str = "{{preview.url}}";
/// The placeholder for the `Host` a request to `{{preview.url}}` must carry.
pub const PREVIEW_HOST: &str = "{{preview.host}}";

/// Where a blue-green revision is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum BlueGreenPhase {
    /// The preview is up (production still gets stable only); nothing measured yet.
    Preview,
    /// `prePromotionAnalysis` runs against the preview.
    PrePromotion,
    /// Pre-promotion analysis passed (or there is none): waiting for `weir promote` or for
    /// `autoPromotionSeconds`.
    AwaitingPromotion,
    /// All traffic switched to the new version; `postPromotionAnalysis` runs. The old version is
    /// still routable, so a failure switches back at once.
    Switched,
    /// Promoted; the old version is kept until `scaleDownDelay` ends (`undo` is instant).
    ScalingDown,
    /// Nothing in progress (before the first revision, or the old version was released).
    #[default]
    Done,
}

/// The state of a blue-green revision.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlueGreenState {
    /// The phase.
    pub phase: BlueGreenPhase,
    /// When the preview came up (ms since the Unix epoch): `autoPromotionSeconds` counts from here.
    pub preview_up_ms: u64,
    /// When the current phase began: an analysis phase must end within `progressDeadline`.
    pub phase_started_ms: u64,
    /// The canary weight, in basis points: 0 before the switch, 10 000 after.
    pub weight_bp: u16,
    /// The pre- or post-promotion analysis run of the current phase.
    pub run: Option<AnalysisRun>,
    /// When all traffic switched to the new version.
    pub switched_at_ms: Option<u64>,
    /// The old ("blue") version the switch moved traffic away from.
    pub blue_version: Option<String>,
    /// When the old version is released (the end of `scaleDownDelay`).
    pub scale_down_at_ms: Option<u64>,
}

// === impl BlueGreenPhase ===

impl BlueGreenPhase {
    /// The phase as the admin API names it: `preview`, `prePromotionAnalysis`,
    /// `awaitingPromotion`, `postPromotionAnalysis`, `scaleDownDelay` or `done`.
    pub fn api_name(self) -> &'static str {
        match self {
            BlueGreenPhase::Preview => "preview",
            BlueGreenPhase::PrePromotion => "prePromotionAnalysis",
            BlueGreenPhase::AwaitingPromotion => "awaitingPromotion",
            BlueGreenPhase::Switched => "postPromotionAnalysis",
            BlueGreenPhase::ScalingDown => "scaleDownDelay",
            BlueGreenPhase::Done => "done",
        }
    }

    /// The phase's index among the [`PHASES`] shown as steps (`Done` is past the last).
    pub fn index(self) -> usize {
        match self {
            BlueGreenPhase::Preview => 0,
            BlueGreenPhase::PrePromotion => 1,
            BlueGreenPhase::AwaitingPromotion => 2,
            BlueGreenPhase::Switched => 3,
            BlueGreenPhase::ScalingDown => 4,
            BlueGreenPhase::Done => PHASES,
        }
    }
}

// === impl BlueGreenState ===

impl BlueGreenState {
    /// A new revision: the preview is up.
    pub fn start(now_ms: u64) -> BlueGreenState {
        BlueGreenState {
            phase: BlueGreenPhase::Preview,
            preview_up_ms: now_ms,
            phase_started_ms: now_ms,
            ..BlueGreenState::default()
        }
    }

    /// Whether the preview reaches the new version (while the rollout is in progress).
    pub fn preview_up(&self) -> bool {
        matches!(
            self.phase,
            BlueGreenPhase::Preview
                | BlueGreenPhase::PrePromotion
                | BlueGreenPhase::AwaitingPromotion
                | BlueGreenPhase::Switched
        )
    }

    /// Whether all traffic was switched to the new version in this revision and not back.
    pub fn switched(&self) -> bool {
        self.weight_bp > 0
    }

    fn enter(&mut self, phase: BlueGreenPhase, now_ms: u64) {
        self.phase = phase;
        self.phase_started_ms = now_ms;
    }

    /// The time spent in an operator pause does not count (toward the deadline or the
    /// auto-promotion timer).
    pub(super) fn shift_start(&mut self, by_ms: u64) {
        self.phase_started_ms += by_ms;
        self.preview_up_ms += by_ms;
    }
}

// === impl Rollout (blue-green) ===

impl Rollout {
    fn blue_green_ref(&self) -> Option<&BlueGreenState> {
        match &self.strategy {
            StrategyState::BlueGreen(state) => Some(state),
            _ => None,
        }
    }

    fn blue_green_mut(&mut self) -> Option<&mut BlueGreenState> {
        match &mut self.strategy {
            StrategyState::BlueGreen(state) => Some(state),
            _ => None,
        }
    }

    /// Starts the analysis of the current phase (pre-promotion against the preview,
    /// post-promotion after the switch) when it has none.
    pub(super) fn ensure_blue_green_runs(&mut self, ctx: Ctx<'_>, bg: &BlueGreen, now_ms: u64) {
        if self.phase != Phase::Progressing {
            return;
        }
        let Some(state) = self.blue_green_ref() else {
            return;
        };
        if state.run.is_some() {
            return;
        }
        let phase = state.phase;
        let (analysis, what) = match phase {
            BlueGreenPhase::PrePromotion => (
                bg.pre_promotion_analysis.as_ref(),
                "pre-promotion analysis started against the preview",
            ),
            BlueGreenPhase::Switched => (
                bg.post_promotion_analysis.as_ref(),
                "post-promotion analysis started",
            ),
            _ => (None, ""),
        };
        let Some(analysis) = analysis else {
            return;
        };
        let id = self.take_run_id();
        let kind = RunKind::Inline {
            step: phase.index(),
        };
        let run = AnalysisRun::new(id, kind, analysis, ctx.templates, now_ms);
        if let Some(state) = self.blue_green_mut() {
            state.run = Some(run);
        }
        let line = format!("{}: {what}", self.service);
        self.emit(now_ms, "AnalysisStarted", line);
    }

    /// Moves through the phases as far as the state allows.
    pub(super) fn evaluate_blue_green(
        &mut self,
        ctx: Ctx<'_>,
        strategy: &Strategy,
        bg: &BlueGreen,
        now_ms: u64,
    ) {
        // A failed analysis decides at any time, also while an operator holds the rollout: after
        // the switch, the new version keeps all traffic only until its failure is measured.
        let waiting = self.phase == Phase::Paused
            && matches!(self.pause, Some(PauseReason::Step | PauseReason::Operator));
        if self.phase != Phase::Progressing && !waiting {
            return;
        }
        let Some(state) = self.blue_green_ref() else {
            return;
        };
        if let Some(run) = &state.run {
            match run.phase {
                RunPhase::Failed | RunPhase::Error => {
                    let reason = format!(
                        "{} failed: {}",
                        analysis_name(state.phase),
                        run_failure(run, ctx.templates)
                    );
                    return self.abort(now_ms, reason);
                }
                RunPhase::Inconclusive if !waiting => {
                    let reason = format!(
                        "{} inconclusive: {}",
                        analysis_name(state.phase),
                        run_failure(run, ctx.templates)
                    );
                    return self.pause_inconclusive(now_ms, reason);
                }
                _ => {}
            }
        }
        let canary = self.canary_version.clone().unwrap_or_default();
        loop {
            if self.phase != Phase::Progressing {
                return;
            }
            let Some(state) = self.blue_green_ref() else {
                return;
            };
            match state.phase {
                BlueGreenPhase::Preview => {
                    let next = if bg.pre_promotion_analysis.is_some() {
                        BlueGreenPhase::PrePromotion
                    } else {
                        BlueGreenPhase::AwaitingPromotion
                    };
                    if let Some(state) = self.blue_green_mut() {
                        state.enter(next, now_ms);
                    }
                    self.touch();
                }
                BlueGreenPhase::PrePromotion => {
                    if bg.pre_promotion_analysis.is_none() {
                        // The config dropped it mid-phase.
                        self.finish_blue_green_run(BlueGreenPhase::AwaitingPromotion, now_ms);
                        continue;
                    }
                    let Some(run) = &state.run else {
                        break;
                    };
                    match run.phase {
                        RunPhase::Successful => {
                            let line = format!(
                                "Pre-promotion analysis passed {}: {}",
                                self.service,
                                run_summary(run)
                            );
                            self.emit(now_ms, "AnalysisPassed", line);
                            self.finish_blue_green_run(BlueGreenPhase::AwaitingPromotion, now_ms);
                        }
                        _ => {
                            self.set_message(format!(
                                "preview of {canary} is up; pre-promotion analysis running (production: {} only)",
                                self.stable_version
                            ));
                            break;
                        }
                    }
                }
                BlueGreenPhase::AwaitingPromotion => {
                    if !bg.auto_promotion_enabled {
                        self.phase = Phase::Paused;
                        self.pause = Some(PauseReason::Step);
                        self.message = format!(
                            "preview of {canary} is up; waiting for promote to switch all traffic from {}",
                            self.stable_version
                        );
                        let line = format!(
                            "Paused {}: preview of {canary} is up, waiting for promote (autoPromotionEnabled: false)",
                            self.service
                        );
                        self.emit(now_ms, "Paused", line);
                        return;
                    }
                    let preview_up_ms = state.preview_up_ms;
                    match bg.auto_promotion_after {
                        Some(after) if now_ms < preview_up_ms.saturating_add(millis(after)) => {
                            let left = (preview_up_ms.saturating_add(millis(after)) - now_ms)
                                .div_ceil(1000);
                            self.set_message(format!(
                                "preview of {canary} is up; switching automatically in {left}s (autoPromotionSeconds {})",
                                after.as_secs()
                            ));
                            break;
                        }
                        Some(_) if self.gate(ctx, WebhookKind::ConfirmPromotion, now_ms) => {
                            return;
                        }
                        None if self.gate(ctx, WebhookKind::ConfirmPromotion, now_ms) => return,
                        Some(after) => {
                            let why = format!(
                                "auto-promotion {} after the preview came up",
                                humantime(after)
                            );
                            self.switch_blue_green(now_ms, &why);
                        }
                        None => self.switch_blue_green(now_ms, "auto-promotion"),
                    }
                }
                BlueGreenPhase::Switched => {
                    if bg.post_promotion_analysis.is_none() {
                        return self.promote_blue_green(bg, now_ms);
                    }
                    let Some(run) = &state.run else {
                        break;
                    };
                    match run.phase {
                        RunPhase::Successful => {
                            let line = format!(
                                "Post-promotion analysis passed {}: {}",
                                self.service,
                                run_summary(run)
                            );
                            self.emit(now_ms, "AnalysisPassed", line);
                            return self.promote_blue_green(bg, now_ms);
                        }
                        _ => {
                            let blue = state.blue_version.clone().unwrap_or_default();
                            self.set_message(format!(
                                "switched: {canary} serves 100%; post-promotion analysis running ({blue} still routable)"
                            ));
                            break;
                        }
                    }
                }
                BlueGreenPhase::ScalingDown | BlueGreenPhase::Done => return,
            }
        }
        // The deadline (`deadline.rs`): an analysis phase is due at the end of its run's
        // schedule; the preview and the waits (operator, `autoPromotionSeconds`) never count.
        let Some(state) = self.blue_green_ref() else {
            return;
        };
        let (phase, started_ms) = (state.phase, state.phase_started_ms);
        let due_ms = match phase {
            BlueGreenPhase::PrePromotion | BlueGreenPhase::Switched => match &state.run {
                Some(run) => run_due_ms(run, ctx.templates, started_ms),
                None => Some(started_ms),
            },
            _ => None,
        };
        self.enforce_deadline(
            strategy,
            due_ms,
            || analysis_name(phase).to_string(),
            now_ms,
        );
    }

    /// Keeps the current run as finished and enters `next`.
    fn finish_blue_green_run(&mut self, next: BlueGreenPhase, now_ms: u64) {
        let Some(state) = self.blue_green_mut() else {
            return;
        };
        let finished = state.run.take();
        state.enter(next, now_ms);
        self.finished_runs.extend(finished);
        self.touch();
    }

    /// The switch: all traffic to the new version in one policy change (one route table).
    fn switch_blue_green(&mut self, now_ms: u64, why: &str) {
        let blue = self.stable_version.clone();
        let canary = self.canary_version.clone().unwrap_or_default();
        let Some(state) = self.blue_green_mut() else {
            return;
        };
        if let Some(mut run) = state.run.take() {
            run.terminate("terminated: traffic switched");
            self.finished_runs.push(run);
        }
        let Some(state) = self.blue_green_mut() else {
            return;
        };
        state.enter(BlueGreenPhase::Switched, now_ms);
        state.weight_bp = 10_000;
        state.switched_at_ms = Some(now_ms);
        state.blue_version = Some(blue.clone());
        self.set_message(format!(
            "switched: {canary} serves 100%; {blue} stays routable for an instant switch back"
        ));
        let line = format!(
            "Switched {}: {canary} (green) serves 100%, {blue} (blue) stays routable ({why})",
            self.service
        );
        self.emit(now_ms, "Switched", line);
    }

    /// Promotes the new version (switching first when it has not been) and keeps the old one
    /// for `scaleDownDelay`.
    pub(super) fn promote_blue_green(&mut self, bg: &BlueGreen, now_ms: u64) {
        let blue = self
            .blue_green_ref()
            .and_then(|s| s.blue_version.clone())
            .unwrap_or_else(|| self.stable_version.clone());
        self.promote(now_ms);
        let delay = bg.scale_down_delay;
        let Some(state) = self.blue_green_mut() else {
            return;
        };
        state.weight_bp = 10_000;
        state.blue_version = Some(blue.clone());
        state.switched_at_ms.get_or_insert(now_ms);
        state.scale_down_at_ms = Some(now_ms.saturating_add(millis(delay)));
        state.enter(BlueGreenPhase::ScalingDown, now_ms);
        let line = format!(
            "{}: blue {blue} kept for {} for an instant undo",
            self.service,
            humantime(delay)
        );
        self.emit(now_ms, "ScaleDownDelay", line);
        self.tick_scale_down(now_ms);
    }

    /// Ends `scaleDownDelay` when it is over (also after a promotion, while nothing else runs).
    pub(super) fn tick_scale_down(&mut self, now_ms: u64) {
        let promoted = self.promoted;
        let Some(state) = self.blue_green_mut() else {
            return;
        };
        if state.phase != BlueGreenPhase::ScalingDown {
            return;
        }
        if !promoted {
            // Undone, or the config moved on: nothing left to release.
            state.enter(BlueGreenPhase::Done, now_ms);
            self.touch();
            return;
        }
        if state.scale_down_at_ms.is_some_and(|at| now_ms < at) {
            return;
        }
        state.enter(BlueGreenPhase::Done, now_ms);
        let blue = state.blue_version.clone().unwrap_or_default();
        let line = format!(
            "ScaledDown {}: blue {blue} released at the end of scaleDownDelay; undo now needs the config to name {blue}",
            self.service
        );
        self.emit(now_ms, "ScaledDown", line);
    }

    /// Whether the old version is kept for an instant undo (ticks are needed to release it).
    pub(super) fn scaling_down(&self) -> bool {
        self.blue_green_ref()
            .is_some_and(|s| s.phase == BlueGreenPhase::ScalingDown)
    }

    /// `promote` (not `--full`): skips the current phase — the pre-promotion analysis, the wait
    /// for promotion (the switch happens now) or the post-promotion analysis (promoted now).
    pub(super) fn skip_blue_green_phase(&mut self, bg: &BlueGreen, now_ms: u64) {
        let service = self.service.clone();
        let Some(state) = self.blue_green_ref() else {
            return;
        };
        match state.phase {
            BlueGreenPhase::Preview | BlueGreenPhase::PrePromotion => {
                if let Some(state) = self.blue_green_mut() {
                    if let Some(run) = &mut state.run {
                        run.terminate("terminated: skipped by operator");
                    }
                }
                self.finish_blue_green_run(BlueGreenPhase::AwaitingPromotion, now_ms);
                self.emit(
                    now_ms,
                    "Promoted step",
                    format!("{service}: pre-promotion analysis skipped by operator"),
                );
            }
            BlueGreenPhase::AwaitingPromotion => {
                self.switch_blue_green(now_ms, "promoted by operator");
            }
            BlueGreenPhase::Switched => {
                self.emit(
                    now_ms,
                    "Promoted step",
                    format!("{service}: post-promotion analysis skipped by operator"),
                );
                self.promote_blue_green(bg, now_ms);
            }
            BlueGreenPhase::ScalingDown | BlueGreenPhase::Done => {}
        }
    }

    /// Before an abort: after the switch, says that traffic goes back to the old version.
    pub(super) fn note_switch_back(&mut self, now_ms: u64) {
        let Some(state) = self.blue_green_ref() else {
            return;
        };
        if !self.in_rollout() || !state.switched() {
            return;
        }
        // The config's stable arm serves after the switch back: the blue of the switch, or the
        // version the config names as stable since.
        let blue = self.stable_version.clone();
        let canary = self.canary_version.clone().unwrap_or_default();
        let line = format!(
            "Switching {} back: {blue} (blue) serves 100% again, {canary} (green) gets nothing",
            self.service
        );
        self.emit(now_ms, "SwitchedBack", line);
    }

    /// `undo` under blue-green: after the switch (post-promotion analysis) it switches back and
    /// ends the revision as undone; after `scaleDownDelay` it is refused. `None`: the common
    /// `undo` applies (inside `scaleDownDelay`, or before the switch).
    pub(super) fn undo_blue_green(&mut self, now_ms: u64) -> Option<Result<(), String>> {
        let state = self.blue_green_ref()?;
        let service = self.service.clone();
        if self.in_rollout() && state.switched() {
            self.abort(now_ms, "undone by operator".into());
            if let Some(entry) = self
                .history
                .iter_mut()
                .rev()
                .find(|r| r.revision == self.revision)
            {
                entry.outcome = RevisionOutcome::Undone;
            }
            return Some(Ok(()));
        }
        if self.promoted && state.phase == BlueGreenPhase::Done {
            let blue = state
                .blue_version
                .clone()
                .unwrap_or_else(|| self.config_stable_version.clone());
            let canary = self.canary_version.clone().unwrap_or_default();
            let how = if blue == self.config_stable_version {
                format!("remove the canary {canary} from the config to serve {blue}, the config's stable, again")
            } else {
                format!("name {blue} in the config as the canary to roll it out again")
            };
            return Some(Err(format!(
                "{service}: blue {blue} was released when scaleDownDelay ended, so undo is no longer instant; {how}"
            )));
        }
        None
    }
}

fn analysis_name(phase: BlueGreenPhase) -> &'static str {
    match phase {
        BlueGreenPhase::Switched => "post-promotion analysis",
        _ => "pre-promotion analysis",
    }
}

/// The plan shown as steps: one line per phase.
pub fn describe_phases(bg: &BlueGreen) -> Vec<String> {
    let analysis = |a: Option<&weir_config::AnalysisRef>| match a {
        Some(a) => a.templates.join(", "),
        None => "none".into(),
    };
    let promotion = match (bg.auto_promotion_enabled, bg.auto_promotion_after) {
        (false, _) => "await promotion (weir promote)".to_string(),
        (true, Some(after)) => format!(
            "auto-promotion {} after the preview is up",
            humantime(after)
        ),
        (true, None) => "auto-promotion once pre-promotion analysis passed".to_string(),
    };
    vec![
        format!("preview up ({})", describe_preview(&bg.preview)),
        format!(
            "prePromotionAnalysis {}",
            analysis(bg.pre_promotion_analysis.as_ref())
        ),
        promotion,
        format!(
            "switch 100%, postPromotionAnalysis {}",
            analysis(bg.post_promotion_analysis.as_ref())
        ),
        format!("scaleDownDelay {}", humantime(bg.scale_down_delay)),
    ]
}

/// How the preview is reached, in words: `hosts preview.orders.example.com; listener preview;
/// header x-preview: exact "1"`.
pub fn describe_preview(preview: &weir_config::Preview) -> String {
    let mut parts = Vec::new();
    if !preview.hosts.is_empty() {
        let hosts: Vec<String> = preview.hosts.iter().map(ToString::to_string).collect();
        parts.push(format!("hosts {}", hosts.join(", ")));
    }
    if let Some(listener) = &preview.listener {
        parts.push(format!("listener {listener}"));
    }
    if let Some(headers) = describe_preview_headers(preview) {
        parts.push(headers);
    }
    parts.join("; ")
}

/// The preview's header conditions in words, if it has any.
pub fn describe_preview_headers(preview: &weir_config::Preview) -> Option<String> {
    if preview.headers.is_empty() {
        return None;
    }
    let route = HeaderRoute {
        name: "preview".into(),
        any_of: vec![preview.headers.clone()],
    };
    Some(HeaderRouteState::from_config(&route).conditions())
}

/// A URL that reaches the preview of `service`, for `{{preview.url}}` in analysis arguments:
///
/// - with `preview.listener`: `http://ADDRESS` of that listener (`https://` when it has TLS);
/// - else with a preview host: `http://HOST:PORT` with the first exact preview host and the
///   port of the first listener without TLS (`https://` and the first listener when every
///   listener has TLS);
/// - else (headers only, or wildcard hosts only): none — the placeholder stays and a provider
///   using it measures an error.
///
/// `bound` gives the listeners' actual addresses (a configured port 0 is only known once bound);
/// an unspecified IP (`0.0.0.0`, `::`) becomes the loopback address, since weir's own analysis
/// calls the URL.
pub fn preview_url(
    service: &Service,
    listeners: &[Listener],
    bound: &BTreeMap<String, SocketAddr>,
) -> Option<String> {
    let bg = service.strategy.as_ref()?.blue_green()?;
    let address = |listener: &Listener| -> SocketAddr {
        let mut address = bound
            .get(&listener.name)
            .copied()
            .unwrap_or(listener.address);
        if address.ip().is_unspecified() {
            address.set_ip(match address.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        address
    };
    let scheme = |listener: &Listener| {
        if listener.tls.is_some() {
            "https"
        } else {
            "http"
        }
    };
    if let Some(name) = &bg.preview.listener {
        let listener = listeners.iter().find(|l| &l.name == name)?;
        return Some(format!("{}://{}", scheme(listener), address(listener)));
    }
    let host = bg.preview.hosts.iter().find_map(|h| match h {
        HostPattern::Exact(host) => Some(host.clone()),
        _ => None,
    })?;
    let listener = listeners
        .iter()
        .find(|l| l.tls.is_none())
        .or_else(|| listeners.first())?;
    Some(format!(
        "{}://{host}:{}",
        scheme(listener),
        address(listener).port()
    ))
}

/// The `Host` a request to [`preview_url`] must carry to reach the preview, for
/// `{{preview.host}}`: the first exact preview host, else the first exact host of the service's
/// `match.hosts` (a request on the preview listener still has to match the service). `None` when
/// every host is a wildcard: any `Host` then matches, and the URL's own authority does.
pub fn preview_host(service: &Service) -> Option<String> {
    let bg = service.strategy.as_ref()?.blue_green()?;
    let exact = |hosts: &[HostPattern]| {
        hosts.iter().find_map(|h| match h {
            HostPattern::Exact(host) => Some(host.clone()),
            _ => None,
        })
    };
    exact(&bg.preview.hosts).or_else(|| exact(&service.matcher.hosts))
}

/// Replaces `{{preview.url}}` in argument values with `url`, and `{{preview.host}}` with `host`
/// (left as written when there is none).
pub fn fill_preview_url(args: &mut BTreeMap<String, String>, url: &str, host: Option<&str>) {
    for value in args.values_mut() {
        if value.contains(PREVIEW_URL) {
            *value = value.replace(PREVIEW_URL, url);
        }
        if let Some(host) = host {
            if value.contains(PREVIEW_HOST) {
                *value = value.replace(PREVIEW_HOST, host);
            }
        }
    }
}

#[cfg(test)]
mod tests;

//! Canary analysis, the leaf half: measuring a metric and judging one measurement.
//!
//! A template metric (see [`weir_config::Metric`]) is measured by a [`provider`] — weir's own
//! per-version stats, a Prometheus instant query or an HTTP request — into an [`Outcome`]. [`judge`]
//! turns an outcome into a [`Verdict`] with Argo Rollouts' rules, evaluating the metric's
//! `successCondition` and `failureCondition` ([`condition::Condition`], CEL expressions over
//! `result`). Counting verdicts against `failureLimit` and friends, scheduling measurements and
//! acting on the result are the caller's business.
//!
//! # Layout
//! - [`condition`]: compiling and evaluating conditions.
//! - [`provider`]: the builtin, Prometheus and web providers.
//! - [`json_path`]: the web provider's `jsonPath` (RFC 9535, Argo's brace form accepted).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

pub mod condition;
pub mod json_path;
pub mod provider;

use condition::Condition;

/// What a provider measured.
#[derive(Clone, Debug, PartialEq)]
pub enum Outcome {
    /// A value to judge, with context for messages.
    Value(Measured),
    /// The provider answered but there is nothing to judge (too few requests, empty vector):
    /// inconclusive, never failed.
    NoData(String),
    /// The provider could not answer (unreachable, timeout, HTTP 5xx, bad JSON, query error): an
    /// error measurement.
    Error(String),
}

/// A value a provider measured.
#[derive(Clone, Debug, PartialEq)]
pub struct Measured {
    /// The `result` the conditions see: a JSON number for builtin metrics and scalar Prometheus
    /// results, a JSON array of numbers for Prometheus vectors, the JSON value at `jsonPath` (or the
    /// status code as a number) for web.
    pub value: serde_json::Value,
    /// Requests in the window (builtin only), e.g. for "over 30s (1184 requests)".
    pub requests: Option<u64>,
    /// The window actually covered (builtin only).
    pub window: Option<Duration>,
    /// Why the provider itself found the measurement failed, whatever the conditions say (exec:
    /// a non-zero exit status): [`judge`] answers [`Verdict::Failed`] with this message.
    pub failed: Option<String>,
}

/// The verdict of one measurement.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Verdict {
    /// The conditions say the measurement is good.
    Successful,
    /// The conditions say the measurement is bad.
    Failed,
    /// Nothing to judge (no data), or both conditions are set and neither holds.
    Inconclusive,
    /// The provider failed, or a condition could not be evaluated.
    Error,
}

// === impl Measured ===

impl Measured {
    /// A bare value, without window context.
    pub fn value(value: serde_json::Value) -> Measured {
        Measured {
            value,
            requests: None,
            window: None,
            failed: None,
        }
    }

    /// The value for messages, with the window context when known: `0.6917 over 30s (1184 requests)`.
    pub fn describe(&self) -> String {
        let mut out = show_value(&self.value);
        match (self.window, self.requests) {
            (Some(window), Some(requests)) => {
                let _ = write!(out, " over {} ({requests} requests)", show_duration(window));
            }
            (Some(window), None) => {
                let _ = write!(out, " over {}", show_duration(window));
            }
            (None, Some(requests)) => {
                let _ = write!(out, " ({requests} requests)");
            }
            (None, None) => {}
        }
        out
    }
}

// === impl Verdict ===

impl Verdict {
    /// `"successful"`, `"failed"`, `"inconclusive"` or `"error"` (as serialized).
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Successful => "successful",
            Verdict::Failed => "failed",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Error => "error",
        }
    }
}

impl std::fmt::Display for Verdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Judges one measurement with Argo Rollouts' rules:
///
/// - [`Outcome::NoData`] is [`Verdict::Inconclusive`], [`Outcome::Error`] is [`Verdict::Error`];
/// - a value the provider marked [`Measured::failed`] (exec: a non-zero exit) is
///   [`Verdict::Failed`], the conditions unevaluated;
/// - a condition that cannot be evaluated (`result[0]` on an empty list, a type mismatch, a
///   non-boolean result) is [`Verdict::Error`];
/// - no condition at all: [`Verdict::Successful`];
/// - only `successCondition`: true is successful, false is failed;
/// - only `failureCondition`: true is failed, false is successful;
/// - both: `failureCondition` true is failed (whatever `successCondition` says), else
///   `successCondition` true is successful, else (neither holds) [`Verdict::Inconclusive`].
///
/// Returns the verdict and a short explanation, e.g. "successCondition `result >= 0.99` is false
/// for 0.6917 over 30s (1184 requests)".
pub fn judge(
    success: Option<&Condition>,
    failure: Option<&Condition>,
    outcome: &Outcome,
) -> (Verdict, String) {
    let measured = match outcome {
        Outcome::Value(measured) => measured,
        Outcome::NoData(why) => return (Verdict::Inconclusive, why.clone()),
        Outcome::Error(why) => return (Verdict::Error, why.clone()),
    };
    if let Some(why) = &measured.failed {
        return (Verdict::Failed, why.clone());
    }
    let described = measured.describe();
    // Like Argo, evaluate both before deciding, so an error in either is an error.
    let evaluate = |which: &str, condition: Option<&Condition>| match condition {
        None => Ok(None),
        Some(condition) => match condition.evaluate(&measured.value) {
            Ok(holds) => Ok(Some(holds)),
            Err(error) => Err(format!(
                "{which} `{}` could not be evaluated for {described}: {error}",
                condition.source()
            )),
        },
    };
    // As in Argo, an empty result (a Prometheus query that matched no series) is `[]` for the
    // conditions, so `default(result[0], 0)` and `len(result)` decide; a condition that cannot be
    // evaluated on it is inconclusive (nothing to judge), never an error or a failure.
    let empty = matches!(&measured.value, serde_json::Value::Array(items) if items.is_empty());
    let not_evaluated = |why: String| {
        if empty {
            (
                Verdict::Inconclusive,
                format!("the query returned nothing (result is []): {why}"),
            )
        } else {
            (Verdict::Error, why)
        }
    };
    let success_holds = match evaluate("successCondition", success) {
        Ok(holds) => holds,
        Err(why) => return not_evaluated(why),
    };
    let failure_holds = match evaluate("failureCondition", failure) {
        Ok(holds) => holds,
        Err(why) => return not_evaluated(why),
    };
    let says = |which: &str, condition: &Condition, holds: bool| {
        // `result >= 0.99` false for 0.6917 reads best as "0.6917 < 0.99 over 30s (…)".
        match compact(condition.source(), holds) {
            Some((op, literal)) => {
                let value = show_value(&measured.value);
                let rest = described.strip_prefix(&value).unwrap_or("");
                format!("{value} {op} {literal}{rest}")
            }
            None => format!(
                "{which} `{}` is {holds} for {described}",
                condition.source()
            ),
        }
    };
    match (success.zip(success_holds), failure.zip(failure_holds)) {
        (None, None) => (Verdict::Successful, format!("{described} (no conditions)")),
        (_, Some((condition, true))) => {
            (Verdict::Failed, says("failureCondition", condition, true))
        }
        (Some((condition, holds)), None) => {
            let verdict = if holds {
                Verdict::Successful
            } else {
                Verdict::Failed
            };
            (verdict, says("successCondition", condition, holds))
        }
        (None, Some((condition, false))) => (
            Verdict::Successful,
            says("failureCondition", condition, false),
        ),
        (Some((condition, true)), Some((_, false))) => (
            Verdict::Successful,
            says("successCondition", condition, true),
        ),
        (Some((success, false)), Some((failure, false))) => (
            Verdict::Inconclusive,
            format!(
                "neither successCondition `{}` nor failureCondition `{}` holds for {described}",
                success.source(),
                failure.source()
            ),
        ),
    }
}

/// What a template's placeholders stand for: its arguments (`{{args.NAME}}`) and the built-in
/// variables of the rollout it runs for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Vars {
    /// Argument values for `{{args.NAME}}`.
    pub args: BTreeMap<String, String>,
    /// `{{service}}`: the service's name.
    pub service: String,
    /// `{{stable.version}}`: the version stable serves.
    pub stable_version: String,
    /// `{{canary.version}}`: the canary's version (empty without a canary: left as written).
    pub canary_version: String,
}

/// Replaces `{{args.NAME}}` with the argument's value and `{{service}}`, `{{stable.version}}`,
/// `{{canary.version}}` with the rollout's (whitespace inside the braces allowed:
/// `{{ args.NAME }}`). Placeholders naming an unknown argument or an empty variable, and any other
/// `{{...}}`, are left as written.
pub fn substitute(text: &str, vars: &Vars) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(open) = rest.find("{{") {
        let after_open = &rest[open + 2..];
        let Some(close) = after_open.find("}}") else {
            break;
        };
        out.push_str(&rest[..open]);
        let inner = after_open[..close].trim();
        let value = match inner {
            "service" => Some(&vars.service),
            "stable.version" => Some(&vars.stable_version),
            "canary.version" => Some(&vars.canary_version),
            _ => inner
                .strip_prefix("args.")
                .and_then(|name| vars.args.get(name.trim_end())),
        };
        match value {
            Some(value) if !value.is_empty() => out.push_str(value),
            _ => out.push_str(&rest[open..open + 2 + close + 2]),
        }
        rest = &after_open[close + 2..];
    }
    out.push_str(rest);
    out
}

/// A JSON value for messages: numbers with at most four decimals, strings quoted, long values cut.
pub(crate) fn show_value(value: &serde_json::Value) -> String {
    const LIMIT: usize = 200;
    let shown = match value {
        serde_json::Value::Number(number) => match number.as_f64() {
            Some(x) => show_number(x),
            None => number.to_string(),
        },
        serde_json::Value::Array(items) if items.iter().all(serde_json::Value::is_number) => {
            let items: Vec<String> = items.iter().map(show_value).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    };
    if shown.len() <= LIMIT {
        return shown;
    }
    let mut cut = LIMIT;
    while !shown.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}…", &shown[..cut])
}

/// A number for messages: whole numbers without decimals, others with at most four decimals
/// (scientific notation below 0.001).
fn show_number(x: f64) -> String {
    if x.is_finite() && x == x.trunc() && x.abs() < 1e15 {
        return format!("{x:.0}");
    }
    if x.abs() < 1e-3 {
        return format!("{x:.3e}");
    }
    let fixed = format!("{x:.4}");
    fixed
        .trim_end_matches('0')
        .trim_end_matches('.')
        .to_string()
}

/// A duration for messages: `30s`, `2m`, `1m30s`, `1h`, `12.5s`.
pub(crate) fn show_duration(duration: Duration) -> String {
    if duration.subsec_millis() != 0 {
        return format!("{:.1}s", duration.as_secs_f64());
    }
    let secs = duration.as_secs();
    match secs {
        0 => "0s".to_string(),
        s if s % 3600 == 0 => format!("{}h", s / 3600),
        s if s % 60 == 0 => format!("{}m", s / 60),
        s if s > 60 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

#[cfg(test)]
mod tests;

/// For a condition of the form `result OP NUMBER` (or `result[0] OP NUMBER`), the operator that
/// held for the value (`holds`) or its negation, and the number, for compact messages.
fn compact(source: &str, holds: bool) -> Option<(&'static str, &str)> {
    let tokens: Vec<&str> = source.split_whitespace().collect();
    let [lhs, op, literal] = tokens.as_slice() else {
        return None;
    };
    if !(*lhs == "result" || *lhs == "result[0]") || literal.parse::<f64>().is_err() {
        return None;
    }
    let (held, negated) = match *op {
        ">=" => (">=", "<"),
        ">" => (">", "<="),
        "<=" => ("<=", ">"),
        "<" => ("<", ">="),
        "==" => ("==", "!="),
        "!=" => ("!=", "=="),
        _ => return None,
    };
    Some((if holds { held } else { negated }, literal))
}

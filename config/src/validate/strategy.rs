//! `services[].strategy`: Argo-style steps with optional background analysis, a Flagger-style
//! progression or iterations (A/B testing), or Argo-style blue-green.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_yaml_ng::Value;

use super::policy;
use super::template::{check_reference, Known};
use super::walk::{self, all, each, Cx, Obj};
use crate::model::{
    AnalysisRef, BackgroundAnalysis, BlueGreen, CanarySteps, Check, CheckKind, Iterations,
    Progression, Step, Strategy, StrategyKind, Weight,
};

/// Keys of the background-analysis form of `strategy.canary.analysis`.
const BACKGROUND_KEYS: [&str; 3] = ["templates", "args", "startingStep"];
/// Keys of the Flagger form of `strategy.canary.analysis`.
const FLAGGER_KEYS: [&str; 10] = [
    "interval",
    "threshold",
    "stepWeight",
    "stepWeights",
    "maxWeight",
    "metrics",
    "iterations",
    "match",
    "mirror",
    "mirrorWeight",
];
/// Keys of the Flagger progression that `iterations` replaces.
const PROGRESSION_KEYS: [&str; 3] = ["stepWeight", "stepWeights", "maxWeight"];
/// Keys of the Flagger form that only `iterations` uses.
const ITERATION_KEYS: [&str; 3] = ["match", "mirror", "mirrorWeight"];
/// Keys of one step.
const STEP_KEYS: [&str; 5] = [
    "setWeight",
    "pause",
    "analysis",
    "setHeaderRoute",
    "setMirrorRoute",
];
/// The step kinds, for messages.
const STEP_KINDS: &str = "setWeight, pause, analysis, setHeaderRoute or setMirrorRoute";
/// Keys of `strategy.blueGreen`.
const BLUE_GREEN_KEYS: [&str; 9] = [
    "preview",
    "autoPromotionEnabled",
    "autoPromotionSeconds",
    "prePromotionAnalysis",
    "postPromotionAnalysis",
    "scaleDownDelay",
    "scaleDownDelaySeconds",
    "progressDeadline",
    "webhooks",
];
/// Default `progressDeadline`.
const DEFAULT_PROGRESS_DEADLINE: Duration = Duration::from_secs(600);
/// Default blue-green `scaleDownDelay` (Argo's 30 seconds).
const DEFAULT_SCALE_DOWN_DELAY: Duration = Duration::from_secs(30);

/// Shortest window a Flagger-style check measures over.
const MIN_CHECK_WINDOW: Duration = Duration::from_secs(10);

/// `strategy`: `canary` or `blueGreen`. `listeners` are the listener names, when they are known,
/// for the blue-green preview.
pub(crate) fn strategy(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    known: &Known,
    listeners: Option<&[String]>,
) -> Option<Strategy> {
    let o = Obj::open(cx, value, at, &["canary", "blueGreen"])?;
    let canary = o.opt(cx, "canary", |cx, v, at| canary_strategy(cx, v, at, known));
    let blue_green = o.opt(cx, "blueGreen", |cx, v, at| {
        blue_green(cx, v, at, known, listeners)
    });
    match (canary?, blue_green?) {
        (Some(_), Some(_)) => {
            cx.err(at, "use either canary or blueGreen, not both");
            None
        }
        (None, None) => {
            cx.err(at, "needs canary or blueGreen");
            None
        }
        (Some(strategy), None) | (None, Some(strategy)) => Some(strategy),
    }
}

/// The parsed `strategy.canary.analysis`, by form; the inner `None` means it had problems.
enum AnalysisForm {
    Background(Option<BackgroundAnalysis>),
    Flagger(Option<Progression>),
    Iterations(Option<Iterations>),
}

/// Route names set by the steps seen so far, so a removal can be checked.
#[derive(Default)]
struct SetRoutes {
    header: BTreeSet<String>,
    mirror: BTreeSet<String>,
}

fn canary_strategy(cx: &mut Cx, value: &Value, at: &str, known: &Known) -> Option<Strategy> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "steps",
            "analysis",
            "canaryAnalysis",
            "progressDeadline",
            "webhooks",
        ],
    )?;
    let steps_len = o
        .get("steps")
        .and_then(Value::as_sequence)
        .map_or(0, Vec::len);
    let mut routes = SetRoutes::default();
    let steps = o.or(cx, "steps", Vec::new(), |cx, v, at| {
        let items = walk::list(cx, v, at)?;
        all(each(cx, items, at, |cx, item, at, _| {
            step(cx, item, at, known, &mut routes)
        }))
    });
    // Flagger's older `canaryAnalysis` is accepted as `analysis`.
    let key = match (o.get("analysis"), o.get("canaryAnalysis")) {
        (Some(_), Some(_)) => {
            cx.err(
                &o.at("canaryAnalysis"),
                "canaryAnalysis is Flagger's older name for analysis: give one of them",
            );
            "analysis"
        }
        (None, Some(_)) => "canaryAnalysis",
        _ => "analysis",
    };
    let analysis = o
        .get(key)
        .map(|v| analysis(cx, v, &o.at(key), steps_len, known));
    let progress_deadline = o.or(
        cx,
        "progressDeadline",
        DEFAULT_PROGRESS_DEADLINE,
        walk::positive_duration,
    );

    let hooks_interval = match &analysis {
        Some(AnalysisForm::Flagger(Some(p))) => Some(p.interval),
        Some(AnalysisForm::Iterations(Some(i))) => Some(i.interval),
        _ => None,
    };
    // Flagger writes them in its `analysis`; weir's form is beside it. One place, not both.
    let flagger_hooks = o
        .get(key)
        .and_then(Value::as_mapping)
        .and_then(|m| m.get("webhooks"))
        .filter(|_| {
            matches!(
                analysis,
                Some(AnalysisForm::Flagger(_) | AnalysisForm::Iterations(_))
            )
        });
    // Both are read (so each reports its own problems), then refused together.
    let inner_at = format!("{}.webhooks", o.at(key));
    let inner =
        flagger_hooks.map(|hooks| super::webhook::webhooks(cx, hooks, &inner_at, hooks_interval));
    let beside = o.has("webhooks").then(|| {
        o.or(cx, "webhooks", Vec::new(), |cx, v, at| {
            super::webhook::webhooks(cx, v, at, hooks_interval)
        })
    });
    let webhooks = match (beside, inner) {
        (Some(_), Some(_)) => {
            cx.err(
                &inner_at,
                "webhooks are given beside analysis already: give them in one place",
            );
            None
        }
        (Some(hooks), None) | (None, Some(hooks)) => hooks,
        (None, None) => Some(Vec::new()),
    };

    const NEEDS: &str = "needs steps, analysis.stepWeight or analysis.iterations";
    let no_steps = |cx: &mut Cx, form: &str| {
        if steps_len > 0 {
            cx.err(
                &o.at("steps"),
                format!("steps and Flagger-style analysis ({form}) cannot be combined"),
            );
        }
    };
    let kind = match analysis {
        Some(AnalysisForm::Flagger(progression)) => {
            no_steps(cx, "stepWeight");
            StrategyKind::Progression(progression?)
        }
        Some(AnalysisForm::Iterations(iterations)) => {
            no_steps(cx, "iterations");
            StrategyKind::Iterations(iterations?)
        }
        Some(AnalysisForm::Background(background)) => {
            if steps_len == 0 {
                cx.err(at, NEEDS);
            }
            StrategyKind::Steps(CanarySteps {
                steps: steps?,
                background: Some(background?),
            })
        }
        None => {
            if steps_len == 0 {
                cx.err(at, NEEDS);
            }
            StrategyKind::Steps(CanarySteps {
                steps: steps?,
                background: None,
            })
        }
    };
    Some(Strategy {
        kind,
        progress_deadline: progress_deadline?,
        webhooks: webhooks?,
    })
}

/// One item of `steps`: exactly one of `setWeight`, `pause`, `analysis`, `setHeaderRoute`,
/// `setMirrorRoute`. A route removal must name a route an earlier step set.
fn step(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    known: &Known,
    routes: &mut SetRoutes,
) -> Option<Step> {
    let o = Obj::open(cx, value, at, &STEP_KEYS)?;
    let present: Vec<&str> = STEP_KEYS.into_iter().filter(|k| o.has(k)).collect();
    let kind = match present.as_slice() {
        [kind] => *kind,
        [] => {
            cx.err(at, format!("a step needs exactly one of {STEP_KINDS}"));
            return None;
        }
        several => {
            cx.err(
                at,
                format!(
                    "a step needs exactly one of {STEP_KINDS}, got {}",
                    several.join(" and ")
                ),
            );
            return None;
        }
    };
    let route_set =
        |cx: &mut Cx, set: &mut BTreeSet<String>, what: &str, name: &str, removal: bool| {
            if !removal {
                set.insert(name.to_string());
                return Some(());
            }
            if set.contains(name) {
                return Some(());
            }
            cx.err(
                &walk::field_path(&o.at(kind), "name"),
                format!(
                "removes {what} route \"{name}\", which no earlier step sets (add match to set it)"
            ),
            );
            None
        };
    match kind {
        "setHeaderRoute" => {
            let value = o.raw(kind).unwrap_or(&Value::Null);
            let route = policy::header_route(cx, value, &o.at(kind))?;
            route_set(
                cx,
                &mut routes.header,
                "header",
                &route.name,
                route.any_of.is_empty(),
            )?;
            Some(Step::SetHeaderRoute(route))
        }
        "setMirrorRoute" => {
            let value = o.raw(kind).unwrap_or(&Value::Null);
            let route = policy::mirror_route(cx, value, &o.at(kind))?;
            route_set(
                cx,
                &mut routes.mirror,
                "mirror",
                &route.name,
                route.any_of.is_empty(),
            )?;
            Some(Step::SetMirrorRoute(route))
        }
        "setWeight" => o.req(cx, "setWeight", walk::weight).map(Step::SetWeight),
        "pause" => {
            let value = o.raw("pause").unwrap_or(&Value::Null);
            let p = Obj::open(cx, value, &o.at("pause"), &["duration"])?;
            // A plain number is seconds, as in Argo (`pause: {duration: 30}`).
            let duration = p.opt(cx, "duration", seconds_or_duration)?;
            Some(Step::Pause(duration))
        }
        _ => {
            let value = o.raw("analysis").unwrap_or(&Value::Null);
            let a = Obj::open(cx, value, &o.at("analysis"), &["templates", "args"])?;
            analysis_ref(cx, &a, known).map(Step::Analysis)
        }
    }
}

/// `templates` and `args` of an opened analysis mapping, checked against the templates.
fn analysis_ref(cx: &mut Cx, o: &Obj<'_>, known: &Known) -> Option<AnalysisRef> {
    let templates = o.req(cx, "templates", |cx, v, at| {
        let items = walk::nonempty_list(cx, v, at)?;
        let parsed = each(cx, items, at, |cx, item, at, _| {
            let t = Obj::open(cx, item, at, &["templateName"])?;
            let name = t.req(cx, "templateName", walk::nonempty_string)?;
            Some((name, t.at("templateName")))
        });
        all(parsed)
    });
    let args = o.or(cx, "args", Vec::new(), supplied_args);
    if let (Some(templates), Some(args)) = (&templates, &args) {
        check_reference(cx, o.path(), templates, &args.names(), known);
    }
    Some(AnalysisRef {
        templates: templates?.into_iter().map(|(name, _)| name).collect(),
        args: args?
            .into_iter()
            .map(|(name, _, value)| (name, value))
            .collect(),
    })
}

/// `args: [{name, value}]` of a reference, as `(name, path of name, value)`.
fn supplied_args(cx: &mut Cx, value: &Value, at: &str) -> Option<Vec<(String, String, String)>> {
    let items = walk::list(cx, value, at)?;
    let mut seen: Vec<String> = Vec::new();
    let parsed = each(cx, items, at, |cx, item, at, _| {
        let o = Obj::open(cx, item, at, &["name", "value"])?;
        let name = o.req(cx, "name", walk::nonempty_string);
        let value = o.req(cx, "value", walk::text);
        let name = name?;
        if seen.contains(&name) {
            cx.err(&o.at("name"), format!("duplicate argument \"{name}\""));
            return None;
        }
        seen.push(name.clone());
        Some((name, o.at("name"), value?))
    });
    all(parsed)
}

/// Turns `(name, path, value)` triples into what `check_reference` wants.
trait SuppliedNames {
    fn names(&self) -> Vec<(String, String)>;
}

impl SuppliedNames for Vec<(String, String, String)> {
    fn names(&self) -> Vec<(String, String)> {
        self.iter()
            .map(|(name, at, _)| (name.clone(), at.clone()))
            .collect()
    }
}

/// `strategy.canary.analysis`, in whichever form its keys say.
fn analysis(cx: &mut Cx, value: &Value, at: &str, steps_len: usize, known: &Known) -> AnalysisForm {
    // `webhooks` is Flagger's placement of the webhooks, read by `canary_strategy`.
    let allowed: Vec<&str> = BACKGROUND_KEYS
        .iter()
        .chain(FLAGGER_KEYS.iter())
        .chain(["webhooks"].iter())
        .copied()
        .collect();
    let Some(o) = Obj::open(cx, value, at, &allowed) else {
        return AnalysisForm::Background(None);
    };
    if FLAGGER_KEYS.iter().any(|k| o.has(k)) {
        let mut mixed = false;
        for key in BACKGROUND_KEYS.iter().filter(|k| o.has(k)) {
            mixed = true;
            cx.err(
                &o.at(key),
                format!(
                    "not allowed in Flagger-style analysis ({})",
                    FLAGGER_KEYS.join(", ")
                ),
            );
        }
        if o.has("iterations") {
            for key in PROGRESSION_KEYS.iter().filter(|k| o.has(k)) {
                mixed = true;
                cx.err(
                    &o.at(key),
                    "not allowed with iterations (the canary gets matching or mirrored requests, not a weight)",
                );
            }
            let iterations = iterations(cx, &o, known);
            return AnalysisForm::Iterations(iterations.filter(|_| !mixed));
        }
        for key in ITERATION_KEYS.iter().filter(|k| o.has(k)) {
            mixed = true;
            cx.err(&o.at(key), "only allowed with iterations");
        }
        let progression = progression(cx, &o, known);
        return AnalysisForm::Flagger(progression.filter(|_| !mixed));
    }
    if o.has("webhooks") {
        cx.err(
            &o.at("webhooks"),
            "webhooks go under strategy.canary (or in a Flagger-style analysis), not in Argo's background analysis",
        );
    }
    let analysis = analysis_ref(cx, &o, known);
    let starting_step = o.or(cx, "startingStep", 0, |cx, v, at| {
        let n = walk::uint(cx, v, at)?;
        let fits = usize::try_from(n)
            .ok()
            .filter(|n| steps_len == 0 || *n < steps_len);
        if fits.is_none() {
            cx.err(
                at,
                format!("must be less than the number of steps ({steps_len}), got {n}"),
            );
        }
        fits
    });
    AnalysisForm::Background(
        analysis
            .zip(starting_step)
            .map(|(analysis, starting_step)| BackgroundAnalysis {
                analysis,
                starting_step,
            }),
    )
}

/// The Flagger progression form of an opened `strategy.canary.analysis`.
fn progression(cx: &mut Cx, o: &Obj<'_>, known: &Known) -> Option<Progression> {
    let interval = o.req(cx, "interval", walk::positive_duration);
    let threshold = o.req(cx, "threshold", walk::positive_u32);
    let weights = step_weights(cx, o);
    let checks = checks(cx, o, interval, known);
    let (step_weights, max_weight) = weights?;
    Some(Progression {
        interval: interval?,
        threshold: threshold?,
        step_weights,
        max_weight,
        checks: checks?,
    })
}

/// The Flagger iterations form (A/B testing with `match`, blue/green with `mirror`) of an opened
/// `strategy.canary.analysis`.
fn iterations(cx: &mut Cx, o: &Obj<'_>, known: &Known) -> Option<Iterations> {
    let interval = o.req(cx, "interval", walk::positive_duration);
    let threshold = o.req(cx, "threshold", walk::positive_u32);
    let iterations = o.req(cx, "iterations", walk::positive_u32);
    let any_of = o.or(cx, "match", Vec::new(), policy::route_match);
    let mirror = o.or(cx, "mirror", false, walk::boolean);
    let mirror_weight = o.opt(cx, "mirrorWeight", policy::one_to_hundred);
    if o.get("mirrorWeight").is_some() && mirror != Some(true) {
        cx.err(&o.at("mirrorWeight"), "only allowed with mirror: true");
    }
    let checks = checks(cx, o, interval, known);
    let mirror = match (mirror?, mirror_weight?) {
        (true, weight) => Some(weight.unwrap_or(Weight::FULL)),
        (false, None) => None,
        (false, Some(_)) => return None,
    };
    Some(Iterations {
        interval: interval?,
        threshold: threshold?,
        iterations: iterations?,
        any_of: any_of?,
        mirror,
        checks: checks?,
    })
}

/// `metrics` of the Flagger forms; the checks' default window is the interval, at least
/// [`MIN_CHECK_WINDOW`].
fn checks(
    cx: &mut Cx,
    o: &Obj<'_>,
    interval: Option<Duration>,
    known: &Known,
) -> Option<Vec<Check>> {
    let window = interval.unwrap_or(MIN_CHECK_WINDOW).max(MIN_CHECK_WINDOW);
    o.req(cx, "metrics", |cx, v, at| {
        let items = walk::nonempty_list(cx, v, at)?;
        let mut names: BTreeMap<String, usize> = BTreeMap::new();
        let parsed = each(cx, items, at, |cx, item, at, i| {
            let check = check(cx, item, at, window, known)?;
            if let Some(first) = names.get(&check.name) {
                cx.err(
                    &walk::field_path(at, "name"),
                    format!(
                        "duplicate check name \"{}\" (also metrics[{first}])",
                        check.name
                    ),
                );
                return None;
            }
            names.insert(check.name.clone(), i);
            Some(check)
        });
        all(parsed)
    })
}

/// `stepWeight` + `maxWeight`, or `stepWeights` (+ optional `maxWeight`): the weights to walk and the maximum.
fn step_weights(cx: &mut Cx, o: &Obj<'_>) -> Option<(Vec<Weight>, Weight)> {
    let max_weight = o.opt(cx, "maxWeight", walk::weight);
    match (o.get("stepWeight"), o.get("stepWeights")) {
        (Some(_), Some(_)) => {
            cx.err(
                &o.at("stepWeights"),
                "use either stepWeight or stepWeights, not both",
            );
            None
        }
        (None, None) => {
            cx.err(
                &o.at("stepWeight"),
                "missing required field (Flagger-style analysis needs stepWeight with maxWeight, or stepWeights)",
            );
            None
        }
        (Some(v), None) => {
            let at = o.at("stepWeight");
            let step = walk::weight(cx, v, &at);
            if step == Some(Weight::ZERO) {
                cx.err(&at, "must be greater than 0");
                return None;
            }
            let max = match max_weight? {
                Some(max) => max,
                None => {
                    cx.err(
                        &o.at("maxWeight"),
                        "missing required field (needed with stepWeight)",
                    );
                    return None;
                }
            };
            let step = step?;
            if max < step {
                cx.err(
                    &o.at("maxWeight"),
                    format!("must be at least stepWeight ({step}), got {max}"),
                );
                return None;
            }
            let (step_bp, max_bp) = (u32::from(step.basis_points()), max.basis_points());
            let mut weights = Vec::new();
            let mut bp = step_bp;
            while bp < u32::from(max_bp) {
                weights.extend(u16::try_from(bp).ok().and_then(Weight::from_basis_points));
                bp += step_bp;
            }
            weights.push(max);
            Some((weights, max))
        }
        (None, Some(v)) => {
            let at = o.at("stepWeights");
            let items = walk::nonempty_list(cx, v, &at)?;
            let max_weight = max_weight?;
            let mut previous: Option<Weight> = None;
            let parsed = each(cx, items, &at, |cx, item, at, _| {
                let weight = walk::weight(cx, item, at)?;
                if weight == Weight::ZERO {
                    cx.err(at, "must be greater than 0");
                    return None;
                }
                if let Some(prev) = previous.filter(|p| weight <= *p) {
                    cx.err(
                        at,
                        format!(
                            "must be greater than the previous step weight ({prev}), got {weight}"
                        ),
                    );
                    return None;
                }
                previous = Some(weight);
                if let Some(max) = max_weight.filter(|m| weight > *m) {
                    cx.err(
                        at,
                        format!("must not exceed maxWeight ({max}), got {weight}"),
                    );
                    return None;
                }
                Some(weight)
            });
            let mut weights = all(parsed)?;
            let last = *weights.last()?;
            let max = max_weight.unwrap_or(last);
            if last < max {
                weights.push(max);
            }
            Some((weights, max))
        }
    }
}

/// One Flagger-style check in `analysis.metrics`.
fn check(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    default_window: Duration,
    known: &Known,
) -> Option<Check> {
    let o = Obj::open(
        cx,
        value,
        at,
        &[
            "name",
            "templateRef",
            "templateVariables",
            "thresholdRange",
            "interval",
        ],
    )?;
    let name = o.req(cx, "name", walk::nonempty_string);
    let template = o.opt(cx, "templateRef", |cx, v, at| {
        let t = Obj::open(cx, v, at, &["name"])?;
        let name = t.req(cx, "name", walk::nonempty_string)?;
        Some((name, t.at("name")))
    });
    let variables = o.opt(cx, "templateVariables", template_variables);
    if o.get("templateVariables").is_some() && o.get("templateRef").is_none() {
        cx.err(
            &o.at("templateVariables"),
            "only allowed together with templateRef",
        );
    }
    let kind = match (&template, &name) {
        (Some(Some((template, template_at))), _) => {
            let variables = variables.clone().flatten().unwrap_or_default();
            let supplied = variables.names();
            check_reference(
                cx,
                &o.at("templateRef"),
                &[(template.clone(), template_at.clone())],
                &supplied,
                known,
            );
            Some(CheckKind::Template(AnalysisRef {
                templates: vec![template.clone()],
                args: variables
                    .into_iter()
                    .map(|(name, _, value)| (name, value))
                    .collect(),
            }))
        }
        (Some(None), Some(name)) => match name.as_str() {
            "request-success-rate" => Some(CheckKind::RequestSuccessRate),
            "request-duration" => Some(CheckKind::RequestDuration),
            other => {
                cx.err(
                    &o.at("name"),
                    format!("unknown check \"{other}\": use request-success-rate, request-duration or templateRef"),
                );
                None
            }
        },
        _ => None,
    };
    let builtin = matches!(
        kind,
        Some(CheckKind::RequestSuccessRate | CheckKind::RequestDuration)
    );
    let range = o.opt(cx, "thresholdRange", |cx, v, at| {
        let r = Obj::open(cx, v, at, &["min", "max"])?;
        let min = r.opt(cx, "min", walk::number);
        let max = r.opt(cx, "max", walk::number);
        let (min, max) = (min?, max?);
        if let (Some(min), Some(max)) = (min, max) {
            if min > max {
                cx.err(
                    at,
                    format!("min ({min}) must not be greater than max ({max})"),
                );
                return None;
            }
        }
        if builtin && min.is_none() && max.is_none() {
            cx.err(at, "needs min or max");
            return None;
        }
        Some((min, max))
    });
    if builtin && o.get("thresholdRange").is_none() {
        cx.err(
            &o.at("thresholdRange"),
            "missing required field (needs min or max)",
        );
    }
    let window = o.or(cx, "interval", default_window, walk::positive_duration);
    let (min, max) = range?.unwrap_or((None, None));
    variables?;
    Some(Check {
        name: name?,
        kind: kind?,
        min,
        max,
        window: window?,
    })
}

/// `templateVariables: {NAME: VALUE}`, as `(name, path, value)`.
fn template_variables(
    cx: &mut Cx,
    value: &Value,
    at: &str,
) -> Option<Vec<(String, String, String)>> {
    let Value::Mapping(map) = value else {
        cx.err(at, "expected a mapping of argument names to values");
        return None;
    };
    let mut ok = true;
    let mut variables = Vec::new();
    for (key, value) in map {
        let Some(name) = key.as_str() else {
            cx.err(at, "argument names must be strings");
            ok = false;
            continue;
        };
        let path = walk::field_path(at, name);
        match walk::text(cx, value, &path) {
            Some(text) => variables.push((name.to_string(), path, text)),
            None => ok = false,
        }
    }
    ok.then_some(variables)
}

/// `strategy.blueGreen`.
fn blue_green(
    cx: &mut Cx,
    value: &Value,
    at: &str,
    known: &Known,
    listeners: Option<&[String]>,
) -> Option<Strategy> {
    let o = Obj::open(cx, value, at, &BLUE_GREEN_KEYS)?;
    let preview = o.req(cx, "preview", |cx, v, at| {
        policy::preview(cx, v, at, listeners)
    });
    let auto_promotion_enabled = o.or(cx, "autoPromotionEnabled", true, walk::boolean);
    let auto_promotion_after = o.opt(cx, "autoPromotionSeconds", seconds_or_duration);
    let analysis = |cx: &mut Cx, key: &str| {
        o.opt(cx, key, |cx, v, at| {
            let a = Obj::open(cx, v, at, &["templates", "args"])?;
            analysis_ref(cx, &a, known)
        })
    };
    let pre_promotion_analysis = analysis(cx, "prePromotionAnalysis");
    let post_promotion_analysis = analysis(cx, "postPromotionAnalysis");
    let scale_down_delay = match (o.get("scaleDownDelay"), o.get("scaleDownDelaySeconds")) {
        (Some(_), Some(_)) => {
            cx.err(
                &o.at("scaleDownDelaySeconds"),
                "use either scaleDownDelay or scaleDownDelaySeconds, not both",
            );
            None
        }
        (Some(v), None) => walk::duration(cx, v, &o.at("scaleDownDelay")),
        (None, Some(v)) => seconds(cx, v, &o.at("scaleDownDelaySeconds")),
        (None, None) => Some(DEFAULT_SCALE_DOWN_DELAY),
    };
    let progress_deadline = o.or(
        cx,
        "progressDeadline",
        DEFAULT_PROGRESS_DEADLINE,
        walk::positive_duration,
    );
    let webhooks = o.or(cx, "webhooks", Vec::new(), |cx, v, at| {
        super::webhook::webhooks(cx, v, at, None)
    });
    Some(Strategy {
        webhooks: webhooks?,
        kind: StrategyKind::BlueGreen(BlueGreen {
            preview: preview?,
            auto_promotion_enabled: auto_promotion_enabled?,
            auto_promotion_after: auto_promotion_after?,
            pre_promotion_analysis: pre_promotion_analysis?,
            post_promotion_analysis: post_promotion_analysis?,
            scale_down_delay: scale_down_delay?,
        }),
        progress_deadline: progress_deadline?,
    })
}

/// A whole number of seconds, or a duration string (`autoPromotionSeconds`).
fn seconds_or_duration(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    match value {
        Value::Number(_) => seconds(cx, value, at),
        _ => walk::duration(cx, value, at),
    }
}

/// A whole number of seconds, bounded like duration strings (milliseconds fit in `u64`).
fn seconds(cx: &mut Cx, value: &Value, at: &str) -> Option<Duration> {
    let n = walk::uint(cx, value, at)?;
    if n.checked_mul(1000).is_none() {
        cx.err(at, format!("too large: {n} seconds"));
        return None;
    }
    Some(Duration::from_secs(n))
}

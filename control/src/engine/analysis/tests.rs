//! Tests of conditions, judging, substitution and JSONPath.

use std::time::Duration;

use serde_json::{json, Value};

use super::condition::{Condition, ConditionError};
use super::json_path::JsonPath;
use super::{judge, show_duration, show_value, substitute, Measured, Outcome, Vars, Verdict};

fn compile(expr: &str) -> Condition {
    Condition::compile(expr).unwrap_or_else(|error| panic!("{expr}: {error}"))
}

fn eval(expr: &str, value: Value) -> Result<bool, ConditionError> {
    compile(expr).evaluate(&value)
}

// === conditions ===

#[test]
fn conditions_hold_and_fail_as_argo_users_expect() {
    // (expression, value, expected)
    let cases: &[(&str, Value, bool)] = &[
        ("result >= 0.99", json!(0.995), true),
        ("result >= 0.99", json!(0.6917), false),
        ("result >= 0.99", json!(1), true),
        ("result <= 0.5", json!(0.5), true),
        ("result <= 0.5", json!(0.51), false),
        ("result[0] >= 99", json!([99.5]), true),
        ("result[0] >= 99", json!([98]), false),
        ("result[0] >= 99", json!([99]), true),
        ("result == 200", json!(200), true),
        ("result == 200", json!(200.0), true),
        ("result == 200", json!(503), false),
        ("result != 200", json!(200.0), false),
        ("result in [200, 204]", json!(204.0), true),
        ("default(result, 0) < 1", json!(0.5), true),
        ("default(result, 0) < 1", json!(5), false),
        ("default(result, 0) < 1", json!(null), true),
        ("default(result, 0) < 1", json!([]), true),
        ("default(result[0], 0) < 1", json!([]), true),
        ("default(result[0], 0) < 1", json!([0.2]), true),
        ("default(result[0], 0) < 1", json!([3]), false),
        ("default(result[0], 5) < 1", json!([]), false),
        ("default(result.missing, 0) == 0", json!({"other": 1}), true),
        ("result[0] > 0.90 && result[0] < 1.1", json!([1]), true),
        ("result[0] > 0.90 && result[0] < 1.1", json!([0.95]), true),
        ("result[0] > 0.90 && result[0] < 1.1", json!([1.2]), false),
        ("result[0] > 0.90 && result[0] < 1.1", json!([0.5]), false),
        ("len(result) > 0", json!([1]), true),
        ("len(result) > 0", json!([]), false),
        ("size(result) == 2", json!([1, 2]), true),
        ("len(result) == 2", json!("ok"), true),
        ("isNaN(result)", json!(1.5), false),
        ("isNaN(0.0 / 0.0)", json!(null), true),
        ("isNaN(default(0.0 / 0.0, 1))", json!(null), false),
        ("isInf(result)", json!(1.5), false),
        ("isInf(1.0 / 0.0)", json!(null), true),
        ("abs(result) < 0.1", json!(-0.05), true),
        ("abs(result) < 0.1", json!(-0.5), false),
        ("abs(-3) == 3", json!(null), true),
        ("result == \"ok\"", json!("ok"), true),
        ("result == 'ok'", json!("degraded"), false),
        (
            "result.status == \"healthy\"",
            json!({"status": "healthy"}),
            true,
        ),
        (
            "result.status == \"healthy\"",
            json!({"status": "sick"}),
            false,
        ),
        ("has(result.status)", json!({"status": "x"}), true),
        ("has(result.status)", json!({}), false),
        ("result.all(x, x < 0.5)", json!([0.1, 0.2]), true),
        ("result.exists(x, x > 0.5)", json!([0.1, 0.2]), false),
        ("asInt(result) == 3", json!("3"), true),
        ("asFloat(result) > 0.5", json!("0.75"), true),
        ("result.matches('^ok')", json!("okay"), true),
        // Mixed int/double arithmetic gives a double.
        ("result * 100 >= 99", json!(0.995), true),
        ("result * 100 >= 99", json!(0.5), false),
        ("result / 2 == 0.5", json!(1), true),
        ("result + 1 == 2", json!(1.0), true),
        ("result - 1 < 0", json!(0.5), true),
        ("1 + result == 1.5", json!(0.5), true),
        // Plain CEL arithmetic is unchanged.
        ("7 / 2 == 3", json!(null), true),
        ("'a' + 'b' == 'ab'", json!(null), true),
        ("[1] + [2] == [1, 2]", json!(null), true),
        ("-result < 0", json!(1), true),
    ];
    for (expr, value, expected) in cases {
        assert_eq!(
            eval(expr, value.clone()),
            Ok(*expected),
            "`{expr}` with result = {value}"
        );
    }
}

#[test]
fn evaluation_errors_are_reported() {
    let cases: &[(&str, Value)] = &[
        ("result[0] >= 99", json!([])),
        ("result.status == 'ok'", json!({})),
        ("result >= 0.99", json!("high")),
        ("result > 1", json!(null)),
        ("isNaN(result)", json!("x")),
        ("asInt(result) == 1", json!("one")),
        ("result % 2 == 0", json!(3)),
    ];
    for (expr, value) in cases {
        match eval(expr, value.clone()) {
            Err(ConditionError::Evaluation(message)) => assert!(!message.is_empty()),
            other => panic!("`{expr}` with {value}: expected an evaluation error, got {other:?}"),
        }
    }
}

#[test]
fn non_boolean_results_are_errors() {
    for (expr, value) in [
        ("result", json!(0.5)),
        ("result + 1", json!(1)),
        ("'x'", json!(1)),
    ] {
        match eval(expr, value) {
            Err(ConditionError::NotBoolean(_)) => {}
            other => panic!("`{expr}`: expected NotBoolean, got {other:?}"),
        }
    }
    assert_eq!(eval("result", json!(true)), Ok(true));
}

#[test]
fn garbage_does_not_compile() {
    for expr in [
        "result >=",
        "result >= >= 1",
        "(result",
        "",
        "result ===  1",
        "result[0",
    ] {
        match Condition::compile(expr) {
            Err(ConditionError::Syntax {
                expr: written,
                message,
            }) => {
                assert_eq!(written, expr);
                assert!(!message.is_empty());
            }
            other => panic!("`{expr}`: expected a syntax error, got {other:?}"),
        }
    }
}

#[test]
fn unknown_variables_do_not_compile() {
    for (expr, unknown) in [
        ("reslt >= 0.99", "reslt"),
        ("default(reslt, 0) < 1", "reslt"),
        ("result > threshold", "threshold"),
        ("math.isNaN(result)", "math"),
        ("result.all(x, x > y)", "y"),
    ] {
        match Condition::compile(expr) {
            Err(ConditionError::UnknownVariable { name, .. }) => {
                assert_eq!(name, unknown, "{expr}")
            }
            other => panic!("`{expr}`: expected an unknown variable, got {other:?}"),
        }
    }
    // Comprehension variables are bound, including nested ones.
    compile("result.all(x, [x].exists(y, y == x))");
}

#[test]
fn unknown_functions_do_not_compile() {
    for (expr, unknown) in [
        ("avg(result) < 1", "avg"),
        ("lenn(result) > 0", "lenn"),
        ("default(sum(result), 0) < 1", "sum"),
        ("result.avg() < 1", ".avg"),
        ("result.all(x, mean(x) > 0)", "mean"),
        ("[1, 2].exists(x, x == floor(result))", "floor"),
        ("{'a': nope(result)}.a == 1", "nope"),
        // A macro called the wrong way is a call to a function that does not exist.
        ("all(result) && true", "all"),
        ("result.isNaN()", ".isNaN"),
    ] {
        match Condition::compile(expr) {
            Err(error @ ConditionError::UnknownFunction { .. }) => {
                let ConditionError::UnknownFunction { name, known, .. } = &error else {
                    unreachable!()
                };
                assert_eq!(name, unknown, "{expr}");
                assert!(known.contains("default()") && known.contains(".startsWith()"));
                let message = error.to_string();
                assert!(message.contains(&format!("`{unknown}`")), "{message}");
            }
            other => panic!("`{expr}`: expected an unknown function, got {other:?}"),
        }
    }
    eprintln!("9 calls to unknown functions refused at compile time");
}

#[test]
fn every_documented_function_compiles_and_evaluates() {
    // One case per function and macro a condition may call (see condition.rs): each compiles,
    // and evaluates to true on its value.
    let cases: &[(&str, Value)] = &[
        ("bool('true')", json!(null)),
        ("double('0.5') == 0.5", json!(null)),
        ("dyn(result) == 1", json!(1)),
        ("int(result) == 3", json!(3.7)),
        ("uint(result) == 3u", json!(3)),
        ("string(result) == '2'", json!(2)),
        ("size(result) == 2", json!([1, 2])),
        ("matches(result, '^v[0-9]+$')", json!("v12")),
        ("type(result) == type(0.5)", json!(1)),
        ("isNaN(result) == false", json!(1)),
        ("!isInf(result)", json!(1)),
        ("abs(result) == 2", json!(-2)),
        ("asInt(result) == 42", json!("42")),
        ("asFloat(result) > 0.4", json!("0.5")),
        ("max(result) < 0.05", json!([0.01, 0.04])),
        ("min(result) == 0.01", json!([0.01, 0.04])),
        ("max(1, result) == 2", json!(2)),
        ("result.contains('ok')", json!("all ok")),
        ("result.endsWith('ok')", json!("all ok")),
        ("result.startsWith('all')", json!("all ok")),
        ("result.matches('o+k')", json!("all ok")),
        ("result.size() == 3", json!([1, 2, 3])),
        ("has(result.status)", json!({"status": "up"})),
        ("result.all(x, x < 0.05)", json!([0.01, 0.02])),
        ("result.exists(x, x > 0.015)", json!([0.01, 0.02])),
        ("result.exists_one(x, x > 0.015)", json!([0.01, 0.02])),
        ("result.map(x, x * 100)[1] == 2", json!([0.01, 0.02])),
        (
            "result.filter(x, x > 0.015).size() == 1",
            json!([0.01, 0.02]),
        ),
        ("default(result[0], 0) < 1", json!([])),
        ("len(result) == 0", json!([])),
        ("result in [200, 204]", json!(204)),
        ("result > 1 ? true : false", json!(2)),
    ];
    for (expr, value) in cases {
        assert_eq!(eval(expr, value.clone()), Ok(true), "{expr} for {value}");
    }
    eprintln!(
        "{} documented functions and macros compile and evaluate",
        cases.len()
    );
}

#[test]
fn condition_keeps_its_source_and_is_shareable() {
    fn assert_send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
    assert_send_sync::<Condition>();
    let condition = compile("result >= 0.99");
    assert_eq!(condition.source(), "result >= 0.99");
    assert_eq!(condition.clone(), condition);
    assert_eq!(format!("{condition:?}"), "Condition(\"result >= 0.99\")");
}

// === judge ===

fn value(v: Value) -> Outcome {
    Outcome::Value(Measured::value(v))
}

#[test]
fn judge_with_success_condition_only() {
    let success = compile("result >= 0.99");
    let (verdict, why) = judge(Some(&success), None, &value(json!(0.995)));
    assert_eq!(verdict, Verdict::Successful);
    assert_eq!(why, "0.995 >= 0.99");
    let (verdict, why) = judge(Some(&success), None, &value(json!(0.69172)));
    assert_eq!(verdict, Verdict::Failed);
    assert_eq!(why, "0.6917 < 0.99");
}

#[test]
fn judge_with_failure_condition_only() {
    let failure = compile("result > 0.05");
    let (verdict, why) = judge(None, Some(&failure), &value(json!(0.01)));
    assert_eq!(verdict, Verdict::Successful);
    assert_eq!(why, "0.01 <= 0.05");
    let (verdict, why) = judge(None, Some(&failure), &value(json!(0.2)));
    assert_eq!(verdict, Verdict::Failed);
    assert_eq!(why, "0.2 > 0.05");
}

#[test]
fn judge_with_both_conditions() {
    let success = compile("result >= 0.99");
    let failure = compile("result < 0.9");
    let judged = |v: Value| judge(Some(&success), Some(&failure), &value(v)).0;
    assert_eq!(judged(json!(0.995)), Verdict::Successful);
    assert_eq!(judged(json!(0.5)), Verdict::Failed);
    // Neither holds: Argo's inconclusive.
    let (verdict, why) = judge(Some(&success), Some(&failure), &value(json!(0.95)));
    assert_eq!(verdict, Verdict::Inconclusive);
    assert!(why.contains("neither"), "{why}");
    // Both hold: failure wins.
    let always = compile("result >= 0");
    let (verdict, _) = judge(
        Some(&always),
        Some(&compile("result >= 0")),
        &value(json!(1)),
    );
    assert_eq!(verdict, Verdict::Failed);
}

#[test]
fn judge_without_conditions_is_successful() {
    let (verdict, why) = judge(None, None, &value(json!(3)));
    assert_eq!(verdict, Verdict::Successful);
    assert_eq!(why, "3 (no conditions)");
}

#[test]
fn judge_no_data_and_errors() {
    let success = compile("result >= 0.99");
    let (verdict, why) = judge(Some(&success), None, &Outcome::NoData("12 requests".into()));
    assert_eq!(
        (verdict, why.as_str()),
        (Verdict::Inconclusive, "12 requests")
    );
    let (verdict, why) = judge(Some(&success), None, &Outcome::Error("refused".into()));
    assert_eq!((verdict, why.as_str()), (Verdict::Error, "refused"));
    let (verdict, _) = judge(None, None, &Outcome::NoData("nothing".into()));
    assert_eq!(verdict, Verdict::Inconclusive);
}

#[test]
fn an_empty_result_is_judged_as_argo_does() {
    // `default()` and `len()` decide on `[]`.
    let (verdict, _) = judge(
        Some(&compile("default(result[0], 0) <= 1")),
        None,
        &value(json!([])),
    );
    assert_eq!(verdict, Verdict::Successful);
    let (verdict, _) = judge(Some(&compile("len(result) > 0")), None, &value(json!([])));
    assert_eq!(verdict, Verdict::Failed);
    // A condition that cannot be evaluated on `[]` is inconclusive, saying the query returned
    // nothing: never an error that counts toward consecutiveErrorLimit, never a failure.
    let (verdict, why) = judge(Some(&compile("result[0] >= 0.99")), None, &value(json!([])));
    assert_eq!(verdict, Verdict::Inconclusive);
    assert!(
        why.starts_with("the query returned nothing (result is []): successCondition `result[0] >= 0.99` could not be evaluated for []: "),
        "{why}"
    );
}

#[test]
fn judge_evaluation_errors_are_errors() {
    let success = compile("result[0] >= 0.99");
    let (verdict, why) = judge(Some(&success), None, &value(json!(["x"])));
    assert_eq!(verdict, Verdict::Error);
    assert!(
        why.starts_with("successCondition `result[0] >= 0.99` could not be evaluated for "),
        "{why}"
    );
    // An error in the failure condition is an error even when the success condition holds.
    let failure = compile("result.missing > 1");
    let (verdict, why) = judge(Some(&compile("true")), Some(&failure), &value(json!({})));
    assert_eq!(verdict, Verdict::Error);
    assert!(why.starts_with("failureCondition"), "{why}");
    // So is a non-boolean condition.
    let (verdict, why) = judge(Some(&compile("result")), None, &value(json!(1)));
    assert_eq!(verdict, Verdict::Error);
    assert!(why.contains("not a boolean"), "{why}");
}

#[test]
fn judge_spells_out_conditions_that_are_not_simple_comparisons() {
    let success = compile("result[0] > 0.90 && result[0] < 1.1");
    let (verdict, why) = judge(Some(&success), None, &value(json!([0.5])));
    assert_eq!(verdict, Verdict::Failed);
    assert_eq!(
        why,
        "successCondition `result[0] > 0.90 && result[0] < 1.1` is false for [0.5]"
    );
}

#[test]
fn judge_explains_with_the_window() {
    let success = compile("result >= 0.99");
    let outcome = Outcome::Value(Measured {
        value: json!(0.6917),
        requests: Some(1184),
        window: Some(Duration::from_secs(30)),
        failed: None,
    });
    let (verdict, why) = judge(Some(&success), None, &outcome);
    assert_eq!(verdict, Verdict::Failed);
    assert_eq!(why, "0.6917 < 0.99 over 30s (1184 requests)");
}

#[test]
fn verdicts_serialize_in_camel_case() {
    assert_eq!(
        serde_json::to_value(Verdict::Inconclusive).ok(),
        Some(json!("inconclusive"))
    );
    assert_eq!(
        serde_json::from_value::<Verdict>(json!("successful")).ok(),
        Some(Verdict::Successful)
    );
    assert_eq!(Verdict::Error.to_string(), "error");
}

// === substitute ===

#[test]
fn substitutes_arguments() {
    let args = Vars {
        args: [
            ("service".to_string(), "shop".to_string()),
            ("version".to_string(), "v2".to_string()),
        ]
        .into(),
        service: "checkout".into(),
        stable_version: "v7".into(),
        canary_version: "v8".into(),
    };
    let cases = [
        ("plain", "plain"),
        ("{{args.service}}", "shop"),
        (
            "svc=\"{{args.service}}\",v=\"{{ args.version }}\"",
            "svc=\"shop\",v=\"v2\"",
        ),
        ("{{  args.service\t}}-{{args.service}}", "shop-shop"),
        ("{{args.unknown}} stays", "{{args.unknown}} stays"),
        ("{{ other }} stays", "{{ other }} stays"),
        ("unclosed {{args.service", "unclosed {{args.service"),
        ("{{args.service}}}}", "shop}}"),
        ("sum(rate(x{a=\"b\"}[5m]))", "sum(rate(x{a=\"b\"}[5m]))"),
        ("ünïcode {{args.version}} ✓", "ünïcode v2 ✓"),
        (
            "rate(http_requests_total{service=\"{{service}}\",version=\"{{canary.version}}\"}[1m])",
            "rate(http_requests_total{service=\"checkout\",version=\"v8\"}[1m])",
        ),
        ("{{ stable.version }}/{{canary.version}}", "v7/v8"),
        (
            "{{args.service}} is not {{service}}",
            "shop is not checkout",
        ),
        (
            "{{canary}} {{stable}} {{version}}",
            "{{canary}} {{stable}} {{version}}",
        ),
    ];
    for (text, expected) in cases {
        assert_eq!(substitute(text, &args), expected, "{text}");
    }
    // Without a canary, `{{canary.version}}` stays as written (a query then selects nothing).
    let no_canary = Vars {
        canary_version: String::new(),
        ..args.clone()
    };
    assert_eq!(
        substitute("v=\"{{canary.version}}\"", &no_canary),
        "v=\"{{canary.version}}\""
    );
}

// === messages ===

#[test]
fn values_and_durations_read_well() {
    assert_eq!(show_value(&json!(0.69172)), "0.6917");
    assert_eq!(show_value(&json!(1184.0)), "1184");
    assert_eq!(show_value(&json!(200)), "200");
    assert_eq!(show_value(&json!(0.000123)), "1.230e-4");
    assert_eq!(show_value(&json!([0.5, 1])), "[0.5, 1]");
    assert_eq!(show_value(&json!("ok")), "\"ok\"");
    assert_eq!(show_value(&json!({"a": 1})), "{\"a\":1}");
    assert!(show_value(&json!("x".repeat(500))).ends_with('…'));
    assert_eq!(show_duration(Duration::from_secs(30)), "30s");
    assert_eq!(show_duration(Duration::from_secs(90)), "1m30s");
    assert_eq!(show_duration(Duration::from_secs(120)), "2m");
    assert_eq!(show_duration(Duration::from_secs(3600)), "1h");
    assert_eq!(show_duration(Duration::from_millis(12_500)), "12.5s");
}

// === jsonPath ===

#[test]
fn json_paths_find_values() {
    let document = json!({
        "status": "healthy",
        "data": {"value": 0.97, "dotted.key": 1},
        "items": [{"x": 1, "ok": true}, {"x": 2, "ok": false}],
    });
    // Singular paths give the value they select.
    let cases = [
        ("$.status", json!("healthy")),
        ("$.data.value", json!(0.97)),
        ("$.items[0].x", json!(1)),
        ("$.items[-1].x", json!(2)),
        ("$['status']", json!("healthy")),
        ("$[\"data\"]['dotted.key']", json!(1)),
        ("$.data['value']", json!(0.97)),
        ("{$.data.value}", json!(0.97)),
        ("{.data.value}", json!(0.97)),
        ("{ $.items[1].x }", json!(2)),
        ("$.items[ 1 ]", json!({"x": 2, "ok": false})),
        ("$", document.clone()),
    ];
    for (path, expected) in cases {
        let parsed = JsonPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert!(parsed.is_singular(), "{path}");
        assert_eq!(parsed.find(&document), Ok(expected), "{path}");
    }
    // Any other path gives the array of what it selects, even one value or none.
    let cases = [
        ("$.items[*].x", json!([1, 2])),
        ("$.items[0:1].x", json!([1])),
        ("$.items[?@.ok == true].x", json!([1])),
        ("$.items[?@.x > 5].x", json!([])),
        ("$..x", json!([1, 2])),
        ("$['status','nope']", json!(["healthy"])),
        ("{$.items[*].ok}", json!([true, false])),
        ("$['a*b']", json!([])),
    ];
    for (path, expected) in cases {
        let parsed = JsonPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        if path == "$['a*b']" {
            // A `*` inside a quoted name is a name.
            assert!(parsed.is_singular(), "{path}");
            assert!(parsed.find(&document).is_err(), "{path}");
            continue;
        }
        assert!(!parsed.is_singular(), "{path}");
        assert_eq!(parsed.find(&document), Ok(expected), "{path}");
    }
    eprintln!("12 singular paths give their value, 7 others an array");
}

#[test]
fn a_singular_json_path_that_selects_nothing_is_an_error() {
    let document = json!({"data": {"items": [1]}, "n": 3});
    for path in ["$.nope", "$.data.items[3]", "$.n.x", "$.data[0]"] {
        let parsed = JsonPath::parse(path).unwrap_or_else(|e| panic!("{path}: {e}"));
        assert_eq!(
            parsed.find(&document),
            Err("it selects nothing in the response".to_string()),
            "{path}"
        );
    }
    eprintln!("4 singular paths that select nothing are errors");
}

#[test]
fn invalid_json_paths_are_rejected() {
    for path in [
        "$.",
        "$['open",
        "$.a]",
        "{$.a",
        "$.a[?(@.x",
        "data.value",
        ".data",
        "$[1:2:0",
        "",
        "$.a[?foo(@)]",
    ] {
        let error = JsonPath::parse(path).expect_err(path);
        assert!(
            error
                .to_string()
                .starts_with(&format!("invalid jsonPath `{path}`: ")),
            "{error}"
        );
    }
    eprintln!(
        "10 invalid paths refused, e.g. {}",
        JsonPath::parse("$.a[?(@.x").expect_err("invalid")
    );
}

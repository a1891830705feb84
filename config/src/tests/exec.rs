//! `provider.exec` (issue #9).

use std::time::Duration;

use super::{check, ok, with_service};
use crate::*;

fn template(metric: &str) -> String {
    with_service(&format!(
        "  - name: s\n    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}\nanalysisTemplates:\n  - name: smoke\n    args: [{{ name: region, value: eu }}]\n    metrics:\n      - name: smoke\n{metric}"
    ))
}

fn provider(model: &Model) -> &Provider {
    &model.analysis_templates[0].metrics[0].provider
}

#[test]
fn defaults_and_full_form() {
    // No condition needed: the exit status decides.
    let model = ok(&template(
        "        provider: { exec: { command: /bin/true } }\n",
    ));
    assert_eq!(
        provider(&model),
        &Provider::Exec(ExecProvider {
            command: "/bin/true".into(),
            args: Vec::new(),
            timeout: ExecProvider::DEFAULT_TIMEOUT,
            env: Vec::new(),
        })
    );
    let metric = &model.analysis_templates[0].metrics[0];
    assert_eq!(
        (&metric.success_condition, &metric.failure_condition),
        (&None, &None)
    );
    let model = ok(&template(
        "        successCondition: result >= 0.99
        provider:
          exec:
            command: smoke
            args: [\"--service\", \"{{service}}\", \"--region={{args.region}}\", 3]
            timeout: 2m
            env: { SMOKE_TOKEN: abc, CANARY: \"{{canary.version}}\" }
",
    ));
    assert_eq!(
        provider(&model),
        &Provider::Exec(ExecProvider {
            command: "smoke".into(),
            args: vec![
                "--service".into(),
                "{{service}}".into(),
                "--region={{args.region}}".into(),
                "3".into()
            ],
            timeout: Duration::from_secs(120),
            env: vec![
                ("SMOKE_TOKEN".into(), "abc".into()),
                ("CANARY".into(), "{{canary.version}}".into())
            ],
        })
    );
}

#[test]
fn problems_are_reported_with_their_path() {
    let at = "analysisTemplates[0].metrics[0].provider.exec";
    check(
        &template("        provider: { exec: { args: [a] } }\n"),
        &[&format!("{at}.command: missing required field")],
    );
    check(
        &template(
            "        provider: { exec: { command: bin/smoke, args: [\"{{args.nope}}\", [x]], timeout: 11m, env: { \"A=B\": x, C: [y] }, shell: true } }\n",
        ),
        &[
            &format!("{at}.command: \"bin/smoke\" is a relative path…"),
            &format!("{at}.args[0]: \"{{{{args.nope}}}}\" uses argument \"nope\"…"),
            &format!("{at}.args[1]: expected a string…"),
            &format!("{at}.timeout: must be at most 10m"),
            &format!("{at}.env.A=B: a variable name must be non-empty…"),
            &format!("{at}.env.C: expected a string…"),
            &format!("{at}.shell: unknown field \"shell\"…"),
        ],
    );
    check(
        &template("        provider: { exec: { command: \"\", timeout: 0s, env: [x] } }\n"),
        &[
            &format!("{at}.command: must not be empty"),
            &format!("{at}.timeout: must be greater than zero"),
            &format!("{at}.env: expected a mapping…"),
        ],
    );
}

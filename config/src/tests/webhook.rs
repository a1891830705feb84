//! `strategy.canary.webhooks` (issue #9).

use std::time::Duration;

use super::{check, ok, with_strategy};
use crate::*;

fn hooks(extra: &str, analysis: &str) -> String {
    with_strategy(
        &format!("      canary:\n{analysis}        webhooks:\n{extra}"),
        "",
    )
}

const STEPS: &str = "        steps: [{ setWeight: 10 }]\n";
const FLAGGER: &str =
    "        analysis: { interval: 7s, threshold: 3, stepWeight: 10, maxWeight: 50, metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }] }\n";

fn webhooks(model: &Model) -> &[Webhook] {
    &model.services[0]
        .strategy
        .as_ref()
        .expect("strategy")
        .webhooks
}

#[test]
fn defaults_and_full_form() {
    let model = ok(&hooks(
        "          - { name: check, url: \"http://127.0.0.1:9000/check\" }\n",
        STEPS,
    ));
    assert_eq!(
        webhooks(&model),
        &[Webhook {
            name: "check".into(),
            kind: WebhookKind::Rollout,
            target: WebhookTarget::Url("http://127.0.0.1:9000/check".into()),
            timeout: Webhook::DEFAULT_TIMEOUT,
            interval: Webhook::DEFAULT_INTERVAL,
            metadata: Default::default(),
        }]
    );
    // Flagger's analysis interval is the default; metadata scalars are text.
    let model = ok(&hooks(
        "          - name: approve
            type: confirm-promotion
            url: https://gate.example.com/approve?x=1
            timeout: 5s
            metadata: { env: prod, attempt: 2 }
          - name: load
            loadTest: { rate: 20, path: /health, method: post, headers: { x-load: yes } }
",
        FLAGGER,
    ));
    let list = webhooks(&model);
    assert_eq!(list[0].kind, WebhookKind::ConfirmPromotion);
    assert_eq!(list[0].timeout, Duration::from_secs(5));
    assert_eq!(list[0].interval, Duration::from_secs(7));
    assert_eq!(
        list[0].metadata.get("attempt").map(String::as_str),
        Some("2")
    );
    let load = list[1].load_test().expect("a load test");
    assert_eq!(
        (load.rate, load.path.as_str(), load.method.as_str()),
        (20, "/health", "POST")
    );
    assert_eq!(
        load.headers,
        vec![("x-load".to_string(), "yes".to_string())]
    );
    assert_eq!(load.timeout, LoadTest::DEFAULT_TIMEOUT);
    // Every kind is spelled as in Flagger.
    for kind in WebhookKind::ALL {
        let yaml = hooks(
            &format!(
                "          - {{ name: h, type: {}, url: \"http://h:1/\" }}\n",
                kind.as_str()
            ),
            STEPS,
        );
        assert_eq!(webhooks(&ok(&yaml))[0].kind, kind);
    }
}

#[test]
fn problems_have_field_paths() {
    let at = "services[0].strategy.canary.webhooks";
    check(
        &hooks(
            "          - { name: a, type: confirm, url: \"http://h/\" }
          - { name: a, url: \"ftp://h/\" }
          - { name: c }
          - { name: d, url: \"http://h/\", timeout: 11m, interval: 10ms, retries: 3 }
          - { name: e, type: pre-rollout, loadTest: { rate: 5 } }
          - { name: f, url: \"http://h/\", loadTest: { rate: 5 } }
          - name: g
            loadTest: { rate: 5000, path: health, method: \"GE T\", headers: { \"bad name\": x, ok: \"a\\nb\" } }
",
            STEPS,
        ),
        &[
            &format!("{at}[0].type: unknown webhook type \"confirm\", expected one of: confirm-rollout, pre-rollout, rollout, confirm-traffic-increase, confirm-promotion, post-rollout, rollback, event"),
            &format!("{at}[1].url: must be an http:// or https:// URL with a host, got \"ftp://h/\""),
            &format!("{at}[2].url: missing required field (or loadTest, for type: rollout)"),
            &format!("{at}[3].timeout: must be at most 10m"),
            &format!("{at}[3].interval: must be at least 100ms"),
            &format!("{at}[3].retries: unknown field…"),
            &format!("{at}[4].loadTest: loadTest is only for type: rollout"),
            &format!("{at}[5]: give either url or loadTest, not both"),
            &format!("{at}[6].loadTest.rate: must be at most 1000 requests per second, got 5000"),
            &format!("{at}[6].loadTest.path: must start with \"/\", got \"health\""),
            &format!("{at}[6].loadTest.method: \"GE T\" is not an HTTP method (a token)"),
            &format!("{at}[6].loadTest.headers.bad name: invalid header name \"bad name\""),
            &format!("{at}[6].loadTest.headers.ok: a header value must be visible ASCII, spaces or tabs (no control characters)"),
        ],
    );
    check(
        &hooks(
            "          - { name: a, url: \"http://h/\" }\n          - { name: a, url: \"http://h/\" }\n",
            STEPS,
        ),
        &[&format!("{at}[1].name: duplicate webhook name \"a\"")],
    );
    check(
        &with_strategy(
            "      blueGreen:\n        preview: { hosts: [preview.example.com] }\n        webhooks: [{ name: a }]\n",
            "",
        ),
        &["services[0].strategy.blueGreen.webhooks[0].url: missing required field (or loadTest, for type: rollout)"],
    );
    let model = ok(&with_strategy(
        "      blueGreen:\n        preview: { hosts: [preview.example.com] }\n        webhooks: [{ name: a, type: confirm-promotion, url: \"http://h/\" }]\n",
        "",
    ));
    assert_eq!(webhooks(&model)[0].interval, Webhook::DEFAULT_INTERVAL);
}

/// Flagger writes `webhooks` inside its `analysis`: accepted there too (the same hooks, the
/// analysis interval by default), in one place only, never in Argo's background analysis.
#[test]
fn flagger_places_webhooks_in_its_analysis() {
    let hook = "{ name: gate, type: confirm-promotion, url: \"http://127.0.0.1:9000/gate\" }";
    let inside = with_strategy(
        &format!(
            "      canary:\n        analysis: {{ interval: 7s, threshold: 3, stepWeight: 10, maxWeight: 50, metrics: [{{ name: request-success-rate, thresholdRange: {{ min: 99 }} }}], webhooks: [{hook}, {{ name: load, loadTest: {{ rate: 5, path: \"/../x\" }} }}] }}\n"
        ),
        "",
    );
    let at = "services[0].strategy.canary.analysis.webhooks";
    check(
        &inside,
        &[&format!(
            "{at}[1].loadTest.path: climbs above the root: \"/../x\""
        )],
    );
    let inside = inside.replace("\"/../x\"", "/health");
    let beside = hooks(&format!("          - {hook}\n          - {{ name: load, loadTest: {{ rate: 5, path: /health }} }}\n"), FLAGGER);
    let (inside, beside) = (ok(&inside), ok(&beside));
    assert_eq!(webhooks(&inside), webhooks(&beside));
    assert_eq!(webhooks(&inside)[0].interval, Duration::from_secs(7));

    let both = hooks(
        &format!("          - {hook}\n"),
        &FLAGGER.replace(" }] }", &format!(" }}], webhooks: [{hook}] }}")),
    );
    check(
        &both,
        &[&format!(
            "{at}: webhooks are given beside analysis already: give them in one place"
        )],
    );
    let argo = with_strategy(
        &format!("      canary:\n        steps: [{{ setWeight: 10 }}]\n        analysis: {{ templates: [{{ templateName: t }}], webhooks: [{hook}] }}\n"),
        "",
    );
    check(
        &argo,
        &[&format!("{at}: webhooks go under strategy.canary (or in a Flagger-style analysis), not in Argo's background analysis")],
    );
}

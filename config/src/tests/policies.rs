//! Traffic policies (issue #6): header and cookie routes, mirror routes, Flagger iterations,
//! blue-green, session affinity and the builtin provider's `traffic`.

use std::time::Duration;

use super::{check, ok, problems, with_service, with_strategy};
use crate::*;

/// A template whose `url` argument a blue-green analysis fills with `{{preview.url}}`.
const SMOKE_TEMPLATE: &str = "analysisTemplates:
  - name: smoke
    args: [{ name: url }]
    metrics:
      - name: smoke
        successCondition: result == 200
        provider: { web: { url: \"{{args.url}}/health\" } }
  - name: shadow
    metrics:
      - name: shadow-success
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, traffic: mirror } }
      - name: primary-success
        successCondition: result >= 0.99
        provider: { builtin: { metric: success-rate, traffic: primary } }
";

fn header(name: &str, value: StringMatch) -> RequestMatch {
    RequestMatch::Header {
        name: name.into(),
        value,
    }
}

fn cookie(name: &str, value: StringMatch) -> RequestMatch {
    RequestMatch::Cookie {
        name: name.into(),
        value,
    }
}

fn exact(s: &str) -> StringMatch {
    StringMatch::Exact(s.into())
}

fn percent(p: f64) -> Weight {
    Weight::from_percent(p).unwrap()
}

/// The steps of the only service's strategy.
fn steps(strategy: &str) -> Vec<Step> {
    let model = ok(&with_strategy(strategy, ""));
    model.services[0]
        .strategy
        .as_ref()
        .unwrap()
        .steps()
        .to_vec()
}

// ---------------------------------------------------------------------------------------------
// Accepted forms.
// ---------------------------------------------------------------------------------------------

#[test]
fn header_routes_argo_form_is_one_and_entry() {
    let steps = steps(
        "      canary:
        steps:
          - setHeaderRoute:
              name: beta
              match:
                - headerName: X-Beta
                  headerValue: { exact: \"yes\" }
                - cookieName: beta_Group
                  cookieValue: { prefix: team- }
                - headerName: user-agent
                  headerValue: { regex: \".*Mobile.*\" }
          - setWeight: 10
          - setHeaderRoute: { name: beta }
          - setHeaderRoute: { name: beta, match: [] }
",
    );
    assert_eq!(
        steps,
        vec![
            Step::SetHeaderRoute(HeaderRoute {
                name: "beta".into(),
                any_of: vec![vec![
                    header("x-beta", exact("yes")),
                    cookie("beta_Group", StringMatch::Prefix("team-".into())),
                    header("user-agent", StringMatch::Regex(".*Mobile.*".into())),
                ]],
            }),
            Step::SetWeight(percent(10.0)),
            Step::SetHeaderRoute(HeaderRoute {
                name: "beta".into(),
                any_of: vec![],
            }),
            Step::SetHeaderRoute(HeaderRoute {
                name: "beta".into(),
                any_of: vec![],
            }),
        ]
    );
}

#[test]
fn header_routes_flagger_form_is_one_entry_each() {
    let steps = steps(
        "      canary:
        steps:
          - setHeaderRoute:
              name: beta
              match:
                - headers: { X-Beta: { exact: \"yes\" } }
                - headers: { cookie: { regex: \"^(.*?;)?(beta=yes)(;.*)?$\" } }
                - headers: { x-a: { exact: \"1\" }, x-b: { prefix: \"2\" } }
",
    );
    assert_eq!(
        steps,
        vec![Step::SetHeaderRoute(HeaderRoute {
            name: "beta".into(),
            any_of: vec![
                vec![header("x-beta", exact("yes"))],
                vec![header(
                    "cookie",
                    StringMatch::Regex("^(.*?;)?(beta=yes)(;.*)?$".into())
                )],
                vec![
                    header("x-a", exact("1")),
                    header("x-b", StringMatch::Prefix("2".into()))
                ],
            ],
        })]
    );
}

#[test]
fn mirror_routes_entries_are_ored_and_percentage_defaults_to_100() {
    let steps = steps(
        "      canary:
        steps:
          - setMirrorRoute:
              name: shadow
              percentage: 12.5
              match:
                - method: { exact: GET }
                  path: { prefix: /api }
                - headers: { X-Shadow: { exact: \"1\" } }
          - setMirrorRoute:
              name: all-posts
              match: [{ method: { regex: \"POST|PUT\" } }]
          - setMirrorRoute: { name: shadow }
",
    );
    assert_eq!(
        steps,
        vec![
            Step::SetMirrorRoute(MirrorRoute {
                name: "shadow".into(),
                percentage: percent(12.5),
                any_of: vec![
                    vec![
                        RequestMatch::Method(exact("GET")),
                        RequestMatch::Path(StringMatch::Prefix("/api".into())),
                    ],
                    vec![header("x-shadow", exact("1"))],
                ],
            }),
            Step::SetMirrorRoute(MirrorRoute {
                name: "all-posts".into(),
                percentage: Weight::FULL,
                any_of: vec![vec![RequestMatch::Method(StringMatch::Regex(
                    "POST|PUT".into()
                ))]],
            }),
            Step::SetMirrorRoute(MirrorRoute {
                name: "shadow".into(),
                percentage: Weight::FULL,
                any_of: vec![],
            }),
        ]
    );
}

#[test]
fn flagger_iterations_forms() {
    let iterations = |analysis: &str| -> Iterations {
        let model = ok(&with_strategy(
            &format!("      canary:\n        analysis:\n{analysis}"),
            "",
        ));
        let strategy = model.services[0].strategy.as_ref().unwrap();
        assert_eq!(strategy.name(), "iterations");
        strategy.iterations().cloned().unwrap()
    };
    let checks =
        "          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]\n";

    // A/B testing: match, no mirror.
    let i = iterations(&format!(
        "          interval: 1s
          threshold: 2
          iterations: 3
          match:
            - headers: {{ x-beta: {{ exact: \"yes\" }} }}
            - headers: {{ cookie: {{ regex: \"^(.*?;)?(beta=yes)(;.*)?$\" }} }}
{checks}"
    ));
    assert_eq!(i.interval, Duration::from_secs(1));
    assert_eq!(i.threshold, 2);
    assert_eq!(i.iterations, 3);
    assert_eq!(i.any_of.len(), 2);
    assert_eq!(i.any_of[0], vec![header("x-beta", exact("yes"))]);
    assert_eq!(i.mirror, None);
    assert_eq!(i.checks.len(), 1);
    assert_eq!(
        i.checks[0].window,
        Duration::from_secs(10),
        "window is at least 10s"
    );

    // Blue/green with mirroring: default mirrorWeight is 100, an Argo-form match is one entry.
    let i = iterations(&format!(
        "          interval: 30s
          threshold: 1
          iterations: 10
          mirror: true
          match: [{{ headerName: x-a, headerValue: {{ exact: \"1\" }} }}, {{ cookieName: c, cookieValue: {{ exact: \"2\" }} }}]
{checks}"
    ));
    assert_eq!(i.mirror, Some(Weight::FULL));
    assert_eq!(
        i.any_of,
        vec![vec![header("x-a", exact("1")), cookie("c", exact("2"))]]
    );
    assert_eq!(i.checks[0].window, Duration::from_secs(30));

    // mirrorWeight; and checks only (no match, no mirror) is allowed.
    let i = iterations(&format!(
        "          interval: 1m
          threshold: 1
          iterations: 1
          mirror: true
          mirrorWeight: 25.5
{checks}"
    ));
    assert_eq!(i.mirror, Some(percent(25.5)));
    assert!(i.any_of.is_empty());
    let i = iterations(&format!(
        "          interval: 1m\n          threshold: 1\n          iterations: 5\n          mirror: false\n{checks}"
    ));
    assert_eq!((i.iterations, i.mirror, i.any_of.len()), (5, None, 0));
}

#[test]
fn blue_green_forms() {
    let yaml = format!(
        "listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: preview
    address: 127.0.0.1:8081
services:
  - name: orders
    match: {{ hosts: [orders.example.com] }}
    stable: {{ version: v2, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v3, upstreams: [\"127.0.0.1:9002\"] }}
    strategy:
      blueGreen:
        preview:
          hosts: [Preview.Orders.example.com, \"*.preview.example.com\"]
          listener: preview
          headers: [{{ headerName: X-Preview, headerValue: {{ exact: \"1\" }} }}]
        autoPromotionEnabled: false
        autoPromotionSeconds: 300
        prePromotionAnalysis:
          templates: [{{ templateName: smoke }}]
          args: [{{ name: url, value: \"{{{{preview.url}}}}\" }}]
        postPromotionAnalysis: {{ templates: [{{ templateName: shadow }}] }}
        scaleDownDelay: 5m
        progressDeadline: 20m
  - name: cart
    match: {{ hosts: [cart.example.com] }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9003\"] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9004\"] }}
    strategy:
      blueGreen:
        preview: {{ headers: [{{ headerName: x-preview, headerValue: {{ prefix: cart }} }}] }}
        autoPromotionSeconds: 90s
        scaleDownDelaySeconds: 0
  - name: users
    match: {{ hosts: [users.example.com] }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9005\"] }}
    strategy:
      blueGreen:
        preview: {{ listener: preview }}
{SMOKE_TEMPLATE}"
    );
    let model = ok(&yaml);

    let orders = model.services[0].strategy.as_ref().unwrap();
    assert_eq!(orders.name(), "blueGreen");
    assert_eq!(orders.progress_deadline, Duration::from_secs(1200));
    assert_eq!(
        orders.blue_green(),
        Some(&BlueGreen {
            preview: Preview {
                hosts: vec![
                    HostPattern::Exact("preview.orders.example.com".into()),
                    HostPattern::Suffix(".preview.example.com".into()),
                ],
                listener: Some("preview".into()),
                headers: vec![header("x-preview", exact("1"))],
            },
            auto_promotion_enabled: false,
            auto_promotion_after: Some(Duration::from_secs(300)),
            pre_promotion_analysis: Some(AnalysisRef {
                templates: vec!["smoke".into()],
                args: [("url".to_string(), "{{preview.url}}".to_string())].into(),
            }),
            post_promotion_analysis: Some(AnalysisRef {
                templates: vec!["shadow".into()],
                args: Default::default(),
            }),
            scale_down_delay: Duration::from_secs(300),
        })
    );

    let cart = model.services[1].strategy.as_ref().unwrap();
    let cart = cart.blue_green().unwrap();
    assert_eq!(cart.auto_promotion_after, Some(Duration::from_secs(90)));
    assert!(
        cart.auto_promotion_enabled,
        "autoPromotionEnabled defaults to true"
    );
    assert_eq!(cart.scale_down_delay, Duration::ZERO);
    assert_eq!(cart.pre_promotion_analysis, None);
    assert_eq!(cart.preview.hosts, vec![]);
    assert_eq!(cart.preview.listener, None);

    // Without a canary (nothing to roll out yet), with every default.
    let users = model.services[2].strategy.as_ref().unwrap();
    assert_eq!(users.progress_deadline, Duration::from_secs(600));
    let users = users.blue_green().unwrap();
    assert_eq!(users.scale_down_delay, Duration::from_secs(30));
    assert_eq!(users.auto_promotion_after, None);
    assert!(model.services[2].canary.is_none());

    // The builtin provider's traffic.
    let shadow = &model.analysis_templates[1].metrics;
    let traffic = |m: &Metric| match &m.provider {
        Provider::Builtin(b) => b.traffic,
        other => panic!("expected builtin, got {other:?}"),
    };
    assert_eq!(traffic(&shadow[0]), Traffic::Mirror);
    assert_eq!(traffic(&shadow[1]), Traffic::Primary);
}

#[test]
fn session_affinity_forms() {
    let model = ok(&with_service(
        "  - name: checkout
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    canary: { version: v2, upstreams: [\"127.0.0.1:9002\"], weight: 20 }
    sessionAffinity: { cookieName: weir-checkout }
  - name: search
    match: { hosts: [search.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    sessionAffinity: { header: X-User-Id, maxAge: 1h }
  - name: plain
    match: { hosts: [plain.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
",
    ));
    assert_eq!(
        model.services[0].session_affinity,
        Some(SessionAffinity {
            key: AffinityKey::Cookie("weir-checkout".into()),
            max_age: Duration::from_secs(24 * 3600),
        })
    );
    assert_eq!(
        model.services[1].session_affinity,
        Some(SessionAffinity {
            key: AffinityKey::Header("x-user-id".into()),
            max_age: Duration::from_secs(3600),
        })
    );
    assert_eq!(model.services[2].session_affinity, None);
}

// ---------------------------------------------------------------------------------------------
// Problems, each at its field path.
// ---------------------------------------------------------------------------------------------

#[test]
fn invalid_header_and_mirror_routes() {
    let yaml = with_strategy(
        "      canary:
        steps:
          - setHeaderRoute:
              name: mixed
              match:
                - headerName: x-a
                  headerValue: { exact: a }
                - headers: { x-b: { exact: b } }
          - setHeaderRoute:
              name: values
              match:
                - headerName: x-a
                  headerValue: {}
                - headerName: x-b
                  headerValue: { exact: a, prefix: b }
                - headerName: x-c
                  headerValue: { regex: \"(unclosed\" }
                - headerName: x-d
                  headerValue: { regex: \"a{1000}{1000}\" }
                - headerName: x-e
                  headerValue: { glob: \"*\" }
          - setHeaderRoute:
              name: names
              match:
                - headerName: \"x beta\"
                  headerValue: { exact: a }
                - cookieName: \"a;b\"
                  cookieValue: { exact: a }
                - headerName: x-a
                  cookieValue: { exact: a }
                - headerName: x-a
                  cookieName: c
                - {}
          - setHeaderRoute: { name: \"\" }
          - setHeaderRoute: { name: nobody-set-this }
          - setHeaderRoute:
          - setHeaderRoute: { name: flagger, match: [{ headers: {} }, { headers: { x-a: { regex: \"[\" } } }] }
          - setMirrorRoute: { name: shadow, match: [{ method: { exact: GET } }] }
          - setMirrorRoute: { name: shadow }
          - setMirrorRoute: { name: other }
          - setMirrorRoute: { name: p0, percentage: 0, match: [{ path: { prefix: / } }] }
          - setMirrorRoute: { name: p101, percentage: 101, match: [{ path: { prefix: / } }] }
          - setMirrorRoute: { name: shadow, percentage: 50 }
          - setMirrorRoute: { name: e, match: [{}, { method: GET }, { url: { exact: / } }] }
          - setMirrorRoute: { name: p3, percentage: 33.333, match: [{ path: { prefix: / } }] }
",
        "",
    );
    check(
        &yaml,
        &[
            "services[0].strategy.canary.steps[0].setHeaderRoute.match: mixes Argo entries (headerName, cookieName) and Flagger entries (headers): use one form per list",
            "services[0].strategy.canary.steps[1].setHeaderRoute.match[0].headerValue: needs exactly one of exact, prefix or regex",
            "services[0].strategy.canary.steps[1].setHeaderRoute.match[1].headerValue: needs exactly one of exact, prefix or regex, got exact and prefix",
            "services[0].strategy.canary.steps[1].setHeaderRoute.match[2].headerValue.regex: invalid regex \"(unclosed\": unclosed group",
            "services[0].strategy.canary.steps[1].setHeaderRoute.match[3].headerValue.regex: invalid regex \"a{1000}{1000}\": the compiled pattern is larger than the limit of 1048576 bytes",
            "services[0].strategy.canary.steps[1].setHeaderRoute.match[4].headerValue.glob: unknown field \"glob\", expected one of: exact, prefix, regex",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[0].headerName: invalid header name \"x beta\": use letters, digits and !#$%&'*+-.^_`|~",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[1].cookieName: invalid cookie name \"a;b\": use letters, digits and !#$%&'*+-.^_`|~",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[2].cookieValue: not allowed with headerName",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[2].headerValue: missing required field",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[3]: use either headerName or cookieName, not both",
            "services[0].strategy.canary.steps[2].setHeaderRoute.match[4]: needs headerName with headerValue, or cookieName with cookieValue",
            "services[0].strategy.canary.steps[3].setHeaderRoute.name: must not be empty",
            "services[0].strategy.canary.steps[4].setHeaderRoute.name: removes header route \"nobody-set-this\", which no earlier step sets (add match to set it)",
            "services[0].strategy.canary.steps[5].setHeaderRoute.name: missing required field",
            "services[0].strategy.canary.steps[6].setHeaderRoute.match[0].headers: must not be empty",
            "services[0].strategy.canary.steps[6].setHeaderRoute.match[1].headers.x-a.regex: invalid regex \"[\": unclosed character class",
            "services[0].strategy.canary.steps[9].setMirrorRoute.name: removes mirror route \"other\", which no earlier step sets (add match to set it)",
            "services[0].strategy.canary.steps[10].setMirrorRoute.percentage: must be between 1 and 100, got 0",
            "services[0].strategy.canary.steps[11].setMirrorRoute.percentage: must be between 1 and 100, got 101",
            "services[0].strategy.canary.steps[12].setMirrorRoute.percentage: only allowed with match (without match the step removes the route)",
            "services[0].strategy.canary.steps[13].setMirrorRoute.match[0]: needs at least one of method, path or headers",
            "services[0].strategy.canary.steps[13].setMirrorRoute.match[1].method: expected a mapping, got a string",
            "services[0].strategy.canary.steps[13].setMirrorRoute.match[2].url: unknown field \"url\", expected one of: method, path, headers",
            "services[0].strategy.canary.steps[14].setMirrorRoute.percentage: at most two decimals, got 33.333",
        ],
    );
    // A header route name is not a mirror route name: removing "shadow" (a mirror route) as a
    // header route is an error, and steps[8] (a valid removal) is not.
    let got = problems(&yaml);
    assert!(
        !got.iter()
            .any(|p| p.contains("steps[8]") || p.contains("steps[7]")),
        "{got:#?}"
    );
    let yaml = with_strategy(
        "      canary:
        steps:
          - setMirrorRoute: { name: shadow, match: [{ method: { exact: GET } }] }
          - setHeaderRoute: { name: shadow }
",
        "",
    );
    check(
        &yaml,
        &["services[0].strategy.canary.steps[1].setHeaderRoute.name: removes header route \"shadow\", which no earlier step sets (add match to set it)"],
    );
}

#[test]
fn invalid_iterations() {
    let checks =
        "          metrics: [{ name: request-success-rate, thresholdRange: { min: 99 } }]\n";
    let cases: Vec<(String, Vec<&str>)> = vec![
        (
            with_strategy(
                &format!(
                    "      canary:
        steps: [{{ setWeight: 10 }}]
        analysis:
          interval: 1m
          threshold: 1
          iterations: 0
          stepWeight: 10
          maxWeight: 50
          mirror: \"yes\"
          match: [{{ headers: {{ x-a: {{ exact: \"1\" }} }} }}, {{ headerName: x-a, headerValue: {{ exact: \"1\" }} }}]
{checks}"
                ),
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.stepWeight: not allowed with iterations (the canary gets matching or mirrored requests, not a weight)",
                "services[0].strategy.canary.analysis.maxWeight: not allowed with iterations (the canary gets matching or mirrored requests, not a weight)",
                "services[0].strategy.canary.analysis.iterations: must be at least 1, got 0",
                "services[0].strategy.canary.analysis.match: mixes Argo entries (headerName, cookieName) and Flagger entries (headers): use one form per list",
                "services[0].strategy.canary.analysis.mirror: expected a boolean (true or false), got a string",
                "services[0].strategy.canary.steps: steps and Flagger-style analysis (iterations) cannot be combined",
            ],
        ),
        (
            with_strategy(
                &format!(
                    "      canary:
        analysis:
          interval: 1m
          threshold: 1
          stepWeights: [10, 50]
          match: [{{ headers: {{ x-a: {{ exact: \"1\" }} }} }}]
          mirror: true
          mirrorWeight: 50
{checks}"
                ),
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.match: only allowed with iterations",
                "services[0].strategy.canary.analysis.mirror: only allowed with iterations",
                "services[0].strategy.canary.analysis.mirrorWeight: only allowed with iterations",
            ],
        ),
        (
            with_strategy(
                "      canary:
        analysis:
          iterations: 2
          mirrorWeight: 0.5
",
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.interval: missing required field",
                "services[0].strategy.canary.analysis.threshold: missing required field",
                "services[0].strategy.canary.analysis.mirrorWeight: must be between 1 and 100, got 0.5",
                "services[0].strategy.canary.analysis.mirrorWeight: only allowed with mirror: true",
                "services[0].strategy.canary.analysis.metrics: missing required field",
            ],
        ),
        (
            with_strategy(
                &format!(
                    "      canary:
        analysis:
          interval: 1m
          threshold: 1
          iterations: 2
          mirror: false
          mirrorWeight: 50
          templates: [{{ templateName: t }}]
{checks}"
                ),
                "",
            ),
            vec![
                "services[0].strategy.canary.analysis.templates: not allowed in Flagger-style analysis (interval, threshold, stepWeight, stepWeights, maxWeight, metrics, iterations, match, mirror, mirrorWeight)",
                "services[0].strategy.canary.analysis.mirrorWeight: only allowed with mirror: true",
            ],
        ),
    ];
    for (yaml, expect) in cases {
        check(&yaml, &expect);
    }
}

#[test]
fn invalid_blue_green() {
    let yaml = format!(
        "listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: preview
    address: 127.0.0.1:8081
services:
  - name: orders
    match: {{ hosts: [orders.example.com] }}
    stable: {{ version: v2, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v3, upstreams: [\"127.0.0.1:9002\"] }}
    strategy:
      canary: {{ steps: [{{ setWeight: 10 }}] }}
      blueGreen: {{ preview: {{ listener: preview }} }}
  - name: cart
    match: {{ hosts: [cart.example.com] }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9003\"] }}
    strategy:
      blueGreen:
        preview:
          hosts: [orders.example.com, preview.cart.example.com, Preview.Cart.example.com, \"bad host\"]
          listener: staging
          headers: [{{ headerName: x-preview }}]
        autoPromotionEnabled: \"no\"
        autoPromotionSeconds: -5
        prePromotionAnalysis: {{ templates: [{{ templateName: smoke }}] }}
        postPromotionAnalysis: {{ templates: [{{ templateName: nope }}] }}
        scaleDownDelay: 5m
        scaleDownDelaySeconds: 300
        previewReplicaCount: 1
  - name: users
    match: {{ hosts: [users.example.com] }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9005\"] }}
    strategy:
      blueGreen:
        preview: {{ hosts: [preview.cart.example.com, \"*\"] }}
        scaleDownDelay: 10
        autoPromotionSeconds: 18446744073709551615
  - name: accounts
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9006\"] }}
    strategy:
      blueGreen:
        preview: {{}}
{SMOKE_TEMPLATE}"
    );
    check(
        &yaml,
        &[
            "services[0].strategy: use either canary or blueGreen, not both",
            "services[1].strategy.blueGreen.previewReplicaCount: unknown field \"previewReplicaCount\", expected one of: preview, autoPromotionEnabled, autoPromotionSeconds, prePromotionAnalysis, postPromotionAnalysis, scaleDownDelay, scaleDownDelaySeconds, progressDeadline, webhooks",
            "services[1].strategy.blueGreen.preview.hosts[2]: duplicate host pattern \"preview.cart.example.com\"",
            "services[1].strategy.blueGreen.preview.hosts[3]: invalid host pattern \"bad host\": invalid character ' ' in host name",
            "services[1].strategy.blueGreen.preview.listener: unknown listener \"staging\", defined: public, preview",
            "services[1].strategy.blueGreen.preview.headers[0].headerValue: missing required field",
            "services[1].strategy.blueGreen.autoPromotionEnabled: expected a boolean (true or false), got a string",
            "services[1].strategy.blueGreen.autoPromotionSeconds: must not be negative, got -5",
            "services[1].strategy.blueGreen.prePromotionAnalysis: missing argument \"url\" required by template \"smoke\"",
            "services[1].strategy.blueGreen.postPromotionAnalysis.templates[0].templateName: unknown analysis template \"nope\", defined: shadow, smoke",
            "services[1].strategy.blueGreen.scaleDownDelaySeconds: use either scaleDownDelay or scaleDownDelaySeconds, not both",
            "services[2].strategy.blueGreen.autoPromotionSeconds: too large: 18446744073709551615 seconds",
            "services[2].strategy.blueGreen.scaleDownDelay: expected a duration like \"10s\", got the plain number 10 (add a unit: ms, s, m or h)",
            "services[3].strategy.blueGreen.preview: needs at least one of hosts, listener or headers",
        ],
    );

    // Preview hosts that another route already claims, reported once the services are valid.
    let yaml = "listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: orders
    match: { hosts: [orders.example.com] }
    stable: { version: v2, upstreams: [\"127.0.0.1:9001\"] }
    strategy:
      blueGreen:
        preview: { hosts: [orders.example.com, cart.example.com, preview.example.com] }
  - name: cart
    match: { hosts: [cart.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9003\"] }
    strategy:
      blueGreen:
        preview: { hosts: [preview.example.com, \"*\"] }
  - name: everything
    stable: { version: v1, upstreams: [\"127.0.0.1:9004\"] }
";
    let got = problems(yaml);
    assert_eq!(
        got,
        [
            "services[0].strategy.blueGreen.preview.hosts[0]: host \"orders.example.com\" is also in match.hosts of service \"orders\"",
            "services[0].strategy.blueGreen.preview.hosts[1]: host \"cart.example.com\" is also in match.hosts of service \"cart\"",
            "services[1].strategy.blueGreen.preview.hosts[0]: host \"preview.example.com\" is also a preview host of service \"orders\"",
            "services[1].strategy.blueGreen.preview.hosts[1]: host \"*\" is also in match.hosts of service \"everything\"",
        ]
    );
}

#[test]
fn invalid_session_affinity_and_traffic() {
    let yaml = with_service(
        "  - name: a
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    sessionAffinity: { cookieName: c, header: x-user }
  - name: b
    match: { hosts: [b.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    sessionAffinity: { maxAge: 0s }
  - name: c
    match: { hosts: [c.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    sessionAffinity: { cookieName: \"weir checkout\", ttl: 1h }
  - name: d
    match: { hosts: [d.example.com] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
    sessionAffinity: { header: \"x:user\", maxAge: 24 }
analysisTemplates:
  - name: t
    metrics:
      - name: m
        successCondition: result > 0
        provider: { builtin: { metric: success-rate, traffic: shadow } }
",
    );
    let got = problems(&yaml);
    assert_eq!(
        got,
        [
            "services[0].sessionAffinity: use either cookieName or header, not both",
            "services[1].sessionAffinity: needs cookieName or header",
            "services[1].sessionAffinity.maxAge: must be greater than zero",
            "services[2].sessionAffinity.ttl: unknown field \"ttl\", expected one of: cookieName, header, maxAge",
            "services[2].sessionAffinity.cookieName: invalid cookie name \"weir checkout\": use letters, digits and !#$%&'*+-.^_`|~",
            "services[3].sessionAffinity.header: invalid header name \"x:user\": use letters, digits and !#$%&'*+-.^_`|~",
            "services[3].sessionAffinity.maxAge: expected a duration like \"10s\", got the plain number 24 (add a unit: ms, s, m or h)",
            "analysisTemplates[0].metrics[0].provider.builtin.traffic: expected \"primary\" or \"mirror\", got \"shadow\"",
        ]
    );
}

#[test]
fn never_panics_on_odd_policy_input() {
    let inputs = [
        "services:\n  - strategy: { blueGreen: 5 }\n",
        "services:\n  - strategy: { blueGreen: { preview: [1], prePromotionAnalysis: 1, autoPromotionSeconds: [] } }\n",
        "services:\n  - strategy: { canary: { steps: [{ setHeaderRoute: 5 }, { setMirrorRoute: [] }, { setHeaderRoute: { name: x, match: 5 } }] } }\n",
        "services:\n  - strategy: { canary: { steps: [{ setHeaderRoute: { name: x, match: [5, { headers: 5 }, { headers: { 1: 2 } }] } }] } }\n",
        "services:\n  - strategy: { canary: { steps: [{ setMirrorRoute: { name: x, match: [[], { headers: [] }, { method: { regex: 5 } }] } }] } }\n",
        "services:\n  - strategy: { canary: { analysis: { iterations: x, match: {}, mirror: 1, mirrorWeight: [] } } }\n",
        "services:\n  - sessionAffinity: [1]\n  - sessionAffinity: { cookieName: 5, maxAge: x }\n",
        "services:\n  - sessionAffinity: { header: \"\" }\n",
        "services:\n  - strategy: { canary: { steps: [{ setHeaderRoute: { name: x, match: [{ headerName: x, headerValue: { regex: \"\\\\\" } }] } }] } }\n",
    ];
    for input in inputs {
        let _ = parse(input, super::base());
    }
}

#[test]
fn policy_examples_use_their_feature() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let example =
        |name: &str| -> Model { load(&dir.join(name)).unwrap_or_else(|e| panic!("{name}:\n{e}")) };
    let strategy = |model: &Model, i: usize| model.services[i].strategy.clone().unwrap();

    let header = example("header-route.yaml");
    assert!(strategy(&header, 0)
        .steps()
        .iter()
        .any(|s| matches!(s, Step::SetHeaderRoute(r) if !r.any_of.is_empty())));

    let ab = example("ab-test.yaml");
    let a = strategy(&ab, 0);
    assert_eq!(a.iterations().map(|i| i.any_of.len()), Some(2));
    let b = strategy(&ab, 1);
    assert_eq!(b.iterations().and_then(|i| i.mirror), Some(percent(50.0)));

    let sticky = example("sticky.yaml");
    assert!(sticky.services.iter().all(|s| s.session_affinity.is_some()));

    let mirror = example("mirror.yaml");
    assert!(strategy(&mirror, 0)
        .steps()
        .iter()
        .any(|s| matches!(s, Step::SetMirrorRoute(r) if r.percentage == percent(50.0))));

    let blue_green = example("blue-green.yaml");
    let orders = strategy(&blue_green, 0);
    let orders = orders.blue_green().unwrap();
    assert_eq!(orders.preview.listener.as_deref(), Some("preview"));
    assert!(!orders.auto_promotion_enabled);
    assert_eq!(
        strategy(&blue_green, 1)
            .blue_green()
            .unwrap()
            .scale_down_delay,
        Duration::from_secs(600)
    );
}

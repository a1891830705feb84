//! `listeners[].redirect`, `services[].rewrite` and `services[].headers` (issue #8).

use super::{check, ok};
use crate::*;

fn config(listener_extra: &str, service_extra: &str) -> String {
    format!(
        "listeners:
  - name: public
    address: 127.0.0.1:8080
{listener_extra}services:
  - name: api
    match: {{ pathPrefix: /api/ }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}
    canary: {{ version: v2, upstreams: [\"127.0.0.1:9002\"] }}
{service_extra}"
    )
}

#[test]
fn defaults_are_no_redirect_no_rewrite_no_rules() {
    let model = ok(&config("", ""));
    assert_eq!(model.listeners[0].redirect, None);
    assert_eq!(model.services[0].rewrite, None);
    assert!(model.services[0].headers.is_empty());
}

#[test]
fn a_redirect_is_read_with_its_default_code() {
    let model = ok(&config("    redirect: { scheme: https, port: 443 }\n", ""));
    assert_eq!(
        model.listeners[0].redirect,
        Some(Redirect {
            scheme: Some(RedirectScheme::Https),
            host: None,
            port: Some(443),
            code: 308,
        })
    );
    let model = ok(&config(
        "    redirect: { host: WWW.example.com, code: 301 }\n",
        "",
    ));
    let redirect = model.listeners[0].redirect.clone().unwrap();
    assert_eq!(redirect.host.as_deref(), Some("www.example.com"));
    assert_eq!(redirect.code, 301);
    // Another port on the same scheme is not a loop.
    ok(&config("    redirect: { port: 8443 }\n", ""));
}

#[test]
fn bad_redirects_are_refused_with_their_paths() {
    check(
        &config(
            "    redirect: { scheme: ftp, code: 303, port: 70000, host: \"a b\", extra: 1 }\n",
            "",
        ),
        &[
            "listeners[0].redirect.scheme: must be http or https, got \"ftp\"",
            "listeners[0].redirect.code: must be 301, 302, 307 or 308, got 303",
            "listeners[0].redirect.port: must be a port between 1 and 65535, got 70000",
            "listeners[0].redirect.host: \"a b\" is not a host name…",
            "listeners[0].redirect.extra…",
        ],
    );
    // To itself: same scheme (plain), same port, same host.
    for redirect in ["{}", "{ code: 301 }", "{ scheme: http }", "{ port: 8080 }"] {
        check(
            &config(&format!("    redirect: {redirect}\n"), ""),
            &["listeners[0].redirect: redirects every request to itself…"],
        );
    }
}

#[test]
fn rewrites_are_read_and_checked() {
    let model = ok(&config(
        "",
        "    rewrite: { pathPrefix: /, host: internal.api:8080 }\n",
    ));
    assert_eq!(
        model.services[0].rewrite,
        Some(Rewrite {
            path_prefix: Some("/".into()),
            host: Some("internal.api:8080".into()),
        })
    );
    check(
        &config("", "    rewrite: { pathPrefix: v1 }\n"),
        &["services[0].rewrite.pathPrefix: must start with \"/\", got \"v1\""],
    );
    check(
        &config("", "    rewrite: { pathPrefix: \"/a//b\" }\n"),
        &["services[0].rewrite.pathPrefix: must not contain \"//\"…"],
    );
    check(
        &config("", "    rewrite: { pathPrefix: \"/a b?\" }\n"),
        &["services[0].rewrite.pathPrefix: ' ' is not allowed in a path…"],
    );
    check(
        &config("", "    rewrite: { host: \"x/y\" }\n"),
        &["services[0].rewrite.host: \"x/y\" is not a host name…"],
    );
    check(
        &config("", "    rewrite: {}\n"),
        &["services[0].rewrite: rewrites nothing: set pathPrefix and/or host"],
    );
}

#[test]
fn header_rules_are_compiled_into_templates() {
    let model = ok(&config(
        "",
        "    headers:
      request: { set: { X-Env: prod, x-served: \"{{version}}/{{ service }}\" }, add: { x-trace: \"id={{request.id}}\" }, remove: [X-Debug] }
      response: { set: { strict-transport-security: max-age=31536000 }, remove: [server] }
",
    ));
    let rules = &model.services[0].headers;
    assert_eq!(rules.request.remove, ["x-debug"]);
    assert_eq!(
        rules.request.set,
        [
            (
                "x-env".to_string(),
                HeaderTemplate(vec![TemplatePart::Literal("prod".into())])
            ),
            (
                "x-served".to_string(),
                HeaderTemplate(vec![
                    TemplatePart::Version,
                    TemplatePart::Literal("/".into()),
                    TemplatePart::Service
                ])
            ),
        ]
    );
    assert_eq!(
        rules.request.add[0].1,
        HeaderTemplate(vec![
            TemplatePart::Literal("id=".into()),
            TemplatePart::RequestId
        ])
    );
    assert_eq!(rules.response.remove, ["server"]);
}

#[test]
fn bad_header_rules_are_refused_with_their_paths() {
    check(
        &config(
            "",
            "    headers:
      request:
        set: { connection: close, \"bad name\": x, x-a: \"{{nope}}\", x-b: \"{{version\", Content-Length: \"1\", x-id: [1] }
        add: { x-a: again, host: h }
        remove: [transfer-encoding, x-request-id]
      response:
        set: { x-c: \"caf\u{e9}\" }
        remove: [te]
      other: {}
",
        ),
        &[
            "services[0].headers.request.set.connection: \"connection\" cannot be changed by a rule…",
            "services[0].headers.request.set.bad name: \"bad name\" is not a header name",
            "services[0].headers.request.set.x-a: unknown placeholder \"{{nope}}\"…",
            "services[0].headers.request.set.x-b: an unclosed \"{{\"",
            "services[0].headers.request.set.Content-Length: \"content-length\" cannot be changed…",
            "services[0].headers.request.set.x-id: expected a header value (a string)",
            "services[0].headers.request.add.host: \"host\" cannot be changed…",
            "services[0].headers.request.remove[0]: \"transfer-encoding\" cannot be changed…",
            "services[0].headers.request.remove[1]: \"x-request-id\" cannot be changed…",
            "services[0].headers.response.set.x-c: 'é' is not allowed in a header value…",
            "services[0].headers.response.remove[0]: \"te\" cannot be changed…",
            "services[0].headers.other…",
        ],
    );
    check(
        &config(
            "",
            "    headers: { request: { set: { x-a: \"1\" }, add: { X-A: \"2\" } } }\n",
        ),
        &["services[0].headers.request.add.X-A: header \"x-a\" has more than one rule"],
    );
}

#[test]
fn version_placeholders_need_header_safe_versions() {
    let yaml = "listeners:
  - name: public
    address: 127.0.0.1:8080
services:
  - name: api
    stable: { version: \"v1\\nx\", upstreams: [\"127.0.0.1:9001\"] }
    headers: { response: { set: { x-version: \"{{version}}\" } } }
";
    check(
        yaml,
        &["services[0].headers.response.set.x-version: {{version}} would write version…"],
    );
}

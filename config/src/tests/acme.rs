//! `listeners[].tls.acme` (issue #8).

use std::time::Duration;

use super::{check, ok};
use crate::*;

/// A plain listener, an ACME listener with `acme` (indented under `acme:`), and two services.
fn config(acme: &str, state_dir: bool) -> String {
    let state = if state_dir {
        "stateDir: /var/lib/weir\n"
    } else {
        ""
    };
    format!(
        "listeners:
  - name: public
    address: 127.0.0.1:8080
  - name: secure
    address: 127.0.0.1:8443
    tls:
      acme:
{acme}
{state}services:
  - name: shop
    match: {{ hosts: [Shop.Example.com, \"*.example.com\", api.example.com] }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9001\"] }}
  - name: api
    match: {{ hosts: [api.example.com, localhost], pathPrefix: /v1 }}
    stable: {{ version: v1, upstreams: [\"127.0.0.1:9002\"] }}
"
    )
}

#[test]
fn defaults_take_the_services_exact_hosts() {
    let model = ok(&config(
        "        directory: https://acme.example/directory",
        true,
    ));
    let tls = model.listeners[1].tls.as_ref().expect("tls");
    assert!(tls.certificates.is_empty());
    let acme = tls.acme.as_ref().expect("acme");
    assert_eq!(acme.directory, "https://acme.example/directory");
    assert_eq!(
        acme.domains,
        vec![
            "shop.example.com".to_string(),
            "api.example.com".to_string()
        ],
        "exact hosts, lower-cased, deduplicated; wildcards and dotless names left out"
    );
    assert_eq!(acme.challenge, AcmeChallenge::TlsAlpn01);
    assert_eq!(acme.email, None);
    assert_eq!(acme.ca_file, None);
    assert_eq!(acme.renew_before, Acme::DEFAULT_RENEW_BEFORE);
    assert_eq!(acme.retry, AcmeRetry::default());
}

#[test]
fn every_key() {
    let model = ok(&config(
        "        directory: https://acme.example/directory
        email: mailto:ops@example.com
        domains: [A.example.com, b.example.com]
        challenge: http-01
        renewBefore: 1d12h
        retry: { initial: 100ms, max: 2s }",
        true,
    ));
    let acme = model.listeners[1]
        .tls
        .as_ref()
        .unwrap()
        .acme
        .clone()
        .unwrap();
    assert_eq!(acme.email.as_deref(), Some("ops@example.com"));
    assert_eq!(acme.domains, vec!["a.example.com", "b.example.com"]);
    assert_eq!(acme.challenge, AcmeChallenge::Http01);
    assert_eq!(acme.renew_before, Duration::from_secs(36 * 3600));
    assert_eq!(
        acme.retry,
        AcmeRetry {
            initial: Duration::from_millis(100),
            max: Duration::from_secs(2)
        }
    );
    assert_eq!(acme.retry.delay(1), Duration::from_millis(100));
    assert_eq!(acme.retry.delay(3), Duration::from_millis(400));
    assert_eq!(acme.retry.delay(u32::MAX), Duration::from_secs(2));
}

#[test]
fn problems_are_reported_with_their_path() {
    check(
        &config(
            "        directory: http://acme.example/directory
        email: nobody
        domains: [\"*.example.com\", 10.0.0.1, shop.example.com, Shop.example.com, intranet]
        challenge: dns-01
        caFile: missing.pem
        renewBefore: 0s
        retry: { initial: 10ms, max: 48h }
        extra: 1",
            false,
        ),
        &[
            "listeners[1].tls.acme.directory: must be an https:// URL…",
            "listeners[1].tls.acme.email: expected an e-mail address, got \"nobody\"",
            "listeners[1].tls.acme.domains[0]: \"*.example.com\": wildcard names can only be proven with dns-01…",
            "listeners[1].tls.acme.domains[1]: \"10.0.0.1\" is an IP address…",
            "listeners[1].tls.acme.domains[3]: duplicate domain \"shop.example.com\"",
            "listeners[1].tls.acme.domains[4]: \"intranet\" is not a fully qualified name…",
            "listeners[1].tls.acme.challenge: expected \"tls-alpn-01\" or \"http-01\", got \"dns-01\"",
            "listeners[1].tls.acme.caFile: file …",
            "listeners[1].tls.acme.renewBefore: must be greater than zero",
            "listeners[1].tls.acme.retry.initial: must be between 100ms and 24h",
            "listeners[1].tls.acme.retry.max: must be between 100ms and 24h",
            "listeners[1].tls.acme.extra: unknown field \"extra\"…",
        ],
    );
    // Without stateDir weir keeps its state in a default folder (`$STATE_DIRECTORY`, or next
    // to the config file): ACME needs no stateDir.
    let model = ok(&config(
        "        directory: https://acme.example/dir",
        false,
    ));
    assert_eq!(model.state_dir, None);
    check(
        &config(
            "        directory: acme.example/dir\n        renewBefore: 4000d",
            true,
        ),
        &[
            "listeners[1].tls.acme.directory: expected an https:// URL…",
            "listeners[1].tls.acme.renewBefore: invalid duration \"4000d\": at most 3650d",
        ],
    );
    check(
        &config(
            "        directory: https://acme.example/dir\n        retry: { initial: 2s, max: 1s }",
            true,
        ),
        &["listeners[1].tls.acme.retry.max: must be at least retry.initial (2s)"],
    );
    // tls without certificates needs acme.
    check(
        "listeners:\n  - name: secure\n    address: 127.0.0.1:8443\n    tls: {}\nservices: []\n",
        &["listeners[0].tls.certificates: missing required field"],
    );
}

#[test]
fn http_01_needs_a_plain_listener_and_domains_one_listener() {
    check(
        "listeners:
  - name: secure
    address: 127.0.0.1:8443
    tls:
      acme: { directory: \"https://acme.example/dir\", challenge: http-01, domains: [a.example.com] }
  - name: other
    address: 127.0.0.1:9443
    tls:
      acme: { directory: \"https://acme.example/dir\", domains: [A.example.com] }
stateDir: /tmp/weir
services:
  - name: only-wildcards
    match: { hosts: [\"*.example.com\"] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
",
        &[
            "listeners[0].tls.acme.challenge: http-01 is answered on a plain (non-TLS) listener, and there is none…",
            "listeners[1].tls.acme.domains: \"a.example.com\" is also ordered by listeners[0].tls.acme: one listener per domain",
        ],
    );
    check(
        "listeners:
  - name: secure
    address: 127.0.0.1:8443
    tls:
      acme: { directory: \"https://acme.example/dir\" }
stateDir: /tmp/weir
services:
  - name: only-wildcards
    match: { hosts: [\"*.example.com\"] }
    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }
",
        &["listeners[0].tls.acme.domains: no service has an exact host name to certify…"],
    );
}

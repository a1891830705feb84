//! Upstream host names (kept as written, never resolved by this crate) and `upstreamDns`.

use std::net::IpAddr;
use std::time::Duration;

use super::{check, ok, with_service};
use crate::*;

fn with_upstreams(list: &str) -> String {
    with_service(&format!(
        "  - name: s\n    stable: {{ version: v1, upstreams: [{list}] }}\n"
    ))
}

#[test]
fn host_names_are_kept_unresolved_and_literals_are_their_address() {
    // A name that does not exist validates: `weir validate` works offline.
    let model = ok(&with_upstreams(
        "\"API.no-such-host.invalid:8080\", \"10.0.0.7:81\", \"[::1]:82\"",
    ));
    let ups = &model.services[0].stable.upstreams;
    assert_eq!(ups[0].name, "API.no-such-host.invalid:8080");
    assert_eq!(
        ups[0].host,
        UpstreamHost::Name("api.no-such-host.invalid".into())
    );
    assert_eq!(ups[0].port, 8080);
    assert!(ups[0].addrs.is_empty());
    assert_eq!(ups[1].hostname(), None);
    assert_eq!(ups[1].addrs, vec!["10.0.0.7:81".parse().unwrap()]);
    assert_eq!(ups[2].addrs, vec!["[::1]:82".parse().unwrap()]);
}

#[test]
fn malformed_host_names_are_refused() {
    check(
        &with_upstreams(&format!(
            "\"a..b:80\", \"1.2.3:80\", \"{}.com:80\", \".:80\"",
            "x".repeat(64)
        )),
        &[
            "services[0].stable.upstreams[0]: invalid upstream address \"a..b:80\": host \"a..b\" has an empty label",
            "services[0].stable.upstreams[1]: invalid upstream address \"1.2.3:80\": \"1.2.3\" is neither an IPv4 address nor a host name",
            "services[0].stable.upstreams[2]: invalid upstream address …",
            "services[0].stable.upstreams[3]: invalid upstream address \".:80\": host \".\" has an empty label",
        ],
    );
}

#[test]
fn upstream_dns_defaults_and_keys() {
    let d = UpstreamDns::default();
    assert_eq!(d.refresh_rate, Duration::from_secs(30));
    assert_eq!(d.max_addresses, 16);
    assert_eq!(d.family, AddressFamily::Auto);
    let yaml = format!(
        "upstreamDns: {{ refreshRate: 250ms, maxAddresses: 2, family: any }}\n{}",
        with_upstreams("\"backend:80\"")
    );
    let model = ok(&yaml);
    assert_eq!(
        model.upstream_dns,
        UpstreamDns {
            refresh_rate: Duration::from_millis(250),
            max_addresses: 2,
            family: AddressFamily::Any,
        }
    );
}

#[test]
fn upstream_dns_values_are_bounded() {
    let yaml = format!(
        "upstreamDns: {{ refreshRate: 10ms, maxAddresses: 0, family: v4, extra: 1 }}\n{}",
        with_upstreams("\"backend:80\"")
    );
    check(
        &yaml,
        &[
            "upstreamDns.refreshRate: must be between 100ms and 24h",
            "upstreamDns.maxAddresses: must be between 1 and 256, got 0",
            "upstreamDns.family: unknown family \"v4\": expected auto, ipv4, ipv6 or any",
            "upstreamDns.extra: unknown field…",
        ],
    );
}

#[test]
fn selection_prefers_ipv4_sorts_dedups_and_caps() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    let answer = [ip("::1"), ip("10.0.0.2"), ip("10.0.0.1"), ip("10.0.0.2")];
    let mut dns = UpstreamDns::default();
    assert_eq!(dns.select(&answer), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    assert_eq!(
        dns.select(&[ip("::2"), ip("::1")]),
        vec![ip("::1"), ip("::2")]
    );
    dns.family = AddressFamily::Ipv6;
    assert_eq!(dns.select(&answer), vec![ip("::1")]);
    dns.family = AddressFamily::Ipv4;
    assert!(dns.select(&[ip("::1")]).is_empty());
    dns.family = AddressFamily::Any;
    dns.max_addresses = 2;
    assert_eq!(dns.select(&answer), vec![ip("10.0.0.1"), ip("10.0.0.2")]);
    dns.max_addresses = 3;
    assert_eq!(
        dns.select(&answer),
        vec![ip("10.0.0.1"), ip("10.0.0.2"), ip("::1")]
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 300, failure_persistence: None, ..Default::default() })]

    /// Whatever is written as an upstream, validation never panics, and an accepted upstream is
    /// a literal with exactly its own address or a lower-case name with none yet, on a non-zero
    /// port.
    #[test]
    fn any_upstream_text_is_checked_without_panicking(
        written in proptest::prop_oneof![
            "([a-zA-Z0-9]{0,12}|[.:_\\[\\]-]|[0-9]{1,6}){0,12}",
            "([a-zA-Z0-9_-]{1,10}[.]?){1,4}:[0-9]{1,6}",
        ]
    ) {
        let yaml = with_upstreams(&format!("{written:?}"));
        if let Ok(model) = parse(&yaml, std::path::Path::new("/")) {
            let upstream = &model.services[0].stable.upstreams[0];
            proptest::prop_assert!(upstream.port != 0);
            match &upstream.host {
                UpstreamHost::Ip(ip) => proptest::prop_assert_eq!(
                    &upstream.addrs,
                    &vec![std::net::SocketAddr::new(*ip, upstream.port)]
                ),
                UpstreamHost::Name(name) => {
                    proptest::prop_assert!(upstream.addrs.is_empty());
                    proptest::prop_assert_eq!(name, &name.to_ascii_lowercase());
                    proptest::prop_assert!(!name.is_empty() && name.len() <= 253);
                }
            }
        }
    }
}

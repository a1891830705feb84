//! `admin`: defaults, the access keys, limits, and the token a non-loopback address needs.

use std::time::Duration;

use super::{check, ok, with_service};
use crate::*;

const SERVICE: &str = "  - name: s\n    stable: { version: v1, upstreams: [\"127.0.0.1:9001\"] }\n";

fn with_admin(admin: &str) -> String {
    with_service(SERVICE).replacen("services:", &format!("admin:\n{admin}services:"), 1)
}

#[test]
fn admin_defaults_protect_the_process() {
    let model = ok(&with_service(SERVICE));
    assert_eq!(
        model.admin,
        Admin::with_address("127.0.0.1:3100".parse().unwrap())
    );
    assert_eq!(model.admin.max_connections, 64);
    assert_eq!(model.admin.max_event_subscribers, 16);
    assert_eq!(model.admin.header_read_timeout, Duration::from_secs(10));
    assert!(model.admin.allowed_hosts.is_empty());
    assert!(model.admin.tls.is_none());
}

#[test]
fn admin_keys_parse() {
    let model = ok(&with_admin(
        "  address: localhost:3200\n  allowedHosts: [Weir.Internal, \"ops.example:9000\", \"[::1]:3200\"]\n  maxConnections: 8\n  maxEventSubscribers: 2\n  headerReadTimeout: 500ms\n",
    ));
    assert_eq!(
        model.admin.allowed_hosts,
        ["weir.internal", "ops.example:9000", "[::1]:3200"]
    );
    assert_eq!(model.admin.max_connections, 8);
    assert_eq!(model.admin.max_event_subscribers, 2);
    assert_eq!(model.admin.header_read_timeout, Duration::from_millis(500));
}

#[test]
fn admin_tls_names_existing_files() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.crt"), "x").unwrap();
    std::fs::write(dir.path().join("a.key"), "x").unwrap();
    let yaml = with_admin("  tls: {certFile: a.crt, keyFile: a.key}\n");
    let model = parse(&yaml, dir.path()).unwrap();
    assert_eq!(
        model.admin.tls,
        Some(CertificateFiles {
            cert_file: dir.path().join("a.crt"),
            key_file: dir.path().join("a.key"),
        })
    );
    check(
        &with_admin("  tls: {certFile: a.crt}\n"),
        &["admin.tls.keyFile: …"],
    );
}

#[test]
fn admin_problems_are_reported() {
    check(
        &with_admin(
            "  allowedHosts: [\"evil host\", \"a:99999\", \"\"]\n  maxConnections: 0\n  maxEventSubscribers: -1\n  headerReadTimeout: 0s\n  extra: 1\n",
        ),
        &[
            "admin.allowedHosts[0]: \"evil host\" is not a host name: ' ' is not allowed in a host name (expected NAME or NAME:PORT)",
            "admin.allowedHosts[1]: \"a:99999\" is not a host name: invalid port \"99999\" (expected NAME or NAME:PORT)",
            "admin.allowedHosts[2]: …",
            "admin.maxConnections: must be at least 1, got 0",
            "admin.maxEventSubscribers: must not be negative, got -1",
            "admin.headerReadTimeout: must be greater than zero",
            "admin.extra: …",
        ],
    );
}

#[test]
fn a_non_loopback_admin_needs_a_token_file() {
    for address in ["0.0.0.0:3100", "\"[::]:3100\"", "10.0.0.5:3100"] {
        check(
            &with_admin(&format!("  address: {address}\n")),
            &["admin.tokenFile: required because admin.address …"],
        );
    }
    for address in [
        "127.0.0.1:3100",
        "127.0.0.2:3100",
        "\"[::1]:3100\"",
        "localhost:3100",
    ] {
        ok(&with_admin(&format!("  address: {address}\n")));
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "t").unwrap();
    let yaml = with_admin("  address: 0.0.0.0:3100\n  tokenFile: token\n");
    assert!(parse(&yaml, dir.path()).is_ok());
}

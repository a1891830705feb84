//! The config files: two nginx upstreams, and the three proxies with the same 90/10 split, one worker and
//! keep-alive on both sides.

use std::path::Path;

/// Percentage of requests the proxies send to the canary upstream.
pub const CANARY_PERCENT: u32 = 10;

/// Where the upstreams answer `stub_status`.
pub const STATUS_PATH: &str = "/__status";

/// Requests per keep-alive connection, client and upstream side: high enough to never close in a run.
const KEEPALIVE_REQUESTS: u64 = 1_000_000_000;

/// Idle upstream connections each proxy keeps (weir's default `maxIdlePerUpstream`).
const UPSTREAM_IDLE: u32 = 64;

/// The upstream ports of the split.
#[derive(Clone, Copy, Debug)]
pub struct Split {
    pub stable: u16,
    pub canary: u16,
}

/// The settings shared by every nginx instance: foreground, one worker, errors to stderr, temp paths in `dir`.
fn nginx_main(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"worker_processes 1;
daemon off;
master_process on;
pid "{dir}/nginx.pid";
error_log stderr warn;
events {{
    worker_connections 4096;
}}
"#
    )
}

fn nginx_http_common(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"    access_log off;
    client_body_temp_path "{dir}/client_body";
    proxy_temp_path "{dir}/proxy";
    keepalive_requests {KEEPALIVE_REQUESTS};
    keepalive_timeout 300s;
"#
    )
}

/// An upstream answering every path but [`STATUS_PATH`] with `200 <version>\n`.
pub fn upstream_nginx(dir: &Path, version: &str, port: u16) -> String {
    format!(
        r#"{main}http {{
{common}    default_type text/plain;
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location = {STATUS_PATH} {{
            stub_status;
        }}
        location / {{
            return 200 "{version}\n";
        }}
    }}
}}
"#,
        main = nginx_main(dir),
        common = nginx_http_common(dir),
    )
}

/// nginx as the proxy under test.
pub fn nginx_proxy(dir: &Path, listen: u16, split: Split) -> String {
    let stable_weight = 100 - CANARY_PERCENT;
    format!(
        r#"{main}http {{
{common}    upstream split {{
        server 127.0.0.1:{stable} weight={stable_weight};
        server 127.0.0.1:{canary} weight={CANARY_PERCENT};
        keepalive {UPSTREAM_IDLE};
        keepalive_requests {KEEPALIVE_REQUESTS};
        keepalive_timeout 300s;
    }}
    server {{
        listen 127.0.0.1:{listen} backlog=4096;
        location / {{
            proxy_pass http://split;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
"#,
        main = nginx_main(dir),
        common = nginx_http_common(dir),
        stable = split.stable,
        canary = split.canary,
    )
}

/// HAProxy as the proxy under test (no `log` lines: nothing is logged).
pub fn haproxy(listen: u16, split: Split) -> String {
    let stable_weight = 100 - CANARY_PERCENT;
    format!(
        r#"global
    nbthread 1
    maxconn 4096

defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s

frontend bench
    bind 127.0.0.1:{listen}
    default_backend split

backend split
    balance roundrobin
    server stable 127.0.0.1:{stable} weight {stable_weight}
    server canary 127.0.0.1:{canary} weight {CANARY_PERCENT}
"#,
        stable = split.stable,
        canary = split.canary,
    )
}

/// The listener, the admin address and service `bench` with its stable and canary (no weight):
/// what every weir variant shares; each adds its own lines to the service.
fn weir_service(listen: u16, admin: u16, split: Split) -> String {
    format!(
        r#"listeners:
  - name: bench
    address: 127.0.0.1:{listen}
admin:
  address: 127.0.0.1:{admin}
services:
  - name: bench
    match:
      hosts: ["*"]
    stable:
      version: stable
      upstreams: ["127.0.0.1:{stable}"]
    canary:
      version: canary
      upstreams: ["127.0.0.1:{canary}"]
"#,
        stable = split.stable,
        canary = split.canary,
    )
}

/// weir as the proxy under test.
pub fn weir(listen: u16, admin: u16, split: Split) -> String {
    format!(
        "{}      weight: {CANARY_PERCENT}\n",
        weir_service(listen, admin, split)
    )
}

/// weir with the same 90/10 split plus traffic-policy rules that no benchmark request matches: a
/// header route (set by the rollout's first step, held by an indefinite pause at weight 10) and
/// header-form session affinity on a header wrk never sends, so every request still reaches the
/// weighted split after the rules were evaluated.
pub fn weir_policies(listen: u16, admin: u16, split: Split) -> String {
    format!(
        r#"{service}    sessionAffinity:
      header: x-bench-user
    strategy:
      canary:
        steps:
          - setHeaderRoute:
              name: beta
              match:
                - headerName: x-beta
                  headerValue: {{exact: "yes"}}
          - setWeight: {CANARY_PERCENT}
          - pause: {{}}
"#,
        service = weir_service(listen, admin, split),
    )
}

/// weir with the same 90/10 split plus issue #8's ingress rules on every request: the path
/// rewritten (`/` → `/bench/`) and two header rules (a fixed request header, a response header
/// naming the version that served).
pub fn weir_ingress(listen: u16, admin: u16, split: Split) -> String {
    format!(
        r#"{plain}    rewrite:
      pathPrefix: /bench/
    headers:
      request:
        set: {{x-env: bench}}
      response:
        set: {{x-served-by: "{{{{version}}}}"}}
"#,
        plain = weir(listen, admin, split),
    )
}

/// The affinity cookie of [`weir_sticky`].
pub const STICKY_COOKIE_NAME: &str = "weir-bench";

/// The request header the load generators send to [`weir_sticky`]: a valid affinity cookie with
/// bucket 5000, on stable at the 10% split (only buckets below 1000 are on the canary), so every
/// request is decided by the sticky rule and none gets a `Set-Cookie`.
pub const STICKY_COOKIE: &str = "Cookie: weir-bench=5000";

/// weir with the same stable and canary at weight 10 plus cookie-form session affinity; with
/// [`STICKY_COOKIE`] on every request, the sticky rule (not the weighted split) decides each one.
pub fn weir_sticky(listen: u16, admin: u16, split: Split) -> String {
    format!(
        r#"{plain}    sessionAffinity:
      cookieName: {STICKY_COOKIE_NAME}
"#,
        plain = weir(listen, admin, split),
    )
}

/// [`weir`] with a per-client-IP rate limit far above any load (it never refuses): the cost of
/// the limiter on every request.
pub fn weir_ratelimit(listen: u16, admin: u16, split: Split) -> String {
    format!("{}{NEVER_TRIGGERED_RATE_LIMIT}", weir(listen, admin, split))
}

/// The rate limit of [`weir_ratelimit`] and [`weir_ingress_ratelimit`]: keyed by client IP (the
/// sharded, hashed path, dearer than `global`), far above what any load here reaches (all of it
/// comes from 127.0.0.1, one key): the harness fails a run in which anything is not a 2xx, so a
/// 429 would not go unnoticed.
const NEVER_TRIGGERED_RATE_LIMIT: &str =
    "    rateLimit: {requestsPerSecond: 1000000, burst: 1000000, key: clientIp}\n";

/// [`weir_ingress`] and [`weir_ratelimit`] at once, the issue's "a rewrite + two header rules + a
/// rate limit that never triggers", to compare with [`weir`] in the same run.
pub fn weir_ingress_ratelimit(listen: u16, admin: u16, split: Split) -> String {
    format!(
        "{}{NEVER_TRIGGERED_RATE_LIMIT}",
        weir_ingress(listen, admin, split)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxies_get_the_same_split() {
        let split = Split {
            stable: 9001,
            canary: 9002,
        };
        let nginx = nginx_proxy(Path::new("/tmp/x"), 8080, split);
        assert!(nginx.contains("server 127.0.0.1:9001 weight=90;"));
        assert!(nginx.contains("server 127.0.0.1:9002 weight=10;"));
        let haproxy = haproxy(8080, split);
        assert!(haproxy.contains("server stable 127.0.0.1:9001 weight 90"));
        assert!(haproxy.contains("server canary 127.0.0.1:9002 weight 10"));
        let weir = weir(8080, 3100, split);
        assert!(weir.contains("upstreams: [\"127.0.0.1:9002\"]\n      weight: 10\n"));
    }

    #[test]
    fn weir_configs_are_valid() {
        let split = Split {
            stable: 9001,
            canary: 9002,
        };
        for yaml in [
            weir(8080, 3100, split),
            weir_policies(8080, 3100, split),
            weir_sticky(8080, 3100, split),
            weir_ratelimit(8080, 3100, split),
            weir_ingress(8080, 3100, split),
            weir_ingress_ratelimit(8080, 3100, split),
        ] {
            let model =
                weir_config::parse(&yaml, Path::new("/")).unwrap_or_else(|e| panic!("{e}\n{yaml}"));
            assert_eq!(model.services.len(), 1);
        }
        let policies =
            weir_config::parse(&weir_policies(8080, 3100, split), Path::new("/")).expect("valid");
        assert!(policies.services[0].session_affinity.is_some());
        assert!(policies.services[0].strategy.is_some());
        let sticky =
            weir_config::parse(&weir_sticky(8080, 3100, split), Path::new("/")).expect("valid");
        assert!(sticky.services[0].session_affinity.is_some());
        let ingress =
            weir_config::parse(&weir_ingress(8080, 3100, split), Path::new("/")).expect("valid");
        assert!(ingress.services[0].rewrite.is_some());
        assert!(!ingress.services[0].headers.is_empty());
        assert!(ingress.services[0].rate_limit.is_none());
        let both = weir_config::parse(&weir_ingress_ratelimit(8080, 3100, split), Path::new("/"))
            .expect("valid");
        assert!(both.services[0].rewrite.is_some());
        assert!(!both.services[0].headers.is_empty());
        assert!(both.services[0].rate_limit.is_some());
        let limited =
            weir_config::parse(&weir_ratelimit(8080, 3100, split), Path::new("/")).expect("valid");
        assert!(limited.services[0].rate_limit.is_some());
        assert!(STICKY_COOKIE.starts_with(&format!("Cookie: {STICKY_COOKIE_NAME}=")));
    }
}

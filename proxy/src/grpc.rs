//! gRPC outcomes: a gRPC call answers HTTP `200` and carries its real outcome in `grpc-status`,
//! in the response head (a trailers-only response) or in the trailers. weir reads it where it
//! passes (never buffering a body) and counts it for the version that served the call, in
//! `weir_grpc_responses_total{service,version,grpc_status}`; the server-side failures below are
//! errors of the version, like a `5xx`, in the builtin provider's `errorRate` and `successRate`.
//!
//! | code | name | error of the version? |
//! |---|---|---|
//! | 0 | OK | no |
//! | 1 | CANCELLED | no (the client gave up) |
//! | 2 | UNKNOWN | **yes** |
//! | 3 | INVALID_ARGUMENT | no |
//! | 4 | DEADLINE_EXCEEDED | **yes** |
//! | 5 | NOT_FOUND | no |
//! | 6 | ALREADY_EXISTS | no |
//! | 7 | PERMISSION_DENIED | no |
//! | 8 | RESOURCE_EXHAUSTED | no (quotas and rate limits answer the caller, like a `429`) |
//! | 9 | FAILED_PRECONDITION | no |
//! | 10 | ABORTED | no |
//! | 11 | OUT_OF_RANGE | no |
//! | 12 | UNIMPLEMENTED | **yes** (a version that lost a method is broken) |
//! | 13 | INTERNAL | **yes** |
//! | 14 | UNAVAILABLE | **yes** |
//! | 15 | DATA_LOSS | **yes** |
//! | 16 | UNAUTHENTICATED | no |
//! | other | a code outside 0–16, or a gRPC response that ended without `grpc-status` | **yes** (clients read it as UNKNOWN) |
//!
//! Only versions whose `protocol` is HTTP/2 are inspected (gRPC needs HTTP/2), so HTTP/1 traffic
//! pays nothing; an inspected non-gRPC response costs one header lookup.

use http::header::{HeaderMap, HeaderName, CONTENT_TYPE, TE};
use http::HeaderValue;

use crate::stats::VersionStats;

static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// Number of counted outcomes: the 17 codes and `other`.
pub const SLOTS: usize = 18;

/// The `grpc_status` label of each slot.
pub const LABELS: [&str; SLOTS] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
    "other",
];

/// The slot of `other`.
pub const OTHER: usize = SLOTS - 1;

/// Whether the outcome in `slot` is a server-side failure, counted as an error of the version.
pub const fn is_server_error(slot: usize) -> bool {
    matches!(slot, 2 | 4 | 12 | 13 | 14 | 15) || slot >= OTHER
}

/// The slot of a `grpc-status` value.
pub fn slot(value: &HeaderValue) -> usize {
    let bytes = value.as_bytes();
    let code = match bytes {
        [d] if d.is_ascii_digit() => usize::from(d - b'0'),
        [b'1', d] if d.is_ascii_digit() => 10 + usize::from(d - b'0'),
        _ => OTHER,
    };
    code.min(OTHER)
}

/// Whether the client asked for trailers (`te: trailers`), which an HTTP/2 upstream must see.
pub(crate) fn wants_trailers(headers: &HeaderMap) -> bool {
    headers.get_all(TE).iter().any(|v| {
        v.to_str().is_ok_and(|v| {
            v.split(',')
                .any(|t| t.trim().split(';').next() == Some("trailers"))
        })
    })
}

/// Puts `te: trailers` back after the hop-by-hop headers were removed (HTTP/2 allows it, gRPC
/// servers require it).
pub(crate) fn keep_trailers(headers: &mut HeaderMap) {
    headers.insert(TE, HeaderValue::from_static("trailers"));
}

/// Looks at a response head from an HTTP/2 upstream: a trailers-only gRPC response is counted
/// now; `true` when the outcome is still to come in the trailers.
pub(crate) fn on_head(headers: &HeaderMap, stats: &VersionStats) -> Head {
    let grpc = headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if !grpc {
        return Head::default();
    }
    match headers.get(&GRPC_STATUS) {
        Some(status) => {
            let slot = slot(status);
            stats.record_grpc(slot);
            Head {
                watch_trailers: false,
                failed: is_server_error(slot),
            }
        }
        None => Head {
            watch_trailers: true,
            failed: false,
        },
    }
}

/// What a response head says of a gRPC call.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Head {
    /// A gRPC response whose outcome comes in its trailers: watch the body for them.
    pub(crate) watch_trailers: bool,
    /// A trailers-only response with a server-side failure: it counts toward the upstream's
    /// outlier detection like a 5xx.
    pub(crate) failed: bool,
}

/// Counts the outcome in a trailers frame (`None`: the body ended without `grpc-status`).
pub(crate) fn on_trailers(trailers: Option<&HeaderMap>, stats: &VersionStats) {
    let slot = trailers
        .and_then(|t| t.get(&GRPC_STATUS))
        .map_or(OTHER, slot);
    stats.record_grpc(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_map_to_slots_and_errors() {
        let slot_of = |s: &'static str| slot(&HeaderValue::from_static(s));
        assert_eq!(slot_of("0"), 0);
        assert_eq!(slot_of("14"), 14);
        assert_eq!(slot_of("16"), 16);
        for odd in ["17", "99", "", "-1", "014", "a", "1a"] {
            assert_eq!(slot_of(odd), OTHER, "{odd:?}");
        }
        let errors: Vec<usize> = (0..SLOTS).filter(|&s| is_server_error(s)).collect();
        assert_eq!(errors, [2, 4, 12, 13, 14, 15, OTHER]);
    }

    #[test]
    fn server_side_failures_are_errors_of_the_version_and_client_codes_are_not() {
        let stats = crate::stats::Stats::new();
        let v = stats.handle("api", "v2");
        let mut head = HeaderMap::new();
        head.insert(
            CONTENT_TYPE,
            HeaderValue::from_static("application/grpc+proto"),
        );
        for _ in 0..4 {
            v.record(200, std::time::Duration::from_millis(1));
        }
        // Trailers-only: counted at the head.
        head.insert(&GRPC_STATUS, HeaderValue::from_static("14"));
        let failed = Head {
            watch_trailers: false,
            failed: true,
        };
        assert_eq!(
            on_head(&head, &v),
            failed,
            "UNAVAILABLE is the server's failure"
        );
        head.insert(&GRPC_STATUS, HeaderValue::from_static("3"));
        assert_eq!(
            on_head(&head, &v),
            Head::default(),
            "INVALID_ARGUMENT is not"
        );
        // In the trailers, and a body that ended without a status.
        head.remove(&GRPC_STATUS);
        assert!(on_head(&head, &v).watch_trailers);
        let mut trailers = HeaderMap::new();
        trailers.insert(&GRPC_STATUS, HeaderValue::from_static("0"));
        on_trailers(Some(&trailers), &v);
        on_trailers(None, &v);
        let snapshot = v.snapshot();
        assert_eq!((snapshot.grpc_responses, snapshot.grpc_errors), (4, 2));
        assert_eq!(snapshot.error_rate(), Some(0.5));
        assert_eq!(snapshot.success_rate(), Some(0.5));
        // Not gRPC: nothing to watch.
        assert_eq!(on_head(&HeaderMap::new(), &v), Head::default());
    }

    #[test]
    fn te_trailers_is_recognised() {
        let mut headers = HeaderMap::new();
        headers.insert(TE, HeaderValue::from_static("gzip, trailers"));
        assert!(wants_trailers(&headers));
        headers.insert(TE, HeaderValue::from_static("gzip"));
        assert!(!wants_trailers(&headers));
    }
}

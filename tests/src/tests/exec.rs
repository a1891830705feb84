//! The exec provider in a rollout: a smoke test run before any traffic moves (the first step is
//! the analysis, at weight 0). A passing command promotes the canary; a failing one aborts the
//! rollout, the status naming the command's last line of output.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use weir_control::demo::backend::Backend;
use weir_control::engine::analysis::Verdict;
use weir_control::engine::rollout::run::{RunKind, RunPhase};
use weir_control::engine::rollout::Phase;

use crate::weir::{Weir, HEADER};

/// A smoke script: prints its args, sleeps a little (so the rollout is seen waiting at weight 0),
/// then passes unless the canary version is `bad`.
const SMOKE: &str = r#"#!/bin/sh
echo "smoke test of $1, canary $2 (stable $SMOKE_STABLE)"
sleep 1
if [ "$2" = bad ]; then
  echo "GET /health on $2: 503 Service Unavailable"
  exit 1
fi
echo 1
"#;

fn config(stable: (&str, &Backend), canary: (&str, &Backend), smoke: &Path) -> String {
    format!(
        r#"{HEADER}services:
  - name: checkout
    match: {{hosts: ["*"]}}
    stable: {{version: {}, upstreams: ["{}"]}}
    canary: {{version: {}, upstreams: ["{}"]}}
    strategy:
      canary:
        steps:
          - analysis:
              templates: [{{templateName: smoke}}]
          - setWeight: 50
          - setWeight: 100
analysisTemplates:
  - name: smoke
    metrics:
      - name: smoke
        provider:
          exec:
            command: {}
            args: ["{{{{service}}}}", "{{{{canary.version}}}}"]
            timeout: 10s
            env: {{SMOKE_STABLE: "{{{{stable.version}}}}"}}
"#,
        stable.0,
        stable.1.addr(),
        canary.0,
        canary.1.addr(),
        smoke.display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smoke_test_before_traffic_moves() {
    let dir = tempfile::tempdir().expect("a temporary folder");
    let smoke = dir.path().join("smoke");
    std::fs::write(&smoke, SMOKE).expect("write the script");
    std::fs::set_permissions(&smoke, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let v1 = Backend::bind("v1").expect("bind");
    let v2 = Backend::bind("v2").expect("bind");
    let bad = Backend::bind("bad").expect("bind");

    // 1. The smoke test passes: the canary is promoted.
    let weir = Weir::start(&config(("v1", &v1), ("v2", &v2), &smoke)).await;
    let waiting = weir
        .wait_until(
            "checkout",
            Duration::from_secs(10),
            "the smoke test running",
            |s| {
                s.canary_version.as_deref() == Some("v2")
                    && s.details.as_ref().is_some_and(|d| {
                        d.analysis_runs.iter().any(|r| r.phase == RunPhase::Running)
                    })
            },
        )
        .await;
    assert_eq!(
        waiting.canary_weight, 0.0,
        "no traffic moves before the smoke test"
    );
    let done = weir
        .wait_until("checkout", Duration::from_secs(20), "promotion", |s| {
            s.phase != Phase::Progressing
        })
        .await;
    assert_eq!(done.phase, Phase::Healthy, "{}", done.message);
    assert_eq!(done.stable_version, "v2");
    let run = done
        .details
        .as_ref()
        .expect("details")
        .analysis_runs
        .iter()
        .find(|r| matches!(r.kind, RunKind::Inline { .. }))
        .expect("the smoke step's run")
        .clone();
    let measurement = &run.metrics[0].measurements[0];
    eprintln!(
        "passed: value {:?}, {}: {}",
        measurement.value, measurement.verdict, measurement.message
    );
    assert_eq!(measurement.verdict, Verdict::Successful);
    assert_eq!(measurement.value, Some(serde_json::json!(1)));

    // 2. The smoke test fails: aborted at weight 0, the status naming the output's last line.
    weir.write_atomic(&config(("v2", &v2), ("bad", &bad), &smoke));
    let aborted = weir
        .wait_until("checkout", Duration::from_secs(20), "the abort", |s| {
            s.canary_version.as_deref() == Some("bad") && s.phase != Phase::Progressing
        })
        .await;
    eprintln!("failed: {:?}: {}", aborted.phase, aborted.message);
    assert_eq!(aborted.phase, Phase::Degraded, "{}", aborted.message);
    assert_eq!(aborted.canary_weight, 0.0);
    assert_eq!(aborted.stable_version, "v2");
    for needle in [
        "smoke failed 1 time(s)",
        "exited with status 1",
        "GET /health on bad: 503 Service Unavailable",
    ] {
        assert!(
            aborted.message.contains(needle),
            "{needle:?} in {}",
            aborted.message
        );
    }
    drop(dir);
    weir.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_arguments_reach_the_command() {
    // The first line of output names the substituted args and env; checked on the provider alone.
    let provider = weir_config::ExecProvider {
        command: "/bin/sh".into(),
        args: vec![
            "-c".into(),
            "echo \"$0 $1 $SMOKE_STABLE\"".into(),
            "{{service}}".into(),
            "{{canary.version}}".into(),
        ],
        timeout: Duration::from_secs(5),
        env: vec![("SMOKE_STABLE".into(), "{{stable.version}}".into())],
    };
    let vars = weir_control::engine::analysis::Vars {
        service: "checkout".into(),
        stable_version: "v1".into(),
        canary_version: "v2".into(),
        ..Default::default()
    };
    let outcome = weir_control::engine::analysis::provider::exec(&provider, &vars).await;
    eprintln!("{outcome:?}");
    match outcome {
        weir_control::engine::analysis::Outcome::Value(measured) => {
            assert_eq!(measured.value, serde_json::json!("checkout v2 v1"));
        }
        other => panic!("expected a value, got {other:?}"),
    }
}

//! The load generator and provisioning, run as the real binary.

use std::process::Command;

use crate::helpers::*;

fn dyad(args: &[&str]) -> std::process::Output {
    let output = Command::new(env!("CARGO_BIN_EXE_dyad")).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "dyad {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn a_short_bench_run_loses_nothing_and_reports_every_figure() {
    let output = dyad(&[
        "bench",
        "--users",
        "20",
        "--rate",
        "200",
        "--duration",
        "1s",
        "--warmup",
        "200ms",
        "--json",
    ]);
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let sent = report["sent"].as_u64().unwrap();
    assert!(sent >= 200, "{report}");
    for field in ["acked", "received", "delivered"] {
        assert_eq!(report[field].as_u64(), Some(sent), "{field}: {report}");
    }
    for field in ["lost", "duplicated", "out_of_order", "disconnects"] {
        assert_eq!(report[field].as_u64(), Some(0), "{field}: {report}");
    }
    for latency in ["send_to_receive", "send_to_ack", "send_to_delivered"] {
        let p = &report["latency_ms"][latency];
        assert!(p["count"].as_u64().unwrap() > 0, "{latency}: {report}");
        assert!(p["p50"].as_f64().unwrap() <= p["p99"].as_f64().unwrap(), "{latency}");
    }
    assert!(report["server"]["peak_rss_mib"].as_f64().unwrap() > 1.0, "{report}");
}

#[tokio::test]
async fn provisioned_tokens_open_websockets_and_the_idle_bench_holds_them() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens.tsv");
    let database = format!("sqlite://{}", server.db_path.display());
    let tokens_arg = tokens.to_str().unwrap().to_owned();
    let db = database.clone();
    tokio::task::spawn_blocking(move || {
        dyad(&[
            "admin",
            "provision",
            "--database",
            &db,
            "--users",
            "30",
            "--prefix",
            "load",
            "--out",
            &tokens_arg,
        ])
    })
    .await
    .unwrap();
    let lines = std::fs::read_to_string(&tokens).unwrap();
    assert_eq!(lines.lines().count(), 30);
    let first: Vec<&str> = lines.lines().next().unwrap().split('\t').collect();
    assert_eq!(first[1], "load-0");
    let user = dyad_client::Client::new(&server.base).with_token(first[2], first[0].parse().unwrap());
    let conn = user.connect().await.unwrap();
    assert_eq!(conn.user_id.to_string(), first[0]);

    let (base, tokens_arg) = (server.base.clone(), tokens.to_str().unwrap().to_owned());
    let idle = tokio::task::spawn_blocking(move || {
        dyad(&[
            "bench",
            "idle",
            "--url",
            &base,
            "--tokens",
            &tokens_arg,
            "--connections",
            "30",
            "--hold",
            "300ms",
            "--json",
        ])
    })
    .await
    .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&idle.stdout).unwrap();
    assert_eq!(report["failed"].as_u64(), Some(0), "{report}");
    assert_eq!(report["still_open_after_hold"].as_u64(), Some(30), "{report}");
    server.stop().await;
}

#[test]
fn the_attack_bench_finds_the_per_user_socket_limit_and_keeps_the_user_served() {
    let output = dyad(&["bench", "attack", "sockets-per-user", "--duration", "2s"]);
    let text = String::from_utf8_lossy(&output.stdout);
    // However far it got in 2 s, never more than the 32 allowed.
    assert!(text.contains("attacker: 32 requests or connections answered"), "{text}");
    for probe in ["login", "send -> ack", "GET /healthz"] {
        assert!(
            text.lines().any(|l| l.trim_start().starts_with(probe)),
            "{probe}: {text}"
        );
    }
    // A probe that failed would count as 10,000 ms.
    assert!(!text.contains("10000.0"), "a legitimate probe failed: {text}");
}

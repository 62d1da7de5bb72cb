//! Heartbeats, operational endpoints, clean shutdown and restart.

use std::time::Duration;

use dyad_client::protocol::{ClientEvent, ServerEvent};
use dyad_server::Config;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

use crate::helpers::*;

/// Over a real socket; when exactly a connection counts as silent is the
/// session's own test, with paused time.
#[tokio::test]
async fn a_silent_connection_is_closed_after_two_heartbeats() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(20),
        ..test_config()
    };
    let server = TestServer::spawn_with(config).await;
    let alice = server.user("alice").await;
    let url = format!(
        "{}/api/v1/ws?token={}",
        server.base.replace("http", "ws"),
        alice.client.token().unwrap()
    );
    let (ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    // Read nothing (so answer no ping) for three heartbeats and more, then
    // look at what came.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (_write, mut read) = ws.split();
    let mut pings = 0;
    let mut close = None;
    while let Ok(Some(Ok(frame))) = tokio::time::timeout(WAIT, read.next()).await {
        match frame {
            Message::Ping(_) => pings += 1,
            Message::Close(frame) => {
                close = frame.map(|f| u16::from(f.code));
                break;
            }
            _ => {}
        }
    }
    assert!(pings >= 1, "the server pinged");
    assert_eq!(close, Some(4000), "closed for silence");
    server.stop().await;
}

#[tokio::test]
async fn a_client_that_answers_pings_stays_connected() {
    let config = Config {
        heartbeat_interval: Duration::from_millis(100),
        ..test_config()
    };
    let server = TestServer::spawn_with(config).await;
    let alice = server.user("alice").await;
    // tungstenite answers pings while it reads; three heartbeats pass.
    let mut live = alice.connect().await;
    live.expect_silence(Duration::from_millis(350)).await;
    server.stop().await;
}

#[tokio::test]
async fn the_json_ping_gets_a_pong() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let mut a = alice.connect().await;
    a.0.send(&ClientEvent::Ping {}).await.unwrap();
    assert_eq!(a.next().await, ServerEvent::Pong {});
    a.send_raw(r#"{"event":"ping"}"#).await;
    assert_eq!(a.next().await, ServerEvent::Pong {});
    server.stop().await;
}

#[tokio::test]
async fn health_readiness_and_metrics_answer() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "counted", "k").await;
    let http = reqwest::Client::new();
    // A wrong password, counted among the refusals.
    let wrong = http
        .post(format!("{}/api/v1/sessions", server.base))
        .json(&serde_json::json!({"username": "alice", "password": "not the password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let health = http.get(format!("{}/healthz", server.base)).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = http.get(format!("{}/readyz", server.base)).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    let metrics = http
        .get(format!("{}/metrics", server.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("dyad_messages_stored_total 1"), "{metrics}");
    assert!(metrics.contains("dyad_connections 1"), "{metrics}");
    assert!(metrics.contains("dyad_send_ack_seconds_count 1"), "{metrics}");
    assert!(
        metrics.contains("dyad_connections_by_state{state=\"live\"} 1"),
        "{metrics}"
    );
    assert!(
        metrics.contains("dyad_connections_by_state{state=\"replaying\"} 0"),
        "{metrics}"
    );
    assert!(metrics.contains("dyad_commit_queue_depth_count "), "{metrics}");
    // Every metric is explained for operators, and the dashboard asks only
    // for metrics that exist.
    let names: Vec<&str> = metrics
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP ")?.split(' ').next())
        .collect();
    assert!(names.len() > 15, "{names:?}");
    let operations = include_str!("../../../../docs/OPERATIONS.md");
    for name in &names {
        assert!(
            operations.contains(&format!("`{name}`")),
            "{name} is not in docs/OPERATIONS.md"
        );
    }
    let dashboard: serde_json::Value =
        serde_json::from_str(include_str!("../../../../docs/grafana-dashboard.json")).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    for panel in panels {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{panel}");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let used: Vec<&str> = expr
                .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("dyad_"))
                .collect();
            assert!(!used.is_empty(), "{expr}");
            for metric in used {
                let base = ["_bucket", "_count", "_sum", "_total"]
                    .iter()
                    .find_map(|suffix| metric.strip_suffix(suffix))
                    .unwrap_or(metric);
                assert!(
                    names.contains(&base),
                    "the dashboard asks for {metric}, which /metrics lacks"
                );
            }
        }
    }
    let missing = http
        .get(format!("{}/api/v1/nothing", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(missing.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn shutdown_acks_what_was_sent_then_closes_with_1001_and_restart_keeps_everything() {
    let server = TestServer::spawn_with(Config {
        rate_limit: 0,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    for i in 0..100 {
        a.send(bob.id, &format!("m{i}"), Some(&format!("k{i}"))).await;
    }
    let first = a.expect_ack().await;
    assert_eq!(first.seq, 1);
    let (db, dir) = server.stop_keep().await;
    // Every send the server read before stopping was acked before the close.
    let mut acks = 1;
    let code = loop {
        match a.next_or_close().await {
            Ok(ServerEvent::MessageAck { .. }) => acks += 1,
            Ok(other) => panic!("{other:?}"),
            Err((code, _)) => break code,
        }
    };
    assert_eq!(code, 1001);

    let server = TestServer::spawn_at(&db, test_config()).await;
    let alice = server.login("alice").await;
    let stored = alice.history(bob.id, &[("limit", "100".into())]).await;
    assert_eq!(
        stored.len(),
        acks,
        "every message read before the stop was stored and acked"
    );
    let mut b = bob_login(&server).await;
    assert_eq!(b.replay().await.len(), stored.len(), "and is pending for bob");
    server.stop().await;
    drop(dir);
}

async fn bob_login(server: &TestServer) -> TestConn {
    server.login("bob").await.connect_raw().await
}

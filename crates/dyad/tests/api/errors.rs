//! Every WebSocket error code: a refused frame stores nothing and the
//! connection stays open.

use std::time::Duration;

use dyad_client::protocol::{ErrorCode, ServerEvent, UserId};
use dyad_server::Config;

use crate::helpers::*;

#[tokio::test]
async fn each_bad_frame_gets_its_error_code_and_the_connection_stays_open() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let bob_id = bob.id.to_string();
    let cases: Vec<(String, ErrorCode, Option<&str>)> = vec![
        ("{not json".into(), ErrorCode::InvalidJson, None),
        ("[1,2]".into(), ErrorCode::InvalidPayload, None),
        (
            r#"{"event":"fly_to_the_moon","data":{}}"#.into(),
            ErrorCode::UnknownEvent,
            None,
        ),
        (
            r#"{"event":"send_message","data":{"message":"no recipient","client_msg_id":"k1"}}"#.into(),
            ErrorCode::InvalidPayload,
            Some("k1"),
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{bob_id}","message":42,"client_msg_id":"k2"}}}}"#
            ),
            ErrorCode::InvalidPayload,
            Some("k2"),
        ),
        (
            r#"{"event":"send_message","data":{"recipient_id":"u999","message":"hi","client_msg_id":"k3"}}"#.into(),
            ErrorCode::UnknownRecipient,
            Some("k3"),
        ),
        (
            r#"{"event":"send_message","data":{"recipient_id":"garbage","message":"hi","client_msg_id":"k4"}}"#.into(),
            ErrorCode::InvalidPayload,
            Some("k4"),
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{}","message":"me","client_msg_id":"k5"}}}}"#,
                alice.id
            ),
            ErrorCode::UnknownRecipient,
            Some("k5"),
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{bob_id}","message":"   ","client_msg_id":"k6"}}}}"#
            ),
            ErrorCode::EmptyMessage,
            Some("k6"),
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{bob_id}","message":"{}","client_msg_id":"k7"}}}}"#,
                "é".repeat(4097)
            ),
            ErrorCode::MessageTooLong,
            Some("k7"),
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{bob_id}","message":"hi","client_msg_id":"{}"}}}}"#,
                "k".repeat(129)
            ),
            ErrorCode::InvalidPayload,
            None,
        ),
        (
            r#"{"event":"delivery_ack","data":{"message_ids":"m1"}}"#.into(),
            ErrorCode::InvalidPayload,
            None,
        ),
        (
            r#"{"event":"subscribe_presence","data":{}}"#.into(),
            ErrorCode::InvalidPayload,
            None,
        ),
        (
            r#"{"event":"typing","data":{"recipient_id":"u999"}}"#.into(),
            ErrorCode::UnknownRecipient,
            None,
        ),
        (
            format!(
                r#"{{"event":"send_message","data":{{"recipient_id":"{bob_id}","message":"{}"}}}}"#,
                "x".repeat(70_000)
            ),
            ErrorCode::FrameTooLarge,
            None,
        ),
    ];
    for (frame, code, key) in cases {
        a.send_raw(&frame).await;
        let error = a.expect_error(code).await;
        if let Some(key) = key {
            assert_eq!(
                error.client_msg_id.as_deref(),
                Some(key),
                "{code}: client_msg_id echoed"
            );
        }
        assert!(!error.message.is_empty());
    }
    // Exactly 4096 characters is fine, and the connection still works.
    let ok = a.send_and_ack(bob.id, &"é".repeat(4096), "fine").await;
    assert_eq!(ok.seq, 1, "nothing refused was stored");
    assert_eq!(alice.history(bob.id, &[]).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn frames_far_over_the_limit_close_the_connection_with_1009() {
    let server = TestServer::spawn_with(Config {
        max_frame_bytes: 1024,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    a.send_raw(&"x".repeat(10_000)).await;
    assert_eq!(a.expect_close().await, 1009);
    b.expect_silence(Duration::from_millis(100)).await; // others are untouched
    server.stop().await;
}

#[tokio::test]
async fn flood_control_refuses_with_retry_after_and_counts_all_connections() {
    let server = TestServer::spawn_with(Config {
        rate_limit: 20,
        rate_burst: 40,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a1 = alice.connect().await;
    let mut a2 = alice.connect().await;
    for i in 0..30 {
        a1.send(bob.id, "burst", Some(&format!("a{i}"))).await;
    }
    for i in 0..15 {
        a2.send(bob.id, "burst", Some(&format!("b{i}"))).await;
    }
    let (mut acked, mut limited) = (0, 0);
    let mut retry = 0;
    for (conn, expected) in [(&mut a1, 30), (&mut a2, 15)] {
        let mut answered = 0;
        while answered < expected {
            match conn.next().await {
                ServerEvent::MessageAck { .. } => acked += 1,
                ServerEvent::Error(e) if e.code == ErrorCode::RateLimited => {
                    assert!(e.client_msg_id.is_some());
                    retry = e.retry_after_ms.expect("retry_after_ms");
                    limited += 1;
                }
                ServerEvent::ReceiveMessage(_) => continue, // carbons of the other connection
                other => panic!("{other:?}"),
            }
            answered += 1;
        }
    }
    assert!(
        (40..=42).contains(&acked),
        "the burst of 40 passes (plus refill), got {acked}"
    );
    assert_eq!(acked + limited, 45);
    assert!(retry > 0 && retry <= 50, "retry_after_ms {retry}");
    // After waiting as told, sending works again.
    tokio::time::sleep(Duration::from_millis(retry + 10)).await;
    let mut a3 = alice.connect().await;
    a3.send_and_ack(bob.id, "patient", "later").await;
    server.stop().await;
}

#[tokio::test]
async fn storage_that_is_down_gets_unavailable_and_nothing_is_acked() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    // Another process holds SQLite's write lock: the writer cannot commit.
    let lock = rusqlite::Connection::open(&server.db_path).unwrap();
    lock.execute_batch("BEGIN IMMEDIATE").unwrap();
    a.send(bob.id, "into the void", Some("k")).await;
    let refused = tokio::time::timeout(Duration::from_secs(15), a.0.next_event())
        .await
        .unwrap()
        .unwrap();
    match refused {
        ServerEvent::Error(e) => {
            assert_eq!(e.code, ErrorCode::Unavailable);
            assert_eq!(e.client_msg_id.as_deref(), Some("k"));
        }
        other => panic!("{other:?}"),
    }
    lock.execute_batch("ROLLBACK").unwrap();
    // Once storage is back, the same key goes through, once.
    let ack = a.send_and_ack(bob.id, "into the void", "k").await;
    assert_eq!(ack.seq, 1);
    let unknown = alice.client.status(UserId(999)).await;
    assert!(unknown.is_err());
    assert_eq!(alice.history(bob.id, &[]).await.len(), 1);
    server.stop().await;
}

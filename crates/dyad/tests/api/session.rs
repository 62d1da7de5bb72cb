//! The client crate's self-healing session against real server restarts.

use std::time::Duration;

use dyad_client::{ChatSession, SessionEvent, SessionOptions};

use crate::helpers::*;

async fn next(session: &mut ChatSession) -> SessionEvent {
    tokio::time::timeout(WAIT, session.next())
        .await
        .expect("no session event in time")
        .expect("session ended")
}

/// The next event that is not connection bookkeeping.
async fn next_news(session: &mut ChatSession) -> SessionEvent {
    loop {
        match next(session).await {
            SessionEvent::Connected { .. }
            | SessionEvent::Disconnected { .. }
            | SessionEvent::PendingComplete { .. } => {}
            other => return other,
        }
    }
}

fn fast() -> SessionOptions {
    SessionOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(400),
        ..Default::default()
    }
}

#[tokio::test]
async fn messages_written_while_the_server_is_down_go_out_once_it_is_back() {
    let server = TestServer::spawn().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = ChatSession::start(alice.client.clone(), fast());
    let mut b = ChatSession::start(bob.client.clone(), fast());
    assert!(matches!(next(&mut a).await, SessionEvent::Connected { .. }));
    assert!(matches!(next(&mut b).await, SessionEvent::Connected { .. }));

    let first = a.send(bob.id, "before").unwrap();
    match next_news(&mut a).await {
        SessionEvent::Sent { client_msg_id, seq, .. } => assert_eq!((client_msg_id, seq), (first, 1)),
        other => panic!("{other:?}"),
    }
    let SessionEvent::Message(m) = next_news(&mut b).await else {
        panic!()
    };
    assert_eq!(m.message, "before");
    // Bob's session acknowledged it by itself.
    assert!(
        matches!(next_news(&mut a).await, SessionEvent::Delivered { message_id, .. } if message_id == m.message_id)
    );

    // The server goes away; Alice keeps writing.
    let (db, dir) = server.stop_keep().await;
    let during = a.send(bob.id, "during").unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let server = TestServer::spawn_on(&addr, &db, test_config()).await;

    match next_news(&mut a).await {
        SessionEvent::Sent { client_msg_id, seq, .. } => assert_eq!((client_msg_id, seq), (during, 2)),
        other => panic!("{other:?}"),
    }
    let SessionEvent::Message(m) = next_news(&mut b).await else {
        panic!()
    };
    assert_eq!((m.message.as_str(), m.seq), ("during", 2));
    assert_eq!(bob.history(alice.id, &[]).await.len(), 2, "stored once");
    server.stop().await;
    drop(dir);
}

#[tokio::test]
async fn replayed_duplicates_are_dropped_and_unacked_resends_are_not_stored_twice() {
    let server = TestServer::spawn().await;
    let addr = server.base.trim_start_matches("http://").to_owned();
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let manual = SessionOptions {
        auto_ack: false,
        ..fast()
    };
    let mut b = ChatSession::start(bob.client.clone(), manual);
    assert!(matches!(next(&mut b).await, SessionEvent::Connected { .. }));
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "one", "k1").await;
    let SessionEvent::Message(m) = next_news(&mut b).await else {
        panic!()
    };

    // Bob never acked, so a restart replays it: the session must not show it again.
    let (db, dir) = server.stop_keep().await;
    let server = TestServer::spawn_on(&addr, &db, test_config()).await;
    let mut a = server.login("alice").await.connect().await;
    a.send_and_ack(bob.id, "two", "k2").await;
    let SessionEvent::Message(next_message) = next_news(&mut b).await else {
        panic!()
    };
    assert_eq!(
        next_message.message, "two",
        "the replayed duplicate of {} was dropped",
        m.message_id
    );

    b.ack(vec![m.message_id, next_message.message_id]).unwrap();
    // Alice's new connection saw only "two" being sent, so only its tick comes live;
    // history shows both delivered.
    assert_eq!(a.expect_delivered().await, next_message.message_id);
    let stored = bob.history(alice.id, &[]).await;
    assert!(
        stored
            .iter()
            .all(|m| m.status == dyad_client::protocol::MessageStatus::Delivered),
        "{stored:?}"
    );
    server.stop().await;
    drop(dir);
}

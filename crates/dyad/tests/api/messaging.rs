//! Sending, acks, delivery, carbons, idempotency, order, replay.

use std::time::Duration;

use dyad_client::protocol::{MessageStatus, ServerEvent};
use dyad_server::Config;

use crate::helpers::*;

#[tokio::test]
async fn a_message_is_acked_received_and_marked_delivered() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;

    a.send(bob.id, "hello bob", Some("k1")).await;
    let ack = a.expect_ack().await;
    assert_eq!(ack.client_msg_id.as_deref(), Some("k1"));
    assert_eq!(ack.seq, 1);

    let got = b.expect_message().await;
    assert_eq!(
        (got.message_id, got.sender_id, got.recipient_id),
        (ack.message_id, alice.id, bob.id)
    );
    assert_eq!(
        (got.message.as_str(), got.seq, got.timestamp),
        ("hello bob", 1, ack.timestamp)
    );
    assert_eq!(got.status, MessageStatus::Sent);

    let stored = alice.history(bob.id, &[]).await;
    assert_eq!(
        stored[0].status,
        MessageStatus::Sent,
        "not delivered before the recipient acks"
    );

    b.ack(vec![got.message_id]).await;
    assert_eq!(a.expect_delivered().await, ack.message_id);
    let stored = alice.history(bob.id, &[]).await;
    assert_eq!(stored[0].status, MessageStatus::Delivered);

    // A second ack changes nothing and notifies nobody.
    b.ack(vec![got.message_id]).await;
    a.expect_silence(Duration::from_millis(200)).await;
    server.stop().await;
}

#[tokio::test]
async fn acks_for_messages_the_caller_did_not_receive_are_ignored() {
    let server = TestServer::spawn().await;
    let (alice, bob, eve) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("eve").await,
    );
    let mut a = alice.connect().await;
    let mut e = eve.connect().await;
    let ack = a.send_and_ack(bob.id, "for bob only", "k").await;
    e.ack(vec![ack.message_id]).await;
    // The sender acking its own message does not count either.
    a.ack(vec![ack.message_id]).await;
    a.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(alice.history(bob.id, &[]).await[0].status, MessageStatus::Sent);
    server.stop().await;
}

#[tokio::test]
async fn every_device_of_both_users_sees_the_conversation() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let alice_phone = server.login("alice").await;
    let mut a1 = alice.connect().await;
    let mut a2 = alice_phone.connect().await;
    let mut b1 = bob.connect().await;
    let mut b2 = bob.connect().await;

    let ack = a1.send_and_ack(bob.id, "to all of bob", "m1").await;
    let carbon = a2.expect_message().await;
    assert_eq!(
        (carbon.message_id, carbon.sender_id),
        (ack.message_id, alice.id),
        "carbon to the other device"
    );
    assert_eq!(b1.expect_message().await.message_id, ack.message_id);
    assert_eq!(b2.expect_message().await.message_id, ack.message_id);
    a1.expect_silence(Duration::from_millis(100)).await; // no carbon to the sending connection

    b2.ack(vec![ack.message_id]).await;
    assert_eq!(a1.expect_delivered().await, ack.message_id);
    assert_eq!(a2.expect_delivered().await, ack.message_id);
    server.stop().await;
}

#[tokio::test]
async fn a_retried_client_msg_id_is_stored_once_and_answered_with_the_original() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    let first = a.send_and_ack(bob.id, "once", "retry-me").await;
    let again = a.send_and_ack(bob.id, "once", "retry-me").await;
    assert_eq!(
        (again.message_id, again.seq, again.timestamp),
        (first.message_id, first.seq, first.timestamp)
    );
    // A retry on another connection, even with other text, is the same message.
    let mut a2 = alice.connect().await;
    let third = a2.send_and_ack(bob.id, "changed text", "retry-me").await;
    assert_eq!(third.message_id, first.message_id);

    assert_eq!(b.expect_message().await.message_id, first.message_id);
    b.expect_silence(Duration::from_millis(200)).await; // the retries were not delivered again
    assert_eq!(alice.history(bob.id, &[]).await.len(), 1);

    // Another sender may use the same key for its own message.
    let mut bb = bob.connect_raw().await;
    let _ = bb.replay().await;
    let bobs = bb.send_and_ack(alice.id, "mine", "retry-me").await;
    assert_ne!(bobs.message_id, first.message_id);
    assert_eq!(bobs.seq, 2);
    server.stop().await;
}

#[tokio::test]
async fn a_retry_after_delivery_is_told_it_was_delivered() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    let ack = a.send_and_ack(bob.id, "hi", "k").await;
    let got = b.expect_message().await;
    b.ack(vec![got.message_id]).await;
    assert_eq!(a.expect_delivered().await, ack.message_id);
    // A new connection retries (say it never saw the ack).
    let mut a2 = alice.connect().await;
    assert_eq!(a2.send_and_ack(bob.id, "hi", "k").await.message_id, ack.message_id);
    assert_eq!(a2.expect_delivered().await, ack.message_id);
    server.stop().await;
}

#[tokio::test]
async fn two_concurrent_senders_get_one_gap_free_order() {
    let server = TestServer::spawn_with(Config {
        rate_limit: 0,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let a = alice.connect().await;
    let b = bob.connect().await;
    let mut watcher = alice.connect().await;
    const EACH: usize = 200;

    let (a_id, b_id) = (alice.id, bob.id);
    let send_all = |mut conn: TestConn, to, tag: &'static str| async move {
        for i in 0..EACH {
            conn.send(to, &format!("{tag}{i}"), Some(&format!("{tag}{i}"))).await;
        }
        conn
    };
    let (mut a, mut b) = tokio::join!(send_all(a, b_id, "a"), send_all(b, a_id, "b"));

    // Each sender's own messages get increasing seq in the order it sent them.
    let mut seqs = Vec::new();
    for conn in [&mut a, &mut b] {
        let mut last_seq = 0;
        let mut acks = 0;
        while acks < EACH {
            match conn.next().await {
                ServerEvent::MessageAck { seq, .. } => {
                    assert!(seq > last_seq, "acks of one connection in send order");
                    last_seq = seq;
                    seqs.push(seq);
                    acks += 1;
                }
                ServerEvent::ReceiveMessage(_) => {}
                other => panic!("unexpected {other:?}"),
            }
        }
    }
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=(2 * EACH) as i64).collect::<Vec<_>>(),
        "seq from 1, no gaps, no repeats"
    );

    // A third connection sees the whole conversation in seq order.
    let mut last = (0, 0);
    for _ in 0..2 * EACH {
        let m = watcher.expect_message().await;
        assert_eq!(m.seq, last.0 + 1, "in seq order");
        assert!(m.timestamp > last.1, "timestamp strictly increases with seq");
        last = (m.seq, m.timestamp);
    }
    let page = alice.history(bob.id, &[("limit", "100".into())]).await;
    assert_eq!(page[0].seq, (2 * EACH) as i64);
    server.stop().await;
}

#[tokio::test]
async fn an_offline_recipient_gets_pending_messages_oldest_first_on_connect() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut acks = Vec::new();
    for i in 0..5 {
        acks.push(
            a.send_and_ack(bob.id, &format!("while you were out {i}"), &format!("k{i}"))
                .await
                .message_id,
        );
    }
    let mut b = bob.connect_raw().await;
    let replayed = b.replay().await;
    assert_eq!(replayed.iter().map(|m| m.message_id).collect::<Vec<_>>(), acks);
    assert_eq!(replayed.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3, 4, 5]);

    // Live messages follow the replay.
    let live = a.send_and_ack(bob.id, "now live", "k5").await;
    assert_eq!(b.expect_message().await.message_id, live.message_id);
    server.stop().await;
}

#[tokio::test]
async fn unacknowledged_messages_are_delivered_again_on_the_next_connection() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    let one = a.send_and_ack(bob.id, "one", "1").await;
    let two = a.send_and_ack(bob.id, "two", "2").await;
    assert_eq!(b.expect_message().await.message_id, one.message_id);
    assert_eq!(b.expect_message().await.message_id, two.message_id);
    b.ack(vec![one.message_id]).await;
    assert_eq!(a.expect_delivered().await, one.message_id);
    drop(b);

    // Only the unacknowledged one comes again; then an ack ends it.
    let mut b = bob.connect_raw().await;
    let again = b.replay().await;
    assert_eq!(
        again.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        vec![two.message_id]
    );
    b.ack(vec![two.message_id]).await;
    assert_eq!(a.expect_delivered().await, two.message_id);
    let mut b = bob.connect().await; // replay now empty (asserted by connect)
    b.expect_silence(Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test]
async fn messages_sent_during_a_replay_arrive_after_it_in_order() {
    let server = TestServer::spawn_with(Config {
        rate_limit: 0,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    for i in 0..600 {
        a.send(bob.id, &format!("backlog {i}"), None).await;
    }
    for _ in 0..600 {
        a.expect_ack().await;
    }
    // Bob connects while Alice keeps sending.
    let sender = tokio::spawn(async move {
        for i in 0..200 {
            a.send(bob.id, &format!("live {i}"), None).await;
        }
        a
    });
    let mut b = bob.connect_raw().await;
    let replayed = b.replay().await;
    let mut a = sender.await.unwrap();
    let mut seqs: Vec<i64> = replayed.iter().map(|m| m.seq).collect();
    while seqs.len() < 800 {
        seqs.push(b.expect_message().await.seq);
    }
    assert_eq!(seqs, (1..=800).collect::<Vec<_>>(), "no gap, no duplicate, in order");
    for _ in 0..200 {
        a.expect_ack().await;
    }
    server.stop().await;
}

#[tokio::test]
async fn a_slow_consumer_is_disconnected_and_loses_nothing() {
    let config = Config {
        rate_limit: 0,
        outbound_queue: 16,
        ..test_config()
    };
    let server = TestServer::spawn_with(config).await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await; // and then never reads
    let text = "x".repeat(4000);
    const COUNT: usize = 1500;
    // Alice reads her acks as she goes (else she would be the slow one).
    for chunk in 0..COUNT / 100 {
        for i in 0..100 {
            a.send(bob.id, &text, Some(&(chunk * 100 + i).to_string())).await;
        }
        for _ in 0..100 {
            a.expect_ack().await;
        }
    }
    // Alice is unaffected; Bob's connection was cut and everything waits for him.
    let mut received = 0;
    let code = loop {
        match b.next_or_close().await {
            Ok(ServerEvent::ReceiveMessage(_)) => received += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err((code, _)) => break code,
        }
    };
    assert_eq!(code, 1013, "closed as a slow consumer");
    assert!(received < COUNT);
    let mut b = bob.connect_raw().await;
    assert_eq!(b.replay().await.len(), COUNT);
    server.stop().await;
}

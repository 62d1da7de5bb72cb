//! Blocking: while either user blocks the other, neither can send, typing
//! is not relayed, and each sees the other offline; unblocking restores it
//! all, and history stays readable throughout.

use std::time::Duration;

use dyad_client::protocol::events::PresenceStatus;
use dyad_client::protocol::{ClientEvent, ErrorCode, ServerEvent, UserId};

use crate::helpers::*;

async fn subscribe(conn: &mut TestConn, user: UserId) {
    conn.0
        .send(&ClientEvent::SubscribePresence { user_ids: vec![user] })
        .await
        .unwrap();
}

#[tokio::test]
async fn a_block_holds_on_every_path_until_it_is_lifted() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    let first = a.send_and_ack(bob.id, "before", "k1").await;
    assert_eq!(b.expect_message().await.message_id, first.message_id);
    subscribe(&mut a, bob.id).await;
    assert_eq!(a.expect_presence().await.status, PresenceStatus::Online);

    // Bob blocks Alice: she sees him go offline, never seen.
    bob.client.block(alice.id).await.unwrap();
    bob.client.block(alice.id).await.unwrap(); // idempotent
    let hidden = a.expect_presence().await;
    assert_eq!((hidden.status, hidden.last_seen), (PresenceStatus::Offline, None));
    let listed = bob.client.blocks().await.unwrap().blocks;
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].user_id, listed[0].username.as_str()), (alice.id, "alice"));
    assert!(alice.client.blocks().await.unwrap().blocks.is_empty(), "one-sided");

    // Neither can send; nothing is stored.
    a.send(bob.id, "blocked", Some("k2")).await;
    let refused = a.expect_error(ErrorCode::Blocked).await;
    assert_eq!(refused.client_msg_id.as_deref(), Some("k2"));
    b.send(alice.id, "me neither", Some("k3")).await;
    b.expect_error(ErrorCode::Blocked).await;
    // A retry of what was stored before is still answered as stored.
    assert_eq!(
        a.send_and_ack(bob.id, "before", "k1").await.message_id,
        first.message_id
    );
    assert_eq!(alice.history(bob.id, &[]).await.len(), 1, "history stays readable");

    // Typing is not relayed, either way; presence is hidden both ways.
    a.0.send(&ClientEvent::Typing { recipient_id: bob.id }).await.unwrap();
    b.0.send(&ClientEvent::Typing { recipient_id: alice.id }).await.unwrap();
    // Frames are handled in order: each silence check's ping fences the
    // typing sent on that connection before it.
    a.expect_silence(Duration::from_millis(50)).await;
    b.expect_silence(Duration::from_millis(50)).await;
    a.expect_silence(Duration::from_millis(50)).await;
    for (viewer, other) in [(&alice, bob.id), (&bob, alice.id)] {
        let status = viewer.client.status(other).await.unwrap();
        assert_eq!((status.status, status.last_seen), (PresenceStatus::Offline, None));
    }

    // Bad targets.
    assert_eq!(
        api_error(bob.client.block(bob.id).await),
        (400, ErrorCode::InvalidParameter)
    );
    assert_eq!(
        api_error(bob.client.block(UserId(4242)).await),
        (404, ErrorCode::UserNotFound)
    );

    // Unblocking restores it all.
    bob.client.unblock(alice.id).await.unwrap();
    bob.client.unblock(alice.id).await.unwrap(); // idempotent
    assert_eq!(a.expect_presence().await.status, PresenceStatus::Online);
    let after = a.send_and_ack(bob.id, "after", "k4").await;
    assert_eq!(after.seq, 2);
    assert_eq!(b.expect_message().await.message_id, after.message_id);
    a.0.send(&ClientEvent::Typing { recipient_id: bob.id }).await.unwrap();
    assert!(matches!(b.next().await, ServerEvent::Typing { sender_id } if sender_id == alice.id));
    assert!(bob.client.blocks().await.unwrap().blocks.is_empty());
    server.stop().await;
}

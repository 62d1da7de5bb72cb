//! Presence over real sockets: subscriptions, the grace period, last_seen,
//! typing. (When the grace period ends, flapping, several devices and
//! several nodes, with paused time: the hub's own tests.)

use std::time::Duration;

use dyad_client::protocol::events::PresenceStatus;
use dyad_client::protocol::{ClientEvent, ServerEvent, UserId};
use dyad_server::Config;
use dyad_server::clock::now_ms;

use crate::helpers::*;

async fn subscribe(conn: &mut TestConn, users: Vec<UserId>) {
    conn.0
        .send(&ClientEvent::SubscribePresence { user_ids: users })
        .await
        .unwrap();
}

#[tokio::test]
async fn watchers_see_online_then_offline_after_the_grace_period() {
    let server = TestServer::spawn_with(Config {
        presence_grace: Duration::from_millis(30),
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    subscribe(&mut a, vec![bob.id]).await;
    let now = a.expect_presence().await;
    assert_eq!(
        (now.user_id, now.status, now.last_seen),
        (bob.id, PresenceStatus::Offline, None)
    );

    let b = bob.connect().await;
    let online = a.expect_presence().await;
    assert_eq!((online.status, online.last_seen), (PresenceStatus::Online, None));
    assert_eq!(
        alice.client.status(bob.id).await.unwrap().status,
        PresenceStatus::Online
    );

    let closed_before = now_ms();
    b.0.close().await.unwrap();
    // Offline once the grace period is over, last seen when the connection
    // closed (not when the grace ended).
    let offline = a.expect_presence().await;
    assert_eq!(offline.status, PresenceStatus::Offline);
    let seen = offline.last_seen.unwrap();
    assert!(
        seen >= closed_before - 5 && seen < closed_before + 300,
        "last_seen {seen} vs close {closed_before}"
    );
    let status = alice.client.status(bob.id).await.unwrap();
    assert_eq!((status.status, status.last_seen), (PresenceStatus::Offline, Some(seen)));
    server.stop().await;
}

#[tokio::test]
async fn unsubscribed_and_unknown_users_send_nothing() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    subscribe(&mut a, vec![UserId(4242)]).await;
    subscribe(&mut a, vec![bob.id]).await;
    assert_eq!(
        a.expect_presence().await.user_id,
        bob.id,
        "no event for the unknown user"
    );
    a.0.send(&ClientEvent::UnsubscribePresence { user_ids: vec![bob.id] })
        .await
        .unwrap();
    // Bob's arrival was announced before his `connected` went out, and the
    // pong that ends the silence queues behind anything sent to Alice.
    let _b = bob.connect().await;
    a.expect_silence(Duration::from_millis(50)).await;
    server.stop().await;
}

#[tokio::test]
async fn the_status_call_answers_for_any_user_and_404_for_none() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let never = alice.client.status(bob.id).await.unwrap();
    assert_eq!(
        (never.user_id, never.status, never.last_seen),
        (bob.id, PresenceStatus::Offline, None)
    );
    match alice.client.status(UserId(777)).await {
        Err(dyad_client::ClientError::Api { status: 404, .. }) => {}
        other => panic!("{other:?}"),
    }
    server.stop().await;
}

#[tokio::test]
async fn typing_is_relayed_to_every_device_of_the_recipient_and_never_stored() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let mut b1 = bob.connect().await;
    let mut b2 = bob.connect().await;
    a.0.send(&ClientEvent::Typing { recipient_id: bob.id }).await.unwrap();
    for b in [&mut b1, &mut b2] {
        match b.next().await {
            ServerEvent::Typing { sender_id } => assert_eq!(sender_id, alice.id),
            other => panic!("{other:?}"),
        }
    }
    assert!(alice.history(bob.id, &[]).await.is_empty());
    // A flood of typing events is cut down, not passed on. Frames are
    // handled in order: once Alice has her pong, every relay is queued for
    // Bob, ahead of the pong he asks for next. No clock is waited on.
    for _ in 0..200 {
        a.0.send(&ClientEvent::Typing { recipient_id: bob.id }).await.unwrap();
    }
    a.0.send(&ClientEvent::Ping {}).await.unwrap();
    while !matches!(a.next().await, ServerEvent::Pong {}) {}
    b1.0.send(&ClientEvent::Ping {}).await.unwrap();
    let mut relayed = 0;
    loop {
        match b1.next().await {
            ServerEvent::Typing { .. } => relayed += 1,
            ServerEvent::Pong {} => break,
            other => panic!("{other:?}"),
        }
    }
    assert!((5..=20).contains(&relayed), "relayed {relayed} of 200");
    server.stop().await;
}

#[tokio::test]
async fn each_user_decides_who_sees_them_online() {
    use dyad_client::protocol::rest::{PresenceVisibility, Settings, SettingsPatch};
    let server = TestServer::spawn().await;
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    assert_eq!(alice.client.settings().await.unwrap(), Settings::default());
    let set = |presence| SettingsPatch {
        presence: Some(presence),
        ..SettingsPatch::default()
    };
    // Bob is a contact (they have a conversation); Carol is not.
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "hi", "k").await;
    let after = alice
        .client
        .update_settings(&set(PresenceVisibility::Nobody))
        .await
        .unwrap();
    assert_eq!(
        (after.presence, after.read_receipts),
        (PresenceVisibility::Nobody, true)
    );

    let hidden = (PresenceStatus::Offline, None);
    let status = bob.client.status(alice.id).await.unwrap();
    assert_eq!((status.status, status.last_seen), hidden, "nobody: not even a contact");
    assert_eq!(
        alice.client.status(alice.id).await.unwrap().status,
        PresenceStatus::Online,
        "but herself"
    );
    let (mut b, mut c) = (bob.connect_raw().await, carol.connect().await);
    b.replay().await; // "hi"
    for conn in [&mut b, &mut c] {
        subscribe(conn, vec![alice.id]).await;
        let view = conn.expect_presence().await;
        assert_eq!((view.status, view.last_seen), hidden);
    }
    // Her coming and going is not told either.
    a.0.close().await.unwrap();
    let _a = alice.connect().await;
    b.expect_silence(Duration::from_millis(50)).await;

    // Contacts: Bob now sees her, at once; Carol still does not.
    alice
        .client
        .update_settings(&set(PresenceVisibility::Contacts))
        .await
        .unwrap();
    assert_eq!(b.expect_presence().await.status, PresenceStatus::Online);
    assert_eq!(
        bob.client.status(alice.id).await.unwrap().status,
        PresenceStatus::Online
    );
    let status = carol.client.status(alice.id).await.unwrap();
    assert_eq!((status.status, status.last_seen), hidden);
    c.expect_silence(Duration::from_millis(50)).await;

    // Everyone.
    alice
        .client
        .update_settings(&set(PresenceVisibility::Everyone))
        .await
        .unwrap();
    assert_eq!(c.expect_presence().await.status, PresenceStatus::Online);
    assert_eq!(
        carol.client.status(alice.id).await.unwrap().status,
        PresenceStatus::Online
    );

    // Bad values change nothing.
    for bad in [
        r#"{"presence":"friends"}"#,
        r#"{"colour":"blue"}"#,
        r#"{"read_receipts":"yes"}"#,
    ] {
        let response = reqwest::Client::new()
            .patch(format!("{}/api/v1/users/me/settings", server.base))
            .bearer_auth(alice.client.token().unwrap())
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{bad}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "invalid_parameter", "{bad}");
    }
    assert_eq!(
        alice.client.settings().await.unwrap().presence,
        PresenceVisibility::Everyone
    );
    server.stop().await;
}

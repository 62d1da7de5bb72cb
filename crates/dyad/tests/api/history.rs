//! History pages and the conversation list.

use dyad_client::ClientError;
use dyad_client::protocol::{ErrorCode, UserId};

use crate::helpers::*;

#[tokio::test]
async fn history_pages_backwards_with_before_and_forwards_with_after() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    for i in 1..=25 {
        a.send_and_ack(bob.id, &format!("m{i}"), &format!("k{i}")).await;
    }
    let default = alice.history(bob.id, &[]).await;
    assert_eq!(default.len(), 25, "default limit 50 covers all");
    assert_eq!(default[0].message, "m25", "newest first");

    // Walk back in pages of 10.
    let seen: Vec<i64> = history_in_pages(&alice.client, bob.id, 10)
        .await
        .into_iter()
        .map(|(_, seq, _)| seq)
        .collect();
    assert_eq!(seen, (1..=25).rev().collect::<Vec<i64>>());

    // Bob reads the same conversation; `after` gives oldest first.
    let page = bob
        .client
        .history(
            alice.id,
            &[("after", default[20].timestamp.to_string()), ("limit", "3".into())],
        )
        .await
        .unwrap();
    assert_eq!(page.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![6, 7, 8]);
    assert!(page.has_more);
    let last = bob
        .client
        .history(alice.id, &[("after", default[1].timestamp.to_string())])
        .await
        .unwrap();
    assert_eq!(last.messages.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![25]);
    assert!(!last.has_more);
    server.stop().await;
}

#[tokio::test]
async fn bad_parameters_and_unknown_users_are_refused() {
    let server = TestServer::spawn().await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    for query in [
        vec![("limit", "0".to_owned())],
        vec![("limit", "101".to_owned())],
        vec![("limit", "ten".to_owned())],
        vec![("limit", "1.5".to_owned())],
        vec![("before", "yesterday".to_owned())],
        vec![("before", "1".to_owned()), ("after", "1".to_owned())],
    ] {
        match alice.client.history(bob.id, &query).await {
            Err(ClientError::Api {
                status: 400,
                code: ErrorCode::InvalidParameter,
                ..
            }) => {}
            other => panic!("{query:?}: {other:?}"),
        }
    }
    match alice.client.history(UserId(999), &[]).await {
        Err(ClientError::Api {
            status: 404,
            code: ErrorCode::UserNotFound,
            ..
        }) => {}
        other => panic!("{other:?}"),
    }
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/api/v1/messages/not-an-id", server.base))
        .bearer_auth(alice.client.token().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    server.stop().await;
}

#[tokio::test]
async fn only_the_two_participants_read_a_conversation() {
    let server = TestServer::spawn().await;
    let (alice, bob, eve) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("eve").await,
    );
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "secret", "k").await;
    // Eve can only ever name the other side of her own conversations.
    assert!(eve.history(bob.id, &[]).await.is_empty());
    assert!(eve.history(alice.id, &[]).await.is_empty());
    assert!(eve.client.conversations().await.unwrap().conversations.is_empty());
    assert_eq!(bob.history(alice.id, &[]).await.len(), 1);
    server.stop().await;
}

#[tokio::test]
async fn the_conversation_list_is_most_recent_first_with_the_last_message() {
    let server = TestServer::spawn().await;
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "to bob", "1").await;
    a.send_and_ack(carol.id, "to carol", "2").await;
    let mut b = bob.connect_raw().await;
    b.replay().await;
    b.send_and_ack(alice.id, "bob again", "3").await;

    let list = alice.client.conversations().await.unwrap().conversations;
    let names: Vec<_> = list.iter().map(|c| c.username.as_str()).collect();
    assert_eq!(names, vec!["bob", "carol"]);
    assert_eq!(list[0].user_id, bob.id);
    assert_eq!(list[0].last_message.message, "bob again");
    assert_eq!(list[0].last_message.sender_id, bob.id);
    assert_eq!(list[1].last_message.message, "to carol");
    let for_carol = carol.client.conversations().await.unwrap().conversations;
    assert_eq!(for_carol.len(), 1);
    assert_eq!(for_carol[0].username, "alice");
    server.stop().await;
}

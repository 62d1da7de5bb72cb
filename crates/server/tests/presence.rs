//! The presence conformance suite: in-process presence and Redis presence
//! must both pass it. Each test takes two fresh nodes of each.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use dyad_protocol::{ConnectionId, UserId};
use dyad_server::presence::{LocalPresence, Presence};

/// Two nodes sharing a fresh presence of each implementation.
async fn presences() -> Vec<(&'static str, [Arc<dyn Presence>; 2])> {
    let local = LocalPresence::new();
    let local: [Arc<dyn Presence>; 2] = [Arc::new(local.another_node()), Arc::new(local)];
    let redis = common::redis_nodes("presence", 2).await.into_iter().map(|s| s.presence);
    let redis: [Arc<dyn Presence>; 2] = redis.collect::<Vec<_>>().try_into().unwrap_or_else(|_| unreachable!());
    vec![("local", local), ("redis", redis)]
}

const U: UserId = UserId(1);
const V: UserId = UserId(2);
const W: UserId = UserId(3);
const C1: ConnectionId = ConnectionId(1);
const C2: ConnectionId = ConnectionId(2);

#[tokio::test]
async fn the_first_connection_anywhere_brings_a_user_online() {
    for (presence, [a, b]) in presences().await {
        assert!(!a.is_online(U).await.unwrap(), "{presence}");
        assert!(a.connected(U, C1).await.unwrap(), "{presence}: first");
        assert!(!a.connected(U, C2).await.unwrap(), "{presence}: another device");
        assert!(!b.connected(U, C1).await.unwrap(), "{presence}: on another node");
        assert!(
            a.is_online(U).await.unwrap() && b.is_online(U).await.unwrap(),
            "{presence}"
        );
        assert_eq!(b.offline_among(&[U, V]).await.unwrap(), vec![V], "{presence}");
    }
}

#[tokio::test]
async fn a_user_is_online_until_the_grace_is_over_with_no_connection_left() {
    for (presence, [a, b]) in presences().await {
        a.connected(U, C1).await.unwrap();
        a.disconnected(U, C1).await.unwrap();
        assert!(b.is_online(U).await.unwrap(), "{presence}: inside the grace");
        assert!(
            a.grace_over(U).await.unwrap(),
            "{presence}: this call took them offline"
        );
        assert!(!b.is_online(U).await.unwrap(), "{presence}");
        assert!(!a.grace_over(U).await.unwrap(), "{presence}: only once");
        assert!(a.connected(U, C1).await.unwrap(), "{presence}: back again");
    }
}

#[tokio::test]
async fn a_connection_anywhere_outlives_the_grace() {
    for (presence, [a, b]) in presences().await {
        a.connected(U, C1).await.unwrap();
        b.connected(U, C1).await.unwrap();
        a.disconnected(U, C1).await.unwrap();
        assert!(!a.grace_over(U).await.unwrap(), "{presence}: still on the other node");
        assert!(a.is_online(U).await.unwrap(), "{presence}");
        // A reconnect inside the grace is no arrival, and outlives it too.
        a.connected(V, C1).await.unwrap();
        a.disconnected(V, C1).await.unwrap();
        assert!(!a.connected(V, C2).await.unwrap(), "{presence}");
        assert!(!a.grace_over(V).await.unwrap(), "{presence}");
        assert!(b.is_online(V).await.unwrap(), "{presence}");
        // Nor is a move to another node.
        a.connected(W, C1).await.unwrap();
        a.disconnected(W, C1).await.unwrap();
        assert!(!b.connected(W, C1).await.unwrap(), "{presence}");
        assert!(!a.grace_over(W).await.unwrap(), "{presence}");
        b.disconnected(W, C1).await.unwrap();
        assert!(
            b.grace_over(W).await.unwrap(),
            "{presence}: gone once the last grace is over"
        );
    }
}

#[tokio::test]
async fn renewing_brings_back_who_had_gone() {
    for (presence, [a, b]) in presences().await {
        a.connected(U, C1).await.unwrap();
        let back = a.renew(&[(U, vec![C1]), (V, vec![C1, C2])]).await.unwrap();
        assert_eq!(back, vec![V], "{presence}: only the one who was gone");
        assert!(b.is_online(V).await.unwrap(), "{presence}");
        assert!(a.renew_every() > Duration::ZERO, "{presence}");
    }
}

#[tokio::test]
async fn a_node_leaving_keeps_its_users_online_for_the_grace_only() {
    for (presence, [a, b]) in presences().await {
        a.connected(U, C1).await.unwrap();
        a.connected(V, C2).await.unwrap();
        b.connected(V, C1).await.unwrap();
        a.leaving(&[U, V], Duration::from_millis(20)).await.unwrap();
        assert!(b.is_online(U).await.unwrap(), "{presence}: inside the grace");
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(!b.is_online(U).await.unwrap(), "{presence}: gone after it");
        assert!(b.is_online(V).await.unwrap(), "{presence}: connected elsewhere");
        assert!(b.connected(U, C2).await.unwrap(), "{presence}: a new arrival");
    }
}

#[tokio::test]
async fn both_answer_a_ping() {
    for (presence, [a, _]) in presences().await {
        a.ping().await.unwrap_or_else(|e| panic!("{presence}: {e}"));
    }
}

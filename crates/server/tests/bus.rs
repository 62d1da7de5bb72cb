//! The bus conformance suite: the in-process bus and the Redis bus must
//! both pass it. Each test takes three fresh nodes of each.
#![allow(clippy::unwrap_used, missing_docs)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use dyad_protocol::{MessageId, UserId};
use dyad_server::bus::{Bus, LocalBus, Payload, Revoked, Topic};
use dyad_server::codec::Frame;
use dyad_server::outbound::Sequenced;
use dyad_store::SessionId;
use tokio::sync::mpsc;

/// One node's bus, and what it has heard.
struct Node {
    bus: Arc<dyn Bus>,
    heard: mpsc::UnboundedReceiver<(Topic, Payload)>,
}

fn started(bus: Arc<dyn Bus>) -> Node {
    let (tx, heard) = mpsc::unbounded_channel();
    bus.start(Arc::new(move |topic, payload| {
        let _ = tx.send((topic, payload));
    }));
    Node { bus, heard }
}

/// Three nodes on a fresh bus of each implementation.
async fn buses() -> Vec<(&'static str, [Node; 3])> {
    let local = LocalBus::new();
    let local = [local.another_node(), local.another_node(), local].map(|b| started(Arc::new(b)));
    let redis = common::redis_nodes("bus", 3).await.into_iter().map(|s| started(s.bus));
    let redis: [Node; 3] = redis.collect::<Vec<_>>().try_into().unwrap_or_else(|_| unreachable!());
    vec![("local", local), ("redis", redis)]
}

/// What `node` hears next, within 5 s.
async fn next(node: &mut Node) -> (Topic, Payload) {
    tokio::time::timeout(Duration::from_secs(5), node.heard.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing heard within 5 s"))
        .unwrap()
}

fn typing(text: &str) -> Payload {
    Payload::Typing(Frame::from(text.to_owned()))
}

/// `from` publishes a fence to `topic`, which `to` holds; `to` must hear it
/// next. Payloads reach a node in the order they were published, so nothing
/// published before the fence can arrive after it.
async fn fence(from: &Node, to: &mut Node, topic: Topic) {
    from.bus.publish(topic, typing("fence"));
    assert_eq!(
        next(to).await,
        (topic, typing("fence")),
        "heard something before the fence"
    );
}

#[tokio::test]
async fn a_payload_reaches_every_other_node_holding_its_topic_and_no_one_else() {
    let (alice, bob) = (Topic::User(UserId(1)), Topic::User(UserId(2)));
    for (bus, [mut a, mut b, mut c]) in buses().await {
        a.bus.hold(alice).await;
        b.bus.hold(alice).await;
        c.bus.hold(bob).await;
        a.bus.publish(alice, typing("hello"));
        assert_eq!(next(&mut b).await, (alice, typing("hello")), "{bus}");
        fence(&b, &mut a, alice).await; // the publisher did not hear itself
        fence(&b, &mut c, bob).await; // nor did a node holding another topic
    }
}

#[tokio::test]
async fn holds_are_counted_and_the_last_release_stops_delivery() {
    let (topic, other) = (Topic::User(UserId(5)), Topic::User(UserId(6)));
    for (bus, [a, mut b, _]) in buses().await {
        b.bus.hold(topic).await;
        b.bus.hold(topic).await;
        b.bus.release(topic);
        a.bus.publish(topic, typing("still held"));
        assert_eq!(next(&mut b).await, (topic, typing("still held")), "{bus}");
        b.bus.release(topic);
        // Holds and releases take effect in order: once this hold is in,
        // so is the release before it.
        b.bus.hold(other).await;
        a.bus.publish(topic, typing("released"));
        fence(&a, &mut b, other).await;
    }
}

#[tokio::test]
async fn every_kind_of_payload_arrives_whole_on_its_topic() {
    let sequenced = |seq| Sequenced {
        peer: UserId(4_611_686_018_427_387_905),
        seq,
        id: MessageId(5_000_000_000_000_000_000),
        ts: 1_796_000_000_000,
        frame: Frame::from(r#"{"event":"receive_message","data":{"body":"tab\there"}}"#),
    };
    let user = UserId(7);
    let all = [
        (Topic::User(user), Payload::Message(sequenced(1))),
        (Topic::User(user), Payload::Delivered(sequenced(1))),
        (Topic::User(user), typing(r#"{"event":"typing"}"#)),
        (
            Topic::Presence(user),
            Payload::Presence {
                online: true,
                frame: Frame::from(r#"{"event":"presence"}"#),
            },
        ),
        (
            Topic::Sessions,
            Payload::Revoked {
                user,
                revoked: Revoked::Session(SessionId(9)),
            },
        ),
        (
            Topic::Sessions,
            Payload::Revoked {
                user,
                revoked: Revoked::Account,
            },
        ),
        (Topic::Presence(user), Payload::Visibility),
        (Topic::User(user), Payload::Blocks),
        (
            Topic::Nodes,
            Payload::NodeLeft {
                grace: Duration::from_secs(30),
            },
        ),
    ];
    for (bus, [a, mut b, _]) in buses().await {
        for topic in [Topic::User(user), Topic::Presence(user), Topic::Sessions, Topic::Nodes] {
            b.bus.hold(topic).await;
        }
        for (topic, payload) in &all {
            a.bus.publish(*topic, payload.clone());
            assert_eq!(&next(&mut b).await, &(*topic, payload.clone()), "{bus}");
        }
    }
}

#[tokio::test]
async fn payloads_from_one_node_arrive_in_the_order_published() {
    let topic = Topic::User(UserId(8));
    for (bus, [a, mut b, _]) in buses().await {
        b.bus.hold(topic).await;
        for n in 0..500 {
            a.bus.publish(topic, typing(&n.to_string()));
        }
        a.bus.flush().await;
        for n in 0..500 {
            assert_eq!(next(&mut b).await, (topic, typing(&n.to_string())), "{bus}");
        }
    }
}

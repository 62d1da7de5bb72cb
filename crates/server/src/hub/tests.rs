//! Presence on one node, with paused time: the grace period passes in
//! an instant, and nothing here depends on how fast the machine is.

use dyad_protocol::events::PresenceStatus;
use dyad_protocol::{MessageId, ServerEvent};
use dyad_store::{SessionId, StoredMessage};

use super::*;
use crate::bus::LocalBus;
use crate::clock::now_ms;
use crate::codec::Frame;
use crate::outbound::Kind;
use crate::presence::LocalPresence;

const GRACE: Duration = Duration::from_secs(30);

struct Fixture {
    hub: Arc<Hub>,
    _dir: tempfile::TempDir,
}

async fn hub() -> Fixture {
    let (mut hubs, dir) = hubs(1).await;
    let hub = hubs.remove(0);
    Fixture { hub, _dir: dir }
}

/// `n` nodes in this process, sharing one store, one in-process presence
/// and one in-process bus: a cluster without Redis.
async fn hubs(n: usize) -> (Vec<Arc<Hub>>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let (presence, bus) = (LocalPresence::new(), LocalBus::new());
    let mut hubs = Vec::new();
    for _ in 0..n {
        let shared = Shared {
            presence: Arc::new(presence.another_node()),
            bus: Arc::new(bus.another_node()),
        };
        let hub = Arc::new(Hub::new(store.clone(), Arc::new(Metrics::default()), GRACE, shared));
        hub.start(|_| {}).await;
        hubs.push(hub);
    }
    (hubs, dir)
}

/// A connection of `user`, and what it is sent.
async fn connect(hub: &Hub, user: i64) -> (Arc<Peer>, mpsc::Receiver<Outbound>) {
    let (tx, rx) = mpsc::channel(64);
    let session = SessionRecord {
        id: SessionId(user),
        user_id: UserId(user),
        expires_at: i64::MAX,
    };
    let peer = hub.register(session, tx);
    // The marks come from the store's own thread: in real time, or paused
    // time would run ahead to the next timer while it answers.
    tokio::time::resume();
    let attached = hub.attach(&peer).await;
    tokio::time::pause();
    if let Err(e) = attached {
        panic!("{e}");
    }
    (peer, rx)
}

/// The presence events queued for a connection so far.
fn presence_seen(rx: &mut mpsc::Receiver<Outbound>) -> Vec<(PresenceStatus, Option<i64>)> {
    let mut seen = Vec::new();
    while let Ok(item) = rx.try_recv() {
        let frame = item.into_frame();
        if let Ok(ServerEvent::Presence(view)) = serde_json::from_str::<ServerEvent>(frame.as_str()) {
            seen.push((view.status, view.last_seen));
        }
    }
    seen
}

/// Lets the tasks whose timers are due run.
async fn settle() {
    for _ in 0..20 {
        tokio::task::yield_now().await;
    }
}

/// The next presence event, waited for in real time (the offline event
/// follows a write on the store's own thread, which paused time cannot
/// hurry), up to 5 s.
async fn next_presence(rx: &mut mpsc::Receiver<Outbound>) -> (PresenceStatus, Option<i64>) {
    tokio::time::resume();
    let next = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let frame = rx.recv().await?.into_frame();
            if let Ok(ServerEvent::Presence(view)) = serde_json::from_str::<ServerEvent>(frame.as_str()) {
                return Some((view.status, view.last_seen));
            }
        }
    })
    .await;
    tokio::time::pause();
    match next {
        Ok(Some(presence)) => presence,
        other => panic!("no presence event: {other:?}"),
    }
}

#[tokio::test(start_paused = true)]
async fn watchers_see_online_then_offline_once_the_grace_period_is_over() {
    let f = hub().await;
    let (alice, mut seen) = connect(&f.hub, 1).await;
    f.hub.watch(&alice, UserId(2), true).await;
    let (bob, _) = connect(&f.hub, 2).await;
    assert_eq!(presence_seen(&mut seen), vec![(PresenceStatus::Online, None)]);
    let closed_at = now_ms();
    f.hub.unregister(&bob);
    settle().await; // the grace timer starts
    tokio::time::advance(GRACE - Duration::from_secs(1)).await;
    settle().await;
    assert!(
        presence_seen(&mut seen).is_empty(),
        "still online within the grace period"
    );
    assert!(f.hub.is_online(UserId(2)));
    tokio::time::advance(Duration::from_secs(2)).await;
    let (status, last_seen) = next_presence(&mut seen).await;
    assert_eq!(status, PresenceStatus::Offline);
    // Last seen when the connection closed, not when the grace ended.
    let last_seen = last_seen.unwrap_or_default();
    assert!(
        (closed_at..closed_at + 1_000).contains(&last_seen),
        "{last_seen} vs {closed_at}"
    );
    assert!(!f.hub.is_online(UserId(2)));
    assert!(presence_seen(&mut seen).is_empty(), "one event");
}

#[tokio::test(start_paused = true)]
async fn a_reconnect_within_the_grace_period_is_not_seen() {
    let f = hub().await;
    let (alice, mut seen) = connect(&f.hub, 1).await;
    f.hub.watch(&alice, UserId(2), true).await;
    let (mut bob, _) = connect(&f.hub, 2).await;
    presence_seen(&mut seen);
    for _ in 0..3 {
        f.hub.unregister(&bob);
        settle().await; // the grace timer starts
        tokio::time::advance(GRACE / 2).await;
        settle().await;
        bob = connect(&f.hub, 2).await.0;
    }
    tokio::time::advance(GRACE * 2).await;
    settle().await;
    assert!(
        presence_seen(&mut seen).is_empty(),
        "flapping inside the grace is invisible"
    );
    f.hub.unregister(&bob);
    settle().await; // the grace timer starts
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    assert_eq!(next_presence(&mut seen).await.0, PresenceStatus::Offline);
    assert!(presence_seen(&mut seen).is_empty(), "one event");
}

#[tokio::test(start_paused = true)]
async fn the_last_of_several_devices_decides() {
    let f = hub().await;
    let (alice, mut seen) = connect(&f.hub, 1).await;
    f.hub.watch(&alice, UserId(2), true).await;
    let (laptop, _) = connect(&f.hub, 2).await;
    let (phone, _) = connect(&f.hub, 2).await;
    assert_eq!(presence_seen(&mut seen), vec![(PresenceStatus::Online, None)]);
    f.hub.unregister(&laptop);
    settle().await; // the grace timer starts
    tokio::time::advance(GRACE * 2).await;
    settle().await;
    assert!(presence_seen(&mut seen).is_empty(), "the phone is still there");
    f.hub.unregister(&phone);
    settle().await; // the grace timer starts
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    assert_eq!(next_presence(&mut seen).await.0, PresenceStatus::Offline);
}

/// Message `seq` from `from` to `to`, as stored.
fn stored(from: i64, to: i64, seq: i64) -> StoredMessage {
    StoredMessage::new(
        MessageId(100 + seq),
        UserId(from),
        UserId(to),
        "hi".into(),
        1_000 + seq,
        seq,
    )
}

/// The ordered items queued for a connection so far: kind, other side and seq.
fn ordered_seen(rx: &mut mpsc::Receiver<Outbound>) -> Vec<(Kind, i64, i64)> {
    let mut seen = Vec::new();
    while let Ok(item) = rx.try_recv() {
        if let Outbound::Ordered(ordered) = item {
            let (kind, s) = *ordered;
            seen.push((kind, s.peer.get(), s.seq));
        }
    }
    seen
}

#[tokio::test(start_paused = true)]
async fn two_nodes_on_one_bus_route_messages_to_each_other() {
    let (hubs, _dir) = hubs(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let (alice, mut alice_seen) = connect(a, 1).await;
    let (_alice_phone, mut phone_seen) = connect(b, 1).await;
    let (_bob, mut bob_seen) = connect(b, 2).await;
    let (_carol, mut carol_seen) = connect(a, 3).await;
    a.route_message(&stored(1, 2, 1), Frame::from("{}"), Some(alice.id));
    assert_eq!(ordered_seen(&mut bob_seen), vec![(Kind::Message, 1, 1)]);
    assert_eq!(
        ordered_seen(&mut phone_seen),
        vec![(Kind::Message, 2, 1)],
        "the sender's other device"
    );
    assert!(ordered_seen(&mut alice_seen).is_empty(), "not the sending connection");
    assert!(ordered_seen(&mut carol_seen).is_empty(), "nobody else");

    let delivered = dyad_store::DeliveredMessage {
        id: MessageId(101),
        sender_id: UserId(1),
        recipient_id: UserId(2),
        seq: 1,
        delivered_at: 2_000,
    };
    b.route_delivered(&delivered, Frame::from("{}"));
    assert_eq!(ordered_seen(&mut alice_seen), vec![(Kind::Delivered, 2, 1)]);
    assert_eq!(ordered_seen(&mut phone_seen), vec![(Kind::Delivered, 2, 1)]);
}

#[tokio::test(start_paused = true)]
async fn presence_spans_nodes_and_a_move_between_them_is_not_seen() {
    let (hubs, _dir) = hubs(2).await;
    let (a, b) = (&hubs[0], &hubs[1]);
    let (alice, mut seen) = connect(a, 1).await;
    a.watch(&alice, UserId(2), true).await;
    let (bob, _) = connect(b, 2).await;
    assert_eq!(presence_seen(&mut seen), vec![(PresenceStatus::Online, None)]);
    assert!(
        a.presence_for(UserId(1), UserId(2)).await.is_ok(),
        "asking does not fail"
    );

    // Bob moves from node b to node a inside the grace period.
    b.unregister(&bob);
    settle().await;
    let (bob, _) = connect(a, 2).await;
    tokio::time::advance(GRACE * 2).await;
    settle().await;
    assert!(presence_seen(&mut seen).is_empty(), "the move is invisible");

    a.unregister(&bob);
    settle().await; // the grace timer starts
    tokio::time::advance(GRACE + Duration::from_secs(1)).await;
    assert_eq!(next_presence(&mut seen).await.0, PresenceStatus::Offline);
    assert!(presence_seen(&mut seen).is_empty(), "one event");
}

#[tokio::test(start_paused = true)]
async fn a_logout_on_one_node_closes_the_session_on_another() {
    let (hubs, _dir) = hubs(2).await;
    let (phone, _) = connect(&hubs[1], 1).await;
    let (other, _) = connect(&hubs[1], 2).await;
    hubs[0].close_revoked(UserId(1), Revoked::Session(SessionId(1)));
    assert_eq!(phone.close_reason(), Some(CloseReason::REVOKED));
    assert_eq!(other.close_reason(), None);
}

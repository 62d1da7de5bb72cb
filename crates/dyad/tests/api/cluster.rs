//! Several nodes on one PostgreSQL and one Redis: users on different nodes
//! see everything as if there were one node; a node killed with kill -9 and a
//! Redis restart lose nothing that was acked.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use dyad_client::Client;
use dyad_client::protocol::events::PresenceStatus;
use dyad_client::protocol::{ClientEvent, ErrorCode, MessageId, ServerEvent, UserId};
use dyad_server::Config;
use dyad_server::config::ClusterConfig;

use crate::helpers::*;

const TTL: Duration = Duration::from_secs(2);

fn redis_url() -> String {
    std::env::var("DYAD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into())
}

/// Keys and channels of their own for each test: Redis channels are shared
/// by every database of a server.
fn prefix() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    format!(
        "dyadtest:{now}:{}:{}:",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

async fn scratch_postgres() -> String {
    dyad_store::testing::scratch_postgres_url()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", dyad_store::testing::postgres_url()))
}

fn node_config(redis: &str, prefix: &str, node: &str) -> Config {
    Config {
        cluster: Some(ClusterConfig {
            redis_url: redis.to_owned(),
            node_id: node.to_owned(),
            prefix: prefix.to_owned(),
            presence_ttl: TTL,
        }),
        rate_limit: 0,
        // Revocations must cross the bus: the store check would hide a loss.
        session_check: Duration::from_secs(3600),
        ..test_config()
    }
}

/// `n` nodes (in this process) on a fresh schema and their own Redis prefix.
async fn nodes(n: usize, redis: &str) -> Vec<TestServer> {
    nodes_via(&vec![redis.to_owned(); n]).await
}

/// One node per Redis URL given (the same Redis, perhaps by different paths).
async fn nodes_via(redis: &[String]) -> Vec<TestServer> {
    nodes_on(&scratch_postgres().await, redis).await
}

/// Like [`nodes_via`], on the PostgreSQL database at `url`.
async fn nodes_on(url: &str, redis: &[String]) -> Vec<TestServer> {
    let prefix = prefix();
    let mut nodes = Vec::new();
    for (i, redis) in redis.iter().enumerate() {
        let config = node_config(redis, &prefix, &format!("n{i}"));
        nodes.push(TestServer::spawn_url("127.0.0.1:0", url, config).await);
    }
    nodes
}

/// A TCP path to `target` that delays every byte by `delay`, both ways, in
/// order: one node's Redis traffic arrives late, so its publications reach
/// the other nodes after later ones from elsewhere.
async fn slow_path(target: &str, delay: Duration) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    async fn pump(mut from: tokio::net::tcp::OwnedReadHalf, mut to: tokio::net::tcp::OwnedWriteHalf, delay: Duration) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
        tokio::spawn(async move {
            while let Some((due, bytes)) = rx.recv().await {
                tokio::time::sleep_until(due).await;
                if to.write_all(&bytes).await.is_err() {
                    return;
                }
            }
        });
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0
                || tx
                    .send((tokio::time::Instant::now() + delay, buf[..n].to_vec()))
                    .is_err()
            {
                return;
            }
        }
    }
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let target = target.to_owned();
    tokio::spawn(async move {
        while let Ok((inbound, _)) = listener.accept().await {
            let Ok(outbound) = tokio::net::TcpStream::connect(&target).await else {
                continue;
            };
            let (in_read, in_write) = inbound.into_split();
            let (out_read, out_write) = outbound.into_split();
            tokio::spawn(pump(in_read, out_write, delay));
            tokio::spawn(pump(out_read, in_write, delay));
        }
    });
    format!("redis://{addr}/")
}

/// The same session, talking to the node at `base`.
fn via(user: &TestUser, base: &str) -> TestUser {
    let client = Client::new(base).with_token(user.client.token().unwrap(), user.id);
    TestUser { client, id: user.id }
}

/// The same session's WebSocket on another node.
async fn on(user: &TestUser, node: &TestServer) -> TestConn {
    via(user, &node.base).connect().await
}

/// `user`'s connection, watching `watched`, who is offline so far.
async fn watching(user: &TestUser, watched: UserId) -> TestConn {
    let mut conn = user.connect().await;
    let subscribe = ClientEvent::SubscribePresence {
        user_ids: vec![watched],
    };
    conn.0.send(&subscribe).await.unwrap();
    assert_eq!(conn.expect_presence().await.status, PresenceStatus::Offline);
    conn
}

/// Reads events until one that `pick` accepts; others are skipped.
async fn until<T>(conn: &mut TestConn, mut pick: impl FnMut(&ServerEvent) -> Option<T>) -> T {
    loop {
        let event = conn.next().await;
        if let Some(t) = pick(&event) {
            return t;
        }
    }
}

#[tokio::test]
async fn three_nodes_serve_two_users_as_if_they_were_one() {
    let nodes = nodes(3, &redis_url()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut bob_b = watching(&bob, alice.id).await;

    let mut alice_a = alice.connect().await;
    let online = bob_b.expect_presence().await;
    assert_eq!((online.user_id, online.status), (alice.id, PresenceStatus::Online));
    let mut alice_c = on(&alice, c).await;

    // A message from node A reaches Bob on B and Alice's other device on C.
    let ack = alice_a.send_and_ack(bob.id, "hello from A", "k1").await;
    assert_eq!(ack.seq, 1);
    let got = bob_b.expect_message().await;
    assert_eq!((got.message_id, got.message.as_str()), (ack.message_id, "hello from A"));
    assert_eq!(alice_c.expect_message().await.message_id, ack.message_id, "carbon on C");

    // Bob's ack on B tells both of Alice's devices.
    bob_b.ack(vec![ack.message_id]).await;
    assert_eq!(alice_a.expect_delivered().await, ack.message_id);
    assert_eq!(alice_c.expect_delivered().await, ack.message_id);

    // Typing and the answer cross nodes too.
    bob_b
        .0
        .send(&ClientEvent::Typing { recipient_id: alice.id })
        .await
        .unwrap();
    for conn in [&mut alice_a, &mut alice_c] {
        assert!(matches!(conn.next().await, ServerEvent::Typing { sender_id } if sender_id == bob.id));
    }
    let answer = bob_b.send_and_ack(alice.id, "hi from B", "k2").await;
    assert_eq!(answer.seq, 2);
    for conn in [&mut alice_a, &mut alice_c] {
        let m = conn.expect_message().await;
        assert_eq!((m.seq, m.message.as_str()), (2, "hi from B"));
    }
    alice_c.ack(vec![answer.message_id]).await;
    assert_eq!(bob_b.expect_delivered().await, answer.message_id);

    // Alice goes offline when her last device, on any node, has gone. (That
    // a device elsewhere outlives the grace, and a move between nodes is
    // invisible: the hub's tests, with paused time, and the presence
    // conformance suite, on Redis.)
    alice_a.0.close().await.unwrap();
    let status = via(&bob, &a.base).client;
    assert_eq!(status.status(alice.id).await.unwrap().status, PresenceStatus::Online);
    let closed_at = dyad_server::clock::now_ms();
    alice_c.0.close().await.unwrap();
    let offline = bob_b.expect_presence().await;
    assert_eq!(offline.status, PresenceStatus::Offline);
    let last_seen = offline.last_seen.unwrap();
    assert!(
        (last_seen - closed_at).abs() < 1000,
        "last_seen is when the last connection closed"
    );
    assert_eq!(status.status(alice.id).await.unwrap().status, PresenceStatus::Offline);

    // Logging out on B closes the session's sockets on A and C.
    let mut alice_a = on(&alice, a).await;
    let mut alice_c = on(&alice, c).await;
    let on_b = via(&alice, &b.base).client;
    on_b.logout().await.unwrap();
    assert_eq!(alice_a.expect_close().await, 1008);
    assert_eq!(alice_c.expect_close().await, 1008);
    // A and C had the session cached: the revocation reached their caches.
    for node in [a, c] {
        let there = via(&alice, &node.base).client;
        assert_eq!(api_error(there.conversations().await), (401, ErrorCode::Unauthorized));
    }

    // Bob deletes his account on A: his socket on B closes, and C, which
    // had his session cached, refuses it.
    via(&bob, &c.base).client.conversations().await.unwrap();
    via(&bob, &a.base).client.delete_account(PASSWORD).await.unwrap();
    assert_eq!(bob_b.expect_close().await, 1008);
    let on_c = via(&bob, &c.base).client;
    assert_eq!(api_error(on_c.conversations().await), (401, ErrorCode::Unauthorized));
    for node in nodes {
        node.stop().await;
    }
}

/// A presence setting changed on one node holds at once for watchers on
/// another: hidden, then shown again.
#[tokio::test]
async fn a_presence_setting_holds_for_watchers_on_other_nodes() {
    use dyad_client::protocol::rest::{PresenceVisibility, SettingsPatch};
    let nodes = nodes(2, &redis_url()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut bob_b = watching(&bob, alice.id).await;
    let _alice_a = alice.connect().await;
    assert_eq!(bob_b.expect_presence().await.status, PresenceStatus::Online);

    let set = |presence| SettingsPatch {
        presence: Some(presence),
        ..SettingsPatch::default()
    };
    alice
        .client
        .update_settings(&set(PresenceVisibility::Nobody))
        .await
        .unwrap();
    let hidden = bob_b.expect_presence().await;
    assert_eq!((hidden.status, hidden.last_seen), (PresenceStatus::Offline, None));
    let status = via(&bob, &b.base).client.status(alice.id).await.unwrap();
    assert_eq!((status.status, status.last_seen), (PresenceStatus::Offline, None));

    alice
        .client
        .update_settings(&set(PresenceVisibility::Everyone))
        .await
        .unwrap();
    assert_eq!(bob_b.expect_presence().await.status, PresenceStatus::Online);
    for node in nodes {
        node.stop().await;
    }
}

/// A block made on one node holds for a connection on another: its send is
/// refused, its typing not relayed, and presence is hidden.
#[tokio::test]
async fn a_block_holds_between_users_on_different_nodes() {
    let nodes = nodes(2, &redis_url()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let (alice, carol) = (a.user("alice").await, a.user("carol").await);
    let bob = b.user("bob").await;
    let mut bob_b = watching(&bob, alice.id).await;
    let mut alice_a = alice.connect().await;
    assert_eq!(bob_b.expect_presence().await.status, PresenceStatus::Online);
    // Alice's connection has typed to Bob before: it knows he exists.
    let typing = ClientEvent::Typing { recipient_id: bob.id };
    alice_a.0.send(&typing).await.unwrap();
    assert!(matches!(bob_b.next().await, ServerEvent::Typing { sender_id } if sender_id == alice.id));

    bob.client.block(alice.id).await.unwrap();
    let hidden = bob_b.expect_presence().await;
    assert_eq!((hidden.status, hidden.last_seen), (PresenceStatus::Offline, None));
    // Node A heard of the block: Alice's typing goes nowhere and her send
    // is refused.
    alice_a.0.send(&typing).await.unwrap();
    alice_a.send(bob.id, "let me explain", Some("k1")).await;
    alice_a.expect_error(ErrorCode::Blocked).await;
    // Carol's message leaves node A after Alice's typing would have: Bob
    // gets it first, so nothing came before it.
    let mut carol_a = carol.connect().await;
    let sent = carol_a.send_and_ack(bob.id, "hello from carol", "k2").await;
    assert_eq!(bob_b.expect_message().await.message_id, sent.message_id);
    let status = via(&alice, &a.base).client.status(bob.id).await.unwrap();
    assert_eq!((status.status, status.last_seen), (PresenceStatus::Offline, None));
    for node in nodes {
        node.stop().await;
    }
}

/// Read marks, edits and deletes made on one node reach every connection of
/// both users on the others, after the message they are about.
#[tokio::test]
async fn reads_edits_and_deletes_cross_nodes_in_order() {
    let nodes = nodes(3, &redis_url()).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut alice_a = alice.connect().await;
    let mut alice_c = on(&alice, c).await;
    let mut bob_b = bob.connect().await;
    let mut bob_c = on(&bob, c).await;
    let m = alice_a.send_and_ack(bob.id, "helo", "k1").await.message_id;
    // Edited at once, from another node than the send's: every connection
    // still sees the message first.
    alice_c.edit(m, "hello").await;
    for conn in [&mut bob_b, &mut bob_c] {
        assert_eq!(conn.expect_message().await.message_id, m);
        assert_eq!(conn.expect_edited().await, (m, "hello".to_owned()));
    }
    assert_eq!(alice_c.expect_message().await.message_id, m, "the carbon");
    assert_eq!(alice_c.expect_edited().await, (m, "hello".to_owned()));
    assert_eq!(alice_a.expect_edited().await, (m, "hello".to_owned()));

    bob_c.read_ack(m).await;
    assert_eq!(alice_a.expect_delivered().await, m);
    let read = (bob.id, alice.id, m, 1);
    assert_eq!(alice_a.expect_read().await, read);
    assert_eq!(
        until(&mut alice_c, |e| matches!(e, ServerEvent::MessageRead { .. })
            .then_some(()))
        .await,
        ()
    );
    assert_eq!(bob_b.expect_read().await, read);
    assert_eq!(bob_c.expect_read().await, read);

    alice_a.delete(m).await;
    for conn in [&mut alice_a, &mut alice_c, &mut bob_b, &mut bob_c] {
        assert_eq!(conn.expect_deleted().await, m);
    }
    let history = via(&bob, &c.base).history(alice.id, &[]).await;
    assert_eq!((history[0].message.as_str(), history[0].deleted), ("", true));
    for node in nodes {
        node.stop().await;
    }
}

/// What one connection saw of the conversation: each `seq` in order, and
/// which of them were its own sends (acks).
#[derive(Default)]
struct Seen {
    received: Vec<i64>,
    acked: Vec<i64>,
    ids: HashSet<MessageId>,
}

async fn watch_until(conn: &mut TestConn, total: i64, seen: &mut Seen) {
    while (seen.received.len() + seen.acked.len()) < total as usize {
        match conn.next().await {
            ServerEvent::ReceiveMessage(m) => {
                assert!(seen.ids.insert(m.message_id), "duplicate {}", m.message_id);
                seen.received.push(m.seq);
            }
            ServerEvent::MessageAck { seq, .. } => seen.acked.push(seq),
            _ => {}
        }
    }
}

#[tokio::test]
async fn both_sending_at_once_through_different_nodes_keep_seq_gap_free_and_in_order() {
    // Node A reaches Redis 20 ms late: its messages reach C behind B's later ones.
    let redis = redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/');
    let slow = slow_path(target, Duration::from_millis(20)).await;
    let nodes = nodes_via(&[slow, redis.clone(), redis]).await;
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut alice_a = alice.connect().await;
    let mut bob_b = bob.connect().await;
    let mut alice_c = on(&alice, c).await;
    const EACH: i64 = 300;
    for i in 0..EACH {
        alice_a.send(bob.id, &format!("a{i}"), Some(&format!("a{i}"))).await;
        bob_b.send(alice.id, &format!("b{i}"), Some(&format!("b{i}"))).await;
    }
    let (mut on_a, mut on_b, mut on_c) = (Seen::default(), Seen::default(), Seen::default());
    tokio::join!(
        watch_until(&mut alice_a, 2 * EACH, &mut on_a),
        watch_until(&mut bob_b, 2 * EACH, &mut on_b),
        watch_until(&mut alice_c, 2 * EACH, &mut on_c),
    );
    for (who, seen) in [("alice on A", &on_a), ("bob on B", &on_b), ("alice on C", &on_c)] {
        assert!(
            seen.received.windows(2).all(|w| w[0] < w[1]),
            "{who}: receive_message out of order"
        );
        let mut all: Vec<i64> = seen.received.iter().chain(&seen.acked).copied().collect();
        all.sort();
        assert_eq!(all, (1..=2 * EACH).collect::<Vec<_>>(), "{who}: every seq once");
    }
    assert_eq!(on_c.received.len() as i64, 2 * EACH, "the other device gets both sides");
    for node in nodes {
        node.stop().await;
    }
}

/// `dyad serve` processes of one cluster.
async fn node_process(url: &str, redis: &str, prefix: &str, node: &str) -> ServerProcess {
    node_process_with(url, redis, prefix, node, TTL, Duration::from_millis(300)).await
}

async fn node_process_with(
    url: &str,
    redis: &str,
    prefix: &str,
    node: &str,
    ttl: Duration,
    grace: Duration,
) -> ServerProcess {
    let ttl = format!("{}ms", ttl.as_millis());
    let grace = format!("{}ms", grace.as_millis());
    ServerProcess::start(&[
        "--database",
        url,
        "--redis",
        redis,
        "--redis-prefix",
        prefix,
        "--node-id",
        node,
        "--presence-ttl",
        &ttl,
        "--presence-grace",
        &grace,
    ])
    .await
}

/// Two real nodes: Bob on A, Alice on B watching him (Alice has seen him
/// online).
async fn bob_on_a_watched_from_b(a: &ServerProcess, b: &ServerProcess) -> (TestUser, TestConn, TestUser, TestConn) {
    let mut alice = Client::new(&b.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let mut bob = Client::new(&a.base);
    let bob_id = bob.register("bob", PASSWORD).await.unwrap().user_id;
    bob.login("bob", PASSWORD).await.unwrap();
    let alice = TestUser {
        id: alice.user_id().unwrap(),
        client: alice,
    };
    let bob = TestUser {
        client: bob,
        id: bob_id,
    };
    let mut alice_b = watching(&alice, bob.id).await;
    let bob_a = bob.connect().await;
    assert_eq!(alice_b.expect_presence().await.status, PresenceStatus::Online);
    (alice, alice_b, bob, bob_a)
}

#[tokio::test]
async fn a_node_killed_with_kill_9_loses_nothing_and_its_users_expire() {
    let (url, redis, prefix) = (scratch_postgres().await, redis_url(), prefix());
    let mut a = node_process(&url, &redis, &prefix, "a").await;
    let b = node_process(&url, &redis, &prefix, "b").await;
    let (_alice, mut alice_b, bob, mut bob_a) = bob_on_a_watched_from_b(&a, &b).await;
    let first = alice_b.send_and_ack(bob.id, "before the crash", "k1").await;
    assert_eq!(bob_a.expect_message().await.message_id, first.message_id);

    // Node A dies with Bob on it (no close, no goodbye).
    a.kill().await;
    let killed_at = Instant::now();
    let second = alice_b.send_and_ack(bob.id, "while bob's node is dead", "k2").await;
    // Bob's presence expires with the TTL (2 s) and Alice is told.
    let offline = until(&mut alice_b, |e| match e {
        ServerEvent::Presence(p) if p.user_id == bob.id => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(offline.status, PresenceStatus::Offline);
    assert!(killed_at.elapsed() < TTL * 4, "offline within about the TTL");

    // Bob reconnects to B: both messages are pending (neither was acked).
    let mut bob_b = via(&bob, &b.base).connect_raw().await;
    let replayed: Vec<MessageId> = bob_b.replay().await.iter().map(|m| m.message_id).collect();
    assert_eq!(replayed, vec![first.message_id, second.message_id]);
    drop(b);
}

#[tokio::test]
async fn a_node_stopped_cleanly_leaves_its_users_online_only_for_the_grace_period() {
    // TTL 30 s: left alone, Bob's presence would outlive the stop by at
    // least 20 s, and B polls the users it watches only every 10 s. Grace
    // 3 s: longer than the stop takes, so the node exits inside it.
    let (ttl, grace) = (Duration::from_secs(30), Duration::from_secs(3));
    let (url, redis, prefix) = (scratch_postgres().await, redis_url(), prefix());
    let mut a = node_process_with(&url, &redis, &prefix, "a", ttl, grace).await;
    let b = node_process_with(&url, &redis, &prefix, "b", ttl, grace).await;
    let (_alice, mut alice_b, bob, mut bob_a) = bob_on_a_watched_from_b(&a, &b).await;
    let mut redis = redis::Client::open(redis.as_str())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let online_key = format!("{prefix}user:online:{}", bob.id.get());
    let before: i64 = redis::cmd("PTTL")
        .arg(&online_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(before > 20_000, "online for {before} ms more before the stop");

    // Bob's client answers the node's close at once, as clients do.
    let bob_closed = tokio::spawn(async move { bob_a.expect_close().await });
    a.terminate().await;
    assert_eq!(bob_closed.await.unwrap(), 1001);
    let stopped_at = Instant::now();
    let left: i64 = redis::cmd("PTTL")
        .arg(&online_key)
        .query_async(&mut redis)
        .await
        .unwrap();
    assert!(
        left <= grace.as_millis() as i64,
        "online for {left} ms more after the stop"
    );
    // A told B it was leaving: B looks again once the grace has passed.
    let offline = until(&mut alice_b, |e| match e {
        ServerEvent::Presence(p) if p.user_id == bob.id => Some(p.clone()),
        _ => None,
    })
    .await;
    assert_eq!(offline.status, PresenceStatus::Offline);
    assert!(
        stopped_at.elapsed() < grace + Duration::from_secs(2),
        "offline after {:?}",
        stopped_at.elapsed()
    );
    drop(b);
}

/// A Redis of the test's own, which it can kill and start again.
struct OwnRedis {
    port: u16,
    child: Option<tokio::process::Child>,
    dir: tempfile::TempDir,
}

impl OwnRedis {
    async fn start() -> OwnRedis {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = OwnRedis {
            port,
            child: None,
            dir: tempfile::tempdir().unwrap(),
        };
        redis.restart().await;
        redis
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn restart(&mut self) {
        let child = tokio::process::Command::new("redis-server")
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("redis-server is needed");
        self.child = Some(child);
        let deadline = Instant::now() + WAIT;
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await.is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.start_kill().unwrap();
            child.wait().await.unwrap();
        }
    }
}

async fn ready(node: &TestServer) -> bool {
    reqwest::get(format!("{}/readyz", node.base))
        .await
        .is_ok_and(|r| r.status() == 200)
}

#[tokio::test]
async fn a_redis_restart_loses_no_acked_message_and_nodes_reconnect_by_themselves() {
    let mut redis = OwnRedis::start().await;
    let nodes = nodes(2, &redis.url()).await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let alice = a.user("alice").await;
    let bob = b.user("bob").await;
    let mut alice_a = alice.connect().await;
    let mut bob_b = bob.connect().await;
    let first = alice_a.send_and_ack(bob.id, "one", "k1").await;
    assert_eq!(bob_b.expect_message().await.message_id, first.message_id);

    redis.kill().await;
    // Stored and acked (PostgreSQL is up), though Bob cannot hear of it now.
    let second = alice_a.send_and_ack(bob.id, "two, while redis is down", "k2").await;
    let down = reqwest::get(format!("{}/readyz", a.base)).await.unwrap();
    assert_eq!(down.status(), 503);
    let body: serde_json::Value = down.json().await.unwrap();
    assert_eq!(body["redis"], "down");

    redis.restart().await;
    let deadline = Instant::now() + WAIT;
    while !(ready(a).await && ready(b).await) {
        assert!(Instant::now() < deadline, "nodes did not reconnect to redis");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // The next message makes Bob's connection fetch the one it missed, in order.
    let third = alice_a.send_and_ack(bob.id, "three", "k3").await;
    let got: Vec<(MessageId, i64)> = vec![bob_b.expect_message().await, bob_b.expect_message().await]
        .into_iter()
        .map(|m| (m.message_id, m.seq))
        .collect();
    assert_eq!(got, vec![(second.message_id, 2), (third.message_id, 3)]);

    // Presence was lost with Redis's memory; the nodes' heartbeats put it back.
    let status = via(&alice, &a.base).client;
    let deadline = Instant::now() + WAIT;
    while status.status(bob.id).await.unwrap().status != PresenceStatus::Online {
        assert!(Instant::now() < deadline, "bob's presence did not come back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for node in nodes {
        node.stop().await;
    }
}

#[tokio::test]
async fn the_bench_counts_messages_that_arrive_after_the_run_as_late_not_lost() {
    // Node B hears Redis 200 ms late and the bench waits no grace: what is
    // sent in the run's last moments reaches B's users after the run. The
    // bench connects them again, and their replay brings it.
    let redis = redis_url();
    let target = redis.trim_start_matches("redis://").trim_end_matches('/');
    let slow = slow_path(target, Duration::from_millis(200)).await;
    let url = scratch_postgres().await;
    let nodes = nodes_on(&url, &[redis.clone(), slow]).await;
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_dyad"))
        .args(["bench", "--nodes", &format!("{},{}", nodes[0].base, nodes[1].base)])
        .args(["--database", &url, "--users", "20", "--rate", "200"])
        .args(["--duration", "1s", "--warmup", "200ms", "--grace", "0s", "--json"])
        .output()
        .await
        .unwrap();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let report: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let (late, lost) = (report["late"].as_u64().unwrap(), report["lost"].as_u64().unwrap());
    assert!(late > 0, "nothing arrived late: {report}");
    assert_eq!(lost, 0, "{report}");
    assert_eq!(report["duplicated"].as_u64(), Some(0), "{report}");
    assert_eq!(
        report["received"].as_u64().unwrap() + late,
        report["acked"].as_u64().unwrap(),
        "every acked message was received live or late: {report}"
    );
    for node in nodes {
        node.stop().await;
    }
}

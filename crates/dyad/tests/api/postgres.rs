//! The server on PostgreSQL: the same guarantees as on SQLite, a restart
//! that keeps everything, and a database that goes away and comes back
//! while the server runs.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use dyad_client::protocol::ErrorCode;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

use crate::helpers::{TestServer, test_config};

async fn scratch() -> String {
    dyad_store::testing::scratch_postgres_url()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", dyad_store::testing::postgres_url()))
}

#[tokio::test]
async fn on_postgres_messages_flow_in_order_and_survive_a_restart() {
    let url = scratch().await;
    let server = TestServer::spawn_url("127.0.0.1:0", &url, test_config()).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = alice.connect().await;
    let mut b = bob.connect().await;
    for i in 1..=30 {
        let ack = a.send_and_ack(bob.id, &format!("m{i}"), &format!("k{i}")).await;
        assert_eq!(ack.seq, i);
    }
    for i in 1..=30 {
        assert_eq!(b.expect_message().await.seq, i);
    }
    // A retry is the original.
    let again = a.send_and_ack(bob.id, "m1 again", "k1").await;
    assert_eq!(again.seq, 1);
    b.0.close().await.unwrap();
    a.0.close().await.unwrap();
    server.stop().await;

    // A new process on the same database: history and pending are there.
    let server = TestServer::spawn_url("127.0.0.1:0", &url, test_config()).await;
    let bob = server.login("bob").await;
    let mut b = bob.connect_raw().await;
    assert_eq!(b.replay().await.len(), 30, "nothing was acked, so all 30 are pending");
    let history = bob.history(alice.id, &[("limit", "100".into())]).await;
    let seqs: Vec<i64> = history.iter().rev().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
    server.stop().await;
}

/// On PostgreSQL a node runs two batches at once. With batches of four
/// (so the next is handed over as soon as one write waits), two people
/// flooding each other and a third writing to one of them still get one
/// gap-free order per conversation, acks in send order, and a watching
/// device that sees each conversation in `seq` order.
#[tokio::test]
async fn with_batches_overlapping_every_connection_sees_each_conversation_in_seq_order() {
    use dyad_client::protocol::ServerEvent;
    let url = scratch().await;
    let config = dyad_server::Config {
        rate_limit: 0,
        max_batch: 4,
        ..test_config()
    };
    let server = TestServer::spawn_url("127.0.0.1:0", &url, config).await;
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut watcher = bob.connect().await;
    const EACH: usize = 150;
    let send_all = |mut conn: crate::helpers::TestConn, to, tag: &'static str| async move {
        for i in 0..EACH {
            conn.send(to, &format!("{tag}{i}"), Some(&format!("{tag}{i}"))).await;
        }
        conn
    };
    let (a, b, c) = (alice.connect().await, bob.connect().await, carol.connect().await);
    let (mut a, mut b, mut c) = tokio::join!(
        send_all(a, bob.id, "a"),
        send_all(b, alice.id, "b"),
        send_all(c, bob.id, "c")
    );
    for conn in [&mut a, &mut b, &mut c] {
        let (mut last_seq, mut acks) = (0, 0);
        while acks < EACH {
            if let ServerEvent::MessageAck { seq, .. } = conn.next().await {
                assert!(seq > last_seq, "acks of one connection in send order");
                last_seq = seq;
                acks += 1;
            }
        }
    }
    // Bob's other device: alice's conversation (both directions) and
    // carol's, interleaved as they were committed, each in seq order.
    let (mut with_alice, mut with_carol) = (0, 0);
    for _ in 0..3 * EACH {
        let m = watcher.expect_message().await;
        let last = if m.sender_id == carol.id {
            &mut with_carol
        } else {
            &mut with_alice
        };
        assert_eq!(m.seq, *last + 1, "each conversation in seq order, no gaps");
        *last = m.seq;
    }
    assert_eq!((with_alice, with_carol), (2 * EACH as i64, EACH as i64));
    server.stop().await;
}

/// A TCP path to PostgreSQL that the test can cut and mend: the database
/// really becomes unreachable for the server, and really comes back.
struct Cable {
    addr: String,
    up: Arc<AtomicBool>,
    cut: Arc<Notify>,
}

impl Cable {
    async fn to(target: &str) -> Cable {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let up = Arc::new(AtomicBool::new(true));
        let cut = Arc::new(Notify::new());
        let (target, up2, cut2) = (target.to_owned(), up.clone(), cut.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let Ok(mut outbound) = TcpStream::connect(&target).await else {
                    continue;
                };
                let cut = cut2.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        Cable { addr, up, cut }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    fn mend(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn when_postgres_is_down_sends_are_refused_and_the_node_recovers_by_itself() {
    let url = scratch().await;
    let target = url
        .split('@')
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .unwrap()
        .to_owned();
    let cable = Cable::to(&target).await;
    let via_cable = url.replacen(&target, &cable.addr, 1);
    let server = TestServer::spawn_url("127.0.0.1:0", &via_cable, test_config()).await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let mut a = alice.connect().await;
    a.send_and_ack(bob.id, "before", "k0").await;

    cable.cut();
    a.send(bob.id, "during", Some("k1")).await;
    let refused = a.expect_error(ErrorCode::Unavailable).await;
    assert_eq!(refused.client_msg_id.as_deref(), Some("k1"));
    let ready = reqwest::get(format!("{}/readyz", server.base)).await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["storage"], "down");

    cable.mend();
    let started = std::time::Instant::now();
    while reqwest::get(format!("{}/readyz", server.base)).await.unwrap().status() != 200 {
        assert!(started.elapsed() < crate::helpers::WAIT, "/readyz did not recover");
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // The same key again: stored now, once, right after "before".
    let ack = a.send_and_ack(bob.id, "during", "k1").await;
    assert_eq!(ack.seq, 2, "the refused send stored nothing");
    let mut b = bob.connect_raw().await;
    let replay = b.replay().await;
    let texts: Vec<&str> = replay.iter().map(|m| m.message.as_str()).collect();
    assert_eq!(texts, ["before", "during"]);
    server.stop().await;
}

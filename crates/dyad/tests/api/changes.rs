//! Read marks, edits and deletes: on SQLite and on PostgreSQL, through
//! every connection of both users, and replayed to one that was away.

use std::time::Duration;

use dyad_client::protocol::{ErrorCode, MessageStatus, UserId};
use dyad_server::Config;

use crate::helpers::*;

async fn on_postgres(config: Config) -> TestServer {
    let url = dyad_store::testing::scratch_postgres_url()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", dyad_store::testing::postgres_url()));
    TestServer::spawn_url("127.0.0.1:0", &url, config).await
}

/// The conversation entry with `peer`: (unread, last read, peer's last read).
async fn standing(user: &TestUser, peer: UserId) -> (i64, i64, i64) {
    let list = user.client.conversations().await.unwrap().conversations;
    let c = list.iter().find(|c| c.user_id == peer).unwrap();
    (c.unread_count, c.last_read_seq, c.peer_last_read_seq)
}

fn statuses(history: &[dyad_client::protocol::MessageView]) -> Vec<MessageStatus> {
    history.iter().rev().map(|m| m.status).collect()
}

async fn read_receipts(server: TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let (mut b1, mut b2) = (bob.connect().await, bob.connect().await);
    let m1 = a.send_and_ack(bob.id, "one", "k1").await.message_id;
    let m2 = a.send_and_ack(bob.id, "two", "k2").await.message_id;
    for b in [&mut b1, &mut b2] {
        assert_eq!(b.expect_message().await.message_id, m1);
        assert_eq!(b.expect_message().await.message_id, m2);
    }
    assert_eq!(standing(&bob, alice.id).await, (2, 0, 0));

    // Reading the second covers the first, and delivers both on the way.
    b1.read_ack(m2).await;
    assert_eq!(a.expect_delivered().await, m1);
    assert_eq!(a.expect_delivered().await, m2);
    let read = (bob.id, alice.id, m2, 2);
    assert_eq!(a.expect_read().await, read);
    assert_eq!(b1.expect_read().await, read, "the reading device too");
    assert_eq!(b2.expect_read().await, read, "and the reader's other devices");
    assert_eq!(standing(&bob, alice.id).await, (0, 2, 0));
    assert_eq!(standing(&alice, bob.id).await, (0, 0, 2));
    let history = alice.history(bob.id, &[]).await;
    assert_eq!(statuses(&history), [MessageStatus::Read, MessageStatus::Read]);

    // A mark never moves back; an unknown message is not_found.
    b1.read_ack(m1).await;
    b1.expect_silence(Duration::from_millis(50)).await;
    a.expect_silence(Duration::from_millis(10)).await;
    let stranger = server.user("carol").await;
    let mut c = stranger.connect().await;
    c.read_ack(m1).await;
    let refused = c.expect_error(ErrorCode::NotFound).await;
    assert_eq!(refused.message_id, Some(m1));

    // Receipts off on one side: the reader's devices still sync, the
    // sender learns only of delivery, and history says delivered to both.
    let off = dyad_client::protocol::rest::SettingsPatch {
        read_receipts: Some(false),
        presence: None,
    };
    bob.client.update_settings(&off).await.unwrap();
    let m3 = a.send_and_ack(bob.id, "three", "k3").await.message_id;
    for b in [&mut b1, &mut b2] {
        assert_eq!(b.expect_message().await.message_id, m3);
    }
    b2.read_ack(m3).await;
    assert_eq!(a.expect_delivered().await, m3);
    a.expect_silence(Duration::from_millis(50)).await;
    assert_eq!(b1.expect_read().await, (bob.id, alice.id, m3, 3));
    assert_eq!(b2.expect_read().await, (bob.id, alice.id, m3, 3));
    assert_eq!(standing(&alice, bob.id).await, (0, 0, 0));
    assert_eq!(standing(&bob, alice.id).await, (0, 3, 0));
    assert_eq!(
        statuses(&alice.history(bob.id, &[]).await),
        [MessageStatus::Delivered; 3]
    );
    server.stop().await;
}

#[tokio::test]
async fn read_marks_sync_every_device_and_cross_only_with_receipts_on_sqlite() {
    read_receipts(TestServer::spawn().await).await;
}

#[tokio::test]
async fn read_marks_sync_every_device_and_cross_only_with_receipts_on_postgres() {
    read_receipts(on_postgres(test_config()).await).await;
}

async fn edits_and_deletes(server: TestServer) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let (mut a1, mut a2) = (alice.connect().await, alice.connect().await);
    let mut b = bob.connect().await;
    let m1 = a1.send_and_ack(bob.id, "helo", "k1").await.message_id;
    assert_eq!(a2.expect_message().await.message_id, m1);
    assert_eq!(b.expect_message().await.message_id, m1);

    a1.edit(m1, "hello").await;
    for conn in [&mut a1, &mut a2, &mut b] {
        assert_eq!(conn.expect_edited().await, (m1, "hello".to_owned()));
    }
    let history = bob.history(alice.id, &[]).await;
    assert_eq!(
        (history[0].message.as_str(), history[0].edited_at.is_some()),
        ("hello", true)
    );

    // Refusals carry the message they were about and change nothing.
    b.edit(m1, "mine now").await;
    assert_eq!(b.expect_error(ErrorCode::Forbidden).await.message_id, Some(m1));
    b.delete(m1).await;
    assert_eq!(b.expect_error(ErrorCode::Forbidden).await.message_id, Some(m1));
    a1.edit(m1, "   ").await;
    assert_eq!(a1.expect_error(ErrorCode::EmptyMessage).await.message_id, Some(m1));
    a1.edit(dyad_client::protocol::MessageId(42), "x").await;
    a1.expect_error(ErrorCode::NotFound).await;

    a1.delete(m1).await;
    for conn in [&mut a1, &mut a2, &mut b] {
        assert_eq!(conn.expect_deleted().await, m1);
    }
    let history = alice.history(bob.id, &[]).await;
    assert_eq!((history[0].message.as_str(), history[0].deleted), ("", true));
    a1.edit(m1, "back").await;
    a1.expect_error(ErrorCode::NotFound).await;
    let changed = bob.history(alice.id, &[("changed_since", "0".into())]).await;
    assert_eq!(
        changed.iter().map(|m| (m.message_id, m.deleted)).collect::<Vec<_>>(),
        [(m1, true)]
    );

    // Bob away: what changed meanwhile is replayed as it is now, once.
    drop(b);
    let m2 = a1.send_and_ack(bob.id, "draft", "k2").await.message_id;
    a1.edit(m2, "final").await;
    assert_eq!(a1.expect_edited().await, (m2, "final".to_owned()));
    let m3 = a1.send_and_ack(bob.id, "oops", "k3").await.message_id;
    a1.delete(m3).await;
    assert_eq!(a1.expect_deleted().await, m3);
    let mut b = bob.connect_raw().await;
    let replayed = b.replay().await;
    let seen: Vec<_> = replayed
        .iter()
        .map(|m| (m.message_id, m.message.as_str(), m.edited_at.is_some(), m.deleted))
        .collect();
    assert!(seen.contains(&(m2, "final", true, false)), "{seen:?}");
    assert!(seen.contains(&(m3, "", false, true)), "{seen:?}");
    b.expect_silence(Duration::from_millis(100)).await;
    server.stop().await;
}

#[tokio::test]
async fn edits_and_deletes_reach_every_connection_and_replay_as_they_are_on_sqlite() {
    edits_and_deletes(TestServer::spawn().await).await;
}

#[tokio::test]
async fn edits_and_deletes_reach_every_connection_and_replay_as_they_are_on_postgres() {
    edits_and_deletes(on_postgres(test_config()).await).await;
}

#[tokio::test]
async fn an_edit_after_the_window_is_refused() {
    let server = TestServer::spawn_with(Config {
        edit_window: Duration::ZERO,
        ..test_config()
    })
    .await;
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let mut a = alice.connect().await;
    let m = a.send_and_ack(bob.id, "typo", "k").await.message_id;
    a.edit(m, "fixed").await;
    assert_eq!(a.expect_error(ErrorCode::EditWindowPassed).await.message_id, Some(m));
    // Delete has no window.
    a.delete(m).await;
    assert_eq!(a.expect_deleted().await, m);
    server.stop().await;
}

/// The files in `dir` and the folders under it (the key index's) that
/// hold `needle`.
fn held_in(dir: &std::path::Path, needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            found.extend(held_in(&path, needle));
            continue;
        }
        let bytes = std::fs::read(&path).unwrap();
        if bytes.windows(needle.len()).any(|w| w == needle.as_bytes()) {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn a_deleted_message_and_its_earlier_versions_are_gone_from_every_file_after_a_clean_stop() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("dyad.db");
    let mut process = ServerProcess::start(&["--database", &format!("sqlite://{}", db.display())]).await;
    let mut alice = dyad_client::Client::new(&process.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = alice.register("bob", PASSWORD).await.unwrap().user_id;
    let mut a = TestConn(alice.connect().await.unwrap());
    assert!(a.replay().await.is_empty());
    let (first, second) = ("zebra-quartz-first-version", "zebra-quartz-second-version");
    // Some company on the same pages, kept throughout. (Checked: with
    // SQLite's secure_delete off, or FTS5's, this test finds the text.)
    for i in 0..20 {
        a.send_and_ack(bob, &format!("neighbour {i}"), &format!("n{i}")).await;
    }
    // Long enough to spill onto an overflow page: freed pages keep their
    // bytes unless they are overwritten.
    let filler = "filler ".repeat(580);
    let m = a.send_and_ack(bob, &format!("{filler}{first}"), "k").await.message_id;
    a.edit(m, &format!("{filler}{second}")).await;
    a.expect_edited().await;
    assert!(
        !held_in(dir.path(), first).is_empty(),
        "the test must see text where it is"
    );
    a.delete(m).await;
    assert_eq!(a.expect_deleted().await, m);
    drop(a);
    process.terminate().await;
    // The text, and its words in the search index.
    for text in [first, second, "zebra", "quartz"] {
        assert_eq!(held_in(dir.path(), text), Vec::<String>::new(), "{text}");
    }
    assert!(
        !held_in(dir.path(), "neighbour 7").is_empty(),
        "the rest is still there"
    );
}

#[tokio::test]
async fn an_edit_and_a_delete_confirmed_just_before_kill_9_survive_it_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    edit_and_delete_then_kill_9(&format!("sqlite://{}", dir.path().join("dyad.db").display())).await;
}

#[tokio::test]
async fn an_edit_and_a_delete_confirmed_just_before_kill_9_survive_it_on_postgres() {
    edit_and_delete_then_kill_9(&dyad_store::testing::scratch_postgres_url().await.unwrap()).await;
}

async fn edit_and_delete_then_kill_9(database: &str) {
    let mut process = ServerProcess::start(&["--database", database]).await;
    let mut alice = dyad_client::Client::new(&process.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = alice.register("bob", PASSWORD).await.unwrap().user_id;
    let mut a = TestConn(alice.connect().await.unwrap());
    assert!(a.replay().await.is_empty());
    let kept = a.send_and_ack(bob, "draft", "k1").await.message_id;
    let gone = a.send_and_ack(bob, "regret", "k2").await.message_id;
    a.delete(gone).await;
    a.edit(kept, "final").await;
    assert_eq!(a.expect_deleted().await, gone);
    assert_eq!(a.expect_edited().await, (kept, "final".to_owned()));
    process.kill().await;

    let process = ServerProcess::start(&["--database", database]).await;
    let mut alice = dyad_client::Client::new(&process.base);
    alice.login("alice", PASSWORD).await.unwrap();
    let history = alice.history(bob, &[]).await.unwrap().messages;
    let now: Vec<_> = history
        .iter()
        .map(|m| (m.message_id, m.message.as_str(), m.edited_at.is_some(), m.deleted))
        .collect();
    assert_eq!(now, [(gone, "", false, true), (kept, "final", true, false)]);
}

async fn search(server: TestServer) {
    let (alice, bob, carol) = (
        server.user("alice").await,
        server.user("bob").await,
        server.user("carol").await,
    );
    let mut a = alice.connect().await;
    let mut c = carol.connect().await;
    let m1 = a.send_and_ack(bob.id, "Viele Grüße aus Köln", "k1").await.message_id;
    c.send_and_ack(bob.id, "grüße von carol", "k2").await;
    let m3 = a.send_and_ack(bob.id, "a secret", "k3").await.message_id;
    let q = |text: &str| vec![("q", text.to_owned())];
    // A search first indexes what still waits (SQLite) or finds it
    // indexed by the send's own transaction (PostgreSQL): searchable once acked.
    let found = alice.client.search(&q("grüße")).await.unwrap().messages;
    assert_eq!(
        found.iter().map(|m| m.message_id).collect::<Vec<_>>(),
        [m1],
        "never carol's"
    );
    assert_eq!(bob.client.search(&q("GRÜSSE")).await.unwrap().messages.len(), 0);
    assert_eq!(bob.client.search(&q("Grüße")).await.unwrap().messages.len(), 2);
    a.delete(m3).await;
    a.expect_deleted().await;
    assert!(
        alice.client.search(&q("secret")).await.unwrap().messages.is_empty(),
        "deleted at once"
    );
    for bad in [
        vec![],
        q("   "),
        q(&"x".repeat(300)),
        vec![("q", "hi".into()), ("limit", "0".into())],
    ] {
        assert_eq!(
            api_error(alice.client.search(&bad).await),
            (400, ErrorCode::InvalidParameter),
            "{bad:?}"
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn search_finds_the_callers_own_words_in_any_case_on_sqlite() {
    search(TestServer::spawn().await).await;
}

#[tokio::test]
async fn search_finds_the_callers_own_words_in_any_case_on_postgres() {
    search(on_postgres(test_config()).await).await;
}

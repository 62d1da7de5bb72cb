//! The store conformance suite: every `MessageStore` driver must pass these.
//! Each test takes a fresh store of each driver from `drivers()`.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use dyad_protocol::{MessageId, UserId};
use dyad_store::{MessageStore, NewMessage, NewSession, PageRequest, StoreError, StoredMessage, WriteOp, WriteOutcome};

struct Fresh {
    store: Arc<dyn MessageStore>,
    /// Opens the same database again (a restart, or another node).
    url: String,
    _dir: Option<tempfile::TempDir>,
}

/// A fresh, empty store of every driver: a new SQLite file, and a new
/// schema on the machine's PostgreSQL (which must be running: CI starts it).
async fn drivers() -> Vec<(&'static str, Fresh)> {
    let dir = tempfile::tempdir().unwrap();
    let sqlite_url = format!("sqlite://{}", dir.path().join("t.db").display());
    let sqlite = dyad_store::open(&sqlite_url).await.unwrap();
    let url = dyad_store::testing::scratch_postgres_url()
        .await
        .unwrap_or_else(|e| panic!("PostgreSQL at {} is needed: {e}", dyad_store::testing::postgres_url()));
    let postgres = dyad_store::open(&url).await.unwrap();
    vec![
        (
            "sqlite",
            Fresh {
                store: sqlite,
                url: sqlite_url,
                _dir: Some(dir),
            },
        ),
        (
            "postgres",
            Fresh {
                store: postgres,
                url,
                _dir: None,
            },
        ),
    ]
}

async fn users(store: &dyn MessageStore, names: &[&str]) -> Vec<UserId> {
    let mut ids = Vec::new();
    for name in names {
        ids.push(store.create_user(name, "hash", 1).await.unwrap().id);
    }
    ids
}

fn send(from: UserId, to: UserId, body: &str, key: Option<&str>) -> WriteOp {
    WriteOp::Send(NewMessage {
        sender_id: from,
        recipient_id: to,
        body: dyad_store::testing::body(body),
        client_msg_id: key.map(dyad_store::testing::key),
    })
}

fn stored(outcome: &WriteOutcome) -> (&StoredMessage, bool) {
    match outcome {
        WriteOutcome::Stored { message, duplicate } => (message, *duplicate),
        other => panic!("expected Stored, got {other:?}"),
    }
}

#[tokio::test]
async fn a_password_reset_replaces_the_hash_and_revokes_every_session() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let alice = s.create_user("alice", "old", 0).await.unwrap();
        let bob = s.create_user("bob", "bobs", 0).await.unwrap();
        for (user, token) in [(alice.id, [1u8; 32]), (alice.id, [2u8; 32]), (bob.id, [3u8; 32])] {
            s.create_session(NewSession {
                user_id: user,
                token_hash: token,
                created_at: 0,
                expires_at: i64::MAX,
            })
            .await
            .unwrap();
        }
        assert!(s.reset_password(alice.id, "new").await.unwrap(), "{driver}");
        assert_eq!(
            s.user_by_id(alice.id).await.unwrap().unwrap().password_hash,
            "new",
            "{driver}"
        );
        for token in [[1u8; 32], [2u8; 32]] {
            assert!(s.session_by_token(&token, 1).await.unwrap().is_none(), "{driver}");
        }
        assert!(
            s.session_by_token(&[3u8; 32], 1).await.unwrap().is_some(),
            "{driver}: others untouched"
        );
        assert_eq!(
            s.user_by_id(bob.id).await.unwrap().unwrap().password_hash,
            "bobs",
            "{driver}"
        );
        assert!(
            !s.reset_password(UserId(42), "x").await.unwrap(),
            "{driver}: no such user"
        );
    }
}

#[tokio::test]
async fn a_users_devices_are_listed_revoked_one_by_one_and_ended_by_a_password_change() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let alice = s.create_user("alice", "old", 0).await.unwrap();
        let bob = s.create_user("bob", "bobs", 0).await.unwrap();
        let mut sessions = Vec::new();
        for (n, (user, expires_at)) in [
            (alice.id, i64::MAX),
            (alice.id, i64::MAX),
            (alice.id, 50),
            (bob.id, i64::MAX),
        ]
        .into_iter()
        .enumerate()
        {
            let created = s
                .create_session(NewSession {
                    user_id: user,
                    token_hash: [n as u8 + 1; 32],
                    created_at: 10 * n as i64,
                    expires_at,
                })
                .await
                .unwrap();
            sessions.push(created.id);
        }
        let (laptop, phone, expired, bobs) = (sessions[0], sessions[1], sessions[2], sessions[3]);
        assert!(
            sessions.iter().all(|id| id.get() >= 1 << 62),
            "{driver}: session ids are not counters: {sessions:?}"
        );
        s.touch_sessions(&[(laptop, 500)]).await.unwrap();
        let listed = s.sessions_of(alice.id, 100).await.unwrap();
        let seen: Vec<_> = listed.iter().map(|d| (d.id, d.created_at, d.last_used_at)).collect();
        assert_eq!(
            seen,
            vec![(phone, 10, 10), (laptop, 0, 500)],
            "{driver}: live ones, newest first"
        );

        assert!(
            !s.revoke_session_of(alice.id, bobs, 100).await.unwrap(),
            "{driver}: not hers"
        );
        assert!(
            !s.revoke_session_of(alice.id, expired, 100).await.unwrap(),
            "{driver}: not live"
        );
        assert!(s.revoke_session_of(alice.id, phone, 100).await.unwrap(), "{driver}");
        assert!(
            !s.revoke_session_of(alice.id, phone, 100).await.unwrap(),
            "{driver}: once"
        );
        assert!(s.session_by_token(&[2; 32], 100).await.unwrap().is_none(), "{driver}");
        assert_eq!(
            s.revoked_among(&[laptop, phone, bobs]).await.unwrap(),
            vec![phone],
            "{driver}"
        );

        let tablet = s
            .create_session(NewSession {
                user_id: alice.id,
                token_hash: [9; 32],
                created_at: 60,
                expires_at: i64::MAX,
            })
            .await
            .unwrap()
            .id;
        let revoked = s.change_password(alice.id, "new", laptop, 100).await.unwrap();
        assert_eq!(revoked, vec![tablet], "{driver}: every other live session");
        assert_eq!(
            s.user_by_id(alice.id).await.unwrap().unwrap().password_hash,
            "new",
            "{driver}"
        );
        assert!(
            s.session_by_token(&[1; 32], 100).await.unwrap().is_some(),
            "{driver}: the caller's stays"
        );
        assert!(
            s.session_by_token(&[4; 32], 100).await.unwrap().is_some(),
            "{driver}: bob's too"
        );
    }
}

#[tokio::test]
async fn settings_start_at_their_defaults_and_change_field_by_field() {
    use dyad_store::{PresenceVisibility, Settings, SettingsPatch};
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let ids = users(s, &["alice", "bob", "carol"]).await;
        let (alice, bob, carol) = (ids[0], ids[1], ids[2]);
        assert_eq!(
            s.user_by_id(alice).await.unwrap().unwrap().settings,
            Settings::default(),
            "{driver}"
        );
        let nobody = SettingsPatch {
            presence: Some(PresenceVisibility::Nobody),
            ..SettingsPatch::default()
        };
        let after = s.update_settings(alice, nobody).await.unwrap().unwrap();
        assert_eq!(
            (after.read_receipts, after.presence),
            (true, PresenceVisibility::Nobody),
            "{driver}"
        );
        let quiet = SettingsPatch {
            read_receipts: Some(false),
            ..SettingsPatch::default()
        };
        let after = s.update_settings(alice, quiet).await.unwrap().unwrap();
        assert_eq!(
            (after.read_receipts, after.presence),
            (false, PresenceVisibility::Nobody),
            "{driver}"
        );
        assert_eq!(s.user_by_id(alice).await.unwrap().unwrap().settings, after, "{driver}");
        assert_eq!(
            s.user_by_id(bob).await.unwrap().unwrap().settings,
            Settings::default(),
            "{driver}"
        );
        assert!(
            s.update_settings(UserId(4242), quiet).await.unwrap().is_none(),
            "{driver}"
        );

        assert!(!s.shares_conversation(alice, bob).await.unwrap(), "{driver}");
        s.write_batch(vec![send(bob, alice, "hi", None)], 1).await.unwrap();
        assert!(s.shares_conversation(alice, bob).await.unwrap(), "{driver}");
        assert!(
            s.shares_conversation(bob, alice).await.unwrap(),
            "{driver}: either way round"
        );
        assert!(!s.shares_conversation(alice, carol).await.unwrap(), "{driver}");
    }
}

#[tokio::test]
async fn a_block_stops_sends_both_ways_until_it_is_lifted() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let ids = users(s, &["alice", "bob", "carol"]).await;
        let (alice, bob, carol) = (ids[0], ids[1], ids[2]);
        let first = s
            .write_batch(vec![send(alice, bob, "before", Some("k1"))], 10)
            .await
            .unwrap();
        let (before, _) = stored(&first[0]);
        let before = before.clone();

        assert!(s.set_block(bob, alice, Some(100)).await.unwrap(), "{driver}");
        assert!(
            s.set_block(bob, alice, Some(200)).await.unwrap(),
            "{driver}: again, no change"
        );
        assert!(
            s.set_block(bob, carol, Some(150)).await.unwrap(),
            "{driver}: a stranger"
        );
        assert!(
            !s.set_block(bob, UserId(4242), Some(1)).await.unwrap(),
            "{driver}: nobody"
        );
        assert!(!s.set_block(bob, bob, Some(1)).await.unwrap(), "{driver}: oneself");
        let listed: Vec<_> = s
            .blocks_of(bob)
            .await
            .unwrap()
            .into_iter()
            .map(|b| (b.user_id, b.username, b.blocked_at))
            .collect();
        assert_eq!(
            listed,
            vec![(carol, "carol".to_owned(), 150), (alice, "alice".to_owned(), 100)],
            "{driver}: newest first, first time kept"
        );
        assert!(s.blocks_of(alice).await.unwrap().is_empty(), "{driver}: one-sided");
        assert!(s.blocked_between(alice, bob).await.unwrap() && s.blocked_between(bob, alice).await.unwrap());
        assert!(
            !s.shares_conversation(bob, carol).await.unwrap(),
            "{driver}: a block makes no contact"
        );

        let outcomes = s
            .write_batch(
                vec![
                    send(alice, bob, "blocked", Some("k2")),
                    send(bob, alice, "blocked too", None),
                    send(alice, bob, "before", Some("k1")),
                    send(alice, carol, "unrelated", None),
                ],
                300,
            )
            .await
            .unwrap();
        assert!(
            matches!(outcomes[0], WriteOutcome::Blocked),
            "{driver}: {:?}",
            outcomes[0]
        );
        assert!(
            matches!(outcomes[1], WriteOutcome::Blocked),
            "{driver}: the blocker too"
        );
        let (retry, duplicate) = stored(&outcomes[2]);
        assert!(
            duplicate && retry.id == before.id,
            "{driver}: a retry of what was stored before"
        );
        assert!(matches!(outcomes[3], WriteOutcome::Stored { .. }), "{driver}");
        assert_eq!(
            s.history(
                alice,
                bob,
                PageRequest::Before {
                    before: None,
                    limit: 50
                }
            )
            .await
            .unwrap()
            .messages
            .len(),
            1,
            "{driver}"
        );

        assert!(s.set_block(bob, alice, None).await.unwrap(), "{driver}");
        assert!(!s.blocked_between(alice, bob).await.unwrap(), "{driver}");
        let after = s.write_batch(vec![send(alice, bob, "after", None)], 400).await.unwrap();
        assert_eq!(stored(&after[0]).0.seq, 2, "{driver}: the conversation goes on");
    }
}

#[tokio::test]
async fn users_are_unique_by_name_and_found_by_name_and_id() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let alice = s.create_user("alice", "h1", 10).await.unwrap();
        assert!(
            matches!(s.create_user("alice", "h2", 11).await, Err(StoreError::UsernameTaken)),
            "{driver}"
        );
        assert_eq!(
            s.user_by_username("alice").await.unwrap().unwrap().id,
            alice.id,
            "{driver}"
        );
        assert_eq!(
            s.user_by_id(alice.id).await.unwrap().unwrap().password_hash,
            "h1",
            "{driver}"
        );
        assert!(s.user_by_username("bob").await.unwrap().is_none(), "{driver}");
        assert!(s.user_by_id(UserId(9999)).await.unwrap().is_none(), "{driver}");
        s.set_last_seen(&[(alice.id, 1234)]).await.unwrap();
        assert_eq!(
            s.user_by_id(alice.id).await.unwrap().unwrap().last_seen,
            Some(1234),
            "{driver}"
        );
    }
}

#[tokio::test]
async fn ids_are_not_counters_and_outlive_a_restart() {
    let mut seen_elsewhere = Vec::new();
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let names: Vec<String> = (0..50).map(|i| format!("user{i}")).collect();
        let names: Vec<&str> = names.iter().map(String::as_str).collect();
        let ids = users(s, &names).await;
        let mut raw: Vec<i64> = ids.iter().map(|id| id.get()).collect();
        // Counters would be 1..=50: these are spread over 2^62, with no two
        // neighbours among them.
        assert!(raw.iter().all(|&id| id > 1 << 20), "{driver}: {raw:?}");
        raw.sort_unstable();
        assert!(raw.windows(2).all(|w| w[1] - w[0] > 1), "{driver}: {raw:?}");
        // Another process (a restart, or another node) shows the same ids.
        let again = dyad_store::open(&fresh.url).await.unwrap();
        for (id, name) in ids.iter().zip(&names) {
            assert_eq!(
                again.user_by_id(*id).await.unwrap().unwrap().username,
                *name,
                "{driver}"
            );
        }
        let (m, _) = {
            let out = again
                .write_batch(vec![send(ids[0], ids[1], "hi", None)], 5)
                .await
                .unwrap();
            let (m, dup) = stored(&out[0]);
            (m.clone(), dup)
        };
        assert_eq!((m.sender_id, m.recipient_id), (ids[0], ids[1]), "{driver}");
        let page = s
            .history(ids[1], ids[0], PageRequest::Before { before: None, limit: 5 })
            .await
            .unwrap();
        assert_eq!(page.messages, vec![m], "{driver}");
        seen_elsewhere.push(ids[0]);
        // Message ids too: fifty messages in one batch, none next to another.
        let ops = (0..50).map(|i| send(ids[i % 2], ids[1 - i % 2], "m", None)).collect();
        let mut raw: Vec<i64> = s
            .write_batch(ops, 10)
            .await
            .unwrap()
            .iter()
            .map(|o| stored(o).0.id.get())
            .collect();
        assert!(raw.iter().all(|&id| id > 1 << 20), "{driver}: {raw:?}");
        raw.sort_unstable();
        assert!(raw.windows(2).all(|w| w[1] - w[0] > 1), "{driver}: {raw:?}");
    }
    // Each database has its own key: the first account of one is not the
    // first account of another.
    assert_ne!(seen_elsewhere[0], seen_elsewhere[1]);
}

#[tokio::test]
async fn a_deleted_account_frees_its_name_and_takes_no_messages_but_keeps_its_history() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let ids = users(s, &["alice", "bob", "carol"]).await;
        let (alice, bob, carol) = (ids[0], ids[1], ids[2]);
        s.create_session(NewSession {
            user_id: bob,
            token_hash: [9; 32],
            created_at: 0,
            expires_at: i64::MAX,
        })
        .await
        .unwrap();
        s.set_last_seen(&[(bob, 77)]).await.unwrap();
        let out = s
            .write_batch(
                vec![send(alice, bob, "before", None), send(bob, alice, "reply", None)],
                10,
            )
            .await
            .unwrap();
        let (first, _) = stored(&out[0]);
        let first = first.clone();

        assert!(s.delete_user(bob, 20).await.unwrap(), "{driver}");
        assert!(!s.delete_user(bob, 21).await.unwrap(), "{driver}: only once");
        assert!(
            !s.delete_user(UserId(12345), 21).await.unwrap(),
            "{driver}: no such user"
        );

        let gone = s.user_by_id(bob).await.unwrap().unwrap();
        assert_eq!(gone.deleted_at, Some(20), "{driver}");
        assert_eq!((gone.password_hash.as_str(), gone.last_seen), ("", None), "{driver}");
        assert_ne!(gone.username, "bob", "{driver}");
        assert!(s.user_by_username("bob").await.unwrap().is_none(), "{driver}");
        assert!(s.user_by_username(&gone.username).await.unwrap().is_none(), "{driver}");
        assert!(s.session_by_token(&[9; 32], 30).await.unwrap().is_none(), "{driver}");
        assert!(!s.reset_password(bob, "x").await.unwrap(), "{driver}");
        s.set_last_seen(&[(bob, 88)]).await.unwrap();
        assert_eq!(
            s.user_by_id(bob).await.unwrap().unwrap().last_seen,
            None,
            "{driver}: never seen again"
        );

        // Sends to it fail, in the conversation it had and in a new one.
        let out = s
            .write_batch(vec![send(alice, bob, "after", None), send(carol, bob, "new", None)], 30)
            .await
            .unwrap();
        assert!(
            out.iter().all(|o| matches!(o, WriteOutcome::UnknownRecipient)),
            "{driver}: {out:?}"
        );
        // Its name is free; the new account is someone else.
        let new_bob = s.create_user("bob", "h", 40).await.unwrap();
        assert_ne!(new_bob.id, bob, "{driver}");
        // Alice keeps the conversation, under a name that is no one's.
        let page = s
            .history(
                alice,
                bob,
                PageRequest::Before {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert_eq!(page.messages.len(), 2, "{driver}");
        assert_eq!(page.messages[1], first, "{driver}");
        let list = s.conversations(alice, 10).await.unwrap();
        assert_eq!(list.len(), 1, "{driver}");
        assert_eq!(
            (list[0].peer_id, list[0].peer_username.as_str()),
            (bob, "deleted account"),
            "{driver}"
        );
    }
}

#[tokio::test]
async fn revoked_sessions_are_found_among_many() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let alice = users(s, &["alice"]).await[0];
        let mut sessions = Vec::new();
        for i in 0..5u8 {
            let session = s
                .create_session(NewSession {
                    user_id: alice,
                    token_hash: [i; 32],
                    created_at: 0,
                    expires_at: i64::MAX,
                })
                .await
                .unwrap();
            sessions.push(session.id);
        }
        assert!(s.revoked_among(&sessions).await.unwrap().is_empty(), "{driver}");
        assert!(s.revoked_among(&[]).await.unwrap().is_empty(), "{driver}");
        s.revoke_session(sessions[1]).await.unwrap();
        s.revoke_session(sessions[3]).await.unwrap();
        let mut revoked = s.revoked_among(&sessions).await.unwrap();
        revoked.sort_unstable();
        let mut expected = vec![sessions[1], sessions[3]];
        expected.sort_unstable(); // ids are not in creation order
        assert_eq!(revoked, expected, "{driver}");
        assert_eq!(
            s.revoked_among(&sessions[..2]).await.unwrap(),
            vec![sessions[1]],
            "{driver}"
        );
    }
}

#[tokio::test]
async fn sessions_expire_and_are_revoked() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [alice] = users(s, &["alice"]).await[..] else {
            unreachable!()
        };
        let hash = [7u8; 32];
        let session = s
            .create_session(NewSession {
                user_id: alice,
                token_hash: hash,
                created_at: 100,
                expires_at: 200,
            })
            .await
            .unwrap();
        assert_eq!(
            s.session_by_token(&hash, 150).await.unwrap().map(|r| r.id),
            Some(session.id),
            "{driver}"
        );
        assert!(
            s.session_by_token(&hash, 200).await.unwrap().is_none(),
            "{driver}: expired"
        );
        assert!(
            s.session_by_token(&[8u8; 32], 150).await.unwrap().is_none(),
            "{driver}: unknown"
        );
        s.revoke_session(session.id).await.unwrap();
        assert!(
            s.session_by_token(&hash, 150).await.unwrap().is_none(),
            "{driver}: revoked"
        );
    }
}

#[tokio::test]
async fn a_batch_assigns_gap_free_seq_and_strictly_increasing_timestamps() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        // Many messages in one batch, at one clock reading, in two conversations.
        let ops = vec![
            send(a, b, "1", None),
            send(b, a, "2", None),
            send(a, c, "x", None),
            send(a, b, "3", None),
        ];
        let out = s.write_batch(ops, 5_000).await.unwrap();
        let ab: Vec<_> = [0, 1, 3].iter().map(|&i| stored(&out[i]).0.clone()).collect();
        assert_eq!(ab.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![1, 2, 3], "{driver}");
        assert_eq!(
            ab.iter().map(|m| m.timestamp).collect::<Vec<_>>(),
            vec![5_000, 5_001, 5_002],
            "{driver}"
        );
        assert_eq!(stored(&out[2]).0.seq, 1, "{driver}: conversations count separately");
        // A later batch with a clock that went backwards still moves forward.
        let out = s.write_batch(vec![send(b, a, "4", None)], 1_000).await.unwrap();
        let m = stored(&out[0]).0;
        assert_eq!((m.seq, m.timestamp), (4, 5_003), "{driver}");
    }
}

#[tokio::test]
async fn idempotency_keys_return_the_original_within_and_across_batches() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b] = users(s, &["alice", "bob"]).await[..] else {
            unreachable!()
        };
        let out = s
            .write_batch(vec![send(a, b, "hi", Some("k")), send(a, b, "hi again", Some("k"))], 10)
            .await
            .unwrap();
        let (first, dup) = stored(&out[0]);
        assert!(!dup, "{driver}");
        let (second, dup) = stored(&out[1]);
        assert!(dup, "{driver}");
        assert_eq!(second, first, "{driver}: the original, body and all");
        let out = s
            .write_batch(
                vec![send(a, b, "later", Some("k")), send(b, a, "bob's k", Some("k"))],
                20,
            )
            .await
            .unwrap();
        assert_eq!(stored(&out[0]), (first, true), "{driver}");
        assert_eq!(
            stored(&out[1]).0.seq,
            2,
            "{driver}: keys are per sender; the retry took no seq"
        );
    }
}

/// Hands `batches` to the store one after another, as the group commit
/// does (each is polled once before the next is made), lets them run at
/// once, and answers their outcomes in the same order.
async fn overlapped(store: &dyn MessageStore, batches: Vec<Vec<WriteOp>>) -> Vec<Vec<WriteOutcome>> {
    use std::task::Poll;
    let mut running = Vec::new();
    for ops in batches {
        let mut outcome = store.write_batch(ops, 1_000);
        let early = std::future::poll_fn(|cx| Poll::Ready(outcome.as_mut().poll(cx))).await;
        running.push((outcome, early));
    }
    let mut outcomes = Vec::new();
    for (outcome, early) in running {
        let result = match early {
            Poll::Ready(result) => result,
            Poll::Pending => outcome.await,
        };
        outcomes.push(result.unwrap());
    }
    outcomes
}

/// Two batches run at once on a store that overlaps them (PostgreSQL): the
/// second must still take its `seq`s after the first, and find a key the
/// first stored, even where the first is slow to lock (many deliveries) or
/// slow to commit (many sends).
#[tokio::test]
async fn batches_handed_over_back_to_back_keep_their_order_and_see_each_others_keys() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c, d] = users(s, &["alice", "bob", "carol", "dave"]).await[..] else {
            unreachable!()
        };
        // The first batch is slow to reach its locks; the second is quick.
        let slow = WriteOp::Deliver {
            recipient_id: b,
            message_ids: (1..=30_000).map(MessageId).collect(),
        };
        let out = overlapped(
            s,
            vec![vec![slow, send(a, b, "first", None)], vec![send(a, b, "second", None)]],
        )
        .await;
        let seqs = (stored(&out[0][1]).0.seq, stored(&out[1][0]).0.seq);
        assert_eq!(seqs, (1, 2), "{driver}: seq follows the order of hand-over");

        // The first batch is slow to commit after its locks; the second sends
        // the same key in another conversation, so no lock orders them.
        let mut many: Vec<WriteOp> = (0..3_000).map(|i| send(a, c, &format!("bulk {i}"), None)).collect();
        many.push(send(a, c, "keyed", Some("k")));
        let out = overlapped(s, vec![many, vec![send(a, d, "keyed", Some("k"))]]).await;
        let original = stored(&out[0][3_000]).0;
        assert_eq!(
            stored(&out[1][0]),
            (original, true),
            "{driver}: the key sent a moment before is found, not stored twice"
        );
    }
}

#[tokio::test]
async fn unknown_recipients_and_self_sends_store_nothing() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let out = s
            .write_batch(
                vec![
                    send(a, UserId(999), "?", None),
                    send(a, a, "me", None),
                    send(a, b, "ok", None),
                ],
                10,
            )
            .await
            .unwrap();
        assert_eq!(out[0], WriteOutcome::UnknownRecipient, "{driver}");
        assert_eq!(out[1], WriteOutcome::UnknownRecipient, "{driver}");
        assert_eq!(stored(&out[2]).0.seq, 1, "{driver}");
        assert_eq!(s.conversations(a, 10).await.unwrap().len(), 1, "{driver}");
        // A conversation that exists, one that starts here, and an unknown
        // recipient, in one batch.
        let out = s
            .write_batch(
                vec![
                    send(c, a, "new", None),
                    send(a, b, "again", None),
                    send(c, UserId(999), "?", None),
                ],
                20,
            )
            .await
            .unwrap();
        assert_eq!(stored(&out[0]).0.seq, 1, "{driver}");
        assert_eq!(stored(&out[1]).0.seq, 2, "{driver}");
        assert_eq!(out[2], WriteOutcome::UnknownRecipient, "{driver}");
        assert_eq!(s.conversations(a, 10).await.unwrap().len(), 2, "{driver}");
        assert_eq!(s.conversations(c, 10).await.unwrap().len(), 1, "{driver}");
    }
}

#[tokio::test]
async fn delivery_is_recorded_once_and_only_by_the_recipient() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b] = users(s, &["alice", "bob"]).await[..] else {
            unreachable!()
        };
        let out = s
            .write_batch(vec![send(a, b, "1", None), send(a, b, "2", None)], 10)
            .await
            .unwrap();
        let (m1, m2) = (stored(&out[0]).0.id, stored(&out[1]).0.id);
        let deliver = |who, ids: Vec<MessageId>| WriteOp::Deliver {
            recipient_id: who,
            message_ids: ids,
        };
        let out = s
            .write_batch(vec![deliver(a, vec![m1]), deliver(b, vec![m1, MessageId(424242)])], 50)
            .await
            .unwrap();
        assert_eq!(
            out[0],
            WriteOutcome::Delivered(vec![]),
            "{driver}: the sender cannot deliver"
        );
        match &out[1] {
            WriteOutcome::Delivered(ms) => {
                assert_eq!(
                    ms.iter()
                        .map(|m| (m.id, m.sender_id, m.recipient_id, m.seq, m.delivered_at))
                        .collect::<Vec<_>>(),
                    vec![(m1, a, b, 1, 50)]
                )
            }
            other => panic!("{driver}: {other:?}"),
        }
        let again = s.write_batch(vec![deliver(b, vec![m1])], 60).await.unwrap();
        assert_eq!(
            again[0],
            WriteOutcome::Delivered(vec![]),
            "{driver}: only the first ack counts"
        );
        let pending = s.pending(b, None, 10).await.unwrap();
        assert_eq!(pending.iter().map(|m| m.id).collect::<Vec<_>>(), vec![m2], "{driver}");
    }
}

#[tokio::test]
async fn pending_is_paged_oldest_first_after_the_last_one_read() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let ops = (0..6)
            .map(|i| send(if i % 2 == 0 { a } else { c }, b, "m", None))
            .collect();
        let ids: Vec<MessageId> = s
            .write_batch(ops, 10)
            .await
            .unwrap()
            .iter()
            .map(|o| stored(o).0.id)
            .collect();
        let all = s.pending(b, None, 100).await.unwrap();
        assert_eq!(all.iter().map(|m| m.id).collect::<Vec<_>>(), ids, "{driver}");
        // Page by page, each after the last one read: the same, in order.
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.pending(b, after, 4).await.unwrap();
            paged.extend(page.iter().map(|m| m.id));
            after = page.last().map(|m| m.id);
            if page.len() < 4 {
                break;
            }
        }
        assert_eq!(paged, ids, "{driver}");
        let rest = s.pending(b, Some(ids[1]), 100).await.unwrap();
        assert_eq!(
            rest.iter().map(|m| m.id).collect::<Vec<_>>(),
            ids[2..].to_vec(),
            "{driver}"
        );
        assert!(s.pending(a, None, 100).await.unwrap().is_empty(), "{driver}");
    }
}

#[tokio::test]
async fn history_pages_both_ways_and_lists_conversations() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let ops = (0..5).map(|i| send(a, b, &i.to_string(), None)).collect();
        s.write_batch(ops, 100).await.unwrap(); // timestamps 100..=104
        s.write_batch(vec![send(c, a, "hey", None)], 200).await.unwrap();
        let newest = s
            .history(b, a, PageRequest::Before { before: None, limit: 2 })
            .await
            .unwrap();
        assert_eq!(
            newest.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![5, 4],
            "{driver}"
        );
        assert!(newest.has_more, "{driver}");
        let older = s
            .history(
                a,
                b,
                PageRequest::Before {
                    before: Some(103),
                    limit: 5,
                },
            )
            .await
            .unwrap();
        assert_eq!(
            older.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 2, 1],
            "{driver}"
        );
        assert!(!older.has_more, "{driver}");
        let after = s
            .history(a, b, PageRequest::After { after: 101, limit: 2 })
            .await
            .unwrap();
        assert_eq!(
            after.messages.iter().map(|m| m.seq).collect::<Vec<_>>(),
            vec![3, 4],
            "{driver}"
        );
        assert!(after.has_more, "{driver}");
        let none = s
            .history(
                b,
                c,
                PageRequest::Before {
                    before: None,
                    limit: 10,
                },
            )
            .await
            .unwrap();
        assert!(none.messages.is_empty() && !none.has_more, "{driver}");

        let list = s.conversations(a, 10).await.unwrap();
        let peers: Vec<_> = list
            .iter()
            .map(|c| (c.peer_username.as_str(), c.last_message.body.as_str()))
            .collect();
        assert_eq!(
            peers,
            vec![("carol", "hey"), ("bob", "4")],
            "{driver}: most recent first"
        );
        assert_eq!(s.conversations(a, 1).await.unwrap().len(), 1, "{driver}");
        let mut marks = s.conversation_marks(a).await.unwrap();
        marks.sort();
        let mut expected = vec![(b, 5), (c, 1)];
        expected.sort();
        assert_eq!(marks, expected, "{driver}: newest seq per peer");
        assert_eq!(s.conversation_marks(c).await.unwrap(), vec![(a, 1)], "{driver}");
        assert!(
            s.conversation_marks(UserId(999_999)).await.unwrap().is_empty(),
            "{driver}"
        );
        s.ping().await.unwrap();
    }
}

#[tokio::test]
async fn provisioning_creates_or_reuses_accounts_each_with_a_working_session() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [existing] = users(s, &["bench-1"]).await[..] else {
            unreachable!()
        };
        let account = |i: u8| dyad_store::ProvisionedAccount {
            username: format!("bench-{i}"),
            password_hash: "shared".into(),
            token_hash: [i; 32],
            created_at: 1,
            expires_at: 1_000,
        };
        let ids = s.provision(vec![account(1), account(2), account(3)]).await.unwrap();
        assert_eq!(ids[0], existing, "{driver}: an existing name is reused");
        assert_eq!(ids.len(), 3, "{driver}");
        for (i, id) in ids.iter().enumerate() {
            let session = s.session_by_token(&[i as u8 + 1; 32], 10).await.unwrap().unwrap();
            assert_eq!(session.user_id, *id, "{driver}");
        }
        assert_eq!(
            s.user_by_username("bench-3").await.unwrap().unwrap().id,
            ids[2],
            "{driver}"
        );
    }
}

/// PostgreSQL only (the store that several nodes share): two stores on one
/// database, as two nodes, write into the same conversations at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_nodes_writing_one_conversation_at_once_keep_seq_gap_free_and_keys_unique() {
    let url = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let node_a = dyad_store::open(&url).await.unwrap();
    let node_b = dyad_store::open(&url).await.unwrap();
    let [alice, bob, carol] = users(&*node_a, &["alice", "bob", "carol"]).await[..] else {
        unreachable!()
    };
    let write = |store: Arc<dyn MessageStore>, from: UserId, tag: &'static str| async move {
        for round in 0..40 {
            // Each batch: alice<->bob from this side, a retried key that the
            // other node also sends, and a second conversation.
            let ops = vec![
                send(from, if from == alice { bob } else { alice }, tag, None),
                send(alice, carol, tag, Some(&format!("shared-{round}"))),
                send(from, carol, tag, None),
            ];
            store.write_batch(ops, 1_000).await.unwrap();
        }
    };
    let a = tokio::spawn(write(node_a.clone(), alice, "a"));
    let b = tokio::spawn(write(node_b.clone(), bob, "b"));
    a.await.unwrap();
    b.await.unwrap();

    for (x, y, expected) in [(alice, bob, 80), (alice, carol, 40 + 40), (bob, carol, 40)] {
        let page = node_a
            .history(x, y, PageRequest::After { after: 0, limit: 1000 })
            .await
            .unwrap();
        let seqs: Vec<i64> = page.messages.iter().map(|m| m.seq).collect();
        assert_eq!(
            seqs,
            (1..=expected).collect::<Vec<_>>(),
            "{x:?}-{y:?}: gap-free, in order"
        );
        assert!(
            page.messages.windows(2).all(|w| w[0].timestamp < w[1].timestamp),
            "timestamps strictly increase with seq"
        );
    }
    // alice->carol: 40 shared keys stored once each, plus 40 from node a.
    let page = node_b
        .history(alice, carol, PageRequest::After { after: 0, limit: 1000 })
        .await
        .unwrap();
    assert_eq!(page.messages.len(), 80);
}

/// PostgreSQL only: a search asks the newest id buckets first and the rest
/// only when those did not fill the page; ids far apart (the sequence moved
/// on between sends) must still come back in one newest-first order.
#[tokio::test]
async fn search_on_postgres_pages_across_id_buckets_in_order() {
    use dyad_protocol::domain::SearchText;
    use sqlx::Connection;
    let url = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let s = dyad_store::open(&url).await.unwrap();
    let mut sql = sqlx::PgConnection::connect(&url).await.unwrap();
    let [a, b, c] = users(&*s, &["alice", "bob", "carol"]).await[..] else {
        unreachable!()
    };
    let mut ids = Vec::new();
    let mut now = 10;
    for (restart, sends) in [
        (
            None,
            vec![(a, b, "needle one"), (b, a, "needle two"), (c, a, "needle c")],
        ),
        (Some(5 << 16), vec![(a, b, "needle three"), (a, b, "hay")]),
        (Some(40 << 16), vec![(a, b, "needle mid")]),
        (Some(100 << 16), vec![(b, a, "needle four"), (c, b, "needle other")]),
    ] {
        if let Some(at) = restart {
            let alter = format!("ALTER SEQUENCE message_ids RESTART WITH {at}");
            sqlx::raw_sql(sqlx::AssertSqlSafe(alter))
                .execute(&mut sql)
                .await
                .unwrap();
        }
        let ops = sends.into_iter().map(|(f, t, body)| send(f, t, body, None)).collect();
        now += 10;
        let out = s.write_batch(ops, now).await.unwrap();
        ids.extend(out.iter().map(|o| stored(o).0.id));
    }
    let [one, two, by_c, three, _hay, mid, four, other] = ids[..] else {
        unreachable!()
    };
    let three_ts = s
        .history(
            a,
            b,
            PageRequest::Before {
                before: None,
                limit: 10,
            },
        )
        .await
        .unwrap()
        .messages
        .iter()
        .find(|m| m.id == three)
        .unwrap()
        .timestamp;
    let text = SearchText::parse("needle").unwrap();
    // Without statistics every word counts as rare: one query by the user's
    // own lexeme. After ANALYZE "needle" is common here: rounds of buckets
    // from the newest (100, 96-99, 80-95, 16-79, then all below 16). A
    // fresh store reads the statistics afresh.
    for s in [s, {
        sqlx::raw_sql("ANALYZE messages").execute(&mut sql).await.unwrap();
        dyad_store::open(&url).await.unwrap()
    }] {
        let found = |user, before, limit| {
            let (s, text) = (&s, &text);
            async move {
                let page = s.search(user, text, before, limit).await.unwrap();
                (page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), page.has_more)
            }
        };
        let all = vec![four, mid, three, by_c, two, one];
        assert_eq!(found(a, None, 10).await, (all.clone(), false));
        assert_eq!(
            found(b, None, 10).await,
            (vec![other, four, mid, three, two, one], false)
        );
        assert_eq!(found(c, None, 10).await, (vec![other, by_c], false));
        for n in 1..all.len() {
            assert_eq!(found(a, None, n).await, (all[..n].to_vec(), true), "limit {n}");
        }
        assert_eq!(found(a, None, all.len()).await, (all, false));
        assert_eq!(found(a, Some(three_ts), 10).await, (vec![by_c, two, one], false));
    }
}

/// PostgreSQL's search index keeps a short pending list: the insert that
/// fills it moves it into the index while that insert's batch waits, so a
/// long list is a long stall (docs/BENCHMARKS.md §19).
#[tokio::test]
async fn postgres_search_index_keeps_a_short_pending_list() {
    use sqlx::Connection;
    let url = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let _store = dyad_store::open(&url).await.unwrap();
    let mut sql = sqlx::PgConnection::connect(&url).await.unwrap();
    let options: Vec<String> =
        sqlx::query_scalar("SELECT unnest(reloptions) FROM pg_class WHERE oid = 'messages_search'::regclass")
            .fetch_all(&mut sql)
            .await
            .unwrap();
    assert_eq!(options, vec!["gin_pending_list_limit=1024".to_string()]);
}

fn read(reader: UserId, message_id: MessageId) -> WriteOp {
    WriteOp::Read { reader, message_id }
}

#[tokio::test]
async fn a_read_mark_moves_only_up_delivers_what_it_covers_and_counts_unread() {
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let ops = vec![
            send(a, b, "1", None),
            send(a, b, "2", None),
            send(b, a, "3", None),
            send(a, b, "4", None),
        ];
        let out = s.write_batch(ops, 10).await.unwrap();
        let ids: Vec<MessageId> = out.iter().map(|o| stored(o).0.id).collect();
        let list = s.conversations(b, 10).await.unwrap();
        assert_eq!(
            (list[0].unread_count, list[0].last_read_seq, list[0].peer_last_read_seq),
            (3, 0, 0),
            "{driver}"
        );
        // Bob reads up to message 2: messages 1 and 2 are delivered on the way.
        let out = s
            .write_batch(vec![read(b, ids[1]), read(c, ids[0]), read(b, ids[0])], 50)
            .await
            .unwrap();
        match &out[0] {
            WriteOutcome::Read(mark) => {
                assert_eq!(
                    (
                        mark.reader,
                        mark.peer,
                        mark.message_id,
                        mark.seq,
                        mark.read_at,
                        mark.receipts
                    ),
                    (b, a, ids[1], 2, 50, true),
                    "{driver}"
                );
                assert_eq!(
                    mark.delivered.iter().map(|d| (d.id, d.seq)).collect::<Vec<_>>(),
                    vec![(ids[0], 1), (ids[1], 2)],
                    "{driver}"
                );
            }
            other => panic!("{driver}: {other:?}"),
        }
        assert_eq!(out[1], WriteOutcome::NotFound, "{driver}: not carol's message");
        assert_eq!(out[2], WriteOutcome::Unchanged, "{driver}: a mark never moves back");
        let bobs = s.conversations(b, 10).await.unwrap();
        assert_eq!(
            (bobs[0].unread_count, bobs[0].last_read_seq, bobs[0].peer_last_read_seq),
            (1, 2, 0),
            "{driver}"
        );
        let alices = s.conversations(a, 10).await.unwrap();
        assert_eq!(
            (
                alices[0].unread_count,
                alices[0].last_read_seq,
                alices[0].peer_last_read_seq
            ),
            (1, 0, 2),
            "{driver}"
        );
        let page = s
            .history(a, b, PageRequest::After { after: 0, limit: 10 })
            .await
            .unwrap();
        let statuses: Vec<_> = page.messages.iter().map(|m| m.view().status).collect();
        use dyad_protocol::MessageStatus::{Delivered, Read, Sent};
        assert_eq!(statuses, vec![Read, Read, Sent, Sent], "{driver}");
        assert_eq!(
            s.pending(b, None, 10).await.unwrap().len(),
            1,
            "{driver}: only 4 is pending"
        );
        // With receipts off on one side, neither sees the other's mark.
        let off = dyad_store::SettingsPatch {
            read_receipts: Some(false),
            presence: None,
        };
        s.update_settings(a, off).await.unwrap();
        let page = s
            .history(b, a, PageRequest::After { after: 0, limit: 10 })
            .await
            .unwrap();
        let statuses: Vec<_> = page.messages.iter().map(|m| m.view().status).collect();
        assert_eq!(statuses, vec![Delivered, Delivered, Sent, Sent], "{driver}");
        let out = s.write_batch(vec![read(a, ids[2])], 60).await.unwrap();
        match &out[0] {
            WriteOutcome::Read(mark) => assert!(!mark.receipts, "{driver}"),
            other => panic!("{driver}: {other:?}"),
        }
        let bobs = s.conversations(b, 10).await.unwrap();
        assert_eq!((bobs[0].last_read_seq, bobs[0].peer_last_read_seq), (2, 0), "{driver}");
    }
}

#[tokio::test]
async fn edits_and_deletes_are_checked_stored_replayed_and_listed_in_order_of_change() {
    const HOUR: i64 = 3_600_000;
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let out = s
            .write_batch(vec![send(a, b, "first", None), send(a, b, "second", None)], 10)
            .await
            .unwrap();
        let (m1, m2) = (stored(&out[0]).0.id, stored(&out[1]).0.id);
        let edit = |who, id, text: &str, window| WriteOp::Edit {
            editor: who,
            message_id: id,
            body: dyad_store::testing::body(text),
            window,
        };
        let delete = |who, id| WriteOp::Delete {
            deleter: who,
            message_id: id,
        };
        let out = s
            .write_batch(
                vec![
                    edit(c, m1, "x", HOUR),
                    edit(b, m1, "x", HOUR),
                    edit(a, m1, "x", 5),
                    edit(a, m1, "first, fixed", HOUR),
                    delete(b, m2),
                    delete(a, m2),
                    edit(a, m2, "too late", HOUR),
                    delete(a, m2),
                ],
                20,
            )
            .await
            .unwrap();
        assert_eq!(out[0], WriteOutcome::NotFound, "{driver}: an outsider");
        assert_eq!(out[1], WriteOutcome::Forbidden, "{driver}: the recipient");
        assert_eq!(out[2], WriteOutcome::EditWindowPassed, "{driver}");
        let WriteOutcome::Changed(edited) = &out[3] else {
            panic!("{driver}: {:?}", out[3])
        };
        assert_eq!(
            (edited.body.as_str(), edited.edited_at),
            ("first, fixed", Some(20)),
            "{driver}"
        );
        assert_eq!(out[4], WriteOutcome::Forbidden, "{driver}");
        let WriteOutcome::Changed(deleted) = &out[5] else {
            panic!("{driver}: {:?}", out[5])
        };
        // Two changes in one millisecond still get distinct, ordered times.
        assert_eq!((deleted.body.as_str(), deleted.deleted_at), ("", Some(21)), "{driver}");
        assert_eq!(out[6], WriteOutcome::NotFound, "{driver}: a deleted message is gone");
        assert_eq!(out[7], WriteOutcome::NotFound, "{driver}");
        // Replayed to the recipient as they are now.
        let pending = s.pending(b, None, 10).await.unwrap();
        let views: Vec<_> = pending.iter().map(|m| m.view()).collect();
        assert_eq!(
            views
                .iter()
                .map(|v| (v.message.as_str(), v.edited_at, v.deleted))
                .collect::<Vec<_>>(),
            vec![("first, fixed", Some(20), false), ("", None, true)],
            "{driver}"
        );
        let changed = |since| s.history(b, a, PageRequest::ChangedSince { since, limit: 10 });
        let all = changed(0).await.unwrap();
        assert_eq!(
            all.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![m1, m2],
            "{driver}"
        );
        let later = changed(20).await.unwrap();
        assert_eq!(
            later.messages.iter().map(|m| m.id).collect::<Vec<_>>(),
            vec![m2],
            "{driver}"
        );
        // A block stops edits, not deletes.
        let out = s.write_batch(vec![send(a, b, "third", None)], 30).await.unwrap();
        let m3 = stored(&out[0]).0.id;
        s.set_block(b, a, Some(40)).await.unwrap();
        let out = s
            .write_batch(vec![edit(a, m3, "changed", HOUR), delete(a, m3)], 50)
            .await
            .unwrap();
        assert_eq!(out[0], WriteOutcome::Blocked, "{driver}");
        assert!(matches!(out[1], WriteOutcome::Changed(_)), "{driver}: {:?}", out[1]);
    }
}

#[tokio::test]
async fn search_finds_whole_words_in_any_case_in_the_searchers_own_current_messages() {
    use dyad_protocol::domain::SearchText;
    for (driver, fresh) in drivers().await {
        let s = &*fresh.store;
        let [a, b, c] = users(s, &["alice", "bob", "carol"]).await[..] else {
            unreachable!()
        };
        let out = s
            .write_batch(
                vec![
                    send(a, b, "Viele Grüße aus Köln", None),
                    send(b, a, "grüße zurück, and a café", None),
                    send(c, b, "Grüße from carol", None),
                    send(a, b, "greetings", None),
                    send(a, b, "a typo here", None),
                    send(a, b, "secret plan", None),
                ],
                10,
            )
            .await
            .unwrap();
        let ids: Vec<MessageId> = out.iter().map(|o| stored(o).0.id).collect();
        let found = |user, q: &str, before: Option<i64>, limit| {
            let text = SearchText::parse(q).unwrap();
            async move {
                let page = s.search(user, &text, before, limit).await.unwrap();
                (page.messages.iter().map(|m| m.id).collect::<Vec<_>>(), page.has_more)
            }
        };
        // Any case, any letters; newest first; only the searcher's own.
        assert_eq!(
            found(a, "GRÜSSE", None, 10).await.0,
            vec![],
            "{driver}: no folding of ß to ss"
        );
        assert_eq!(
            found(a, "grüße", None, 10).await,
            (vec![ids[1], ids[0]], false),
            "{driver}"
        );
        assert_eq!(
            found(b, "Grüße", None, 10).await.0,
            vec![ids[2], ids[1], ids[0]],
            "{driver}"
        );
        assert_eq!(found(c, "grüße", None, 10).await.0, vec![ids[2]], "{driver}");
        assert_eq!(
            found(b, "grüße", None, 2).await,
            (vec![ids[2], ids[1]], true),
            "{driver}"
        );
        // Every word must be there; whole words only.
        assert_eq!(found(a, "grüße köln", None, 10).await.0, vec![ids[0]], "{driver}");
        assert_eq!(found(a, "greet", None, 10).await.0, vec![], "{driver}");
        assert_eq!(found(a, "CAFÉ", None, 10).await.0, vec![ids[1]], "{driver}");
        // Words that look like syntax are words.
        assert_eq!(found(a, "\"and\" OR NOT", None, 10).await.0, vec![], "{driver}");
        // `before` bounds by time: everything here was stored at 10..15.
        let ts = s
            .history(a, b, PageRequest::After { after: 0, limit: 10 })
            .await
            .unwrap();
        let second_ts = ts.messages[1].timestamp;
        assert_eq!(found(a, "grüße", Some(second_ts), 10).await.0, vec![ids[0]], "{driver}");
        // Edited text is found by its new words only; deleted text never.
        let edit = WriteOp::Edit {
            editor: a,
            message_id: ids[4],
            body: dyad_store::testing::body("a fixed line"),
            window: 1_000_000,
        };
        let delete = WriteOp::Delete {
            deleter: a,
            message_id: ids[5],
        };
        s.write_batch(vec![edit, delete], 20).await.unwrap();
        assert_eq!(found(a, "typo", None, 10).await.0, vec![], "{driver}");
        assert_eq!(found(b, "fixed", None, 10).await.0, vec![ids[4]], "{driver}");
        assert_eq!(found(a, "secret", None, 10).await.0, vec![], "{driver}");
    }
}

/// A database a newer release wrote is refused before anything is written:
/// an older binary must not run on a schema it does not know.
#[tokio::test]
async fn a_database_from_a_newer_release_is_refused_and_left_as_it_was() {
    use sqlx::Connection;
    for (driver, fresh) in drivers().await {
        users(&*fresh.store, &["alice"]).await;
        let newer = 999;
        let version = async || -> i64 {
            if let Some(path) = fresh.url.strip_prefix("sqlite://") {
                let conn = rusqlite::Connection::open(path).unwrap();
                conn.query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap()
            } else {
                let mut sql = sqlx::PgConnection::connect(&fresh.url).await.unwrap();
                sqlx::query_scalar::<_, i32>("SELECT max(version) FROM dyad_schema")
                    .fetch_one(&mut sql)
                    .await
                    .unwrap()
                    .into()
            }
        };
        if let Some(path) = fresh.url.strip_prefix("sqlite://") {
            let conn = rusqlite::Connection::open(path).unwrap();
            conn.pragma_update(None, "user_version", newer).unwrap();
        } else {
            let mut sql = sqlx::PgConnection::connect(&fresh.url).await.unwrap();
            sqlx::query("INSERT INTO dyad_schema (version) VALUES ($1)")
                .bind(newer)
                .execute(&mut sql)
                .await
                .unwrap();
        }
        let Err(refused) = dyad_store::open(&fresh.url).await else {
            panic!("{driver}: a newer schema was opened");
        };
        let said = refused.to_string();
        assert!(
            said.contains("schema version 999, newer than this dyad knows"),
            "{driver}: {said}"
        );
        assert_eq!(version().await, i64::from(newer), "{driver}: untouched");
    }
}

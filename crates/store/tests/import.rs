//! `dyad admin migrate`: a SQLite store moved into PostgreSQL answers every
//! question as it did, with the same ids, and new writes go on from there.
#![allow(clippy::unwrap_used, missing_docs)]

use std::sync::Arc;

use dyad_protocol::UserId;
use dyad_protocol::domain::SearchText;
use dyad_protocol::rest::{PresenceVisibility, SettingsPatch};
use dyad_store::testing::{body, key};
use dyad_store::{MessageStore, NewMessage, NewSession, PageRequest, WriteOp, WriteOutcome};

fn send(from: UserId, to: UserId, text: &str, k: Option<&str>) -> WriteOp {
    WriteOp::Send(NewMessage {
        sender_id: from,
        recipient_id: to,
        body: body(text),
        client_msg_id: k.map(key),
    })
}

/// Everything the store can tell about `users`, for comparison.
async fn everything(s: &dyn MessageStore, users: &[UserId]) -> Vec<String> {
    let mut seen = Vec::new();
    for &u in users {
        seen.push(format!("{:?}", s.user_by_id(u).await.unwrap()));
        seen.push(format!("{:?}", s.sessions_of(u, 50).await.unwrap()));
        seen.push(format!("{:?}", s.blocks_of(u).await.unwrap()));
        seen.push(format!("{:?}", s.conversations(u, 100).await.unwrap()));
        seen.push(format!("{:?}", s.pending(u, None, 100).await.unwrap()));
        seen.push(format!("{:?}", s.conversation_marks(u).await.unwrap()));
        for word in ["hello", "grüße", "secret"] {
            let text = SearchText::parse(word).unwrap();
            seen.push(format!("{:?}", s.search(u, &text, None, 100).await.unwrap()));
        }
        for &peer in users {
            let page = PageRequest::After { after: 0, limit: 100 };
            seen.push(format!("{:?}", s.history(u, peer, page).await.unwrap()));
        }
    }
    seen
}

#[tokio::test]
async fn a_sqlite_store_moves_to_postgres_with_every_row_and_id() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("source.db");
    let url = format!("sqlite://{}", path.display());
    let source: Arc<dyn MessageStore> = dyad_store::open(&url).await.unwrap();
    let mut users = Vec::new();
    for name in ["alice", "bob", "carol", "dave"] {
        users.push(
            source
                .create_user(name, &format!("hash of {name}"), 5)
                .await
                .unwrap()
                .id,
        );
    }
    let [a, b, c, d] = users[..] else { unreachable!() };
    for (i, &u) in users.iter().enumerate() {
        let token = [i as u8 + 1; 32];
        source
            .create_session(NewSession {
                user_id: u,
                token_hash: token,
                created_at: 10,
                expires_at: i64::MAX,
            })
            .await
            .unwrap();
    }
    source
        .update_settings(
            a,
            SettingsPatch {
                read_receipts: Some(false),
                presence: Some(PresenceVisibility::Contacts),
            },
        )
        .await
        .unwrap();
    let out = source
        .write_batch(
            vec![
                send(a, b, "hello one", Some("k1")),
                send(a, b, "hello two", None),
                send(b, a, "Grüße", Some("k2")),
                send(a, b, "secret plan", None),
                send(c, a, "hello from carol", None),
                send(d, b, "hello from dave", None),
            ],
            100,
        )
        .await
        .unwrap();
    let ids = dyad_store::testing::stored_ids(&out);
    source
        .write_batch(
            vec![
                WriteOp::Deliver {
                    recipient_id: b,
                    message_ids: vec![ids[0]],
                },
                WriteOp::Read {
                    reader: b,
                    message_id: ids[1],
                },
                WriteOp::Edit {
                    editor: a,
                    message_id: ids[1],
                    body: body("hello two, edited"),
                    window: 1_000_000,
                },
                WriteOp::Delete {
                    deleter: a,
                    message_id: ids[3],
                },
            ],
            200,
        )
        .await
        .unwrap();
    source.set_block(b, c, Some(300)).await.unwrap();
    source.delete_user(d, 400).await.unwrap();
    let before = everything(&*source, &users).await;
    drop(source);

    let target = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let mut heard = Vec::new();
    let copied =
        dyad_store::postgres::import::from_sqlite(&path, &target, |table, n| heard.push((table.to_owned(), n)))
            .await
            .unwrap();
    assert_eq!((copied.users, copied.sessions, copied.messages), (4, 4, 6));
    assert!(heard.contains(&("messages".to_owned(), 6)), "{heard:?}");
    let moved = dyad_store::open(&target).await.unwrap();
    assert_eq!(everything(&*moved, &users).await, before);

    // Tokens still open their sessions; new rows follow the copied ones.
    assert!(moved.session_by_token(&[1; 32], 500).await.unwrap().is_some());
    let eve = moved.create_user("eve", "h", 600).await.unwrap().id;
    assert!(!users.contains(&eve));
    let next = moved
        .write_batch(vec![send(a, b, "after the move", None)], 700)
        .await
        .unwrap();
    match &next[0] {
        WriteOutcome::Stored { message, .. } => {
            assert_eq!(message.seq, 5, "seq goes on in the conversation");
            assert!(!ids.contains(&message.id));
        }
        other => panic!("{other:?}"),
    }
    // The idempotency key came along: a retry finds the original.
    let retry = moved
        .write_batch(vec![send(a, b, "hello one", Some("k1"))], 800)
        .await
        .unwrap();
    match &retry[0] {
        WriteOutcome::Stored { message, .. } => assert_eq!(message.id, ids[0]),
        other => panic!("{other:?}"),
    }
    // A second import into the same database is refused.
    let again = dyad_store::postgres::import::from_sqlite(&path, &target, |_, _| {}).await;
    assert!(again.unwrap_err().to_string().contains("empty"));
}

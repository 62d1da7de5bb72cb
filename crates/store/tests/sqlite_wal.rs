//! The SQLite driver's files: its write-ahead log stays bounded under steady
//! writes, every file is readable by its owner only, and a running store
//! sees what another process wrote to them.
#![allow(clippy::unwrap_used, missing_docs)]

use dyad_protocol::UserId;
use dyad_store::sqlite::SqliteStore;
use dyad_store::{MessageStore, NewMessage, WriteOp, WriteOutcome};

#[tokio::test]
async fn the_wal_stays_bounded_under_steady_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("wal.db");
    let store = dyad_store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let mut users: Vec<UserId> = Vec::new();
    for i in 0..200 {
        users.push(store.create_user(&format!("user{i}"), "h", 0).await.unwrap().id);
    }
    let wal = dir.path().join("wal.db-wal");
    let mut largest = 0;
    for b in 0..200usize {
        let ops = (0..500)
            .map(|i| {
                let from = (b * 500 + i) % users.len();
                WriteOp::Send(NewMessage {
                    sender_id: users[from],
                    recipient_id: users[from ^ 1],
                    body: dyad_store::testing::body("x".repeat(200)),
                    client_msg_id: Some(dyad_store::testing::key(format!("{b}-{i}"))),
                })
            })
            .collect();
        store.write_batch(ops, b as i64).await.unwrap();
        largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
    }
    // 100,000 messages write ~100 MB of WAL frames; a WAL that is restarted
    // after checkpoints stays a small fraction of that.
    assert!(
        largest < 40 * 1024 * 1024,
        "WAL grew to {} MiB",
        largest / (1024 * 1024)
    );
}

#[tokio::test]
async fn the_data_folder_and_its_files_are_owner_only() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data").join("dyad.db");
    let store = dyad_store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    store.create_user("alice", "h", 0).await.unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&dir.path().join("data")), 0o700);
    for name in ["dyad.db", "dyad.db-wal", "dyad.db-shm"] {
        assert_eq!(mode(&dir.path().join("data").join(name)), 0o600, "{name}");
    }
    drop(store);
    // A file left readable by an older version is made owner-only on open.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let _store = dyad_store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    assert_eq!(mode(&path), 0o600);
}

#[tokio::test]
async fn a_running_store_sees_what_another_process_wrote() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("t.db");
    // The server, and `dyad admin …` run beside it: two writers on one file.
    let server = SqliteStore::open(&path).unwrap();
    let admin = SqliteStore::open(&path).unwrap();
    let alice = server.create_user("alice", "h", 0).await.unwrap().id;
    let bob = server.create_user("bob", "h", 0).await.unwrap().id;
    let send = || {
        vec![WriteOp::Send(NewMessage {
            sender_id: alice,
            recipient_id: bob,
            body: dyad_store::testing::body("hi"),
            client_msg_id: None,
        })]
    };
    let seq = |out: &[WriteOutcome]| match &out[0] {
        WriteOutcome::Stored { message, .. } => message.seq,
        other => panic!("expected Stored, got {other:?}"),
    };
    assert_eq!(seq(&server.write_batch(send(), 1).await.unwrap()), 1);
    assert_eq!(seq(&admin.write_batch(send(), 2).await.unwrap()), 2);
    // The server's cached counter is stale; it must not reuse seq 2.
    assert_eq!(seq(&server.write_batch(send(), 3).await.unwrap()), 3);
    assert!(admin.delete_user(bob, 4).await.unwrap());
    let out = server.write_batch(send(), 5).await.unwrap();
    assert!(matches!(out[0], WriteOutcome::UnknownRecipient), "{out:?}");
}

/// Search text and idempotency keys are indexed by the writer after the
/// send's transaction: they get there without any search asking, and a
/// message edited or deleted before then is indexed as it is by then (its
/// old text never).
#[tokio::test]
async fn new_text_reaches_the_search_index_without_a_search() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fts.db");
    let store = dyad_store::open(&format!("sqlite://{}", path.display())).await.unwrap();
    let a = store.create_user("alice", "h", 0).await.unwrap().id;
    let b = store.create_user("bob", "h", 0).await.unwrap().id;
    let send = |text: &str| {
        WriteOp::Send(NewMessage {
            sender_id: a,
            recipient_id: b,
            body: dyad_store::testing::body(text.to_owned()),
            client_msg_id: None,
        })
    };
    let out = store
        .write_batch(
            vec![send("alpha kept"), send("bravo edited"), send("charlie deleted")],
            10,
        )
        .await
        .unwrap();
    let ids = dyad_store::testing::stored_ids(&out);
    let changed = store
        .write_batch(
            vec![
                WriteOp::Edit {
                    editor: a,
                    message_id: ids[1],
                    body: dyad_store::testing::body("delta".to_owned()),
                    window: i64::MAX,
                },
                WriteOp::Delete {
                    deleter: a,
                    message_id: ids[2],
                },
            ],
            20,
        )
        .await
        .unwrap();
    assert!(
        changed.iter().all(|o| matches!(o, WriteOutcome::Changed(_))),
        "{changed:?}"
    );

    // Read the index straight from the file, beside the running store.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let indexed_upto = || -> i64 {
        conn.query_row("SELECT value FROM meta WHERE name = 'indexed_upto'", [], |r| r.get(0))
            .unwrap()
    };
    let last: i64 = conn
        .query_row("SELECT MAX(id) FROM messages", [], |r| r.get(0))
        .unwrap();
    // The writer indexes about once a second; 30 s is only a bound for a
    // stalled machine.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while indexed_upto() < last {
        assert!(std::time::Instant::now() < deadline, "not indexed after 30 s");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let hits = |word: &str| -> i64 {
        conn.query_row(
            "SELECT COUNT(*) FROM messages_fts WHERE messages_fts MATCH ?1",
            [word],
            |r| r.get(0),
        )
        .unwrap()
    };
    assert_eq!(
        [hits("alpha"), hits("bravo"), hits("delta"), hits("charlie")],
        [1, 0, 1, 0]
    );
    drop(store);
}

/// A retry is answered with the original whether its first copy is in the
/// same batch, in the key index, or only in the message rows (the index
/// lost its last writes in a crash, or its folder is gone): the index is
/// brought up to the rows when the store opens.
#[tokio::test]
async fn a_retry_finds_its_original_in_the_batch_the_index_and_after_the_index_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let url = format!("sqlite://{}", path.display());
    let store = dyad_store::open(&url).await.unwrap();
    let a = store.create_user("alice", "h", 0).await.unwrap().id;
    let b = store.create_user("bob", "h", 0).await.unwrap().id;
    let send = |key: &str, text: &str| keyed(a, b, key, text);
    // Stored, then retried in the same batch and the next.
    let out = store
        .write_batch(vec![send("k1", "one"), send("k1", "one")], 10)
        .await
        .unwrap();
    let first = stored(&out[0]);
    assert_eq!(stored(&out[1]), (first.0, 1, true));
    let out = store.write_batch(vec![send("k1", "one")], 11).await.unwrap();
    assert_eq!(stored(&out[0]), (first.0, 1, true));
    // The same key from another sender is another message.
    let out = store.write_batch(vec![keyed(b, a, "k1", "one")], 12).await.unwrap();
    assert!(!stored(&out[0]).2);

    let out = store.write_batch(vec![send("k2", "two")], 13).await.unwrap();
    let second = stored(&out[0]);
    drop(store);
    // The index forgets everything, as if its writes since the start had
    // been lost in a crash: the store reads the keys back from the rows.
    {
        let db = fjall::Database::builder(keys_folder(&path)).open().unwrap();
        let meta = db.keyspace("meta", fjall::KeyspaceCreateOptions::default).unwrap();
        db.keyspace("keys", fjall::KeyspaceCreateOptions::default)
            .unwrap()
            .clear()
            .unwrap();
        meta.insert("upto", 0i64.to_be_bytes()).unwrap();
    }
    let store = dyad_store::open(&url).await.unwrap();
    let out = store
        .write_batch(vec![send("k2", "two"), send("k1", "one"), send("k3", "three")], 14)
        .await
        .unwrap();
    assert_eq!(stored(&out[0]), (second.0, 3, true));
    assert_eq!(stored(&out[1]), (first.0, 1, true));
    assert_eq!(stored(&out[2]).1, 4);
    drop(store);
    // No index folder at all: built again from the rows.
    std::fs::remove_dir_all(keys_folder(&path)).unwrap();
    let store = dyad_store::open(&url).await.unwrap();
    let out = store
        .write_batch(vec![send("k3", "three"), send("k1", "one")], 15)
        .await
        .unwrap();
    assert!(stored(&out[0]).2);
    assert_eq!(stored(&out[1]), (first.0, 1, true));
}

/// A database put back from an older copy is behind its key index, which
/// names rows that the copy does not have: the index is rebuilt from the
/// copy's rows, so a key stored only after the copy is a new message again
/// and keeps working as a key from then on.
#[tokio::test]
async fn a_database_restored_from_an_older_copy_rebuilds_its_key_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("live.db");
    let copy = dir.path().join("copy.db");
    let url = format!("sqlite://{}", path.display());
    let store = dyad_store::open(&url).await.unwrap();
    let a = store.create_user("alice", "h", 0).await.unwrap().id;
    let b = store.create_user("bob", "h", 0).await.unwrap().id;
    let out = store.write_batch(vec![keyed(a, b, "k1", "one")], 10).await.unwrap();
    let first = stored(&out[0]);
    dyad_store::sqlite::backup::backup(&path, &copy).unwrap();
    let out = store.write_batch(vec![keyed(a, b, "k2", "two")], 11).await.unwrap();
    assert_eq!(stored(&out[0]).1, 2);
    drop(store);

    dyad_store::sqlite::backup::restore(&copy, &path, true).unwrap();
    let store = dyad_store::open(&url).await.unwrap();
    let out = store
        .write_batch(
            vec![
                keyed(a, b, "k1", "one"),
                keyed(a, b, "k3", "three"),
                keyed(a, b, "k2", "two again"),
            ],
            12,
        )
        .await
        .unwrap();
    assert_eq!(stored(&out[0]), (first.0, 1, true));
    let (three, two) = (stored(&out[1]), stored(&out[2]));
    assert_eq!((three.1, three.2, two.1, two.2), (2, false, 3, false));
    let out = store
        .write_batch(vec![keyed(a, b, "k2", "two again"), keyed(a, b, "k3", "three")], 13)
        .await
        .unwrap();
    assert_eq!(stored(&out[0]), (two.0, 3, true));
    assert_eq!(stored(&out[1]), (three.0, 2, true));
}

/// A second process on the same file (`dyad admin …` beside the server)
/// cannot hold the key index at the same time: it refuses sends that carry
/// a key, and stores the rest; the first keeps answering retries.
#[tokio::test]
async fn only_one_process_at_a_time_holds_the_key_index() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.db");
    let server = SqliteStore::open(&path).unwrap();
    let admin = SqliteStore::open(&path).unwrap();
    let a = server.create_user("alice", "h", 0).await.unwrap().id;
    let b = server.create_user("bob", "h", 0).await.unwrap().id;
    let out = server.write_batch(vec![keyed(a, b, "k1", "one")], 10).await.unwrap();
    let first = stored(&out[0]);
    let refused = admin.write_batch(vec![keyed(a, b, "k1", "one")], 11).await;
    assert!(
        refused.unwrap_err().to_string().contains("another process"),
        "a send with a key is refused without the index"
    );
    let mut plain = keyed(a, b, "unused", "plain");
    if let WriteOp::Send(m) = &mut plain {
        m.client_msg_id = None;
    }
    let out = admin.write_batch(vec![plain], 12).await.unwrap();
    assert_eq!(stored(&out[0]).1, 2);
    let out = server.write_batch(vec![keyed(a, b, "k1", "one")], 13).await.unwrap();
    assert_eq!(stored(&out[0]), (first.0, 1, true));
    assert!(server.holds_key_index() && !admin.holds_key_index());
    // A second server on the file is refused outright.
    let url = format!("sqlite://{}", path.display());
    let second = dyad_store::open_exclusive(&url).await;
    assert!(second.is_err_and(|e| e.to_string().contains("one server per SQLite file")));
}

fn keys_folder(db: &std::path::Path) -> std::path::PathBuf {
    std::path::PathBuf::from(format!("{}-keys", db.display()))
}

fn keyed(from: UserId, to: UserId, key: &str, text: &str) -> WriteOp {
    WriteOp::Send(NewMessage {
        sender_id: from,
        recipient_id: to,
        body: dyad_store::testing::body(text.to_owned()),
        client_msg_id: Some(dyad_store::testing::key(key.to_owned())),
    })
}

/// A stored message's id and seq, and whether it was a retry.
fn stored(o: &WriteOutcome) -> (dyad_protocol::MessageId, i64, bool) {
    match o {
        WriteOutcome::Stored { message, duplicate } => (message.id, message.seq, *duplicate),
        other => panic!("{other:?}"),
    }
}

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

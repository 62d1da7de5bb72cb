//! The SQLite driver keeps its write-ahead log bounded under steady writes.
#![allow(clippy::unwrap_used, missing_docs)]

use dyad_protocol::UserId;
use dyad_store::{NewMessage, WriteOp};

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
                    body: "x".repeat(200),
                    client_msg_id: Some(format!("{b}-{i}")),
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

//! Moving the data: `dyad admin backup` and `restore` (a snapshot of a live
//! SQLite store, taken while messages keep flowing, put back and served
//! again) and `dyad admin migrate` (SQLite into PostgreSQL).

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use dyad_client::Client;
use dyad_client::protocol::{MessageId, ServerEvent};

use crate::helpers::*;

/// `dyad admin ARGS`: whether it succeeded, and what it printed (stdout, then
/// stderr).
async fn admin(args: &[&str]) -> (bool, String) {
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_dyad"))
        .arg("admin")
        .args(args)
        .env_remove("DYAD_DATABASE")
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn sqlite(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backup_taken_under_load_restores_with_every_message_acked_before_it_began() {
    let dir = tempfile::tempdir().unwrap();
    let (live, copy, restored) = (
        dir.path().join("live.db"),
        dir.path().join("backup.db"),
        dir.path().join("restored.db"),
    );
    let mut server = ServerProcess::start(&["--database", &sqlite(&live)]).await;
    let mut alice = Client::new(&server.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = alice.register("bob", PASSWORD).await.unwrap().user_id;

    // Alice sends without pause, twenty at a time, and notes every ack.
    let acked: Arc<Mutex<Vec<MessageId>>> = Arc::default();
    let (count_tx, mut count) = tokio::sync::watch::channel(0usize);
    let stop = tokio_util::sync::CancellationToken::new();
    let mut conn = alice.connect().await.unwrap();
    assert!(matches!(
        conn.next_event().await.unwrap(),
        ServerEvent::PendingComplete { count: 0 }
    ));
    let sender = tokio::spawn({
        let (acked, stop) = (acked.clone(), stop.clone());
        let count = count_tx;
        async move {
            let mut i = 0;
            while !stop.is_cancelled() {
                for _ in 0..20 {
                    conn.send_message(bob, &format!("message {i}"), Some(&format!("key-{i}")))
                        .await
                        .unwrap();
                    i += 1;
                }
                let mut waiting = 20;
                while waiting > 0 {
                    if let ServerEvent::MessageAck { message_id, .. } = conn.next_event().await.unwrap() {
                        let mut acked = acked.lock().unwrap();
                        acked.push(message_id);
                        count.send_replace(acked.len());
                        waiting -= 1;
                    }
                }
            }
        }
    });
    let acked_count = || acked.lock().unwrap().len();
    count.wait_for(|n| *n >= 300).await.unwrap();

    let before_backup: HashSet<MessageId> = acked.lock().unwrap().iter().copied().collect();
    let (ok, said) = admin(&["backup", copy.to_str().unwrap(), "--database", &sqlite(&live)]).await;
    assert!(ok, "{said}");
    assert!(said.starts_with("backed up "), "{said}");
    // The load went on through the backup, and after it.
    let during = acked_count();
    count.wait_for(|n| *n >= during + 100).await.unwrap();
    stop.cancel();
    sender.await.unwrap();

    // No overwriting: of a backup, or of a store a server has open.
    let (ok, said) = admin(&["backup", copy.to_str().unwrap(), "--database", &sqlite(&live)]).await;
    assert!(!ok && said.contains("exists"), "{said}");
    let (ok, said) = admin(&["restore", copy.to_str().unwrap(), "--database", &sqlite(&live)]).await;
    assert!(!ok && said.contains("--replace"), "{said}");
    let (ok, said) = admin(&[
        "restore",
        copy.to_str().unwrap(),
        "--database",
        &sqlite(&live),
        "--replace",
    ])
    .await;
    assert!(!ok && said.contains("stop the server"), "{said}");
    server.terminate().await;

    let (ok, said) = admin(&["restore", copy.to_str().unwrap(), "--database", &sqlite(&restored)]).await;
    assert!(ok && said.starts_with("restored "), "{said}");
    let server = ServerProcess::start(&["--database", &sqlite(&restored)]).await;
    // Accounts, sessions and messages came back: Alice's old token works.
    let alice = Client::new(&server.base).with_token(alice.token().unwrap(), alice.user_id().unwrap());
    let stored = all_history(&alice, bob).await;
    let ids: HashSet<MessageId> = stored.iter().map(|(id, ..)| *id).collect();
    let missing = before_backup.difference(&ids).count();
    assert_eq!(missing, 0, "of {} acked before the backup began", before_backup.len());
    // A consistent snapshot: seq runs 1..=n with no gap.
    let mut seqs: Vec<i64> = stored.iter().map(|(_, seq, _)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=stored.len() as i64).collect::<Vec<_>>());
    assert!(
        stored.len() < acked_count(),
        "messages acked after the backup are not in it"
    );
}

#[tokio::test]
async fn backup_and_restore_refuse_postgres_and_damaged_files() {
    let dir = tempfile::tempdir().unwrap();
    let (ok, said) = admin(&["backup", "/tmp/x.db", "--database", "postgres://u@h/db"]).await;
    assert!(!ok && said.contains("pg_dump"), "{said}");
    let junk = dir.path().join("junk.db");
    std::fs::write(&junk, b"not a database, just some bytes that are long enough to matter").unwrap();
    let target = dir.path().join("target.db");
    let (ok, said) = admin(&["restore", junk.to_str().unwrap(), "--database", &sqlite(&target)]).await;
    assert!(!ok, "{said}");
    assert!(!target.exists(), "nothing is touched before the backup is checked");
}

#[tokio::test]
async fn a_sqlite_store_migrated_to_postgres_serves_the_same_history_to_the_same_tokens() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("small.db");
    let mut server = ServerProcess::start(&["--database", &sqlite(&db)]).await;
    let mut alice = Client::new(&server.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = alice.register("bob", PASSWORD).await.unwrap().user_id;
    let mut conn = alice.connect().await.unwrap();
    assert!(matches!(
        conn.next_event().await.unwrap(),
        ServerEvent::PendingComplete { count: 0 }
    ));
    for i in 0..3 {
        conn.send_message(bob, &format!("before the move {i}"), None)
            .await
            .unwrap();
        while !matches!(conn.next_event().await.unwrap(), ServerEvent::MessageAck { .. }) {}
    }
    let before = all_history(&alice, bob).await;
    server.terminate().await;

    let target = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let (ok, said) = admin(&["migrate", "--from", &sqlite(&db), "--to", &target]).await;
    assert!(ok, "{said}");
    assert!(
        said.contains("migrated 2 users, 1 sessions, 1 conversations and 3 messages"),
        "{said}"
    );
    let server = ServerProcess::start(&["--database", &target]).await;
    let alice = Client::new(&server.base).with_token(alice.token().unwrap(), alice.user_id().unwrap());
    assert_eq!(all_history(&alice, bob).await, before);
    // Into a database that holds data: refused, nothing added.
    let (ok, said) = admin(&["migrate", "--from", &sqlite(&db), "--to", &target]).await;
    assert!(!ok && said.contains("empty"), "{said}");
    assert_eq!(all_history(&alice, bob).await, before);
}

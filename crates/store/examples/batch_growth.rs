//! How the SQLite driver's batch write cost changes as the store grows,
//! under the load generator's shape: many users in pairs, each batch half
//! new messages and half delivery acks of earlier ones.
//!
//! `cargo run --release -p dyad-store --example batch_growth -- [USERS] [BATCHES] [BATCH]`
//!
//! Each line gives the wall time per op of the last 100 batches, and the
//! process's CPU time and bytes written to disk per message stored (from
//! /proc/self: the writer, the checkpointer and the indexer together).
//! Texts are ten words of a 1,000-word vocabulary, so that the search
//! index does real work.
#![allow(clippy::unwrap_used, missing_docs)]

use std::time::Instant;

use dyad_protocol::{MessageId, UserId};
use dyad_store::{NewMessage, WriteOp, WriteOutcome};

#[tokio::main]
async fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().unwrap()).collect();
    let users = args.first().copied().unwrap_or(10_000);
    let batches = args.get(1).copied().unwrap_or(1000);
    let batch = args.get(2).copied().unwrap_or(1024);
    let dir = tempfile::tempdir().unwrap();
    // Experiments: a database made with another page size first.
    if let Ok(size) = std::env::var("PAGE_SIZE") {
        let c = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        c.pragma_update(None, "page_size", size.parse::<i64>().unwrap())
            .unwrap();
        c.execute_batch("PRAGMA journal_mode = WAL; CREATE TABLE probe (x); DROP TABLE probe;")
            .unwrap();
    }
    let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("g.db").display()))
        .await
        .unwrap();
    if let Ok(names) = std::env::var("DROP_INDEXES") {
        let c = rusqlite::Connection::open(dir.path().join("g.db")).unwrap();
        for name in names.split(',') {
            c.execute_batch(&format!("DROP INDEX {name}")).unwrap();
        }
    }
    let keys = std::env::var_os("NO_KEYS").is_none();
    let accounts = dyad_store::testing::numbered_accounts(users);
    let ids: Vec<UserId> = store.provision(accounts).await.unwrap();
    let mut pending: Vec<(UserId, MessageId)> = Vec::new();
    let (mut k, mut window, mut window_ops) = (0usize, Instant::now(), 0usize);
    let (mut cpu, mut disk, mut stored) = (cpu_seconds(), disk_bytes(), 0usize);
    for b in 0..batches {
        let mut ops = Vec::with_capacity(batch);
        let acks = std::mem::take(&mut pending);
        for (to, id) in acks.iter().take(batch / 2) {
            ops.push(WriteOp::Deliver {
                recipient_id: *to,
                message_ids: vec![*id],
            });
        }
        while ops.len() < batch {
            let from = k % users;
            ops.push(WriteOp::Send(NewMessage {
                sender_id: ids[from],
                recipient_id: ids[from ^ 1],
                body: dyad_store::testing::body(text(k)),
                client_msg_id: keys.then(|| dyad_store::testing::key(format!("run-{k}"))),
            }));
            k += 1;
        }
        window_ops += ops.len();
        stored += batch - acks.len().min(batch / 2);
        for outcome in store.write_batch(ops, b as i64).await.unwrap() {
            if let WriteOutcome::Stored { message, .. } = outcome {
                pending.push((message.recipient_id, message.id));
            }
        }
        if (b + 1) % 100 == 0 {
            let us = window.elapsed().as_secs_f64() * 1e6 / window_ops as f64;
            let (cpu_now, disk_now) = (cpu_seconds(), disk_bytes());
            println!(
                "batches {:>6}  messages {:>9}  {:>6.1} µs/op  {:>6.1} CPU µs/message  {:>7.0} disk bytes/message",
                b + 1,
                k,
                us,
                (cpu_now - cpu) * 1e6 / stored as f64,
                (disk_now - disk) as f64 / stored as f64
            );
            window = Instant::now();
            (window_ops, stored, cpu, disk) = (0, 0, cpu_now, disk_now);
        }
    }
}

/// Ten words of a 1,000-word vocabulary, different for each message.
fn text(k: usize) -> String {
    let mut x = k as u64 ^ 0x9e37_79b9_7f4a_7c15;
    let mut words = Vec::with_capacity(10);
    for _ in 0..10 {
        x = x
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        words.push(format!("w{}", (x >> 33) % 1000));
    }
    words.join(" ")
}

/// This process's user + system CPU seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap()) / 100.0
}

/// Bytes this process has caused to be written to storage.
fn disk_bytes() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    let line = io.lines().find(|l| l.starts_with("write_bytes:")).unwrap();
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

//! How the SQLite driver's batch write cost changes as the store grows,
//! under the load generator's shape: many users in pairs, each batch half
//! new messages and half delivery acks of earlier ones.
//!
//! `cargo run --release -p dyad-store --example batch_growth -- [USERS] [BATCHES] [BATCH]`
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
    let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("g.db").display()))
        .await
        .unwrap();
    let accounts = dyad_store::testing::numbered_accounts(users);
    let ids: Vec<UserId> = store.provision(accounts).await.unwrap();
    let mut pending: Vec<(UserId, MessageId)> = Vec::new();
    let (mut k, mut window, mut window_ops) = (0usize, Instant::now(), 0usize);
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
                body: dyad_store::testing::body("x".repeat(100)),
                client_msg_id: Some(dyad_store::testing::key(format!("run-{k}"))),
            }));
            k += 1;
        }
        window_ops += ops.len();
        for outcome in store.write_batch(ops, b as i64).await.unwrap() {
            if let WriteOutcome::Stored { message, .. } = outcome {
                pending.push((message.recipient_id, message.id));
            }
        }
        if (b + 1) % 100 == 0 {
            let us = window.elapsed().as_secs_f64() * 1e6 / window_ops as f64;
            println!("batches {:>6}  messages {:>9}  {:>6.1} µs/op", b + 1, k, us);
            window = Instant::now();
            window_ops = 0;
        }
    }
}

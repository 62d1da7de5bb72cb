//! The store's batch write: one group-commit transaction of sends and
//! delivery acks, as the load generator's traffic makes them, on SQLite and
//! (when the machine has one) PostgreSQL.
#![allow(clippy::unwrap_used, missing_docs)]

use std::cell::RefCell;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use dyad_protocol::{MessageId, UserId};
use dyad_store::{NewMessage, WriteOp, WriteOutcome};

const USERS: usize = 1000;
const BATCH: usize = 512;

fn batch(c: &mut Criterion) {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let sqlite = format!("sqlite://{}", dir.path().join("b.db").display());
    let mut group = c.benchmark_group("store");
    group.throughput(Throughput::Elements(BATCH as u64));
    bench_store(&mut group, &runtime, "sqlite", &sqlite);
    // PostgreSQL when the machine has one (a scratch schema, as the tests use).
    match runtime.block_on(dyad_store::testing::scratch_postgres_url()) {
        Ok(url) => bench_store(&mut group, &runtime, "postgres", &url),
        Err(e) => eprintln!("skipping postgres: {e}"),
    }
    group.finish();
}

fn bench_store(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    runtime: &tokio::runtime::Runtime,
    driver: &str,
    url: &str,
) {
    let store = runtime.block_on(dyad_store::open(url)).unwrap();
    let accounts = dyad_store::testing::numbered_accounts(USERS);
    let users: Vec<UserId> = runtime.block_on(store.provision(accounts)).unwrap();
    // (messages sent so far, messages waiting for their delivery ack)
    let state: RefCell<(usize, Vec<(UserId, MessageId)>)> = RefCell::new((0, Vec::new()));

    group.bench_function(format!("{driver} write_batch (half sends, half delivery acks)"), |b| {
        b.iter_batched(
            || {
                let (next, pending) = &mut *state.borrow_mut();
                let mut ops: Vec<WriteOp> = pending
                    .drain(..)
                    .take(BATCH / 2)
                    .map(|(to, id)| WriteOp::Deliver {
                        recipient_id: to,
                        message_ids: vec![id],
                    })
                    .collect();
                while ops.len() < BATCH {
                    let from = *next % USERS;
                    ops.push(WriteOp::Send(NewMessage {
                        sender_id: users[from],
                        recipient_id: users[from ^ 1],
                        body: dyad_store::testing::body("x".repeat(100)),
                        client_msg_id: Some(dyad_store::testing::key(format!("k{next}"))),
                    }));
                    *next += 1;
                }
                ops
            },
            |ops| {
                let now = state.borrow().0 as i64;
                for outcome in runtime.block_on(store.write_batch(ops, now)).unwrap() {
                    if let WriteOutcome::Stored { message, .. } = outcome {
                        state.borrow_mut().1.push((message.recipient_id, message.id));
                    }
                }
            },
            BatchSize::PerIteration,
        )
    });
}

criterion_group!(benches, batch);
criterion_main!(benches);

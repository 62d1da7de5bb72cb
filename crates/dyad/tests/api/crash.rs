//! The crash test: the real binary, killed with SIGKILL right after acks.

use std::collections::HashMap;
use std::path::Path;

use dyad_client::Client;
use dyad_client::protocol::{MessageId, ServerEvent, UserId};

use crate::helpers::*;

async fn start(db: &Path) -> ServerProcess {
    ServerProcess::start(&["--database", &format!("sqlite://{}", db.display())]).await
}

const TOTAL: usize = 400;

/// Connects as `client` and sends `message i` with key `key-i` for every i.
async fn connect_and_send_all(client: &Client, to: UserId) -> dyad_client::Connection {
    let mut conn = client.connect().await.unwrap();
    assert!(matches!(
        conn.next_event().await.unwrap(),
        ServerEvent::PendingComplete { count: 0 }
    ));
    for i in 0..TOTAL {
        conn.send_message(to, &format!("message {i}"), Some(&format!("key-{i}")))
            .await
            .unwrap();
    }
    conn
}

#[tokio::test]
async fn every_acked_message_survives_kill_9_and_retries_are_not_stored_twice() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("crash.db");
    let mut process = start(&db).await;
    let mut alice = Client::new(&process.base);
    alice.register("alice", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob = alice.register("bob", PASSWORD).await.unwrap().user_id;

    let mut conn = connect_and_send_all(&alice, bob).await;
    // Kill as soon as part of the acks are in; later sends are mid-flight.
    let mut acked: HashMap<String, (MessageId, i64)> = HashMap::new();
    while acked.len() < TOTAL / 4 {
        if let ServerEvent::MessageAck {
            client_msg_id,
            message_id,
            seq,
            ..
        } = conn.next_event().await.unwrap()
        {
            acked.insert(client_msg_id.unwrap(), (message_id, seq));
        }
    }
    process.kill().await;
    // Acks that were already on the wire when it died count too.
    while let Ok(ServerEvent::MessageAck {
        client_msg_id,
        message_id,
        seq,
        ..
    }) = conn.next_event().await
    {
        acked.insert(client_msg_id.unwrap(), (message_id, seq));
    }

    let process = start(&db).await;
    let mut alice = Client::new(&process.base);
    alice.login("alice", PASSWORD).await.unwrap();
    let stored = all_history(&alice, bob).await;
    let by_id: HashMap<MessageId, i64> = stored.iter().map(|(id, seq, _)| (*id, *seq)).collect();
    for (key, (id, seq)) in &acked {
        assert_eq!(by_id.get(id), Some(seq), "acked {key} ({id}) must survive with its seq");
    }
    let mut seqs: Vec<i64> = stored.iter().map(|(_, seq, _)| *seq).collect();
    seqs.sort();
    assert_eq!(
        seqs,
        (1..=stored.len() as i64).collect::<Vec<_>>(),
        "gap-free after the crash"
    );

    // The client retries everything; nothing is stored twice.
    let mut conn = connect_and_send_all(&alice, bob).await;
    let mut answered = 0;
    while answered < TOTAL {
        if let ServerEvent::MessageAck {
            client_msg_id,
            message_id,
            ..
        } = conn.next_event().await.unwrap()
        {
            if let Some((original, _)) = acked.get(&client_msg_id.unwrap()) {
                assert_eq!(*original, message_id, "a retry gets the original message_id");
            }
            answered += 1;
        }
    }
    let stored = all_history(&alice, bob).await;
    assert_eq!(stored.len(), TOTAL, "each client_msg_id stored exactly once");
    drop(process);
}

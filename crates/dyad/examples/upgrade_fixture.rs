//! Makes the upgrade fixture: drives a running server (the release being
//! upgraded from) through every kind of data it keeps, then records what
//! its REST API shows each user. `tests/api/upgrade.rs` opens the
//! database with today's server and expects the same answers.
//!
//! ```sh
//! dyad serve --database sqlite://fixture.db --listen 127.0.0.1:18400 --rate-limit 0 --abuse-limits off &
//! cargo run -p dyad --example upgrade_fixture -- http://127.0.0.1:18400 expected.json
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use dyad_client::protocol::{ClientEvent, MessageId, ServerEvent, UserId};
use dyad_client::{Client, Connection};
use serde_json::{Value, json};

const PASSWORD: &str = "fixture password 1";

/// Reads events until `want` picks one out.
async fn until<T>(conn: &mut Connection, mut want: impl FnMut(ServerEvent) -> Option<T>) -> T {
    loop {
        if let Some(found) = want(conn.next_event().await.unwrap()) {
            return found;
        }
    }
}

async fn connected(client: &Client) -> Connection {
    let mut conn = client.connect().await.unwrap();
    until(&mut conn, |e| {
        matches!(e, ServerEvent::PendingComplete { .. }).then_some(())
    })
    .await;
    conn
}

/// Sends `text` to `to` with `key` and waits for its ack.
async fn send(conn: &mut Connection, to: UserId, text: &str, key: &str) -> MessageId {
    conn.send_message(to, text, Some(key)).await.unwrap();
    until(conn, |e| match e {
        ServerEvent::MessageAck { message_id, .. } => Some(message_id),
        _ => None,
    })
    .await
}

async fn user(base: &str, name: &str) -> Client {
    let mut client = Client::new(base);
    client.register(name, PASSWORD).await.unwrap();
    client.login(name, PASSWORD).await.unwrap();
    client
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (base, out) = (&args[1], &args[2]);
    let alice = user(base, "alice").await;
    let bob = user(base, "bob").await;
    let carol = user(base, "carol").await;
    let dave = user(base, "dave").await;
    let mut alice_phone = Client::new(base);
    alice_phone.login("alice", PASSWORD).await.unwrap();
    let (a, b) = (alice.user_id().unwrap(), bob.user_id().unwrap());

    // Settings that differ from the defaults.
    let http = reqwest::Client::new();
    let patch = |client: &Client, body: Value| {
        http.patch(format!("{base}/api/v1/users/me/settings"))
            .bearer_auth(client.token().unwrap())
            .json(&body)
            .send()
    };
    patch(&alice, json!({"read_receipts": false}))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    patch(&bob, json!({"presence": "contacts"}))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();

    // Messages both ways; some delivered, some read, one edited, one deleted.
    let mut to_bob = connected(&alice).await;
    let mut ids = Vec::new();
    for i in 1..=5 {
        ids.push(send(&mut to_bob, b, &format!("hello {i}"), &format!("k{i}")).await);
    }
    let mut to_alice = connected(&bob).await;
    send(&mut to_alice, a, "Grüße 1", "g1").await;
    send(&mut to_alice, a, "Grüße 2", "g2").await;
    to_alice.delivery_ack(ids[..3].to_vec()).await.unwrap();
    to_alice
        .send(&ClientEvent::ReadAck { message_id: ids[1] })
        .await
        .unwrap();
    until(&mut to_alice, |e| {
        matches!(e, ServerEvent::MessageRead { .. }).then_some(())
    })
    .await;
    to_bob
        .send(&ClientEvent::EditMessage {
            message_id: ids[3],
            message: "hello 4, edited".into(),
        })
        .await
        .unwrap();
    until(&mut to_bob, |e| {
        matches!(e, ServerEvent::MessageEdited { .. }).then_some(())
    })
    .await;
    to_bob
        .send(&ClientEvent::DeleteMessage { message_id: ids[4] })
        .await
        .unwrap();
    until(&mut to_bob, |e| {
        matches!(e, ServerEvent::MessageDeleted { .. }).then_some(())
    })
    .await;

    // A block, and a deleted account that leaves its messages behind.
    let mut carol_conn = connected(&carol).await;
    send(&mut carol_conn, b, "hi from carol", "c1").await;
    bob.block(carol.user_id().unwrap()).await.unwrap();
    let mut dave_conn = connected(&dave).await;
    send(&mut dave_conn, a, "bye from dave", "d1").await;
    dave.delete_account(PASSWORD).await.unwrap();
    for conn in [to_bob, to_alice, carol_conn] {
        conn.close().await.unwrap();
    }

    // What each user's devices see.
    let mut views = Vec::new();
    for (name, client) in [
        ("alice", &alice),
        ("alice's phone", &alice_phone),
        ("bob", &bob),
        ("carol", &carol),
    ] {
        let mut paths: Vec<String> = [
            "/api/v1/users/me/settings",
            "/api/v1/sessions",
            "/api/v1/blocks",
            "/api/v1/conversations",
            "/api/v1/search?q=hello",
            "/api/v1/search?q=gr%C3%BC%C3%9Fe",
        ]
        .map(String::from)
        .into();
        for peer in [a, b, carol.user_id().unwrap(), dave.user_id().unwrap()] {
            paths.push(format!("/api/v1/messages/{peer}?limit=100"));
        }
        for path in paths {
            let response = http
                .get(format!("{base}{path}"))
                .bearer_auth(client.token().unwrap())
                .send()
                .await
                .unwrap();
            let status = response.status().as_u16();
            let body: Value = response.json().await.unwrap_or(Value::Null);
            views.push(json!({"user": name, "token": client.token(), "user_id": client.user_id(), "path": path, "status": status, "body": body}));
        }
    }
    std::fs::write(out, serde_json::to_string_pretty(&views).unwrap()).unwrap();
    eprintln!("{} views written to {out}", views.len());
}

//! Property tests of the frame decoder and of every client event, against
//! the real server: arbitrary text, arbitrary bytes, arbitrary JSON, and
//! envelopes of each client event with arbitrary `data`. Each frame may get
//! `error` events (or nothing); the connection must then still answer a
//! `ping`, and the server must never close it or fall silent. The number of
//! cases is bounded (`PROPTEST_CASES`, 400 by default) so that CI stays quick.

use std::cell::RefCell;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use proptest::prelude::*;
use proptest::test_runner::{Config as PropConfig, TestCaseError, TestRunner};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::helpers::*;

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Every event a client may send, and every field name they use.
const EVENTS: &[&str] = &[
    "send_message",
    "delivery_ack",
    "subscribe_presence",
    "unsubscribe_presence",
    "typing",
    "ping",
    "read_ack",
    "edit_message",
    "delete_message",
];
const FIELDS: &[&str] = &[
    "recipient_id",
    "message",
    "client_msg_id",
    "client_timestamp",
    "message_ids",
    "user_ids",
    "message_id",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,40}".prop_map(Value::from),
        "[ucm][0-9]{1,20}".prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{1,14}", inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn frame() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,300}".prop_map(Message::text),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Message::binary),
        json_value().prop_map(|v| Message::text(v.to_string())),
        (prop::sample::select(EVENTS), json_value())
            .prop_map(|(event, data)| Message::text(json!({"event": event, "data": data}).to_string())),
        (".{0,24}", json_value())
            .prop_map(|(event, data)| Message::text(json!({"event": event, "data": data}).to_string())),
        (
            prop::sample::select(EVENTS),
            prop::collection::btree_map(prop::sample::select(FIELDS), json_value(), 0..5),
        )
            .prop_map(|(event, fields)| {
                let data: serde_json::Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                Message::text(json!({"event": event, "data": data}).to_string())
            }),
    ]
}

async fn open(base: &str, token: &str) -> Ws {
    let mut request = format!("{}/api/v1/ws", base.replacen("http", "ws", 1))
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    // Through `connected` and `pending_complete`.
    for _ in 0..2 {
        tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    }
    ws
}

/// Sends `frame`, then a ping, and reads until the pong: every frame in
/// between must be a known server event, and nothing may close the link.
async fn one_case(ws: &mut Ws, frame: Message) -> Result<(), TestCaseError> {
    let shown = format!("{frame:?}").chars().take(300).collect::<String>();
    ws.send(frame)
        .await
        .map_err(|e| TestCaseError::fail(format!("send {shown}: {e}")))?;
    ws.send(Message::text(r#"{"event":"ping","data":{}}"#))
        .await
        .map_err(|e| TestCaseError::fail(format!("ping after {shown}: {e}")))?;
    loop {
        let next = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .map_err(|_| TestCaseError::fail(format!("no answer within 5 s after {shown}")))?;
        match next {
            Some(Ok(Message::Text(text))) => {
                let event: Value = serde_json::from_str(&text)
                    .map_err(|e| TestCaseError::fail(format!("{e}: {text} after {shown}")))?;
                match event["event"].as_str() {
                    Some("pong") => return Ok(()),
                    Some("error") if event["data"]["code"].is_string() => {}
                    // A frame that happens to be a valid request gets its answer.
                    Some("message_ack" | "presence" | "message_delivered") => {}
                    _ => return Err(TestCaseError::fail(format!("unexpected {text} after {shown}"))),
                }
            }
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            other => {
                return Err(TestCaseError::fail(format!(
                    "connection ended ({other:?}) after {shown}"
                )));
            }
        }
    }
}

#[test]
fn arbitrary_frames_get_error_events_and_never_break_the_connection() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (server, token) = runtime.block_on(async {
        let server = TestServer::spawn_with(dyad_server::Config {
            rate_limit: 0,
            ..test_config()
        })
        .await;
        let alice = server.user("alice").await;
        let _bob = server.user("bob").await;
        let token = alice.client.token().unwrap().to_owned();
        (server, token)
    });
    let ws = RefCell::new(runtime.block_on(open(&server.base, &token)));
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(400);
    let mut runner = TestRunner::new(PropConfig {
        cases,
        failure_persistence: None,
        ..PropConfig::default()
    });
    let result = runner.run(&frame(), |frame| {
        let outcome = runtime.block_on(one_case(&mut ws.borrow_mut(), frame));
        if outcome.is_err() {
            // Shrinking goes on with a fresh connection.
            *ws.borrow_mut() = runtime.block_on(open(&server.base, &token));
        }
        outcome
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    runtime.block_on(server.stop());
}

//! The test harness: `TestServer::spawn()` starts a real server and hands out
//! logged-in users; `TestConn` wraps a WebSocket with typed expectations.

use std::path::{Path, PathBuf};
use std::time::Duration;

use dyad_client::protocol::events::{ErrorEvent, PresenceView};
use dyad_client::protocol::{ErrorCode, MessageId, MessageView, ServerEvent, UserId};
use dyad_client::{Client, ClientError, Connection};
use dyad_server::Config;
use dyad_server::config::AbuseLimits;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single expectation waits before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);
pub const PASSWORD: &str = "correct horse";

/// Held by the tests that load both cores on their own (browsers, floods),
/// so that they do not run at the same time and skew each other's timing.
pub async fn heavy() -> tokio::sync::MutexGuard<'static, ()> {
    static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    HEAVY.lock().await
}

/// Every test client connects from 127.0.0.1, so the per-address limits
/// are off but in the abuse tests, which turn them on.
pub fn test_config() -> Config {
    Config {
        presence_grace: Duration::from_millis(400),
        abuse: AbuseLimits::off(),
        session_check: Duration::from_millis(100),
        ..Config::default()
    }
}

pub struct TestServer {
    pub base: String,
    pub db_path: PathBuf,
    _dir: Option<tempfile::TempDir>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn spawn() -> TestServer {
        Self::spawn_with(test_config()).await
    }

    pub async fn spawn_with(config: Config) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let db_path = dir.path().join("dyad.db");
        let mut server = Self::spawn_at(&db_path, config).await;
        server._dir = Some(dir);
        server
    }

    /// A server on an existing database file (for restarts).
    pub async fn spawn_at(db_path: &Path, config: Config) -> TestServer {
        Self::spawn_on("127.0.0.1:0", db_path, config).await
    }

    /// A server on a given address and database (a restart "in place").
    pub async fn spawn_on(addr: &str, db_path: &Path, config: Config) -> TestServer {
        let mut server = Self::spawn_url(addr, &format!("sqlite://{}", db_path.display()), config).await;
        server.db_path = db_path.to_owned();
        server
    }

    /// A server on a given address and database URL (`postgres://…` too).
    pub async fn spawn_url(addr: &str, url: &str, config: Config) -> TestServer {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber::fmt().with_env_filter("debug").try_init();
        }
        let store = dyad_store::open(url).await.unwrap();
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let scheme = if config.tls.is_some() { "https" } else { "http" };
        let base = format!("{scheme}://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            dyad_server::serve(listener, config, store, async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        TestServer {
            base,
            db_path: PathBuf::new(),
            _dir: None,
            stop: Some(stop),
            task: Some(task),
        }
    }

    pub fn client(&self) -> Client {
        Client::new(&self.base)
    }

    /// Registers `name` and logs in.
    pub async fn user(&self, name: &str) -> TestUser {
        let client = self.client();
        client.register(name, PASSWORD).await.unwrap();
        self.login(name).await
    }

    /// Logs in as an existing user (a new session).
    pub async fn login(&self, name: &str) -> TestUser {
        let mut client = self.client();
        let session = client.login(name, PASSWORD).await.unwrap();
        TestUser {
            client,
            id: session.user_id,
        }
    }

    /// Stops the server cleanly and waits until it has.
    pub async fn stop(mut self) {
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(WAIT, task)
                .await
                .expect("server did not stop")
                .unwrap();
        }
    }

    /// Stops the server but keeps its database directory alive.
    pub async fn stop_keep(mut self) -> (PathBuf, Option<tempfile::TempDir>) {
        self.shutdown().await;
        (self.db_path.clone(), self._dir.take())
    }
}

/// The status and code of a REST error (anything else fails the test).
pub fn api_error(result: Result<impl std::fmt::Debug, ClientError>) -> (u16, ErrorCode) {
    match result {
        Err(ClientError::Api { status, code, .. }) => (status, code),
        other => panic!("expected an API error, got {other:?}"),
    }
}

pub struct TestUser {
    pub client: Client,
    pub id: UserId,
}

impl TestUser {
    /// Opens a WebSocket and reads through its replay, which must be empty.
    pub async fn connect(&self) -> TestConn {
        let mut conn = self.connect_raw().await;
        let replayed = conn.replay().await;
        assert!(replayed.is_empty(), "unexpected pending messages: {replayed:?}");
        conn
    }

    /// Opens a WebSocket without reading anything past `connected`.
    pub async fn connect_raw(&self) -> TestConn {
        TestConn(
            tokio::time::timeout(WAIT, self.client.connect())
                .await
                .expect("connect timed out")
                .unwrap(),
        )
    }

    /// Sends one message on a fresh connection and returns its ack.
    pub async fn history(&self, peer: UserId, query: &[(&str, String)]) -> Vec<MessageView> {
        self.client.history(peer, query).await.unwrap().messages
    }
}

pub struct Ack {
    pub client_msg_id: Option<String>,
    pub message_id: MessageId,
    pub seq: i64,
    pub timestamp: i64,
}

pub struct TestConn(pub Connection);

impl TestConn {
    pub async fn next(&mut self) -> ServerEvent {
        match tokio::time::timeout(WAIT, self.0.next_event()).await {
            Ok(Ok(event)) => event,
            Ok(Err(e)) => panic!("connection failed: {e}"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// The next event, or the close frame's (code, reason).
    pub async fn next_or_close(&mut self) -> Result<ServerEvent, (u16, String)> {
        match tokio::time::timeout(WAIT, self.0.next_event()).await {
            Ok(Ok(event)) => Ok(event),
            Ok(Err(ClientError::Closed { code, reason })) => Err((code, reason)),
            Ok(Err(e)) => panic!("connection failed: {e}"),
            Err(_) => panic!("no event within {WAIT:?}"),
        }
    }

    /// Reads until the connection closes, returning the close code.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            if let Err((code, _)) = self.next_or_close().await {
                return code;
            }
        }
    }

    /// Reads the replay that opens a connection: its messages, in order.
    pub async fn replay(&mut self) -> Vec<MessageView> {
        let mut messages = Vec::new();
        loop {
            match self.next().await {
                ServerEvent::ReceiveMessage(m) => messages.push(m),
                ServerEvent::PendingComplete { count } => {
                    assert_eq!(count as usize, messages.len(), "pending_complete count");
                    return messages;
                }
                other => panic!("unexpected event during replay: {other:?}"),
            }
        }
    }

    pub async fn send(&mut self, to: UserId, text: &str, key: Option<&str>) {
        self.0.send_message(to, text, key).await.unwrap();
    }

    pub async fn send_raw(&mut self, text: &str) {
        self.0.send_raw(text).await.unwrap();
    }

    pub async fn ack(&mut self, ids: Vec<MessageId>) {
        self.0.delivery_ack(ids).await.unwrap();
    }

    pub async fn expect_ack(&mut self) -> Ack {
        match self.next().await {
            ServerEvent::MessageAck {
                client_msg_id,
                message_id,
                seq,
                timestamp,
                ..
            } => Ack {
                client_msg_id,
                message_id,
                seq,
                timestamp,
            },
            other => panic!("expected message_ack, got {other:?}"),
        }
    }

    pub async fn send_and_ack(&mut self, to: UserId, text: &str, key: &str) -> Ack {
        self.send(to, text, Some(key)).await;
        self.expect_ack().await
    }

    pub async fn expect_message(&mut self) -> MessageView {
        match self.next().await {
            ServerEvent::ReceiveMessage(m) => m,
            other => panic!("expected receive_message, got {other:?}"),
        }
    }

    pub async fn expect_delivered(&mut self) -> MessageId {
        match self.next().await {
            ServerEvent::MessageDelivered { message_id, .. } => message_id,
            other => panic!("expected message_delivered, got {other:?}"),
        }
    }

    pub async fn expect_error(&mut self, code: ErrorCode) -> ErrorEvent {
        match self.next().await {
            ServerEvent::Error(e) if e.code == code => e,
            other => panic!("expected error {code}, got {other:?}"),
        }
    }

    pub async fn read_ack(&mut self, message_id: MessageId) {
        use dyad_client::protocol::ClientEvent;
        self.0.send(&ClientEvent::ReadAck { message_id }).await.unwrap();
    }

    pub async fn edit(&mut self, message_id: MessageId, text: &str) {
        use dyad_client::protocol::ClientEvent;
        let edit = ClientEvent::EditMessage {
            message_id,
            message: text.into(),
        };
        self.0.send(&edit).await.unwrap();
    }

    pub async fn delete(&mut self, message_id: MessageId) {
        use dyad_client::protocol::ClientEvent;
        self.0.send(&ClientEvent::DeleteMessage { message_id }).await.unwrap();
    }

    /// `message_read`: (reader, peer, message, seq).
    pub async fn expect_read(&mut self) -> (UserId, UserId, MessageId, i64) {
        match self.next().await {
            ServerEvent::MessageRead {
                reader_id,
                peer_id,
                message_id,
                seq,
                ..
            } => (reader_id, peer_id, message_id, seq),
            other => panic!("expected message_read, got {other:?}"),
        }
    }

    /// `message_edited`: (message, new text).
    pub async fn expect_edited(&mut self) -> (MessageId, String) {
        match self.next().await {
            ServerEvent::MessageEdited {
                message_id, message, ..
            } => (message_id, message),
            other => panic!("expected message_edited, got {other:?}"),
        }
    }

    pub async fn expect_deleted(&mut self) -> MessageId {
        match self.next().await {
            ServerEvent::MessageDeleted { message_id, .. } => message_id,
            other => panic!("expected message_deleted, got {other:?}"),
        }
    }

    pub async fn expect_presence(&mut self) -> PresenceView {
        match self.next().await {
            ServerEvent::Presence(p) => p,
            other => panic!("expected presence, got {other:?}"),
        }
    }

    /// Asserts that nothing arrives for `d` (a ping round trip proves the
    /// link is alive, so silence means silence).
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(result) = tokio::time::timeout(d, self.0.next_event()).await {
            panic!("expected silence, got {result:?}");
        }
        self.0.send(&dyad_client::protocol::ClientEvent::Ping {}).await.unwrap();
        match self.next().await {
            ServerEvent::Pong {} => {}
            other => panic!("expected silence, got {other:?}"),
        }
    }
}

/// `dyad serve` as a real process (for kill -9), listening on a free port.
pub struct ServerProcess {
    pub child: tokio::process::Child,
    pub base: String,
}

impl ServerProcess {
    /// Starts `dyad serve` with `args` after the defaults (port 0, no flood
    /// control, no abuse limits, warnings only) and waits until it answers
    /// `/healthz`.
    pub async fn start(args: &[&str]) -> ServerProcess {
        Self::start_with(&["--rate-limit", "0", "--abuse-limits", "off", "--log", "warn"], args).await
    }

    /// Starts `dyad serve` on port 0 with `defaults` then `args`.
    pub async fn start_with(defaults: &[&str], args: &[&str]) -> ServerProcess {
        use tokio::io::AsyncBufReadExt;
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_dyad"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(defaults)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        let line = tokio::time::timeout(WAIT, lines.next_line())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        let base = line.strip_prefix("dyad listening on ").unwrap().to_owned();
        assert_eq!(reqwest::get(format!("{base}/healthz")).await.unwrap().status(), 200);
        ServerProcess { child, base }
    }

    /// SIGTERM (a clean stop), and wait until it is gone.
    pub async fn terminate(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id().unwrap() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
        tokio::time::timeout(WAIT, self.child.wait()).await.unwrap().unwrap();
    }

    /// kill -9, and wait until it is gone.
    pub async fn kill(&mut self) {
        self.child.start_kill().unwrap();
        self.child.wait().await.unwrap();
    }
}

/// Registers and logs in `alice` and `bob` through the given clients (over
/// TLS, a proxy…), opens a WebSocket for each and reads their empty
/// replays. Returns Alice's client, Bob's id, and both connections.
pub async fn alice_and_bob_connected(mut alice: Client, mut bob: Client) -> (Client, UserId, TestConn, TestConn) {
    alice.register("alice", PASSWORD).await.unwrap();
    bob.register("bob", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob_id = bob.login("bob", PASSWORD).await.unwrap().user_id;
    let mut a = TestConn(alice.connect().await.unwrap());
    let mut b = TestConn(bob.connect().await.unwrap());
    assert!(a.replay().await.is_empty() && b.replay().await.is_empty());
    (alice, bob_id, a, b)
}

/// Every message between `client`'s user and `peer`, newest first, paged
/// through REST: `(id, seq, text)`.
pub async fn all_history(client: &Client, peer: UserId) -> Vec<(MessageId, i64, String)> {
    history_in_pages(client, peer, 100).await
}

/// The same, walked back `limit` messages a page with `before`.
pub async fn history_in_pages(client: &Client, peer: UserId, limit: usize) -> Vec<(MessageId, i64, String)> {
    let mut out = Vec::new();
    let mut before: Option<i64> = None;
    loop {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(b) = before {
            q.push(("before", b.to_string()));
        }
        let page = client.history(peer, &q).await.unwrap();
        before = page.messages.last().map(|m| m.timestamp);
        out.extend(page.messages.into_iter().map(|m| (m.message_id, m.seq, m.message)));
        if !page.has_more {
            return out;
        }
    }
}

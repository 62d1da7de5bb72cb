//! dyad behind Debian's nginx, configured with `docs/nginx.conf` as it is
//! (only the two addresses replaced): the per-address limits see each
//! client's own address, and WebSockets work through the proxy.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use dyad_client::Client;
use dyad_client::protocol::ErrorCode;
use dyad_server::Config;
use dyad_server::config::AbuseLimits;

use crate::helpers::*;

struct Nginx {
    base: String,
    _child: tokio::process::Child,
    _dir: tempfile::TempDir,
}

impl Nginx {
    /// nginx in front of the dyad at `upstream` (`HOST:PORT`), with
    /// `docs/nginx.conf`.
    async fn start(upstream: &str) -> Nginx {
        Self::start_with(
            "nginx.conf",
            &[("server 127.0.0.1:8080;", format!("server {upstream};"))],
        )
        .await
    }

    /// nginx with `docs/{file}`, each `(from, to)` replaced, and its
    /// `listen 80;` moved to a free port.
    async fn start_with(file: &str, replace: &[(&str, String)]) -> Nginx {
        let binary = std::env::var("NGINX").unwrap_or_else(|_| "/usr/sbin/nginx".into());
        assert!(
            Path::new(&binary).exists(),
            "{binary} not found: install Debian's nginx (.ci/run does)"
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let path = format!("{}/../../docs/{file}", env!("CARGO_MANIFEST_DIR"));
        let mut site = std::fs::read_to_string(path).unwrap();
        let listen = ("listen 80;", format!("listen 127.0.0.1:{port};"));
        for (from, to) in replace.iter().chain([&listen]) {
            assert!(site.contains(from), "docs/{file} no longer has {from:?}");
            site = site.replace(from, to);
        }
        let d = dir.path().display();
        std::fs::write(dir.path().join("site.conf"), site).unwrap();
        std::fs::write(
            dir.path().join("nginx.conf"),
            format!(
                "daemon off;\nworker_processes 1;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\n\
                 events {{ worker_connections 512; }}\n\
                 http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
                 fastcgi_temp_path {d}/fastcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
                 include {d}/site.conf;\n}}\n"
            ),
        )
        .unwrap();
        let child = tokio::process::Command::new(&binary)
            .args([
                "-p",
                &d.to_string(),
                "-e",
                &format!("{d}/error.log"),
                "-c",
                &format!("{d}/nginx.conf"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let base = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            assert!(started.elapsed() < WAIT, "nginx did not start:\n{log}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Nginx {
            base,
            _child: child,
            _dir: dir,
        }
    }
}

fn upstream(server: &TestServer) -> String {
    server.base.trim_start_matches("http://").to_owned()
}

/// A client of `base` from 127.0.0.`n`.
fn from(base: &str, n: u8) -> Client {
    Client::from_address(base, IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))).unwrap()
}

#[tokio::test]
async fn through_nginx_the_limits_see_each_clients_own_address() {
    let limits = AbuseLimits {
        registrations_per_hour: 2,
        ..AbuseLimits::default()
    };
    let server = TestServer::spawn_with(Config {
        abuse: limits.clone(),
        trusted_proxies: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ..test_config()
    })
    .await;
    let nginx = Nginx::start(&upstream(&server)).await;
    from(&nginx.base, 2).register("one", PASSWORD).await.unwrap();
    from(&nginx.base, 2).register("two", PASSWORD).await.unwrap();
    let (status, code) = api_error(from(&nginx.base, 2).register("three", PASSWORD).await);
    assert_eq!((status, code), (429, ErrorCode::TooManyRequests));
    from(&nginx.base, 3).register("four", PASSWORD).await.unwrap();

    // Without --trusted-proxy every client is nginx: one budget for all.
    let blind = TestServer::spawn_with(Config {
        abuse: limits,
        ..test_config()
    })
    .await;
    let nginx = Nginx::start(&upstream(&blind)).await;
    from(&nginx.base, 2).register("one", PASSWORD).await.unwrap();
    from(&nginx.base, 2).register("two", PASSWORD).await.unwrap();
    let (status, _) = api_error(from(&nginx.base, 3).register("three", PASSWORD).await);
    assert_eq!(status, 429, "a client of its own was counted as nginx");
}

#[tokio::test]
async fn through_nginx_a_websocket_receives_messages_and_delivery() {
    // nginx's connections carry every client: the per-address connection
    // limit (here 2) must not apply to the trusted proxy.
    let server = TestServer::spawn_with(Config {
        abuse: AbuseLimits {
            connections_per_address: 2,
            ..AbuseLimits::default()
        },
        trusted_proxies: vec![IpAddr::V4(Ipv4Addr::LOCALHOST)],
        ..test_config()
    })
    .await;
    let nginx = Nginx::start(&upstream(&server)).await;
    let (alice, bob_id, mut a, mut b) = alice_and_bob_connected(from(&nginx.base, 2), from(&nginx.base, 3)).await;
    // Two more of Alice's devices: five sockets from nginx in all.
    let mut more = Vec::new();
    for _ in 0..2 {
        let mut device = TestConn(alice.connect().await.unwrap());
        assert!(device.replay().await.is_empty());
        more.push(device);
    }
    for i in 0..20 {
        a.send(bob_id, &format!("through nginx {i}"), Some(&format!("k{i}")))
            .await;
    }
    let mut received = Vec::new();
    for _ in 0..20 {
        let m = b.expect_message().await;
        received.push(m.message_id);
        assert_eq!(m.seq as usize, received.len(), "in order through the proxy");
    }
    b.ack(received).await;
    let mut delivered = 0;
    while delivered < 20 {
        match a.next().await {
            dyad_client::protocol::ServerEvent::MessageDelivered { .. } => delivered += 1,
            dyad_client::protocol::ServerEvent::MessageAck { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
}

/// The 99.9% story: three nodes behind nginx (`docs/nginx-cluster.conf`);
/// the ones holding Alice's and Bob's WebSockets are killed with SIGKILL
/// while Alice sends to Bob. The sessions reconnect
/// through nginx to the nodes left, nothing acked is lost or doubled, and
/// presence settles.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_killed_behind_nginx_loses_nothing_and_its_users_come_back_through_the_others() {
    use dyad_client::{ChatSession, SessionEvent, SessionOptions};
    let database = dyad_store::testing::scratch_postgres_url().await.unwrap();
    let prefix = format!("nginx-kill-{}-{}:", std::process::id(), dyad_server::clock::now_ms());
    let mut nodes = Vec::new();
    for i in 0..3 {
        let id = format!("node{i}");
        let args = [
            "--database",
            &database,
            "--redis",
            "redis://127.0.0.1:6379/",
            "--node-id",
            &id,
            "--redis-prefix",
            &prefix,
            "--trusted-proxy",
            "127.0.0.1",
            "--presence-grace",
            "1s",
            "--presence-ttl",
            "3s",
        ];
        nodes.push(ServerProcess::start(&args).await);
    }
    let replace: Vec<(&str, String)> = [
        "server 127.0.0.1:8081 ",
        "server 127.0.0.1:8082 ",
        "server 127.0.0.1:8083 ",
    ]
    .into_iter()
    .zip(&nodes)
    .map(|(from, node)| (from, format!("server {} ", node.base.trim_start_matches("http://"))))
    .collect();
    let nginx = Nginx::start_with("nginx-cluster.conf", &replace).await;

    let mut alice = from(&nginx.base, 2);
    let mut bob = from(&nginx.base, 3);
    alice.register("alice", PASSWORD).await.unwrap();
    bob.register("bob", PASSWORD).await.unwrap();
    alice.login("alice", PASSWORD).await.unwrap();
    let bob_id = bob.login("bob", PASSWORD).await.unwrap().user_id;
    let quick = SessionOptions {
        backoff_min: Duration::from_millis(50),
        backoff_max: Duration::from_millis(500),
        ..SessionOptions::default()
    };
    let mut a = ChatSession::start(alice.clone(), quick.clone());
    let mut b = ChatSession::start(bob.clone(), quick);
    for session in [&mut a, &mut b] {
        while !matches!(session.next().await, Some(SessionEvent::PendingComplete { .. })) {}
    }
    // Kill every node that holds one of their WebSockets (one or two of
    // the three), so that both sessions are cut.
    let mut holding = Vec::new();
    for (i, node) in nodes.iter().enumerate() {
        let text = reqwest::get(format!("{}/metrics", node.base))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        if text
            .lines()
            .any(|l| l.starts_with("dyad_connections ") && !l.ends_with(" 0"))
        {
            holding.push(i);
        }
    }
    assert!(!holding.is_empty() && holding.len() < 3, "{holding:?}");

    const TOTAL: usize = 300;
    let mut acked = std::collections::HashSet::new();
    let mut received = std::collections::HashSet::new();
    let mut killed_at: Option<Instant> = None;
    // Per session (Alice, Bob): how long after the kill it was connected
    // again, if the kill cut it.
    let mut back_after: [Option<Duration>; 2] = [None, None];
    let mut cut = [false, false];
    let mut sent = 0;
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < TOTAL || received.len() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "acked {} received {}",
            acked.len(),
            received.len()
        );
        if sent < TOTAL && sent < acked.len() + 20 {
            a.send(bob_id, format!("through the cluster {sent}")).unwrap();
            sent += 1;
        }
        if killed_at.is_none() && acked.len() >= TOTAL / 3 {
            for &i in &holding {
                nodes[i].kill().await;
            }
            killed_at = Some(Instant::now());
        }
        tokio::select! {
            Some(event) = a.next() => match event {
                SessionEvent::Sent { message_id, .. } => {
                    acked.insert(message_id);
                }
                other => reconnection(0, &other, killed_at, &mut cut, &mut back_after),
            },
            Some(event) = b.next() => match event {
                SessionEvent::Message(m) => assert!(received.insert(m.message_id), "received twice"),
                other => reconnection(1, &other, killed_at, &mut cut, &mut back_after),
            },
            () = tokio::time::sleep(Duration::from_millis(2)) => {}
        }
    }
    assert_eq!(acked, received, "every acked message arrived, once");
    let history = all_history(&alice, bob_id).await;
    assert_eq!(history.len(), TOTAL, "stored once each");
    let mut seqs: Vec<i64> = history.iter().map(|(_, seq, _)| *seq).collect();
    seqs.sort_unstable();
    assert_eq!(seqs, (1..=TOTAL as i64).collect::<Vec<_>>());
    assert_eq!(cut, [true, true], "both sessions were cut");
    let without_service: Vec<Duration> = back_after.iter().flatten().copied().collect();
    assert_eq!(without_service.len(), 2, "both came back");
    eprintln!("nodes {holding:?} killed: Alice and Bob connected again after {without_service:?}");
    assert!(
        without_service.iter().all(|d| *d < Duration::from_secs(10)),
        "{without_service:?}"
    );

    // Presence settles: Bob is online while connected, and offline once he
    // leaves, though a node that held him died (its entries expire).
    let status = |client: Client| async move { client.status(bob_id).await.unwrap().status };
    assert_eq!(
        status(alice.clone()).await,
        dyad_client::protocol::events::PresenceStatus::Online
    );
    drop(b);
    let settle = Instant::now() + Duration::from_secs(20);
    while status(alice.clone()).await != dyad_client::protocol::events::PresenceStatus::Offline {
        assert!(Instant::now() < settle, "Bob still online 20 s after leaving");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Notes when session `i` was cut by the kill and when it was connected
/// again.
fn reconnection(
    i: usize,
    event: &dyad_client::SessionEvent,
    killed_at: Option<Instant>,
    cut: &mut [bool; 2],
    back_after: &mut [Option<Duration>; 2],
) {
    let Some(at) = killed_at else { return };
    match event {
        dyad_client::SessionEvent::Disconnected { .. } => cut[i] = true,
        dyad_client::SessionEvent::Connected { .. } if cut[i] && back_after[i].is_none() => {
            back_after[i] = Some(at.elapsed());
        }
        _ => {}
    }
}

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
    /// nginx in front of the dyad at `upstream` (`HOST:PORT`).
    async fn start(upstream: &str) -> Nginx {
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
        let site = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/nginx.conf")).unwrap();
        for needle in ["server 127.0.0.1:8080;", "listen 80;"] {
            assert!(site.contains(needle), "docs/nginx.conf no longer has {needle:?}");
        }
        let site = site
            .replace("server 127.0.0.1:8080;", &format!("server {upstream};"))
            .replace("listen 80;", &format!("listen 127.0.0.1:{port};"));
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

//! TLS built in: `https://` and `wss://` with no proxy in front, for the
//! Rust client and the terminal client, with a self-signed certificate
//! that the clients are told to trust.

use std::path::{Path, PathBuf};

use dyad_client::Client;
use dyad_server::Config;

use crate::helpers::*;
use crate::terminal::{run, stdout};

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM
/// files into `dir`: (certificate, key).
pub fn self_signed(dir: &Path) -> (PathBuf, PathBuf) {
    let certified = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned(), "localhost".to_owned()]).unwrap();
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    std::fs::write(&cert, certified.cert.pem()).unwrap();
    std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
    (cert, key)
}

async fn tls_server(dir: &Path) -> (TestServer, PathBuf) {
    let (cert, key) = self_signed(dir);
    let server = TestServer::spawn_with(Config {
        tls: Some(dyad_server::tls::server_config(&cert, &key).unwrap()),
        ..test_config()
    })
    .await;
    assert!(server.base.starts_with("https://"), "{}", server.base);
    (server, cert)
}

#[tokio::test]
async fn two_users_chat_over_https_and_wss() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path()).await;
    let pem = std::fs::read(&cert).unwrap();
    let client = || Client::new(&server.base).trusting(&pem).unwrap();
    let (_alice, bob_id, mut a, mut b) = alice_and_bob_connected(client(), client()).await;
    a.send(bob_id, "over tls", Some("k1")).await;
    a.expect_ack().await;
    assert_eq!(b.expect_message().await.message, "over tls");

    // Without the certificate trusted, nothing gets through.
    let stranger = Client::new(&server.base).register("carol", PASSWORD).await;
    assert!(stranger.is_err(), "an untrusted certificate was accepted");
    // Plain HTTP to the TLS port gets no answer worth the name.
    let plain = server.base.replacen("https://", "http://", 1);
    assert!(Client::new(&plain).register("dave", PASSWORD).await.is_err());
}

#[tokio::test]
async fn the_terminal_client_works_over_https_with_a_trusted_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let (server, cert) = tls_server(dir.path()).await;
    let (alice_cfg, bob_cfg) = (dir.path().join("alice.json"), dir.path().join("bob.json"));
    let cert = cert.to_str().unwrap();
    for (name, cfg) in [("alice", &alice_cfg), ("bob", &bob_cfg)] {
        let out = run(
            cfg,
            &[
                "register",
                name,
                "--server",
                &server.base,
                "--ca-cert",
                cert,
                "--password-stdin",
            ],
            &format!("{PASSWORD}\n"),
        )
        .await;
        assert!(stdout(&out).contains("logged in as"));
    }
    // Later commands find the certificate in the credentials file.
    stdout(&run(&alice_cfg, &["send", "bob", "hello over tls"], "").await);
    let history = stdout(&run(&bob_cfg, &["history", "alice", "--json"], "").await);
    assert!(history.contains("hello over tls"), "{history}");
}

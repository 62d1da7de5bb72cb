//! `dyad admin user`: accounts made and reset by the operator, on the store
//! of a running server with registration closed.

use dyad_client::protocol::ErrorCode;
use dyad_server::Config;

use crate::helpers::*;
use crate::terminal::run;

#[tokio::test]
async fn the_operator_adds_an_account_and_resets_its_password_while_the_server_runs() {
    let server = TestServer::spawn_with(Config {
        registration_open: false,
        ..test_config()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unused.json");
    let database = format!("sqlite://{}", server.db_path.display());
    let admin = |args: &[&str]| {
        let mut all = vec!["admin", "user"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["--database", &database]);
        all.iter().map(|s| s.to_string()).collect::<Vec<_>>()
    };
    let add = admin(&["add", "Carol"]);
    let add: Vec<&str> = add.iter().map(String::as_str).collect();
    let out = run(&config, &add, &format!("{PASSWORD}\n")).await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let mut carol = server.client();
    let first = carol.login("carol", PASSWORD).await.unwrap();

    // A taken name and a short password are refused and change nothing.
    let out = run(&config, &add, &format!("{PASSWORD}\n")).await;
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("taken"));
    let add_dave = admin(&["add", "dave"]);
    let add_dave: Vec<&str> = add_dave.iter().map(String::as_str).collect();
    let out = run(&config, &add_dave, "short\n").await;
    assert!(!out.status.success());
    assert_eq!(
        api_error(server.client().login("dave", "short").await),
        (401, ErrorCode::InvalidCredentials)
    );

    let reset = admin(&["reset-password", "carol"]);
    let reset: Vec<&str> = reset.iter().map(String::as_str).collect();
    let out = run(&config, &reset, "a new password\n").await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(
        api_error(server.client().login("carol", PASSWORD).await),
        (401, ErrorCode::InvalidCredentials)
    );
    server.client().login("carol", "a new password").await.unwrap();
    // The session from before the reset has ended.
    let old = server.client().with_token(first.token, first.user_id);
    assert_eq!(api_error(old.conversations().await), (401, ErrorCode::Unauthorized));
}

#[tokio::test]
async fn the_operator_deletes_an_account_while_the_server_runs() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let mallory = server.user("mallory").await;
    let mut alice_ws = alice.connect().await;
    let mut mallory_ws = mallory.connect().await;
    alice_ws.send_and_ack(mallory.id, "hi", "k1").await;
    mallory_ws.expect_message().await;

    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("unused.json");
    let database = format!("sqlite://{}", server.db_path.display());
    let out = run(
        &config,
        &["admin", "user", "delete", "Mallory", "--database", &database],
        "",
    )
    .await;
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let out = run(
        &config,
        &["admin", "user", "delete", "mallory", "--database", &database],
        "",
    )
    .await;
    assert!(!out.status.success(), "a second delete finds no one");
    assert!(String::from_utf8_lossy(&out.stderr).contains("no user mallory"));

    assert_eq!(
        api_error(server.client().login("mallory", PASSWORD).await),
        (401, ErrorCode::InvalidCredentials)
    );
    // The running server refuses messages to the account at once, though
    // it had the conversation cached.
    alice_ws.send(mallory.id, "still there?", Some("k2")).await;
    alice_ws.expect_error(ErrorCode::UnknownRecipient).await;
    // Its open WebSocket is cut at the server's next session check.
    assert_eq!(mallory_ws.expect_close().await, 1008);
    server.stop().await;
}

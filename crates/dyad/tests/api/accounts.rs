//! Registration, login, the throttle, tokens, logout and account deletion.

use dyad_client::protocol::ErrorCode;
use dyad_client::{Client, ClientError};

use crate::helpers::*;

#[tokio::test]
async fn registration_validates_and_folds_usernames() {
    let server = TestServer::spawn().await;
    let c = server.client();
    let created = c.register("Alice.B-2", PASSWORD).await.unwrap();
    assert_eq!(created.username, "alice.b-2");
    assert!(created.created_at > 0);
    assert_eq!(
        api_error(c.register("ALICE.b-2", PASSWORD).await),
        (409, ErrorCode::UsernameTaken)
    );
    assert_eq!(
        api_error(c.register("al", PASSWORD).await),
        (400, ErrorCode::InvalidUsername)
    );
    assert_eq!(
        api_error(c.register("al ice", PASSWORD).await),
        (400, ErrorCode::InvalidUsername)
    );
    assert_eq!(
        api_error(c.register(&"a".repeat(33), PASSWORD).await),
        (400, ErrorCode::InvalidUsername)
    );
    assert_eq!(
        api_error(c.register("carol", "short").await),
        (400, ErrorCode::InvalidPassword)
    );
    assert_eq!(
        api_error(c.register("carol", &"p".repeat(129)).await),
        (400, ErrorCode::InvalidPassword)
    );

    // Login is case-insensitive in the name, exact in the password.
    let mut c = server.client();
    let session = c.login("ALICE.b-2", PASSWORD).await.unwrap();
    assert_eq!(session.user_id, created.user_id);
    assert!(session.token.len() >= 22, "at least 128 bits");
    let in_30_days = 30 * 24 * 3600 * 1000;
    assert!((session.expires_at - created.created_at - in_30_days).abs() < 60_000);
    assert_eq!(
        api_error(c.login("alice.b-2", "wrong password").await),
        (401, ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        api_error(c.login("nobody", PASSWORD).await),
        (401, ErrorCode::InvalidCredentials)
    );
    server.stop().await;
}

#[tokio::test]
async fn malformed_bodies_get_invalid_body() {
    let server = TestServer::spawn().await;
    let http = reqwest::Client::new();
    let response = http
        .post(format!("{}/api/v1/users", server.base))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: serde_json::Value = response.json().await.unwrap();
    assert_eq!(body["error"]["code"], "invalid_body");
    assert!(body["error"]["message"].as_str().is_some());
    server.stop().await;
}

#[tokio::test]
async fn failed_logins_are_throttled_per_username_and_successes_are_not() {
    let server = TestServer::spawn().await;
    server.user("alice").await;
    server.user("bob").await;
    // Successful logins are never throttled.
    for _ in 0..8 {
        server.client().login("bob", PASSWORD).await.unwrap();
    }
    let mut c = server.client();
    for _ in 0..5 {
        assert_eq!(
            api_error(c.login("alice", "wrong password").await),
            (401, ErrorCode::InvalidCredentials)
        );
    }
    assert_eq!(
        api_error(c.login("alice", "wrong password").await),
        (429, ErrorCode::TooManyAttempts)
    );
    // While throttled even the right password waits: otherwise guessing would go on.
    assert_eq!(
        api_error(c.login("alice", PASSWORD).await),
        (429, ErrorCode::TooManyAttempts)
    );
    // Other names are not affected. (The waits themselves, with paused
    // time: the unit tests of the throttle in accounts.rs.)
    c.login("bob", PASSWORD).await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthorized() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let anonymous = server.client();
    assert!(matches!(anonymous.conversations().await, Err(ClientError::NotLoggedIn)));
    let forged = Client::new(&server.base).with_token("not-a-token", alice.id);
    assert_eq!(api_error(forged.conversations().await), (401, ErrorCode::Unauthorized));
    assert_eq!(api_error(forged.status(alice.id).await), (401, ErrorCode::Unauthorized));
    assert_eq!(
        api_error(forged.history(alice.id, &[]).await),
        (401, ErrorCode::Unauthorized)
    );
    assert!(
        matches!(forged.connect().await, Err(ClientError::WebSocket(_))),
        "WebSocket refused before the upgrade"
    );
    let http = reqwest::Client::new();
    let response = http
        .get(format!("{}/api/v1/ws?token=nope", server.base))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    server.stop().await;
}

#[tokio::test]
async fn the_token_also_works_as_a_query_parameter_for_browsers() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let url = format!(
        "{}/api/v1/ws?token={}",
        server.base.replace("http", "ws"),
        alice.client.token().unwrap()
    );
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    use futures_util::StreamExt;
    let first = ws.next().await.unwrap().unwrap().into_text().unwrap();
    let v: serde_json::Value = serde_json::from_str(first.as_str()).unwrap();
    assert_eq!(v["event"], "connected");
    assert_eq!(v["data"]["user_id"], alice.id.to_string());
    assert!(v["data"]["connection_id"].is_string());
    assert!(v["data"]["server_time"].is_i64());
    assert_eq!(v["data"]["heartbeat_interval_ms"], 30_000);
    server.stop().await;
}

#[tokio::test]
async fn logout_kills_the_token_and_closes_only_its_sockets() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let other_session = server.login("alice").await;
    let mut first = alice.connect().await;
    let mut second = alice.connect().await;
    let mut survivor = other_session.connect().await;

    alice.client.logout().await.unwrap();
    assert_eq!(first.expect_close().await, 1008);
    assert_eq!(second.expect_close().await, 1008);
    survivor.expect_silence(std::time::Duration::from_millis(200)).await;
    assert_eq!(
        api_error(alice.client.conversations().await),
        (401, ErrorCode::Unauthorized)
    );
    assert_eq!(api_error(alice.client.logout().await), (401, ErrorCode::Unauthorized));
    other_session.client.conversations().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_deleted_account_is_gone_everywhere_but_its_peers_keep_their_history() {
    use dyad_client::protocol::events::PresenceStatus;
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let bobs_phone = server.login("bob").await;
    let mut bob_ws = bob.connect().await;
    let mut phone_ws = bobs_phone.connect().await;
    let mut alice_ws = alice.connect().await;
    alice_ws.send_and_ack(bob.id, "hello", "k1").await;
    bob_ws.expect_message().await;
    phone_ws.expect_message().await;

    // A wrong password, or none, changes nothing.
    assert_eq!(
        api_error(bob.client.delete_account("not my password").await),
        (401, ErrorCode::InvalidCredentials)
    );
    let stranger = server.client().with_token("not-a-token", bob.id);
    assert_eq!(
        api_error(stranger.delete_account(PASSWORD).await),
        (401, ErrorCode::Unauthorized)
    );
    bob.client.conversations().await.unwrap();

    bob.client.delete_account(PASSWORD).await.unwrap();
    // Every session ends, with its sockets.
    assert_eq!(bob_ws.expect_close().await, 1008);
    assert_eq!(phone_ws.expect_close().await, 1008);
    for session in [&bob.client, &bobs_phone.client] {
        assert_eq!(api_error(session.conversations().await), (401, ErrorCode::Unauthorized));
    }
    // Login and lookup answer as for someone who never existed.
    assert_eq!(
        api_error(server.client().login("bob", PASSWORD).await),
        (401, ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        api_error(alice.client.user_by_username("bob").await),
        (404, ErrorCode::UserNotFound)
    );
    let presence = alice.client.status(bob.id).await.unwrap();
    assert_eq!((presence.status, presence.last_seen), (PresenceStatus::Offline, None));
    // Messages to it are refused; what was said stays with Alice.
    alice_ws.send(bob.id, "are you there?", Some("k2")).await;
    alice_ws.expect_error(ErrorCode::UnknownRecipient).await;
    let history = alice.history(bob.id, &[]).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0].message, "hello");
    let list = alice.client.conversations().await.unwrap().conversations;
    assert_eq!(
        (list[0].user_id, list[0].username.as_str()),
        (bob.id, "deleted account")
    );
    // The name is free again, for someone new.
    let new_bob = server.user("bob").await;
    assert_ne!(new_bob.id, bob.id);
    assert_eq!(alice.client.user_by_username("bob").await.unwrap().user_id, new_bob.id);
    server.stop().await;
}

#[tokio::test]
async fn users_are_found_by_username() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;
    let found = alice.client.user_by_username("BOB").await.unwrap();
    assert_eq!((found.user_id, found.username.as_str()), (bob.id, "bob"));
    assert_eq!(
        api_error(alice.client.user_by_username("nobody").await),
        (404, ErrorCode::UserNotFound)
    );
    assert_eq!(
        api_error(alice.client.user_by_username("x").await),
        (404, ErrorCode::UserNotFound)
    );
    server.stop().await;
}

#[tokio::test]
async fn a_user_lists_their_devices_and_logs_one_out() {
    let server = TestServer::spawn().await;
    let laptop = server.user("alice").await;
    let phone = server.login("alice").await;
    let bob = server.user("bob").await;
    let mut phone_socket = phone.connect().await;

    let listed = laptop.client.sessions().await.unwrap().sessions;
    assert_eq!(listed.len(), 2, "{listed:?}");
    assert!(
        !listed[0].current && listed[1].current,
        "newest first, the caller's marked: {listed:?}"
    );
    assert!(listed.iter().all(|s| s.last_used_at >= s.created_at));
    // This very request counts as use of the laptop's session: after the
    // phone's login, though the laptop logged in before it.
    assert!(listed[1].last_used_at >= listed[0].created_at, "{listed:?}");
    let phone_id = listed[0].session_id;
    assert_eq!(phone.client.sessions().await.unwrap().sessions[0].session_id, phone_id);
    assert!(phone.client.sessions().await.unwrap().sessions[0].current);

    // Someone else's session, or none at all, is not found: nothing tells them apart.
    let bobs = bob.client.sessions().await.unwrap().sessions[0].session_id;
    for stranger in [bobs, dyad_client::protocol::SessionId(12345)] {
        assert_eq!(
            api_error(laptop.client.revoke_session(stranger).await),
            (404, ErrorCode::NotFound)
        );
    }
    bob.client.conversations().await.unwrap();

    laptop.client.revoke_session(phone_id).await.unwrap();
    assert_eq!(phone_socket.expect_close().await, 1008);
    assert_eq!(
        api_error(phone.client.conversations().await),
        (401, ErrorCode::Unauthorized)
    );
    assert_eq!(
        api_error(laptop.client.revoke_session(phone_id).await),
        (404, ErrorCode::NotFound),
        "once"
    );
    let left = laptop.client.sessions().await.unwrap().sessions;
    assert_eq!(left.len(), 1);
    assert!(left[0].current);
    server.stop().await;
}

#[tokio::test]
async fn a_password_change_needs_the_old_one_and_logs_out_every_other_device() {
    let server = TestServer::spawn().await;
    let mut laptop = server.user("alice").await;
    let phone = server.login("alice").await;
    let mut phone_socket = phone.connect().await;
    let mut laptop_socket = laptop.connect().await;

    assert_eq!(
        api_error(laptop.client.change_password("not the password", "brand new pw").await),
        (401, ErrorCode::InvalidCredentials)
    );
    assert_eq!(
        api_error(laptop.client.change_password(PASSWORD, "short").await),
        (400, ErrorCode::InvalidPassword)
    );
    phone.client.conversations().await.unwrap();

    laptop.client.change_password(PASSWORD, "brand new pw").await.unwrap();
    assert_eq!(phone_socket.expect_close().await, 1008);
    assert_eq!(
        api_error(phone.client.conversations().await),
        (401, ErrorCode::Unauthorized)
    );
    // The device that changed it stays, socket and all.
    laptop.client.conversations().await.unwrap();
    laptop_socket.expect_silence(std::time::Duration::from_millis(50)).await;
    assert_eq!(
        api_error(laptop.client.login("alice", PASSWORD).await),
        (401, ErrorCode::InvalidCredentials)
    );
    laptop.client.login("alice", "brand new pw").await.unwrap();
    server.stop().await;
}

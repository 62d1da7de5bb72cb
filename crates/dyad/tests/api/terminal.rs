//! The terminal client: the real `dyad` binary against a real server, as a
//! person or a script would use it.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Output, Stdio};

use dyad_client::Client;
use dyad_client::protocol::{ClientEvent, ErrorCode, ServerEvent};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

use crate::helpers::{PASSWORD, TestServer, WAIT};

pub fn dyad(config: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_dyad"));
    command
        .env("DYAD_CONFIG", config)
        .env_remove("DYAD_SERVER")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// Runs `dyad ARGS` with `stdin` and returns what it printed.
pub async fn run(config: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = dyad(config).args(args).spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("dyad did not finish")
        .unwrap()
}

pub fn stdout(output: &Output) -> String {
    assert!(
        output.status.success(),
        "dyad failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn failure(output: &Output) -> String {
    assert!(!output.status.success(), "dyad should have failed");
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// Reads the chat's output until a line contains `text`.
pub async fn wait_line(lines: &mut Lines<BufReader<ChildStdout>>, text: &str) -> String {
    let found = tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            if line.contains(text) {
                return line;
            }
        }
        panic!("the chat ended before printing {text:?}")
    })
    .await;
    found.unwrap_or_else(|_| panic!("the chat did not print {text:?} within {WAIT:?}"))
}

#[tokio::test]
async fn register_login_send_history_and_logout_from_scripts() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice/credentials.json");
    let bob = dir.path().join("bob.json");
    let password = format!("{PASSWORD}\n");

    let out = run(
        &alice,
        &["register", "Alice", "--server", &server.base, "--password-stdin"],
        &password,
    )
    .await;
    assert!(stdout(&out).contains("logged in as alice"));
    let mode = std::fs::metadata(&alice).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the credentials file holds a token");
    let out = run(
        &bob,
        &["register", "bob", "--server", &server.base, "--password-stdin"],
        &password,
    )
    .await;
    stdout(&out);

    // A wrong password is refused and keeps no file.
    let stranger = dir.path().join("stranger.json");
    let out = run(
        &stranger,
        &["login", "bob", "--server", &server.base, "--password-stdin"],
        "wrong password\n",
    )
    .await;
    assert!(failure(&out).contains("invalid_credentials"));
    assert!(!stranger.exists());
    assert!(failure(&run(&stranger, &["history", "alice"], "").await).contains("not logged in"));

    // send --json answers with the stored message; a retry with the same
    // key is the same message.
    let args = [
        "send",
        "bob",
        "hello from the terminal",
        "--json",
        "--client-msg-id",
        "k1",
    ];
    let first: serde_json::Value = serde_json::from_str(&stdout(&run(&alice, &args, "").await)).unwrap();
    assert_eq!(first["seq"], 1);
    let again: serde_json::Value = serde_json::from_str(&stdout(&run(&alice, &args, "").await)).unwrap();
    assert_eq!(again["message_id"], first["message_id"]);
    let out = run(&alice, &["send", "nobody", "hi"], "").await;
    assert!(failure(&out).contains("user_not_found"));
    let out = run(&alice, &["send", "bob", "   "], "").await;
    assert!(failure(&out).contains("empty_message"));

    // history: text oldest first, or the server's page as JSON.
    let text = stdout(&run(&bob, &["history", "alice"], "").await);
    assert!(text.contains("alice: hello from the terminal"), "{text}");
    let page: serde_json::Value =
        serde_json::from_str(&stdout(&run(&bob, &["history", "alice", "--json"], "").await)).unwrap();
    assert_eq!(page["messages"].as_array().unwrap().len(), 1);
    assert_eq!(page["messages"][0]["message_id"], first["message_id"]);
    let list: serde_json::Value =
        serde_json::from_str(&stdout(&run(&bob, &["conversations", "--json"], "").await)).unwrap();
    assert_eq!(list["conversations"][0]["username"], "alice");

    // logout ends the session on the server, not only here.
    let saved: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&alice).unwrap()).unwrap();
    let token = saved["token"].as_str().unwrap().to_owned();
    let user_id = serde_json::from_value(saved["user_id"].clone()).unwrap();
    stdout(&run(&alice, &["logout"], "").await);
    assert!(!alice.exists());
    let old = Client::new(&server.base).with_token(token, user_id);
    assert_eq!(
        old.conversations().await.unwrap_err().code(),
        Some(ErrorCode::Unauthorized)
    );
    server.stop().await;
}

#[tokio::test]
async fn chat_shows_messages_ticks_presence_and_typing_as_they_happen() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let (_dir, bob_config) = bob_registered(&server).await;
    let bob_id = alice.client.user_by_username("bob").await.unwrap().user_id;
    let mut a = alice.connect().await;
    a.send_and_ack(bob_id, "before the chat", "k0").await;

    let mut chat: Child = dyad(&bob_config).args(["chat", "alice"]).spawn().unwrap();
    let mut input = chat.stdin.take().unwrap();
    let mut lines = BufReader::new(chat.stdout.take().unwrap()).lines();
    let header = wait_line(&mut lines, "chatting with alice").await;
    assert!(header.contains("online"), "{header}");
    wait_line(&mut lines, "alice: before the chat").await;
    // The chat acknowledges what it showed, and marks it read: Alice gets
    // her delivered tick, then her read receipt.
    a.expect_delivered().await;
    assert_eq!(a.expect_read().await.0, bob_id);

    // Live both ways, with ticks.
    let ack = a.send_and_ack(bob_id, "live from alice", "k1").await;
    wait_line(&mut lines, "alice: live from alice").await;
    assert_eq!(a.expect_delivered().await, ack.message_id);
    assert_eq!(a.expect_read().await.2, ack.message_id);
    input.write_all(b"reply from bob\n").await.unwrap();
    let reply = a.expect_message().await;
    assert_eq!(reply.message, "reply from bob");
    wait_line(&mut lines, "✓ sent").await;
    a.0.delivery_ack(vec![reply.message_id]).await.unwrap();
    wait_line(&mut lines, "✓✓ delivered: reply from bob").await;
    a.read_ack(reply.message_id).await;
    assert_eq!(a.expect_read().await.0, alice.id);
    wait_line(&mut lines, "✓✓ read by alice").await;

    // Edits and deletes show as they happen.
    a.edit(ack.message_id, "live, edited").await;
    a.expect_edited().await;
    wait_line(&mut lines, "* alice edited a message: live, edited").await;
    a.delete(ack.message_id).await;
    a.expect_deleted().await;
    wait_line(&mut lines, "* alice deleted a message").await;

    // Typing, then presence: Alice leaves and comes back.
    a.0.send(&ClientEvent::Typing { recipient_id: bob_id }).await.unwrap();
    wait_line(&mut lines, "alice is typing").await;
    a.0.close().await.unwrap();
    wait_line(&mut lines, "alice is offline, last seen").await;
    let mut a = alice.connect().await;
    wait_line(&mut lines, "alice is online").await;

    // End of input: the last line is still stored before the chat exits.
    input.write_all(b"last words\n").await.unwrap();
    drop(input);
    let status = tokio::time::timeout(WAIT, chat.wait()).await.unwrap().unwrap();
    assert!(status.success());
    match a.next().await {
        ServerEvent::ReceiveMessage(m) => assert_eq!(m.message, "last words"),
        other => panic!("expected the last message, got {other:?}"),
    }
    server.stop().await;
}

/// `dyad register|login alice` with the password on stdin.
async fn sign_in(config: &Path, verb: &str, server: &str, password: &str) {
    stdout(
        &run(
            config,
            &[verb, "alice", "--server", server, "--password-stdin"],
            password,
        )
        .await,
    );
}

#[tokio::test]
async fn devices_are_listed_and_logged_out_and_passwd_ends_the_others() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let (laptop, phone) = (dir.path().join("laptop.json"), dir.path().join("phone.json"));
    let password = format!("{PASSWORD}\n");
    sign_in(&laptop, "register", &server.base, &password).await;
    sign_in(&phone, "login", &server.base, &password).await;

    let listed = stdout(&run(&laptop, &["devices"], "").await);
    let lines: Vec<&str> = listed.lines().collect();
    assert_eq!(lines.len(), 2, "{listed}");
    assert!(
        lines[1].ends_with("(this one)") && !lines[0].contains("this one"),
        "{listed}"
    );
    let phone_id = lines[0].split_whitespace().next().unwrap();

    let out = stdout(&run(&laptop, &["devices", "--revoke", phone_id], "").await);
    assert!(out.contains(phone_id), "{out}");
    assert!(failure(&run(&phone, &["conversations"], "").await).contains("unauthorized"));
    let again = failure(&run(&laptop, &["devices", "--revoke", phone_id], "").await);
    assert!(again.contains("not_found"), "{again}");

    // passwd: the other device is logged out, this one stays.
    sign_in(&phone, "login", &server.base, &password).await;
    let wrong = failure(
        &run(
            &laptop,
            &["passwd", "--password-stdin"],
            "wrong password\nnew password 1\n",
        )
        .await,
    );
    assert!(wrong.contains("invalid_credentials"), "{wrong}");
    let changed = stdout(
        &run(
            &laptop,
            &["passwd", "--password-stdin"],
            &format!("{PASSWORD}\nnew password 1\n"),
        )
        .await,
    );
    assert!(changed.contains("password changed"), "{changed}");
    assert!(failure(&run(&phone, &["conversations"], "").await).contains("unauthorized"));
    stdout(&run(&laptop, &["conversations"], "").await);
    sign_in(&phone, "login", &server.base, "new password 1\n").await;
    server.stop().await;
}

#[tokio::test]
async fn a_server_that_is_down_gets_one_short_line() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("c.json");
    // A port nothing listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let server = format!("http://127.0.0.1:{port}");
    let out = failure(
        &run(
            &config,
            &["login", "alice", "--server", &server, "--password-stdin"],
            "password1\n",
        )
        .await,
    );
    assert_eq!(out.lines().count(), 1, "{out}");
    assert!(
        out.starts_with(&format!("dyad: cannot reach the server at {server} (")),
        "{out}"
    );
    assert!(out.trim_end().ends_with("is it running?"), "{out}");
}

#[tokio::test]
async fn block_unblock_and_list_from_the_terminal() {
    let server = TestServer::spawn().await;
    let dir = tempfile::tempdir().unwrap();
    let alice = dir.path().join("alice.json");
    sign_in(&alice, "register", &server.base, &format!("{PASSWORD}\n")).await;
    let _bob = server.user("bob").await;
    assert!(stdout(&run(&alice, &["blocks"], "").await).contains("you block nobody"));
    assert!(stdout(&run(&alice, &["block", "bob"], "").await).contains("blocked bob"));
    let listed = stdout(&run(&alice, &["blocks"], "").await);
    assert!(listed.starts_with("bob "), "{listed}");
    let refused = failure(&run(&alice, &["send", "bob", "hi"], "").await);
    assert!(refused.contains("blocked"), "{refused}");
    assert!(stdout(&run(&alice, &["unblock", "bob"], "").await).contains("unblocked bob"));
    stdout(&run(&alice, &["send", "bob", "hi"], "").await);
    assert!(failure(&run(&alice, &["block", "nobody"], "").await).contains("user_not_found"));
    server.stop().await;
}

/// `dyad edit`, `dyad delete` (by id, or "my newest to this user"),
/// `dyad search`, and `dyad history --ids`.
#[tokio::test]
async fn edit_delete_and_search_from_the_terminal() {
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let (_dir, config) = bob_registered(&server).await;
    stdout(&run(&config, &["send", "alice", "Grüße aus Köln"], "").await);
    stdout(&run(&config, &["send", "alice", "a tpyo"], "").await);

    let out = stdout(&run(&config, &["edit", "alice", "a typo, fixed"], "").await);
    assert!(out.starts_with("edited m"), "{out}");
    let history = stdout(&run(&config, &["history", "alice", "--ids"], "").await);
    assert!(history.contains("a typo, fixed (edited)"), "{history}");
    let id = history
        .lines()
        .find(|l| l.contains("Grüße"))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .to_owned();
    assert!(id.starts_with('m'), "{history}");

    let found = stdout(&run(&config, &["search", "KÖLN"], "").await);
    assert!(found.contains("(alice)") && found.contains("Grüße aus Köln"), "{found}");
    let out = stdout(&run(&config, &["delete", &id], "").await);
    assert_eq!(out.trim(), format!("deleted {id}"));
    let history = stdout(&run(&config, &["history", "alice"], "").await);
    assert!(
        history.contains("(message deleted)") && !history.contains("Köln"),
        "{history}"
    );
    assert_eq!(
        stdout(&run(&config, &["search", "köln"], "").await).trim(),
        "nothing found"
    );

    // Someone else's message: refused with the server's code.
    let bob_id = alice.client.user_by_username("bob").await.unwrap().user_id;
    let mut a = alice.connect_raw().await;
    assert_eq!(a.replay().await.len(), 2, "bob's two, as they are now");
    let theirs = a.send_and_ack(bob_id, "from alice", "k").await.message_id;
    let out = run(&config, &["delete", &theirs.to_string()], "").await;
    assert!(failure(&out).contains("forbidden"), "{out:?}");
    server.stop().await;
}

/// At a terminal, `dyad chat` reads keys as they are typed: the other side
/// sees "typing" before the line is sent.
#[tokio::test]
async fn chat_at_a_terminal_sends_typing_as_keys_are_pressed() {
    use std::io::Write as _;
    let server = TestServer::spawn().await;
    let alice = server.user("alice").await;
    let (_dir, config) = bob_registered(&server).await;
    let bob_id = alice.client.user_by_username("bob").await.unwrap().user_id;
    let mut a = alice.connect().await;
    let pty = nix::pty::openpty(None, None).unwrap();
    let mut chat: Child = dyad(&config)
        .args(["chat", "alice"])
        .stdin(std::process::Stdio::from(pty.slave))
        .spawn()
        .unwrap();
    let mut keyboard = std::fs::File::from(pty.master);
    let mut lines = BufReader::new(chat.stdout.take().unwrap()).lines();
    wait_line(&mut lines, "chatting with alice").await;
    keyboard.write_all(b"h").unwrap();
    loop {
        match a.next().await {
            ServerEvent::Typing { sender_id } => {
                assert_eq!(sender_id, bob_id);
                break;
            }
            ServerEvent::Presence(_) => continue,
            other => panic!("expected typing, got {other:?}"),
        }
    }
    keyboard.write_all("éllo\x7f\x7fo!\r".as_bytes()).unwrap();
    let m = loop {
        match a.next().await {
            ServerEvent::ReceiveMessage(m) => break m,
            ServerEvent::Typing { .. } => continue,
            other => panic!("expected the message, got {other:?}"),
        }
    };
    assert_eq!(m.message, "hélo!", "backspace takes whole characters");
    keyboard.write_all(&[4]).unwrap(); // Ctrl-D on an empty line
    let status = tokio::time::timeout(WAIT, chat.wait()).await.unwrap().unwrap();
    assert!(status.success());
    server.stop().await;
}

/// Bob, registered and logged in from the terminal: his credentials file.
async fn bob_registered(server: &TestServer) -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("bob.json");
    let register = ["register", "bob", "--server", &server.base, "--password-stdin"];
    stdout(&run(&config, &register, &format!("{PASSWORD}\n")).await);
    (dir, config)
}

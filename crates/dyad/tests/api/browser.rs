//! The browser client, in a real browser: Debian's headless Chromium driven
//! over WebDriver (chromedriver) by fantoccini. Two users, two browsers (two
//! profiles: separate storage), one real server that is restarted mid-test.
//!
//! With `DYAD_SCREENSHOTS=DIR` the test saves the main screens there (that
//! is how `docs/screenshots/` is made).

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use fantoccini::key::Key;
use fantoccini::{Client as Browser, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::helpers::{PASSWORD, TestServer, TestUser, WAIT, test_config};
use crate::terminal::{dyad, run, stdout, wait_line};

/// Browsers on a busy 2-core machine are slow; a page condition gets this long.
const PAGE_WAIT: Duration = Duration::from_secs(30);

/// A chromedriver process on a free port. It leads a process group of its
/// own, with the browsers it starts; dropping it kills the whole group, so a
/// failed test leaves no browser behind.
struct Chromedriver {
    url: String,
    child: tokio::process::Child,
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        // The group's id is chromedriver's pid (process_group(0) below).
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok())
            && pid > 1
        {
            let _ = nix::sys::signal::killpg(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
        }
    }
}

impl Chromedriver {
    async fn start() -> Chromedriver {
        let path = std::env::var("CHROMEDRIVER").unwrap_or_else(|_| "/usr/bin/chromedriver".into());
        assert!(
            std::path::Path::new(&path).exists(),
            "{path} not found: install Debian's chromium and chromium-driver (.ci/run does)"
        );
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = tokio::process::Command::new(&path)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        let url = format!("http://127.0.0.1:{port}");
        let started = Instant::now();
        while reqwest::get(format!("{url}/status")).await.is_err() {
            assert!(started.elapsed() < PAGE_WAIT, "chromedriver did not start");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Chromedriver { url, child }
    }

    /// A new browser: its own Chromium process and empty profile.
    async fn browser(&self) -> Browser {
        self.browser_with(&[]).await
    }

    /// A new browser started with `extra` command-line switches too.
    async fn browser_with(&self, extra: &[&str]) -> Browser {
        self.browser_with_prefs(extra, json!({})).await
    }

    /// A new browser with `extra` switches and these profile preferences.
    async fn browser_with_prefs(&self, extra: &[&str], prefs: Value) -> Browser {
        // The machine's network is closed: no background calls home.
        let args: Vec<&str> = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--window-size=1100,720",
        ]
        .into_iter()
        .chain(extra.iter().copied())
        .collect();
        let mut capabilities = serde_json::Map::new();
        capabilities.insert(
            "goog:chromeOptions".into(),
            json!({
                "binary": std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into()),
                "args": args,
                "prefs": prefs,
            }),
        );
        ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&self.url)
            .await
            .unwrap()
    }
}

/// Runs `script` (which must `return` a boolean) until it is true.
async fn wait_for(browser: &Browser, what: &str, script: &str, args: Vec<Value>) {
    let started = Instant::now();
    loop {
        if browser.execute(script, args.clone()).await.unwrap() == Value::Bool(true) {
            return;
        }
        if started.elapsed() > PAGE_WAIT {
            let body = browser
                .execute("return document.body.innerText", vec![])
                .await
                .unwrap_or_default();
            panic!("waited {PAGE_WAIT:?} for {what}; the page shows:\n{body}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits for a message bubble with exactly `text`, `mine` or not, whose
/// status is one of `statuses` (any when empty).
async fn wait_for_message(browser: &Browser, text: &str, mine: bool, statuses: &[&str]) {
    let script = "const [text, side, statuses] = arguments;
        return [...document.querySelectorAll('#message-list .msg.' + side)].some((m) =>
            m.querySelector('.text').textContent === text
            && (statuses.length === 0 || statuses.includes(m.dataset.status)));";
    let side = if mine { "mine" } else { "theirs" };
    let what = format!("{side} message {text:?} with status in {statuses:?}");
    wait_for(browser, &what, script, vec![json!(text), json!(side), json!(statuses)]).await;
}

/// How many bubbles of the open chat hold exactly `text`.
async fn count_messages(browser: &Browser, text: &str) -> u64 {
    let script = "return [...document.querySelectorAll('#message-list .msg .text')]
        .filter((t) => t.textContent === arguments[0]).length;";
    browser
        .execute(script, vec![json!(text)])
        .await
        .unwrap()
        .as_u64()
        .unwrap()
}

/// The page draws its lists on events, so an element may not be drawn yet
/// (a slow, cold browser draws late), or be gone by the time it is used
/// after a redraw: find it again, for up to `PAGE_WAIT`.
async fn retry_until_drawn<T, F, Fut>(mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, fantoccini::error::CmdError>>,
{
    let started = Instant::now();
    loop {
        match attempt().await {
            Ok(v) => return v,
            Err(e) if (e.is_stale_element_reference() || e.is_no_such_element()) && started.elapsed() < PAGE_WAIT => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("webdriver, after {:?}: {e}", started.elapsed()),
        }
    }
}

async fn text_of(browser: &Browser, css: &str) -> String {
    retry_until_drawn(|| async { browser.find(Locator::Css(css)).await?.text().await }).await
}

async fn fill(browser: &Browser, css: &str, text: &str) {
    let input = retry_until_drawn(|| browser.find(Locator::Css(css))).await;
    input.clear().await.unwrap();
    input.send_keys(text).await.unwrap();
}

async fn click(browser: &Browser, css: &str) {
    retry_until_drawn(|| async { browser.find(Locator::Css(css)).await?.click().await }).await;
}

/// Opens the page and waits for its sign-in form.
async fn open_sign_in(browser: &Browser, base: &str) {
    browser.goto(base).await.unwrap();
    wait_sign_in_form(browser, "the sign-in form").await;
}

async fn wait_sign_in_form(browser: &Browser, what: &str) {
    wait_for(browser, what, "return !document.getElementById('auth').hidden", vec![]).await;
}

/// Fills the sign-in form and presses `button` (`#register-btn` or
/// `#login-btn`).
async fn sign_in(browser: &Browser, name: &str, button: &str) {
    fill(browser, "#username", name).await;
    fill(browser, "#password", PASSWORD).await;
    click(browser, button).await;
    signed_in_as(browser, name).await;
}

async fn signed_in_as(browser: &Browser, name: &str) {
    let script = "return !document.getElementById('app').hidden
        && document.getElementById('me').textContent === arguments[0]
        && document.body.dataset.link === 'online';";
    wait_for(
        browser,
        &format!("signed in and online as {name}"),
        script,
        vec![json!(name)],
    )
    .await;
}

async fn send(browser: &Browser, text: &str) {
    let input = browser.find(Locator::Css("#message-input")).await.unwrap();
    input.send_keys(text).await.unwrap();
    input.send_keys(&Key::Enter.to_string()).await.unwrap();
}

async fn open_chat(browser: &Browser, peer: &str) {
    click(browser, &format!("#conversations .conv[data-username='{peer}']")).await;
    let script = "return document.getElementById('peer-name').textContent === arguments[0]";
    wait_for(browser, &format!("the chat with {peer}"), script, vec![json!(peer)]).await;
}

async fn wait_presence(browser: &Browser, prefix: &str) {
    let script = "return document.getElementById('peer-presence').textContent.startsWith(arguments[0])";
    wait_for(
        browser,
        &format!("peer presence {prefix:?}"),
        script,
        vec![json!(prefix)],
    )
    .await;
}

async fn screenshot(browser: &Browser, name: &str) {
    let Some(dir) = std::env::var_os("DYAD_SCREENSHOTS") else {
        return;
    };
    let png = browser.screenshot().await.unwrap();
    std::fs::write(PathBuf::from(dir).join(name), png).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_people_chat_in_the_browser() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn().await;
    let base = server.base.clone();
    let driver = Chromedriver::start().await;
    let alice = driver.browser().await;
    let bob = driver.browser().await;

    // Both register; the sign-in form turns into the app.
    open_sign_in(&alice, &base).await;
    screenshot(&alice, "sign-in.png").await;
    sign_in(&alice, "alice", "#register-btn").await;
    open_sign_in(&bob, &base).await;
    sign_in(&bob, "bob", "#register-btn").await;

    // Alice starts a chat by username; an unknown name is a clear error.
    fill(&alice, "#new-chat-name", "nobody").await;
    click(&alice, "#new-chat button").await;
    let script = "return document.getElementById('new-chat-error').textContent.includes('No user named')";
    wait_for(&alice, "the unknown-user error", script, vec![]).await;
    fill(&alice, "#new-chat-name", "bob").await;
    click(&alice, "#new-chat button").await;
    let script = "return document.getElementById('peer-name').textContent === 'bob'";
    wait_for(&alice, "the chat with bob", script, vec![]).await;
    wait_presence(&alice, "online").await;

    // Alice -> Bob: Bob's browser has it (and acks it), so Alice sees ✓✓.
    send(&alice, "Hi Bob!").await;
    wait_for_message(&alice, "Hi Bob!", true, &["delivered", "read"]).await;
    assert_eq!(text_of(&alice, "#message-list .msg.mine .ticks").await, "✓✓");
    let script = "return [...document.querySelectorAll('#conversations .conv')].some((c) =>
        c.dataset.username === 'alice' && c.querySelector('.preview').textContent === 'Hi Bob!')";
    wait_for(&bob, "alice's message in bob's conversation list", script, vec![]).await;
    open_chat(&bob, "alice").await;
    wait_for_message(&bob, "Hi Bob!", false, &[]).await;

    // Bob -> Alice, with markup that must stay text.
    let hostile = "<b>bold</b> & <img src=x onerror=\"window.pwned=1\">";
    send(&bob, hostile).await;
    wait_for_message(&bob, hostile, true, &["delivered", "read"]).await;
    wait_for_message(&alice, hostile, false, &[]).await;
    let script = "return [...document.querySelectorAll('#message-list .msg .text')]
        .every((t) => t.children.length === 0) && window.pwned === undefined";
    assert_eq!(
        alice.execute(script, vec![]).await.unwrap(),
        json!(true),
        "a message was rendered as HTML"
    );

    // Web addresses are links, made as DOM nodes, opening elsewhere.
    let linked = "docs at https://example.com/a?b=1. ok";
    send(&bob, linked).await;
    wait_for_message(&alice, linked, false, &[]).await;
    let script = "const text = [...document.querySelectorAll('#message-list .msg .text')]
            .find((t) => t.textContent === arguments[0]);
        const links = [...text.querySelectorAll('a')];
        return links.length === 1 && links[0].href === 'https://example.com/a?b=1'
            && links[0].textContent === 'https://example.com/a?b=1'
            && links[0].target === '_blank' && links[0].rel === 'noopener noreferrer';";
    assert_eq!(
        alice.execute(script, vec![json!(linked)]).await.unwrap(),
        json!(true),
        "the address is one link"
    );

    // Typing shows on the other side.
    let input = bob.find(Locator::Css("#message-input")).await.unwrap();
    input.send_keys("typing something").await.unwrap();
    let script = "return !document.getElementById('typing').hidden";
    wait_for(&alice, "bob's typing indicator", script, vec![]).await;
    screenshot(&alice, "chat.png").await;
    input.clear().await.unwrap();

    // Bob leaves: after the grace period Alice sees "last seen"; he comes
    // back (his session kept across the reload) and she sees him online.
    bob.goto("about:blank").await.unwrap();
    wait_presence(&alice, "last seen").await;
    let script = "return document.querySelector('#conversations .conv .presence').textContent.startsWith('last seen')";
    wait_for(&alice, "last seen in the conversation list", script, vec![]).await;
    screenshot(&alice, "last-seen.png").await;
    bob.goto(&base).await.unwrap();
    signed_in_as(&bob, "bob").await;
    wait_presence(&alice, "online").await;

    // A reload keeps Alice signed in, and the history is there.
    alice.refresh().await.unwrap();
    signed_in_as(&alice, "alice").await;
    open_chat(&alice, "bob").await;
    wait_for_message(&alice, "Hi Bob!", true, &["read"]).await;
    wait_for_message(&alice, hostile, false, &[]).await;

    // The server restarts. What Alice writes meanwhile waits in a visible
    // queue, goes out when the link is back, and shows once on each side.
    open_chat(&bob, "alice").await;
    let addr = base.trim_start_matches("http://").to_owned();
    let (db, _dir) = server.stop_keep().await;
    let script = "return document.body.dataset.link !== 'online'";
    wait_for(&alice, "alice's link to drop", script, vec![]).await;
    send(&alice, "Are you there?").await;
    wait_for_message(&alice, "Are you there?", true, &["queued"]).await;
    assert_eq!(
        text_of(&alice, "#message-list .msg.mine[data-status='queued'] .ticks").await,
        "◷"
    );
    screenshot(&alice, "offline-queue.png").await;
    let server = TestServer::spawn_on(&addr, &db, test_config()).await;
    wait_for_message(&alice, "Are you there?", true, &["delivered", "read"]).await;
    wait_for_message(&bob, "Are you there?", false, &[]).await;
    assert_eq!(count_messages(&alice, "Are you there?").await, 1);
    assert_eq!(count_messages(&bob, "Are you there?").await, 1);
    let stored = server.login("alice").await;
    let bob_id = stored.client.user_by_username("bob").await.unwrap().user_id;
    let history = stored.history(bob_id, &[]).await;
    assert_eq!(history.iter().filter(|m| m.message == "Are you there?").count(), 1);

    // Logout signs Bob out here and stays signed out across a reload.
    click(&bob, "#logout-btn").await;
    wait_sign_in_form(&bob, "bob's sign-in form").await;
    bob.refresh().await.unwrap();
    wait_sign_in_form(&bob, "bob's sign-in form after a reload").await;

    alice.close().await.unwrap();
    bob.close().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn the_page_and_its_files_come_from_the_binary_with_a_strict_policy() {
    let server = TestServer::spawn().await;
    for (path, kind) in [
        ("/", "text/html"),
        ("/app.js", "text/javascript"),
        ("/app.css", "text/css"),
    ] {
        let response = reqwest::get(format!("{}{path}", server.base)).await.unwrap();
        assert_eq!(response.status(), 200, "{path}");
        let headers = response.headers();
        assert!(headers["content-type"].to_str().unwrap().starts_with(kind), "{path}");
        let policy = headers["content-security-policy"].to_str().unwrap();
        assert!(policy.contains("script-src 'self'"), "{path}: {policy}");
        assert_eq!(headers["x-content-type-options"], "nosniff");
        assert!(!response.text().await.unwrap().is_empty());
    }
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_browser_and_a_terminal_chat_and_history_pages_back() {
    let _heavy = crate::helpers::heavy().await;
    // Flood control off: the old messages below go out back to back.
    let server = TestServer::spawn_with(dyad_server::Config {
        rate_limit: 0,
        ..test_config()
    })
    .await;
    let alice = server.user("alice").await;
    let bob = server.user("bob").await;

    // 120 old messages, already delivered to another device of Bob's, so
    // the browser gets them only by paging back through history.
    let mut a = alice.connect().await;
    for i in 1..=120 {
        a.send_and_ack(bob.id, &format!("old {i}"), &format!("k{i}")).await;
    }
    let mut b = bob.connect_raw().await;
    let replayed = b.replay().await;
    b.0.delivery_ack(replayed.iter().map(|m| m.message_id).collect())
        .await
        .unwrap();
    for _ in 0..120 {
        a.expect_delivered().await;
    }
    b.0.close().await.unwrap();

    // Bob logs in (not registers) in the browser and scrolls up.
    let driver = Chromedriver::start().await;
    let browser = driver.browser().await;
    open_sign_in(&browser, &server.base).await;
    sign_in(&browser, "bob", "#login-btn").await;
    open_chat(&browser, "alice").await;
    let shown = "return document.querySelectorAll('#message-list .msg').length === arguments[0]";
    wait_for(&browser, "the first page", shown, vec![json!(50)]).await;
    let scroll_up = "const box = document.getElementById('messages');
        box.scrollTop = 0; box.dispatchEvent(new Event('scroll')); return true;";
    for expected in [100, 120] {
        browser.execute(scroll_up, vec![]).await.unwrap();
        wait_for(&browser, &format!("{expected} messages"), shown, vec![json!(expected)]).await;
    }
    let script = "return document.getElementById('history-state').textContent === 'Start of the conversation'";
    wait_for(&browser, "the start of the conversation", script, vec![]).await;
    let order = "return [...document.querySelectorAll('#message-list .msg .text')].map((t) => t.textContent)";
    let texts = browser.execute(order, vec![]).await.unwrap();
    let expected: Vec<String> = (1..=120).map(|i| format!("old {i}")).collect();
    assert_eq!(
        texts,
        json!(expected),
        "history in conversation order, no gaps, no doubles"
    );

    // Alice, in the terminal, chats with Bob in the browser.
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("alice.json");
    let login = ["login", "alice", "--server", &server.base, "--password-stdin"];
    stdout(&run(&config, &login, &format!("{PASSWORD}\n")).await);
    let mut chat = dyad(&config).args(["chat", "bob", "--history", "3"]).spawn().unwrap();
    let mut input = chat.stdin.take().unwrap();
    let mut lines = BufReader::new(chat.stdout.take().unwrap()).lines();
    wait_line(&mut lines, "you: old 120 ✓✓").await;
    send(&browser, "hi terminal").await;
    wait_line(&mut lines, "bob: hi terminal").await;
    wait_for_message(&browser, "hi terminal", true, &["read"]).await;
    input.write_all(b"hi browser\n").await.unwrap();
    wait_for_message(&browser, "hi browser", false, &[]).await;
    wait_line(&mut lines, "✓✓ delivered: hi browser").await;
    drop(input);
    assert!(
        tokio::time::timeout(WAIT, chat.wait())
            .await
            .unwrap()
            .unwrap()
            .success()
    );

    browser.close().await.unwrap();
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_works_over_https_and_wss() {
    let _heavy = crate::helpers::heavy().await;
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = crate::tls::self_signed(dir.path());
    let server = TestServer::spawn_with(dyad_server::Config {
        tls: Some(dyad_server::tls::server_config(&cert, &key).unwrap()),
        ..test_config()
    })
    .await;
    let driver = Chromedriver::start().await;
    // The certificate is self-signed: this browser is told to accept it.
    let browser = driver.browser_with(&["--ignore-certificate-errors"]).await;
    open_sign_in(&browser, &server.base).await;
    // Online means the page's WebSocket (wss://, token as a subprotocol) is up.
    sign_in(&browser, "alice", "#register-btn").await;

    let pem = std::fs::read(&cert).unwrap();
    let mut bob = dyad_client::Client::new(&server.base).trusting(&pem).unwrap();
    bob.register("bob", PASSWORD).await.unwrap();
    bob.login("bob", PASSWORD).await.unwrap();
    let alice_id = bob.user_by_username("alice").await.unwrap().user_id;
    let mut conn = crate::helpers::TestConn(bob.connect().await.unwrap());
    conn.replay().await;
    conn.send(alice_id, "hello over wss", Some("k1")).await;
    conn.expect_ack().await;
    let listed = "return document.querySelector(\"#conversations .conv[data-username='bob']\") !== null";
    wait_for(&browser, "the conversation with bob", listed, vec![]).await;
    open_chat(&browser, "bob").await;
    wait_for_message(&browser, "hello over wss", false, &[]).await;
    browser.close().await.unwrap();
    server.stop().await;
}

/// Bob's page is closed while 120 messages go back and forth: his own
/// (odd numbers) from another device, and Alice's (even, the last one
/// hers) still undelivered. Then Bob signs in on the page.
async fn bob_signs_in_after_120_messages(server: &TestServer, driver: &Chromedriver) -> (TestUser, TestUser, Browser) {
    let (alice, bob) = (server.user("alice").await, server.user("bob").await);
    let (mut alice_socket, mut bob_phone) = (alice.connect().await, bob.connect().await);
    for i in 1..=120 {
        let text = format!("#{i:03}");
        if i % 2 == 1 {
            bob_phone.send_and_ack(alice.id, &text, &text).await;
            alice_socket.expect_message().await;
        } else {
            alice_socket.send_and_ack(bob.id, &text, &text).await;
            bob_phone.expect_message().await; // and never acknowledged
        }
    }
    drop(bob_phone);
    let page = driver.browser().await;
    open_sign_in(&page, &server.base).await;
    sign_in(&page, "bob", "#login-btn").await;
    (alice, bob, page)
}

fn unlimited() -> dyad_server::Config {
    dyad_server::Config {
        rate_limit: 0,
        ..test_config()
    }
}

/// The badge counts every one of Alice's 60 (the page before was one
/// short: the conversation list had already shown it the last one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_badge_counts_every_unread_message() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn_with(unlimited()).await;
    let driver = Chromedriver::start().await;
    let (_alice, _bob, page) = bob_signs_in_after_120_messages(&server, &driver).await;
    let script = "return [...document.querySelectorAll('#conversations .conv')].some((c) =>
        c.dataset.username === 'alice' && c.dataset.unread === '60')";
    wait_for(&page, "60 unread from alice", script, vec![]).await;
    let badge = text_of(&page, "#conversations .conv[data-username='alice'] .unread").await;
    assert_eq!(badge, "60");
    open_chat(&page, "alice").await;
    let script =
        "return document.querySelector(\"#conversations .conv[data-username='alice']\").dataset.unread === '0'";
    wait_for(&page, "the badge cleared", script, vec![]).await;
    server.stop().await;
}

/// Scrolling back shows the whole conversation, as the REST history has
/// it (the page before paged back from the oldest replayed message and
/// skipped most of Bob's own).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrolling_back_misses_no_message() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn_with(unlimited()).await;
    let driver = Chromedriver::start().await;
    let (alice, bob, page) = bob_signs_in_after_120_messages(&server, &driver).await;
    open_chat(&page, "alice").await;
    wait_for_message(&page, "#120", false, &[]).await;
    let script = "const box = document.getElementById('messages');
        box.scrollTop = 0;
        box.dispatchEvent(new Event('scroll'));
        return document.getElementById('history-state').textContent === 'Start of the conversation';";
    wait_for(&page, "the start of the conversation", script, vec![]).await;
    let shown = page
        .execute(
            "return [...document.querySelectorAll('#message-list .msg')].map((m) => m.dataset.messageId)",
            vec![],
        )
        .await
        .unwrap();
    let mut shown: Vec<String> = serde_json::from_value(shown).unwrap();
    let mut stored = Vec::new();
    let mut query = vec![("limit", "100".to_owned())];
    loop {
        let page = bob.client.history(alice.id, &query).await.unwrap();
        stored.extend(page.messages.iter().map(|m| m.message_id.to_string()));
        let Some(last) = page.messages.last().filter(|_| page.has_more) else {
            break;
        };
        query = vec![("limit", "100".to_owned()), ("before", last.timestamp.to_string())];
    }
    assert_eq!(stored.len(), 120);
    shown.sort();
    stored.sort();
    assert_eq!(shown.len(), 120, "the page shows {} of 120", shown.len());
    assert_eq!(shown, stored, "the page shows the conversation as stored");
    server.stop().await;
}

/// The page is dark when the system is (`prefers-color-scheme`), and light
/// otherwise.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_follows_the_systems_dark_mode() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn().await;
    let driver = Chromedriver::start().await;
    let background = "return getComputedStyle(document.documentElement).backgroundColor";
    let light = driver.browser().await;
    open_sign_in(&light, &server.base).await;
    assert_eq!(
        light.execute(background, vec![]).await.unwrap(),
        json!("rgb(244, 245, 247)")
    );
    let dark = driver.browser_with(&["--force-dark-mode"]).await;
    open_sign_in(&dark, &server.base).await;
    let prefers = "return matchMedia('(prefers-color-scheme: dark)').matches";
    assert_eq!(
        dark.execute(prefers, vec![]).await.unwrap(),
        json!(true),
        "the flag took"
    );
    assert_eq!(
        dark.execute(background, vec![]).await.unwrap(),
        json!("rgb(15, 17, 21)")
    );
    sign_in(&dark, "alice", "#register-btn").await;
    let (bob, alice) = (server.user("bob").await, server.login("alice").await);
    let mut bob_socket = bob.connect().await;
    bob_socket
        .send_and_ack(alice.id, "The plan is at https://example.com/plan. Tonight?", "k1")
        .await;
    open_chat(&dark, "bob").await;
    send(&dark, "Looks good!").await;
    wait_for_message(&dark, "Looks good!", true, &["sent", "delivered"]).await;
    screenshot(&dark, "dark.png").await;
    server.stop().await;
}

/// Blocking from the chat header: the button says what it will do, the
/// composer is closed while the block lasts, and the server holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_blocks_and_unblocks_from_the_chat_header() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn().await;
    let driver = Chromedriver::start().await;
    let bob = server.user("bob").await;
    let page = driver.browser().await;
    open_sign_in(&page, &server.base).await;
    sign_in(&page, "alice", "#register-btn").await;
    fill(&page, "#new-chat-name", "bob").await;
    click(&page, "#new-chat button").await;
    wait_presence(&page, "").await;
    assert_eq!(text_of(&page, "#block-btn").await, "Block");

    click(&page, "#block-btn").await;
    let script = "return document.getElementById('block-btn').dataset.blocked === 'true'
        && document.getElementById('message-input').disabled";
    wait_for(&page, "the block", script, vec![]).await;
    assert_eq!(text_of(&page, "#block-btn").await, "Unblock");
    let mut bob_socket = bob.connect().await;
    let alice_id = bob.client.user_by_username("alice").await.unwrap().user_id;
    bob_socket.send(alice_id, "hello?", Some("k1")).await;
    bob_socket.expect_error(dyad_client::protocol::ErrorCode::Blocked).await;

    click(&page, "#block-btn").await;
    let script = "return document.getElementById('block-btn').dataset.blocked === 'false'
        && !document.getElementById('message-input').disabled";
    wait_for(&page, "the unblock", script, vec![]).await;
    send(&page, "sorry!").await;
    let got = loop {
        match bob_socket.next().await {
            dyad_client::protocol::ServerEvent::ReceiveMessage(m) => break m,
            dyad_client::protocol::ServerEvent::Typing { .. } => continue, // the page types too
            other => panic!("{other:?}"),
        }
    };
    assert_eq!(got.message, "sorry!");
    server.stop().await;
}

/// Clicks `css` inside the bubble of the open chat whose text is `text`.
async fn click_in_message(browser: &Browser, text: &str, css: &str) {
    let script = "const [text, css] = arguments;
        const bubble = [...document.querySelectorAll('#message-list .msg')]
            .find((m) => m.querySelector('.text').textContent === text);
        const target = bubble && bubble.querySelector(css);
        if (target) target.click();
        return Boolean(target);";
    wait_for(
        browser,
        &format!("{css} on {text:?}"),
        script,
        vec![json!(text), json!(css)],
    )
    .await;
}

async fn wait_unread(browser: &Browser, peer: &str, count: u32) {
    let script = "const c = document.querySelector(`#conversations .conv[data-username='${arguments[0]}']`);
        return Boolean(c) && c.dataset.unread === arguments[1];";
    let what = format!("{count} unread from {peer}");
    wait_for(browser, &what, script, vec![json!(peer), json!(count.to_string())]).await;
}

/// Alice on one page; Bob on two (two devices). Ticks go grey then blue,
/// Bob's second device's badge follows his first's reading (and a reload),
/// a "new messages" divider marks where he stopped, Alice edits and deletes
/// from a message's menu, Bob searches and changes a setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_receipts_unread_counts_edits_deletes_and_search_in_the_browser() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn().await;
    let bob = server.user("bob").await;
    let driver = Chromedriver::start().await;
    let alice_page = driver.browser().await;
    open_sign_in(&alice_page, &server.base).await;
    sign_in(&alice_page, "alice", "#register-btn").await;
    let (bob1, bob2) = (driver.browser().await, driver.browser().await);
    for page in [&bob1, &bob2] {
        open_sign_in(page, &server.base).await;
        sign_in(page, "bob", "#login-btn").await;
    }
    fill(&alice_page, "#new-chat-name", "bob").await;
    click(&alice_page, "#new-chat button").await;
    wait_presence(&alice_page, "online").await;

    // Delivered to Bob's pages (grey ✓✓), not read: neither has the chat open.
    send(&alice_page, "one").await;
    send(&alice_page, "two").await;
    wait_for_message(&alice_page, "two", true, &["delivered"]).await;
    for page in [&bob1, &bob2] {
        wait_unread(page, "alice", 2).await;
    }
    // Bob reads on his first device: Alice's ticks turn blue, his second
    // device's badge clears, and the first shows where the new ones began.
    open_chat(&bob1, "alice").await;
    wait_for_message(&alice_page, "one", true, &["read"]).await;
    wait_for_message(&alice_page, "two", true, &["read"]).await;
    let color = "return getComputedStyle(document.querySelector('#message-list .msg.mine .ticks')).color";
    assert_eq!(
        alice_page.execute(color, vec![]).await.unwrap(),
        json!("rgb(14, 165, 233)")
    );
    wait_unread(&bob2, "alice", 0).await;
    let script = "const d = document.getElementById('new-messages');
        return Boolean(d) && d.nextElementSibling.querySelector('.text').textContent === 'one';";
    wait_for(&bob1, "the new-messages divider above 'one'", script, vec![]).await;
    screenshot(&alice_page, "read.png").await;

    // Alice edits 'two' and deletes 'one' from their menus.
    click_in_message(&alice_page, "two", ".menu-btn").await;
    click_in_message(&alice_page, "two", ".edit-btn").await;
    wait_for(
        &alice_page,
        "the edit banner",
        "return !document.getElementById('editing-banner').hidden",
        vec![],
    )
    .await;
    assert_eq!(
        alice_page
            .execute("return document.getElementById('message-input').value", vec![])
            .await
            .unwrap(),
        json!("two")
    );
    fill(&alice_page, "#message-input", "two, fixed").await;
    alice_page
        .find(Locator::Css("#message-input"))
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    for page in [&alice_page, &bob1] {
        let script = "return [...document.querySelectorAll('#message-list .msg')].some((m) =>
            m.querySelector('.text').textContent === 'two, fixed' && m.querySelector('.edited'))";
        wait_for(page, "the edited message", script, vec![]).await;
    }
    click_in_message(&alice_page, "one", ".menu-btn").await;
    click_in_message(&alice_page, "one", ".delete-btn").await;
    for page in [&alice_page, &bob1] {
        let script = "return document.querySelectorAll('#message-list .msg.deleted').length === 1
            && ![...document.querySelectorAll('#message-list .msg .text')].some((t) => t.textContent === 'one')";
        wait_for(page, "the deleted message", script, vec![]).await;
    }
    screenshot(&bob1, "edited-deleted.png").await;

    // A new message while both of Bob's pages are closed: the badge says 1
    // when one comes back (counted once, though the message is replayed
    // too), and still 1 after a reload.
    bob1.goto("about:blank").await.unwrap();
    bob2.goto("about:blank").await.unwrap();
    send(&alice_page, "three").await;
    wait_for_message(&alice_page, "three", true, &["sent"]).await;
    bob2.goto(&server.base).await.unwrap();
    signed_in_as(&bob2, "bob").await;
    wait_unread(&bob2, "alice", 1).await;
    wait_for_message(&alice_page, "three", true, &["delivered"]).await;
    bob2.refresh().await.unwrap();
    signed_in_as(&bob2, "bob").await;
    wait_unread(&bob2, "alice", 1).await;

    // Bob searches from his second device: found, never the deleted text.
    fill(&bob2, "#search-input", "FIXED").await;
    bob2.find(Locator::Css("#search-input"))
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    let script = "const r = [...document.querySelectorAll('#search-results .result')];
        return r.length === 1 && r[0].querySelector('.preview').textContent === 'two, fixed';";
    wait_for(&bob2, "one search result", script, vec![]).await;
    screenshot(&bob2, "search.png").await;
    click(&bob2, "#search-results .result").await;
    wait_for_message(&bob2, "two, fixed", false, &[]).await;
    wait_unread(&bob2, "alice", 0).await;
    wait_for_message(&alice_page, "three", true, &["read"]).await;
    fill(&bob2, "#search-input", "one").await;
    bob2.find(Locator::Css("#search-input"))
        .await
        .unwrap()
        .send_keys(&Key::Enter.to_string())
        .await
        .unwrap();
    let script = "return document.querySelectorAll('#search-results .result').length === 0
        && document.getElementById('search-results').textContent.includes('Nothing found')";
    wait_for(&bob2, "no result for deleted text", script, vec![]).await;

    // Settings: read receipts off, saved on the server; devices listed.
    click(&bob2, "#settings-btn").await;
    let script = "return document.getElementById('read-receipts').checked
        && document.querySelectorAll('#devices li').length >= 3";
    wait_for(&bob2, "settings and devices", script, vec![]).await;
    screenshot(&bob2, "settings.png").await;
    click(&bob2, "#read-receipts").await;
    let script = "return document.getElementById('settings-note').textContent === 'Saved.'";
    wait_for(&bob2, "the setting saved", script, vec![]).await;
    assert!(!bob.client.settings().await.unwrap().read_receipts);
    for page in [alice_page, bob1, bob2] {
        page.close().await.unwrap();
    }
    server.stop().await;
}

/// Desktop notifications: permission is asked for only when the user
/// clicks, and a message that arrives while the tab is in the background
/// shows one; in the foreground it does not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_are_asked_for_on_a_click_and_shown_while_the_tab_is_hidden() {
    let _heavy = crate::helpers::heavy().await;
    let server = TestServer::spawn().await;
    let driver = Chromedriver::start().await;
    // The profile says yes to notifications, as a user would to the prompt
    // headless Chromium cannot show.
    let allowed = json!({"profile.default_content_setting_values.notifications": 1});
    let browser = driver.browser_with_prefs(&[], allowed).await;
    open_sign_in(&browser, &server.base).await;
    // Count the page's requests and notifications; the real API does the rest.
    let spy = r#"
        window.__asked = 0; window.__shown = [];
        const ask = Notification.requestPermission.bind(Notification);
        Notification.requestPermission = (...args) => { window.__asked += 1; return ask(...args); };
        const Real = window.Notification;
        window.Notification = class extends Real {
            constructor(title, options) { super(title, options); window.__shown.push([title, options.body]); }
        };
        return true;"#;
    assert_eq!(browser.execute(spy, vec![]).await.unwrap(), json!(true));
    sign_in(&browser, "alice", "#register-btn").await;
    let (bob, alice) = (server.user("bob").await, server.login("alice").await);
    // Bob's socket here expects acks and deliveries only: no read receipts.
    let patch = dyad_client::protocol::rest::SettingsPatch {
        read_receipts: Some(false),
        presence: None,
    };
    bob.client.update_settings(&patch).await.unwrap();
    let mut bob_socket = bob.connect().await;
    bob_socket.send_and_ack(alice.id, "hello in the foreground", "k1").await;
    bob_socket.expect_delivered().await;
    open_chat(&browser, "bob").await;
    wait_for_message(&browser, "hello in the foreground", false, &["delivered", "read"]).await;
    let asked = "return window.__asked";
    assert_eq!(
        browser.execute(asked, vec![]).await.unwrap(),
        json!(0),
        "not asked unprompted"
    );

    click(&browser, "#settings-btn").await;
    click(&browser, "#notify-btn").await;
    wait_for(
        &browser,
        "the permission request",
        "return window.__asked === 1",
        vec![],
    )
    .await;
    wait_for(
        &browser,
        "the settings note",
        "return document.getElementById('settings-note').textContent.startsWith('Notifications on')",
        vec![],
    )
    .await;

    // Another tab in front: Alice's chat is in the background.
    let chat = browser.window().await.unwrap();
    let other = browser.new_window(true).await.unwrap();
    browser.switch_to_window(other.handle).await.unwrap();
    bob_socket.send_and_ack(alice.id, "ping while you are away", "k2").await;
    // Delivered: the page has it (and notified in the same task).
    bob_socket.expect_delivered().await;
    browser.switch_to_window(chat).await.unwrap();
    let shown = "return window.__shown";
    assert_eq!(
        browser.execute(shown, vec![]).await.unwrap(),
        json!([["bob", "ping while you are away"]])
    );
    // In front again: no notification.
    bob_socket.send_and_ack(alice.id, "and now you are here", "k3").await;
    bob_socket.expect_delivered().await;
    assert_eq!(
        browser.execute(shown, vec![]).await.unwrap().as_array().map(Vec::len),
        Some(1)
    );
    server.stop().await;
}

//! The terminal client: `dyad register|login|logout|send|history|conversations|chat`.
//!
//! Credentials (server, user and token, never the password) live in one JSON
//! file, readable only by its owner. Every command but `chat` is scriptable:
//! `--json` prints the protocol's own bodies, and failures exit non-zero with
//! the server's error code and text on stderr.

mod chat;

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use dyad_client::protocol::{ClientEvent, MessageId, MessageView, ServerEvent, UserId};
use dyad_client::{ChatSession, Client, SessionEvent, SessionOptions};
use serde::{Deserialize, Serialize};

/// Options every terminal command takes.
#[derive(Debug, Args)]
pub struct Common {
    /// The credentials file [default: $XDG_CONFIG_HOME/dyad/credentials.json,
    /// else ~/.config/dyad/credentials.json].
    #[arg(long, env = "DYAD_CONFIG")]
    config: Option<PathBuf>,
}

impl Common {
    fn path(&self) -> anyhow::Result<PathBuf> {
        match &self.config {
            Some(path) => Ok(path.clone()),
            None => default_config_path(),
        }
    }
}

#[derive(Debug, Subcommand)]
pub enum TermCommand {
    /// Create an account and log in to it.
    Register(LoginArgs),
    /// Log in; the session is kept in the credentials file.
    Login(LoginArgs),
    /// End the session on the server and forget it here.
    Logout(Common),
    /// Send one message and wait until the server has stored it.
    Send(SendArgs),
    /// Print a conversation's history, oldest first.
    History(HistoryArgs),
    /// List your conversations, most recent first.
    Conversations(ConversationsArgs),
    /// Chat interactively: lines you type are sent; incoming messages,
    /// delivered ticks, presence and typing show as they happen.
    Chat(ChatArgs),
    /// List the devices logged in to your account, or log one out.
    Devices(DevicesArgs),
    /// Change your password; every other device is logged out.
    Passwd(PasswdArgs),
    /// Block a user: neither of you can send to the other, typing is not
    /// relayed, and each sees the other offline.
    Block(UserArgs),
    /// Stop blocking a user.
    Unblock(UserArgs),
    /// List the users you block.
    Blocks(ConversationsArgs),
    /// Replace the text of a message you sent: by its id (`dyad history
    /// --ids`), or your newest to a user.
    Edit(EditArgs),
    /// Delete a message you sent, for both of you: by its id, or your
    /// newest to a user.
    Delete(DeleteArgs),
    /// Search all your conversations for messages holding every word.
    Search(SearchArgs),
}

#[derive(Debug, Args)]
pub struct EditArgs {
    /// A message id (m…), or a username: your newest message to them.
    target: String,
    /// The new text.
    text: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// A message id (m…), or a username: your newest message to them.
    target: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct SearchArgs {
    /// The words to find (whole words, any case).
    words: Vec<String>,
    /// How many results (1–100).
    #[arg(long, default_value_t = 20)]
    limit: u32,
    #[command(flatten)]
    out: JsonFlag,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct UserArgs {
    /// Their username.
    username: String,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct DevicesArgs {
    /// Log this device out (a `session_id` from the list).
    #[arg(long, value_name = "SESSION_ID")]
    revoke: Option<String>,
    #[command(flatten)]
    out: JsonFlag,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct PasswdArgs {
    /// Read the current password, then the new one, from the first two
    /// lines of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    /// Your username.
    username: String,
    /// The server.
    #[arg(long, env = "DYAD_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
    /// Also trust this certificate authority (PEM) for an https:// server,
    /// e.g. one with a self-signed certificate; kept with the credentials.
    #[arg(long, env = "DYAD_CA_CERT")]
    ca_cert: Option<PathBuf>,
    /// Read the password from the first line of stdin instead of prompting.
    #[arg(long)]
    password_stdin: bool,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct ConversationsArgs {
    #[command(flatten)]
    out: JsonFlag,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct JsonFlag {
    /// Print JSON (the server's own bodies) instead of text.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    /// Who to send to.
    username: String,
    /// The text.
    text: String,
    /// The idempotency key; repeat it to retry without a second copy
    /// [default: a new random key].
    #[arg(long)]
    client_msg_id: Option<String>,
    #[command(flatten)]
    out: JsonFlag,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The other participant.
    username: String,
    /// How many messages (1–100).
    #[arg(long, default_value_t = 50)]
    limit: u32,
    /// Only messages older than this (ms since the epoch).
    #[arg(long)]
    before: Option<i64>,
    /// Show each message's id (for `dyad edit` and `dyad delete`).
    #[arg(long)]
    ids: bool,
    #[command(flatten)]
    out: JsonFlag,
    #[command(flatten)]
    common: Common,
}

#[derive(Debug, Args)]
pub struct ChatArgs {
    /// Who to chat with.
    username: String,
    /// How many earlier messages to show first.
    #[arg(long, default_value_t = 20)]
    history: u32,
    #[command(flatten)]
    common: Common,
}

/// What the credentials file holds.
#[derive(Debug, Serialize, Deserialize)]
struct Credentials {
    server: String,
    username: String,
    user_id: UserId,
    token: String,
    expires_at: i64,
    /// The extra certificate authority the server was logged in with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    ca_cert: Option<PathBuf>,
}

/// A client of `server`, trusting `ca_cert` as well as the system's roots.
fn client_of(server: &str, ca_cert: Option<&Path>) -> anyhow::Result<Client> {
    let client = Client::new(server);
    match ca_cert {
        None => Ok(client),
        Some(path) => {
            let pem = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            Ok(client
                .trusting(&pem)
                .with_context(|| format!("{} (--ca-cert)", path.display()))?)
        }
    }
}

pub async fn run(command: TermCommand) -> anyhow::Result<()> {
    match command {
        TermCommand::Register(args) => {
            let password = read_password(args.password_stdin)?;
            client_of(&args.server, args.ca_cert.as_deref())?
                .register(&args.username, &password)
                .await?;
            login(&args.common.path()?, &args, &password).await
        }
        TermCommand::Login(args) => {
            let password = read_password(args.password_stdin)?;
            login(&args.common.path()?, &args, &password).await
        }
        TermCommand::Logout(common) => logout(&common.path()?).await,
        TermCommand::Send(args) => send(&args.common.path()?, args).await,
        TermCommand::History(args) => history(&args.common.path()?, args).await,
        TermCommand::Conversations(args) => conversations(&args.common.path()?, args.out).await,
        TermCommand::Devices(args) => devices(&args.common.path()?, args).await,
        TermCommand::Passwd(args) => passwd(&args.common.path()?, args.password_stdin).await,
        TermCommand::Block(args) => block(&args.common.path()?, &args.username, true).await,
        TermCommand::Unblock(args) => block(&args.common.path()?, &args.username, false).await,
        TermCommand::Blocks(args) => blocks(&args.common.path()?, args.out).await,
        TermCommand::Edit(args) => {
            let (credentials, client) = logged_in(&args.common.path()?)?;
            let id = own_message(&credentials, &client, &args.target).await?;
            change(
                &client,
                ClientEvent::EditMessage {
                    message_id: id,
                    message: args.text,
                },
            )
            .await?;
            println!("edited {id}");
            Ok(())
        }
        TermCommand::Delete(args) => {
            let (credentials, client) = logged_in(&args.common.path()?)?;
            let id = own_message(&credentials, &client, &args.target).await?;
            change(&client, ClientEvent::DeleteMessage { message_id: id }).await?;
            println!("deleted {id}");
            Ok(())
        }
        TermCommand::Search(args) => search(&args.common.path()?, args).await,
        TermCommand::Chat(args) => {
            let (credentials, client) = logged_in(&args.common.path()?)?;
            chat::run(credentials, client, args).await
        }
    }
}

fn default_config_path() -> anyhow::Result<PathBuf> {
    let base = match std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var_os("HOME").context("HOME is not set; pass --config")?).join(".config"),
    };
    Ok(base.join("dyad").join("credentials.json"))
}

/// A password: the first line of stdin, or typed at a prompt.
pub(crate) fn read_password(from_stdin: bool) -> anyhow::Result<String> {
    if from_stdin {
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        return Ok(line.trim_end_matches(['\r', '\n']).to_owned());
    }
    rpassword::prompt_password("Password: ").context("cannot read a password from the terminal; try --password-stdin")
}

async fn login(path: &Path, args: &LoginArgs, password: &str) -> anyhow::Result<()> {
    let mut client = client_of(&args.server, args.ca_cert.as_deref())?;
    let session = client.login(&args.username, password).await?;
    let credentials = Credentials {
        server: client.base_url().to_owned(),
        username: args.username.to_lowercase(),
        user_id: session.user_id,
        token: session.token,
        expires_at: session.expires_at,
        // Absolute, so that later commands find it from any folder.
        ca_cert: args.ca_cert.as_deref().map(std::path::absolute).transpose()?,
    };
    save(path, &credentials)?;
    println!("logged in as {} on {}", credentials.username, credentials.server);
    Ok(())
}

/// Writes the file readable by its owner only: it holds a bearer token.
fn save(path: &Path, credentials: &Credentials) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    serde_json::to_writer_pretty(&mut file, credentials)?;
    file.write_all(b"\n")?;
    Ok(())
}

fn logged_in(path: &Path) -> anyhow::Result<(Credentials, Client)> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => bail!("not logged in: run `dyad login USERNAME` first"),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let credentials: Credentials =
        serde_json::from_str(&text).with_context(|| format!("{} is damaged; log in again", path.display()))?;
    let client = client_of(&credentials.server, credentials.ca_cert.as_deref())?
        .with_token(credentials.token.clone(), credentials.user_id);
    Ok((credentials, client))
}

async fn logout(path: &Path) -> anyhow::Result<()> {
    let (credentials, client) = logged_in(path)?;
    let result = client.logout().await;
    // Forget the token here even if the server could not be told.
    std::fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
    result?;
    println!("logged out {}", credentials.username);
    Ok(())
}

/// The message `target` names: an id, or the user's newest message to the
/// user of that name.
async fn own_message(me: &Credentials, client: &Client, target: &str) -> anyhow::Result<MessageId> {
    if let Ok(id) = target.parse::<MessageId>() {
        return Ok(id);
    }
    let to = peer(client, target).await?;
    let page = client.history(to, &[("limit", "100".to_owned())]).await?;
    page.messages
        .iter()
        .find(|m| m.sender_id == me.user_id && !m.deleted)
        .map(|m| m.message_id)
        .with_context(|| format!("you have no message to {target} among the last 100"))
}

/// Sends an edit or a delete and waits for the server's confirmation (its
/// `message_edited` or `message_deleted`) or refusal.
async fn change(client: &Client, event: ClientEvent) -> anyhow::Result<()> {
    let (ClientEvent::EditMessage { message_id, .. } | ClientEvent::DeleteMessage { message_id }) = &event else {
        bail!("not a change");
    };
    let id = *message_id;
    let mut conn = client.connect().await?;
    conn.send(&event).await?;
    loop {
        match conn.next_event().await? {
            ServerEvent::MessageEdited { message_id, .. } | ServerEvent::MessageDeleted { message_id, .. }
                if message_id == id =>
            {
                return Ok(());
            }
            ServerEvent::Error(e) if e.message_id == Some(id) => bail!("{}: {}", e.code.as_str(), e.message),
            _ => {}
        }
    }
}

async fn search(path: &Path, args: SearchArgs) -> anyhow::Result<()> {
    let (credentials, client) = logged_in(path)?;
    let query = [("q", args.words.join(" ")), ("limit", args.limit.to_string())];
    let page = client.search(&query).await?;
    if args.out.json {
        println!("{}", serde_json::to_string(&page)?);
        return Ok(());
    }
    let mut names: std::collections::HashMap<UserId, String> = client
        .conversations()
        .await?
        .conversations
        .into_iter()
        .map(|c| (c.user_id, c.username))
        .collect();
    names.insert(credentials.user_id, "you".into());
    for m in &page.messages {
        let other = if m.sender_id == credentials.user_id {
            m.recipient_id
        } else {
            m.sender_id
        };
        let with = names.get(&other).cloned().unwrap_or_else(|| other.to_string());
        println!("({with}) {}", line(&credentials, &with, m, true));
    }
    if page.messages.is_empty() {
        println!("nothing found");
    }
    Ok(())
}

async fn peer(client: &Client, username: &str) -> anyhow::Result<UserId> {
    Ok(client.user_by_username(username).await?.user_id)
}

async fn send(path: &Path, args: SendArgs) -> anyhow::Result<()> {
    let (_, client) = logged_in(path)?;
    let to = peer(&client, &args.username).await?;
    // A session without auto-ack: messages waiting for this user stay
    // pending for the devices where they will be read.
    let options = SessionOptions {
        auto_ack: false,
        ..SessionOptions::default()
    };
    let mut session = ChatSession::start(client, options);
    let key = match args.client_msg_id {
        Some(key) => {
            session.send_with_key(to, args.text, key.clone())?;
            key
        }
        None => session.send(to, args.text)?,
    };
    while let Some(event) = session.next().await {
        match event {
            SessionEvent::Sent {
                client_msg_id,
                message_id,
                seq,
                timestamp,
            } if client_msg_id == key => {
                if args.out.json {
                    let ack = serde_json::json!({
                        "client_msg_id": client_msg_id, "message_id": message_id, "recipient_id": to,
                        "timestamp": timestamp, "seq": seq,
                    });
                    println!("{ack}");
                } else {
                    println!("sent to {} (seq {seq})", args.username);
                }
                return Ok(());
            }
            SessionEvent::Refused(error) if error.client_msg_id.as_deref() == Some(&key) => {
                bail!("{}: {}", error.code.as_str(), error.message)
            }
            SessionEvent::Disconnected { reason } if reason == "unauthorized" => {
                bail!("the session has ended: log in again")
            }
            _ => {}
        }
    }
    bail!("the connection ended before the message was stored")
}

async fn history(path: &Path, args: HistoryArgs) -> anyhow::Result<()> {
    let (credentials, client) = logged_in(path)?;
    let with = peer(&client, &args.username).await?;
    let mut query = vec![("limit", args.limit.to_string())];
    if let Some(before) = args.before {
        query.push(("before", before.to_string()));
    }
    let page = client.history(with, &query).await?;
    if args.out.json {
        println!("{}", serde_json::to_string(&page)?);
        return Ok(());
    }
    let mut out = std::io::stdout().lock();
    if page.has_more {
        writeln!(
            out,
            "(older messages: --before {})",
            page.messages.last().map_or(0, |m| m.timestamp)
        )?;
    }
    for message in page.messages.iter().rev() {
        let id = if args.ids {
            format!("{}  ", message.message_id)
        } else {
            String::new()
        };
        writeln!(out, "{id}{}", line(&credentials, &args.username, message, true))?;
    }
    Ok(())
}

async fn conversations(path: &Path, out: JsonFlag) -> anyhow::Result<()> {
    let (credentials, client) = logged_in(path)?;
    let list = client.conversations().await?;
    if out.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.conversations.is_empty() {
        println!("no conversations yet: `dyad chat USERNAME` starts one");
    }
    for c in &list.conversations {
        println!(
            "{:<20} {}",
            c.username,
            line(&credentials, &c.username, &c.last_message, true)
        );
    }
    Ok(())
}

async fn devices(path: &Path, args: DevicesArgs) -> anyhow::Result<()> {
    let (_, client) = logged_in(path)?;
    if let Some(id) = args.revoke {
        let id = id
            .parse()
            .map_err(|_| anyhow::anyhow!("{id} is not a session id (see `dyad devices`)"))?;
        client.revoke_session(id).await?;
        println!("logged out {id}");
        return Ok(());
    }
    let list = client.sessions().await?;
    if args.out.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    for s in &list.sessions {
        println!(
            "{:<24} logged in {}  last used {}{}",
            s.session_id,
            local_time(s.created_at, true),
            local_time(s.last_used_at, true),
            if s.current { "  (this one)" } else { "" }
        );
    }
    Ok(())
}

async fn block(path: &Path, username: &str, on: bool) -> anyhow::Result<()> {
    let (_, client) = logged_in(path)?;
    let user = peer(&client, username).await?;
    if on {
        client.block(user).await?;
        println!("blocked {username}");
    } else {
        client.unblock(user).await?;
        println!("unblocked {username}");
    }
    Ok(())
}

async fn blocks(path: &Path, out: JsonFlag) -> anyhow::Result<()> {
    let (_, client) = logged_in(path)?;
    let list = client.blocks().await?;
    if out.json {
        println!("{}", serde_json::to_string(&list)?);
        return Ok(());
    }
    if list.blocks.is_empty() {
        println!("you block nobody");
    }
    for b in &list.blocks {
        println!("{:<20} since {}", b.username, local_time(b.blocked_at, true));
    }
    Ok(())
}

async fn passwd(path: &Path, from_stdin: bool) -> anyhow::Result<()> {
    let (credentials, client) = logged_in(path)?;
    let (current, new) = if from_stdin {
        let mut lines = std::io::stdin().lock().lines();
        let mut next = || -> anyhow::Result<String> {
            Ok(lines
                .next()
                .context("expected two lines on stdin: current, then new password")??)
        };
        (next()?, next()?)
    } else {
        let current = rpassword::prompt_password("Current password: ")
            .context("cannot read a password from the terminal; try --password-stdin")?;
        let new = rpassword::prompt_password("New password: ")?;
        if rpassword::prompt_password("New password again: ")? != new {
            bail!("the two new passwords differ; nothing changed");
        }
        (current, new)
    };
    client.change_password(&current, &new).await?;
    println!(
        "password changed for {}; your other devices are logged out",
        credentials.username
    );
    Ok(())
}

/// One message as a line: `[14:02] bob: text`, with ✓ (sent), ✓✓
/// (delivered) or ✓✓ read on your own, and "(edited)" on an edited one.
fn line(me: &Credentials, peer_name: &str, message: &MessageView, with_date: bool) -> String {
    use dyad_client::protocol::MessageStatus;
    let mine = message.sender_id == me.user_id;
    let who = if mine { "you" } else { peer_name };
    let ticks = match (mine, message.status) {
        (false, _) => "",
        (true, MessageStatus::Sent) => " ✓",
        (true, MessageStatus::Delivered) => " ✓✓",
        (true, MessageStatus::Read) => " ✓✓ read",
    };
    let text = if message.deleted {
        "(message deleted)".to_owned()
    } else if message.edited_at.is_some() {
        format!("{} (edited)", message.message)
    } else {
        message.message.clone()
    };
    format!("[{}] {who}: {text}{ticks}", local_time(message.timestamp, with_date))
}

/// `ms` since the epoch as local wall time.
fn local_time(ms: i64, with_date: bool) -> String {
    let format = if with_date { "%Y-%m-%d %H:%M" } else { "%H:%M:%S" };
    match jiff::Timestamp::from_millisecond(ms) {
        Ok(t) => t
            .to_zoned_datetime(jiff::tz::TimeZone::system())
            .strftime(format)
            .to_string(),
        Err(_) => ms.to_string(),
    }
}

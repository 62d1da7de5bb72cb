//! `dyad chat USERNAME`: each line typed is a message; the session behind it
//! reconnects by itself and resends what the server has not acknowledged, so
//! nothing typed is lost to a dropped link. End of input (Ctrl-D, or the end
//! of a pipe) waits for the last messages to be stored.
//!
//! At a terminal, keys are read one by one (the terminal's own line editing
//! is off while the chat runs), so the other side sees "typing…" as you
//! type; from a pipe, whole lines are read. What arrives is printed above
//! the line being typed. Messages shown are marked read.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::bail;
use dyad_client::protocol::events::{PresenceStatus, PresenceView};
use dyad_client::protocol::{MessageId, MessageStatus, MessageView, UserId};
use dyad_client::{ChatSession, Client, SessionEvent, SessionOptions};
use tokio::io::{AsyncBufReadExt, BufReader};

use super::{ChatArgs, Credentials, line, local_time};

/// How long "typing…" is not repeated.
const TYPING_QUIET: Duration = Duration::from_secs(4);
/// How often typing is sent while keys are pressed.
const TYPING_SEND_EVERY: Duration = Duration::from_secs(2);
/// What the line being typed starts with, at a terminal.
const PROMPT: &str = "> ";
/// How long end of input waits for the last acks.
const DRAIN: Duration = Duration::from_secs(15);

struct Chat {
    me: Credentials,
    peer: UserId,
    peer_name: String,
    /// Usernames of everyone who wrote, for messages from other chats.
    names: HashMap<UserId, String>,
    client: Client,
    /// Typed, not yet stored: client_msg_id -> text.
    unacked: HashMap<String, String>,
    /// Stored, not yet delivered: message_id -> text.
    undelivered: HashMap<MessageId, String>,
    /// Already on screen (the history shown first).
    shown: HashSet<MessageId>,
    presence: Option<PresenceStatus>,
    typing_shown: Option<Instant>,
    was_connected: bool,
    /// Who wrote each message shown (for edits and deletes).
    authors: HashMap<MessageId, UserId>,
    /// The other user's read mark, as last printed.
    peer_read: i64,
    /// At a terminal: the line being typed (`None` from a pipe).
    typed: Option<String>,
}

pub(super) async fn run(me: Credentials, client: Client, args: ChatArgs) -> anyhow::Result<()> {
    let peer = client.user_by_username(&args.username).await?;
    let status = client.status(peer.user_id).await?;
    println!(
        "chatting with {} ({}). Type a message and press Enter; Ctrl-D to leave.",
        peer.username,
        presence_text(&status)
    );
    let page = client
        .history(peer.user_id, &[("limit", args.history.clamp(1, 100).to_string())])
        .await?;
    let mut chat = Chat {
        me,
        peer: peer.user_id,
        peer_name: peer.username.clone(),
        names: HashMap::from([(peer.user_id, peer.username)]),
        client: client.clone(),
        unacked: HashMap::new(),
        undelivered: HashMap::new(),
        shown: HashSet::new(),
        presence: Some(status.status),
        typing_shown: None,
        was_connected: false,
        authors: HashMap::new(),
        peer_read: 0,
        typed: None,
    };
    for message in page.messages.iter().rev() {
        println!("{}", line(&chat.me, &chat.peer_name, message, true));
        chat.shown.insert(message.message_id);
        chat.authors.insert(message.message_id, message.sender_id);
    }

    let mut session = ChatSession::start(client, SessionOptions::default());
    session.watch(vec![chat.peer])?;
    // What is on screen is read.
    if let Some(newest) = page.messages.iter().find(|m| m.sender_id == chat.peer) {
        session.read(newest.message_id)?;
    }
    let mut input = Input::open()?;
    if input.keys() {
        chat.typed = Some(String::new());
        chat.redraw();
    }
    let mut last_typing: Option<Instant> = None;
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let deadline = drain_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            typed = input.next(), if drain_until.is_none() => match typed? {
                Typed::Line(text) if text.trim() == "/quit" => break,
                Typed::Line(text) if text.trim().is_empty() => {}
                Typed::Line(text) => {
                    let key = session.send(chat.peer, text.clone())?;
                    chat.unacked.insert(key, text);
                    last_typing = None;
                }
                Typed::Key(buffer) => {
                    chat.typed = Some(buffer);
                    chat.redraw();
                    if last_typing.is_none_or(|at| at.elapsed() > TYPING_SEND_EVERY) {
                        session.typing(chat.peer)?;
                        last_typing = Some(Instant::now());
                    }
                }
                Typed::End if chat.unacked.is_empty() => break,
                Typed::End => drain_until = Some(tokio::time::Instant::now() + DRAIN),
            },
            event = session.next() => {
                let Some(event) = event else { break };
                chat.show(event, &session).await?;
                if drain_until.is_some() && chat.unacked.is_empty() {
                    break;
                }
            }
            () = tokio::time::sleep_until(deadline), if drain_until.is_some() => {
                bail!("{} message(s) not stored: the server did not answer in {DRAIN:?}", chat.unacked.len())
            }
        }
    }
    Ok(())
}

impl Chat {
    /// Prints a line above the one being typed (at a terminal), or just prints it.
    fn say(&self, text: &str) {
        match &self.typed {
            Some(typed) => {
                print!("\r\x1b[2K{text}\r\n{PROMPT}{typed}");
                let _ = std::io::Write::flush(&mut std::io::stdout());
            }
            None => println!("{text}"),
        }
    }

    /// Draws the line being typed again.
    fn redraw(&self) {
        if let Some(typed) = &self.typed {
            print!("\r\x1b[2K{PROMPT}{typed}");
            let _ = std::io::Write::flush(&mut std::io::stdout());
        }
    }

    async fn show(&mut self, event: SessionEvent, session: &ChatSession) -> anyhow::Result<()> {
        match event {
            SessionEvent::Connected { .. } => {
                if self.was_connected {
                    self.say("* connected again");
                }
                self.was_connected = true;
            }
            SessionEvent::Read { reader_id, seq, .. } if reader_id == self.peer && seq > self.peer_read => {
                self.peer_read = seq;
                self.say(&format!("  ✓✓ read by {} (up to seq {seq})", self.peer_name));
            }
            SessionEvent::Edited {
                message_id, message, ..
            } => {
                let who = self.author_name(message_id);
                self.say(&format!("* {who} edited a message: {message}"));
            }
            SessionEvent::Deleted { message_id } => {
                let who = self.author_name(message_id);
                self.say(&format!("* {who} deleted a message"));
            }
            SessionEvent::Disconnected { reason } if reason == "unauthorized" => {
                bail!("the session has ended: log in again")
            }
            SessionEvent::Disconnected { reason } => self.say(&format!("* connection lost ({reason}); reconnecting…")),
            SessionEvent::Message(message) => {
                if message.sender_id == self.peer {
                    // Shown, so read.
                    session.read(message.message_id)?;
                }
                self.message(message).await;
            }
            SessionEvent::Sent {
                client_msg_id,
                message_id,
                seq,
                ..
            } => {
                if let Some(text) = self.unacked.remove(&client_msg_id) {
                    self.say(&format!("  ✓ sent (seq {seq})"));
                    self.undelivered.insert(message_id, text);
                }
            }
            SessionEvent::Delivered { message_id, .. } => {
                if let Some(text) = self.undelivered.remove(&message_id) {
                    self.say(&format!("  ✓✓ delivered: {}", preview(&text)));
                }
            }
            SessionEvent::Presence(presence)
                if presence.user_id == self.peer && self.presence != Some(presence.status) =>
            {
                self.presence = Some(presence.status);
                self.say(&format!("* {} is {}", self.peer_name, presence_text(&presence)));
            }
            SessionEvent::Typing { sender_id }
                if sender_id == self.peer && self.typing_shown.is_none_or(|at| at.elapsed() > TYPING_QUIET) =>
            {
                self.typing_shown = Some(Instant::now());
                self.say(&format!("* {} is typing…", self.peer_name));
            }
            SessionEvent::Refused(error) => {
                let text = error.client_msg_id.as_ref().and_then(|key| self.unacked.remove(key));
                match text {
                    Some(text) => self.say(&format!(
                        "! not sent ({}): {} — {}",
                        error.code,
                        error.message,
                        preview(&text)
                    )),
                    None => self.say(&format!("! {}: {}", error.code, error.message)),
                }
            }
            _ => {}
        }
        Ok(())
    }

    async fn message(&mut self, message: MessageView) {
        if !self.shown.insert(message.message_id) {
            return;
        }
        self.authors.insert(message.message_id, message.sender_id);
        let other = if message.sender_id == self.me.user_id {
            message.recipient_id
        } else {
            message.sender_id
        };
        if other == self.peer {
            self.typing_shown = None;
            self.say(&line(&self.me, &self.peer_name, &message, false));
            if message.sender_id == self.me.user_id && message.status == MessageStatus::Sent {
                // Sent from another device of ours: its ✓✓ comes here too.
                self.undelivered.insert(message.message_id, message.message);
            }
            return;
        }
        // Another conversation: say who, so it is not lost on screen.
        let name = self.name_of(other).await;
        self.say(&format!(
            "[{}] ({name}, another chat) {}",
            local_time(message.timestamp, false),
            message.message
        ));
    }

    /// Who wrote a message shown here, as the screen names them.
    fn author_name(&self, id: MessageId) -> String {
        match self.authors.get(&id) {
            Some(&author) if author == self.me.user_id => "you".into(),
            Some(author) => self.names.get(author).cloned().unwrap_or_else(|| author.to_string()),
            None => self.peer_name.clone(),
        }
    }

    async fn name_of(&mut self, user: UserId) -> String {
        if !self.names.contains_key(&user)
            && let Ok(list) = self.client.conversations().await
        {
            for c in list.conversations {
                self.names.insert(c.user_id, c.username);
            }
        }
        self.names.get(&user).cloned().unwrap_or_else(|| user.to_string())
    }
}

fn presence_text(presence: &PresenceView) -> String {
    match (presence.status, presence.last_seen) {
        (PresenceStatus::Online, _) => "online".into(),
        (PresenceStatus::Offline, Some(at)) => format!("offline, last seen {}", local_time(at, true)),
        (PresenceStatus::Offline, None) => "offline".into(),
    }
}

fn preview(text: &str) -> String {
    let mut chars = text.chars();
    let short: String = chars.by_ref().take(40).collect();
    if chars.next().is_some() {
        format!("{short}…")
    } else {
        short
    }
}

/// What was typed.
enum Typed {
    /// A whole line (Enter, or a line of a pipe).
    Line(String),
    /// At a terminal: a key changed the line being typed; here it is now.
    Key(String),
    /// End of input.
    End,
}

/// The chat's input: keys from a terminal (its own line editing off while
/// the chat runs, and back on when it ends), or lines from a pipe.
enum Input {
    Lines(tokio::io::Lines<BufReader<tokio::io::Stdin>>),
    Keys {
        keys: tokio::sync::mpsc::UnboundedReceiver<Option<u8>>,
        line: Vec<u8>,
        _restore: RawMode,
    },
}

impl Input {
    fn open() -> anyhow::Result<Input> {
        use std::io::IsTerminal;
        if !std::io::stdin().is_terminal() {
            return Ok(Input::Lines(BufReader::new(tokio::io::stdin()).lines()));
        }
        let restore = RawMode::enter()?;
        let (tx, keys) = tokio::sync::mpsc::unbounded_channel();
        // Reading the terminal blocks: a thread of its own does it.
        std::thread::Builder::new()
            .name("dyad-chat-keys".into())
            .spawn(move || {
                use std::io::Read;
                let mut stdin = std::io::stdin().lock();
                let mut byte = [0u8; 1];
                loop {
                    let key = match stdin.read(&mut byte) {
                        Ok(1) => Some(byte[0]),
                        _ => None,
                    };
                    if tx.send(key).is_err() || key.is_none() {
                        return;
                    }
                }
            })?;
        Ok(Input::Keys {
            keys,
            line: Vec::new(),
            _restore: restore,
        })
    }

    fn keys(&self) -> bool {
        matches!(self, Input::Keys { .. })
    }

    async fn next(&mut self) -> anyhow::Result<Typed> {
        match self {
            Input::Lines(lines) => Ok(lines.next_line().await?.map_or(Typed::End, Typed::Line)),
            Input::Keys { keys, line, .. } => loop {
                match keys.recv().await.flatten() {
                    // Ctrl-D on an empty line, Ctrl-C, or the terminal gone.
                    None | Some(3) => return Ok(Typed::End),
                    Some(4) if line.is_empty() => return Ok(Typed::End),
                    Some(b'\r' | b'\n') => {
                        let text = String::from_utf8_lossy(line).into_owned();
                        line.clear();
                        print!("\r\n");
                        return Ok(Typed::Line(text));
                    }
                    // Backspace: one character (UTF-8 continuation bytes too).
                    Some(0x7f | 0x08) => {
                        while let Some(b) = line.pop() {
                            if b & 0xc0 != 0x80 {
                                break;
                            }
                        }
                    }
                    Some(b) if b >= 0x20 || b == b'\t' => line.push(b),
                    Some(_) => continue,
                }
                // A character still missing its continuation bytes is not shown yet.
                if let Ok(text) = std::str::from_utf8(line) {
                    return Ok(Typed::Key(text.to_owned()));
                }
            },
        }
    }
}

/// The terminal with its line editing and echo off; dropping it restores it.
struct RawMode {
    saved: nix::sys::termios::Termios,
}

impl RawMode {
    fn enter() -> anyhow::Result<RawMode> {
        use nix::sys::termios::{LocalFlags, SetArg, tcgetattr, tcsetattr};
        let stdin = std::io::stdin();
        let saved = tcgetattr(&stdin)?;
        let mut raw = saved.clone();
        raw.local_flags
            .remove(LocalFlags::ICANON | LocalFlags::ECHO | LocalFlags::ISIG);
        tcsetattr(&stdin, SetArg::TCSANOW, &raw)?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
        println!();
    }
}

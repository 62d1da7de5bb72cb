//! `dyad chat USERNAME`: a line-mode chat. Each line typed is a message; the
//! session behind it reconnects by itself and resends what the server has
//! not acknowledged, so nothing typed is lost to a dropped link. End of input
//! (Ctrl-D, or the end of a pipe) waits for the last messages to be stored.

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
    };
    for message in page.messages.iter().rev() {
        println!("{}", line(&chat.me, &chat.peer_name, message, true));
        chat.shown.insert(message.message_id);
    }

    let mut session = ChatSession::start(client, SessionOptions::default());
    session.watch(vec![chat.peer])?;
    let mut input = BufReader::new(tokio::io::stdin()).lines();
    let mut drain_until: Option<tokio::time::Instant> = None;
    loop {
        let deadline = drain_until.unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
        tokio::select! {
            typed = input.next_line(), if drain_until.is_none() => match typed? {
                Some(text) if text.trim() == "/quit" => break,
                Some(text) if text.trim().is_empty() => {}
                Some(text) => {
                    let key = session.send(chat.peer, text.clone())?;
                    chat.unacked.insert(key, text);
                }
                None if chat.unacked.is_empty() => break,
                None => drain_until = Some(tokio::time::Instant::now() + DRAIN),
            },
            event = session.next() => {
                let Some(event) = event else { break };
                chat.show(event).await?;
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
    async fn show(&mut self, event: SessionEvent) -> anyhow::Result<()> {
        match event {
            SessionEvent::Connected { .. } => {
                if self.was_connected {
                    println!("* connected again");
                }
                self.was_connected = true;
            }
            SessionEvent::Disconnected { reason } if reason == "unauthorized" => {
                bail!("the session has ended: log in again")
            }
            SessionEvent::Disconnected { reason } => println!("* connection lost ({reason}); reconnecting…"),
            SessionEvent::Message(message) => self.message(message).await,
            SessionEvent::Sent {
                client_msg_id,
                message_id,
                seq,
                ..
            } => {
                if let Some(text) = self.unacked.remove(&client_msg_id) {
                    println!("  ✓ sent (seq {seq})");
                    self.undelivered.insert(message_id, text);
                }
            }
            SessionEvent::Delivered { message_id, .. } => {
                if let Some(text) = self.undelivered.remove(&message_id) {
                    println!("  ✓✓ delivered: {}", preview(&text));
                }
            }
            SessionEvent::Presence(presence)
                if presence.user_id == self.peer && self.presence != Some(presence.status) =>
            {
                self.presence = Some(presence.status);
                println!("* {} is {}", self.peer_name, presence_text(&presence));
            }
            SessionEvent::Typing { sender_id }
                if sender_id == self.peer && self.typing_shown.is_none_or(|at| at.elapsed() > TYPING_QUIET) =>
            {
                self.typing_shown = Some(Instant::now());
                println!("* {} is typing…", self.peer_name);
            }
            SessionEvent::Refused(error) => {
                let text = error.client_msg_id.as_ref().and_then(|key| self.unacked.remove(key));
                match text {
                    Some(text) => println!("! not sent ({}): {} — {}", error.code, error.message, preview(&text)),
                    None => println!("! {}: {}", error.code, error.message),
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
        let other = if message.sender_id == self.me.user_id {
            message.recipient_id
        } else {
            message.sender_id
        };
        if other == self.peer {
            self.typing_shown = None;
            println!("{}", line(&self.me, &self.peer_name, &message, false));
            if message.sender_id == self.me.user_id && message.status == MessageStatus::Sent {
                // Sent from another device of ours: its ✓✓ comes here too.
                self.undelivered.insert(message.message_id, message.message);
            }
            return;
        }
        // Another conversation: say who, so it is not lost on screen.
        let name = self.name_of(other).await;
        println!(
            "[{}] ({name}, another chat) {}",
            local_time(message.timestamp, false),
            message.message
        );
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

//! A chat session that survives the network: it reconnects with exponential
//! backoff and jitter, resends every unacknowledged message with its original
//! `client_msg_id` (so the server stores it once), drops duplicate
//! `message_id`s, acknowledges delivery if asked to, and hands everything else
//! (delivered ticks, presence, typing, errors) to its owner as events.

use std::collections::{HashSet, VecDeque};
use std::time::Duration;

use dyad_protocol::events::{ErrorEvent, PresenceView, SendMessage};
use dyad_protocol::{ClientEvent, ConnectionId, ErrorCode, MessageId, MessageView, ServerEvent, UserId};
use tokio::sync::mpsc;

use crate::{Client, ClientError, Connection};

/// How a [`ChatSession`] behaves.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Send `delivery_ack` for every new message as it arrives.
    pub auto_ack: bool,
    /// First reconnect delay.
    pub backoff_min: Duration,
    /// Longest reconnect delay.
    pub backoff_max: Duration,
    /// How many recent `message_id`s are remembered to drop duplicates.
    pub dedupe_window: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            auto_ack: true,
            backoff_min: Duration::from_millis(200),
            backoff_max: Duration::from_secs(30),
            dedupe_window: 10_000,
        }
    }
}

/// What a session reports.
#[derive(Debug, Clone, PartialEq)]
pub enum SessionEvent {
    /// A connection is up (first or after a reconnect); unacked messages
    /// have been resent on it.
    Connected {
        /// The new connection.
        connection_id: ConnectionId,
    },
    /// The connection went away; the session is reconnecting.
    Disconnected {
        /// Why.
        reason: String,
    },
    /// The replay of undelivered messages on this connection is over.
    PendingComplete {
        /// How many it held.
        count: u64,
    },
    /// A message, never the same `message_id` twice.
    Message(MessageView),
    /// A message this session sent is stored.
    Sent {
        /// The key the session gave it.
        client_msg_id: String,
        /// The server's id.
        message_id: MessageId,
        /// Its place in the conversation.
        seq: i64,
        /// Its storage time.
        timestamp: i64,
    },
    /// A recipient device has a message this user sent.
    Delivered {
        /// The message.
        message_id: MessageId,
        /// When.
        delivered_at: i64,
    },
    /// A watched user's presence.
    Presence(PresenceView),
    /// Someone is typing to this user.
    Typing {
        /// Who.
        sender_id: UserId,
    },
    /// Messages up to `seq` from `peer_id` to `reader_id` are read (by
    /// this user on some device, or by the other, who allows receipts).
    Read {
        /// Who read.
        reader_id: UserId,
        /// Whose messages.
        peer_id: UserId,
        /// The newest message read.
        message_id: MessageId,
        /// Its `seq`.
        seq: i64,
    },
    /// A message's text was replaced.
    Edited {
        /// The message.
        message_id: MessageId,
        /// The new text.
        message: String,
        /// When.
        edited_at: i64,
    },
    /// A message was deleted.
    Deleted {
        /// The message.
        message_id: MessageId,
    },
    /// The server refused something; a refused send is not retried.
    Refused(ErrorEvent),
}

enum Command {
    Send(SendMessage),
    Ack(Vec<MessageId>),
    Watch(Vec<UserId>),
    Typing(UserId),
    /// A `read_ack`, `edit_message` or `delete_message`: sent while
    /// connected, dropped while not.
    Other(ClientEvent),
}

/// A self-healing connection for one logged-in user.
pub struct ChatSession {
    commands: mpsc::UnboundedSender<Command>,
    events: mpsc::UnboundedReceiver<SessionEvent>,
    task: tokio::task::JoinHandle<()>,
}

impl ChatSession {
    /// Starts the session for a logged-in `client`.
    pub fn start(client: Client, options: SessionOptions) -> ChatSession {
        let (commands, command_rx) = mpsc::unbounded_channel();
        let (event_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(client, options, command_rx, event_tx));
        ChatSession { commands, events, task }
    }

    /// Queues a message; it is sent now or after the next reconnect, and
    /// resent until acknowledged. Returns its `client_msg_id`.
    pub fn send(&self, recipient_id: UserId, message: impl Into<String>) -> Result<String, ClientError> {
        let client_msg_id = new_client_msg_id()?;
        self.send_with_key(recipient_id, message, client_msg_id.clone())?;
        Ok(client_msg_id)
    }

    /// Like [`ChatSession::send`], with the caller's `client_msg_id` (so a
    /// retry from another process is still stored once).
    pub fn send_with_key(
        &self,
        recipient_id: UserId,
        message: impl Into<String>,
        client_msg_id: String,
    ) -> Result<(), ClientError> {
        let msg = SendMessage {
            recipient_id,
            message: message.into(),
            client_timestamp: None,
            client_msg_id: Some(client_msg_id),
        };
        self.command(Command::Send(msg))
    }

    /// Acknowledges delivery (when `auto_ack` is off).
    pub fn ack(&self, message_ids: Vec<MessageId>) -> Result<(), ClientError> {
        self.command(Command::Ack(message_ids))
    }

    /// Watches users' presence, now and after every reconnect.
    pub fn watch(&self, user_ids: Vec<UserId>) -> Result<(), ClientError> {
        self.command(Command::Watch(user_ids))
    }

    /// Tells `recipient_id` this user is typing (dropped while offline).
    pub fn typing(&self, recipient_id: UserId) -> Result<(), ClientError> {
        self.command(Command::Typing(recipient_id))
    }

    /// Marks everything up to this message read (dropped while offline).
    pub fn read(&self, message_id: MessageId) -> Result<(), ClientError> {
        self.command(Command::Other(ClientEvent::ReadAck { message_id }))
    }

    /// Replaces the text of a message this user sent (dropped while offline).
    pub fn edit(&self, message_id: MessageId, message: impl Into<String>) -> Result<(), ClientError> {
        self.command(Command::Other(ClientEvent::EditMessage {
            message_id,
            message: message.into(),
        }))
    }

    /// Deletes a message this user sent, for both (dropped while offline).
    pub fn delete(&self, message_id: MessageId) -> Result<(), ClientError> {
        self.command(Command::Other(ClientEvent::DeleteMessage { message_id }))
    }

    /// The next event; `None` once the session has stopped.
    pub async fn next(&mut self) -> Option<SessionEvent> {
        self.events.recv().await
    }

    fn command(&self, c: Command) -> Result<(), ClientError> {
        self.commands.send(c).map_err(|_| ClientError::Closed {
            code: 1000,
            reason: "session stopped".into(),
        })
    }
}

impl Drop for ChatSession {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A random UUID-shaped idempotency key.
fn new_client_msg_id() -> Result<String, ClientError> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| ClientError::Url(format!("random generator failed: {e}")))?;
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}

/// Remembers the last `cap` ids.
struct Seen {
    set: HashSet<MessageId>,
    order: VecDeque<MessageId>,
    cap: usize,
}

impl Seen {
    /// True the first time an id is seen.
    fn first_time(&mut self, id: MessageId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > self.cap
            && let Some(old) = self.order.pop_front()
        {
            self.set.remove(&old);
        }
        true
    }
}

async fn drive(
    client: Client,
    options: SessionOptions,
    mut commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<SessionEvent>,
) {
    let mut unacked: VecDeque<SendMessage> = VecDeque::new();
    let mut watching: Vec<UserId> = Vec::new();
    let mut seen = Seen {
        set: HashSet::new(),
        order: VecDeque::new(),
        cap: options.dedupe_window.max(1),
    };
    let mut delay = options.backoff_min;
    loop {
        let mut conn = match client.connect().await {
            Ok(conn) => conn,
            Err(e) => {
                // Commands keep queueing while offline.
                while let Ok(c) = commands.try_recv() {
                    offline(c, &mut unacked, &mut watching);
                }
                if matches!(
                    &e,
                    ClientError::Api {
                        code: ErrorCode::Unauthorized,
                        ..
                    }
                ) {
                    let _ = events.send(SessionEvent::Disconnected {
                        reason: "unauthorized".into(),
                    });
                    return;
                }
                tokio::time::sleep(jittered(delay)).await;
                delay = (delay * 2).min(options.backoff_max);
                continue;
            }
        };
        delay = options.backoff_min;
        let _ = events.send(SessionEvent::Connected {
            connection_id: conn.connection_id,
        });
        let reason = match online(
            &mut conn,
            &options,
            &mut commands,
            &events,
            &mut unacked,
            &mut watching,
            &mut seen,
        )
        .await
        {
            Ok(()) => return, // the owner dropped the session
            Err(e) => e.to_string(),
        };
        if events.send(SessionEvent::Disconnected { reason }).is_err() {
            return;
        }
        tokio::time::sleep(jittered(delay)).await;
    }
}

/// Full jitter: a random delay between half and all of `d`.
fn jittered(d: Duration) -> Duration {
    let mut b = [0u8; 2];
    let r = getrandom::fill(&mut b)
        .map(|()| u16::from_le_bytes(b))
        .unwrap_or(u16::MAX);
    d.mul_f64(0.5 + 0.5 * f64::from(r) / f64::from(u16::MAX))
}

fn offline(c: Command, unacked: &mut VecDeque<SendMessage>, watching: &mut Vec<UserId>) {
    match c {
        Command::Send(m) => unacked.push_back(m),
        Command::Watch(users) => watching.extend(users),
        // Acks are repeated by the replay of the next connection; typing is ephemeral.
        Command::Ack(_) | Command::Typing(_) | Command::Other(_) => {}
    }
}

async fn online(
    conn: &mut Connection,
    options: &SessionOptions,
    commands: &mut mpsc::UnboundedReceiver<Command>,
    events: &mpsc::UnboundedSender<SessionEvent>,
    unacked: &mut VecDeque<SendMessage>,
    watching: &mut Vec<UserId>,
    seen: &mut Seen,
) -> Result<(), ClientError> {
    // What was waiting goes out first, in the order it was written.
    for m in unacked.iter() {
        conn.send(&ClientEvent::SendMessage(m.clone())).await?;
    }
    if !watching.is_empty() {
        conn.send(&ClientEvent::SubscribePresence {
            user_ids: watching.clone(),
        })
        .await?;
    }
    // After a retriable refusal, everything unacked goes out again at this time
    // (resending is safe: the server answers a known key with the original).
    let mut resend_at: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            () = async { if let Some(at) = resend_at { tokio::time::sleep_until(at).await } }, if resend_at.is_some() => {
                resend_at = None;
                for m in unacked.iter() {
                    conn.send(&ClientEvent::SendMessage(m.clone())).await?;
                }
            }
            command = commands.recv() => {
                let Some(command) = command else { return Ok(()) };
                match command {
                    Command::Send(m) => {
                        conn.send(&ClientEvent::SendMessage(m.clone())).await?;
                        unacked.push_back(m);
                    }
                    Command::Ack(ids) => conn.delivery_ack(ids).await?,
                    Command::Watch(users) => {
                        conn.send(&ClientEvent::SubscribePresence { user_ids: users.clone() }).await?;
                        watching.extend(users);
                    }
                    Command::Typing(to) => conn.send(&ClientEvent::Typing { recipient_id: to }).await?,
                    Command::Other(event) => conn.send(&event).await?,
                }
            }
            event = conn.next_event() => {
                let out = match event? {
                    ServerEvent::ReceiveMessage(m) => {
                        if !seen.first_time(m.message_id) {
                            continue;
                        }
                        if options.auto_ack && m.sender_id != conn.user_id {
                            conn.delivery_ack(vec![m.message_id]).await?;
                        }
                        SessionEvent::Message(m)
                    }
                    ServerEvent::MessageAck { client_msg_id: Some(key), message_id, seq, timestamp, .. } => {
                        unacked.retain(|m| m.client_msg_id.as_deref() != Some(&key));
                        SessionEvent::Sent { client_msg_id: key, message_id, seq, timestamp }
                    }
                    ServerEvent::MessageAck { client_msg_id: None, .. } => continue,
                    ServerEvent::MessageDelivered { message_id, delivered_at, .. } => {
                        SessionEvent::Delivered { message_id, delivered_at }
                    }
                    ServerEvent::PendingComplete { count } => SessionEvent::PendingComplete { count },
                    ServerEvent::Presence(p) => SessionEvent::Presence(p),
                    ServerEvent::Typing { sender_id } => SessionEvent::Typing { sender_id },
                    ServerEvent::MessageRead { reader_id, peer_id, message_id, seq, .. } => {
                        SessionEvent::Read { reader_id, peer_id, message_id, seq }
                    }
                    ServerEvent::MessageEdited { message_id, message, edited_at, .. } => {
                        SessionEvent::Edited { message_id, message, edited_at }
                    }
                    ServerEvent::MessageDeleted { message_id, .. } => SessionEvent::Deleted { message_id },
                    ServerEvent::Error(e) => {
                        let retriable = matches!(e.code, ErrorCode::Unavailable | ErrorCode::RateLimited);
                        if let (Some(_), true) = (&e.client_msg_id, retriable) {
                            // Stays queued; resent after the server's wait.
                            let wait = Duration::from_millis(e.retry_after_ms.unwrap_or(1000));
                            let at = tokio::time::Instant::now() + wait;
                            resend_at = Some(resend_at.map_or(at, |r| r.max(at)));
                            continue;
                        }
                        if let Some(key) = &e.client_msg_id {
                            unacked.retain(|m| m.client_msg_id.as_ref() != Some(key));
                        }
                        SessionEvent::Refused(e)
                    }
                    ServerEvent::Connected { .. } | ServerEvent::Pong {} => continue,
                };
                if events.send(out).is_err() {
                    return Ok(());
                }
            }
        }
    }
}

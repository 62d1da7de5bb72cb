//! The records a store reads and writes.

use dyad_protocol::domain::{ClientMsgId, MessageBody};
use dyad_protocol::{MessageId, MessageStatus, MessageView, UserId};

/// An account as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserRecord {
    /// Its id.
    pub id: UserId,
    /// Folded username.
    pub username: String,
    /// PHC string of the argon2id hash.
    pub password_hash: String,
    /// ms since the epoch.
    pub created_at: i64,
    /// When the user was last seen, if ever.
    pub last_seen: Option<i64>,
    /// When the account was deleted ([`crate::MessageStore::delete_user`]):
    /// its name and password are then gone, and it cannot log in.
    pub deleted_at: Option<i64>,
    /// Its settings.
    pub settings: Settings,
}

pub use dyad_protocol::SessionId;
pub use dyad_protocol::rest::{BlockView, PresenceVisibility, Settings, SettingsPatch};

/// A live session, as its user sees it in their list of devices.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionInfo {
    /// Its id.
    pub id: SessionId,
    /// ms since the epoch.
    pub created_at: i64,
    /// When its token was last used (to the minute), or `created_at`.
    pub last_used_at: i64,
}

/// SHA-256 of a bearer token. Tokens are only ever stored hashed.
pub type TokenHash = [u8; 32];

/// A session to create.
#[derive(Debug, Clone)]
pub struct NewSession {
    /// Whose.
    pub user_id: UserId,
    /// Hash of the token.
    pub token_hash: TokenHash,
    /// ms since the epoch.
    pub created_at: i64,
    /// ms since the epoch.
    pub expires_at: i64,
}

/// A live session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionRecord {
    /// Its id.
    pub id: SessionId,
    /// Whose.
    pub user_id: UserId,
    /// ms since the epoch.
    pub expires_at: i64,
}

/// A message as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    /// Its id; ids grow in commit order.
    pub id: MessageId,
    /// Who wrote it.
    pub sender_id: UserId,
    /// Who it is for.
    pub recipient_id: UserId,
    /// The text.
    pub body: String,
    /// ms since the epoch, strictly increasing within a conversation.
    pub timestamp: i64,
    /// From 1, without gaps, within a conversation.
    pub seq: i64,
    /// When a recipient device first acknowledged it.
    pub delivered_at: Option<i64>,
}

impl StoredMessage {
    /// The wire view of this message.
    pub fn view(&self) -> MessageView {
        MessageView {
            message_id: self.id,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            message: self.body.clone(),
            timestamp: self.timestamp,
            seq: self.seq,
            status: if self.delivered_at.is_some() {
                MessageStatus::Delivered
            } else {
                MessageStatus::Sent
            },
        }
    }
}

/// A message to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMessage {
    /// Who wrote it.
    pub sender_id: UserId,
    /// Who it is for; must exist and differ from the sender.
    pub recipient_id: UserId,
    /// The text.
    pub body: MessageBody,
    /// The sender's idempotency key.
    pub client_msg_id: Option<ClientMsgId>,
}

/// One operation of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOp {
    /// Store a message (or find the one stored under the same idempotency key).
    Send(NewMessage),
    /// A recipient device acknowledged these messages.
    Deliver {
        /// The acknowledging user; messages not addressed to them are ignored.
        recipient_id: UserId,
        /// The acknowledged messages.
        message_ids: Vec<MessageId>,
    },
}

/// What happened to one [`WriteOp`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WriteOutcome {
    /// The message is stored: new, or found under its idempotency key.
    Stored {
        /// The message as stored (the original one for a duplicate).
        message: StoredMessage,
        /// Whether this was a retry of an already stored message.
        duplicate: bool,
    },
    /// The recipient does not exist; nothing was stored.
    UnknownRecipient,
    /// One of the two blocks the other; nothing was stored.
    Blocked,
    /// Messages that this operation turned from sent to delivered.
    Delivered(Vec<DeliveredMessage>),
}

/// Which page of a conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PageRequest {
    /// The newest `limit` messages older than `before` (exclusive), newest first.
    Before {
        /// `None`: no bound.
        before: Option<i64>,
        /// Page size.
        limit: usize,
    },
    /// The oldest `limit` messages newer than `after` (exclusive), oldest first.
    After {
        /// Lower bound.
        after: i64,
        /// Page size.
        limit: usize,
    },
}

/// A page of history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    /// In the order the request asked for.
    pub messages: Vec<StoredMessage>,
    /// Whether more lie beyond.
    pub has_more: bool,
}

/// One entry of a user's conversation list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConversationSummary {
    /// The other participant.
    pub peer_id: UserId,
    /// Their username; `deleted account` (not a valid name) once their
    /// account is deleted.
    pub peer_username: String,
    /// The newest message.
    pub last_message: StoredMessage,
}

/// One account to provision, with the session to open for it.
#[derive(Debug, Clone)]
pub struct ProvisionedAccount {
    /// Folded username.
    pub username: String,
    /// PHC string of the password hash (may be shared by all provisioned accounts).
    pub password_hash: String,
    /// Hash of the session token.
    pub token_hash: TokenHash,
    /// ms since the epoch.
    pub created_at: i64,
    /// ms since the epoch.
    pub expires_at: i64,
}

/// A message that a delivery ack just turned from sent to delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveredMessage {
    /// The message.
    pub id: MessageId,
    /// Who sent it (to be told).
    pub sender_id: UserId,
    /// Who acknowledged it.
    pub recipient_id: UserId,
    /// Its `seq` in the conversation.
    pub seq: i64,
    /// When.
    pub delivered_at: i64,
}

/// The hash of an idempotency key that the drivers' indexes hold: FNV-1a,
/// 64 bits, looked up and then compared in full. Stable by definition (unlike
/// std's hasher), since it is stored.
pub fn client_key(client_msg_id: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in client_msg_id.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_keys_are_fnv1a_and_never_change() {
        // Stored in databases: these values must hold forever.
        assert_eq!(client_key(""), 0xcbf2_9ce4_8422_2325_u64 as i64);
        assert_eq!(client_key("a"), 0xaf63_dc4c_8601_ec8c_u64 as i64);
        assert_ne!(client_key("k1"), client_key("k2"));
    }
}

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
    /// When its text was last replaced.
    pub edited_at: Option<i64>,
    /// When it was deleted; its `body` is then empty.
    pub deleted_at: Option<i64>,
    /// Whether its recipient has read it and both users allow read
    /// receipts (known where a read says so: history and search).
    pub read: bool,
}

impl StoredMessage {
    /// A message just stored: not delivered, edited or deleted.
    pub fn new(id: MessageId, sender_id: UserId, recipient_id: UserId, body: String, timestamp: i64, seq: i64) -> Self {
        StoredMessage {
            id,
            sender_id,
            recipient_id,
            body,
            timestamp,
            seq,
            delivered_at: None,
            edited_at: None,
            deleted_at: None,
            read: false,
        }
    }

    /// The wire view of this message.
    pub fn view(&self) -> MessageView {
        MessageView {
            message_id: self.id,
            sender_id: self.sender_id,
            recipient_id: self.recipient_id,
            message: if self.deleted_at.is_some() {
                String::new()
            } else {
                self.body.clone()
            },
            timestamp: self.timestamp,
            seq: self.seq,
            status: if self.read {
                MessageStatus::Read
            } else if self.delivered_at.is_some() {
                MessageStatus::Delivered
            } else {
                MessageStatus::Sent
            },
            edited_at: self.edited_at,
            deleted: self.deleted_at.is_some(),
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
    /// `reader` has read this message and everything before it in its
    /// conversation: their read mark moves up to its `seq` (never down),
    /// and the messages it covers that were still undelivered are
    /// delivered.
    Read {
        /// Who read it: one of the message's two users.
        reader: UserId,
        /// The newest message read.
        message_id: MessageId,
    },
    /// Replace the text of a message: only its sender, only while it is
    /// not deleted, only within `window` ms of its timestamp, and not while
    /// either user blocks the other.
    Edit {
        /// Who asks.
        editor: UserId,
        /// Which message.
        message_id: MessageId,
        /// The new text.
        body: MessageBody,
        /// How long after sending a message may be edited, in ms.
        window: i64,
    },
    /// Delete a message for both users, erasing its text: only its sender.
    Delete {
        /// Who asks.
        deleter: UserId,
        /// Which message.
        message_id: MessageId,
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
    /// A read mark moved up.
    Read(ReadMark),
    /// A read at or below the reader's mark: nothing changed.
    Unchanged,
    /// The message as it is after an edit or a delete.
    Changed(StoredMessage),
    /// No message the caller can see has that id (or it is deleted, for an
    /// edit).
    NotFound,
    /// Someone else's message.
    Forbidden,
    /// Too old to edit.
    EditWindowPassed,
}

/// A read mark that moved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadMark {
    /// Who read.
    pub reader: UserId,
    /// The other user of the conversation.
    pub peer: UserId,
    /// The message acknowledged.
    pub message_id: MessageId,
    /// The new mark: that message's `seq`.
    pub seq: i64,
    /// That message's timestamp.
    pub ts: i64,
    /// When.
    pub read_at: i64,
    /// Whether both users allow read receipts (so the peer is told).
    pub receipts: bool,
    /// Messages the read turned from sent to delivered.
    pub delivered: Vec<DeliveredMessage>,
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
    /// The first `limit` messages edited or deleted after `since`
    /// (exclusive), in the order they changed.
    ChangedSince {
        /// Lower bound on the time of change.
        since: i64,
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
    /// Messages from the peer above the user's read mark.
    pub unread_count: i64,
    /// The user's read mark (0: nothing read).
    pub last_read_seq: i64,
    /// The peer's read mark, or 0 unless both allow read receipts.
    pub peer_last_read_seq: i64,
}

/// Where a conversation's read marks stand, for its history.
pub(crate) struct Standing {
    /// The conversation's row.
    pub(crate) id: i64,
    /// Its lower user's row.
    pub(crate) lo: i64,
    /// The lower user's read mark.
    pub(crate) lo_read_seq: i64,
    /// The higher user's read mark.
    pub(crate) hi_read_seq: i64,
    /// Both users allow read receipts.
    pub(crate) receipts: bool,
}

impl Standing {
    /// Whether `m`'s recipient has read it, as both users may see.
    pub(crate) fn read(&self, m: &StoredMessage, ids: crate::ids::IdCipher) -> bool {
        let mark = if ids.user_row(m.recipient_id) == self.lo {
            self.lo_read_seq
        } else {
            self.hi_read_seq
        };
        self.receipts && m.seq <= mark
    }
}

/// A message as one of its two users may see it, for a read, an edit or a
/// delete; each driver reads one.
pub(crate) struct Seen {
    /// Its row.
    pub(crate) row: i64,
    /// Its conversation's row.
    pub(crate) conversation: i64,
    /// Its sender's row.
    pub(crate) sender: i64,
    /// Its recipient's row.
    pub(crate) recipient: i64,
    /// Its place.
    pub(crate) seq: i64,
    /// Its time.
    pub(crate) ts: i64,
    /// Whether it is deleted.
    pub(crate) deleted: bool,
}

impl Seen {
    /// Why user `row` may not edit (with the edit `window` and the
    /// conversation's block) or delete (`window` `None`) the message at
    /// `now`, if they may not.
    pub(crate) fn refusal(&self, row: i64, now: i64, edit: Option<(i64, bool)>) -> Option<WriteOutcome> {
        if self.deleted {
            Some(WriteOutcome::NotFound)
        } else if self.sender != row {
            Some(WriteOutcome::Forbidden)
        } else if edit.is_some_and(|(window, _)| now.saturating_sub(self.ts) >= window) {
            Some(WriteOutcome::EditWindowPassed)
        } else if edit.is_some_and(|(_, blocked)| blocked) {
            Some(WriteOutcome::Blocked)
        } else {
            None
        }
    }

    /// The other user of the message, from user `row`'s side.
    pub(crate) fn other_than(&self, row: i64) -> i64 {
        if self.sender == row {
            self.recipient
        } else {
            self.sender
        }
    }
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

//! WebSocket events. Every frame is a text frame holding one JSON object
//! `{"event": NAME, "data": {…}}`.

use serde::{Deserialize, Serialize};

use crate::{ConnectionId, ErrorCode, MessageId, UserId};

/// Whether a recipient device has acknowledged a message yet.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageStatus {
    /// Stored, not yet acknowledged by any recipient device.
    Sent,
    /// A recipient device sent `delivery_ack` for it.
    Delivered,
    /// The recipient has read it (`read_ack`), and both users allow read
    /// receipts.
    Read,
}

/// A stored message as clients see it, in `receive_message` and in history.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageView {
    /// Server-chosen id.
    pub message_id: MessageId,
    /// Who wrote it.
    pub sender_id: UserId,
    /// Who it is for.
    pub recipient_id: UserId,
    /// The text.
    pub message: String,
    /// Server time of storage, ms since the epoch; strictly increasing with `seq`.
    pub timestamp: i64,
    /// Position in the conversation, from 1, without gaps.
    pub seq: i64,
    /// `sent`, `delivered` or `read`.
    pub status: MessageStatus,
    /// When its text was last replaced; `null` if never.
    #[serde(default)]
    pub edited_at: Option<i64>,
    /// Deleted for both users: `message` is `""`, and the text is erased.
    #[serde(default)]
    pub deleted: bool,
}

/// Events the server sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ServerEvent {
    /// First frame after the upgrade.
    Connected {
        /// The authenticated user.
        user_id: UserId,
        /// This connection.
        connection_id: ConnectionId,
        /// How often the server pings.
        heartbeat_interval_ms: u64,
        /// The server's clock, ms since the epoch.
        server_time: i64,
    },
    /// The message is durably stored.
    MessageAck {
        /// Echo of the client's id, if it gave one.
        client_msg_id: Option<String>,
        /// Server id of the stored message.
        message_id: MessageId,
        /// Who it is for.
        recipient_id: UserId,
        /// Storage time.
        timestamp: i64,
        /// Position in the conversation.
        seq: i64,
        /// Always `sent` (the ack says it is stored).
        status: MessageStatus,
    },
    /// A message for this user, or a carbon of one this user sent elsewhere.
    ReceiveMessage(MessageView),
    /// A recipient device acknowledged a message this user sent.
    MessageDelivered {
        /// The message.
        message_id: MessageId,
        /// Its recipient.
        recipient_id: UserId,
        /// When the first recipient device acknowledged it.
        delivered_at: i64,
    },
    /// The replay of undelivered messages that opens a connection is over.
    PendingComplete {
        /// How many were replayed.
        count: u64,
    },
    /// A subscribed user's presence.
    Presence(PresenceView),
    /// The other user is typing.
    Typing {
        /// Who is typing.
        sender_id: UserId,
    },
    /// Messages up to `seq` from `peer_id` to `reader_id` are read.
    MessageRead {
        /// Who read them.
        reader_id: UserId,
        /// Who sent them.
        peer_id: UserId,
        /// The message the reader acknowledged.
        message_id: MessageId,
        /// Its `seq`: the reader's new read mark.
        seq: i64,
        /// When.
        read_at: i64,
    },
    /// A message's text was replaced.
    MessageEdited {
        /// The message.
        message_id: MessageId,
        /// Who wrote it (and edited it).
        sender_id: UserId,
        /// Who it is for.
        recipient_id: UserId,
        /// Its place in the conversation.
        seq: i64,
        /// The new text.
        message: String,
        /// When.
        edited_at: i64,
    },
    /// A message was deleted for both users.
    MessageDeleted {
        /// The message.
        message_id: MessageId,
        /// Who wrote it (and deleted it).
        sender_id: UserId,
        /// Who it was for.
        recipient_id: UserId,
        /// Its place in the conversation (kept).
        seq: i64,
        /// When.
        deleted_at: i64,
    },
    /// Answer to `ping`.
    Pong {},
    /// A refused frame.
    Error(ErrorEvent),
}

/// Whether a user is connected.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    /// At least one connection open, or within the grace period after the last.
    Online,
    /// No connection for longer than the grace period.
    Offline,
}

/// A user's presence, as in `presence` events and the status call.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PresenceView {
    /// Whose.
    pub user_id: UserId,
    /// `online` or `offline`.
    pub status: PresenceStatus,
    /// When the last connection closed; `null` while online or if never seen.
    pub last_seen: Option<i64>,
}

/// The `data` of an `error` event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorEvent {
    /// Machine-readable code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
    /// The refused frame's `client_msg_id`, whenever it carried one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    /// With `rate_limited`: when a retry will be accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The message a refused `read_ack`, `edit_message` or `delete_message`
    /// was about.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message_id: Option<MessageId>,
}

/// `send_message` data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendMessage {
    /// Who it is for.
    pub recipient_id: UserId,
    /// The text.
    pub message: String,
    /// The client's clock; informational only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_timestamp: Option<i64>,
    /// Makes retries idempotent; unique per sender (a UUID, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
}

/// Events a client sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", content = "data", rename_all = "snake_case")]
pub enum ClientEvent {
    /// Send a text message.
    SendMessage(SendMessage),
    /// This device has received these messages.
    DeliveryAck {
        /// The received messages.
        message_ids: Vec<MessageId>,
    },
    /// Current status now, changes from now on.
    SubscribePresence {
        /// Whose.
        user_ids: Vec<UserId>,
    },
    /// Stop presence updates for these users.
    UnsubscribePresence {
        /// Whose.
        user_ids: Vec<UserId>,
    },
    /// Tell the other user this one is typing.
    Typing {
        /// To whom.
        recipient_id: UserId,
    },
    /// Application-level liveness check.
    Ping {},
    /// This user has read this message and everything before it.
    ReadAck {
        /// The newest message read.
        message_id: MessageId,
    },
    /// Replace a message's text.
    EditMessage {
        /// Which.
        message_id: MessageId,
        /// The new text.
        message: String,
    },
    /// Delete a message for both users.
    DeleteMessage {
        /// Which.
        message_id: MessageId,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_events_carry_an_empty_data_object() {
        let pong = serde_json::to_string(&ServerEvent::Pong {}).unwrap_or_default();
        assert_eq!(pong, r#"{"event":"pong","data":{}}"#);
        let ping = serde_json::to_string(&ClientEvent::Ping {}).unwrap_or_default();
        assert_eq!(ping, r#"{"event":"ping","data":{}}"#);
    }

    #[test]
    fn message_ack_has_the_contract_field_names() {
        let ack = ServerEvent::MessageAck {
            client_msg_id: Some("k1".into()),
            message_id: MessageId(9),
            recipient_id: UserId(2),
            timestamp: 1000,
            seq: 1,
            status: MessageStatus::Sent,
        };
        let v: serde_json::Value = serde_json::to_value(&ack).unwrap_or_default();
        assert_eq!(v["event"], "message_ack");
        assert_eq!(v["data"]["message_id"], "m9");
        assert_eq!(v["data"]["recipient_id"], "u2");
        assert_eq!(v["data"]["status"], "sent");
        assert_eq!(v["data"]["client_msg_id"], "k1");
    }
}

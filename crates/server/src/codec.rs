//! Server frames out: each event serialized once, to be shared by every
//! connection that gets it. (Client frames are decoded by
//! [`dyad_protocol::ClientEvent::decode`].)

use axum::extract::ws::{Message, Utf8Bytes};
use dyad_protocol::events::ErrorEvent;
use dyad_protocol::{ErrorCode, MessageId, ServerEvent};

/// One encoded server event. Cloning shares its bytes, so one encoding
/// serves every connection that gets it; only the socket writer turns it
/// into a WebSocket message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frame(Utf8Bytes);

impl Frame {
    /// Its text.
    pub fn as_str(&self) -> &str {
        self.0.as_str()
    }

    /// The WebSocket message that carries it.
    pub fn into_message(self) -> Message {
        Message::Text(self.0)
    }
}

impl From<String> for Frame {
    fn from(text: String) -> Self {
        Frame(Utf8Bytes::from(text))
    }
}

impl From<&str> for Frame {
    fn from(text: &str) -> Self {
        Frame(Utf8Bytes::from(text))
    }
}

/// Serializes an event once, to be shared by every connection that gets it.
pub fn encode(event: &ServerEvent) -> Frame {
    match serde_json::to_string(event) {
        Ok(s) => Frame::from(s),
        // Unreachable for these types; a visible frame beats a silent gap.
        Err(e) => Frame::from(format!(
            r#"{{"event":"error","data":{{"code":"internal","message":"{e}"}}}}"#
        )),
    }
}

/// An `error` event frame.
pub fn error_frame(code: ErrorCode, message: &str, client_msg_id: Option<String>) -> Frame {
    encode(&ServerEvent::Error(ErrorEvent {
        code,
        message: message.to_owned(),
        client_msg_id,
        retry_after_ms: None,
        message_id: None,
    }))
}

/// An `error` event frame about a message (a refused read, edit or delete).
pub fn message_error_frame(code: ErrorCode, message: &str, message_id: MessageId) -> Frame {
    encode(&ServerEvent::Error(ErrorEvent {
        code,
        message: message.to_owned(),
        client_msg_id: None,
        retry_after_ms: None,
        message_id: Some(message_id),
    }))
}

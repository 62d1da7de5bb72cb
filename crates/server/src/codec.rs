//! Server frames out: each event serialized once, to be shared by every
//! connection that gets it. (Client frames are decoded by
//! [`dyad_protocol::ClientEvent::decode`].)

use axum::extract::ws::Utf8Bytes;
use dyad_protocol::events::ErrorEvent;
use dyad_protocol::{ErrorCode, ServerEvent};

/// Serializes an event once, to be shared by every connection that gets it.
pub fn encode(event: &ServerEvent) -> Utf8Bytes {
    match serde_json::to_string(event) {
        Ok(s) => Utf8Bytes::from(s),
        // Unreachable for these types; a visible frame beats a silent gap.
        Err(e) => Utf8Bytes::from(format!(
            r#"{{"event":"error","data":{{"code":"internal","message":"{e}"}}}}"#
        )),
    }
}

/// An `error` event frame.
pub fn error_frame(code: ErrorCode, message: &str, client_msg_id: Option<String>) -> Utf8Bytes {
    encode(&ServerEvent::Error(ErrorEvent {
        code,
        message: message.to_owned(),
        client_msg_id,
        retry_after_ms: None,
    }))
}

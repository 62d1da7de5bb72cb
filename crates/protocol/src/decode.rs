//! Client frames in: one text frame to one [`ClientEvent`], or the `error`
//! it earns.
//!
//! Decoding is two-step so that every refusal gets the right code: the
//! envelope first (`invalid_json` if the text is not JSON, `invalid_payload`
//! if it is JSON but not `{"event", "data"}`), then `data` for the named
//! event (`unknown_event` for a name that is not one, `invalid_payload` for
//! data that does not fit). `data` stays raw until the event is known. A
//! refused `send_message` keeps its `client_msg_id`, so that the client can
//! tell which send failed.

use std::fmt;

use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

use crate::{ClientEvent, ErrorCode, MessageId, UserId};

/// Why a frame was refused: what its `error` event says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrameError {
    /// The error code.
    pub code: ErrorCode,
    /// Human text.
    pub message: String,
    /// The refused send's key, when it had one.
    pub client_msg_id: Option<String>,
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl std::error::Error for FrameError {}

/// A client frame with its `data` not yet decoded.
#[derive(Deserialize)]
struct Envelope<'a> {
    event: &'a str,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct MessageIds {
    message_ids: Vec<MessageId>,
}

#[derive(Deserialize)]
struct UserIds {
    user_ids: Vec<UserId>,
}

#[derive(Deserialize)]
struct Recipient {
    recipient_id: UserId,
}

#[derive(Deserialize)]
struct AboutMessage {
    message_id: MessageId,
}

#[derive(Deserialize)]
struct Edit {
    message_id: MessageId,
    message: String,
}

/// Just the key of a `send_message` whose data did not decode.
#[derive(Deserialize)]
struct JustTheKey {
    client_msg_id: Option<String>,
}

/// The longest part of an unknown event name that an error repeats.
const NAME_IN_ERROR: usize = 64;

impl ClientEvent {
    /// Decodes one text frame.
    pub fn decode(text: &str) -> Result<ClientEvent, FrameError> {
        let envelope: Envelope<'_> = serde_json::from_str(text).map_err(|e| {
            if serde_json::from_str::<IgnoredAny>(text).is_err() {
                refused(ErrorCode::InvalidJson, format!("not JSON: {e}"))
            } else {
                refused(
                    ErrorCode::InvalidPayload,
                    r#"a frame is an object {"event": NAME, "data": {...}}"#.into(),
                )
            }
        })?;
        let data = envelope.data.map_or("{}", RawValue::get);
        let event = envelope.event;
        match event {
            "send_message" => serde_json::from_str(data).map(ClientEvent::SendMessage).map_err(|e| {
                let key = serde_json::from_str::<JustTheKey>(data)
                    .ok()
                    .and_then(|k| k.client_msg_id);
                FrameError {
                    client_msg_id: key,
                    ..refused(ErrorCode::InvalidPayload, format!("send_message: {e}"))
                }
            }),
            "delivery_ack" => fields(event, data).map(|d: MessageIds| ClientEvent::DeliveryAck {
                message_ids: d.message_ids,
            }),
            "subscribe_presence" => {
                fields(event, data).map(|d: UserIds| ClientEvent::SubscribePresence { user_ids: d.user_ids })
            }
            "unsubscribe_presence" => {
                fields(event, data).map(|d: UserIds| ClientEvent::UnsubscribePresence { user_ids: d.user_ids })
            }
            "typing" => fields(event, data).map(|d: Recipient| ClientEvent::Typing {
                recipient_id: d.recipient_id,
            }),
            "ping" => fields(event, data).map(|_: IgnoredAny| ClientEvent::Ping {}),
            "read_ack" => fields(event, data).map(|d: AboutMessage| ClientEvent::ReadAck {
                message_id: d.message_id,
            }),
            "edit_message" => fields(event, data).map(|d: Edit| ClientEvent::EditMessage {
                message_id: d.message_id,
                message: d.message,
            }),
            "delete_message" => fields(event, data).map(|d: AboutMessage| ClientEvent::DeleteMessage {
                message_id: d.message_id,
            }),
            other => {
                let name: String = other.chars().take(NAME_IN_ERROR).collect();
                Err(refused(ErrorCode::UnknownEvent, format!("unknown event {name:?}")))
            }
        }
    }
}

fn refused(code: ErrorCode, message: String) -> FrameError {
    FrameError {
        code,
        message,
        client_msg_id: None,
    }
}

/// `data` decoded for `event`, or `invalid_payload`.
fn fields<T: DeserializeOwned>(event: &str, data: &str) -> Result<T, FrameError> {
    serde_json::from_str(data).map_err(|e| refused(ErrorCode::InvalidPayload, format!("{event}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::SendMessage;

    fn code(text: &str) -> ErrorCode {
        match ClientEvent::decode(text) {
            Err(e) => e.code,
            Ok(event) => panic!("{text} decoded to {event:?}"),
        }
    }

    #[test]
    fn every_event_decodes_from_what_it_encodes_to() {
        let events = [
            ClientEvent::SendMessage(SendMessage {
                recipient_id: UserId(7),
                message: "hi".into(),
                client_timestamp: Some(5),
                client_msg_id: Some("k".into()),
            }),
            ClientEvent::DeliveryAck {
                message_ids: vec![MessageId(1), MessageId(2)],
            },
            ClientEvent::SubscribePresence {
                user_ids: vec![UserId(3)],
            },
            ClientEvent::UnsubscribePresence { user_ids: vec![] },
            ClientEvent::Typing {
                recipient_id: UserId(4),
            },
            ClientEvent::Ping {},
            ClientEvent::ReadAck {
                message_id: MessageId(5),
            },
            ClientEvent::EditMessage {
                message_id: MessageId(6),
                message: "fixed".into(),
            },
            ClientEvent::DeleteMessage {
                message_id: MessageId(7),
            },
        ];
        for event in events {
            let text = serde_json::to_string(&event).unwrap_or_default();
            assert_eq!(ClientEvent::decode(&text), Ok(event), "{text}");
        }
    }

    #[test]
    fn data_may_be_left_out_where_nothing_is_required() {
        assert_eq!(ClientEvent::decode(r#"{"event":"ping"}"#), Ok(ClientEvent::Ping {}));
        assert_eq!(code(r#"{"event":"typing"}"#), ErrorCode::InvalidPayload);
    }

    #[test]
    fn each_refusal_has_its_code() {
        assert_eq!(code("{not json"), ErrorCode::InvalidJson);
        assert_eq!(code("[1,2]"), ErrorCode::InvalidPayload);
        assert_eq!(code(r#"{"data":{}}"#), ErrorCode::InvalidPayload);
        assert_eq!(code(r#"{"event":"fly","data":{}}"#), ErrorCode::UnknownEvent);
        assert_eq!(
            code(r#"{"event":"delivery_ack","data":{"message_ids":"m1"}}"#),
            ErrorCode::InvalidPayload
        );
        assert_eq!(
            code(r#"{"event":"typing","data":{"recipient_id":"x"}}"#),
            ErrorCode::InvalidPayload
        );
    }

    #[test]
    fn a_refused_send_keeps_its_key_and_a_long_name_is_cut() {
        let e = ClientEvent::decode(r#"{"event":"send_message","data":{"message":"hi","client_msg_id":"k9"}}"#)
            .err()
            .unwrap_or_else(|| panic!("a send without recipient decoded"));
        assert_eq!(
            (e.code, e.client_msg_id.as_deref()),
            (ErrorCode::InvalidPayload, Some("k9"))
        );
        let name = "x".repeat(1000);
        let e = ClientEvent::decode(&format!(r#"{{"event":"{name}"}}"#))
            .err()
            .unwrap_or_else(|| panic!("an unknown event decoded"));
        assert!(e.message.len() < 100, "{}", e.message);
    }
}

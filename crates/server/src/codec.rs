//! The frame codec: client frames in, server frames out.
//!
//! Decoding is two-step so that every refusal gets the right code: the
//! envelope first (`invalid_json` if the text is not JSON, `invalid_payload`
//! if it is JSON but not `{"event", "data"}`), then `data` for the named
//! event (`invalid_payload`). `data` stays raw until the event is known.

use axum::extract::ws::Utf8Bytes;
use dyad_protocol::{ErrorCode, ServerEvent};
use serde::Deserialize;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde_json::value::RawValue;

/// A client frame with its `data` not yet decoded.
#[derive(Debug, Deserialize)]
pub struct Envelope<'a> {
    /// The event name.
    pub event: &'a str,
    /// The raw `data` object, if any.
    #[serde(borrow, default)]
    pub data: Option<&'a RawValue>,
}

/// Decodes the envelope of a text frame.
pub fn decode_envelope(text: &str) -> Result<Envelope<'_>, (ErrorCode, String)> {
    match serde_json::from_str(text) {
        Ok(envelope) => Ok(envelope),
        Err(e) if serde_json::from_str::<IgnoredAny>(text).is_err() => {
            Err((ErrorCode::InvalidJson, format!("not JSON: {e}")))
        }
        Err(_) => Err((
            ErrorCode::InvalidPayload,
            r#"a frame is an object {"event": NAME, "data": {...}}"#.into(),
        )),
    }
}

/// Decodes `data` as `T`; a missing `data` reads as `{}`.
pub fn decode_data<T: DeserializeOwned>(data: Option<&RawValue>) -> Result<T, serde_json::Error> {
    serde_json::from_str(data.map_or("{}", RawValue::get))
}

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_sort_bad_frames_into_their_codes() {
        assert!(matches!(decode_envelope("{nope"), Err((ErrorCode::InvalidJson, _))));
        assert!(matches!(decode_envelope("[1]"), Err((ErrorCode::InvalidPayload, _))));
        assert!(matches!(
            decode_envelope(r#"{"data":{}}"#),
            Err((ErrorCode::InvalidPayload, _))
        ));
        let ok = decode_envelope(r#"{"event":"ping"}"#).map(|e| (e.event, e.data.is_none()));
        assert_eq!(ok.ok(), Some(("ping", true)));
    }
}

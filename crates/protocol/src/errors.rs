//! The error codes a client can see, in REST bodies and in `error` events.

use serde::{Deserialize, Serialize};

/// Every error code on the wire. The `snake_case` name is the wire form.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    // REST
    /// The username is not 3–32 characters of `a-z 0-9 _ . -`.
    InvalidUsername,
    /// The password is not 8–128 characters.
    InvalidPassword,
    /// Another account has that username.
    UsernameTaken,
    /// Wrong username or password.
    InvalidCredentials,
    /// Too many failed logins for this username from this address; wait and retry.
    TooManyAttempts,
    /// Too many requests of this kind from this address; wait and retry.
    TooManyRequests,
    /// Too many open connections (from this address, or of this user).
    TooManyConnections,
    /// Registration is closed on this server; an operator adds accounts.
    RegistrationClosed,
    /// Not allowed: a WebSocket from a foreign origin, or an edit or delete
    /// of someone else's message.
    Forbidden,
    /// Missing, unknown, expired or revoked token.
    Unauthorized,
    /// No such user.
    UserNotFound,
    /// A query parameter is missing its form or range.
    InvalidParameter,
    /// The request body is not the JSON this call takes.
    InvalidBody,
    /// No such route, session, or message the caller can see.
    NotFound,
    /// Something failed inside the server.
    Internal,
    // WebSocket
    /// The frame is not a JSON object, or not text.
    InvalidJson,
    /// The `event` name is not one the server knows.
    UnknownEvent,
    /// Missing or mistyped fields in `data`.
    InvalidPayload,
    /// The recipient does not exist (or is the sender).
    UnknownRecipient,
    /// The message has no visible characters.
    EmptyMessage,
    /// The message has more characters than the server allows.
    MessageTooLong,
    /// The frame has more bytes than the server allows.
    FrameTooLarge,
    /// Flood control: wait `retry_after_ms` and retry.
    RateLimited,
    /// Storage is down: nothing was stored; retry later.
    Unavailable,
    /// One of the two users blocks the other: nothing was stored.
    Blocked,
    /// The edit window of the message has passed.
    EditWindowPassed,
}

impl ErrorCode {
    /// The wire name, e.g. `"rate_limited"`.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidUsername => "invalid_username",
            ErrorCode::InvalidPassword => "invalid_password",
            ErrorCode::UsernameTaken => "username_taken",
            ErrorCode::InvalidCredentials => "invalid_credentials",
            ErrorCode::TooManyAttempts => "too_many_attempts",
            ErrorCode::TooManyRequests => "too_many_requests",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::RegistrationClosed => "registration_closed",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::UserNotFound => "user_not_found",
            ErrorCode::InvalidParameter => "invalid_parameter",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::NotFound => "not_found",
            ErrorCode::Internal => "internal",
            ErrorCode::InvalidJson => "invalid_json",
            ErrorCode::UnknownEvent => "unknown_event",
            ErrorCode::InvalidPayload => "invalid_payload",
            ErrorCode::UnknownRecipient => "unknown_recipient",
            ErrorCode::EmptyMessage => "empty_message",
            ErrorCode::MessageTooLong => "message_too_long",
            ErrorCode::FrameTooLarge => "frame_too_large",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Blocked => "blocked",
            ErrorCode::EditWindowPassed => "edit_window_passed",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_match_serde() {
        for code in [
            ErrorCode::TooManyAttempts,
            ErrorCode::TooManyRequests,
            ErrorCode::TooManyConnections,
            ErrorCode::RegistrationClosed,
            ErrorCode::RateLimited,
            ErrorCode::UnknownRecipient,
            ErrorCode::Blocked,
            ErrorCode::EditWindowPassed,
            ErrorCode::NotFound,
            ErrorCode::Forbidden,
        ] {
            let json = serde_json::to_string(&code).unwrap_or_default();
            assert_eq!(json, format!("\"{}\"", code.as_str()));
        }
    }
}

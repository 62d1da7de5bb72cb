//! An async Rust client for the dyad protocol: the REST calls and a
//! WebSocket [`Connection`] that speaks the events of `dyad_protocol`.
//!
//! The project's tests, its CLI and its load generator all use it.
#![warn(missing_docs)]

mod connection;
mod rest;
mod session;

pub use connection::{Connection, Receiver, Sender, tcp_from};
pub use dyad_protocol as protocol;
pub use rest::Client;
pub use session::{ChatSession, SessionEvent, SessionOptions};

use dyad_protocol::ErrorCode;

/// What can go wrong talking to a server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server could not be reached (nothing listening, no route, a
    /// connect timeout): one line, no chain of causes.
    #[error("cannot reach the server at {server} ({why}); is it running?")]
    Unreachable {
        /// Scheme, host and port.
        server: String,
        /// The innermost cause, e.g. "Connection refused (os error 111)".
        why: String,
    },
    /// The HTTP request failed otherwise.
    #[error("http: {0}")]
    Http(reqwest::Error),
    /// The server answered with an error body.
    #[error("{status} {code}: {message}")]
    Api {
        /// HTTP status.
        status: u16,
        /// The error code.
        code: ErrorCode,
        /// The server's text.
        message: String,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(Box<tokio_tungstenite::tungstenite::Error>),
    /// The server closed the WebSocket.
    #[error("closed by server: {code} {reason}")]
    Closed {
        /// Close code (1005 when the frame had none).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// A frame or body was not what the protocol says.
    #[error("decode: {0}")]
    Decode(#[from] serde_json::Error),
    /// A call needs a token and the client has none.
    #[error("not logged in")]
    NotLoggedIn,
    /// A URL could not be formed.
    #[error("bad url: {0}")]
    Url(String),
    /// A certificate authority to trust could not be read.
    #[error("tls: {0}")]
    Tls(String),
}

impl From<reqwest::Error> for ClientError {
    fn from(e: reqwest::Error) -> Self {
        if !e.is_connect() {
            return ClientError::Http(e);
        }
        let server = e
            .url()
            .map(|u| u.origin().ascii_serialization())
            .unwrap_or_else(|| "?".into());
        let mut cause: &dyn std::error::Error = &e;
        while let Some(next) = cause.source() {
            cause = next;
        }
        ClientError::Unreachable {
            server,
            why: cause.to_string(),
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

impl ClientError {
    /// The API error code, if the server answered with one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Api { code, .. } => Some(*code),
            _ => None,
        }
    }
}

//! dyad's wire contract as Rust types: the WebSocket events in both
//! directions, the REST bodies, the opaque ids and the error codes.
//!
//! Nothing here does I/O. The server, the client, the CLI and the load
//! generator all speak through these types, so a field renamed here is renamed
//! everywhere at once.
#![warn(missing_docs)]

pub mod decode;
pub mod domain;
pub mod errors;
pub mod events;
pub mod ids;
pub mod rest;

pub use decode::FrameError;
pub use errors::ErrorCode;
pub use events::{ClientEvent, MessageStatus, MessageView, ServerEvent};
pub use ids::{ConnectionId, MessageId, SessionId, UserId};

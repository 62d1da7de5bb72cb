//! The server's settings. The binary fills them from flags and environment
//! variables; tests build them directly.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

pub use crate::abuse::AbuseLimits;
pub use crate::cluster::ClusterConfig;

/// Everything a running server can be told.
#[derive(Debug, Clone)]
pub struct Config {
    /// How long a user stays online after their last connection closes.
    pub presence_grace: Duration,
    /// How often the server pings each WebSocket; two silent intervals close it.
    pub heartbeat_interval: Duration,
    /// Flood control: `send_message` tokens per second per user; 0 turns it off.
    pub rate_limit: u32,
    /// Flood control: bucket capacity per user.
    pub rate_burst: u32,
    /// Longest message, in characters.
    pub max_message_chars: usize,
    /// How long after sending its sender may edit a message.
    pub edit_window: Duration,
    /// Largest WebSocket frame, in bytes; larger frames get `frame_too_large`.
    pub max_frame_bytes: usize,
    /// Frames a connection may have waiting before it counts as a slow consumer.
    pub outbound_queue: usize,
    /// How long a session token lives.
    pub token_ttl: Duration,
    /// Size of each WebSocket's read and write buffers.
    pub ws_buffer_bytes: usize,
    /// Most operations the group commit puts in one transaction.
    pub max_batch: usize,
    /// Cluster membership (Redis); `None` runs the node alone.
    pub cluster: Option<ClusterConfig>,
    /// Per-address and per-user limits.
    pub abuse: AbuseLimits,
    /// Reverse proxies whose `X-Forwarded-For` names the real client.
    pub trusted_proxies: Vec<IpAddr>,
    /// Origins besides the server's own whose pages may open WebSockets.
    pub allowed_origins: Vec<String>,
    /// Whether anyone may register (`POST /api/v1/users`).
    pub registration_open: bool,
    /// Most TCP connections open at once.
    pub max_connections: usize,
    /// Time a connection has to send a complete request (head and body).
    pub request_deadline: Duration,
    /// Time one write to a WebSocket may take before the client counts as
    /// a slow consumer and its socket is dropped.
    pub write_deadline: Duration,
    /// Speak HTTPS and `wss://` with this (see [`crate::tls`]); `None`: plain TCP.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// How often the sessions of open WebSockets are checked against the
    /// store, so that one revoked elsewhere (`dyad admin`) is cut.
    pub session_check: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            presence_grace: Duration::from_secs(30),
            heartbeat_interval: Duration::from_secs(30),
            rate_limit: 20,
            rate_burst: 40,
            max_message_chars: 4096,
            edit_window: Duration::from_secs(48 * 3600),
            max_frame_bytes: 64 * 1024,
            outbound_queue: 1024,
            token_ttl: Duration::from_secs(30 * 24 * 3600),
            ws_buffer_bytes: 1024,
            max_batch: 1024,
            cluster: None,
            abuse: AbuseLimits::default(),
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            registration_open: true,
            max_connections: crate::listener::default_max_connections(),
            request_deadline: Duration::from_secs(10),
            write_deadline: Duration::from_secs(10),
            tls: None,
            session_check: crate::accounts::SESSION_CACHE_TTL,
        }
    }
}

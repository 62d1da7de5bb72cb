//! Presence: who is online, across every node that shares it.
//!
//! A user is online from their first connection on any node until the
//! grace period after their last one has passed ([`Presence::grace_over`]):
//! a phone switching networks reconnects inside it and nobody sees a flap.
//! Each node records its own connections; the node whose last connection
//! of a user closed runs the grace timer and asks, when it ends, whether
//! the user is offline everywhere. Only the call that takes a user offline
//! answers true, so watchers hear it once.
//!
//! Two implementations, one contract (the suite in `tests/presence.rs`
//! runs on both): [`LocalPresence`], in process, for one node (or several
//! in one test process), and [`RedisPresence`], shared by a cluster, where
//! a node's entries expire unless it [renews](Presence::renew) them, so a
//! node that dies takes its users offline within the TTL.

mod local;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use dyad_protocol::{ConnectionId, UserId};

pub use local::LocalPresence;
pub use redis::RedisPresence;

use crate::cluster::ClusterError;

/// The answer of a presence backend.
pub type PresenceResult<T> = Result<T, ClusterError>;

/// Who is online.
#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records connection `connection` of `user` on this node; true when
    /// the user was offline everywhere until now.
    async fn connected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<bool>;

    /// Forgets a closed connection. The user stays online until
    /// [`Presence::grace_over`].
    async fn disconnected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<()>;

    /// The grace period after this node's last connection of `user` ended:
    /// true if the user has no connection left anywhere and this call took
    /// them offline.
    async fn grace_over(&self, user: UserId) -> PresenceResult<bool>;

    /// Whether `user` is online (connected somewhere, or inside a grace period).
    async fn is_online(&self, user: UserId) -> PresenceResult<bool>;

    /// Those of `users` who are offline.
    async fn offline_among(&self, users: &[UserId]) -> PresenceResult<Vec<UserId>>;

    /// Records again every connection this node holds, by user; answers the
    /// users who had gone offline meanwhile (their entries expired, say after
    /// a Redis restart) and are online again now.
    async fn renew(&self, connected: &[(UserId, Vec<ConnectionId>)]) -> PresenceResult<Vec<UserId>>;

    /// How often [`Presence::renew`] must run for this node's entries to live.
    fn renew_every(&self) -> Duration;

    /// This node is stopping and has closed its connections of `users`:
    /// forgets them, and those with no connection elsewhere stay online only
    /// `grace` more (a reconnect to another node inside it is invisible).
    async fn leaving(&self, users: &[UserId], grace: Duration) -> PresenceResult<()>;

    /// Whether the backend answers (`/readyz`).
    async fn ping(&self) -> PresenceResult<()>;
}

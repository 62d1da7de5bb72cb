//! The bus: how an event reaches a user's connections on the other nodes.
//!
//! A node [holds](Bus::hold) a [`Topic`] while it has a reason to hear it
//! (a connection of the user, a watcher of the user's presence) and
//! [publishes](Bus::publish) to the topics of the users an event concerns.
//! Every other node holding the topic gets the [`Payload`]; the publisher
//! does not (it has already handed the event to its own connections).
//! Nothing maps users to nodes, so nothing goes stale when a node dies.
//!
//! Two implementations, one contract (the suite in `tests/bus.rs` runs on
//! both): [`LocalBus`], in process, for one node (or several nodes in one
//! test process), and [`RedisBus`], Redis pub/sub, for a cluster.
//!
//! The bus is best effort. Messages are in the store before they are
//! published, so one lost on the way is fetched by the recipient's gap fill
//! (see [`crate::outbound`]) or replayed at its next connect.

mod local;
mod payload;
mod redis;

use std::sync::Arc;

use async_trait::async_trait;
use dyad_protocol::UserId;
use dyad_store::SessionId;

pub use local::LocalBus;
pub use payload::Payload;
pub use redis::RedisBus;

use crate::cluster::ClusterError;

/// What a node can hold and publish to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Topic {
    /// Events for a user's connections: messages, delivery notices, typing.
    User(UserId),
    /// A user's presence changes, for their watchers.
    Presence(UserId),
    /// Revoked sessions; every node holds it.
    Sessions,
    /// Nodes stopping cleanly; every node holds it.
    Nodes,
}

/// Which sessions of a user were revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// One session: a logout.
    Session(SessionId),
    /// Every session: the account was deleted.
    Account,
}

/// What a node does with what other nodes publish: called once per payload,
/// on the bus's own task; it must not block.
pub type Deliver = Arc<dyn Fn(Topic, Payload) + Send + Sync>;

/// Routes events between the nodes that share it.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Hands every payload other nodes publish to a held topic to
    /// `deliver`, from now on. Called once, before anything is held.
    fn start(&self, deliver: Deliver);

    /// Starts hearing `topic`. Holds are counted: the first one subscribes.
    /// Resolves once payloads published from now on will arrive, or at once
    /// while the bus is unreachable (the topic is subscribed when it is back).
    async fn hold(&self, topic: Topic);

    /// Gives back one hold of `topic`; the last one unsubscribes.
    fn release(&self, topic: Topic);

    /// Sends `payload` to every other node holding `topic`. Never waits;
    /// payloads from one node to one topic arrive in the order published.
    fn publish(&self, topic: Topic, payload: Payload);

    /// Resolves once everything published so far has been sent (a node
    /// stopping says its last words).
    async fn flush(&self);

    /// Whether the bus works (`/readyz`).
    async fn ping(&self) -> Result<(), ClusterError>;
}

//! The hub: every live connection on this node, by user. It hands events to
//! them ([`routing`]), keeps their users' presence and tells watchers of it
//! ([`watching`]), and closes them when asked.
//!
//! The hub runs the same code alone and in a cluster: what it shares with
//! other nodes goes through [`Presence`] and the [`Bus`] (see
//! [`crate::cluster`]).
//!
//! A new connection is registered here before its node subscribes to the
//! user's topic and it reads its marks ([`Hub::attach`]), so everything
//! committed after the marks reaches it; its cursors ([`crate::outbound`])
//! sort out the rest.

mod peer;
mod routing;
mod watching;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use dashmap::DashMap;
use dyad_protocol::{ConnectionId, UserId};
use dyad_store::{MessageStore, SessionId, SessionRecord, StoreResult};
use tokio::sync::mpsc;

pub use peer::{CloseReason, Peer};

use crate::bus::{Bus, Payload, Revoked, Topic};
use crate::clock::now_ms;
use crate::cluster::{ClusterError, Shared};
use crate::metrics::Metrics;
use crate::outbound::{Cursors, Kind, Outbound};
use crate::presence::Presence;

/// Sessions asked about in one store query when live sessions are checked
/// for revocations.
const SESSIONS_PER_CHECK: usize = 10_000;

/// A user with at least one connection, or inside the grace period.
#[derive(Default)]
struct UserEntry {
    peers: Vec<Arc<Peer>>,
    /// Non-zero while a grace timer runs; a reconnect clears it.
    grace: u64,
    /// When the last connection closed (meaningful while `grace` is set).
    closed_at: i64,
}

/// Every live connection on this node.
pub struct Hub {
    users: DashMap<UserId, UserEntry>,
    /// Per watched user, the connections here watching them, and whether
    /// each may see them (their presence setting).
    watchers: DashMap<UserId, Vec<(Arc<Peer>, bool)>>,
    /// Watched users whose last news here was "online": those whose
    /// presence may expire without a word (their node died).
    watched_online: DashMap<UserId, ()>,
    next_connection: AtomicI64,
    next_grace: AtomicU64,
    /// A check of watched users is scheduled (another node stopped).
    check_pending: AtomicBool,
    grace: Duration,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    presence: Arc<dyn Presence>,
    bus: Arc<dyn Bus>,
}

impl Hub {
    /// An empty hub, sharing presence and events through `shared`.
    pub fn new(store: Arc<dyn MessageStore>, metrics: Arc<Metrics>, grace: Duration, shared: Shared) -> Self {
        Hub {
            users: DashMap::new(),
            watchers: DashMap::new(),
            watched_online: DashMap::new(),
            next_connection: AtomicI64::new(1),
            next_grace: AtomicU64::new(1),
            check_pending: AtomicBool::new(false),
            grace,
            store,
            metrics,
            presence: shared.presence,
            bus: shared.bus,
        }
    }

    /// Starts hearing other nodes: what they publish goes to `also` (first)
    /// and then to the connections here.
    pub async fn start(self: &Arc<Self>, also: impl Fn(&Payload) + Send + Sync + 'static) {
        // Weak: the bus belongs to the hub, and must not keep it alive.
        let hub = Arc::downgrade(self);
        self.bus.start(Arc::new(move |topic, payload| {
            also(&payload);
            if let Some(hub) = hub.upgrade() {
                hub.incoming(topic, payload);
            }
        }));
        self.bus.hold(Topic::Sessions).await;
        self.bus.hold(Topic::Nodes).await;
    }

    /// How often [`Hub::renew_presence`] must run.
    pub fn renew_every(&self) -> Duration {
        self.presence.renew_every()
    }

    /// Whether presence and the bus answer.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        self.presence.ping().await?;
        self.bus.ping().await
    }

    /// Adds a connection: from now on it gets what is dispatched to its
    /// user here (see [`Hub::attach`] for the rest).
    pub fn register(&self, session: SessionRecord, outbound: mpsc::Sender<Outbound>) -> Arc<Peer> {
        let id = ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed));
        let peer = Arc::new(Peer::new(id, session, outbound, self.metrics.clone()));
        let mut entry = self.users.entry(peer.user_id).or_default();
        entry.peers.push(peer.clone());
        entry.grace = 0;
        drop(entry);
        self.metrics.connections.inc();
        peer
    }

    /// Subscribes to what other nodes publish to the connection's user,
    /// records its presence, then reads the marks that split its replay
    /// from what it gets live (see [`crate::outbound`]). Called after
    /// [`Hub::register`] and in this order, so that every message committed
    /// after the marks reaches it.
    pub async fn attach(&self, peer: &Peer) -> StoreResult<Cursors> {
        self.bus.hold(Topic::User(peer.user_id)).await;
        match self.presence.connected(peer.user_id, peer.id).await {
            Ok(true) => self.announce(watching::online(peer.user_id)),
            Ok(false) => {}
            Err(e) => tracing::warn!(error = %e, "could not record presence"),
        }
        let marks = self.store.conversation_marks(peer.user_id).await?;
        Ok(Cursors::new(marks))
    }

    /// Removes a connection. When it was the user's last here, the grace
    /// period starts.
    pub fn unregister(self: &Arc<Self>, peer: &Arc<Peer>) {
        self.unwatch_all(peer);
        self.metrics.connections.dec();
        self.bus.release(Topic::User(peer.user_id));
        let closed_at = now_ms();
        let mut grace = None;
        if let Some(mut entry) = self.users.get_mut(&peer.user_id) {
            entry.peers.retain(|p| p.id != peer.id);
            if entry.peers.is_empty() {
                entry.grace = self.next_grace.fetch_add(1, Ordering::Relaxed);
                entry.closed_at = closed_at;
                grace = Some(entry.grace);
            }
        }
        let hub = self.clone();
        let (user, connection) = (peer.user_id, peer.id);
        tokio::spawn(async move {
            // Forgotten before the grace period ends, which asks whether
            // any connection is left.
            if let Err(e) = hub.presence.disconnected(user, connection).await {
                tracing::warn!(error = %e, user_id = %user, "could not forget a connection's presence");
            }
            if let Some(generation) = grace {
                tokio::time::sleep(hub.grace).await;
                hub.end_grace(user, generation, closed_at).await;
            }
        });
    }

    /// Closes every connection opened with `session` (logout), or all of
    /// the user's (account deleted), here and on every node.
    pub fn close_revoked(&self, user: UserId, revoked: Revoked) {
        self.bus.publish(Topic::Sessions, Payload::Revoked { user, revoked });
        self.close_revoked_here(user, revoked);
    }

    /// Closes the connections whose sessions the store says are revoked:
    /// by another process (`dyad admin`), or on another node whose word was
    /// lost on the bus. Returns those sessions.
    pub async fn close_sessions_revoked_in_store(&self) -> StoreResult<Vec<SessionId>> {
        let owners: HashMap<SessionId, UserId> = self
            .users
            .iter()
            .flat_map(|entry| {
                entry
                    .peers
                    .iter()
                    .map(|p| (p.session.id, p.user_id))
                    .collect::<Vec<_>>()
            })
            .collect();
        let sessions: Vec<SessionId> = owners.keys().copied().collect();
        let mut revoked = Vec::new();
        for chunk in sessions.chunks(SESSIONS_PER_CHECK) {
            revoked.extend(self.store.revoked_among(chunk).await?);
        }
        for session in &revoked {
            if let Some(user) = owners.get(session) {
                self.close_revoked_here(*user, Revoked::Session(*session));
            }
        }
        Ok(revoked)
    }

    fn close_revoked_here(&self, user: UserId, revoked: Revoked) {
        if let Some(entry) = self.users.get(&user) {
            entry
                .peers
                .iter()
                .filter(|p| revoked == Revoked::Account || revoked == Revoked::Session(p.session.id))
                .for_each(|p| p.close(CloseReason::REVOKED));
        }
    }

    /// The sessions with a connection here: in use now.
    pub fn open_sessions(&self) -> Vec<SessionId> {
        self.users
            .iter()
            .flat_map(|entry| entry.peers.iter().map(|p| p.session.id).collect::<Vec<_>>())
            .collect()
    }

    /// `a` blocked or unblocked `b`: on every node, their connections look
    /// up whom they may type to again, and watchers of either are checked
    /// again (a block hides each from the other).
    pub fn blocks_changed(self: &Arc<Self>, a: UserId, b: UserId) {
        for user in [a, b] {
            self.bus.publish(Topic::User(user), Payload::Blocks);
            self.blocks_changed_here(user);
            self.visibility_changed(user);
        }
    }

    fn blocks_changed_here(&self, user: UserId) {
        if let Some(entry) = self.users.get(&user) {
            entry.peers.iter().for_each(|p| p.blocks_changed());
        }
    }

    /// Tells every connection to stop reading frames (first step of shutdown).
    pub fn stop_reading_all(&self) {
        for entry in self.users.iter() {
            entry.peers.iter().for_each(|p| p.stop_reading().cancel());
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for entry in self.users.iter() {
            entry.peers.iter().for_each(|p| p.close(reason));
        }
    }

    /// Hands what another node published to the connections here.
    fn incoming(self: &Arc<Self>, topic: Topic, payload: Payload) {
        match (topic, payload) {
            (Topic::User(user), Payload::Message(message)) => self.deliver(user, &message, None),
            (Topic::User(user), Payload::Delivered(notice)) => self.deliver_notice(user, Kind::Delivered, &notice),
            (Topic::User(user), Payload::Change(notice)) => self.deliver_notice(user, Kind::Change, &notice),
            (Topic::User(user), Payload::Typing(frame)) => {
                self.relay_here(user, &frame);
            }
            (Topic::Sessions, Payload::Revoked { user, revoked }) => self.close_revoked_here(user, revoked),
            (Topic::Presence(user), Payload::Presence { online, frame }) => self.announce_here(user, online, &frame),
            (Topic::Nodes, Payload::NodeLeft { grace }) => self.check_watched_after(grace),
            (Topic::Presence(user), Payload::Visibility) => self.recheck_watchers_of(user),
            (Topic::User(user), Payload::Blocks) => self.blocks_changed_here(user),
            // A payload on a topic it does not belong on.
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests;

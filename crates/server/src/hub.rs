//! The hub: every live connection on this node, by user; the presence that
//! follows from them (online, grace, offline); and who watches whose presence.
//!
//! A new connection is registered here before it reads its marks
//! ([`Hub::attach`]), so everything committed after the marks reaches it;
//! its cursors ([`crate::outbound`]) sort out the rest.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use dyad_protocol::events::{PresenceStatus, PresenceView};
use dyad_protocol::{ConnectionId, MessageId, ServerEvent, UserId};
use dyad_store::{DeliveredMessage, MessageStore, SessionId, SessionRecord, StoreResult, StoredMessage};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::now_ms;
use crate::cluster::{Cluster, Incoming, Revoked};
use crate::codec::encode;
use crate::metrics::Metrics;
use crate::outbound::{Cursors, Kind, Outbound, Sequenced};

/// Why a connection is being closed, as its close frame will say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Close frame text.
    pub reason: &'static str,
    /// Whether frames already queued go out before the close frame.
    pub drain: bool,
}

impl CloseReason {
    /// The server is stopping.
    pub const SHUTDOWN: CloseReason = CloseReason {
        code: 1001,
        reason: "server shutting down",
        drain: true,
    };
    /// The session was revoked (logout).
    pub const REVOKED: CloseReason = CloseReason {
        code: 1008,
        reason: "session revoked",
        drain: false,
    };
    /// The session expired.
    pub const EXPIRED: CloseReason = CloseReason {
        code: 1008,
        reason: "session expired",
        drain: false,
    };
    /// The outbound queue overflowed.
    pub const SLOW_CONSUMER: CloseReason = CloseReason {
        code: 1013,
        reason: "slow consumer",
        drain: false,
    };
    /// No frame for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: CloseReason = CloseReason {
        code: 4000,
        reason: "heartbeat timeout",
        drain: false,
    };
    /// A frame over the hard size limit.
    pub const TOO_LARGE: CloseReason = CloseReason {
        code: 1009,
        reason: "frame too large",
        drain: false,
    };
    /// A text frame that is not UTF-8.
    pub const INVALID_UTF8: CloseReason = CloseReason {
        code: 1007,
        reason: "text frame is not UTF-8",
        drain: false,
    };
    /// A WebSocket protocol violation (reserved bits or opcodes, bad framing).
    pub const PROTOCOL_ERROR: CloseReason = CloseReason {
        code: 1002,
        reason: "protocol violation",
        drain: false,
    };
    /// The store failed while replaying.
    pub const INTERNAL: CloseReason = CloseReason {
        code: 1011,
        reason: "internal error",
        drain: false,
    };
}

/// Most ids a connection remembers learning through a retried send.
const MAX_LATE_KNOWN: usize = 10_000;

/// Sessions asked about in one store query when live sessions are checked
/// for revocations.
const SESSIONS_PER_CHECK: usize = 10_000;

/// One live WebSocket connection, as the rest of the server sees it.
pub struct Peer {
    /// Its id.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The session whose token opened it.
    pub session: SessionRecord,
    /// Users whose presence it watches.
    pub watching: Mutex<HashSet<UserId>>,
    /// Sends that may await their ack at once: half the outbound queue, so
    /// that a client pipelining sends can never overflow its own queue with
    /// acks. A client that sends faster waits (TCP backpressure).
    pub sends_in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    outbound: mpsc::Sender<Outbound>,
    closing: CancellationToken,
    /// Cancelled at shutdown: stop reading frames. Per connection, because a
    /// token shared by every connection would be a lock they all contend on.
    stop_reading: CancellationToken,
    close_reason: OnceLock<CloseReason>,
    /// Old messages (at or below its marks) that it learned of through a
    /// retried send, so that their `message_delivered` may follow.
    late_known: Mutex<HashSet<MessageId>>,
    metrics: Arc<Metrics>,
}

impl Peer {
    /// Queues a frame. A full queue means a slow consumer: the connection is
    /// closed, and what it missed stays pending in the store.
    pub fn push(&self, frame: Utf8Bytes) {
        self.send(Outbound::Frame(frame));
    }

    /// Queues an item (see [`Peer::push`]).
    pub fn send(&self, item: Outbound) {
        match self.outbound.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.slow_consumer(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes it for falling behind (a full queue, or a write past its
    /// deadline); what it missed stays pending in the store.
    pub fn slow_consumer(&self) {
        if self.close_reason.get().is_none() {
            self.metrics.slow_consumers.inc();
            tracing::warn!(connection = %self.id, user_id = %self.user_id, "slow consumer disconnected");
        }
        self.close(CloseReason::SLOW_CONSUMER);
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        self.closing.cancel();
    }

    /// Resolves when someone asked the connection to close.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Resolves when the connection should stop reading frames (shutdown).
    pub fn stop_reading(&self) -> &CancellationToken {
        &self.stop_reading
    }

    /// Why it is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    /// Whether this connection learned of message `id` through a retried send.
    pub fn learned(&self, id: MessageId) -> bool {
        self.late_known.lock().is_ok_and(|k| k.contains(&id))
    }

    /// Records that this connection saw message `id` through a retried send.
    pub fn learn(&self, id: MessageId) {
        if let Ok(mut known) = self.late_known.lock()
            && known.len() < MAX_LATE_KNOWN
        {
            known.insert(id);
        }
    }

    /// Whether some of its sends still wait for their ack.
    pub fn sending(&self) -> bool {
        self.sends_in_flight.available_permits() < self.max_in_flight
    }
}

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
    watchers: DashMap<UserId, Vec<Arc<Peer>>>,
    next_connection: AtomicI64,
    next_grace: AtomicU64,
    /// A check of watched users is scheduled (another node stopped).
    check_pending: AtomicBool,
    grace: Duration,
    store: Arc<dyn MessageStore>,
    metrics: Arc<Metrics>,
    cluster: Option<Arc<Cluster>>,
}

impl Hub {
    /// An empty hub; a cluster member if given `cluster`.
    pub fn new(
        store: Arc<dyn MessageStore>,
        metrics: Arc<Metrics>,
        grace: Duration,
        cluster: Option<Arc<Cluster>>,
    ) -> Self {
        Hub {
            cluster,
            users: DashMap::new(),
            watchers: DashMap::new(),
            next_connection: AtomicI64::new(1),
            next_grace: AtomicU64::new(1),
            check_pending: AtomicBool::new(false),
            grace,
            store,
            metrics,
        }
    }

    /// The cluster this node is a member of, if any.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Adds a connection: from now on it gets what is dispatched to its
    /// user (see [`Hub::attach`] for what it replays instead).
    pub fn register(&self, session: SessionRecord, outbound: mpsc::Sender<Outbound>) -> Arc<Peer> {
        let user = session.user_id;
        let mut came_online = false;
        let peer = {
            let mut entry = self.users.entry(user).or_insert_with(|| {
                came_online = true;
                UserEntry::default()
            });
            let max_in_flight = (outbound.max_capacity() / 2).max(1);
            let peer = Arc::new(Peer {
                id: ConnectionId(self.next_connection.fetch_add(1, Ordering::Relaxed)),
                user_id: user,
                session,
                watching: Mutex::new(HashSet::new()),
                sends_in_flight: Arc::new(Semaphore::new(max_in_flight)),
                max_in_flight,
                outbound,
                closing: CancellationToken::new(),
                stop_reading: CancellationToken::new(),
                close_reason: OnceLock::new(),
                late_known: Mutex::new(HashSet::new()),
                metrics: self.metrics.clone(),
            });
            entry.peers.push(peer.clone());
            entry.grace = 0;
            peer
        };
        self.metrics.connections.inc();
        if came_online && self.cluster.is_none() {
            self.announce(online(user));
        }
        peer
    }

    /// Reads the marks that split a new connection's replay from what it
    /// gets live (see [`crate::outbound`]); called after [`Hub::register`],
    /// so that every message committed after the marks reaches it. On a
    /// cluster node it first subscribes to the user's channel and records
    /// the presence, for the same reason.
    pub async fn attach(&self, peer: &Peer) -> StoreResult<Cursors> {
        if let Some(cluster) = &self.cluster {
            cluster.hold(cluster.user_channel(peer.user_id)).await;
            match cluster.connected(peer.user_id, peer.id).await {
                Ok(true) => self.announce(online(peer.user_id)),
                Ok(false) => {}
                Err(e) => tracing::warn!(error = %e, "could not record presence in redis"),
            }
        }
        let marks = self.store.conversation_marks(peer.user_id).await?;
        Ok(Cursors::new(marks))
    }

    /// Removes a connection. When it was the user's last, the grace period starts.
    pub fn unregister(self: &Arc<Self>, peer: &Arc<Peer>) {
        self.unwatch_all(peer);
        self.metrics.connections.dec();
        if let Some(cluster) = &self.cluster {
            cluster.release(cluster.user_channel(peer.user_id));
            let (cluster, user, connection) = (cluster.clone(), peer.user_id, peer.id);
            tokio::spawn(async move { cluster.disconnected(user, connection).await });
        }
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
        if let Some(generation) = grace {
            let hub = self.clone();
            let user = peer.user_id;
            tokio::spawn(async move {
                tokio::time::sleep(hub.grace).await;
                hub.end_grace(user, generation, closed_at).await;
            });
        }
    }

    /// At a clean shutdown of a cluster node, once its connections are
    /// closed: its users' presence in Redis lasts only the grace period
    /// more, unless they are connected elsewhere (see [`Cluster::leaving`]).
    pub async fn leave_cluster(&self) {
        let Some(cluster) = &self.cluster else { return };
        let users: Vec<UserId> = self.users.iter().map(|entry| *entry.key()).collect();
        if let Err(e) = cluster.leaving(&users, self.grace).await {
            tracing::warn!(error = %e, users = users.len(), "could not hand presence back to redis; it expires with its TTL");
        }
    }

    async fn end_grace(&self, user: UserId, generation: u64, closed_at: i64) {
        let expired = self
            .users
            .remove_if(&user, |_, e| e.peers.is_empty() && e.grace == generation)
            .is_some();
        if !expired {
            return;
        }
        if let Some(cluster) = &self.cluster {
            match cluster.grace_over(user).await {
                Ok(true) => {}
                Ok(false) => return, // connected elsewhere, or already offline
                Err(e) => {
                    // Its presence expires by itself; watchers learn it by polling.
                    tracing::warn!(error = %e, user_id = %user, "could not end presence in redis");
                    return;
                }
            }
        }
        if let Err(e) = self.store.set_last_seen(&[(user, closed_at)]).await {
            tracing::warn!(error = %e, user_id = %user, "could not store last_seen");
        }
        self.announce(PresenceView {
            user_id: user,
            status: PresenceStatus::Offline,
            last_seen: Some(closed_at),
        });
    }

    /// Sends a stored message to its recipient's connections and to the
    /// sender's others (all but `origin`), here and, on a cluster, on every node.
    pub fn route_message(&self, message: &StoredMessage, frame: Utf8Bytes, origin: Option<ConnectionId>) {
        let to_recipient = Sequenced::of(message, message.sender_id, frame);
        let to_sender = Sequenced {
            peer: message.recipient_id,
            ..to_recipient.clone()
        };
        self.deliver(message.recipient_id, &to_recipient, None);
        self.deliver(message.sender_id, &to_sender, origin);
        if let Some(cluster) = &self.cluster {
            cluster.publish_sequenced(message.recipient_id, Kind::Message, &to_recipient);
            cluster.publish_sequenced(message.sender_id, Kind::Message, &to_sender);
        }
    }

    /// Sends `message_delivered` to the sender's connections that saw the
    /// message, here and, on a cluster, on every node.
    pub fn route_delivered(&self, message: &DeliveredMessage, frame: Utf8Bytes) {
        let notice = Sequenced {
            peer: message.recipient_id,
            seq: message.seq,
            id: message.id,
            ts: 0,
            frame,
        };
        self.deliver_notice(message.sender_id, &notice);
        if let Some(cluster) = &self.cluster {
            cluster.publish_sequenced(message.sender_id, Kind::Delivered, &notice);
        }
    }

    /// Sends a message to each of `user`'s connections here, except
    /// `except`; each connection's cursors drop what it replays instead.
    fn deliver(&self, user: UserId, message: &Sequenced, except: Option<ConnectionId>) {
        if let Some(entry) = self.users.get(&user) {
            for peer in entry.peers.iter().filter(|p| Some(p.id) != except) {
                peer.send(Outbound::ordered(Kind::Message, message.clone()));
            }
        }
    }

    /// Sends `message_delivered` to each of `user`'s connections here; each
    /// connection's cursors drop it if the connection never saw the message.
    fn deliver_notice(&self, user: UserId, notice: &Sequenced) {
        if let Some(entry) = self.users.get(&user) {
            for peer in entry.peers.iter() {
                peer.send(Outbound::ordered(Kind::Delivered, notice.clone()));
            }
        }
    }

    /// Sends an ephemeral frame to every connection of `user`, here and on
    /// other nodes; false if `user` has none here.
    pub fn relay(&self, user: UserId, frame: &Utf8Bytes) -> bool {
        if let Some(cluster) = &self.cluster {
            cluster.publish_typing(user, frame);
        }
        self.relay_here(user, frame)
    }

    fn relay_here(&self, user: UserId, frame: &Utf8Bytes) -> bool {
        match self.users.get(&user) {
            Some(entry) if !entry.peers.is_empty() => {
                entry.peers.iter().for_each(|p| p.push(frame.clone()));
                true
            }
            _ => false,
        }
    }

    /// Whether `user` counts as online (connected, or within the grace period).
    pub fn is_online(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Whether `user` is online here or, on a cluster, on any node.
    async fn online_anywhere(&self, user: UserId) -> bool {
        match &self.cluster {
            Some(cluster) => match cluster.is_online(user).await {
                Ok(online) => online,
                Err(e) => {
                    tracing::warn!(error = %e, "could not read presence from redis");
                    self.is_online(user)
                }
            },
            None => self.is_online(user),
        }
    }

    /// The presence of `user`, or `None` if there is no such user.
    pub async fn presence(&self, user: UserId) -> StoreResult<Option<PresenceView>> {
        // The record first: an account deleted a moment ago may still be in
        // its grace period, but it is offline for good.
        let record = self.store.user_by_id(user).await?;
        // Then presence: the user may have connected while the store answered.
        let status = if self.online_anywhere(user).await {
            PresenceStatus::Online
        } else {
            PresenceStatus::Offline
        };
        Ok(record.map(|u| match u.deleted_at {
            // A deleted account is offline, and was never seen.
            Some(_) => PresenceView {
                user_id: user,
                status: PresenceStatus::Offline,
                last_seen: None,
            },
            None => PresenceView {
                user_id: user,
                status,
                last_seen: if status == PresenceStatus::Online {
                    None
                } else {
                    u.last_seen
                },
            },
        }))
    }

    /// Adds `peer` to the watchers of `user` (on a cluster, once this node
    /// hears `user`'s presence changes); false if it already watched.
    pub async fn watch(&self, peer: &Arc<Peer>, user: UserId) -> bool {
        let added = peer.watching.lock().is_ok_and(|mut w| w.insert(user));
        if added {
            self.watchers.entry(user).or_default().push(peer.clone());
            if let Some(cluster) = &self.cluster {
                cluster.hold(cluster.presence_channel(user)).await;
            }
        }
        added
    }

    /// Removes `peer` from the watchers of `user`.
    pub fn unwatch(&self, peer: &Peer, user: UserId) {
        if peer.watching.lock().is_ok_and(|mut w| w.remove(&user)) {
            let nobody_left = self
                .watchers
                .remove_if_mut(&user, |_, list| {
                    list.retain(|p| p.id != peer.id);
                    list.is_empty()
                })
                .is_some();
            if let Some(cluster) = &self.cluster {
                cluster.release(cluster.presence_channel(user));
                if nobody_left {
                    cluster.note_presence(user, false);
                }
            }
        }
    }

    fn unwatch_all(&self, peer: &Peer) {
        let users: Vec<UserId> = peer
            .watching
            .lock()
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        for user in users {
            self.unwatch(peer, user);
        }
    }

    /// Tells the watchers of a presence change, here and on every node.
    fn announce(&self, view: PresenceView) {
        let (user, is_online) = (view.user_id, view.status == PresenceStatus::Online);
        let frame = encode(&ServerEvent::Presence(view));
        if let Some(cluster) = &self.cluster {
            cluster.publish_presence(user, is_online, &frame);
        }
        self.announce_here(user, is_online, &frame);
    }

    fn announce_here(&self, user: UserId, is_online: bool, frame: &Utf8Bytes) {
        let Some(watchers) = self.watchers.get(&user).map(|w| w.clone()) else {
            return;
        };
        if let Some(cluster) = &self.cluster {
            cluster.note_presence(user, is_online);
        }
        watchers.iter().for_each(|p| p.push(frame.clone()));
    }

    /// Closes every connection opened with `session` (logout), here and on
    /// every node.
    pub fn close_revoked(&self, user: UserId, revoked: Revoked) {
        if let Some(cluster) = &self.cluster {
            cluster.publish_revoked(user, revoked);
        }
        self.close_revoked_here(user, revoked);
    }

    /// Closes the connections whose sessions the store says are revoked:
    /// by another process (`dyad admin`), or on another node whose word was
    /// lost with Redis. Returns those sessions.
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

    /// Tells every connection to stop reading frames (first step of shutdown).
    pub fn stop_reading_all(&self) {
        for entry in self.users.iter() {
            entry.peers.iter().for_each(|p| p.stop_reading.cancel());
        }
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, reason: CloseReason) {
        for entry in self.users.iter() {
            entry.peers.iter().for_each(|p| p.close(reason));
        }
    }

    /// Stores `last_seen` for every user this node counts as online: now for
    /// the connected, the close time for those in grace. Run every minute and
    /// at shutdown, so that after a crash `last_seen` is at most a minute old.
    pub async fn persist_last_seen(&self) {
        let now = now_ms();
        let seen: Vec<(UserId, i64)> = self
            .users
            .iter()
            .map(|e| (*e.key(), if e.peers.is_empty() { e.closed_at } else { now }))
            .collect();
        if !seen.is_empty()
            && let Err(e) = self.store.set_last_seen(&seen).await
        {
            tracing::warn!(error = %e, "could not store last_seen");
        }
    }
}

impl Hub {
    /// Hands what another node published to the connections here.
    pub fn incoming(self: &Arc<Self>, incoming: Incoming) {
        match incoming {
            Incoming::Message(user, message) => self.deliver(user, &message, None),
            Incoming::Delivered(user, notice) => self.deliver_notice(user, &notice),
            Incoming::Typing(user, frame) => {
                self.relay_here(user, &frame);
            }
            Incoming::Revoked(user, revoked) => self.close_revoked_here(user, revoked),
            Incoming::Presence(user, is_online, frame) => self.announce_here(user, is_online, &frame),
            Incoming::NodeLeft(grace) => self.check_watched_after(grace),
        }
    }

    /// Another node stopped: once its users' grace has passed, tells
    /// watchers here about those of them who did not come back. One check
    /// at a time, however many nodes stop.
    fn check_watched_after(self: &Arc<Self>, grace: Duration) {
        if self.check_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace + Duration::from_millis(100)).await;
            hub.check_pending.store(false, Ordering::Release);
            hub.check_watched().await;
        });
    }

    /// A cluster node's heartbeat: renews the presence of every user
    /// connected here (announcing those whose presence had gone, say after a
    /// Redis restart), and tells watchers here of watched users whose
    /// presence expired (their node died).
    pub async fn refresh_cluster_presence(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let connected: Vec<(UserId, Vec<ConnectionId>)> = self
            .users
            .iter()
            .filter(|e| !e.peers.is_empty())
            .map(|e| (*e.key(), e.peers.iter().map(|p| p.id).collect()))
            .collect();
        match cluster.refresh(&connected).await {
            Ok(back) => back.into_iter().for_each(|u| self.announce(online(u))),
            Err(e) => tracing::warn!(error = %e, "could not renew presence in redis"),
        }
        // A connection that closed while the renewal was on its way may have
        // been put back after its removal: take it out again, or its user
        // would look connected until the TTL ran out.
        for (user, connections) in connected {
            let still_open = |c: &ConnectionId| {
                self.users
                    .get(&user)
                    .is_some_and(|e| e.peers.iter().any(|p| p.id == *c))
            };
            for connection in connections.into_iter().filter(|c| !still_open(c)) {
                cluster.disconnected(user, connection).await;
            }
        }
        self.check_watched().await;
    }

    /// Tells watchers here of watched users whose presence expired.
    async fn check_watched(&self) {
        let Some(cluster) = &self.cluster else {
            return;
        };
        let gone = match cluster.expired_watched().await {
            Ok(gone) => gone,
            Err(e) => return tracing::warn!(error = %e, "could not poll presence in redis"),
        };
        for user in gone {
            let last_seen = match self.store.user_by_id(user).await {
                Ok(record) => record.and_then(|u| u.last_seen),
                Err(_) => None,
            };
            let frame = encode(&ServerEvent::Presence(PresenceView {
                user_id: user,
                status: PresenceStatus::Offline,
                last_seen,
            }));
            self.announce_here(user, false, &frame);
        }
    }
}

fn online(user: UserId) -> PresenceView {
    PresenceView {
        user_id: user,
        status: PresenceStatus::Online,
        last_seen: None,
    }
}

#[cfg(test)]
mod tests {
    //! Presence on one node, with paused time: the grace period passes in
    //! an instant, and nothing here depends on how fast the machine is.

    use dyad_store::SessionId;

    use super::*;

    const GRACE: Duration = Duration::from_secs(30);

    struct Fixture {
        hub: Arc<Hub>,
        _dir: tempfile::TempDir,
    }

    async fn hub() -> Fixture {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let hub = Arc::new(Hub::new(store, Arc::new(Metrics::default()), GRACE, None));
        Fixture { hub, _dir: dir }
    }

    /// A connection of `user`, and what it is sent.
    fn connect(hub: &Hub, user: i64) -> (Arc<Peer>, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(64);
        let session = SessionRecord {
            id: SessionId(user),
            user_id: UserId(user),
            expires_at: i64::MAX,
        };
        (hub.register(session, tx), rx)
    }

    /// The presence events queued for a connection so far.
    fn presence_seen(rx: &mut mpsc::Receiver<Outbound>) -> Vec<(PresenceStatus, Option<i64>)> {
        let mut seen = Vec::new();
        while let Ok(item) = rx.try_recv() {
            let frame = item.into_frame();
            if let Ok(ServerEvent::Presence(view)) = serde_json::from_str::<ServerEvent>(frame.as_str()) {
                seen.push((view.status, view.last_seen));
            }
        }
        seen
    }

    /// Lets the tasks whose timers are due run.
    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    /// The next presence event, waited for in real time (the offline event
    /// follows a write on the store's own thread, which paused time cannot
    /// hurry), up to 5 s.
    async fn next_presence(rx: &mut mpsc::Receiver<Outbound>) -> (PresenceStatus, Option<i64>) {
        tokio::time::resume();
        let next = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                let frame = rx.recv().await?.into_frame();
                if let Ok(ServerEvent::Presence(view)) = serde_json::from_str::<ServerEvent>(frame.as_str()) {
                    return Some((view.status, view.last_seen));
                }
            }
        })
        .await;
        tokio::time::pause();
        match next {
            Ok(Some(presence)) => presence,
            other => panic!("no presence event: {other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn watchers_see_online_then_offline_once_the_grace_period_is_over() {
        let f = hub().await;
        let (alice, mut seen) = connect(&f.hub, 1);
        f.hub.watch(&alice, UserId(2)).await;
        let (bob, _) = connect(&f.hub, 2);
        assert_eq!(presence_seen(&mut seen), vec![(PresenceStatus::Online, None)]);
        let closed_at = now_ms();
        f.hub.unregister(&bob);
        settle().await; // the grace timer starts
        tokio::time::advance(GRACE - Duration::from_secs(1)).await;
        settle().await;
        assert!(
            presence_seen(&mut seen).is_empty(),
            "still online within the grace period"
        );
        assert!(f.hub.is_online(UserId(2)));
        tokio::time::advance(Duration::from_secs(2)).await;
        let (status, last_seen) = next_presence(&mut seen).await;
        assert_eq!(status, PresenceStatus::Offline);
        // Last seen when the connection closed, not when the grace ended.
        let last_seen = last_seen.unwrap_or_default();
        assert!(
            (closed_at..closed_at + 1_000).contains(&last_seen),
            "{last_seen} vs {closed_at}"
        );
        assert!(!f.hub.is_online(UserId(2)));
        assert!(presence_seen(&mut seen).is_empty(), "one event");
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_period_is_not_seen() {
        let f = hub().await;
        let (alice, mut seen) = connect(&f.hub, 1);
        f.hub.watch(&alice, UserId(2)).await;
        let (mut bob, _) = connect(&f.hub, 2);
        presence_seen(&mut seen);
        for _ in 0..3 {
            f.hub.unregister(&bob);
            settle().await; // the grace timer starts
            tokio::time::advance(GRACE / 2).await;
            settle().await;
            bob = connect(&f.hub, 2).0;
        }
        tokio::time::advance(GRACE * 2).await;
        settle().await;
        assert!(
            presence_seen(&mut seen).is_empty(),
            "flapping inside the grace is invisible"
        );
        f.hub.unregister(&bob);
        settle().await; // the grace timer starts
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert_eq!(next_presence(&mut seen).await.0, PresenceStatus::Offline);
        assert!(presence_seen(&mut seen).is_empty(), "one event");
    }

    #[tokio::test(start_paused = true)]
    async fn the_last_of_several_devices_decides() {
        let f = hub().await;
        let (alice, mut seen) = connect(&f.hub, 1);
        f.hub.watch(&alice, UserId(2)).await;
        let (laptop, _) = connect(&f.hub, 2);
        let (phone, _) = connect(&f.hub, 2);
        assert_eq!(presence_seen(&mut seen), vec![(PresenceStatus::Online, None)]);
        f.hub.unregister(&laptop);
        settle().await; // the grace timer starts
        tokio::time::advance(GRACE * 2).await;
        settle().await;
        assert!(presence_seen(&mut seen).is_empty(), "the phone is still there");
        f.hub.unregister(&phone);
        settle().await; // the grace timer starts
        tokio::time::advance(GRACE + Duration::from_secs(1)).await;
        assert_eq!(next_presence(&mut seen).await.0, PresenceStatus::Offline);
    }
}

//! Cluster membership over Redis: presence shared by every node, and the
//! pub/sub that carries messages, delivery notices, typing, presence changes
//! and session revocations between nodes.
//!
//! Pub/sub is **per user**: a node subscribes to `user:{id}` while it holds a
//! connection of that user, and to `presence:{id}` while one of its
//! connections watches that user. A sender's node publishes to the channels of
//! the users concerned and Redis hands each message to exactly the nodes that
//! need it. Nothing maps users to nodes, so nothing goes stale when a node
//! dies: its subscriptions die with its socket. (Per-node channels would need
//! that map, a lookup per message, and cleanup after a crash.) Revoked
//! sessions go to one channel every node hears, `sessions`: every node may
//! have the session cached. A node stopping cleanly says so on another,
//! `nodes`.
//!
//! Every published payload names the process that sent it; a node skips its
//! own, since it already dispatched them locally.
//!
//! Redis is not the source of truth for messages: PostgreSQL is. A message
//! whose publication is lost (Redis restarting) is still stored and pending;
//! a later message in the same conversation makes the recipient's connection
//! fetch it (see [`crate::outbound`]), and the next connect replays it.

mod payload;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use dashmap::DashMap;
use dyad_protocol::{ConnectionId, UserId};
use dyad_store::SessionId;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, PubSubSink};
use tokio::sync::{mpsc, oneshot};

use crate::clock::now_ms;
use crate::outbound::{Kind, Sequenced};
use payload::Payload;

/// Users per Redis pipeline in the per-user sweeps (heartbeat, watched
/// users, leaving): one round trip each, none too large for Redis to answer
/// at once.
const PIPELINE_USERS: usize = 512;

/// How a node joins a cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// `redis://host:port/`.
    pub redis_url: String,
    /// This node's name, in connection entries and logs.
    pub node_id: String,
    /// Put before every key and channel name (several clusters, or tests,
    /// sharing one Redis).
    pub prefix: String,
    /// How long presence lives without a heartbeat from its node.
    pub presence_ttl: Duration,
}

/// Why the cluster could not be joined.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(#[from] redis::RedisError);

/// Sets presence for one connection: adds it to the user's connection set
/// (scored by expiry) and the user's online key. Answers 1 when the user was
/// offline until now.
const CONNECT: &str = r"
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
local was = redis.call('SET', KEYS[2], ARGV[4], 'PX', ARGV[3], 'GET')
if was then return 0 else return 1 end
";

/// After the grace period: drops expired connection entries and, if none is
/// left on any node, the online key. Answers 1 when this call took the user
/// offline.
const GRACE_OVER: &str = r"
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[1])
if redis.call('ZCARD', KEYS[1]) == 0 then
  return redis.call('DEL', KEYS[2])
end
return 0
";

/// At a clean shutdown, per user the node served: drops the node's entries
/// (and expired ones) and, if no connection is left anywhere, lets the
/// online key live at most the grace period more.
const LEAVING: &str = r"
local mine = ARGV[1]
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  if string.sub(member, 1, #mine) == mine then redis.call('ZREM', KEYS[1], member) end
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ARGV[3])
if redis.call('ZCARD', KEYS[1]) == 0 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2], 'LT')
end
return 0
";

/// Which sessions of a user were revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Revoked {
    /// One session: a logout.
    Session(SessionId),
    /// Every session: the account was deleted.
    Account,
}

/// What arrived from another node.
pub enum Incoming {
    /// `receive_message` for `user`.
    Message(UserId, Sequenced),
    /// `message_delivered` for `user`.
    Delivered(UserId, Sequenced),
    /// A `typing` frame for `user`.
    Typing(UserId, Utf8Bytes),
    /// Sessions of user `0` were revoked.
    Revoked(UserId, Revoked),
    /// A presence change of user `0`; `1` says online.
    Presence(UserId, bool, Utf8Bytes),
    /// A node stopped cleanly; its users not connected elsewhere expire
    /// after this grace period.
    NodeLeft(Duration),
}

enum SubCommand {
    Hold(String, oneshot::Sender<()>),
    Release(String),
}

/// This node's link to the cluster; shared by the hub and the gateway.
pub struct Cluster {
    node_id: String,
    origin: String,
    prefix: String,
    ttl: Duration,
    redis: ConnectionManager,
    publish: mpsc::UnboundedSender<(String, String)>,
    subscriptions: mpsc::UnboundedSender<SubCommand>,
    subscribed: AtomicBool,
    /// Watched users whose last news on this node was "online".
    watched_online: DashMap<UserId, ()>,
}

impl Cluster {
    /// Connects to Redis. Call [`Cluster::start`] once the hub exists.
    pub async fn connect(config: &ClusterConfig) -> Result<(Arc<Cluster>, Tasks), ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = client.get_connection_manager_with_config(manager).await?;
        let (publish, publish_rx) = mpsc::unbounded_channel();
        let (subscriptions, subs_rx) = mpsc::unbounded_channel();
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        let cluster = Arc::new(Cluster {
            origin: format!("{}.{:016x}", config.node_id, u64::from_le_bytes(nonce)),
            node_id: config.node_id.clone(),
            prefix: config.prefix.clone(),
            ttl: config.presence_ttl.max(Duration::from_secs(1)),
            redis,
            publish,
            subscriptions,
            subscribed: AtomicBool::new(false),
            watched_online: DashMap::new(),
        });
        let tasks = Tasks {
            client,
            publish_rx,
            subs_rx,
        };
        Ok((cluster, tasks))
    }

    /// The channel of `user`'s devices.
    pub fn user_channel(&self, user: UserId) -> String {
        format!("{}user:{}", self.prefix, user.get())
    }

    /// The channel every node hears: revoked sessions (for the session
    /// caches, and to close the session's sockets wherever they are).
    pub fn sessions_channel(&self) -> String {
        format!("{}sessions", self.prefix)
    }

    /// The channel every node hears about other nodes: one stopping cleanly.
    pub fn nodes_channel(&self) -> String {
        format!("{}nodes", self.prefix)
    }

    /// The channel of `user`'s presence changes.
    pub fn presence_channel(&self, user: UserId) -> String {
        format!("{}presence:{}", self.prefix, user.get())
    }

    fn online_key(&self, user: UserId) -> String {
        format!("{}user:online:{}", self.prefix, user.get())
    }

    fn connections_key(&self, user: UserId) -> String {
        format!("{}user:connections:{}", self.prefix, user.get())
    }

    /// A connection's entry in its user's connection set.
    fn member(&self, connection: ConnectionId) -> String {
        format!("{}/{}", self.node_id, connection.0)
    }

    /// How long presence lives without a refresh.
    pub fn presence_ttl(&self) -> Duration {
        self.ttl
    }

    /// Subscribes to `channel` (counted: the first holder subscribes) and
    /// resolves once Redis confirmed it, or at once while Redis is away.
    pub async fn hold(&self, channel: String) {
        let (tx, rx) = oneshot::channel();
        if self.subscriptions.send(SubCommand::Hold(channel, tx)).is_ok() {
            let _ = rx.await;
        }
    }

    /// Gives back one hold of `channel`; the last one unsubscribes.
    pub fn release(&self, channel: String) {
        let _ = self.subscriptions.send(SubCommand::Release(channel));
    }

    /// Records a new connection; true when its user was offline until now.
    pub async fn connected(&self, user: UserId, connection: ConnectionId) -> Result<bool, ClusterError> {
        let mut pipe = redis::pipe();
        self.add_connect(&mut pipe, user, connection);
        let answers: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(answers.first() == Some(&1))
    }

    fn add_connect(&self, pipe: &mut redis::Pipeline, user: UserId, connection: ConnectionId) {
        let ttl = self.ttl.as_millis() as i64;
        pipe.cmd("EVAL")
            .arg(CONNECT)
            .arg(2)
            .arg(self.connections_key(user))
            .arg(self.online_key(user))
            .arg(self.member(connection))
            .arg(now_ms().saturating_add(ttl))
            .arg(ttl)
            .arg(&self.node_id);
    }

    /// Removes a closed connection's entry.
    pub async fn disconnected(&self, user: UserId, connection: ConnectionId) {
        let result: redis::RedisResult<()> = redis::cmd("ZREM")
            .arg(self.connections_key(user))
            .arg(self.member(connection))
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = result {
            tracing::warn!(error = %e, user_id = %user, "could not remove a connection from redis");
        }
    }

    /// The grace period of `user` ended on this node: true if the user has no
    /// connection left anywhere and this call took them offline.
    pub async fn grace_over(&self, user: UserId) -> Result<bool, ClusterError> {
        let went: i64 = redis::cmd("EVAL")
            .arg(GRACE_OVER)
            .arg(2)
            .arg(self.connections_key(user))
            .arg(self.online_key(user))
            .arg(now_ms())
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(went == 1)
    }

    /// This node is stopping cleanly and served `users`, whose connections
    /// it has closed. Those not connected elsewhere stay online only for
    /// `grace` (a reconnect to another node inside it is invisible, as
    /// always), not for the rest of the TTL; the other nodes are told to
    /// look at the users they watch once it has passed.
    pub async fn leaving(&self, users: &[UserId], grace: Duration) -> Result<(), ClusterError> {
        let mine = format!("{}/", self.node_id);
        let notice = Payload::NodeLeft { grace }.encode(&self.origin);
        let grace = i64::try_from(grace.as_millis()).unwrap_or(i64::MAX).max(1);
        for chunk in users.chunks(PIPELINE_USERS) {
            let mut pipe = redis::pipe();
            for user in chunk {
                pipe.cmd("EVAL")
                    .arg(LEAVING)
                    .arg(2)
                    .arg(self.connections_key(*user))
                    .arg(self.online_key(*user))
                    .arg(&mine)
                    .arg(grace)
                    .arg(now_ms())
                    .ignore();
            }
            pipe.query_async::<()>(&mut self.redis.clone()).await?;
        }
        // Sent here, not through the publishing task: the process ends next.
        redis::cmd("PUBLISH")
            .arg(self.nodes_channel())
            .arg(notice)
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    /// Whether `user` is online on any node.
    pub async fn is_online(&self, user: UserId) -> Result<bool, ClusterError> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.online_key(user))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n == 1)
    }

    /// Renews the presence of every `(user, connection members)` this node
    /// holds; answers the users who had expired (Redis restarted, say) and are
    /// online again now.
    pub async fn refresh(&self, users: &[(UserId, Vec<ConnectionId>)]) -> Result<Vec<UserId>, ClusterError> {
        let mut back = Vec::new();
        for chunk in users.chunks(PIPELINE_USERS) {
            let mut pipe = redis::pipe();
            for (user, members) in chunk {
                members.iter().for_each(|c| self.add_connect(&mut pipe, *user, *c));
            }
            let answers: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await?;
            let mut answers = answers.into_iter();
            for (user, members) in chunk {
                let came_back = members.iter().fold(false, |any, _| answers.next() == Some(1) || any);
                if came_back {
                    back.push(*user);
                }
            }
        }
        Ok(back)
    }

    /// Of the watched users last seen online here, those now offline
    /// everywhere (their node died and their presence expired).
    pub async fn expired_watched(&self) -> Result<Vec<UserId>, ClusterError> {
        let users: Vec<UserId> = self.watched_online.iter().map(|e| *e.key()).collect();
        let mut gone = Vec::new();
        for chunk in users.chunks(PIPELINE_USERS) {
            let mut pipe = redis::pipe();
            chunk.iter().for_each(|u| {
                pipe.cmd("EXISTS").arg(self.online_key(*u));
            });
            let exists: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await?;
            gone.extend(chunk.iter().zip(exists).filter(|(_, e)| *e == 0).map(|(u, _)| *u));
        }
        Ok(gone)
    }

    /// Notes the presence this node last told its watchers of `user`
    /// (offline, too, once nobody here watches them: nothing to poll).
    pub fn note_presence(&self, user: UserId, online: bool) {
        if online {
            self.watched_online.insert(user, ());
        } else {
            self.watched_online.remove(&user);
        }
    }

    /// Whether Redis answers.
    pub async fn ping(&self) -> Result<(), ClusterError> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await?;
        if self.subscribed.load(Ordering::Relaxed) {
            Ok(())
        } else {
            Err(ClusterError(redis::RedisError::from((
                redis::ErrorKind::Io,
                "pub/sub connection down",
            ))))
        }
    }

    fn publish(&self, channel: String, payload: &Payload) {
        let _ = self.publish.send((channel, payload.encode(&self.origin)));
    }

    /// Tells `user`'s devices on other nodes about a message in their
    /// conversation with `item.peer` (`receive_message`), or that one of
    /// their messages was delivered (`message_delivered`).
    pub fn publish_sequenced(&self, user: UserId, kind: Kind, item: &Sequenced) {
        let payload = match kind {
            Kind::Delivered => Payload::Delivered(item.clone()),
            Kind::Message | Kind::Ack => Payload::Message(item.clone()),
        };
        self.publish(self.user_channel(user), &payload);
    }

    /// Relays a typing frame to `user`'s devices on other nodes.
    pub fn publish_typing(&self, user: UserId, frame: &Utf8Bytes) {
        self.publish(self.user_channel(user), &Payload::Typing(frame.clone()));
    }

    /// Tells every other node that sessions were revoked.
    pub fn publish_revoked(&self, user: UserId, revoked: Revoked) {
        self.publish(self.sessions_channel(), &Payload::Revoked { user, revoked });
    }

    /// Tells the other nodes' watchers of `user` about a presence change.
    pub fn publish_presence(&self, user: UserId, online: bool, frame: &Utf8Bytes) {
        let payload = Payload::Presence {
            online,
            frame: frame.clone(),
        };
        self.publish(self.presence_channel(user), &payload);
    }

    /// Decodes one pub/sub message; `None` for our own, for garbage, and
    /// for a payload on a channel it does not belong on.
    fn decode(&self, channel: &str, text: &str) -> Option<Incoming> {
        let rest = channel.strip_prefix(&self.prefix)?;
        let (kind_of_channel, id) = rest.split_once(':').unwrap_or((rest, "0"));
        let user = UserId(id.parse().ok()?);
        let (origin, payload) = Payload::decode(text)?;
        if origin == self.origin {
            return None;
        }
        match (kind_of_channel, payload) {
            ("user", Payload::Message(s)) => Some(Incoming::Message(user, s)),
            ("user", Payload::Delivered(s)) => Some(Incoming::Delivered(user, s)),
            ("user", Payload::Typing(frame)) => Some(Incoming::Typing(user, frame)),
            ("sessions", Payload::Revoked { user, revoked }) => Some(Incoming::Revoked(user, revoked)),
            ("presence", Payload::Presence { online, frame }) => Some(Incoming::Presence(user, online, frame)),
            ("nodes", Payload::NodeLeft { grace }) => Some(Incoming::NodeLeft(grace)),
            _ => None,
        }
    }
}

/// The cluster's background work, started by [`Cluster::start`].
pub struct Tasks {
    client: redis::Client,
    publish_rx: mpsc::UnboundedReceiver<(String, String)>,
    subs_rx: mpsc::UnboundedReceiver<SubCommand>,
}

impl Cluster {
    /// Starts publishing, and subscribing with `deliver` called for every
    /// message from another node. Both run until the process ends.
    pub fn start(self: &Arc<Self>, tasks: Tasks, deliver: impl Fn(Incoming) + Send + Sync + 'static) {
        tokio::spawn(publish_loop(self.redis.clone(), tasks.publish_rx));
        tokio::spawn(subscribe_loop(self.clone(), tasks.client, tasks.subs_rx, deliver));
    }
}

async fn publish_loop(mut redis: ConnectionManager, mut rx: mpsc::UnboundedReceiver<(String, String)>) {
    let mut batch = Vec::with_capacity(1024);
    while rx.recv_many(&mut batch, 1024).await > 0 {
        let mut pipe = redis::pipe();
        for (channel, payload) in batch.drain(..) {
            pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
        }
        if let Err(e) = pipe.query_async::<()>(&mut redis).await {
            // The messages are stored; their recipients catch up by gap fill
            // or at their next connect.
            tracing::warn!(error = %e, "could not publish to redis");
        }
    }
}

/// Owns the subscriptions: counts holds per channel, subscribes and
/// unsubscribes in batches (in order, from this one task), and after a lost
/// connection reconnects and subscribes to everything held again.
async fn subscribe_loop(
    cluster: Arc<Cluster>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    deliver: impl Fn(Incoming),
) {
    let mut held: HashMap<String, u32> = HashMap::new();
    let mut backoff = Duration::from_millis(100);
    let mut batch = Vec::new();
    loop {
        let connected = tokio::time::timeout(Duration::from_secs(2), client.get_async_pubsub()).await;
        let pubsub = match connected {
            Ok(Ok(pubsub)) => pubsub,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "redis pub/sub: cannot connect; retrying");
                wait_away(&mut commands, &mut held, backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
                continue;
            }
            Err(_) => {
                tracing::warn!("redis pub/sub: connect timed out; retrying");
                wait_away(&mut commands, &mut held, backoff).await;
                continue;
            }
        };
        let (mut sink, mut stream) = pubsub.split();
        let channels: Vec<&String> = held.keys().collect();
        let mut ok = true;
        for chunk in channels.chunks(1024) {
            if let Err(e) = sink.subscribe(chunk).await {
                tracing::warn!(error = %e, "redis pub/sub: resubscribing failed");
                ok = false;
                break;
            }
        }
        if !ok {
            continue;
        }
        backoff = Duration::from_millis(100);
        cluster.subscribed.store(true, Ordering::Relaxed);
        tracing::info!(channels = held.len(), "redis pub/sub connected");
        loop {
            tokio::select! {
                n = commands.recv_many(&mut batch, 4096) => {
                    if n == 0 {
                        return;
                    }
                    if let Err(e) = apply(&mut sink, &mut held, batch.drain(..)).await {
                        tracing::warn!(error = %e, "redis pub/sub: subscribing failed");
                        break;
                    }
                }
                message = stream.next() => {
                    let Some(message) = message else { break };
                    let (Ok(payload), channel) = (std::str::from_utf8(message.get_payload_bytes()), message.get_channel_name()) else {
                        continue;
                    };
                    if let Some(incoming) = cluster.decode(channel, payload) {
                        deliver(incoming);
                    }
                }
            }
        }
        cluster.subscribed.store(false, Ordering::Relaxed);
        tracing::warn!("redis pub/sub connection lost; reconnecting");
    }
}

/// Applies a batch of holds and releases: one UNSUBSCRIBE and one SUBSCRIBE
/// for the channels whose state changed, then answers the holders.
async fn apply(
    sink: &mut PubSubSink,
    held: &mut HashMap<String, u32>,
    commands: impl Iterator<Item = SubCommand>,
) -> redis::RedisResult<()> {
    let mut before: HashMap<String, bool> = HashMap::new();
    let mut waiting = Vec::new();
    for command in commands {
        match command {
            SubCommand::Hold(channel, done) => {
                before
                    .entry(channel.clone())
                    .or_insert_with(|| held.contains_key(&channel));
                *held.entry(channel).or_default() += 1;
                waiting.push(done);
            }
            SubCommand::Release(channel) => {
                before
                    .entry(channel.clone())
                    .or_insert_with(|| held.contains_key(&channel));
                release_one(held, &channel);
            }
        }
    }
    let (mut subscribe, mut unsubscribe) = (Vec::new(), Vec::new());
    for (channel, was) in before {
        match (was, held.contains_key(&channel)) {
            (false, true) => subscribe.push(channel),
            (true, false) => unsubscribe.push(channel),
            _ => {}
        }
    }
    if !unsubscribe.is_empty() {
        sink.unsubscribe(&unsubscribe).await?;
    }
    if !subscribe.is_empty() {
        sink.subscribe(&subscribe).await?;
    }
    waiting.into_iter().for_each(|w| {
        let _ = w.send(());
    });
    Ok(())
}

/// While Redis is away: keep counting holds (they are subscribed on
/// reconnect) and let holders go on at once.
async fn wait_away(
    commands: &mut mpsc::UnboundedReceiver<SubCommand>,
    held: &mut HashMap<String, u32>,
    wait: Duration,
) {
    let until = tokio::time::Instant::now() + wait;
    loop {
        let command = tokio::select! {
            c = commands.recv() => c,
            () = tokio::time::sleep_until(until) => return,
        };
        match command {
            Some(SubCommand::Hold(channel, done)) => {
                *held.entry(channel).or_default() += 1;
                let _ = done.send(());
            }
            Some(SubCommand::Release(channel)) => release_one(held, &channel),
            None => return,
        }
    }
}

fn release_one(held: &mut HashMap<String, u32>, channel: &str) {
    if let Some(n) = held.get_mut(channel) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            held.remove(channel);
        }
    }
}

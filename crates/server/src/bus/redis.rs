//! The bus over Redis pub/sub, for a cluster.
//!
//! Each topic is a channel: `user:{id}` and `presence:{id}`, held while a
//! node has a connection of the user or a watcher of them, and `sessions`
//! and `nodes`, which every node holds. Redis hands each payload to exactly
//! the nodes subscribed; a node's subscriptions die with its socket, so a
//! dead node leaves nothing behind. Every payload names the process that
//! published it, and a node skips its own.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dyad_protocol::UserId;
use futures_util::StreamExt;
use redis::aio::{ConnectionManager, PubSubSink};
use tokio::sync::{mpsc, oneshot};

use super::{Bus, Deliver, Payload, Topic};
use crate::cluster::ClusterError;

/// Payloads waiting to be published, at most; past it new ones are dropped
/// (they are stored, and their recipients catch up by gap fill or replay).
const PUBLISH_QUEUE: usize = 65_536;

/// Bytes of payloads waiting to be published, at most: a queue of long
/// messages is full long before it holds [`PUBLISH_QUEUE`] of them.
const PUBLISH_QUEUE_BYTES: usize = 64 << 20;

/// Payloads per publishing pipeline.
const PUBLISH_BATCH: usize = 1024;

/// An item in the publishing queue.
enum Out {
    /// A payload for a channel.
    Payload(String, String),
    /// Answer once everything before it went out.
    Flush(oneshot::Sender<()>),
}

enum SubCommand {
    Hold(String, oneshot::Sender<()>),
    Release(String),
}

/// One node's link to the cluster's pub/sub.
pub struct RedisBus {
    channels: Channels,
    redis: ConnectionManager,
    publish: mpsc::Sender<Out>,
    subscriptions: mpsc::UnboundedSender<SubCommand>,
    subscribed: std::sync::Arc<AtomicBool>,
    /// Payloads dropped because the publishing queue was full.
    dropped: AtomicU64,
    /// Bytes in the publishing queue.
    queued_bytes: std::sync::Arc<AtomicUsize>,
    /// The background work, until [`Bus::start`] takes it.
    tasks: Mutex<Option<Tasks>>,
}

struct Tasks {
    client: redis::Client,
    publish_rx: mpsc::Receiver<Out>,
    subs_rx: mpsc::UnboundedReceiver<SubCommand>,
}

impl RedisBus {
    /// A bus for node `node_id` over `client`, with every channel name
    /// starting with `prefix`. Nothing is sent until [`Bus::start`].
    pub fn new(client: redis::Client, redis: ConnectionManager, node_id: &str, prefix: &str) -> Self {
        let (publish, publish_rx) = mpsc::channel(PUBLISH_QUEUE);
        let (subscriptions, subs_rx) = mpsc::unbounded_channel();
        let mut nonce = [0u8; 8];
        let _ = getrandom::fill(&mut nonce);
        RedisBus {
            channels: Channels {
                prefix: prefix.to_owned(),
                origin: format!("{node_id}.{:016x}", u64::from_le_bytes(nonce)),
            },
            redis,
            publish,
            subscriptions,
            subscribed: std::sync::Arc::new(AtomicBool::new(false)),
            dropped: AtomicU64::new(0),
            queued_bytes: std::sync::Arc::new(AtomicUsize::new(0)),
            tasks: Mutex::new(Some(Tasks {
                client,
                publish_rx,
                subs_rx,
            })),
        }
    }
}

#[async_trait]
impl Bus for RedisBus {
    fn start(&self, deliver: Deliver) {
        let Some(tasks) = self.tasks.lock().ok().and_then(|mut t| t.take()) else {
            return;
        };
        tokio::spawn(publish_loop(
            self.redis.clone(),
            tasks.publish_rx,
            self.queued_bytes.clone(),
        ));
        tokio::spawn(subscribe_loop(
            self.channels.clone(),
            self.subscribed.clone(),
            tasks.client,
            tasks.subs_rx,
            deliver,
        ));
    }

    async fn hold(&self, topic: Topic) {
        let (tx, rx) = oneshot::channel();
        if self
            .subscriptions
            .send(SubCommand::Hold(self.channels.name(topic), tx))
            .is_ok()
        {
            let _ = rx.await;
        }
    }

    fn release(&self, topic: Topic) {
        let _ = self.subscriptions.send(SubCommand::Release(self.channels.name(topic)));
    }

    fn publish(&self, topic: Topic, payload: Payload) {
        let (channel, text) = (self.channels.name(topic), payload.encode(&self.channels.origin));
        let size = channel.len() + text.len();
        let queued = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        let full = queued + size > PUBLISH_QUEUE_BYTES
            || matches!(
                self.publish.try_send(Out::Payload(channel, text)),
                Err(mpsc::error::TrySendError::Full(_))
            );
        if full {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            // Said at the 1st, 2nd, 4th, 8th… drop: Redis away means many.
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            if dropped.is_power_of_two() {
                tracing::warn!(
                    dropped,
                    "redis publishing queue full; payloads dropped (they are stored)"
                );
            }
        }
    }

    async fn flush(&self) {
        let (tx, rx) = oneshot::channel();
        if self.publish.send(Out::Flush(tx)).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn ping(&self) -> Result<(), ClusterError> {
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
}

/// Channel names, and who published what.
#[derive(Clone)]
struct Channels {
    prefix: String,
    /// This process, in every payload it publishes: node name and a nonce.
    origin: String,
}

impl Channels {
    fn name(&self, topic: Topic) -> String {
        let prefix = &self.prefix;
        match topic {
            Topic::User(user) => format!("{prefix}user:{}", user.get()),
            Topic::Presence(user) => format!("{prefix}presence:{}", user.get()),
            Topic::Sessions => format!("{prefix}sessions"),
            Topic::Nodes => format!("{prefix}nodes"),
        }
    }

    /// One pub/sub message as a topic and payload; `None` for our own, and
    /// for garbage or a channel that is not ours.
    fn decode(&self, channel: &str, text: &str) -> Option<(Topic, Payload)> {
        let rest = channel.strip_prefix(&self.prefix)?;
        let user = |id: &str| id.parse().ok().map(UserId);
        let topic = match rest.split_once(':') {
            Some(("user", id)) => Topic::User(user(id)?),
            Some(("presence", id)) => Topic::Presence(user(id)?),
            None if rest == "sessions" => Topic::Sessions,
            None if rest == "nodes" => Topic::Nodes,
            _ => return None,
        };
        let (origin, payload) = Payload::decode(text)?;
        (origin != self.origin).then_some((topic, payload))
    }
}

async fn publish_loop(
    mut redis: ConnectionManager,
    mut rx: mpsc::Receiver<Out>,
    queued_bytes: std::sync::Arc<AtomicUsize>,
) {
    let mut batch = Vec::with_capacity(PUBLISH_BATCH);
    while rx.recv_many(&mut batch, PUBLISH_BATCH).await > 0 {
        let mut pipe = redis::pipe();
        let (mut payloads, mut flushed) = (0, Vec::new());
        for out in batch.drain(..) {
            match out {
                Out::Payload(channel, payload) => {
                    queued_bytes.fetch_sub(channel.len() + payload.len(), Ordering::Relaxed);
                    pipe.cmd("PUBLISH").arg(channel).arg(payload).ignore();
                    payloads += 1;
                }
                Out::Flush(done) => flushed.push(done),
            }
        }
        if payloads > 0
            && let Err(e) = pipe.query_async::<()>(&mut redis).await
        {
            // The messages are stored; their recipients catch up by gap fill
            // or at their next connect.
            tracing::warn!(error = %e, "could not publish to redis");
        }
        flushed.into_iter().for_each(|done| {
            let _ = done.send(());
        });
    }
}

/// Owns the subscriptions: counts holds per channel, subscribes and
/// unsubscribes in batches (in order, from this one task), and after a lost
/// connection reconnects and subscribes to everything held again.
async fn subscribe_loop(
    channels: Channels,
    subscribed: std::sync::Arc<AtomicBool>,
    client: redis::Client,
    mut commands: mpsc::UnboundedReceiver<SubCommand>,
    deliver: Deliver,
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
        let resubscribe: Vec<&String> = held.keys().collect();
        let mut ok = true;
        for chunk in resubscribe.chunks(1024) {
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
        subscribed.store(true, Ordering::Relaxed);
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
                    let (Ok(text), channel) = (std::str::from_utf8(message.get_payload_bytes()), message.get_channel_name()) else {
                        continue;
                    };
                    if let Some((topic, payload)) = channels.decode(channel, text) {
                        deliver(topic, payload);
                    }
                }
            }
        }
        subscribed.store(false, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    //! The publishing queue's bounds, on the machine's Redis (CI starts it).

    use dyad_protocol::UserId;

    use super::*;
    use crate::codec::Frame;

    /// A bus never started: nothing drains its queue, as when Redis is away.
    async fn stalled_bus() -> RedisBus {
        let url = std::env::var("DYAD_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379/".into());
        let client = redis::Client::open(url.as_str()).unwrap_or_else(|e| panic!("{e}"));
        let manager = client
            .get_connection_manager()
            .await
            .unwrap_or_else(|e| panic!("Redis at {url} is needed: {e}"));
        RedisBus::new(client, manager, "bounds", "test-bounds:")
    }

    #[tokio::test]
    async fn the_publishing_queue_holds_at_most_its_bytes_and_entries() {
        let bus = stalled_bus().await;
        let long = Payload::Typing(Frame::from("x".repeat(60_000)));
        for _ in 0..2_000 {
            bus.publish(Topic::User(UserId(1)), long.clone());
        }
        let queued = bus.queued_bytes.load(Ordering::Relaxed);
        assert!(queued <= PUBLISH_QUEUE_BYTES, "{queued} bytes queued");
        assert!(queued > PUBLISH_QUEUE_BYTES - 70_000, "it filled up: {queued}");
        assert!(bus.dropped.load(Ordering::Relaxed) > 0);
        let bus = stalled_bus().await;
        let short = Payload::Typing(Frame::from("{}"));
        for _ in 0..PUBLISH_QUEUE + 10 {
            bus.publish(Topic::User(UserId(1)), short.clone());
        }
        assert_eq!(bus.publish.capacity(), 0, "full at {PUBLISH_QUEUE} entries");
        assert_eq!(bus.dropped.load(Ordering::Relaxed), 10, "and the rest dropped");
        assert!(bus.queued_bytes.load(Ordering::Relaxed) < PUBLISH_QUEUE_BYTES);
    }
}

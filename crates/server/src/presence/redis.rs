//! Presence in Redis, shared by a cluster.
//!
//! Per user, two keys: `user:connections:{id}`, a sorted set of the user's
//! connections (`node/connection`) scored by when each expires, and
//! `user:online:{id}`, which exists while the user is online. Both live for
//! the TTL and each node renews its own entries a few times per TTL, so a
//! node that dies takes its users offline within it. The scripts keep the
//! two keys consistent in one step.

use std::time::Duration;

use async_trait::async_trait;
use dyad_protocol::{ConnectionId, UserId};
use redis::aio::ConnectionManager;

use super::{Presence, PresenceResult};
use crate::clock::now_ms;

/// Users per Redis pipeline in the per-user sweeps (renewal, polling,
/// leaving): one round trip each, none too large for Redis to answer at once.
const PIPELINE_USERS: usize = 512;

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

/// One node's view of the cluster's presence.
pub struct RedisPresence {
    redis: ConnectionManager,
    node_id: String,
    prefix: String,
    ttl: Duration,
}

impl RedisPresence {
    /// Presence for node `node_id` over `redis`, with every key starting
    /// with `prefix` and entries living `ttl` (at least a second) unless renewed.
    pub fn new(redis: ConnectionManager, node_id: &str, prefix: &str, ttl: Duration) -> Self {
        RedisPresence {
            redis,
            node_id: node_id.to_owned(),
            prefix: prefix.to_owned(),
            ttl: ttl.max(Duration::from_secs(1)),
        }
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
}

#[async_trait]
impl Presence for RedisPresence {
    async fn connected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<bool> {
        let mut pipe = redis::pipe();
        self.add_connect(&mut pipe, user, connection);
        let answers: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await?;
        Ok(answers.first() == Some(&1))
    }

    async fn disconnected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<()> {
        redis::cmd("ZREM")
            .arg(self.connections_key(user))
            .arg(self.member(connection))
            .query_async::<()>(&mut self.redis.clone())
            .await?;
        Ok(())
    }

    async fn grace_over(&self, user: UserId) -> PresenceResult<bool> {
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

    async fn is_online(&self, user: UserId) -> PresenceResult<bool> {
        let n: i64 = redis::cmd("EXISTS")
            .arg(self.online_key(user))
            .query_async(&mut self.redis.clone())
            .await?;
        Ok(n == 1)
    }

    async fn offline_among(&self, users: &[UserId]) -> PresenceResult<Vec<UserId>> {
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

    async fn renew(&self, connected: &[(UserId, Vec<ConnectionId>)]) -> PresenceResult<Vec<UserId>> {
        let mut back = Vec::new();
        for chunk in connected.chunks(PIPELINE_USERS) {
            let mut pipe = redis::pipe();
            for (user, connections) in chunk {
                connections.iter().for_each(|c| self.add_connect(&mut pipe, *user, *c));
            }
            let answers: Vec<i64> = pipe.query_async(&mut self.redis.clone()).await?;
            let mut answers = answers.into_iter();
            for (user, connections) in chunk {
                let came_back = connections
                    .iter()
                    .fold(false, |any, _| answers.next() == Some(1) || any);
                if came_back {
                    back.push(*user);
                }
            }
        }
        Ok(back)
    }

    /// A third of the TTL, so that one lost round is harmless.
    fn renew_every(&self) -> Duration {
        (self.ttl / 3).max(Duration::from_millis(200))
    }

    async fn leaving(&self, users: &[UserId], grace: Duration) -> PresenceResult<()> {
        let mine = format!("{}/", self.node_id);
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
        Ok(())
    }

    async fn ping(&self) -> PresenceResult<()> {
        let _: String = redis::cmd("PING").query_async(&mut self.redis.clone()).await?;
        Ok(())
    }
}

//! How nodes share what one node keeps to itself: [`Presence`] and the
//! [`Bus`]. A node alone keeps both in process; nodes in a cluster share
//! them through Redis (and their messages through PostgreSQL). This is the
//! one place that tells the two deployments apart; everything above the two
//! traits runs the same code on either.
//!
//! Redis is not the source of truth for messages: the store is. A message
//! whose publication is lost (Redis restarting) is still stored and pending;
//! a later message in the same conversation makes the recipient's
//! connection fetch it (see [`crate::outbound`]), and the next connect
//! replays it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::ConnectionManagerConfig;

use crate::bus::{Bus, LocalBus, RedisBus};
use crate::presence::{LocalPresence, Presence, RedisPresence};

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

impl ClusterConfig {
    /// How long presence outlives its node's last heartbeat unless told.
    pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(300);
}

/// The shared backend (Redis) failed.
#[derive(Debug, thiserror::Error)]
#[error("redis: {0}")]
pub struct ClusterError(#[from] pub redis::RedisError);

/// What a node shares with the others.
pub struct Shared {
    /// Who is online.
    pub presence: Arc<dyn Presence>,
    /// How events reach other nodes.
    pub bus: Arc<dyn Bus>,
}

impl Shared {
    /// A node on its own: presence and bus in process.
    pub fn alone() -> Self {
        Shared {
            presence: Arc::new(LocalPresence::new()),
            bus: Arc::new(LocalBus::new()),
        }
    }

    /// A cluster node: presence and bus in Redis, which must answer now.
    pub async fn join(config: &ClusterConfig) -> Result<Self, ClusterError> {
        let client = redis::Client::open(config.redis_url.as_str())?;
        let manager = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(1)))
            .set_response_timeout(Some(Duration::from_secs(1)))
            .set_number_of_retries(2)
            .set_max_delay(Duration::from_secs(1));
        let redis = client.get_connection_manager_with_config(manager).await?;
        let presence = RedisPresence::new(redis.clone(), &config.node_id, &config.prefix, config.presence_ttl);
        let bus = RedisBus::new(client, redis, &config.node_id, &config.prefix);
        Ok(Shared {
            presence: Arc::new(presence),
            bus: Arc::new(bus),
        })
    }
}

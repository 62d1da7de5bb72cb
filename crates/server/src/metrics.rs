//! Prometheus metrics, served as text at `/metrics`.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use crate::abuse::GuardMetrics;

/// The server's counters. Cloning a metric shares it.
pub struct Metrics {
    registry: Registry,
    /// Messages newly stored.
    pub messages_stored: Counter,
    /// Retries answered with the original ack.
    pub duplicate_sends: Counter,
    /// Messages turned from sent to delivered.
    pub messages_delivered: Counter,
    /// Transactions run by the group commit.
    pub commit_batches: Counter,
    /// Transactions that failed (their sends were answered `unavailable`).
    pub commit_failures: Counter,
    /// Operations per transaction.
    pub commit_batch_size: Histogram,
    /// Time per transaction.
    pub commit_seconds: Histogram,
    /// Open WebSocket connections.
    pub connections: Gauge,
    /// Connections closed for falling behind.
    pub slow_consumers: Counter,
    /// Frames refused with an `error` event.
    pub refused_frames: Counter,
    /// Cluster connections that read missing messages from the store.
    pub gap_fills: Counter,
    /// Open TCP connections (HTTP and WebSocket).
    pub tcp_connections: Gauge,
    /// Refusals by abuse limit, and the hashing queue's waits and turns.
    pub guard: GuardMetrics,
    /// From a send's frame read to its ack queued on its connection.
    pub send_ack_seconds: Histogram,
    /// Writes waiting for the group commit when a batch starts.
    pub commit_queue_depth: Histogram,
    /// WebSocket connections by state: `replaying` (sending what arrived
    /// while the user was away) or `live`.
    pub connections_by_state: Family<[(&'static str, &'static str); 1], Gauge>,
}

/// A connection's place in `connections_by_state`, moved from state to
/// state and let go of when dropped.
pub struct ConnectionState<'a> {
    metrics: &'a Metrics,
    state: &'static str,
}

impl<'a> ConnectionState<'a> {
    /// Counts a connection in `state`.
    pub fn new(metrics: &'a Metrics, state: &'static str) -> Self {
        metrics.connections_by_state.get_or_create(&[("state", state)]).inc();
        ConnectionState { metrics, state }
    }

    /// Moves the connection to `state`.
    pub fn set(&mut self, state: &'static str) {
        let gauges = &self.metrics.connections_by_state;
        gauges.get_or_create(&[("state", self.state)]).dec();
        gauges.get_or_create(&[("state", state)]).inc();
        self.state = state;
    }
}

impl Drop for ConnectionState<'_> {
    fn drop(&mut self) {
        self.metrics
            .connections_by_state
            .get_or_create(&[("state", self.state)])
            .dec();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("dyad");
        let m = Metrics {
            messages_stored: Counter::default(),
            duplicate_sends: Counter::default(),
            messages_delivered: Counter::default(),
            commit_batches: Counter::default(),
            commit_failures: Counter::default(),
            commit_batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            commit_seconds: Histogram::new(exponential_buckets(0.000_05, 2.0, 16)),
            connections: Gauge::default(),
            slow_consumers: Counter::default(),
            refused_frames: Counter::default(),
            gap_fills: Counter::default(),
            tcp_connections: Gauge::default(),
            guard: GuardMetrics::default(),
            send_ack_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            commit_queue_depth: Histogram::new(exponential_buckets(1.0, 2.0, 16)),
            connections_by_state: Family::default(),
            registry: Registry::default(),
        };
        registry.register("messages_stored", "Messages newly stored", m.messages_stored.clone());
        registry.register(
            "duplicate_sends",
            "Retried sends answered with the original ack",
            m.duplicate_sends.clone(),
        );
        registry.register(
            "messages_delivered",
            "Messages acknowledged by a recipient device",
            m.messages_delivered.clone(),
        );
        registry.register("commit_batches", "Group-commit transactions", m.commit_batches.clone());
        registry.register(
            "commit_failures",
            "Group-commit transactions that failed",
            m.commit_failures.clone(),
        );
        registry.register(
            "commit_batch_size",
            "Operations per group-commit transaction",
            m.commit_batch_size.clone(),
        );
        registry.register(
            "commit_seconds",
            "Duration of group-commit transactions",
            m.commit_seconds.clone(),
        );
        registry.register("connections", "Open WebSocket connections", m.connections.clone());
        registry.register(
            "slow_consumers",
            "Connections closed for falling behind",
            m.slow_consumers.clone(),
        );
        registry.register(
            "refused_frames",
            "Client frames refused with an error event",
            m.refused_frames.clone(),
        );
        registry.register(
            "gap_fills",
            "Times a cluster connection read messages missing from pub/sub from the store",
            m.gap_fills.clone(),
        );
        registry.register(
            "tcp_connections",
            "Open TCP connections, HTTP and WebSocket",
            m.tcp_connections.clone(),
        );
        registry.register(
            "refused",
            "Requests and connections refused by an abuse limit, by limit",
            m.guard.refused.clone(),
        );
        registry.register(
            "hashing_wait_seconds",
            "Time waited for a turn in the password hashing queue, by the address's standing",
            m.guard.hashing_wait.clone(),
        );
        registry.register(
            "hashing_seconds",
            "Time a password hash held its turn in the hashing queue",
            m.guard.hashing_held.clone(),
        );
        registry.register(
            "send_ack_seconds",
            "From a send's frame read to its ack queued on its connection",
            m.send_ack_seconds.clone(),
        );
        registry.register(
            "commit_queue_depth",
            "Writes waiting for the group commit when a batch starts",
            m.commit_queue_depth.clone(),
        );
        registry.register(
            "connections_by_state",
            "WebSocket connections by state: replaying what waited for the user, or live",
            m.connections_by_state.clone(),
        );
        Metrics { registry, ..m }
    }
}

impl Metrics {
    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics failed");
        }
        out
    }
}

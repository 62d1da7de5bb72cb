//! Limits that keep one client from taking the server from everyone else:
//! per source address (registrations, login attempts, open TCP connections,
//! places in the password-hashing queue) and per user (open WebSockets).
//!
//! Every limit is checked before the work it protects, and every refusal is
//! logged with its source address and counted in `dyad_refused_total` under
//! the limit's name.
//!
//! Every map keyed by client input in the server is bounded, in entries and
//! in bytes:
//!
//! | map | key | bound |
//! |---|---|---|
//! | login throttle (`accounts.rs`) | 64-bit keyed hash of (username, address) | 100,000 entries (LRU), ~50 bytes each; test `throttle_memory_is_bounded_however_many_and_long_the_names` |
//! | registrations per address (`abuse/buckets.rs`) | address (IPv6: /64) | 65,536 entries (LRU); test `the_map_never_holds_more_than_its_bound` |
//! | login attempts per address | address | 65,536 entries (LRU) |
//! | addresses with a failed login (hashing standing, `abuse/mod.rs`) | address | 65,536 entries (LRU); test `failed_logins_cost_standing_for_a_while_and_their_memory_is_bounded` |
//! | open TCP connections per address (`abuse/counts.rs`) | address | one entry per address with an open connection: at most `--max-connections`; test `a_key_holds_at_most_its_limit_and_leaves_no_entry_when_done` |
//! | hashing queue (`abuse/hashing.rs`) | address | 64 places in all, 2 per address; tests `an_address_holds_at_most_its_share_and_a_full_queue_refuses_at_once`, `a_waiter_that_gives_up_frees_its_place` |
//! | open WebSockets per user | user id (authenticated) | one entry per user with an open socket |
//! | session cache (`accounts.rs`) | SHA-256 of a valid token | 200,000 entries (cleared when full), each trusted 60 s |
//! | recently revoked sessions | session id (authenticated logout) | entries older than 60 s dropped on each insert; test `revoked_sessions_and_deleted_users_are_remembered_for_the_cache_ttl_only` |
//! | recently deleted accounts | user id (authenticated, password confirmed) | the same, and each cost a password hash |
//! | recipients known to exist, per connection (typing) | user id | 16 per connection |
//! | flood-control buckets (`flood.rs`) | user id (authenticated) | one per user who sent lately; full buckets swept every 10 s |
//! | watched users per connection | user id | 1,000 per connection |
//! | ids learned by a retried send, per connection (`outbound.rs`) | message id | 10,000 per connection; test `a_connection_learns_at_most_max_learned_old_messages` |
//! | bus holds (`bus/local.rs`) | topic of a connected or watched user | one per such topic and node, gone at the last release: bounded by the connections and their 1,000 watched users each; test `holds_leave_no_entry_once_released` |
//! | presence entries (`presence/local.rs`) | user id (authenticated) | one per online user, gone when they go offline; test `a_user_leaves_no_entry_once_offline` |
//! | watched users last told online (`hub/`) | user id | one per user watched here (1,000 per connection), gone when nobody here watches |
//! | sessions used since the last write (`accounts.rs`) | session id (authenticated) | 200,000, emptied every minute; test `sessions_noted_as_used_are_bounded_and_taken_once` |
//! | Redis publishing queue (`bus/redis.rs`) | none | 65,536 payloads and 64 MiB; past either new ones are dropped (they are stored: gap fill and replay catch up); test `the_publishing_queue_holds_at_most_its_bytes_and_entries` |
//!
//! A forgotten LRU entry starts over with a full budget; only a client with
//! that many addresses can arrange that. Request bodies are capped at 16 KiB,
//! so no key is ever built from more than that (the throttle hashes even that
//! down to 8 bytes).

pub mod address;
pub mod buckets;
pub mod counts;
pub mod hashing;

use std::net::IpAddr;
use std::time::Duration;

use dyad_protocol::UserId;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};

pub use address::{AddressKey, is_trusted_proxy, source_address};
use buckets::RateByKey;
use counts::{OpenCounts, OpenPermit};
pub use hashing::{HashingQueue, HashingRefused, HashingSlot};

/// Most addresses whose registration or login budget is remembered; past
/// it the address seen least recently is forgotten.
pub const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// How long a failed login puts its address behind the others in the hashing queue.
pub const FAILURE_STANDING: Duration = Duration::from_secs(15 * 60);

/// The per-address and per-user limits (`--abuse-limits off` turns them all off).
#[derive(Debug, Clone)]
pub struct AbuseLimits {
    /// Whether the limits below apply at all.
    pub enabled: bool,
    /// Registrations per address per hour.
    pub registrations_per_hour: u32,
    /// Login attempts per address per minute.
    pub logins_per_minute: u32,
    /// Open TCP connections per address.
    pub connections_per_address: u32,
    /// Open WebSockets per user.
    pub websockets_per_user: u32,
    /// Places (running or waiting) one address may hold in the hashing queue.
    pub hashing_per_address: usize,
    /// Places in the hashing queue in all.
    pub hashing_queue: usize,
}

impl Default for AbuseLimits {
    fn default() -> Self {
        AbuseLimits {
            enabled: true,
            registrations_per_hour: 10,
            logins_per_minute: 30,
            connections_per_address: 256,
            websockets_per_user: 32,
            hashing_per_address: 2,
            hashing_queue: 64,
        }
    }
}

impl AbuseLimits {
    /// Every limit off (load tests from one address).
    pub fn off() -> Self {
        AbuseLimits {
            enabled: false,
            ..AbuseLimits::default()
        }
    }
}

/// A limit, as logs and metrics name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Registrations per address.
    Registrations,
    /// Login attempts per address.
    LoginAttempts,
    /// Failed logins per username and address.
    FailedLogins,
    /// Wrong password or unknown user.
    InvalidCredentials,
    /// Open TCP connections per address.
    ConnectionsPerAddress,
    /// Open TCP connections in all.
    Connections,
    /// Open WebSockets per user.
    WebSocketsPerUser,
    /// Hashing places per address.
    HashingPerAddress,
    /// Hashing places in all.
    HashingQueue,
    /// A WebSocket upgrade from a foreign origin.
    Origin,
    /// Registration is closed.
    RegistrationClosed,
}

impl Limit {
    /// The name in logs and in the `limit` label.
    pub fn as_str(self) -> &'static str {
        match self {
            Limit::Registrations => "registrations_per_address",
            Limit::LoginAttempts => "login_attempts_per_address",
            Limit::FailedLogins => "failed_logins_per_username_and_address",
            Limit::InvalidCredentials => "invalid_credentials",
            Limit::ConnectionsPerAddress => "connections_per_address",
            Limit::Connections => "connections_total",
            Limit::WebSocketsPerUser => "websockets_per_user",
            Limit::HashingPerAddress => "hashing_per_address",
            Limit::HashingQueue => "hashing_queue",
            Limit::Origin => "websocket_origin",
            Limit::RegistrationClosed => "registration_closed",
        }
    }
}

/// The state behind the limits.
pub struct AbuseGuard {
    limits: AbuseLimits,
    registrations: RateByKey<AddressKey>,
    logins: RateByKey<AddressKey>,
    connections: OpenCounts<AddressKey>,
    websockets: OpenCounts<UserId>,
    hashing: HashingQueue,
    /// Addresses with a failed login lately, with when.
    failing: std::sync::Mutex<lru::LruCache<AddressKey, tokio::time::Instant>>,
    metrics: GuardMetrics,
}

/// A metric family with one label.
type ByLabel<M, C = fn() -> M> = Family<[(&'static str, &'static str); 1], M, C>;

/// What the guard counts for `/metrics`. Cloning shares the metrics.
#[derive(Clone)]
pub struct GuardMetrics {
    /// Requests and connections refused, by limit.
    pub refused: ByLabel<Counter>,
    /// Time waited for a turn in the hashing queue, by the address's
    /// standing (`good`, or `failing` after a failed login).
    pub hashing_wait: ByLabel<Histogram>,
    /// Time a password hash held its turn: the hash itself.
    pub hashing_held: Histogram,
}

fn hashing_histogram() -> Histogram {
    // 1 ms to 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

impl Default for GuardMetrics {
    fn default() -> Self {
        GuardMetrics {
            refused: Family::default(),
            hashing_wait: Family::new_with_constructor(hashing_histogram),
            hashing_held: hashing_histogram(),
        }
    }
}

/// A turn in the hashing queue; dropping it hands the turn on and counts
/// how long it was held.
pub struct HashingTurn {
    _slot: HashingSlot,
    since: std::time::Instant,
    held: Histogram,
}

impl Drop for HashingTurn {
    fn drop(&mut self) {
        self.held.observe(self.since.elapsed().as_secs_f64());
    }
}

impl AbuseGuard {
    /// Limits as `limits` says; refusals and hashing turns counted in `metrics`.
    pub fn new(limits: AbuseLimits, metrics: GuardMetrics) -> Self {
        let on = limits.enabled;
        AbuseGuard {
            registrations: RateByKey::new(
                f64::from(limits.registrations_per_hour) / 3600.0,
                limits.registrations_per_hour,
                MAX_TRACKED_ADDRESSES,
            ),
            logins: RateByKey::new(
                f64::from(limits.logins_per_minute) / 60.0,
                limits.logins_per_minute,
                MAX_TRACKED_ADDRESSES,
            ),
            connections: OpenCounts::new(if on { limits.connections_per_address } else { 0 }),
            websockets: OpenCounts::new(if on { limits.websockets_per_user } else { 0 }),
            // Off, an address may hold the whole queue (one-address load tests).
            hashing: HashingQueue::new(
                1,
                if on {
                    limits.hashing_per_address
                } else {
                    limits.hashing_queue
                },
                limits.hashing_queue,
            ),
            failing: std::sync::Mutex::new(lru::LruCache::new(
                std::num::NonZeroUsize::new(MAX_TRACKED_ADDRESSES).unwrap_or(std::num::NonZeroUsize::MIN),
            )),
            limits,
            metrics,
        }
    }

    /// Notes a failed login from `source`: it loses its good standing in
    /// the hashing queue for [`FAILURE_STANDING`].
    pub fn failed_login(&self, source: IpAddr) {
        if let Ok(mut failing) = self.failing.lock() {
            failing.put(AddressKey::of(source), tokio::time::Instant::now());
        }
    }

    fn good_standing(&self, key: AddressKey) -> bool {
        self.failing
            .lock()
            .is_ok_and(|mut failing| failing.get(&key).is_none_or(|at| at.elapsed() >= FAILURE_STANDING))
    }

    /// Logs and counts a refusal: a wrong password at `info` (people
    /// mistype), a limit hit at `warn`.
    pub fn refused(&self, limit: Limit, source: IpAddr, detail: &str) {
        self.metrics.refused.get_or_create(&[("limit", limit.as_str())]).inc();
        if limit == Limit::InvalidCredentials {
            tracing::info!(limit = limit.as_str(), source = %source, detail, "refused");
        } else {
            tracing::warn!(limit = limit.as_str(), source = %source, detail, "refused");
        }
    }

    /// A registration from `source`, or how long until one is allowed.
    pub fn registration(&self, source: IpAddr) -> Result<(), Duration> {
        self.take(&self.registrations, Limit::Registrations, source)
    }

    /// A login attempt from `source`, or how long until one is allowed.
    pub fn login_attempt(&self, source: IpAddr) -> Result<(), Duration> {
        self.take(&self.logins, Limit::LoginAttempts, source)
    }

    fn take(&self, rate: &RateByKey<AddressKey>, limit: Limit, source: IpAddr) -> Result<(), Duration> {
        if !self.limits.enabled {
            return Ok(());
        }
        rate.take(AddressKey::of(source))
            .inspect_err(|_| self.refused(limit, source, ""))
    }

    /// A place for one more TCP connection from `source`.
    pub fn connection(&self, source: IpAddr) -> Option<OpenPermit<AddressKey>> {
        let permit = self.connections.open(AddressKey::of(source));
        if permit.is_none() {
            self.refused(Limit::ConnectionsPerAddress, source, "");
        }
        permit
    }

    /// A place for one more WebSocket of `user`.
    pub fn websocket(&self, user: UserId, source: IpAddr) -> Option<OpenPermit<UserId>> {
        let permit = self.websockets.open(user);
        if permit.is_none() {
            self.refused(Limit::WebSocketsPerUser, source, &user.to_string());
        }
        permit
    }

    /// A turn in the hashing queue for `source`.
    pub async fn hashing(&self, source: IpAddr) -> Result<HashingTurn, HashingRefused> {
        let key = AddressKey::of(source);
        let good = self.good_standing(key);
        let asked = std::time::Instant::now();
        let slot = self.hashing.slot(key, good).await;
        match slot {
            Err(HashingRefused::AddressBusy) => self.refused(Limit::HashingPerAddress, source, ""),
            Err(HashingRefused::QueueFull) => self.refused(Limit::HashingQueue, source, ""),
            Ok(_) => {}
        }
        let slot = slot?;
        let since = std::time::Instant::now();
        let standing = if good { "good" } else { "failing" };
        self.metrics
            .hashing_wait
            .get_or_create(&[("standing", standing)])
            .observe(since.duration_since(asked).as_secs_f64());
        Ok(HashingTurn {
            _slot: slot,
            since,
            held: self.metrics.hashing_held.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn failed_logins_cost_standing_for_a_while_and_their_memory_is_bounded() {
        let guard = AbuseGuard::new(AbuseLimits::default(), GuardMetrics::default());
        let ip = |n: u32| IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + n));
        guard.failed_login(ip(1));
        assert!(!guard.good_standing(AddressKey::of(ip(1))));
        assert!(guard.good_standing(AddressKey::of(ip(2))));
        tokio::time::advance(FAILURE_STANDING).await;
        assert!(guard.good_standing(AddressKey::of(ip(1))));
        for n in 0..(MAX_TRACKED_ADDRESSES as u32 + 1000) {
            guard.failed_login(ip(n));
        }
        assert_eq!(guard.failing.lock().map_or(0, |f| f.len()), MAX_TRACKED_ADDRESSES);
    }
}

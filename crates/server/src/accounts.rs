//! Accounts and sessions: registration, login with a throttle per username
//! and source address, bearer tokens, logout, account deletion.
//!
//! Live sessions are cached in memory after their first lookup, so most
//! requests cost no store read to authenticate. A logout removes its session
//! from the cache here and, on a cluster, on every node (over Redis); a
//! session revoked while its lookup was in flight is not cached; and no entry
//! is trusted for longer than [`SESSION_CACHE_TTL`], which bounds what a lost
//! revocation (Redis down at that moment) could leave behind.
//!
//! Passwords are hashed with argon2id. Hashing is slow on purpose, so it runs
//! in the blocking pool, one hash at a time, behind the fair queue of
//! [`crate::abuse::hashing`]: a login flood can take at most one core, never
//! the cores that carry messages, and one address cannot hold the queue. The
//! per-address limits are checked before a request takes a place in it.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::net::IpAddr;
use std::num::NonZeroUsize;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use dashmap::DashMap;
use dyad_protocol::UserId;
use dyad_protocol::rest::{SessionCreated, SessionList, SessionView, UserCreated};
use dyad_store::{MessageStore, NewSession, SessionId, SessionRecord, TokenHash, UserRecord};
use lru::LruCache;
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use crate::abuse::{AbuseGuard, AddressKey, HashingRefused, HashingTurn, Limit};
use crate::clock::now_ms;
use crate::domain::{Password, Username};
use dyad_protocol::ErrorCode;
use dyad_store::StoreError;

/// Failed logins allowed per username and address before the throttle starts.
const FREE_FAILURES: u32 = 5;
/// The longest a throttled username must wait.
const MAX_LOCKOUT: Duration = Duration::from_secs(300);
/// Failures older than this are forgotten.
const FAILURE_MEMORY: Duration = Duration::from_secs(900);
/// Most (username, address) pairs the throttle tracks at once; each entry is
/// a 64-bit key and a count, so this bounds it at a few MB. Past it the pair
/// seen least recently is forgotten.
pub const MAX_TRACKED_FAILURES: usize = 100_000;
/// How long a cached session is trusted without a store read.
pub const SESSION_CACHE_TTL: Duration = Duration::from_secs(60);
/// Most sessions cached at once; past it the cache starts over.
const MAX_CACHED_SESSIONS: usize = 200_000;

/// What the account service refuses, or fails at. The REST edge maps each
/// to its status and wire code (`errors.rs`), and nowhere else.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// A username outside the rules.
    #[error("invalid username")]
    InvalidUsername,
    /// A password outside the rules.
    #[error("invalid password")]
    InvalidPassword,
    /// The name is in use.
    #[error("username taken")]
    UsernameTaken,
    /// Wrong name or password.
    #[error("wrong username or password")]
    InvalidCredentials,
    /// Too many failed logins for this name from this address; wait this long.
    #[error("throttled for {0:?}")]
    Throttled(Duration),
    /// A per-address limit, or the hashing queue; wait this long.
    #[error("limited for {0:?}")]
    Limited(Duration),
    /// No live session for the token.
    #[error("no live session")]
    Unauthorized,
    /// No such live session of the caller's (revoking a device).
    #[error("no such session")]
    NoSuchSession,
    /// The store failed.
    #[error(transparent)]
    Store(StoreError),
    /// Randomness or hashing failed, or a lock was poisoned.
    #[error("{0}")]
    Internal(String),
}

impl From<StoreError> for AccountError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::UsernameTaken => AccountError::UsernameTaken,
            other => AccountError::Store(other),
        }
    }
}

impl From<ErrorCode> for AccountError {
    /// For the codes that validation in [`crate::domain`] produces.
    fn from(code: ErrorCode) -> Self {
        match code {
            ErrorCode::InvalidUsername => AccountError::InvalidUsername,
            ErrorCode::InvalidPassword => AccountError::InvalidPassword,
            other => AccountError::Internal(format!("unexpected validation code {other}")),
        }
    }
}

/// The account service.
pub struct Accounts {
    store: Arc<dyn MessageStore>,
    guard: Arc<AbuseGuard>,
    throttle: LoginThrottle,
    token_ttl: Duration,
    /// Verified against when a username does not exist, so that a missing
    /// account takes as long to refuse as a wrong password.
    decoy_hash: String,
    /// Live sessions by token hash, with when they were read from the store.
    sessions: DashMap<TokenHash, (SessionRecord, Instant)>,
    /// Sessions revoked lately, so that a lookup in flight does not cache one.
    revoked: Mutex<HashMap<SessionId, Instant>>,
    /// Users deleted lately, likewise for every session of theirs. Entries
    /// live [`SESSION_CACHE_TTL`], and each took a password hash to make.
    deleted: Mutex<HashMap<UserId, Instant>>,
    /// Sessions used since the last [`Accounts::take_used`], and when; at
    /// most [`MAX_CACHED_SESSIONS`], each a valid token's.
    used: DashMap<SessionId, i64>,
}

impl Accounts {
    /// A service over `store`, issuing tokens that live `token_ttl`, under
    /// the limits of `guard`.
    pub fn new(
        store: Arc<dyn MessageStore>,
        token_ttl: Duration,
        guard: Arc<AbuseGuard>,
    ) -> Result<Self, AccountError> {
        let decoy_hash = hash_password(random_token()?.as_bytes())?;
        Ok(Accounts {
            sessions: DashMap::new(),
            revoked: Mutex::new(HashMap::new()),
            deleted: Mutex::new(HashMap::new()),
            used: DashMap::new(),
            store,
            guard,
            throttle: LoginThrottle::new(MAX_TRACKED_FAILURES),
            token_ttl,
            decoy_hash,
        })
    }

    /// `POST /api/v1/users`, from `source`.
    pub async fn register(&self, username: &str, password: &str, source: IpAddr) -> Result<UserCreated, AccountError> {
        let username = Username::parse(username)?;
        let password = Password::parse(password)?;
        self.guard.registration(source).map_err(AccountError::Limited)?;
        if self.store.user_by_username(username.as_str()).await?.is_some() {
            return Err(AccountError::UsernameTaken);
        }
        let hash = {
            let _turn = self.hashing_turn(source).await?;
            let pw = password.clone();
            tokio::task::spawn_blocking(move || hash_password(pw.as_bytes()))
                .await
                .map_err(|e| AccountError::Internal(e.to_string()))??
        };
        let user = self.store.create_user(username.as_str(), &hash, now_ms()).await?;
        tracing::info!(user_id = %user.id, username = %user.username, "user registered");
        Ok(UserCreated {
            user_id: user.id,
            username: user.username,
            created_at: user.created_at,
        })
    }

    /// `POST /api/v1/sessions`, from `source`.
    pub async fn login(&self, username: &str, password: &str, source: IpAddr) -> Result<SessionCreated, AccountError> {
        let user = self.verify_credentials(username, password, source).await?;
        let token = random_token()?;
        let now = now_ms();
        let expires_at = now.saturating_add(self.token_ttl.as_millis() as i64);
        let session = self
            .store
            .create_session(NewSession {
                user_id: user.id,
                token_hash: token_hash(&token),
                created_at: now,
                expires_at,
            })
            .await?;
        tracing::info!(user_id = %user.id, session = session.id.0, "session created");
        Ok(SessionCreated {
            token,
            user_id: user.id,
            expires_at,
        })
    }

    /// `DELETE /api/v1/users/me`: deletes the account of `session` once its
    /// password is confirmed, under the same limits as a login. Closing its
    /// sockets, and telling other nodes, is the caller's part.
    pub async fn delete_account(
        &self,
        session: &SessionRecord,
        password: &str,
        source: IpAddr,
    ) -> Result<(), AccountError> {
        let me = self.confirm(session, password, source).await?;
        self.forget_user(me.id);
        self.store.delete_user(me.id, now_ms()).await?;
        self.forget_user(me.id);
        tracing::info!(user_id = %me.id, %source, "account deleted");
        Ok(())
    }

    /// `PUT /api/v1/users/me/password`: replaces the password of `session`'s
    /// user once the current one is confirmed (under the same limits as a
    /// login) and revokes every other session of theirs; answers those.
    /// Closing their sockets, and telling other nodes, is the caller's part.
    pub async fn change_password(
        &self,
        session: &SessionRecord,
        current: &str,
        new: &str,
        source: IpAddr,
    ) -> Result<Vec<SessionId>, AccountError> {
        let new = Password::parse(new)?;
        let me = self.confirm(session, current, source).await?;
        let hash = {
            let _turn = self.hashing_turn(source).await?;
            tokio::task::spawn_blocking(move || hash_password(new.as_bytes()))
                .await
                .map_err(|e| AccountError::Internal(e.to_string()))??
        };
        let revoked = self.store.change_password(me.id, &hash, session.id, now_ms()).await?;
        revoked.iter().for_each(|id| self.forget_session(*id));
        tracing::info!(user_id = %me.id, %source, ended = revoked.len(), "password changed");
        Ok(revoked)
    }

    /// `GET /api/v1/sessions`: the live sessions of `session`'s user.
    pub async fn sessions(&self, session: &SessionRecord) -> Result<SessionList, AccountError> {
        let sessions = self.store.sessions_of(session.user_id, now_ms()).await?;
        Ok(SessionList {
            sessions: sessions
                .into_iter()
                .map(|s| SessionView {
                    session_id: s.id,
                    created_at: s.created_at,
                    // What this node saw since it last wrote them down.
                    last_used_at: self
                        .used
                        .get(&s.id)
                        .map_or(s.last_used_at, |at| s.last_used_at.max(*at)),
                    current: s.id == session.id,
                })
                .collect(),
        })
    }

    /// `DELETE /api/v1/sessions/{session_id}`: revokes another (or this)
    /// session of `session`'s user, as a logout would. Closing its sockets,
    /// and telling other nodes, is the caller's part.
    pub async fn revoke(&self, session: &SessionRecord, target: SessionId) -> Result<(), AccountError> {
        if !self.store.revoke_session_of(session.user_id, target, now_ms()).await? {
            return Err(AccountError::NoSuchSession);
        }
        self.forget_session(target);
        Ok(())
    }

    /// Notes that `session` is in use now; kept for [`Accounts::take_used`].
    fn note_used(&self, session: SessionId, now: i64) {
        if self.used.len() < MAX_CACHED_SESSIONS || self.used.contains_key(&session) {
            self.used.insert(session, now);
        }
    }

    /// The sessions used since the last call, and when: for the store's
    /// `last_used_at`, written once a minute rather than at every request.
    pub fn take_used(&self) -> Vec<(SessionId, i64)> {
        let used: Vec<(SessionId, i64)> = self.used.iter().map(|e| (*e.key(), *e.value())).collect();
        used.iter().for_each(|(id, at)| {
            self.used.remove_if(id, |_, seen| seen == at);
        });
        used
    }

    /// The account of `session` if `password` is its password.
    async fn confirm(
        &self,
        session: &SessionRecord,
        password: &str,
        source: IpAddr,
    ) -> Result<UserRecord, AccountError> {
        let me = self
            .store
            .user_by_id(session.user_id)
            .await?
            .filter(|u| u.deleted_at.is_none())
            .ok_or(AccountError::Unauthorized)?;
        let confirmed = self.verify_credentials(&me.username, password, source).await?;
        if confirmed.id != me.id {
            return Err(AccountError::InvalidCredentials);
        }
        Ok(me)
    }

    /// The account `username` names if `password` is its password, checked
    /// under the per-address and per-username limits.
    async fn verify_credentials(
        &self,
        username: &str,
        password: &str,
        source: IpAddr,
    ) -> Result<UserRecord, AccountError> {
        self.guard.login_attempt(source).map_err(AccountError::Limited)?;
        // Names that cannot exist are refused like wrong passwords, and throttled alike.
        let key = self.throttle.key(username, source);
        if let Err(e) = self.throttle.check(key) {
            self.guard.refused(Limit::FailedLogins, source, "");
            return Err(e);
        }
        let user = match Username::parse(username) {
            Ok(name) => self.store.user_by_username(name.as_str()).await?,
            Err(_) => None,
        };
        let stored_hash = user
            .as_ref()
            .map_or(self.decoy_hash.clone(), |u| u.password_hash.clone());
        let verified = {
            let _turn = self.hashing_turn(source).await?;
            let password = password.to_owned();
            tokio::task::spawn_blocking(move || verify_password(&password, &stored_hash))
                .await
                .map_err(|e| AccountError::Internal(e.to_string()))?
        };
        let Some(user) = user.filter(|_| verified) else {
            self.throttle.record_failure(key);
            self.guard.failed_login(source);
            self.guard.refused(Limit::InvalidCredentials, source, "");
            return Err(AccountError::InvalidCredentials);
        };
        self.throttle.forget(key);
        Ok(user)
    }

    /// A turn in the hashing queue, or `429` at once.
    async fn hashing_turn(&self, source: IpAddr) -> Result<HashingTurn, AccountError> {
        self.guard.hashing(source).await.map_err(|refused| {
            AccountError::Limited(match refused {
                HashingRefused::AddressBusy => Duration::from_secs(1),
                HashingRefused::QueueFull => Duration::from_secs(2),
            })
        })
    }

    /// The live session a bearer token names, or `unauthorized`; cached for
    /// the requests that follow (REST).
    pub async fn authenticate(&self, token: &str) -> Result<SessionRecord, AccountError> {
        self.lookup(token, true).await
    }

    /// The same, for a token used once (a WebSocket upgrade): found in the
    /// cache if there, but not added to it, so that idle connections do not
    /// each hold a cache entry.
    pub async fn authenticate_once(&self, token: &str) -> Result<SessionRecord, AccountError> {
        self.lookup(token, false).await
    }

    async fn lookup(&self, token: &str, remember: bool) -> Result<SessionRecord, AccountError> {
        if token.is_empty() || token.len() > 256 {
            return Err(AccountError::Unauthorized);
        }
        let hash = token_hash(token);
        let now = now_ms();
        if let Some(entry) = self.sessions.get(&hash)
            && entry.1.elapsed() < SESSION_CACHE_TTL
            && entry.0.expires_at > now
        {
            let session = entry.0;
            drop(entry);
            self.note_used(session.id, now);
            return Ok(session);
        }
        let session = self
            .store
            .session_by_token(&hash, now)
            .await?
            .ok_or(AccountError::Unauthorized)?;
        let revoked = self.revoked.lock().is_ok_and(|r| r.contains_key(&session.id))
            || self.deleted.lock().is_ok_and(|d| d.contains_key(&session.user_id));
        if remember && !revoked {
            if self.sessions.len() >= MAX_CACHED_SESSIONS {
                self.sessions.clear();
            }
            self.sessions.insert(hash, (session, Instant::now()));
        }
        self.note_used(session.id, now);
        Ok(session)
    }

    /// Revokes the session. Closing its sockets, and telling other nodes, is
    /// the caller's part.
    pub async fn logout(&self, session: &SessionRecord) -> Result<(), AccountError> {
        // Before: lookups finishing from now on see it revoked and do not
        // cache it. After: one that checked just before and cached it since
        // is dropped again.
        self.forget_session(session.id);
        self.store.revoke_session(session.id).await?;
        self.forget_session(session.id);
        Ok(())
    }

    /// Drops a revoked session from the cache (here, or told by another node).
    pub fn forget_session(&self, id: SessionId) {
        if let Ok(mut revoked) = self.revoked.lock() {
            let now = Instant::now();
            revoked.retain(|_, at| now.duration_since(*at) < SESSION_CACHE_TTL);
            revoked.insert(id, now);
        }
        self.sessions.retain(|_, (s, _)| s.id != id);
    }

    /// Drops every cached session of a deleted user (here, or told by
    /// another node).
    pub fn forget_user(&self, user: UserId) {
        if let Ok(mut deleted) = self.deleted.lock() {
            let now = Instant::now();
            deleted.retain(|_, at| now.duration_since(*at) < SESSION_CACHE_TTL);
            deleted.insert(user, now);
        }
        self.sessions.retain(|_, (s, _)| s.user_id != user);
    }
}

/// A new random token: 256 bits, URL-safe base64.
pub fn random_token() -> Result<String, AccountError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AccountError::Internal(format!("random generator failed: {e}")))?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

/// Tokens are random and long, so a fast hash is enough to keep them safe at rest.
pub fn token_hash(token: &str) -> TokenHash {
    Sha256::digest(token.as_bytes()).into()
}

/// An argon2id PHC string for `password`, with a random salt.
pub fn hash_password(password: &[u8]) -> Result<String, AccountError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AccountError::Internal(format!("random generator failed: {e}")))?;
    let salt = SaltString::encode_b64(&salt).map_err(|e| AccountError::Internal(format!("salt: {e}")))?;
    Argon2::default()
        .hash_password(password, &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountError::Internal(format!("hashing failed: {e}")))
}

fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| Argon2::default().verify_password(password.as_bytes(), &h).is_ok())
}

/// Failed logins per (username, source address). After [`FREE_FAILURES`]
/// failures each further attempt from that address must wait twice as long
/// as the last, up to [`MAX_LOCKOUT`]; other addresses are not affected, so
/// nobody can lock a user out from elsewhere. A successful login clears the
/// count. Keys are keyed hashes of the pair, so an entry is the same few
/// bytes however long the name a client sends.
struct LoginThrottle {
    hasher: RandomState,
    failures: Mutex<LruCache<u64, Failures>>,
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
}

impl Failures {
    fn locked_until(&self) -> Option<Instant> {
        let over = self.count.checked_sub(FREE_FAILURES)?;
        let wait = Duration::from_secs(1u64 << over.min(16)).min(MAX_LOCKOUT);
        Some(self.last + wait)
    }
}

impl LoginThrottle {
    fn new(max_tracked: usize) -> Self {
        LoginThrottle {
            hasher: RandomState::new(),
            failures: Mutex::new(LruCache::new(
                NonZeroUsize::new(max_tracked).unwrap_or(NonZeroUsize::MIN),
            )),
        }
    }

    /// The throttle's key for a login of `username` from `source`.
    fn key(&self, username: &str, source: IpAddr) -> u64 {
        let name = username.to_ascii_lowercase();
        self.hasher.hash_one((name, AddressKey::of(source)))
    }

    fn check(&self, key: u64) -> Result<(), AccountError> {
        let mut map = self
            .failures
            .lock()
            .map_err(|_| AccountError::Internal("throttle lock poisoned".into()))?;
        if let Some(until) = map.get(&key).and_then(Failures::locked_until) {
            let now = Instant::now();
            if until > now {
                return Err(AccountError::Throttled(until - now));
            }
        }
        Ok(())
    }

    fn record_failure(&self, key: u64) {
        let Ok(mut map) = self.failures.lock() else { return };
        let now = Instant::now();
        let entry = map.get_or_insert_mut(key, || Failures { count: 0, last: now });
        if now.duration_since(entry.last) >= FAILURE_MEMORY {
            entry.count = 0;
        }
        entry.count += 1;
        entry.last = now;
    }

    fn forget(&self, key: u64) {
        if let Ok(mut map) = self.failures.lock() {
            map.pop(&key);
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.failures.lock().map_or(0, |m| m.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(std::net::Ipv4Addr::new(127, 0, 0, last))
    }

    #[test]
    fn throttle_starts_after_the_free_failures_and_a_success_clears_it() {
        let t = LoginThrottle::new(100);
        let bob = t.key("bob", ip(2));
        for _ in 0..FREE_FAILURES {
            assert!(t.check(bob).is_ok());
            t.record_failure(bob);
        }
        assert!(matches!(t.check(bob), Err(AccountError::Throttled(_))));
        assert_eq!(t.key("BOB", ip(2)), bob, "names compare case-insensitively");
        assert!(t.check(t.key("alice", ip(2))).is_ok(), "other names are not affected");
        assert!(t.check(t.key("bob", ip(3))).is_ok(), "nor the same name from elsewhere");
        t.forget(bob);
        assert!(t.check(bob).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn the_wait_doubles_with_each_failure_and_old_failures_are_forgotten() {
        let t = LoginThrottle::new(100);
        let bob = t.key("bob", ip(2));
        let wait = |t: &LoginThrottle| match t.check(bob) {
            Err(AccountError::Throttled(wait)) => wait,
            other => panic!("expected a wait, got {other:?}"),
        };
        for _ in 0..FREE_FAILURES {
            t.record_failure(bob);
        }
        assert_eq!(wait(&t), Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(t.check(bob).is_ok(), "the wait is over");
        t.record_failure(bob);
        assert_eq!(wait(&t), Duration::from_secs(2));
        for _ in 0..20 {
            t.record_failure(bob);
        }
        assert_eq!(wait(&t), MAX_LOCKOUT);
        tokio::time::advance(FAILURE_MEMORY).await;
        t.record_failure(bob);
        assert!(t.check(bob).is_ok(), "failures older than the memory start over");
    }

    #[tokio::test]
    async fn sessions_noted_as_used_are_bounded_and_taken_once() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let guard = Arc::new(AbuseGuard::new(crate::abuse::AbuseLimits::off(), Default::default()));
        let accounts = Accounts::new(store, Duration::from_secs(60), guard).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..(MAX_CACHED_SESSIONS as i64 + 1_000) {
            accounts.note_used(SessionId(i), i);
        }
        assert_eq!(
            accounts.used.len(),
            MAX_CACHED_SESSIONS,
            "no more than the session cache"
        );
        accounts.note_used(SessionId(0), 7);
        let taken = accounts.take_used();
        assert_eq!(taken.len(), MAX_CACHED_SESSIONS);
        assert!(
            taken.contains(&(SessionId(0), 7)),
            "a known one is updated even when full"
        );
        assert!(accounts.used.is_empty(), "taken once");
    }

    #[tokio::test(start_paused = true)]
    async fn revoked_sessions_and_deleted_users_are_remembered_for_the_cache_ttl_only() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let store = dyad_store::open(&format!("sqlite://{}", dir.path().join("t.db").display()))
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let guard = Arc::new(AbuseGuard::new(crate::abuse::AbuseLimits::off(), Default::default()));
        let accounts = Accounts::new(store, Duration::from_secs(60), guard).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..1_000 {
            accounts.forget_session(SessionId(i));
            accounts.forget_user(UserId(i));
        }
        let sizes = |a: &Accounts| {
            (
                a.revoked.lock().map_or(0, |r| r.len()),
                a.deleted.lock().map_or(0, |d| d.len()),
            )
        };
        assert_eq!(sizes(&accounts), (1_000, 1_000));
        tokio::time::advance(SESSION_CACHE_TTL).await;
        accounts.forget_session(SessionId(-1));
        accounts.forget_user(UserId(-1));
        assert_eq!(sizes(&accounts), (1, 1), "older entries go on the next insert");
    }

    #[test]
    fn throttle_memory_is_bounded_however_many_and_long_the_names() {
        let t = LoginThrottle::new(1000);
        let long = "x".repeat(1 << 16);
        for i in 0..3000u32 {
            t.record_failure(t.key(&format!("{long}{i}"), ip(2)));
        }
        assert_eq!(t.len(), 1000);
    }

    #[test]
    fn tokens_are_long_and_distinct() {
        let (a, b) = (random_token().unwrap_or_default(), random_token().unwrap_or_default());
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert_ne!(token_hash(&a), token_hash(&b));
    }
}

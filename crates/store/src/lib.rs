//! The message store: accounts, sessions, conversations and messages.
//!
//! [`MessageStore`] is the seam between the chat service and a database. The
//! service batches concurrent sends into one [`MessageStore::write_batch`]
//! call (group commit); a driver runs each batch as one transaction and
//! assigns every message its conversation `seq` and `timestamp` inside it.
//! Drivers: [`sqlite`] (embedded, the default) and [`postgres`] (shared by
//! several nodes); both pass the same conformance tests.
#![warn(missing_docs)]

mod ids;
mod model;
pub mod postgres;
pub mod sqlite;
#[doc(hidden)]
pub mod testing;

pub use model::*;

use async_trait::async_trait;
use dyad_protocol::domain::SearchText;
use dyad_protocol::{MessageId, UserId};

/// What can go wrong in a store. Constraint violations that a client can
/// cause are domain errors (`UsernameTaken`); the rest means the storage is
/// unreachable or broken, and the caller answers `unavailable`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// Another account has that username.
    #[error("username is taken")]
    UsernameTaken,
    /// The database refused or failed.
    #[error("storage failed: {0}")]
    Backend(#[source] BoxError),
    /// The store is shut down.
    #[error("store is closed")]
    Closed,
}

/// Shorthand for store results.
pub type StoreResult<T> = Result<T, StoreError>;

/// A driver's own error, kept whole as the source of [`StoreError::Backend`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Wraps a driver's error (or a message) as [`StoreError::Backend`].
pub(crate) fn backend(e: impl Into<BoxError>) -> StoreError {
    StoreError::Backend(e.into())
}

/// A message store. Drivers implement the methods in this order.
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Creates an account; `UsernameTaken` if the (folded) name exists.
    async fn create_user(&self, username: &str, password_hash: &str, now: i64) -> StoreResult<UserRecord>;
    /// Finds an account by its folded username.
    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>>;
    /// Finds an account by id.
    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>>;
    /// Records when users were last seen (after their grace period ended).
    async fn set_last_seen(&self, seen: &[(UserId, i64)]) -> StoreResult<()>;
    /// Replaces a user's password hash and revokes every session of the
    /// user, in one transaction; false if there is no such user.
    async fn reset_password(&self, user: UserId, password_hash: &str) -> StoreResult<bool>;
    /// Deletes an account in one transaction: its name becomes free to
    /// register again, its password and last-seen time are erased, its
    /// sessions are revoked, and sends to it answer `UnknownRecipient`. The
    /// row stays (as [`UserRecord::deleted_at`]), and so do the messages it
    /// exchanged. False if there is no such user, or it is already deleted.
    async fn delete_user(&self, user: UserId, now: i64) -> StoreResult<bool>;

    /// Creates (or finds, by username) many accounts and a new session for
    /// each, in one transaction. For provisioning load tests: hashing a
    /// password per user would take hours.
    async fn provision(&self, accounts: Vec<ProvisionedAccount>) -> StoreResult<Vec<UserId>>;

    /// Stores a new session under the hash of its token.
    async fn create_session(&self, session: NewSession) -> StoreResult<SessionRecord>;
    /// The live (unexpired, unrevoked) session for a token hash.
    async fn session_by_token(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<SessionRecord>>;
    /// Revokes a session; the token stops working at once.
    async fn revoke_session(&self, id: SessionId) -> StoreResult<()>;
    /// Which of `sessions` are revoked (by this process or any other).
    async fn revoked_among(&self, sessions: &[SessionId]) -> StoreResult<Vec<SessionId>>;
    /// The live sessions of `user` (neither revoked nor expired at `now`),
    /// newest first: their devices.
    async fn sessions_of(&self, user: UserId, now: i64) -> StoreResult<Vec<SessionInfo>>;
    /// Revokes `session` if it is a live session of `user`; whether it was.
    async fn revoke_session_of(&self, user: UserId, session: SessionId, now: i64) -> StoreResult<bool>;
    /// Replaces the password hash of `user` and revokes every live session
    /// of theirs but `keep`, in one transaction; answers the revoked ones.
    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        now: i64,
    ) -> StoreResult<Vec<SessionId>>;
    /// Applies `patch` to the settings of `user`; the settings now, or
    /// `None` if there is no such (live) user.
    async fn update_settings(&self, user: UserId, patch: SettingsPatch) -> StoreResult<Option<Settings>>;
    /// Makes `blocker` block `blocked` (`at`: since then) or stop blocking
    /// them (`None`); idempotent. `false` if `blocked` is no (live) user.
    async fn set_block(&self, blocker: UserId, blocked: UserId, at: Option<i64>) -> StoreResult<bool>;
    /// The users `user` blocks, most recent first.
    async fn blocks_of(&self, user: UserId) -> StoreResult<Vec<BlockView>>;
    /// Whether either of `a` and `b` blocks the other.
    async fn blocked_between(&self, a: UserId, b: UserId) -> StoreResult<bool>;
    /// Whether `a` and `b` share a conversation (are contacts).
    async fn shares_conversation(&self, a: UserId, b: UserId) -> StoreResult<bool>;
    /// Records when sessions were last used.
    async fn touch_sessions(&self, used: &[(SessionId, i64)]) -> StoreResult<()>;

    /// Runs the operations as one transaction and answers one outcome each,
    /// in order. Either every operation is committed or the call fails.
    /// A batch is handed over when its future is first polled; batches
    /// handed over while others run must take each conversation's `seq`s in
    /// the order they were handed over.
    async fn write_batch(&self, ops: Vec<WriteOp>, now: i64) -> StoreResult<Vec<WriteOutcome>>;
    /// How many batches may be handed over before the first is answered:
    /// 1 for a store that runs them one after another anyway.
    fn batches_in_flight(&self) -> usize {
        1
    }
    /// A page of the conversation between `a` and `b`.
    async fn history(&self, a: UserId, b: UserId, page: PageRequest) -> StoreResult<Page>;
    /// Undelivered messages for `recipient`, oldest first: up to `limit` of
    /// them, from the one after message `after` (the last of the previous
    /// page) or from the start.
    async fn pending(
        &self,
        recipient: UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>>;
    /// Messages of `user`'s conversations whose current text holds every
    /// word of `text` (whole words, any case), newest first, older than
    /// `before`; never deleted ones.
    async fn search(&self, user: UserId, text: &SearchText, before: Option<i64>, limit: usize) -> StoreResult<Page>;
    /// The user's conversations, most recent first.
    async fn conversations(&self, user: UserId, limit: usize) -> StoreResult<Vec<ConversationSummary>>;
    /// The `seq` of the newest committed message in each of the user's
    /// conversations, by the other participant (a cluster node's per-connection
    /// mark: what it replays versus what arrives live).
    async fn conversation_marks(&self, user: UserId) -> StoreResult<Vec<(UserId, i64)>>;

    /// Answers when the storage is reachable and writable.
    async fn ping(&self) -> StoreResult<()>;
}

/// Opens the store a `--database` URL names: `sqlite://PATH` (relative or,
/// with a third slash, absolute) or `postgres://…` / `postgresql://…`
/// (connects and applies migrations).
pub async fn open(url: &str) -> StoreResult<std::sync::Arc<dyn MessageStore>> {
    open_as(url, false).await
}

/// Opens the store for a server (or anything else that sends messages
/// with keys): as [`open`], but a SQLite file whose idempotency key index
/// another process holds (another server on the same file) is refused
/// rather than opened without it.
pub async fn open_exclusive(url: &str) -> StoreResult<std::sync::Arc<dyn MessageStore>> {
    open_as(url, true).await
}

async fn open_as(url: &str, exclusive: bool) -> StoreResult<std::sync::Arc<dyn MessageStore>> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(std::sync::Arc::new(postgres::PostgresStore::connect(url).await?));
    }
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(backend("sqlite:// needs a file path, e.g. sqlite://dyad-data/dyad.db"));
        }
        let store = sqlite::SqliteStore::open(std::path::Path::new(path))?;
        if exclusive && !store.holds_key_index() {
            return Err(backend(format!(
                "another process holds {}: one server per SQLite file",
                sqlite::key_index_folder(std::path::Path::new(path)).display()
            )));
        }
        return Ok(std::sync::Arc::new(store));
    }
    let scheme = url.split("://").next().unwrap_or(url);
    Err(backend(format!(
        "unsupported database URL scheme {scheme:?}: use sqlite://PATH or postgres://USER@HOST/DB"
    )))
}

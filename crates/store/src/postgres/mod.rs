//! The PostgreSQL driver: the store that several nodes share.
//!
//! Every call takes a connection from one pool; a lost server is reconnected
//! to by the pool, so a node recovers by itself once PostgreSQL is back.
//! Queries are checked at run time (no macros), so building needs no
//! database. A batch of writes costs a fixed number of round trips whatever
//! its size: its rows travel as arrays and `unnest` turns them into sets
//! (see `write.rs`).

pub mod import;
mod schema;
mod search;
mod write;

use std::time::Duration;

use async_trait::async_trait;
use dyad_protocol::domain::SearchText;
use dyad_protocol::{MessageId, UserId};

use crate::backend;
use crate::ids::IdCipher;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{ConnectOptions, Connection, Row};
use tokio::sync::{mpsc, oneshot};

use crate::{
    BlockView, ConversationSummary, MessageStore, NewSession, Page, PageRequest, PresenceVisibility,
    ProvisionedAccount, SessionId, SessionInfo, SessionRecord, Settings, SettingsPatch, Standing, StoreError,
    StoreResult, StoredMessage, TokenHash, UserRecord, WriteOp, WriteOutcome,
};

/// The columns `message` reads, in its order, from `messages m` joined with
/// `deliveries d` (`FROM messages!()`).
macro_rules! message_columns {
    () => {
        "m.id, m.sender_id, m.recipient_id, m.body, m.ts, m.seq, d.delivered_at, m.edited_at, m.deleted_at"
    };
}
use message_columns;

/// Messages with their delivery time, if any.
macro_rules! messages {
    () => {
        " FROM messages m LEFT JOIN deliveries d ON d.message_id = m.id "
    };
}
use messages;

/// The columns `user` reads, in its order.
macro_rules! user_columns {
    () => {
        "id, username, password_hash, created_at, last_seen, deleted_at, read_receipts, presence_visibility"
    };
}

/// Revokes every session of user `$1` in the same statement (so in one
/// transaction) as the update of its row that follows.
macro_rules! ending_sessions {
    () => {
        "WITH ended AS (UPDATE sessions SET revoked = true WHERE user_id = $1) "
    };
}

/// A page of conversation `$1`, `$2` the bound: `$col`, `$cmp` and
/// `$order` pick older-than newest-first, newer-than oldest-first, or
/// changed-after in order of change.
macro_rules! page_query {
    ($col:literal, $cmp:literal, $order:literal) => {
        concat!(
            "SELECT ",
            message_columns!(),
            messages!(),
            "WHERE m.conversation_id = $1 AND m.",
            $col,
            " ",
            $cmp,
            " $2 ORDER BY m.",
            $col,
            " ",
            $order,
            " LIMIT $3"
        )
    };
}

/// Connections per node for everything but batches (the batch writer has
/// [`OVERLAP`] of its own). Five nodes stay well under PostgreSQL's default
/// of 100.
const POOL_SIZE: u32 = 16;
/// How long a call waits for a connection before it fails as `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(3);

/// A message store on PostgreSQL.
pub struct PostgresStore {
    pool: PgPool,
    ids: IdCipher,
    writer: mpsc::UnboundedSender<WriteJob>,
    /// How common each search term is, from PostgreSQL's statistics.
    terms: search::TermStats,
}

/// A batch for the writer thread, and where its outcome goes.
type WriteJob = (Vec<WriteOp>, i64, oneshot::Sender<StoreResult<Vec<WriteOutcome>>>);

impl PostgresStore {
    /// Connects to `url` (`postgres://user@host:port/db?…`) and brings the
    /// schema up to date.
    pub async fn connect(url: &str) -> StoreResult<PostgresStore> {
        let options: PgConnectOptions = url.parse().map_err(backend)?;
        Self::connect_with(options).await
    }

    /// Like [`PostgresStore::connect`], from parsed options.
    pub async fn connect_with(options: PgConnectOptions) -> StoreResult<PostgresStore> {
        // A chat server's reads are many and small: a parallel plan (a
        // search that matches many rows) took every core from the rest, and
        // at 10M messages ran for seconds waiting on its workers.
        let options = options
            .application_name("dyad")
            .options([("max_parallel_workers_per_gather", "0")]);
        let mut conn = options.connect().await.map_err(backend)?;
        schema::migrate(&mut conn).await.map_err(backend)?;
        let ids = schema::id_cipher(&mut conn).await.map_err(backend)?;
        conn.close().await.map_err(backend)?;
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .idle_timeout(Duration::from_secs(60))
            .connect_lazy_with(options.clone());
        let writer = spawn_writer(options, ids)?;
        Ok(PostgresStore {
            pool,
            ids,
            writer,
            terms: search::TermStats::default(),
        })
    }
}

/// How many batches a node runs at once: the next is prepared while the
/// last one commits (see [`write::Gate`] for how order is kept).
const OVERLAP: usize = 2;

/// Starts the thread that runs every batch: its own single-threaded runtime
/// and its own connections. A batch is about ten round trips; on the
/// server's runtime each reply would wait behind thousands of WebSocket
/// tasks, here it is picked up at once.
fn spawn_writer(options: PgConnectOptions, ids: IdCipher) -> StoreResult<mpsc::UnboundedSender<WriteJob>> {
    let (jobs, mut queue) = mpsc::unbounded_channel::<WriteJob>();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(backend)?;
    // Every statement of a batch looks rows up by key, so these connections
    // plan index probes only. PostgreSQL caches a statement's plan after a
    // few runs; one made from the first batches, on empty tables, scans
    // whole tables and is kept for the connection's life. Planning each
    // batch afresh would cost more than these settings.
    let options = options.options([
        ("enable_seqscan", "off"),
        ("enable_hashjoin", "off"),
        ("enable_mergejoin", "off"),
    ]);
    std::thread::Builder::new()
        .name("dyad-pg-writer".into())
        .spawn(move || {
            runtime.block_on(async move {
                let pool = PgPoolOptions::new()
                    .max_connections(OVERLAP as u32)
                    .acquire_timeout(ACQUIRE_TIMEOUT)
                    .connect_lazy_with(options);
                let mut running = FuturesUnordered::new();
                // The batch submitted last, while it may still run.
                let mut last: Option<write::Running> = None;
                loop {
                    tokio::select! {
                        job = queue.recv(), if running.len() < OVERLAP => {
                            let Some((ops, now, reply)) = job else { break };
                            let (gate, this) = write::Gate::after(last.take(), ids, &ops);
                            last = Some(this);
                            let pool = &pool;
                            running.push(async move {
                                let _ = reply.send(write::write_batch(pool, ids, ops, now, gate).await);
                            });
                        }
                        Some(()) = running.next(), if !running.is_empty() => {}
                    }
                }
                while running.next().await.is_some() {}
                pool.close().await;
            });
        })
        .map_err(backend)?;
    Ok(jobs)
}

fn message(row: &PgRow, ids: IdCipher) -> sqlx::Result<StoredMessage> {
    message_at(row, 0, ids)
}

/// A message read from `message_columns!()` starting at column `at`.
fn message_at(row: &PgRow, at: usize, ids: IdCipher) -> sqlx::Result<StoredMessage> {
    Ok(StoredMessage {
        id: ids.message(row.try_get(at)?),
        sender_id: ids.user(row.try_get(at + 1)?),
        recipient_id: ids.user(row.try_get(at + 2)?),
        body: row.try_get(at + 3)?,
        timestamp: row.try_get(at + 4)?,
        seq: row.try_get(at + 5)?,
        delivered_at: row.try_get(at + 6)?,
        edited_at: row.try_get(at + 7)?,
        deleted_at: row.try_get(at + 8)?,
        read: false,
    })
}

fn user(row: &PgRow, ids: IdCipher) -> sqlx::Result<UserRecord> {
    Ok(UserRecord {
        id: ids.user(row.try_get(0)?),
        username: row.try_get(1)?,
        password_hash: row.try_get(2)?,
        created_at: row.try_get(3)?,
        last_seen: row.try_get(4)?,
        deleted_at: row.try_get(5)?,
        settings: settings_at(row, 6)?,
    })
}

/// The settings in columns `at` (`read_receipts`) and `at + 1`
/// (`presence_visibility`).
fn settings_at(row: &PgRow, at: usize) -> sqlx::Result<Settings> {
    Ok(Settings {
        read_receipts: row.try_get(at)?,
        presence: PresenceVisibility::from_stored(row.try_get::<&str, _>(at + 1)?),
    })
}

/// Every row through `read`, or the first error.
fn each_row<T>(rows: &[PgRow], read: impl Fn(&PgRow) -> sqlx::Result<T>) -> StoreResult<Vec<T>> {
    rows.iter().map(read).collect::<sqlx::Result<_>>().map_err(backend)
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.code().as_deref() == Some("23505"))
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl MessageStore for PostgresStore {
    async fn create_user(&self, username: &str, password_hash: &str, now: i64) -> StoreResult<UserRecord> {
        let row = sqlx::query(concat!(
            "INSERT INTO users (username, password_hash, created_at) VALUES ($1, $2, $3) RETURNING ",
            user_columns!()
        ))
        .bind(username)
        .bind(password_hash)
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match row {
            Ok(row) => user(&row, self.ids).map_err(backend),
            Err(e) if is_unique_violation(&e) => Err(StoreError::UsernameTaken),
            Err(e) => Err(backend(e)),
        }
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        sqlx::query(concat!(
            "SELECT ",
            user_columns!(),
            " FROM users WHERE username = $1 AND deleted_at IS NULL"
        ))
        .bind(username)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?
        .map(|row| user(&row, self.ids).map_err(backend))
        .transpose()
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        sqlx::query(concat!("SELECT ", user_columns!(), " FROM users WHERE id = $1"))
            .bind(self.ids.user_row(id))
            .fetch_optional(&self.pool)
            .await
            .map_err(backend)?
            .map(|row| user(&row, self.ids).map_err(backend))
            .transpose()
    }

    async fn set_last_seen(&self, seen: &[(UserId, i64)]) -> StoreResult<()> {
        let (ids, at): (Vec<i64>, Vec<i64>) = seen.iter().map(|(u, t)| (self.ids.user_row(*u), *t)).unzip();
        sqlx::query(
            "UPDATE users SET last_seen = s.at FROM unnest($1::int8[], $2::int8[]) AS s(id, at) WHERE users.id = s.id AND users.deleted_at IS NULL",
        )
        .bind(ids)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn reset_password(&self, user: UserId, password_hash: &str) -> StoreResult<bool> {
        let changed = sqlx::query(concat!(
            ending_sessions!(),
            "UPDATE users SET password_hash = $2 WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(self.ids.user_row(user))
        .bind(password_hash)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn delete_user(&self, user: UserId, now: i64) -> StoreResult<bool> {
        // The name becomes one no user can choose ('#' is not allowed),
        // random so that it tells nothing.
        let changed = sqlx::query(concat!(
            ending_sessions!(),
            "UPDATE users SET username = '#' || md5(gen_random_uuid()::text), password_hash = '',
                              last_seen = NULL, deleted_at = $2
             WHERE id = $1 AND deleted_at IS NULL"
        ))
        .bind(self.ids.user_row(user))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn provision(&self, accounts: Vec<ProvisionedAccount>) -> StoreResult<Vec<UserId>> {
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let names: Vec<&str> = accounts.iter().map(|a| a.username.as_str()).collect();
        let hashes: Vec<&str> = accounts.iter().map(|a| a.password_hash.as_str()).collect();
        let created: Vec<i64> = accounts.iter().map(|a| a.created_at).collect();
        let rows = sqlx::query(
            "INSERT INTO users (username, password_hash, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::int8[])
             ON CONFLICT (username) DO UPDATE SET username = excluded.username
             RETURNING id, username",
        )
        .bind(&names)
        .bind(&hashes)
        .bind(&created)
        .fetch_all(&mut *tx)
        .await
        .map_err(backend)?;
        let mut by_name = std::collections::HashMap::with_capacity(rows.len());
        for row in &rows {
            let id: i64 = row.try_get(0).map_err(backend)?;
            let name: String = row.try_get(1).map_err(backend)?;
            by_name.insert(name, id);
        }
        let ids: Vec<i64> = names
            .iter()
            .map(|n| {
                by_name
                    .get(*n)
                    .copied()
                    .ok_or_else(|| backend(format!("{n} was not provisioned")))
            })
            .collect::<StoreResult<_>>()?;
        let tokens: Vec<Vec<u8>> = accounts.iter().map(|a| a.token_hash.to_vec()).collect();
        let expires: Vec<i64> = accounts.iter().map(|a| a.expires_at).collect();
        sqlx::query(
            "INSERT INTO sessions (user_id, token_hash, created_at, expires_at)
             SELECT * FROM unnest($1::int8[], $2::bytea[], $3::int8[], $4::int8[])",
        )
        .bind(&ids)
        .bind(&tokens)
        .bind(&created)
        .bind(&expires)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(ids.into_iter().map(|row| self.ids.user(row)).collect())
    }

    async fn create_session(&self, s: NewSession) -> StoreResult<SessionRecord> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO sessions (user_id, token_hash, created_at, expires_at) VALUES ($1, $2, $3, $4) RETURNING id",
        )
        .bind(self.ids.user_row(s.user_id))
        .bind(&s.token_hash[..])
        .bind(s.created_at)
        .bind(s.expires_at)
        .fetch_one(&self.pool)
        .await
        .map_err(backend)?;
        Ok(SessionRecord {
            id: self.ids.session(id),
            user_id: s.user_id,
            expires_at: s.expires_at,
        })
    }

    async fn session_by_token(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<SessionRecord>> {
        let row = sqlx::query(
            "SELECT id, user_id, expires_at FROM sessions WHERE token_hash = $1 AND NOT revoked AND expires_at > $2",
        )
        .bind(&token_hash[..])
        .bind(now)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| {
            Ok::<_, sqlx::Error>(SessionRecord {
                id: self.ids.session(r.try_get(0)?),
                user_id: self.ids.user(r.try_get(1)?),
                expires_at: r.try_get(2)?,
            })
        })
        .transpose()
        .map_err(backend)
    }

    async fn revoke_session(&self, id: SessionId) -> StoreResult<()> {
        sqlx::query("UPDATE sessions SET revoked = true WHERE id = $1")
            .bind(self.ids.session_row(id))
            .execute(&self.pool)
            .await
            .map_err(backend)?;
        Ok(())
    }

    async fn revoked_among(&self, sessions: &[SessionId]) -> StoreResult<Vec<SessionId>> {
        let rows: Vec<i64> = sessions.iter().map(|s| self.ids.session_row(*s)).collect();
        let revoked: Vec<i64> = sqlx::query_scalar("SELECT id FROM sessions WHERE id = ANY($1) AND revoked")
            .bind(rows)
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        Ok(revoked.into_iter().map(|row| self.ids.session(row)).collect())
    }

    async fn sessions_of(&self, user: UserId, now: i64) -> StoreResult<Vec<SessionInfo>> {
        let rows = sqlx::query(
            "SELECT id, created_at, COALESCE(last_used_at, created_at) FROM sessions
             WHERE user_id = $1 AND NOT revoked AND expires_at > $2 ORDER BY created_at DESC, id DESC",
        )
        .bind(self.ids.user_row(user))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        each_row(&rows, |r| {
            Ok(SessionInfo {
                id: self.ids.session(r.try_get(0)?),
                created_at: r.try_get(1)?,
                last_used_at: r.try_get(2)?,
            })
        })
    }

    async fn revoke_session_of(&self, user: UserId, session: SessionId, now: i64) -> StoreResult<bool> {
        let changed = sqlx::query(
            "UPDATE sessions SET revoked = true
             WHERE id = $1 AND user_id = $2 AND NOT revoked AND expires_at > $3",
        )
        .bind(self.ids.session_row(session))
        .bind(self.ids.user_row(user))
        .bind(now)
        .execute(&self.pool)
        .await
        .map_err(backend)?
        .rows_affected();
        Ok(changed == 1)
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        now: i64,
    ) -> StoreResult<Vec<SessionId>> {
        let revoked: Vec<i64> = sqlx::query_scalar(
            "WITH changed AS (UPDATE users SET password_hash = $2 WHERE id = $1 AND deleted_at IS NULL)
             UPDATE sessions SET revoked = true
             WHERE user_id = $1 AND id <> $3 AND NOT revoked AND expires_at > $4 RETURNING id",
        )
        .bind(self.ids.user_row(user))
        .bind(password_hash)
        .bind(self.ids.session_row(keep))
        .bind(now)
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        Ok(revoked.into_iter().map(|row| self.ids.session(row)).collect())
    }

    async fn update_settings(&self, user: UserId, patch: SettingsPatch) -> StoreResult<Option<Settings>> {
        let row = sqlx::query(
            "UPDATE users SET read_receipts = COALESCE($2, read_receipts),
                              presence_visibility = COALESCE($3, presence_visibility)
             WHERE id = $1 AND deleted_at IS NULL
             RETURNING read_receipts, presence_visibility",
        )
        .bind(self.ids.user_row(user))
        .bind(patch.read_receipts)
        .bind(patch.presence.map(|p| p.as_str()))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        row.map(|r| settings_at(&r, 0)).transpose().map_err(backend)
    }

    async fn set_block(&self, blocker: UserId, blocked: UserId, at: Option<i64>) -> StoreResult<bool> {
        let (blocker, blocked) = (self.ids.user_row(blocker), self.ids.user_row(blocked));
        if blocker == blocked {
            return Ok(false);
        }
        let (lo, hi) = (blocker.min(blocked), blocker.max(blocked));
        let mut tx = self.pool.begin().await.map_err(backend)?;
        let exists: Option<i32> = sqlx::query_scalar("SELECT 1 FROM users WHERE id = $1 AND deleted_at IS NULL")
            .bind(blocked)
            .fetch_optional(&mut *tx)
            .await
            .map_err(backend)?;
        if exists.is_none() {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO conversations (user_lo, user_hi) VALUES ($1, $2) ON CONFLICT (user_lo, user_hi) DO NOTHING",
        )
        .bind(lo)
        .bind(hi)
        .execute(&mut *tx)
        .await
        .map_err(backend)?;
        // Takes the row lock a batch takes: a send and a block of one pair
        // happen one after the other. A repeated block keeps its first time.
        let update = if blocker == lo {
            "UPDATE conversations SET lo_blocked_at = CASE WHEN $3::int8 IS NULL THEN NULL ELSE COALESCE(lo_blocked_at, $3) END
             WHERE user_lo = $1 AND user_hi = $2"
        } else {
            "UPDATE conversations SET hi_blocked_at = CASE WHEN $3::int8 IS NULL THEN NULL ELSE COALESCE(hi_blocked_at, $3) END
             WHERE user_lo = $1 AND user_hi = $2"
        };
        sqlx::query(update)
            .bind(lo)
            .bind(hi)
            .bind(at)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
        tx.commit().await.map_err(backend)?;
        Ok(true)
    }

    async fn blocks_of(&self, user: UserId) -> StoreResult<Vec<BlockView>> {
        let rows = sqlx::query(
            "SELECT u.id, u.username, b.at FROM (
                 SELECT user_hi AS other, lo_blocked_at AS at FROM conversations
                 WHERE user_lo = $1 AND lo_blocked_at IS NOT NULL
                 UNION ALL
                 SELECT user_lo, hi_blocked_at FROM conversations
                 WHERE user_hi = $1 AND hi_blocked_at IS NOT NULL) AS b
             JOIN users u ON u.id = b.other
             ORDER BY b.at DESC, u.id",
        )
        .bind(self.ids.user_row(user))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        each_row(&rows, |r| {
            Ok(BlockView {
                user_id: self.ids.user(r.try_get(0)?),
                username: r.try_get(1)?,
                blocked_at: r.try_get(2)?,
            })
        })
    }

    async fn blocked_between(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (a, b) = (self.ids.user_row(a), self.ids.user_row(b));
        let found: Option<i32> = sqlx::query_scalar(
            "SELECT 1 FROM conversations WHERE user_lo = $1 AND user_hi = $2
               AND (lo_blocked_at IS NOT NULL OR hi_blocked_at IS NOT NULL)",
        )
        .bind(a.min(b))
        .bind(a.max(b))
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn shares_conversation(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (a, b) = (self.ids.user_row(a), self.ids.user_row(b));
        let found: Option<i32> =
            sqlx::query_scalar("SELECT 1 FROM conversations WHERE user_lo = $1 AND user_hi = $2 AND last_seq > 0")
                .bind(a.min(b))
                .bind(a.max(b))
                .fetch_optional(&self.pool)
                .await
                .map_err(backend)?;
        Ok(found.is_some())
    }

    async fn touch_sessions(&self, used: &[(SessionId, i64)]) -> StoreResult<()> {
        let (rows, at): (Vec<i64>, Vec<i64>) = used.iter().map(|(s, t)| (self.ids.session_row(*s), *t)).unzip();
        sqlx::query(
            "UPDATE sessions SET last_used_at = u.at FROM unnest($1::int8[], $2::int8[]) AS u(id, at)
             WHERE sessions.id = u.id",
        )
        .bind(rows)
        .bind(at)
        .execute(&self.pool)
        .await
        .map_err(backend)?;
        Ok(())
    }

    async fn write_batch(&self, ops: Vec<WriteOp>, now: i64) -> StoreResult<Vec<WriteOutcome>> {
        let (reply, outcome) = oneshot::channel();
        self.writer.send((ops, now, reply)).map_err(|_| StoreError::Closed)?;
        outcome.await.map_err(|_| StoreError::Closed)?
    }

    fn batches_in_flight(&self) -> usize {
        OVERLAP
    }

    async fn history(&self, a: UserId, b: UserId, page: PageRequest) -> StoreResult<Page> {
        let (a, b) = (self.ids.user_row(a), self.ids.user_row(b));
        let (lo, hi) = (a.min(b), a.max(b));
        let standing = sqlx::query(
            "SELECT c.id, c.lo_read_seq, c.hi_read_seq,
                    (SELECT bool_and(read_receipts) FROM users WHERE id IN (c.user_lo, c.user_hi))
             FROM conversations c WHERE c.user_lo = $1 AND c.user_hi = $2",
        )
        .bind(lo)
        .bind(hi)
        .fetch_optional(&self.pool)
        .await
        .map_err(backend)?;
        let Some(standing) = standing else {
            return Ok(Page {
                messages: Vec::new(),
                has_more: false,
            });
        };
        let standing = (|| {
            Ok::<_, sqlx::Error>(Standing {
                id: standing.try_get(0)?,
                lo,
                lo_read_seq: standing.try_get(1)?,
                hi_read_seq: standing.try_get(2)?,
                receipts: standing.try_get::<Option<bool>, _>(3)?.unwrap_or(false),
            })
        })()
        .map_err(backend)?;
        let (sql, bound, n) = match page {
            PageRequest::Before { before, limit } => {
                (page_query!("ts", "<", "DESC"), before.unwrap_or(i64::MAX), limit)
            }
            PageRequest::After { after, limit } => (page_query!("ts", ">", "ASC"), after, limit),
            PageRequest::ChangedSince { since, limit } => (page_query!("changed_at", ">", "ASC"), since, limit),
        };
        let rows = sqlx::query(sql)
            .bind(standing.id)
            .bind(bound)
            .bind(limit(n).saturating_add(1))
            .fetch_all(&self.pool)
            .await
            .map_err(backend)?;
        let mut messages = each_row(&rows, |r| message(r, self.ids))?;
        let has_more = messages.len() > n;
        messages.truncate(n);
        for m in &mut messages {
            m.read = standing.read(m, self.ids);
        }
        Ok(Page { messages, has_more })
    }

    async fn pending(&self, recipient: UserId, after: Option<MessageId>, n: usize) -> StoreResult<Vec<StoredMessage>> {
        let rows = sqlx::query(
            // A pending message is undelivered by definition.
            "SELECT m.id, m.sender_id, m.recipient_id, m.body, m.ts, m.seq, NULL::int8, m.edited_at, m.deleted_at
             FROM pending p JOIN messages m ON m.id = p.message_id
             WHERE p.recipient_id = $1 AND p.message_id > $2
             ORDER BY p.message_id LIMIT $3",
        )
        .bind(self.ids.user_row(recipient))
        .bind(after.map_or(0, |id| self.ids.message_row(id)))
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        each_row(&rows, |r| message(r, self.ids))
    }

    async fn search(&self, user: UserId, text: &SearchText, before: Option<i64>, n: usize) -> StoreResult<Page> {
        let rows = self.search_rows(user, text, before, limit(n).saturating_add(1)).await?;
        let mut messages = each_row(&rows, |r| {
            let mut m = message(r, self.ids)?;
            m.read = r.try_get::<Option<bool>, _>(9)?.unwrap_or(false);
            Ok(m)
        })?;
        let has_more = messages.len() > n;
        messages.truncate(n);
        Ok(Page { messages, has_more })
    }

    async fn conversations(&self, user: UserId, n: usize) -> StoreResult<Vec<ConversationSummary>> {
        // Unread: the peer's messages above the user's read mark, found by
        // time on the conversation's index.
        let rows = sqlx::query(concat!(
            "SELECT u.id, CASE WHEN u.deleted_at IS NULL THEN u.username ELSE 'deleted account' END,
                    c.my_read, c.peer_read,
                    (SELECT bool_and(read_receipts) FROM users WHERE id IN ($1, c.peer)),
                    (SELECT count(*) FROM messages x WHERE x.conversation_id = c.cid AND x.ts > c.my_read_ts
                                                       AND x.sender_id = c.peer), ",
            message_columns!(),
            " FROM (SELECT id AS cid, user_hi AS peer, lo_read_seq AS my_read, lo_read_ts AS my_read_ts,
                          hi_read_seq AS peer_read, last_message_id, last_ts
                   FROM conversations WHERE user_lo = $1 AND last_seq > 0
                   UNION ALL
                   SELECT id AS cid, user_lo AS peer, hi_read_seq AS my_read, hi_read_ts AS my_read_ts,
                          lo_read_seq AS peer_read, last_message_id, last_ts
                   FROM conversations WHERE user_hi = $1 AND last_seq > 0) AS c
             JOIN users u ON u.id = c.peer
             JOIN messages m ON m.id = c.last_message_id
             LEFT JOIN deliveries d ON d.message_id = m.id
             ORDER BY c.last_ts DESC
             LIMIT $2"
        ))
        .bind(self.ids.user_row(user))
        .bind(limit(n))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        each_row(&rows, |r| {
            let (my_read, peer_read): (i64, i64) = (r.try_get(2)?, r.try_get(3)?);
            let receipts = r.try_get::<Option<bool>, _>(4)?.unwrap_or(false);
            let mut last_message = message_at(r, 6, self.ids)?;
            let recipients_mark = if last_message.recipient_id == user {
                my_read
            } else {
                peer_read
            };
            last_message.read = receipts && last_message.seq <= recipients_mark;
            Ok(ConversationSummary {
                peer_id: self.ids.user(r.try_get(0)?),
                peer_username: r.try_get(1)?,
                last_message,
                unread_count: r.try_get(5)?,
                last_read_seq: my_read,
                peer_last_read_seq: if receipts { peer_read } else { 0 },
            })
        })
    }

    async fn conversation_marks(&self, user: UserId) -> StoreResult<Vec<(UserId, i64)>> {
        let rows = sqlx::query(
            "SELECT user_hi, last_seq FROM conversations WHERE user_lo = $1 AND last_seq > 0
             UNION ALL
             SELECT user_lo, last_seq FROM conversations WHERE user_hi = $1 AND last_seq > 0",
        )
        .bind(self.ids.user_row(user))
        .fetch_all(&self.pool)
        .await
        .map_err(backend)?;
        each_row(&rows, |r| Ok((self.ids.user(r.try_get(0)?), r.try_get(1)?)))
    }

    async fn ping(&self) -> StoreResult<()> {
        let mut conn = self.pool.acquire().await.map_err(backend)?;
        conn.ping().await.map_err(backend)
    }
}

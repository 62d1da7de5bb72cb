//! The embedded driver: one SQLite file in WAL mode with `synchronous=FULL`.
//!
//! Writes go to a single writer thread ([`writer`]), which keeps each
//! conversation's head (`last_seq`, `last_ts`) in memory, so a send costs no
//! read; before each batch it reads `PRAGMA data_version`, which changes when
//! another process (`dyad admin …`) has committed to the file, and then
//! forgets the heads. Reads (history, replay, lookups) go to a pool of four
//! read-only connections, each mapping the file, which WAL lets run beside
//! the writer. A checkpointer thread copies the WAL back beside the writer
//! (`spawn_checkpointer`). The idempotency keys are in an LSM tree beside
//! the file ([`keys`]), which the writer keeps up to date with the rows.

pub mod backup;
mod keys;
mod reads;
mod rows;
mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use async_trait::async_trait;
use dyad_protocol::domain::SearchText;
use dyad_protocol::{MessageId, UserId};
use rusqlite::{Connection, OpenFlags, OptionalExtension, params};
use tokio::sync::{Semaphore, oneshot};

use crate::backend;
use crate::ids::IdCipher;
use crate::{
    BlockView, ConversationSummary, MessageStore, NewSession, Page, PageRequest, ProvisionedAccount, SessionId,
    SessionInfo, SessionRecord, Settings, SettingsPatch, StoreError, StoreResult, StoredMessage, TokenHash, UserRecord,
    WriteOp, WriteOutcome,
};
pub use keys::folder as key_index_folder;
use rows::user_columns;
use writer::{Job, LateIndexes, Writer};

/// How many read connections the pool holds.
const READERS: usize = 4;
/// How much of the file each read connection maps (address space, not memory).
const READER_MMAP_BYTES: i64 = 64 << 30;
/// The writer's page cache, in KiB.
const WRITER_CACHE_KIB: i64 = 64 * 1024;
/// WAL pages after which a commit completes a checkpoint (SQLite's default).
const WAL_AUTOCHECKPOINT_PAGES: i64 = 1000;
/// How often the checkpointer copies the WAL back into the database.
const CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_millis(200);

/// The SQLite message store.
pub struct SqliteStore {
    /// The checkpointer thread, and the sender whose drop stops it.
    checkpointer: Option<(mpsc::Sender<()>, std::thread::JoinHandle<()>)>,
    /// The writer thread's queue (`None` once closed) and the thread.
    jobs: Mutex<Option<mpsc::Sender<Job>>>,
    writer: Option<std::thread::JoinHandle<()>>,
    readers: Mutex<Vec<Connection>>,
    reader_slots: Semaphore,
    path: PathBuf,
    ids: IdCipher,
    /// Set while stored messages may wait to be indexed for search.
    index_behind: Arc<AtomicBool>,
    /// Whether this process held the idempotency key index when it opened.
    holds_key_index: bool,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

/// Starts the thread that checkpoints the WAL every [`CHECKPOINT_EVERY`]
/// (PASSIVE: it never blocks the writer or readers). It ends when the
/// returned sender is dropped.
fn spawn_checkpointer(path: &Path) -> StoreResult<(mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let conn = Connection::open(path).map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
    let (stop, stopped) = mpsc::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("dyad-sqlite-checkpoint".into())
        .spawn(move || {
            while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(CHECKPOINT_EVERY) {
                if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
                    tracing::warn!(error = %e, "WAL checkpoint failed");
                }
            }
        })
        .map_err(backend)?;
    Ok((stop, thread))
}

/// Makes the database readable by its owner only: a folder it creates is
/// 0700, and the database file (and its WAL and shared-memory files, which
/// SQLite creates with the database's mode) 0600. A folder that already
/// exists is left as it is: it may be `/tmp` or a home directory.
fn owner_only(path: &Path) -> StoreResult<()> {
    use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty() && !d.exists()) {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|e| backend(format!("creating {}: {e}", dir.display())))?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| backend(format!("creating {}: {e}", path.display())))?;
    for suffix in ["", "-wal", "-shm"] {
        let file = std::path::PathBuf::from(format!("{}{suffix}", path.display()));
        if file.exists() {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| backend(format!("making {} owner-only: {e}", file.display())))?;
        }
    }
    Ok(())
}

/// Runs `update` on user `row` and revokes every session of the user, in
/// one transaction; whether the update changed the row.
fn update_user_ending_sessions(
    conn: &mut Connection,
    row: i64,
    update: &str,
    params: impl rusqlite::Params,
) -> StoreResult<bool> {
    let tx = conn.transaction().map_err(backend)?;
    let changed = tx.execute(update, params).map_err(backend)?;
    tx.execute("UPDATE sessions SET revoked = 1 WHERE user_id = ?1", [row])
        .map_err(backend)?;
    tx.commit().map_err(backend)?;
    Ok(changed == 1)
}

impl SqliteStore {
    /// Opens (creating if needed) the database at `path`, with its folder, and
    /// applies the migrations.
    pub fn open(path: &Path) -> StoreResult<Self> {
        owner_only(path)?;
        let mut conn = Connection::open(path).map_err(backend)?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(backend)?;
        conn.pragma_update(None, "synchronous", "FULL").map_err(backend)?;
        // Index pages of live conversations stay hot: keep them in memory.
        conn.pragma_update(None, "cache_size", -WRITER_CACHE_KIB)
            .map_err(backend)?;
        // A checkpointer thread (below) copies the WAL back while the writer
        // works; the writer's own automatic checkpoint then finds little left
        // to copy, and completing it lets the next transaction restart the
        // WAL from the top. Without that last step the WAL never resets under
        // steady writes and grows without bound.
        conn.pragma_update(None, "wal_autocheckpoint", WAL_AUTOCHECKPOINT_PAGES)
            .map_err(backend)?;
        conn.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
        // Deleted and replaced text is overwritten with zeros, not just
        // unlinked: a deleted message's text is gone from the file.
        conn.pragma_update(None, "secure_delete", "ON").map_err(backend)?;
        schema::migrate(&mut conn).map_err(backend)?;
        let ids = schema::id_cipher(&conn).map_err(backend)?;
        let mut readers = Vec::with_capacity(READERS);
        for _ in 0..READERS {
            let r = Connection::open_with_flags(
                path,
                OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_URI,
            )
            .map_err(backend)?;
            r.busy_timeout(std::time::Duration::from_secs(5)).map_err(backend)?;
            // Reads map the file instead of copying each page through
            // pread into a small per-connection cache.
            r.pragma_update(None, "mmap_size", READER_MMAP_BYTES).map_err(backend)?;
            readers.push(r);
        }
        let index_behind = Arc::new(AtomicBool::new(true));
        let late = LateIndexes::load(&conn, index_behind.clone()).map_err(backend)?;
        let keys = keys::Keys::open(path, &conn, &schema::id_key(&conn).map_err(backend)?).map_err(backend)?;
        let holds_key_index = keys.held();
        let (jobs, writer) = Writer::spawn(conn, ids, late, keys).map_err(backend)?;
        let checkpointer = spawn_checkpointer(path)?;
        Ok(SqliteStore {
            checkpointer: Some(checkpointer),
            jobs: Mutex::new(Some(jobs)),
            writer: Some(writer),
            readers: Mutex::new(readers),
            reader_slots: Semaphore::new(READERS),
            path: path.to_owned(),
            ids,
            index_behind,
            holds_key_index,
        })
    }

    /// Whether this process held the idempotency key index when it opened
    /// the store (another process, such as a running server, may hold it;
    /// then sends that carry a key are refused).
    pub fn holds_key_index(&self) -> bool {
        self.holds_key_index
    }

    /// Runs `f` on the writer thread and waits for its answer.
    async fn write<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Writer) -> StoreResult<R> + Send + 'static,
    ) -> StoreResult<R> {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move |w| {
            let _ = tx.send(f(w));
        });
        self.jobs
            .lock()
            .map_err(|_| StoreError::Closed)?
            .as_ref()
            .ok_or(StoreError::Closed)?
            .send(job)
            .map_err(|_| StoreError::Closed)?;
        rx.await.map_err(|_| StoreError::Closed)?
    }

    /// Runs `f` on a pooled read connection in the blocking pool.
    async fn read<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<R> + Send + 'static,
    ) -> StoreResult<R> {
        let _slot = self.reader_slots.acquire().await.map_err(|_| StoreError::Closed)?;
        let conn = self
            .readers
            .lock()
            .map_err(|_| StoreError::Closed)?
            .pop()
            .ok_or(StoreError::Closed)?;
        let (conn, result) = tokio::task::spawn_blocking(move || {
            let r = f(&conn);
            (conn, r)
        })
        .await
        .map_err(backend)?;
        self.readers.lock().map_err(|_| StoreError::Closed)?.push(conn);
        result.map_err(backend)
    }
}

/// Closes every connection, the writer's last: the last connection to
/// close checkpoints the WAL into the database and deletes it, so that a
/// clean stop leaves one file (and no copy of deleted text in a WAL).
impl Drop for SqliteStore {
    fn drop(&mut self) {
        if let Ok(mut readers) = self.readers.lock() {
            readers.clear();
        }
        if let Some((stop, thread)) = self.checkpointer.take() {
            drop(stop);
            let _ = thread.join();
        }
        if let Ok(mut jobs) = self.jobs.lock() {
            jobs.take();
        }
        if let Some(writer) = self.writer.take() {
            // It finishes the jobs already queued first.
            let _ = writer.join();
        }
    }
}

#[async_trait]
impl MessageStore for SqliteStore {
    async fn create_user(&self, username: &str, password_hash: &str, now: i64) -> StoreResult<UserRecord> {
        let (username, password_hash) = (username.to_owned(), password_hash.to_owned());
        self.write(move |w| {
            let inserted = w
                .conn
                .prepare_cached(
                    "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT (username) DO NOTHING",
                )
                .and_then(|mut s| s.execute(params![username, password_hash, now]))
                .map_err(backend)?;
            if inserted == 0 {
                return Err(StoreError::UsernameTaken);
            }
            Ok(UserRecord {
                id: w.ids.user(w.conn.last_insert_rowid()),
                username,
                password_hash,
                created_at: now,
                last_seen: None,
                deleted_at: None,
                settings: Settings::default(),
            })
        })
        .await
    }

    async fn user_by_username(&self, username: &str) -> StoreResult<Option<UserRecord>> {
        let (username, ids) = (username.to_owned(), self.ids);
        self.read(move |c| {
            c.prepare_cached(concat!(
                "SELECT ",
                user_columns!(),
                " FROM users WHERE username = ?1 AND deleted_at IS NULL"
            ))?
            .query_row([username], |r| rows::user(r, ids))
            .optional()
        })
        .await
    }

    async fn user_by_id(&self, id: UserId) -> StoreResult<Option<UserRecord>> {
        let ids = self.ids;
        self.read(move |c| {
            c.prepare_cached(concat!("SELECT ", user_columns!(), " FROM users WHERE id = ?1"))?
                .query_row([ids.user_row(id)], |r| rows::user(r, ids))
                .optional()
        })
        .await
    }

    async fn set_last_seen(&self, seen: &[(UserId, i64)]) -> StoreResult<()> {
        let seen = seen.to_vec();
        self.write(move |w| {
            let tx = w.conn.transaction().map_err(backend)?;
            {
                let mut stmt = tx
                    .prepare_cached("UPDATE users SET last_seen = ?2 WHERE id = ?1 AND deleted_at IS NULL")
                    .map_err(backend)?;
                for (user, at) in &seen {
                    stmt.execute(params![w.ids.user_row(*user), at]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn reset_password(&self, user: UserId, password_hash: &str) -> StoreResult<bool> {
        let password_hash = password_hash.to_owned();
        self.write(move |w| {
            let row = w.ids.user_row(user);
            update_user_ending_sessions(
                &mut w.conn,
                row,
                "UPDATE users SET password_hash = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![row, password_hash],
            )
        })
        .await
    }

    async fn delete_user(&self, user: UserId, now: i64) -> StoreResult<bool> {
        self.write(move |w| {
            let row = w.ids.user_row(user);
            // The name becomes one no user can choose ('#' is not allowed),
            // random so that it tells nothing.
            let deleted = update_user_ending_sessions(
                &mut w.conn,
                row,
                "UPDATE users SET username = '#' || hex(randomblob(12)), password_hash = '',
                                  last_seen = NULL, deleted_at = ?2
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![row, now],
            )?;
            w.forget_conversations_of(row);
            Ok(deleted)
        })
        .await
    }

    async fn provision(&self, accounts: Vec<ProvisionedAccount>) -> StoreResult<Vec<UserId>> {
        self.write(move |w| {
            let tx = w.conn.transaction().map_err(backend)?;
            let mut ids = Vec::with_capacity(accounts.len());
            {
                let mut user = tx
                    .prepare_cached(
                        "INSERT INTO users (username, password_hash, created_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT (username) DO UPDATE SET username = excluded.username RETURNING id",
                    )
                    .map_err(backend)?;
                let mut session = tx
                    .prepare_cached(
                        "INSERT INTO sessions (user_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                    )
                    .map_err(backend)?;
                for a in &accounts {
                    let id: i64 = user
                        .query_row(params![a.username, a.password_hash, a.created_at], |r| r.get(0))
                        .map_err(backend)?;
                    session
                        .execute(params![id, &a.token_hash[..], a.created_at, a.expires_at])
                        .map_err(backend)?;
                    ids.push(w.ids.user(id));
                }
            }
            tx.commit().map_err(backend)?;
            Ok(ids)
        })
        .await
    }

    async fn create_session(&self, s: NewSession) -> StoreResult<SessionRecord> {
        self.write(move |w| {
            w.conn
                .prepare_cached(
                    "INSERT INTO sessions (user_id, token_hash, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                )
                .and_then(|mut st| {
                    st.execute(params![
                        w.ids.user_row(s.user_id),
                        &s.token_hash[..],
                        s.created_at,
                        s.expires_at
                    ])
                })
                .map_err(backend)?;
            Ok(SessionRecord {
                id: w.ids.session(w.conn.last_insert_rowid()),
                user_id: s.user_id,
                expires_at: s.expires_at,
            })
        })
        .await
    }

    async fn session_by_token(&self, token_hash: &TokenHash, now: i64) -> StoreResult<Option<SessionRecord>> {
        let (hash, ids) = (*token_hash, self.ids);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, user_id, expires_at FROM sessions
                 WHERE token_hash = ?1 AND revoked = 0 AND expires_at > ?2",
            )?
            .query_row(params![&hash[..], now], |r| {
                Ok(SessionRecord {
                    id: ids.session(r.get(0)?),
                    user_id: ids.user(r.get(1)?),
                    expires_at: r.get(2)?,
                })
            })
            .optional()
        })
        .await
    }

    async fn revoke_session(&self, id: SessionId) -> StoreResult<()> {
        self.write(move |w| {
            w.conn
                .execute("UPDATE sessions SET revoked = 1 WHERE id = ?1", [w.ids.session_row(id)])
                .map_err(backend)?;
            Ok(())
        })
        .await
    }

    async fn revoked_among(&self, sessions: &[SessionId]) -> StoreResult<Vec<SessionId>> {
        // The ids travel as one JSON array: one statement whatever their number.
        let rows = format!(
            "[{}]",
            sessions
                .iter()
                .map(|s| self.ids.session_row(*s).to_string())
                .collect::<Vec<_>>()
                .join(",")
        );
        let ids = self.ids;
        self.read(move |c| {
            c.prepare_cached(
                "SELECT s.id FROM json_each(?1) AS j JOIN sessions s ON s.id = j.value WHERE s.revoked = 1",
            )?
            .query_map([rows], |r| Ok(ids.session(r.get(0)?)))?
            .collect()
        })
        .await
    }

    async fn sessions_of(&self, user: UserId, now: i64) -> StoreResult<Vec<SessionInfo>> {
        let (row, ids) = (self.ids.user_row(user), self.ids);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT id, created_at, COALESCE(last_used_at, created_at) FROM sessions
                 WHERE user_id = ?1 AND revoked = 0 AND expires_at > ?2 ORDER BY created_at DESC, id DESC",
            )?
            .query_map(params![row, now], |r| {
                Ok(SessionInfo {
                    id: ids.session(r.get(0)?),
                    created_at: r.get(1)?,
                    last_used_at: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn revoke_session_of(&self, user: UserId, session: SessionId, now: i64) -> StoreResult<bool> {
        self.write(move |w| {
            let changed = w
                .conn
                .execute(
                    "UPDATE sessions SET revoked = 1
                     WHERE id = ?1 AND user_id = ?2 AND revoked = 0 AND expires_at > ?3",
                    params![w.ids.session_row(session), w.ids.user_row(user), now],
                )
                .map_err(backend)?;
            Ok(changed == 1)
        })
        .await
    }

    async fn change_password(
        &self,
        user: UserId,
        password_hash: &str,
        keep: SessionId,
        now: i64,
    ) -> StoreResult<Vec<SessionId>> {
        let password_hash = password_hash.to_owned();
        self.write(move |w| {
            let (row, keep) = (w.ids.user_row(user), w.ids.session_row(keep));
            let tx = w.conn.transaction().map_err(backend)?;
            tx.execute(
                "UPDATE users SET password_hash = ?2 WHERE id = ?1 AND deleted_at IS NULL",
                params![row, password_hash],
            )
            .map_err(backend)?;
            let revoked: Vec<i64> = tx
                .prepare(
                    "UPDATE sessions SET revoked = 1
                     WHERE user_id = ?1 AND id <> ?2 AND revoked = 0 AND expires_at > ?3 RETURNING id",
                )
                .and_then(|mut st| st.query_map(params![row, keep, now], |r| r.get(0))?.collect())
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(revoked.into_iter().map(|r| w.ids.session(r)).collect())
        })
        .await
    }

    async fn update_settings(&self, user: UserId, patch: SettingsPatch) -> StoreResult<Option<Settings>> {
        self.write(move |w| {
            let row = w.ids.user_row(user);
            let tx = w.conn.transaction().map_err(backend)?;
            tx.execute(
                "UPDATE users SET read_receipts = COALESCE(?2, read_receipts),
                                  presence_visibility = COALESCE(?3, presence_visibility)
                 WHERE id = ?1 AND deleted_at IS NULL",
                params![row, patch.read_receipts, patch.presence.map(|p| p.as_str())],
            )
            .map_err(backend)?;
            let settings = tx
                .query_row(
                    "SELECT read_receipts, presence_visibility FROM users WHERE id = ?1 AND deleted_at IS NULL",
                    [row],
                    |r| rows::settings_at(r, 0),
                )
                .optional()
                .map_err(backend)?;
            tx.commit().map_err(backend)?;
            Ok(settings)
        })
        .await
    }

    async fn set_block(&self, blocker: UserId, blocked: UserId, at: Option<i64>) -> StoreResult<bool> {
        self.write(move |w| {
            let (blocker, blocked) = (w.ids.user_row(blocker), w.ids.user_row(blocked));
            w.set_block(blocker, blocked, at)
        })
        .await
    }

    async fn blocks_of(&self, user: UserId) -> StoreResult<Vec<BlockView>> {
        let (row, ids) = (self.ids.user_row(user), self.ids);
        self.read(move |c| {
            c.prepare_cached(
                "SELECT u.id, u.username, b.at FROM (
                     SELECT user_hi AS other, lo_blocked_at AS at FROM conversations
                     WHERE user_lo = ?1 AND lo_blocked_at IS NOT NULL
                     UNION ALL
                     SELECT user_lo, hi_blocked_at FROM conversations
                     WHERE user_hi = ?1 AND hi_blocked_at IS NOT NULL) AS b
                 JOIN users u ON u.id = b.other
                 ORDER BY b.at DESC, u.id",
            )?
            .query_map([row], |r| {
                Ok(BlockView {
                    user_id: ids.user(r.get(0)?),
                    username: r.get(1)?,
                    blocked_at: r.get(2)?,
                })
            })?
            .collect()
        })
        .await
    }

    async fn blocked_between(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (a, b) = (self.ids.user_row(a), self.ids.user_row(b));
        let (lo, hi) = (a.min(b), a.max(b));
        self.read(move |c| {
            c.prepare_cached(
                "SELECT 1 FROM conversations WHERE user_lo = ?1 AND user_hi = ?2
                   AND (lo_blocked_at IS NOT NULL OR hi_blocked_at IS NOT NULL)",
            )?
            .exists(params![lo, hi])
        })
        .await
    }

    async fn shares_conversation(&self, a: UserId, b: UserId) -> StoreResult<bool> {
        let (a, b) = (self.ids.user_row(a), self.ids.user_row(b));
        let (lo, hi) = (a.min(b), a.max(b));
        self.read(move |c| {
            c.prepare_cached("SELECT 1 FROM conversations WHERE user_lo = ?1 AND user_hi = ?2 AND last_seq > 0")?
                .exists(params![lo, hi])
        })
        .await
    }

    async fn touch_sessions(&self, used: &[(SessionId, i64)]) -> StoreResult<()> {
        let used: Vec<(i64, i64)> = used.iter().map(|(s, at)| (self.ids.session_row(*s), *at)).collect();
        self.write(move |w| {
            let tx = w.conn.transaction().map_err(backend)?;
            {
                let mut touch = tx
                    .prepare_cached("UPDATE sessions SET last_used_at = ?2 WHERE id = ?1")
                    .map_err(backend)?;
                for (row, at) in used {
                    touch.execute(params![row, at]).map_err(backend)?;
                }
            }
            tx.commit().map_err(backend)
        })
        .await
    }

    async fn write_batch(&self, ops: Vec<WriteOp>, now: i64) -> StoreResult<Vec<WriteOutcome>> {
        self.write(move |w| w.write_batch(ops, now)).await
    }

    async fn history(&self, a: UserId, b: UserId, page: PageRequest) -> StoreResult<Page> {
        let ids = self.ids;
        self.read(move |c| reads::history(c, ids, a, b, page)).await
    }

    async fn pending(
        &self,
        recipient: UserId,
        after: Option<MessageId>,
        limit: usize,
    ) -> StoreResult<Vec<StoredMessage>> {
        let ids = self.ids;
        self.read(move |c| reads::pending(c, ids, recipient, after, limit))
            .await
    }

    async fn search(&self, user: UserId, text: &SearchText, before: Option<i64>, limit: usize) -> StoreResult<Page> {
        // Text sent since the writer last indexed is indexed now: what a
        // user just sent is found at once, not after up to a second.
        if self.index_behind.load(Ordering::Relaxed) {
            self.write(|w| {
                w.catch_up();
                Ok(())
            })
            .await?;
        }
        let (ids, text) = (self.ids, text.clone());
        self.read(move |c| reads::search(c, ids, user, &text, before, limit))
            .await
    }

    async fn conversations(&self, user: UserId, limit: usize) -> StoreResult<Vec<ConversationSummary>> {
        let ids = self.ids;
        self.read(move |c| reads::conversations(c, ids, user, limit)).await
    }

    async fn conversation_marks(&self, user: UserId) -> StoreResult<Vec<(UserId, i64)>> {
        let ids = self.ids;
        self.read(move |c| reads::conversation_marks(c, ids, user)).await
    }

    async fn ping(&self) -> StoreResult<()> {
        self.write(|w| w.conn.query_row("SELECT 1", [], |_| Ok(())).map_err(backend))
            .await
    }
}

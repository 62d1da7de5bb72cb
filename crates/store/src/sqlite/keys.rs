//! The idempotency keys of the SQLite store: (sender, `client_msg_id`) →
//! message row, in an LSM tree (fjall) in a folder beside the database
//! file (`<file>-keys`).
//!
//! In a SQLite B-tree these keys arrive in random order, so every commit
//! rewrote about one index page per message, and more as the store grew
//! (docs/BENCHMARKS.md §15, §20); an LSM writes them in order. The index is
//! derived from the message rows: it records up to which row it holds every
//! key (`upto`, written in the same atomic batch as the keys), and whatever
//! is above that mark (a crash between SQLite's commit and this write, a
//! new or deleted folder, an upgrade) is read back from the rows when the
//! index is opened. It is never synced: SQLite's commit is what makes a
//! message durable.
//!
//! One process at a time holds the index (fjall locks its folder). A second
//! process on the same file (`dyad admin …` beside a running server) runs
//! without it and refuses sends that carry a key; it tries to take the
//! index again at most once every [`RETRY_OPEN`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fjall::config::PartitioningPolicy;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode};
use rusqlite::{Connection, params};

/// How often a writer without the index tries to open it again.
const RETRY_OPEN: Duration = Duration::from_secs(1);
/// Keys written per batch while catching up from the message rows.
const CATCH_UP_CHUNK: i64 = 10_000;
/// The index's block cache. Beside it the index holds a 64 MiB write
/// buffer in memory (a second one while the first is flushed).
const CACHE_BYTES: u64 = 32 << 20;
/// Meta entries: the last message row whose key is indexed, and the
/// database the index belongs to (its id key, which copies of the file share).
const UPTO: &[u8] = b"upto";
const OWNER: &[u8] = b"database";

/// The folder that holds the key index of the database at `db`.
pub fn folder(db: &Path) -> PathBuf {
    PathBuf::from(format!("{}-keys", db.display()))
}

/// The key of (sender row, client key) in the index.
pub(super) fn encode(sender: i64, key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + key.len());
    k.extend_from_slice(&sender.to_be_bytes());
    k.extend_from_slice(key.as_bytes());
    k
}

fn decode_row(bytes: &[u8]) -> Option<i64> {
    Some(i64::from_be_bytes(bytes.try_into().ok()?))
}

/// Why the index could not be used.
#[derive(Debug, thiserror::Error)]
pub(super) enum KeyError {
    #[error("the idempotency key index: {0}")]
    Index(#[from] fjall::Error),
    #[error("reading message rows for the key index: {0}")]
    Rows(#[from] rusqlite::Error),
    #[error("another process holds the idempotency key index: sends with a client_msg_id are refused until it is free")]
    Elsewhere,
}

/// An open key index.
struct KeyIndex {
    db: Database,
    keys: Keyspace,
    meta: Keyspace,
    /// Every key of a message row up to this one is in `keys`.
    upto: i64,
}

impl KeyIndex {
    /// Opens (creating) the index of the database on `conn` at `dir`, and
    /// brings it up to the last message row.
    fn open(dir: &Path, conn: &Connection, owner: &[u8]) -> Result<Self, KeyError> {
        make_owner_only(dir)?;
        let db = match Database::builder(dir).cache_size(CACHE_BYTES).open() {
            Ok(db) => db,
            Err(fjall::Error::Locked) => return Err(KeyError::Elsewhere),
            Err(e) => return Err(e.into()),
        };
        let keys = db.keyspace("keys", || {
            // Every lookup is a random key, nearly always a miss: without
            // partitions, a table's whole filter block is read and
            // checksummed for each one once the filters outgrow the cache
            // (10× the CPU per message from ~3.7M keys on; BENCHMARKS.md
            // §21). In partitions, a lookup reads a few KiB.
            KeyspaceCreateOptions::default()
                .filter_block_partitioning_policy(PartitioningPolicy::all(true))
                .index_block_partitioning_policy(PartitioningPolicy::all(true))
        })?;
        let meta = db.keyspace("meta", KeyspaceCreateOptions::default)?;
        let last_row: i64 = conn.query_row("SELECT COALESCE(MAX(id), 0) FROM messages", [], |r| r.get(0))?;
        let upto = meta.get(UPTO)?.as_deref().and_then(decode_row).unwrap_or_default();
        let mut index = KeyIndex { db, keys, meta, upto };
        // Another database's index, or one ahead of the rows (the file was
        // restored from an older copy): start again from the rows.
        let ours = index.meta.get(OWNER)?.is_some_and(|o| *o == *owner);
        if !ours || upto > last_row {
            if !index.keys.is_empty()? {
                tracing::info!(dir = %dir.display(), "rebuilding the idempotency key index");
            }
            index.keys.clear()?;
            index.upto = 0;
            let mut batch = index.db.batch().durability(Some(PersistMode::SyncData));
            batch.insert(&index.meta, OWNER, owner);
            batch.insert(&index.meta, UPTO, 0i64.to_be_bytes());
            batch.commit()?;
        }
        index.catch_up(conn, last_row)?;
        Ok(index)
    }

    /// Adds the keys of every message row after `upto` up to `last_row`.
    fn catch_up(&mut self, conn: &Connection, last_row: i64) -> Result<(), KeyError> {
        let mut rows = conn.prepare(
            "SELECT id, sender_id, client_msg_id FROM messages
             WHERE id > ?1 AND id <= ?2 AND client_msg_id IS NOT NULL ORDER BY id LIMIT ?3",
        )?;
        let behind = last_row - self.upto;
        loop {
            let chunk: Vec<(i64, i64, String)> = rows
                .query_map(params![self.upto, last_row, CATCH_UP_CHUNK], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?))
                })?
                .collect::<rusqlite::Result<_>>()?;
            let Some(&(last, _, _)) = chunk.last() else {
                break;
            };
            self.write(
                chunk.iter().map(|(row, sender, key)| (encode(*sender, key), *row)),
                last,
            )?;
        }
        if self.upto < last_row {
            self.write(std::iter::empty(), last_row)?;
        }
        if behind > CATCH_UP_CHUNK {
            tracing::info!(rows = behind, "idempotency key index caught up");
        }
        Ok(())
    }

    /// Writes `keys` (encoded key, row) and moves the mark to `upto`, in
    /// one atomic batch.
    fn write(&mut self, keys: impl Iterator<Item = (Vec<u8>, i64)>, upto: i64) -> Result<(), KeyError> {
        // Flushed to the OS (so a killed process keeps it), not synced.
        let mut batch = self.db.batch().durability(Some(PersistMode::Buffer));
        for (key, row) in keys {
            batch.insert(&self.keys, key, row.to_be_bytes());
        }
        batch.insert(&self.meta, UPTO, upto.to_be_bytes());
        batch.commit()?;
        self.upto = upto;
        Ok(())
    }
}

/// The folder is readable by its owner only: its keys name senders.
fn make_owner_only(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    let io = |e: std::io::Error| KeyError::Index(e.into());
    if !dir.exists() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io)?;
    }
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io)
}

/// The writer's view of the key index: the index when this process holds
/// it, and the keys of the batch in progress, which reach the index once
/// the batch has committed.
pub(super) struct Keys {
    dir: PathBuf,
    owner: Vec<u8>,
    index: Option<KeyIndex>,
    /// When to try opening the index again, while it is not open.
    retry_at: Instant,
    /// Keys of messages the running batch stored: encoded key → row. As
    /// many as the batch has sends at most.
    fresh: HashMap<Vec<u8>, i64>,
}

impl Keys {
    /// Opens the index of the database on `conn` (at `path`), whose id key
    /// is `owner`. Another process holding it is not an error: this one
    /// runs without it until it can take it.
    pub(super) fn open(path: &Path, conn: &Connection, owner: &[u8]) -> Result<Self, KeyError> {
        let dir = folder(path);
        let index = match KeyIndex::open(&dir, conn, owner) {
            Ok(index) => Some(index),
            Err(KeyError::Elsewhere) => {
                tracing::info!(dir = %dir.display(), "another process holds the idempotency key index");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(Keys {
            dir,
            owner: owner.to_vec(),
            index,
            retry_at: Instant::now() + RETRY_OPEN,
            fresh: HashMap::new(),
        })
    }

    /// The row stored under `key` ([`encode`]) in an earlier batch or this
    /// one. It may name a row that holds something else (an index from
    /// before a restore): the caller checks the row.
    pub(super) fn find(&self, key: &[u8]) -> Result<Option<i64>, KeyError> {
        if let Some(&row) = self.fresh.get(key) {
            return Ok(Some(row));
        }
        let index = self.index.as_ref().ok_or(KeyError::Elsewhere)?;
        Ok(index.keys.get(key)?.as_deref().and_then(decode_row))
    }

    /// The running batch stored `row` under `key` ([`encode`]).
    pub(super) fn stored(&mut self, key: Vec<u8>, row: i64) {
        self.fresh.insert(key, row);
    }

    /// The running batch rolled back.
    pub(super) fn rolled_back(&mut self) {
        self.fresh.clear();
    }

    /// The running batch committed: its keys go to the index. If that
    /// fails the index is closed; reopening it reads them back from the
    /// rows.
    pub(super) fn committed(&mut self) {
        let fresh = std::mem::take(&mut self.fresh);
        let (Some(index), Some(&last)) = (self.index.as_mut(), fresh.values().max()) else {
            return;
        };
        let upto = last.max(index.upto);
        if let Err(e) = index.write(fresh.into_iter(), upto) {
            tracing::warn!(error = %e, "writing idempotency keys failed; reopening the index");
            self.index = None;
            self.retry_at = Instant::now();
        }
    }

    /// Whether the index is open in this process.
    pub(super) fn held(&self) -> bool {
        self.index.is_some()
    }

    /// Opens the index if it is not open and a retry is due. Called
    /// between transactions, so that catching up reads committed rows only.
    pub(super) fn reopen_if_due(&mut self, conn: &Connection) {
        if self.index.is_some() || Instant::now() < self.retry_at {
            return;
        }
        self.retry_at = Instant::now() + RETRY_OPEN;
        match KeyIndex::open(&self.dir, conn, &self.owner) {
            Ok(index) => self.index = Some(index),
            Err(KeyError::Elsewhere) => {}
            Err(e) => tracing::warn!(error = %e, "opening the idempotency key index failed"),
        }
    }
}

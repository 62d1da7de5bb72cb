//! The SQLite schema, applied in numbered steps recorded in `user_version`.

use rusqlite::Connection;

use crate::client_key;
use crate::ids::IdCipher;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    r#"
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,
    created_at    INTEGER NOT NULL,
    last_seen     INTEGER
);
CREATE TABLE sessions (
    id         INTEGER PRIMARY KEY,
    user_id    INTEGER NOT NULL REFERENCES users(id),
    token_hash BLOB    NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    revoked    INTEGER NOT NULL DEFAULT 0
);
-- One row per pair of users, lower id first; it holds the seq counter.
CREATE TABLE conversations (
    id              INTEGER PRIMARY KEY,
    user_lo         INTEGER NOT NULL,
    user_hi         INTEGER NOT NULL,
    last_seq        INTEGER NOT NULL,
    last_ts         INTEGER NOT NULL,
    last_message_id INTEGER NOT NULL,
    UNIQUE (user_lo, user_hi)
);
CREATE INDEX conversations_by_hi ON conversations (user_hi);
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,
    conversation_id INTEGER NOT NULL,
    seq             INTEGER NOT NULL,
    sender_id       INTEGER NOT NULL,
    recipient_id    INTEGER NOT NULL,
    body            TEXT    NOT NULL,
    ts              INTEGER NOT NULL,
    delivered_at    INTEGER,
    client_msg_id   TEXT
);
-- ts strictly increases with seq inside a conversation, so this one index
-- serves history pages by time and keeps (conversation, ts) unique.
CREATE UNIQUE INDEX messages_by_conversation ON messages (conversation_id, ts);
CREATE UNIQUE INDEX messages_idempotency ON messages (sender_id, client_msg_id)
    WHERE client_msg_id IS NOT NULL;
CREATE INDEX messages_pending ON messages (recipient_id, id) WHERE delivered_at IS NULL;
"#,
    r#"
-- Idempotency keys are looked up by a 64-bit hash (then compared in full):
-- the index on the text keys was the largest cost of a send, and it grew
-- with the store (docs/BENCHMARKS.md).
ALTER TABLE messages ADD COLUMN client_key INTEGER;
DROP INDEX messages_idempotency;
CREATE INDEX messages_by_client_key ON messages (sender_id, client_key) WHERE client_key IS NOT NULL;
"#,
    r#"
-- Facts about the database itself. `id_key` is the key of the permutation
-- that turns row numbers into the ids clients see (ids.rs); it is made when
-- the store opens.
CREATE TABLE meta (
    name  TEXT PRIMARY KEY,
    value BLOB NOT NULL
) WITHOUT ROWID;
-- Ids are identities clients keep: rows made before the key keep showing
-- their numbers.
INSERT INTO meta (name, value) SELECT 'legacy_users', COALESCE(MAX(id), 0) FROM users;
INSERT INTO meta (name, value) SELECT 'legacy_messages', COALESCE(MAX(id), 0) FROM messages;
-- A deleted account keeps its row, so that the messages it exchanged keep
-- their sender; its name, password and last-seen time are erased.
ALTER TABLE users ADD COLUMN deleted_at INTEGER;
"#,
    r#"
-- A user's devices are their sessions: listed with when each was last used
-- (kept to the minute), and revoked one by one.
ALTER TABLE sessions ADD COLUMN last_used_at INTEGER;
CREATE INDEX sessions_by_user ON sessions (user_id);
"#,
    r#"
-- Settings: whether read marks cross, and who sees the user online.
ALTER TABLE users ADD COLUMN read_receipts INTEGER NOT NULL DEFAULT 1;
ALTER TABLE users ADD COLUMN presence_visibility TEXT NOT NULL DEFAULT 'everyone';
"#,
    r#"
-- Blocks live on the pair's conversation row (made, without messages, for
-- a block between strangers): the row a send reads anyway. Each side's
-- time of blocking the other, or NULL.
ALTER TABLE conversations ADD COLUMN lo_blocked_at INTEGER;
ALTER TABLE conversations ADD COLUMN hi_blocked_at INTEGER;
"#,
    r#"
-- Read marks: each side's `seq` up to which it has read the other's
-- messages, and that message's `ts` (unread counts are an index range on
-- (conversation_id, ts) above it).
ALTER TABLE conversations ADD COLUMN lo_read_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN lo_read_ts INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN hi_read_seq INTEGER NOT NULL DEFAULT 0;
ALTER TABLE conversations ADD COLUMN hi_read_ts INTEGER NOT NULL DEFAULT 0;
-- Edits and deletes. A delete empties `body` (secure_delete zeroes the old
-- bytes); `changed_at` strictly increases within a conversation, for
-- `changed_since`.
ALTER TABLE messages ADD COLUMN edited_at INTEGER;
ALTER TABLE messages ADD COLUMN deleted_at INTEGER;
ALTER TABLE messages ADD COLUMN changed_at INTEGER;
CREATE INDEX messages_changed ON messages (conversation_id, changed_at) WHERE changed_at IS NOT NULL;
"#,
    r#"
-- Full-text search: the current text of every message not deleted, under
-- the message's row number, with its two users as tokens (`owners`, "u<row>")
-- so that a search looks only at the searcher's messages. Contentless: the
-- text lives in `messages` only, and a change removes the old text's words
-- with FTS5's 'delete' command, which is given that text. With secure-delete
-- they go from the index at once, not at a later merge (a contentless_delete
-- table would only mark the row deleted, and keep its words).
CREATE VIRTUAL TABLE messages_fts USING fts5(
    body, owners, content = '', tokenize = 'unicode61 remove_diacritics 0'
);
INSERT INTO messages_fts (messages_fts, rank) VALUES ('secure-delete', 1);
INSERT INTO messages_fts (rowid, body, owners)
    SELECT id, body, 'u' || sender_id || ' u' || recipient_id FROM messages WHERE deleted_at IS NULL;
"#,
    r#"
-- Two indexes are built after the send's transaction, by the writer about
-- once a second (writer.rs, `LateIndexes`), for every message row up to
-- `indexed_upto` and none above it: the search index, and the idempotency
-- keys (until then, the writer holds the newer keys in memory). Both took
-- a random page per message in every batch's commit (docs/BENCHMARKS.md §15).
CREATE TABLE message_keys (
    sender_id   INTEGER NOT NULL,
    client_key  INTEGER NOT NULL,
    message_row INTEGER NOT NULL,
    PRIMARY KEY (sender_id, client_key, message_row)
) WITHOUT ROWID;
INSERT INTO message_keys (sender_id, client_key, message_row)
    SELECT sender_id, client_key, id FROM messages WHERE client_key IS NOT NULL;
DROP INDEX messages_by_client_key;
INSERT INTO meta (name, value) SELECT 'indexed_upto', COALESCE(MAX(id), 0) FROM messages;
"#,
    r#"
-- The idempotency keys move to an LSM tree in a folder beside the file
-- (keys.rs), which the first open after this step fills from the message
-- rows. `client_key` is no longer written (docs/BENCHMARKS.md §21).
DROP TABLE message_keys;
"#,
];

/// The key of the database's id permutation: random, made with the
/// database, and shared by its copies, so it also tells which database an
/// idempotency key index belongs to.
pub(super) fn id_key(conn: &Connection) -> Result<Vec<u8>, String> {
    conn.query_row("SELECT value FROM meta WHERE name = 'id_key'", [], |r| r.get(0))
        .map_err(|e| e.to_string())
}

/// Fills `client_key` for rows written before it existed (step 2).
fn backfill_client_keys(tx: &rusqlite::Transaction<'_>) -> rusqlite::Result<()> {
    let rows: Vec<(i64, String)> = tx
        .prepare("SELECT id, client_msg_id FROM messages WHERE client_msg_id IS NOT NULL")?
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?
        .collect::<rusqlite::Result<_>>()?;
    let mut update = tx.prepare("UPDATE messages SET client_key = ?2 WHERE id = ?1")?;
    for (id, key) in rows {
        update.execute(rusqlite::params![id, client_key(&key)])?;
    }
    Ok(())
}

/// The schema version this build writes.
pub const VERSION: usize = MIGRATIONS.len();

/// The schema version of the database on `conn`, refused if it is newer than
/// this build knows: an older binary must not write to it.
pub(super) fn version(conn: &Connection) -> Result<usize, String> {
    let current: usize = conn
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if current > VERSION {
        return Err(format!(
            "the database has schema version {current}, newer than this dyad knows ({VERSION}): \
             it was written by a newer release; run that release (or a newer one), or restore a backup"
        ));
    }
    Ok(current)
}

/// Brings the database up to the newest schema, in one transaction per step.
pub(super) fn migrate(conn: &mut Connection) -> Result<(), String> {
    let current = version(conn)?;
    step(conn, current).map_err(|e| e.to_string())
}

fn step(conn: &mut Connection, current: usize) -> rusqlite::Result<()> {
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        if version + 1 == 2 {
            backfill_client_keys(&tx)?;
        }
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

/// The database's id permutation; its key is made on first use.
pub(super) fn id_cipher(conn: &Connection) -> Result<IdCipher, String> {
    let fresh = IdCipher::new_key().map_err(|e| format!("no randomness for the id key: {e}"))?;
    conn.execute(
        "INSERT INTO meta (name, value) VALUES ('id_key', ?1) ON CONFLICT (name) DO NOTHING",
        [&fresh[..]],
    )
    .map_err(|e| e.to_string())?;
    let key = id_key(conn)?;
    let legacy = |name: &str| -> Result<i64, String> {
        conn.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| r.get(0))
            .map_err(|e| format!("{name}: {e}"))
    };
    IdCipher::new(&key, legacy("legacy_users")?, legacy("legacy_messages")?)
        .ok_or_else(|| format!("the stored id key is {} bytes, not 16", key.len()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A database of schema version 1 holding `rows`, migrated to the newest.
    fn migrated_from_version_1(rows: &str) -> Connection {
        let mut conn = Connection::open_in_memory().unwrap_or_else(|e| panic!("{e}"));
        let tx = conn.transaction().unwrap_or_else(|e| panic!("{e}"));
        tx.execute_batch(MIGRATIONS[0]).unwrap_or_else(|e| panic!("{e}"));
        tx.pragma_update(None, "user_version", 1)
            .unwrap_or_else(|e| panic!("{e}"));
        tx.execute_batch(rows).unwrap_or_else(|e| panic!("{e}"));
        tx.commit().unwrap_or_else(|e| panic!("{e}"));
        migrate(&mut conn).unwrap_or_else(|e| panic!("{e}"));
        conn
    }

    #[test]
    fn a_version_1_database_gets_its_keys_backfilled() {
        let conn = migrated_from_version_1(
            "INSERT INTO messages (conversation_id, seq, sender_id, recipient_id, body, ts, client_msg_id)
             VALUES (1, 1, 1, 2, 'hi', 10, 'key-1'), (1, 2, 2, 1, 'yo', 11, NULL)",
        );
        let keys: Vec<Option<i64>> = conn
            .prepare("SELECT client_key FROM messages ORDER BY id")
            .and_then(|mut s| s.query_map([], |r| r.get(0))?.collect())
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys, vec![Some(client_key("key-1")), None]);
    }

    #[test]
    fn accounts_and_messages_from_before_the_key_keep_their_ids() {
        use crate::ids::IdKind;
        let conn = migrated_from_version_1(
            "INSERT INTO users (username, password_hash, created_at) VALUES ('alice', 'h', 1), ('bob', 'h', 1);
             INSERT INTO messages (conversation_id, seq, sender_id, recipient_id, body, ts) VALUES (1, 1, 1, 2, 'hi', 10)",
        );
        let ids = id_cipher(&conn).unwrap_or_else(|e| panic!("{e}"));
        // What clients already hold still names the same rows.
        assert_eq!((ids.show(IdKind::User, 2), ids.row(IdKind::User, 2)), (2, 2));
        assert_eq!(ids.show(IdKind::Message, 1), 1);
        // Rows made from now on are hidden.
        assert!(ids.show(IdKind::User, 3) > 1 << 62);
        assert!(ids.show(IdKind::Message, 2) > 1 << 62);
        // Opening again reads the same permutation.
        let again = id_cipher(&conn).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(again.show(IdKind::User, 3), ids.show(IdKind::User, 3));
    }
}

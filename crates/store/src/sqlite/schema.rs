//! The SQLite schema, applied in numbered steps recorded in `user_version`.

use rusqlite::Connection;

/// Each entry moves the schema from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[r#"
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
"#];

/// Brings the database up to the newest schema.
pub(super) fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current: usize = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    for (version, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", version + 1)?;
        tx.commit()?;
    }
    Ok(())
}

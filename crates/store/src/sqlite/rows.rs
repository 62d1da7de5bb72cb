//! Reading rows into records; the column lists here match the queries.

use rusqlite::Row;

use crate::ids::IdCipher;
use crate::{PresenceVisibility, Settings, StoredMessage, UserRecord};

/// Columns for [`message`], in order. A macro, not a `const`, so that
/// queries are built with `concat!` at compile time: building them with
/// `format!` cost an allocation (and a longer cache-key hash) per statement,
/// on the writer's hot path among others.
macro_rules! message_columns {
    () => {
        "id, sender_id, recipient_id, body, ts, seq, delivered_at, edited_at, deleted_at"
    };
}
pub(super) use message_columns;

/// Columns for [`user`], in order.
macro_rules! user_columns {
    () => {
        "id, username, password_hash, created_at, last_seen, deleted_at, read_receipts, presence_visibility"
    };
}
pub(super) use user_columns;

/// [`message_columns`] as a value, for the one query that qualifies them.
pub(super) const MESSAGE_COLUMNS: &str = message_columns!();

pub(super) fn message(row: &Row<'_>, ids: IdCipher) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0, ids)
}

/// A message whose columns start at `at`.
pub(super) fn message_at(row: &Row<'_>, at: usize, ids: IdCipher) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: ids.message(row.get(at)?),
        sender_id: ids.user(row.get(at + 1)?),
        recipient_id: ids.user(row.get(at + 2)?),
        body: row.get(at + 3)?,
        timestamp: row.get(at + 4)?,
        seq: row.get(at + 5)?,
        delivered_at: row.get(at + 6)?,
        edited_at: row.get(at + 7)?,
        deleted_at: row.get(at + 8)?,
        read: false,
    })
}

pub(super) fn user(row: &Row<'_>, ids: IdCipher) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: ids.user(row.get(0)?),
        username: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get(3)?,
        last_seen: row.get(4)?,
        deleted_at: row.get(5)?,
        settings: settings_at(row, 6)?,
    })
}

/// The settings in columns `at` (`read_receipts`) and `at + 1`
/// (`presence_visibility`).
pub(super) fn settings_at(row: &Row<'_>, at: usize) -> rusqlite::Result<Settings> {
    Ok(Settings {
        read_receipts: row.get(at)?,
        presence: PresenceVisibility::from_stored(&row.get::<_, String>(at + 1)?),
    })
}

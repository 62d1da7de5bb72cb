//! Reading rows into records; the column lists here match the queries.

use dyad_protocol::{MessageId, UserId};
use rusqlite::Row;

use crate::{StoredMessage, UserRecord};

/// Columns for [`message`], in order.
pub(super) const MESSAGE_COLUMNS: &str = "id, sender_id, recipient_id, body, ts, seq, delivered_at";

/// Columns for [`user`], in order.
pub(super) const USER_COLUMNS: &str = "id, username, password_hash, created_at, last_seen";

pub(super) fn message(row: &Row<'_>) -> rusqlite::Result<StoredMessage> {
    message_at(row, 0)
}

/// A message whose columns start at `at`.
pub(super) fn message_at(row: &Row<'_>, at: usize) -> rusqlite::Result<StoredMessage> {
    Ok(StoredMessage {
        id: MessageId(row.get(at)?),
        sender_id: UserId(row.get(at + 1)?),
        recipient_id: UserId(row.get(at + 2)?),
        body: row.get(at + 3)?,
        timestamp: row.get(at + 4)?,
        seq: row.get(at + 5)?,
        delivered_at: row.get(at + 6)?,
    })
}

pub(super) fn user(row: &Row<'_>) -> rusqlite::Result<UserRecord> {
    Ok(UserRecord {
        id: UserId(row.get(0)?),
        username: row.get(1)?,
        password_hash: row.get(2)?,
        created_at: row.get(3)?,
        last_seen: row.get(4)?,
    })
}

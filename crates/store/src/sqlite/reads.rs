//! Queries that run on the read pool.

use dyad_protocol::{MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{self, MESSAGE_COLUMNS, message_columns};
use crate::ids::IdCipher;
use crate::{ConversationSummary, Page, PageRequest, StoredMessage};

pub(super) fn history(
    c: &Connection,
    ids: IdCipher,
    a: UserId,
    b: UserId,
    page: PageRequest,
) -> rusqlite::Result<Page> {
    let (a, b) = (ids.user_row(a), ids.user_row(b));
    let (lo, hi) = (a.min(b), a.max(b));
    let conversation: Option<i64> = c
        .prepare_cached("SELECT id FROM conversations WHERE user_lo = ?1 AND user_hi = ?2")?
        .query_row(params![lo, hi], |r| r.get(0))
        .optional()?;
    let Some(conversation) = conversation else {
        return Ok(Page {
            messages: Vec::new(),
            has_more: false,
        });
    };
    // `?2` is the time bound: older-than newest-first, or newer-than oldest-first.
    macro_rules! page_query {
        ($cmp:literal, $order:literal) => {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND ts ",
                $cmp,
                " ?2 ORDER BY ts ",
                $order,
                " LIMIT ?3"
            )
        };
    }
    let (sql, bound, limit) = match page {
        PageRequest::Before { before, limit } => (page_query!("<", "DESC"), before.unwrap_or(i64::MAX), limit),
        PageRequest::After { after, limit } => (page_query!(">", "ASC"), after, limit),
    };
    let mut messages = c
        .prepare_cached(sql)?
        .query_map(params![conversation, bound, limit as i64 + 1], |r| {
            rows::message(r, ids)
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    Ok(Page { messages, has_more })
}

pub(super) fn pending(
    c: &Connection,
    ids: IdCipher,
    recipient: UserId,
    after: Option<MessageId>,
    limit: usize,
) -> rusqlite::Result<Vec<StoredMessage>> {
    let after = after.map_or(0, |id| ids.message_row(id));
    c.prepare_cached(concat!(
        "SELECT ",
        message_columns!(),
        " FROM messages
         WHERE recipient_id = ?1 AND delivered_at IS NULL AND id > ?2
         ORDER BY id LIMIT ?3"
    ))?
    .query_map(params![ids.user_row(recipient), after, limit as i64], |r| {
        rows::message(r, ids)
    })?
    .collect()
}

pub(super) fn conversations(
    c: &Connection,
    ids: IdCipher,
    user: UserId,
    limit: usize,
) -> rusqlite::Result<Vec<ConversationSummary>> {
    let columns = MESSAGE_COLUMNS
        .split(", ")
        .map(|col| format!("m.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    c.prepare_cached(&format!(
        "SELECT u.id, CASE WHEN u.deleted_at IS NULL THEN u.username ELSE 'deleted account' END, {columns}
         FROM (SELECT user_hi AS peer, last_message_id, last_ts FROM conversations WHERE user_lo = ?1 AND last_seq > 0
               UNION ALL
               SELECT user_lo AS peer, last_message_id, last_ts FROM conversations WHERE user_hi = ?1 AND last_seq > 0) AS c
         JOIN users u ON u.id = c.peer
         JOIN messages m ON m.id = c.last_message_id
         ORDER BY c.last_ts DESC
         LIMIT ?2"
    ))?
    .query_map(params![ids.user_row(user), limit as i64], |r| {
        Ok(ConversationSummary {
            peer_id: ids.user(r.get(0)?),
            peer_username: r.get(1)?,
            last_message: rows::message_at(r, 2, ids)?,
        })
    })?
    .collect()
}

pub(super) fn conversation_marks(c: &Connection, ids: IdCipher, user: UserId) -> rusqlite::Result<Vec<(UserId, i64)>> {
    c.prepare_cached(
        "SELECT user_hi, last_seq FROM conversations WHERE user_lo = ?1 AND last_seq > 0
         UNION ALL
         SELECT user_lo, last_seq FROM conversations WHERE user_hi = ?1 AND last_seq > 0",
    )?
    .query_map(params![ids.user_row(user)], |r| Ok((ids.user(r.get(0)?), r.get(1)?)))?
    .collect()
}

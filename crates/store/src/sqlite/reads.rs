//! Queries that run on the read pool.

use dyad_protocol::{MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, params};

use super::rows::{self, MESSAGE_COLUMNS, message_columns};
use crate::ids::IdCipher;
use crate::{ConversationSummary, Page, PageRequest, Standing, StoredMessage};
use dyad_protocol::domain::SearchText;

pub(super) fn history(
    c: &Connection,
    ids: IdCipher,
    a: UserId,
    b: UserId,
    page: PageRequest,
) -> rusqlite::Result<Page> {
    let (a, b) = (ids.user_row(a), ids.user_row(b));
    let (lo, hi) = (a.min(b), a.max(b));
    let standing = c
        .prepare_cached(
            "SELECT c.id, c.lo_read_seq, c.hi_read_seq,
                    (SELECT MIN(read_receipts) FROM users WHERE id IN (c.user_lo, c.user_hi))
             FROM conversations c WHERE c.user_lo = ?1 AND c.user_hi = ?2",
        )?
        .query_row(params![lo, hi], |r| {
            Ok(Standing {
                id: r.get(0)?,
                lo,
                lo_read_seq: r.get(1)?,
                hi_read_seq: r.get(2)?,
                receipts: r.get::<_, Option<bool>>(3)?.unwrap_or(false),
            })
        })
        .optional()?;
    let Some(standing) = standing else {
        return Ok(Page {
            messages: Vec::new(),
            has_more: false,
        });
    };
    // `?2` is the bound: older-than newest-first, newer-than oldest-first,
    // or changed-after in order of change.
    macro_rules! page_query {
        ($col:literal, $cmp:literal, $order:literal) => {
            concat!(
                "SELECT ",
                message_columns!(),
                " FROM messages WHERE conversation_id = ?1 AND ",
                $col,
                " ",
                $cmp,
                " ?2 ORDER BY ",
                $col,
                " ",
                $order,
                " LIMIT ?3"
            )
        };
    }
    let (sql, bound, limit) = match page {
        PageRequest::Before { before, limit } => (page_query!("ts", "<", "DESC"), before.unwrap_or(i64::MAX), limit),
        PageRequest::After { after, limit } => (page_query!("ts", ">", "ASC"), after, limit),
        PageRequest::ChangedSince { since, limit } => (page_query!("changed_at", ">", "ASC"), since, limit),
    };
    let mut messages = c
        .prepare_cached(sql)?
        .query_map(params![standing.id, bound, limit as i64 + 1], |r| rows::message(r, ids))?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    let has_more = messages.len() > limit;
    messages.truncate(limit);
    for m in &mut messages {
        m.read = standing.read(m, ids);
    }
    Ok(Page { messages, has_more })
}

/// An FTS5 query for `text` in user `row`'s messages: every word, each a
/// quoted string (so no word is read as syntax), in `body`, and the user's
/// token in `owners`.
fn fts_query(text: &SearchText, row: i64) -> String {
    let words: Vec<String> = text
        .words()
        .iter()
        .map(|w| format!("\"{}\"", w.replace('"', "\"\"")))
        .collect();
    format!("owners : \"u{row}\" AND body : ({})", words.join(" AND "))
}

pub(super) fn search(
    c: &Connection,
    ids: IdCipher,
    user: UserId,
    text: &SearchText,
    before: Option<i64>,
    limit: usize,
) -> rusqlite::Result<Page> {
    let row = ids.user_row(user);
    let columns = MESSAGE_COLUMNS
        .split(", ")
        .map(|col| format!("m.{col}"))
        .collect::<Vec<_>>()
        .join(", ");
    // Newest first straight from the index's rowid order; each hit's read
    // state from its conversation row.
    let mut messages = c
        .prepare_cached(&format!(
            "SELECT {columns},
                    CASE WHEN m.recipient_id = c.user_lo THEN m.seq <= c.lo_read_seq ELSE m.seq <= c.hi_read_seq END
                    AND (SELECT MIN(read_receipts) FROM users WHERE id IN (c.user_lo, c.user_hi))
             FROM messages_fts f
             JOIN messages m ON m.id = f.rowid
             JOIN conversations c ON c.id = m.conversation_id
             WHERE messages_fts MATCH ?1 AND m.ts < ?2 AND m.deleted_at IS NULL
             ORDER BY f.rowid DESC
             LIMIT ?3"
        ))?
        .query_map(
            params![fts_query(text, row), before.unwrap_or(i64::MAX), limit as i64 + 1],
            |r| {
                let mut m = rows::message(r, ids)?;
                m.read = r.get::<_, Option<bool>>(9)?.unwrap_or(false);
                Ok(m)
            },
        )?
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
    // Unread: the peer's messages above the user's read mark, found by time
    // on the conversation's index.
    c.prepare_cached(&format!(
        "SELECT u.id, CASE WHEN u.deleted_at IS NULL THEN u.username ELSE 'deleted account' END,
                c.my_read, c.peer_read,
                (SELECT MIN(read_receipts) FROM users WHERE id IN (?1, c.peer)),
                (SELECT COUNT(*) FROM messages x WHERE x.conversation_id = c.cid AND x.ts > c.my_read_ts
                                                   AND x.sender_id = c.peer),
                {columns}
         FROM (SELECT id AS cid, user_hi AS peer, lo_read_seq AS my_read, lo_read_ts AS my_read_ts,
                      hi_read_seq AS peer_read, last_message_id, last_ts
               FROM conversations WHERE user_lo = ?1 AND last_seq > 0
               UNION ALL
               SELECT id AS cid, user_lo AS peer, hi_read_seq AS my_read, hi_read_ts AS my_read_ts,
                      lo_read_seq AS peer_read, last_message_id, last_ts
               FROM conversations WHERE user_hi = ?1 AND last_seq > 0) AS c
         JOIN users u ON u.id = c.peer
         JOIN messages m ON m.id = c.last_message_id
         ORDER BY c.last_ts DESC
         LIMIT ?2"
    ))?
    .query_map(params![ids.user_row(user), limit as i64], |r| {
        let (my_read, peer_read): (i64, i64) = (r.get(2)?, r.get(3)?);
        let receipts = r.get::<_, Option<bool>>(4)?.unwrap_or(false);
        let mut last_message = rows::message_at(r, 6, ids)?;
        let recipients_mark = if last_message.recipient_id == user {
            my_read
        } else {
            peer_read
        };
        last_message.read = receipts && last_message.seq <= recipients_mark;
        Ok(ConversationSummary {
            peer_id: ids.user(r.get(0)?),
            peer_username: r.get(1)?,
            last_message,
            unread_count: r.get(5)?,
            last_read_seq: my_read,
            peer_last_read_seq: if receipts { peer_read } else { 0 },
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

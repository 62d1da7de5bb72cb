//! Moving a SQLite store into PostgreSQL: every account, session, setting,
//! block, read mark and message, row for row, so that every id a client
//! holds names the same thing afterwards (the id key comes along).
//!
//! The target must be empty; everything is copied in one transaction, so
//! a failed import leaves nothing behind. Rows travel in chunks as arrays
//! that `unnest` turns into sets, as the batch writer's do.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use sqlx::{Connection as _, PgConnection};

use super::PostgresStore;
use crate::sqlite::SqliteStore;
use crate::{StoreResult, backend};

/// Rows per statement.
const CHUNK: usize = 10_000;

/// What an import copied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    /// Accounts, deleted ones included.
    pub users: u64,
    /// Sessions, revoked and expired ones included.
    pub sessions: u64,
    /// Conversations (and blocks between strangers).
    pub conversations: u64,
    /// Messages, deleted ones included.
    pub messages: u64,
}

/// Copies the SQLite store at `source` into the empty PostgreSQL database
/// at `target`; `progress` hears each table's running count.
pub async fn from_sqlite(source: &Path, target: &str, mut progress: impl FnMut(&str, u64)) -> StoreResult<Imported> {
    if !source.is_file() {
        return Err(backend(format!("{}: no such database", source.display())));
    }
    // Both at today's schema: opening migrates them (and gives each its id
    // key; the target's is replaced by the source's below).
    drop(SqliteStore::open(source)?);
    drop(PostgresStore::connect(target).await?);
    let src = Connection::open_with_flags(source, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(backend)?;
    let mut pg = PgConnection::connect(target).await.map_err(backend)?;
    let held: i64 = sqlx::query_scalar("SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM messages)")
        .fetch_one(&mut pg)
        .await
        .map_err(backend)?;
    if held > 0 {
        return Err(backend(
            "the target database already holds accounts or messages: import into an empty one",
        ));
    }
    let mut tx = pg.begin().await.map_err(backend)?;

    let users = copy(
        &src,
        &mut tx,
        "SELECT id, username, password_hash, created_at, last_seen, deleted_at, read_receipts, presence_visibility
         FROM users WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            Ok(UserRow(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get::<_, i64>(6)? != 0,
                r.get(7)?,
            ))
        },
        |r| r.0,
        async |tx, rows: Vec<UserRow>| {
            sqlx::query(
                "INSERT INTO users (id, username, password_hash, created_at, last_seen, deleted_at, read_receipts,
                                    presence_visibility)
                 SELECT * FROM unnest($1::int8[], $2::text[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                                      $7::bool[], $8::text[])",
            )
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.5).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.6).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.7.clone()).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
        },
        |n| progress("users", n),
    )
    .await?;

    let sessions = copy(
        &src,
        &mut tx,
        "SELECT id, user_id, token_hash, created_at, expires_at, revoked, last_used_at
         FROM sessions WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            Ok(SessionRow(
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get::<_, i64>(5)? != 0,
                r.get(6)?,
            ))
        },
        |r| r.0,
        async |tx, rows: Vec<SessionRow>| {
            sqlx::query(
                "INSERT INTO sessions (id, user_id, token_hash, created_at, expires_at, revoked, last_used_at)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::bytea[], $4::int8[], $5::int8[], $6::bool[],
                                      $7::int8[])",
            )
            .bind(rows.iter().map(|r| r.0).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.1).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.2.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.3).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.4).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.5).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.6).collect::<Vec<_>>())
            .execute(&mut **tx)
            .await
        },
        |n| progress("sessions", n),
    )
    .await?;

    let conversations = copy(
        &src,
        &mut tx,
        "SELECT id, user_lo, user_hi, last_seq, last_ts, last_message_id, lo_blocked_at, hi_blocked_at,
                lo_read_seq, lo_read_ts, hi_read_seq, hi_read_ts
         FROM conversations WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            let mut row = [None; 12];
            for (i, v) in row.iter_mut().enumerate() {
                *v = r.get(i)?;
            }
            Ok(row)
        },
        |r| r[0].unwrap_or(0),
        async |tx, rows: Vec<[Option<i64>; 12]>| {
            let column = |i: usize| rows.iter().map(|r| r[i]).collect::<Vec<_>>();
            sqlx::query(
                "INSERT INTO conversations (id, user_lo, user_hi, last_seq, last_ts, last_message_id, lo_blocked_at,
                                            hi_blocked_at, lo_read_seq, lo_read_ts, hi_read_seq, hi_read_ts)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                                      $7::int8[], $8::int8[], $9::int8[], $10::int8[], $11::int8[], $12::int8[])",
            )
            .bind(column(0))
            .bind(column(1))
            .bind(column(2))
            .bind(column(3))
            .bind(column(4))
            .bind(column(5))
            .bind(column(6))
            .bind(column(7))
            .bind(column(8))
            .bind(column(9))
            .bind(column(10))
            .bind(column(11))
            .execute(&mut **tx)
            .await
        },
        |n| progress("conversations", n),
    )
    .await?;

    let messages = copy(
        &src,
        &mut tx,
        "SELECT id, conversation_id, seq, sender_id, recipient_id, body, ts, client_msg_id,
                edited_at, deleted_at, changed_at, delivered_at
         FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2",
        |r| {
            // The key's hash, which PostgreSQL indexes (SQLite keeps its
            // keys whole, in their own index).
            let client_msg_id: Option<String> = r.get(7)?;
            Ok(MessageRow {
                numbers: [r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(6)?],
                body: r.get(5)?,
                optional: [
                    client_msg_id.as_deref().map(crate::client_key),
                    r.get(8)?,
                    r.get(9)?,
                    r.get(10)?,
                    r.get(11)?,
                ],
                client_msg_id,
            })
        },
        |r| r.numbers[0],
        async |tx, rows: Vec<MessageRow>| {
            let number = |i: usize| rows.iter().map(|r| r.numbers[i]).collect::<Vec<_>>();
            let optional = |i: usize| rows.iter().map(|r| r.optional[i]).collect::<Vec<_>>();
            // Undelivered messages are `pending` rows on PostgreSQL, and a
            // delivery its own row.
            sqlx::query(
                "WITH m AS (
                    SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                                         $7::text[], $8::text[], $9::int8[], $10::int8[], $11::int8[], $12::int8[],
                                         $13::int8[])
                        AS m(id, conversation_id, seq, sender_id, recipient_id, ts, body, client_msg_id, client_key,
                             edited_at, deleted_at, changed_at, delivered_at)),
                 pending AS (INSERT INTO pending (recipient_id, message_id)
                             SELECT recipient_id, id FROM m WHERE delivered_at IS NULL),
                 delivered AS (INSERT INTO deliveries (message_id, delivered_at)
                               SELECT id, delivered_at FROM m WHERE delivered_at IS NOT NULL)
                 INSERT INTO messages (id, conversation_id, seq, sender_id, recipient_id, ts, body, client_msg_id,
                                       client_key, edited_at, deleted_at, changed_at)
                 SELECT id, conversation_id, seq, sender_id, recipient_id, ts, body, client_msg_id, client_key,
                        edited_at, deleted_at, changed_at FROM m",
            )
            .bind(number(0))
            .bind(number(1))
            .bind(number(2))
            .bind(number(3))
            .bind(number(4))
            .bind(number(5))
            .bind(rows.iter().map(|r| r.body.clone()).collect::<Vec<_>>())
            .bind(rows.iter().map(|r| r.client_msg_id.clone()).collect::<Vec<_>>())
            .bind(optional(0))
            .bind(optional(1))
            .bind(optional(2))
            .bind(optional(3))
            .bind(optional(4))
            .execute(&mut **tx)
            .await
        },
        |n| progress("messages", n),
    )
    .await?;

    // The id key and the legacy bounds, so that every id reads the same.
    let meta = |name: &str| -> StoreResult<Vec<u8>> {
        src.query_row("SELECT value FROM meta WHERE name = ?1", [name], |r| {
            Ok(match r.get_ref(0)? {
                rusqlite::types::ValueRef::Integer(n) => n.to_be_bytes().to_vec(),
                other => other.as_blob()?.to_vec(),
            })
        })
        .map_err(|e| backend(format!("{name}: {e}")))
    };
    for name in ["id_key", "legacy_users", "legacy_messages"] {
        sqlx::query("UPDATE dyad_meta SET value = $2 WHERE name = $1")
            .bind(name)
            .bind(meta(name)?)
            .execute(&mut *tx)
            .await
            .map_err(backend)?;
    }
    // New rows continue after the copied ones.
    sqlx::raw_sql(
        "SELECT setval(pg_get_serial_sequence('users', 'id'), max(id)) FROM users HAVING max(id) IS NOT NULL;
         SELECT setval(pg_get_serial_sequence('sessions', 'id'), max(id)) FROM sessions HAVING max(id) IS NOT NULL;
         SELECT setval(pg_get_serial_sequence('conversations', 'id'), max(id)) FROM conversations
             HAVING max(id) IS NOT NULL;
         SELECT setval('message_ids', max(id)) FROM messages HAVING max(id) IS NOT NULL;
         ANALYZE;",
    )
    .execute(&mut *tx)
    .await
    .map_err(backend)?;
    tx.commit().await.map_err(backend)?;
    Ok(Imported {
        users,
        sessions,
        conversations,
        messages,
    })
}

struct UserRow(i64, String, String, i64, Option<i64>, Option<i64>, bool, String);
struct SessionRow(i64, i64, Vec<u8>, i64, i64, bool, Option<i64>);
struct MessageRow {
    /// id, conversation_id, seq, sender_id, recipient_id, ts.
    numbers: [i64; 6],
    body: String,
    client_msg_id: Option<String>,
    /// client_key, edited_at, deleted_at, changed_at, delivered_at.
    optional: [Option<i64>; 5],
}

/// Reads `select` (`?1` the last id read, `?2` the chunk size) chunk by
/// chunk and writes each chunk with `insert`; returns the rows copied.
async fn copy<R>(
    src: &Connection,
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    select: &str,
    read: impl Fn(&rusqlite::Row<'_>) -> rusqlite::Result<R>,
    id: impl Fn(&R) -> i64,
    insert: impl AsyncFn(&mut sqlx::Transaction<'_, sqlx::Postgres>, Vec<R>) -> sqlx::Result<sqlx::postgres::PgQueryResult>,
    mut progress: impl FnMut(u64),
) -> StoreResult<u64> {
    let mut statement = src.prepare(select).map_err(backend)?;
    let (mut after, mut total) = (0_i64, 0_u64);
    loop {
        let rows: Vec<R> = statement
            .query_map(rusqlite::params![after, CHUNK as i64], &read)
            .and_then(|rows| rows.collect())
            .map_err(backend)?;
        let Some(last) = rows.last() else {
            return Ok(total);
        };
        after = id(last);
        total += rows.len() as u64;
        insert(tx, rows).await.map_err(backend)?;
        progress(total);
    }
}

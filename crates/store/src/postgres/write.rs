//! One batch of writes as one transaction, in a fixed number of round trips:
//! two before the conversations are locked and three (with the commit)
//! while they are, since the locks are what two nodes wait on. (A batch
//! that starts new conversations takes two more.)
//!
//! Several nodes write at once, so each conversation's counter row is locked
//! (`FOR UPDATE`, in id order, so two batches never wait on each other in a
//! circle) before its next `seq` is taken. Inside the lock the batch reads
//! the idempotency keys it carries, so a retry that another node stored a
//! moment ago is found, not stored twice. A deadlock or serialization
//! failure (possible when two batches create the same conversations) reruns
//! the whole batch.
//!
//! One node runs two batches at once: the next one starts while the last
//! one finishes (see [`Gate`]), and their outcomes are dispatched in the
//! order they were submitted.

use std::collections::{HashMap, HashSet};

use sqlx::postgres::PgPool;
use sqlx::{PgConnection, Row};
use tokio::sync::oneshot;

use super::{backend, message_at, message_columns, messages};
use crate::ids::IdCipher;
use crate::{
    DeliveredMessage, NewMessage, ReadMark, Seen, StoreResult, StoredMessage, WriteOp, WriteOutcome, client_key,
};
use dyad_protocol::domain::{ClientMsgId, MessageBody};
use dyad_protocol::{MessageId, UserId};

/// How often a batch is rerun after a deadlock before the error stands.
const ATTEMPTS: usize = 4;

/// A conversation's counters, locked for this transaction.
#[derive(Debug, Clone, Copy)]
struct Head {
    id: i64,
    last_seq: i64,
    last_ts: i64,
    last_message_id: i64,
    /// Either user blocks the other.
    blocked: bool,
}

/// Where a batch waits for the one submitted before it, and tells the next.
///
/// Outcomes are dispatched in the order batches were submitted, so a
/// conversation that two running batches share must get its `seq`s in that
/// order too: a batch takes its first lock only once the batch before it
/// holds all of its conversation locks (then its own lock on a shared
/// conversation waits for that batch's commit). It waits for the batch
/// before to finish instead when they carry a common idempotency key (a
/// retry must find its original, which only a commit shows) or when that
/// batch reads, edits or deletes, which take locks after its sends.
///
/// This wait is invisible to PostgreSQL's deadlock detector, so it is taken
/// before the batch holds any lock, and a batch signals only once it will
/// wait for no lock again. Dropping the gate (the batch has ended, however)
/// signals both.
pub(super) struct Gate {
    /// Resolves when this batch may start.
    ahead: Option<oneshot::Receiver<()>>,
    /// Told when this batch holds every lock it will take.
    locked: Option<oneshot::Sender<()>>,
    /// Dropped when this batch has ended.
    _done: oneshot::Sender<()>,
    /// Whether the batch locks only for its sends, so that it can signal
    /// once those are locked.
    sends_only: bool,
}

/// A running batch, as the next one sees it.
pub(super) struct Running {
    /// The idempotency keys it carries, by sender row.
    keys: HashSet<(i64, i64)>,
    /// Whether it locks only for its sends (no reads, edits or deletes).
    sends_only: bool,
    locked: oneshot::Receiver<()>,
    done: oneshot::Receiver<()>,
}

impl Gate {
    /// The gate of a batch of `ops` submitted after `before` (if it may
    /// still run), and what the batch after it needs to know.
    pub(super) fn after(before: Option<Running>, ids: IdCipher, ops: &[WriteOp]) -> (Gate, Running) {
        let keys = batch_keys(ids, ops);
        let ahead = before.map(|b| {
            if b.sends_only && b.keys.is_disjoint(&keys) {
                b.locked
            } else {
                b.done
            }
        });
        let sends_only = ops
            .iter()
            .all(|op| matches!(op, WriteOp::Send(_) | WriteOp::Deliver { .. }));
        let (locked, locked_rx) = oneshot::channel();
        let (done, done_rx) = oneshot::channel();
        let gate = Gate {
            ahead,
            locked: Some(locked),
            _done: done,
            sends_only,
        };
        let running = Running {
            keys,
            sends_only,
            locked: locked_rx,
            done: done_rx,
        };
        (gate, running)
    }

    /// Waits until the batch before allows this one to start.
    async fn pass(&mut self) {
        if let Some(ahead) = self.ahead.take() {
            // An error means that batch has ended: go.
            let _ = ahead.await;
        }
    }

    /// This batch takes no more locks: the next may start.
    fn open(&mut self) {
        if let Some(locked) = self.locked.take() {
            let _ = locked.send(());
        }
    }

    fn is_open(&self) -> bool {
        self.locked.is_none()
    }
}

/// The (sender row, key hash) of every keyed send in `ops`.
fn batch_keys(ids: IdCipher, ops: &[WriteOp]) -> HashSet<(i64, i64)> {
    ops.iter()
        .filter_map(|op| match op {
            WriteOp::Send(m) => m
                .client_msg_id
                .as_ref()
                .map(|k| (ids.user_row(m.sender_id), client_key(k.as_str()))),
            _ => None,
        })
        .collect()
}

pub(super) async fn write_batch(
    pool: &PgPool,
    ids: IdCipher,
    ops: Vec<WriteOp>,
    now: i64,
    mut gate: Gate,
) -> StoreResult<Vec<WriteOutcome>> {
    gate.pass().await;
    let mut attempt = 1;
    loop {
        let mut tx = pool.begin().await.map_err(backend)?;
        let result = run(&mut tx, ids, &ops, now, &mut gate).await;
        let result = match result {
            Ok(outcomes) => tx.commit().await.map(|()| outcomes),
            Err(e) => Err(e),
        };
        match result {
            Ok(outcomes) => return Ok(outcomes),
            // Once the next batch may hold locks, a rerun could take `seq`s
            // after it: the batch fails instead (its senders retry).
            Err(e) if attempt < ATTEMPTS && is_transient(&e) && !gate.is_open() => {
                tracing::debug!(attempt, error = %e, "batch conflicted; running it again");
                attempt += 1;
            }
            Err(e) => return Err(backend(e)),
        }
    }
}

/// Deadlock or serialization failure: the same batch may well succeed now.
fn is_transient(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if matches!(db.code().as_deref(), Some("40P01" | "40001")))
}

async fn run(
    conn: &mut PgConnection,
    ids: IdCipher,
    ops: &[WriteOp],
    now: i64,
    gate: &mut Gate,
) -> sqlx::Result<Vec<WriteOutcome>> {
    let sends: Vec<&NewMessage> = ops
        .iter()
        .filter_map(|op| match op {
            WriteOp::Send(m) => Some(m),
            _ => None,
        })
        .collect();
    // Deliveries first: they lock no conversation, so the locks the sends
    // take below are held for as short a time as possible.
    let mut delivered = deliver(conn, ids, ops, now).await?.into_iter();
    let mut stored = if sends.is_empty() {
        Vec::new()
    } else {
        store_sends(conn, ids, &sends, now, gate.sends_only.then_some(gate)).await?
    }
    .into_iter();
    // Outcomes in the order of the operations.
    let mut outcomes = Vec::with_capacity(ops.len());
    for op in ops {
        // Reads, edits and deletes name messages that clients learned of
        // from an ack or a `receive_message`, so never one of this batch:
        // they go after the sends, one at a time (they are rare).
        let outcome = match op {
            WriteOp::Send(_) => stored.next(),
            WriteOp::Deliver { .. } => delivered.next().map(WriteOutcome::Delivered),
            WriteOp::Read { reader, message_id } => Some(read(conn, ids, *reader, *message_id, now).await?),
            WriteOp::Edit {
                editor,
                message_id,
                body,
                window,
            } => Some(change(conn, ids, *editor, *message_id, Change::Edit(body, *window), now).await?),
            WriteOp::Delete { deleter, message_id } => {
                Some(change(conn, ids, *deleter, *message_id, Change::Delete, now).await?)
            }
        };
        outcomes.push(outcome.ok_or_else(|| sqlx::Error::Protocol("batch outcome missing".into()))?);
    }
    Ok(outcomes)
}

/// The row numbers of a message's two users, lower first: its conversation's key.
fn pair(ids: IdCipher, m: &NewMessage) -> (i64, i64) {
    let (s, r) = (ids.user_row(m.sender_id), ids.user_row(m.recipient_id));
    (s.min(r), s.max(r))
}

/// Stores the sends; one outcome per send, in order. `gate` is opened once
/// the conversations are locked, if the batch takes no other locks.
async fn store_sends(
    conn: &mut PgConnection,
    ids: IdCipher,
    sends: &[&NewMessage],
    now: i64,
    gate: Option<&mut Gate>,
) -> sqlx::Result<Vec<WriteOutcome>> {
    // The conversations, locked in id order. A conversation that `lock`
    // finds proves both its users exist and are not deleted, so the usual
    // batch needs this one statement; only pairs without one yet are checked
    // and created below.
    let mut pairs: Vec<(i64, i64)> = sends
        .iter()
        .filter(|m| m.sender_id != m.recipient_id)
        .map(|m| pair(ids, m))
        .collect();
    pairs.sort_unstable();
    pairs.dedup();
    let mut heads = lock(conn, &pairs).await?;
    let new: Vec<(i64, i64)> = pairs.into_iter().filter(|p| !heads.contains_key(p)).collect();
    if !new.is_empty() {
        let (los, his): (Vec<i64>, Vec<i64>) = new.iter().copied().unzip();
        // Created only where both users exist. Locked after the others, so
        // not in id order: a deadlock with another node's batch is possible
        // and reruns the batch (first messages of a pair only).
        sqlx::query(
            "INSERT INTO conversations (user_lo, user_hi)
             SELECT k.lo, k.hi FROM unnest($1::int8[], $2::int8[]) AS k(lo, hi)
             WHERE EXISTS (SELECT 1 FROM users WHERE id = k.lo AND deleted_at IS NULL)
               AND EXISTS (SELECT 1 FROM users WHERE id = k.hi AND deleted_at IS NULL)
             ON CONFLICT (user_lo, user_hi) DO NOTHING",
        )
        .bind(&los)
        .bind(&his)
        .execute(&mut *conn)
        .await?;
        heads.extend(lock(conn, &new).await?);
    }
    if let Some(gate) = gate {
        gate.open();
    }
    // A send is valid if its conversation exists now (a self-send is refused
    // like an unknown user).
    let valid = |m: &NewMessage, heads: &HashMap<(i64, i64), Head>| {
        m.sender_id != m.recipient_id && heads.contains_key(&pair(ids, m))
    };

    // In one round trip: the messages already stored under the keys this
    // batch carries, and fresh ids, one per valid send (a retry leaves its
    // id unused; ids need only grow, and they do, since they are taken under
    // the locks).
    let valid_sends: Vec<&&NewMessage> = sends.iter().filter(|m| valid(m, &heads)).collect();
    let (senders, keys): (Vec<i64>, Vec<i64>) = valid_sends
        .iter()
        .filter_map(|m| {
            m.client_msg_id
                .as_ref()
                .map(|k| (ids.user_row(m.sender_id), client_key(k.as_str())))
        })
        .unzip();
    let rows = sqlx::query(concat!(
        "WITH fresh AS (SELECT array_agg(nextval('message_ids')) AS ids FROM generate_series(1, $3))
         SELECT fresh.ids, o.* FROM fresh LEFT JOIN (SELECT ",
        message_columns!(),
        ", m.client_msg_id",
        messages!(),
        "WHERE (m.sender_id, m.client_key) IN (SELECT * FROM unnest($1::int8[], $2::int8[]))) AS o ON true"
    ))
    .bind(&senders)
    .bind(&keys)
    .bind(i64::try_from(valid_sends.len()).unwrap_or(i64::MAX))
    .fetch_all(&mut *conn)
    .await?;
    let mut fresh: Vec<i64> = match rows.first() {
        Some(row) => row.try_get::<Option<Vec<i64>>, _>(0)?.unwrap_or_default(),
        None => Vec::new(),
    };
    fresh.sort_unstable();
    let mut fresh = fresh.into_iter();
    let mut originals: HashMap<(i64, String), StoredMessage> = HashMap::new();
    for row in &rows {
        // Hash matches are compared in full: a collision is a new message.
        if let Some(key) = row.try_get::<Option<String>, _>(10)? {
            let m = message_at(row, 1, ids)?;
            originals.insert((m.sender_id.get(), key), m);
        }
    }

    let mut outcomes = Vec::with_capacity(sends.len());
    let mut rows = NewRows::default();
    for m in sends {
        if !valid(m, &heads) {
            outcomes.push(WriteOutcome::UnknownRecipient);
            continue;
        }
        if let Some(original) = m
            .client_msg_id
            .as_ref()
            .and_then(|k| originals.get(&(m.sender_id.get(), k.as_str().to_owned())))
        {
            outcomes.push(WriteOutcome::Stored {
                message: original.clone(),
                duplicate: true,
            });
            continue;
        }
        let key = pair(ids, m);
        let head = heads
            .get_mut(&key)
            .ok_or_else(|| sqlx::Error::Protocol("conversation not locked".into()))?;
        // After the retry check: a message stored before the block is still
        // answered as stored.
        if head.blocked {
            outcomes.push(WriteOutcome::Blocked);
            continue;
        }
        let id = fresh
            .next()
            .ok_or_else(|| sqlx::Error::Protocol("too few message ids".into()))?;
        head.last_seq += 1;
        head.last_ts = now.max(head.last_ts + 1);
        head.last_message_id = id;
        let message = StoredMessage::new(
            ids.message(id),
            m.sender_id,
            m.recipient_id,
            m.body.as_str().to_owned(),
            head.last_ts,
            head.last_seq,
        );
        let key = m.client_msg_id.as_ref().map(ClientMsgId::as_str);
        rows.push(ids, head.id, &message, key);
        // A second send with the same key in this batch is a retry of this one.
        if let Some(k) = key {
            originals.insert((m.sender_id.get(), k.to_owned()), message.clone());
        }
        outcomes.push(WriteOutcome::Stored {
            message,
            duplicate: false,
        });
    }
    if !rows.ids.is_empty() {
        rows.insert(conn, heads.values()).await?;
    }
    Ok(outcomes)
}

/// Locks the conversations of `pairs` (sorted) in id order and reads their
/// counters; pairs without a conversation, or with a deleted user, are
/// left out.
async fn lock(conn: &mut PgConnection, pairs: &[(i64, i64)]) -> sqlx::Result<HashMap<(i64, i64), Head>> {
    let mut heads = HashMap::with_capacity(pairs.len());
    if pairs.is_empty() {
        return Ok(heads);
    }
    let (los, his): (Vec<i64>, Vec<i64>) = pairs.iter().copied().unzip();
    let rows = sqlx::query(
        "SELECT c.id, c.user_lo, c.user_hi, c.last_seq, c.last_ts, c.last_message_id,
                c.lo_blocked_at IS NOT NULL OR c.hi_blocked_at IS NOT NULL FROM conversations c
         WHERE (c.user_lo, c.user_hi) IN (SELECT * FROM unnest($1::int8[], $2::int8[]))
           AND NOT EXISTS (SELECT 1 FROM users u WHERE u.id IN (c.user_lo, c.user_hi) AND u.deleted_at IS NOT NULL)
         ORDER BY c.id FOR UPDATE OF c",
    )
    .bind(&los)
    .bind(&his)
    .fetch_all(&mut *conn)
    .await?;
    for row in rows {
        let head = Head {
            id: row.try_get(0)?,
            last_seq: row.try_get(3)?,
            last_ts: row.try_get(4)?,
            last_message_id: row.try_get(5)?,
            blocked: row.try_get(6)?,
        };
        heads.insert((row.try_get(1)?, row.try_get(2)?), head);
    }
    Ok(heads)
}

/// The new rows of a batch, column by column, for one `unnest` insert.
#[derive(Default)]
struct NewRows<'a> {
    ids: Vec<i64>,
    conversations: Vec<i64>,
    seqs: Vec<i64>,
    senders: Vec<i64>,
    recipients: Vec<i64>,
    bodies: Vec<String>,
    timestamps: Vec<i64>,
    keys: Vec<Option<&'a str>>,
    hashes: Vec<Option<i64>>,
}

impl<'a> NewRows<'a> {
    fn push(&mut self, ids: IdCipher, conversation: i64, m: &StoredMessage, key: Option<&'a str>) {
        self.ids.push(ids.message_row(m.id));
        self.conversations.push(conversation);
        self.seqs.push(m.seq);
        self.senders.push(ids.user_row(m.sender_id));
        self.recipients.push(ids.user_row(m.recipient_id));
        self.bodies.push(m.body.clone());
        self.timestamps.push(m.timestamp);
        self.keys.push(key);
        self.hashes.push(key.map(client_key));
    }

    /// Inserts the messages and their pending rows and moves the
    /// conversations' counters, in one statement (one round trip while the
    /// conversations are locked).
    async fn insert(self, conn: &mut PgConnection, heads: impl Iterator<Item = &Head>) -> sqlx::Result<()> {
        let heads: Vec<&Head> = heads.collect();
        sqlx::query(
            "WITH m AS (
                 INSERT INTO messages (id, conversation_id, seq, sender_id, recipient_id, body, ts, client_msg_id, client_key)
                 SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::text[],
                                      $7::int8[], $8::text[], $9::int8[])),
             p AS (
                 INSERT INTO pending (recipient_id, message_id) SELECT * FROM unnest($5::int8[], $1::int8[]))
             UPDATE conversations c SET last_seq = v.seq, last_ts = v.ts, last_message_id = v.mid
             FROM unnest($10::int8[], $11::int8[], $12::int8[], $13::int8[]) AS v(id, seq, ts, mid)
             WHERE c.id = v.id AND v.seq > c.last_seq",
        )
        .bind(&self.ids)
        .bind(self.conversations)
        .bind(self.seqs)
        .bind(self.senders)
        .bind(&self.recipients)
        .bind(self.bodies)
        .bind(self.timestamps)
        .bind(self.keys)
        .bind(self.hashes)
        .bind(heads.iter().map(|h| h.id).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.last_seq).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.last_ts).collect::<Vec<_>>())
        .bind(heads.iter().map(|h| h.last_message_id).collect::<Vec<_>>())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }
}

/// Marks acknowledged messages delivered; one list per `Deliver` op, in order.
async fn deliver(
    conn: &mut PgConnection,
    users: IdCipher,
    ops: &[WriteOp],
    now: i64,
) -> sqlx::Result<Vec<Vec<DeliveredMessage>>> {
    let mut ids = Vec::new();
    let mut recipients = Vec::new();
    for op in ops {
        if let WriteOp::Deliver {
            recipient_id,
            message_ids,
        } = op
        {
            for id in message_ids {
                ids.push(users.message_row(*id));
                recipients.push(users.user_row(*recipient_id));
            }
        }
    }
    let mut newly: HashMap<(i64, i64), (i64, i64)> = HashMap::new(); // (id, recipient) -> (sender, seq)
    if !ids.is_empty() {
        // The first ack of a message deletes its pending row (the recipient
        // is part of the key: acks for others' messages match nothing), and
        // only those messages get a delivery row. Messages are never
        // updated: an update rewrote the row and, mostly, every index.
        let rows = sqlx::query(
            "WITH acked AS (
                 DELETE FROM pending p USING unnest($1::int8[], $2::int8[]) AS a(id, recipient)
                 WHERE p.recipient_id = a.recipient AND p.message_id = a.id
                 RETURNING p.message_id),
             marked AS (
                 INSERT INTO deliveries (message_id, delivered_at) SELECT message_id, $3 FROM acked
                 RETURNING message_id)
             SELECT m.id, m.recipient_id, m.sender_id, m.seq FROM marked JOIN messages m ON m.id = marked.message_id",
        )
        .bind(&ids)
        .bind(&recipients)
        .bind(now)
        .fetch_all(&mut *conn)
        .await?;
        for row in rows {
            newly.insert((row.try_get(0)?, row.try_get(1)?), (row.try_get(2)?, row.try_get(3)?));
        }
    }
    // Each message is reported once, to the first op that acknowledged it.
    let mut lists = Vec::new();
    for op in ops {
        if let WriteOp::Deliver {
            recipient_id,
            message_ids,
        } = op
        {
            let mut list = Vec::new();
            for id in message_ids {
                if let Some((sender, seq)) = newly.remove(&(users.message_row(*id), users.user_row(*recipient_id))) {
                    list.push(DeliveredMessage {
                        id: *id,
                        sender_id: users.user(sender),
                        recipient_id: *recipient_id,
                        seq,
                        delivered_at: now,
                    });
                }
            }
            lists.push(list);
        }
    }
    Ok(lists)
}

/// The message `id` as `user` may see it, if `user` is one of its users.
async fn seen_by(conn: &mut PgConnection, ids: IdCipher, user: UserId, id: MessageId) -> sqlx::Result<Option<Seen>> {
    let row = ids.message_row(id);
    let found = sqlx::query(
        "SELECT conversation_id, sender_id, recipient_id, seq, ts, deleted_at IS NOT NULL FROM messages
         WHERE id = $1 AND (sender_id = $2 OR recipient_id = $2)",
    )
    .bind(row)
    .bind(ids.user_row(user))
    .fetch_optional(&mut *conn)
    .await?;
    found
        .map(|r| {
            Ok(Seen {
                row,
                conversation: r.try_get(0)?,
                sender: r.try_get(1)?,
                recipient: r.try_get(2)?,
                seq: r.try_get(3)?,
                ts: r.try_get(4)?,
                deleted: r.try_get(5)?,
            })
        })
        .transpose()
}

/// Moves `reader`'s read mark up to the message, delivering what it covers.
async fn read(
    conn: &mut PgConnection,
    ids: IdCipher,
    reader: UserId,
    message_id: MessageId,
    now: i64,
) -> sqlx::Result<WriteOutcome> {
    let Some(m) = seen_by(conn, ids, reader, message_id).await? else {
        return Ok(WriteOutcome::NotFound);
    };
    let reader_row = ids.user_row(reader);
    let peer_row = m.other_than(reader_row);
    let moved = if reader_row < peer_row {
        "UPDATE conversations SET lo_read_seq = $2, lo_read_ts = $3 WHERE id = $1 AND lo_read_seq < $2"
    } else {
        "UPDATE conversations SET hi_read_seq = $2, hi_read_ts = $3 WHERE id = $1 AND hi_read_seq < $2"
    };
    let moved = sqlx::query(moved)
        .bind(m.conversation)
        .bind(m.seq)
        .bind(m.ts)
        .execute(&mut *conn)
        .await?;
    if moved.rows_affected() == 0 {
        return Ok(WriteOutcome::Unchanged);
    }
    // The covered messages still pending are delivered, as by an ack; and
    // whether both users allow read receipts, in the same round trip.
    let rows = sqlx::query(
        "WITH acked AS (
             DELETE FROM pending p USING messages m
             WHERE p.recipient_id = $1 AND m.id = p.message_id AND m.conversation_id = $2 AND m.seq <= $3
             RETURNING p.message_id, m.seq),
         marked AS (
             INSERT INTO deliveries (message_id, delivered_at) SELECT message_id, $4 FROM acked
             ON CONFLICT (message_id) DO NOTHING)
         SELECT (SELECT bool_and(read_receipts) FROM users WHERE id IN ($1, $5)), a.message_id, a.seq
         FROM (SELECT 1) AS one LEFT JOIN acked a ON true",
    )
    .bind(reader_row)
    .bind(m.conversation)
    .bind(m.seq)
    .bind(now)
    .bind(peer_row)
    .fetch_all(&mut *conn)
    .await?;
    let mut receipts = false;
    let mut delivered = Vec::new();
    for row in rows {
        receipts = row.try_get::<Option<bool>, _>(0)?.unwrap_or(false);
        if let (Some(id), Some(seq)) = (row.try_get::<Option<i64>, _>(1)?, row.try_get::<Option<i64>, _>(2)?) {
            delivered.push(DeliveredMessage {
                id: ids.message(id),
                sender_id: ids.user(peer_row),
                recipient_id: reader,
                seq,
                delivered_at: now,
            });
        }
    }
    delivered.sort_by_key(|d| d.seq);
    Ok(WriteOutcome::Read(ReadMark {
        reader,
        peer: ids.user(peer_row),
        message_id,
        seq: m.seq,
        ts: m.ts,
        read_at: now,
        receipts,
        delivered,
    }))
}

/// What [`change`] does to a message.
enum Change<'a> {
    Edit(&'a MessageBody, i64),
    Delete,
}

/// Edits or deletes a message after the checks [`WriteOp::Edit`] and
/// [`WriteOp::Delete`] name; answers the message as it is now.
async fn change(
    conn: &mut PgConnection,
    ids: IdCipher,
    user: UserId,
    message_id: MessageId,
    change: Change<'_>,
    now: i64,
) -> sqlx::Result<WriteOutcome> {
    let Some(m) = seen_by(conn, ids, user, message_id).await? else {
        return Ok(WriteOutcome::NotFound);
    };
    // The conversation's lock orders changes made on two nodes at once, so
    // that changed_at strictly increases within it.
    let row = sqlx::query(
        "SELECT c.lo_blocked_at IS NOT NULL OR c.hi_blocked_at IS NOT NULL,
                (SELECT max(changed_at) FROM messages WHERE conversation_id = c.id AND changed_at IS NOT NULL)
         FROM conversations c WHERE c.id = $1 FOR UPDATE OF c",
    )
    .bind(m.conversation)
    .fetch_one(&mut *conn)
    .await?;
    let blocked: bool = row.try_get(0)?;
    let at = now.max(row.try_get::<Option<i64>, _>(1)?.map_or(i64::MIN, |l| l + 1));
    let edit = match change {
        Change::Edit(_, window) => Some((window, blocked)),
        Change::Delete => None,
    };
    if let Some(refused) = m.refusal(ids.user_row(user), now, edit) {
        return Ok(refused);
    }
    match change {
        Change::Edit(body, _) => {
            sqlx::query("UPDATE messages SET body = $2, edited_at = $3, changed_at = $3 WHERE id = $1")
                .bind(m.row)
                .bind(body.as_str())
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
        Change::Delete => {
            sqlx::query("UPDATE messages SET body = '', deleted_at = $2, changed_at = $2 WHERE id = $1")
                .bind(m.row)
                .bind(at)
                .execute(&mut *conn)
                .await?;
        }
    }
    let row = sqlx::query(concat!("SELECT ", message_columns!(), messages!(), "WHERE m.id = $1"))
        .bind(m.row)
        .fetch_one(&mut *conn)
        .await?;
    Ok(WriteOutcome::Changed(message_at(&row, 0, ids)?))
}

//! The one writer: a thread that owns SQLite's only write connection and runs
//! jobs in the order they arrive. A whole batch of sends is one job and one
//! transaction, so one fsync covers every message in it.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use dyad_protocol::{MessageId, UserId};
use rusqlite::{Connection, OptionalExtension, TransactionBehavior, params};

use super::keys::{KeyError, Keys};
use super::rows::{self, message_columns};
use crate::ids::IdCipher;
use crate::{
    DeliveredMessage, NewMessage, ReadMark, Seen, StoreError, StoreResult, StoredMessage, WriteOp, WriteOutcome,
};
use dyad_protocol::domain::{ClientMsgId, MessageBody};

/// A unit of work for the writer thread.
pub(super) type Job = Box<dyn FnOnce(&mut Writer) + Send>;

/// The conversation counters the writer keeps in memory, so that a send costs
/// no read. Cleared whenever a transaction fails, since it may hold values
/// that were rolled back.
#[derive(Debug, Clone, Copy)]
struct ConversationHead {
    id: i64,
    last_seq: i64,
    last_ts: i64,
    last_message_id: i64,
    /// Either user blocks the other.
    blocked: bool,
}

/// How long a new message may wait for the late indexes. The contract
/// allows 2 s before new text is searchable; a search catches the index up
/// first anyway (`SqliteStore::search`).
const INDEX_WITHIN: Duration = Duration::from_secs(1);
/// Messages indexed per transaction: enough to share each index page among
/// many messages, few enough that a batch waiting behind it waits ~10 ms.
const INDEX_CHUNK: i64 = 1_000;
/// A writer with no job for this long is idle. (The group commit hands it
/// one batch at a time, so between two its queue is always empty for a
/// moment.)
const IDLE: Duration = Duration::from_millis(2);

/// The index built after the send's transaction: the search index
/// (`messages_fts`). Written in each batch, it cost a random page per
/// message in every commit, a new FTS5 segment and its merges. The writer
/// adds new messages to it in chunks of [`INDEX_CHUNK`], when it has
/// nothing else to do or when a message has waited [`INDEX_WITHIN`]
/// (docs/BENCHMARKS.md §15).
pub(super) struct LateIndexes {
    /// Every message row up to this one is in it, none after it
    /// (`meta.indexed_upto`).
    upto: i64,
    /// Messages stored after `upto`, and since when the oldest waits.
    pending: i64,
    since: Option<Instant>,
    /// Set while messages wait to be indexed; shared with searches.
    behind: Arc<AtomicBool>,
}

impl LateIndexes {
    /// Reads the progress stored in `conn`'s database.
    pub(super) fn load(conn: &Connection, behind: Arc<AtomicBool>) -> rusqlite::Result<Self> {
        let mut late = LateIndexes {
            upto: 0,
            pending: 0,
            since: None,
            behind,
        };
        late.reload(conn)?;
        Ok(late)
    }

    /// Reads `upto` and what is above it again: after a failed
    /// transaction, or another process's commit.
    fn reload(&mut self, conn: &Connection) -> rusqlite::Result<()> {
        self.upto = conn.query_row("SELECT value FROM meta WHERE name = 'indexed_upto'", [], |r| r.get(0))?;
        let pending = conn.query_row("SELECT COUNT(*) FROM messages WHERE id > ?1", [self.upto], |r| r.get(0))?;
        self.pending = 0;
        self.stored(pending);
        Ok(())
    }

    /// `count` more messages were stored.
    fn stored(&mut self, count: i64) {
        if count > 0 {
            self.pending += count;
            self.since.get_or_insert_with(Instant::now);
            self.behind.store(true, Ordering::Relaxed);
        }
    }

    /// Records a chunk [`index_rows`] wrote, once its transaction committed.
    fn committed(&mut self, done: Indexed) {
        if let Some(last) = done.last {
            self.upto = last;
        }
        self.pending = match done.last.is_none() || done.count < done.limit {
            true => 0,
            false => (self.pending - done.count).max(0),
        };
        if self.pending == 0 {
            self.since = None;
            self.behind.store(false, Ordering::Relaxed);
        }
    }

    /// How long until the oldest waiting message is due.
    fn due_in(&self) -> Duration {
        self.since.map_or(Duration::from_secs(3600), |since| {
            INDEX_WITHIN.saturating_sub(since.elapsed())
        })
    }
}

/// A chunk of messages indexed in a transaction.
struct Indexed {
    /// The last message row indexed, if there was any to index.
    last: Option<i64>,
    count: i64,
    limit: i64,
}

/// Adds up to `limit` messages after row `upto` to the search index and
/// moves its mark, in `tx`.
fn index_rows(tx: &rusqlite::Transaction<'_>, upto: i64, limit: i64) -> rusqlite::Result<Indexed> {
    let (last, count): (Option<i64>, i64) = tx
        .prepare_cached("SELECT MAX(id), COUNT(*) FROM (SELECT id FROM messages WHERE id > ?1 ORDER BY id LIMIT ?2)")?
        .query_row(params![upto, limit], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let done = Indexed { last, count, limit };
    let Some(last) = last else {
        return Ok(done);
    };
    tx.prepare_cached(
        "INSERT INTO messages_fts (rowid, body, owners)
         SELECT id, body, 'u' || sender_id || ' u' || recipient_id FROM messages
         WHERE id > ?1 AND id <= ?2 AND deleted_at IS NULL",
    )?
    .execute(params![upto, last])?;
    tx.prepare_cached("UPDATE meta SET value = ?1 WHERE name = 'indexed_upto'")?
        .execute([last])?;
    Ok(done)
}

/// State owned by the writer thread.
pub(super) struct Writer {
    pub(super) conn: Connection,
    /// Row numbers to ids and back.
    pub(super) ids: IdCipher,
    heads: HashMap<(i64, i64), ConversationHead>,
    /// `PRAGMA data_version` when `heads` was last known true: it changes
    /// when another process (`dyad admin …`) commits to the file.
    data_version: i64,
    late: LateIndexes,
    keys: Keys,
}

impl Writer {
    /// Starts the writer thread; it ends when every sender of jobs is
    /// dropped, after indexing what is left.
    pub(super) fn spawn(
        conn: Connection,
        ids: IdCipher,
        late: LateIndexes,
        keys: Keys,
    ) -> std::io::Result<(mpsc::Sender<Job>, std::thread::JoinHandle<()>)> {
        let (tx, rx) = mpsc::channel::<Job>();
        let thread = std::thread::Builder::new()
            .name("dyad-sqlite-writer".into())
            .spawn(move || {
                let mut writer = Writer {
                    conn,
                    ids,
                    heads: HashMap::new(),
                    data_version: 0,
                    late,
                    keys,
                };
                let mut next = None;
                loop {
                    let job = match next.take() {
                        Some(job) => Some(job),
                        None => match rx.recv_timeout(writer.late.due_in()) {
                            Ok(job) => Some(job),
                            Err(mpsc::RecvTimeoutError::Timeout) => None,
                            Err(mpsc::RecvTimeoutError::Disconnected) => break,
                        },
                    };
                    if let Some(job) = job {
                        job(&mut writer);
                    }
                    // A chunk in a transaction of its own when one is due
                    // or a chunk's worth waits, and no job comes for a
                    // moment; a batch that comes first takes a due chunk
                    // into its own transaction.
                    let due = writer.late.due_in().is_zero();
                    if writer.late.pending == 0 || (!due && writer.late.pending < INDEX_CHUNK) {
                        continue;
                    }
                    match rx.recv_timeout(IDLE) {
                        Ok(job) => next = Some(job),
                        Err(mpsc::RecvTimeoutError::Timeout) => {
                            writer.index_chunk(INDEX_CHUNK);
                        }
                        Err(mpsc::RecvTimeoutError::Disconnected) => break,
                    }
                }
                writer.catch_up();
            })?;
        Ok((tx, thread))
    }

    /// Brings the late indexes up to date with every message stored, or
    /// stops at the first failure (logged; the writer tries again later).
    pub(super) fn catch_up(&mut self) {
        while self.late.pending > 0 {
            if !self.index_chunk(INDEX_CHUNK) {
                return;
            }
        }
    }

    /// Indexes the next `limit` messages, or logs why it could not.
    fn index_chunk(&mut self, limit: i64) -> bool {
        match self.try_index_chunk(limit) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "indexing new messages failed");
                if let Err(e) = self.late.reload(&self.conn) {
                    tracing::warn!(error = %e, "reading the index progress failed");
                }
                false
            }
        }
    }

    /// Indexes up to `limit` messages after `upto`, in one transaction.
    fn try_index_chunk(&mut self, limit: i64) -> rusqlite::Result<()> {
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let done = index_rows(&tx, self.late.upto, limit)?;
        tx.commit()?;
        self.late.committed(done);
        Ok(())
    }

    /// Runs a batch as one transaction; see [`crate::MessageStore::write_batch`].
    pub(super) fn write_batch(&mut self, ops: Vec<WriteOp>, now: i64) -> StoreResult<Vec<WriteOutcome>> {
        let result = self.try_write_batch(ops, now);
        if result.is_err() {
            // What the rolled-back batch cached is not so.
            self.heads.clear();
            self.keys.rolled_back();
            if let Err(e) = self.late.reload(&self.conn) {
                tracing::warn!(error = %e, "reading the index progress failed");
            }
        }
        result.map_err(|e| StoreError::Backend(Box::new(e)))
    }

    fn try_write_batch(&mut self, ops: Vec<WriteOp>, now: i64) -> Result<Vec<WriteOutcome>, KeyError> {
        let Writer {
            conn,
            ids,
            heads,
            data_version,
            late,
            keys,
        } = self;
        let ids = *ids;
        if ops
            .iter()
            .any(|op| matches!(op, WriteOp::Send(m) if m.client_msg_id.is_some()))
        {
            keys.reopen_if_due(conn);
        }
        let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        // Another process wrote (a message, a deleted account): what is
        // cached may be stale. Checked inside the write lock, so nothing
        // else can commit before this batch does.
        let version: i64 = tx.query_row("PRAGMA data_version", [], |r| r.get(0))?;
        if version != *data_version {
            heads.clear();
            *data_version = version;
            late.reload(&tx)?;
        }
        let mut touched: HashSet<(i64, i64)> = HashSet::new();
        let mut outcomes = Vec::with_capacity(ops.len());
        for op in ops {
            let outcome = match op {
                WriteOp::Send(msg) => send(&tx, ids, heads, keys, &mut touched, msg, now)?,
                WriteOp::Deliver {
                    recipient_id,
                    message_ids,
                } => WriteOutcome::Delivered(deliver(&tx, ids, recipient_id, &message_ids, now)?),
                WriteOp::Read { reader, message_id } => read(&tx, ids, reader, message_id, now)?,
                WriteOp::Edit {
                    editor,
                    message_id,
                    body,
                    window,
                } => change(
                    &tx,
                    ids,
                    late.upto,
                    editor,
                    message_id,
                    Change::Edit { body, window },
                    now,
                )?,
                WriteOp::Delete { deleter, message_id } => {
                    change(&tx, ids, late.upto, deleter, message_id, Change::Delete, now)?
                }
            };
            outcomes.push(outcome);
        }
        {
            let mut update = tx.prepare_cached(
                "UPDATE conversations SET last_seq = ?2, last_ts = ?3, last_message_id = ?4 WHERE id = ?1",
            )?;
            for key in &touched {
                if let Some(h) = heads.get(key) {
                    update.execute(params![h.id, h.last_seq, h.last_ts, h.last_message_id])?;
                }
            }
        }
        // A message is due: index a chunk in this batch's transaction,
        // rather than in one of its own with its own fsync.
        let indexed = match late.pending > 0 && late.due_in().is_zero() {
            true => Some(index_rows(&tx, late.upto, INDEX_CHUNK)?),
            false => None,
        };
        tx.commit()?;
        keys.committed();
        late.stored(
            outcomes
                .iter()
                .filter(|o| matches!(o, WriteOutcome::Stored { duplicate: false, .. }))
                .count() as i64,
        );
        if let Some(done) = indexed {
            late.committed(done);
        }
        Ok(outcomes)
    }

    /// Sets or clears `blocker`'s block of `blocked` (rows) on their
    /// conversation, made if needed; false if `blocked` is no live user.
    pub(super) fn set_block(&mut self, blocker: i64, blocked: i64, at: Option<i64>) -> StoreResult<bool> {
        let (lo, hi) = (blocker.min(blocked), blocker.max(blocked));
        let tx = self.conn.transaction().map_err(crate::backend)?;
        let exists = tx
            .query_row(
                "SELECT 1 FROM users WHERE id = ?1 AND deleted_at IS NULL",
                [blocked],
                |_| Ok(()),
            )
            .optional()
            .map_err(crate::backend)?
            .is_some();
        if !exists || blocker == blocked {
            return Ok(false);
        }
        tx.execute(
            "INSERT INTO conversations (user_lo, user_hi, last_seq, last_ts, last_message_id) VALUES (?1, ?2, 0, 0, 0)
             ON CONFLICT (user_lo, user_hi) DO NOTHING",
            params![lo, hi],
        )
        .map_err(crate::backend)?;
        // A repeated block keeps its first time.
        let update = if blocker == lo {
            "UPDATE conversations SET lo_blocked_at = CASE WHEN ?3 IS NULL THEN NULL ELSE COALESCE(lo_blocked_at, ?3) END
             WHERE user_lo = ?1 AND user_hi = ?2"
        } else {
            "UPDATE conversations SET hi_blocked_at = CASE WHEN ?3 IS NULL THEN NULL ELSE COALESCE(hi_blocked_at, ?3) END
             WHERE user_lo = ?1 AND user_hi = ?2"
        };
        tx.execute(update, params![lo, hi, at]).map_err(crate::backend)?;
        tx.commit().map_err(crate::backend)?;
        // Read again at the pair's next send.
        self.heads.remove(&(lo, hi));
        Ok(true)
    }

    /// Forgets the cached counters of every conversation of user `row`, so
    /// that its next send looks the recipient up again.
    pub(super) fn forget_conversations_of(&mut self, row: i64) {
        self.heads.retain(|&(lo, hi), _| lo != row && hi != row);
    }
}

fn send(
    tx: &rusqlite::Transaction<'_>,
    ids: IdCipher,
    heads: &mut HashMap<(i64, i64), ConversationHead>,
    keys: &mut Keys,
    touched: &mut HashSet<(i64, i64)>,
    msg: NewMessage,
    now: i64,
) -> Result<WriteOutcome, KeyError> {
    let (sender, recipient) = (ids.user_row(msg.sender_id), ids.user_row(msg.recipient_id));
    if sender == recipient {
        return Ok(WriteOutcome::UnknownRecipient);
    }
    let conversation = (sender.min(recipient), sender.max(recipient));
    let mut head = match heads.get(&conversation) {
        Some(head) => *head,
        None => match conversation_head(tx, conversation, recipient)? {
            Some(head) => head,
            None => return Ok(WriteOutcome::UnknownRecipient),
        },
    };
    let key = msg.client_msg_id.as_ref().map(ClientMsgId::as_str);
    if let Some(key) = key {
        // A retry: answer with the message stored under this key the first
        // time, found in this batch or in the key index, and checked
        // against its row. (One writer, one transaction: nothing can slip
        // in between.)
        let original = match keys.find(&super::keys::encode(sender, key))? {
            Some(row) => tx
                .prepare_cached(concat!(
                    "SELECT ",
                    message_columns!(),
                    " FROM messages WHERE id = ?1 AND sender_id = ?2 AND client_msg_id = ?3"
                ))?
                .query_row(params![row, sender, key], |r| rows::message(r, ids))
                .optional()?,
            None => None,
        };
        if let Some(original) = original {
            heads.insert(conversation, head);
            return Ok(WriteOutcome::Stored {
                message: original,
                duplicate: true,
            });
        }
    }
    // After the retry check: a message stored before the block is still
    // answered as stored.
    if head.blocked {
        heads.insert(conversation, head);
        return Ok(WriteOutcome::Blocked);
    }
    let seq = head.last_seq + 1;
    let ts = now.max(head.last_ts + 1);
    tx.prepare_cached(
        "INSERT INTO messages (conversation_id, seq, sender_id, recipient_id, body, ts, client_msg_id)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
    )?
    .execute(params![head.id, seq, sender, recipient, msg.body.as_str(), ts, key])?;
    let id = tx.last_insert_rowid();
    if let Some(key) = key {
        keys.stored(super::keys::encode(sender, key), id);
    }
    head.last_seq = seq;
    head.last_ts = ts;
    head.last_message_id = id;
    heads.insert(conversation, head);
    touched.insert(conversation);
    Ok(WriteOutcome::Stored {
        message: StoredMessage::new(
            ids.message(id),
            msg.sender_id,
            msg.recipient_id,
            msg.body.into_inner(),
            ts,
            seq,
        ),
        duplicate: false,
    })
}

/// Loads a conversation's counters, creating the conversation if needed,
/// when the recipient exists. `None` means there is no such recipient (or
/// its account was deleted).
fn conversation_head(
    tx: &rusqlite::Transaction<'_>,
    (lo, hi): (i64, i64),
    recipient: i64,
) -> rusqlite::Result<Option<ConversationHead>> {
    let found = tx
        .prepare_cached(
            "SELECT id, last_seq, last_ts, last_message_id,
                    lo_blocked_at IS NOT NULL OR hi_blocked_at IS NOT NULL
             FROM conversations WHERE user_lo = ?1 AND user_hi = ?2",
        )?
        .query_row(params![lo, hi], |r| {
            Ok(ConversationHead {
                id: r.get(0)?,
                last_seq: r.get(1)?,
                last_ts: r.get(2)?,
                last_message_id: r.get(3)?,
                blocked: r.get(4)?,
            })
        })
        .optional()?;
    let exists = tx
        .prepare_cached("SELECT 1 FROM users WHERE id = ?1 AND deleted_at IS NULL")?
        .query_row([recipient], |_| Ok(()))
        .optional()?
        .is_some();
    if !exists || found.is_some() {
        return Ok(found.filter(|_| exists));
    }
    tx.prepare_cached(
        "INSERT INTO conversations (user_lo, user_hi, last_seq, last_ts, last_message_id) VALUES (?1, ?2, 0, 0, 0)",
    )?
    .execute(params![lo, hi])?;
    Ok(Some(ConversationHead {
        id: tx.last_insert_rowid(),
        last_seq: 0,
        last_ts: 0,
        last_message_id: 0,
        blocked: false,
    }))
}

fn deliver(
    tx: &rusqlite::Transaction<'_>,
    ids: IdCipher,
    recipient: UserId,
    message_ids: &[MessageId],
    now: i64,
) -> rusqlite::Result<Vec<DeliveredMessage>> {
    // A plain lookup and a plain update by rowid, not one UPDATE …
    // RETURNING, whose result table SQLite builds per statement.
    let mut sender_of = tx.prepare_cached(
        "SELECT sender_id, seq FROM messages WHERE id = ?1 AND recipient_id = ?2 AND delivered_at IS NULL",
    )?;
    let mut mark = tx.prepare_cached("UPDATE messages SET delivered_at = ?2 WHERE id = ?1")?;
    let mut delivered = Vec::new();
    for id in message_ids {
        let row = ids.message_row(*id);
        let Some((sender, seq)) = sender_of
            .query_row(params![row, ids.user_row(recipient)], |r| Ok((r.get(0)?, r.get(1)?)))
            .optional()?
        else {
            continue;
        };
        mark.execute(params![row, now])?;
        delivered.push(DeliveredMessage {
            id: *id,
            sender_id: ids.user(sender),
            recipient_id: recipient,
            seq,
            delivered_at: now,
        });
    }
    Ok(delivered)
}

/// The message `id` as `user` may see it, if `user` is one of its users.
fn seen_by(
    tx: &rusqlite::Transaction<'_>,
    ids: IdCipher,
    user: UserId,
    id: MessageId,
) -> rusqlite::Result<Option<Seen>> {
    let row = ids.message_row(id);
    let user = ids.user_row(user);
    tx.prepare_cached(
        "SELECT conversation_id, sender_id, recipient_id, seq, ts, deleted_at IS NOT NULL FROM messages
         WHERE id = ?1 AND (sender_id = ?2 OR recipient_id = ?2)",
    )?
    .query_row(params![row, user], |r| {
        Ok(Seen {
            row,
            conversation: r.get(0)?,
            sender: r.get(1)?,
            recipient: r.get(2)?,
            seq: r.get(3)?,
            ts: r.get(4)?,
            deleted: r.get(5)?,
        })
    })
    .optional()
}

/// Moves `reader`'s read mark up to the message, delivering what it covers.
fn read(
    tx: &rusqlite::Transaction<'_>,
    ids: IdCipher,
    reader: UserId,
    message_id: MessageId,
    now: i64,
) -> rusqlite::Result<WriteOutcome> {
    let Some(m) = seen_by(tx, ids, reader, message_id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    let reader_row = ids.user_row(reader);
    let peer_row = m.other_than(reader_row);
    // One statement per side, so that each is a plain cached statement.
    let moved = if reader_row < peer_row {
        "UPDATE conversations SET lo_read_seq = ?2, lo_read_ts = ?3 WHERE id = ?1 AND lo_read_seq < ?2"
    } else {
        "UPDATE conversations SET hi_read_seq = ?2, hi_read_ts = ?3 WHERE id = ?1 AND hi_read_seq < ?2"
    };
    if tx
        .prepare_cached(moved)?
        .execute(params![m.conversation, m.seq, m.ts])?
        == 0
    {
        return Ok(WriteOutcome::Unchanged);
    }
    let covered: Vec<(i64, i64)> = tx
        .prepare_cached(
            "SELECT id, seq FROM messages
             WHERE recipient_id = ?1 AND delivered_at IS NULL AND conversation_id = ?2 AND seq <= ?3",
        )?
        .query_map(params![reader_row, m.conversation, m.seq], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })?
        .collect::<rusqlite::Result<_>>()?;
    let mut mark = tx.prepare_cached("UPDATE messages SET delivered_at = ?2 WHERE id = ?1")?;
    let mut delivered = Vec::with_capacity(covered.len());
    for (row, seq) in covered {
        mark.execute(params![row, now])?;
        delivered.push(DeliveredMessage {
            id: ids.message(row),
            sender_id: ids.user(peer_row),
            recipient_id: reader,
            seq,
            delivered_at: now,
        });
    }
    let receipts: bool = tx
        .prepare_cached("SELECT MIN(read_receipts) FROM users WHERE id IN (?1, ?2)")?
        .query_row(params![reader_row, peer_row], |r| r.get(0))?;
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
enum Change {
    Edit { body: MessageBody, window: i64 },
    Delete,
}

/// Edits or deletes a message after the checks [`WriteOp::Edit`] and
/// [`WriteOp::Delete`] name; answers the message as it is now. Rows up to
/// `indexed_upto` are in the search index and change there at once; later
/// rows are indexed with their text as it is then.
#[allow(clippy::too_many_arguments)]
fn change(
    tx: &rusqlite::Transaction<'_>,
    ids: IdCipher,
    indexed_upto: i64,
    user: UserId,
    message_id: MessageId,
    change: Change,
    now: i64,
) -> rusqlite::Result<WriteOutcome> {
    let Some(m) = seen_by(tx, ids, user, message_id)? else {
        return Ok(WriteOutcome::NotFound);
    };
    // The block, and the conversation's last change: `changed_at` strictly
    // increases within it, so `changed_since` pages never split two changes
    // made in one millisecond.
    let (blocked, last): (bool, Option<i64>) = tx
        .prepare_cached(
            "SELECT c.lo_blocked_at IS NOT NULL OR c.hi_blocked_at IS NOT NULL,
                    (SELECT MAX(changed_at) FROM messages WHERE conversation_id = c.id AND changed_at IS NOT NULL)
             FROM conversations c WHERE c.id = ?1",
        )?
        .query_row([m.conversation], |r| Ok((r.get(0)?, r.get(1)?)))?;
    let edit = match &change {
        Change::Edit { window, .. } => Some((*window, blocked)),
        Change::Delete => None,
    };
    if let Some(refused) = m.refusal(ids.user_row(user), now, edit) {
        return Ok(refused);
    }
    let at = now.max(last.map_or(i64::MIN, |l| l + 1));
    let indexed = m.row <= indexed_upto;
    if indexed {
        unindex(tx, m.row)?;
    }
    match change {
        Change::Edit { body, .. } => {
            tx.prepare_cached("UPDATE messages SET body = ?2, edited_at = ?3, changed_at = ?3 WHERE id = ?1")?
                .execute(params![m.row, body.as_str(), at])?;
            if indexed {
                index(tx, m.row, body.as_str(), m.sender, m.recipient)?;
            }
        }
        Change::Delete => {
            tx.prepare_cached("UPDATE messages SET body = '', deleted_at = ?2, changed_at = ?2 WHERE id = ?1")?
                .execute(params![m.row, at])?;
        }
    }
    let now_stored = tx
        .prepare_cached(concat!("SELECT ", message_columns!(), " FROM messages WHERE id = ?1"))?
        .query_row([m.row], |r| rows::message(r, ids))?;
    Ok(WriteOutcome::Changed(now_stored))
}

/// Adds a message's text to the search index, under its two users.
fn index(tx: &rusqlite::Transaction<'_>, row: i64, body: &str, sender: i64, recipient: i64) -> rusqlite::Result<()> {
    tx.prepare_cached("INSERT INTO messages_fts (rowid, body, owners) VALUES (?1, ?2, 'u' || ?3 || ' u' || ?4)")?
        .execute(params![row, body, sender, recipient])?;
    Ok(())
}

/// Takes a message's text out of the search index, before the text
/// changes: FTS5 is told the words to remove (it keeps no copy).
fn unindex(tx: &rusqlite::Transaction<'_>, row: i64) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO messages_fts (messages_fts, rowid, body, owners)
         SELECT 'delete', id, body, 'u' || sender_id || ' u' || recipient_id FROM messages WHERE id = ?1",
    )?
    .execute([row])?;
    Ok(())
}

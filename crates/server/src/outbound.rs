//! What a connection's writer is handed, and how it keeps each conversation
//! in `seq` order: the one place that decides whether a connection has seen
//! a message, on one node and on a cluster alike.
//!
//! On one node a single task dispatches in commit order, so frames arrive in
//! order; on a cluster they may not: two nodes commit into one
//! conversation, and their pub/sub messages may cross. So each connection
//! keeps, per conversation, the highest `seq` it has passed on (`last`);
//! messages arrive tagged with their `seq`, and one that would skip a number
//! is held until the missing ones arrive, or, after [`GAP_WAIT`], are read
//! from the store. That read is always complete: PostgreSQL assigns a
//! conversation's `seq` under a row lock, so once `seq` n is committed every
//! lower one is too.
//!
//! Where a connection starts is its *mark*: the conversation's `last_seq`
//! read after the node subscribed to the user's channel. Messages at or
//! below it are replayed (if undelivered) or are history; those above it were
//! committed later and therefore published later, so they arrive live.

use crate::codec::Frame;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use dyad_protocol::{MessageId, UserId};
use dyad_store::StoredMessage;
use tokio::time::Instant;

/// How long a message that skips a `seq` waits for the missing ones to
/// arrive before they are read from the store.
pub const GAP_WAIT: Duration = Duration::from_millis(50);

/// One item in a connection's outbound queue: no bigger than a bare frame
/// (every connection's queue holds them), so the rest is boxed.
pub enum Outbound {
    /// A frame with no place in a conversation's order.
    Frame(Frame),
    /// A frame about a message.
    Ordered(Box<(Kind, Sequenced)>),
}

/// What a [`Sequenced`] frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `receive_message`.
    Message,
    /// `message_ack` for this connection's own send.
    Ack,
    /// `message_delivered`.
    Delivered,
    /// `message_read`, `message_edited` or `message_deleted`: never before
    /// the message itself, but also for messages older than the
    /// connection (history, or replayed).
    Change,
}

/// A frame about one message, with where the message stands in its conversation.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequenced {
    /// The other participant, from the connection's side.
    pub peer: UserId,
    /// The message's `seq`.
    pub seq: i64,
    /// The message's id.
    pub id: MessageId,
    /// The message's timestamp.
    pub ts: i64,
    /// The encoded frame.
    pub frame: Frame,
}

impl Sequenced {
    /// `frame`, about `message`, seen from the side whose other participant is `peer`.
    pub fn of(message: &StoredMessage, peer: UserId, frame: Frame) -> Self {
        Sequenced {
            peer,
            seq: message.seq,
            id: message.id,
            ts: message.timestamp,
            frame,
        }
    }
}

impl Outbound {
    /// A frame about a message.
    pub fn ordered(kind: Kind, frame: Sequenced) -> Self {
        Outbound::Ordered(Box::new((kind, frame)))
    }

    /// The frame, whatever its kind.
    pub fn into_frame(self) -> Frame {
        match self {
            Outbound::Frame(frame) => frame,
            Outbound::Ordered(o) => o.1.frame,
        }
    }
}

/// A conversation's place on one connection.
struct Cursor {
    /// `last_seq` when the connection started.
    mark: i64,
    /// Highest `seq` passed on with every lower one.
    last: i64,
    /// Own sends acked above `last` (their `receive_message` is not for us).
    ahead: Vec<i64>,
    /// Messages above `last + 1`, with the notices that must follow each.
    held: BTreeMap<i64, Held>,
    /// When the oldest held message must stop waiting.
    deadline: Option<Instant>,
}

struct Held {
    ts: i64,
    /// `None` while only notices about the message have arrived.
    frame: Option<Frame>,
    notices: Vec<Frame>,
}

/// A gap that waited long enough: read `peer`'s conversation from the store
/// below `before_ts` down to `after_seq`.
pub struct Gap {
    /// The other participant.
    pub peer: UserId,
    /// Highest `seq` already passed on.
    pub after_seq: i64,
    /// `seq` of the oldest held message.
    pub upto_seq: i64,
    /// Its timestamp: the missing messages are the ones just before it.
    pub before_ts: i64,
    /// Whether the oldest held is only notices, its message missing too.
    pub inclusive: bool,
}

impl Gap {
    /// How many messages the store is to be asked for.
    pub fn missing(&self) -> usize {
        usize::try_from(self.upto_seq - self.after_seq - 1 + i64::from(self.inclusive)).unwrap_or(0)
    }

    /// The exclusive time bound of the store read.
    pub fn read_before(&self) -> i64 {
        self.before_ts + i64::from(self.inclusive)
    }
}

/// Most old messages a connection remembers seeing through a retried send.
const MAX_LEARNED: usize = 10_000;

/// Every conversation's place on one connection.
pub struct Cursors {
    convs: HashMap<UserId, Cursor>,
    /// Messages at or below a mark that the connection saw anyway: the
    /// acks of its retried sends of old messages. Their `message_delivered`
    /// may follow.
    learned: HashSet<MessageId>,
}

impl Cursors {
    /// Starts from the marks (`last_seq` per peer) read at connect.
    pub fn new(marks: Vec<(UserId, i64)>) -> Self {
        let convs = marks.into_iter().map(|(peer, seq)| (peer, Cursor::at(seq))).collect();
        Cursors {
            convs,
            learned: HashSet::new(),
        }
    }

    /// The connection's mark in the conversation with `peer` (0: none).
    pub fn mark(&self, peer: UserId) -> i64 {
        self.convs.get(&peer).map_or(0, |c| c.mark)
    }

    /// Takes one item; pushes what may be written now onto `out`.
    pub fn accept(&mut self, item: Outbound, out: &mut Vec<Frame>) {
        let (kind, m) = match item {
            Outbound::Frame(frame) => return out.push(frame),
            Outbound::Ordered(o) => *o,
        };
        match kind {
            Kind::Message => {
                let cursor = self.convs.entry(m.peer).or_insert_with(|| Cursor::at(0));
                let here = cursor.held.get(&m.seq).is_some_and(|h| h.frame.is_some());
                if m.seq <= cursor.last || cursor.ahead.contains(&m.seq) || here {
                    return;
                }
                if m.seq == cursor.last + 1 && cursor.held.is_empty() && cursor.ahead.is_empty() {
                    // The usual case, in order with nothing held or ahead: straight
                    // out, without a trip through the held map.
                    out.push(m.frame);
                    cursor.last = m.seq;
                    return;
                }
                let held = cursor.held.entry(m.seq).or_insert_with(|| Held {
                    ts: m.ts,
                    frame: None,
                    notices: Vec::new(),
                });
                held.frame = Some(m.frame);
                if m.seq == cursor.last + 1 {
                    cursor.advance(out);
                } else {
                    cursor.deadline.get_or_insert_with(|| Instant::now() + GAP_WAIT);
                }
            }
            Kind::Ack => {
                let a = m;
                out.push(a.frame);
                let cursor = self.convs.entry(a.peer).or_insert_with(|| Cursor::at(0));
                if a.seq <= cursor.mark && self.learned.len() < MAX_LEARNED {
                    // A retry of a message older than the connection.
                    self.learned.insert(a.id);
                }
                // Notices that came before their message's ack follow it.
                if let Some(early) = cursor.held.remove(&a.seq) {
                    out.extend(early.notices);
                }
                if a.seq == cursor.last + 1 {
                    cursor.last = a.seq;
                    cursor.advance(out);
                } else if a.seq > cursor.last && !cursor.ahead.contains(&a.seq) {
                    cursor.ahead.push(a.seq);
                }
            }
            Kind::Change => {
                let cursor = self.convs.entry(m.peer).or_insert_with(|| Cursor::at(0));
                if m.seq <= cursor.last || cursor.ahead.contains(&m.seq) {
                    return out.push(m.frame);
                }
                // The message has not been passed on yet: the notice waits
                // for it (and, like a gap, not forever).
                let held = cursor.held.entry(m.seq).or_insert_with(|| Held {
                    ts: m.ts,
                    frame: None,
                    notices: Vec::new(),
                });
                held.notices.push(m.frame);
                cursor.deadline.get_or_insert_with(|| Instant::now() + GAP_WAIT);
            }
            Kind::Delivered => {
                let d = m;
                let cursor = self.convs.get_mut(&d.peer);
                let mark = cursor.as_ref().map_or(0, |c| c.mark);
                if d.seq <= mark && !self.learned.contains(&d.id) {
                    return;
                }
                match cursor.and_then(|c| c.held.get_mut(&d.seq)) {
                    Some(held) => held.notices.push(d.frame),
                    None => out.push(d.frame),
                }
            }
        }
    }

    /// The earliest moment a held message stops waiting.
    pub fn deadline(&self) -> Option<Instant> {
        self.convs.values().filter_map(|c| c.deadline).min()
    }

    /// Gaps whose wait is over.
    pub fn due(&self, now: Instant) -> Vec<Gap> {
        self.convs
            .iter()
            .filter(|(_, c)| c.deadline.is_some_and(|d| d <= now))
            .filter_map(|(peer, c)| {
                let (&upto_seq, held) = c.held.first_key_value()?;
                Some(Gap {
                    peer: *peer,
                    after_seq: c.last,
                    upto_seq,
                    before_ts: held.ts,
                    inclusive: held.frame.is_none(),
                })
            })
            .collect()
    }

    /// Waits another [`GAP_WAIT`] on the gaps that are due (own sends still
    /// in flight may be what is missing).
    pub fn postpone(&mut self, now: Instant) {
        for cursor in self.convs.values_mut() {
            if cursor.deadline.is_some_and(|d| d <= now) {
                cursor.deadline = Some(now + GAP_WAIT);
            }
        }
    }

    /// Closes `gap` with the messages read from the store (any order), then
    /// passes on what was held behind it.
    pub fn fill(
        &mut self,
        gap: &Gap,
        found: Vec<StoredMessage>,
        out: &mut Vec<Frame>,
        encode: impl Fn(&StoredMessage) -> Frame,
    ) {
        let Some(cursor) = self.convs.get_mut(&gap.peer) else {
            return;
        };
        let upto = gap.upto_seq - i64::from(!gap.inclusive);
        let mut found: Vec<_> = found
            .into_iter()
            .filter(|m| m.seq > cursor.last && m.seq <= upto && !cursor.ahead.contains(&m.seq))
            .collect();
        found.sort_by_key(|m| m.seq);
        found.dedup_by_key(|m| m.seq);
        out.extend(found.iter().map(encode));
        if gap.inclusive {
            // The message its notices waited for has been passed on (or can
            // never come): they follow.
            if let Some(early) = cursor.held.remove(&gap.upto_seq) {
                out.extend(early.notices);
            }
        }
        // Whatever the store did not have can never come: move past it.
        cursor.last = cursor.last.max(upto);
        cursor.advance(out);
    }
}

impl Cursor {
    fn at(seq: i64) -> Self {
        Cursor {
            mark: seq,
            last: seq,
            ahead: Vec::new(),
            held: BTreeMap::new(),
            deadline: None,
        }
    }

    /// Passes on everything that now follows `last` without a gap.
    fn advance(&mut self, out: &mut Vec<Frame>) {
        loop {
            let next = self.last + 1;
            if let Some(i) = self.ahead.iter().position(|&s| s == next) {
                self.ahead.swap_remove(i);
            } else if self.held.get(&next).is_some_and(|h| h.frame.is_some()) {
                // (A held entry with only notices waits for its message.)
                let Some(held) = self.held.remove(&next) else { break };
                out.extend(held.frame);
                out.extend(held.notices);
            } else {
                break;
            }
            self.last = next;
        }
        self.ahead.retain(|&s| s > self.last);
        self.deadline = if self.held.is_empty() {
            None
        } else {
            self.deadline.or_else(|| Some(Instant::now() + GAP_WAIT))
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(kind: Kind, peer: i64, seq: i64) -> Outbound {
        let frame = Sequenced {
            peer: UserId(peer),
            seq,
            id: MessageId(seq),
            ts: seq * 10,
            frame: format!("{seq}").into(),
        };
        Outbound::ordered(kind, frame)
    }

    fn run(cursors: &mut Cursors, items: Vec<Outbound>) -> Vec<String> {
        let mut out = Vec::new();
        for i in items {
            cursors.accept(i, &mut out);
        }
        out.iter().map(|f| f.as_str().to_owned()).collect()
    }

    #[test]
    fn in_order_messages_pass_and_repeats_and_old_ones_do_not() {
        let mut c = Cursors::new(vec![(UserId(2), 3)]);
        let out = run(
            &mut c,
            vec![
                item(Kind::Message, 2, 3),
                item(Kind::Message, 2, 4),
                item(Kind::Message, 2, 4),
                item(Kind::Message, 2, 5),
                item(Kind::Message, 7, 1),
            ],
        );
        assert_eq!(out, ["4", "5", "1"]);
        assert!(c.deadline().is_none());
    }

    #[test]
    fn a_skipped_seq_holds_later_ones_and_their_notices_until_it_arrives() {
        let mut c = Cursors::new(vec![]);
        let out = run(
            &mut c,
            vec![
                item(Kind::Message, 2, 2),
                item(Kind::Delivered, 2, 2),
                item(Kind::Message, 2, 3),
            ],
        );
        assert!(out.is_empty());
        assert!(c.deadline().is_some());
        let out = run(&mut c, vec![item(Kind::Message, 2, 1)]);
        assert_eq!(out, ["1", "2", "2", "3"]);
        assert!(c.deadline().is_none());
    }

    #[test]
    fn own_acks_fill_their_place_without_a_receive() {
        let mut c = Cursors::new(vec![(UserId(2), 1)]);
        let out = run(
            &mut c,
            vec![
                item(Kind::Ack, 2, 3),
                item(Kind::Message, 2, 4),
                item(Kind::Message, 2, 2),
            ],
        );
        assert_eq!(out, ["3", "2", "4"], "ack at once; 4 waits for 2; 3 is not received");
    }

    #[test]
    fn a_gap_that_waited_is_filled_from_the_store() {
        let mut c = Cursors::new(vec![(UserId(2), 1)]);
        let out = run(&mut c, vec![item(Kind::Message, 2, 4)]);
        assert!(out.is_empty());
        let due = c.due(Instant::now() + GAP_WAIT);
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].after_seq, due[0].upto_seq, due[0].before_ts), (1, 4, 40));
        let stored = |seq: i64| StoredMessage::new(MessageId(seq), UserId(2), UserId(1), String::new(), seq * 10, seq);
        let mut out = Vec::new();
        c.fill(&due[0], vec![stored(3), stored(1), stored(2)], &mut out, |m| {
            m.seq.to_string().into()
        });
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["2", "3", "4"]);
        assert!(c.deadline().is_none());
        assert!(
            run(&mut c, vec![item(Kind::Message, 2, 3)]).is_empty(),
            "a late copy is dropped"
        );
    }

    #[test]
    fn a_connection_learns_at_most_max_learned_old_messages() {
        let mut c = Cursors::new(vec![(UserId(2), 1_000_000)]);
        let acks = (1..=MAX_LEARNED as i64 + 100)
            .map(|seq| item(Kind::Ack, 2, seq))
            .collect();
        run(&mut c, acks);
        assert_eq!(c.learned.len(), MAX_LEARNED);
    }

    #[test]
    fn a_change_passes_after_its_message_and_waits_for_one_not_yet_here() {
        let mut c = Cursors::new(vec![(UserId(2), 5)]);
        // Older than the connection (history or replayed): passes at once.
        assert_eq!(run(&mut c, vec![item(Kind::Change, 2, 3)]), ["3"]);
        // Its message not here yet: it waits, then follows the message.
        assert!(run(&mut c, vec![item(Kind::Change, 2, 7)]).is_empty());
        assert_eq!(
            run(&mut c, vec![item(Kind::Message, 2, 6), item(Kind::Message, 2, 7)]),
            ["6", "7", "7"]
        );
        assert!(c.deadline().is_none());
        // A change of a message that never arrives live is filled from the store.
        assert!(run(&mut c, vec![item(Kind::Change, 2, 8)]).is_empty());
        let due = c.due(Instant::now() + GAP_WAIT);
        assert_eq!((due[0].missing(), due[0].read_before()), (1, 81));
        let stored = StoredMessage::new(MessageId(8), UserId(2), UserId(1), String::new(), 80, 8);
        let mut out = Vec::new();
        c.fill(&due[0], vec![stored], &mut out, |m| format!("m{}", m.seq).into());
        assert_eq!(out.iter().map(|f| f.as_str()).collect::<Vec<_>>(), ["m8", "8"]);
        // Own sends: a change that beat the ack follows it.
        assert!(run(&mut c, vec![item(Kind::Change, 2, 9)]).is_empty());
        assert_eq!(run(&mut c, vec![item(Kind::Ack, 2, 9)]), ["9", "9"]);
        assert!(c.deadline().is_none());
    }

    #[test]
    fn notices_at_or_below_the_mark_need_the_message_to_be_known() {
        let mut c = Cursors::new(vec![(UserId(2), 5)]);
        // The ack of a retried old send: the connection has seen message 5.
        let out = run(
            &mut c,
            vec![
                item(Kind::Delivered, 2, 4),
                item(Kind::Ack, 2, 5),
                item(Kind::Delivered, 2, 5),
                item(Kind::Delivered, 2, 6),
            ],
        );
        assert_eq!(out, ["5", "5", "6"], "the ack, then the two notices");
    }
}

#[cfg(test)]
mod size {
    #[test]
    fn an_item_is_no_bigger_than_a_frame() {
        // Every connection's queue holds these; a tag beside the frame
        // would cost each idle connection a little more.
        assert_eq!(
            std::mem::size_of::<super::Outbound>(),
            std::mem::size_of::<crate::codec::Frame>()
        );
    }
}

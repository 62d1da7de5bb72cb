//! Group commit. Every write a connection asks for goes into one queue; a
//! single task takes whatever has gathered (up to `max_batch`), hands it to
//! the store as one transaction, and once it is committed dispatches the
//! outcomes: the ack to the sender, the message to the recipient's and the
//! sender's other connections, `message_delivered` to the sender. On a store
//! that runs batches at once (PostgreSQL), the next is gathered and handed
//! over while the last one commits. One task dispatching in the order the
//! batches were handed over is what keeps each conversation in `seq` order
//! on every connection.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use tokio::time::Instant;

use dyad_protocol::{ErrorCode, MessageId, MessageStatus, ServerEvent};
use dyad_store::{DeliveredMessage, MessageStore, StoreResult, WriteOp, WriteOutcome};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::clock::now_ms;
use crate::codec::{encode, error_frame, message_error_frame};
use crate::hub::{Hub, Peer};
use crate::metrics::Metrics;
use crate::outbound::{Kind, Outbound, Sequenced};

/// A write and where its answer goes.
pub struct Submission {
    /// What to store.
    pub op: WriteOp,
    /// The connection that asked, to get the ack or the error.
    pub origin: Option<Arc<Peer>>,
    /// The origin's in-flight slot, released once the answer is queued.
    pub slot: Option<OwnedSemaphorePermit>,
}

/// Where a write's answer goes, kept beside the batch while it commits.
struct Route {
    /// The connection that asked.
    origin: Option<Arc<Peer>>,
    /// The send's key, echoed in its ack or error.
    client_msg_id: Option<String>,
    /// The message a read, edit or delete is about, echoed in its error.
    about: Option<MessageId>,
    /// Held until the answer is queued.
    _slot: Option<OwnedSemaphorePermit>,
    /// When the write was submitted.
    submitted: Instant,
}

impl Route {
    /// Refuses the write to the connection that asked: an `error` echoing
    /// the send's key or the message the write was about.
    fn refuse(self, code: ErrorCode, why: &str) {
        let Some(origin) = self.origin else { return };
        origin.push(match self.about {
            Some(id) => message_error_frame(code, why, id),
            None => error_frame(code, why, self.client_msg_id),
        });
    }
}

enum Request {
    Write(Submission, Instant),
    Flush(oneshot::Sender<()>),
}

/// The queue into the group commit; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Request>,
    /// Delivery acks, taken before everything else.
    acks: mpsc::Sender<Request>,
}

/// The group commit has stopped.
#[derive(Debug, thiserror::Error)]
#[error("the group commit has stopped")]
pub struct Stopped;

impl GroupCommit {
    /// Starts the commit task. It ends when every [`GroupCommit`] is dropped
    /// and the queue is empty.
    pub fn start(
        store: Arc<dyn MessageStore>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        max_batch: usize,
    ) -> (GroupCommit, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::channel(max_batch.max(1) * 16);
        let (acks, acks_rx) = mpsc::channel(max_batch.max(1) * 16);
        let task = tokio::spawn(run(rx, acks_rx, store, hub, metrics, max_batch.max(1)));
        (GroupCommit { tx, acks }, task)
    }

    /// Queues a write; waits while the queue is full (backpressure).
    pub async fn submit(&self, s: Submission) -> Result<(), Stopped> {
        let now = Instant::now();
        let queue = match s.op {
            WriteOp::Deliver { .. } => &self.acks,
            _ => &self.tx,
        };
        queue.send(Request::Write(s, now)).await.map_err(|_| Stopped)
    }

    /// Resolves once everything queued before it is committed and dispatched.
    pub async fn flush(&self) -> Result<(), Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Flush(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

/// A batch handed to the store, waiting for its outcome.
struct InFlight<'a> {
    outcome: Pin<Box<dyn Future<Output = StoreResult<Vec<WriteOutcome>>> + Send + 'a>>,
    routes: Vec<Route>,
    /// Flushes answered once this batch is dispatched.
    flushes: Vec<oneshot::Sender<()>>,
    started: Instant,
}

async fn run(
    mut rx: mpsc::Receiver<Request>,
    mut acks: mpsc::Receiver<Request>,
    store: Arc<dyn MessageStore>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    max_batch: usize,
) {
    let store = &*store;
    // As many batches as the store runs at once: the next is gathered and
    // handed over while the last one commits, so the store need not wait
    // for this task to dispatch. Outcomes still go out in the order the
    // batches were handed over, which is the order each conversation's
    // `seq`s were taken in (`MessageStore::write_batch`).
    let at_once = store.batches_in_flight().max(1);
    let mut requests = Vec::with_capacity(max_batch);
    let mut in_flight: VecDeque<InFlight<'_>> = VecDeque::with_capacity(at_once);
    let mut open = true;
    let mut acks_open = true;
    while open || acks_open || !in_flight.is_empty() || !requests.is_empty() {
        // What waits is handed over at once when the store is idle; while
        // another batch commits, only once it is worth a batch of its own
        // (a small one would cost its round trips and its commit for little).
        let worth = in_flight.is_empty() || !open || requests.len() >= max_batch.div_ceil(4);
        if !requests.is_empty() && in_flight.len() < at_once && worth {
            fill(&mut requests, &mut acks, &mut rx, max_batch);
            metrics
                .commit_queue_depth
                .observe((requests.len() + rx.len() + acks.len()) as f64);
            let (ops, routes, flushes) = gather(&mut requests);
            if ops.is_empty() {
                // Only flushes: they wait for what is already with the store.
                match in_flight.back_mut() {
                    Some(last) => last.flushes.extend(flushes),
                    None => {
                        for done in flushes {
                            let _ = done.send(());
                        }
                    }
                }
                continue;
            }
            let started = Instant::now();
            let mut outcome = store.write_batch(ops, now_ms());
            // Polled once now, so the store has this batch before the next
            // one: the order of hand-over is the order of `seq`s.
            if let Poll::Ready(result) = std::future::poll_fn(|cx| Poll::Ready(outcome.as_mut().poll(cx))).await {
                outcome = Box::pin(std::future::ready(result));
            }
            in_flight.push_back(InFlight {
                outcome,
                routes,
                flushes,
                started,
            });
            continue;
        }
        let room = max_batch.saturating_sub(requests.len());
        tokio::select! {
            // The oldest batch's outcome before anything new.
            biased;
            result = oldest(&mut in_flight), if !in_flight.is_empty() => {
                if let Some(batch) = in_flight.pop_front() {
                    finish(&hub, &metrics, batch, result);
                }
            }
            // Acks before other writes.
            ack = acks.recv(), if acks_open && in_flight.len() < at_once && room > 0 => {
                match ack {
                    Some(ack) => requests.push(ack),
                    None => acks_open = false,
                }
            }
            // Writes are gathered only while another batch could be handed
            // over (a store that runs one batch at a time sleeps meanwhile).
            n = rx.recv_many(&mut requests, room), if open && in_flight.len() < at_once && room > 0 => {
                if n == 0 {
                    open = false;
                }
            }
        }
    }
}

/// Adds what waits to the next batch: delivery acks first (up to a batch of
/// them, or all before a flush, which must cover them), then other writes
/// up to `max_batch`. Under overload the acks do not queue behind the
/// sends: each one ends a pending delivery, and a backlog of those makes
/// every later write slower (docs/BENCHMARKS.md §18).
fn fill(
    requests: &mut Vec<Request>,
    acks: &mut mpsc::Receiver<Request>,
    rx: &mut mpsc::Receiver<Request>,
    max_batch: usize,
) {
    let flushing = requests.iter().any(|r| matches!(r, Request::Flush(_)));
    let mut taken = 0;
    while (flushing || taken < max_batch)
        && let Ok(ack) = acks.try_recv()
    {
        requests.push(ack);
        taken += 1;
    }
    while requests.len() < max_batch
        && let Ok(request) = rx.try_recv()
    {
        requests.push(request);
    }
}

/// The outcome of the oldest batch with the store.
async fn oldest(in_flight: &mut VecDeque<InFlight<'_>>) -> StoreResult<Vec<WriteOutcome>> {
    match in_flight.front_mut() {
        Some(batch) => batch.outcome.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Splits gathered requests into the batch's operations, their routes, and
/// the flushes among them.
fn gather(requests: &mut Vec<Request>) -> (Vec<WriteOp>, Vec<Route>, Vec<oneshot::Sender<()>>) {
    let mut ops = Vec::with_capacity(requests.len());
    let mut routes = Vec::with_capacity(requests.len());
    let mut flushes = Vec::new();
    for request in requests.drain(..) {
        match request {
            Request::Write(s, submitted) => {
                let (client_msg_id, about) = match &s.op {
                    WriteOp::Send(m) => (m.client_msg_id.as_ref().map(|k| k.as_str().to_owned()), None),
                    WriteOp::Deliver { .. } => (None, None),
                    WriteOp::Read { message_id, .. }
                    | WriteOp::Edit { message_id, .. }
                    | WriteOp::Delete { message_id, .. } => (None, Some(*message_id)),
                };
                ops.push(s.op);
                routes.push(Route {
                    origin: s.origin,
                    client_msg_id,
                    about,
                    _slot: s.slot,
                    submitted,
                });
            }
            Request::Flush(done) => flushes.push(done),
        }
    }
    (ops, routes, flushes)
}

/// Dispatches a committed batch's outcomes, or refuses its writes.
#[tracing::instrument(level = "debug", name = "commit_batch", skip_all, fields(ops = batch.routes.len()))]
fn finish(hub: &Hub, metrics: &Metrics, batch: InFlight<'_>, result: StoreResult<Vec<WriteOutcome>>) {
    let InFlight {
        routes,
        flushes,
        started,
        ..
    } = batch;
    let count = routes.len();
    metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    metrics.commit_batch_size.observe(count as f64);
    metrics.commit_batches.inc();
    match result {
        Ok(outcomes) if outcomes.len() == routes.len() => {
            for (outcome, route) in outcomes.into_iter().zip(routes) {
                dispatch(hub, metrics, outcome, route);
            }
        }
        Ok(_) | Err(_) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, ops = count, "group commit failed; refusing its sends");
            }
            metrics.commit_failures.inc();
            for route in routes {
                route.refuse(ErrorCode::Unavailable, "storage unavailable; nothing was stored");
            }
        }
    }
    for done in flushes {
        let _ = done.send(());
    }
}

#[tracing::instrument(level = "trace", skip_all, fields(client_msg_id = route.client_msg_id.as_deref()))]
fn dispatch(hub: &Hub, metrics: &Metrics, outcome: WriteOutcome, route: Route) {
    match outcome {
        WriteOutcome::Stored { message, duplicate } => {
            let Route {
                origin,
                client_msg_id,
                submitted,
                ..
            } = route;
            if let Some(origin) = &origin {
                let ack = encode(&ServerEvent::MessageAck {
                    client_msg_id,
                    message_id: message.id,
                    recipient_id: message.recipient_id,
                    timestamp: message.timestamp,
                    seq: message.seq,
                    status: MessageStatus::Sent,
                });
                origin.send(Outbound::ordered(
                    Kind::Ack,
                    Sequenced::of(&message, message.recipient_id, ack),
                ));
                metrics.send_ack_seconds.observe(submitted.elapsed().as_secs_f64());
                if let (true, Some(delivered_at)) = (duplicate, message.delivered_at) {
                    // A retry of a message that is already delivered: say so at once.
                    origin.push(encode(&ServerEvent::MessageDelivered {
                        message_id: message.id,
                        recipient_id: message.recipient_id,
                        delivered_at,
                    }));
                }
            }
            if duplicate {
                metrics.duplicate_sends.inc();
                return;
            }
            metrics.messages_stored.inc();
            let frame = encode(&ServerEvent::ReceiveMessage(message.view()));
            hub.route_message(&message, frame, origin.map(|o| o.id));
        }
        WriteOutcome::UnknownRecipient => route.refuse(ErrorCode::UnknownRecipient, "no such recipient"),
        WriteOutcome::Blocked => route.refuse(ErrorCode::Blocked, "one of you blocks the other; nothing was stored"),
        WriteOutcome::NotFound => route.refuse(ErrorCode::NotFound, "no such message"),
        WriteOutcome::Forbidden => route.refuse(ErrorCode::Forbidden, "only its sender may change a message"),
        WriteOutcome::EditWindowPassed => route.refuse(ErrorCode::EditWindowPassed, "the message is too old to edit"),
        WriteOutcome::Unchanged => {}
        WriteOutcome::Read(mark) => {
            delivered(hub, metrics, &mark.delivered);
            let frame = encode(&ServerEvent::MessageRead {
                reader_id: mark.reader,
                peer_id: mark.peer,
                message_id: mark.message_id,
                seq: mark.seq,
                read_at: mark.read_at,
            });
            hub.route_read(&mark, frame);
        }
        WriteOutcome::Changed(m) => {
            let event = match m.deleted_at {
                Some(deleted_at) => ServerEvent::MessageDeleted {
                    message_id: m.id,
                    sender_id: m.sender_id,
                    recipient_id: m.recipient_id,
                    seq: m.seq,
                    deleted_at,
                },
                None => ServerEvent::MessageEdited {
                    message_id: m.id,
                    sender_id: m.sender_id,
                    recipient_id: m.recipient_id,
                    seq: m.seq,
                    message: m.body.clone(),
                    edited_at: m.edited_at.unwrap_or_default(),
                },
            };
            hub.route_change(&m, encode(&event));
        }
        WriteOutcome::Delivered(messages) => delivered(hub, metrics, &messages),
    }
}

/// Tells the senders of `messages` they are delivered.
fn delivered(hub: &Hub, metrics: &Metrics, messages: &[DeliveredMessage]) {
    for m in messages {
        metrics.messages_delivered.inc();
        let frame = encode(&ServerEvent::MessageDelivered {
            message_id: m.id,
            recipient_id: m.recipient_id,
            delivered_at: m.delivered_at,
        });
        hub.route_delivered(m, frame);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use dyad_protocol::UserId;

    use super::*;

    fn write(op: WriteOp) -> Request {
        let s = Submission {
            op,
            origin: None,
            slot: None,
        };
        Request::Write(s, Instant::now())
    }

    fn ack(n: i64) -> Request {
        write(WriteOp::Deliver {
            recipient_id: UserId(1),
            message_ids: vec![MessageId(n)],
        })
    }

    fn read(n: i64) -> Request {
        write(WriteOp::Read {
            reader: UserId(1),
            message_id: MessageId(n),
        })
    }

    /// What `requests` holds, as ("ack" | "read" | "flush", message id).
    fn kinds(requests: &[Request]) -> Vec<(&'static str, i64)> {
        requests
            .iter()
            .map(|r| match r {
                Request::Write(s, _) => match &s.op {
                    WriteOp::Deliver { message_ids, .. } => ("ack", message_ids[0].0),
                    WriteOp::Read { message_id, .. } => ("read", message_id.0),
                    _ => ("other", 0),
                },
                Request::Flush(_) => ("flush", 0),
            })
            .collect()
    }

    /// A queue holding `requests`, with its sender (so it stays open).
    fn queued(requests: impl IntoIterator<Item = Request>) -> (mpsc::Sender<Request>, mpsc::Receiver<Request>) {
        let (tx, rx) = mpsc::channel(64);
        requests.into_iter().for_each(|r| tx.try_send(r).unwrap());
        (tx, rx)
    }

    #[test]
    fn acks_go_into_the_next_batch_ahead_of_writes_queued_before_them() {
        let (_tx, mut rx) = queued((1..=10).map(read));
        let (_acks_tx, mut acks) = queued((101..=103).map(ack));
        let mut requests = Vec::new();
        fill(&mut requests, &mut acks, &mut rx, 4);
        assert_eq!(
            kinds(&requests),
            [("ack", 101), ("ack", 102), ("ack", 103), ("read", 1)]
        );
        requests.clear();
        fill(&mut requests, &mut acks, &mut rx, 4);
        assert_eq!(kinds(&requests), [("read", 2), ("read", 3), ("read", 4), ("read", 5)]);
    }

    #[test]
    fn a_batch_takes_at_most_a_batch_of_acks_unless_a_flush_waits_for_them_all() {
        let (_tx, mut rx) = queued([]);
        let (_acks_tx, mut acks) = queued((1..=10).map(ack));
        let mut requests = Vec::new();
        fill(&mut requests, &mut acks, &mut rx, 4);
        assert_eq!(requests.len(), 4);
        let (done, _) = oneshot::channel();
        let mut requests = vec![Request::Flush(done)];
        fill(&mut requests, &mut acks, &mut rx, 4);
        assert_eq!(requests.len(), 1 + 6, "the flush and every ack still waiting");
    }
}

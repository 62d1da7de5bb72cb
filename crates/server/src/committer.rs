//! Group commit. Every write a connection asks for goes into one queue; a
//! single task takes whatever has gathered (up to `max_batch`), stores it in
//! one transaction, and only then dispatches the outcomes: the ack to the
//! sender, the message to the recipient's and the sender's other connections,
//! `message_delivered` to the sender. One task dispatching in commit order is
//! what keeps each conversation in `seq` order on every connection.

use std::sync::Arc;
use tokio::time::Instant;

use dyad_protocol::{ErrorCode, MessageStatus, ServerEvent};
use dyad_store::{MessageStore, WriteOp, WriteOutcome};
use tokio::sync::{OwnedSemaphorePermit, mpsc, oneshot};

use crate::clock::now_ms;
use crate::codec::{encode, error_frame};
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
    /// Held until the answer is queued.
    _slot: Option<OwnedSemaphorePermit>,
}

enum Request {
    Write(Submission),
    Flush(oneshot::Sender<()>),
}

/// The queue into the group commit; cheap to clone.
#[derive(Clone)]
pub struct GroupCommit {
    tx: mpsc::Sender<Request>,
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
        let task = tokio::spawn(run(rx, store, hub, metrics, max_batch.max(1)));
        (GroupCommit { tx }, task)
    }

    /// Queues a write; waits while the queue is full (backpressure).
    pub async fn submit(&self, s: Submission) -> Result<(), Stopped> {
        self.tx.send(Request::Write(s)).await.map_err(|_| Stopped)
    }

    /// Resolves once everything queued before it is committed and dispatched.
    pub async fn flush(&self) -> Result<(), Stopped> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(Request::Flush(tx)).await.map_err(|_| Stopped)?;
        rx.await.map_err(|_| Stopped)
    }
}

async fn run(
    mut rx: mpsc::Receiver<Request>,
    store: Arc<dyn MessageStore>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    max_batch: usize,
) {
    let mut requests = Vec::with_capacity(max_batch);
    while rx.recv_many(&mut requests, max_batch).await > 0 {
        let mut ops = Vec::with_capacity(requests.len());
        let mut routes = Vec::with_capacity(requests.len());
        let mut flushes = Vec::new();
        for request in requests.drain(..) {
            match request {
                Request::Write(s) => {
                    let client_msg_id = match &s.op {
                        WriteOp::Send(m) => m.client_msg_id.as_ref().map(|k| k.as_str().to_owned()),
                        WriteOp::Deliver { .. } => None,
                    };
                    ops.push(s.op);
                    routes.push(Route {
                        origin: s.origin,
                        client_msg_id,
                        _slot: s.slot,
                    });
                }
                Request::Flush(done) => flushes.push(done),
            }
        }
        if !ops.is_empty() {
            commit(&*store, &hub, &metrics, ops, routes).await;
        }
        for done in flushes {
            let _ = done.send(());
        }
    }
}

#[tracing::instrument(level = "debug", name = "commit_batch", skip_all, fields(ops = ops.len()))]
async fn commit(store: &dyn MessageStore, hub: &Hub, metrics: &Metrics, ops: Vec<WriteOp>, routes: Vec<Route>) {
    let started = Instant::now();
    let count = ops.len();
    let result = store.write_batch(ops, now_ms()).await;
    metrics.commit_seconds.observe(started.elapsed().as_secs_f64());
    metrics.commit_batch_size.observe(count as f64);
    metrics.commit_batches.inc();
    let outcomes = match result {
        Ok(outcomes) if outcomes.len() == routes.len() => outcomes,
        Ok(_) | Err(_) => {
            if let Err(e) = result {
                tracing::warn!(error = %e, ops = count, "group commit failed; refusing its sends");
            }
            metrics.commit_failures.inc();
            for route in routes {
                if let Some(origin) = route.origin {
                    origin.push(error_frame(
                        ErrorCode::Unavailable,
                        "storage unavailable; nothing was stored",
                        route.client_msg_id,
                    ));
                }
            }
            return;
        }
    };
    for (outcome, route) in outcomes.into_iter().zip(routes) {
        dispatch(hub, metrics, outcome, route.origin, route.client_msg_id);
    }
}

#[tracing::instrument(level = "trace", skip_all, fields(client_msg_id = client_msg_id.as_deref()))]
fn dispatch(
    hub: &Hub,
    metrics: &Metrics,
    outcome: WriteOutcome,
    origin: Option<Arc<Peer>>,
    client_msg_id: Option<String>,
) {
    match outcome {
        WriteOutcome::Stored { message, duplicate } => {
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
        WriteOutcome::UnknownRecipient => {
            if let Some(origin) = origin {
                origin.push(error_frame(
                    ErrorCode::UnknownRecipient,
                    "no such recipient",
                    client_msg_id,
                ));
            }
        }
        WriteOutcome::Blocked => {
            if let Some(origin) = origin {
                origin.push(error_frame(
                    ErrorCode::Blocked,
                    "one of you blocks the other; nothing was stored",
                    client_msg_id,
                ));
            }
        }
        WriteOutcome::Delivered(messages) => {
            for m in messages {
                metrics.messages_delivered.inc();
                let frame = encode(&ServerEvent::MessageDelivered {
                    message_id: m.id,
                    recipient_id: m.recipient_id,
                    delivered_at: m.delivered_at,
                });
                hub.route_delivered(&m, frame);
            }
        }
    }
}

//! One live connection as the rest of the server sees it, and the reasons
//! it may be closed for.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use dyad_protocol::{ConnectionId, UserId};
use dyad_store::SessionRecord;
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::codec::Frame;
use crate::metrics::Metrics;
use crate::outbound::Outbound;

/// Why a connection is being closed, as its close frame will say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CloseReason {
    /// WebSocket close code.
    pub code: u16,
    /// Close frame text.
    pub reason: &'static str,
    /// Whether frames already queued go out before the close frame.
    pub drain: bool,
}

impl CloseReason {
    /// The server is stopping.
    pub const SHUTDOWN: CloseReason = CloseReason {
        code: 1001,
        reason: "server shutting down",
        drain: true,
    };
    /// The session was revoked (logout).
    pub const REVOKED: CloseReason = CloseReason {
        code: 1008,
        reason: "session revoked",
        drain: false,
    };
    /// The session expired.
    pub const EXPIRED: CloseReason = CloseReason {
        code: 1008,
        reason: "session expired",
        drain: false,
    };
    /// The outbound queue overflowed.
    pub const SLOW_CONSUMER: CloseReason = CloseReason {
        code: 1013,
        reason: "slow consumer",
        drain: false,
    };
    /// No frame for two heartbeat intervals.
    pub const HEARTBEAT_TIMEOUT: CloseReason = CloseReason {
        code: 4000,
        reason: "heartbeat timeout",
        drain: false,
    };
    /// A frame over the hard size limit.
    pub const TOO_LARGE: CloseReason = CloseReason {
        code: 1009,
        reason: "frame too large",
        drain: false,
    };
    /// A text frame that is not UTF-8.
    pub const INVALID_UTF8: CloseReason = CloseReason {
        code: 1007,
        reason: "text frame is not UTF-8",
        drain: false,
    };
    /// A WebSocket protocol violation (reserved bits or opcodes, bad framing).
    pub const PROTOCOL_ERROR: CloseReason = CloseReason {
        code: 1002,
        reason: "protocol violation",
        drain: false,
    };
    /// The store failed while replaying.
    pub const INTERNAL: CloseReason = CloseReason {
        code: 1011,
        reason: "internal error",
        drain: false,
    };
}

/// One live WebSocket connection, as the rest of the server sees it.
pub struct Peer {
    /// Its id.
    pub id: ConnectionId,
    /// The authenticated user.
    pub user_id: UserId,
    /// The session whose token opened it.
    pub session: SessionRecord,
    /// Users whose presence it watches.
    pub watching: Mutex<HashSet<UserId>>,
    /// Sends that may await their ack at once: half the outbound queue, so
    /// that a client pipelining sends can never overflow its own queue with
    /// acks. A client that sends faster waits (TCP backpressure).
    pub sends_in_flight: Arc<Semaphore>,
    max_in_flight: usize,
    outbound: mpsc::Sender<Outbound>,
    closing: CancellationToken,
    /// Cancelled at shutdown: stop reading frames. Per connection, because a
    /// token shared by every connection would be a lock they all contend on.
    stop_reading: CancellationToken,
    close_reason: OnceLock<CloseReason>,
    /// Bumped when a block of its user, or by its user, changed: whom it
    /// may type to must be looked up again.
    blocks_epoch: AtomicU64,
    metrics: Arc<Metrics>,
}

impl Peer {
    /// Connection `id`, opened with `session`, whose frames go to `outbound`.
    pub(super) fn new(
        id: ConnectionId,
        session: SessionRecord,
        outbound: mpsc::Sender<Outbound>,
        metrics: Arc<Metrics>,
    ) -> Self {
        let max_in_flight = (outbound.max_capacity() / 2).max(1);
        Peer {
            id,
            user_id: session.user_id,
            session,
            watching: Mutex::new(HashSet::new()),
            sends_in_flight: Arc::new(Semaphore::new(max_in_flight)),
            max_in_flight,
            outbound,
            closing: CancellationToken::new(),
            stop_reading: CancellationToken::new(),
            close_reason: OnceLock::new(),
            blocks_epoch: AtomicU64::new(0),
            metrics,
        }
    }

    /// Queues a frame. A full queue means a slow consumer: the connection is
    /// closed, and what it missed stays pending in the store.
    pub fn push(&self, frame: Frame) {
        self.send(Outbound::Frame(frame));
    }

    /// Queues an item (see [`Peer::push`]).
    pub fn send(&self, item: Outbound) {
        match self.outbound.try_send(item) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => self.slow_consumer(),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// Closes it for falling behind (a full queue, or a write past its
    /// deadline); what it missed stays pending in the store.
    pub fn slow_consumer(&self) {
        if self.close_reason.get().is_none() {
            self.metrics.slow_consumers.inc();
            tracing::warn!(connection = %self.id, user_id = %self.user_id, "slow consumer disconnected");
        }
        self.close(CloseReason::SLOW_CONSUMER);
    }

    /// Asks the connection to close; the first reason given wins.
    pub fn close(&self, reason: CloseReason) {
        let _ = self.close_reason.set(reason);
        self.closing.cancel();
    }

    /// Resolves when someone asked the connection to close.
    pub fn closing(&self) -> &CancellationToken {
        &self.closing
    }

    /// Resolves when the connection should stop reading frames (shutdown).
    pub fn stop_reading(&self) -> &CancellationToken {
        &self.stop_reading
    }

    /// Why it is closing, once it is.
    pub fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason.get().copied()
    }

    /// Changes whenever a block of its user, or by its user, changed.
    pub fn blocks_epoch(&self) -> u64 {
        self.blocks_epoch.load(Ordering::Relaxed)
    }

    /// Whether some of its sends still wait for their ack.
    pub fn sending(&self) -> bool {
        self.sends_in_flight.available_permits() < self.max_in_flight
    }
}

impl Peer {
    /// A block of its user, or by its user, changed.
    pub(super) fn blocks_changed(&self) {
        self.blocks_epoch.fetch_add(1, Ordering::Relaxed);
    }
}

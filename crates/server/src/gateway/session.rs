//! One WebSocket session: a reader and a writer over the same socket, joined
//! by the connection's bounded outbound queue.
//!
//! The writer sends `connected`, replays the undelivered messages up to the
//! connection's marks (see [`crate::outbound`]), sends `pending_complete`,
//! then drains the queue through the connection's cursors and pings on the
//! heartbeat. The reader hands each text frame to [`super::frames`]. Either
//! ending ends the session.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use dyad_protocol::{ErrorCode, ServerEvent};
use dyad_store::{PageRequest, SessionRecord};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;

use super::frames::{self, Typing};
use crate::App;
use crate::clock::now_ms;
use crate::codec::{Frame, encode};
use crate::hub::{CloseReason, Peer};
use crate::metrics::ConnectionState;
use crate::outbound::{Cursors, Outbound};

/// Undelivered messages read from the store per replay page.
const REPLAY_PAGE: usize = 256;
/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Frames the writer sends before one flush.
const WRITE_BATCH: usize = 64;

/// When the client was last heard from, in milliseconds since the session
/// started: the reader notes every frame, the writer's heartbeat looks.
struct LastHeard {
    start: Instant,
    at: AtomicI64,
}

impl LastHeard {
    fn new() -> Self {
        LastHeard {
            start: Instant::now(),
            at: AtomicI64::new(0),
        }
    }

    fn touch(&self) {
        self.at
            .store(self.start.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let at = self.at.load(Ordering::Relaxed).max(0) as u64;
        self.start.elapsed().saturating_sub(Duration::from_millis(at))
    }

    /// At a heartbeat every `beat`: whether the client has been silent for
    /// two of them (it answers pings, so a live one never is).
    fn gone_silent(&self, beat: Duration) -> bool {
        self.silent_for() > beat * 2
    }
}

#[tracing::instrument(level = "debug", name = "session", skip_all,
    fields(user_id = %session.user_id, connection = tracing::field::Empty))]
pub(super) async fn run(socket: WebSocket, app: Arc<App>, session: SessionRecord) {
    let (tx, rx) = mpsc::channel(app.config.outbound_queue.max(1));
    let peer = app.hub.register(session, tx);
    tracing::Span::current().record("connection", tracing::field::display(peer.id));
    if app.shutdown.is_cancelled() {
        peer.stop_reading().cancel();
    }
    // The marks, taken before any frame is read, so that the connection's
    // own sends all land above them.
    let cursors = match app.hub.attach(&peer).await {
        Ok(cursors) => cursors,
        Err(e) => {
            tracing::warn!(error = %e, user_id = %peer.user_id, "could not read conversation marks");
            peer.close(CloseReason::INTERNAL);
            Cursors::new(Vec::new())
        }
    };
    tracing::debug!(connection = %peer.id, user_id = %peer.user_id, "connected");
    let heard = LastHeard::new();
    let (sink, mut stream) = socket.split();
    let sent_close = tokio::select! {
        sent = write_loop(sink, rx, &peer, &app, &heard, cursors) => sent,
        () = read_loop(&mut stream, &peer, &app, &heard) => false,
    };
    app.hub.unregister(&peer);
    if sent_close {
        // We sent a close frame: read (and drop) until the client's close
        // answers it, so that unread input does not make the kernel reset the
        // connection and discard what we sent last.
        let _ = tokio::time::timeout(CLOSE_HANDSHAKE, async {
            while let Some(Ok(message)) = stream.next().await {
                if matches!(message, Message::Close(_)) {
                    break;
                }
            }
        })
        .await;
    }
    tracing::debug!(connection = %peer.id, user_id = %peer.user_id, reason = ?peer.close_reason(), "disconnected");
}

type Sink = SplitSink<WebSocket, Message>;

/// Writes frames until the connection ends; true if it ended by sending a
/// close frame (so the client's answer is worth waiting for). Every write
/// has the write deadline, and a write blocked on a client that does not
/// read is given up as soon as the connection is asked to close, so the
/// socket of a slow consumer is freed within the write deadline: half of it
/// to take the close frame, then [`CLOSE_HANDSHAKE`] for the answer.
async fn write_loop(
    mut sink: Sink,
    mut rx: mpsc::Receiver<Outbound>,
    peer: &Arc<Peer>,
    app: &App,
    heard: &LastHeard,
    mut cursors: Cursors,
) -> bool {
    let within = app.config.write_deadline;
    let connected = ServerEvent::Connected {
        user_id: peer.user_id,
        connection_id: peer.id,
        heartbeat_interval_ms: app.config.heartbeat_interval.as_millis() as u64,
        server_time: now_ms(),
    };
    // Made once: a fresh cancellation future per frame costs a lock each time.
    let closing = peer.closing().cancelled();
    tokio::pin!(closing);
    let mut state = ConnectionState::new(&app.metrics, "replaying");
    let opening = async {
        timed(within, sink.send(encode(&connected).into_message())).await?;
        // Boxed for the same reason as the frame handler: it runs once.
        Box::pin(replay(&mut sink, peer, app, &cursors)).await
    };
    match write_unless_closing(opening, peer, closing.as_mut()).await {
        Written::Done => state.set("live"),
        Written::Closing => return close(&mut sink, &mut rx, peer, within).await,
        Written::Dead => return false,
    }
    let mut ready = Vec::new();
    let beat = app.config.heartbeat_interval.max(Duration::from_millis(10));
    let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
    loop {
        let gap_deadline = cursors.deadline();
        let written = tokio::select! {
            biased;
            () = &mut closing => Written::Closing,
            item = rx.recv() => {
                let Some(item) = item else { return false };
                cursors.accept(item, &mut ready);
                for _ in 1..WRITE_BATCH {
                    let Ok(item) = rx.try_recv() else { break };
                    cursors.accept(item, &mut ready);
                }
                write_unless_closing(write_all(&mut sink, &mut ready, within), peer, closing.as_mut()).await
            }
            // Boxed, and only made while a message is held: every idle
            // connection's task would otherwise carry a timer and the fill.
            () = gap_timer(gap_deadline), if gap_deadline.is_some() => {
                Box::pin(fill_gaps(&mut cursors, peer, app, &mut ready)).await;
                write_unless_closing(write_all(&mut sink, &mut ready, within), peer, closing.as_mut()).await
            }
            _ = heartbeat.tick() => {
                if heard.gone_silent(beat) {
                    peer.close(CloseReason::HEARTBEAT_TIMEOUT);
                    Written::Closing
                } else if peer.session.expires_at <= now_ms() {
                    peer.close(CloseReason::EXPIRED);
                    Written::Closing
                } else {
                    let ping = timed(within, sink.send(Message::Ping(Default::default())));
                    write_unless_closing(ping, peer, closing.as_mut()).await
                }
            }
        };
        match written {
            Written::Done => {}
            Written::Closing => return close(&mut sink, &mut rx, peer, within).await,
            Written::Dead => return false,
        }
    }
}

/// Sends the close frame (after what is queued, if the reason drains);
/// true if the client took it.
async fn close(sink: &mut Sink, rx: &mut mpsc::Receiver<Outbound>, peer: &Peer, within: Duration) -> bool {
    let reason = peer.close_reason().unwrap_or(CloseReason::SHUTDOWN);
    if reason.drain {
        while let Ok(item) = rx.try_recv() {
            if timed(within, sink.feed(item.into_frame().into_message()))
                .await
                .is_err()
            {
                return false;
            }
        }
    }
    let close = CloseFrame {
        code: reason.code,
        reason: reason.reason.into(),
    };
    timed(within / 2, sink.send(Message::Close(Some(close)))).await.is_ok()
}

/// How a write ended.
enum Written {
    /// It completed.
    Done,
    /// The connection was asked to close: send the close frame.
    Closing,
    /// The socket is done for (broken, or the client took nothing for the
    /// whole write deadline): drop it.
    Dead,
}

/// Runs `write` to its end, unless the connection is asked to close without
/// draining while it is still blocked. Giving up a blocked write loses no
/// framing: the WebSocket layer has the whole frame in its buffer, and the
/// close frame goes after it.
async fn write_unless_closing(
    write: impl Future<Output = Result<(), WriteFailed>>,
    peer: &Peer,
    mut closing: Pin<&mut WaitForCancellationFuture<'_>>,
) -> Written {
    tokio::pin!(write);
    let mut checked = false;
    loop {
        tokio::select! {
            biased;
            result = &mut write => {
                return match result {
                    Ok(()) => Written::Done,
                    Err(WriteFailed::Deadline) => {
                        peer.slow_consumer();
                        Written::Dead
                    }
                    Err(WriteFailed::Socket) => Written::Dead,
                };
            }
            () = closing.as_mut(), if !checked => {
                // Shutdown drains; any other reason does not wait for a
                // client that does not read.
                if !peer.close_reason().is_some_and(|r| r.drain) {
                    return Written::Closing;
                }
                checked = true;
            }
        }
    }
}

/// Why a write to the socket did not complete.
enum WriteFailed {
    /// The socket is broken.
    Socket,
    /// The client did not take the frames within the write deadline.
    Deadline,
}

/// One write under a deadline.
async fn timed(within: Duration, write: impl Future<Output = Result<(), axum::Error>>) -> Result<(), WriteFailed> {
    match tokio::time::timeout(within, write).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(WriteFailed::Socket),
        Err(_) => Err(WriteFailed::Deadline),
    }
}

/// Writes a batch of frames and flushes it: one write, one deadline.
async fn write_all(sink: &mut Sink, ready: &mut Vec<Frame>, within: Duration) -> Result<(), WriteFailed> {
    if ready.is_empty() {
        return Ok(());
    }
    let batch = async {
        for frame in ready.drain(..) {
            sink.feed(frame.into_message()).await?;
        }
        sink.flush().await
    };
    timed(within, batch).await
}

/// Resolves when a held message has waited long enough.
fn gap_timer(deadline: Option<Instant>) -> Pin<Box<tokio::time::Sleep>> {
    let at = deadline.unwrap_or_else(Instant::now);
    Box::pin(tokio::time::sleep_until(at))
}

/// Reads the messages missing before each held one from the store. While
/// the connection's own sends await their acks, one of them may be what is
/// missing (its ack, not a `receive_message`, fills the place): wait more.
async fn fill_gaps(cursors: &mut Cursors, peer: &Peer, app: &App, ready: &mut Vec<Frame>) {
    let now = Instant::now();
    if peer.sending() {
        cursors.postpone(now);
        return;
    }
    for gap in cursors.due(now) {
        let missing = gap.missing();
        let mut found = Vec::new();
        let mut before = gap.read_before();
        // Pages newest first, down to the last message passed on.
        while found.len() < missing {
            let page = PageRequest::Before {
                before: Some(before),
                limit: (missing - found.len()).min(100),
            };
            match app.store.history(peer.user_id, gap.peer, page).await {
                Ok(page) => {
                    let Some(oldest) = page.messages.last() else { break };
                    before = oldest.timestamp;
                    let done = !page.has_more || oldest.seq <= gap.after_seq + 1;
                    found.extend(page.messages);
                    if done {
                        break;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, user_id = %peer.user_id, "gap fill failed; trying again");
                    cursors.postpone(now);
                    return;
                }
            }
        }
        app.metrics.gap_fills.inc();
        cursors.fill(&gap, found, ready, |m| encode(&ServerEvent::ReceiveMessage(m.view())));
    }
}

/// Sends every undelivered message up to each conversation's mark, oldest
/// first, then `pending_complete`.
async fn replay(sink: &mut Sink, peer: &Peer, app: &App, cursors: &Cursors) -> Result<(), WriteFailed> {
    let within = app.config.write_deadline;
    let mut after = None;
    let mut count = 0u64;
    loop {
        if peer.closing().is_cancelled() {
            return Ok(());
        }
        let page = match app.store.pending(peer.user_id, after, REPLAY_PAGE).await {
            Ok(page) => page,
            Err(e) => {
                tracing::warn!(error = %e, user_id = %peer.user_id, "replay failed");
                peer.close(CloseReason::INTERNAL);
                return Ok(());
            }
        };
        let full = page.len() == REPLAY_PAGE;
        for message in page {
            after = Some(message.id);
            if message.seq > cursors.mark(message.sender_id) {
                continue; // committed after the mark: it arrives live
            }
            count += 1;
            let frame = encode(&ServerEvent::ReceiveMessage(message.view()));
            timed(within, sink.feed(frame.into_message())).await?;
        }
        if !full {
            break;
        }
    }
    let done = encode(&ServerEvent::PendingComplete { count });
    timed(within, sink.send(done.into_message())).await
}

async fn read_loop(stream: &mut SplitStream<WebSocket>, peer: &Arc<Peer>, app: &App, heard: &LastHeard) {
    let mut typing = Typing::new();
    // Made once, not per frame: each fresh cancellation future takes a lock.
    let shutdown = peer.stop_reading().cancelled();
    tokio::pin!(shutdown);
    loop {
        let next = tokio::select! {
            next = stream.next() => next,
            () = &mut shutdown => break,
        };
        let message = match next {
            Some(Ok(message)) => message,
            Some(Err(e)) => {
                tracing::debug!(connection = %peer.id, error = %e, "read failed");
                if let Some(reason) = fatal_frame(&e) {
                    peer.close(reason);
                    break;
                }
                return;
            }
            None => return,
        };
        heard.touch();
        match message {
            // Boxed: the frame handler's state is large and only lives while a
            // frame is handled; inline, every idle connection would carry it.
            Message::Text(text) => Box::pin(frames::handle_text(app, peer, text.as_str(), &mut typing)).await,
            Message::Binary(_) => frames::refuse(
                app,
                peer,
                ErrorCode::InvalidJson,
                "frames must be text holding JSON".into(),
                None,
            ),
            Message::Close(_) => return,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    // Stopped reading (shutdown, or a fatal frame): let the writer finish and close.
    std::future::pending::<()>().await;
}

/// The close a read error calls for, if the connection can still say why:
/// a frame over the hard size limit (1009), a text frame that is not UTF-8
/// (1007), or a protocol violation (1002). Other errors (the socket broke)
/// end the connection without a word. axum hides tungstenite's error type,
/// so its messages are what there is to tell them apart by.
fn fatal_frame(e: &axum::Error) -> Option<CloseReason> {
    let text = e.to_string();
    if text.contains("Space limit exceeded") || text.contains("too long") || text.contains("Capacity") {
        Some(CloseReason::TOO_LARGE)
    } else if text.starts_with("UTF-8 encoding error") {
        Some(CloseReason::INVALID_UTF8)
    } else if text.starts_with("WebSocket protocol error") {
        Some(CloseReason::PROTOCOL_ERROR)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BEAT: Duration = Duration::from_secs(30);

    #[tokio::test(start_paused = true)]
    async fn a_client_is_gone_after_two_silent_heartbeats_and_every_frame_resets_it() {
        let heard = LastHeard::new();
        tokio::time::advance(BEAT * 2).await;
        assert!(!heard.gone_silent(BEAT), "two beats is not yet more than two");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(heard.gone_silent(BEAT));
        heard.touch(); // a pong, or any frame
        assert!(!heard.gone_silent(BEAT));
        // A client answering every ping is never gone.
        for _ in 0..100 {
            tokio::time::advance(BEAT).await;
            assert!(!heard.gone_silent(BEAT));
            heard.touch();
        }
        tokio::time::advance(BEAT * 3).await;
        assert!(heard.gone_silent(BEAT));
    }
}

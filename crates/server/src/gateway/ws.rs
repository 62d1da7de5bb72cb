//! One WebSocket session: a reader and a writer over the same socket, joined
//! by the connection's bounded outbound queue.
//!
//! The writer sends `connected`, replays the undelivered messages up to the
//! connection's marks (see [`crate::outbound`]), sends `pending_complete`,
//! then drains the queue through the connection's cursors and pings on the
//! heartbeat. The reader decodes frames into typed client events and hands
//! them to the services. Either ending ends the session.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::HeaderMap;
use axum::http::header::{HOST, ORIGIN, SEC_WEBSOCKET_PROTOCOL};
use axum::response::{IntoResponse, Response};
use dyad_protocol::events::{ErrorEvent, SendMessage};
use dyad_protocol::rest::ErrorBody;
use dyad_protocol::{ClientEvent, ErrorCode, ServerEvent, UserId};
use dyad_store::{NewMessage, PageRequest, SessionRecord, WriteOp};
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::WaitForCancellationFuture;

use super::{Source, bearer};
use crate::App;
use crate::abuse::Limit;
use crate::abuse::buckets::Bucket;
use crate::clock::now_ms;
use crate::codec::encode;
use crate::committer::{Submission, error_frame};
use crate::domain::{ClientMsgId, MessageBody};
use crate::errors::ApiError;
use crate::hub::{CloseReason, Peer};
use crate::outbound::{Cursors, Outbound};

/// Undelivered messages read from the store per replay page.
const REPLAY_PAGE: usize = 256;
/// Most ids in one `delivery_ack`, `subscribe_presence` or `unsubscribe_presence`.
const MAX_IDS: usize = 1000;
/// Most users one connection may watch.
const MAX_WATCHED: usize = 1000;
/// How long a closing connection waits for the client's close frame.
const CLOSE_HANDSHAKE: Duration = Duration::from_secs(2);
/// Frames the writer sends before one flush.
const WRITE_BATCH: usize = 64;
/// Frames larger than the limit by this factor end the connection (1009)
/// instead of getting an `error` event.
const HARD_FRAME_FACTOR: usize = 4;

/// `GET /api/v1/ws`: checks the origin, authenticates, then upgrades. A
/// foreign origin gets `403`, a bad token `401`, and a user with all the
/// WebSockets allowed open `429`, all before any upgrade.
#[utoipa::path(get, path = "/api/v1/ws", tag = "real time", security(("bearer" = [])),
    params(("token" = Option<String>, Query, description = "The token, for clients that cannot set headers")),
    responses(
        (status = 101, description = "Upgraded to a WebSocket; see the protocol document for its events"),
        (status = 400, description = "`invalid_parameter`: not a WebSocket upgrade", body = ErrorBody),
        (status = 401, description = "`unauthorized`", body = ErrorBody),
        (status = 403, description = "`forbidden`: an Origin that is not allowed", body = ErrorBody),
        (status = 429, description = "`too_many_connections`: the user has all the WebSockets allowed open", body = ErrorBody),
    ))]
pub(crate) async fn upgrade(
    State(app): State<Arc<App>>,
    Source(source): Source,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    if !origin_allowed(&headers, &app.config.allowed_origins) {
        let origin = headers.get(ORIGIN).and_then(|o| o.to_str().ok()).unwrap_or("?");
        app.guard
            .refused(Limit::Origin, source, &origin.chars().take(200).collect::<String>());
        return ApiError::ForbiddenOrigin.into_response();
    }
    let query_token = query.ok().and_then(|Query(q)| q.get("token").cloned());
    let Some(token) = bearer(&headers)
        .or_else(|| subprotocol_token(&headers))
        .map(str::to_owned)
        .or(query_token)
    else {
        return ApiError::Unauthorized.into_response();
    };
    let session = match app.accounts.authenticate_once(&token).await {
        Ok(session) => session,
        Err(e) => return ApiError::from(e).into_response(),
    };
    let ws = match ws {
        Ok(ws) => ws,
        Err(rejection) => return ApiError::InvalidParameter(rejection.body_text()).into_response(),
    };
    let Some(socket_permit) = app.guard.websocket(session.user_id, source) else {
        return ApiError::TooManyConnections(Duration::from_secs(10)).into_response();
    };
    if app.shutdown.is_cancelled() {
        return ApiError::Unavailable(dyad_store::StoreError::Closed).into_response();
    }
    let hard_limit = app.config.max_frame_bytes.saturating_mul(HARD_FRAME_FACTOR);
    let tracker = app.connections.clone();
    ws.protocols([SUBPROTOCOL])
        .read_buffer_size(app.config.ws_buffer_bytes)
        .write_buffer_size(app.config.ws_buffer_bytes)
        .max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .on_upgrade(move |socket| {
            tracker.track_future(async move {
                session_main(socket, app, session).await;
                drop(socket_permit);
            })
        })
}

/// The subprotocol a browser offers along with `bearer.<token>` (browsers
/// cannot set headers on a WebSocket, and a token in the URL ends up in logs).
const SUBPROTOCOL: &str = "dyad.v1";

/// The token offered as a `bearer.<token>` subprotocol, if any.
fn subprotocol_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(SEC_WEBSOCKET_PROTOCOL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .find_map(|p| p.trim().strip_prefix("bearer."))
}

/// Whether a WebSocket upgrade may come from the page that asked: no
/// `Origin` (not a browser), the server's own origin (same host and port as
/// the request's `Host`), or one listed with `--allowed-origin`.
fn origin_allowed(headers: &HeaderMap, allowed: &[String]) -> bool {
    let Some(origin) = headers.get(ORIGIN) else { return true };
    let Ok(origin) = origin.to_str() else { return false };
    let origin = origin.trim().trim_end_matches('/');
    if allowed
        .iter()
        .any(|a| a.trim_end_matches('/').eq_ignore_ascii_case(origin))
    {
        return true;
    }
    let Some((scheme, host)) = origin.split_once("://") else {
        return false;
    };
    let own_host = headers.get(HOST).and_then(|h| h.to_str().ok());
    matches!(scheme.to_ascii_lowercase().as_str(), "http" | "https")
        && own_host.is_some_and(|h| h.eq_ignore_ascii_case(host))
}

/// Milliseconds since the session started, for the silence check.
struct LastHeard {
    start: Instant,
    at: AtomicI64,
}

impl LastHeard {
    fn touch(&self) {
        self.at
            .store(self.start.elapsed().as_millis() as i64, Ordering::Relaxed);
    }

    fn silent_for(&self) -> Duration {
        let at = self.at.load(Ordering::Relaxed).max(0) as u64;
        self.start.elapsed().saturating_sub(Duration::from_millis(at))
    }
}

#[tracing::instrument(level = "debug", name = "session", skip_all,
    fields(user_id = %session.user_id, connection = tracing::field::Empty))]
async fn session_main(socket: WebSocket, app: Arc<App>, session: SessionRecord) {
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
    let heard = LastHeard {
        start: Instant::now(),
        at: AtomicI64::new(0),
    };
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
    let opening = async {
        timed(within, sink.send(Message::Text(encode(&connected)))).await?;
        // Boxed for the same reason as the frame handler: it runs once.
        Box::pin(replay(&mut sink, peer, app, &cursors)).await
    };
    match write_unless_closing(opening, peer, closing.as_mut()).await {
        Written::Done => {}
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
                cursors.accept(item, |id| peer.learned(id), &mut ready);
                for _ in 1..WRITE_BATCH {
                    let Ok(item) = rx.try_recv() else { break };
                    cursors.accept(item, |id| peer.learned(id), &mut ready);
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
                if heard.silent_for() > beat * 2 {
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
            if timed(within, sink.feed(Message::Text(item.into_frame())))
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
async fn write_all(sink: &mut Sink, ready: &mut Vec<Utf8Bytes>, within: Duration) -> Result<(), WriteFailed> {
    if ready.is_empty() {
        return Ok(());
    }
    let batch = async {
        for frame in ready.drain(..) {
            sink.feed(Message::Text(frame)).await?;
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
async fn fill_gaps(cursors: &mut Cursors, peer: &Peer, app: &App, ready: &mut Vec<Utf8Bytes>) {
    let now = Instant::now();
    if peer.sending() {
        cursors.postpone(now);
        return;
    }
    for gap in cursors.due(now) {
        let missing = usize::try_from(gap.upto_seq - gap.after_seq - 1).unwrap_or(0);
        let mut found = Vec::new();
        let mut before = gap.before_ts;
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
            timed(within, sink.feed(Message::Text(frame))).await?;
        }
        if !full {
            break;
        }
    }
    let done = encode(&ServerEvent::PendingComplete { count });
    timed(within, sink.send(Message::Text(done))).await
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
            Message::Text(text) => Box::pin(handle_text(app, peer, text.as_str(), &mut typing)).await,
            Message::Binary(_) => refuse(
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

async fn handle_text(app: &App, peer: &Arc<Peer>, text: &str, typing: &mut Typing) {
    if text.len() > app.config.max_frame_bytes {
        let limit = app.config.max_frame_bytes;
        return refuse(
            app,
            peer,
            ErrorCode::FrameTooLarge,
            format!("frames are limited to {limit} bytes"),
            None,
        );
    }
    let event = match ClientEvent::decode(text) {
        Ok(event) => event,
        Err(e) => return refuse(app, peer, e.code, e.message, e.client_msg_id),
    };
    match event {
        ClientEvent::SendMessage(msg) => send_message(app, peer, msg).await,
        ClientEvent::DeliveryAck { message_ids } => {
            if short_enough(app, peer, &message_ids) && !message_ids.is_empty() {
                let op = WriteOp::Deliver {
                    recipient_id: peer.user_id,
                    message_ids,
                };
                let _ = app
                    .commits
                    .submit(Submission {
                        op,
                        origin: None,
                        slot: None,
                    })
                    .await;
            }
        }
        ClientEvent::SubscribePresence { user_ids } => {
            if short_enough(app, peer, &user_ids) {
                subscribe(app, peer, user_ids).await;
            }
        }
        ClientEvent::UnsubscribePresence { user_ids } => {
            user_ids.into_iter().for_each(|u| app.hub.unwatch(peer, u));
        }
        ClientEvent::Typing { recipient_id } => typing.relay(app, peer, recipient_id).await,
        ClientEvent::Ping {} => peer.push(encode(&ServerEvent::Pong {})),
    }
}

#[tracing::instrument(level = "debug", skip_all,
    fields(recipient_id = %msg.recipient_id, client_msg_id = msg.client_msg_id.as_deref()))]
async fn send_message(app: &App, peer: &Arc<Peer>, msg: SendMessage) {
    let raw_key = msg.client_msg_id.clone();
    let key = match msg.client_msg_id.map(ClientMsgId::parse).transpose() {
        Ok(key) => key,
        Err(code) => return refuse(app, peer, code, "client_msg_id must be 1-128 bytes".into(), raw_key),
    };
    // Echoed in a refusal.
    let echo = || key.as_ref().map(|k| k.as_str().to_owned());
    let body = match MessageBody::parse(msg.message, app.config.max_message_chars) {
        Ok(body) => body,
        Err(ErrorCode::MessageTooLong) => {
            let why = format!("messages are limited to {} characters", app.config.max_message_chars);
            return refuse(app, peer, ErrorCode::MessageTooLong, why, echo());
        }
        Err(code) => return refuse(app, peer, code, "the message is empty".into(), echo()),
    };
    if msg.recipient_id == peer.user_id {
        let why = "you cannot send a message to yourself".into();
        return refuse(app, peer, ErrorCode::UnknownRecipient, why, echo());
    }
    if let Err(wait) = app.flood.take(peer.user_id) {
        app.metrics.refused_frames.inc();
        let retry_after_ms = (wait.as_millis() as u64).max(1);
        return peer.push(encode(&ServerEvent::Error(ErrorEvent {
            code: ErrorCode::RateLimited,
            message: format!("too many messages; retry in {retry_after_ms} ms"),
            client_msg_id: echo(),
            retry_after_ms: Some(retry_after_ms),
        })));
    }
    let Ok(slot) = peer.sends_in_flight.clone().acquire_owned().await else {
        return;
    };
    let refused_key = echo();
    let submission = Submission {
        op: WriteOp::Send(NewMessage {
            sender_id: peer.user_id,
            recipient_id: msg.recipient_id,
            body,
            client_msg_id: key,
        }),
        origin: Some(peer.clone()),
        slot: Some(slot),
    };
    if app.commits.submit(submission).await.is_err() {
        let why = "the server is shutting down; nothing was stored".into();
        refuse(app, peer, ErrorCode::Unavailable, why, refused_key);
    }
}

async fn subscribe(app: &App, peer: &Arc<Peer>, users: Vec<UserId>) {
    let watched = peer.watching.lock().map(|w| w.len()).unwrap_or(0);
    if watched + users.len() > MAX_WATCHED {
        let why = format!("a connection may watch at most {MAX_WATCHED} users");
        return refuse(app, peer, ErrorCode::InvalidPayload, why, None);
    }
    for user in users {
        app.hub.watch(peer, user).await;
        match app.hub.presence(user).await {
            Ok(Some(view)) => peer.push(encode(&ServerEvent::Presence(view))),
            // Unknown users are not watched and get no event.
            Ok(None) => app.hub.unwatch(peer, user),
            Err(e) => {
                tracing::warn!(error = %e, "presence lookup failed");
                return refuse(app, peer, ErrorCode::Unavailable, "storage unavailable".into(), None);
            }
        }
    }
}

/// Refuses lists longer than [`MAX_IDS`]; true if the list may pass.
fn short_enough<T>(app: &App, peer: &Peer, ids: &[T]) -> bool {
    if ids.len() > MAX_IDS {
        refuse(
            app,
            peer,
            ErrorCode::InvalidPayload,
            format!("at most {MAX_IDS} ids per frame"),
            None,
        );
    }
    ids.len() <= MAX_IDS
}

fn refuse(app: &App, peer: &Peer, code: ErrorCode, why: String, client_msg_id: Option<String>) {
    app.metrics.refused_frames.inc();
    peer.push(error_frame(code, &why, client_msg_id));
}

/// Typing relays per connection: a burst of 10, then 5 a second; the rest
/// are dropped without a word (typing is ephemeral). A few recipients found
/// to exist are remembered, so that typing to someone with no connection on
/// this node (on a cluster: anyone elsewhere) costs one store read, not one
/// per frame.
struct Typing {
    budget: Bucket,
    known: Vec<UserId>,
}

const TYPING_BURST: f64 = 10.0;
const TYPING_PER_SECOND: f64 = 5.0;
/// Recipients a connection remembers as existing.
const KNOWN_RECIPIENTS: usize = 16;

impl Typing {
    fn new() -> Self {
        Typing {
            budget: Bucket::full(TYPING_BURST, Instant::now()),
            known: Vec::new(),
        }
    }

    fn allow(&mut self) -> bool {
        self.budget
            .take(Instant::now(), TYPING_PER_SECOND, TYPING_BURST)
            .is_ok()
    }

    /// Relays a typing frame to `recipient`, or refuses it if there is no
    /// such user.
    async fn relay(&mut self, app: &App, peer: &Peer, recipient: UserId) {
        if !self.allow() || recipient == peer.user_id {
            return;
        }
        let frame = encode(&ServerEvent::Typing {
            sender_id: peer.user_id,
        });
        if app.hub.relay(recipient, &frame) || self.known.contains(&recipient) {
            return;
        }
        match app.store.user_by_id(recipient).await {
            Ok(Some(user)) if user.deleted_at.is_none() => {
                if self.known.len() == KNOWN_RECIPIENTS {
                    self.known.remove(0);
                }
                self.known.push(recipient);
            }
            Ok(_) => refuse(app, peer, ErrorCode::UnknownRecipient, "no such recipient".into(), None),
            Err(e) => tracing::debug!(error = %e, "typing: recipient lookup failed"),
        }
    }
}

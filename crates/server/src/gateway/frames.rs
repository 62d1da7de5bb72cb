//! The frames a client sends, decoded into typed events and handed to the
//! services: sends to the group commit, delivery acks, presence
//! subscriptions, typing, ping. A refused frame gets an `error` event.

use std::sync::Arc;

use dyad_protocol::events::{ErrorEvent, SendMessage};
use dyad_protocol::{ClientEvent, ErrorCode, MessageId, ServerEvent, UserId};
use dyad_store::{NewMessage, WriteOp};
use tokio::time::Instant;

use crate::App;
use crate::abuse::buckets::Bucket;
use crate::codec::{encode, error_frame, message_error_frame};
use crate::committer::Submission;
use crate::domain::{ClientMsgId, MessageBody};
use crate::hub::Peer;

/// Most ids in one `delivery_ack`, `subscribe_presence` or `unsubscribe_presence`.
const MAX_IDS: usize = 1000;
/// Most users one connection may watch.
const MAX_WATCHED: usize = 1000;

pub(super) async fn handle_text(app: &App, peer: &Arc<Peer>, text: &str, typing: &mut Typing) {
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
        ClientEvent::ReadAck { message_id } => {
            let op = WriteOp::Read {
                reader: peer.user_id,
                message_id,
            };
            change(app, peer, op).await;
        }
        ClientEvent::EditMessage { message_id, message } => {
            let body = match MessageBody::parse(message, app.config.max_message_chars) {
                Ok(body) => body,
                Err(code) => return refuse_about(app, peer, code, message_id),
            };
            let op = WriteOp::Edit {
                editor: peer.user_id,
                message_id,
                body,
                window: i64::try_from(app.config.edit_window.as_millis()).unwrap_or(i64::MAX),
            };
            change(app, peer, op).await;
        }
        ClientEvent::DeleteMessage { message_id } => {
            let op = WriteOp::Delete {
                deleter: peer.user_id,
                message_id,
            };
            change(app, peer, op).await;
        }
    }
}

/// Queues a read, edit or delete; its answer (the change, to every
/// connection concerned, or an error to this one) comes from the group
/// commit. Each takes one of the connection's in-flight slots, as a send
/// does, so that a client cannot queue them without bound.
async fn change(app: &App, peer: &Arc<Peer>, op: WriteOp) {
    let Ok(slot) = peer.sends_in_flight.clone().acquire_owned().await else {
        return;
    };
    let submission = Submission {
        op,
        origin: Some(peer.clone()),
        slot: Some(slot),
    };
    if app.commits.submit(submission).await.is_err() {
        refuse(
            app,
            peer,
            ErrorCode::Unavailable,
            "the server is shutting down".into(),
            None,
        );
    }
}

/// Refuses an edit whose text is empty or too long.
fn refuse_about(app: &App, peer: &Peer, code: ErrorCode, message_id: MessageId) {
    app.metrics.refused_frames.inc();
    let why = match code {
        ErrorCode::MessageTooLong => format!("messages are limited to {} characters", app.config.max_message_chars),
        _ => "the message is empty".to_owned(),
    };
    peer.push(message_error_frame(code, &why, message_id));
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
            message_id: None,
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
        let record = match app.store.user_by_id(user).await {
            Ok(Some(record)) => record,
            // Unknown users are not watched and get no event.
            Ok(None) => continue,
            Err(e) => return unavailable(app, peer, e),
        };
        let visible = match app.hub.visible_to(peer.user_id, &record).await {
            Ok(visible) => visible,
            Err(e) => return unavailable(app, peer, e),
        };
        // Watched before the presence is read: no change falls between.
        app.hub.watch(peer, user, visible).await;
        let view = app.hub.view_of(&record, visible).await;
        peer.push(encode(&ServerEvent::Presence(view)));
    }
}

fn unavailable(app: &App, peer: &Peer, e: dyad_store::StoreError) {
    tracing::warn!(error = %e, "presence lookup failed");
    refuse(app, peer, ErrorCode::Unavailable, "storage unavailable".into(), None);
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

pub(super) fn refuse(app: &App, peer: &Peer, code: ErrorCode, why: String, client_msg_id: Option<String>) {
    app.metrics.refused_frames.inc();
    peer.push(error_frame(code, &why, client_msg_id));
}

/// Typing relays per connection: a burst of 10, then 5 a second; the rest
/// are dropped without a word (typing is ephemeral). A few recipients found
/// to exist, and not blocked either way, are remembered, so that typing
/// costs store reads once per recipient, not per frame; a block made or
/// lifted since (the connection's blocks epoch) makes them be looked up
/// again.
pub(super) struct Typing {
    budget: Bucket,
    known: Vec<UserId>,
    epoch: u64,
}

const TYPING_BURST: f64 = 10.0;
const TYPING_PER_SECOND: f64 = 5.0;
/// Recipients a connection remembers as existing.
const KNOWN_RECIPIENTS: usize = 16;

impl Typing {
    pub(super) fn new() -> Self {
        Typing {
            budget: Bucket::full(TYPING_BURST, Instant::now()),
            known: Vec::new(),
            epoch: 0,
        }
    }

    fn allow(&mut self) -> bool {
        self.budget
            .take(Instant::now(), TYPING_PER_SECOND, TYPING_BURST)
            .is_ok()
    }

    /// Relays a typing frame to `recipient`; refuses it if there is no such
    /// user, and drops it if either blocks the other.
    async fn relay(&mut self, app: &App, peer: &Peer, recipient: UserId) {
        if !self.allow() || recipient == peer.user_id {
            return;
        }
        let epoch = peer.blocks_epoch();
        if epoch != self.epoch {
            self.known.clear();
            self.epoch = epoch;
        }
        if !self.known.contains(&recipient) {
            match app.store.user_by_id(recipient).await {
                Ok(Some(user)) if user.deleted_at.is_none() => {}
                Ok(_) => return refuse(app, peer, ErrorCode::UnknownRecipient, "no such recipient".into(), None),
                Err(e) => return tracing::debug!(error = %e, "typing: recipient lookup failed"),
            }
            match app.store.blocked_between(peer.user_id, recipient).await {
                Ok(false) => {}
                Ok(true) => return,
                Err(e) => return tracing::debug!(error = %e, "typing: block lookup failed"),
            }
            if self.known.len() == KNOWN_RECIPIENTS {
                self.known.remove(0);
            }
            self.known.push(recipient);
        }
        let frame = encode(&ServerEvent::Typing {
            sender_id: peer.user_id,
        });
        app.hub.relay(recipient, &frame);
    }
}

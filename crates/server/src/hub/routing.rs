//! Routing: an event for a user goes to their connections here and, over
//! the bus, to every other node that holds the user's topic.

use dyad_protocol::{ConnectionId, UserId};
use dyad_store::{DeliveredMessage, ReadMark, StoredMessage};

use super::Hub;
use crate::bus::{Payload, Topic};
use crate::codec::Frame;
use crate::outbound::{Kind, Outbound, Sequenced};

impl Hub {
    /// Sends a stored message to its recipient's connections and to the
    /// sender's others (all but `origin`), wherever they are.
    pub fn route_message(&self, message: &StoredMessage, frame: Frame, origin: Option<ConnectionId>) {
        let to_recipient = Sequenced::of(message, message.sender_id, frame);
        let to_sender = Sequenced {
            peer: message.recipient_id,
            ..to_recipient.clone()
        };
        self.deliver(message.recipient_id, &to_recipient, None);
        self.deliver(message.sender_id, &to_sender, origin);
        self.bus
            .publish(Topic::User(message.recipient_id), Payload::Message(to_recipient));
        self.bus
            .publish(Topic::User(message.sender_id), Payload::Message(to_sender));
    }

    /// Sends `message_delivered` to the sender's connections that saw the
    /// message, wherever they are.
    pub fn route_delivered(&self, message: &DeliveredMessage, frame: Frame) {
        let notice = Sequenced {
            peer: message.recipient_id,
            seq: message.seq,
            id: message.id,
            ts: 0,
            frame,
        };
        self.deliver_notice(message.sender_id, Kind::Delivered, &notice);
        self.bus
            .publish(Topic::User(message.sender_id), Payload::Delivered(notice));
    }

    /// Sends `message_read` to every connection of the reader and, if both
    /// allow read receipts, of the peer, wherever they are.
    pub fn route_read(&self, mark: &ReadMark, frame: Frame) {
        let to_reader = Sequenced {
            peer: mark.peer,
            seq: mark.seq,
            id: mark.message_id,
            ts: mark.ts,
            frame,
        };
        if mark.receipts {
            let to_peer = Sequenced {
                peer: mark.reader,
                ..to_reader.clone()
            };
            self.notify(mark.peer, to_peer);
        }
        self.notify(mark.reader, to_reader);
    }

    /// Sends `message_edited` or `message_deleted` to every connection of
    /// both users, wherever they are.
    pub fn route_change(&self, message: &StoredMessage, frame: Frame) {
        let to_recipient = Sequenced::of(message, message.sender_id, frame);
        let to_sender = Sequenced {
            peer: message.recipient_id,
            ..to_recipient.clone()
        };
        self.notify(message.recipient_id, to_recipient);
        self.notify(message.sender_id, to_sender);
    }

    /// A [`Kind::Change`] notice to `user`'s connections, here and elsewhere.
    fn notify(&self, user: UserId, notice: Sequenced) {
        self.deliver_notice(user, Kind::Change, &notice);
        self.bus.publish(Topic::User(user), Payload::Change(notice));
    }

    /// Sends an ephemeral frame to every connection of `user`, wherever
    /// they are; false if `user` has none here.
    pub fn relay(&self, user: UserId, frame: &Frame) -> bool {
        self.bus.publish(Topic::User(user), Payload::Typing(frame.clone()));
        self.relay_here(user, frame)
    }

    /// Sends a message to each of `user`'s connections here, except
    /// `except`; each connection's cursors drop what it replays instead.
    pub(super) fn deliver(&self, user: UserId, message: &Sequenced, except: Option<ConnectionId>) {
        if let Some(entry) = self.users.get(&user) {
            for peer in entry.peers.iter().filter(|p| Some(p.id) != except) {
                peer.send(Outbound::ordered(Kind::Message, message.clone()));
            }
        }
    }

    /// Sends a notice about a message to each of `user`'s connections
    /// here; each connection's cursors place it after the message (and drop
    /// a `message_delivered` if the connection never saw the message).
    pub(super) fn deliver_notice(&self, user: UserId, kind: Kind, notice: &Sequenced) {
        if let Some(entry) = self.users.get(&user) {
            for peer in entry.peers.iter() {
                peer.send(Outbound::ordered(kind, notice.clone()));
            }
        }
    }

    pub(super) fn relay_here(&self, user: UserId, frame: &Frame) -> bool {
        match self.users.get(&user) {
            Some(entry) if !entry.peers.is_empty() => {
                entry.peers.iter().for_each(|p| p.push(frame.clone()));
                true
            }
            _ => false,
        }
    }
}

//! Routing: an event for a user goes to their connections here and, over
//! the bus, to every other node that holds the user's topic.

use dyad_protocol::{ConnectionId, UserId};
use dyad_store::{DeliveredMessage, StoredMessage};

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
        self.deliver_notice(message.sender_id, &notice);
        self.bus
            .publish(Topic::User(message.sender_id), Payload::Delivered(notice));
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

    /// Sends `message_delivered` to each of `user`'s connections here; each
    /// connection's cursors drop it if the connection never saw the message.
    pub(super) fn deliver_notice(&self, user: UserId, notice: &Sequenced) {
        if let Some(entry) = self.users.get(&user) {
            for peer in entry.peers.iter() {
                peer.send(Outbound::ordered(Kind::Delivered, notice.clone()));
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

//! What one node tells the others: one typed, versioned payload per pub/sub
//! message.
//!
//! On the wire: `1\t<kind>\t<origin>\t<fields…>`, tab-separated: the
//! version, a one-letter kind, the publishing process (a node skips its
//! own), then the kind's fields; a frame, where there is one, comes last and
//! whole (JSON frames hold no raw tabs). The user a payload is about is in
//! the channel's name, except for revocations, which all go to one channel.
//! A payload of another version, or one that does not parse, is dropped: a
//! node of a newer version adds a version, not a field.

use std::time::Duration;

use dyad_protocol::{MessageId, UserId};
use dyad_store::SessionId;

use super::Revoked;
use crate::codec::Frame;
use crate::outbound::Sequenced;

/// The version this node writes and reads.
const VERSION: &str = "1";

/// One thing a node tells the others.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `receive_message` for the channel's user.
    Message(Sequenced),
    /// `message_delivered` for the channel's user.
    Delivered(Sequenced),
    /// `message_read`, `message_edited` or `message_deleted` for the
    /// channel's user.
    Change(Sequenced),
    /// A `typing` frame for the channel's user.
    Typing(Frame),
    /// Sessions of `user` were revoked.
    Revoked {
        /// Whose.
        user: UserId,
        /// Which.
        revoked: Revoked,
    },
    /// A presence change of the channel's user.
    Presence {
        /// Online now, or offline.
        online: bool,
        /// The `presence` frame for watchers.
        frame: Frame,
    },
    /// Who may see the channel's user changed (their settings, or a
    /// block): watchers are to be checked again.
    Visibility,
    /// The channel's user blocked or unblocked someone, or was: their
    /// connections are to look up whom they may type to again.
    Blocks,
    /// A node stopped cleanly; its users not connected elsewhere expire
    /// after `grace`.
    NodeLeft {
        /// The stopped node's grace period.
        grace: Duration,
    },
}

impl Payload {
    /// The payload as published by process `origin`.
    pub fn encode(&self, origin: &str) -> String {
        let head = |kind: char| format!("{VERSION}\t{kind}\t{origin}");
        let sequenced = |kind: char, s: &Sequenced| {
            format!(
                "{}\t{}\t{}\t{}\t{}\t{}",
                head(kind),
                s.peer.get(),
                s.seq,
                s.id.get(),
                s.ts,
                s.frame.as_str()
            )
        };
        match self {
            Payload::Message(s) => sequenced('m', s),
            Payload::Delivered(s) => sequenced('d', s),
            Payload::Change(s) => sequenced('c', s),
            Payload::Typing(frame) => format!("{}\t{}", head('t'), frame.as_str()),
            Payload::Revoked {
                user,
                revoked: Revoked::Session(session),
            } => format!("{}\t{}\t{}", head('r'), user.get(), session.0),
            Payload::Revoked {
                user,
                revoked: Revoked::Account,
            } => format!("{}\t{}", head('a'), user.get()),
            Payload::Presence { online, frame } => format!("{}\t{}\t{}", head('p'), u8::from(*online), frame.as_str()),
            Payload::NodeLeft { grace } => format!("{}\t{}", head('l'), grace.as_millis()),
            Payload::Visibility => head('v'),
            Payload::Blocks => head('b'),
        }
    }

    /// The publishing process and the payload; `None` for another version
    /// or garbage.
    pub fn decode(text: &str) -> Option<(&str, Payload)> {
        let mut fields = text.splitn(4, '\t');
        if fields.next()? != VERSION {
            return None;
        }
        let kind = fields.next()?;
        let origin = fields.next()?;
        let rest = fields.next().unwrap_or("");
        let payload = match kind {
            "m" => Payload::Message(sequenced(rest)?),
            "d" => Payload::Delivered(sequenced(rest)?),
            "c" => Payload::Change(sequenced(rest)?),
            "t" => Payload::Typing(Frame::from(rest)),
            "r" => {
                let (user, session) = rest.split_once('\t')?;
                Payload::Revoked {
                    user: UserId(user.parse().ok()?),
                    revoked: Revoked::Session(SessionId(session.parse().ok()?)),
                }
            }
            "a" => Payload::Revoked {
                user: UserId(rest.parse().ok()?),
                revoked: Revoked::Account,
            },
            "p" => {
                let (online, frame) = rest.split_once('\t')?;
                Payload::Presence {
                    online: online == "1",
                    frame: Frame::from(frame),
                }
            }
            "v" => Payload::Visibility,
            "b" => Payload::Blocks,
            "l" => Payload::NodeLeft {
                grace: Duration::from_millis(rest.parse().ok()?),
            },
            _ => return None,
        };
        Some((origin, payload))
    }
}

/// `peer seq id ts frame`.
fn sequenced(fields: &str) -> Option<Sequenced> {
    let mut fields = fields.splitn(5, '\t');
    let mut number = || fields.next()?.parse::<i64>().ok();
    let (peer, seq, id, ts) = (number()?, number()?, number()?, number()?);
    Some(Sequenced {
        peer: UserId(peer),
        seq,
        id: MessageId(id),
        ts,
        frame: Frame::from(fields.next().unwrap_or("")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sequenced(seq: i64) -> Sequenced {
        Sequenced {
            peer: UserId(4_611_686_018_427_387_905),
            seq,
            id: MessageId(5_000_000_000_000_000_000),
            ts: 1_796_000_000_000,
            frame: Frame::from(r#"{"event":"receive_message","data":{"message":"a\tb"}}"#),
        }
    }

    #[test]
    fn every_payload_comes_back_from_its_encoding() {
        let all = [
            Payload::Message(sequenced(1)),
            Payload::Delivered(sequenced(2)),
            Payload::Change(sequenced(3)),
            Payload::Typing(Frame::from(r#"{"event":"typing"}"#)),
            Payload::Revoked {
                user: UserId(7),
                revoked: Revoked::Session(SessionId(9)),
            },
            Payload::Revoked {
                user: UserId(8),
                revoked: Revoked::Account,
            },
            Payload::Presence {
                online: true,
                frame: Frame::from("{}"),
            },
            Payload::Presence {
                online: false,
                frame: Frame::from(""),
            },
            Payload::NodeLeft {
                grace: Duration::from_millis(30_000),
            },
            Payload::Visibility,
            Payload::Blocks,
        ];
        for payload in all {
            let text = payload.encode("node-a/42");
            assert_eq!(Payload::decode(&text), Some(("node-a/42", payload)), "{text}");
        }
    }

    #[test]
    fn other_versions_and_garbage_are_dropped() {
        let text = Payload::Typing(Frame::from("{}")).encode("n");
        assert!(Payload::decode(&text.replacen('1', "2", 1)).is_none());
        for bad in ["", "1", "1\tm\tn\t1\t2", "1\tz\tn\t", "1\tr\tn\tx\t1", "1\tl\tn\t-5"] {
            assert!(Payload::decode(bad).is_none(), "{bad:?}");
        }
    }
}

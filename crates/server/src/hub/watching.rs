//! Presence as the connections here see it: the grace period after a
//! user's last connection here, who watches whose presence, and telling
//! them when it changes.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use dyad_protocol::events::{PresenceStatus, PresenceView};
use dyad_protocol::rest::PresenceVisibility;
use dyad_protocol::{ConnectionId, ServerEvent, UserId};
use dyad_store::{StoreResult, UserRecord};

use super::{Hub, Peer};
use crate::bus::{Payload, Topic};
use crate::clock::now_ms;
use crate::codec::Frame;
use crate::codec::encode;

impl Hub {
    /// The grace period after the user's last connection here ended: if no
    /// connection came back here or anywhere, they are offline, last seen
    /// when that connection closed.
    pub(super) async fn end_grace(&self, user: UserId, generation: u64, closed_at: i64) {
        let expired = self
            .users
            .remove_if(&user, |_, e| e.peers.is_empty() && e.grace == generation)
            .is_some();
        if !expired {
            return;
        }
        match self.presence.grace_over(user).await {
            Ok(true) => {}
            Ok(false) => return, // connected elsewhere, or already offline
            Err(e) => {
                // Its presence expires by itself; watchers learn it by polling.
                tracing::warn!(error = %e, user_id = %user, "could not end presence");
                return;
            }
        }
        if let Err(e) = self.store.set_last_seen(&[(user, closed_at)]).await {
            tracing::warn!(error = %e, user_id = %user, "could not store last_seen");
        }
        self.announce(PresenceView {
            user_id: user,
            status: PresenceStatus::Offline,
            last_seen: Some(closed_at),
        });
    }

    /// At a clean shutdown, once the connections here are closed: their
    /// users stay online only the grace period more, unless connected
    /// elsewhere, and the other nodes are told to look again after it.
    pub async fn leave(&self) {
        let users: Vec<UserId> = self.users.iter().map(|entry| *entry.key()).collect();
        if let Err(e) = self.presence.leaving(&users, self.grace).await {
            tracing::warn!(error = %e, users = users.len(), "could not hand presence back; it expires with its TTL");
        }
        self.bus.publish(Topic::Nodes, Payload::NodeLeft { grace: self.grace });
        self.bus.flush().await;
    }

    /// Stores `last_seen` for every user this node counts as online: now for
    /// the connected, the close time for those in grace. Run every minute and
    /// at shutdown, so that after a crash `last_seen` is at most a minute old.
    pub async fn persist_last_seen(&self) {
        let now = now_ms();
        let seen: Vec<(UserId, i64)> = self
            .users
            .iter()
            .map(|e| (*e.key(), if e.peers.is_empty() { e.closed_at } else { now }))
            .collect();
        if !seen.is_empty()
            && let Err(e) = self.store.set_last_seen(&seen).await
        {
            tracing::warn!(error = %e, "could not store last_seen");
        }
    }

    /// Whether `user` has a connection here, or is inside its grace period here.
    pub fn is_online(&self, user: UserId) -> bool {
        self.users.contains_key(&user)
    }

    /// Whether `user` is online anywhere.
    async fn online_anywhere(&self, user: UserId) -> bool {
        match self.presence.is_online(user).await {
            Ok(online) => online,
            Err(e) => {
                tracing::warn!(error = %e, "could not read presence");
                self.is_online(user)
            }
        }
    }

    /// The presence of `user` as `viewer` may see it, or `None` if there is
    /// no such user.
    pub async fn presence_for(&self, viewer: UserId, user: UserId) -> StoreResult<Option<PresenceView>> {
        let Some(record) = self.store.user_by_id(user).await? else {
            return Ok(None);
        };
        let visible = self.visible_to(viewer, &record).await?;
        Ok(Some(self.view_of(&record, visible).await))
    }

    /// Whether `viewer` may see `user`'s presence: their setting, and for
    /// `contacts` a conversation between them; never while either blocks
    /// the other. A deleted account shows none.
    pub async fn visible_to(&self, viewer: UserId, user: &UserRecord) -> StoreResult<bool> {
        if user.deleted_at.is_some() {
            return Ok(false);
        }
        if viewer != user.id && self.store.blocked_between(viewer, user.id).await? {
            return Ok(false);
        }
        Ok(match user.settings.presence {
            PresenceVisibility::Everyone => true,
            _ if viewer == user.id => true,
            PresenceVisibility::Contacts => self.store.shares_conversation(viewer, user.id).await?,
            PresenceVisibility::Nobody => false,
        })
    }

    /// `user`'s presence now, or, for a viewer who may not see it, offline
    /// and never seen. Read after the viewer watches (if it does), so that
    /// no change falls between.
    pub async fn view_of(&self, user: &UserRecord, visible: bool) -> PresenceView {
        if !visible {
            return hidden(user.id);
        }
        if self.online_anywhere(user.id).await {
            online(user.id)
        } else {
            PresenceView {
                user_id: user.id,
                status: PresenceStatus::Offline,
                last_seen: user.last_seen,
            }
        }
    }

    /// Adds `peer` to the watchers of `user` (told of changes if `visible`),
    /// once this node hears `user`'s presence changes from other nodes;
    /// false if it already watched.
    pub async fn watch(&self, peer: &Arc<Peer>, user: UserId, visible: bool) -> bool {
        let added = peer.watching.lock().is_ok_and(|mut w| w.insert(user));
        if added {
            self.watchers.entry(user).or_default().push((peer.clone(), visible));
            self.bus.hold(Topic::Presence(user)).await;
        }
        added
    }

    /// Tells every node that who may see `user` changed (their settings).
    pub fn visibility_changed(self: &Arc<Self>, user: UserId) {
        self.bus.publish(Topic::Presence(user), Payload::Visibility);
        self.recheck_watchers_of(user);
    }

    /// Decides again which watchers here may see `user`, and tells those
    /// for whom that changed what they see now.
    pub(super) fn recheck_watchers_of(self: &Arc<Self>, user: UserId) {
        let watching: Vec<Arc<Peer>> = match self.watchers.get(&user) {
            Some(list) => list.iter().map(|(p, _)| p.clone()).collect(),
            None => return,
        };
        let hub = self.clone();
        tokio::spawn(async move {
            let record = match hub.store.user_by_id(user).await {
                Ok(Some(record)) => record,
                Ok(None) => return,
                Err(e) => return tracing::warn!(error = %e, "could not read presence settings"),
            };
            // Decided once per watching user, however many devices watch.
            let mut decided: HashMap<UserId, bool> = HashMap::new();
            for peer in watching {
                let visible = match decided.get(&peer.user_id) {
                    Some(visible) => *visible,
                    None => match hub.visible_to(peer.user_id, &record).await {
                        Ok(visible) => *decided.entry(peer.user_id).or_insert(visible),
                        Err(e) => return tracing::warn!(error = %e, "could not read presence settings"),
                    },
                };
                let mut changed = false;
                if let Some(mut list) = hub.watchers.get_mut(&user) {
                    for (_, sees) in list.iter_mut().filter(|(p, _)| p.id == peer.id) {
                        changed |= *sees != visible;
                        *sees = visible;
                    }
                }
                if changed {
                    let view = hub.view_of(&record, visible).await;
                    peer.push(encode(&ServerEvent::Presence(view)));
                }
            }
        });
    }

    /// Removes `peer` from the watchers of `user`.
    pub fn unwatch(&self, peer: &Peer, user: UserId) {
        if peer.watching.lock().is_ok_and(|mut w| w.remove(&user)) {
            let nobody_left = self
                .watchers
                .remove_if_mut(&user, |_, list| {
                    list.retain(|(p, _)| p.id != peer.id);
                    list.is_empty()
                })
                .is_some();
            self.bus.release(Topic::Presence(user));
            if nobody_left {
                self.watched_online.remove(&user);
            }
        }
    }

    pub(super) fn unwatch_all(&self, peer: &Peer) {
        let users: Vec<UserId> = peer
            .watching
            .lock()
            .map(|w| w.iter().copied().collect())
            .unwrap_or_default();
        for user in users {
            self.unwatch(peer, user);
        }
    }

    /// Tells the watchers of a presence change, here and on every node.
    pub(super) fn announce(&self, view: PresenceView) {
        let (user, online) = (view.user_id, view.status == PresenceStatus::Online);
        let frame = encode(&ServerEvent::Presence(view));
        self.bus.publish(
            Topic::Presence(user),
            Payload::Presence {
                online,
                frame: frame.clone(),
            },
        );
        self.announce_here(user, online, &frame);
    }

    pub(super) fn announce_here(&self, user: UserId, online: bool, frame: &Frame) {
        let Some(watchers) = self.watchers.get(&user).map(|w| w.clone()) else {
            return;
        };
        if online {
            self.watched_online.insert(user, ());
        } else {
            self.watched_online.remove(&user);
        }
        watchers
            .iter()
            .filter(|(_, visible)| *visible)
            .for_each(|(p, _)| p.push(frame.clone()));
    }

    /// Another node stopped: once its users' grace has passed, tells
    /// watchers here about those of them who did not come back. One check
    /// at a time, however many nodes stop.
    pub(super) fn check_watched_after(self: &Arc<Self>, grace: Duration) {
        if self.check_pending.swap(true, Ordering::AcqRel) {
            return;
        }
        let hub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(grace + Duration::from_millis(100)).await;
            hub.check_pending.store(false, Ordering::Release);
            hub.check_watched().await;
        });
    }

    /// The presence heartbeat: records again every connection here
    /// (announcing users whose presence had gone, say after a Redis
    /// restart), and tells watchers here of watched users whose presence
    /// expired (their node died). Runs every [`Hub::renew_every`].
    pub async fn renew_presence(&self) {
        let connected: Vec<(UserId, Vec<ConnectionId>)> = self
            .users
            .iter()
            .filter(|e| !e.peers.is_empty())
            .map(|e| (*e.key(), e.peers.iter().map(|p| p.id).collect()))
            .collect();
        match self.presence.renew(&connected).await {
            Ok(back) => back.into_iter().for_each(|u| self.announce(online(u))),
            Err(e) => tracing::warn!(error = %e, "could not renew presence"),
        }
        // A connection that closed while the renewal was on its way may have
        // been put back after its removal: take it out again, or its user
        // would look connected until the TTL ran out.
        for (user, connections) in connected {
            let still_open = |c: &ConnectionId| {
                self.users
                    .get(&user)
                    .is_some_and(|e| e.peers.iter().any(|p| p.id == *c))
            };
            for connection in connections.into_iter().filter(|c| !still_open(c)) {
                if let Err(e) = self.presence.disconnected(user, connection).await {
                    tracing::warn!(error = %e, user_id = %user, "could not forget a connection's presence");
                }
            }
        }
        self.check_watched().await;
    }

    /// Tells watchers here of watched users whose presence expired.
    async fn check_watched(&self) {
        let watched: Vec<UserId> = self.watched_online.iter().map(|e| *e.key()).collect();
        let gone = match self.presence.offline_among(&watched).await {
            Ok(gone) => gone,
            Err(e) => return tracing::warn!(error = %e, "could not poll presence"),
        };
        for user in gone {
            let last_seen = match self.store.user_by_id(user).await {
                Ok(record) => record.and_then(|u| u.last_seen),
                Err(_) => None,
            };
            let frame = encode(&ServerEvent::Presence(PresenceView {
                user_id: user,
                status: PresenceStatus::Offline,
                last_seen,
            }));
            self.announce_here(user, false, &frame);
        }
    }
}

/// What a viewer who may not see `user` sees: offline, never seen.
fn hidden(user: UserId) -> PresenceView {
    PresenceView {
        user_id: user,
        status: PresenceStatus::Offline,
        last_seen: None,
    }
}

/// `user` is online.
pub(super) fn online(user: UserId) -> PresenceView {
    PresenceView {
        user_id: user,
        status: PresenceStatus::Online,
        last_seen: None,
    }
}

//! Presence inside one process: for a node on its own, and for tests that
//! run several nodes in one process. Nothing expires here but what a
//! stopping node hands back ([`Presence::leaving`]): a node that dies takes
//! the process, and this map, with it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use dashmap::DashMap;
use dyad_protocol::{ConnectionId, UserId};
use tokio::time::Instant;

use super::{Presence, PresenceResult};

/// One node's handle on in-process presence.
pub struct LocalPresence {
    shared: Arc<Shared>,
    node: u32,
}

#[derive(Default)]
struct Shared {
    users: DashMap<UserId, Entry>,
    nodes: AtomicU32,
}

/// An online user.
struct Entry {
    /// Their connections, by node.
    connections: Vec<(u32, ConnectionId)>,
    /// Online until then, if set: a stopped node's users, not connected
    /// elsewhere; otherwise until [`Presence::grace_over`].
    until: Option<Instant>,
}

impl Entry {
    /// An entry about to be filled: offline until then.
    fn offline() -> Self {
        Entry {
            connections: Vec::new(),
            until: Some(Instant::now()),
        }
    }

    fn online(&self, now: Instant) -> bool {
        self.until.is_none_or(|until| now < until)
    }
}

impl LocalPresence {
    /// Presence with one node.
    pub fn new() -> Self {
        Self::join(Arc::new(Shared::default()))
    }

    /// Another node sharing this presence (tests run several nodes in one process).
    pub fn another_node(&self) -> Self {
        Self::join(self.shared.clone())
    }

    fn join(shared: Arc<Shared>) -> Self {
        let node = shared.nodes.fetch_add(1, Ordering::Relaxed);
        LocalPresence { shared, node }
    }

    /// Adds connections of `user`; true if the user was offline until now.
    fn add(&self, user: UserId, connections: impl Iterator<Item = ConnectionId>) -> bool {
        let mut entry = self.shared.users.entry(user).or_insert_with(Entry::offline);
        let came_online = !entry.online(Instant::now());
        if came_online {
            entry.connections.clear();
        }
        entry.until = None;
        for connection in connections {
            if !entry.connections.contains(&(self.node, connection)) {
                // Most users have one device: room for one, not Vec's four.
                entry.connections.reserve_exact(1);
                entry.connections.push((self.node, connection));
            }
        }
        came_online
    }

    fn online(&self, user: UserId) -> bool {
        let now = Instant::now();
        self.shared.users.get(&user).is_some_and(|e| e.online(now))
    }
}

impl Default for LocalPresence {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn connected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<bool> {
        Ok(self.add(user, std::iter::once(connection)))
    }

    async fn disconnected(&self, user: UserId, connection: ConnectionId) -> PresenceResult<()> {
        if let Some(mut entry) = self.shared.users.get_mut(&user) {
            entry.connections.retain(|c| *c != (self.node, connection));
        }
        Ok(())
    }

    async fn grace_over(&self, user: UserId) -> PresenceResult<bool> {
        let now = Instant::now();
        let removed = self.shared.users.remove_if(&user, |_, e| e.connections.is_empty());
        // An entry that had already expired was offline before this call.
        Ok(removed.is_some_and(|(_, e)| e.online(now)))
    }

    async fn is_online(&self, user: UserId) -> PresenceResult<bool> {
        Ok(self.online(user))
    }

    async fn offline_among(&self, users: &[UserId]) -> PresenceResult<Vec<UserId>> {
        Ok(users.iter().copied().filter(|u| !self.online(*u)).collect())
    }

    async fn renew(&self, connected: &[(UserId, Vec<ConnectionId>)]) -> PresenceResult<Vec<UserId>> {
        Ok(connected
            .iter()
            .filter(|(user, connections)| self.add(*user, connections.iter().copied()))
            .map(|(user, _)| *user)
            .collect())
    }

    fn renew_every(&self) -> Duration {
        Duration::from_secs(60)
    }

    async fn leaving(&self, users: &[UserId], grace: Duration) -> PresenceResult<()> {
        let until = Instant::now() + grace;
        for user in users {
            if let Some(mut entry) = self.shared.users.get_mut(user) {
                entry.connections.retain(|(node, _)| *node != self.node);
                if entry.connections.is_empty() {
                    entry.until = Some(entry.until.map_or(until, |u| u.min(until)));
                }
            }
        }
        Ok(())
    }

    async fn ping(&self) -> PresenceResult<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_user_leaves_no_entry_once_offline() {
        let presence = LocalPresence::new();
        for user in 0..1_000 {
            let (user, connection) = (UserId(user), ConnectionId(user));
            presence.connected(user, connection).await.unwrap_or_default();
            presence.disconnected(user, connection).await.unwrap_or_default();
            assert!(presence.grace_over(user).await.unwrap_or_default());
        }
        assert!(presence.shared.users.is_empty());
    }
}

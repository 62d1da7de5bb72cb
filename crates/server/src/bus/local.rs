//! The bus inside one process: for a node on its own, where there is nobody
//! to publish to, and for tests that run several nodes in one process.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use dashmap::DashMap;

use super::{Bus, Deliver, Payload, Topic};
use crate::cluster::ClusterError;

/// One node's handle on an in-process bus. Payloads are handed over
/// synchronously, on the publisher's task.
pub struct LocalBus {
    network: Arc<Network>,
    member: usize,
}

/// What the nodes on one in-process bus share.
#[derive(Default)]
struct Network {
    /// How many nodes joined; while it is one, publishing costs nothing.
    size: AtomicUsize,
    /// Each node's `deliver`, by member number, once it started.
    members: RwLock<Vec<Option<Deliver>>>,
    /// Holds per topic and member.
    holds: DashMap<(Topic, usize), u32>,
}

impl LocalBus {
    /// A bus with one node on it.
    pub fn new() -> Self {
        Self::join(Arc::new(Network::default()))
    }

    /// Another node on the same bus (tests run several nodes in one process).
    pub fn another_node(&self) -> Self {
        Self::join(self.network.clone())
    }

    fn join(network: Arc<Network>) -> Self {
        let member = match network.members.write() {
            Ok(mut members) => {
                members.push(None);
                members.len() - 1
            }
            Err(poisoned) => {
                let mut members = poisoned.into_inner();
                members.push(None);
                members.len() - 1
            }
        };
        network.size.fetch_add(1, Ordering::Relaxed);
        LocalBus { network, member }
    }
}

impl Default for LocalBus {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Bus for LocalBus {
    fn start(&self, deliver: Deliver) {
        if let Ok(mut members) = self.network.members.write()
            && let Some(slot) = members.get_mut(self.member)
        {
            *slot = Some(deliver);
        }
    }

    async fn hold(&self, topic: Topic) {
        *self.network.holds.entry((topic, self.member)).or_insert(0) += 1;
    }

    fn release(&self, topic: Topic) {
        self.network.holds.remove_if_mut(&(topic, self.member), |_, n| {
            *n = n.saturating_sub(1);
            *n == 0
        });
    }

    fn publish(&self, topic: Topic, payload: Payload) {
        if self.network.size.load(Ordering::Relaxed) < 2 {
            return;
        }
        // Taken out of the lock first: a node's `deliver` may publish.
        let listeners: Vec<Deliver> = match self.network.members.read() {
            Ok(members) => members
                .iter()
                .enumerate()
                .filter(|(m, _)| *m != self.member && self.network.holds.contains_key(&(topic, *m)))
                .filter_map(|(_, deliver)| deliver.clone())
                .collect(),
            Err(_) => return,
        };
        for deliver in listeners {
            deliver(topic, payload.clone());
        }
    }

    async fn flush(&self) {}

    async fn ping(&self) -> Result<(), ClusterError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use dyad_protocol::UserId;

    use super::*;

    #[tokio::test]
    async fn holds_leave_no_entry_once_released() {
        let bus = LocalBus::new();
        for user in 0..1_000 {
            bus.hold(Topic::User(UserId(user))).await;
            bus.hold(Topic::User(UserId(user))).await;
        }
        assert_eq!(
            bus.network.holds.len(),
            1_000,
            "one entry per topic, however many holds"
        );
        for user in 0..1_000 {
            bus.release(Topic::User(UserId(user)));
            bus.release(Topic::User(UserId(user)));
        }
        assert!(bus.network.holds.is_empty());
    }
}

//! Password hashing shared fairly between source addresses.
//!
//! Hashing is slow on purpose, so the server runs a fixed number of hashes at
//! once. Waiting requests queue per address and are served round-robin, one
//! address after another, so a flood from many addresses delays a newcomer by
//! at most one hash per busy address, never by the flood's length. One
//! address holds at most `per_address` places (running or waiting), and a
//! full queue refuses at once instead of making everyone wait.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

use super::address::AddressKey;

/// Why a hashing place was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HashingRefused {
    /// This address already holds its share of places.
    AddressBusy,
    /// Every place in the queue is taken.
    QueueFull,
}

/// The queue of password hashes.
pub struct HashingQueue {
    inner: Arc<Mutex<Queue>>,
}

struct Queue {
    workers: usize,
    per_address: usize,
    capacity: usize,
    running: usize,
    held: usize,
    addresses: HashMap<AddressKey, Waiters>,
    /// Addresses with someone waiting, in serving order: those in good
    /// standing, then the others.
    turns: [VecDeque<AddressKey>; 2],
}

#[derive(Default)]
struct Waiters {
    /// Places this address holds, running or waiting.
    held: usize,
    /// Which of the turns it waits in (0: good standing).
    class: usize,
    waiting: VecDeque<oneshot::Sender<()>>,
}

/// The right to run one hash; dropping it hands the place on.
pub struct HashingSlot {
    queue: Arc<Mutex<Queue>>,
    key: AddressKey,
}

impl HashingQueue {
    /// `workers` hashes at once; `per_address` places per address;
    /// `capacity` places in all, running and waiting.
    pub fn new(workers: usize, per_address: usize, capacity: usize) -> Self {
        HashingQueue {
            inner: Arc::new(Mutex::new(Queue {
                workers: workers.max(1),
                per_address: per_address.max(1),
                capacity: capacity.max(workers.max(1)),
                running: 0,
                held: 0,
                addresses: HashMap::new(),
                turns: [VecDeque::new(), VecDeque::new()],
            })),
        }
    }

    /// Waits for this address's turn to hash, or refuses at once;
    /// `good_standing` addresses are served first.
    pub async fn slot(&self, key: AddressKey, good_standing: bool) -> Result<HashingSlot, HashingRefused> {
        let rx = {
            let mut q = self.inner.lock().map_err(|_| HashingRefused::QueueFull)?;
            match q.enter(key, usize::from(!good_standing))? {
                None => {
                    return Ok(HashingSlot {
                        queue: self.inner.clone(),
                        key,
                    });
                }
                Some(rx) => rx,
            }
        };
        // Dropped while waiting (the client went away), the guard gives the
        // place back, or passes on a turn it was handed meanwhile.
        let mut waiting = Waiting {
            queue: self.inner.clone(),
            key,
            rx: Some(rx),
        };
        let granted = match waiting.rx.as_mut() {
            Some(rx) => rx.await.is_ok(),
            None => false,
        };
        waiting.rx = None;
        if granted {
            Ok(HashingSlot {
                queue: self.inner.clone(),
                key,
            })
        } else {
            Err(HashingRefused::QueueFull)
        }
    }

    /// Places taken now (running and waiting).
    pub fn held(&self) -> usize {
        self.inner.lock().map_or(0, |q| q.held)
    }
}

impl Queue {
    /// Takes a place for `key`: `None` if it may run now, else the
    /// receiver that tells it when its turn comes.
    fn enter(&mut self, key: AddressKey, class: usize) -> Result<Option<oneshot::Receiver<()>>, HashingRefused> {
        let per_address = self.per_address;
        if self.addresses.get(&key).is_some_and(|w| w.held >= per_address) {
            return Err(HashingRefused::AddressBusy);
        }
        if self.held >= self.capacity {
            return Err(HashingRefused::QueueFull);
        }
        self.held += 1;
        let run_now = self.running < self.workers;
        if run_now {
            self.running += 1;
        }
        let w = self.addresses.entry(key).or_default();
        w.held += 1;
        if run_now {
            return Ok(None);
        }
        let (tx, rx) = oneshot::channel();
        w.waiting.push_back(tx);
        if w.waiting.len() == 1 {
            w.class = class;
            self.turns[class].push_back(key);
        }
        Ok(Some(rx))
    }

    /// Gives back one place of `key`.
    fn leave(&mut self, key: AddressKey) {
        self.held = self.held.saturating_sub(1);
        if let Some(w) = self.addresses.get_mut(&key) {
            w.held = w.held.saturating_sub(1);
            // A waiter that gave up leaves a closed sender behind.
            w.waiting.retain(|tx| !tx.is_closed());
            if w.waiting.is_empty() {
                self.turns[w.class].retain(|k| *k != key);
            }
            if w.held == 0 {
                self.addresses.remove(&key);
            }
        }
    }

    /// A running hash finished: hand its place to the next address in turn.
    fn hand_on(&mut self) {
        for class in 0..self.turns.len() {
            while let Some(key) = self.turns[class].pop_front() {
                let Some(w) = self.addresses.get_mut(&key) else {
                    continue;
                };
                let mut handed = false;
                while let Some(tx) = w.waiting.pop_front() {
                    if tx.send(()).is_ok() {
                        handed = true;
                        break;
                    }
                }
                if !w.waiting.is_empty() {
                    self.turns[class].push_back(key);
                }
                if handed {
                    return;
                }
            }
        }
        self.running = self.running.saturating_sub(1);
    }
}

impl Drop for HashingSlot {
    fn drop(&mut self) {
        if let Ok(mut q) = self.queue.lock() {
            q.leave(self.key);
            q.hand_on();
        }
    }
}

struct Waiting {
    queue: Arc<Mutex<Queue>>,
    key: AddressKey,
    rx: Option<oneshot::Receiver<()>>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let Some(mut rx) = self.rx.take() else { return };
        // Under the lock, so that no turn is handed between the look and the close.
        let Ok(mut q) = self.queue.lock() else { return };
        let handed = rx.try_recv().is_ok();
        rx.close();
        q.leave(self.key);
        if handed {
            q.hand_on();
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::{IpAddr, Ipv4Addr};
    use std::time::Duration;

    use super::*;

    fn addr(n: u8) -> AddressKey {
        AddressKey::of(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
    }

    /// A task that waits for a place for 127.0.0.`n` and says whether it got one.
    fn wait_for_slot(q: &Arc<HashingQueue>, n: u8) -> tokio::task::JoinHandle<bool> {
        let q = q.clone();
        tokio::spawn(async move { q.slot(addr(n), false).await.is_ok() })
    }

    #[tokio::test]
    async fn an_address_holds_at_most_its_share_and_a_full_queue_refuses_at_once() {
        let q = Arc::new(HashingQueue::new(1, 2, 4));
        let a1 = q.slot(addr(1), false).await;
        assert!(a1.is_ok());
        let a2 = wait_for_slot(&q, 1);
        tokio::task::yield_now().await;
        assert_eq!(q.slot(addr(1), false).await.err(), Some(HashingRefused::AddressBusy));
        let _b = wait_for_slot(&q, 2);
        let _c = wait_for_slot(&q, 3);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(q.held(), 4);
        assert_eq!(q.slot(addr(4), false).await.err(), Some(HashingRefused::QueueFull));
        drop(a1);
        assert!(a2.await.unwrap_or(false));
    }

    #[tokio::test]
    async fn waiting_addresses_are_served_in_turn_not_in_arrival_order() {
        let q = Arc::new(HashingQueue::new(1, 8, 64));
        let first = q.slot(addr(1), false).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        // A flood of 6 from one address, then one from a newcomer.
        for (i, n) in [1, 1, 1, 1, 1, 1, 9].into_iter().enumerate() {
            let (q, order_tx) = (q.clone(), order_tx.clone());
            tokio::spawn(async move {
                if let Ok(_slot) = q.slot(addr(n), false).await {
                    let _ = order_tx.send((i, n));
                }
            });
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        let mut served = Vec::new();
        while served.len() < 7 {
            match tokio::time::timeout(Duration::from_secs(5), order.recv()).await {
                Ok(Some((_, n))) => served.push(n),
                _ => break,
            }
        }
        // The newcomer goes second: after one of the flood, not after all six.
        assert_eq!(served.get(1), Some(&9), "{served:?}");
        assert_eq!(q.held(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_frees_its_place() {
        let q = Arc::new(HashingQueue::new(1, 2, 4));
        let running = q.slot(addr(1), false).await;
        let waiter = wait_for_slot(&q, 2);
        tokio::time::sleep(Duration::from_millis(10)).await;
        assert_eq!(q.held(), 2);
        waiter.abort();
        let _ = waiter.await;
        assert_eq!(q.held(), 1);
        drop(running);
        assert_eq!(q.held(), 0);
        // The freed running place is usable at once.
        assert!(
            tokio::time::timeout(Duration::from_secs(1), q.slot(addr(3), false))
                .await
                .is_ok()
        );
    }

    #[tokio::test]
    async fn addresses_in_good_standing_are_served_before_failing_ones() {
        let q = Arc::new(HashingQueue::new(1, 2, 64));
        let first = q.slot(addr(1), false).await;
        let (order_tx, mut order) = tokio::sync::mpsc::unbounded_channel();
        for (n, good) in [(2, false), (3, false), (4, false), (9, true)] {
            let (q, order_tx) = (q.clone(), order_tx.clone());
            tokio::spawn(async move {
                if let Ok(_slot) = q.slot(addr(n), good).await {
                    let _ = order_tx.send(n);
                }
            });
            tokio::task::yield_now().await;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
        drop(first);
        let next = tokio::time::timeout(Duration::from_secs(5), order.recv()).await;
        assert_eq!(next.ok().flatten(), Some(9));
    }
}

//! Counts of things held open at once (TCP connections per address,
//! WebSockets per user), each as a permit that gives its place back when
//! dropped. A key is in the map only while it holds something, so the map
//! is bounded by the connections themselves.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};

/// Open things by key, at most `limit` per key.
pub struct OpenCounts<K: Hash + Eq + Copy> {
    limit: u32,
    open: Arc<Mutex<HashMap<K, u32>>>,
}

/// One place held under a key.
pub struct OpenPermit<K: Hash + Eq + Copy> {
    key: K,
    open: Arc<Mutex<HashMap<K, u32>>>,
}

impl<K: Hash + Eq + Copy> OpenCounts<K> {
    /// At most `limit` per key; 0 means no limit.
    pub fn new(limit: u32) -> Self {
        OpenCounts {
            limit,
            open: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for `key`, or `None` if it holds its limit already.
    pub fn open(&self, key: K) -> Option<OpenPermit<K>> {
        let mut open = self.open.lock().ok()?;
        let n = open.entry(key).or_insert(0);
        if self.limit > 0 && *n >= self.limit {
            return None;
        }
        *n += 1;
        Some(OpenPermit {
            key,
            open: self.open.clone(),
        })
    }

    /// How many keys hold something.
    pub fn keys(&self) -> usize {
        self.open.lock().map_or(0, |o| o.len())
    }
}

impl<K: Hash + Eq + Copy> Drop for OpenPermit<K> {
    fn drop(&mut self) {
        if let Ok(mut open) = self.open.lock()
            && let Some(n) = open.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_holds_at_most_its_limit_and_leaves_no_entry_when_done() {
        let counts = OpenCounts::new(2);
        let a = counts.open(1);
        let b = counts.open(1);
        assert!(a.is_some() && b.is_some());
        assert!(counts.open(1).is_none());
        assert!(counts.open(2).is_some(), "keys are counted apart");
        drop(a);
        let c = counts.open(1);
        assert!(c.is_some());
        drop((b, c));
        assert_eq!(counts.keys(), 0, "no entry is left behind");
        let unlimited = OpenCounts::new(0);
        let held: Vec<_> = (0..1000).filter_map(|_| unlimited.open(7)).collect();
        assert_eq!(held.len(), 1000);
    }
}

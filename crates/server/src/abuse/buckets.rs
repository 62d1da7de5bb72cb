//! Token buckets by key, in a map of bounded size: when it is full, the key
//! seen least recently is forgotten (a forgotten key starts again with a
//! full bucket, which only a client with that many addresses can arrange).

use std::hash::Hash;
use std::num::NonZeroUsize;
use std::sync::Mutex;
use std::time::Duration;

use lru::LruCache;
use tokio::time::Instant;

/// A rate with a burst, by key.
pub struct RateByKey<K: Hash + Eq> {
    per_second: f64,
    burst: f64,
    buckets: Mutex<LruCache<K, Bucket>>,
}

/// One token bucket: how many tokens it held when last touched, and when.
#[derive(Debug, Clone, Copy)]
pub struct Bucket {
    tokens: f64,
    /// When it was last touched.
    pub at: Instant,
}

impl Bucket {
    /// A full bucket of `burst` tokens.
    pub fn full(burst: f64, now: Instant) -> Self {
        Bucket { tokens: burst, at: now }
    }

    /// Refills it for the time passed at `per_second` (up to `burst`) and
    /// takes a token, or says how long until one is there.
    pub fn take(&mut self, now: Instant, per_second: f64, burst: f64) -> Result<(), Duration> {
        let refill = now.duration_since(self.at).as_secs_f64() * per_second;
        self.tokens = (self.tokens + refill).min(burst);
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            Ok(())
        } else if per_second > 0.0 {
            Err(Duration::from_secs_f64((1.0 - self.tokens) / per_second))
        } else {
            Err(Duration::MAX)
        }
    }
}

impl<K: Hash + Eq> RateByKey<K> {
    /// `burst` at once, refilled at `per_second`, for at most `max_keys` keys.
    pub fn new(per_second: f64, burst: u32, max_keys: usize) -> Self {
        RateByKey {
            per_second,
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(LruCache::new(NonZeroUsize::new(max_keys).unwrap_or(NonZeroUsize::MIN))),
        }
    }

    /// Takes a token for `key`, or says how long until one is there.
    pub fn take(&self, key: K) -> Result<(), Duration> {
        let now = Instant::now();
        let Ok(mut buckets) = self.buckets.lock() else {
            return Ok(());
        };
        buckets
            .get_or_insert_mut(key, || Bucket::full(self.burst, now))
            .take(now, self.per_second, self.burst)
    }

    /// How many keys it holds now.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets.lock().map_or(0, |b| b.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_key_gets_its_burst_then_the_rate() {
        let limit = RateByKey::new(0.5, 3, 100);
        for _ in 0..3 {
            assert!(limit.take("a").is_ok());
        }
        let wait = limit.take("a").err().unwrap_or_default();
        assert_eq!(wait, Duration::from_secs(2));
        assert!(limit.take("b").is_ok(), "other keys have their own bucket");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(limit.take("a").is_ok());
        assert!(limit.take("a").is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn the_map_never_holds_more_than_its_bound() {
        let limit = RateByKey::new(1.0, 1, 1000);
        for key in 0..100_000u32 {
            let _ = limit.take(key);
        }
        assert_eq!(limit.len(), 1000);
        // The most recent keys are the ones kept.
        assert!(limit.take(99_999).is_err());
        assert!(limit.take(0).is_ok());
    }
}

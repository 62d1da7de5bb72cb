//! Flood control: a token bucket per user, shared by all of the user's
//! connections. Only `send_message` draws from it.

use std::time::Duration;

use dashmap::DashMap;
use dyad_protocol::UserId;
use tokio::time::Instant;

use crate::abuse::buckets::Bucket;

/// The buckets of every user who sent recently.
pub struct FloodControl {
    per_second: f64,
    burst: f64,
    buckets: DashMap<UserId, Bucket>,
}

impl FloodControl {
    /// `per_second == 0` turns flood control off.
    pub fn new(per_second: u32, burst: u32) -> Self {
        FloodControl {
            per_second: f64::from(per_second),
            burst: f64::from(burst.max(1)),
            buckets: DashMap::new(),
        }
    }

    /// Takes a token for `user`, or says how long until one is there.
    pub fn take(&self, user: UserId) -> Result<(), Duration> {
        if self.per_second <= 0.0 {
            return Ok(());
        }
        let now = Instant::now();
        self.buckets
            .entry(user)
            .or_insert(Bucket::full(self.burst, now))
            .take(now, self.per_second, self.burst)
    }

    /// Forgets buckets that have refilled: a full bucket and no bucket are the same.
    pub fn sweep(&self) {
        let now = Instant::now();
        let full_after = Duration::from_secs_f64(if self.per_second > 0.0 {
            self.burst / self.per_second
        } else {
            0.0
        });
        self.buckets.retain(|_, b| now.duration_since(b.at) < full_after);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_burst_passes_then_the_rate_holds() {
        let f = FloodControl::new(20, 40);
        let user = UserId(1);
        for _ in 0..40 {
            assert!(f.take(user).is_ok());
        }
        let wait = f.take(user).err().unwrap_or_default();
        assert!(wait > Duration::ZERO && wait <= Duration::from_millis(50), "{wait:?}");
        assert!(f.take(UserId(2)).is_ok(), "buckets are per user");
    }

    #[test]
    fn zero_rate_turns_it_off() {
        let f = FloodControl::new(0, 40);
        for _ in 0..1000 {
            assert!(f.take(UserId(1)).is_ok());
        }
    }
}

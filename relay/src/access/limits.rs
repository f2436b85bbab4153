//! Per-address limits: open connections, and a request rate with a burst (token bucket).

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::SystemTime,
};

/// Addresses tracked by the rate limiter at most; beyond it the idle ones are dropped.
const MAX_BUCKETS: usize = 100_000;

#[derive(Debug)]
pub(crate) struct RateLimiter {
    per_sec: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, (f64, SystemTime)>>,
}

impl RateLimiter {
    pub(crate) fn new(per_sec: u32, burst: u32) -> Self {
        RateLimiter {
            per_sec: f64::from(per_sec),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Take one request from `ip`'s bucket; `Err(seconds)` says when to retry.
    pub(crate) fn check(&self, ip: IpAddr, now: SystemTime) -> Result<(), u64> {
        if self.per_sec <= 0.0 {
            return Ok(());
        }
        let mut b = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if b.len() >= MAX_BUCKETS && !b.contains_key(&ip) {
            // Full buckets carry no information: drop them.
            let burst = self.burst;
            let per_sec = self.per_sec;
            b.retain(|_, (tokens, last)| {
                let idle = now.duration_since(*last).unwrap_or_default().as_secs_f64();
                *tokens + idle * per_sec < burst
            });
        }
        let (tokens, last) = b.entry(ip).or_insert((self.burst, now));
        let elapsed = now.duration_since(*last).unwrap_or_default().as_secs_f64();
        *tokens = (*tokens + elapsed * self.per_sec).min(self.burst);
        *last = now;
        if *tokens >= 1.0 {
            *tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - *tokens) / self.per_sec).ceil().max(1.0) as u64)
        }
    }
}

/// Open connections per address.
#[derive(Debug, Clone)]
pub(crate) struct ConnCounter {
    max: usize,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// Holds one connection slot of an address until dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    ip: IpAddr,
    open: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl ConnCounter {
    pub(crate) fn new(max: usize) -> Self {
        ConnCounter {
            max,
            open: Arc::default(),
        }
    }

    /// A slot for `ip`, or `None` when it has `max` connections open.
    pub(crate) fn acquire(&self, ip: IpAddr) -> Option<ConnGuard> {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(ConnGuard {
            ip,
            open: self.open.clone(),
        })
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bucket_allows_burst_then_refills() {
        let r = RateLimiter::new(2, 3);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let t = SystemTime::now();
        for _ in 0..3 {
            assert!(r.check(ip, t).is_ok());
        }
        assert_eq!(r.check(ip, t), Err(1));
        assert!(r.check("192.0.2.2".parse().unwrap(), t).is_ok());
        assert!(r.check(ip, t + Duration::from_millis(600)).is_ok());
    }

    #[test]
    fn connection_slots() {
        let c = ConnCounter::new(2);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let a = c.acquire(ip).unwrap();
        let _b = c.acquire(ip).unwrap();
        assert!(c.acquire(ip).is_none());
        drop(a);
        assert!(c.acquire(ip).is_some());
    }
}

//! Per-username slow-down: many failed logins for one name (from any number of addresses, so
//! below every address's ban threshold) make further attempts for that name wait, doubling up
//! to a cap. It only slows: the owner still gets in, and addresses that logged in as that user
//! before are not slowed at all, so an attacker cannot lock the owner out.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, SystemTime},
};

/// Failures for one name within the window before attempts start to wait.
const FREE_FAILURES: usize = 5;
/// The longest wait.
const MAX_DELAY: Duration = Duration::from_secs(30);
/// Names tracked at most, and known-good addresses kept per name.
const MAX_NAMES: usize = 100_000;
const KNOWN_GOOD: usize = 8;

#[derive(Debug, Default)]
pub(crate) struct Throttle {
    failures: Mutex<HashMap<String, Vec<SystemTime>>>,
    good: Mutex<HashMap<String, Vec<IpAddr>>>,
}

impl Throttle {
    /// How long an attempt for `name` from `ip` waits before its password is checked.
    pub(crate) fn delay(
        &self,
        name: &str,
        ip: IpAddr,
        now: SystemTime,
        window: Duration,
    ) -> Duration {
        if self
            .good
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .is_some_and(|l| l.contains(&ip))
        {
            return Duration::ZERO;
        }
        let n = self
            .failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .map_or(0, |l| {
                l.iter()
                    .filter(|t| now.duration_since(**t).unwrap_or_default() < window)
                    .count()
            });
        if n < FREE_FAILURES {
            return Duration::ZERO;
        }
        let shift = u32::try_from(n - FREE_FAILURES).unwrap_or(u32::MAX).min(5);
        Duration::from_secs(1u64 << shift).min(MAX_DELAY)
    }

    pub(crate) fn failure(&self, name: &str, now: SystemTime, window: Duration) {
        let mut f = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if f.len() >= MAX_NAMES && !f.contains_key(name) {
            f.retain(|_, l| {
                l.retain(|t| now.duration_since(*t).unwrap_or_default() < window);
                !l.is_empty()
            });
            if f.len() >= MAX_NAMES {
                return;
            }
        }
        let l = f.entry(name.to_string()).or_default();
        l.retain(|t| now.duration_since(*t).unwrap_or_default() < window);
        l.push(now);
    }

    pub(crate) fn success(&self, name: &str, ip: IpAddr) {
        let mut g = self.good.lock().unwrap_or_else(|e| e.into_inner());
        if g.len() >= MAX_NAMES && !g.contains_key(name) {
            return;
        }
        let l = g.entry(name.to_string()).or_default();
        if !l.contains(&ip) {
            if l.len() >= KNOWN_GOOD {
                l.remove(0);
            }
            l.push(ip);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slows_a_guessed_name_but_never_its_known_addresses() {
        let t = Throttle::default();
        let w = Duration::from_secs(600);
        let now = SystemTime::now();
        let owner: IpAddr = "198.51.100.1".parse().unwrap();
        let bot: IpAddr = "203.0.113.1".parse().unwrap();
        t.success("alice", owner);
        for _ in 0..FREE_FAILURES {
            assert_eq!(t.delay("alice", bot, now, w), Duration::ZERO);
            t.failure("alice", now, w);
        }
        assert_eq!(t.delay("alice", bot, now, w), Duration::from_secs(1));
        t.failure("alice", now, w);
        assert_eq!(t.delay("alice", bot, now, w), Duration::from_secs(2));
        for _ in 0..20 {
            t.failure("alice", now, w);
        }
        assert_eq!(t.delay("alice", bot, now, w), MAX_DELAY);
        assert_eq!(
            t.delay("alice", owner, now, w),
            Duration::ZERO,
            "owner not slowed"
        );
        assert_eq!(t.delay("bob", bot, now, w), Duration::ZERO);
        assert_eq!(
            t.delay("alice", bot, now + w, w),
            Duration::ZERO,
            "failures age out"
        );
    }
}

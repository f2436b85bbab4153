//! Login sessions: a random id kept in memory, carried in a `__Host-` cookie together with an
//! HMAC over the hostname and the id, so a cookie is only ever valid on the hostname it was
//! issued for. Logging out deletes the session; sessions end on a relay restart.

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::Mutex,
    time::{Duration, SystemTime},
};

use ring::hmac;

use crate::{identity, RelayError};

/// The session cookie's name: `__Host-` makes browsers keep it to exactly this hostname, over
/// https, with `Path=/`.
pub(crate) const COOKIE: &str = "__Host-periscope";

/// Sessions kept at most; beyond it the oldest is dropped.
const MAX_SESSIONS: usize = 20_000;

/// Who a session belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Holder {
    /// A user of the users file, and a digest of their password hash at login (a new password
    /// ends the session).
    User { name: String, stamp: String },
    /// Opened with a share link (its id and label).
    Share { jti: String, label: String },
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Holder::User { name, .. } => write!(f, "user {name:?}"),
            Holder::Share { jti, label } => write!(f, "share link {jti} ({label:?})"),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) struct Session {
    pub(crate) host: String,
    pub(crate) holder: Holder,
    /// The address that used the session last.
    pub(crate) ip: IpAddr,
    pub(crate) expires: SystemTime,
    pub(crate) last_seen: SystemTime,
}

#[derive(Debug)]
pub(crate) struct Sessions {
    key: hmac::Key,
    idle: Duration,
    map: Mutex<HashMap<String, Session>>,
}

/// Digest of a password hash, kept in a session instead of the hash itself.
pub(crate) fn stamp(hash: &str) -> String {
    hex(&ring::digest::digest(&ring::digest::SHA256, hash.as_bytes()).as_ref()[..16])
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 || !s.is_ascii() {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

impl Sessions {
    pub(crate) fn new(key: &[u8], idle: Duration) -> Self {
        Sessions {
            key: hmac::Key::new(hmac::HMAC_SHA256, key),
            idle,
            map: Mutex::new(HashMap::new()),
        }
    }

    fn tag(&self, host: &str, sid: &str) -> hmac::Tag {
        hmac::sign(&self.key, format!("session\n{host}\n{sid}").as_bytes())
    }

    /// Start a session; returns the cookie value.
    pub(crate) fn create(&self, s: Session, now: SystemTime) -> Result<String, RelayError> {
        let sid = identity::random_hex(32)?;
        let value = format!("{sid}.{}", hex(self.tag(&s.host, &sid).as_ref()));
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_SESSIONS {
            map.retain(|_, s| s.expires > now);
            if map.len() >= MAX_SESSIONS {
                let oldest = map
                    .iter()
                    .min_by_key(|(_, s)| s.last_seen)
                    .map(|(k, _)| k.clone());
                if let Some(k) = oldest {
                    map.remove(&k);
                }
            }
        }
        map.insert(sid, s);
        Ok(value)
    }

    /// The id inside a cookie value, if its tag is right for `host`.
    fn sid<'a>(&self, value: &'a str, host: &str) -> Option<&'a str> {
        let (sid, tag) = value.split_once('.')?;
        let tag = unhex(tag)?;
        hmac::verify(
            &self.key,
            format!("session\n{host}\n{sid}").as_bytes(),
            &tag,
        )
        .ok()?;
        Some(sid)
    }

    /// The live session of cookie `value` on `host`, touched by `ip` at `now`; `still_valid`
    /// re-checks its holder (a removed user, a revoked link).
    pub(crate) fn lookup(
        &self,
        value: &str,
        host: &str,
        ip: IpAddr,
        now: SystemTime,
        still_valid: impl Fn(&Session) -> bool,
    ) -> Option<Session> {
        let sid = self.sid(value, host)?;
        let mut map = self.map.lock().unwrap_or_else(|e| e.into_inner());
        let s = map.get_mut(sid)?;
        let idle = now.duration_since(s.last_seen).unwrap_or_default();
        if s.host != host || now >= s.expires || idle >= self.idle || !still_valid(s) {
            map.remove(sid);
            return None;
        }
        s.last_seen = now;
        s.ip = ip;
        Some(s.clone())
    }

    /// End the session of cookie `value` on `host`.
    pub(crate) fn remove(&self, value: &str, host: &str) -> Option<Session> {
        let sid = self.sid(value, host)?;
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(sid)
    }

    /// Does `ip` hold a live session on a hostname for which `of_agent` is true?
    pub(crate) fn unlocks(
        &self,
        ip: IpAddr,
        now: SystemTime,
        of_agent: impl Fn(&str) -> bool,
    ) -> bool {
        self.unlocked_by(ip, now, of_agent).is_some()
    }

    /// Who holds the live session of `ip` on a hostname for which `of_agent` is true, if
    /// anyone (the user name, or `share:ID`).
    pub(crate) fn unlocked_by(
        &self,
        ip: IpAddr,
        now: SystemTime,
        of_agent: impl Fn(&str) -> bool,
    ) -> Option<String> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .find(|s| {
                s.ip == ip
                    && of_agent(&s.host)
                    && now < s.expires
                    && now.duration_since(s.last_seen).unwrap_or_default() < self.idle
            })
            .map(|s| match &s.holder {
                Holder::User { name, .. } => name.clone(),
                Holder::Share { jti, .. } => format!("share:{jti}"),
            })
    }

    /// Drop expired and idle sessions, and those `keep` refuses.
    pub(crate) fn sweep(&self, now: SystemTime, keep: impl Fn(&Session) -> bool) {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| {
                now < s.expires
                    && now.duration_since(s.last_seen).unwrap_or_default() < self.idle
                    && keep(s)
            });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(host: &str, now: SystemTime) -> Session {
        Session {
            host: host.into(),
            holder: Holder::User {
                name: "alice".into(),
                stamp: String::new(),
            },
            ip: "192.0.2.1".parse().unwrap(),
            expires: now + Duration::from_secs(3600),
            last_seen: now,
        }
    }

    #[test]
    fn cookie_is_bound_to_its_host_and_tamper_evident() {
        let s = Sessions::new(b"k", Duration::from_secs(600));
        let now = SystemTime::now();
        let ip = "192.0.2.1".parse().unwrap();
        let c = s.create(session("a.example.com", now), now).unwrap();
        assert!(s.lookup(&c, "a.example.com", ip, now, |_| true).is_some());
        assert!(s.lookup(&c, "b.example.com", ip, now, |_| true).is_none());
        let mut bad = c.clone();
        bad.replace_range(0..1, if c.starts_with('0') { "1" } else { "0" });
        assert!(s.lookup(&bad, "a.example.com", ip, now, |_| true).is_none());
        assert!(s
            .lookup("x.y", "a.example.com", ip, now, |_| true)
            .is_none());
        assert!(s.unlocks(ip, now, |h| h == "a.example.com"));
        assert!(!s.unlocks(ip, now, |h| h == "b.example.com"));
        assert!(!s.unlocks("192.0.2.2".parse().unwrap(), now, |_| true));
        // Idle timeout, then gone.
        let later = now + Duration::from_secs(601);
        assert!(s.lookup(&c, "a.example.com", ip, later, |_| true).is_none());
        assert!(!s.unlocks(ip, now, |_| true));
    }

    #[test]
    fn lifetime_and_logout() {
        let s = Sessions::new(b"k", Duration::from_secs(3000));
        let now = SystemTime::now();
        let ip = "192.0.2.1".parse().unwrap();
        let c = s.create(session("a", now), now).unwrap();
        let mut t = now;
        for _ in 0..4 {
            t += Duration::from_secs(1000);
            assert_eq!(
                s.lookup(&c, "a", ip, t, |_| true).is_some(),
                t < now + Duration::from_secs(3600)
            );
        }
        let c = s.create(session("a", now), now).unwrap();
        assert!(s.remove(&c, "a").is_some());
        assert!(s.lookup(&c, "a", ip, now, |_| true).is_none());
    }
}

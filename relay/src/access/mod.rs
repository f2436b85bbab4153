//! Edge access control: the relay is the security boundary, deny by default.
//!
//! For each request to an http hostname, `check` decides, in this order: refused networks
//! (`deny_ips`), banned addresses, the per-address request rate (429), the relay's own pages
//! under `RESERVED` (`/.periscope/`) (login, logout, share links — never forwarded), `public` rules,
//! allow-listed networks, a session cookie for exactly this hostname, HTTP Basic where the
//! rule enables it; everything else is sent to the login page (browsers) or answered 401
//! (API clients). The session cookie (and Basic credentials the edge consumed) are removed
//! before the request goes on, so the recorder never sees them.
//!
//! Raw tcp ports ask `raw_allowed`: by default only an address holding a live web session on
//! one of the same agent's hostnames may connect ("login unlocks raw ports").
//!
//! Layout: `users` (users file, argon2id), `sessions` (cookies), `bans` (failed logins,
//! `bans.json`), `limits` (rate and connection limits), `throttle` (per-user slow-down),
//! `meter` (limits held by a response: requests in flight, live streams, bandwidth),
//! `login` (the pages), `clock`.

pub mod bans;
pub mod clock;
mod limits;
mod login;
pub(crate) mod meter;
mod sessions;
mod throttle;
pub mod users;

use std::{
    collections::HashMap,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::{Duration, SystemTime},
};

use http::{header, HeaderMap, HeaderValue, Request, Response};
use hyper::body::Incoming;
use ring::hmac;

pub use clock::{Clock, OffsetClock, SystemClock};

use crate::{
    config::{AccessRule, Cidr, PortMode},
    http::{Body, Visitor},
    identity, RelayConfig, RelayError, Shared,
};
pub(crate) use limits::ConnGuard;
use sessions::{Holder, Session, Sessions};
use users::{User, UserStore};

/// Paths the relay answers itself on every http hostname.
pub(crate) const RESERVED: &str = "/.periscope/";

/// argon2 verifications at once (19 MiB and tens of milliseconds each).
const HASHING_SLOTS: usize = 2;
/// How long a request waits for a hashing slot before a 503.
const HASHING_WAIT: Duration = Duration::from_secs(10);
/// A Basic credential that verified is trusted this long without hashing again.
const BASIC_CACHE_FOR: Duration = Duration::from_secs(300);
const BASIC_CACHE_MAX: usize = 10_000;

/// Access state of the relay.
#[derive(Debug)]
pub(crate) struct Access {
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) users: Arc<UserStore>,
    sessions: Sessions,
    pub(crate) bans: bans::Bans,
    rate: limits::RateLimiter,
    new_conns: limits::RateLimiter,
    conns: limits::ConnCounter,
    hashing: tokio::sync::Semaphore,
    basic_cache: Mutex<HashMap<Vec<u8>, (String, SystemTime)>>,
    cache_key: hmac::Key,
    meters: meter::Meters,
    throttle: throttle::Throttle,
}

/// The 32-byte HMAC key for session cookies, in `DATA_DIR/session.key` (0600).
fn session_key(config: &RelayConfig) -> Result<Vec<u8>, RelayError> {
    identity::load_or_create_secret(&config.data_dir.join("session.key"), || {
        Ok(identity::random_hex(32)?.into_bytes())
    })
}

impl Access {
    pub(crate) fn new(config: &RelayConfig, clock: Arc<dyn Clock>) -> Result<Self, RelayError> {
        let key = session_key(config)?;
        let a = &config.auth;
        Ok(Access {
            clock,
            users: Arc::new(UserStore::load(config.users_file())?),
            sessions: Sessions::new(&key, a.session_idle),
            bans: bans::Bans::load(
                &config.data_dir,
                bans::Policy {
                    after: a.ban_after_failures,
                    window: a.ban_window,
                    ban_for: a.ban_for,
                    forever: a.ban_forever,
                },
            )?,
            rate: limits::RateLimiter::new(
                config.limits.requests_per_second,
                config.limits.request_burst,
            ),
            new_conns: limits::RateLimiter::new(
                config.limits.new_connections_per_second,
                config.limits.new_connection_burst,
            ),
            conns: limits::ConnCounter::new(config.limits.connections_per_ip),
            hashing: tokio::sync::Semaphore::new(HASHING_SLOTS),
            basic_cache: Mutex::new(HashMap::new()),
            cache_key: hmac::Key::new(hmac::HMAC_SHA256, &key),
            meters: meter::Meters::default(),
            throttle: throttle::Throttle::default(),
        })
    }

    pub(crate) fn now(&self) -> SystemTime {
        self.clock.now()
    }

    /// A connection slot for `ip`: within `limits.new_connections_per_second` (and its
    /// burst) and `limits.connections_per_ip`.
    pub(crate) fn connection(&self, ip: IpAddr) -> Option<ConnGuard> {
        self.new_conns.check(ip, self.now()).ok()?;
        self.conns.acquire(ip)
    }
}

/// Periodic upkeep (the relay's sweeper calls this every second).
pub(crate) fn sweep(shared: &Shared) {
    let a = &shared.access;
    match a.users.reload_if_changed() {
        // Verified Basic credentials are forgotten: a changed password takes effect at once.
        Ok(true) => a
            .basic_cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear(),
        Ok(false) => {}
        Err(e) => tracing::warn!("cannot read the users file: {e}"),
    }
    if let Err(e) = a.bans.reload_if_changed() {
        tracing::warn!("cannot read the ban list: {e}");
    }
    let now = a.now();
    a.bans.sweep(now);
    a.sessions.sweep(now, |s| holder_valid(shared, s));
    a.basic_cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .retain(|_, (_, until)| *until > now);
}

fn in_any(lists: &[&[Cidr]], ip: IpAddr) -> bool {
    lists.iter().any(|l| l.iter().any(|c| c.contains(ip)))
}

/// May `user` log in to `host` (their own `hosts`, the rule's `users`, not disabled)?
fn may_login(rule: Option<&AccessRule>, user: &User, host: &str) -> bool {
    user.may_open(host) && rule.is_none_or(|r| r.users.is_empty() || r.users.contains(&user.name))
}

/// Is the holder of session `s` still entitled to it (users file and revocations change)?
fn holder_valid(shared: &Shared, s: &Session) -> bool {
    match &s.holder {
        Holder::User { name, stamp } => shared.access.users.get(name).is_some_and(|u| {
            sessions::stamp(&u.hash) == *stamp
                && may_login(shared.live().access_rule(&s.host), &u, &s.host)
        }),
        Holder::Share { jti, .. } => !shared.revocations.contains(jti),
    }
}

/// Remove our session cookie from the request's `Cookie` headers; returns its values.
fn take_cookie(h: &mut HeaderMap) -> Vec<String> {
    if !h.contains_key(header::COOKIE) {
        return Vec::new();
    }
    let mut ours = Vec::new();
    let mut rest = Vec::new();
    for v in h.get_all(header::COOKIE) {
        let Ok(v) = v.to_str() else {
            continue;
        };
        for pair in v.split(';') {
            let pair = pair.trim();
            match pair.split_once('=') {
                Some((n, val)) if n.trim() == sessions::COOKIE => ours.push(val.trim().into()),
                _ if pair.is_empty() => {}
                _ => rest.push(pair.to_string()),
            }
        }
    }
    h.remove(header::COOKIE);
    if !rest.is_empty() {
        if let Ok(v) = HeaderValue::from_str(&rest.join("; ")) {
            h.insert(header::COOKIE, v);
        }
    }
    ours
}

/// The edge's decision for one request to `host`: the request to forward (cleaned of our
/// cookie and consumed credentials), or the response to send instead.
pub(crate) async fn check(
    shared: &Shared,
    v: &Visitor,
    host: &str,
    mut req: Request<Incoming>,
) -> Result<Request<Incoming>, Response<Body>> {
    let a = &shared.access;
    let live = shared.live();
    let cfg = &*live;
    let ip = v.peer.ip();
    let now = a.now();
    let rule = cfg.access_rule(host);
    let rule_deny = rule.map_or(&[][..], |r| &r.deny_ips[..]);
    if in_any(&[&cfg.auth.deny_ips, rule_deny], ip) {
        return Err(login::denied());
    }
    if let Some(until) = a.bans.banned(ip, now) {
        return Err(login::banned(until));
    }
    if let Err(retry) = a.rate.check(ip, now) {
        return Err(login::too_many(retry));
    }
    let path = req.uri().path();
    if path.starts_with(RESERVED) || path == "/.periscope" {
        return Err(login::reserved(shared, v, host, rule, req).await);
    }
    let cookies = take_cookie(req.headers_mut());
    // Requests in flight per hostname: the slot travels with the response body.
    // (Same shape as `check` itself: the error is the response to send.)
    #[allow(clippy::result_large_err)]
    let admit = |user: Option<String>, req: Request<Incoming>| {
        let max = cfg.limits.connections_per_tunnel;
        match a.meters.host_slot(host, max) {
            Some(slot) => {
                meter::grant(meter::Grant {
                    host: host.to_string(),
                    user,
                    slot,
                });
                Ok(req)
            }
            None => Err(login::site_busy()),
        }
    };
    if rule.is_some_and(|r| r.public) {
        return admit(None, req);
    }
    let rule_allow = rule.map_or(&[][..], |r| &r.allow_ips[..]);
    if in_any(&[&cfg.auth.allow_ips, rule_allow], ip) {
        return admit(None, req);
    }
    for c in &cookies {
        if let Some(s) = a
            .sessions
            .lookup(c, host, ip, now, |s| holder_valid(shared, s))
        {
            let who = match s.holder {
                Holder::User { name, .. } => name,
                Holder::Share { jti, .. } => format!("share:{jti}"),
            };
            return admit(Some(who), req);
        }
    }
    if rule.is_some_and(|r| r.basic) {
        if let Some((user, password)) = basic_credentials(req.headers()) {
            let tag = hmac::sign(
                &a.cache_key,
                format!("basic\n{host}\n{user}\n{password}").as_bytes(),
            )
            .as_ref()
            .to_vec();
            let cached = a
                .basic_cache
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&tag)
                .filter(|(_, until)| *until > now)
                .map(|(u, _)| u.clone());
            let ok = match cached {
                Some(name) => a
                    .users
                    .get(&name)
                    .filter(|u| may_login(rule, u, host))
                    .map(|u| u.name),
                None => match authenticate(shared, ip, host, rule, &user, &password).await {
                    Ok(u) => {
                        let mut cache = a.basic_cache.lock().unwrap_or_else(|e| e.into_inner());
                        if cache.len() < BASIC_CACHE_MAX {
                            cache.insert(tag, (u.name.clone(), now + BASIC_CACHE_FOR));
                        }
                        Some(u.name)
                    }
                    Err(Failure::Busy) => return Err(login::busy()),
                    Err(Failure::Banned(until)) => return Err(login::banned(until)),
                    Err(Failure::Wrong) => None,
                },
            };
            if let Some(name) = ok {
                // The credentials were for the edge: the recorder does not get them.
                req.headers_mut().remove(header::AUTHORIZATION);
                return admit(Some(name), req);
            }
        }
    }
    Err(login::unauthenticated(host, rule, &req))
}

/// `Authorization: Basic` user and password.
fn basic_credentials(h: &HeaderMap) -> Option<(String, String)> {
    use base64::Engine;
    let v = h.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some((u.to_string(), p.to_string()))
}

/// Why a login failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Wrong name or password (or not allowed on this hostname).
    Wrong,
    /// This failure banned the address (until, `None`: forever).
    Banned(Option<u64>),
    /// Too many logins being checked at once.
    Busy,
}

/// Check a name and password for `host`, counting failures toward a ban.
pub(crate) async fn authenticate(
    shared: &Shared,
    ip: IpAddr,
    host: &str,
    rule: Option<&AccessRule>,
    user: &str,
    password: &str,
) -> Result<User, Failure> {
    let a = &shared.access;
    let name = user.chars().take(128).collect::<String>();
    let window = shared.config.auth.ban_window;
    let wait = a.throttle.delay(&name, ip, a.now(), window);
    if !wait.is_zero() {
        tracing::info!(visitor.addr = %ip, user = ?name, "many failed logins for this user: slowing down ({wait:?})");
        tokio::time::sleep(wait).await;
    }
    let Ok(Ok(_permit)) = tokio::time::timeout(HASHING_WAIT, a.hashing.acquire()).await else {
        return Err(Failure::Busy);
    };
    let pw = password.chars().take(1024).collect::<String>();
    let users = a.users.clone();
    let who = name.clone();
    // argon2 is CPU-bound: off the async threads (the permit bounds how many at once).
    let Ok(found) = tokio::task::spawn_blocking(move || users.verify(&who, &pw)).await else {
        return Err(Failure::Busy);
    };
    let now = a.now();
    match found {
        Some(u) if may_login(rule, &u, host) => {
            a.bans.success(ip);
            a.throttle.success(&u.name, ip);
            tracing::info!(visitor.addr = %ip, user = ?u.name, host, "login");
            Ok(u)
        }
        _ => {
            tracing::warn!(visitor.addr = %ip, user = ?name, host, "login failed");
            a.throttle.failure(&name, now, window);
            shared.metrics.login_failures.inc();
            if a.bans.failure(ip, &name, now) {
                shared.metrics.bans_total.inc();
                tracing::warn!(
                    visitor.addr = %ip,
                    user = ?name,
                    failures = shared.config.auth.ban_after_failures,
                    "address banned after failed logins"
                );
                return Err(Failure::Banned(a.bans.banned(ip, now).flatten()));
            }
            Err(Failure::Wrong)
        }
    }
}

/// A new session on `host` for `holder`; returns the `Set-Cookie` value.
pub(crate) fn start_session(
    shared: &Shared,
    host: &str,
    ip: IpAddr,
    holder: Holder,
    ends: Option<SystemTime>,
) -> Result<String, RelayError> {
    let a = &shared.access;
    let now = a.now();
    let lifetime = shared.config.auth.session_lifetime;
    let mut expires = now + lifetime;
    if let Some(e) = ends {
        expires = expires.min(e);
    }
    let value = a.sessions.create(
        Session {
            host: host.into(),
            holder,
            ip,
            expires,
            last_seen: now,
        },
        now,
    )?;
    let max_age = expires.duration_since(now).unwrap_or_default().as_secs();
    Ok(format!(
        "{}={value}; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age={max_age}",
        sessions::COOKIE
    ))
}

/// May `ip` connect to raw port `port` of `agent`'s tunnel?
///
/// Protocol-independent on purpose: tcp tunnels ask it on every accepted connection (and
/// close it at once when refused); udp tunnels ask it when a datagram would open a new flow
/// and drop the datagram silently on `false` (no reply, so no amplification), and re-ask on
/// the flow's idle sweep so a logout or an expired session closes flows too.
pub(crate) fn raw_allowed(shared: &Shared, ip: IpAddr, port: u16, agent: &str) -> bool {
    let live = shared.live();
    let cfg = &*live;
    let a = &shared.access;
    let now = a.now();
    let rule = cfg.port_rule(port);
    let rule_deny = rule.map_or(&[][..], |r| &r.deny_ips[..]);
    if in_any(&[&cfg.auth.deny_ips, rule_deny], ip) || a.bans.banned(ip, now).is_some() {
        return false;
    }
    let mode = rule.map_or(PortMode::Login, |r| r.mode);
    let rule_allow = rule.map_or(&[][..], |r| &r.allow_ips[..]);
    match mode {
        PortMode::Open => true,
        _ if in_any(&[&cfg.auth.allow_ips, rule_allow], ip) => true,
        PortMode::AllowIps => false,
        // The agent serving the session's hostname now (a hostname can move between agents).
        PortMode::Login => a.sessions.unlocks(ip, now, |host| {
            shared.routes.get(host).is_some_and(|r| r.agent == agent)
        }),
    }
}

/// The user (or `share:ID`) logged in from `ip` on one of `agent`'s hostnames (the login
/// that opens its raw ports), for the connections list; `None` when there is none.
pub(crate) fn raw_user(shared: &Shared, ip: IpAddr, agent: &str) -> Option<String> {
    let a = &shared.access;
    a.sessions.unlocked_by(ip, a.now(), |host| {
        shared.routes.get(host).is_some_and(|r| r.agent == agent)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn our_cookie_is_stripped_and_others_kept() {
        let mut h = HeaderMap::new();
        h.append(
            header::COOKIE,
            HeaderValue::from_static("a=1; __Host-periscope=abc.def"),
        );
        h.append(header::COOKIE, HeaderValue::from_static("b=2"));
        assert_eq!(take_cookie(&mut h), vec!["abc.def".to_string()]);
        assert_eq!(h.get_all(header::COOKIE).iter().count(), 1);
        assert_eq!(h[header::COOKIE], "a=1; b=2");
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("__Host-periscope=x"),
        );
        take_cookie(&mut h);
        assert!(!h.contains_key(header::COOKIE));
    }

    #[test]
    fn basic_header_parses() {
        let mut h = HeaderMap::new();
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Basic YWxpY2U6cHc6eA=="),
        );
        assert_eq!(basic_credentials(&h), Some(("alice".into(), "pw:x".into())));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Digest x"));
        assert_eq!(basic_credentials(&h), None);
    }
}

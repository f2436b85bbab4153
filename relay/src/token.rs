//! Agent tokens: EdDSA JWTs signed by the relay's key, and the revocation list.
//!
//! Validation is pinned to EdDSA, checks issuer and audience, requires `exp`, `iat`, `sub`,
//! `aud`, `iss`, and takes the current time as an argument (leeway [`LEEWAY_SECS`]).

use std::{
    collections::HashSet,
    fmt,
    path::{Path, PathBuf},
    str::FromStr,
    sync::{Mutex, RwLock},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::{identity, RelayError};

/// Issuer of every token.
pub const ISSUER: &str = "periscope-relay";
/// Clock skew tolerated on `exp`.
pub const LEEWAY_SECS: u64 = 30;

/// An inclusive port range, written `2222` or `8000-8100`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// True if `port` is inside.
    pub fn contains(&self, port: u16) -> bool {
        self.lo <= port && port <= self.hi
    }
}

impl FromStr for PortRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let p = |x: &str| {
            x.trim()
                .parse::<u16>()
                .ok()
                .filter(|&p| p > 0)
                .ok_or_else(|| format!("`{s}` is not a port (1-65535) or range like 8000-8100"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (p(a)?, p(b)?),
            None => (p(s)?, p(s)?),
        };
        if lo > hi {
            return Err(format!("`{s}`: range start is above its end"));
        }
        Ok(PortRange { lo, hi })
    }
}

impl TryFrom<String> for PortRange {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<PortRange> for String {
    fn from(r: PortRange) -> String {
        r.to_string()
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.lo == self.hi {
            write!(f, "{}", self.lo)
        } else {
            write!(f, "{}-{}", self.lo, self.hi)
        }
    }
}

/// Claims of an agent token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Audience: the relay's domain.
    pub aud: String,
    /// The agent's name.
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
    /// Token id, for revocation.
    pub jti: String,
    /// Hostnames the agent may publish: exact names or `*.domain` patterns.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// TCP ports the agent may open on the relay.
    #[serde(default)]
    pub tcp_ports: Vec<PortRange>,
    /// UDP ports the agent may open on the relay.
    #[serde(default)]
    pub udp_ports: Vec<PortRange>,
}

/// Normalise a hostname once: lowercase, no trailing dot, no port.
pub fn normalize_host(h: &str) -> String {
    let h = h.trim();
    let h = match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.chars().all(|c| c.is_ascii_digit()) => {
            host
        }
        _ => h,
    };
    h.trim_end_matches('.').to_ascii_lowercase()
}

/// Does `pattern` (exact, or `*.suffix` for exactly one more label) allow `host`?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let pattern = normalize_host(pattern);
    let host = normalize_host(host);
    match pattern.strip_prefix("*.") {
        Some(suffix) => host
            .strip_suffix(&suffix)
            .and_then(|l| l.strip_suffix('.'))
            .is_some_and(|label| !label.is_empty() && !label.contains('.')),
        None => pattern == host,
    }
}

impl Claims {
    /// May the agent publish `host`?
    pub fn allows_host(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| host_matches(p, host))
    }
    /// May the agent open TCP `port`?
    pub fn allows_tcp(&self, port: u16) -> bool {
        self.tcp_ports.iter().any(|r| r.contains(port))
    }
    /// May the agent open UDP `port`?
    pub fn allows_udp(&self, port: u16) -> bool {
        self.udp_ports.iter().any(|r| r.contains(port))
    }
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// Not a valid token for this relay (signature, algorithm, issuer, audience, format).
    #[error("invalid token: {0}")]
    Invalid(String),
    /// Past its expiry.
    #[error("token expired at {0} (unix time)")]
    Expired(u64),
    /// On the revocation list.
    #[error("token {0} was revoked")]
    Revoked(String),
}

/// What to put in a new token.
#[derive(Debug, Clone, Default)]
pub struct IssueRequest {
    /// Agent name.
    pub agent: String,
    /// Allowed hostnames/patterns.
    pub hosts: Vec<String>,
    /// Allowed TCP ports.
    pub tcp_ports: Vec<PortRange>,
    /// Allowed UDP ports.
    pub udp_ports: Vec<PortRange>,
    /// Lifetime.
    pub ttl: Duration,
}

/// Signs and verifies agent tokens.
#[derive(Clone)]
pub struct TokenKeys {
    enc: EncodingKey,
    dec: DecodingKey,
    audience: String,
}

impl fmt::Debug for TokenKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenKeys")
            .field("audience", &self.audience)
            .finish_non_exhaustive()
    }
}

/// Seconds since the unix epoch.
pub fn unix_now(now: SystemTime) -> u64 {
    now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// Is `name` usable as an agent name (DNS label rules, so `NAME.DOMAIN` works)?
pub fn valid_agent_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

impl TokenKeys {
    /// Keys from the relay's PKCS#8 Ed25519 key; tokens are for audience `domain`.
    pub fn new(pkcs8: &[u8], domain: &str) -> Result<Self, RelayError> {
        use ring::signature::KeyPair;
        let pair = ring::signature::Ed25519KeyPair::from_pkcs8(pkcs8)
            .map_err(|_| RelayError::Key("signing key is not Ed25519 PKCS#8".into()))?;
        Ok(TokenKeys {
            enc: EncodingKey::from_ed_der(pkcs8),
            dec: DecodingKey::from_ed_der(pair.public_key().as_ref()),
            audience: normalize_host(domain),
        })
    }

    /// Issue a token at time `now`.
    pub fn issue(
        &self,
        req: &IssueRequest,
        now: SystemTime,
    ) -> Result<(String, Claims), RelayError> {
        if !valid_agent_name(&req.agent) {
            return Err(RelayError::Config(format!(
                "agent name `{}`: use 1-63 lowercase letters, digits and dashes",
                req.agent
            )));
        }
        let iat = unix_now(now);
        let claims = Claims {
            iss: ISSUER.into(),
            aud: self.audience.clone(),
            sub: req.agent.clone(),
            iat,
            exp: iat.saturating_add(req.ttl.as_secs()),
            jti: identity::random_hex(16)?,
            hosts: req.hosts.iter().map(|h| normalize_host(h)).collect(),
            tcp_ports: req.tcp_ports.clone(),
            udp_ports: req.udp_ports.clone(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.enc)
            .map_err(|e| RelayError::Key(format!("signing token: {e}")))?;
        Ok((token, claims))
    }

    /// Verify a token's signature and claims at time `now`.
    pub fn verify(&self, token: &str, now: SystemTime) -> Result<Claims, TokenError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[&self.audience]);
        v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
        // Expiry is checked below against the injected clock.
        v.validate_exp = false;
        let data = jsonwebtoken::decode::<Claims>(token, &self.dec, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?;
        let c = data.claims;
        if unix_now(now) > c.exp.saturating_add(LEEWAY_SECS) {
            return Err(TokenError::Expired(c.exp));
        }
        if !valid_agent_name(&c.sub) {
            return Err(TokenError::Invalid(format!("bad agent name `{}`", c.sub)));
        }
        Ok(c)
    }
}

/// Claims of a share link: one hostname, for a while.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareClaims {
    /// Issuer, always [`ISSUER`].
    pub iss: String,
    /// Audience: `share:` + the relay's domain (never valid as an agent token, nor the reverse).
    pub aud: String,
    /// The hostname it opens.
    pub sub: String,
    /// Issued at (unix seconds).
    pub iat: u64,
    /// Expires at (unix seconds).
    pub exp: u64,
    /// Link id, for revocation (`periscope share revoke`).
    pub jti: String,
    /// Who it was made for (shown in logs).
    #[serde(default)]
    pub label: String,
}

impl TokenKeys {
    fn share_audience(&self) -> String {
        format!("share:{}", self.audience)
    }

    /// Sign a share link token for `host`, valid `ttl` from `now`.
    pub fn issue_share(
        &self,
        host: &str,
        label: &str,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, ShareClaims), RelayError> {
        let iat = unix_now(now);
        let claims = ShareClaims {
            iss: ISSUER.into(),
            aud: self.share_audience(),
            sub: normalize_host(host),
            iat,
            exp: iat.saturating_add(ttl.as_secs()),
            jti: identity::random_hex(16)?,
            label: label.into(),
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::EdDSA), &claims, &self.enc)
            .map_err(|e| RelayError::Key(format!("signing share link: {e}")))?;
        Ok((token, claims))
    }

    /// Verify a share link token at `now` (no leeway: a link ends when it says).
    pub fn verify_share(&self, token: &str, now: SystemTime) -> Result<ShareClaims, TokenError> {
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_issuer(&[ISSUER]);
        v.set_audience(&[self.share_audience()]);
        v.set_required_spec_claims(&["exp", "iat", "sub", "aud", "iss"]);
        v.validate_exp = false;
        let c = jsonwebtoken::decode::<ShareClaims>(token, &self.dec, &v)
            .map_err(|e| TokenError::Invalid(e.to_string()))?
            .claims;
        if unix_now(now) >= c.exp {
            return Err(TokenError::Expired(c.exp));
        }
        Ok(c)
    }
}

/// Revoked token ids, persisted as JSON in the data directory and re-read when the file
/// changes (so `periscope token revoke` reaches a running relay).
#[derive(Debug)]
pub struct Revocations {
    path: PathBuf,
    set: RwLock<HashSet<String>>,
    seen: Mutex<Option<SystemTime>>,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct RevokedFile {
    revoked: Vec<RevokedEntry>,
}

#[derive(Debug, Serialize, Deserialize)]
struct RevokedEntry {
    jti: String,
    at: u64,
}

impl Revocations {
    /// File name inside the data directory.
    pub const FILE: &'static str = "revoked.json";

    /// Load from `data_dir` (an absent file is an empty list).
    pub fn load(data_dir: &Path) -> Result<Self, RelayError> {
        let r = Revocations {
            path: data_dir.join(Self::FILE),
            set: RwLock::new(HashSet::new()),
            seen: Mutex::new(None),
        };
        r.reload_if_changed()?;
        Ok(r)
    }

    fn read(path: &Path) -> Result<RevokedFile, RelayError> {
        match std::fs::read(path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| RelayError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(RevokedFile::default()),
            Err(e) => Err(RelayError::file(path)(e)),
        }
    }

    /// Re-read the file if its modification time changed. Returns true when it did.
    pub fn reload_if_changed(&self) -> Result<bool, RelayError> {
        let mtime = std::fs::metadata(&self.path)
            .and_then(|m| m.modified())
            .ok();
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            if *seen == mtime && mtime.is_some() {
                return Ok(false);
            }
        }
        let file = Self::read(&self.path)?;
        let set: HashSet<String> = file.revoked.into_iter().map(|e| e.jti).collect();
        *self.set.write().unwrap_or_else(|e| e.into_inner()) = set;
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = mtime;
        Ok(true)
    }

    /// Is `jti` revoked?
    pub fn contains(&self, jti: &str) -> bool {
        self.set
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .contains(jti)
    }

    /// Add `jti` to the list in `data_dir` (used by `periscope token revoke`). Returns false
    /// if it was already there.
    pub fn revoke(data_dir: &Path, jti: &str, now: SystemTime) -> Result<bool, RelayError> {
        let path = data_dir.join(Self::FILE);
        let mut file = Self::read(&path)?;
        if file.revoked.iter().any(|e| e.jti == jti) {
            return Ok(false);
        }
        file.revoked.push(RevokedEntry {
            jti: jti.to_string(),
            at: unix_now(now),
        });
        let json = serde_json::to_vec_pretty(&file)
            .map_err(|e| RelayError::Config(format!("encoding revocations: {e}")))?;
        identity::write_private(&path, &json)?;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> TokenKeys {
        let doc = ring::signature::Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new())
            .unwrap();
        TokenKeys::new(doc.as_ref(), "relay.example.com").unwrap()
    }

    fn req() -> IssueRequest {
        IssueRequest {
            agent: "home".into(),
            hosts: vec!["*.relay.example.com".into()],
            tcp_ports: vec!["2222".parse().unwrap(), "8000-8100".parse().unwrap()],
            udp_ports: vec![],
            ttl: Duration::from_secs(3600),
        }
    }

    #[test]
    fn issue_verify_roundtrip() {
        let k = keys();
        let now = SystemTime::now();
        let (t, c) = k.issue(&req(), now).unwrap();
        let v = k.verify(&t, now).unwrap();
        assert_eq!(v, c);
        assert!(v.allows_tcp(2222) && v.allows_tcp(8050) && !v.allows_tcp(2223));
        assert!(v.allows_host("cam.relay.example.com"));
        assert!(v.allows_host("CAM.relay.example.com."));
        assert!(!v.allows_host("a.b.relay.example.com"));
        assert!(!v.allows_host("relay.example.com"));
        assert!(!v.allows_host("evilrelay.example.com"));
    }

    #[test]
    fn expiry_uses_injected_clock_with_leeway() {
        let k = keys();
        let now = SystemTime::now();
        let (t, _) = k.issue(&req(), now).unwrap();
        let later = now + Duration::from_secs(3600 + LEEWAY_SECS - 1);
        assert!(k.verify(&t, later).is_ok());
        let too_late = now + Duration::from_secs(3600 + LEEWAY_SECS + 2);
        assert!(matches!(
            k.verify(&t, too_late),
            Err(TokenError::Expired(_))
        ));
    }

    #[test]
    fn other_key_or_audience_rejected() {
        let now = SystemTime::now();
        let (t, _) = keys().issue(&req(), now).unwrap();
        assert!(matches!(
            keys().verify(&t, now),
            Err(TokenError::Invalid(_))
        ));
        assert!(matches!(
            keys().verify("garbage", now),
            Err(TokenError::Invalid(_))
        ));
    }

    #[test]
    fn alg_none_and_hmac_rejected() {
        let k = keys();
        let now = SystemTime::now();
        let (_, claims) = k.issue(&req(), now).unwrap();
        let hs = jsonwebtoken::encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(b"k"),
        )
        .unwrap();
        assert!(k.verify(&hs, now).is_err());
        // alg=none: header {"alg":"none"} with the same claims and no signature.
        let mut parts = hs.split('.');
        let none = format!("eyJhbGciOiJub25lIn0.{}.", parts.nth(1).unwrap());
        assert!(k.verify(&none, now).is_err());
    }

    #[test]
    fn share_links_are_not_agent_tokens() {
        let k = keys();
        let now = SystemTime::now();
        let (share, c) = k
            .issue_share(
                "Cam.relay.example.com",
                "neighbour",
                Duration::from_secs(60),
                now,
            )
            .unwrap();
        assert_eq!(c.sub, "cam.relay.example.com");
        assert_eq!(k.verify_share(&share, now).unwrap(), c);
        assert!(k.verify(&share, now).is_err());
        let (agent, _) = k.issue(&req(), now).unwrap();
        assert!(k.verify_share(&agent, now).is_err());
        assert!(matches!(
            k.verify_share(&share, now + Duration::from_secs(60)),
            Err(TokenError::Expired(_))
        ));
        assert!(keys().verify_share(&share, now).is_err());
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(
            "80".parse::<PortRange>().unwrap(),
            PortRange { lo: 80, hi: 80 }
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("9-2".parse::<PortRange>().is_err());
        assert!("x".parse::<PortRange>().is_err());
        assert!("70000".parse::<PortRange>().is_err());
    }

    #[test]
    fn revocations_persist_and_reload() {
        let dir = tempfile::tempdir().unwrap();
        let r = Revocations::load(dir.path()).unwrap();
        assert!(!r.contains("abc"));
        assert!(Revocations::revoke(dir.path(), "abc", SystemTime::now()).unwrap());
        assert!(!Revocations::revoke(dir.path(), "abc", SystemTime::now()).unwrap());
        assert!(r.reload_if_changed().unwrap());
        assert!(r.contains("abc"));
    }
}

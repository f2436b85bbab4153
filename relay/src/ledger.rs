//! The ledger of issued agent tokens and share links, `DATA_DIR/issued.json` (0600): what
//! `periscope token issue`, `periscope share` and the admin API signed, so the admin API can
//! list them (with their revocation state from `revoked.json`). It holds ids and claims,
//! never the tokens themselves. Entries expired for more than [`KEEP_EXPIRED`] are dropped
//! when a new one is written.

use std::{path::Path, time::SystemTime};

use serde::{Deserialize, Serialize};

use crate::{identity, token::unix_now, Claims, RelayError};

/// How long an expired entry stays listed.
pub const KEEP_EXPIRED: std::time::Duration = std::time::Duration::from_secs(30 * 86_400);

/// The ledger file.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Ledger {
    /// Agent tokens.
    #[serde(default)]
    pub tokens: Vec<TokenEntry>,
    /// Share links.
    #[serde(default)]
    pub shares: Vec<ShareEntry>,
}

/// One issued agent token.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenEntry {
    /// Token id.
    pub jti: String,
    /// Agent name.
    pub agent: String,
    /// Hostname patterns it allows.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// Issued at (unix seconds).
    pub issued: u64,
    /// Expires at (unix seconds).
    pub expires: u64,
}

/// One issued share link.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShareEntry {
    /// Link id.
    pub jti: String,
    /// The hostname it opens.
    pub host: String,
    /// Who it was made for.
    #[serde(default)]
    pub label: String,
    /// Issued at (unix seconds).
    pub issued: u64,
    /// Expires at (unix seconds).
    pub expires: u64,
}

impl Ledger {
    /// File name inside the data directory.
    pub const FILE: &'static str = "issued.json";

    /// Read the ledger (an absent file is empty).
    pub fn load(data_dir: &Path) -> Result<Self, RelayError> {
        let path = data_dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(data) => serde_json::from_slice(&data)
                .map_err(|e| RelayError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Ledger::default()),
            Err(e) => Err(RelayError::file(&path)(e)),
        }
    }

    fn save(&self, data_dir: &Path) -> Result<(), RelayError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| RelayError::Config(format!("encoding the token ledger: {e}")))?;
        identity::write_private(&data_dir.join(Self::FILE), &json)
    }

    fn update(
        data_dir: &Path,
        now: SystemTime,
        f: impl FnOnce(&mut Ledger),
    ) -> Result<(), RelayError> {
        let mut l = Self::load(data_dir)?;
        let keep = unix_now(now).saturating_sub(KEEP_EXPIRED.as_secs());
        l.tokens.retain(|t| t.expires >= keep);
        l.shares.retain(|s| s.expires >= keep);
        f(&mut l);
        l.save(data_dir)
    }

    /// Record an agent token just issued.
    pub fn record_token(data_dir: &Path, c: &Claims, now: SystemTime) -> Result<(), RelayError> {
        Self::update(data_dir, now, |l| {
            l.tokens.push(TokenEntry {
                jti: c.jti.clone(),
                agent: c.sub.clone(),
                hosts: c.hosts.clone(),
                issued: c.iat,
                expires: c.exp,
            })
        })
    }

    /// Record a share link just issued.
    pub fn record_share(
        data_dir: &Path,
        c: &crate::token::ShareClaims,
        now: SystemTime,
    ) -> Result<(), RelayError> {
        Self::update(data_dir, now, |l| {
            l.shares.push(ShareEntry {
                jti: c.jti.clone(),
                host: c.sub.clone(),
                label: c.label.clone(),
                issued: c.iat,
                expires: c.exp,
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn claims(jti: &str, exp: u64) -> Claims {
        Claims {
            iss: "periscope".into(),
            aud: "relay.example.com".into(),
            sub: "home".into(),
            iat: 1,
            exp,
            jti: jti.into(),
            hosts: vec!["cam.relay.example.com".into()],
            tcp_ports: vec![],
            udp_ports: vec![],
        }
    }

    #[test]
    fn records_tokens_private_and_forgets_long_expired_ones() {
        let dir = tempfile::tempdir().unwrap();
        let now = SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(100 * 86_400);
        assert!(Ledger::load(dir.path()).unwrap().tokens.is_empty());
        // Expired 40 days ago: dropped at the next write.
        Ledger::record_token(dir.path(), &claims("aa", 60 * 86_400), now).unwrap();
        Ledger::record_token(dir.path(), &claims("bb", 200 * 86_400), now).unwrap();
        let l = Ledger::load(dir.path()).unwrap();
        assert_eq!(
            l.tokens.iter().map(|t| t.jti.as_str()).collect::<Vec<_>>(),
            ["bb"]
        );
        assert_eq!(l.tokens[0].agent, "home");
        let mode = std::fs::metadata(dir.path().join(Ledger::FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_corrupt_ledger_is_an_error_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(Ledger::FILE), b"{\"tokens\": 7").unwrap();
        assert!(Ledger::load(dir.path()).is_err());
    }
}

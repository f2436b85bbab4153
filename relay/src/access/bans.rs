//! Failed-login counting and bans by address, persisted in `DATA_DIR/bans.json` so they
//! survive a restart and `periscope ban list|clear` can see and lift them.

use std::{
    collections::HashMap,
    net::IpAddr,
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};

use crate::{identity, token::unix_now, RelayError};

/// Failure histories kept at most (oldest dropped first by the sweep); bounds memory under a
/// spray of addresses.
const MAX_TRACKED: usize = 100_000;

/// The ban list file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct BanFile {
    /// Current bans.
    #[serde(default)]
    pub bans: Vec<Ban>,
}

/// One banned address.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Ban {
    /// The address.
    pub ip: IpAddr,
    /// Banned since (unix seconds).
    pub since: u64,
    /// Banned until (unix seconds); 0: until cleared.
    pub until: u64,
    /// The last user name tried (for the log and `periscope ban list`).
    pub user: String,
}

impl BanFile {
    /// File name inside the data directory.
    pub const FILE: &'static str = "bans.json";

    /// Read the ban list of `data_dir` (absent: empty).
    pub fn load(data_dir: &Path) -> Result<Self, RelayError> {
        let path = data_dir.join(Self::FILE);
        match std::fs::read(&path) {
            Ok(d) => serde_json::from_slice(&d)
                .map_err(|e| RelayError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BanFile::default()),
            Err(e) => Err(RelayError::file(&path)(e)),
        }
    }

    /// Write the ban list of `data_dir`.
    pub fn save(&self, data_dir: &Path) -> Result<(), RelayError> {
        let json = serde_json::to_vec_pretty(self)
            .map_err(|e| RelayError::Config(format!("encoding bans: {e}")))?;
        identity::write_private(&data_dir.join(Self::FILE), &json)
    }

    /// Is `ip` banned at `now` (unix seconds)? Returns the ban.
    pub fn active(&self, ip: IpAddr, now: u64) -> Option<&Ban> {
        self.bans
            .iter()
            .find(|b| b.ip == ip && (b.until == 0 || b.until > now))
    }
}

/// Ban policy (from `[auth]`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Policy {
    pub(crate) after: u32,
    pub(crate) window: Duration,
    pub(crate) ban_for: Duration,
    pub(crate) forever: bool,
}

#[derive(Debug)]
pub(crate) struct Bans {
    dir: PathBuf,
    policy: Policy,
    file: Mutex<(BanFile, Option<super::users::FileStamp>)>,
    failures: Mutex<HashMap<IpAddr, Vec<SystemTime>>>,
}

impl Bans {
    pub(crate) fn load(dir: &Path, policy: Policy) -> Result<Self, RelayError> {
        let b = Bans {
            dir: dir.to_path_buf(),
            policy,
            file: Mutex::new((BanFile::default(), None)),
            failures: Mutex::new(HashMap::new()),
        };
        b.reload_if_changed()?;
        Ok(b)
    }

    fn mtime(&self) -> Option<super::users::FileStamp> {
        super::users::FileStamp::of(&self.dir.join(BanFile::FILE))
    }

    /// Pick up `periscope ban clear`.
    pub(crate) fn reload_if_changed(&self) -> Result<(), RelayError> {
        let mtime = self.mtime();
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        if f.1 == mtime && mtime.is_some() {
            return Ok(());
        }
        let new = BanFile::load(&self.dir)?;
        // Addresses cleared by hand start with a clean failure history.
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        for old in &f.0.bans {
            if !new.bans.iter().any(|b| b.ip == old.ip) {
                failures.remove(&old.ip);
            }
        }
        *f = (new, mtime);
        Ok(())
    }

    /// If `ip` is banned at `now`: until when (`None` inside: forever).
    pub(crate) fn banned(&self, ip: IpAddr, now: SystemTime) -> Option<Option<u64>> {
        let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.0.active(ip, unix_now(now))
            .map(|b| (b.until != 0).then_some(b.until))
    }

    /// Record a failed login (or a bad share link) from `ip`; returns true if that banned it.
    pub(crate) fn failure(&self, ip: IpAddr, user: &str, now: SystemTime) -> bool {
        let count = {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            let list = failures.entry(ip).or_default();
            list.retain(|t| now.duration_since(*t).unwrap_or_default() < self.policy.window);
            list.push(now);
            list.len()
        };
        if count < self.policy.after as usize {
            return false;
        }
        let since = unix_now(now);
        let until = if self.policy.forever {
            0
        } else {
            since.saturating_add(self.policy.ban_for.as_secs().max(1))
        };
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.0.bans.retain(|b| b.ip != ip);
        f.0.bans.push(Ban {
            ip,
            since,
            until,
            user: user.chars().take(64).collect(),
        });
        if let Err(e) = f.0.save(&self.dir) {
            tracing::warn!("cannot save the ban list: {e}");
        }
        f.1 = self.mtime();
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
        true
    }

    /// Ban `ip` until `until` (unix seconds, 0 = forever) at once, and save the list (the
    /// admin API's `POST /api/bans`).
    pub(crate) fn add(&self, ip: IpAddr, until: u64, now: SystemTime) -> Result<(), RelayError> {
        // Start from the file as it is (`periscope ban clear` may have changed it).
        self.reload_if_changed()?;
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.0.bans.retain(|b| b.ip != ip);
        f.0.bans.push(Ban {
            ip,
            since: unix_now(now),
            until,
            user: "(admin API)".into(),
        });
        f.0.save(&self.dir)?;
        f.1 = self.mtime();
        Ok(())
    }

    /// Lift the ban of `ip` at once and save the list; false when it was not banned.
    pub(crate) fn remove(&self, ip: IpAddr) -> Result<bool, RelayError> {
        self.reload_if_changed()?;
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let before = f.0.bans.len();
        f.0.bans.retain(|b| b.ip != ip);
        if f.0.bans.len() == before {
            return Ok(false);
        }
        f.0.save(&self.dir)?;
        f.1 = self.mtime();
        drop(f);
        self.success(ip);
        Ok(true)
    }

    /// Bans in force at `now`.
    pub(crate) fn active_count(&self, now: SystemTime) -> usize {
        let secs = unix_now(now);
        let f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        f.0.bans
            .iter()
            .filter(|b| b.until == 0 || b.until > secs)
            .count()
    }

    /// A successful login clears the address's failure history.
    pub(crate) fn success(&self, ip: IpAddr) {
        self.failures
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&ip);
    }

    /// Forget old failures and expired bans.
    pub(crate) fn sweep(&self, now: SystemTime) {
        {
            let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
            failures.retain(|_, l| {
                l.retain(|t| now.duration_since(*t).unwrap_or_default() < self.policy.window);
                !l.is_empty()
            });
            if failures.len() > MAX_TRACKED {
                let excess = failures.len() - MAX_TRACKED;
                let drop: Vec<IpAddr> = failures.keys().take(excess).copied().collect();
                for ip in drop {
                    failures.remove(&ip);
                }
            }
        }
        let secs = unix_now(now);
        let mut f = self.file.lock().unwrap_or_else(|e| e.into_inner());
        let before = f.0.bans.len();
        f.0.bans.retain(|b| b.until == 0 || b.until > secs);
        if f.0.bans.len() != before {
            if let Err(e) = f.0.save(&self.dir) {
                tracing::warn!("cannot save the ban list: {e}");
            }
            f.1 = self.mtime();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_added_and_lifted_at_once_keep_changes_made_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            after: 5,
            window: Duration::from_secs(600),
            ban_for: Duration::from_secs(600),
            forever: false,
        };
        let bans = Bans::load(dir.path(), policy).unwrap();
        let now = SystemTime::now();
        let (a, b): (IpAddr, IpAddr) = ("192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap());
        bans.add(a, 0, now).unwrap();
        assert_eq!(bans.banned(a, now), Some(None));
        assert_eq!(bans.active_count(now), 1);
        // Someone else (the CLI) bans another address in the file meanwhile.
        let mut file = BanFile::load(dir.path()).unwrap();
        file.bans.push(Ban {
            ip: b,
            since: 1,
            until: 0,
            user: "x".into(),
        });
        file.save(dir.path()).unwrap();
        assert!(bans.remove(a).unwrap());
        assert!(!bans.remove(a).unwrap());
        assert_eq!(bans.banned(a, now), None);
        assert_eq!(bans.banned(b, now), Some(None), "the file's ban is kept");
        assert_eq!(BanFile::load(dir.path()).unwrap().bans.len(), 1);
        // An expired ban is not counted.
        let until = unix_now(now) - 1;
        bans.add(a, until, now).unwrap();
        assert_eq!(bans.active_count(now), 1);
    }

    #[test]
    fn ban_after_n_failures_then_expiry_and_persistence() {
        let dir = tempfile::tempdir().unwrap();
        let policy = Policy {
            after: 3,
            window: Duration::from_secs(600),
            ban_for: Duration::from_secs(900),
            forever: false,
        };
        let b = Bans::load(dir.path(), policy).unwrap();
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let t0 = SystemTime::now();
        assert!(!b.failure(ip, "root", t0));
        assert!(!b.failure(ip, "root", t0));
        assert!(b.banned(ip, t0).is_none());
        assert!(b.failure(ip, "admin", t0));
        assert!(b.banned(ip, t0).is_some());
        // Survives a restart.
        let b2 = Bans::load(dir.path(), policy).unwrap();
        assert!(b2.banned(ip, t0 + Duration::from_secs(899)).is_some());
        assert!(b2.banned(ip, t0 + Duration::from_secs(901)).is_none());
        // Failures outside the window do not add up.
        let other: IpAddr = "2001:db8::1".parse().unwrap();
        for i in 0..5 {
            assert!(!b.failure(other, "x", t0 + Duration::from_secs(601 * i)));
        }
    }
}

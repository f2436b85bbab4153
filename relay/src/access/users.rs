//! The users file: visitor accounts with argon2id password hashes, managed by
//! `periscope user` and re-read by a running relay when it changes.
//!
//! ```toml
//! [[user]]
//! name = "alice"
//! hash = "$argon2id$v=19$m=19456,t=2,p=1$…"
//! hosts = ["cam.relay.example.com"]   # empty: every hostname
//! disabled = false
//! ```

use std::{
    path::{Path, PathBuf},
    sync::{Arc, Mutex, RwLock},
    time::SystemTime,
};

use argon2::{
    password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString},
    Argon2,
};
use serde::{Deserialize, Serialize};

use crate::{identity, token::host_matches, RelayError};

/// The whole users file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UsersFile {
    /// Accounts.
    #[serde(default, rename = "user")]
    pub users: Vec<User>,
}

/// One visitor account.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct User {
    /// Login name.
    pub name: String,
    /// argon2id PHC string.
    pub hash: String,
    /// Hostnames (or `*.domain` patterns) this user may open; empty: all.
    #[serde(default)]
    pub hosts: Vec<String>,
    /// A disabled user cannot log in, and its sessions end.
    #[serde(default)]
    pub disabled: bool,
}

impl std::fmt::Debug for User {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("User")
            .field("name", &self.name)
            .field("hosts", &self.hosts)
            .field("disabled", &self.disabled)
            .finish_non_exhaustive()
    }
}

impl User {
    /// May this user open `host`?
    pub fn may_open(&self, host: &str) -> bool {
        !self.disabled
            && (self.hosts.is_empty() || self.hosts.iter().any(|h| host_matches(h, host)))
    }
}

/// Is `name` usable as a login name (letters, digits, `._@-`, at most 64)?
pub fn valid_user_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'))
}

/// Hash `password` with argon2id (the crate's default cost: 19 MiB, 2 passes) and a random salt.
pub fn hash_password(password: &str) -> Result<String, RelayError> {
    let salt = SaltString::encode_b64(&identity::random(16)?)
        .map_err(|e| RelayError::Key(format!("password salt: {e}")))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| RelayError::Key(format!("hashing the password: {e}")))
}

/// Verify `password` against a PHC `hash` (constant time inside argon2).
pub fn verify_password(password: &str, hash: &str) -> bool {
    PasswordHash::new(hash).is_ok_and(|h| {
        Argon2::default()
            .verify_password(password.as_bytes(), &h)
            .is_ok()
    })
}

impl UsersFile {
    /// Read `path`; an absent file has no users.
    pub fn load(path: &Path) -> Result<Self, RelayError> {
        match std::fs::read_to_string(path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| RelayError::Config(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(UsersFile::default()),
            Err(e) => Err(RelayError::file(path)(e)),
        }
    }

    /// Write to `path` (0600, atomically).
    pub fn save(&self, path: &Path) -> Result<(), RelayError> {
        let text = toml::to_string_pretty(self)
            .map_err(|e| RelayError::Config(format!("encoding users: {e}")))?;
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            identity::ensure_data_dir(dir)?;
        }
        identity::write_private(path, text.as_bytes())
    }

    /// The user called `name`.
    pub fn get(&self, name: &str) -> Option<&User> {
        self.users.iter().find(|u| u.name == name)
    }

    /// Mutable access to the user called `name`.
    pub fn get_mut(&mut self, name: &str) -> Option<&mut User> {
        self.users.iter_mut().find(|u| u.name == name)
    }
}

/// What identifies one version of a file: modification time, inode (our writes replace the
/// file by a rename) and length, so two writes within one timestamp tick still differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp(SystemTime, u64, u64);

impl FileStamp {
    pub(crate) fn of(path: &Path) -> Option<Self> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp(m.modified().ok()?, m.ino(), m.len()))
    }
}

/// The users file as the running relay sees it, re-read when its modification time changes.
#[derive(Debug)]
pub(crate) struct UserStore {
    path: PathBuf,
    file: RwLock<Arc<UsersFile>>,
    /// The file's stamp at the last load (`None` inside: it did not exist); `None`: never
    /// loaded.
    seen: Mutex<Option<Option<FileStamp>>>,
    /// Verified against when the user does not exist, so that costs the same as a wrong password.
    dummy: String,
}

impl UserStore {
    pub(crate) fn load(path: PathBuf) -> Result<Self, RelayError> {
        let s = UserStore {
            path,
            file: RwLock::new(Arc::new(UsersFile::default())),
            seen: Mutex::new(None),
            dummy: hash_password(&identity::random_hex(16)?)?,
        };
        s.reload_if_changed()?;
        Ok(s)
    }

    pub(crate) fn reload_if_changed(&self) -> Result<bool, RelayError> {
        let mtime = FileStamp::of(&self.path);
        {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            // A missing file stays missing without a reload (and a log line) every second.
            if seen.as_ref() == Some(&mtime) {
                return Ok(false);
            }
        }
        let file = UsersFile::load(&self.path)?;
        if mtime.is_some() {
            tracing::info!(path = %self.path.display(), users = file.users.len(), "loaded users file");
        } else {
            tracing::debug!(path = %self.path.display(), "no users file (yet): no edge logins");
        }
        *self.file.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(file);
        *self.seen.lock().unwrap_or_else(|e| e.into_inner()) = Some(mtime);
        Ok(true)
    }

    pub(crate) fn get(&self, name: &str) -> Option<User> {
        self.file
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(name)
            .cloned()
    }

    /// Check a name and password (blocking: call from `spawn_blocking`). An unknown user costs
    /// one argon2 verification too.
    pub(crate) fn verify(&self, name: &str, password: &str) -> Option<User> {
        match self.get(name) {
            Some(u) => verify_password(password, &u.hash).then_some(u),
            None => {
                let _ = verify_password(password, &self.dummy);
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_and_verify() {
        let h = hash_password("correct horse").unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &h));
        assert!(!verify_password("wrong", &h));
        assert!(!verify_password("correct horse", "not a hash"));
    }

    #[test]
    fn file_roundtrip_and_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.toml");
        let store = UserStore::load(path.clone()).unwrap();
        assert!(store.get("alice").is_none());
        let mut f = UsersFile::default();
        f.users.push(User {
            name: "alice".into(),
            hash: hash_password("pw").unwrap(),
            hosts: vec!["cam.example.com".into()],
            disabled: false,
        });
        f.save(&path).unwrap();
        store.reload_if_changed().unwrap();
        let u = store.verify("alice", "pw").unwrap();
        assert!(u.may_open("cam.example.com") && !u.may_open("other.example.com"));
        assert!(store.verify("alice", "nope").is_none());
        assert!(store.verify("bob", "pw").is_none());
        assert!(!format!("{u:?}").contains("argon2"), "hash never in Debug");
    }

    #[test]
    fn user_names() {
        assert!(valid_user_name("alice.b@x-y_z"));
        assert!(!valid_user_name(""));
        assert!(!valid_user_name("a b"));
        assert!(!valid_user_name("a\nb"));
    }
}

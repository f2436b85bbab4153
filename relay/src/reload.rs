//! Hot reload of relay.toml: the access rules apply to new requests and connections at once;
//! everything else needs a restart and is reported, not applied.
//!
//! What applies live: `[[access]]`, `[[port_access]]`, `auth.allow_ips`, `auth.deny_ips`,
//! and the per-response limits `limits.streams_per_user` and `limits.stream_time_limit`.
//! Requests and raw-port connections take one snapshot of them (`Shared::live`) when they
//! are decided; connections and streams already open are never touched (a live stream keeps
//! the time limit it started with). Other limits are built into rate limiters and listeners
//! at start and need a restart. The users file is re-read on
//! its own (`access::users`).
//!
//! The caller (the CLI) reads and parses the file, so its errors name the file, line and key
//! the same way as at start; [`Reloader::apply`] validates again and swaps the snapshot.

use std::{collections::BTreeMap, sync::Arc};

use crate::{RelayConfig, RelayError, Shared};

/// Keys (dotted paths in relay.toml) that a running relay applies.
pub const LIVE_KEYS: &[&str] = &[
    "access",
    "port_access",
    "auth.allow_ips",
    "auth.deny_ips",
    "limits.streams_per_user",
    "limits.stream_time_limit",
];

/// Applies a new relay.toml to a running relay; cheap to clone.
#[derive(Debug, Clone)]
pub struct Reloader {
    pub(crate) shared: Arc<Shared>,
}

/// What a reload changed.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Reloaded {
    /// `[[access]]` rules before and after.
    pub access: (usize, usize),
    /// `[[port_access]]` rules before and after.
    pub port_access: (usize, usize),
    /// Live keys whose value changed (applied).
    pub applied: Vec<String>,
    /// Keys that changed but need a restart (not applied).
    pub need_restart: Vec<String>,
}

impl Reloaded {
    /// Nothing changed at all.
    pub fn is_unchanged(&self) -> bool {
        self.applied.is_empty() && self.need_restart.is_empty()
    }
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.applied.is_empty() {
            f.write_str("no access rule changed")?;
        } else {
            write!(
                f,
                "access rules {} → {}, port access rules {} → {} (changed: {})",
                self.access.0,
                self.access.1,
                self.port_access.0,
                self.port_access.1,
                self.applied.join(", ")
            )?;
        }
        if !self.need_restart.is_empty() {
            write!(
                f,
                "; changed but not applied until a restart: {}",
                self.need_restart.join(", ")
            )?;
        }
        Ok(())
    }
}

impl Reloader {
    /// Validate `new` and swap in its access rules for new requests. On an error nothing
    /// changes. Keys that need a restart are listed in the result and not applied.
    pub fn apply(&self, new: RelayConfig) -> Result<Reloaded, RelayError> {
        new.validate()?;
        let old = self.shared.live();
        let changed = changed_keys(&old, &new)?;
        let (applied, need_restart): (Vec<String>, Vec<String>) = changed
            .into_iter()
            .partition(|k| LIVE_KEYS.contains(&k.as_str()));
        let report = Reloaded {
            access: (old.access.len(), new.access.len()),
            port_access: (old.port_access.len(), new.port_access.len()),
            applied,
            need_restart,
        };
        if !report.applied.is_empty() {
            let mut next = (*old).clone();
            next.access = new.access;
            next.port_access = new.port_access;
            next.auth.allow_ips = new.auth.allow_ips;
            next.auth.deny_ips = new.auth.deny_ips;
            next.limits.streams_per_user = new.limits.streams_per_user;
            next.limits.stream_time_limit = new.limits.stream_time_limit;
            *self.shared.live.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(next);
        }
        Ok(report)
    }
}

/// Dotted paths of every key whose value differs (arrays count as one value).
fn changed_keys(old: &RelayConfig, new: &RelayConfig) -> Result<Vec<String>, RelayError> {
    let flat = |c: &RelayConfig| -> Result<BTreeMap<String, toml::Value>, RelayError> {
        let v = toml::Value::try_from(c)
            .map_err(|e| RelayError::Config(format!("comparing configs: {e}")))?;
        let mut out = BTreeMap::new();
        flatten("", v, &mut out);
        Ok(out)
    };
    let (a, b) = (flat(old)?, flat(new)?);
    let mut keys: Vec<String> = a
        .keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect();
    keys.sort();
    keys.dedup();
    Ok(keys)
}

fn flatten(prefix: &str, v: toml::Value, out: &mut BTreeMap<String, toml::Value>) {
    match v {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::AccessRule;

    #[test]
    fn changed_keys_sorts_live_from_restart() {
        let old = RelayConfig::dev("/tmp/x".into());
        let mut new = old.clone();
        assert!(changed_keys(&old, &new).unwrap().is_empty());
        new.access.push(AccessRule::public("cam.example.com"));
        new.auth.deny_ips.push("192.0.2.0/24".parse().unwrap());
        new.domain = "other.example.com".into();
        new.listen.https = "127.0.0.1:1".parse().unwrap();
        new.limits.stream_time_limit = Some(std::time::Duration::from_secs(60));
        new.limits.requests_per_second += 1;
        let keys = changed_keys(&old, &new).unwrap();
        assert_eq!(
            keys,
            [
                "access",
                "auth.deny_ips",
                "domain",
                "limits.requests_per_second",
                "limits.stream_time_limit",
                "listen.https"
            ]
            .map(String::from)
        );
        let live: Vec<&String> = keys
            .iter()
            .filter(|k| LIVE_KEYS.contains(&k.as_str()))
            .collect();
        assert_eq!(
            live,
            ["access", "auth.deny_ips", "limits.stream_time_limit"]
        );
    }
}

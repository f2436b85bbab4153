//! Live agent sessions by agent name. A new session of the same agent replaces the old one.

use std::time::SystemTime;

use dashmap::DashMap;
use proto::transport::Connection;
use tokio_util::task::TaskTracker;

/// What the registry knows about one live session.
#[derive(Clone)]
pub struct SessionInfo {
    /// Session id (unique per relay process).
    pub id: u64,
    /// Agent name.
    pub agent: String,
    /// Agent software version (from its Hello).
    pub version: String,
    /// Token id.
    pub jti: String,
    /// Token expiry (unix seconds).
    pub exp: u64,
    /// Public addresses of its tunnels.
    pub public: Vec<String>,
    /// When it connected.
    pub since: SystemTime,
    pub(crate) conn: Connection,
    /// The public listeners alone (tcp/udp ports), released first when a newer session of
    /// the same agent takes over.
    pub(crate) listeners: TaskTracker,
    /// Fired by a newer session of the same agent: stop taking visitors, let the streams in
    /// flight finish (bounded), then close with [`proto::codes::CLOSE_REPLACED`].
    pub(crate) replaced: tokio_util::sync::CancellationToken,
}

impl std::fmt::Debug for SessionInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionInfo")
            .field("id", &self.id)
            .field("agent", &self.agent)
            .field("public", &self.public)
            .finish_non_exhaustive()
    }
}

impl SessionInfo {
    /// Close the session's connection with a code and reason.
    pub fn close(&self, code: u32, reason: &str) {
        self.conn.close(code, reason);
    }

    /// Transport in use.
    pub fn transport(&self) -> proto::transport::TransportKind {
        self.conn.kind()
    }

    /// The agent's address as the relay sees it.
    pub fn remote_addr(&self) -> std::net::SocketAddr {
        self.conn.remote_addr()
    }

    /// Current round-trip time estimate.
    pub fn rtt(&self) -> std::time::Duration {
        self.conn.rtt()
    }
}

/// Sessions by agent name.
#[derive(Debug, Default)]
pub struct Registry {
    sessions: DashMap<String, SessionInfo>,
}

impl Registry {
    /// The live session of `agent`.
    pub fn get(&self, agent: &str) -> Option<SessionInfo> {
        self.sessions.get(agent).map(|s| s.clone())
    }

    /// Number of live sessions.
    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    /// True when no agent is connected.
    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Every live session.
    pub fn sessions(&self) -> Vec<SessionInfo> {
        self.sessions.iter().map(|e| e.value().clone()).collect()
    }

    /// Names of connected agents.
    pub fn agents(&self) -> Vec<String> {
        self.sessions.iter().map(|e| e.key().clone()).collect()
    }

    /// Remove and return the session of `agent`, whatever its id.
    pub(crate) fn take(&self, agent: &str) -> Option<SessionInfo> {
        self.sessions.remove(agent).map(|(_, s)| s)
    }

    /// Register `info`; returns the session it displaced, if any.
    pub(crate) fn insert(&self, info: SessionInfo) -> Option<SessionInfo> {
        self.sessions.insert(info.agent.clone(), info)
    }

    /// Remove `agent`'s entry only if it is still session `id` (a newer one stays).
    pub(crate) fn remove_if(&self, agent: &str, id: u64) {
        self.sessions.remove_if(agent, |_, s| s.id == id);
    }

    /// Replace the public addresses listed for session `id` of `agent` (a tunnel update).
    pub(crate) fn set_public(&self, agent: &str, id: u64, public: Vec<String>) {
        if let Some(mut s) = self.sessions.get_mut(agent) {
            if s.id == id {
                s.public = public;
            }
        }
    }

    /// Close every session for which `f` returns a close code and reason.
    pub(crate) fn close_where(&self, f: impl Fn(&SessionInfo) -> Option<(u32, &'static str)>) {
        for s in self.sessions.iter() {
            if let Some((code, reason)) = f(s.value()) {
                tracing::info!(agent = %s.agent, session = s.id, "closing session: {reason}");
                s.close(code, reason);
            }
        }
    }
}

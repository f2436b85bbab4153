//! # Periscope agent
//!
//! Runs next to the recorder. [`Agent::new`] validates the config, resolves every tunnel
//! target once (the targets are pinned: the relay names tunnels by id and can never make the
//! agent connect anywhere else) and prepares TLS. [`Agent::run`] dials the relay, registers the
//! tunnels and serves streams until shutdown, reconnecting forever with backoff ([`backoff`])
//! when the relay goes away. [`Agent::status`] reports what is happening.
//!
//! Layout: `config` (agent.toml), `tls` (how the relay is verified), `backoff`, `session` (one
//! connection: Hello/Welcome, control loop, data streams → local targets).

pub mod backoff;
pub mod config;
pub mod error;
mod session;
mod tls;
mod udp;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use proto::{transport::TransportKind, RejectReason, TunnelSpec};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use config::AgentConfig;
pub use error::AgentError;

/// What the agent is doing, for `periscope agent status` and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Status {
    /// Not yet connected.
    Starting,
    /// Dialling the relay; `last_error` says why the previous attempt ended.
    Connecting {
        /// Attempts since the last healthy session.
        attempt: u32,
        /// Why the previous attempt or session ended.
        last_error: Option<String>,
    },
    /// Registered and serving.
    Connected {
        /// Session id from the relay.
        session: u64,
        /// Transport in use.
        transport: TransportKind,
        /// `(tunnel name, public address)`.
        public: Vec<(String, String)>,
    },
    /// The relay refused this agent; retrying slowly.
    Rejected {
        /// Why.
        reason: RejectReason,
        /// Detail from the relay.
        detail: String,
    },
}

/// A tunnel with its target resolved and pinned.
#[derive(Debug)]
pub(crate) struct Tunnel {
    pub(crate) spec: TunnelSpec,
    pub(crate) target: SocketAddr,
    pub(crate) proxy_v2: bool,
    /// TLS toward the target (`target_tls = true`).
    pub(crate) tls: Option<tls::TargetTls>,
    /// When the current target outage was last logged at warn level.
    pub(crate) target_down: std::sync::Mutex<Option<std::time::Instant>>,
}

/// A configured agent, ready to run.
#[derive(Debug)]
pub struct Agent {
    pub(crate) config: AgentConfig,
    pub(crate) token: proto::Secret,
    pub(crate) tunnels: Arc<Vec<Tunnel>>,
    pub(crate) tls: rustls::ClientConfig,
    pub(crate) pinned: Option<Arc<tls::PinnedVerifier>>,
    pub(crate) status: watch::Sender<Status>,
    pub(crate) current: RttProbe,
    /// The last QUIC session ended with unanswered pings: the next `auto` dial gives TCP no
    /// head start (UDP toward the relay is likely blocked).
    pub(crate) quic_suspect: std::sync::atomic::AtomicBool,
}

/// The live relay connection's round-trip time, readable while the agent runs (for
/// `periscope agent status`).
#[derive(Clone, Default)]
pub struct RttProbe(Arc<std::sync::Mutex<Option<proto::transport::Connection>>>);

impl std::fmt::Debug for RttProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("RttProbe").field(&self.rtt()).finish()
    }
}

impl RttProbe {
    /// RTT of the current connection; `None` while not connected.
    pub fn rtt(&self) -> Option<Duration> {
        let g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        g.as_ref().map(|c| c.rtt())
    }

    pub(crate) fn set(&self, conn: Option<proto::transport::Connection>) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = conn;
    }
}

impl Agent {
    /// Validate `config`, read the token, resolve targets, prepare TLS.
    pub async fn new(config: AgentConfig) -> Result<Agent, AgentError> {
        config.validate()?;
        let token = match (&config.token, &config.token_file) {
            (Some(t), _) => t.clone(),
            (None, Some(path)) => {
                let t = std::fs::read_to_string(path).map_err(|source| AgentError::File {
                    path: path.clone(),
                    error: source,
                })?;
                proto::Secret::new(t.trim())
            }
            (None, None) => return Err(AgentError::Config("token: missing".into())),
        };
        let mut tunnels = Vec::new();
        for (i, t) in config.tunnels.iter().enumerate() {
            let target = resolve_target(&t.name, &t.target).await?;
            tunnels.push(Tunnel {
                spec: TunnelSpec {
                    id: i as u32,
                    name: t.name.clone(),
                    kind: t.kind.into(),
                    remote_port: t.remote_port,
                    hostname: t.hostname.clone(),
                    tls: t.tls,
                    http: t.http_options(),
                },
                target,
                proxy_v2: t.proxy_protocol.is_some(),
                tls: tls::target_tls(t)?,
                target_down: std::sync::Mutex::new(None),
            });
        }
        let (tls, pinned) = tls::client_tls(&config)?;
        Ok(Agent {
            config,
            token,
            tunnels: Arc::new(tunnels),
            tls,
            pinned,
            status: watch::Sender::new(Status::Starting),
            current: RttProbe::default(),
            quic_suspect: Default::default(),
        })
    }

    /// The current connection's RTT, readable while the agent runs.
    pub fn rtt_probe(&self) -> RttProbe {
        self.current.clone()
    }

    /// Watch the agent's status.
    pub fn status(&self) -> watch::Receiver<Status> {
        self.status.subscribe()
    }

    /// Serve until `shutdown` fires. Network errors never end this: it reconnects.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), AgentError> {
        session::run(self, shutdown).await
    }
}

/// Resolve a target once at start. The unspecified address is refused: it would mean
/// "this host" on some systems (coturn CVE-2020-26262).
async fn resolve_target(tunnel: &str, target: &str) -> Result<SocketAddr, AgentError> {
    let err = |detail: String| AgentError::Resolve {
        tunnel: tunnel.into(),
        target: target.into(),
        detail,
    };
    let addr = tokio::time::timeout(Duration::from_secs(10), tokio::net::lookup_host(target))
        .await
        .map_err(|_| err("DNS lookup timed out".into()))?
        .map_err(|e| err(e.to_string()))?
        .next()
        .ok_or_else(|| err("no address".into()))?;
    if addr.ip().is_unspecified() {
        return Err(err("0.0.0.0 / :: is not a target; name the host".into()));
    }
    Ok(addr)
}

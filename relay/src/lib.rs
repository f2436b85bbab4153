//! # Periscope relay
//!
//! The public edge. Agents dial in over QUIC, or over TLS+yamux on the https port (ALPN
//! `periscope/1`, the TCP fallback), authenticate with a JWT
//! ([`token`]) on their control stream, and register tunnels ([`session`]). For each TCP
//! tunnel the relay listens on the public port ([`tcp_tunnel`]) and carries every visitor
//! connection to the agent on its own stream. The HTTPS edge (`http`) routes visitor
//! requests by hostname to http tunnels, one stream per request.
//!
//! Lifecycle: [`Relay::bind`] loads the identity and binds the QUIC socket (port 0 works, for
//! tests), [`Relay::run`] serves until the shutdown token fires, then sends `GoAway` to every
//! agent, lets connections drain for `limits.shutdown_grace` and closes.
//!
//! Layout: `config` (relay.toml), `identity` (certificate, signing and reset keys in the data
//! directory), `token` (JWT issue/verify for agents and share links, revocations), `registry`
//! (live sessions by agent name), `session` (one agent), `tcp_tunnel` (public TCP ports),
//! `http` (HTTPS edge), [`access`] (visitors: users, logins, bans, limits; deny by default),
//! [`reload`] (a changed relay.toml's access rules applied while running). An agent's
//! `TunnelUpdate` changes its session's tunnels in place (`session`).

pub mod access;
mod acme;
pub mod admin;
mod certs;
pub mod config;
mod conns;
pub mod error;
pub mod events;
mod http;
pub mod identity;
pub mod ledger;
mod metrics;
mod open;
pub mod registry;
pub mod reload;
mod session;
mod tcp_tunnel;
pub mod token;
mod udp_tunnel;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// The next connection on `listener`, or `None` once `shutdown` is cancelled. A failed accept
/// (out of file descriptors and the like) is logged, naming `what`, and retried after a pause.
pub(crate) async fn next_connection(
    listener: &tokio::net::TcpListener,
    shutdown: &CancellationToken,
    what: &str,
) -> Option<(tokio::net::TcpStream, SocketAddr)> {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            a = listener.accept() => match a {
                Ok(a) => return Some(a),
                Err(e) => {
                    tracing::warn!("{what} accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
        }
    }
}

pub use config::RelayConfig;
pub use error::RelayError;
pub use registry::Registry;
pub use reload::{Reloaded, Reloader};
pub use token::{Claims, IssueRequest, PortRange, TokenKeys};
pub use udp_tunnel::{UdpMetrics, UdpStats, UdpStatsSnapshot};

/// State shared by every task of the relay.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The configuration the relay started with (listeners, data directory, limits).
    pub(crate) config: RelayConfig,
    /// The same with the access rules of the latest reload ([`reload`]); read it through
    /// [`Shared::live`] once per decision.
    pub(crate) live: std::sync::RwLock<Arc<RelayConfig>>,
    pub(crate) keys: TokenKeys,
    pub(crate) revocations: token::Revocations,
    pub(crate) registry: Registry,
    /// HTTP routes by normalised hostname.
    pub(crate) routes: dashmap::DashMap<String, http::Route>,
    /// Hostnames whose agent went away, and since when (for the 502 page).
    pub(crate) offline: dashmap::DashMap<String, std::time::SystemTime>,
    /// Port of the HTTPS edge, for public URLs.
    pub(crate) https_port: u16,
    /// The edge's certificates.
    pub(crate) certs: Arc<certs::CertStore>,
    /// TLS for tcp tunnels with `tls = true` (certificates by SNI, no ALPN).
    pub(crate) tunnel_tls: Arc<rustls::ServerConfig>,
    /// Prometheus metrics.
    pub(crate) metrics: metrics::Metrics,
    /// Counters of every udp tunnel, by agent and tunnel name.
    pub(crate) udp: UdpMetrics,
    /// Visitor access control: users, sessions, bans, limits.
    pub(crate) access: access::Access,
    /// Agent handshakes in progress (QUIC and TCP fallback together).
    pub(crate) agent_handshakes: Arc<tokio::sync::Semaphore>,
    /// Live visitor connections (admin API).
    pub(crate) conns: conns::Conns,
}

impl Shared {
    /// The current access rules (`[[access]]`, `[[port_access]]`, `auth.allow_ips`,
    /// `auth.deny_ips`): a snapshot, unchanged by a reload while it is held.
    pub(crate) fn live(&self) -> Arc<RelayConfig> {
        self.live.read().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// A bound relay, ready to [`run`](Relay::run).
#[derive(Debug)]
pub struct Relay {
    shared: Arc<Shared>,
    endpoint: quinn::Endpoint,
    https: tokio::net::TcpListener,
    https_tls: Arc<rustls::ServerConfig>,
    http: tokio::net::TcpListener,
    admin: tokio::net::TcpListener,
    admin_token: String,
    /// TLS for the admin listener (`RelayConfig::admin_over_tls`), with the relay's identity.
    admin_tls: Option<Arc<rustls::ServerConfig>>,
    fingerprint: String,
}

impl Relay {
    /// Load (or create) the identity in `config.data_dir` and bind the QUIC listener.
    pub async fn bind(config: RelayConfig) -> Result<Relay, RelayError> {
        Self::bind_with_clock(config, Arc::new(access::SystemClock)).await
    }

    /// Like [`bind`](Relay::bind), with the clock that bans, sessions and share links read
    /// (tests move it forward).
    pub async fn bind_with_clock(
        config: RelayConfig,
        clock: Arc<dyn access::Clock>,
    ) -> Result<Relay, RelayError> {
        config.validate()?;
        let id = identity::load(&config)?;
        let keys = TokenKeys::new(&id.signing_pkcs8, &config.domain)?;
        let revocations = token::Revocations::load(&config.data_dir)?;
        let access = access::Access::new(&config, clock)?;
        let fallback = certs::Cert::from_der(id.certs.clone(), id.key.clone_key())?;
        let store = Arc::new(certs::CertStore::new(&config, fallback.key)?);
        let acme = store.source() == config::CertSource::Acme;
        if acme {
            store.want(&token::normalize_host(&config.domain));
        }
        let https_tls = http::tls_config(
            store.clone(),
            acme && config.tls.acme_challenge == config::AcmeChallenge::TlsAlpn01,
        )
        .map_err(|e| RelayError::Key(format!("https certificate: {e}")))?;
        let mut tunnel_tls = http::tls_config(store.clone(), false)
            .map_err(|e| RelayError::Key(format!("tunnel certificate: {e}")))?;
        tunnel_tls.alpn_protocols.clear();
        let bind = |addr: SocketAddr| async move {
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| RelayError::Bind {
                    addr: format!("tcp {addr}"),
                    error: source,
                })
        };
        let https = bind(config.listen.https).await?;
        let http = bind(config.listen.http).await?;
        let admin = bind(config.listen.admin).await?;
        let admin_token = admin::load_or_create_token(&config)?;
        let admin_tls = if config.admin_over_tls() {
            Some(admin::tls_config(&id).map_err(|e| RelayError::Key(format!("admin TLS: {e}")))?)
        } else {
            None
        };
        let https_port = https
            .local_addr()
            .map_or(config.listen.https.port(), |a| a.port());
        let quic_settings = config.quic.settings();
        let server = if acme {
            // Agents verify an ACME relay with the web PKI: the certificate of `domain`.
            proto::transport::quic::server_config_with_resolver(
                Arc::new(certs::AgentCert::new(store.clone(), &config.domain)),
                &quic_settings,
            )?
        } else {
            proto::transport::quic::server_config(
                id.certs.clone(),
                id.key.clone_key(),
                &quic_settings,
            )?
        };
        let socket = proto::transport::quic::udp_socket(config.listen.quic).map_err(|source| {
            RelayError::Bind {
                addr: format!("udp {}", config.listen.quic),
                error: source,
            }
        })?;
        let endpoint = quinn::Endpoint::new(
            proto::transport::quic::endpoint_config(&id.reset_key),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|source| RelayError::Bind {
            addr: format!("udp {}", config.listen.quic),
            error: source,
        })?;
        let udp = UdpMetrics::default();
        let config_pending_handshakes = config.limits.pending_handshakes;
        Ok(Relay {
            shared: Arc::new(Shared {
                live: std::sync::RwLock::new(Arc::new(config.clone())),
                config,
                keys,
                revocations,
                registry: Registry::default(),
                routes: dashmap::DashMap::new(),
                offline: dashmap::DashMap::new(),
                https_port,
                tunnel_tls: Arc::new(tunnel_tls),
                metrics: metrics::Metrics::default().with_udp(udp.clone()),
                certs: store,
                udp,
                access,
                agent_handshakes: Arc::new(tokio::sync::Semaphore::new(config_pending_handshakes)),
                conns: conns::Conns::default(),
            }),
            endpoint,
            https,
            https_tls: Arc::new(https_tls),
            http,
            admin,
            admin_token,
            admin_tls,
            fingerprint: id.fingerprint,
        })
    }

    /// The QUIC address agents dial.
    pub fn quic_addr(&self) -> SocketAddr {
        self.endpoint
            .local_addr()
            .unwrap_or(self.shared.config.listen.quic)
    }

    /// The HTTPS address visitors use.
    pub fn https_addr(&self) -> SocketAddr {
        self.https
            .local_addr()
            .unwrap_or(self.shared.config.listen.https)
    }

    /// The plain-HTTP address (redirects, ACME http-01).
    pub fn http_addr(&self) -> SocketAddr {
        self.http
            .local_addr()
            .unwrap_or(self.shared.config.listen.http)
    }

    /// The admin API address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .unwrap_or(self.shared.config.listen.admin)
    }

    /// The admin API's bearer token.
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }

    /// The development CA visitors can trust (`--cacert`), when the relay uses one.
    pub fn dev_ca(&self) -> Option<std::path::PathBuf> {
        (self.shared.certs.source() == config::CertSource::DevCa)
            .then(|| self.shared.config.data_dir.join("dev-ca.crt"))
    }

    /// `sha256:` fingerprint of the certificate agents see.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// The token signer (for `periscope relay --dev` printing a ready token, and tests).
    pub fn keys(&self) -> &TokenKeys {
        &self.shared.keys
    }

    /// A handle that applies a changed relay.toml while the relay runs ([`reload`]).
    pub fn reloader(&self) -> Reloader {
        Reloader {
            shared: self.shared.clone(),
        }
    }

    /// Live agent sessions.
    pub fn registry(&self) -> &Registry {
        &self.shared.registry
    }

    /// Per-tunnel UDP counters (flows, packets and bytes each way, drops by reason); the
    /// handle stays valid while the relay runs.
    pub fn udp_metrics(&self) -> UdpMetrics {
        self.shared.udp.clone()
    }

    /// Serve until `shutdown` is cancelled, then drain and close.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), RelayError> {
        let tracker = TaskTracker::new();
        let https_addr = self.https_addr();
        let quic_addr = self.quic_addr();
        let self_http = self.http_addr();
        let admin_addr = self.admin_addr();
        let shared = self.shared.clone();
        tracker.spawn(sweeper(shared.clone(), shutdown.clone()));
        let handshakes = shared.agent_handshakes.clone();
        tracker.spawn(http::serve(
            shared.clone(),
            self.https,
            self.https_tls,
            shutdown.clone(),
            tracker.clone(),
        ));
        if self.admin_tls.is_some() {
            tracing::info!(admin = %admin_addr, fingerprint = %self.fingerprint,
                "admin API over TLS with the relay's certificate (check it against this fingerprint, or curl --cacert DATA_DIR/self-signed.crt)");
        }
        tracker.spawn(admin::serve(
            shared.clone(),
            self.admin,
            self.admin_tls,
            self.admin_token,
            shutdown.clone(),
        ));
        tracker.spawn(http::plain::serve(
            shared.clone(),
            self.http,
            shutdown.clone(),
            tracker.clone(),
        ));
        if shared.certs.source() == config::CertSource::Acme {
            tracker.spawn(acme::run(shared.clone(), shutdown.clone()));
        }
        tracing::info!(quic = %quic_addr, https = %https_addr, http = %self_http, admin = %admin_addr, fingerprint = %self.fingerprint, "relay ready");
        loop {
            let incoming = tokio::select! {
                _ = shutdown.cancelled() => break,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => break,
                },
            };
            let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                tracing::warn!(remote = %incoming.remote_address(), "too many agent handshakes in progress; refusing");
                incoming.refuse();
                continue;
            };
            let span = tracing::info_span!("agent_conn", remote = %incoming.remote_address());
            let shared = shared.clone();
            let shutdown = shutdown.clone();
            tracker.spawn(
                session::handle_incoming(shared, incoming, shutdown, permit).instrument(span),
            );
        }
        tracing::info!("relay shutting down: telling agents to go away and draining");
        tracker.close();
        let grace = self.shared.config.limits.shutdown_grace + Duration::from_secs(1);
        if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
            tracing::warn!("some connections did not finish within the shutdown grace period");
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(proto::codes::CLOSE_SHUTDOWN),
            b"relay shutting down",
        );
        let _ = tokio::time::timeout(Duration::from_secs(1), self.endpoint.wait_idle()).await;
        Ok(())
    }
}

/// Every second: pick up revocations written by `periscope token revoke` (and `share
/// revoke`), the users file and the ban list; close sessions whose token was revoked or has
/// expired; forget expired visitor sessions and bans.
async fn sweeper(shared: Arc<Shared>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Err(e) = shared.revocations.reload_if_changed() {
            tracing::warn!("cannot read the revocation list: {e}");
        }
        access::sweep(&shared);
        let now = token::unix_now(std::time::SystemTime::now());
        shared.registry.close_where(|s| {
            if shared.revocations.contains(&s.jti) {
                Some((proto::codes::CLOSE_REVOKED, "token revoked"))
            } else if now > s.exp.saturating_add(token::LEEWAY_SECS) {
                Some((proto::codes::CLOSE_EXPIRED, "token expired"))
            } else {
                None
            }
        });
    }
}

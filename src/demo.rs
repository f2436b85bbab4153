//! `periscope demo` as a library: a relay (self-signed certificate, data in a temporary
//! directory), an agent connected to it over QUIC, and the built-in [test camera](crate::camera)
//! published as the http tunnel `cam`, all in this process on loopback. The command
//! (`cmd::demo`) and the end-to-end tests both start it through [`start`].

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use agent::{
    config::{Kind, TunnelConfig},
    Agent, AgentConfig, Status,
};
use anyhow::Context;
use relay::{config::AccessRule, IssueRequest, Relay, RelayConfig, RelayError};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::camera::Camera;

/// HTTPS port the demo tries first (that of `periscope relay --dev`).
pub const DEFAULT_HTTPS_PORT: u16 = 8443;
/// Name of the camera's http tunnel: it is served at `cam.DOMAIN`.
pub const TUNNEL: &str = "cam";
/// The demo's visitor account; its password is new at every start.
pub const USER: &str = "demo";
/// How long the demo's share link opens the camera without a login.
const SHARE_TTL: Duration = Duration::from_secs(24 * 3600);
/// How long the agent may take to connect before the demo gives up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);
/// How long stopping may take before tasks are abandoned.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What to start.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// HTTPS port on 127.0.0.1: exactly this one when set (0 = any); otherwise
    /// [`DEFAULT_HTTPS_PORT`] if it is free, else any free port.
    pub https_port: Option<u16>,
    /// The relay's domain; the camera is at `cam.DOMAIN`. `localhost` for the command (browsers
    /// resolve `*.localhost` to loopback without /etc/hosts).
    pub domain: String,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            https_port: None,
            domain: "localhost".into(),
        }
    }
}

/// A running demo. Everything stops when the token given to [`start`] is cancelled; then
/// [`Demo::wait`] returns once every part has finished, and the data directory is removed.
#[derive(Debug)]
pub struct Demo {
    /// The URL to open, `https://cam.DOMAIN:PORT`.
    pub url: String,
    /// The camera's public hostname, `cam.DOMAIN`.
    pub host: String,
    /// The relay's HTTPS edge.
    pub https: SocketAddr,
    /// The relay's QUIC address (the agent's side).
    pub quic: SocketAddr,
    /// The relay certificate's fingerprint, pinned by the agent.
    pub fingerprint: String,
    /// The development CA (PEM) that signed the edge certificate of `host`.
    pub cert_file: PathBuf,
    /// The relay's status page with its admin token: `http://127.0.0.1:PORT/#TOKEN`.
    pub admin_url: String,
    /// The camera's HTTP origin (direct, not through the relay).
    pub camera_http: SocketAddr,
    /// The camera's UDP echo (direct).
    pub camera_udp: SocketAddr,
    /// The UDP echo through the relay's udp tunnel.
    pub udp: SocketAddr,
    /// The password of [`USER`] (the edge asks for a login, as a real relay does; HTTP Basic
    /// works too, for curl).
    pub password: String,
    /// A share link that opens the camera without a login for a day.
    pub share_url: String,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    camera: Camera,
    _dir: tempfile::TempDir,
}

/// Start relay, camera and agent; return once the agent is connected and the camera's URL
/// serves. On error everything already started is stopped.
pub async fn start(opts: DemoOptions, shutdown: CancellationToken) -> anyhow::Result<Demo> {
    let token = shutdown.child_token();
    let tracker = TaskTracker::new();
    let r = start_parts(&opts, &token, &tracker).await;
    if r.is_err() {
        token.cancel();
        tracker.close();
        let _ = tokio::time::timeout(STOP_TIMEOUT, tracker.wait()).await;
    }
    r
}

async fn start_parts(
    opts: &DemoOptions,
    token: &CancellationToken,
    tracker: &TaskTracker,
) -> anyhow::Result<Demo> {
    let dir = tempfile::Builder::new()
        .prefix("periscope-demo-")
        .tempdir()
        .context("creating a temporary data directory")?;
    let camera = Camera::start(token.clone())
        .await
        .context("starting the test camera")?;
    let host = format!("{TUNNEL}.{}", opts.domain);

    let mut config = RelayConfig::dev(dir.path().join("data"));
    config.domain = opts.domain.clone();
    // The agent is in this process: any QUIC port will do, and a `relay --dev` may hold 4443.
    config.listen.quic = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.https = SocketAddr::from((
        [127, 0, 0, 1],
        opts.https_port.unwrap_or(DEFAULT_HTTPS_PORT),
    ));
    config.listen.http = SocketAddr::from(([127, 0, 0, 1], 0));
    config.listen.admin = SocketAddr::from(([127, 0, 0, 1], 0));
    config.limits.shutdown_grace = Duration::from_secs(2);
    // The camera's UDP echo goes through a udp tunnel on a port the OS says is free now.
    let udp_port = std::net::UdpSocket::bind(("127.0.0.1", 0))
        .and_then(|s| s.local_addr())
        .map(|a| a.port())
        .context("finding a free UDP port")?;
    // Private, like every hostname of a real relay: the demo user logs in on the edge's
    // login page (or with HTTP Basic, for curl).
    let password = relay::identity::random_hex(6)?;
    relay::access::users::UsersFile {
        users: vec![relay::access::users::User {
            name: USER.into(),
            hash: relay::access::users::hash_password(&password)?,
            hosts: vec![],
            disabled: false,
        }],
    }
    .save(&config.users_file())
    .context("writing the demo's users file")?;
    config.access.push(AccessRule {
        host: host.clone(),
        users: vec![USER.into()],
        basic: true,
        ..AccessRule::default()
    });
    // The echo is for any local client (no web login first, as a real relay would ask).
    config.port_access.push(relay::config::PortAccessRule {
        ports: relay::PortRange {
            lo: udp_port,
            hi: udp_port,
        },
        mode: relay::config::PortMode::Open,
        allow_ips: Vec::new(),
        deny_ips: Vec::new(),
    });
    let relay = match Relay::bind(config.clone()).await {
        Err(RelayError::Bind { addr, error })
            if opts.https_port.is_none() && addr.starts_with("tcp") =>
        {
            tracing::debug!("{addr}: {error}; using any free port");
            config.listen.https.set_port(0);
            Relay::bind(config).await
        }
        r => r,
    }
    .context("starting the relay")?;
    let https = relay.https_addr();
    let quic = relay.quic_addr();
    let fingerprint = relay.fingerprint().to_string();
    let admin_url = format!("http://{}/#{}", relay.admin_addr(), relay.admin_token());
    let cert_file = relay
        .dev_ca()
        .context("the demo relay has no development CA")?;
    let (share, _) =
        relay
            .keys()
            .issue_share(&host, "demo link", SHARE_TTL, std::time::SystemTime::now())?;
    let (agent_token, _) = relay.keys().issue(
        &IssueRequest {
            agent: "demo".into(),
            hosts: vec![host.clone()],
            tcp_ports: vec![],
            udp_ports: vec![relay::PortRange {
                lo: udp_port,
                hi: udp_port,
            }],
            ttl: Duration::from_secs(7 * 86400),
        },
        std::time::SystemTime::now(),
    )?;
    let agent = Agent::new(AgentConfig {
        relay: quic.to_string(),
        token: Some(proto::Secret::new(agent_token)),
        token_file: None,
        fingerprint: Some(fingerprint.clone()),
        ca_file: None,
        server_name: None,
        transport: Default::default(),
        // The demo relay's https port is not its QUIC port.
        relay_https: Some(https.to_string()),
        quic_probe_interval: agent::config::default_quic_probe_interval(),
        connect_timeout: Duration::from_secs(5),
        quic: Default::default(),
        tunnels: vec![
            TunnelConfig {
                hostname: Some(host.clone()),
                ..TunnelConfig::new(TUNNEL, Kind::Http, &camera.http_addr().to_string())
            },
            TunnelConfig {
                remote_port: Some(udp_port),
                ..TunnelConfig::new("echo", Kind::Udp, &camera.udp_addr().to_string())
            },
        ],
    })
    .await
    .context("starting the agent")?;
    // On shutdown the agent stops first, then the relay: the agent leaves instead of
    // seeing its relay vanish and logging a lost connection.
    let agent_done = CancellationToken::new();
    let relay_stop = CancellationToken::new();
    tracker.spawn({
        let (token, agent_done, relay_stop) =
            (token.clone(), agent_done.clone(), relay_stop.clone());
        async move {
            token.cancelled().await;
            let _ = tokio::time::timeout(Duration::from_secs(3), agent_done.cancelled()).await;
            relay_stop.cancel();
        }
    });
    tracker.spawn({
        let relay_stop = relay_stop.clone();
        async move {
            if let Err(e) = relay.run(relay_stop).await {
                tracing::error!("demo relay: {e}");
            }
        }
        .instrument(tracing::info_span!("relay"))
    });

    let mut status = agent.status();
    tracker.spawn({
        let token = token.clone();
        let agent_done = agent_done.clone();
        async move {
            if let Err(e) = agent.run(token).await {
                tracing::error!("demo agent: {e}");
            }
            agent_done.cancel();
        }
        .instrument(tracing::info_span!("agent"))
    });
    tracker.close();

    let connected = tokio::time::timeout(
        CONNECT_TIMEOUT,
        status.wait_for(|s| matches!(s, Status::Connected { .. } | Status::Rejected { .. })),
    )
    .await
    .ok()
    .and_then(|r| r.ok().map(|s| s.clone()));
    let url = match connected {
        Some(Status::Connected { public, .. }) => public
            .into_iter()
            .find(|(name, _)| name == TUNNEL)
            .map(|(_, url)| url)
            .unwrap_or_else(|| format!("https://{host}:{}", https.port())),
        Some(Status::Rejected { reason, detail }) => {
            anyhow::bail!("the relay refused the demo agent: {reason:?}: {detail}")
        }
        _ => anyhow::bail!(
            "the demo agent did not connect within {}s (status: {:?})",
            CONNECT_TIMEOUT.as_secs(),
            *status.borrow()
        ),
    };
    Ok(Demo {
        share_url: format!("{url}/.periscope/share?t={share}"),
        password,
        url,
        host,
        https,
        quic,
        fingerprint,
        cert_file,
        admin_url,
        camera_http: camera.http_addr(),
        camera_udp: camera.udp_addr(),
        udp: SocketAddr::from(([127, 0, 0, 1], udp_port)),
        shutdown: token.clone(),
        tracker: tracker.clone(),
        camera,
        _dir: dir,
    })
}

impl Demo {
    /// The short box `periscope demo` prints.
    pub fn banner(&self) -> String {
        let port = self.https.port();
        let lines = [
            "periscope demo: relay + agent + test camera, loopback only".to_string(),
            String::new(),
            format!("open    {}/", self.url),
            "        (local development CA: accept the browser's warning)".to_string(),
            format!("login   {USER} / {}", self.password),
            format!(
                "check   curl -k -u {USER}:{pw} --resolve {h}:{port}:127.0.0.1 https://{h}:{port}/",
                h = self.host,
                pw = self.password
            ),
            format!(
                "udp     echo at {} (try: nc -u {} {})",
                self.udp,
                self.udp.ip(),
                self.udp.port()
            ),
            format!("status  {}", self.admin_url),
            "stop    Ctrl-C".to_string(),
        ];
        let width = lines.iter().map(|l| l.chars().count()).max().unwrap_or(0);
        let mut out = format!("┌{}┐\n", "─".repeat(width + 2));
        for l in &lines {
            out.push_str(&format!("│ {l:<width$} │\n"));
        }
        out.push_str(&format!("└{}┘\n", "─".repeat(width + 2)));
        out.push_str(&format!(
            "share link (no login needed, valid {} h): {}\n",
            SHARE_TTL.as_secs() / 3600,
            self.share_url
        ));
        out
    }

    /// Wait until the shutdown token fires, then until relay, agent and camera have stopped
    /// (at most a few seconds); the temporary data directory is removed.
    pub async fn wait(self) {
        self.shutdown.cancelled().await;
        let done = async {
            self.tracker.wait().await;
            self.camera.wait().await;
        };
        if tokio::time::timeout(STOP_TIMEOUT, done).await.is_err() {
            tracing::warn!("the demo did not stop within {}s", STOP_TIMEOUT.as_secs());
        }
    }

    /// Stop everything now and wait for it.
    pub async fn stop(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

//! Test kit: a relay (on its own runtime, so a test can kill it like `kill -9`), agents, and
//! small TCP targets, all on ephemeral loopback ports.

#![allow(dead_code, unreachable_pub)]

pub mod nvr;
pub use nvr::Nvr;

use std::{
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use agent::{config::TunnelConfig, Agent, AgentConfig, Status};
use relay::{IssueRequest, PortRange, Relay, RelayConfig};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
};
use tokio_util::sync::CancellationToken;

/// Poll `cond` every 20 ms until it holds or `secs` pass.
#[macro_export]
macro_rules! assert_eventually {
    ($cond:expr, $secs:expr, $($msg:tt)+) => {{
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs_f64($secs as f64);
        loop {
            if $cond { break; }
            if std::time::Instant::now() > deadline { panic!($($msg)+); }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }};
}

/// Log to the test's captured output; `PERISCOPE_LOG=debug cargo test` for more.
/// The relay's warnings also reach its `/api/errors`, as in the binary.
pub fn trace() {
    use tracing_subscriber::{layer::SubscriberExt, util::SubscriberInitExt, Layer};
    let filter = std::env::var("PERISCOPE_LOG").unwrap_or_else(|_| "info".into());
    let _ = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_test_writer()
                .with_filter(tracing_subscriber::EnvFilter::new(filter)),
        )
        .with(
            relay::events::RecentErrors.with_filter(tracing_subscriber::filter::LevelFilter::WARN),
        )
        .try_init();
}

/// Log lines captured by [`capture_logs`].
pub struct LogCapture {
    buf: Arc<std::sync::Mutex<Vec<u8>>>,
    _guard: tracing::subscriber::DefaultGuard,
}

impl LogCapture {
    /// Everything logged so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.buf.lock().unwrap()).into_owned()
    }
}

/// Capture what is logged on this thread (info and up) until the capture is dropped. In a
/// `#[tokio::test]` that is the test itself and the agents it started (they run on the test's
/// runtime), not the relay (its own runtime).
pub fn capture_logs() -> LogCapture {
    #[derive(Clone)]
    struct Sink(Arc<std::sync::Mutex<Vec<u8>>>);
    impl std::io::Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let buf = Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = Sink(buf.clone());
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::INFO)
        .with_ansi(false)
        .with_writer(move || sink.clone())
        .finish();
    LogCapture {
        buf,
        _guard: tracing::subscriber::set_default(subscriber),
    }
}

/// A relay running on its own single-threaded runtime.
pub struct TestRelay {
    pub addr: SocketAddr,
    pub https: SocketAddr,
    /// The plain-HTTP listener (redirects, ACME http-01).
    pub http: SocketAddr,
    /// The admin API and its bearer token.
    pub admin: SocketAddr,
    pub admin_token: String,
    pub fingerprint: String,
    pub config: RelayConfig,
    /// The relay's clock (bans, sessions, share links): `clock.advance(d)` moves it forward.
    pub clock: Arc<relay::access::OffsetClock>,
    keys: relay::TokenKeys,
    udp: relay::UdpMetrics,
    /// Applies a changed config to the running relay (hot reload).
    pub reloader: relay::Reloader,
    rt: Option<tokio::runtime::Runtime>,
    shutdown: CancellationToken,
    done: Option<tokio::sync::oneshot::Receiver<()>>,
    _dir: Option<tempfile::TempDir>,
}

impl TestRelay {
    /// A fresh relay with its own data directory.
    pub async fn start() -> TestRelay {
        trace();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Self::start_in(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
        r._dir = Some(dir);
        r
    }

    /// A fresh relay whose config `f` adjusts.
    pub async fn start_configured(f: impl FnOnce(&mut RelayConfig)) -> TestRelay {
        trace();
        let dir = tempfile::tempdir().expect("tempdir");
        let mut r = Self::start_with(dir.path(), "127.0.0.1:0".parse().unwrap(), f).await;
        r._dir = Some(dir);
        r
    }

    /// A relay using `data_dir` and `quic` (to restart one on the same port and identity).
    pub async fn start_in(data_dir: &Path, quic: SocketAddr) -> TestRelay {
        Self::start_with(data_dir, quic, |_| {}).await
    }

    async fn start_with(
        data_dir: &Path,
        quic: SocketAddr,
        f: impl FnOnce(&mut RelayConfig),
    ) -> TestRelay {
        let mut config = RelayConfig::dev(data_dir.join("data"));
        // Two labels under the wildcard: webpki refuses `*.localhost`.
        config.domain = "relay.localhost".into();
        config.listen.quic = quic;
        config.listen.https = "127.0.0.1:0".parse().unwrap();
        config.listen.http = "127.0.0.1:0".parse().unwrap();
        config.listen.admin = "127.0.0.1:0".parse().unwrap();
        config.limits.shutdown_grace = Duration::from_secs(1);
        // Every test visitor is 127.0.0.1: the per-address cap (64) would bite load tests.
        config.limits.connections_per_ip = 4096;
        config.limits.new_connections_per_second = 0;
        // Raw ports are closed until a web login by default; the transport tests are not about
        // that, so the kit opens them. tests/e2e/access.rs clears this rule to test the default.
        config.port_access.push(relay::config::PortAccessRule {
            ports: PortRange { lo: 1, hi: 65535 },
            mode: relay::config::PortMode::Open,
            allow_ips: vec![],
            deny_ips: vec![],
        });
        f(&mut config);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("runtime");
        let shutdown = CancellationToken::new();
        let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
        let (done_tx, done_rx) = tokio::sync::oneshot::channel();
        let cfg = config.clone();
        let token = shutdown.clone();
        let clock = Arc::new(relay::access::OffsetClock::default());
        let relay_clock: Arc<dyn relay::access::Clock> = clock.clone();
        rt.spawn(async move {
            let relay = Relay::bind_with_clock(cfg, relay_clock)
                .await
                .expect("relay bind");
            let keys = relay.keys().clone();
            let _ = ready_tx.send((
                [
                    relay.quic_addr(),
                    relay.https_addr(),
                    relay.http_addr(),
                    relay.admin_addr(),
                ],
                relay.fingerprint().to_string(),
                relay.admin_token().to_string(),
                keys,
                relay.udp_metrics(),
                relay.reloader(),
            ));
            relay.run(token).await.expect("relay run");
            let _ = done_tx.send(());
        });
        let ([addr, https, http, admin], fingerprint, admin_token, keys, udp, reloader) =
            ready_rx.await.expect("relay started");
        config.listen.quic = addr;
        TestRelay {
            addr,
            https,
            http,
            admin,
            admin_token,
            fingerprint,
            config,
            clock,
            keys,
            udp,
            reloader,
            rt: Some(rt),
            shutdown,
            done: Some(done_rx),
            _dir: None,
        }
    }

    /// A token for `agent` allowing `tcp_ports`, valid for an hour.
    pub fn token(&self, agent: &str, tcp_ports: &[u16]) -> String {
        self.token_at(
            agent,
            tcp_ports,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .0
    }

    /// A token for `agent` allowing exactly the hostnames `hosts`, valid for an hour.
    pub fn token_hosts(&self, agent: &str, hosts: &[&str]) -> String {
        self.keys
            .issue(
                &IssueRequest {
                    agent: agent.into(),
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    tcp_ports: vec![],
                    udp_ports: vec![],
                    ttl: Duration::from_secs(3600),
                },
                SystemTime::now(),
            )
            .expect("issue token")
            .0
    }

    /// A token for `agent` allowing `tcp_ports` and `udp_ports`, valid for an hour.
    pub fn token_udp(&self, agent: &str, tcp_ports: &[u16], udp_ports: &[u16]) -> String {
        self.token_full(
            agent,
            tcp_ports,
            udp_ports,
            SystemTime::now(),
            Duration::from_secs(3600),
        )
        .0
    }

    /// Counters of `agent`'s udp tunnel `tunnel`.
    pub fn udp_stats(&self, agent: &str, tunnel: &str) -> relay::UdpStatsSnapshot {
        self.udp.get(agent, tunnel).unwrap_or_default()
    }

    /// A token issued at `now` with lifetime `ttl`; returns the token and its id.
    pub fn token_at(
        &self,
        agent: &str,
        tcp_ports: &[u16],
        now: SystemTime,
        ttl: Duration,
    ) -> (String, String) {
        self.token_full(agent, tcp_ports, &[], now, ttl)
    }

    fn token_full(
        &self,
        agent: &str,
        tcp_ports: &[u16],
        udp_ports: &[u16],
        now: SystemTime,
        ttl: Duration,
    ) -> (String, String) {
        let (t, c) = self
            .keys
            .issue(
                &IssueRequest {
                    agent: agent.into(),
                    hosts: vec![format!("{agent}.relay.localhost")],
                    tcp_ports: tcp_ports
                        .iter()
                        .map(|&p| PortRange { lo: p, hi: p })
                        .collect(),
                    udp_ports: udp_ports
                        .iter()
                        .map(|&p| PortRange { lo: p, hi: p })
                        .collect(),
                    ttl,
                },
                now,
            )
            .expect("issue token");
        (t, c.jti)
    }

    /// A share link token for `host`, valid `ttl` from the relay's clock; returns it and its id.
    pub fn share_token(&self, host: &str, ttl: Duration) -> (String, String) {
        use relay::access::Clock;
        let (t, c) = self
            .keys
            .issue_share(host, "test", ttl, self.clock.now())
            .expect("issue share link");
        (t, c.jti)
    }

    /// The data directory (keys, revocations).
    pub fn data_dir(&self) -> PathBuf {
        self.config.data_dir.clone()
    }

    /// Graceful stop: GoAway, drain, close. Returns once the runtime is gone, so the relay's
    /// sockets are closed and a restart can bind the same ports.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(done) = self.done.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
        self.kill_runtime().await;
    }

    /// Like `kill -9`: every task and socket of the relay vanishes without a word. Returns
    /// once the runtime is gone, so its sockets are closed and the ports free again.
    pub async fn kill(mut self) {
        self.kill_runtime().await;
    }

    async fn kill_runtime(&mut self) {
        if let Some(rt) = self.rt.take() {
            tokio::task::spawn_blocking(move || rt.shutdown_timeout(Duration::from_secs(5)))
                .await
                .expect("runtime shut down");
        }
    }
}

impl Drop for TestRelay {
    fn drop(&mut self) {
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

/// Write a users file for `config` before the relay starts: `(name, password, hosts)`.
pub fn with_users(config: &mut RelayConfig, users: &[(&str, &str, &[&str])]) {
    use relay::access::users::{hash_password, User, UsersFile};
    let file = UsersFile {
        users: users
            .iter()
            .map(|(name, pw, hosts)| User {
                name: (*name).into(),
                hash: hash_password(pw).expect("hash"),
                hosts: hosts.iter().map(|h| (*h).into()).collect(),
                disabled: false,
            })
            .collect(),
    };
    file.save(&config.users_file()).expect("write users file");
}

/// Builds an agent config against a test relay.
pub struct AgentBuilder {
    config: AgentConfig,
}

impl AgentBuilder {
    pub fn new(relay: &TestRelay, token: &str) -> Self {
        AgentBuilder {
            config: AgentConfig {
                relay: relay.addr.to_string(),
                token: Some(proto::Secret::new(token)),
                token_file: None,
                fingerprint: Some(relay.fingerprint.clone()),
                ca_file: None,
                server_name: None,
                // `PERISCOPE_TEST_TRANSPORT=tcp cargo test --test e2e` runs every test over
                // the TCP fallback (or `quic`); tests about one transport set it themselves.
                transport: match std::env::var("PERISCOPE_TEST_TRANSPORT").as_deref() {
                    Ok("tcp") => agent::config::TransportChoice::Tcp,
                    Ok("quic") => agent::config::TransportChoice::Quic,
                    _ => agent::config::TransportChoice::Auto,
                },
                // The test relay's https port differs from its QUIC port.
                relay_https: Some(relay.https.to_string()),
                quic_probe_interval: agent::config::default_quic_probe_interval(),
                connect_timeout: Duration::from_secs(5),
                quic: Default::default(),
                tunnels: vec![],
            },
        }
    }

    pub fn tcp(mut self, name: &str, target: SocketAddr, remote_port: u16) -> Self {
        self.config.tunnels.push(TunnelConfig {
            remote_port: Some(remote_port),
            ..TunnelConfig::new(name, agent::config::Kind::Tcp, &target.to_string())
        });
        self
    }

    pub fn udp(mut self, name: &str, target: SocketAddr, remote_port: u16) -> Self {
        self.config.tunnels.push(TunnelConfig {
            remote_port: Some(remote_port),
            ..TunnelConfig::new(name, agent::config::Kind::Udp, &target.to_string())
        });
        self
    }

    pub fn http(mut self, name: &str, target: SocketAddr) -> Self {
        self.config.tunnels.push(TunnelConfig::new(
            name,
            agent::config::Kind::Http,
            &target.to_string(),
        ));
        self
    }

    /// Adjust the last tunnel added.
    pub fn tunnel(mut self, f: impl FnOnce(&mut TunnelConfig)) -> Self {
        if let Some(t) = self.config.tunnels.last_mut() {
            f(t);
        }
        self
    }

    pub fn proxy_v2(mut self) -> Self {
        if let Some(t) = self.config.tunnels.last_mut() {
            t.proxy_protocol = Some(agent::config::ProxyProtocol::V2);
        }
        self
    }

    /// Dial with this transport (`auto`, `quic` or `tcp`).
    pub fn transport(mut self, t: agent::config::TransportChoice) -> Self {
        self.config.transport = t;
        self
    }

    pub fn configure(mut self, f: impl FnOnce(&mut AgentConfig)) -> Self {
        f(&mut self.config);
        self
    }

    pub async fn start(self) -> TestAgent {
        let agent = Agent::new(self.config.clone()).await.expect("agent config");
        let status = agent.status();
        let reloader = agent.reloader();
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(agent.run(shutdown.clone()));
        TestAgent {
            status,
            config: self.config,
            reloader,
            shutdown,
            handle: Some(handle),
        }
    }
}

pub struct TestAgent {
    pub status: watch::Receiver<Status>,
    /// The config it started with.
    pub config: AgentConfig,
    /// Applies a changed config to the running agent (hot reload).
    pub reloader: agent::Reloader,
    shutdown: CancellationToken,
    handle: Option<tokio::task::JoinHandle<Result<(), agent::AgentError>>>,
}

impl TestAgent {
    /// Wait until the status satisfies `f` (10 s at most); returns it.
    pub async fn wait_for(&mut self, what: &str, f: impl Fn(&Status) -> bool) -> Status {
        let r = tokio::time::timeout(Duration::from_secs(10), self.status.wait_for(|s| f(s)))
            .await
            .map(|r| r.map(|s| s.clone()));
        match r {
            Ok(Ok(s)) => s,
            _ => panic!(
                "agent never reached `{what}`; status: {:?}",
                *self.status.borrow()
            ),
        }
    }

    /// Wait until a connection attempt has failed; returns why.
    pub async fn connect_error(&mut self) -> String {
        let s = self
            .wait_for("a failed attempt", |s| {
                matches!(
                    s,
                    Status::Connecting {
                        last_error: Some(_),
                        ..
                    }
                )
            })
            .await;
        match s {
            Status::Connecting {
                last_error: Some(e),
                ..
            } => e,
            other => unreachable!("{other:?}"),
        }
    }

    pub async fn connected(&mut self) -> Status {
        self.wait_for("connected", |s| matches!(s, Status::Connected { .. }))
            .await
    }

    /// Wait for a new session (a different id than `old`).
    pub async fn reconnected(&mut self, old: u64) -> Status {
        self.wait_for(
            "reconnected",
            |s| matches!(s, Status::Connected { session, .. } if *session != old),
        )
        .await
    }

    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(h) = self.handle.take() {
            let _ = tokio::time::timeout(Duration::from_secs(10), h).await;
        }
    }
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

pub fn session_of(s: &Status) -> u64 {
    match s {
        Status::Connected { session, .. } => *session,
        _ => 0,
    }
}

/// A relay and an agent publishing `target` as a tcp tunnel on `port`, connected.
pub struct Tunnel {
    pub relay: TestRelay,
    pub agent: TestAgent,
    pub port: u16,
}

/// Start a relay and an agent with one tcp tunnel to `target`; wait until it is up.
pub async fn tcp_tunnel(target: SocketAddr) -> Tunnel {
    tcp_tunnel_over(target, agent::config::TransportChoice::Auto).await
}

/// Like [`tcp_tunnel`], with the agent on transport `t`.
pub async fn tcp_tunnel_over(target: SocketAddr, t: agent::config::TransportChoice) -> Tunnel {
    let relay = TestRelay::start().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("t", target, port)
        .transport(t)
        .start()
        .await;
    agent.connected().await;
    Tunnel { relay, agent, port }
}

impl Tunnel {
    pub async fn stop(self) {
        self.agent.stop().await;
        self.relay.stop().await;
    }
}

/// A free port (TCP and UDP) on 127.0.0.1 below Linux's ephemeral range (32768+): a test's client socket
/// could otherwise connect to itself on a closed port, or squat a port a tunnel will bind.
pub fn free_port() -> u16 {
    use rand::Rng;
    loop {
        let p = rand::thread_rng().gen_range(20000..32000);
        if std::net::TcpListener::bind(("127.0.0.1", p)).is_ok()
            && std::net::UdpSocket::bind(("127.0.0.1", p)).is_ok()
        {
            return p;
        }
    }
}

/// Serve `handler` for each connection on an ephemeral port; the task ends with the test.
pub async fn tcp_server<F, Fut>(handler: F) -> SocketAddr
where
    F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = l.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            tokio::spawn(handler(s));
        }
    });
    addr
}

/// Echo server: copies back until EOF, then half-closes.
pub async fn echo_server() -> SocketAddr {
    tcp_server(|mut s| async move {
        let (mut r, mut w) = s.split();
        let _ = tokio::io::copy(&mut r, &mut w).await;
        let _ = w.shutdown().await;
    })
    .await
}

/// Connect to a tunnel's public port on the test relay.
pub async fn visit(port: u16) -> TcpStream {
    TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to tunnel")
}

/// Send `msg`, half-close, read everything back.
pub async fn roundtrip(port: u16, msg: &[u8]) -> Vec<u8> {
    let mut s = visit(port).await;
    s.write_all(msg).await.expect("write");
    s.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .expect("reply in time")
        .expect("read");
    out
}

/// HTTPS client for the relay's edge: trusts the relay's development CA, connects
/// with SNI `sni`, speaks HTTP/2 when `h2`, else HTTP/1.1.
pub async fn https_request(
    relay: &TestRelay,
    sni: &str,
    h2: bool,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    https_request_to(
        relay.https,
        &[
            relay.data_dir().join("dev-ca.crt"),
            relay.data_dir().join("self-signed.crt"),
        ],
        sni,
        h2,
        req,
    )
    .await
}

/// Like [`https_request`], to any edge at `addr`, trusting the PEM files in `trust`.
pub async fn https_request_to(
    addr: SocketAddr,
    trust: &[PathBuf],
    sni: &str,
    h2: bool,
    req: http::Request<http_body_util::Full<bytes::Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let stream = tls_connect_to(addr, trust, sni, if h2 { b"h2" } else { b"http/1.1" }).await;
    let io = TokioIo::new(stream);
    if h2 {
        let (mut send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
            .await
            .unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    } else {
        let (mut send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
        tokio::spawn(conn);
        send.send_request(req).await.unwrap()
    }
}

/// TLS to the relay's HTTPS edge with SNI `sni` and one ALPN protocol, trusting the relay's
/// development CA and self-signed certificate.
pub async fn tls_connect(
    relay: &TestRelay,
    sni: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    tls_connect_to(
        relay.https,
        &[
            relay.data_dir().join("dev-ca.crt"),
            relay.data_dir().join("self-signed.crt"),
        ],
        sni,
        alpn,
    )
    .await
}

/// TLS to `addr` with SNI `sni` and one ALPN protocol, trusting the certificates in `trust`
/// (PEM files).
pub async fn tls_connect_to(
    addr: SocketAddr,
    trust: &[PathBuf],
    sni: &str,
    alpn: &[u8],
) -> tokio_rustls::client::TlsStream<TcpStream> {
    let mut roots = tokio_rustls::rustls::RootCertStore::empty();
    for file in trust {
        let pem = std::fs::read(file).unwrap();
        roots
            .add(tokio_rustls::rustls::pki_types::CertificateDer::from(
                pem::parse(pem).unwrap().into_contents(),
            ))
            .unwrap();
    }
    let mut tls = tokio_rustls::rustls::ClientConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tls.alpn_protocols = vec![alpn.to_vec()];
    let tcp = TcpStream::connect(addr).await.unwrap();
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    let stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
        .connect(name, tcp)
        .await
        .unwrap();
    stream
}

/// A UDP echo server on an ephemeral port; the task ends with the test's runtime.
pub async fn udp_echo_server() -> SocketAddr {
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else {
                continue;
            };
            let _ = sock.send_to(&buf[..n], from).await;
        }
    });
    addr
}

/// Send `msg` from `sock` to the relay's UDP `port` and wait up to `wait` for one answer.
pub async fn udp_ask(
    sock: &tokio::net::UdpSocket,
    port: u16,
    msg: &[u8],
    wait: Duration,
) -> Option<Vec<u8>> {
    sock.send_to(msg, ("127.0.0.1", port)).await.unwrap();
    let mut buf = vec![0u8; 65536];
    match tokio::time::timeout(wait, sock.recv(&mut buf)).await {
        Ok(Ok(n)) => Some(buf[..n].to_vec()),
        _ => None,
    }
}

/// Ask until an answer comes (UDP may lose a packet), at most 50 times.
pub async fn udp_roundtrip(sock: &tokio::net::UdpSocket, port: u16, msg: &[u8]) -> Vec<u8> {
    for _ in 0..50 {
        if let Some(r) = udp_ask(sock, port, msg, Duration::from_millis(200)).await {
            return r;
        }
    }
    panic!("no UDP answer through port {port}");
}

/// GET `path` on the admin listener with an optional bearer token: status and body.
pub async fn admin_get(
    relay: &TestRelay,
    path: &str,
    token: Option<&str>,
) -> (http::StatusCode, String) {
    admin_call(relay, "GET", path, token, "").await
}

/// `method path` (with a JSON `body` unless empty) on the admin listener: status and body.
pub async fn admin_call(
    relay: &TestRelay,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (http::StatusCode, String) {
    let tcp = TcpStream::connect(relay.admin).await.unwrap();
    admin_call_over(tcp, method, path, token, body).await
}

/// [`admin_call`] over a connection already made (plain or TLS).
pub async fn admin_call_over<S>(
    io: S,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: &str,
) -> (http::StatusCode, String)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "127.0.0.1");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if !body.is_empty() {
        req = req.header("content-type", "application/json");
    }
    let resp = send
        .send_request(
            req.body(http_body_util::Full::new(bytes::Bytes::from(
                body.to_string(),
            )))
            .unwrap(),
        )
        .await
        .unwrap();
    let status = resp.status();
    let body = http_body_util::BodyExt::collect(resp.into_body())
        .await
        .unwrap()
        .to_bytes();
    (status, String::from_utf8_lossy(&body).to_string())
}

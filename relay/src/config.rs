//! `relay.toml`: serde structs with `deny_unknown_fields`, defaults in named functions, then
//! one [`RelayConfig::validate`] pass.

use std::{
    net::{IpAddr, SocketAddr},
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::RelayError;

/// The relay's configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RelayConfig {
    /// Public domain: http tunnels get `NAME.DOMAIN`; the audience of agent tokens.
    pub domain: String,
    /// Keys, self-signed certificate, revocations.
    pub data_dir: PathBuf,
    /// Listen addresses.
    #[serde(default)]
    pub listen: ListenConfig,
    /// Certificate files (default: a self-signed certificate kept in `data_dir`).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Agent authentication.
    #[serde(default)]
    pub auth: AuthConfig,
    /// Limits and timeouts.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// QUIC transport tuning.
    #[serde(default)]
    pub quic: QuicConfig,
    /// Access rules for http hostnames. Deny by default: a hostname without a rule saying
    /// `public = true` needs a login by a user of the relay.
    #[serde(default, rename = "access", skip_serializing_if = "Vec::is_empty")]
    pub access: Vec<AccessRule>,
    /// Access rules for the public ports of tcp/udp tunnels (default for every port: `login`).
    #[serde(default, rename = "port_access", skip_serializing_if = "Vec::is_empty")]
    pub port_access: Vec<PortAccessRule>,
}

/// One `[[access]]` rule.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AccessRule {
    /// Hostname (exact, or `*.domain` for one label). An exact rule wins over a pattern.
    pub host: String,
    /// Open to everyone on the internet, without a login.
    #[serde(default)]
    pub public: bool,
    /// Users who may log in to this hostname (empty: every user whose own `hosts` allow it).
    #[serde(default)]
    pub users: Vec<String>,
    /// Accept HTTP Basic credentials of the same users (API clients, mobile apps). The edge
    /// then consumes the `Authorization` header: the recorder never sees it.
    #[serde(default)]
    pub basic: bool,
    /// Visitors from these networks skip the login.
    #[serde(default)]
    pub allow_ips: Vec<Cidr>,
    /// Visitors from these networks are refused (wins over everything).
    #[serde(default)]
    pub deny_ips: Vec<Cidr>,
}

impl AccessRule {
    /// A rule opening `host` to everyone.
    pub fn public(host: &str) -> Self {
        AccessRule {
            host: host.into(),
            public: true,
            ..AccessRule::default()
        }
    }
}

/// Who may use a tcp/udp tunnel's public port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortMode {
    /// Only addresses that hold a valid web session on a hostname of the same agent (or are
    /// in an `allow_ips` list).
    #[default]
    Login,
    /// Only addresses in `allow_ips` (this rule's or `auth.allow_ips`).
    AllowIps,
    /// Everyone (except `deny_ips` and banned addresses).
    Open,
}

/// One `[[port_access]]` rule.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortAccessRule {
    /// Port or range, e.g. `554` or `8000-8100`.
    pub ports: crate::token::PortRange,
    /// `login` (default), `allow_ips` or `open`.
    #[serde(default)]
    pub mode: PortMode,
    /// Networks allowed without a login.
    #[serde(default)]
    pub allow_ips: Vec<Cidr>,
    /// Networks refused.
    #[serde(default)]
    pub deny_ips: Vec<Cidr>,
}

/// An IPv4 or IPv6 network, written `203.0.113.0/24`, `2001:db8::/32` or a bare address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// Does the network contain `ip`? IPv4-mapped IPv6 addresses match IPv4 networks.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(n) & mask == u32::from(a) & mask
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(n) & mask == u128::from(a) & mask
            }
            _ => false,
        }
    }
}

impl std::str::FromStr for Cidr {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not an address or network like 192.168.1.0/24");
        let (a, p) = match s.trim().split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s.trim(), None),
        };
        let addr: IpAddr = a.parse().map_err(|_| bad())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match p {
            Some(p) => p.parse::<u8>().ok().filter(|&p| p <= max).ok_or_else(bad)?,
            None => max,
        };
        // `::ffff:a.b.c.d/n` is the IPv4 network `a.b.c.d/(n-96)`: visitors are compared as IPv4.
        if let (IpAddr::V6(v6), true) = (addr, prefix >= 96) {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return Ok(Cidr {
                    addr: IpAddr::V4(v4),
                    prefix: prefix - 96,
                });
            }
        }
        Ok(Cidr { addr, prefix })
    }
}

impl TryFrom<String> for Cidr {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        s.parse()
    }
}

impl From<Cidr> for String {
    fn from(c: Cidr) -> String {
        format!("{}/{}", c.addr, c.prefix)
    }
}

/// `[listen]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// TCP address of the HTTPS edge (visitors; HTTP/1.1 and HTTP/2).
    #[serde(default = "default_https")]
    pub https: SocketAddr,
    /// UDP address agents dial with QUIC.
    #[serde(default = "default_quic")]
    pub quic: SocketAddr,
    /// TCP address of the plain-HTTP listener: redirects to https and answers ACME http-01
    /// challenges.
    #[serde(default = "default_http")]
    pub http: SocketAddr,
    /// Admin API, Prometheus metrics and status page (bearer token). Plain HTTP on loopback;
    /// any other address is served only over TLS.
    #[serde(default = "default_admin")]
    pub admin: SocketAddr,
    /// Serve the admin API over TLS on loopback too (always on for other addresses).
    #[serde(default)]
    pub admin_tls: bool,
    /// IP address on which tcp/udp tunnel ports open.
    #[serde(default = "default_tunnels")]
    pub tunnels: IpAddr,
}

fn default_https() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}
fn default_quic() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 443))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], 80))
}
fn default_admin() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9090))
}
fn default_tunnels() -> IpAddr {
    IpAddr::from([0, 0, 0, 0])
}

impl Default for ListenConfig {
    fn default() -> Self {
        ListenConfig {
            https: default_https(),
            quic: default_quic(),
            http: default_http(),
            admin: default_admin(),
            admin_tls: false,
            tunnels: default_tunnels(),
        }
    }
}

/// `[tls]`: certificate files, or ACME, or (neither) a local development CA.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain (may be a wildcard for `*.DOMAIN`).
    pub cert: Option<PathBuf>,
    /// PEM private key.
    pub key: Option<PathBuf>,
    /// Turns ACME on: contact address for the certificate authority.
    pub acme_email: Option<String>,
    /// ACME directory URL (default: Let's Encrypt).
    #[serde(default = "default_acme_directory")]
    pub acme_directory: String,
    /// PEM root certificate to trust for the ACME directory's own HTTPS (private or test CAs).
    pub acme_ca_file: Option<PathBuf>,
    /// `http-01` (needs the http listener reachable on port 80) or `tls-alpn-01` (port 443 only).
    #[serde(default)]
    pub acme_challenge: AcmeChallenge,
    /// Renew an ACME certificate when less than this is left before it expires.
    #[serde(default = "default_acme_renew_before", with = "humantime_serde")]
    pub acme_renew_before: Duration,
    /// Send `Strict-Transport-Security` on https responses.
    #[serde(default = "default_true")]
    pub hsts: bool,
}

/// ACME challenge type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum AcmeChallenge {
    /// HTTP-01 on the http listener.
    #[default]
    #[serde(rename = "http-01")]
    Http01,
    /// TLS-ALPN-01 on the https listener.
    #[serde(rename = "tls-alpn-01")]
    TlsAlpn01,
}

/// Let's Encrypt's production directory.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";

fn default_acme_directory() -> String {
    LETS_ENCRYPT.into()
}
fn default_acme_renew_before() -> Duration {
    Duration::from_secs(30 * 86400)
}
fn default_true() -> bool {
    true
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            cert: None,
            key: None,
            acme_email: None,
            acme_directory: default_acme_directory(),
            acme_ca_file: None,
            acme_challenge: AcmeChallenge::default(),
            acme_renew_before: default_acme_renew_before(),
            hsts: true,
        }
    }
}

/// Where the edge's certificates come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertSource {
    /// `tls.cert` and `tls.key`.
    Files,
    /// ACME, one certificate per hostname.
    Acme,
    /// A development CA in the data directory issues one certificate per hostname.
    DevCa,
}

impl TlsConfig {
    /// Which source is configured.
    pub fn source(&self) -> CertSource {
        if self.cert.is_some() {
            CertSource::Files
        } else if self.acme_email.is_some() {
            CertSource::Acme
        } else {
            CertSource::DevCa
        }
    }
}

/// `[auth]`: agent tokens, and the visitors' logins at the edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// Ed25519 key that signs agent tokens and share links (default `DATA_DIR/relay.key`,
    /// created 0600).
    pub key_file: Option<PathBuf>,
    /// Visitor accounts (default `DATA_DIR/users.toml`), managed with `periscope user`.
    pub users_file: Option<PathBuf>,
    /// Failed logins from one address within `ban_window` that ban it.
    #[serde(default = "default_ban_after")]
    pub ban_after_failures: u32,
    /// Window in which failures are counted.
    #[serde(default = "default_ban_window", with = "humantime_serde")]
    pub ban_window: Duration,
    /// How long a ban lasts.
    #[serde(default = "default_ban_for", with = "humantime_serde")]
    pub ban_for: Duration,
    /// Bans never expire (clear them with `periscope ban clear`).
    #[serde(default)]
    pub ban_forever: bool,
    /// Lifetime of a login session.
    #[serde(default = "default_session_lifetime", with = "humantime_serde")]
    pub session_lifetime: Duration,
    /// A session unused this long ends.
    #[serde(default = "default_session_idle", with = "humantime_serde")]
    pub session_idle: Duration,
    /// Networks that skip the login on every hostname and may use every raw port.
    #[serde(default)]
    pub allow_ips: Vec<Cidr>,
    /// Networks refused everywhere (wins over everything).
    #[serde(default)]
    pub deny_ips: Vec<Cidr>,
}

fn default_ban_after() -> u32 {
    5
}
fn default_ban_window() -> Duration {
    Duration::from_secs(10 * 60)
}
fn default_ban_for() -> Duration {
    Duration::from_secs(15 * 60)
}
fn default_session_lifetime() -> Duration {
    Duration::from_secs(12 * 3600)
}
fn default_session_idle() -> Duration {
    Duration::from_secs(2 * 3600)
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            key_file: None,
            users_file: None,
            ban_after_failures: default_ban_after(),
            ban_window: default_ban_window(),
            ban_for: default_ban_for(),
            ban_forever: false,
            session_lifetime: default_session_lifetime(),
            session_idle: default_session_idle(),
            allow_ips: Vec::new(),
            deny_ips: Vec::new(),
        }
    }
}

/// `[limits]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LimitsConfig {
    /// Time an agent has to finish the QUIC handshake and send its Hello.
    #[serde(default = "default_handshake_timeout", with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// Agent connections allowed between the first packet and a verified Hello; beyond it new
    /// ones are refused, so a handshake flood cannot exhaust the relay.
    #[serde(default = "default_pending_handshakes")]
    pub pending_handshakes: usize,
    /// Time the agent has to connect to its target and answer a new stream; past it a visitor
    /// gets 504 (a tcp visitor is disconnected). The response itself may take longer.
    #[serde(default = "default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Upgraded (WebSocket) and tcp tunnel connections are closed after this long with no
    /// byte moving in either direction; never while traffic flows.
    #[serde(default = "default_idle_timeout_limit", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// A visitor's TLS handshake (https, and tcp tunnels with `tls`) must finish within this.
    #[serde(default = "default_ten_seconds", with = "humantime_serde")]
    pub visitor_handshake_timeout: Duration,
    /// A visitor's request head must arrive within this (slowloris).
    #[serde(default = "default_ten_seconds", with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Concurrent requests (streams) on one HTTP/2 visitor connection.
    #[serde(default = "default_http2_max_streams")]
    pub http2_max_streams: u32,
    /// Largest visitor request head (request line and headers) in bytes; larger is 431.
    #[serde(default = "default_max_request_head")]
    pub max_request_head: usize,
    /// Agent streams in use at once per agent: HTTP requests in flight, kept-alive connections
    /// to its recorders and tcp visitors together. Past it, an HTTP request waits up to
    /// `connect_timeout` (then 504) and a tcp visitor is refused.
    #[serde(default = "default_streams_per_agent")]
    pub streams_per_agent: usize,
    /// Open visitor connections per tcp tunnel, and requests in flight per http hostname;
    /// more are refused (tcp: closed; http: 503).
    #[serde(default = "default_connections_per_tunnel")]
    pub connections_per_tunnel: usize,
    /// Live streams (MJPEG, chunked video, event streams, WebSockets) one user may hold at
    /// once (0: no limit); more are answered 429.
    #[serde(default)]
    pub streams_per_user: usize,
    /// Bytes per second an http hostname (responses and WebSockets), or a tcp tunnel port, may
    /// send to its visitors in total (0: no cap).
    #[serde(default)]
    pub bandwidth_per_tunnel: u64,
    /// A live stream ends after this long (default: never).
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub stream_time_limit: Option<Duration>,
    /// On shutdown, how long in-flight connections may finish.
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    /// A UDP flow (one visitor address:port on a udp tunnel) with no packet in either
    /// direction for this long is closed. Packets in either direction keep it open.
    #[serde(default = "default_udp_flow_idle", with = "humantime_serde")]
    pub udp_flow_idle: Duration,
    /// Open UDP flows per udp tunnel; a new visitor past it is dropped and counted. Each flow
    /// also holds one of the agent's `streams_per_agent`.
    #[serde(default = "default_udp_flows_per_tunnel")]
    pub udp_flows_per_tunnel: usize,
    /// Open UDP flows per visitor IP address on one udp tunnel.
    #[serde(default = "default_udp_flows_per_visitor")]
    pub udp_flows_per_visitor: usize,
    /// Packets per second one UDP flow may send toward the agent (a one-second burst);
    /// past it packets are dropped and counted.
    #[serde(default = "default_udp_packets_per_second")]
    pub udp_packets_per_second: u32,
    /// Open connections per visitor address (https edge and each raw port); more are refused.
    #[serde(default = "default_connections_per_ip")]
    pub connections_per_ip: usize,
    /// New connections per second per visitor address, sustained (0: no limit); beyond the
    /// burst they are closed at once (https edge and raw ports together).
    #[serde(default = "default_new_connections_per_second")]
    pub new_connections_per_second: u32,
    /// New connections an address may open at once above the sustained rate.
    #[serde(default = "default_new_connection_burst")]
    pub new_connection_burst: u32,
    /// Sustained HTTP requests per second per visitor address (0: no limit); beyond the
    /// burst the edge answers 429 with `Retry-After`.
    #[serde(default = "default_requests_per_second")]
    pub requests_per_second: u32,
    /// Requests a visitor address may make at once above the sustained rate.
    #[serde(default = "default_request_burst")]
    pub request_burst: u32,
}

fn default_udp_flow_idle() -> Duration {
    Duration::from_secs(60)
}
fn default_udp_flows_per_tunnel() -> usize {
    1024
}
fn default_udp_flows_per_visitor() -> usize {
    64
}
fn default_udp_packets_per_second() -> u32 {
    50_000
}
fn default_connections_per_ip() -> usize {
    64
}
fn default_new_connections_per_second() -> u32 {
    10
}
fn default_new_connection_burst() -> u32 {
    60
}
fn default_requests_per_second() -> u32 {
    50
}
fn default_request_burst() -> u32 {
    500
}

fn default_handshake_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_pending_handshakes() -> usize {
    256
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_idle_timeout_limit() -> Duration {
    Duration::from_secs(3600)
}
fn default_ten_seconds() -> Duration {
    Duration::from_secs(10)
}
fn default_http2_max_streams() -> u32 {
    100
}
fn default_max_request_head() -> usize {
    64 * 1024
}
fn default_streams_per_agent() -> usize {
    // The agent accepts 4096 concurrent streams from the relay (QuicSettings::agent).
    4096
}
fn default_connections_per_tunnel() -> usize {
    4096
}
fn default_shutdown_grace() -> Duration {
    Duration::from_secs(5)
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            handshake_timeout: default_handshake_timeout(),
            pending_handshakes: default_pending_handshakes(),
            connect_timeout: default_connect_timeout(),
            idle_timeout: default_idle_timeout_limit(),
            visitor_handshake_timeout: default_ten_seconds(),
            header_read_timeout: default_ten_seconds(),
            http2_max_streams: default_http2_max_streams(),
            max_request_head: default_max_request_head(),
            streams_per_agent: default_streams_per_agent(),
            connections_per_tunnel: default_connections_per_tunnel(),
            shutdown_grace: default_shutdown_grace(),
            udp_flow_idle: default_udp_flow_idle(),
            udp_flows_per_tunnel: default_udp_flows_per_tunnel(),
            udp_flows_per_visitor: default_udp_flows_per_visitor(),
            udp_packets_per_second: default_udp_packets_per_second(),
            connections_per_ip: default_connections_per_ip(),
            new_connections_per_second: default_new_connections_per_second(),
            new_connection_burst: default_new_connection_burst(),
            streams_per_user: 0,
            bandwidth_per_tunnel: 0,
            stream_time_limit: None,
            requests_per_second: default_requests_per_second(),
            request_burst: default_request_burst(),
        }
    }
}

/// `[quic]` transport tuning; see `proto::transport::quic::QuicSettings` for the reasoning.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuicConfig {
    /// Keep-alive interval.
    #[serde(default = "default_keep_alive", with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Idle timeout.
    #[serde(default = "default_idle_timeout", with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Per-stream receive window in bytes.
    #[serde(default = "default_stream_window")]
    pub stream_window: u32,
    /// Per-connection receive window in bytes.
    #[serde(default = "default_receive_window")]
    pub receive_window: u32,
    /// Congestion controller for what the relay sends (uploads toward recorders).
    #[serde(default = "default_congestion")]
    pub congestion: proto::transport::quic::Congestion,
}

fn default_keep_alive() -> Duration {
    proto::transport::quic::QuicSettings::relay().keep_alive
}
fn default_idle_timeout() -> Duration {
    proto::transport::quic::QuicSettings::relay().idle_timeout
}
fn default_stream_window() -> u32 {
    proto::transport::quic::QuicSettings::relay().stream_window
}
fn default_receive_window() -> u32 {
    proto::transport::quic::QuicSettings::relay().receive_window
}
fn default_congestion() -> proto::transport::quic::Congestion {
    proto::transport::quic::QuicSettings::relay().congestion
}

impl Default for QuicConfig {
    fn default() -> Self {
        QuicConfig {
            keep_alive: default_keep_alive(),
            idle_timeout: default_idle_timeout(),
            stream_window: default_stream_window(),
            receive_window: default_receive_window(),
            congestion: default_congestion(),
        }
    }
}

impl QuicConfig {
    pub(crate) fn settings(&self) -> proto::transport::quic::QuicSettings {
        proto::transport::quic::QuicSettings {
            keep_alive: self.keep_alive,
            idle_timeout: self.idle_timeout,
            stream_window: self.stream_window,
            receive_window: self.receive_window,
            congestion: self.congestion,
            ..proto::transport::quic::QuicSettings::relay()
        }
    }
}

impl RelayConfig {
    /// Whether the admin API is served over TLS: on any non-loopback address, or when asked.
    pub fn admin_over_tls(&self) -> bool {
        self.listen.admin_tls || !self.listen.admin.ip().is_loopback()
    }

    /// TLS+yamux settings for agents on the TCP fallback: the `[quic]` keep-alive and idle
    /// timeout apply to both transports, so a dead agent is noticed equally fast.
    pub(crate) fn tcp_transport_settings(&self) -> proto::transport::tcp::TcpSettings {
        proto::transport::tcp::TcpSettings {
            keep_alive: self.quic.keep_alive,
            idle_timeout: self.quic.idle_timeout,
            ..Default::default()
        }
    }

    /// Parse TOML text. The error keeps its span so the caller can name file, line and key.
    pub fn from_toml(text: &str) -> Result<Self, toml::de::Error> {
        toml::from_str(text)
    }

    /// A loopback relay for trying things out: HTTPS on 127.0.0.1:8443, QUIC on 127.0.0.1:4443, tunnel ports on
    /// 127.0.0.1, domain `localhost`, self-signed certificate.
    pub fn dev(data_dir: PathBuf) -> Self {
        RelayConfig {
            domain: "localhost".into(),
            data_dir,
            listen: ListenConfig {
                https: SocketAddr::from(([127, 0, 0, 1], 8443)),
                quic: SocketAddr::from(([127, 0, 0, 1], 4443)),
                http: SocketAddr::from(([127, 0, 0, 1], 8080)),
                admin: default_admin(),
                admin_tls: false,
                tunnels: IpAddr::from([127, 0, 0, 1]),
            },
            tls: TlsConfig {
                hsts: false,
                ..TlsConfig::default()
            },
            auth: AuthConfig::default(),
            limits: LimitsConfig::default(),
            quic: QuicConfig::default(),
            access: Vec::new(),
            port_access: Vec::new(),
        }
    }

    /// Checks that serde cannot express.
    pub fn validate(&self) -> Result<(), RelayError> {
        let bad = |key: &str, msg: &str| Err(RelayError::Config(format!("{key}: {msg}")));
        let domain = self.domain.trim_end_matches('.');
        if domain.is_empty()
            || !domain
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        {
            return bad("domain", "must be a DNS name like relay.example.com");
        }
        if self.tls.cert.is_some() != self.tls.key.is_some() {
            return bad("tls", "set both cert and key, or neither");
        }
        if self.tls.cert.is_some() && self.tls.acme_email.is_some() {
            return bad("tls", "use certificate files or acme_email, not both");
        }
        if !(self.tls.acme_directory.starts_with("https://")
            || self.tls.acme_directory.starts_with("http://"))
        {
            return bad("tls.acme_directory", "must be an http(s) URL");
        }
        if self.tls.acme_renew_before.is_zero() {
            return bad(
                "tls.acme_renew_before",
                "must be above zero (how long before expiry a certificate is renewed)",
            );
        }
        if self.quic.keep_alive >= self.quic.idle_timeout {
            return bad("quic.keep_alive", "must be shorter than quic.idle_timeout");
        }
        if self.quic.stream_window < 64 * 1024 || self.quic.receive_window < self.quic.stream_window
        {
            return bad(
                "quic.stream_window",
                "must be at least 65536 and at most quic.receive_window",
            );
        }
        if self.limits.pending_handshakes == 0 {
            return bad("limits.pending_handshakes", "must be at least 1");
        }
        if self.limits.max_request_head < 8192 {
            return bad("limits.max_request_head", "must be at least 8192");
        }
        if self.limits.idle_timeout.is_zero() || self.limits.connect_timeout.is_zero() {
            return bad(
                "limits.idle_timeout",
                "limits.idle_timeout and limits.connect_timeout must be above zero",
            );
        }
        if self.limits.http2_max_streams == 0 {
            return bad("limits.http2_max_streams", "must be at least 1");
        }
        if self.limits.streams_per_agent == 0 {
            return bad("limits.streams_per_agent", "must be at least 1");
        }
        if self.limits.udp_flow_idle.is_zero() {
            return bad("limits.udp_flow_idle", "must be above zero");
        }
        if self.limits.udp_flows_per_tunnel == 0
            || self.limits.udp_flows_per_visitor == 0
            || self.limits.udp_packets_per_second == 0
        {
            return bad(
                "limits.udp_flows_per_tunnel",
                "limits.udp_flows_per_tunnel, udp_flows_per_visitor and udp_packets_per_second must be at least 1",
            );
        }
        if self.limits.connections_per_tunnel == 0 {
            return bad("limits.connections_per_tunnel", "must be at least 1");
        }
        if self.limits.connections_per_ip == 0 {
            return bad("limits.connections_per_ip", "must be at least 1");
        }
        if self.limits.new_connections_per_second > 0 && self.limits.new_connection_burst == 0 {
            return bad("limits.new_connection_burst", "must be at least 1");
        }
        if self.limits.requests_per_second > 0 && self.limits.request_burst == 0 {
            return bad("limits.request_burst", "must be at least 1");
        }
        if self.auth.ban_after_failures == 0 {
            return bad("auth.ban_after_failures", "must be at least 1");
        }
        if self.auth.session_lifetime.is_zero() || self.auth.session_idle.is_zero() {
            return bad(
                "auth.session_lifetime",
                "and session_idle must be longer than 0s",
            );
        }
        let mut seen = std::collections::HashSet::new();
        for a in &self.access {
            let host = crate::token::normalize_host(&a.host);
            if host.is_empty() {
                return bad("access.host", "must be a hostname or *.domain");
            }
            if !seen.insert(host) {
                return bad("access.host", &format!("`{}` has two rules", a.host));
            }
            if a.public && (a.basic || !a.users.is_empty()) {
                return bad(
                    "access.public",
                    &format!(
                        "`{}`: a public rule cannot also name users or basic",
                        a.host
                    ),
                );
            }
        }
        Ok(())
    }

    /// The `[[access]]` rule for `host`: an exact rule, else a matching `*.domain` pattern.
    pub fn access_rule(&self, host: &str) -> Option<&AccessRule> {
        let host = crate::token::normalize_host(host);
        self.access
            .iter()
            .find(|a| crate::token::normalize_host(&a.host) == host)
            .or_else(|| {
                self.access
                    .iter()
                    .find(|a| crate::token::host_matches(&a.host, &host))
            })
    }

    /// Is `host` open to everyone by a `public = true` rule?
    pub fn is_public(&self, host: &str) -> bool {
        self.access_rule(host).is_some_and(|a| a.public)
    }

    /// The `[[port_access]]` rule for a raw port, if any (first match).
    pub fn port_rule(&self, port: u16) -> Option<&PortAccessRule> {
        self.port_access.iter().find(|r| r.ports.contains(port))
    }

    /// Path of the users file.
    pub fn users_file(&self) -> PathBuf {
        self.auth
            .users_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("users.toml"))
    }

    /// Path of the token signing key.
    pub fn key_file(&self) -> PathBuf {
        self.auth
            .key_file
            .clone()
            .unwrap_or_else(|| self.data_dir.join("relay.key"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cidr_matching() {
        let lan: Cidr = "192.168.1.0/24".parse().unwrap();
        assert!(lan.contains(ip("192.168.1.77")));
        assert!(lan.contains(ip("::ffff:192.168.1.77")));
        assert!(!lan.contains(ip("192.168.2.1")));
        assert!(!lan.contains(ip("2001:db8::1")));
        let one: Cidr = "203.0.113.7".parse().unwrap();
        assert!(one.contains(ip("203.0.113.7")) && !one.contains(ip("203.0.113.8")));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains(ip("8.8.8.8")));
        let v6: Cidr = "2001:db8::/32".parse().unwrap();
        assert!(v6.contains(ip("2001:db8:1::5")) && !v6.contains(ip("2001:db9::1")));
        let mapped: Cidr = "::ffff:10.0.0.0/104".parse().unwrap();
        assert!(mapped.contains(ip("10.1.2.3")));
        assert_eq!(String::from(mapped), "10.0.0.0/8");
        for bad in ["10.0.0.0/33", "x", "10.0.0/8", "::/129", ""] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn exact_access_rule_wins_over_pattern() {
        let mut c = RelayConfig::dev("/x".into());
        c.access.push(AccessRule::public("*.example.com"));
        c.access.push(AccessRule {
            host: "cam.example.com".into(),
            ..AccessRule::default()
        });
        assert!(!c.is_public("cam.example.com"));
        assert!(c.is_public("door.example.com"));
        assert!(!c.is_public("example.com"));
        assert!(c.validate().is_ok());
        c.access.push(AccessRule::public("CAM.example.com."));
        assert!(c.validate().is_err(), "two rules for one host");
    }
}

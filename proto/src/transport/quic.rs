//! QUIC transport (quinn + rustls with the ring provider), ALPN `periscope/1`.
//!
//! [`QuicSettings`] holds the transport knobs that differ from quinn's defaults, with why.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;

use super::{
    BiStream, BoxFuture, PathStats, RecvStream, SendStream, Transport, TransportError,
    TransportKind,
};
use crate::ALPN;

/// Congestion controller (`cubic` or `bbr` in configs).
///
/// BBR is the default: it models the path instead of reading every loss as congestion, so
/// random loss (Wi-Fi, LTE, satellite) does not collapse it. Measured at 600 ms RTT and 1 %
/// loss (BENCHMARKS.md): BBR 22 Mbit/s, quinn's CUBIC 0.56 Mbit/s; on loopback both are
/// equal within noise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// CUBIC (quinn's own default).
    Cubic,
    /// BBR.
    #[default]
    Bbr,
}

/// QUIC transport settings shared by relay and agent.
#[derive(Debug, Clone)]
pub struct QuicSettings {
    /// Keep-alive interval. Below common NAT/CGNAT UDP mapping timeouts (often 30 s) so the
    /// mapping stays open, and short so a dead peer or restarted relay is noticed fast.
    pub keep_alive: Duration,
    /// Idle timeout: the connection is declared dead after this much silence. Four keep-alives
    /// may be lost before it fires.
    pub idle_timeout: Duration,
    /// Per-stream receive window: at least one bandwidth-delay product, or one camera cannot
    /// fill the link. 8 MiB covers 100 Mbit/s at 600 ms RTT (7.5 MB); measured on the satellite
    /// link (BENCHMARKS.md), one stream moved 33 Mbit/s with 8 MiB and 21 Mbit/s with 4 MiB.
    pub stream_window: u32,
    /// Connection-wide receive window. quinn's default is unbounded; this is the most a peer
    /// can make us buffer for one connection: four stream windows, so it takes four stalled
    /// viewers (a stalled stream keeps its window full) before one agent's other streams wait.
    pub receive_window: u32,
    /// Unacknowledged bytes we keep in flight per connection.
    pub send_window: u64,
    /// Bidirectional streams the peer may have open at once toward us.
    pub max_incoming_streams: u32,
    /// Congestion controller.
    pub congestion: Congestion,
}

impl QuicSettings {
    /// Defaults for the agent side: it accepts one stream per visitor connection.
    pub fn agent() -> Self {
        QuicSettings {
            keep_alive: Duration::from_secs(2),
            idle_timeout: Duration::from_secs(8),
            stream_window: 8 * 1024 * 1024,
            receive_window: 32 * 1024 * 1024,
            send_window: 16 * 1024 * 1024,
            max_incoming_streams: 4096,
            congestion: Congestion::Bbr,
        }
    }

    /// Defaults for the relay side: agents open only their control stream.
    pub fn relay() -> Self {
        QuicSettings {
            max_incoming_streams: 8,
            ..Self::agent()
        }
    }

    /// The quinn transport config for these settings.
    pub fn transport_config(&self) -> quinn::TransportConfig {
        let mut t = quinn::TransportConfig::default();
        t.keep_alive_interval(Some(self.keep_alive));
        // Never fails for values below 2^62 ms.
        if let Ok(idle) = quinn::IdleTimeout::try_from(self.idle_timeout) {
            t.max_idle_timeout(Some(idle));
        }
        t.stream_receive_window(quinn::VarInt::from_u32(self.stream_window));
        t.receive_window(quinn::VarInt::from_u32(self.receive_window));
        t.send_window(self.send_window);
        t.max_concurrent_bidi_streams(quinn::VarInt::from_u32(self.max_incoming_streams));
        t.max_concurrent_uni_streams(quinn::VarInt::from_u32(0));
        t.datagram_receive_buffer_size(Some(1024 * 1024));
        t.datagram_send_buffer_size(1024 * 1024);
        if self.congestion == Congestion::Bbr {
            t.congestion_controller_factory(Arc::new(quinn::congestion::BbrConfig::default()));
        }
        t
    }
}

/// The rustls crypto provider used everywhere (ring).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Errors building QUIC configs.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// rustls refused the certificate, key or settings.
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    /// The TLS config is not usable for QUIC.
    #[error("TLS configuration not usable for QUIC: {0}")]
    Quic(String),
}

/// Server config for the relay's QUIC listener.
pub fn server_config(
    certs: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, ConfigError> {
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    server_config_from(tls, settings)
}

/// Server config whose certificate is chosen per handshake (a relay whose certificate is
/// renewed by ACME while it runs).
pub fn server_config_with_resolver(
    resolver: Arc<dyn rustls::server::ResolvesServerCert>,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, ConfigError> {
    let tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    server_config_from(tls, settings)
}

fn server_config_from(
    mut tls: rustls::ServerConfig,
    settings: &QuicSettings,
) -> Result<quinn::ServerConfig, ConfigError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls)
        .map_err(|e| ConfigError::Quic(e.to_string()))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    cfg.transport_config(Arc::new(settings.transport_config()));
    Ok(cfg)
}

/// Client config for the agent, given a rustls config that verifies the relay.
pub fn client_config(
    mut tls: rustls::ClientConfig,
    settings: &QuicSettings,
) -> Result<quinn::ClientConfig, ConfigError> {
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)
        .map_err(|e| ConfigError::Quic(e.to_string()))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(Arc::new(settings.transport_config()));
    Ok(cfg)
}

/// Socket buffer size asked for (the kernel caps it at `net.core.[rw]mem_max`). The default
/// (~208 KiB) overflows at a few Gbit/s and every drop is read as congestion.
const SOCKET_BUFFER: usize = 4 * 1024 * 1024;

/// A UDP socket bound to `addr` with large send and receive buffers.
pub fn udp_socket(addr: SocketAddr) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Accept IPv4 too when bound to [::].
        let _ = socket.set_only_v6(false);
    }
    let _ = socket.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = socket.set_send_buffer_size(SOCKET_BUFFER);
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

/// The UDP batching the kernel offers `socket`, as quinn-udp probes it: (GSO segments per
/// send, GRO segments per receive); 1 means none (kernels before 4.18 lack GSO, before 5.0
/// GRO; some drivers and containers too). quinn falls back to one packet per system call
/// by itself: slower at high rates, never broken.
pub fn offloads(socket: &std::net::UdpSocket) -> (usize, usize) {
    match quinn::udp::UdpSocketState::new(socket.into()) {
        Ok(s) => (s.max_gso_segments(), s.gro_segments()),
        Err(_) => (1, 1),
    }
}

/// Endpoint config whose stateless-reset key is `reset_key`. Persisting the key lets a
/// restarted relay reset its predecessor's connections at once, so agents reconnect on their
/// next packet instead of waiting for the idle timeout.
///
/// The connection-id generator's key is derived from the same secret: quinn only answers a
/// packet with a reset when its connection id validates against the generator's key, which
/// by default is random per process and would make every old id look forged.
pub fn endpoint_config(reset_key: &[u8]) -> quinn::EndpointConfig {
    let mut cfg = quinn::EndpointConfig::default();
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset_key);
    let tag = ring::hmac::sign(&key, b"periscope connection id key");
    let mut cid_key = [0u8; 8];
    cid_key.copy_from_slice(&tag.as_ref()[..8]);
    let cid_key = u64::from_le_bytes(cid_key);
    cfg.reset_key(Arc::new(key));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
    });
    cfg
}

/// A QUIC connection as a [`Transport`].
#[derive(Debug, Clone)]
pub struct QuicConnection(pub quinn::Connection);

impl From<quinn::ConnectionError> for TransportError {
    fn from(e: quinn::ConnectionError) -> Self {
        use quinn::ConnectionError as E;
        match e {
            E::ApplicationClosed(c) => TransportError::ClosedByPeer {
                code: c.error_code.into_inner(),
                reason: String::from_utf8_lossy(&c.reason).into_owned(),
            },
            E::LocallyClosed => TransportError::LocallyClosed,
            E::Reset => TransportError::Reset,
            E::TimedOut => TransportError::TimedOut,
            E::VersionMismatch => TransportError::Protocol("QUIC version mismatch".into()),
            E::TransportError(t) => TransportError::Protocol(t.to_string()),
            E::ConnectionClosed(c) => TransportError::Protocol(format!("closed by peer: {c}")),
            E::CidsExhausted => TransportError::Protocol("connection ids exhausted".into()),
        }
    }
}

impl Transport for QuicConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let (s, r) = self.0.open_bi().await?;
            Ok(BiStream {
                send: SendStream::Quic(s),
                recv: RecvStream::Quic(r),
            })
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let (s, r) = self.0.accept_bi().await?;
            Ok(BiStream {
                send: SendStream::Quic(s),
                recv: RecvStream::Quic(r),
            })
        })
    }

    fn send_datagram(&self, data: Bytes) -> Result<(), TransportError> {
        self.0.send_datagram(data).map_err(|e| match e {
            quinn::SendDatagramError::TooLarge => TransportError::DatagramTooLarge,
            quinn::SendDatagramError::ConnectionLost(e) => e.into(),
            e => TransportError::Datagram(e.to_string()),
        })
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move { Ok(self.0.read_datagram().await?) })
    }

    fn max_datagram_size(&self) -> Option<usize> {
        self.0.max_datagram_size()
    }

    fn close(&self, code: u32, reason: &str) {
        self.0
            .close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }

    fn closed(&self) -> BoxFuture<'_, TransportError> {
        Box::pin(async move { self.0.closed().await.into() })
    }

    fn remote_addr(&self) -> SocketAddr {
        self.0.remote_address()
    }

    fn rtt(&self) -> Duration {
        self.0.rtt()
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Quic
    }

    fn stats(&self) -> PathStats {
        let s = self.0.stats();
        PathStats {
            rtt: s.path.rtt,
            mtu: s.path.current_mtu,
            sent_packets: s.path.sent_packets,
            lost_packets: s.path.lost_packets,
            congestion_events: s.path.congestion_events,
        }
    }
}

//! Async transports between agent and relay (feature `transport`).
//!
//! [`Transport`] is the one small trait everything above it uses: open/accept bidirectional
//! streams, send/receive datagrams, close with a reason. [`quic`] implements it with quinn;
//! [`tcp`] (the TLS+yamux fallback) implements the same trait, so the relay and agent code and
//! the end-to-end tests are shared. Streams are enums over the concrete implementations (no
//! per-read dynamic dispatch or boxing on the data path).

use std::{
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub mod io_util;
pub mod quic;
pub mod tcp;

pub use io_util::{
    copy_bidirectional_idle, read_frame, splice, write_frame, Direction, FrameError, SpliceStats,
};

/// A boxed future, for the object-safe [`Transport`] trait.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A shared connection handle.
pub type Connection = Arc<dyn Transport>;

/// Which transport a connection uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransportKind {
    /// QUIC over UDP.
    Quic,
    /// TLS over TCP with yamux (fallback).
    Tcp,
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TransportKind::Quic => "quic",
            TransportKind::Tcp => "tcp",
        })
    }
}

/// Why a connection or stream operation failed, in words a user can act on.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// The peer closed the connection with an application code.
    #[error("closed by peer: {} (code {code}){}", crate::codes::close_name(*code), fmt_reason(*code, reason))]
    ClosedByPeer {
        /// Close code from [`crate::codes`].
        code: u64,
        /// Reason text sent by the peer.
        reason: String,
    },
    /// We closed it.
    #[error("closed locally")]
    LocallyClosed,
    /// The peer answered with a stateless reset: it restarted and lost the connection.
    #[error("connection reset by peer (it restarted or forgot this connection)")]
    Reset,
    /// Nothing heard from the peer for the idle timeout.
    #[error("no answer from peer within the idle timeout")]
    TimedOut,
    /// The transport layer failed (TLS alert, protocol violation, version mismatch).
    #[error("{0}")]
    Protocol(String),
    /// A datagram could not be sent (datagrams unsupported or disabled).
    #[error("datagram not sent: {0}")]
    Datagram(String),
    /// A datagram is larger than the path carries now ([`Transport::max_datagram_size`]).
    #[error("datagram larger than the path carries")]
    DatagramTooLarge,
}

fn fmt_reason(code: u64, r: &str) -> String {
    if r.is_empty() || r == crate::codes::close_name(code) {
        String::new()
    } else {
        format!(": {r}")
    }
}

/// A connection between agent and relay. Cheap to share behind an [`Arc`].
pub trait Transport: Send + Sync + 'static {
    /// Open a bidirectional stream (waits while the peer's stream limit is reached).
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>>;
    /// Accept the next stream the peer opened. Cancel-safe: dropping the future loses nothing.
    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>>;
    /// Send an unreliable datagram (never blocks; the oldest queued datagrams are dropped
    /// when the send buffer is full). A datagram above [`Transport::max_datagram_size`]
    /// fails with [`TransportError::DatagramTooLarge`]. A stream transport (the TLS+yamux
    /// fallback) carries them length-prefixed on one dedicated stream, so callers never know
    /// the difference; see [`crate::datagram`] for the payload format.
    fn send_datagram(&self, data: Bytes) -> Result<(), TransportError>;
    /// Receive the next datagram. Cancel-safe.
    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes, TransportError>>;
    /// Largest datagram payload the path carries now, if datagrams are supported.
    fn max_datagram_size(&self) -> Option<usize>;
    /// Close the connection with a code from [`crate::codes`] and a reason.
    fn close(&self, code: u32, reason: &str);
    /// Resolves when the connection is closed, with why.
    fn closed(&self) -> BoxFuture<'_, TransportError>;
    /// The peer's address as seen on this side.
    fn remote_addr(&self) -> SocketAddr;
    /// Current smoothed round-trip time.
    fn rtt(&self) -> Duration;
    /// Which transport this is.
    fn kind(&self) -> TransportKind;
    /// Path statistics, for logs and status pages.
    fn stats(&self) -> PathStats;
}

/// Statistics of a connection's network path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PathStats {
    /// Smoothed round-trip time.
    pub rtt: Duration,
    /// Current largest datagram payload (QUIC path MTU).
    pub mtu: u16,
    /// Packets sent.
    pub sent_packets: u64,
    /// Packets declared lost.
    pub lost_packets: u64,
    /// Congestion events.
    pub congestion_events: u64,
}

/// Both halves of one stream.
#[derive(Debug)]
pub struct BiStream {
    /// Sending half.
    pub send: SendStream,
    /// Receiving half.
    pub recv: RecvStream,
}

/// Sending half of a stream. `poll_shutdown` finishes it (a clean half-close, like FIN);
/// [`SendStream::reset`] aborts it.
#[derive(Debug)]
pub enum SendStream {
    /// A QUIC stream.
    Quic(quinn::SendStream),
    /// A yamux stream (TCP fallback).
    Tcp(tcp::TcpSendStream),
}

/// Receiving half of a stream.
#[derive(Debug)]
pub enum RecvStream {
    /// A QUIC stream.
    Quic(quinn::RecvStream),
    /// A yamux stream (TCP fallback).
    Tcp(tcp::TcpRecvStream),
}

/// Priority of the control stream's data over every data stream (quinn's default is 0), on
/// both sides: the agent's heartbeat calls the connection dead without timely pongs.
pub const CONTROL_PRIORITY: i32 = 100;

impl SendStream {
    /// Abort the stream: the peer sees an error, not a clean end.
    pub fn reset(&mut self, code: u32) {
        match self {
            SendStream::Quic(s) => {
                let _ = s.reset(quinn::VarInt::from_u32(code));
            }
            SendStream::Tcp(s) => s.reset(),
        }
    }

    /// Send one chunk without copying it.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> io::Result<()> {
        match self {
            SendStream::Quic(s) => s.write_chunk(chunk).await.map_err(io::Error::from),
            SendStream::Tcp(s) => tokio::io::AsyncWriteExt::write_all(s, &chunk).await,
        }
    }

    /// Send this stream's data ahead of lower-priority streams (QUIC only; yamux has no
    /// priorities). The control stream uses it so a ping never queues behind bulk data.
    pub fn set_priority(&self, priority: i32) {
        if let SendStream::Quic(s) = self {
            let _ = s.set_priority(priority);
        }
    }

    /// Stream id, for logs.
    pub fn id(&self) -> u64 {
        match self {
            SendStream::Quic(s) => s.id().index(),
            SendStream::Tcp(s) => s.id(),
        }
    }
}

impl RecvStream {
    /// Read the next chunk of at most `max` bytes without copying; `None` at the end.
    pub async fn read_chunk(&mut self, max: usize) -> io::Result<Option<Bytes>> {
        match self {
            RecvStream::Quic(s) => match s.read_chunk(max, true).await {
                Ok(c) => Ok(c.map(|c| c.bytes)),
                Err(e) => Err(io::Error::from(e)),
            },
            RecvStream::Tcp(s) => {
                let mut buf = bytes::BytesMut::with_capacity(max.clamp(1, 64 * 1024));
                let n = tokio::io::AsyncReadExt::read_buf(s, &mut buf).await?;
                Ok((n > 0).then(|| buf.freeze()))
            }
        }
    }

    /// Tell the peer we will read no more.
    pub fn stop(&mut self, code: u32) {
        match self {
            RecvStream::Quic(s) => {
                let _ = s.stop(quinn::VarInt::from_u32(code));
            }
            RecvStream::Tcp(s) => s.stop(),
        }
    }
}

impl AsyncWrite for SendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            SendStream::Tcp(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            SendStream::Tcp(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            SendStream::Quic(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            SendStream::Tcp(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
        }
    }
}

impl AsyncRead for RecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            RecvStream::Quic(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
            RecvStream::Tcp(s) => AsyncRead::poll_read(Pin::new(s), cx, buf),
        }
    }
}

/// A whole stream is readable and writable, for protocol code (HTTP) that wants one IO object.
impl AsyncRead for BiStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().recv).poll_read(cx, buf)
    }
}

impl AsyncWrite for BiStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().send).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().send).poll_shutdown(cx)
    }
}

//! TCP fallback transport: yamux over one TLS connection to the relay's https port (ALPN
//! `periscope/1`), for networks that block UDP.
//!
//! ## What yamux lacks, and what this module adds
//!
//! - **Datagrams.** They travel on one dedicated yamux stream, the **datagram stream**: the
//!   dialing side (the agent, yamux client) opens it as its very first stream, so it is always
//!   yamux stream **1**; the accepting side (relay, yamux server) takes inbound stream 1 as
//!   the datagram stream and never hands it to [`Transport::accept_bi`]. Identifying it by id
//!   (not by arrival order) is exact even though yamux interleaves streams freely.
//! - **Close codes.** Before closing, a side sends a `CLOSE` frame (code + reason) on the
//!   datagram stream, so the peer sees [`TransportError::ClosedByPeer`] just like over QUIC.
//! - **Liveness.** Each side sends a `PING` every `keep_alive`; the peer answers `PONG`, which
//!   gives [`Transport::rtt`]. Any byte received from the peer counts as life; after
//!   `idle_timeout` of silence the connection ends with [`TransportError::TimedOut`].
//!
//! The datagram stream's framing is the sans-IO codec [`crate::dgram_stream`].
//!
//! yamux has no stream reset code: [`SendStream::reset`](super::SendStream::reset) drops the
//! yamux stream (an RST frame), which the peer reads as the end of the stream.

use std::{
    collections::VecDeque,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf},
    sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore},
    time::Instant,
};
use tokio_util::{compat::TokioAsyncReadCompatExt, sync::CancellationToken, task::TaskTracker};

use super::{
    BiStream, BoxFuture, PathStats, RecvStream, SendStream, Transport, TransportError,
    TransportKind,
};

pub use crate::dgram_stream::{DgramFrame, DgramFrameError, MAX_DATAGRAM, MAX_REASON};

/// The yamux stream id of the datagram stream (the client's first stream).
const DATAGRAM_STREAM_ID: u32 = 1;
/// Streams kept free below yamux's limit for the control and datagram streams and the
/// peer's own opens: yamux tears the whole connection down if an open exceeds its limit.
const STREAM_SLACK: usize = 8;

/// TLS+yamux settings shared by relay and agent.
#[derive(Debug, Clone)]
pub struct TcpSettings {
    /// Interval between pings on the datagram stream.
    pub keep_alive: Duration,
    /// The connection is declared dead after this much silence from the peer.
    pub idle_timeout: Duration,
    /// Most yamux streams at once (yamux default 512).
    pub max_streams: usize,
    /// Connection-wide receive window (yamux default 1 GiB). yamux guarantees every stream
    /// 256 KiB of it and lets busy streams grow their windows (auto-tuned toward the
    /// bandwidth-delay product) only into what is left: 96 streams take 24 MiB of 32 MiB, so
    /// one stream can reach ~8 MiB, enough for 100 Mbit/s at 600 ms RTT. (With 128 streams
    /// nothing was left: every stream stayed at 256 KiB, ~3 Mbit/s on a satellite link.)
    pub connection_window: usize,
    /// Datagrams queued for sending before new ones are dropped, and received ones queued
    /// before the reader takes them.
    pub datagram_queue: usize,
}

impl Default for TcpSettings {
    fn default() -> Self {
        let q = super::quic::QuicSettings::agent();
        TcpSettings {
            keep_alive: q.keep_alive,
            idle_timeout: q.idle_timeout,
            max_streams: 96,
            connection_window: 32 * 1024 * 1024,
            datagram_queue: 1024,
        }
    }
}

impl TcpSettings {
    /// The yamux config for these settings (SECURITY.md: a 32 MiB connection window).
    pub fn yamux_config(&self) -> yamux::Config {
        let mut c = yamux::Config::default();
        let streams = self.max_streams.max(1);
        // Streams first: yamux asserts window >= 256 KiB * streams at each setter.
        c.set_max_num_streams(streams);
        c.set_max_connection_receive_window(Some(self.connection_window.max(streams * 256 * 1024)));
        c
    }
}

/// Bookkeeping shared by the handle and the connection's tasks.
#[derive(Debug)]
struct Core {
    /// Why the connection ended; the first cause set wins.
    state: watch::Sender<Option<TransportError>>,
    /// Smoothed RTT in microseconds (0 until the first pong).
    rtt_us: AtomicU64,
    /// When the peer was last heard (ms since `start`).
    last_rx_ms: Arc<AtomicU64>,
    start: Instant,
    datagrams_sent: AtomicU64,
    datagrams_dropped: AtomicU64,
    /// Ends every task at once (dead peer, all handles dropped).
    stop: CancellationToken,
    /// Asks the driver to close yamux cleanly (after the close frame went out).
    closing: CancellationToken,
    /// The datagram stream's reader has read everything (or there is none).
    dgram_done: CancellationToken,
    /// [`Transport::close`] was called: the close frame is on its way (bounded by a timer).
    close_requested: std::sync::atomic::AtomicBool,
}

impl Core {
    fn end(&self, e: TransportError) {
        self.state.send_if_modified(|s| {
            if s.is_none() {
                *s = Some(e);
                true
            } else {
                false
            }
        });
    }

    fn error(&self) -> Option<TransportError> {
        self.state.borrow().clone()
    }

    fn now_ms(&self) -> u64 {
        u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

type OpenReply = oneshot::Sender<Result<yamux::Stream, TransportError>>;

/// The handle: dropping the last one ends the connection.
#[derive(Debug)]
struct Inner {
    core: Arc<Core>,
    remote: SocketAddr,
    open_tx: mpsc::Sender<OpenReply>,
    inbound: tokio::sync::Mutex<mpsc::Receiver<yamux::Stream>>,
    dgram_out: mpsc::Sender<Bytes>,
    dgram_in: tokio::sync::Mutex<mpsc::Receiver<Bytes>>,
    ctrl_out: mpsc::Sender<DgramFrame>,
    streams: Arc<Semaphore>,
    tasks: TaskTracker,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // After `close`, the close frame still goes out (its timer ends the tasks); without
        // it, the connection ends at once, like a dropped QUIC connection.
        if !self.core.close_requested.load(Ordering::Relaxed) {
            self.core.end(TransportError::LocallyClosed);
            self.core.stop.cancel();
        }
    }
}

/// A TLS+yamux connection as a [`Transport`].
#[derive(Debug, Clone)]
pub struct TcpConnection(Arc<Inner>);

/// Counts every byte read from the peer as a sign of life.
struct Liveness<T> {
    io: T,
    last_rx_ms: Arc<AtomicU64>,
    start: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Liveness<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        if buf.filled().len() > before {
            let ms = u64::try_from(self.start.elapsed().as_millis()).unwrap_or(u64::MAX);
            self.last_rx_ms.store(ms, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Liveness<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

impl TcpConnection {
    /// Run yamux as the client (the agent) over an established TLS stream. Opens the
    /// datagram stream at once. Must be called inside a tokio runtime: it spawns the
    /// connection's tasks.
    pub fn client<T>(io: T, remote: SocketAddr, settings: &TcpSettings) -> TcpConnection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, remote, settings, yamux::Mode::Client)
    }

    /// Run yamux as the server (the relay) over an accepted TLS stream.
    pub fn server<T>(io: T, remote: SocketAddr, settings: &TcpSettings) -> TcpConnection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        Self::start(io, remote, settings, yamux::Mode::Server)
    }

    fn start<T>(io: T, remote: SocketAddr, s: &TcpSettings, mode: yamux::Mode) -> TcpConnection
    where
        T: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let start = Instant::now();
        let last_rx_ms = Arc::new(AtomicU64::new(0));
        let core = Arc::new(Core {
            state: watch::Sender::new(None),
            rtt_us: AtomicU64::new(0),
            last_rx_ms: last_rx_ms.clone(),
            start,
            datagrams_sent: AtomicU64::new(0),
            datagrams_dropped: AtomicU64::new(0),
            stop: CancellationToken::new(),
            closing: CancellationToken::new(),
            dgram_done: CancellationToken::new(),
            close_requested: std::sync::atomic::AtomicBool::new(false),
        });
        let io = Liveness {
            io,
            last_rx_ms,
            start,
        };
        let conn = yamux::Connection::new(io.compat(), s.yamux_config(), mode);
        let (open_tx, open_rx) = mpsc::channel(64);
        let (inbound_tx, inbound_rx) = mpsc::channel(s.max_streams.max(1));
        let queue = s.datagram_queue.max(1);
        let (dgram_out_tx, dgram_out_rx) = mpsc::channel(queue);
        let (dgram_in_tx, dgram_in_rx) = mpsc::channel(queue);
        let (ctrl_tx, ctrl_rx) = mpsc::channel(16);
        let (dgram_stream_tx, dgram_stream_rx) = oneshot::channel();
        let tasks = TaskTracker::new();
        let driver = Driver {
            conn,
            core: core.clone(),
            open_rx,
            pending: VecDeque::new(),
            inbound: Some(inbound_tx),
            dgram_stream: Some(dgram_stream_tx),
            client: mode == yamux::Mode::Client,
            closing: Box::pin(core.closing.clone().cancelled_owned()),
            stop: Box::pin(core.stop.clone().cancelled_owned()),
            close_started: false,
        };
        tasks.spawn(driver.run());
        tasks.spawn(datagram_stream(
            core.clone(),
            dgram_stream_rx,
            dgram_out_rx,
            ctrl_rx,
            ctrl_tx.clone(),
            dgram_in_tx,
        ));
        tasks.spawn(keep_alive(
            core.clone(),
            ctrl_tx.clone(),
            s.keep_alive,
            s.idle_timeout,
        ));
        tasks.close();
        TcpConnection(Arc::new(Inner {
            core,
            remote,
            open_tx,
            inbound: tokio::sync::Mutex::new(inbound_rx),
            dgram_out: dgram_out_tx,
            dgram_in: tokio::sync::Mutex::new(dgram_in_rx),
            ctrl_out: ctrl_tx,
            streams: Arc::new(Semaphore::new(
                s.max_streams.saturating_sub(STREAM_SLACK).max(1),
            )),
            tasks,
        }))
    }

    /// Resolves once every task of the connection has ended (after a close, the close
    /// frame and yamux's own goodbye went out).
    pub async fn wait_idle(&self) {
        self.0.tasks.wait().await
    }

    /// Datagrams dropped because the send queue was full.
    pub fn datagrams_dropped(&self) -> u64 {
        self.0.core.datagrams_dropped.load(Ordering::Relaxed)
    }

    fn closed_error(&self) -> TransportError {
        self.0
            .core
            .error()
            .unwrap_or_else(|| TransportError::Protocol("connection ended".into()))
    }

    fn wrap(&self, s: yamux::Stream, permit: Option<OwnedSemaphorePermit>) -> BiStream {
        let id = u64::from(s.id().val());
        let shared = Arc::new(StreamShared {
            stream: Mutex::new(Some(s)),
            _permit: permit,
        });
        BiStream {
            send: SendStream::Tcp(TcpSendStream {
                shared: shared.clone(),
                id,
            }),
            recv: RecvStream::Tcp(TcpRecvStream { shared }),
        }
    }
}

/// The one task that owns the yamux connection: it opens outbound streams on request, hands
/// inbound streams over, and closes.
struct Driver<T> {
    conn: yamux::Connection<T>,
    core: Arc<Core>,
    open_rx: mpsc::Receiver<OpenReply>,
    pending: VecDeque<OpenReply>,
    inbound: Option<mpsc::Sender<yamux::Stream>>,
    dgram_stream: Option<oneshot::Sender<yamux::Stream>>,
    client: bool,
    closing: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    stop: Pin<Box<tokio_util::sync::WaitForCancellationFutureOwned>>,
    close_started: bool,
}

fn map_yamux(e: yamux::ConnectionError) -> TransportError {
    match e {
        yamux::ConnectionError::Closed => {
            TransportError::Protocol("the peer ended the connection without a close frame".into())
        }
        yamux::ConnectionError::Io(e) => TransportError::Protocol(format!("connection lost: {e}")),
        e => TransportError::Protocol(format!("yamux: {e}")),
    }
}

impl<T> Driver<T>
where
    T: futures_io::AsyncRead + futures_io::AsyncWrite + Unpin + Send + 'static,
{
    async fn run(mut self) {
        let end = std::future::poll_fn(|cx| self.poll_step(cx)).await;
        if let Some(e) = end {
            // A close frame may still sit in the datagram stream's buffer (yamux reads past
            // it to its goodbye): let the reader take it before blaming the peer.
            let mut state = self.core.state.subscribe();
            let _ = tokio::time::timeout(Duration::from_millis(200), async {
                tokio::select! {
                    _ = self.core.dgram_done.cancelled() => {}
                    _ = state.wait_for(|s| s.is_some()) => {}
                }
            })
            .await;
            self.core.end(e);
        }
        self.core.end(TransportError::LocallyClosed);
        for p in self.pending.drain(..) {
            let _ = p.send(Err(self
                .core
                .error()
                .unwrap_or(TransportError::LocallyClosed)));
        }
        self.core.stop.cancel();
    }

    /// `Ready(Some(e))`: the connection failed; `Ready(None)`: it closed.
    fn poll_step(&mut self, cx: &mut Context<'_>) -> Poll<Option<TransportError>> {
        if self.stop.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        if self.close_started || self.closing.as_mut().poll(cx).is_ready() {
            self.close_started = true;
            return match self.conn.poll_close(cx) {
                Poll::Ready(_) => Poll::Ready(None),
                Poll::Pending => Poll::Pending,
            };
        }
        // The client's first stream is the datagram stream (yamux id 1).
        if self.client {
            if let Some(tx) = self.dgram_stream.take() {
                match self.conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(s)) => {
                        let _ = tx.send(s);
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(map_yamux(e))),
                    Poll::Pending => self.dgram_stream = Some(tx),
                }
            }
        }
        // Until nothing moves: a stream opened below must be polled by the connection (its
        // frames are picked up in poll_next_inbound), or its first write would wait for the
        // next wake-up.
        loop {
            // Inbound first: it drives the socket and retires dropped streams.
            loop {
                match self.conn.poll_next_inbound(cx) {
                    Poll::Ready(Some(Ok(s))) => {
                        if !self.client && s.id().val() == DATAGRAM_STREAM_ID {
                            if let Some(tx) = self.dgram_stream.take() {
                                let _ = tx.send(s);
                                continue;
                            }
                        }
                        if let Some(tx) = &self.inbound {
                            // Full (the peer opened more than our limit): dropping it resets it.
                            let _ = tx.try_send(s);
                        }
                    }
                    Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(map_yamux(e))),
                    Poll::Ready(None) => {
                        return Poll::Ready(Some(map_yamux(yamux::ConnectionError::Closed)))
                    }
                    Poll::Pending => break,
                }
            }
            if self.client && self.dgram_stream.is_some() {
                // Outbound opens wait until the datagram stream has taken id 1.
                return Poll::Pending;
            }
            let mut opened = false;
            while let Poll::Ready(Some(req)) = self.open_rx.poll_recv(cx) {
                self.pending.push_back(req);
            }
            while !self.pending.is_empty() {
                match self.conn.poll_new_outbound(cx) {
                    Poll::Ready(Ok(s)) => {
                        opened = true;
                        if let Some(p) = self.pending.pop_front() {
                            if let Err(Ok(s)) = p.send(Ok(s)) {
                                drop(s);
                            }
                        }
                    }
                    Poll::Ready(Err(e)) => return Poll::Ready(Some(map_yamux(e))),
                    Poll::Pending => break,
                }
            }
            if !opened {
                return Poll::Pending;
            }
        }
    }
}

/// Reads and writes the datagram stream: datagrams both ways, pings, pongs, close frames.
async fn datagram_stream(
    core: Arc<Core>,
    stream: oneshot::Receiver<yamux::Stream>,
    mut out: mpsc::Receiver<Bytes>,
    mut ctrl: mpsc::Receiver<DgramFrame>,
    ctrl_tx: mpsc::Sender<DgramFrame>,
    deliver: mpsc::Sender<Bytes>,
) {
    let _done = core.dgram_done.clone().drop_guard();
    let stream = tokio::select! {
        _ = core.stop.cancelled() => return,
        s = stream => match s {
            Ok(s) => s,
            Err(_) => return,
        },
    };
    let (mut rd, mut wr) = tokio::io::split(YamuxIo(stream));
    let reader = async {
        let mut buf = BytesMut::with_capacity(4096);
        loop {
            loop {
                match DgramFrame::decode(&mut buf) {
                    Ok(Some(DgramFrame::Datagram(d))) => {
                        if deliver.try_send(d).is_err() {
                            core.datagrams_dropped.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Ok(Some(DgramFrame::Ping(v))) => {
                        let _ = ctrl_tx.try_send(DgramFrame::Pong(v));
                    }
                    Ok(Some(DgramFrame::Pong(v))) => {
                        let sent = Duration::from_micros(v);
                        let sample = core.start.elapsed().saturating_sub(sent);
                        let sample = u64::try_from(sample.as_micros()).unwrap_or(u64::MAX);
                        let old = core.rtt_us.load(Ordering::Relaxed);
                        let new = if old == 0 {
                            sample
                        } else {
                            (old * 7 + sample) / 8
                        };
                        core.rtt_us.store(new.max(1), Ordering::Relaxed);
                    }
                    Ok(Some(DgramFrame::Close { code, reason })) => {
                        core.end(TransportError::ClosedByPeer {
                            code: u64::from(code),
                            reason,
                        });
                        core.closing.cancel();
                        return;
                    }
                    Ok(None) => break,
                    Err(e) => {
                        core.end(TransportError::Protocol(format!(
                            "bad datagram stream: {e}"
                        )));
                        core.stop.cancel();
                        return;
                    }
                }
            }
            buf.reserve(4096);
            match rd.read_buf(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    };
    let reader = async {
        reader.await;
        core.dgram_done.cancel();
    };
    let writer = async {
        let mut buf = BytesMut::new();
        // The first frame opens the stream on the wire and measures the RTT at once.
        let _ = DgramFrame::Ping(micros(&core)).encode(&mut buf);
        loop {
            if !buf.is_empty() {
                if wr.write_all(&buf).await.is_err() || wr.flush().await.is_err() {
                    return;
                }
                buf.clear();
            }
            let frame = tokio::select! {
                biased;
                f = ctrl.recv() => match f {
                    Some(f) => f,
                    None => return,
                },
                d = out.recv() => match d {
                    Some(d) => {
                        core.datagrams_sent.fetch_add(1, Ordering::Relaxed);
                        DgramFrame::Datagram(d)
                    }
                    None => return,
                },
            };
            let close = matches!(frame, DgramFrame::Close { .. });
            let _ = frame.encode(&mut buf);
            if close {
                let _ = wr.write_all(&buf).await;
                let _ = wr.flush().await;
                core.closing.cancel();
                return;
            }
        }
    };
    tokio::select! {
        _ = core.stop.cancelled() => {}
        _ = async { tokio::join!(reader, writer) } => {}
    }
}

fn micros(core: &Core) -> u64 {
    u64::try_from(core.start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// Pings every `interval`; ends the connection after `idle` without a byte from the peer.
async fn keep_alive(
    core: Arc<Core>,
    ctrl: mpsc::Sender<DgramFrame>,
    interval: Duration,
    idle: Duration,
) {
    let mut tick = tokio::time::interval(interval.min(idle / 2).max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = core.stop.cancelled() => return,
            _ = core.closing.cancelled() => return,
            _ = tick.tick() => {}
        }
        let silent = core
            .now_ms()
            .saturating_sub(core.last_rx_ms.load(Ordering::Relaxed));
        if Duration::from_millis(silent) >= idle {
            core.end(TransportError::TimedOut);
            core.stop.cancel();
            return;
        }
        let _ = ctrl.try_send(DgramFrame::Ping(micros(&core)));
    }
}

impl Transport for TcpConnection {
    fn open_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            if let Some(e) = self.0.core.error() {
                return Err(e);
            }
            let permit = self
                .0
                .streams
                .clone()
                .acquire_owned()
                .await
                .map_err(|_| self.closed_error())?;
            let (tx, rx) = oneshot::channel();
            self.0
                .open_tx
                .send(tx)
                .await
                .map_err(|_| self.closed_error())?;
            let s = rx.await.map_err(|_| self.closed_error())??;
            Ok(self.wrap(s, Some(permit)))
        })
    }

    fn accept_bi(&self) -> BoxFuture<'_, Result<BiStream, TransportError>> {
        Box::pin(async move {
            let mut rx = self.0.inbound.lock().await;
            match rx.recv().await {
                Some(s) => Ok(self.wrap(s, None)),
                None => Err(self.closed_error()),
            }
        })
    }

    fn send_datagram(&self, data: Bytes) -> Result<(), TransportError> {
        if let Some(e) = self.0.core.error() {
            return Err(e);
        }
        if data.len() > MAX_DATAGRAM {
            return Err(TransportError::DatagramTooLarge);
        }
        if self.0.dgram_out.try_send(data).is_err() {
            self.0
                .core
                .datagrams_dropped
                .fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn recv_datagram(&self) -> BoxFuture<'_, Result<Bytes, TransportError>> {
        Box::pin(async move {
            let mut rx = self.0.dgram_in.lock().await;
            let mut state = self.0.core.state.subscribe();
            tokio::select! {
                d = rx.recv() => d.ok_or_else(|| self.closed_error()),
                _ = state.wait_for(|s| s.is_some()) => Err(self.closed_error()),
            }
        })
    }

    fn max_datagram_size(&self) -> Option<usize> {
        Some(MAX_DATAGRAM)
    }

    fn close(&self, code: u32, reason: &str) {
        let core = &self.0.core;
        if core.close_requested.swap(true, Ordering::Relaxed) {
            return;
        }
        if core.error().is_some() {
            // Already over (peer closed, timed out): just finish yamux.
            core.closing.cancel();
        } else {
            core.end(TransportError::LocallyClosed);
            let frame = DgramFrame::Close {
                code,
                reason: reason.to_string(),
            };
            if self.0.ctrl_out.try_send(frame).is_err() {
                core.closing.cancel();
            }
        }
        // Never wait long for the close frame: a stalled peer must not keep us open.
        let core = core.clone();
        self.0.tasks.spawn(async move {
            tokio::select! {
                _ = core.stop.cancelled() => {}
                _ = tokio::time::sleep(Duration::from_secs(1)) => {
                    core.closing.cancel();
                    tokio::select! {
                        _ = core.stop.cancelled() => {}
                        _ = tokio::time::sleep(Duration::from_secs(1)) => core.stop.cancel(),
                    }
                }
            }
        });
    }

    fn closed(&self) -> BoxFuture<'_, TransportError> {
        Box::pin(async move {
            let mut state = self.0.core.state.subscribe();
            let r = state.wait_for(|s| s.is_some()).await;
            match r {
                Ok(s) => s.clone().unwrap_or(TransportError::LocallyClosed),
                Err(_) => TransportError::LocallyClosed,
            }
        })
    }

    fn remote_addr(&self) -> SocketAddr {
        self.0.remote
    }

    fn rtt(&self) -> Duration {
        Duration::from_micros(self.0.core.rtt_us.load(Ordering::Relaxed))
    }

    fn kind(&self) -> TransportKind {
        TransportKind::Tcp
    }

    fn stats(&self) -> PathStats {
        let c = &self.0.core;
        PathStats {
            rtt: self.rtt(),
            mtu: MAX_DATAGRAM as u16,
            sent_packets: c.datagrams_sent.load(Ordering::Relaxed),
            lost_packets: c.datagrams_dropped.load(Ordering::Relaxed),
            congestion_events: 0,
        }
    }
}

/// A yamux stream shared by its two halves; dropped (RST unless finished) when both are.
#[derive(Debug)]
struct StreamShared {
    stream: Mutex<Option<yamux::Stream>>,
    _permit: Option<OwnedSemaphorePermit>,
}

impl StreamShared {
    fn with<R>(
        &self,
        f: impl FnOnce(Pin<&mut yamux::Stream>) -> Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        let mut g = self.stream.lock().unwrap_or_else(|e| e.into_inner());
        match g.as_mut() {
            Some(s) => f(Pin::new(s)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "stream reset",
            ))),
        }
    }

    fn reset(&self) {
        let s = self.stream.lock().unwrap_or_else(|e| e.into_inner()).take();
        drop(s);
    }
}

/// Sending half of a yamux stream.
#[derive(Debug)]
pub struct TcpSendStream {
    shared: Arc<StreamShared>,
    id: u64,
}

/// Receiving half of a yamux stream.
#[derive(Debug)]
pub struct TcpRecvStream {
    shared: Arc<StreamShared>,
}

impl TcpSendStream {
    /// Abort the stream (both directions: yamux resets whole streams).
    pub fn reset(&mut self) {
        self.shared.reset();
    }

    /// yamux stream id.
    pub fn id(&self) -> u64 {
        self.id
    }
}

impl TcpRecvStream {
    /// Stop reading: yamux has no stop, so the whole stream is reset.
    pub fn stop(&mut self) {
        self.shared.reset();
    }
}

impl AsyncWrite for TcpSendStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.shared
            .with(|s| futures_io::AsyncWrite::poll_write(s, cx, buf))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared
            .with(|s| futures_io::AsyncWrite::poll_flush(s, cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.shared
            .with(|s| futures_io::AsyncWrite::poll_close(s, cx))
    }
}

impl AsyncRead for TcpRecvStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        match self
            .shared
            .with(|s| futures_io::AsyncRead::poll_read(s, cx, dst))
        {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// A whole yamux stream as tokio IO (for the datagram stream).
struct YamuxIo(yamux::Stream);

impl AsyncRead for YamuxIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let dst = buf.initialize_unfilled();
        match futures_io::AsyncRead::poll_read(Pin::new(&mut self.0), cx, dst) {
            Poll::Ready(Ok(n)) => {
                buf.advance(n);
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl AsyncWrite for YamuxIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        futures_io::AsyncWrite::poll_write(Pin::new(&mut self.0), cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_flush(Pin::new(&mut self.0), cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        futures_io::AsyncWrite::poll_close(Pin::new(&mut self.0), cx)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn yamux_limits_follow_security_md() {
        // Building the config asserts yamux's window >= 256 KiB * streams rule.
        let _ = TcpSettings::default().yamux_config();
        let s = TcpSettings::default();
        assert_eq!(s.connection_window, 32 * 1024 * 1024);
        // Room for stream windows to grow past yamux's 256 KiB floor: at least one
        // bandwidth-delay product of 100 Mbit/s at 600 ms.
        let growth = s.connection_window - s.max_streams * 256 * 1024;
        assert!(growth >= 100_000_000 / 8 * 6 / 10, "{growth}");
    }

    fn pair(settings: &TcpSettings) -> (TcpConnection, TcpConnection) {
        let (a, b) = tokio::io::duplex(256 * 1024);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        (
            TcpConnection::client(a, addr, settings),
            TcpConnection::server(b, addr, settings),
        )
    }

    #[tokio::test]
    async fn streams_datagrams_and_close_code() {
        let (c, s) = pair(&TcpSettings::default());
        let mut ctrl = c.open_bi().await.unwrap();
        ctrl.send.write_all(b"hello").await.unwrap();
        ctrl.send.shutdown().await.unwrap();
        let mut got = s.accept_bi().await.unwrap();
        let mut buf = Vec::new();
        got.recv.read_to_end(&mut buf).await.unwrap();
        assert_eq!(buf, b"hello");
        // Server-opened stream, the other way.
        let mut down = s.open_bi().await.unwrap();
        down.send.write_all(b"x").await.unwrap();
        let mut up = c.accept_bi().await.unwrap();
        let mut one = [0u8; 1];
        up.recv.read_exact(&mut one).await.unwrap();
        // Datagrams both ways, never through accept_bi.
        c.send_datagram(Bytes::from_static(b"\x01ping")).unwrap();
        assert_eq!(&s.recv_datagram().await.unwrap()[..], b"\x01ping");
        s.send_datagram(Bytes::from_static(b"\x01pong")).unwrap();
        assert_eq!(&c.recv_datagram().await.unwrap()[..], b"\x01pong");
        assert_eq!(
            c.send_datagram(Bytes::from(vec![0; MAX_DATAGRAM + 1]))
                .unwrap_err()
                .to_string(),
            TransportError::DatagramTooLarge.to_string()
        );
        s.close(crate::codes::CLOSE_REVOKED, "token revoked");
        match c.closed().await {
            TransportError::ClosedByPeer { code, reason } => {
                assert_eq!(code, u64::from(crate::codes::CLOSE_REVOKED));
                assert_eq!(reason, "token revoked");
            }
            e => panic!("unexpected {e:?}"),
        }
        assert!(matches!(s.closed().await, TransportError::LocallyClosed));
        assert!(c.accept_bi().await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn silent_peer_times_out() {
        let (a, _b) = tokio::io::duplex(64 * 1024);
        let addr: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let c = TcpConnection::client(a, addr, &TcpSettings::default());
        let t0 = Instant::now();
        let e = c.closed().await;
        assert!(matches!(e, TransportError::TimedOut), "{e:?}");
        let took = t0.elapsed();
        assert!(
            took >= Duration::from_secs(8) && took <= Duration::from_secs(11),
            "{took:?}"
        );
    }

    #[tokio::test]
    async fn rtt_from_pings() {
        let (c, _s) = pair(&TcpSettings::default());
        for _ in 0..200 {
            if c.rtt() > Duration::ZERO {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("no rtt sample");
    }
}

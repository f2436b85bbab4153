//! Live visitor connections, for the admin API: WebSockets and other upgrades, long HTTP
//! responses (MJPEG, chunked video, downloads), tcp tunnel connections and udp flows.
//!
//! Cost on the data path: one `DashMap` insert when a connection is registered, one remove
//! when its [`ConnGuard`] drops, and relaxed atomic adds per chunk. No lock is taken per
//! chunk: closing from the API sets an atomic flag and wakes the connection through an
//! [`AtomicWaker`] (IO wrappers, response bodies), fires a cancellation token (tasks that
//! wait on it outside the data path) and aborts the connection's task where one was given.
//! Bit rates are sampled once a second by [`sample`](Conns::sample), off the data path.

use std::{
    collections::VecDeque,
    net::SocketAddr,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, Ordering},
        Arc, Mutex, OnceLock,
    },
    task::{Context, Poll},
    time::{Duration, SystemTime},
};

use atomic_waker::AtomicWaker;
use bytes::Bytes;
use dashmap::DashMap;
use hyper::body::{Frame, SizeHint};
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// What kind of visitor connection an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Kind {
    /// A long HTTP response (live stream, large or open-ended body).
    Http,
    /// An upgraded HTTP connection (WebSocket).
    Websocket,
    /// A connection on a tcp tunnel's public port.
    Tcp,
    /// A flow on a udp tunnel's public port.
    Udp,
}

impl Kind {
    pub(crate) const ALL: [Kind; 4] = [Kind::Http, Kind::Websocket, Kind::Tcp, Kind::Udp];

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Kind::Http => "http",
            Kind::Websocket => "websocket",
            Kind::Tcp => "tcp",
            Kind::Udp => "udp",
        }
    }
}

/// What is known about a connection when it is registered.
#[derive(Debug, Clone)]
pub(crate) struct NewConn {
    pub(crate) kind: Kind,
    pub(crate) visitor: SocketAddr,
    /// The user (or `share:ID` for a share link) the edge let in; `None` for public rules,
    /// allow-listed networks and raw ports.
    pub(crate) user: Option<String>,
    /// Hostname (http) or `:PORT` (tcp/udp).
    pub(crate) host: String,
    /// Request path (http), empty for raw ports.
    pub(crate) path: String,
    pub(crate) agent: String,
    /// The tunnel's public address as `/api/tunnels` lists it.
    pub(crate) tunnel: String,
}

/// The longest path kept (the rest is cut; it is only shown).
const MAX_PATH: usize = 256;
/// Bit rates are computed over this many one-second samples.
const RATE_SAMPLES: usize = 4;

/// One live connection.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) id: u64,
    info: NewConn,
    started: SystemTime,
    up: AtomicU64,
    down: AtomicU64,
    closed: AtomicBool,
    waker: AtomicWaker,
    cancel: CancellationToken,
    abort: OnceLock<tokio::task::AbortHandle>,
    /// `(when, up, down)` samples, written by the sampler once a second.
    samples: Mutex<VecDeque<(Instant, u64, u64)>>,
}

impl Entry {
    /// Bytes from the visitor.
    pub(crate) fn add_up(&self, n: u64) {
        self.up.fetch_add(n, Ordering::Relaxed);
    }

    /// Bytes to the visitor.
    pub(crate) fn add_down(&self, n: u64) {
        self.down.fetch_add(n, Ordering::Relaxed);
    }

    /// Closed through the API.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::SeqCst)
    }

    /// Fires when the connection is closed through the API.
    pub(crate) fn cancelled(&self) -> tokio_util::sync::WaitForCancellationFuture<'_> {
        self.cancel.cancelled()
    }

    /// Abort `task` when the connection is closed (at once if it already was).
    pub(crate) fn abort_on_close(&self, task: tokio::task::AbortHandle) {
        if self.abort.set(task).is_ok() && self.is_closed() {
            if let Some(t) = self.abort.get() {
                t.abort();
            }
        }
    }

    fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
        self.waker.wake();
        self.cancel.cancel();
        if let Some(t) = self.abort.get() {
            t.abort();
        }
    }

    /// Register the waker to be woken by a close, then say whether it already happened.
    fn watch(&self, cx: &Context<'_>) -> bool {
        self.waker.register(cx.waker());
        self.is_closed()
    }

    /// Bits per second `(up, down)` over the last few samples.
    fn rates(&self) -> (u64, u64) {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        let (Some(a), Some(b)) = (s.front(), s.back()) else {
            return (0, 0);
        };
        let secs = b.0.duration_since(a.0).as_secs_f64();
        if secs <= 0.0 {
            return (0, 0);
        }
        let bps = |x: u64, y: u64| (y.saturating_sub(x) as f64 * 8.0 / secs) as u64;
        (bps(a.1, b.1), bps(a.2, b.2))
    }

    fn sample(&self, now: Instant) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        if s.len() >= RATE_SAMPLES {
            s.pop_front();
        }
        s.push_back((
            now,
            self.up.load(Ordering::Relaxed),
            self.down.load(Ordering::Relaxed),
        ));
    }

    pub(crate) fn view(&self, now: SystemTime) -> ConnView {
        let (up_bps, down_bps) = self.rates();
        let i = &self.info;
        ConnView {
            id: self.id,
            kind: i.kind,
            visitor: i.visitor.to_string(),
            user: i.user.clone(),
            host: i.host.clone(),
            path: i.path.clone(),
            agent: i.agent.clone(),
            tunnel: i.tunnel.clone(),
            bytes_up: self.up.load(Ordering::Relaxed),
            bytes_down: self.down.load(Ordering::Relaxed),
            up_bps,
            down_bps,
            started: humantime::format_rfc3339_seconds(self.started).to_string(),
            duration_secs: now
                .duration_since(self.started)
                .unwrap_or_default()
                .as_secs(),
        }
    }
}

/// A connection as the API shows it.
#[derive(Debug, Serialize)]
pub(crate) struct ConnView {
    pub(crate) id: u64,
    pub(crate) kind: Kind,
    pub(crate) visitor: String,
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) agent: String,
    pub(crate) tunnel: String,
    pub(crate) bytes_up: u64,
    pub(crate) bytes_down: u64,
    /// Bits per second from the visitor over the last few seconds.
    pub(crate) up_bps: u64,
    /// Bits per second to the visitor over the last few seconds.
    pub(crate) down_bps: u64,
    pub(crate) started: String,
    pub(crate) duration_secs: u64,
}

/// The registry of live connections.
#[derive(Debug, Default)]
pub(crate) struct Conns {
    map: Arc<DashMap<u64, Arc<Entry>>>,
    next: AtomicU64,
}

impl Conns {
    /// Register a connection; it is listed until the guard drops.
    pub(crate) fn register(&self, mut info: NewConn) -> ConnGuard {
        if info.path.len() > MAX_PATH {
            let mut cut = MAX_PATH;
            while !info.path.is_char_boundary(cut) {
                cut -= 1;
            }
            info.path.truncate(cut);
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let now = Instant::now();
        let entry = Arc::new(Entry {
            id,
            info,
            started: SystemTime::now(),
            up: AtomicU64::new(0),
            down: AtomicU64::new(0),
            closed: AtomicBool::new(false),
            waker: AtomicWaker::new(),
            cancel: CancellationToken::new(),
            abort: OnceLock::new(),
            samples: Mutex::new(VecDeque::from([(now, 0, 0)])),
        });
        self.map.insert(id, entry.clone());
        ConnGuard {
            entry,
            map: self.map.clone(),
        }
    }

    /// Live connections, oldest first.
    pub(crate) fn list(&self) -> Vec<Arc<Entry>> {
        let mut v: Vec<Arc<Entry>> = self.map.iter().map(|e| e.value().clone()).collect();
        v.sort_by_key(|e| e.id);
        v
    }

    /// Close connection `id`; false when there is none.
    pub(crate) fn close(&self, id: u64) -> bool {
        let Some(e) = self.map.get(&id).map(|e| e.value().clone()) else {
            return false;
        };
        e.close();
        true
    }

    /// Close every connection `f` picks; returns how many.
    pub(crate) fn close_where(&self, f: impl Fn(&NewConn) -> bool) -> usize {
        let picked: Vec<Arc<Entry>> = self
            .map
            .iter()
            .filter(|e| f(&e.value().info))
            .map(|e| e.value().clone())
            .collect();
        for e in &picked {
            e.close();
        }
        picked.len()
    }

    /// Live connections by kind.
    pub(crate) fn count_by_kind(&self) -> [(Kind, usize); 4] {
        let mut out = Kind::ALL.map(|k| (k, 0));
        for e in self.map.iter() {
            if let Some(slot) = out.iter_mut().find(|(k, _)| *k == e.value().info.kind) {
                slot.1 += 1;
            }
        }
        out
    }

    /// Take a bit-rate sample of every connection (once a second).
    pub(crate) fn sample(&self) {
        self.sample_at(Instant::now());
    }

    fn sample_at(&self, now: Instant) {
        for e in self.map.iter() {
            e.value().sample(now);
        }
    }

    /// Sample every second until `shutdown`.
    pub(crate) async fn sampler(self: &Conns, shutdown: CancellationToken) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = tick.tick() => self.sample(),
            }
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Keeps a connection listed; removes it when dropped.
#[derive(Debug)]
pub(crate) struct ConnGuard {
    entry: Arc<Entry>,
    map: Arc<DashMap<u64, Arc<Entry>>>,
}

impl std::ops::Deref for ConnGuard {
    type Target = Entry;
    fn deref(&self) -> &Entry {
        &self.entry
    }
}

impl ConnGuard {
    /// The entry itself, to reach it after the guard moved into the connection's task.
    pub(crate) fn handle(&self) -> Arc<Entry> {
        self.entry.clone()
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        self.map.remove(&self.entry.id);
    }
}

fn closed_error() -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::ConnectionAborted,
        "closed through the admin API",
    )
}

/// The visitor's side of a byte stream, counted (reads are bytes up, writes bytes down) and
/// ended by a close through the API.
pub(crate) struct Tracked<S> {
    inner: S,
    conn: ConnGuard,
    /// Process-wide counters (up, down) that move with this connection's bytes.
    totals: Option<(Counter, Counter)>,
}

type Counter = prometheus_client::metrics::counter::Counter;

impl<S> Tracked<S> {
    pub(crate) fn new(inner: S, conn: ConnGuard) -> Self {
        Tracked {
            inner,
            conn,
            totals: None,
        }
    }

    /// Count into the metrics' `(up, down)` counters too.
    pub(crate) fn with_totals(mut self, totals: (Counter, Counter)) -> Self {
        self.totals = Some(totals);
        self
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Tracked<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut self.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let n = (buf.filled().len() - before) as u64;
                self.conn.add_up(n);
                if let Some((up, _)) = &self.totals {
                    up.inc_by(n);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Pending if self.conn.watch(cx) => Poll::Ready(Err(closed_error())),
            other => other,
        }
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Tracked<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if self.conn.is_closed() {
            return Poll::Ready(Err(closed_error()));
        }
        match Pin::new(&mut self.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                self.conn.add_down(n as u64);
                if let Some((_, down)) = &self.totals {
                    down.inc_by(n as u64);
                }
                Poll::Ready(Ok(n))
            }
            Poll::Pending if self.conn.watch(cx) => Poll::Ready(Err(closed_error())),
            other => other,
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// A response body to the visitor, counted, which ends when the connection is closed through
/// the API. `total` is a process-wide counter of bytes to visitors (the metrics).
pub(crate) struct TrackedBody<B> {
    inner: B,
    conn: ConnGuard,
    total: Counter,
}

impl<B> TrackedBody<B> {
    pub(crate) fn new(inner: B, conn: ConnGuard, total: Counter) -> Self {
        TrackedBody { inner, conn, total }
    }
}

impl<B> hyper::body::Body for TrackedBody<B>
where
    B: hyper::body::Body<Data = Bytes> + Unpin,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        if self.conn.is_closed() {
            return Poll::Ready(None);
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(f))) => {
                if let Some(d) = f.data_ref() {
                    let n = d.len() as u64;
                    self.conn.add_down(n);
                    self.total.inc_by(n);
                }
                Poll::Ready(Some(Ok(f)))
            }
            Poll::Pending if self.conn.watch(cx) => Poll::Ready(None),
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_closed() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn new_conn(kind: Kind) -> NewConn {
        NewConn {
            kind,
            visitor: "192.0.2.1:5000".parse().unwrap(),
            user: Some("alice".into()),
            host: "cam.example.com".into(),
            path: "/video.mjpg".into(),
            agent: "home".into(),
            tunnel: "https://cam.example.com".into(),
        }
    }

    #[test]
    fn entries_leave_with_their_guard() {
        let c = Conns::default();
        let a = c.register(new_conn(Kind::Http));
        let b = c.register(new_conn(Kind::Tcp));
        assert_eq!(c.len(), 2);
        assert_ne!(a.id, b.id);
        assert_eq!(c.count_by_kind()[0], (Kind::Http, 1));
        drop(a);
        assert_eq!(c.len(), 1);
        assert_eq!(c.list()[0].id, b.id);
        assert!(!c.close(9999));
        drop(b);
        assert_eq!(c.len(), 0);
    }

    #[test]
    fn long_paths_are_cut_on_a_char_boundary() {
        let c = Conns::default();
        let mut n = new_conn(Kind::Http);
        n.path = "/".to_string() + &"é".repeat(300);
        let g = c.register(n);
        let v = g.view(SystemTime::now());
        assert!(v.path.len() <= MAX_PATH && v.path.len() > MAX_PATH - 2);
    }

    #[test]
    fn rates_come_from_the_samples() {
        let c = Conns::default();
        let g = c.register(new_conn(Kind::Tcp));
        let t0 = g.samples.lock().unwrap()[0].0;
        let at = |s: u64| t0 + Duration::from_secs(s);
        g.add_down(1000);
        c.sample_at(at(1));
        g.add_down(3000);
        g.add_up(500);
        c.sample_at(at(2));
        let v = g.view(SystemTime::now());
        // 4000 bytes down in 2 s = 16000 bit/s; 500 up = 2000 bit/s.
        assert_eq!((v.down_bps, v.up_bps), (16_000, 2_000));
        assert_eq!((v.bytes_down, v.bytes_up), (4000, 500));
        // Old samples fall out of the window: an idle connection's rate goes back to zero.
        for s in 3..3 + RATE_SAMPLES as u64 {
            c.sample_at(at(s));
        }
        assert_eq!(g.view(SystemTime::now()).down_bps, 0);
    }

    #[tokio::test]
    async fn close_ends_a_tracked_stream_that_waits_for_data() {
        let c = Conns::default();
        let (a, mut b) = tokio::io::duplex(64);
        let g = c.register(new_conn(Kind::Websocket));
        let id = g.id;
        let mut t = Tracked::new(a, g);
        b.write_all(b"hello").await.unwrap();
        let mut buf = [0u8; 5];
        t.read_exact(&mut buf).await.unwrap();
        t.write_all(b"hi").await.unwrap();
        let reader = tokio::spawn(async move {
            let mut buf = [0u8; 8];
            t.read(&mut buf).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let e = c.list()[0].clone();
        assert_eq!(
            (e.up.load(Ordering::Relaxed), e.down.load(Ordering::Relaxed)),
            (5, 2)
        );
        assert!(c.close(id));
        let r = tokio::time::timeout(Duration::from_secs(5), reader)
            .await
            .expect("the close woke the reader")
            .unwrap();
        assert_eq!(r.unwrap_err().kind(), std::io::ErrorKind::ConnectionAborted);
        // The task dropped its guard: the entry is gone.
        assert_eq!(c.len(), 0);
    }

    #[tokio::test]
    async fn close_ends_a_pending_response_body_and_others_go_on() {
        let c = Conns::default();
        let total = prometheus_client::metrics::counter::Counter::default();
        let (mut tx1, body1) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
        let (mut tx2, body2) = http_body_util::channel::Channel::<Bytes, hyper::Error>::new(4);
        let g1 = c.register(new_conn(Kind::Http));
        let id1 = g1.id;
        let mut b1 = TrackedBody::new(body1, g1, total.clone());
        let mut b2 = TrackedBody::new(body2, c.register(new_conn(Kind::Http)), total.clone());
        tx1.send_data(Bytes::from_static(b"frame")).await.unwrap();
        let f = b1.frame().await.unwrap().unwrap();
        assert_eq!(f.into_data().unwrap(), "frame");
        assert_eq!(total.get(), 5);
        let waiting = tokio::spawn(async move {
            let end = b1.frame().await;
            (end.is_none(), b1)
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(c.close(id1));
        let (ended, b1) = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("the close woke the body")
            .unwrap();
        assert!(ended && hyper::body::Body::is_end_stream(&b1));
        drop(b1);
        // The other body is untouched.
        tx2.send_data(Bytes::from_static(b"more")).await.unwrap();
        assert_eq!(
            b2.frame().await.unwrap().unwrap().into_data().unwrap(),
            "more"
        );
        assert_eq!(c.len(), 1);
        assert_eq!(total.get(), 9);
    }
}

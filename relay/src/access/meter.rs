//! Limits that last as long as a response: requests in flight per http hostname, live streams
//! per user, and a time limit per live stream.
//!
//! [`check`](super::check) records who was let in (a [`Grant`], through a task-local set up
//! by [`scoped`]); the edge then wraps the response body with [`meter`], which holds the
//! hostname's slot and the user's stream slot until the body ends, and ends a live stream at
//! `limits.stream_time_limit`. An upgrade (WebSocket) counts as a live stream; since its bytes
//! do not flow through a response body, its limits are handed to the visitor's connection
//! ([`Guarded`], which the edge wraps around every TLS connection) and held until it closes.

use std::{
    cell::RefCell,
    collections::HashMap,
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex},
    task::{Context, Poll},
};

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Frame, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    http::{page, Body},
    Shared,
};

tokio::task_local! {
    static GRANT: RefCell<Option<Grant>>;
}

/// Who a request was let in for, and the hostname slot it holds.
#[derive(Debug)]
pub(crate) struct Grant {
    /// The hostname.
    pub(crate) host: String,
    /// The user (or share link) counted for live streams; `None` for public rules and
    /// allow-listed networks.
    pub(crate) user: Option<String>,
    pub(crate) slot: OwnedSemaphorePermit,
}

/// Per-hostname request slots and bandwidth, and per-user stream counts.
#[derive(Debug, Default)]
pub(crate) struct Meters {
    hosts: Mutex<HashMap<String, Arc<Semaphore>>>,
    streams: Arc<Mutex<HashMap<String, usize>>>,
    buckets: Mutex<HashMap<String, Arc<Bucket>>>,
}

/// A token bucket of bytes, shared by every response of one hostname (or every connection
/// of one tcp tunnel port).
#[derive(Debug)]
pub(crate) struct Bucket {
    rate: f64,
    state: Mutex<(f64, tokio::time::Instant)>,
}

impl Bucket {
    /// Take `n` bytes; returns how long to pause before the next frame (the bucket may go
    /// into debt by one frame).
    fn charge(&self, n: usize) -> std::time::Duration {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let now = tokio::time::Instant::now();
        let elapsed = now.duration_since(st.1).as_secs_f64();
        st.0 = (st.0 + elapsed * self.rate).min(self.rate) - n as f64;
        st.1 = now;
        if st.0 >= 0.0 {
            std::time::Duration::ZERO
        } else {
            std::time::Duration::from_secs_f64(-st.0 / self.rate)
        }
    }
}

impl Meters {
    /// A request slot on `host`, or `None` when `max` are in flight.
    pub(crate) fn host_slot(&self, host: &str, max: usize) -> Option<OwnedSemaphorePermit> {
        let sem = self
            .hosts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(max)))
            .clone();
        sem.try_acquire_owned().ok()
    }

    fn bucket(&self, host: &str, rate: u64) -> Arc<Bucket> {
        self.buckets
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(host.to_string())
            .or_insert_with(|| {
                Arc::new(Bucket {
                    rate: rate as f64,
                    state: Mutex::new((rate as f64, tokio::time::Instant::now())),
                })
            })
            .clone()
    }

    fn stream_slot(&self, user: &str, max: usize) -> Option<StreamSlot> {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        let n = m.entry(user.to_string()).or_insert(0);
        if max > 0 && *n >= max {
            return None;
        }
        *n += 1;
        Some(StreamSlot {
            user: user.to_string(),
            streams: self.streams.clone(),
        })
    }
}

#[derive(Debug)]
struct StreamSlot {
    user: String,
    streams: Arc<Mutex<HashMap<String, usize>>>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut m = self.streams.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.user) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.user);
            }
        }
    }
}

/// Record the grant of the request being handled (no-op outside [`scoped`]).
pub(crate) fn grant(g: Grant) {
    let _ = GRANT.try_with(|cell| *cell.borrow_mut() = Some(g));
}

/// The user (or `share:ID`) the request being handled was let in for, if any.
pub(crate) fn current_user() -> Option<String> {
    GRANT
        .try_with(|cell| cell.borrow().as_ref().and_then(|g| g.user.clone()))
        .ok()
        .flatten()
}

/// Run one request's handler, returning its response and the grant `check` recorded.
pub(crate) fn scoped<F: Future>(f: F) -> impl Future<Output = (F::Output, Option<Grant>)> {
    // Not an `async fn`: that would hold `f` and the scope future side by side.
    GRANT.scope(RefCell::new(None), async move {
        let out = f.await;
        let g = GRANT.with(|cell| cell.borrow_mut().take());
        (out, g)
    })
}

/// A live stream: a response meant to run open-ended (MJPEG, chunked audio/video, SSE).
fn is_live(resp: &Response<Body>) -> bool {
    let h = resp.headers();
    let ct = h
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    !h.contains_key(header::CONTENT_LENGTH)
        && (ct.starts_with("multipart/x-mixed-replace")
            || ct.starts_with("video/")
            || ct.starts_with("audio/")
            || ct.starts_with("text/event-stream"))
}

/// Apply the response-long limits of `grant` to `resp`. An upgrade (101, a WebSocket) counts
/// as a live stream, and its limits are handed to the visitor's connection (`upgrade`), which
/// holds them until it closes.
pub(crate) fn meter(
    shared: &Shared,
    grant: Option<Grant>,
    resp: Response<Body>,
    upgrade: &UpgradeSlot,
) -> Response<Body> {
    let Some(grant) = grant else {
        return resp;
    };
    // streams_per_user and stream_time_limit follow a reload (relay.toml); the rest of
    // `limits` is as the relay started.
    let config = shared.live();
    let limits = &config.limits;
    let upgraded = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    let live = upgraded || is_live(&resp);
    let stream = match (&grant.user, live) {
        (Some(user), true) => {
            match shared
                .access
                .meters
                .stream_slot(user, limits.streams_per_user)
            {
                Some(s) => Some(s),
                None => {
                    tracing::info!(user = ?user, "live stream refused: streams_per_user reached");
                    let mut r = page(
                        StatusCode::TOO_MANY_REQUESTS,
                        "Too many streams",
                        "You are watching as many live streams as your account allows. Close one and try again.",
                    );
                    r.headers_mut()
                        .insert(header::RETRY_AFTER, http::HeaderValue::from_static("5"));
                    return r;
                }
            }
        }
        _ => None,
    };
    let deadline = limits
        .stream_time_limit
        .filter(|_| live)
        .map(|d| Box::pin(tokio::time::sleep(d)));
    let bucket = (limits.bandwidth_per_tunnel > 0).then(|| {
        shared
            .access
            .meters
            .bucket(&grant.host, limits.bandwidth_per_tunnel)
    });
    if upgraded {
        upgrade.arm(UpgradeLimits {
            _slot: grant.slot,
            _stream: stream,
            deadline,
            bucket,
            pause: None,
        });
        return resp;
    }
    resp.map(|inner| {
        Metered {
            inner,
            _slot: grant.slot,
            _stream: stream,
            deadline,
            bucket,
            pause: None,
            pending: None,
        }
        .boxed()
    })
}

/// A response body holding its limits until it ends.
struct Metered {
    inner: Body,
    _slot: OwnedSemaphorePermit,
    _stream: Option<StreamSlot>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    bucket: Option<Arc<Bucket>>,
    /// Bandwidth cap: wait before reading the next frame.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
    pending: Option<Frame<Bytes>>,
}

impl hyper::body::Body for Metered {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        if let Some(d) = self.deadline.as_mut() {
            if d.as_mut().poll(cx).is_ready() {
                tracing::debug!("live stream reached stream_time_limit");
                return Poll::Ready(None);
            }
        }
        loop {
            // Bandwidth cap: a frame that put the hostname's bucket into debt waits its turn.
            if let Some(p) = self.pause.as_mut() {
                if p.as_mut().poll(cx).is_pending() {
                    return Poll::Pending;
                }
                self.pause = None;
                if let Some(frame) = self.pending.take() {
                    return Poll::Ready(Some(Ok(frame)));
                }
            }
            let polled = Pin::new(&mut self.inner).poll_frame(cx);
            let Some(bucket) = &self.bucket else {
                return polled;
            };
            match polled {
                Poll::Ready(Some(Ok(frame))) => {
                    let wait = frame
                        .data_ref()
                        .map_or(std::time::Duration::ZERO, |d| bucket.charge(d.len()));
                    if wait.is_zero() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    self.pending = Some(frame);
                    self.pause = Some(Box::pin(tokio::time::sleep(wait)));
                }
                other => return other,
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.pending.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        let inner = self.inner.size_hint();
        let held = self
            .pending
            .as_ref()
            .and_then(|f| f.data_ref())
            .map_or(0, |d| d.len() as u64);
        let mut hint = SizeHint::new();
        if let Some(upper) = inner.upper() {
            hint.set_upper(upper + held);
        }
        hint.set_lower(inner.lower() + held);
        hint
    }
}

/// The bandwidth bucket of tcp tunnel port `port`, when `limits.bandwidth_per_tunnel` is set.
pub(crate) fn tcp_bucket(shared: &Shared, port: u16) -> Option<Arc<Bucket>> {
    let rate = shared.config.limits.bandwidth_per_tunnel;
    (rate > 0).then(|| shared.access.meters.bucket(&format!("tcp:{port}"), rate))
}

/// A visitor socket whose writes (the bytes toward the visitor) draw from a shared bucket:
/// after a write that puts the bucket into debt, the next write waits.
pub(crate) struct Throttled<S> {
    inner: S,
    bucket: Arc<Bucket>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl<S> Throttled<S> {
    pub(crate) fn new(inner: S, bucket: Arc<Bucket>) -> Self {
        Throttled {
            inner,
            bucket,
            pause: None,
        }
    }
}

impl<S: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Throttled<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Throttled<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        if let Some(p) = self.pause.as_mut() {
            if p.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.pause = None;
        }
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            let wait = self.bucket.charge(n);
            if !wait.is_zero() {
                self.pause = Some(Box::pin(tokio::time::sleep(wait)));
            }
        }
        r
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The limits an upgraded connection holds.
struct UpgradeLimits {
    _slot: OwnedSemaphorePermit,
    _stream: Option<StreamSlot>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    bucket: Option<Arc<Bucket>>,
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

/// One visitor connection's place for the limits of an upgrade on it (HTTP/1.1: after a 101
/// the connection carries only the WebSocket).
#[derive(Default)]
pub(crate) struct UpgradeSlot {
    armed: std::sync::atomic::AtomicBool,
    limits: Mutex<Option<UpgradeLimits>>,
}

impl std::fmt::Debug for UpgradeSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpgradeSlot").finish_non_exhaustive()
    }
}

impl UpgradeSlot {
    fn arm(&self, limits: UpgradeLimits) {
        *self.limits.lock().unwrap_or_else(|e| e.into_inner()) = Some(limits);
        self.armed.store(true, std::sync::atomic::Ordering::Release);
    }

    fn is_armed(&self) -> bool {
        self.armed.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The visitor's connection, carrying the limits of an upgrade made on it: the stream time
/// limit ends it, the bandwidth cap paces what is written to the visitor, and the hostname and
/// stream slots are released when it is dropped.
pub(crate) struct Guarded<T> {
    inner: T,
    slot: Arc<UpgradeSlot>,
}

impl<T> Guarded<T> {
    pub(crate) fn new(inner: T, slot: Arc<UpgradeSlot>) -> Self {
        Guarded { inner, slot }
    }
}

fn expired(l: &mut UpgradeLimits, cx: &mut Context<'_>) -> bool {
    l.deadline
        .as_mut()
        .is_some_and(|d| d.as_mut().poll(cx).is_ready())
}

impl<T: tokio::io::AsyncRead + Unpin> tokio::io::AsyncRead for Guarded<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.slot.is_armed() {
            let mut l = self.slot.limits.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = l.as_mut() {
                if expired(l, cx) {
                    // End of stream for the upgraded connection.
                    return Poll::Ready(Ok(()));
                }
            }
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> Guarded<T> {
    /// One write to the visitor under the upgrade's limits: none once the stream time limit
    /// has passed, none while the bandwidth cap's pause runs, and what was written is charged.
    fn limited_write(
        &mut self,
        cx: &mut Context<'_>,
        write: impl FnOnce(Pin<&mut T>, &mut Context<'_>) -> Poll<std::io::Result<usize>>,
    ) -> Poll<std::io::Result<usize>> {
        let armed = self.slot.is_armed();
        if armed {
            let mut l = self.slot.limits.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = l.as_mut() {
                if expired(l, cx) {
                    return Poll::Ready(Err(std::io::Error::new(
                        std::io::ErrorKind::TimedOut,
                        "stream_time_limit reached",
                    )));
                }
                if let Some(p) = l.pause.as_mut() {
                    if p.as_mut().poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                    l.pause = None;
                }
            }
        }
        let r = write(Pin::new(&mut self.inner), cx);
        if let (true, Poll::Ready(Ok(n))) = (armed, &r) {
            let mut l = self.slot.limits.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(l) = l.as_mut() {
                if let Some(b) = &l.bucket {
                    let wait = b.charge(*n);
                    if !wait.is_zero() {
                        l.pause = Some(Box::pin(tokio::time::sleep(wait)));
                    }
                }
            }
        }
        r
    }
}

impl<T: tokio::io::AsyncWrite + Unpin> tokio::io::AsyncWrite for Guarded<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.limited_write(cx, |io, cx| io.poll_write(cx, buf))
    }

    /// Passed through: without it hyper's HTTP/2 wrote each DATA frame's 9-byte header and its
    /// payload in two writes, so two TLS records and two sends per frame.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        self.limited_write(cx, |io, cx| io.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

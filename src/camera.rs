//! The demo's built-in test camera: a small NVR-like HTTP/1.1 origin on loopback.
//!
//! - `/` a self-contained page (no external assets) with the live picture, a frame counter fed
//!   by a WebSocket, and a note on what the visitor is looking at;
//! - `/mjpeg` an endless `multipart/x-mixed-replace` stream at [`FPS`] frames per second of a
//!   [`WIDTH`]x[`HEIGHT`] test pattern: moving colour bars, a UTC clock and the frame number
//!   drawn with a built-in 5x7 bitmap font;
//! - `/ws` a WebSocket pushing the frame number as text after every frame;
//! - a UDP echo socket (what an NVR's WebRTC/RTP side channel would be).
//!
//! One task renders and encodes each frame once and publishes it on a `watch` channel; every
//! viewer (MJPEG or WebSocket) reads that shared frame, so sixteen viewers cost one encode.
//! Connections are capped at [`MAX_CONNECTIONS`]; every task belongs to the camera's
//! [`TaskTracker`] and ends when its [`CancellationToken`] fires.

use std::{
    collections::VecDeque,
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, UdpSocket},
    sync::{watch, Semaphore},
};
use tokio_tungstenite::{
    tungstenite::{
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
        Message,
    },
    WebSocketStream,
};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

/// Picture width in pixels.
pub const WIDTH: u16 = 640;
/// Picture height in pixels.
pub const HEIGHT: u16 = 360;
/// Frames per second.
pub const FPS: u64 = 10;
/// JPEG quality (1-100).
const QUALITY: u8 = 75;
/// Open HTTP connections at most (MJPEG viewers, page loads; more wait in the kernel's accept
/// queue), and open WebSockets at most (more are answered 503).
pub const MAX_CONNECTIONS: usize = 64;
/// A viewer that cannot take a WebSocket message for this long is dropped.
const SEND_TIMEOUT: Duration = Duration::from_secs(10);
/// Multipart boundary of `/mjpeg`.
const BOUNDARY: &str = "periscopeframe";

/// One published frame.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// Counts from 1, one per tick, whether or not anybody watches.
    pub number: u64,
    /// The JPEG; empty when nobody was watching at that tick (nothing was encoded).
    pub jpeg: Bytes,
}

/// A running test camera. Stops when the token given to [`Camera::start`] is cancelled;
/// [`Camera::wait`] waits until all of its tasks are gone.
#[derive(Debug)]
pub struct Camera {
    http: SocketAddr,
    udp: SocketAddr,
    frames: watch::Sender<Frame>,
    tracker: TaskTracker,
}

type Body = BoxBody<Bytes, Infallible>;

impl Camera {
    /// Bind the HTTP and UDP sockets on ephemeral loopback ports and start serving.
    pub async fn start(shutdown: CancellationToken) -> std::io::Result<Camera> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let udp = UdpSocket::bind("127.0.0.1:0").await?;
        let http_addr = listener.local_addr()?;
        let udp_addr = udp.local_addr()?;
        let (frames, _) = watch::channel(Frame::default());
        let tracker = TaskTracker::new();
        tracker.spawn(produce(frames.clone(), shutdown.clone()));
        tracker.spawn(udp_echo(udp, shutdown.clone()));
        tracker.spawn(
            serve(listener, frames.clone(), shutdown.clone(), tracker.clone())
                .instrument(tracing::debug_span!("camera", http = %http_addr)),
        );
        tracker.close();
        Ok(Camera {
            http: http_addr,
            udp: udp_addr,
            frames,
            tracker,
        })
    }

    /// Address of the HTTP origin.
    pub fn http_addr(&self) -> SocketAddr {
        self.http
    }

    /// Address of the UDP echo.
    pub fn udp_addr(&self) -> SocketAddr {
        self.udp
    }

    /// Watch the published frames (what every viewer reads).
    pub fn frames(&self) -> watch::Receiver<Frame> {
        self.frames.subscribe()
    }

    /// Wait until every task of the camera has ended (after the shutdown token fired).
    pub async fn wait(self) {
        self.tracker.wait().await;
    }
}

/// Render and encode one frame per tick while anybody watches; always count.
async fn produce(frames: watch::Sender<Frame>, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(Duration::from_millis(1000 / FPS));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut canvas = Canvas::new(WIDTH, HEIGHT);
    let mut number = 0u64;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tick.tick() => {}
        }
        number += 1;
        let jpeg = if frames.receiver_count() > 0 {
            let secs = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            // Rendering and encoding take a few milliseconds: off the async workers.
            let rendered = tokio::task::spawn_blocking(move || {
                canvas.draw_test_pattern(number, secs);
                let jpeg = canvas.encode_jpeg();
                (canvas, jpeg)
            })
            .await;
            match rendered {
                Ok((c, jpeg)) => {
                    canvas = c;
                    match jpeg {
                        Ok(j) => j,
                        Err(e) => {
                            tracing::warn!("test camera: JPEG encoding failed: {e}");
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("test camera: frame task failed: {e}");
                    return;
                }
            }
        } else {
            Bytes::new()
        };
        frames.send_replace(Frame { number, jpeg });
    }
}

/// Answer every datagram with itself.
async fn udp_echo(socket: UdpSocket, shutdown: CancellationToken) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let (n, from) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = socket.recv_from(&mut buf) => match r {
                Ok(x) => x,
                Err(e) => {
                    // ICMP port unreachable from an earlier reply shows up here on Linux.
                    tracing::debug!("test camera udp: {e}");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        if let Some(data) = buf.get(..n) {
            if let Err(e) = socket.send_to(data, from).await {
                tracing::debug!("test camera udp: reply to {from}: {e}");
            }
        }
    }
}

/// Accept loop: at most [`MAX_CONNECTIONS`] connections, each served by hyper (HTTP/1.1 with
/// upgrades), stopped gracefully on shutdown.
async fn serve(
    listener: TcpListener,
    frames: watch::Sender<Frame>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    // An upgraded connection leaves hyper (and its permit) behind: WebSockets count apart.
    let websockets = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => return,
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let (stream, peer) = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("test camera: accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let frames = frames.clone();
        let shutdown = shutdown.clone();
        let inner = tracker.clone();
        let websockets = websockets.clone();
        tracker.spawn(
            async move {
                let _permit = permit;
                let stop = shutdown.clone();
                let svc = hyper::service::service_fn(move |req| {
                    let frames = frames.clone();
                    let shutdown = shutdown.clone();
                    let tracker = inner.clone();
                    let websockets = websockets.clone();
                    async move {
                        Ok::<_, Infallible>(route(req, frames, shutdown, tracker, websockets))
                    }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10))
                    .serve_connection(TokioIo::new(stream), svc)
                    .with_upgrades();
                tokio::pin!(conn);
                let r = tokio::select! {
                    r = conn.as_mut() => r,
                    _ = stop.cancelled() => {
                        // MJPEG bodies end by themselves on shutdown; finish what is in flight.
                        conn.as_mut().graceful_shutdown();
                        tokio::time::timeout(Duration::from_secs(2), conn.as_mut())
                            .await
                            .unwrap_or(Ok(()))
                    }
                };
                if let Err(e) = r {
                    tracing::debug!("test camera connection: {e}");
                }
            }
            .instrument(tracing::debug_span!("camera_conn", visitor.addr = %peer)),
        );
    }
}

fn route(
    req: Request<Incoming>,
    frames: watch::Sender<Frame>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    websockets: Arc<Semaphore>,
) -> Response<Body> {
    match (req.method(), req.uri().path()) {
        (&http::Method::GET, "/") | (&http::Method::GET, "/index.html") => {
            respond(StatusCode::OK, "text/html; charset=utf-8", PAGE)
        }
        (&http::Method::GET, "/mjpeg") => mjpeg(frames.subscribe(), shutdown),
        (&http::Method::GET, "/ws") => match websockets.try_acquire_owned() {
            Ok(permit) => websocket(req, frames.subscribe(), shutdown, tracker, permit),
            Err(_) => respond(
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                "too many WebSockets\n",
            ),
        },
        (&http::Method::GET, _) => respond(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
        _ => respond(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "method not allowed\n",
        ),
    }
}

fn respond(status: StatusCode, content_type: &'static str, body: &'static str) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())).boxed());
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// The endless multipart stream: each part is one shared JPEG (no copy), sent as soon as it is
/// published; a slow viewer skips frames instead of queueing them. Ends on shutdown.
fn mjpeg(frames: watch::Receiver<Frame>, shutdown: CancellationToken) -> Response<Body> {
    struct State {
        frames: watch::Receiver<Frame>,
        shutdown: CancellationToken,
        pending: VecDeque<Bytes>,
        first: bool,
    }
    let state = State {
        frames,
        shutdown,
        pending: VecDeque::new(),
        first: true,
    };
    let parts = futures_util::stream::unfold(state, |mut st| async move {
        loop {
            if let Some(b) = st.pending.pop_front() {
                return Some((Ok::<_, Infallible>(hyper::body::Frame::data(b)), st));
            }
            if !st.first {
                tokio::select! {
                    _ = st.shutdown.cancelled() => return None,
                    r = st.frames.changed() => if r.is_err() { return None },
                }
            }
            st.first = false;
            let jpeg = st.frames.borrow_and_update().jpeg.clone();
            if jpeg.is_empty() {
                continue;
            }
            let head = format!(
                "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\n\r\n",
                jpeg.len()
            );
            st.pending.push_back(Bytes::from(head));
            st.pending.push_back(jpeg);
            st.pending.push_back(Bytes::from_static(b"\r\n"));
        }
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(parts)));
    let h = resp.headers_mut();
    if let Ok(v) = HeaderValue::from_str(&format!("multipart/x-mixed-replace; boundary={BOUNDARY}"))
    {
        h.insert(header::CONTENT_TYPE, v);
    }
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Accept a WebSocket upgrade and push the frame number after every frame.
fn websocket(
    mut req: Request<Incoming>,
    frames: watch::Receiver<Frame>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> Response<Body> {
    let h = req.headers();
    let upgrade = h
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.eq_ignore_ascii_case("websocket"));
    let key = h
        .get(header::SEC_WEBSOCKET_KEY)
        .map(|k| derive_accept_key(k.as_bytes()));
    let version_ok = h
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    let (true, Some(accept), true) = (upgrade, key, version_ok) else {
        return respond(
            StatusCode::BAD_REQUEST,
            "text/plain",
            "expected a WebSocket upgrade (version 13)\n",
        );
    };
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        return respond(StatusCode::BAD_REQUEST, "text/plain", "bad key\n");
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tracker.spawn(
        async move {
            let _permit = permit;
            match on_upgrade.await {
                Ok(io) => {
                    // The page sends nothing; whatever a client sends is read and dropped, so
                    // keep its messages small.
                    let config = WebSocketConfig::default()
                        .max_message_size(Some(64 * 1024))
                        .max_frame_size(Some(64 * 1024))
                        .max_write_buffer_size(1024 * 1024);
                    let ws = WebSocketStream::from_raw_socket(
                        TokioIo::new(io),
                        Role::Server,
                        Some(config),
                    )
                    .await;
                    push_counter(ws, frames, shutdown).await;
                }
                Err(e) => tracing::debug!("test camera websocket upgrade: {e}"),
            }
        }
        .in_current_span(),
    );
    let mut resp = Response::new(Full::new(Bytes::new()).boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    resp
}

/// Send the frame number as text after every frame; answer the peer's close; stop on shutdown
/// or when a send takes longer than [`SEND_TIMEOUT`]. Generic so tests could use any stream.
pub async fn push_counter<S>(
    mut ws: WebSocketStream<S>,
    mut frames: watch::Receiver<Frame>,
    shutdown: CancellationToken,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = tokio::time::timeout(Duration::from_secs(1), ws.close(None)).await;
                return;
            }
            msg = ws.next() => match msg {
                // tungstenite answers pings and close frames itself on the next write/flush.
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                Some(Ok(_)) => {}
            },
            r = frames.changed() => {
                if r.is_err() {
                    return;
                }
                let n = frames.borrow_and_update().number;
                match tokio::time::timeout(SEND_TIMEOUT, ws.send(Message::text(n.to_string()))).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!("test camera websocket: {e}");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("test camera websocket: viewer too slow, dropped");
                        return;
                    }
                }
            }
        }
    }
}

/// The page at `/`: everything inline, no external assets.
const PAGE: &str = r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Periscope test camera</title>
<style>
  body { margin: 0; font: 15px/1.4 system-ui, sans-serif; background: #15181c; color: #e8e8e8; }
  header { padding: 10px 16px; background: #23272e; display: flex; gap: 16px; align-items: baseline; }
  header b { font-size: 17px; }
  header span { color: #9aa3ad; }
  main { padding: 16px; max-width: 680px; }
  .tile { background: #000; border: 1px solid #333; width: 640px; max-width: 100%; }
  .tile img { display: block; width: 100%; height: auto; }
  .bar { display: flex; justify-content: space-between; padding: 6px 8px; background: #23272e; color: #9aa3ad; font-size: 13px; }
  .live { color: #5fd35f; }
  .off { color: #e06c6c; }
  p { color: #b8c0c8; }
  code { background: #23272e; padding: 1px 4px; border-radius: 3px; }
</style>
</head>
<body>
<header><b>Periscope NVR</b><span>Channel 1 &middot; test camera</span></header>
<main>
  <div class="tile">
    <img src="/mjpeg" alt="live MJPEG test pattern" width="640" height="360">
    <div class="bar"><span>CH1 &middot; MJPEG 640x360 @ 10 fps</span><span id="ws" class="off">WebSocket: connecting&hellip;</span></div>
  </div>
  <p>This page, the live picture (<code>/mjpeg</code>, an endless multipart stream) and the frame
  counter (<code>/ws</code>, a WebSocket) come from the built-in test camera of
  <code>periscope demo</code>, through the agent and the relay's HTTPS edge, the way a real
  recorder's web UI would. Point an agent at your recorder to see the real thing.</p>
</main>
<script>
(function () {
  var el = document.getElementById("ws");
  function connect() {
    var ws = new WebSocket((location.protocol === "https:" ? "wss://" : "ws://") + location.host + "/ws");
    ws.onmessage = function (e) { el.textContent = "WebSocket: frame " + e.data; el.className = "live"; };
    ws.onclose = function () { el.textContent = "WebSocket: closed, retrying"; el.className = "off"; setTimeout(connect, 2000); };
  }
  connect();
})();
</script>
</body>
</html>
"#;

/// An RGB picture the test pattern is drawn on.
#[derive(Debug)]
struct Canvas {
    width: u16,
    height: u16,
    rgb: Vec<u8>,
}

/// The classic eight bars: white, yellow, cyan, green, magenta, red, blue, black.
const BARS: [[u8; 3]; 8] = [
    [235, 235, 235],
    [235, 235, 16],
    [16, 235, 235],
    [16, 235, 16],
    [235, 16, 235],
    [235, 16, 16],
    [16, 16, 235],
    [16, 16, 16],
];

impl Canvas {
    fn new(width: u16, height: u16) -> Canvas {
        Canvas {
            width,
            height,
            rgb: vec![0; usize::from(width) * usize::from(height) * 3],
        }
    }

    fn fill(&mut self, x0: usize, y0: usize, w: usize, h: usize, c: [u8; 3]) {
        let (width, height) = (usize::from(self.width), usize::from(self.height));
        for y in y0..(y0 + h).min(height) {
            let row = y * width * 3;
            for x in x0..(x0 + w).min(width) {
                if let Some(px) = self.rgb.get_mut(row + x * 3..row + x * 3 + 3) {
                    px.copy_from_slice(&c);
                }
            }
        }
    }

    /// Bars scrolling left 8 px per frame, a progress strip, then a dark band with the title,
    /// the UTC clock and the frame number.
    fn draw_test_pattern(&mut self, number: u64, unix_secs: u64) {
        let (width, height) = (usize::from(self.width), usize::from(self.height));
        let bar_w = width / BARS.len();
        let shift = (number as usize * 8) % width;
        let band = 96;
        let bars_h = height - band - 12;
        for x in 0..width {
            let c = BARS[((x + shift) / bar_w) % BARS.len()];
            self.fill(x, 0, 1, bars_h, c);
        }
        // A strip whose filled part grows once per second: motion even in a still screenshot.
        self.fill(0, bars_h, width, 12, [40, 40, 40]);
        let filled = width * (number % FPS + 1) as usize / FPS as usize;
        self.fill(0, bars_h, filled, 12, [255, 160, 0]);
        self.fill(0, height - band, width, band, [20, 22, 26]);
        let s = unix_secs % 86_400;
        let clock = format!("{:02}:{:02}:{:02} UTC", s / 3600, s / 60 % 60, s % 60);
        let title = "PERISCOPE TEST CAMERA";
        self.text(16, height - band + 10, 3, title, [200, 200, 200]);
        self.text(16, height - band + 46, 5, &clock, [255, 255, 255]);
        let frame = format!("#{number:06}");
        let fw = frame.len() * 6 * 4;
        self.text(
            width.saturating_sub(fw + 16),
            height - band + 52,
            4,
            &frame,
            [255, 160, 0],
        );
    }

    /// Draw `text` with the 5x7 font, each font pixel `scale` pixels wide.
    fn text(&mut self, x0: usize, y0: usize, scale: usize, text: &str, c: [u8; 3]) {
        for (i, ch) in text.chars().enumerate() {
            let glyph = glyph(ch);
            let gx = x0 + i * 6 * scale;
            for (row, bits) in glyph.iter().enumerate() {
                for col in 0..5 {
                    if bits & (0x10 >> col) != 0 {
                        self.fill(gx + col * scale, y0 + row * scale, scale, scale, c);
                    }
                }
            }
        }
    }

    fn encode_jpeg(&self) -> Result<Bytes, jpeg_encoder::EncodingError> {
        let mut out = Vec::with_capacity(64 * 1024);
        jpeg_encoder::Encoder::new(&mut out, QUALITY).encode(
            &self.rgb,
            self.width,
            self.height,
            jpeg_encoder::ColorType::Rgb,
        )?;
        Ok(Bytes::from(out))
    }
}

/// 5x7 glyphs, one byte per row, bit 4 the leftmost pixel. Unknown characters are blank.
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0E, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0E],
        '1' => [0x04, 0x0C, 0x04, 0x04, 0x04, 0x04, 0x0E],
        '2' => [0x0E, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1F],
        '3' => [0x1F, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0E],
        '4' => [0x02, 0x06, 0x0A, 0x12, 0x1F, 0x02, 0x02],
        '5' => [0x1F, 0x10, 0x1E, 0x01, 0x01, 0x11, 0x0E],
        '6' => [0x06, 0x08, 0x10, 0x1E, 0x11, 0x11, 0x0E],
        '7' => [0x1F, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0E, 0x11, 0x11, 0x0E, 0x11, 0x11, 0x0E],
        '9' => [0x0E, 0x11, 0x11, 0x0F, 0x01, 0x02, 0x0C],
        ':' => [0x00, 0x0C, 0x0C, 0x00, 0x0C, 0x0C, 0x00],
        '#' => [0x0A, 0x0A, 0x1F, 0x0A, 0x1F, 0x0A, 0x0A],
        'A' => [0x0E, 0x11, 0x11, 0x1F, 0x11, 0x11, 0x11],
        'C' => [0x0E, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0E],
        'E' => [0x1F, 0x10, 0x10, 0x1E, 0x10, 0x10, 0x1F],
        'I' => [0x0E, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0E],
        'M' => [0x11, 0x1B, 0x15, 0x15, 0x11, 0x11, 0x11],
        'O' => [0x0E, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        'P' => [0x1E, 0x11, 0x11, 0x1E, 0x10, 0x10, 0x10],
        'R' => [0x1E, 0x11, 0x11, 0x1E, 0x14, 0x12, 0x11],
        'S' => [0x0F, 0x10, 0x10, 0x0E, 0x01, 0x01, 0x1E],
        'T' => [0x1F, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0E],
        _ => [0; 7],
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Width and height from the first SOF0..SOF2 segment of a JPEG.
    pub(crate) fn sof_dimensions(jpeg: &[u8]) -> Option<(u16, u16)> {
        let mut i = 2;
        while i + 9 < jpeg.len() {
            if jpeg[i] != 0xFF {
                return None;
            }
            let marker = jpeg[i + 1];
            let len = usize::from(u16::from_be_bytes([jpeg[i + 2], jpeg[i + 3]]));
            if (0xC0..=0xC2).contains(&marker) {
                let h = u16::from_be_bytes([jpeg[i + 5], jpeg[i + 6]]);
                let w = u16::from_be_bytes([jpeg[i + 7], jpeg[i + 8]]);
                return Some((w, h));
            }
            i += 2 + len;
        }
        None
    }

    #[test]
    fn a_frame_is_a_jpeg_of_the_right_size() {
        let mut c = Canvas::new(WIDTH, HEIGHT);
        c.draw_test_pattern(123, 45_296);
        let jpeg = c.encode_jpeg().unwrap();
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "SOI");
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "EOI");
        assert_eq!(sof_dimensions(&jpeg), Some((WIDTH, HEIGHT)));
        assert!(jpeg.len() < 200 * 1024, "{} bytes", jpeg.len());
    }

    #[test]
    fn the_pattern_moves_and_the_clock_is_drawn() {
        let mut a = Canvas::new(WIDTH, HEIGHT);
        let mut b = Canvas::new(WIDTH, HEIGHT);
        a.draw_test_pattern(1, 0);
        b.draw_test_pattern(2, 0);
        assert_ne!(a.rgb, b.rgb);
        // The band holds white clock pixels.
        let band = &a.rgb[usize::from(WIDTH) * 3 * (usize::from(HEIGHT) - 50)..];
        assert!(band.chunks(3).any(|p| p == [255, 255, 255]));
    }

    #[tokio::test]
    async fn frames_count_up_and_carry_a_jpeg() {
        let shutdown = CancellationToken::new();
        let cam = Camera::start(shutdown.clone()).await.unwrap();
        let mut rx = cam.frames();
        let mut seen = Vec::new();
        while seen.len() < 3 {
            tokio::time::timeout(Duration::from_secs(5), rx.changed())
                .await
                .unwrap()
                .unwrap();
            let f = rx.borrow_and_update().clone();
            // The very first tick may come before we subscribed: nothing encoded then.
            if f.jpeg.is_empty() {
                assert!(seen.is_empty(), "a watched frame is encoded");
                continue;
            }
            assert_eq!(sof_dimensions(&f.jpeg), Some((WIDTH, HEIGHT)));
            seen.push(f.number);
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        shutdown.cancel();
        tokio::time::timeout(Duration::from_secs(5), cam.wait())
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn udp_echo_answers() {
        let shutdown = CancellationToken::new();
        let cam = Camera::start(shutdown.clone()).await.unwrap();
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.send_to(b"ping", cam.udp_addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let (n, _) = tokio::time::timeout(Duration::from_secs(5), s.recv_from(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&buf[..n], b"ping");
        shutdown.cancel();
        cam.wait().await;
    }
}

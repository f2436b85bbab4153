//! A fake network video recorder that behaves like the real ones behind Periscope: endless
//! MJPEG, WebSockets (echo and pushed video), redirects to its LAN address, an API that shows
//! what the recorder sees of the visitor, slow answers, sloppy HTTP written by hand, uploads and
//! large downloads with checksums. Optionally served over TLS with a self-signed certificate.
//!
//! | path | answer |
//! |---|---|
//! | `/` | 302 to `http://192.168.1.50/doc/page.html` (a LAN address that is not the target) |
//! | `/self` | 302 to `http://ADDR/doc/page.html` (its own address), with `Content-Location` and `Refresh` the same way |
//! | `/host` | 302 to `http://HOST/doc/page.html`, HOST from the request's `Host` |
//! | `/headers` | the request headers as the recorder sees them, `name: value` per line |
//! | `/api/request` | JSON `{client_ip, host, secure, headers: {name: [values]}}` as the recorder sees them; `secure` is Moonfire's check: `X-Forwarded-Proto` is `https` (without that header: whether the connection itself is TLS) |
//! | `/mjpeg?fps=N&size=B` | endless `multipart/x-mixed-replace` of B-byte JPEG frames at N per second |
//! | `/stream` | `frame-1`, then `frame-2` only after [`Nvr::release`] fires |
//! | `/events?ms=N&n=K` | server-sent events (`text/event-stream`): `id: I` / `data: event I`, one every N ms, K of them (default endless); [`Nvr::events_written`] counts them |
//! | `/slow?ms=N` | the response head after N ms |
//! | `/upload` (POST) | `LEN SHA256HEX` of the request body |
//! | `/download?bytes=N` | N bytes of [`pattern`], `x-sha256` header with its checksum |
//! | `/ws/echo` | WebSocket echoing text and binary messages |
//! | `/ws/video?fps=N` | WebSocket pushing binary frames `frame N` at N per second |
//! | `/sloppy/casing`, `/sloppy/duplicate`, `/sloppy/lf`, `/sloppy/close` | hand-written responses: odd header casing, duplicate headers, bare LF line ends, no Content-Length with a close-delimited body |

use std::{
    collections::BTreeMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{header, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::Notify,
};
use tokio_tungstenite::{
    tungstenite::{handshake::derive_accept_key, protocol::Role, Message},
    WebSocketStream,
};

type Body = BoxBody<Bytes, Infallible>;

/// The multipart boundary of `/mjpeg`.
pub const BOUNDARY: &str = "nvrframe";

/// A running fake recorder.
pub struct Nvr {
    pub addr: SocketAddr,
    state: Arc<State>,
}

struct State {
    addr: SocketAddr,
    release: Notify,
    /// MJPEG bytes handed to the connection so far (all `/mjpeg` responses together).
    mjpeg_sent: AtomicU64,
    /// TCP connections accepted so far.
    connections: AtomicU64,
    /// Whether connections are TLS.
    tls: bool,
    /// The SNI of every TLS handshake so far (`None`: the client sent none).
    snis: std::sync::Mutex<Vec<Option<String>>>,
    /// Server-sent events handed to the connection so far (all `/events` responses).
    events_written: AtomicU64,
}

impl Nvr {
    /// TCP connections the recorder has accepted so far.
    pub fn connections(&self) -> u64 {
        self.state.connections.load(Ordering::Relaxed)
    }

    /// A plain-HTTP recorder on an ephemeral loopback port.
    pub async fn start() -> Nvr {
        Self::listen(None).await
    }

    /// A recorder speaking HTTPS with a fresh self-signed certificate for `nvr.lan` and
    /// 127.0.0.1 (as recorders ship them).
    pub async fn start_tls() -> Nvr {
        let ck = rcgen::generate_simple_self_signed(vec!["nvr.lan".into(), "127.0.0.1".into()])
            .expect("self-signed certificate");
        let key = tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(
            ck.signing_key.serialize_der(),
        )
        .expect("key");
        let mut cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![ck.cert.der().clone()], key)
        .expect("server config");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self::listen(Some(tokio_rustls::TlsAcceptor::from(Arc::new(cfg)))).await
    }

    async fn listen(tls: Option<tokio_rustls::TlsAcceptor>) -> Nvr {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let state = Arc::new(State {
            addr,
            release: Notify::new(),
            mjpeg_sent: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            tls: tls.is_some(),
            snis: std::sync::Mutex::new(Vec::new()),
            events_written: AtomicU64::new(0),
        });
        let st = state.clone();
        tokio::spawn(async move {
            while let Ok((s, peer)) = l.accept().await {
                st.connections.fetch_add(1, Ordering::Relaxed);
                let st = st.clone();
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(s).await {
                                let sni = s.get_ref().1.server_name().map(str::to_string);
                                st.snis.lock().expect("snis").push(sni);
                                serve_http(st, s, peer).await;
                            }
                        }
                        None => serve_plain(st, s, peer).await,
                    }
                });
            }
        });
        Nvr { addr, state }
    }

    /// Let `/stream` send its second frame.
    pub fn release(&self) {
        self.state.release.notify_one();
    }

    /// The SNI of each TLS handshake the recorder has accepted so far, in order.
    pub fn snis(&self) -> Vec<Option<String>> {
        self.state.snis.lock().expect("snis").clone()
    }

    /// Server-sent events the recorder has written so far.
    pub fn events_written(&self) -> u64 {
        self.state.events_written.load(Ordering::SeqCst)
    }

    /// MJPEG bytes the recorder has written so far.
    pub fn mjpeg_sent(&self) -> u64 {
        self.state.mjpeg_sent.load(Ordering::Relaxed)
    }
}

/// `n` bytes of the download pattern (deterministic, not compressible by repetition).
pub fn pattern(n: usize) -> Vec<u8> {
    let mut x: u32 = 0x1234_5678;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

/// Lowercase hex SHA-256.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Plain connections: hand-written sloppy answers for `/sloppy/*`, hyper for the rest.
async fn serve_plain(st: Arc<State>, s: TcpStream, peer: SocketAddr) {
    let mut line = [0u8; 64];
    let n = loop {
        match s.peek(&mut line).await {
            Ok(0) | Err(_) => return,
            Ok(n) if n == line.len() || line[..n].contains(&b'\n') => break n,
            Ok(_) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    };
    if line[..n].starts_with(b"GET /sloppy/") {
        sloppy(s).await
    } else {
        serve_http(st, s, peer).await
    }
}

async fn serve_http<S>(st: Arc<State>, s: S, peer: SocketAddr)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = hyper::service::service_fn(move |req| {
        let st = st.clone();
        async move { Ok::<_, Infallible>(route(st, peer, req).await) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(s), svc)
        .with_upgrades()
        .await;
}

fn query(req: &Request<Incoming>, key: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == key).then(|| v.parse().ok()).flatten()
    })
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(status: StatusCode, headers: &[(&str, String)], body: Body) -> Response<Body> {
    let mut b = Response::builder().status(status);
    for (k, v) in headers {
        b = b.header(*k, v);
    }
    b.body(body).expect("response")
}

async fn route(st: Arc<State>, peer: SocketAddr, mut req: Request<Incoming>) -> Response<Body> {
    let redirect = |to: String, extra: bool| {
        let mut h = vec![("location", to.clone())];
        if extra {
            h.push(("content-location", to.clone()));
            h.push(("refresh", format!("0; url={to}")));
        }
        respond(StatusCode::FOUND, &h, full("moved"))
    };
    match req.uri().path() {
        "/" => redirect("http://192.168.1.50/doc/page.html".into(), false),
        "/self" => redirect(format!("http://{}/doc/page.html", st.addr), true),
        "/host" => {
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("")
                .to_string();
            redirect(format!("http://{host}/doc/page.html"), false)
        }
        "/headers" => {
            let mut text = String::new();
            for (k, v) in req.headers() {
                text.push_str(&format!("{k}: {}\n", v.to_str().unwrap_or("?")));
            }
            respond(StatusCode::OK, &[], full(text))
        }
        "/api/request" => {
            let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for (k, v) in req.headers() {
                headers
                    .entry(k.to_string())
                    .or_default()
                    .push(v.to_str().unwrap_or("?").to_string());
            }
            let host = req
                .headers()
                .get(header::HOST)
                .and_then(|h| h.to_str().ok());
            // Moonfire NVR (with --trust-forward-hdrs) decides "secure" from X-Forwarded-Proto.
            let secure = match req.headers().get("x-forwarded-proto") {
                Some(p) => p.as_bytes().eq_ignore_ascii_case(b"https"),
                None => st.tls,
            };
            let json = serde_json::json!({
                "client_ip": peer.ip().to_string(),
                "host": host,
                "secure": secure,
                "headers": headers,
            });
            respond(
                StatusCode::OK,
                &[("content-type", "application/json".into())],
                full(json.to_string()),
            )
        }
        "/mjpeg" => {
            let fps = query(&req, "fps").unwrap_or(10).max(1);
            let size = query(&req, "size").unwrap_or(2048) as usize;
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                let jpeg = {
                    let mut j = vec![0x55u8; size.max(4)];
                    j[..2].copy_from_slice(&[0xff, 0xd8]);
                    let n = j.len();
                    j[n - 2..].copy_from_slice(&[0xff, 0xd9]);
                    Bytes::from(j)
                };
                let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / fps));
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                for i in 0u64.. {
                    tick.tick().await;
                    let head = format!(
                        "--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {}\r\nX-Frame: {i}\r\n\r\n",
                        jpeg.len()
                    );
                    for part in [Bytes::from(head), jpeg.clone(), Bytes::from_static(b"\r\n")] {
                        let n = part.len() as u64;
                        if tx.send_data(part).await.is_err() {
                            return;
                        }
                        st.mjpeg_sent.fetch_add(n, Ordering::Relaxed);
                    }
                }
            });
            respond(
                StatusCode::OK,
                &[(
                    "content-type",
                    format!("multipart/x-mixed-replace; boundary={BOUNDARY}"),
                )],
                body.boxed(),
            )
        }
        "/stream" => {
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(4);
            tokio::spawn(async move {
                let _ = tx.send_data("frame-1\n".into()).await;
                st.release.notified().await;
                let _ = tx.send_data("frame-2\n".into()).await;
            });
            Response::new(body.boxed())
        }
        "/events" => {
            let ms = query(&req, "ms").unwrap_or(500).max(1);
            let n = query(&req, "n").unwrap_or(u64::MAX);
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(1);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_millis(ms));
                for i in 1..=n {
                    tick.tick().await;
                    let event = format!("id: {i}\ndata: event {i}\n\n");
                    // Counted before it is handed on: a reader holding event I knows whether
                    // event I + 1 has been written yet.
                    st.events_written.fetch_add(1, Ordering::SeqCst);
                    if tx.send_data(event.into()).await.is_err() {
                        return;
                    }
                }
            });
            respond(
                StatusCode::OK,
                &[
                    ("content-type", "text/event-stream".into()),
                    ("cache-control", "no-cache".into()),
                ],
                body.boxed(),
            )
        }
        "/slow" => {
            let ms = query(&req, "ms").unwrap_or(1000);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Response::new(full("slow answer"))
        }
        "/upload" => {
            let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
            let mut len = 0usize;
            let mut body = req.into_body();
            while let Some(frame) = body.frame().await {
                let Ok(frame) = frame else {
                    return respond(StatusCode::BAD_REQUEST, &[], full("broken upload"));
                };
                if let Some(d) = frame.data_ref() {
                    len += d.len();
                    ctx.update(d);
                }
            }
            let hex: String = ctx
                .finish()
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            Response::new(full(format!("{len} {hex}")))
        }
        "/download" => {
            let n = query(&req, "bytes").unwrap_or(1024) as usize;
            let data = Bytes::from(pattern(n));
            let sum = sha256_hex(&data);
            let (mut tx, body) = http_body_util::channel::Channel::<Bytes, Infallible>::new(2);
            tokio::spawn(async move {
                let mut at = 0;
                while at < data.len() {
                    let end = (at + 64 * 1024).min(data.len());
                    if tx.send_data(data.slice(at..end)).await.is_err() {
                        return;
                    }
                    at = end;
                }
            });
            respond(
                StatusCode::OK,
                &[("content-length", n.to_string()), ("x-sha256", sum)],
                body.boxed(),
            )
        }
        "/ws/echo" | "/ws/video" => {
            let Some(key) = req.headers().get("sec-websocket-key") else {
                return respond(StatusCode::BAD_REQUEST, &[], full("not a websocket"));
            };
            let accept = derive_accept_key(key.as_bytes());
            let video = req.uri().path() == "/ws/video";
            let fps = query(&req, "fps").unwrap_or(10).max(1);
            let upgrade = hyper::upgrade::on(&mut req);
            tokio::spawn(async move {
                let Ok(up) = upgrade.await else { return };
                let ws =
                    WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Server, None).await;
                if video {
                    ws_video(ws, fps).await
                } else {
                    ws_echo(ws).await
                }
            });
            respond(
                StatusCode::SWITCHING_PROTOCOLS,
                &[
                    ("upgrade", "websocket".into()),
                    ("connection", "Upgrade".into()),
                    ("sec-websocket-accept", accept),
                ],
                full(Bytes::new()),
            )
        }
        _ => respond(StatusCode::NOT_FOUND, &[], full("no such page")),
    }
}

async fn ws_echo<S: AsyncRead + AsyncWrite + Unpin>(mut ws: WebSocketStream<S>) {
    while let Some(Ok(msg)) = ws.next().await {
        if (msg.is_text() || msg.is_binary()) && ws.send(msg).await.is_err() {
            return;
        }
    }
}

async fn ws_video<S: AsyncRead + AsyncWrite + Unpin>(ws: WebSocketStream<S>, fps: u64) {
    let (mut tx, mut rx) = ws.split();
    let mut tick = tokio::time::interval(Duration::from_micros(1_000_000 / fps));
    for i in 0u64.. {
        tokio::select! {
            _ = tick.tick() => {
                if tx.send(Message::binary(format!("frame {i}").into_bytes())).await.is_err() {
                    return;
                }
            }
            m = rx.next() => if !matches!(m, Some(Ok(_))) { return },
        }
    }
}

/// Hand-written answers the way embedded web servers write them.
async fn sloppy(mut s: TcpStream) {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") && !head.ends_with(b"\n\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return,
        }
    }
    let path = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string();
    let resp: &[u8] = match path.as_str() {
        "/sloppy/casing" => b"HTTP/1.1 200 OK\r\ncOnTeNt-TyPe: text/plain\r\nX-CAMERA-name: Front Door\r\ncontent-LENGTH: 11\r\n\r\ncasing body",
        "/sloppy/duplicate" => b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1; Path=/\r\nSet-Cookie: b=2; Path=/\r\nX-Dup: one\r\nX-Dup: two\r\nContent-Length: 9\r\n\r\ndup body!",
        "/sloppy/lf" => b"HTTP/1.1 200 OK\nContent-Type: text/plain\nX-Line-Ends: lf\nContent-Length: 7\n\nlf body",
        "/sloppy/close" => b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\nbody until the recorder closes",
        _ => b"HTTP/1.0 404 Not Found\r\n\r\n",
    };
    let _ = s.write_all(resp).await;
    let _ = s.shutdown().await;
}

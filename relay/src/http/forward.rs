//! Routing a visitor request by its authority and carrying it to the agent: one stream per
//! request (or upgraded connection), HTTP/1.1 toward the target, bodies streamed both ways.

use std::{
    net::SocketAddr,
    sync::{atomic::Ordering, Arc},
    time::Duration,
};

use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use bytes::Bytes;
use http::{
    header, HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::{
    transport::{copy_bidirectional_idle, Connection},
    HttpOptions, StreamErrorKind, StreamKind, StreamOpen,
};
use tokio::time::Instant;

use super::{pages::page, Body};
use crate::{
    conns::{Kind, NewConn, Tracked, TrackedBody},
    open::{OpenError, Pipelined},
    token::normalize_host,
    Shared,
};

/// What the edge knows about the visitor's connection.
#[derive(Debug)]
pub(crate) struct Visitor {
    pub(crate) peer: SocketAddr,
    pub(crate) local: SocketAddr,
    pub(crate) sni: Option<String>,
    /// Owns the per-request tasks (target connection, upgraded copy).
    pub(crate) tasks: tokio_util::task::TaskTracker,
}

/// Where an http hostname goes.
#[derive(Clone)]
pub(crate) struct Route {
    pub(crate) agent: String,
    pub(crate) session: u64,
    pub(crate) conn: Connection,
    pub(crate) tunnel: u32,
    /// The tunnel's HTTP options from the agent's Hello.
    pub(crate) opts: Arc<HttpOptions>,
    /// Idle connections to the target, for reuse.
    pub(crate) pool: Arc<Pool>,
    /// The agent's stream budget (`limits.streams_per_agent`), shared by its routes.
    pub(crate) streams: Arc<tokio::sync::Semaphore>,
}

/// Idle HTTP/1.1 connections to one route's target, each an agent stream whose TCP connection
/// to the recorder stays open: like nginx's upstream keepalive, a request on a reused one
/// costs no stream-open round trip and no new connection at the agent. Dropped with the route
/// (agent gone), after [`POOL_IDLE_FOR`] unused, or when the recorder closes them.
#[derive(Debug, Default)]
pub(crate) struct Pool {
    /// Oldest first: connections are put back in time order and taken from the end.
    idle: std::sync::Mutex<Vec<(Sender, Instant)>>,
    /// A [`sweep`] task is running (changed under the `idle` lock).
    sweeping: std::sync::atomic::AtomicBool,
}

type Sender = hyper::client::conn::http1::SendRequest<Body>;

/// Idle connections kept per route: above what a busy HTTP/2 page keeps in flight. With 32,
/// 64 requests in flight (`h2load -c4 -m16`) closed a burst's surplus only to reopen it: one
/// request in five paid a new agent stream and a new connection at the recorder.
const POOL_MAX_IDLE: usize = 128;
/// Reuse only connections idle for less than this: embedded web servers close keep-alive
/// connections after a few seconds to a minute, and a reused one must still be open.
const POOL_IDLE_FOR: Duration = Duration::from_secs(4);

impl Pool {
    fn take(&self) -> Option<Sender> {
        let mut idle = self.idle.lock().ok()?;
        while let Some((s, at)) = idle.pop() {
            if at.elapsed() < POOL_IDLE_FOR && s.is_ready() {
                return Some(s);
            }
        }
        None
    }

    /// Keep `s` for reuse. One task per pool, not one per connection, drops (closing their
    /// agent streams) those still idle after [`POOL_IDLE_FOR`]: a timer per response would
    /// keep tens of thousands of tasks alive under load.
    fn put(self: &Arc<Self>, s: Sender, tasks: &tokio_util::task::TaskTracker) {
        let Ok(mut idle) = self.idle.lock() else {
            return;
        };
        if idle.len() >= POOL_MAX_IDLE {
            return;
        }
        idle.push((s, Instant::now()));
        if !self.sweeping.swap(true, Ordering::Relaxed) {
            tasks.spawn(sweep(Arc::downgrade(self)));
        }
    }

    /// Drop every idle connection (their agent streams are wanted for new requests).
    fn clear(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }
}

/// Drop `pool`'s connections as they pass [`POOL_IDLE_FOR`]; ends when the pool is empty (the
/// next [`Pool::put`] starts another) or gone with its route.
async fn sweep(pool: std::sync::Weak<Pool>) {
    loop {
        let next = {
            let Some(pool) = pool.upgrade() else { return };
            let Ok(mut idle) = pool.idle.lock() else {
                return;
            };
            let fresh = idle
                .iter()
                .position(|(_, at)| at.elapsed() < POOL_IDLE_FOR)
                .unwrap_or(idle.len());
            idle.drain(..fresh);
            match idle.first() {
                Some((_, at)) => *at + POOL_IDLE_FOR,
                None => {
                    pool.sweeping.store(false, Ordering::Relaxed);
                    return;
                }
            }
        };
        tokio::time::sleep_until(next).await;
    }
}

/// Headers a visitor may not set: the relay writes its own from the socket.
const FORWARDING: [&str; 6] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "x-real-ip",
];

/// Hop-by-hop headers (RFC 9110 7.6.1), never forwarded as they are.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
];

/// Response headers that may carry a URL pointing at the target.
const URL_HEADERS: [HeaderName; 2] = [header::LOCATION, header::CONTENT_LOCATION];

pub(crate) async fn handle(
    shared: Arc<Shared>,
    v: Arc<Visitor>,
    req: Request<Incoming>,
    host: Result<String, &'static str>,
) -> Response<Body> {
    // hyper refuses heads beyond its buffer with a bare 431; the limit itself is checked here
    // (the buffer has some slack above it) so most visitors get a page that says why.
    if head_size(&req) > shared.config.limits.max_request_head {
        return page(
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "Request headers too large",
            "The request's headers are larger than this site accepts. Clearing the site's cookies may help.",
        );
    }
    // The caller parsed it once (`request_host`), for this and for its metrics label.
    let host = match host {
        Ok(h) => h,
        Err(msg) => return page(StatusCode::BAD_REQUEST, "Bad request", msg),
    };
    // The policy is checked per request (HTTP/2 reuses connections): the authority must be
    // the name the TLS connection was opened for (domain fronting, Traefik CVE-2019-20894).
    if v.sni.as_deref().is_some_and(|sni| sni != host) {
        return page(
            StatusCode::MISDIRECTED_REQUEST,
            "Misdirected request",
            "This connection was opened for another hostname.",
        );
    }
    let route = shared.routes.get(&host).map(|r| r.clone());
    let offline_since = shared.offline.get(&host).map(|t| *t);
    if route.is_none() && offline_since.is_none() {
        return page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
        );
    }
    // Deny by default: nothing reaches the recorder without the edge's consent (login,
    // share link, allow-listed network or a public rule); our cookie is stripped here.
    let req = match crate::access::check(&shared, &v, &host, req).await {
        Ok(req) => req,
        Err(resp) => return resp,
    };
    let Some(route) = route else {
        let since = offline_since.map_or_else(String::new, |t| {
            format!(" since {} UTC", humantime::format_rfc3339_seconds(t))
        });
        return page(
            StatusCode::BAD_GATEWAY,
            "Recorder offline",
            &format!("The recorder's agent has been offline{since}. It reconnects by itself when its network is back."),
        );
    };
    if req.method() == Method::CONNECT && !is_h2_websocket(&req) {
        return page(
            StatusCode::METHOD_NOT_ALLOWED,
            "Method not allowed",
            "This site is not a proxy.",
        );
    }
    forward(&shared, &v, route, host, req).await
}

/// Size of a request head as HTTP/1.1 would write it (HTTP/2 counts 32 more per field).
fn head_size<B>(req: &Request<B>) -> usize {
    let uri = req.uri();
    let target = uri.path_and_query().map_or(1, |p| p.as_str().len())
        + uri.authority().map_or(0, |a| a.as_str().len());
    let line = req.method().as_str().len() + target + 12;
    req.headers()
        .iter()
        .map(|(k, v)| k.as_str().len() + v.len() + 4)
        .sum::<usize>()
        + line
        + 2
}

/// The request's host, normalised; one Host header at most, agreeing with an absolute URI.
pub(crate) fn request_host<B>(req: &Request<B>) -> Result<String, &'static str> {
    let mut hosts = req.headers().get_all(header::HOST).iter();
    let header = hosts.next();
    if hosts.next().is_some() {
        return Err("More than one Host header.");
    }
    let header = header
        .map(|h| {
            h.to_str()
                .map(normalize_host)
                .map_err(|_| "Invalid Host header.")
        })
        .transpose()?;
    let target = req.uri().authority().map(|a| normalize_host(a.host()));
    match (header, target) {
        (Some(h), Some(t)) if h != t => Err("Host header and request target disagree."),
        (Some(h), _) => Ok(h),
        (None, Some(t)) => Ok(t),
        (None, None) => Err("The request has no Host header."),
    }
}

/// Open the agent stream for one request, the agent's reply still on its way (see
/// [`crate::open::open_pipelined`]); `Err` is the error page to answer with.
async fn open_stream(
    shared: &Shared,
    v: &Visitor,
    route: &Route,
) -> Result<Pipelined, Box<Response<Body>>> {
    let open = StreamOpen {
        tunnel: route.tunnel,
        visitor: v.peer,
        server: v.local,
        kind: StreamKind::Http,
    };
    crate::open::open_pipelined(shared, &route.conn, open)
        .await
        .map_err(|e| open_error_page(shared, &e))
}

/// The page for a stream the agent could not open.
fn open_error_page(shared: &Shared, e: &OpenError) -> Box<Response<Body>> {
    let timeout =
        |detail: &str| Box::new(page(StatusCode::GATEWAY_TIMEOUT, "Gateway timeout", detail));
    let bad_gateway = |detail: &str| Box::new(page(StatusCode::BAD_GATEWAY, "Bad gateway", detail));
    match e {
        OpenError::Failed(e) if e.kind == StreamErrorKind::Timeout => {
            timeout("The recorder did not answer in time.")
        }
        OpenError::Failed(e) => {
            tracing::info!("target unavailable: {e}");
            bad_gateway("The recorder is not accepting connections.")
        }
        OpenError::TimedOut => timeout(&format!(
            "The recorder (or its agent) did not answer within {}.",
            humantime::format_duration(shared.config.limits.connect_timeout)
        )),
        OpenError::Unreachable(e) => {
            bad_gateway(&format!("The recorder's agent is unreachable ({e})."))
        }
        OpenError::Closed => bad_gateway("The recorder's agent closed the request."),
    }
}

/// A new HTTP/1.1 connection to the target over a new agent stream.
async fn connect(
    shared: &Shared,
    v: &Visitor,
    route: &Route,
) -> Result<Sender, Box<Response<Body>>> {
    let limit = shared.config.limits.connect_timeout;
    let permit = match route.streams.clone().try_acquire_owned() {
        Ok(p) => Ok(p),
        Err(_) => {
            // At the agent's stream budget: idle kept-alive connections give theirs back.
            route.pool.clear();
            tokio::time::timeout(limit, route.streams.clone().acquire_owned())
                .await
                .map_err(|_| ())
                .and_then(|r| r.map_err(|_| ()))
        }
    };
    let Ok(permit) = permit else {
        return Err(Box::new(page(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout",
            "Too many requests are in progress to this recorder; try again in a moment.",
        )));
    };
    let stream = open_stream(shared, v, route).await?;
    // Recorders write sloppy HTTP: be lenient with what they answer (bare LF line ends,
    // duplicate headers and close-delimited bodies are fine for hyper already). Request
    // headers go out in Title-Case, as browsers write them: some embedded servers compare
    // names case-sensitively.
    let (sender, conn) = match hyper::client::conn::http1::Builder::new()
        .allow_spaces_after_header_name_in_responses(true)
        .allow_obsolete_multiline_headers_in_responses(true)
        .ignore_invalid_headers_in_responses(true)
        .title_case_headers(true)
        .handshake::<_, Body>(TokioIo::new(stream))
        .await
    {
        Ok(x) => x,
        Err(e) => {
            return Err(Box::new(page(
                StatusCode::BAD_GATEWAY,
                "Bad gateway",
                &format!("Tunnel failed: {e}."),
            )))
        }
    };
    // The connection task ends when its sender is dropped (or the upgraded connection is
    // done).
    v.tasks.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("target connection: {e}");
        }
        drop(permit);
    });
    Ok(sender)
}

async fn forward(
    shared: &Shared,
    v: &Visitor,
    route: Route,
    host: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
    // A WebSocket over HTTP/2 (RFC 8441: CONNECT with :protocol websocket) becomes the classic
    // HTTP/1.1 Upgrade toward the target; the visitor gets 200 once the target has switched.
    let h2_websocket = is_h2_websocket(&req);
    if h2_websocket {
        *req.method_mut() = Method::GET;
        let h = req.headers_mut();
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        let key: [u8; 16] = rand::random();
        if let Ok(k) = HeaderValue::from_str(&BASE64.encode(key)) {
            h.insert(header::SEC_WEBSOCKET_KEY, k);
        }
    }
    let upgrade = h2_websocket || wants_upgrade(req.headers());
    let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    // Kept for the connections list in case this becomes a WebSocket or a long response
    // (cheap: the path shares the request's buffer).
    let uri = req.uri().clone();
    if let Some(n) = hyper::body::Body::size_hint(req.body()).exact() {
        shared.metrics.http_bytes_up().inc_by(n);
    }
    prepare_request(&mut req, v, &host, upgrade, &route.opts);
    // An upgraded connection is never returned to the pool, so it never comes from it either.
    let pooled = if upgrade { None } else { route.pool.take() };
    // A reused connection may have been closed by the recorder a moment ago (many embedded
    // servers close kept-alive connections without saying so). A request it hands back unsent
    // goes out on a new connection; so does a bodiless idempotent one that failed on it, as
    // nginx retries its upstream keep-alive connections.
    let retry = (pooled.is_some() && is_retryable(&req)).then(|| bodiless_copy(&req));
    let req = req.map(|b| b.boxed());
    let sent = match pooled {
        Some(mut s) => match s.try_send_request(req).await {
            Ok(r) => Ok((s, r)),
            Err(mut e) => match (e.take_message(), retry) {
                (Some(req), _) => send_new(shared, v, &route, req).await,
                (None, Some(again)) => {
                    tracing::debug!(
                        "reused connection to the recorder failed ({}); retrying on a new one",
                        e.error()
                    );
                    send_new(shared, v, &route, again).await
                }
                (None, None) => Err(bad_gateway_closed(e.into_error())),
            },
        },
        None => send_new(shared, v, &route, req).await,
    };
    let (mut sender, mut resp) = match sent {
        Ok(x) => x,
        Err(page) => return *page,
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(visitor_upgrade) = visitor_upgrade {
            let target_upgrade = hyper::upgrade::on(&mut resp);
            let idle = shared.config.limits.idle_timeout;
            let conn = track(shared, v, &route, &host, &uri, Kind::Websocket);
            let totals = (
                shared.metrics.http_bytes_up().clone(),
                shared.metrics.http_bytes_down().clone(),
            );
            v.tasks.spawn(async move {
                if let (Ok(a), Ok(b)) = tokio::join!(visitor_upgrade, target_upgrade) {
                    let mut a = Tracked::new(TokioIo::new(a), conn).with_totals(totals);
                    let mut b = TokioIo::new(b);
                    match copy_bidirectional_idle(&mut a, &mut b, Some(idle)).await {
                        Ok((up, down)) => tracing::debug!(up, down, "upgraded connection done"),
                        Err(e) => tracing::debug!("upgraded connection closed: {e}"),
                    }
                }
            });
        }
    }
    if switching && h2_websocket {
        let mut ok = Response::new(super::pages::full(Bytes::new()));
        for name in [
            header::SEC_WEBSOCKET_PROTOCOL,
            header::SEC_WEBSOCKET_EXTENSIONS,
        ] {
            if let Some(value) = resp.headers().get(&name) {
                ok.headers_mut().insert(name, value.clone());
            }
        }
        return ok;
    }
    if !switching {
        // Back to the pool once this response has been read to its end (at once for most;
        // never for an endless MJPEG stream, whose connection closes with it).
        let pool = route.pool.clone();
        let tasks = v.tasks.clone();
        v.tasks.spawn(async move {
            if sender.ready().await.is_ok() {
                pool.put(sender, &tasks);
            }
        });
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    if route.opts.rewrite_redirects {
        rewrite_redirects(resp.headers_mut(), &route.opts, &host, shared.https_port);
    }
    if !switching && is_long(&resp) {
        let conn = track(shared, v, &route, &host, &uri, Kind::Http);
        let total = shared.metrics.http_bytes_down().clone();
        return resp.map(|b| TrackedBody::new(b, conn, total).boxed());
    }
    if let Some(n) = hyper::body::Body::size_hint(resp.body()).exact() {
        shared.metrics.http_bytes_down().inc_by(n);
    }
    resp.map(|b| b.boxed())
}

/// Responses larger than this (by their `Content-Length`) are listed as connections.
const LONG_BODY: u64 = 1024 * 1024;

/// A response worth listing among the live connections: a live stream or any body without a
/// length (MJPEG, chunked video, SSE), or a large download.
fn is_long<B>(resp: &Response<B>) -> bool {
    let s = resp.status();
    if s.is_informational() || s == StatusCode::NO_CONTENT || s == StatusCode::NOT_MODIFIED {
        return false;
    }
    match resp.headers().get(header::CONTENT_LENGTH) {
        None => true,
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse::<u64>().ok())
            .is_some_and(|n| n > LONG_BODY),
    }
}

/// List this visitor's request among the live connections (until the guard drops).
fn track(
    shared: &Shared,
    v: &Visitor,
    route: &Route,
    host: &str,
    uri: &Uri,
    kind: Kind,
) -> crate::conns::ConnGuard {
    let port = match shared.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    shared.conns.register(NewConn {
        kind,
        visitor: v.peer,
        user: crate::access::meter::current_user(),
        host: host.to_string(),
        path: uri.path().to_string(),
        agent: route.agent.clone(),
        tunnel: format!("https://{host}{port}"),
    })
}

impl std::fmt::Debug for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Route")
            .field("agent", &self.agent)
            .field("session", &self.session)
            .field("tunnel", &self.tunnel)
            .finish_non_exhaustive()
    }
}

/// Safe to send twice: idempotent and without a body.
fn is_retryable(req: &Request<Incoming>) -> bool {
    use hyper::body::Body as _;
    matches!(*req.method(), Method::GET | Method::HEAD | Method::OPTIONS)
        && req.body().is_end_stream()
}

/// The same request with an empty body.
fn bodiless_copy<B>(req: &Request<B>) -> Request<Body> {
    let mut r = Request::new(super::pages::full(Bytes::new()));
    *r.method_mut() = req.method().clone();
    *r.uri_mut() = req.uri().clone();
    *r.version_mut() = req.version();
    *r.headers_mut() = req.headers().clone();
    r
}

/// Send `req` on a new connection to the target.
async fn send_new(
    shared: &Shared,
    v: &Visitor,
    route: &Route,
    req: Request<Body>,
) -> Result<(Sender, Response<Incoming>), Box<Response<Body>>> {
    let mut sender = connect(shared, v, route).await?;
    match sender.send_request(req).await {
        Ok(r) => Ok((sender, r)),
        // The agent's reply to the pipelined open arrives as the response's first bytes.
        Err(e) => Err(match OpenError::find(&e) {
            Some(o) => open_error_page(shared, o),
            None => bad_gateway_closed(e),
        }),
    }
}

fn bad_gateway_closed(e: hyper::Error) -> Box<Response<Body>> {
    Box::new(page(
        StatusCode::BAD_GATEWAY,
        "Bad gateway",
        &format!("The recorder closed the connection ({e})."),
    ))
}

fn is_h2_websocket<B>(req: &Request<B>) -> bool {
    req.method() == Method::CONNECT
        && req
            .extensions()
            .get::<hyper::ext::Protocol>()
            .is_some_and(|p| p.as_str().eq_ignore_ascii_case("websocket"))
}

fn wants_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| {
                v.split(',')
                    .any(|t| t.trim().eq_ignore_ascii_case("upgrade"))
            })
}

/// Remove hop-by-hop headers, including those named in `Connection`; keep the upgrade pair
/// when this message negotiates an upgrade.
fn strip_hop_by_hop(h: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = h
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for n in named {
        if !(keep_upgrade && n == header::UPGRADE) {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
    if keep_upgrade {
        h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else {
        h.remove(header::UPGRADE);
    }
}

/// Rewrite a visitor request for the target: origin-form URI, HTTP/1.1, Host kept (or as the
/// tunnel says), forwarding headers written by us from the socket (never the visitor's), or
/// none at all when the tunnel turns them off.
fn prepare_request<B>(
    req: &mut Request<B>,
    v: &Visitor,
    host: &str,
    upgrade: bool,
    opts: &HttpOptions,
) {
    let path = req
        .uri()
        .path_and_query()
        .map_or("/", |p| p.as_str())
        .to_string();
    *req.uri_mut() = path.parse().unwrap_or_else(|_| Uri::from_static("/"));
    *req.version_mut() = Version::HTTP_11;
    let h = req.headers_mut();
    strip_hop_by_hop(h, upgrade);
    for n in FORWARDING {
        h.remove(n);
    }
    match opts.host_header.as_deref().map(HeaderValue::from_str) {
        Some(Ok(target_host)) => {
            h.insert(header::HOST, target_host);
        }
        _ => {
            if let (false, Ok(hv)) = (h.contains_key(header::HOST), HeaderValue::from_str(host)) {
                h.insert(header::HOST, hv);
            }
        }
    }
    if !opts.forwarded_headers {
        return;
    }
    if let Ok(hv) = HeaderValue::from_str(host) {
        h.insert("x-forwarded-host", hv);
    }
    let ip = v.peer.ip().to_string();
    if let Ok(ipv) = HeaderValue::from_str(&ip) {
        h.insert("x-forwarded-for", ipv.clone());
        h.insert("x-real-ip", ipv);
    }
    h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
    let node = if v.peer.is_ipv6() {
        format!("\"[{ip}]\"")
    } else {
        ip
    };
    if let Ok(f) = HeaderValue::from_str(&format!("for={node};proto=https;host={host}")) {
        h.insert("forwarded", f);
    }
}

/// Point `Location`, `Content-Location` and `Refresh` URLs aimed at the target (or at plain
/// http on the public hostname) at `https://PUBLIC[:port]` with the same path, like nginx's
/// `proxy_redirect default`. Relative URLs and other hosts are left alone.
fn rewrite_redirects(h: &mut HeaderMap, opts: &HttpOptions, public: &str, https_port: u16) {
    let origin = match https_port {
        443 => format!("https://{public}"),
        p => format!("https://{public}:{p}"),
    };
    let rewrite = |url: &str| -> Option<String> {
        let (scheme, rest) = url.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let default_port = match scheme.as_str() {
            "http" => 80,
            "https" => 443,
            _ => return None,
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, path) = rest.split_at(end);
        let (host, port) = split_authority(authority, default_port)?;
        let ours =
            |a: &str, default: u16| split_authority(a, default) == Some((host.clone(), port));
        let target_default = if opts.target_tls { 443 } else { 80 };
        let to_us = (!opts.target.is_empty() && ours(&opts.target, target_default))
            || opts
                .host_header
                .as_deref()
                .is_some_and(|a| ours(a, default_port))
            || (scheme == "http" && host == public);
        to_us.then(|| format!("{origin}{}", if path.is_empty() { "/" } else { path }))
    };
    for name in URL_HEADERS {
        let new = h
            .get(&name)
            .and_then(|v| v.to_str().ok())
            .and_then(&rewrite)
            .and_then(|u| HeaderValue::from_str(&u).ok());
        if let Some(v) = new {
            h.insert(name, v);
        }
    }
    // `Refresh: 5; url=http://…` (the URL may be quoted).
    let refresh = h
        .get("refresh")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let at = v.to_ascii_lowercase().find("url=")? + 4;
            let (head, url) = v.split_at(at);
            let quote = url.chars().next().filter(|c| *c == '\'' || *c == '"');
            let bare = quote.map_or(url, |q| url.trim_start_matches(q).trim_end_matches(q));
            let new = rewrite(bare.trim())?;
            let q = quote.map(String::from).unwrap_or_default();
            HeaderValue::from_str(&format!("{head}{q}{new}{q}")).ok()
        });
    if let Some(v) = refresh {
        h.insert("refresh", v);
    }
}

/// `host[:port]` → lowercase host and port (default when absent); IPv6 in brackets.
fn split_authority(a: &str, default_port: u16) -> Option<(String, u16)> {
    let a = a.rsplit_once('@').map_or(a, |(_, h)| h);
    let (host, port) = match a.rsplit_once(':') {
        Some((h, p)) if !p.contains(']') => (h, p.parse().ok()?),
        _ => (a, default_port),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    (!host.is_empty()).then_some((host, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(host_headers: &[&str], uri: &str) -> Request<()> {
        let mut b = Request::builder().uri(uri);
        for h in host_headers {
            b = b.header(header::HOST, *h);
        }
        b.body(()).unwrap()
    }

    /// A ready sender to the target; the returned end reads EOF once the sender is gone.
    async fn sender(tasks: &tokio_util::task::TaskTracker) -> (Sender, tokio::io::DuplexStream) {
        let (near, far) = tokio::io::duplex(1024);
        let (mut s, conn) = hyper::client::conn::http1::handshake(TokioIo::new(near))
            .await
            .unwrap();
        tasks.spawn(conn);
        s.ready().await.unwrap();
        (s, far)
    }

    async fn closed(far: &mut tokio::io::DuplexStream) -> bool {
        use tokio::io::AsyncReadExt;
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_millis(1), far.read(&mut b)).await,
            Ok(Ok(0))
        )
    }

    #[tokio::test(start_paused = true)]
    async fn idle_connections_are_dropped_after_the_idle_time_by_one_sweeper() {
        let tasks = tokio_util::task::TaskTracker::new();
        let pool = Arc::new(Pool::default());
        let (a, mut far_a) = sender(&tasks).await;
        let (b, mut far_b) = sender(&tasks).await;
        pool.put(a, &tasks);
        tokio::time::sleep(Duration::from_secs(2)).await;
        pool.put(b, &tasks);
        // The second put found the sweeper running: still one task beside the two connections.
        assert_eq!(tasks.len(), 3);
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert!(closed(&mut far_a).await, "idle for 4.1 s: dropped");
        assert!(!closed(&mut far_b).await, "idle for 2.1 s: kept");
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert!(closed(&mut far_b).await);
        assert!(pool.take().is_none());
        assert!(!pool.sweeping.load(Ordering::Relaxed), "the sweeper ended");
        // Connection tasks ended with their senders, the sweeper with the empty pool.
        tokio::task::yield_now().await;
        assert_eq!(tasks.len(), 0);

        // A fresh put starts a new sweeper; a connection taken back is not dropped by it.
        let (c, mut far_c) = sender(&tasks).await;
        pool.put(c, &tasks);
        assert!(pool.sweeping.load(Ordering::Relaxed));
        let c = pool.take().expect("fresh and ready");
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert!(!closed(&mut far_c).await, "in use, not in the pool");
        assert!(!pool.sweeping.load(Ordering::Relaxed));
        drop(c);
    }

    #[test]
    fn long_responses_are_streams_and_large_bodies() {
        let resp = |code: u16, len: Option<&str>| {
            let mut b = Response::builder().status(code);
            if let Some(l) = len {
                b = b.header(header::CONTENT_LENGTH, l);
            }
            b.body(()).unwrap()
        };
        assert!(is_long(&resp(200, None)), "MJPEG, chunked: no length");
        assert!(is_long(&resp(200, Some("104857600"))), "a large download");
        assert!(!is_long(&resp(200, Some("5120"))));
        assert!(!is_long(&resp(204, None)));
        assert!(!is_long(&resp(304, None)));
        assert!(!is_long(&resp(200, Some("nonsense"))));
    }

    #[test]
    fn host_rules() {
        assert_eq!(
            request_host(&req(&["Cam.Example.com:443"], "/")).unwrap(),
            "cam.example.com"
        );
        assert_eq!(
            request_host(&req(&[], "https://cam.example.com/x")).unwrap(),
            "cam.example.com"
        );
        assert!(request_host(&req(&["a.example.com", "b.example.com"], "/")).is_err());
        assert!(request_host(&req(&["a.example.com"], "https://b.example.com/")).is_err());
        assert!(request_host(&req(&[], "/")).is_err());
    }

    #[test]
    fn visitor_cannot_set_forwarding_headers() {
        let mut r = Request::builder()
            .uri("https://cam.example.com/live?x=1")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-real-ip", "10.0.0.1")
            .header("forwarded", "for=10.0.0.1")
            .header("connection", "keep-alive, x-secret")
            .header("x-secret", "1")
            .body(())
            .unwrap();
        let v = Visitor {
            peer: "203.0.113.9:5555".parse().unwrap(),
            local: "127.0.0.1:443".parse().unwrap(),
            sni: None,
            tasks: tokio_util::task::TaskTracker::new(),
        };
        prepare_request(
            &mut r,
            &v,
            "cam.example.com",
            false,
            &HttpOptions::new("192.168.1.50:80"),
        );
        assert_eq!(r.uri(), "/live?x=1");
        let h = r.headers();
        assert_eq!(h["x-forwarded-for"], "203.0.113.9");
        assert_eq!(h["x-real-ip"], "203.0.113.9");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["host"], "cam.example.com");
        assert_eq!(
            h["forwarded"],
            "for=203.0.113.9;proto=https;host=cam.example.com"
        );
        assert!(!h.contains_key("x-secret") && !h.contains_key("connection"));

        // Off: the visitor's are stripped and none are added; Host as configured.
        let opts = HttpOptions {
            forwarded_headers: false,
            host_header: Some("192.168.1.50".into()),
            ..HttpOptions::new("192.168.1.50:80")
        };
        let mut r = Request::builder()
            .uri("/")
            .header("host", "cam.example.com")
            .header("x-forwarded-for", "10.0.0.1")
            .header("x-real-ip", "10.0.0.1")
            .body(())
            .unwrap();
        prepare_request(&mut r, &v, "cam.example.com", false, &opts);
        let h = r.headers();
        assert_eq!(h["host"], "192.168.1.50");
        for n in FORWARDING {
            assert!(!h.contains_key(n), "{n}");
        }
    }

    fn rewritten(opts: &HttpOptions, name: &str, value: &str) -> String {
        let mut h = HeaderMap::new();
        h.insert(
            HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
        rewrite_redirects(&mut h, opts, "cam.example.com", 8443);
        h[name].to_str().unwrap().to_string()
    }

    #[test]
    fn redirects_to_the_target_become_public_urls() {
        let o = HttpOptions::new("192.168.1.50:80");
        let public = "https://cam.example.com:8443/doc/page.html?a=1";
        for url in [
            "http://192.168.1.50/doc/page.html?a=1",
            "http://192.168.1.50:80/doc/page.html?a=1",
            "HTTP://192.168.1.50:80/doc/page.html?a=1",
            "http://cam.example.com/doc/page.html?a=1",
            "http://cam.example.com:8080/doc/page.html?a=1",
        ] {
            assert_eq!(rewritten(&o, "location", url), public, "{url}");
        }
        assert_eq!(
            rewritten(&o, "content-location", "http://192.168.1.50"),
            "https://cam.example.com:8443/"
        );
        for same in [
            "/doc/page.html",
            "http://192.168.1.51/x",
            "http://192.168.1.50:8080/x",
            "https://cam.example.com/x",
            "https://example.org/",
        ] {
            assert_eq!(rewritten(&o, "location", same), same);
        }
        assert_eq!(
            rewritten(&o, "refresh", "0; URL='http://192.168.1.50/live'"),
            "0; URL='https://cam.example.com:8443/live'"
        );
        assert_eq!(
            rewritten(&o, "refresh", "5;url=http://192.168.1.50:80/"),
            "5;url=https://cam.example.com:8443/"
        );
        let tls = HttpOptions {
            target_tls: true,
            ..HttpOptions::new("nvr.lan:443")
        };
        assert_eq!(
            rewritten(&tls, "location", "https://nvr.lan/x"),
            "https://cam.example.com:8443/x"
        );
    }
}

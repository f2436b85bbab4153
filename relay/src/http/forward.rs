//! Routing a visitor request by its authority and carrying it to the agent: one stream per
//! request (or upgraded connection), HTTP/1.1 toward the target, bodies streamed both ways.

use std::{net::SocketAddr, sync::Arc};

use http::{
    header, HeaderMap, HeaderName, HeaderValue, Request, Response, StatusCode, Uri, Version,
};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use proto::{
    transport::{read_frame, write_frame, BiStream, Connection},
    StreamErrorKind, StreamKind, StreamOpen, StreamReply,
};

use super::{pages::page, Body};
use crate::{token::normalize_host, Shared};

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

pub(crate) async fn handle(
    shared: Arc<Shared>,
    v: Arc<Visitor>,
    req: Request<Incoming>,
) -> Response<Body> {
    let host = match request_host(&req) {
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
    forward(&shared, &v, route, host, req).await
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

/// Open the agent stream for one request; `Err` is the error page to answer with.
async fn open_stream(
    shared: &Shared,
    v: &Visitor,
    route: &Route,
) -> Result<BiStream, Box<Response<Body>>> {
    let bad_gateway =
        |detail: String| Box::new(page(StatusCode::BAD_GATEWAY, "Bad gateway", &detail));
    let limit = shared.config.limits.stream_open_timeout;
    let opened = tokio::time::timeout(limit, async {
        let mut stream = route
            .conn
            .open_bi()
            .await
            .map_err(|e| bad_gateway(format!("The recorder's agent is unreachable ({e}).")))?;
        let open = StreamOpen {
            tunnel: route.tunnel,
            visitor: v.peer,
            server: v.local,
            kind: StreamKind::Http,
        };
        write_frame(&mut stream.send, &open)
            .await
            .map_err(|e| bad_gateway(format!("The recorder's agent is unreachable ({e}).")))?;
        match read_frame::<_, StreamReply>(&mut stream.recv).await {
            Ok(Some(StreamReply::Connected)) => Ok(stream),
            Ok(Some(StreamReply::Failed(e))) if e.kind == StreamErrorKind::Timeout => {
                Err(Box::new(page(
                    StatusCode::GATEWAY_TIMEOUT,
                    "Gateway timeout",
                    "The recorder did not answer in time.",
                )))
            }
            Ok(Some(StreamReply::Failed(e))) => {
                tracing::info!("target unavailable: {e}");
                Err(bad_gateway(
                    "The recorder is not accepting connections.".into(),
                ))
            }
            Ok(None) | Err(_) => Err(bad_gateway(
                "The recorder's agent closed the request.".into(),
            )),
        }
    })
    .await;
    opened.unwrap_or_else(|_| {
        Err(Box::new(page(
            StatusCode::GATEWAY_TIMEOUT,
            "Gateway timeout",
            "The recorder's agent did not answer in time.",
        )))
    })
}

async fn forward(
    shared: &Shared,
    v: &Visitor,
    route: Route,
    host: String,
    mut req: Request<Incoming>,
) -> Response<Body> {
    let stream = match open_stream(shared, v, &route).await {
        Ok(s) => s,
        Err(page) => return *page,
    };
    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, Incoming>(TokioIo::new(stream))
        .await
    {
        Ok(x) => x,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad gateway",
                &format!("Tunnel failed: {e}."),
            )
        }
    };
    // The connection task ends when the request (or the upgraded connection) is done.
    v.tasks.spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!("target connection: {e}");
        }
    });
    let upgrade = wants_upgrade(req.headers());
    let visitor_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    prepare_request(&mut req, v, &host, upgrade);
    let mut resp = match sender.send_request(req).await {
        Ok(r) => r,
        Err(e) => {
            return page(
                StatusCode::BAD_GATEWAY,
                "Bad gateway",
                &format!("The recorder closed the connection ({e})."),
            )
        }
    };
    let switching = resp.status() == StatusCode::SWITCHING_PROTOCOLS;
    if switching {
        if let Some(visitor_upgrade) = visitor_upgrade {
            let target_upgrade = hyper::upgrade::on(&mut resp);
            v.tasks.spawn(async move {
                if let (Ok(a), Ok(b)) = tokio::join!(visitor_upgrade, target_upgrade) {
                    let _ =
                        tokio::io::copy_bidirectional(&mut TokioIo::new(a), &mut TokioIo::new(b))
                            .await;
                }
            });
        }
    }
    strip_hop_by_hop(resp.headers_mut(), switching);
    resp.map(|b| b.boxed())
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

/// Rewrite a visitor request for the target: origin-form URI, HTTP/1.1, Host kept, forwarding
/// headers written by us from the socket (never the visitor's).
fn prepare_request<B>(req: &mut Request<B>, v: &Visitor, host: &str, upgrade: bool) {
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
    if let Ok(hv) = HeaderValue::from_str(host) {
        if !h.contains_key(header::HOST) {
            h.insert(header::HOST, hv.clone());
        }
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
        prepare_request(&mut r, &v, "cam.example.com", false);
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
    }
}

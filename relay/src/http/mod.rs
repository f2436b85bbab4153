//! The HTTPS edge: TLS with SNI, HTTP/1.1 and HTTP/2 (ALPN) to visitors, each request carried
//! to the agent on its own stream.

mod forward;
mod pages;
pub(crate) mod plain;

pub(crate) use forward::{Route, Visitor};
pub(crate) use pages::{full, page};

use std::{net::SocketAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::Shared;

/// Response body type of the edge: the target's streamed body or an error page.
pub(crate) type Body = http_body_util::combinators::BoxBody<Bytes, hyper::Error>;

/// hyper's own limit on a request head sits this far above `limits.max_request_head`: heads in
/// between reach the service, which answers 431 with a page; beyond it hyper (h1) and h2 answer
/// a bare 431.
const HEAD_SLACK: usize = 16 * 1024;

/// rustls config for visitors: certificates by SNI from `certs`, ALPN h2 and http/1.1 (and
/// `acme-tls/1` when tls-alpn-01 validation may knock), plus `periscope/1`: an agent on the
/// TCP fallback transport, handed to the agent session code instead of HTTP.
pub(crate) fn tls_config(
    certs: Arc<crate::certs::CertStore>,
    acme_alpn: bool,
) -> Result<rustls::ServerConfig, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(proto::transport::quic::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_cert_resolver(certs);
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), proto::ALPN.to_vec()];
    if acme_alpn {
        cfg.alpn_protocols
            .push(crate::certs::ACME_TLS_ALPN.to_vec());
    }
    Ok(cfg)
}

/// Accept visitors until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    let acceptor = TlsAcceptor::from(tls);
    while let Some((sock, peer)) = crate::next_connection(&listener, &shutdown, "https").await {
        let ip = peer.ip();
        if shared.live().auth.deny_ips.iter().any(|c| c.contains(ip)) {
            tracing::debug!(visitor.addr = %peer, "refused: deny_ips");
            continue;
        }
        let Some(slot) = shared.access.connection(ip) else {
            tracing::debug!(visitor.addr = %peer, "refused: too many connections from this address");
            continue;
        };
        shared
            .metrics
            .visitor_connections
            .get_or_create(&crate::metrics::ListenerLabel { listener: "https" })
            .inc();
        let span = tracing::debug_span!("visitor", visitor.addr = %peer);
        tasks.spawn(
            connection(
                shared.clone(),
                acceptor.clone(),
                sock,
                peer,
                shutdown.clone(),
                tasks.clone(),
                slot,
            )
            .instrument(span),
        );
    }
}

/// A visitor's TLS handshake, bounded by `limit`; `None` (logged) when it fails or is too slow.
pub(crate) async fn accept_tls(
    acceptor: &TlsAcceptor,
    sock: TcpStream,
    limit: Duration,
) -> Option<tokio_rustls::server::TlsStream<TcpStream>> {
    match tokio::time::timeout(limit, acceptor.accept(sock)).await {
        Ok(Ok(t)) => Some(t),
        Ok(Err(e)) => {
            tracing::debug!("TLS handshake failed: {e}");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}

async fn connection(
    shared: Arc<Shared>,
    acceptor: TlsAcceptor,
    sock: TcpStream,
    peer: SocketAddr,
    shutdown: CancellationToken,
    tasks: TaskTracker,
    _slot: crate::access::ConnGuard,
) {
    let _ = sock.set_nodelay(true);
    let Ok(local) = sock.local_addr() else { return };
    let limits = shared.config.limits.clone();
    let Some(tls) = accept_tls(&acceptor, sock, limits.visitor_handshake_timeout).await else {
        return;
    };
    if tls.get_ref().1.alpn_protocol() == Some(crate::certs::ACME_TLS_ALPN) {
        // A tls-alpn-01 validation: the handshake was the whole answer.
        tracing::debug!("answered a tls-alpn-01 validation");
        return;
    }
    if tls.get_ref().1.alpn_protocol() == Some(proto::ALPN) {
        // An agent on the TCP fallback: the same session path as a QUIC connection. It does
        // not count as a visitor connection of its address.
        drop(_slot);
        let Ok(permit) = shared.agent_handshakes.clone().try_acquire_owned() else {
            tracing::warn!(remote = %peer, "too many agent handshakes in progress; refusing");
            return;
        };
        let conn = proto::transport::tcp::TcpConnection::server(
            tls,
            peer,
            &shared.config.tcp_transport_settings(),
        );
        let span = tracing::info_span!("agent_conn", remote = %peer, transport = "tcp");
        crate::session::handle_connection(shared, Arc::new(conn), shutdown, permit)
            .instrument(span)
            .await;
        return;
    }
    let sni = tls
        .get_ref()
        .1
        .server_name()
        .map(crate::token::normalize_host);
    let ctx = Arc::new(Visitor {
        peer,
        local,
        sni,
        tasks,
    });
    let grace = shared.config.limits.shutdown_grace;
    let max_head = shared.config.limits.max_request_head + HEAD_SLACK;
    // Limits of a WebSocket made on this connection stay with the connection.
    let upgrade = Arc::new(crate::access::meter::UpgradeSlot::default());
    let tls = crate::access::meter::Guarded::new(tls, upgrade.clone());
    let service = hyper::service::service_fn(move |req| {
        let shared = shared.clone();
        let ctx = ctx.clone();
        let upgrade = upgrade.clone();
        async move {
            let hsts = shared.config.tls.hsts;
            let started = std::time::Instant::now();
            let host = forward::request_host(&req);
            // Label by hostname only when it is routed: the label set stays bounded.
            let label = host
                .as_ref()
                .ok()
                .filter(|h| shared.routes.contains_key(*h))
                .map_or_else(|| "other".into(), |h| h.clone());
            // Boxed: the request's future is ~4 KiB, and unboxed it was copied whole each
            // time it moved (into hyper's per-stream task on HTTP/2, among others).
            let handle = Box::pin(forward::handle(shared.clone(), ctx, req, host));
            let (resp, grant) = crate::access::meter::scoped(handle).await;
            let mut resp = crate::access::meter::meter(&shared, grant, resp, &upgrade);
            let m = &shared.metrics;
            m.http_response_seconds
                .observe(started.elapsed().as_secs_f64());
            m.http_responses
                .get_or_create(&crate::metrics::HttpLabels {
                    host: label,
                    code: resp.status().as_u16(),
                })
                .inc();
            if hsts {
                resp.headers_mut()
                    .entry(http::header::STRICT_TRANSPORT_SECURITY)
                    .or_insert(http::HeaderValue::from_static("max-age=31536000"));
            }
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(max_head);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        // WebSockets over HTTP/2 (RFC 8441): a camera grid's sockets share one connection.
        .enable_connect_protocol()
        // Rapid reset (CVE-2023-44487) and streams the client makes us reset: h2's defaults,
        // stated here so a dependency update cannot drop them silently.
        .max_pending_accept_reset_streams(20)
        .max_local_error_reset_streams(1024)
        .max_header_list_size(u32::try_from(max_head).unwrap_or(u32::MAX))
        .keep_alive_interval(Some(Duration::from_secs(30)));
    let conn = builder.serve_connection_with_upgrades(TokioIo::new(tls), service);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => if let Err(e) = r {
            tracing::debug!("visitor connection ended: {e}");
        },
        _ = shutdown.cancelled() => {
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(grace, conn).await;
        }
    }
}

//! The admin listener (axum): a JSON API, Prometheus `/metrics`, `/healthz` and a status page.
//!
//! It binds loopback by default (plain HTTP; an SSH tunnel reaches it from elsewhere); any other
//! address, or `listen.admin_tls`, is served over TLS with the relay's certificate. Every route but the
//! status page's static shell needs `Authorization: Bearer TOKEN`, the admin token kept in
//! `DATA_DIR/admin.token` (0600, created on first start; `periscope admin-token` prints it).
//! The shell holds no data: it reads the token from the URL fragment (never sent to a server)
//! and calls the API with it. No cookies, so no CSRF.

use std::{path::PathBuf, sync::Arc, time::SystemTime};

use axum::{
    extract::{Request, State},
    http::{header, StatusCode},
    middleware::{self, Next},
    response::{Html, IntoResponse, Response},
    routing::get,
    Json, Router,
};
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::{access::bans::BanFile, identity, RelayConfig, RelayError, Shared};

/// Path of the admin token.
pub fn token_path(config: &RelayConfig) -> PathBuf {
    config.data_dir.join("admin.token")
}

/// The admin token, created (random, 0600) on first use.
pub fn load_or_create_token(config: &RelayConfig) -> Result<String, RelayError> {
    let t = identity::load_or_create_secret(&token_path(config), || {
        Ok(identity::random_hex(32)?.into_bytes())
    })?;
    Ok(String::from_utf8_lossy(&t).trim().to_string())
}

#[derive(Clone)]
struct AdminState {
    shared: Arc<Shared>,
    /// SHA-256 of the token: requests are compared digest to digest, so the comparison's
    /// timing says nothing about the token.
    token_digest: Arc<[u8]>,
}

fn digest(s: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, s)
        .as_ref()
        .to_vec()
}

/// Who may call a route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token: the status page's static shell (it holds no data).
    Open,
    /// `Authorization: Bearer TOKEN` required.
    Token,
}

/// Every route of the admin listener: method, path (axum/OpenAPI syntax), who may call it.
/// The router is built from this list and the tests walk it (401 without the token, and the
/// OpenAPI file `deploy/openapi.json` documents exactly these), so a route cannot be added
/// without both.
pub fn routes() -> Vec<(&'static str, &'static str, Access)> {
    table().into_iter().map(|(m, p, a, _)| (m, p, a)).collect()
}

type Route = (
    &'static str,
    &'static str,
    Access,
    axum::routing::MethodRouter<AdminState>,
);

fn table() -> Vec<Route> {
    use axum::routing::{delete, post};
    use Access::{Open, Token};
    vec![
        ("GET", "/", Open, get(|| async { Html(STATUS_PAGE) })),
        ("GET", "/healthz", Token, get(|| async { "ok\n" })),
        ("GET", "/metrics", Token, get(metrics)),
        ("GET", "/api/agents", Token, get(agents)),
        ("GET", "/api/tunnels", Token, get(tunnels)),
        ("GET", "/api/connections", Token, get(connections)),
        ("DELETE", "/api/connections/{id}", Token, delete(close_conn)),
        (
            "POST",
            "/api/connections/{id}/close",
            Token,
            post(close_conn),
        ),
        ("GET", "/api/bans", Token, get(bans)),
        ("POST", "/api/bans", Token, post(add_ban)),
        ("DELETE", "/api/bans/{ip}", Token, delete(unban)),
        ("GET", "/api/users", Token, get(users)),
        ("GET", "/api/errors", Token, get(errors)),
        ("GET", "/api/tokens", Token, get(list_tokens)),
        ("POST", "/api/tokens", Token, post(issue_token)),
        (
            "POST",
            "/api/tokens/{jti}/revoke",
            Token,
            post(revoke_token),
        ),
        ("GET", "/api/shares", Token, get(list_shares)),
        (
            "POST",
            "/api/shares/{jti}/revoke",
            Token,
            post(revoke_share),
        ),
    ]
}

fn app(state: AdminState) -> Router {
    let mut open = Router::new();
    let mut api = Router::new();
    for (_, path, access, handler) in table() {
        match access {
            Access::Open => open = open.route(path, handler),
            Access::Token => api = api.route(path, handler),
        }
    }
    let api = api.route_layer(middleware::from_fn_with_state(state.clone(), auth));
    open.merge(api).with_state(state)
}

/// Serve the admin API on `listener` until `shutdown`; also samples the connections' bit
/// rates once a second.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    token: String,
    shutdown: CancellationToken,
) {
    let state = AdminState {
        shared: shared.clone(),
        token_digest: digest(token.as_bytes()).into(),
    };
    let served = async {
        match tls {
            None => {
                axum::serve(listener, app(state))
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
                    .await
            }
            Some(tls) => {
                let limit = shared.config.limits.visitor_handshake_timeout;
                let (listener, handshakes) =
                    TlsListener::new(listener, tls, limit, shutdown.clone());
                let served = axum::serve(listener, app(state))
                    .with_graceful_shutdown(shutdown.clone().cancelled_owned());
                tokio::join!(async { served.await }, handshakes).0
            }
        }
    };
    let (served, ()) = tokio::join!(served, shared.conns.sampler(shutdown.clone()));
    if let Err(e) = served {
        tracing::warn!("admin listener failed: {e}");
    }
}

/// The admin listener's TLS config: the relay's identity certificate (the one agents pin),
/// HTTP/2 and HTTP/1.1.
pub(crate) fn tls_config(
    id: &identity::Identity,
) -> Result<Arc<rustls::ServerConfig>, rustls::Error> {
    let mut cfg = rustls::ServerConfig::builder_with_provider(proto::transport::quic::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(id.certs.clone(), id.key.clone_key())?;
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

/// TLS in front of the admin routes (a non-loopback `listen.admin`, or `listen.admin_tls`).
/// Handshakes run in their own tasks, bounded by the visitor handshake timeout, so a client
/// that never finishes one cannot hold the others up; finished ones queue for axum.
struct TlsListener {
    ready: tokio::sync::mpsc::Receiver<(
        tokio_rustls::server::TlsStream<tokio::net::TcpStream>,
        std::net::SocketAddr,
    )>,
    local: std::net::SocketAddr,
}

impl TlsListener {
    /// The listener, and the accept loop to run beside it (it ends with `shutdown`, after the
    /// handshakes in flight, each bounded by `limit`).
    fn new(
        listener: tokio::net::TcpListener,
        tls: Arc<rustls::ServerConfig>,
        limit: std::time::Duration,
        shutdown: CancellationToken,
    ) -> (Self, impl std::future::Future<Output = ()>) {
        let local = listener
            .local_addr()
            .unwrap_or_else(|_| std::net::SocketAddr::from(([127, 0, 0, 1], 0)));
        let (tx, ready) = tokio::sync::mpsc::channel(16);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let accepting = async move {
            let handshakes = tokio_util::task::TaskTracker::new();
            while let Some((sock, peer)) =
                crate::next_connection(&listener, &shutdown, "admin").await
            {
                let (acceptor, tx) = (acceptor.clone(), tx.clone());
                let span = tracing::debug_span!("admin_conn", remote = %peer);
                handshakes.spawn(
                    async move {
                        if let Some(tls) = crate::http::accept_tls(&acceptor, sock, limit).await {
                            let _ = tx.send((tls, peer)).await;
                        }
                    }
                    .instrument(span),
                );
            }
            handshakes.close();
            handshakes.wait().await;
        };
        (TlsListener { ready, local }, accepting)
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.ready.recv().await {
            Some(c) => c,
            // The accept task ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local)
    }
}

async fn auth(State(st): State<AdminState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(|t| digest(t.trim().as_bytes()));
    if given.as_deref() == Some(&st.token_digest[..]) {
        next.run(req).await
    } else {
        (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "admin token required (periscope admin-token)\n",
        )
            .into_response()
    }
}

async fn metrics(State(st): State<AdminState>) -> impl IntoResponse {
    let s = &st.shared;
    s.metrics
        .agents_connected
        .set(i64::try_from(s.registry.len()).unwrap_or(i64::MAX));
    s.metrics
        .http_routes
        .set(i64::try_from(s.routes.len()).unwrap_or(i64::MAX));
    s.metrics
        .bans_active
        .set(count(s.access.bans.active_count(SystemTime::now())));
    let mut by_type = [("http", 0usize), ("tcp", 0), ("udp", 0)];
    for session in s.registry.sessions() {
        for p in &session.public {
            let t = tunnel_type(p);
            if let Some(slot) = by_type.iter_mut().find(|(k, _)| *k == t) {
                slot.1 += 1;
            }
        }
    }
    for (t, n) in by_type {
        s.metrics
            .tunnels
            .get_or_create(&vec![("type", t)])
            .set(count(n));
    }
    for (kind, n) in s.conns.count_by_kind() {
        s.metrics
            .visitor_connections_active
            .get_or_create(&crate::metrics::KindLabel {
                kind: kind.as_str(),
            })
            .set(count(n));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        s.metrics.encode(),
    )
}

/// One connected agent.
#[derive(Serialize)]
struct AgentView {
    name: String,
    version: String,
    session: u64,
    transport: String,
    remote: String,
    connected_since: String,
    connected_secs: u64,
    rtt_ms: f64,
    tunnels: Vec<String>,
    token_id: String,
    token_expires: String,
}

async fn agents(State(st): State<AdminState>) -> Json<Vec<AgentView>> {
    let now = SystemTime::now();
    let mut out: Vec<AgentView> = st
        .shared
        .registry
        .sessions()
        .into_iter()
        .map(|s| AgentView {
            name: s.agent.clone(),
            version: s.version.clone(),
            session: s.id,
            transport: s.transport().to_string(),
            remote: s.remote_addr().to_string(),
            connected_since: humantime::format_rfc3339_seconds(s.since).to_string(),
            connected_secs: now.duration_since(s.since).map_or(0, |d| d.as_secs()),
            rtt_ms: s.rtt().as_secs_f64() * 1000.0,
            tunnels: s.public.clone(),
            token_id: s.jti.clone(),
            token_expires: humantime::format_rfc3339_seconds(
                SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s.exp),
            )
            .to_string(),
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Json(out)
}

fn count(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// `http`, `tcp` (also TLS-terminated) or `udp`, from a tunnel's public address.
fn tunnel_type(public: &str) -> &'static str {
    if public.starts_with("udp://") {
        "udp"
    } else if public.starts_with("tcp://") || public.starts_with("tls://") {
        "tcp"
    } else {
        "http"
    }
}

/// One published tunnel, with the traffic of its live connections.
#[derive(Serialize)]
struct TunnelView {
    agent: String,
    /// `http`, `tcp` or `udp`.
    r#type: &'static str,
    /// Public URL (`https://…`) or address (`tcp://…:PORT`, `tls://…`, `udp://…`).
    public: String,
    /// Public port.
    port: u16,
    /// The tunnel's name on the agent (tcp/udp), or its target `host:port` (http).
    target: String,
    /// Open streams (live connections; http: WebSockets and long responses), or udp flows.
    streams: usize,
    /// Bits per second from visitors, over the last few seconds.
    in_bps: u64,
    /// Bits per second to visitors, over the last few seconds.
    out_bps: u64,
}

async fn tunnels(State(st): State<AdminState>) -> Json<Vec<TunnelView>> {
    let now = SystemTime::now();
    let views: Vec<crate::conns::ConnView> =
        st.shared.conns.list().iter().map(|e| e.view(now)).collect();
    let mut out = Vec::new();
    for s in st.shared.registry.sessions() {
        for p in &s.public {
            let (public, name) = match p.split_once(" -> ") {
                Some((u, n)) => (u.to_string(), Some(n.to_string())),
                None => (p.clone(), None),
            };
            let t = tunnel_type(&public);
            let authority = public.split_once("://").map_or("", |(_, a)| a);
            let (host, port) = match authority.rsplit_once(':') {
                Some((h, p)) => (h, p.parse().unwrap_or(0)),
                None => (authority, if t == "http" { 443 } else { 0 }),
            };
            let target = match name {
                Some(n) => n,
                None => st
                    .shared
                    .routes
                    .get(host)
                    .map(|r| r.opts.target.clone())
                    .unwrap_or_default(),
            };
            let mine = views
                .iter()
                .filter(|c| c.agent == s.agent && c.tunnel == public);
            let (mut streams, mut in_bps, mut out_bps) = (0, 0u64, 0u64);
            for c in mine {
                streams += 1;
                in_bps = in_bps.saturating_add(c.up_bps);
                out_bps = out_bps.saturating_add(c.down_bps);
            }
            out.push(TunnelView {
                agent: s.agent.clone(),
                r#type: t,
                public,
                port,
                target,
                streams,
                in_bps,
                out_bps,
            });
        }
    }
    out.sort_by(|a, b| a.public.cmp(&b.public));
    Json(out)
}

/// Live visitor connections: WebSockets, long HTTP responses, tcp connections, udp flows.
async fn connections(State(st): State<AdminState>) -> Json<Vec<crate::conns::ConnView>> {
    let now = SystemTime::now();
    Json(st.shared.conns.list().iter().map(|e| e.view(now)).collect())
}

/// End one connection at once; the others go on.
async fn close_conn(
    State(st): State<AdminState>,
    axum::extract::Path(id): axum::extract::Path<u64>,
) -> StatusCode {
    if st.shared.conns.close(id) {
        tracing::info!(connection = id, "connection closed through the admin API");
        StatusCode::NO_CONTENT
    } else {
        StatusCode::NOT_FOUND
    }
}

fn at(s: u64) -> String {
    humantime::format_rfc3339_seconds(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s))
        .to_string()
}

/// One issued agent token (never the token itself).
#[derive(Serialize)]
struct TokenView {
    jti: String,
    agent: String,
    hosts: Vec<String>,
    issued: String,
    expires: String,
    expired: bool,
    revoked: bool,
    /// An agent is connected with it now.
    connected: bool,
}

/// Tokens in the ledger (`DATA_DIR/issued.json`), newest first.
async fn list_tokens(
    State(st): State<AdminState>,
) -> Result<Json<Vec<TokenView>>, (StatusCode, String)> {
    let s = &st.shared;
    let ledger = crate::ledger::Ledger::load(&s.config.data_dir)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = crate::token::unix_now(SystemTime::now());
    let live: Vec<String> = s.registry.sessions().into_iter().map(|x| x.jti).collect();
    let mut out: Vec<TokenView> = ledger
        .tokens
        .into_iter()
        .map(|t| TokenView {
            revoked: s.revocations.contains(&t.jti),
            connected: live.contains(&t.jti),
            expired: t.expires < now,
            issued: at(t.issued),
            expires: at(t.expires),
            jti: t.jti,
            agent: t.agent,
            hosts: t.hosts,
        })
        .collect();
    out.reverse();
    Ok(Json(out))
}

/// One issued share link (never the link itself).
#[derive(Serialize)]
struct ShareView {
    jti: String,
    host: String,
    label: String,
    issued: String,
    expires: String,
    expired: bool,
    revoked: bool,
}

/// Share links in the ledger, newest first.
async fn list_shares(
    State(st): State<AdminState>,
) -> Result<Json<Vec<ShareView>>, (StatusCode, String)> {
    let s = &st.shared;
    let ledger = crate::ledger::Ledger::load(&s.config.data_dir)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = crate::token::unix_now(SystemTime::now());
    let mut out: Vec<ShareView> = ledger
        .shares
        .into_iter()
        .map(|t| ShareView {
            revoked: s.revocations.contains(&t.jti),
            expired: t.expires < now,
            issued: at(t.issued),
            expires: at(t.expires),
            jti: t.jti,
            host: t.host,
            label: t.label,
        })
        .collect();
    out.reverse();
    Ok(Json(out))
}

/// A token or link id: hex, as issued.
fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.chars().all(|c| c.is_ascii_hexdigit())
}

/// Add `jti` to the revocation list and make the running relay see it now.
fn revoke(st: &AdminState, jti: &str) -> Result<bool, (StatusCode, String)> {
    if !valid_id(jti) {
        return Err((StatusCode::BAD_REQUEST, "not a token or link id\n".into()));
    }
    let s = &st.shared;
    let revoked = crate::token::Revocations::revoke(&s.config.data_dir, jti, SystemTime::now())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if let Err(e) = s.revocations.reload_if_changed() {
        tracing::warn!("cannot read the revocation list: {e}");
    }
    Ok(revoked)
}

/// Revoke a share link: the link is refused from now on, and streams opened with it end.
async fn revoke_share(
    State(st): State<AdminState>,
    axum::extract::Path(jti): axum::extract::Path<String>,
) -> Result<StatusCode, (StatusCode, String)> {
    let revoked = revoke(&st, &jti)?;
    let who = format!("share:{jti}");
    let closed = st
        .shared
        .conns
        .close_where(|c| c.user.as_deref() == Some(who.as_str()));
    tracing::info!(link = %jti, closed, "share link revoked through the admin API");
    Ok(if revoked {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::CONFLICT
    })
}

/// `POST /api/tokens`: what `periscope token issue` takes.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct IssueBody {
    agent: String,
    /// Default: `AGENT.DOMAIN`.
    #[serde(default)]
    hosts: Vec<String>,
    /// Ports or ranges, e.g. `"2222"`, `"8000-8100"`.
    #[serde(default)]
    tcp_ports: Vec<String>,
    #[serde(default)]
    udp_ports: Vec<String>,
    /// Lifetime, e.g. `"90d"`.
    ttl: String,
}

#[derive(Serialize)]
struct IssuedView {
    token: String,
    id: String,
    agent: String,
    expires: String,
}

/// Issue an agent token (signed by the relay's key, like the CLI).
async fn issue_token(
    State(st): State<AdminState>,
    Json(body): Json<IssueBody>,
) -> Result<Json<IssuedView>, (StatusCode, String)> {
    let bad = |e: String| (StatusCode::BAD_REQUEST, e);
    let ports = |v: &[String]| {
        v.iter()
            .map(|p| p.parse::<crate::PortRange>())
            .collect::<Result<Vec<_>, _>>()
    };
    let ttl = humantime::parse_duration(&body.ttl)
        .map_err(|e| bad(format!("ttl `{}`: {e} (use e.g. 90d, 12h)", body.ttl)))?;
    let domain = &st.shared.config.domain;
    let hosts = if body.hosts.is_empty() {
        vec![format!("{}.{domain}", body.agent)]
    } else {
        body.hosts
    };
    let (token, claims) = st
        .shared
        .keys
        .issue(
            &crate::IssueRequest {
                agent: body.agent,
                hosts,
                tcp_ports: ports(&body.tcp_ports).map_err(bad)?,
                udp_ports: ports(&body.udp_ports).map_err(bad)?,
                ttl,
            },
            SystemTime::now(),
        )
        .map_err(|e| bad(e.to_string()))?;
    // The token is signed: hand it out even if the ledger cannot be written (it is a list).
    if let Err(e) =
        crate::ledger::Ledger::record_token(&st.shared.config.data_dir, &claims, SystemTime::now())
    {
        tracing::warn!(id = %claims.jti, "token not recorded in the ledger: {e}");
    }
    tracing::info!(agent = %claims.sub, id = %claims.jti, "token issued through the admin API");
    Ok(Json(IssuedView {
        token,
        id: claims.jti,
        agent: claims.sub,
        expires: humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(claims.exp),
        )
        .to_string(),
    }))
}

/// Revoke a token by id; a connected agent using it is disconnected at once.
async fn revoke_token(
    State(st): State<AdminState>,
    axum::extract::Path(jti): axum::extract::Path<String>,
) -> Result<StatusCode, (StatusCode, String)> {
    let revoked = revoke(&st, &jti)?;
    st.shared
        .registry
        .close_where(|s| (s.jti == jti).then_some((proto::codes::CLOSE_REVOKED, "token revoked")));
    if revoked {
        tracing::info!(id = %jti, "token revoked through the admin API");
        Ok(StatusCode::NO_CONTENT)
    } else {
        Ok(StatusCode::CONFLICT)
    }
}

/// One visitor account (never its hash).
#[derive(Serialize)]
struct UserView {
    name: String,
    hosts: Vec<String>,
    disabled: bool,
}

/// The relay's recent warnings and errors, newest first (see [`crate::events`]).
async fn errors() -> Json<Vec<crate::events::RecentEvent>> {
    Json(crate::events::recent())
}

/// The users file's accounts.
async fn users(State(st): State<AdminState>) -> Result<Json<Vec<UserView>>, (StatusCode, String)> {
    let file = crate::access::users::UsersFile::load(&st.shared.config.users_file())
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(
        file.users
            .into_iter()
            .map(|u| UserView {
                name: u.name,
                hosts: u.hosts,
                disabled: u.disabled,
            })
            .collect(),
    ))
}

/// One banned address.
#[derive(Serialize)]
struct BanView {
    ip: String,
    since: String,
    /// RFC 3339, or `forever`.
    until: String,
    last_user: String,
}

/// Active bans (the same `DATA_DIR/bans.json` `periscope ban list` reads).
async fn bans(State(st): State<AdminState>) -> Result<Json<Vec<BanView>>, (StatusCode, String)> {
    let file = BanFile::load(&st.shared.config.data_dir)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let now = crate::token::unix_now(SystemTime::now());
    let at = |s: u64| {
        humantime::format_rfc3339_seconds(
            SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s),
        )
        .to_string()
    };
    Ok(Json(
        file.bans
            .iter()
            .filter(|b| b.until == 0 || b.until > now)
            .map(|b| BanView {
                ip: b.ip.to_string(),
                since: at(b.since),
                until: if b.until == 0 {
                    "forever".into()
                } else {
                    at(b.until)
                },
                last_user: b.user.clone(),
            })
            .collect(),
    ))
}

/// `POST /api/bans`.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BanBody {
    ip: std::net::IpAddr,
    /// e.g. `"1h"`, `"7d"`, or `"forever"`.
    duration: String,
}

/// Ban an address at once: new connections are refused and its live ones end.
async fn add_ban(
    State(st): State<AdminState>,
    Json(body): Json<BanBody>,
) -> Result<StatusCode, (StatusCode, String)> {
    let now = SystemTime::now();
    let until = if body.duration == "forever" {
        0
    } else {
        let d = humantime::parse_duration(&body.duration).map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("duration: {e} (use e.g. 1h, 7d or forever)\n"),
            )
        })?;
        if d.is_zero() {
            return Err((StatusCode::BAD_REQUEST, "duration must be > 0\n".into()));
        }
        crate::token::unix_now(now).saturating_add(d.as_secs().max(1))
    };
    let s = &st.shared;
    s.access
        .bans
        .add(body.ip, until, now)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    s.metrics.bans_total.inc();
    let ip = body.ip;
    let closed = s.conns.close_where(|c| c.visitor.ip() == ip);
    tracing::info!(%ip, closed, "address banned through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// Lift the ban of one address, at once.
async fn unban(
    State(st): State<AdminState>,
    axum::extract::Path(ip): axum::extract::Path<std::net::IpAddr>,
) -> Result<StatusCode, (StatusCode, String)> {
    let removed = st
        .shared
        .access
        .bans
        .remove(ip)
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    if !removed {
        return Ok(StatusCode::NOT_FOUND);
    }
    tracing::info!(%ip, "ban lifted through the admin API");
    Ok(StatusCode::NO_CONTENT)
}

/// The status page: static, self-contained (no third-party assets), readable on a phone; polls
/// the API every 2 s with the token from the URL fragment (`http://127.0.0.1:9090/#TOKEN`).
/// Every value from the API is escaped before it goes into the page.
const STATUS_PAGE: &str = r##"<!doctype html><html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1"><title>Periscope relay</title>
<style>
:root{--ok:#187a2f;--warn:#a86400;--err:#b00020;--line:#e3e3e3}
body{font-family:system-ui,-apple-system,sans-serif;margin:0 auto;max-width:72rem;padding:.5rem 1rem 2rem;color:#1d1d1f;background:#fafafa}
h1{font-size:1.4rem;margin:.6rem 0}h2{font-size:1.1rem;margin:1.4rem 0 .4rem}
.cards{display:flex;flex-wrap:wrap;gap:.5rem}.card{background:#fff;border:1px solid var(--line);border-radius:.5rem;padding:.4rem .8rem;min-width:7rem}
.card b{display:block;font-size:1.3rem}.card span{font-size:.8rem;color:#555}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;background:#fff;border:1px solid var(--line);border-radius:.5rem}
table{border-collapse:collapse;width:100%}th,td{text-align:left;padding:.35rem .55rem;border-bottom:1px solid var(--line);font-size:.88rem;white-space:nowrap}
th{background:#f2f2f4;font-weight:600}tr:last-child td{border-bottom:0}td.path{white-space:normal;word-break:break-all;min-width:7rem;max-width:22rem}
.ok{color:var(--ok)}.warn{color:var(--warn)}.err{color:var(--err)}.muted{color:#777}code{font-size:.82rem}
.kind{display:inline-block;padding:0 .4rem;border-radius:.3rem;background:#eef;font-size:.78rem}
button{font:inherit;font-size:.82rem;padding:.2rem .6rem;border:1px solid var(--err);color:var(--err);background:#fff;border-radius:.3rem;cursor:pointer}
button:hover{background:var(--err);color:#fff}
@media (max-width:40rem){body{padding:.3rem .5rem}th,td{padding:.3rem .35rem;font-size:.8rem}.hide-s{display:none}}
</style></head>
<body><h1>Periscope relay</h1><p id="state" class="muted">loading…</p>
<div class="cards"><div class="card"><b id="n-agents">–</b><span>agents</span></div><div class="card"><b id="n-tunnels">–</b><span>tunnels</span></div><div class="card"><b id="n-conns">–</b><span>live connections</span></div><div class="card"><b id="n-rate">–</b><span>to visitors</span></div><div class="card"><b id="n-bans">–</b><span>bans</span></div></div>
<h2>Active connections</h2><div class="scroll"><table id="conns"><thead><tr><th></th><th>host / path</th><th>bit rate ↓ / ↑</th><th>duration</th><th>visitor</th><th>user</th><th>kind</th><th class="hide-s">bytes ↓ / ↑</th></tr></thead><tbody></tbody></table></div>
<h2>Agents</h2><div class="scroll"><table id="agents"><thead><tr><th>agent</th><th>health</th><th>transport</th><th class="hide-s">address</th><th>RTT</th><th>connected</th><th class="hide-s">token expires</th></tr></thead><tbody></tbody></table></div>
<h2>Tunnels</h2><div class="scroll"><table id="tunnels"><thead><tr><th>public URL</th><th>type</th><th>target</th><th>agent</th><th>streams</th><th>in / out</th></tr></thead><tbody></tbody></table></div>
<h2>Recent bans</h2><div class="scroll"><table id="bans"><thead><tr><th>address</th><th>since</th><th>until</th><th>last user</th><th></th></tr></thead><tbody></tbody></table></div>
<h2>Recent errors</h2><div class="scroll"><table id="errors"><thead><tr><th>when</th><th>level</th><th>message</th></tr></thead><tbody></tbody></table></div>
<script>
"use strict";
const token=decodeURIComponent(location.hash.slice(1));
const esc=s=>String(s??"").replace(/[&<>"']/g,c=>({"&":"&amp;","<":"&lt;",">":"&gt;",'"':"&quot;","'":"&#39;"}[c]));
const dur=s=>{const d=Math.floor(s/86400),h=Math.floor(s%86400/3600),m=Math.floor(s%3600/60);return d?d+" d "+h+" h":h?h+" h "+m+" min":m?m+" min "+(s%60)+" s":s+" s";};
const rate=b=>b>=1e6?(b/1e6).toFixed(1)+" Mbit/s":b>=1e3?(b/1e3).toFixed(0)+" kbit/s":b+" bit/s";
const size=b=>b>=1<<30?(b/(1<<30)).toFixed(1)+" GiB":b>=1<<20?(b/(1<<20)).toFixed(1)+" MiB":b>=1024?(b/1024).toFixed(0)+" KiB":b+" B";
const when=t=>t==="forever"?"forever":new Date(t).toLocaleString();
async function api(path,method){
  const r=await fetch(path,{method:method||"GET",headers:{Authorization:"Bearer "+token}});
  if(!r.ok&&r.status!==404)throw new Error(path+" answered "+r.status);
  return method?null:r.json();
}
function rows(id,list,empty,row){
  const tb=document.querySelector("#"+id+" tbody");
  tb.innerHTML=list.length?list.map(row).join(""):'<tr><td colspan="8" class="muted">'+empty+"</td></tr>";
}
async function act(method,path){try{await api(path,method);}catch(e){}tick();}
async function tick(){
  const st=document.getElementById("state");
  if(!token){st.innerHTML="Open this page as <code>http://ADDRESS/#TOKEN</code> (<code>periscope admin-token</code> prints the token).";return;}
  try{
    const [agents,tunnels,conns,bans,errors]=await Promise.all(["/api/agents","/api/tunnels","/api/connections","/api/bans","/api/errors"].map(p=>api(p)));
    const now=Date.now()/1000;
    rows("conns",conns,"no live connections",c=>'<tr><td><button data-close="'+c.id+'" title="end this connection now">close</button></td><td class=path>'+esc(c.host)+esc(c.path)+"</td><td>"+rate(c.down_bps)+" / "+rate(c.up_bps)+"</td><td>"+dur(c.duration_secs)+"</td><td>"+esc(c.visitor)+"</td><td>"+(c.user?esc(c.user):'<span class=muted>–</span>')+"</td><td><span class=kind>"+esc(c.kind)+'</span></td><td class=hide-s>'+size(c.bytes_down)+" / "+size(c.bytes_up)+"</td></tr>");
    rows("agents",agents,"no agent connected",a=>{
      const exp=(new Date(a.token_expires).getTime()/1000)-now;
      const h=a.rtt_ms>1000?'<span class=err>slow</span>':a.rtt_ms>300?'<span class=warn>degraded</span>':'<span class=ok>healthy</span>';
      return "<tr><td>"+esc(a.name)+' <small class=muted>'+esc(a.version)+"</small></td><td>"+h+"</td><td>"+esc(a.transport)+'</td><td class=hide-s>'+esc(a.remote)+"</td><td>"+a.rtt_ms.toFixed(1)+" ms</td><td>"+dur(a.connected_secs)+'</td><td class="hide-s '+(exp<7*86400?"warn":"")+'">'+esc(when(a.token_expires))+"</td></tr>";});
    rows("tunnels",tunnels,"no tunnels",t=>"<tr><td>"+(t.type==="http"?'<a href="'+esc(t.public)+'" rel="noreferrer">'+esc(t.public)+"</a>":"<code>"+esc(t.public)+"</code>")+"</td><td>"+esc(t.type)+"</td><td>"+esc(t.target)+"</td><td>"+esc(t.agent)+"</td><td>"+t.streams+"</td><td>"+rate(t.in_bps)+" / "+rate(t.out_bps)+"</td></tr>");
    rows("bans",bans,"no bans",b=>"<tr><td>"+esc(b.ip)+"</td><td>"+esc(when(b.since))+"</td><td>"+esc(when(b.until))+"</td><td>"+esc(b.last_user)+'</td><td><button data-unban="'+esc(b.ip)+'">lift</button></td></tr>');
    rows("errors",errors.slice(0,20),"no warnings or errors",e=>"<tr><td>"+esc(when(e.time))+'</td><td class='+(e.level==="ERROR"?"err":"warn")+">"+esc(e.level)+'</td><td class=path>'+esc(e.message)+"</td></tr>");
    document.getElementById("n-agents").textContent=agents.length;
    document.getElementById("n-tunnels").textContent=tunnels.length;
    document.getElementById("n-conns").textContent=conns.length;
    document.getElementById("n-rate").textContent=rate(conns.reduce((s,c)=>s+c.down_bps,0));
    document.getElementById("n-bans").textContent=bans.length;
    st.className="ok";st.textContent="live · updated "+new Date().toLocaleTimeString();
  }catch(e){st.className="err";st.textContent="relay unreachable or token refused: "+e.message;}
}
document.addEventListener("click",e=>{
  const c=e.target.closest("[data-close]"),u=e.target.closest("[data-unban]");
  if(c)act("DELETE","/api/connections/"+encodeURIComponent(c.dataset.close));
  if(u)act("DELETE","/api/bans/"+encodeURIComponent(u.dataset.unban));
});
tick();setInterval(tick,2000);
</script></body></html>"##;

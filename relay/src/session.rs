//! One agent connection: handshake, authorization, tunnel registration, control loop.

use std::{
    collections::{HashMap, HashSet},
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::{Duration, SystemTime},
};

use proto::{
    codes,
    control::CONTROL_VERSION,
    transport::{
        quic::QuicConnection, read_frame, write_frame, BiStream, Connection, TransportKind,
    },
    Assigned, Control, GoAway, Hello, Reject, RejectReason, TunnelKind, Welcome,
};
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{registry::SessionInfo, tcp_tunnel, token::TokenError, udp_tunnel, Claims, Shared};

static NEXT_SESSION: AtomicU64 = AtomicU64::new(1);

/// How long a replaced session gets to release its ports before the new one binds them.
const REPLACE_WAIT: Duration = Duration::from_secs(2);
/// How long a replaced session's streams in flight may go on (on their old connection)
/// before it is closed. An agent moving from the TCP fallback to QUIC replaces its own
/// session; its open connections finish instead of being cut.
const REPLACE_DRAIN: Duration = Duration::from_secs(30);

/// A validated tunnel with its public port bound.
pub(crate) struct Bound {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) listener: TcpListener,
    pub(crate) public: String,
    /// TLS terminated by the relay with this hostname's certificate.
    pub(crate) tls_host: Option<String>,
}

fn reject(reason: RejectReason, detail: impl Into<String>) -> Reject {
    Reject {
        reason,
        detail: detail.into(),
    }
}

/// Accept one QUIC connection and run the agent session on it to the end.
pub(crate) async fn handle_incoming(
    shared: Arc<Shared>,
    incoming: quinn::Incoming,
    shutdown: CancellationToken,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let limit = shared.config.limits.handshake_timeout;
    let conn = match tokio::time::timeout(limit, async { incoming.accept()?.await }).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => {
            tracing::debug!("agent handshake failed: {e}");
            return;
        }
        Err(_) => {
            tracing::debug!("agent handshake timed out");
            return;
        }
    };
    let conn: Connection = Arc::new(QuicConnection(conn));
    handle_connection(shared, conn, shutdown, handshake_permit).await
}

/// Run the agent session on an established connection (QUIC, or TLS+yamux from the https
/// listener): Hello within the handshake timeout, authorization, then the session.
pub(crate) async fn handle_connection(
    shared: Arc<Shared>,
    conn: Connection,
    shutdown: CancellationToken,
    handshake_permit: tokio::sync::OwnedSemaphorePermit,
) {
    let limit = shared.config.limits.handshake_timeout;
    let hello = tokio::time::timeout(limit, async {
        let mut ctrl = conn.accept_bi().await.ok()?;
        match read_frame::<_, Control>(&mut ctrl.recv).await {
            Ok(Some(Control::Hello(h))) => Some((ctrl, h)),
            Ok(other) => {
                tracing::debug!("first control frame was not Hello: {other:?}");
                None
            }
            Err(e) => {
                tracing::debug!("bad Hello: {e}");
                None
            }
        }
    })
    .await;
    let Ok(Some((mut ctrl, hello))) = hello else {
        conn.close(
            codes::CLOSE_PROTOCOL,
            "expected Hello on the control stream",
        );
        return;
    };

    let claims = match authorize(&shared, &hello) {
        Ok(c) => c,
        Err(r) => return send_reject(&shared, &conn, &mut ctrl, r).await,
    };
    drop(handshake_permit);
    let span = tracing::info_span!("session", agent = %claims.sub);
    run_session(shared, conn, ctrl, hello, claims, shutdown)
        .instrument(span)
        .await
}

async fn send_reject(shared: &Shared, conn: &Connection, ctrl: &mut BiStream, r: Reject) {
    tracing::warn!("agent rejected: {}: {}", r.reason, r.detail);
    shared
        .metrics
        .handshake(format!("{:?}", r.reason).to_ascii_lowercase());
    let _ = write_frame(&mut ctrl.send, &Control::Reject(r)).await;
    let _ = tokio::io::AsyncWriteExt::shutdown(&mut ctrl.send).await;
    // Let the Reject reach the agent (it closes on reading it) before closing ourselves.
    let _ = tokio::time::timeout(Duration::from_secs(1), conn.closed()).await;
    conn.close(codes::CLOSE_REJECTED, "rejected");
}

/// Check the Hello against the token and this relay's rules.
fn authorize(shared: &Shared, hello: &Hello) -> Result<Claims, Reject> {
    if hello.version != CONTROL_VERSION {
        return Err(reject(
            RejectReason::Version,
            format!(
                "agent speaks control version {}, relay speaks {CONTROL_VERSION}: upgrade the older side",
                hello.version
            ),
        ));
    }
    let claims = shared
        .keys
        .verify(hello.token.expose(), SystemTime::now())
        .map_err(|e| match e {
            TokenError::Expired(_) => reject(RejectReason::Expired, e.to_string()),
            TokenError::Revoked(_) => reject(RejectReason::Revoked, e.to_string()),
            TokenError::Invalid(_) => reject(RejectReason::BadToken, e.to_string()),
        })?;
    if shared.revocations.contains(&claims.jti) {
        return Err(reject(
            RejectReason::Revoked,
            format!("token {} was revoked", claims.jti),
        ));
    }
    check_tunnels(shared, &claims, &hello.tunnels)?;
    Ok(claims)
}

/// Check a tunnel list against the token's claims (at Hello and at every TunnelUpdate).
fn check_tunnels(
    shared: &Shared,
    claims: &Claims,
    tunnels: &[proto::TunnelSpec],
) -> Result<(), Reject> {
    let mut ids = HashSet::new();
    let mut ports = HashSet::new();
    for t in tunnels {
        if !ids.insert(t.id) {
            return Err(reject(
                RejectReason::BadTunnel,
                format!("duplicate tunnel id {}", t.id),
            ));
        }
        match t.kind {
            TunnelKind::Tcp | TunnelKind::Udp => {
                let Some(port) = t.remote_port.filter(|&p| p != 0) else {
                    return Err(reject(
                        RejectReason::BadTunnel,
                        format!("{} tunnel `{}` needs a remote_port", t.kind, t.name),
                    ));
                };
                let allowed = if t.kind == TunnelKind::Tcp {
                    claims.allows_tcp(port)
                } else {
                    claims.allows_udp(port)
                };
                if !allowed {
                    return Err(reject(
                        RejectReason::PortNotAllowed,
                        format!(
                            "{} port {port} (tunnel `{}`) is not in the token",
                            t.kind, t.name
                        ),
                    ));
                }
                if t.tls {
                    let host = http_host(shared, t);
                    if !claims.allows_host(&host) {
                        return Err(reject(
                            RejectReason::HostnameNotAllowed,
                            format!(
                                "hostname {host} (tls on tunnel `{}`) is not in the token",
                                t.name
                            ),
                        ));
                    }
                }
                if !ports.insert((t.kind == TunnelKind::Tcp, port)) {
                    return Err(reject(
                        RejectReason::BadTunnel,
                        format!("{} port {port} asked for twice", t.kind),
                    ));
                }
            }
            _ if t.tls && t.kind != TunnelKind::Tcp => {
                return Err(reject(
                    RejectReason::BadTunnel,
                    format!("tunnel `{}`: tls is for tcp tunnels", t.name),
                ));
            }
            TunnelKind::Http => {
                let host = http_host(shared, t);
                if !claims.allows_host(&host) {
                    return Err(reject(
                        RejectReason::HostnameNotAllowed,
                        format!("hostname {host} (tunnel `{}`) is not in the token", t.name),
                    ));
                }
            }
        }
    }
    Ok(())
}

/// Public hostname of an http tunnel (or the certificate name of a tls tcp tunnel): the
/// explicit one, or `NAME.DOMAIN`.
fn http_host(shared: &Shared, t: &proto::TunnelSpec) -> String {
    crate::token::normalize_host(
        &t.hostname
            .clone()
            .unwrap_or_else(|| format!("{}.{}", t.name, shared.config.domain)),
    )
}

/// Claim the hostnames of the http tunnels for session `id`; a hostname held by another
/// agent is refused.
fn claim_routes(
    shared: &Shared,
    tunnels: &[proto::TunnelSpec],
    agent: &str,
    id: u64,
    conn: &Connection,
    streams: &Arc<tokio::sync::Semaphore>,
) -> Result<Vec<(u32, String)>, Reject> {
    let mut claimed = Vec::new();
    for t in tunnels.iter().filter(|t| t.kind == TunnelKind::Http) {
        let host = http_host(shared, t);
        if let Some(other) = shared.routes.get(&host) {
            if other.agent != agent {
                let other_agent = other.agent.clone();
                drop(other);
                // Undo this call's claims only (a tunnel update keeps the session's others).
                let ours: Vec<u32> = claimed.iter().map(|(tid, _)| *tid).collect();
                release_tunnel_routes(shared, id, &ours);
                return Err(reject(
                    RejectReason::InUse,
                    format!("hostname {host} is served by agent `{other_agent}`"),
                ));
            }
        }
        shared.offline.remove(&host);
        shared.certs.want(&host);
        shared.routes.insert(
            host.clone(),
            crate::http::Route {
                agent: agent.to_string(),
                session: id,
                conn: conn.clone(),
                tunnel: t.id,
                opts: Arc::new(
                    t.http
                        .clone()
                        .unwrap_or_else(|| proto::HttpOptions::new("")),
                ),
                pool: Arc::default(),
                streams: streams.clone(),
            },
        );
        let port = match shared.https_port {
            443 => String::new(),
            p => format!(":{p}"),
        };
        claimed.push((t.id, format!("https://{host}{port}")));
    }
    Ok(claimed)
}

/// Drop session `id`'s routes, remembering when each hostname went offline.
fn release_routes(shared: &Shared, id: u64) {
    let now = SystemTime::now();
    shared.routes.retain(|host, r| {
        if r.session == id {
            shared.offline.insert(host.clone(), now);
            false
        } else {
            true
        }
    });
}

/// Drop the routes of session `id`'s tunnels `tunnels` (removed by a tunnel update).
fn release_tunnel_routes(shared: &Shared, id: u64, tunnels: &[u32]) {
    let now = SystemTime::now();
    shared.routes.retain(|host, r| {
        if r.session == id && tunnels.contains(&r.tunnel) {
            shared.offline.insert(host.clone(), now);
            false
        } else {
            true
        }
    });
}

/// Bind the public UDP port of every udp tunnel; counters are kept per agent and tunnel name.
async fn bind_udp(
    shared: &Shared,
    tunnels: &[proto::TunnelSpec],
    agent: &str,
) -> Result<Vec<udp_tunnel::BoundUdp>, Reject> {
    let mut out = Vec::new();
    for t in tunnels.iter().filter(|t| t.kind == TunnelKind::Udp) {
        let port = t.remote_port.unwrap_or_default();
        let addr = SocketAddr::new(shared.config.listen.tunnels, port);
        // 4 MiB socket buffers, like the QUIC socket: bursts from many visitors wait in the
        // kernel instead of being dropped.
        let socket = proto::transport::quic::udp_socket(addr)
            .and_then(|s| {
                s.set_nonblocking(true)?;
                UdpSocket::from_std(s)
            })
            .map_err(|e| {
                reject(
                    RejectReason::InUse,
                    format!("cannot listen on udp {addr} for tunnel `{}`: {e}", t.name),
                )
            })?;
        out.push(udp_tunnel::BoundUdp {
            id: t.id,
            name: t.name.clone(),
            socket,
            public: format!("udp://{}:{port}", shared.config.domain),
            stats: shared.udp.entry(agent, &t.name),
        });
    }
    Ok(out)
}

async fn bind_tunnels(
    shared: &Shared,
    tunnels: &[proto::TunnelSpec],
) -> Result<Vec<Bound>, Reject> {
    let mut out = Vec::new();
    for t in tunnels.iter().filter(|t| t.kind == TunnelKind::Tcp) {
        let port = t.remote_port.unwrap_or_default();
        let addr = SocketAddr::new(shared.config.listen.tunnels, port);
        let listener = TcpListener::bind(addr).await.map_err(|e| {
            reject(
                RejectReason::InUse,
                format!("cannot listen on tcp {addr} for tunnel `{}`: {e}", t.name),
            )
        })?;
        let tls_host = t.tls.then(|| http_host(shared, t));
        if let Some(h) = &tls_host {
            shared.certs.want(h);
        }
        out.push(Bound {
            id: t.id,
            name: t.name.clone(),
            listener,
            public: match &tls_host {
                Some(h) => format!("tls://{h}:{port}"),
                None => format!("tcp://{}:{port}", shared.config.domain),
            },
            tls_host,
        });
    }
    Ok(out)
}

async fn run_session(
    shared: Arc<Shared>,
    conn: Connection,
    mut ctrl: BiStream,
    hello: Hello,
    claims: Claims,
    shutdown: CancellationToken,
) {
    // Replace an older session of the same agent and wait (bounded) until it has released
    // its ports, so ours can bind them. An agent moving from the TCP fallback to QUIC: the old
    // session stops taking visitors at once, but its streams in flight finish on the old
    // connection, which then closes (REPLACE_DRAIN at most). Otherwise (a reconnect, or a
    // second agent with the same token) the old connection is closed at once.
    if let Some(old) = shared.registry.take(&claims.sub) {
        let moving = old.transport() == TransportKind::Tcp && conn.kind() == TransportKind::Quic;
        tracing::info!(
            old_session = old.id,
            "replacing the previous session of this agent{}",
            if moving {
                " (moving from TCP to QUIC; its open connections finish)"
            } else {
                ""
            }
        );
        if !moving {
            old.close(codes::CLOSE_REPLACED, "replaced by a newer session");
        }
        old.replaced.cancel();
        old.listeners.close();
        if tokio::time::timeout(REPLACE_WAIT, old.listeners.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                old_session = old.id,
                "previous session slow to release its tunnels"
            );
        }
    }
    let bound = match bind_tunnels(&shared, &hello.tunnels).await {
        Ok(b) => b,
        Err(r) => return send_reject(&shared, &conn, &mut ctrl, r).await,
    };
    let bound_udp = match bind_udp(&shared, &hello.tunnels, &claims.sub).await {
        Ok(b) => b,
        Err(r) => return send_reject(&shared, &conn, &mut ctrl, r).await,
    };
    let id = NEXT_SESSION.fetch_add(1, Ordering::Relaxed);
    // One budget of agent streams for everything this session carries (requests, pooled
    // connections, tcp visitors): a flood on one hostname cannot take the agent's QUIC
    // stream limit for itself and the relay never queues unbounded work for one agent.
    let streams = Arc::new(tokio::sync::Semaphore::new(
        shared.config.limits.streams_per_agent,
    ));
    let routes = match claim_routes(&shared, &hello.tunnels, &claims.sub, id, &conn, &streams) {
        Ok(r) => r,
        Err(r) => return send_reject(&shared, &conn, &mut ctrl, r).await,
    };
    let mut live = LiveTunnels {
        specs: hello.tunnels.clone(),
        public: Vec::new(),
        stops: HashMap::new(),
        flows: udp_tunnel::SessionFlows::default(),
        next_flow: Arc::new(AtomicU64::new(1)),
        dispatching: false,
    };
    let ctx = SessionCtx {
        shared: shared.clone(),
        id,
        agent: claims.sub.clone(),
        conn: conn.clone(),
        streams,
        cancel: CancellationToken::new(),
        tasks: TaskTracker::new(),
        listeners: TaskTracker::new(),
    };
    live.public = bound
        .iter()
        .map(|b| {
            (
                b.id,
                b.public.clone(),
                format!("{} -> {}", b.public, b.name),
            )
        })
        .chain(bound_udp.iter().map(|b| {
            (
                b.id,
                b.public.clone(),
                format!("{} -> {}", b.public, b.name),
            )
        }))
        .chain(
            routes
                .iter()
                .map(|(id, url)| (*id, url.clone(), url.clone())),
        )
        .collect();
    // Pongs go out ahead of bulk data: the agent calls the connection dead without them.
    ctrl.send.set_priority(proto::transport::CONTROL_PRIORITY);
    if let Err(e) = write_frame(&mut ctrl.send, &Control::Welcome(live.welcome(&ctx))).await {
        tracing::debug!("agent left before Welcome: {e}");
        release_routes(&shared, id);
        return;
    }
    shared.metrics.handshake("ok");
    let tasks = ctx.tasks.clone();
    let listeners = ctx.listeners.clone();
    let replaced = CancellationToken::new();
    let cancel = ctx.cancel.clone();
    let public = live.lines();
    tracing::info!(
        session = id,
        transport = %conn.kind(),
        remote = %conn.remote_addr(),
        version = %hello.agent_version,
        "agent connected; tunnels: {}",
        if public.is_empty() { "none".to_string() } else { public.join(", ") }
    );
    shared.registry.insert(SessionInfo {
        id,
        agent: claims.sub.clone(),
        version: hello.agent_version.clone(),
        jti: claims.jti.clone(),
        exp: claims.exp,
        public,
        since: SystemTime::now(),
        conn: conn.clone(),
        listeners: listeners.clone(),
        replaced: replaced.clone(),
    });
    for b in bound {
        live.spawn_tcp(&ctx, b);
    }
    for b in bound_udp {
        live.spawn_udp(&ctx, b);
    }

    let ended = loop {
        tokio::select! {
            _ = shutdown.cancelled() => {
                let _ = write_frame(&mut ctrl.send, &Control::GoAway(GoAway {
                    reason: "relay shutting down".into(),
                    reconnect_after_ms: 0,
                })).await;
                cancel.cancel();
                tasks.close();
                listeners.close();
                let grace = shared.config.limits.shutdown_grace;
                let drained = tokio::time::timeout(grace, async {
                    tokio::select! {
                        _ = tasks.wait() => {}
                        _ = answer_pings(&mut ctrl) => {}
                    }
                });
                if drained.await.is_err() {
                    tracing::info!("cutting connections still open after the {grace:?} grace period");
                }
                conn.close(codes::CLOSE_SHUTDOWN, "relay shutting down");
                break "relay shutting down".to_string();
            }
            _ = replaced.cancelled() => {
                // A newer session of this agent took over: no new visitors here; streams in
                // flight finish, then the old connection goes.
                cancel.cancel();
                listeners.close();
                tasks.close();
                tokio::select! {
                    _ = async {
                        listeners.wait().await;
                        tasks.wait().await;
                    } => {}
                    _ = answer_pings(&mut ctrl) => {}
                    _ = conn.closed() => {}
                    _ = shutdown.cancelled() => {}
                    _ = tokio::time::sleep(REPLACE_DRAIN) => {
                        tracing::info!("cutting connections of the replaced session still open after {REPLACE_DRAIN:?}");
                    }
                }
                conn.close(codes::CLOSE_REPLACED, "replaced by a newer session");
                break "replaced by a newer session".to_string();
            }
            e = conn.closed() => break e.to_string(),
            msg = read_frame::<_, Control>(&mut ctrl.recv) => match msg {
                Ok(Some(Control::Ping(v))) => {
                    let _ = write_frame(&mut ctrl.send, &Control::Pong(v)).await;
                }
                Ok(Some(Control::Pong(_))) => {}
                Ok(Some(Control::TunnelUpdate(tunnels))) => {
                    let reply = match live.update(&ctx, &claims, tunnels).await {
                        Ok(()) => Control::Welcome(live.welcome(&ctx)),
                        Err(r) => {
                            tracing::warn!("tunnel update refused: {}: {}; the previous tunnels stay", r.reason, r.detail);
                            Control::Reject(r)
                        }
                    };
                    let _ = write_frame(&mut ctrl.send, &reply).await;
                }
                Ok(Some(other)) => {
                    tracing::warn!("unexpected control message from agent: {other:?}");
                    conn.close(codes::CLOSE_PROTOCOL, "unexpected control message");
                    break "protocol error".into();
                }
                Ok(None) => {
                    conn.close(codes::CLOSE_NORMAL, "control stream closed");
                    break "agent closed its control stream".into();
                }
                Err(e) => {
                    conn.close(codes::CLOSE_PROTOCOL, "bad control frame");
                    break format!("bad control frame: {e}");
                }
            },
        }
    };
    cancel.cancel();
    tasks.close();
    listeners.close();
    shared.registry.remove_if(&claims.sub, id);
    release_routes(&shared, id);
    tracing::info!(session = id, "agent disconnected: {ended}");
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        listeners.wait().await;
        tasks.wait().await;
    })
    .await;
}

/// What a running session needs to start and stop tunnels.
struct SessionCtx {
    shared: Arc<Shared>,
    id: u64,
    agent: String,
    conn: Connection,
    /// The agent's stream budget, shared by all its tunnels.
    streams: Arc<tokio::sync::Semaphore>,
    /// Ends every listener of the session.
    cancel: CancellationToken,
    /// Visitor connections and streams in flight.
    tasks: TaskTracker,
    /// Public-port listeners (and the udp datagram dispatcher).
    listeners: TaskTracker,
}

/// The session's tunnels as registered now; a TunnelUpdate changes them in place.
struct LiveTunnels {
    specs: Vec<proto::TunnelSpec>,
    /// `(tunnel id, public address, log line)` of each registered tunnel.
    public: Vec<(u32, String, String)>,
    /// Stops one tcp/udp tunnel's listener (a child of the session's `cancel`).
    stops: HashMap<u32, CancellationToken>,
    flows: udp_tunnel::SessionFlows,
    next_flow: Arc<AtomicU64>,
    dispatching: bool,
}

impl LiveTunnels {
    fn welcome(&self, ctx: &SessionCtx) -> Welcome {
        Welcome {
            session: ctx.id,
            agent: ctx.agent.clone(),
            tunnels: self
                .public
                .iter()
                .map(|(id, public, _)| Assigned {
                    id: *id,
                    public: public.clone(),
                })
                .collect(),
        }
    }

    fn lines(&self) -> Vec<String> {
        self.public.iter().map(|(_, _, l)| l.clone()).collect()
    }

    fn spawn_tcp(&mut self, ctx: &SessionCtx, b: Bound) {
        let stop = ctx.cancel.child_token();
        self.stops.insert(b.id, stop.clone());
        let span = tracing::info_span!("tunnel", tunnel = %b.name, port = b.listener.local_addr().map(|a| a.port()).unwrap_or(0));
        ctx.listeners.spawn(
            tcp_tunnel::serve(
                ctx.shared.clone(),
                b,
                ctx.conn.clone(),
                ctx.streams.clone(),
                ctx.agent.clone(),
                stop,
                ctx.tasks.clone(),
            )
            .instrument(span),
        );
    }

    fn spawn_udp(&mut self, ctx: &SessionCtx, b: udp_tunnel::BoundUdp) {
        if !self.dispatching {
            self.dispatching = true;
            ctx.listeners.spawn(udp_tunnel::dispatch(
                ctx.conn.clone(),
                self.flows.clone(),
                ctx.cancel.clone(),
            ));
        }
        let stop = ctx.cancel.child_token();
        self.stops.insert(b.id, stop.clone());
        let span = tracing::info_span!("tunnel", tunnel = %b.name, port = b.socket.local_addr().map(|a| a.port()).unwrap_or(0));
        ctx.listeners.spawn(
            udp_tunnel::serve(
                ctx.shared.clone(),
                b,
                ctx.conn.clone(),
                ctx.streams.clone(),
                self.flows.clone(),
                self.next_flow.clone(),
                ctx.agent.clone(),
                stop,
                ctx.tasks.clone(),
            )
            .instrument(span),
        );
    }

    /// Apply the agent's new tunnel list, validated exactly like a Hello's. Tunnels whose id
    /// and spec are unchanged stay as they are (their connections too); removed ones stop
    /// listening (connections in flight finish); added ones are bound and routed. A refusal
    /// found before anything is bound leaves every tunnel as it was.
    async fn update(
        &mut self,
        ctx: &SessionCtx,
        claims: &Claims,
        new: Vec<proto::TunnelSpec>,
    ) -> Result<(), Reject> {
        let shared = &ctx.shared;
        check_tunnels(shared, claims, &new)?;
        let kept: Vec<u32> = new
            .iter()
            .filter(|t| self.specs.contains(t))
            .map(|t| t.id)
            .collect();
        let removed: Vec<proto::TunnelSpec> = self
            .specs
            .iter()
            .filter(|t| !kept.contains(&t.id))
            .cloned()
            .collect();
        let added: Vec<proto::TunnelSpec> = new
            .iter()
            .filter(|t| !kept.contains(&t.id))
            .cloned()
            .collect();
        if removed.is_empty() && added.is_empty() {
            return Ok(());
        }
        // Streams name tunnels by id: a changed tunnel must come with a new one, or streams
        // opened before and after the change could not be told apart.
        if let Some(t) = added.iter().find(|a| removed.iter().any(|r| r.id == a.id)) {
            return Err(reject(
                RejectReason::BadTunnel,
                format!(
                    "tunnel id {} (`{}`) changed: a changed tunnel needs a new id",
                    t.id, t.name
                ),
            ));
        }
        // A port that moves from a removed tunnel to an added one: free it first.
        let port_of =
            |t: &proto::TunnelSpec| (t.kind != TunnelKind::Http).then_some((t.kind, t.remote_port));
        let reused: Vec<u32> = removed
            .iter()
            .filter(|r| port_of(r).is_some() && added.iter().any(|a| port_of(a) == port_of(r)))
            .map(|r| r.id)
            .collect();
        for id in &reused {
            if let Some(stop) = self.stops.remove(id) {
                stop.cancel();
            }
        }
        let bound = async {
            let tcp = bind_retrying(|| bind_tunnels(shared, &added), !reused.is_empty()).await?;
            let udp =
                bind_retrying(|| bind_udp(shared, &added, &ctx.agent), !reused.is_empty()).await?;
            let routes = claim_routes(shared, &added, &ctx.agent, ctx.id, &ctx.conn, &ctx.streams)?;
            Ok::<_, Reject>((tcp, udp, routes))
        }
        .await;
        let (bound, bound_udp, routes) = match bound {
            Ok(b) => b,
            Err(r) => {
                // The tunnels whose port was to move are stopped already: they are gone.
                if !reused.is_empty() {
                    self.specs.retain(|t| !reused.contains(&t.id));
                    self.public.retain(|(id, _, _)| !reused.contains(id));
                    shared.registry.set_public(&ctx.agent, ctx.id, self.lines());
                }
                return Err(r);
            }
        };
        // Committed: stop what was removed, start what was added.
        let removed_ids: Vec<u32> = removed.iter().map(|t| t.id).collect();
        for id in &removed_ids {
            if let Some(stop) = self.stops.remove(id) {
                stop.cancel();
            }
        }
        release_tunnel_routes(shared, ctx.id, &removed_ids);
        self.public.retain(|(id, _, _)| !removed_ids.contains(id));
        for b in bound {
            self.public.push((
                b.id,
                b.public.clone(),
                format!("{} -> {}", b.public, b.name),
            ));
            self.spawn_tcp(ctx, b);
        }
        for b in bound_udp {
            self.public.push((
                b.id,
                b.public.clone(),
                format!("{} -> {}", b.public, b.name),
            ));
            self.spawn_udp(ctx, b);
        }
        for (id, url) in routes {
            self.public.push((id, url.clone(), url));
        }
        self.specs = new;
        let names = |v: &[proto::TunnelSpec]| {
            v.iter()
                .map(|t| t.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        tracing::info!(
            "tunnels updated by the agent: added [{}], removed [{}]; now: {}",
            names(&added),
            names(&removed),
            self.lines().join(", ")
        );
        shared.registry.set_public(&ctx.agent, ctx.id, self.lines());
        Ok(())
    }
}

/// How long a tunnel update waits for a port its own stopped listener is releasing (the
/// control loop, and so the answers to the agent's pings, waits meanwhile).
const RELEASE_WAIT: Duration = Duration::from_millis(500);

/// Bind with `f`; when a port was just released by a stopped listener of this session, retry
/// for up to [`RELEASE_WAIT`] while it frees.
async fn bind_retrying<T, F, Fut>(f: F, retry: bool) -> Result<Vec<T>, Reject>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Result<Vec<T>, Reject>>,
{
    let deadline = tokio::time::Instant::now() + RELEASE_WAIT;
    loop {
        match f().await {
            Err(r)
                if retry
                    && r.reason == RejectReason::InUse
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            other => return other,
        }
    }
}

/// While a session drains (shutdown, replaced): keep answering the agent's pings, or its
/// heartbeat would cut the streams that are finishing. Never returns.
async fn answer_pings(ctrl: &mut BiStream) {
    while let Ok(Some(msg)) = read_frame::<_, Control>(&mut ctrl.recv).await {
        if let Control::Ping(v) = msg {
            let _ = write_frame(&mut ctrl.send, &Control::Pong(v)).await;
        }
    }
    std::future::pending::<()>().await
}

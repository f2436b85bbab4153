//! The dial/serve/reconnect loop and one session's stream handling.

use std::{
    net::SocketAddr,
    sync::atomic::Ordering,
    sync::Arc,
    time::{Duration, Instant},
};

use proto::{
    codes,
    control::CONTROL_VERSION,
    proxy,
    transport::{
        copy_bidirectional_idle,
        quic::{self, QuicConnection},
        read_frame, splice,
        tcp::TcpConnection,
        write_frame, BiStream, Connection, FrameError, TransportError, TransportKind,
    },
    Control, Hello, RejectReason, StreamError, StreamErrorKind, StreamKind, StreamOpen,
    StreamReply, TunnelKind,
};
use tokio::{io::AsyncWriteExt, net::TcpStream};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    backoff::Backoff,
    config::{split_host_port, TransportChoice},
    udp, Agent, Status, Tunnel,
};

/// A session that lasted this long was healthy: the next reconnect starts fresh.
const HEALTHY: Duration = Duration::from_secs(5);
/// Time a stream has to send its StreamOpen header.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long open connections may finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// How one attempt ended.
enum Ended {
    /// We are shutting down.
    Shutdown,
    /// A session ran and then ended.
    Lost {
        cause: String,
        healthy: bool,
        replaced: bool,
    },
    /// Could not connect or register.
    Failed(String),
    /// The relay refused us.
    Rejected(RejectReason, String),
}

pub(crate) async fn run(
    agent: Agent,
    shutdown: CancellationToken,
) -> Result<(), crate::AgentError> {
    let agent = Arc::new(agent);
    let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(30));
    let mut last_cause = String::new();
    // Sessions left behind when moving from the TCP fallback to QUIC, finishing their streams.
    let drain = TaskTracker::new();
    loop {
        // `attempt` watches `shutdown` itself, so a running session closes cleanly.
        let ended = attempt(&agent, &shutdown, &drain).await;
        let (delay, cause) = match ended {
            Ended::Shutdown => {
                drain.close();
                let _ = tokio::time::timeout(SHUTDOWN_GRACE, drain.wait()).await;
                tracing::info!("agent stopped");
                return Ok(());
            }
            Ended::Lost {
                cause,
                healthy,
                replaced,
            } => {
                if replaced {
                    tracing::warn!(
                        "another agent with this name connected and replaced this one; \
                        two agents share a token? retrying in a while"
                    );
                    (Duration::from_secs(30), cause)
                } else {
                    tracing::warn!("connection to relay lost: {cause}; reconnecting");
                    if healthy {
                        backoff.reset();
                    }
                    (backoff.next_delay(), cause)
                }
            }
            Ended::Failed(cause) => {
                let delay = backoff.next_delay();
                if cause != last_cause {
                    tracing::warn!(
                        "cannot reach relay {}: {cause}; retrying (attempt {})",
                        agent.config.relay,
                        backoff.attempts()
                    );
                } else {
                    tracing::debug!(
                        attempt = backoff.attempts(),
                        "still cannot reach relay: {cause}"
                    );
                }
                (delay, cause)
            }
            Ended::Rejected(reason, detail) => {
                let delay =
                    backoff
                        .next_delay()
                        .max(Duration::from_secs(if reason.is_permanent() {
                            30
                        } else {
                            1
                        }));
                let cause = format!("{reason}: {detail}");
                if cause != last_cause {
                    tracing::error!("relay refused this agent: {cause}; retrying every {}s in case the relay's settings change",
                        delay.as_secs());
                }
                agent
                    .status
                    .send_replace(Status::Rejected { reason, detail });
                last_cause = cause;
                if sleep_or_shutdown(delay, &shutdown).await {
                    return Ok(());
                }
                continue;
            }
        };
        agent.status.send_replace(Status::Connecting {
            attempt: backoff.attempts(),
            last_error: Some(cause.clone()),
        });
        last_cause = cause;
        if sleep_or_shutdown(delay, &shutdown).await {
            tracing::info!("agent stopped");
            return Ok(());
        }
    }
}

async fn sleep_or_shutdown(d: Duration, shutdown: &CancellationToken) -> bool {
    tokio::select! {
        _ = shutdown.cancelled() => true,
        _ = tokio::time::sleep(d) => false,
    }
}

async fn resolve_relay(relay: &str) -> Result<(SocketAddr, String), String> {
    let (host, _) = split_host_port(relay).ok_or("relay: expected HOST:PORT")?;
    let addr = tokio::net::lookup_host(relay)
        .await
        .map_err(|e| format!("cannot resolve {relay}: {e}"))?
        .next()
        .ok_or_else(|| format!("{relay} resolves to no address"))?;
    Ok((addr, host))
}

/// A dialled connection, and what must outlive it for a clean close.
struct Dialled {
    conn: Connection,
    /// The QUIC endpoint (its socket), for QUIC connections.
    endpoint: Option<quinn::Endpoint>,
    /// The TLS+yamux connection, for TCP fallback connections.
    tcp: Option<TcpConnection>,
}

impl Dialled {
    /// Let close frames go out before the socket is dropped.
    async fn wait_idle(&self) {
        let limit = Duration::from_millis(200);
        if let Some(e) = &self.endpoint {
            let _ = tokio::time::timeout(limit, e.wait_idle()).await;
        }
        if let Some(t) = &self.tcp {
            let _ = tokio::time::timeout(limit, t.wait_idle()).await;
        }
    }
}

/// After moving from the TCP fallback to QUIC, how long connections still open on the old
/// session may go on before it is closed (the relay allows the same).
const MOVE_DRAIN: Duration = Duration::from_secs(30);

/// How long QUIC has to connect before auto mode starts the TCP fallback beside it.
const TCP_HEAD_START: Duration = Duration::from_millis(300);

/// Dial, register, serve until the session ends. In auto mode a session on the TCP fallback
/// moves to QUIC when a background probe gets through; the old session's streams finish in
/// `drain` (the relay replaces it by agent name).
async fn attempt(agent: &Arc<Agent>, shutdown: &CancellationToken, drain: &TaskTracker) -> Ended {
    let dialled = tokio::select! {
        _ = shutdown.cancelled() => return Ended::Shutdown,
        d = dial(agent) => d,
    };
    let mut dialled = match dialled {
        Ok(d) => d,
        Err(e) => return Ended::Failed(e),
    };
    loop {
        match serve(agent, dialled.conn.clone(), shutdown).await {
            Served::Ended(ended) => {
                dialled.wait_idle().await;
                return ended;
            }
            Served::Moved { next, tasks, ctrl } => {
                let old = std::mem::replace(&mut dialled, next);
                // The relay replaces the old session when the new one registers; anything
                // still open on it gets a short while, then the old connection is closed.
                let stop = shutdown.clone();
                drain.spawn(async move {
                    tasks.close();
                    tokio::select! {
                        _ = tokio::time::timeout(MOVE_DRAIN, tasks.wait()) => {}
                        _ = stop.cancelled() => {
                            let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
                        }
                    }
                    drop(ctrl);
                    old.conn.close(codes::CLOSE_NORMAL, "moved to QUIC");
                    old.wait_idle().await;
                });
            }
        }
    }
}

/// Dial the relay with the configured transport.
async fn dial(agent: &Agent) -> Result<Dialled, String> {
    match agent.config.transport {
        TransportChoice::Quic => dial_quic(agent).await,
        TransportChoice::Tcp => dial_tcp(agent).await,
        TransportChoice::Auto => dial_auto(agent).await,
    }
}

/// Happy eyeballs: QUIC first; TCP too once QUIC has had [`TCP_HEAD_START`]; the first to
/// connect wins and the other attempt is dropped. Says in plain words why TCP was used.
async fn dial_auto(agent: &Agent) -> Result<Dialled, String> {
    let cfg = &agent.config;
    let quic = dial_quic(agent);
    tokio::pin!(quic);
    let mut quic_err = None;
    let head_start = if agent.quic_suspect.swap(false, Ordering::Relaxed) {
        Duration::ZERO
    } else {
        TCP_HEAD_START
    };
    tokio::select! {
        r = &mut quic => match r {
            Ok(d) => return Ok(d),
            Err(e) => quic_err = Some(e),
        },
        _ = tokio::time::sleep(head_start) => {}
    }
    let tcp = dial_tcp(agent);
    tokio::pin!(tcp);
    let mut tcp_err = None;
    loop {
        tokio::select! {
            r = &mut quic, if quic_err.is_none() => match r {
                Ok(d) => return Ok(d),
                Err(e) => quic_err = Some(e),
            },
            r = &mut tcp, if tcp_err.is_none() => match r {
                Ok(d) => {
                    let why = match &quic_err {
                        Some(e) => format!("QUIC failed ({e})"),
                        None if head_start.is_zero() => {
                            "QUIC went unanswered just before".to_string()
                        }
                        None => format!("QUIC did not connect within {TCP_HEAD_START:?}"),
                    };
                    tracing::info!(
                        "{why}; UDP may be blocked on this network: using the TCP fallback to {}, \
                         trying QUIC again every {}",
                        cfg.relay_https.as_deref().unwrap_or(&cfg.relay),
                        humantime::format_duration(cfg.quic_probe_interval)
                    );
                    return Ok(d);
                }
                Err(e) => tcp_err = Some(e),
            },
        }
        if let (Some(q), Some(t)) = (&quic_err, &tcp_err) {
            return Err(format!("{q}; TCP fallback: {t}"));
        }
    }
}

/// Resolve the relay's https address and finish TCP, TLS (ALPN `periscope/1`, the relay
/// verified exactly as on QUIC) and yamux setup, within `connect_timeout`.
async fn dial_tcp(agent: &Agent) -> Result<Dialled, String> {
    let cfg = &agent.config;
    let limit = cfg.connect_timeout;
    let target = cfg.relay_https.as_deref().unwrap_or(&cfg.relay);
    let (addr, host) = tokio::time::timeout(limit, resolve_relay(target))
        .await
        .map_err(|_| format!("resolving {target} took longer than {limit:?}"))??;
    let server_name = cfg.server_name.clone().unwrap_or(host);
    let name = rustls::pki_types::ServerName::try_from(server_name)
        .map_err(|e| format!("relay name: {e}"))?;
    let mut tls = agent.tls.clone();
    tls.alpn_protocols = vec![proto::ALPN.to_vec()];
    let connector = tokio_rustls::TlsConnector::from(Arc::new(tls));
    let connected = tokio::time::timeout(limit, async {
        let sock = TcpStream::connect(addr)
            .await
            .map_err(|e| format!("TCP connect to {addr}: {e}"))?;
        let _ = sock.set_nodelay(true);
        connector.connect(name, sock).await.map_err(|e| {
            let pinned = agent.pinned.as_ref();
            pinned
                .and_then(|p| p.mismatch.lock().unwrap_or_else(|e| e.into_inner()).take())
                .unwrap_or_else(|| format!("TLS handshake with {addr} failed: {e}"))
        })
    })
    .await
    .map_err(|_| format!("no TLS answer from {addr} within {limit:?}"))??;
    if connected.get_ref().1.alpn_protocol() != Some(proto::ALPN) {
        return Err(format!(
            "{addr} answered TLS but not as a Periscope relay (no ALPN periscope/1): \
             an older relay, or relay_https points at another server"
        ));
    }
    let conn = TcpConnection::client(connected, addr, &cfg.quic.tcp_settings());
    Ok(Dialled {
        conn: Arc::new(conn.clone()),
        endpoint: None,
        tcp: Some(conn),
    })
}

/// Resolve the relay and finish the QUIC handshake, all within `connect_timeout`.
async fn dial_quic(agent: &Agent) -> Result<Dialled, String> {
    let cfg = &agent.config;
    let limit = cfg.connect_timeout;
    let (addr, host) = tokio::time::timeout(limit, resolve_relay(&cfg.relay))
        .await
        .map_err(|_| format!("resolving {} took longer than {limit:?}", cfg.relay))??;
    let server_name = cfg.server_name.clone().unwrap_or(host);
    let client =
        quic::client_config(agent.tls.clone(), &cfg.quic.settings()).map_err(|e| e.to_string())?;
    let bind = if addr.is_ipv6() {
        SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0))
    } else {
        SocketAddr::from(([0, 0, 0, 0], 0))
    };
    let endpoint = quic::udp_socket(bind)
        .and_then(|socket| {
            report_offloads(&socket);
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                Arc::new(quinn::TokioRuntime),
            )
        })
        .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
    let connecting = endpoint
        .connect_with(client, addr, &server_name)
        .map_err(|e| format!("cannot dial {addr}: {e}"))?;
    match tokio::time::timeout(limit, connecting).await {
        Ok(Ok(c)) => Ok(Dialled {
            conn: Arc::new(QuicConnection(c)),
            endpoint: Some(endpoint),
            tcp: None,
        }),
        Ok(Err(e)) => {
            let pinned = agent.pinned.as_ref();
            Err(pinned
                .and_then(|p| p.mismatch.lock().unwrap_or_else(|e| e.into_inner()).take())
                .unwrap_or_else(|| format!("QUIC handshake with {addr} failed: {}", TransportError::from(e))))
        }
        Err(_) => Err(format!(
            "no QUIC answer from {addr} within {limit:?} (relay down, or UDP blocked on this network?)"
        )),
    }
}

/// How serving one connection ended.
enum Served {
    /// The session is over.
    Ended(Ended),
    /// A QUIC probe got through while on the TCP fallback: serve `next`; `tasks` are the old
    /// session's streams, still running.
    Moved {
        next: Dialled,
        tasks: TaskTracker,
        ctrl: BiStream,
    },
}

async fn serve(agent: &Arc<Agent>, conn: Connection, shutdown: &CancellationToken) -> Served {
    let cfg = &agent.config;
    // Subscribed before the Hello: a reload from now on is sent as a TunnelUpdate.
    let mut tunnels = agent.tunnels.subscribe();
    let registered_tunnels = tunnels.borrow_and_update().clone();
    let hello = Hello {
        version: CONTROL_VERSION,
        agent_version: env!("CARGO_PKG_VERSION").into(),
        token: agent.token.clone(),
        tunnels: registered_tunnels.iter().map(|t| t.spec.clone()).collect(),
    };
    let register = tokio::time::timeout(cfg.connect_timeout, async {
        let mut ctrl = conn.open_bi().await.map_err(|e| e.to_string())?;
        write_frame(&mut ctrl.send, &Control::Hello(hello))
            .await
            .map_err(|e| e.to_string())?;
        let reply = read_frame::<_, Control>(&mut ctrl.recv).await;
        Ok::<_, String>((ctrl, reply))
    });
    let registered = tokio::select! {
        _ = shutdown.cancelled() => {
            conn.close(codes::CLOSE_NORMAL, "agent stopping");
            return Served::Ended(Ended::Shutdown);
        }
        r = register => r,
    };
    let (ctrl, welcome) = match registered {
        Err(_) => {
            return Served::Ended(Ended::Failed(
                "relay did not answer the Hello in time".into(),
            ))
        }
        Ok(Err(e)) => {
            return Served::Ended(Ended::Failed(format!("registering with the relay: {e}")))
        }
        Ok(Ok((_, Ok(Some(Control::Reject(r)))))) => {
            conn.close(codes::CLOSE_NORMAL, "rejected");
            return Served::Ended(Ended::Rejected(r.reason, r.detail));
        }
        Ok(Ok((ctrl, Ok(Some(Control::Welcome(w)))))) => (ctrl, w),
        Ok(Ok((_, Ok(other)))) => {
            conn.close(codes::CLOSE_PROTOCOL, "expected Welcome");
            return Served::Ended(Ended::Failed(format!(
                "relay answered the Hello with {other:?}"
            )));
        }
        Ok(Ok((_, Err(e)))) => {
            return Served::Ended(Ended::Failed(format!("registering with the relay: {e}")))
        }
    };
    let public = public_of(&welcome, &registered_tunnels);
    let span = tracing::info_span!("session", agent = %welcome.agent, session = welcome.session);
    span.in_scope(|| log_tunnels_up(&public, &registered_tunnels, &[]));
    span.in_scope(|| tracing::info!(transport = %conn.kind(), relay = %conn.remote_addr(), "connected to relay"));
    agent.current.set(Some(conn.clone()));
    agent.status.send_replace(Status::Connected {
        session: welcome.session,
        transport: conn.kind(),
        public,
    });
    let started = Instant::now();
    let tasks = TaskTracker::new();
    let probe =
        agent.config.transport == TransportChoice::Auto && conn.kind() == TransportKind::Tcp;
    let ended = serve_streams(agent, &conn, ctrl, tunnels, shutdown, &tasks, probe)
        .instrument(span)
        .await;
    agent.current.set(None);
    let ended = match ended {
        StreamsEnd::Moved(next, ctrl) => return Served::Moved { next, tasks, ctrl },
        StreamsEnd::Shutdown => None,
        StreamsEnd::Lost(e) => Some(e),
        StreamsEnd::Unanswered(quiet) => {
            tasks.close();
            agent.quic_suspect.store(true, Ordering::Relaxed);
            return Served::Ended(Ended::Lost {
                cause: format!(
                    "the relay stopped answering pings ({} ms without an answer, while its \
                     packets still arrive: UDP toward the relay may be blocked)",
                    quiet.as_millis()
                ),
                healthy: started.elapsed() >= HEALTHY,
                replaced: false,
            });
        }
    };
    tasks.close();
    let st = conn.stats();
    tracing::debug!(rtt = ?st.rtt, mtu = st.mtu, sent = st.sent_packets, lost = st.lost_packets,
        congestion_events = st.congestion_events, "session path statistics");
    match ended {
        None => {
            conn.close(codes::CLOSE_NORMAL, "agent stopping");
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, tasks.wait()).await;
            Served::Ended(Ended::Shutdown)
        }
        Some(err) => {
            let replaced = matches!(&err, TransportError::ClosedByPeer { code, .. } if *code == u64::from(codes::CLOSE_REPLACED));
            Served::Ended(Ended::Lost {
                cause: err.to_string(),
                healthy: started.elapsed() >= HEALTHY,
                replaced,
            })
        }
    }
}

/// `(tunnel name, public address)` of each tunnel in a Welcome.
fn public_of(welcome: &proto::Welcome, tunnels: &[Tunnel]) -> Vec<(String, String)> {
    welcome
        .tunnels
        .iter()
        .filter_map(|a| {
            let t = tunnels.iter().find(|t| t.spec.id == a.id)?;
            Some((t.spec.name.clone(), a.public.clone()))
        })
        .collect()
}

/// Log each tunnel of `public` that is not in `before`.
fn log_tunnels_up(public: &[(String, String)], tunnels: &[Tunnel], before: &[(String, String)]) {
    for (name, url) in public.iter().filter(|p| !before.contains(p)) {
        let target = tunnels
            .iter()
            .find(|t| &t.spec.name == name)
            .map(|t| t.target.to_string());
        tracing::info!(tunnel = %name, "tunnel up: {url} -> {}", target.unwrap_or_default());
    }
}

/// How [`serve_streams`] ended.
enum StreamsEnd {
    /// We are shutting down.
    Shutdown,
    /// The connection ended.
    Lost(TransportError),
    /// The relay stopped answering pings for this long; the connection is closed.
    Unanswered(Duration),
    /// QUIC works again (auto mode on the TCP fallback): move to this connection. The old
    /// control stream stays open until the old session's streams are done (its end would
    /// end the old session on the relay at once).
    Moved(Dialled, BiStream),
}

/// Say once per process what UDP batching this kernel lacks (old router kernels): QUIC works
/// without it, at more CPU per packet.
fn report_offloads(socket: &std::net::UdpSocket) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let (gso, gro) = quic::offloads(socket);
        if gso <= 1 || gro <= 1 {
            tracing::info!(
                gso_segments = gso,
                gro_segments = gro,
                "this kernel has no UDP {} offload: QUIC sends and receives one packet per \
                 system call (works, with more CPU at high rates)",
                match (gso <= 1, gro <= 1) {
                    (true, true) => "GSO or GRO",
                    (true, false) => "GSO",
                    _ => "GRO",
                }
            );
        } else {
            tracing::debug!(
                gso_segments = gso,
                gro_segments = gro,
                "UDP offloads available"
            );
        }
    });
}

/// While on the TCP fallback: try QUIC every `quic_probe_interval` until it connects.
async fn probe_quic(agent: &Agent) -> Dialled {
    let every = agent.config.quic_probe_interval;
    loop {
        tokio::time::sleep(every).await;
        match dial_quic(agent).await {
            Ok(d) => {
                tracing::info!(
                    "QUIC to {} works again: moving this agent from the TCP fallback to QUIC \
                     (open connections on TCP finish there)",
                    agent.config.relay
                );
                return d;
            }
            Err(e) => tracing::debug!("QUIC still unavailable, staying on TCP: {e}"),
        }
    }
}

/// Pings on the control stream that need the relay's answer. QUIC's keep-alives cannot tell
/// when only our packets are lost (UDP blocked toward the relay): the relay's keep-alives
/// still arrive and hold our idle timer open until the relay itself gives up, ~20 s.
#[derive(Debug, Clone, Copy)]
struct Heartbeat {
    every: Duration,
}

impl Heartbeat {
    /// A ping every quarter keep-alive; dead after three quarters without a pong (1.5 s by
    /// default), or four round trips on a long link.
    fn new(keep_alive: Duration) -> Self {
        Heartbeat {
            every: (keep_alive / 4).max(Duration::from_millis(50)),
        }
    }

    fn deadline(&self, rtt: Duration) -> Duration {
        (self.every * 3).max(rtt * 4 + self.every)
    }
}

/// Accept data streams until the connection ends, we shut down, or (with `probe`) QUIC
/// works again.
async fn serve_streams(
    agent: &Arc<Agent>,
    conn: &Connection,
    mut ctrl: BiStream,
    mut tunnels: tokio::sync::watch::Receiver<Arc<Vec<Tunnel>>>,
    shutdown: &CancellationToken,
    tasks: &TaskTracker,
    probe: bool,
) -> StreamsEnd {
    // A block, so the control reader's borrow of `ctrl` ends with it.
    let next = {
        // The control reader lives across loop iterations (read_frame is not cancel-safe)
        // and hands what it reads to the loop, which does all the writing.
        let (msgs_tx, mut msgs) = tokio::sync::mpsc::channel::<Control>(4);
        let recv = &mut ctrl.recv;
        let control = async move {
            loop {
                match read_frame::<_, Control>(recv).await {
                    Ok(Some(m)) => {
                        if msgs_tx.send(m).await.is_err() {
                            break;
                        }
                    }
                    // The connection itself ended: accept_bi reports why.
                    Ok(None) | Err(FrameError::Io(_)) => break,
                    Err(e) => {
                        tracing::warn!("bad control frame from relay: {e}");
                        conn.close(codes::CLOSE_PROTOCOL, "bad control frame");
                        break;
                    }
                }
            }
            std::future::pending::<()>().await
        };
        tokio::pin!(control);
        let ctrl_send = &mut ctrl.send;
        ctrl_send.set_priority(proto::transport::CONTROL_PRIORITY);
        let heartbeat = Heartbeat::new(agent.config.quic.keep_alive);
        let quic = conn.kind() == TransportKind::Quic;
        let mut ticker = tokio::time::interval(heartbeat.every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_pong = tokio::time::Instant::now();
        let mut pings = 0u64;
        // Fires when the relay has been silent on the control stream for the deadline; moved
        // on by every pong.
        let silent = tokio::time::sleep(heartbeat.deadline(conn.rtt()));
        tokio::pin!(silent);
        let flows = Arc::new(udp::Flows::default());
        let mut datagrams = true;
        let probing = probe_quic(agent);
        tokio::pin!(probing);
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return StreamsEnd::Shutdown,
                _ = &mut control => {}
                Some(m) = msgs.recv() => match m {
                    Control::GoAway(g) => tracing::info!(
                        "relay is going away ({}); finishing open connections, then reconnecting",
                        g.reason
                    ),
                    Control::Ping(v) => {
                        let _ = write_frame(&mut *ctrl_send, &Control::Pong(v)).await;
                    }
                    Control::Pong(_) => {
                        last_pong = tokio::time::Instant::now();
                        silent.as_mut().reset(last_pong + heartbeat.deadline(conn.rtt()));
                    }
                    // The relay's answer to our TunnelUpdate.
                    Control::Welcome(w) => {
                        let current = tunnels.borrow().clone();
                        let public = public_of(&w, &current);
                        agent.status.send_modify(|s| {
                            if let Status::Connected { public: p, .. } = s {
                                log_tunnels_up(&public, &current, p);
                                *p = public.clone();
                            }
                        });
                        tracing::info!("relay applied the tunnel update: {} tunnel(s)", public.len());
                    }
                    Control::Reject(r) => {
                        tracing::error!(
                            "relay refused the tunnel update: {}: {}; it keeps the previous \
                             tunnels (tunnels removed here are refused by this agent)",
                            r.reason, r.detail
                        );
                        // What is still served: registered before, and still in our config.
                        let current = tunnels.borrow().clone();
                        agent.status.send_modify(|s| {
                            if let Status::Connected { public, .. } = s {
                                public.retain(|(n, _)| current.iter().any(|t| &t.spec.name == n));
                            }
                        });
                    }
                    other => tracing::debug!("ignoring control message {other:?}"),
                },
                Ok(()) = tunnels.changed() => {
                    let specs = tunnels.borrow_and_update().iter().map(|t| t.spec.clone()).collect();
                    tracing::info!("tunnel list changed: sending it to the relay");
                    let _ = write_frame(&mut *ctrl_send, &Control::TunnelUpdate(specs)).await;
                }
                // QUIC only: the TLS+TCP fallback has its own pings, and a TCP send queue
                // can hold a pong back longer than any fixed deadline.
                _ = ticker.tick(), if quic => {
                    pings += 1;
                    let _ = write_frame(&mut *ctrl_send, &Control::Ping(pings)).await;
                }
                _ = &mut silent, if quic => {
                    // The RTT may have grown since the deadline was set (a loaded link).
                    let deadline = last_pong + heartbeat.deadline(conn.rtt());
                    if tokio::time::Instant::now() < deadline {
                        silent.as_mut().reset(deadline);
                    } else {
                        conn.close(codes::CLOSE_TIMEOUT, "relay stopped answering pings");
                        return StreamsEnd::Unanswered(last_pong.elapsed());
                    }
                }
                next = &mut probing, if probe => break next,
                s = conn.accept_bi() => match s {
                    Ok(stream) => {
                        let span = tracing::debug_span!("stream", stream.id = stream.send.id());
                        tasks.spawn(handle_stream(agent.tunnels.borrow().clone(), agent.config.connect_timeout, stream, conn.clone(), flows.clone()).instrument(span));
                    }
                    Err(e) => return StreamsEnd::Lost(e),
                },
                // Cancel-safe (Transport::recv_datagram); a closed connection shows in accept_bi.
                d = conn.recv_datagram(), if datagrams => match d {
                    Ok(d) => flows.deliver(d),
                    Err(e) => {
                        tracing::debug!("no more datagrams on this connection: {e}");
                        datagrams = false;
                    }
                },
            }
        }
    };
    StreamsEnd::Moved(next, ctrl)
}

/// One relay-opened stream: read its header, check the tunnel against our own config,
/// connect to that tunnel's pinned target, then copy bytes.
async fn handle_stream(
    tunnels: Arc<Vec<Tunnel>>,
    connect_timeout: Duration,
    mut stream: BiStream,
    conn: Connection,
    flows: Arc<udp::Flows>,
) {
    let open =
        match tokio::time::timeout(OPEN_TIMEOUT, read_frame::<_, StreamOpen>(&mut stream.recv))
            .await
        {
            Ok(Ok(Some(o))) => o,
            Ok(Ok(None)) => return,
            Ok(Err(e)) => {
                tracing::warn!("bad stream header from relay: {e}");
                stream.send.reset(codes::RESET_PROTOCOL);
                stream.recv.stop(codes::RESET_PROTOCOL);
                return;
            }
            Err(_) => {
                stream.send.reset(codes::RESET_PROTOCOL);
                return;
            }
        };
    // Checked on every stream, never once per session: the relay is not trusted to pick targets.
    let Some(tunnel) = tunnels.iter().find(|t| t.spec.id == open.tunnel) else {
        tracing::warn!(
            tunnel.id = open.tunnel,
            "relay asked for a tunnel this agent does not have; refused"
        );
        let _ = fail(
            &mut stream,
            StreamErrorKind::UnknownTunnel,
            format!("no tunnel with id {}", open.tunnel),
        )
        .await;
        return;
    };
    match (tunnel.spec.kind, open.kind) {
        (TunnelKind::Udp, StreamKind::Udp { flow }) => {
            let span = tracing::debug_span!("flow", tunnel = %tunnel.spec.name, flow, visitor.addr = %open.visitor);
            return udp::serve_flow(tunnel, &open, flow, stream, conn, flows)
                .instrument(span)
                .await;
        }
        (TunnelKind::Udp, _) | (_, StreamKind::Udp { .. }) => {
            let _ = fail(
                &mut stream,
                StreamErrorKind::UnknownTunnel,
                format!(
                    "tunnel `{}` is a {} tunnel, the stream is {:?}",
                    tunnel.spec.name, tunnel.spec.kind, open.kind
                ),
            )
            .await;
            return;
        }
        _ => {}
    }
    let span =
        tracing::debug_span!("visitor", tunnel = %tunnel.spec.name, visitor.addr = %open.visitor);
    async {
        let (kind, detail) = match connect_target(tunnel, &open, connect_timeout).await {
            Ok(target) => {
                let was_down = tunnel
                    .target_down
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take();
                if was_down.is_some() {
                    tracing::info!(
                        "target {} of tunnel `{}` answers again",
                        tunnel.target,
                        tunnel.spec.name
                    );
                }
                return serve_target(target, stream).await;
            }
            Err(e) => e,
        };
        // Warn once per outage (and every minute while it lasts), not once per visitor.
        let loud = {
            let mut down = tunnel.target_down.lock().unwrap_or_else(|e| e.into_inner());
            let loud = down.is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
            if loud {
                *down = Some(Instant::now());
            }
            loud
        };
        if loud {
            tracing::warn!(
                "target {} of tunnel `{}`: {detail}",
                tunnel.target,
                tunnel.spec.name
            );
        } else {
            tracing::debug!(
                "target {} of tunnel `{}`: {detail}",
                tunnel.target,
                tunnel.spec.name
            );
        }
        let _ = fail(&mut stream, kind, detail).await;
    }
    .instrument(span)
    .await
}

/// A connected target: plain TCP, or TLS over it (`target_tls`).
enum Target {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

/// Connect to the tunnel's pinned target: TCP, the PROXY header if configured, then TLS if
/// configured, each step within `limit`.
async fn connect_target(
    tunnel: &Tunnel,
    open: &StreamOpen,
    limit: Duration,
) -> Result<Target, (StreamErrorKind, String)> {
    let mut sock = match tokio::time::timeout(limit, TcpStream::connect(tunnel.target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            return Err((StreamErrorKind::Refused, e.to_string()))
        }
        Ok(Err(e)) => return Err((StreamErrorKind::Unreachable, e.to_string())),
        Err(_) => {
            return Err((
                StreamErrorKind::Timeout,
                format!("no answer within {limit:?}"),
            ))
        }
    };
    if tunnel.proxy_v2 {
        let header = proxy::v2_header(open.visitor, open.server, proxy::Transport::Stream);
        sock.write_all(&header).await.map_err(|e| {
            (
                StreamErrorKind::Unreachable,
                format!("writing PROXY header: {e}"),
            )
        })?;
    }
    let Some(tls) = &tunnel.tls else {
        return Ok(Target::Plain(sock));
    };
    let _ = sock.set_nodelay(true);
    match tokio::time::timeout(limit, tls.connector.connect(tls.name.clone(), sock)).await {
        Ok(Ok(s)) => Ok(Target::Tls(Box::new(s))),
        Ok(Err(e)) => {
            let hint = if tls.verify && e.to_string().contains("certificate") {
                "; a recorder with a self-signed certificate needs target_tls_verify = false"
            } else {
                ""
            };
            Err((
                StreamErrorKind::Unreachable,
                format!("TLS handshake failed: {e}{hint}"),
            ))
        }
        Err(_) => Err((
            StreamErrorKind::Timeout,
            format!("no TLS handshake within {limit:?}"),
        )),
    }
}

/// The target is connected: tell the relay, copy bytes.
async fn serve_target(target: Target, mut stream: BiStream) {
    if write_frame(&mut stream.send, &StreamReply::Connected)
        .await
        .is_err()
    {
        return;
    }
    let copied = match target {
        Target::Plain(sock) => splice(sock, stream, None, |_, _| {})
            .await
            .map(|s| (s.stream_to_tcp, s.tcp_to_stream)),
        Target::Tls(mut tls) => copy_bidirectional_idle(&mut stream, &mut *tls, None).await,
    };
    match copied {
        Ok((up, down)) => tracing::debug!(up, down, "connection done"),
        Err(e) => tracing::debug!("connection aborted: {e}"),
    }
}

async fn fail(stream: &mut BiStream, kind: StreamErrorKind, detail: String) -> std::io::Result<()> {
    write_frame(
        &mut stream.send,
        &StreamReply::Failed(StreamError { kind, detail }),
    )
    .await?;
    stream.send.shutdown().await
}

//! Public UDP ports: each visitor address:port is a flow, carried to the agent as datagrams.
//!
//! One task per tunnel owns the public socket and the flow table (visitor address → flow).
//! A new visitor's first packet creates a flow: the relay opens a stream announcing it
//! (`StreamKind::Udp { flow }`, see `proto::datagram`) and queues a few packets until the
//! agent answers that its socket toward the target is ready. One task per session reads the
//! agent's datagrams and sends each to its flow's visitor, and only to it: the relay never
//! sends a visitor more datagrams than the target sent for it (no amplification).

use std::{
    collections::HashMap,
    net::{IpAddr, SocketAddr},
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use dashmap::DashMap;
use proto::{
    datagram,
    transport::{Connection, TransportError},
    StreamKind, StreamOpen,
};
use tokio::{net::UdpSocket, sync::mpsc};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::Shared;

/// Packets a new flow may queue while the agent sets it up.
const PENDING_PACKETS: usize = 16;
/// Largest UDP payload (IPv4: 65535 - 20 - 8).
const MAX_UDP: usize = 65_507;

/// A udp tunnel with its public port bound.
pub(crate) struct BoundUdp {
    pub(crate) id: u32,
    pub(crate) name: String,
    pub(crate) socket: UdpSocket,
    pub(crate) public: String,
    pub(crate) stats: Arc<UdpStats>,
}

/// Counters of one udp tunnel (kept across reconnects of its agent, for the admin API).
/// "up" is visitor → target, "down" is target → visitor.
#[derive(Debug, Default)]
pub struct UdpStats {
    flows_opened: AtomicU64,
    flows_active: AtomicU64,
    packets_up: AtomicU64,
    bytes_up: AtomicU64,
    packets_down: AtomicU64,
    bytes_down: AtomicU64,
    drop_too_large: AtomicU64,
    drop_rate: AtomicU64,
    drop_flow_limit: AtomicU64,
    drop_access: AtomicU64,
    drop_agent_offline: AtomicU64,
    drop_flow_refused: AtomicU64,
    drop_queue_full: AtomicU64,
    drop_visitor_send: AtomicU64,
    max_payload: AtomicUsize,
}

/// A point-in-time copy of [`UdpStats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UdpStatsSnapshot {
    /// Flows created since the relay started.
    pub flows_opened: u64,
    /// Flows open now.
    pub flows_active: u64,
    /// Packets forwarded visitor → agent.
    pub packets_up: u64,
    /// Payload bytes forwarded visitor → agent.
    pub bytes_up: u64,
    /// Packets forwarded agent → visitor.
    pub packets_down: u64,
    /// Payload bytes forwarded agent → visitor.
    pub bytes_down: u64,
    /// Dropped: payload larger than the agent path carries ([`UdpStatsSnapshot::max_payload`]).
    pub drop_too_large: u64,
    /// Dropped: the flow exceeded `limits.udp_packets_per_second`.
    pub drop_rate: u64,
    /// Dropped: a new flow past `udp_flows_per_tunnel`, `udp_flows_per_visitor` or the
    /// agent's stream budget.
    pub drop_flow_limit: u64,
    /// Dropped: a new flow from an address the port's access rule does not let in (by default
    /// only addresses logged in on one of the agent's hostnames).
    pub drop_access: u64,
    /// Dropped: the agent connection was gone.
    pub drop_agent_offline: u64,
    /// Dropped: the agent refused the flow or did not answer in time.
    pub drop_flow_refused: u64,
    /// Dropped: too many packets queued while a new flow was set up.
    pub drop_queue_full: u64,
    /// Dropped: the relay could not send to the visitor (socket buffer full, ICMP error).
    pub drop_visitor_send: u64,
    /// Largest payload the agent path carried when last measured (QUIC path MTU minus
    /// headers); 0 before the first packet.
    pub max_payload: usize,
}

impl UdpStats {
    /// Read every counter.
    pub fn snapshot(&self) -> UdpStatsSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        UdpStatsSnapshot {
            flows_opened: l(&self.flows_opened),
            flows_active: l(&self.flows_active),
            packets_up: l(&self.packets_up),
            bytes_up: l(&self.bytes_up),
            packets_down: l(&self.packets_down),
            bytes_down: l(&self.bytes_down),
            drop_too_large: l(&self.drop_too_large),
            drop_rate: l(&self.drop_rate),
            drop_flow_limit: l(&self.drop_flow_limit),
            drop_access: l(&self.drop_access),
            drop_agent_offline: l(&self.drop_agent_offline),
            drop_flow_refused: l(&self.drop_flow_refused),
            drop_queue_full: l(&self.drop_queue_full),
            drop_visitor_send: l(&self.drop_visitor_send),
            max_payload: self.max_payload.load(Ordering::Relaxed),
        }
    }
}

fn inc(a: &AtomicU64) {
    a.fetch_add(1, Ordering::Relaxed);
}

/// Per-tunnel UDP counters by `agent/tunnel`, shared with whoever reports them.
#[derive(Debug, Clone, Default)]
pub struct UdpMetrics(Arc<DashMap<String, Arc<UdpStats>>>);

impl UdpMetrics {
    /// Every udp tunnel's counters, as `(agent/tunnel, counters)`.
    pub fn all(&self) -> Vec<(String, UdpStatsSnapshot)> {
        self.0
            .iter()
            .map(|e| (e.key().clone(), e.value().snapshot()))
            .collect()
    }

    /// Counters of `agent`'s tunnel `tunnel`, if it ever registered.
    pub fn get(&self, agent: &str, tunnel: &str) -> Option<UdpStatsSnapshot> {
        self.0
            .get(&format!("{agent}/{tunnel}"))
            .map(|s| s.snapshot())
    }

    pub(crate) fn entry(&self, agent: &str, tunnel: &str) -> Arc<UdpStats> {
        self.0
            .entry(format!("{agent}/{tunnel}"))
            .or_default()
            .clone()
    }
}

/// One flow, shared by the tunnel task, its stream task and the session's datagram reader.
pub(crate) struct Flow {
    id: u64,
    visitor: SocketAddr,
    socket: Arc<UdpSocket>,
    stats: Arc<UdpStats>,
    /// Milliseconds since `epoch` of the last packet either way.
    last: AtomicU64,
    epoch: Instant,
    /// The agent has the flow's target socket: datagrams may go.
    ready: AtomicBool,
    /// Datagrams (already encoded) waiting for `ready`.
    pending: Mutex<Vec<Bytes>>,
    end: CancellationToken,
    /// Its entry in the connections list (removed when the last handle on the flow drops).
    track: crate::conns::ConnGuard,
}

impl Flow {
    fn touch(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let now = self.epoch.elapsed();
        now.saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// The session's flows by id, for the datagram reader.
pub(crate) type SessionFlows = Arc<DashMap<u64, Arc<Flow>>>;

/// Read the agent's datagrams until `cancel` fires or the connection ends, and send each to
/// its flow's visitor.
pub(crate) async fn dispatch(conn: Connection, flows: SessionFlows, cancel: CancellationToken) {
    loop {
        let d = tokio::select! {
            _ = cancel.cancelled() => return,
            d = conn.recv_datagram() => d,
        };
        let d = match d {
            Ok(d) => d,
            Err(_) => return,
        };
        let (id, payload) = match datagram::decode(d) {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!("malformed datagram from agent dropped: {e}");
                continue;
            }
        };
        let Some(flow) = flows.get(&id).map(|f| f.clone()) else {
            tracing::debug!(flow = id, "datagram for an unknown or closed flow dropped");
            continue;
        };
        flow.touch();
        match flow.socket.try_send_to(&payload, flow.visitor) {
            Ok(_) => {
                inc(&flow.stats.packets_down);
                flow.stats
                    .bytes_down
                    .fetch_add(payload.len() as u64, Ordering::Relaxed);
                flow.track.add_down(payload.len() as u64);
            }
            Err(e) => {
                inc(&flow.stats.drop_visitor_send);
                tracing::debug!(visitor.addr = %flow.visitor, "datagram to visitor dropped: {e}");
            }
        }
    }
}

/// What the tunnel task knows about a flow beyond the shared part.
struct Local {
    flow: Arc<Flow>,
    tokens: f64,
    refilled: Instant,
}

/// Serve one udp tunnel's public port until `cancel` fires.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn serve(
    shared: Arc<Shared>,
    bound: BoundUdp,
    conn: Connection,
    streams: Arc<tokio::sync::Semaphore>,
    flows: SessionFlows,
    next_flow: Arc<AtomicU64>,
    agent: String,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let limits = &shared.config.limits;
    let idle = limits.udp_flow_idle;
    let rate = f64::from(limits.udp_packets_per_second);
    let socket = Arc::new(bound.socket);
    let server = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::new(shared.config.listen.tunnels, 0));
    let stats = bound.stats;
    let mut by_addr: HashMap<SocketAddr, Local> = HashMap::new();
    let mut per_ip: HashMap<IpAddr, usize> = HashMap::new();
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<(SocketAddr, u64)>();
    let mut tick = tokio::time::interval(idle.min(Duration::from_secs(1)));
    let mut buf = vec![0u8; MAX_UDP];
    let forget = |by_addr: &mut HashMap<SocketAddr, Local>,
                  per_ip: &mut HashMap<IpAddr, usize>,
                  addr: SocketAddr| {
        if let Some(l) = by_addr.remove(&addr) {
            l.flow.end.cancel();
            flows.remove(&l.flow.id);
            stats.flows_active.fetch_sub(1, Ordering::Relaxed);
            if let Some(n) = per_ip.get_mut(&addr.ip()) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    per_ip.remove(&addr.ip());
                }
            }
        }
    };
    loop {
        let (n, visitor) = tokio::select! {
            _ = cancel.cancelled() => break,
            _ = tick.tick() => {
                // Idle flows close, and so do flows whose visitor lost access (logout, expired
                // session, ban).
                let expired: Vec<(SocketAddr, bool)> = by_addr
                    .iter()
                    .filter_map(|(a, l)| {
                        let allowed = crate::access::raw_allowed(&shared, a.ip(), server.port(), &agent);
                        (l.flow.idle() >= idle || !allowed).then_some((*a, allowed))
                    })
                    .collect();
                for (a, allowed) in expired {
                    if allowed {
                        tracing::debug!(visitor.addr = %a, "udp flow idle for {idle:?}; closed");
                    } else {
                        tracing::debug!(visitor.addr = %a, "udp flow closed: the visitor has no access any more");
                    }
                    forget(&mut by_addr, &mut per_ip, a);
                }
                continue;
            }
            g = gone_rx.recv() => {
                if let Some((addr, id)) = g {
                    if by_addr.get(&addr).is_some_and(|l| l.flow.id == id) {
                        forget(&mut by_addr, &mut per_ip, addr);
                    }
                }
                continue;
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok(r) => r,
                Err(e) => {
                    // ICMP errors from earlier sends surface here on some systems; go on.
                    tracing::debug!("udp receive error: {e}");
                    tokio::time::sleep(Duration::from_millis(1)).await;
                    continue;
                }
            },
        };
        let payload = buf.get(..n).unwrap_or_default();
        if !by_addr.contains_key(&visitor) {
            {
                // Like a tcp port: by default only an address logged in on one of this agent's
                // hostnames may open a flow. Refused packets are dropped without an answer.
                if !crate::access::raw_allowed(&shared, visitor.ip(), server.port(), &agent) {
                    inc(&stats.drop_access);
                    tracing::debug!(visitor.addr = %visitor, "udp packet from an address without access to this port; dropped");
                    continue;
                }
                let from_ip = per_ip.get(&visitor.ip()).copied().unwrap_or(0);
                if by_addr.len() >= limits.udp_flows_per_tunnel
                    || from_ip >= limits.udp_flows_per_visitor
                {
                    inc(&stats.drop_flow_limit);
                    tracing::debug!(visitor.addr = %visitor, "udp flow limit reached; packet dropped");
                    continue;
                }
                let Ok(permit) = streams.clone().try_acquire_owned() else {
                    inc(&stats.drop_flow_limit);
                    tracing::debug!(visitor.addr = %visitor, "agent stream limit reached; udp packet dropped");
                    continue;
                };
                let id = next_flow.fetch_add(1, Ordering::Relaxed);
                let flow = Arc::new(Flow {
                    id,
                    visitor,
                    socket: socket.clone(),
                    stats: stats.clone(),
                    last: AtomicU64::new(0),
                    epoch: Instant::now(),
                    ready: AtomicBool::new(false),
                    pending: Mutex::new(Vec::new()),
                    end: CancellationToken::new(),
                    track: shared.conns.register(crate::conns::NewConn {
                        kind: crate::conns::Kind::Udp,
                        visitor,
                        user: crate::access::raw_user(&shared, visitor.ip(), &agent),
                        host: format!(":{}", server.port()),
                        path: String::new(),
                        agent: agent.clone(),
                        tunnel: bound.public.clone(),
                    }),
                });
                flow.touch();
                flows.insert(id, flow.clone());
                inc(&stats.flows_opened);
                inc(&stats.flows_active);
                *per_ip.entry(visitor.ip()).or_default() += 1;
                let span = tracing::debug_span!("flow", flow = id, visitor.addr = %visitor);
                let open = StreamOpen {
                    tunnel: bound.id,
                    visitor,
                    server,
                    kind: StreamKind::Udp { flow: id },
                };
                tasks.spawn(
                    run_flow(
                        shared.clone(),
                        conn.clone(),
                        open,
                        flow.clone(),
                        gone_tx.clone(),
                        permit,
                    )
                    .instrument(span),
                );
                by_addr.insert(
                    visitor,
                    Local {
                        flow,
                        tokens: rate,
                        refilled: Instant::now(),
                    },
                );
            }
        }
        let Some(local) = by_addr.get_mut(&visitor) else {
            continue;
        };
        // Token bucket: `rate` packets per second, a one-second burst.
        let now = Instant::now();
        local.tokens =
            (local.tokens + now.duration_since(local.refilled).as_secs_f64() * rate).min(rate);
        local.refilled = now;
        if local.tokens < 1.0 {
            inc(&stats.drop_rate);
            tracing::debug!(visitor.addr = %visitor, "udp flow over its packet rate; dropped");
            continue;
        }
        local.tokens -= 1.0;
        let flow = &local.flow;
        flow.touch();
        let max = datagram::max_payload(conn.max_datagram_size().unwrap_or(0), flow.id);
        stats.max_payload.store(max, Ordering::Relaxed);
        if payload.len() > max {
            inc(&stats.drop_too_large);
            tracing::debug!(
                visitor.addr = %visitor,
                "udp payload of {} bytes dropped: the agent path carries at most {max}",
                payload.len()
            );
            continue;
        }
        let Ok(d) = datagram::encode(flow.id, payload) else {
            continue;
        };
        {
            let mut pending = flow.pending.lock().unwrap_or_else(|e| e.into_inner());
            if !flow.ready.load(Ordering::Acquire) {
                if pending.len() >= PENDING_PACKETS {
                    inc(&stats.drop_queue_full);
                } else {
                    pending.push(d);
                }
                continue;
            }
        }
        send_up(&conn, flow, d, n);
    }
    for a in by_addr.keys().copied().collect::<Vec<_>>() {
        forget(&mut by_addr, &mut per_ip, a);
    }
}

/// Send one encoded datagram of `flow` to the agent, counting the outcome.
fn send_up(conn: &Connection, flow: &Flow, d: Bytes, payload_len: usize) {
    match conn.send_datagram(d) {
        Ok(()) => {
            inc(&flow.stats.packets_up);
            flow.stats
                .bytes_up
                .fetch_add(payload_len as u64, Ordering::Relaxed);
            flow.track.add_up(payload_len as u64);
        }
        Err(TransportError::DatagramTooLarge) => {
            inc(&flow.stats.drop_too_large);
            tracing::debug!("udp payload of {payload_len} bytes dropped: larger than the path");
        }
        Err(e) => {
            inc(&flow.stats.drop_agent_offline);
            tracing::debug!("udp packet dropped, agent connection unusable: {e}");
        }
    }
}

/// Announce the flow on its own stream, release its queued packets once the agent is ready,
/// and hold the stream until the flow ends (either side).
async fn run_flow(
    shared: Arc<Shared>,
    conn: Connection,
    open: StreamOpen,
    flow: Arc<Flow>,
    gone: mpsc::UnboundedSender<(SocketAddr, u64)>,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let opened = tokio::select! {
        _ = flow.end.cancelled() => Err("flow ended before the agent answered".to_string()),
        _ = flow.track.cancelled() => Err("flow closed through the admin API".to_string()),
        o = crate::open::open_stream(&shared, &conn, open) => o.map_err(|e| e.to_string()),
    };
    match opened {
        Ok(mut stream) => {
            let queued = {
                let mut pending = flow.pending.lock().unwrap_or_else(|e| e.into_inner());
                flow.ready.store(true, Ordering::Release);
                std::mem::take(&mut *pending)
            };
            for d in queued {
                let len = d.len().saturating_sub(datagram::header_len(flow.id));
                send_up(&conn, &flow, d, len);
            }
            tracing::debug!("udp flow open");
            // The stream carries nothing more: it ends when the flow does.
            let mut sink = [0u8; 64];
            tokio::select! {
                _ = flow.end.cancelled() => {
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream.send).await;
                }
                _ = flow.track.cancelled() => {
                    tracing::info!("udp flow closed through the admin API");
                    let _ = tokio::io::AsyncWriteExt::shutdown(&mut stream.send).await;
                }
                _ = tokio::io::AsyncReadExt::read(&mut stream.recv, &mut sink) => {
                    tracing::debug!("agent ended the udp flow");
                }
            }
        }
        Err(e) => {
            let dropped = flow.pending.lock().unwrap_or_else(|e| e.into_inner()).len();
            flow.stats
                .drop_flow_refused
                .fetch_add(dropped as u64, Ordering::Relaxed);
            tracing::info!("udp flow refused: {e}");
        }
    }
    let _ = gone.send((flow.visitor, flow.id));
}

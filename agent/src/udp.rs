//! UDP flows on the agent: one connected socket per flow toward the tunnel's pinned target.
//!
//! The relay announces each flow on its own stream (`StreamKind::Udp { flow }`); the agent
//! opens a UDP socket connected to the target configured for that tunnel (never an address
//! the relay names), answers `Connected`, and from then on the flow's datagrams go to that
//! socket and its replies come back as datagrams of the same flow. The flow ends with its
//! stream (the relay closes idle flows) or with the session.

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
};

use bytes::{Bytes, BytesMut};
use proto::{
    datagram, proxy,
    transport::{write_frame, BiStream, Connection, TransportError},
    StreamError, StreamErrorKind, StreamOpen, StreamReply,
};
use tokio::{io::AsyncWriteExt, net::UdpSocket};

use crate::Tunnel;

/// Largest UDP payload (IPv4: 65535 - 20 - 8).
const MAX_UDP: usize = 65_507;

/// One open flow: where its datagrams go.
struct Flow {
    socket: Arc<UdpSocket>,
    /// PROXY v2 header to put before every datagram (`proxy_protocol = "v2"`).
    proxy: Option<Bytes>,
}

/// The session's flows by id.
#[derive(Default)]
pub(crate) struct Flows {
    map: Mutex<HashMap<u64, Arc<Flow>>>,
    /// Datagrams dropped (unknown flow, too large, target socket full), for the debug log.
    dropped: AtomicU64,
}

impl Flows {
    fn get(&self, id: u64) -> Option<Arc<Flow>> {
        self.map
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&id)
            .cloned()
    }

    fn drop_one(&self, why: &str) {
        let n = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        tracing::debug!(dropped_total = n, "udp datagram dropped: {why}");
    }

    /// One datagram from the relay: send its payload to the flow's target.
    pub(crate) fn deliver(&self, d: Bytes) {
        let (id, payload) = match datagram::decode(d) {
            Ok(x) => x,
            Err(e) => return self.drop_one(&format!("malformed: {e}")),
        };
        let Some(flow) = self.get(id) else {
            return self.drop_one("unknown flow");
        };
        let sent = match &flow.proxy {
            None => flow.socket.try_send(&payload),
            Some(h) => {
                let mut b = BytesMut::with_capacity(h.len() + payload.len());
                b.extend_from_slice(h);
                b.extend_from_slice(&payload);
                flow.socket.try_send(&b)
            }
        };
        if let Err(e) = sent {
            self.drop_one(&format!("sending to the target: {e}"));
        }
    }
}

/// Serve one relay-announced flow of `tunnel` until its stream or the connection ends.
pub(crate) async fn serve_flow(
    tunnel: &Tunnel,
    open: &StreamOpen,
    flow: u64,
    mut stream: BiStream,
    conn: Connection,
    flows: Arc<Flows>,
) {
    let bind: SocketAddr = if tunnel.target.is_ipv6() {
        (std::net::Ipv6Addr::UNSPECIFIED, 0).into()
    } else {
        ([0, 0, 0, 0], 0).into()
    };
    let socket = match UdpSocket::bind(bind).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut stream, format!("cannot open a UDP socket: {e}")).await,
    };
    // Connected: the kernel drops datagrams from anyone but the target.
    if let Err(e) = socket.connect(tunnel.target).await {
        return refuse(&mut stream, format!("udp target {}: {e}", tunnel.target)).await;
    }
    let socket = Arc::new(socket);
    let proxy = tunnel.proxy_v2.then(|| {
        Bytes::from(proxy::v2_header(
            open.visitor,
            open.server,
            proxy::Transport::Datagram,
        ))
    });
    flows.map.lock().unwrap_or_else(|e| e.into_inner()).insert(
        flow,
        Arc::new(Flow {
            socket: socket.clone(),
            proxy,
        }),
    );
    if write_frame(&mut stream.send, &StreamReply::Connected)
        .await
        .is_ok()
    {
        tracing::debug!("udp flow open");
        let mut buf = vec![0u8; MAX_UDP];
        let mut sink = [0u8; 64];
        loop {
            tokio::select! {
                // The relay ends the stream (idle flow) or the connection goes.
                _ = tokio::io::AsyncReadExt::read(&mut stream.recv, &mut sink) => break,
                r = socket.recv(&mut buf) => match r {
                    Ok(n) => {
                        let payload = buf.get(..n).unwrap_or_default();
                        let max = datagram::max_payload(conn.max_datagram_size().unwrap_or(0), flow);
                        if n > max {
                            flows.drop_one(&format!("reply of {n} bytes, the relay path carries at most {max}"));
                            continue;
                        }
                        let Ok(d) = datagram::encode(flow, payload) else { break };
                        match conn.send_datagram(d) {
                            Ok(()) => {}
                            Err(TransportError::DatagramTooLarge) => flows.drop_one("reply larger than the path"),
                            Err(_) => break,
                        }
                    }
                    // An ICMP "port unreachable" from the target: it is down for now.
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        flows.drop_one("target port unreachable");
                    }
                    Err(e) => {
                        tracing::debug!("udp target socket failed: {e}");
                        break;
                    }
                },
            }
        }
    }
    flows
        .map
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .remove(&flow);
    let _ = stream.send.shutdown().await;
    tracing::debug!("udp flow closed");
}

async fn refuse(stream: &mut BiStream, detail: String) {
    tracing::warn!("{detail}");
    let _ = write_frame(
        &mut stream.send,
        &StreamReply::Failed(StreamError {
            kind: StreamErrorKind::Unreachable,
            detail,
        }),
    )
    .await;
    let _ = stream.send.shutdown().await;
}

//! Public TCP ports: each visitor connection becomes one stream to the agent.

use std::sync::Arc;

use proto::{
    transport::{copy_bidirectional_idle, splice, Connection, Direction},
    StreamKind, StreamOpen,
};
use tokio::{net::TcpStream, sync::Semaphore};
use tokio_util::{sync::CancellationToken, task::TaskTracker};
use tracing::Instrument;

use crate::{
    access::meter::Throttled,
    conns::{ConnGuard, Kind, NewConn, Tracked},
    session::Bound,
    Shared,
};

/// Accept visitors on one tunnel's port until `cancel` fires.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    bound: Bound,
    conn: Connection,
    streams: Arc<Semaphore>,
    agent: String,
    cancel: CancellationToken,
    tasks: TaskTracker,
) {
    let limit = Arc::new(Semaphore::new(shared.config.limits.connections_per_tunnel));
    let port = bound.listener.local_addr().map_or(0, |a| a.port());
    while let Some((sock, peer)) =
        crate::next_connection(&bound.listener, &cancel, "tcp tunnel").await
    {
        // Login unlocks raw ports: closed at once to addresses without a web session on one
        // of this agent's hostnames (or per `[[port_access]]`).
        if !crate::access::raw_allowed(&shared, peer.ip(), port, &agent) {
            tracing::debug!(visitor.addr = %peer, "raw port closed to this address");
            drop(sock);
            continue;
        }
        let Some(slot) = shared.access.connection(peer.ip()) else {
            tracing::debug!(visitor.addr = %peer, "too many connections from this address; refusing");
            continue;
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            tracing::warn!(visitor.addr = %peer, "connection limit reached for this tunnel; refusing");
            continue;
        };
        let Ok(stream) = streams.clone().try_acquire_owned() else {
            tracing::warn!(visitor.addr = %peer, "stream limit reached for this agent; refusing");
            continue;
        };
        shared
            .metrics
            .visitor_connections
            .get_or_create(&crate::metrics::ListenerLabel { listener: "tcp" })
            .inc();
        let span = tracing::debug_span!("visitor", visitor.addr = %peer);
        let conn = conn.clone();
        let shared = shared.clone();
        let tunnel = bound.id;
        let tls = bound.tls_host.is_some();
        let entry = shared.conns.register(NewConn {
            kind: Kind::Tcp,
            visitor: peer,
            user: crate::access::raw_user(&shared, peer.ip(), &agent),
            host: format!(":{port}"),
            path: String::new(),
            agent: agent.clone(),
            tunnel: bound.public.clone(),
        });
        let handle = entry.handle();
        let task = tasks.spawn(
            async move {
                visitor(&shared, conn, tunnel, sock, tls, entry).await;
                drop((permit, stream, slot));
            }
            .instrument(span),
        );
        // Closing it through the admin API drops the task: the visitor's socket and the
        // agent stream close (the spliced copy has no per-chunk hook to check).
        handle.abort_on_close(task.abort_handle());
    }
}

async fn visitor(
    shared: &Shared,
    conn: Connection,
    tunnel: u32,
    sock: TcpStream,
    tls: bool,
    entry: ConnGuard,
) {
    let (Ok(visitor), Ok(server)) = (sock.peer_addr(), sock.local_addr()) else {
        return;
    };
    // TLS first, so a visitor that never finishes its handshake costs no agent stream.
    let sock = if tls {
        let acceptor = tokio_rustls::TlsAcceptor::from(shared.tunnel_tls.clone());
        let limit = shared.config.limits.visitor_handshake_timeout;
        match crate::http::accept_tls(&acceptor, sock, limit).await {
            Some(s) => Visitor::Tls(Box::new(s)),
            None => return,
        }
    } else {
        Visitor::Plain(sock)
    };
    let open = StreamOpen {
        tunnel,
        visitor,
        server,
        kind: StreamKind::Tcp,
    };
    let stream = match crate::open::open_stream(shared, &conn, open).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!("visitor connection closed: {e}");
            return;
        }
    };
    // Optional bandwidth cap of this port (bytes toward visitors, all connections together).
    let bucket = crate::access::meter::tcp_bucket(shared, server.port());
    let idle = Some(shared.config.limits.idle_timeout);
    let mut stream = stream;
    // Every path counts bytes into the connections list as they move.
    let copied = match (sock, bucket) {
        (Visitor::Plain(sock), None) => splice(sock, stream, idle, |dir, n| match dir {
            Direction::TcpToStream => entry.add_up(n),
            Direction::StreamToTcp => entry.add_down(n),
        })
        .await
        .map(|s| (s.tcp_to_stream, s.stream_to_tcp)),
        (Visitor::Plain(sock), Some(b)) => {
            let mut sock = Tracked::new(Throttled::new(sock, b), entry);
            copy_bidirectional_idle(&mut sock, &mut stream, idle).await
        }
        (Visitor::Tls(mut tls), None) => {
            let mut tls = Tracked::new(&mut *tls, entry);
            copy_bidirectional_idle(&mut tls, &mut stream, idle).await
        }
        (Visitor::Tls(mut tls), Some(b)) => {
            let mut tls = Tracked::new(Throttled::new(&mut *tls, b), entry);
            copy_bidirectional_idle(&mut tls, &mut stream, idle).await
        }
    };
    match copied {
        Ok((up, down)) => {
            for (direction, n) in [("up", up), ("down", down)] {
                shared
                    .metrics
                    .tcp_bytes
                    .get_or_create(&crate::metrics::DirectionLabel { direction })
                    .inc_by(n);
            }
            tracing::debug!(up, down, "visitor connection done")
        }
        Err(e) => tracing::debug!("visitor connection aborted: {e}"),
    }
}

/// A visitor's connection, as accepted or with TLS terminated.
enum Visitor {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

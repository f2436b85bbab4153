//! The TCP fallback transport (TLS + yamux on the relay's https port): the key tunnel tests
//! over it, close reasons, and `transport = "auto"` (happy eyeballs, re-probing QUIC).

use std::{
    net::SocketAddr,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant, SystemTime},
};

use agent::{config::TransportChoice, Status};
use proto::{transport::TransportKind, RejectReason};
use rand::{RngCore, SeedableRng};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UdpSocket,
};

use crate::common::*;

fn transport_of(s: &Status) -> Option<TransportKind> {
    match s {
        Status::Connected { transport, .. } => Some(*transport),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_tunnel_echo_and_a_large_exact_transfer() {
    let echo = echo_server().await;
    let mut t = tcp_tunnel_over(echo, TransportChoice::Tcp).await;
    let s = t.agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Tcp));
    assert_eq!(
        roundtrip(t.port, b"hello over yamux").await,
        b"hello over yamux"
    );
    // 32 MiB each way through the echo, byte for byte.
    let mut data = vec![0u8; 32 << 20];
    rand::rngs::StdRng::seed_from_u64(5).fill_bytes(&mut data);
    let sock = visit(t.port).await;
    let (mut r, mut w) = sock.into_split();
    let expect = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::with_capacity(expect.len());
    tokio::time::timeout(Duration::from_secs(120), r.read_to_end(&mut back))
        .await
        .expect("transfer in time")
        .unwrap();
    writer.await.unwrap();
    assert!(back == expect, "bytes differ ({} back)", back.len());
    // The relay lists the session as tcp.
    let (status, body) = admin_get(&t.relay, "/api/agents", Some(&t.relay.admin_token)).await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("\"transport\":\"tcp\""), "{body}");
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_connections_over_tcp() {
    let echo = echo_server().await;
    let t = tcp_tunnel_over(echo, TransportChoice::Tcp).await;
    let port = t.port;
    let mut tasks = Vec::new();
    for i in 0..40u64 {
        tasks.push(tokio::spawn(async move {
            let mut data = vec![0u8; 256 * 1024];
            rand::rngs::StdRng::seed_from_u64(i).fill_bytes(&mut data);
            let s = visit(port).await;
            let (mut r, mut w) = s.into_split();
            let expect = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::new();
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert!(back == expect, "connection {i}: bytes differ");
        }));
    }
    for task in tasks {
        tokio::time::timeout(Duration::from_secs(60), task)
            .await
            .expect("in time")
            .unwrap();
    }
    t.stop().await;
}

#[tokio::test]
async fn udp_echo_over_the_datagram_stream() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("home", &[], &[port]))
        .udp("echo", echo, port)
        .transport(TransportChoice::Tcp)
        .start()
        .await;
    let s = agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Tcp));
    for i in 0..3 {
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for round in 0..5 {
            let msg = format!("visitor {i} round {round}");
            let back = udp_roundtrip(&sock, port, msg.as_bytes()).await;
            assert_eq!(String::from_utf8_lossy(&back), msg);
        }
    }
    // A full 1472-byte payload fits the fixed datagram size of the TCP transport.
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let big = vec![0x5au8; 1472];
    assert_eq!(udp_roundtrip(&sock, port, &big).await, big);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn revoked_token_reaches_the_agent_over_tcp() {
    let relay = TestRelay::start().await;
    let echo = echo_server().await;
    let port = free_port();
    let (token, jti) = relay.token_at(
        "home",
        &[port],
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    let mut agent = AgentBuilder::new(&relay, &token)
        .tcp("echo", echo, port)
        .transport(TransportChoice::Tcp)
        .start()
        .await;
    let s = agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Tcp));
    assert_eq!(roundtrip(port, b"x").await, b"x");
    let t0 = Instant::now();
    relay::token::Revocations::revoke(&relay.data_dir(), &jti, SystemTime::now()).unwrap();
    // First the close reason of the live session, then the refusal on reconnect.
    let s = agent
        .wait_for("session closed", |s| !matches!(s, Status::Connected { .. }))
        .await;
    if let Status::Connecting {
        last_error: Some(e),
        ..
    } = &s
    {
        assert!(e.contains("token revoked"), "{e}");
    }
    let s = agent
        .wait_for("rejected after revoke", |s| {
            matches!(s, Status::Rejected { .. })
        })
        .await;
    assert!(
        matches!(
            s,
            Status::Rejected {
                reason: RejectReason::Revoked,
                ..
            }
        ),
        "{s:?}"
    );
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn relay_shutdown_reason_reaches_the_agent_over_tcp() {
    let relay = TestRelay::start().await;
    let (builder, _) = echo_agent(&relay, TransportChoice::Tcp).await;
    let mut agent = builder.start().await;
    agent.connected().await;
    relay.stop().await;
    let e = agent.connect_error().await;
    assert!(e.contains("relay shutting down"), "{e}");
    agent.stop().await;
}

#[tokio::test]
async fn replaced_session_reason_reaches_the_agent_over_tcp() {
    let relay = TestRelay::start().await;
    let echo = echo_server().await;
    let port = free_port();
    let token = relay.token("home", &[port]);
    let mut first = AgentBuilder::new(&relay, &token)
        .tcp("echo", echo, port)
        .transport(TransportChoice::Tcp)
        .start()
        .await;
    first.connected().await;
    let mut second = AgentBuilder::new(&relay, &token)
        .tcp("echo", echo, port)
        .transport(TransportChoice::Tcp)
        .start()
        .await;
    second.connected().await;
    let e = first.connect_error().await;
    assert!(e.contains("replaced by a newer session"), "{e}");
    first.stop().await;
    assert_eq!(roundtrip(port, b"second").await, b"second");
    second.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn killed_relay_is_noticed_over_tcp() {
    let relay = TestRelay::start().await;
    let (builder, _) = echo_agent(&relay, TransportChoice::Tcp).await;
    let mut agent = builder.start().await;
    agent.connected().await;
    let t0 = Instant::now();
    relay.kill().await;
    agent.connect_error().await;
    assert!(t0.elapsed() < Duration::from_secs(9), "{:?}", t0.elapsed());
    agent.stop().await;
}

/// A builder for agent `home` publishing a new echo server on a free port over `transport`.
async fn echo_agent(relay: &TestRelay, transport: TransportChoice) -> (AgentBuilder, u16) {
    let echo = echo_server().await;
    let port = free_port();
    let builder = AgentBuilder::new(relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .transport(transport);
    (builder, port)
}

/// A UDP socket that swallows everything: QUIC "blocked".
async fn udp_black_hole() -> (UdpSocket, SocketAddr) {
    let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = sock.local_addr().unwrap();
    (sock, addr)
}

#[tokio::test]
async fn auto_falls_back_to_tcp_when_udp_is_blocked() {
    let logs = capture_logs();
    let relay = TestRelay::start().await;
    let (builder, port) = echo_agent(&relay, TransportChoice::Auto).await;
    let (_hole, hole) = udp_black_hole().await;
    let t0 = Instant::now();
    let mut agent = builder
        .configure(|c| c.relay = hole.to_string())
        .start()
        .await;
    let s = agent.connected().await;
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(transport_of(&s), Some(TransportKind::Tcp));
    assert_eq!(roundtrip(port, b"via tcp").await, b"via tcp");
    let text = logs.text();
    assert!(
        text.contains("UDP may be blocked") && text.contains("using the TCP fallback"),
        "{text}"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn auto_picks_quic_when_it_works() {
    let relay = TestRelay::start().await;
    let (builder, _) = echo_agent(&relay, TransportChoice::Auto).await;
    let mut agent = builder.start().await;
    let s = agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Quic));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn quic_only_does_not_fall_back() {
    let relay = TestRelay::start().await;
    let (builder, _) = echo_agent(&relay, TransportChoice::Quic).await;
    let (_hole, hole) = udp_black_hole().await;
    let mut agent = builder
        .configure(|c| {
            c.relay = hole.to_string();
            c.connect_timeout = Duration::from_millis(500);
        })
        .start()
        .await;
    let e = agent.connect_error().await;
    assert!(e.contains("no QUIC answer"), "{e}");
    agent.stop().await;
    relay.stop().await;
}

/// A UDP forwarder in front of the relay's QUIC port; each direction passes only while its
/// flag is on (both start off).
#[derive(Clone, Default)]
struct UdpSwitch {
    /// Agent → relay.
    up: Arc<AtomicBool>,
    /// Relay → agent.
    down: Arc<AtomicBool>,
}

impl UdpSwitch {
    fn set(&self, up: bool, down: bool) {
        self.up.store(up, Ordering::Relaxed);
        self.down.store(down, Ordering::Relaxed);
    }
}

async fn udp_switch(relay: SocketAddr) -> (SocketAddr, UdpSwitch) {
    let switch = UdpSwitch::default();
    let front = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = front.local_addr().unwrap();
    let (flag, down) = (switch.up.clone(), switch.down.clone());
    tokio::spawn(async move {
        let mut peers: std::collections::HashMap<SocketAddr, Arc<UdpSocket>> =
            std::collections::HashMap::new();
        let mut buf = vec![0u8; 65536];
        loop {
            let Ok((n, from)) = front.recv_from(&mut buf).await else {
                continue;
            };
            if !flag.load(Ordering::Relaxed) {
                continue;
            }
            let up = match peers.get(&from) {
                Some(u) => u.clone(),
                None => {
                    let u = Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap());
                    u.connect(relay).await.unwrap();
                    let (u2, front2, flag2) = (u.clone(), front.clone(), down.clone());
                    tokio::spawn(async move {
                        let mut buf = vec![0u8; 65536];
                        while let Ok(n) = u2.recv(&mut buf).await {
                            if flag2.load(Ordering::Relaxed) {
                                let _ = front2.send_to(&buf[..n], from).await;
                            }
                        }
                    });
                    peers.insert(from, u.clone());
                    u
                }
            };
            let _ = up.send(&buf[..n]).await;
        }
    });
    (addr, switch)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_moves_back_to_quic_when_it_works_again() {
    let relay = TestRelay::start().await;
    let (builder, port) = echo_agent(&relay, TransportChoice::Auto).await;
    let (front, switch) = udp_switch(relay.addr).await;
    let mut agent = builder
        .configure(|c| {
            c.relay = front.to_string();
            c.quic_probe_interval = Duration::from_millis(500);
            c.connect_timeout = Duration::from_secs(1);
        })
        .start()
        .await;
    let s = agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Tcp));
    let tcp_session = session_of(&s);
    // Probes keep failing while UDP is blocked: the agent stays on TCP and keeps working.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(session_of(&agent.status.borrow()), tcp_session);
    assert_eq!(roundtrip(port, b"still tcp").await, b"still tcp");
    // A connection open on TCP when the agent moves: it goes on over TCP.
    let mut held = visit(port).await;
    held.write_all(b"a").await.unwrap();
    let mut one = [0u8; 1];
    held.read_exact(&mut one).await.unwrap();
    switch.set(true, true);
    let s = agent
        .wait_for("moved to QUIC", |s| {
            transport_of(s) == Some(TransportKind::Quic)
        })
        .await;
    assert_ne!(session_of(&s), tcp_session);
    assert_eq!(roundtrip(port, b"now quic").await, b"now quic");
    held.write_all(b"b").await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), held.read_exact(&mut one))
        .await
        .expect("the old connection still answers")
        .expect("not cut by the move");
    assert_eq!(&one, b"b");
    held.shutdown().await.unwrap();
    let mut rest = Vec::new();
    held.read_to_end(&mut rest).await.unwrap();
    assert!(rest.is_empty());
    // It stays there.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(
        transport_of(&agent.status.borrow()),
        Some(TransportKind::Quic)
    );
    agent.stop().await;
    relay.stop().await;
}

/// UDP lost toward the relay only: the relay's keep-alives still reach the agent and keep
/// QUIC's idle timer open (it took ~20 s until the relay gave up); the agent's pings on the
/// control stream go unanswered and it moves to the TCP fallback within seconds.
// Single-threaded: the log capture sees this thread only.
#[tokio::test]
async fn one_way_udp_loss_under_a_connected_agent_moves_it_to_tcp() {
    let logs = capture_logs();
    let relay = TestRelay::start().await;
    let (builder, port) = echo_agent(&relay, TransportChoice::Auto).await;
    let (front, switch) = udp_switch(relay.addr).await;
    switch.set(true, true);
    let mut agent = builder
        .configure(|c| c.relay = front.to_string())
        .start()
        .await;
    let s = agent.connected().await;
    assert_eq!(transport_of(&s), Some(TransportKind::Quic));
    assert_eq!(roundtrip(port, b"quic").await, b"quic");
    // Pings are answered while the path works: no reconnect on a healthy link.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(session_of(&agent.status.borrow()), session_of(&s));
    switch.set(false, true);
    let t0 = Instant::now();
    agent
        .wait_for("on the TCP fallback", |s| {
            transport_of(s) == Some(TransportKind::Tcp)
        })
        .await;
    let took = t0.elapsed();
    eprintln!("one-way UDP block -> serving over TCP after {took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert_eq!(roundtrip(port, b"tcp now").await, b"tcp now");
    let text = logs.text();
    assert!(text.contains("the relay stopped answering pings"), "{text}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_browser_alpn_on_the_https_port_is_not_an_agent() {
    // h2 and http/1.1 still reach the HTTP edge with periscope/1 on the same listener.
    let relay = TestRelay::start().await;
    let tls = tls_connect(&relay, "relay.localhost", b"http/1.1").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let tls = tls_connect(&relay, "relay.localhost", b"h2").await;
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"h2"[..]));
    relay.stop().await;
}

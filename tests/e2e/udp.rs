//! UDP tunnels: flows as QUIC datagrams.

use std::{net::SocketAddr, time::Duration};

use agent::Status;
use proto::RejectReason;
use tokio::net::UdpSocket;

use crate::common::*;

async fn visitor() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// A relay, a UDP echo target and an agent with one udp tunnel `echo` on a free port.
async fn udp_tunnel_with(
    f: impl FnOnce(&mut relay::RelayConfig),
    target: Option<SocketAddr>,
) -> (TestRelay, TestAgent, u16) {
    let relay = TestRelay::start_configured(f).await;
    let target = match target {
        Some(t) => t,
        None => udp_echo_server().await,
    };
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("home", &[], &[port]))
        .udp("echo", target, port)
        .start()
        .await;
    agent.connected().await;
    (relay, agent, port)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_from_fifty_visitors_each_reply_to_its_sender() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("home", &[], &[port]))
        .udp("echo", echo, port)
        .start()
        .await;
    let Status::Connected { public, .. } = agent.connected().await else {
        unreachable!()
    };
    assert_eq!(
        public,
        vec![("echo".to_string(), format!("udp://relay.localhost:{port}"))]
    );
    let mut tasks = Vec::new();
    for i in 0..50u32 {
        tasks.push(tokio::spawn(async move {
            let sock = visitor().await;
            for round in 0..5u32 {
                let msg = format!("visitor {i} round {round}");
                let back = udp_roundtrip(&sock, port, msg.as_bytes()).await;
                assert_eq!(
                    String::from_utf8_lossy(&back),
                    msg,
                    "visitor {i} got another's reply"
                );
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let st = relay.udp_stats("home", "echo");
    assert_eq!(st.flows_opened, 50, "{st:?}");
    assert_eq!(st.flows_active, 50, "{st:?}");
    // A counter moves just after its packet went out: the reply can arrive first.
    assert_eventually!(
        {
            let st = relay.udp_stats("home", "echo");
            st.packets_up >= 250 && st.packets_down >= 250
        },
        5,
        "packets not counted: {:?}",
        relay.udp_stats("home", "echo")
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn payload_at_the_maximum_passes_one_over_is_dropped_and_counted() {
    let (relay, agent, port) = udp_tunnel_with(|_| {}, None).await;
    let sock = visitor().await;
    // Let path MTU discovery settle (quinn probes up to 1452 bytes on loopback): the
    // maximum the relay reports stops moving.
    let mut last = 0;
    let mut stable = 0;
    for _ in 0..100 {
        udp_roundtrip(&sock, port, b"ping").await;
        let max = relay.udp_stats("home", "echo").max_payload;
        if max == last && max > 0 {
            stable += 1;
            if stable >= 10 {
                break;
            }
        } else {
            stable = 0;
            last = max;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        last >= 1200,
        "max payload {last} after MTU discovery on loopback"
    );
    eprintln!("udp max payload after path MTU discovery on loopback: {last} bytes");
    let at_max = vec![7u8; last];
    assert_eq!(udp_roundtrip(&sock, port, &at_max).await, at_max);
    let before = relay.udp_stats("home", "echo").drop_too_large;
    let over = vec![8u8; last + 1];
    assert_eq!(
        udp_ask(&sock, port, &over, Duration::from_millis(500)).await,
        None,
        "a payload over the maximum must be dropped, never truncated"
    );
    assert_eventually!(
        relay.udp_stats("home", "echo").drop_too_large == before + 1,
        5,
        "drop not counted: {:?}",
        relay.udp_stats("home", "echo")
    );
    // The flow still works.
    assert_eq!(udp_roundtrip(&sock, port, b"after").await, b"after");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn idle_flow_expires_and_a_new_one_opens() {
    let (relay, agent, port) = udp_tunnel_with(
        |c| c.limits.udp_flow_idle = Duration::from_millis(600),
        None,
    )
    .await;
    let sock = visitor().await;
    // Traffic more often than the idle time keeps the flow (a TURN allocation refreshing).
    for _ in 0..6 {
        assert_eq!(udp_roundtrip(&sock, port, b"keep").await, b"keep");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let st = relay.udp_stats("home", "echo");
    assert_eq!((st.flows_opened, st.flows_active), (1, 1), "{st:?}");
    assert_eventually!(
        relay.udp_stats("home", "echo").flows_active == 0,
        5,
        "idle flow not closed: {:?}",
        relay.udp_stats("home", "echo")
    );
    assert_eq!(udp_roundtrip(&sock, port, b"again").await, b"again");
    let st = relay.udp_stats("home", "echo");
    assert_eq!((st.flows_opened, st.flows_active), (2, 1), "{st:?}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn udp_port_not_in_token_rejected() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let allowed = free_port();
    let wanted = free_port();
    // A tcp grant of the same port number is no udp grant.
    let token = relay.token_udp("home", &[wanted], &[allowed]);
    let mut agent = AgentBuilder::new(&relay, &token)
        .udp("echo", echo, wanted)
        .start()
        .await;
    let s = agent
        .wait_for("rejection", |s| matches!(s, Status::Rejected { .. }))
        .await;
    let Status::Rejected { reason, detail } = s else {
        unreachable!()
    };
    assert_eq!(reason, RejectReason::PortNotAllowed);
    assert!(
        detail.contains("udp") && detail.contains(&wanted.to_string()),
        "{detail}"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn port_released_when_agent_leaves_and_new_flows_work_after_restart() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let port = free_port();
    let token = relay.token_udp("home", &[], &[port]);
    let mut agent = AgentBuilder::new(&relay, &token)
        .udp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    let old = visitor().await;
    assert_eq!(udp_roundtrip(&old, port, b"one").await, b"one");
    agent.stop().await;
    assert_eventually!(
        std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok(),
        5,
        "udp port {port} still bound after the agent left"
    );
    assert_eq!(relay.udp_stats("home", "echo").flows_active, 0);

    let mut agent = AgentBuilder::new(&relay, &token)
        .udp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    let new = visitor().await;
    assert_eq!(udp_roundtrip(&new, port, b"two").await, b"two");
    assert_eq!(udp_roundtrip(&old, port, b"three").await, b"three");
    let st = relay.udp_stats("home", "echo");
    assert_eq!((st.flows_opened, st.flows_active), (3, 2), "{st:?}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn agent_replaced_while_flows_exist() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let port = free_port();
    let token = relay.token_udp("home", &[], &[port]);
    let mut first = AgentBuilder::new(&relay, &token)
        .udp("echo", echo, port)
        .start()
        .await;
    first.connected().await;
    let socks: Vec<UdpSocket> = visitors(5).await;
    for (i, s) in socks.iter().enumerate() {
        let m = format!("before {i}");
        assert_eq!(udp_roundtrip(s, port, m.as_bytes()).await, m.as_bytes());
    }
    // A second agent with the same name takes over (agent restarted elsewhere).
    let mut second = AgentBuilder::new(&relay, &token)
        .udp("echo", echo, port)
        .start()
        .await;
    second.connected().await;
    for (i, s) in socks.iter().enumerate() {
        let m = format!("after {i}");
        assert_eq!(udp_roundtrip(s, port, m.as_bytes()).await, m.as_bytes());
    }
    let fresh = visitor().await;
    assert_eq!(udp_roundtrip(&fresh, port, b"fresh").await, b"fresh");
    first.stop().await;
    second.stop().await;
    relay.stop().await;
}

async fn visitors(n: usize) -> Vec<UdpSocket> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(visitor().await);
    }
    v
}

#[tokio::test]
async fn packets_per_second_limit_drops_and_counts() {
    let (relay, agent, port) =
        udp_tunnel_with(|c| c.limits.udp_packets_per_second = 20, None).await;
    let sock = visitor().await;
    assert_eq!(udp_roundtrip(&sock, port, b"warm").await, b"warm");
    for i in 0..200u32 {
        sock.send_to(&i.to_be_bytes(), ("127.0.0.1", port))
            .await
            .unwrap();
    }
    assert_eventually!(
        relay.udp_stats("home", "echo").drop_rate >= 150,
        5,
        "rate drops not counted: {:?}",
        relay.udp_stats("home", "echo")
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn flows_per_visitor_and_per_tunnel_limits() {
    let (relay, agent, port) = udp_tunnel_with(
        |c| {
            c.limits.udp_flows_per_visitor = 2;
            c.limits.udp_flows_per_tunnel = 3;
        },
        None,
    )
    .await;
    let a = visitor().await;
    let b = visitor().await;
    let c = visitor().await;
    assert_eq!(udp_roundtrip(&a, port, b"a").await, b"a");
    assert_eq!(udp_roundtrip(&b, port, b"b").await, b"b");
    // A third address:port from the same IP is over the per-visitor limit.
    assert_eq!(
        udp_ask(&c, port, b"c", Duration::from_millis(300)).await,
        None
    );
    let st = relay.udp_stats("home", "echo");
    assert!(st.drop_flow_limit >= 1, "{st:?}");
    assert_eq!(st.flows_active, 2, "{st:?}");
    // The first two still work.
    assert_eq!(udp_roundtrip(&a, port, b"a2").await, b"a2");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn proxy_v2_prefixes_each_datagram_with_the_visitor_address() {
    // A target that answers with what it received, so the test sees the header.
    let target = udp_echo_server().await;
    let relay = TestRelay::start().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("home", &[], &[port]))
        .udp("echo", target, port)
        .proxy_v2()
        .start()
        .await;
    agent.connected().await;
    let sock = visitor().await;
    let me = sock.local_addr().unwrap();
    for msg in [&b"first"[..], b"second"] {
        let back = udp_roundtrip(&sock, port, msg).await;
        assert_eq!(&back[..12], b"\r\n\r\n\0\r\nQUIT\n", "signature");
        assert_eq!(back[12], 0x21, "v2 PROXY");
        assert_eq!(back[13], 0x12, "IPv4 DGRAM");
        assert_eq!(u16::from_be_bytes([back[14], back[15]]), 12);
        assert_eq!(&back[16..20], &[127, 0, 0, 1]);
        assert_eq!(u16::from_be_bytes([back[24], back[25]]), me.port());
        assert_eq!(u16::from_be_bytes([back[26], back[27]]), port);
        assert_eq!(&back[28..], msg);
    }
    agent.stop().await;
    relay.stop().await;
}

/// A relay that is not ours (compromised, or a bug): it tries to use a tcp tunnel for a UDP
/// flow, names a tunnel the agent does not have, and sends datagrams for flows it never
/// announced. The agent refuses all of it and serves only a real udp flow, to its own target.
#[tokio::test]
async fn malicious_relay_gets_udp_only_to_configured_udp_targets() {
    use proto::{
        transport::{quic::QuicConnection, read_frame, write_frame, Transport},
        Control, StreamErrorKind, StreamKind, StreamOpen, StreamReply, Welcome,
    };
    let ck = rcgen::generate_simple_self_signed(vec!["relay.localhost".into()]).unwrap();
    let der = ck.cert.der().clone();
    let digest = ring::digest::digest(&ring::digest::SHA256, &der);
    let fp = format!(
        "sha256:{}",
        digest
            .as_ref()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<String>()
    );
    let key =
        tokio_rustls::rustls::pki_types::PrivateKeyDer::try_from(ck.signing_key.serialize_der())
            .unwrap();
    let server = proto::transport::quic::server_config(
        vec![der],
        key,
        &proto::transport::quic::QuicSettings::relay(),
    )
    .unwrap();
    let endpoint = quinn::Endpoint::server(server, "127.0.0.1:0".parse().unwrap()).unwrap();
    let evil = endpoint.local_addr().unwrap();

    // The tcp tunnel's target address also has a UDP socket: it must never get a datagram.
    let lan = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let lan_addr = lan.local_addr().unwrap();
    let echo = udp_echo_server().await;
    let relay = TestRelay::start().await; // only for the builder's defaults
    let mut agent = AgentBuilder::new(&relay, "token")
        .tcp("ssh", lan_addr, 2222)
        .udp("echo", echo, 3478)
        .configure(|c| {
            c.relay = evil.to_string();
            c.fingerprint = Some(fp);
        })
        .start()
        .await;

    let conn = tokio::time::timeout(Duration::from_secs(10), async {
        endpoint.accept().await.unwrap().await.unwrap()
    })
    .await
    .unwrap();
    let conn = QuicConnection(conn);
    let mut ctrl = conn.accept_bi().await.unwrap();
    let Some(Control::Hello(hello)) = read_frame::<_, Control>(&mut ctrl.recv).await.unwrap()
    else {
        panic!("no Hello")
    };
    let id = |name: &str| hello.tunnels.iter().find(|t| t.name == name).unwrap().id;
    write_frame(
        &mut ctrl.send,
        &Control::Welcome(Welcome {
            session: 1,
            agent: "home".into(),
            tunnels: vec![],
        }),
    )
    .await
    .unwrap();
    agent.connected().await;

    let visitor: SocketAddr = "192.0.2.7:5000".parse().unwrap();
    let open = |tunnel, flow| StreamOpen {
        tunnel,
        visitor,
        server: "127.0.0.1:3478".parse().unwrap(),
        kind: StreamKind::Udp { flow },
    };
    for (tunnel, flow) in [(id("ssh"), 1), (4242, 2)] {
        let mut s = conn.open_bi().await.unwrap();
        write_frame(&mut s.send, &open(tunnel, flow)).await.unwrap();
        match read_frame::<_, StreamReply>(&mut s.recv).await.unwrap() {
            Some(StreamReply::Failed(e)) => assert_eq!(e.kind, StreamErrorKind::UnknownTunnel),
            other => panic!("tunnel {tunnel} as udp flow: {other:?}"),
        }
    }
    // Datagrams for flows that were refused or never announced go nowhere.
    for flow in [1u64, 2, 3, 99] {
        conn.send_datagram(proto::datagram::encode(flow, b"probe").unwrap())
            .unwrap();
    }
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), lan.recv_from(&mut buf))
            .await
            .is_err(),
        "a datagram reached the tcp tunnel's target"
    );
    // A real flow on the udp tunnel works, to the agent's own target.
    let mut s = conn.open_bi().await.unwrap();
    write_frame(&mut s.send, &open(id("echo"), 3))
        .await
        .unwrap();
    assert_eq!(
        read_frame::<_, StreamReply>(&mut s.recv).await.unwrap(),
        Some(StreamReply::Connected)
    );
    let mut back = None;
    for _ in 0..20 {
        conn.send_datagram(proto::datagram::encode(3, b"hello").unwrap())
            .unwrap();
        if let Ok(Ok(d)) =
            tokio::time::timeout(Duration::from_millis(200), conn.recv_datagram()).await
        {
            back = Some(proto::datagram::decode(d).unwrap());
            break;
        }
    }
    let (flow, payload) = back.expect("no reply on the udp flow");
    assert_eq!((flow, &payload[..]), (3, &b"hello"[..]));
    agent.stop().await;
    relay.stop().await;
}

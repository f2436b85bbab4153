//! Raw TCP tunnels.

use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

#[tokio::test]
async fn echo_through_tunnel() {
    let relay = TestRelay::start().await;
    let echo = echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .start()
        .await;
    let status = agent.connected().await;
    let agent::Status::Connected { public, .. } = status else {
        unreachable!()
    };
    assert_eq!(
        public,
        vec![("echo".to_string(), format!("tcp://relay.localhost:{port}"))]
    );
    assert_eq!(
        roundtrip(port, b"hello through the tunnel").await,
        b"hello through the tunnel"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_parallel_connections_each_1mib() {
    let echo = echo_server().await;
    let t = tcp_tunnel(echo).await;
    let port = t.port;
    let mut tasks = Vec::new();
    for i in 0..100u64 {
        tasks.push(tokio::spawn(async move {
            let mut data = vec![0u8; 1 << 20];
            rand::rngs::StdRng::seed_from_u64(i).fill_bytes(&mut data);
            let s = visit(port).await;
            let (mut r, mut w) = s.into_split();
            let expect = data.clone();
            let writer = tokio::spawn(async move {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut back = Vec::with_capacity(1 << 20);
            r.read_to_end(&mut back).await.unwrap();
            writer.await.unwrap();
            assert!(
                back == expect,
                "connection {i}: bytes differ ({} back)",
                back.len()
            );
        }));
    }
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("connections finish in time")
            .unwrap();
    }
    t.stop().await;
}

/// A target that reads until the visitor's FIN, then answers with the SHA-256 of all bytes:
/// checks byte-exactness and half-close at once.
async fn hash_server() -> std::net::SocketAddr {
    tcp_server(|mut s| async move {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            match s.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => ctx.update(&buf[..n]),
                Err(_) => return,
            }
        }
        let _ = s.write_all(ctx.finish().as_ref()).await;
        let _ = s.shutdown().await;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfer_256mib_with_checksum() {
    let target = hash_server().await;
    let t = tcp_tunnel(target).await;
    let port = t.port;
    let mut s = visit(port).await;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    let mut rng = rand::rngs::StdRng::seed_from_u64(256);
    let mut chunk = vec![0u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..256 {
        rng.fill_bytes(&mut chunk);
        ctx.update(&chunk);
        s.write_all(&chunk).await.unwrap();
    }
    s.shutdown().await.unwrap();
    let mut digest = Vec::new();
    tokio::time::timeout(Duration::from_secs(120), s.read_to_end(&mut digest))
        .await
        .expect("digest in time")
        .unwrap();
    assert_eq!(digest, ctx.finish().as_ref(), "checksum of 256 MiB differs");
    eprintln!("256 MiB in {:?} (debug build)", started.elapsed());
    t.stop().await;
}

#[tokio::test]
async fn half_close_keeps_the_other_direction() {
    // Answers only after the visitor's FIN, after a pause.
    let target = tcp_server(|mut s| async move {
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
        s.write_all(format!("got {} bytes after your FIN", got.len()).as_bytes())
            .await
            .unwrap();
        s.shutdown().await.unwrap();
    })
    .await;
    let t = tcp_tunnel(target).await;
    assert_eq!(
        roundtrip(t.port, &[7u8; 1000]).await,
        b"got 1000 bytes after your FIN"
    );
    t.stop().await;
}

#[tokio::test]
async fn target_down_closes_visitor_at_once() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let t = tcp_tunnel(dead).await;
    let port = t.port;
    let started = Instant::now();
    let mut s = visit(port).await;
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("visitor connection closed, not hung");
    assert!(matches!(r, Ok(0) | Err(_)), "no data from a dead target");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "took {:?}",
        started.elapsed()
    );
    // The tunnel still serves other visitors after a failure.
    let mut s2 = visit(port).await;
    let r2 = tokio::time::timeout(Duration::from_secs(5), s2.read(&mut buf)).await;
    assert!(matches!(r2, Ok(Ok(0)) | Ok(Err(_))));
    t.stop().await;
}

#[tokio::test]
async fn proxy_v2_header_carries_visitor_address() {
    let relay = TestRelay::start().await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let target = tcp_server(move |mut s| {
        let tx = tx.clone();
        async move {
            let mut hdr = [0u8; 28];
            s.read_exact(&mut hdr).await.unwrap();
            let _ = tx.send(hdr);
            let _ = s.write_all(b"ok").await;
        }
    })
    .await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("pp", target, port)
        .proxy_v2()
        .start()
        .await;
    agent.connected().await;
    let mut s = visit(port).await;
    let me = s.local_addr().unwrap();
    let mut ok = [0u8; 2];
    s.read_exact(&mut ok).await.unwrap();
    let hdr = rx.recv().await.unwrap();
    assert_eq!(&hdr[..12], b"\r\n\r\n\0\r\nQUIT\n");
    assert_eq!(hdr[12], 0x21);
    assert_eq!(hdr[13], 0x11, "TCP over IPv4");
    assert_eq!(&hdr[16..20], &[127, 0, 0, 1]);
    assert_eq!(
        u16::from_be_bytes([hdr[24], hdr[25]]),
        me.port(),
        "visitor's source port"
    );
    assert_eq!(
        u16::from_be_bytes([hdr[26], hdr[27]]),
        port,
        "relay's public port"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn idle_timeout_closes_silent_connections_only() {
    let relay =
        TestRelay::start_configured(|c| c.limits.idle_timeout = Duration::from_secs(1)).await;
    let echo = echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    let mut s = visit(port).await;
    // A message every 400 ms for 2.4 s: longer than the idle limit, never idle that long.
    for i in 0..6u8 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        s.write_all(&[i; 10]).await.unwrap();
        let mut back = [0u8; 10];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
            .await
            .expect("echo in time")
            .expect("connection still open");
        assert_eq!(back, [i; 10]);
    }
    // Silence: the relay closes it after about a second.
    let silent = Instant::now();
    let mut buf = [0u8; 1];
    let r = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("the relay closes a silent connection");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(silent.elapsed() >= Duration::from_millis(900));
    agent.stop().await;
    relay.stop().await;
}

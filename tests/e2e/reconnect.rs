//! Relay restarts and agent replacement.

use std::time::{Duration, Instant};

use agent::Status;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A relay whose data directory survives restarts, and an agent with an echo tunnel on `port`.
async fn restartable() -> (tempfile::TempDir, TestRelay, TestAgent, u16) {
    let dir = tempfile::tempdir().unwrap();
    let relay = TestRelay::start_in(dir.path(), "127.0.0.1:0".parse().unwrap()).await;
    let echo = echo_server().await;
    let port = free_port();
    let agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .start()
        .await;
    (dir, relay, agent, port)
}

#[tokio::test]
async fn graceful_relay_restart_agent_comes_back() {
    let (dir, relay, mut agent, port) = restartable().await;
    let addr = relay.addr;
    let first = session_of(&agent.connected().await);
    assert_eq!(roundtrip(port, b"before").await, b"before");
    relay.stop().await;
    let relay = TestRelay::start_in(dir.path(), addr).await;
    agent.reconnected(first).await;
    assert_eq!(roundtrip(port, b"after").await, b"after");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn killed_relay_restart_agent_back_fast() {
    let (dir, relay, mut agent, port) = restartable().await;
    let addr = relay.addr;
    agent.connected().await;
    relay.kill().await;
    let t0 = Instant::now();
    let relay = TestRelay::start_in(dir.path(), addr).await;
    // Wait for the drop to be noticed, then for the new session.
    agent
        .wait_for("notices the restart", |s| {
            !matches!(s, Status::Connected { .. })
        })
        .await;
    agent.connected().await;
    let took = t0.elapsed();
    assert_eq!(roundtrip(port, b"after kill").await, b"after kill");
    // Keep-alive is 2 s; the persisted reset key turns the next one into an immediate reset,
    // far below the 8 s idle timeout.
    assert!(
        took < Duration::from_secs(5),
        "agent took {took:?} to come back"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn same_agent_name_replaces_previous_session() {
    let relay = TestRelay::start().await;
    let port = free_port();
    let token = relay.token("home", &[port]);
    let banner = |msg: &'static [u8]| {
        tcp_server(move |mut s| async move {
            let _ = s.write_all(msg).await;
        })
    };
    let old_target = banner(b"old").await;
    let new_target = banner(b"new").await;
    let mut old = AgentBuilder::new(&relay, &token)
        .tcp("b", old_target, port)
        .start()
        .await;
    old.connected().await;
    let mut s = visit(port).await;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"old");

    let mut new = AgentBuilder::new(&relay, &token)
        .tcp("b", new_target, port)
        .start()
        .await;
    new.connected().await;
    let e = old.connect_error().await;
    assert!(e.contains("replaced"), "{e}");
    let mut s = visit(port).await;
    let mut got = Vec::new();
    s.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"new", "the port now belongs to the new session");
    old.stop().await;
    new.stop().await;
    relay.stop().await;
}

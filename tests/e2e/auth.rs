//! Agent authentication: every rejection says why.

use std::time::{Duration, SystemTime};

use agent::Status;
use proto::RejectReason;

use crate::common::*;

async fn rejected(relay: &TestRelay, token: &str, port: u16) -> (RejectReason, String) {
    let echo = echo_server().await;
    let mut agent = AgentBuilder::new(relay, token)
        .tcp("echo", echo, port)
        .start()
        .await;
    match agent
        .wait_for("rejected", |s| matches!(s, Status::Rejected { .. }))
        .await
    {
        Status::Rejected { reason, detail } => (reason, detail),
        _ => unreachable!(),
    }
}

#[tokio::test]
async fn garbage_token_rejected() {
    let relay = TestRelay::start().await;
    let (reason, _) = rejected(&relay, "not-a-jwt", free_port()).await;
    assert_eq!(reason, RejectReason::BadToken);
}

#[tokio::test]
async fn token_from_another_relay_rejected() {
    let relay = TestRelay::start().await;
    let other = TestRelay::start().await;
    let port = free_port();
    let (reason, detail) = rejected(&relay, &other.token("home", &[port]), port).await;
    assert_eq!(reason, RejectReason::BadToken, "{detail}");
}

#[tokio::test]
async fn expired_token_rejected() {
    let relay = TestRelay::start().await;
    let port = free_port();
    let (token, _) = relay.token_at(
        "home",
        &[port],
        SystemTime::now() - Duration::from_secs(7200),
        Duration::from_secs(3600),
    );
    let (reason, detail) = rejected(&relay, &token, port).await;
    assert_eq!(reason, RejectReason::Expired, "{detail}");
}

#[tokio::test]
async fn revoked_token_rejected() {
    let relay = TestRelay::start().await;
    let port = free_port();
    let (token, jti) = relay.token_at(
        "home",
        &[port],
        SystemTime::now(),
        Duration::from_secs(3600),
    );
    relay::token::Revocations::revoke(&relay.data_dir(), &jti, SystemTime::now()).unwrap();
    let (reason, _) = rejected(&relay, &token, port).await;
    assert_eq!(reason, RejectReason::Revoked);
}

#[tokio::test]
async fn revoking_a_connected_agent_disconnects_it() {
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
        .start()
        .await;
    agent.connected().await;
    assert_eq!(roundtrip(port, b"x").await, b"x");
    let t0 = std::time::Instant::now();
    relay::token::Revocations::revoke(&relay.data_dir(), &jti, SystemTime::now()).unwrap();
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
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "took {:?}",
        t0.elapsed()
    );
    // The port is released: nobody answers there any more.
    assert_eventually!(
        tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err(),
        5,
        "port {port} still open after revocation"
    );
}

#[tokio::test]
async fn port_not_in_token_rejected() {
    let relay = TestRelay::start().await;
    let allowed = free_port();
    let wanted = free_port();
    let (reason, detail) = rejected(&relay, &relay.token("home", &[allowed]), wanted).await;
    assert_eq!(reason, RejectReason::PortNotAllowed);
    assert!(detail.contains(&wanted.to_string()), "{detail}");
}

#[tokio::test]
async fn wrong_fingerprint_is_a_clear_error() {
    let relay = TestRelay::start().await;
    let echo = echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .configure(|c| c.fingerprint = Some(format!("sha256:{}", "00".repeat(32))))
        .start()
        .await;
    let e = agent.connect_error().await;
    assert!(e.contains("pins sha256:0000"), "{e}");
    // The token was never sent, so no tunnel opened.
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .is_err());
}

#[tokio::test]
async fn relay_verified_by_ca_file_and_name() {
    let relay = TestRelay::start().await;
    let echo = echo_server().await;
    let port = free_port();
    let ca = relay.data_dir().join("self-signed.crt");
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .configure(|c| {
            c.fingerprint = None;
            c.ca_file = Some(ca.clone());
            c.server_name = Some("relay.localhost".into());
        })
        .start()
        .await;
    agent.connected().await;
    assert_eq!(roundtrip(port, b"ca").await, b"ca");
    agent.stop().await;

    // Same CA, but a name the certificate does not carry: refused, with a reason.
    let mut agent = AgentBuilder::new(&relay, &relay.token("home", &[port]))
        .tcp("echo", echo, port)
        .configure(|c| {
            c.fingerprint = None;
            c.ca_file = Some(ca);
            c.server_name = Some("other.example".into());
        })
        .start()
        .await;
    let e = agent.connect_error().await;
    assert!(e.contains("not valid for name \"other.example\""), "{e}");
}

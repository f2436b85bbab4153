//! Hot reload: relay.toml's access rules and the agent's tunnel list change while the relay
//! and agent run, and connections already open stay up.

use std::{path::Path, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use relay::{config::AccessRule, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use crate::common::*;

const CAM: &str = "cam.relay.localhost";
const HOME: &str = "home.relay.localhost";

/// The relay's config as it started (the kit records the bound QUIC port, not the `:0` it
/// asked for).
fn started_config(relay: &TestRelay) -> RelayConfig {
    let mut c = relay.config.clone();
    c.listen.quic = "127.0.0.1:0".parse().unwrap();
    c
}

fn write_config(path: &Path, c: &RelayConfig) {
    let text = toml::to_string(c).unwrap();
    // Replace by rename, as editors and config managers do.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn anonymous_get(relay: &TestRelay, path: &str) -> http::Response<hyper::body::Incoming> {
    let req = Request::builder()
        .uri(path)
        .header("host", CAM)
        .body(Full::new(Bytes::new()))
        .unwrap();
    https_request(relay, CAM, false, req).await
}

/// One echo round trip on a connection that stays open.
async fn echo(s: &mut tokio::net::TcpStream, msg: &[u8]) {
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut back))
        .await
        .expect("echo answers")
        .expect("held connection still open");
    assert_eq!(back, msg);
}

/// Read at least `n` more bytes of a streaming body.
async fn more_of(body: &mut hyper::body::Incoming, n: usize) {
    let mut got = 0;
    while got < n {
        let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("the stream keeps passing bytes")
            .expect("the stream is not cut")
            .unwrap();
        got += f.into_data().map_or(0, |d| d.len());
    }
}

#[tokio::test]
async fn relay_reloads_access_rules_without_cutting_streams() {
    let logs = capture_logs();
    let relay = TestRelay::start_configured(|c| with_users(c, &[("alice", "pw", &[])])).await;
    let nvr = Nvr::start().await;
    let echo_target = echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .http("cam", nvr.addr)
        .tcp("echo", echo_target, port)
        .start()
        .await;
    agent.connected().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let mut config = started_config(&relay);
    write_config(&path, &config);
    let stop = CancellationToken::new();
    tokio::spawn(periscope::cmd::relay::watch(
        path.clone(),
        |_| {},
        relay.reloader.clone(),
        stop.clone(),
    ));

    // A raw TCP connection held through every reload.
    let mut held = visit(port).await;
    echo(&mut held, b"before").await;
    let r = anonymous_get(&relay, "/headers").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "deny by default");

    // Add a rule: the hostname becomes public for new requests.
    config.access.push(AccessRule::public(CAM));
    write_config(&path, &config);
    assert_eventually!(
        anonymous_get(&relay, "/headers").await.status() == StatusCode::OK,
        5,
        "the added public rule applies without a restart: {}",
        logs.text()
    );
    assert!(
        logs.text().contains("access rules 0 → 1"),
        "the reload says what changed: {}",
        logs.text()
    );
    // An endless MJPEG stream opened while the hostname is public.
    let mut mjpeg = anonymous_get(&relay, "/mjpeg?fps=50&size=4096")
        .await
        .into_body();
    more_of(&mut mjpeg, 16 * 1024).await;

    // A broken file keeps the old rules and says where it is broken.
    let good = std::fs::read_to_string(&path).unwrap();
    let broken = format!("{good}\n[[access]]\nhost = \"x.relay.localhost\"\npublik = true\n");
    let broken_line = broken.lines().count();
    std::fs::write(&path, &broken).unwrap();
    let want = format!("relay.toml:{broken_line}:");
    assert_eventually!(
        logs.text().contains(&want) && logs.text().contains("publik"),
        5,
        "a broken relay.toml is logged with file:line and key: {}",
        logs.text()
    );
    assert_eq!(
        anonymous_get(&relay, "/headers").await.status(),
        StatusCode::OK,
        "the previous rules stay"
    );
    echo(&mut held, b"during").await;

    // Remove the rule again: a login is required for new requests; open streams go on.
    config.access.clear();
    write_config(&path, &config);
    assert_eventually!(
        anonymous_get(&relay, "/headers").await.status() == StatusCode::SEE_OTHER,
        5,
        "the removed rule no longer opens the hostname"
    );
    more_of(&mut mjpeg, 64 * 1024).await;
    echo(&mut held, b"after").await;

    // Settings that need a restart are reported, not applied.
    let mut moved = started_config(&relay);
    moved.domain = "elsewhere.localhost".into();
    moved.access.push(AccessRule::public(CAM));
    let r = relay.reloader.apply(moved).unwrap();
    assert_eq!(r.applied, ["access"]);
    assert_eq!(r.need_restart, ["domain"]);
    assert!(r
        .to_string()
        .contains("not applied until a restart: domain"));
    assert_eq!(
        anonymous_get(&relay, "/headers").await.status(),
        StatusCode::OK
    );

    assert!(
        !logs.text().contains("not applied until a restart"),
        "no setting of the unchanged file is reported as needing a restart: {}",
        logs.text()
    );
    stop.cancel();
    drop(held);
    agent.stop().await;
    relay.stop().await;
}

fn write_agent_config(path: &Path, c: &agent::AgentConfig) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, toml::to_string(c).unwrap()).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

fn public_names(s: &agent::Status) -> Vec<String> {
    match s {
        agent::Status::Connected { public, .. } => {
            let mut v: Vec<String> = public.iter().map(|(n, _)| n.clone()).collect();
            v.sort();
            v
        }
        _ => Vec::new(),
    }
}

fn tcp_tunnel_config(
    name: &str,
    target: std::net::SocketAddr,
    port: u16,
) -> agent::config::TunnelConfig {
    agent::config::TunnelConfig {
        remote_port: Some(port),
        ..agent::config::TunnelConfig::new(name, agent::config::Kind::Tcp, &target.to_string())
    }
}

#[tokio::test]
async fn agent_reloads_its_tunnels_without_cutting_connections() {
    let logs = capture_logs();
    let relay = TestRelay::start_configured(|c| c.access.push(AccessRule::public(HOME))).await;
    let echo_target = echo_server().await;
    let udp_target = udp_echo_server().await;
    let nvr = Nvr::start().await;
    let (keep, gone, added, not_allowed) = (free_port(), free_port(), free_port(), free_port());
    let voice = free_port();
    let token = relay.token_udp("home", &[keep, gone, added], &[voice]);
    let mut agent = AgentBuilder::new(&relay, &token)
        .tcp("keep", echo_target, keep)
        .tcp("gone", echo_target, gone)
        .start()
        .await;
    agent.connected().await;

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agent.toml");
    let mut config = agent.config.clone();
    write_agent_config(&path, &config);
    let stop = CancellationToken::new();
    let file = path.clone();
    tokio::spawn(periscope::cmd::agent::watch(
        path.clone(),
        move || periscope::config_file::load_agent(&file),
        agent.reloader.clone(),
        stop.clone(),
    ));

    let mut held = visit(keep).await;
    echo(&mut held, b"before").await;
    assert_eq!(roundtrip(gone, b"gone").await, b"gone");

    // Add tunnels (tcp, udp, http), remove one; the unchanged one keeps its connection.
    config.tunnels.retain(|t| t.name != "gone");
    config
        .tunnels
        .push(tcp_tunnel_config("added", echo_target, added));
    config.tunnels.push(agent::config::TunnelConfig {
        remote_port: Some(voice),
        ..agent::config::TunnelConfig::new(
            "voice",
            agent::config::Kind::Udp,
            &udp_target.to_string(),
        )
    });
    config.tunnels.push(agent::config::TunnelConfig::new(
        "home",
        agent::config::Kind::Http,
        &nvr.addr.to_string(),
    ));
    write_agent_config(&path, &config);
    agent
        .wait_for("the update applied", |s| {
            public_names(s) == ["added", "home", "keep", "voice"]
        })
        .await;
    assert_eq!(roundtrip(added, b"new port").await, b"new port");
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_roundtrip(&udp, voice, b"datagram").await, b"datagram");
    let req = Request::builder()
        .uri("/headers")
        .header("host", HOME)
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        https_request(&relay, HOME, false, req).await.status(),
        StatusCode::OK,
        "the added http tunnel is routed"
    );
    assert_eventually!(
        tokio::net::TcpStream::connect(("127.0.0.1", gone))
            .await
            .is_err(),
        5,
        "the removed tunnel's port closes"
    );
    echo(&mut held, b"during").await;

    // A tunnel renamed on the same port: the old listener gives the port to the new one.
    for t in config.tunnels.iter_mut().filter(|t| t.name == "added") {
        t.name = "moved".into();
    }
    write_agent_config(&path, &config);
    agent
        .wait_for("the rename applied", |s| {
            public_names(s) == ["home", "keep", "moved", "voice"]
        })
        .await;
    assert_eq!(roundtrip(added, b"moved").await, b"moved");
    echo(&mut held, b"renamed").await;

    // A port the token does not allow: the relay refuses, the old set stays.
    config
        .tunnels
        .push(tcp_tunnel_config("bad", echo_target, not_allowed));
    write_agent_config(&path, &config);
    assert_eventually!(
        logs.text().contains("relay refused the tunnel update")
            && logs.text().contains(&format!("port {not_allowed}")),
        5,
        "the agent logs why the update was refused: {}",
        logs.text()
    );
    assert_eq!(
        public_names(&agent.status.borrow()),
        ["home", "keep", "moved", "voice"]
    );
    assert!(tokio::net::TcpStream::connect(("127.0.0.1", not_allowed))
        .await
        .is_err());
    assert_eq!(roundtrip(added, b"still").await, b"still");
    assert_eq!(udp_roundtrip(&udp, voice, b"still").await, b"still");
    echo(&mut held, b"after").await;
    let (_, agents) = admin_get(&relay, "/api/agents", Some(&relay.admin_token)).await;
    assert!(
        agents.contains(&format!(":{added} -> moved")) && !agents.contains("-> gone"),
        "the admin API lists the tunnels as they are now: {agents}"
    );

    // Refused again, this time also removing `moved`: the relay still listens on its port (it
    // kept the old set), but the agent connects only to targets of its current config.
    config.tunnels.retain(|t| t.name != "moved");
    write_agent_config(&path, &config);
    assert_eventually!(
        logs.text()
            .matches("relay refused the tunnel update")
            .count()
            >= 2,
        5,
        "the second update is refused too: {}",
        logs.text()
    );
    let mut s = visit(added).await;
    s.write_all(b"to a removed tunnel").await.unwrap();
    let mut back = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut back))
        .await
        .expect("the relay closes the visitor the agent refused");
    assert!(
        read.is_err() || back.is_empty(),
        "a tunnel removed from the agent's config reaches nothing: {back:?}"
    );
    echo(&mut held, b"last").await;

    assert!(
        !logs.text().contains("not applied until a restart"),
        "no setting of the unchanged file is reported as needing a restart: {}",
        logs.text()
    );
    stop.cancel();
    drop(held);
    agent.stop().await;
    relay.stop().await;
}

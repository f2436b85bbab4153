//! The admin listener: bearer token on every API route, agents and tunnels as JSON,
//! Prometheus metrics that move with traffic, a status page shell.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;

use crate::common::*;

#[tokio::test]
async fn admin_api_needs_the_token_and_shows_agents_and_metrics() {
    let nvr = Nvr::start().await;
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"))
    })
    .await;
    assert!(relay.admin.ip().is_loopback());
    let token = relay.admin_token.clone();
    for path in ["/api/agents", "/api/tunnels", "/metrics", "/healthz"] {
        assert_eq!(
            admin_get(&relay, path, None).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
        assert_eq!(
            admin_get(&relay, path, Some("not-the-token")).await.0,
            StatusCode::UNAUTHORIZED,
            "{path}"
        );
    }
    // The status page shell holds no data and loads without the token.
    let (code, page) = admin_get(&relay, "/", None).await;
    assert_eq!(code, StatusCode::OK);
    assert!(page.contains("Periscope relay"));

    let (code, body) = admin_get(&relay, "/api/agents", Some(&token)).await;
    assert_eq!((code, body.as_str()), (StatusCode::OK, "[]"));
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", nvr.addr)
        .start()
        .await;
    agent.connected().await;
    let (_, body) = admin_get(&relay, "/api/agents", Some(&token)).await;
    let agents: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(agents[0]["name"], "cam");
    assert_eq!(agents[0]["transport"], "quic");
    assert_eq!(
        agents[0]["tunnels"][0],
        format!("https://cam.relay.localhost:{}", relay.https.port())
    );
    assert!(agents[0]["rtt_ms"].as_f64().unwrap() >= 0.0);
    let (_, body) = admin_get(&relay, "/api/tunnels", Some(&token)).await;
    assert!(body.contains("cam.relay.localhost"), "{body}");

    // Metrics move with traffic; hostnames that are not routed are not labels.
    for host in ["cam.relay.localhost", "nothing.relay.localhost"] {
        let req = Request::builder()
            .uri("/api/request")
            .header("host", host)
            .body(Full::new(Bytes::new()))
            .unwrap();
        https_request(&relay, host, false, req).await;
    }
    let (code, text) = admin_get(&relay, "/metrics", Some(&token)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(text.contains("periscope_agents_connected 1"), "{text}");
    let line = |needle: &[&str]| {
        text.lines()
            .find(|l| needle.iter().all(|n| l.contains(n)))
            .unwrap_or_else(|| panic!("no line with {needle:?} in\n{text}"))
            .to_string()
    };
    assert!(line(&[
        "periscope_http_responses_total{",
        "host=\"cam.relay.localhost\"",
        "code=\"200\""
    ])
    .ends_with(" 1"));
    assert!(line(&[
        "periscope_http_responses_total{",
        "host=\"other\"",
        "code=\"404\""
    ])
    .ends_with(" 1"));
    assert!(!text.contains("nothing.relay.localhost"));
    assert!(line(&["periscope_agent_handshakes_total{", "result=\"ok\""]).ends_with(" 1"));
    assert!(text.contains("periscope_http_response_seconds_bucket"));
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics text ends with # EOF"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn agent_status_reports_the_running_agent() {
    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status.json");
    let exe = env!("CARGO_BIN_EXE_periscope");
    let port = free_port();
    let echo = echo_server().await;
    let mut agent = std::process::Command::new(exe)
        .args(["agent", "--relay", &relay.addr.to_string()])
        .args(["--fingerprint", &relay.fingerprint])
        .args(["--token", &relay.token("home", &[port])])
        .args(["--tcp", &format!("echo={echo}:{port}")])
        .arg("--status-file")
        .arg(&status)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let run_status = || {
        std::process::Command::new(exe)
            .args(["agent", "status", "--status-file"])
            .arg(&status)
            .output()
            .unwrap()
    };
    let t0 = std::time::Instant::now();
    let out = loop {
        let out = run_status();
        if out.status.success() || t0.elapsed() > std::time::Duration::from_secs(10) {
            break out;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    };
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{text}");
    assert!(text.contains("state:      connected"), "{text}");
    assert!(text.contains("transport:  quic"), "{text}");
    assert!(text.contains("rtt:        "), "{text}");
    assert!(
        text.contains(&format!("echo → tcp://relay.localhost:{port}")),
        "{text}"
    );
    // A stopped agent removes its status file: status says so and exits 1.
    let pid = rustix::process::Pid::from_raw(agent.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    agent.wait().unwrap();
    let out = run_status();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("is the agent running"),
        "{out:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn udp_tunnel_counters_are_in_the_metrics() {
    let relay = TestRelay::start().await;
    let echo = udp_echo_server().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("cam", &[], &[port]))
        .udp("webrtc", echo, port)
        .start()
        .await;
    agent.connected().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_roundtrip(&sock, port, b"ping").await, b"ping");
    let token = relay.admin_token.clone();
    // Counters move a moment after the packets do.
    let t0 = std::time::Instant::now();
    let text = loop {
        let (_, text) = admin_get(&relay, "/metrics", Some(&token)).await;
        if text.contains("periscope_udp_packets_down_total{tunnel=\"cam/webrtc\"} 1")
            || t0.elapsed() > std::time::Duration::from_secs(5)
        {
            break text;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    for line in [
        "periscope_udp_flows_opened_total{tunnel=\"cam/webrtc\"} 1",
        "periscope_udp_packets_up_total{tunnel=\"cam/webrtc\"} 1",
        "periscope_udp_packets_down_total{tunnel=\"cam/webrtc\"} 1",
        "periscope_udp_flows_active{tunnel=\"cam/webrtc\"} 1",
        "periscope_udp_dropped_total{tunnel=\"cam/webrtc\",reason=\"too_large\"} 0",
    ] {
        assert!(text.contains(line), "no `{line}` in\n{text}");
    }
    // The largest payload the agent's path carries now (QUIC: above 1100 bytes on loopback).
    let max: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("periscope_udp_max_payload_bytes{tunnel=\"cam/webrtc\"} "))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no udp_max_payload_bytes in\n{text}"));
    assert!((1100..65_536).contains(&max), "max payload {max}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn bans_and_users_through_the_api() {
    use relay::access::bans::{Ban, BanFile};
    let nvr = Nvr::start().await;
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"));
        with_users(c, &[("alice", "alice-password", &["cam.relay.localhost"])]);
    })
    .await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", nvr.addr)
        .start()
        .await;
    agent.connected().await;
    let token = relay.admin_token.clone();
    let now = relay::token::unix_now(std::time::SystemTime::now());
    BanFile {
        bans: vec![Ban {
            ip: "127.0.0.1".parse().unwrap(),
            since: now,
            until: 0,
            user: "root".into(),
        }],
    }
    .save(&relay.data_dir())
    .unwrap();
    let status = || async {
        let req = Request::builder()
            .uri("/api/request")
            .header("host", "cam.relay.localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        https_request(&relay, "cam.relay.localhost", false, req)
            .await
            .status()
    };
    assert_eventually!(
        status().await == StatusCode::FORBIDDEN,
        5,
        "the ban file is picked up"
    );
    assert_eq!(
        admin_call(&relay, "DELETE", "/api/bans/127.0.0.1", None, "")
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (code, body) = admin_get(&relay, "/api/bans", Some(&token)).await;
    assert_eq!(code, StatusCode::OK);
    let bans: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(bans[0]["ip"], "127.0.0.1");
    assert_eq!(bans[0]["until"], "forever");
    assert_eq!(bans[0]["last_user"], "root");
    let (code, _) = admin_call(&relay, "DELETE", "/api/bans/127.0.0.1", Some(&token), "").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let (code, _) = admin_call(&relay, "DELETE", "/api/bans/127.0.0.1", Some(&token), "").await;
    assert_eq!(code, StatusCode::NOT_FOUND);
    assert_eq!(admin_get(&relay, "/api/bans", Some(&token)).await.1, "[]");
    // Users: names and hostnames, never hashes.
    let (code, users) = admin_get(&relay, "/api/users", Some(&token)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(
        users,
        r#"[{"name":"alice","hosts":["cam.relay.localhost"],"disabled":false}]"#
    );
    assert_eventually!(
        status().await == StatusCode::OK,
        5,
        "the lifted ban takes effect"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn tokens_are_issued_and_revoked_through_the_api() {
    let relay = TestRelay::start().await;
    let token = relay.admin_token.clone();
    let port = free_port();
    let body = format!(r#"{{"agent":"home","tcp_ports":["{port}"],"ttl":"1h"}}"#);
    assert_eq!(
        admin_call(&relay, "POST", "/api/tokens", None, &body)
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );
    let (code, bad) = admin_call(
        &relay,
        "POST",
        "/api/tokens",
        Some(&token),
        r#"{"agent":"home","ttl":"soon"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::BAD_REQUEST, "{bad}");
    let (code, issued) = admin_call(&relay, "POST", "/api/tokens", Some(&token), &body).await;
    assert_eq!(code, StatusCode::OK, "{issued}");
    let issued: serde_json::Value = serde_json::from_str(&issued).unwrap();
    let (agent_token, id) = (
        issued["token"].as_str().unwrap().to_string(),
        issued["id"].as_str().unwrap().to_string(),
    );
    // The token works for an agent...
    let echo = echo_server().await;
    let mut agent = AgentBuilder::new(&relay, &agent_token)
        .tcp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    // ...until it is revoked through the API.
    let path = format!("/api/tokens/{id}/revoke");
    let (code, _) = admin_call(&relay, "POST", &path, Some(&token), "").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let s = agent
        .wait_for("rejected or disconnected", |s| {
            !matches!(s, agent::Status::Connected { .. })
        })
        .await;
    assert!(!matches!(s, agent::Status::Connected { .. }));
    let (code, _) = admin_call(&relay, "POST", &path, Some(&token), "").await;
    assert_eq!(code, StatusCode::CONFLICT, "already revoked");
    agent.stop().await;
    relay.stop().await;
}

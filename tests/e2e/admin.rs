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

/// Every route of the admin listener, with its path parameters filled in.
fn concrete(path: &str) -> String {
    path.replace("{id}", "1")
        .replace("{jti}", "00ff")
        .replace("{ip}", "192.0.2.1")
}

#[tokio::test]
async fn every_route_but_the_page_shell_needs_the_token() {
    let relay = TestRelay::start().await;
    let routes = relay::admin::routes();
    assert!(routes.len() >= 17, "{routes:?}");
    let mut open = 0;
    for (method, path, access) in routes {
        let p = concrete(path);
        let body = if method == "POST" { "{}" } else { "" };
        let none = admin_call(&relay, method, &p, None, body).await.0;
        let wrong = admin_call(&relay, method, &p, Some("not-the-token"), body)
            .await
            .0;
        // Right length, wrong bytes: the comparison is of digests, whatever the input.
        let near = format!("{}x", &relay.admin_token[..relay.admin_token.len() - 1]);
        let near = admin_call(&relay, method, &p, Some(&near), body).await.0;
        match access {
            relay::admin::Access::Token => {
                for code in [none, wrong, near] {
                    assert_eq!(code, StatusCode::UNAUTHORIZED, "{method} {path}");
                }
                // With the token the route exists (whatever it answers to a dummy request).
                let with = admin_call(&relay, method, &p, Some(&relay.admin_token), body)
                    .await
                    .0;
                assert!(
                    with != StatusCode::UNAUTHORIZED && with != StatusCode::METHOD_NOT_ALLOWED,
                    "{method} {path} with the token: {with}"
                );
            }
            relay::admin::Access::Open => {
                open += 1;
                assert_eq!(none, StatusCode::OK, "{method} {path}");
            }
        }
    }
    assert_eq!(open, 1, "only the status page shell is open");
    relay.stop().await;
}

#[test]
fn openapi_file_documents_exactly_the_routes() {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/openapi.json"))
        .expect("deploy/openapi.json");
    let doc: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = std::collections::BTreeSet::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().unwrap() {
            if method == "parameters" {
                continue;
            }
            assert!(
                op["responses"].is_object() && op["summary"].is_string(),
                "{method} {path} needs a summary and responses"
            );
            // Token routes say so, and document the 401.
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            if !open {
                assert!(
                    op["responses"]["401"].is_object(),
                    "{method} {path} documents 401"
                );
            }
            documented.insert((method.to_uppercase(), path.clone(), open));
        }
    }
    let routed: std::collections::BTreeSet<_> = relay::admin::routes()
        .into_iter()
        .map(|(m, p, a)| {
            (
                m.to_string(),
                p.to_string(),
                a == relay::admin::Access::Open,
            )
        })
        .collect();
    let missing: Vec<_> = routed.difference(&documented).collect();
    let extra: Vec<_> = documented.difference(&routed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "routed but not documented: {missing:?}\ndocumented but not routed: {extra:?}"
    );
    assert_eq!(
        doc["components"]["securitySchemes"]["bearer"]["scheme"],
        "bearer"
    );
}

/// Parse `/metrics` with a Prometheus text parser; every line must be one it understands.
async fn scrape(relay: &TestRelay) -> Vec<prometheus_parse::Sample> {
    let (code, text) = admin_get(relay, "/metrics", Some(&relay.admin_token)).await;
    assert_eq!(code, StatusCode::OK);
    for line in text.lines() {
        if line == "# EOF" {
            continue;
        }
        assert!(
            !matches!(
                prometheus_parse::LineInfo::parse(line),
                prometheus_parse::LineInfo::Ignored
            ),
            "not Prometheus text format: {line:?}"
        );
    }
    prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string())))
        .expect("parses")
        .samples
}

fn value(samples: &[prometheus_parse::Sample], name: &str, labels: &[(&str, &str)]) -> f64 {
    samples
        .iter()
        .find(|s| s.metric == name && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            _ => panic!("{name} is not a number"),
        })
        .unwrap_or_else(|| panic!("no {name}{labels:?}"))
}

#[tokio::test]
async fn metrics_parse_and_move_with_traffic() {
    let nvr = Nvr::start().await;
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"));
        with_users(c, &[("alice", "alice-password", &["door.relay.localhost"])]);
    })
    .await;
    let before = scrape(&relay).await;
    assert_eq!(
        value(&before, "periscope_tunnels", &[("type", "http")]),
        0.0
    );
    assert_eq!(value(&before, "periscope_login_failures_total", &[]), 0.0);
    let port = free_port();
    let echo = echo_server().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .http("cam", nvr.addr)
        .tcp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    let mut door = AgentBuilder::new(&relay, &relay.token("door", &[]))
        .http("door", nvr.addr)
        .start()
        .await;
    door.connected().await;
    // An MJPEG stream held open, a request, a failed login.
    let req = Request::builder()
        .uri("/mjpeg?fps=50&size=2000")
        .header("host", "cam.relay.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut stream = https_request(&relay, "cam.relay.localhost", false, req)
        .await
        .into_body();
    let mut got = 0;
    while got < 20_000 {
        let f = http_body_util::BodyExt::frame(&mut stream)
            .await
            .unwrap()
            .unwrap();
        got += f.data_ref().map_or(0, |d| d.len());
    }
    let _ = roundtrip(port, b"ping").await;
    let tcp = visit(port).await;
    let login = Request::builder()
        .method("POST")
        .uri("/.periscope/login")
        .header("host", "door.relay.localhost")
        .header(
            "origin",
            format!("https://door.relay.localhost:{}", relay.https.port()),
        )
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from_static(
            b"user=alice&password=wrong&next=/",
        )))
        .unwrap();
    let _ = https_request(&relay, "door.relay.localhost", false, login).await;
    let after = scrape(&relay).await;
    assert_eq!(value(&after, "periscope_tunnels", &[("type", "http")]), 2.0);
    assert_eq!(value(&after, "periscope_tunnels", &[("type", "tcp")]), 1.0);
    assert_eq!(value(&after, "periscope_tunnels", &[("type", "udp")]), 0.0);
    assert!(
        value(
            &after,
            "periscope_http_bytes_total",
            &[("direction", "down")]
        ) >= 20_000.0
    );
    assert_eq!(
        value(
            &after,
            "periscope_visitor_connections_active",
            &[("kind", "http")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "periscope_visitor_connections_active",
            &[("kind", "tcp")]
        ),
        1.0
    );
    assert_eq!(value(&after, "periscope_login_failures_total", &[]), 1.0);
    assert_eq!(value(&after, "periscope_bans_active", &[]), 0.0);
    // A ban through the API counts, now and in total.
    let (code, _) = admin_call(
        &relay,
        "POST",
        "/api/bans",
        Some(&relay.admin_token),
        r#"{"ip":"203.0.113.7","duration":"1h"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let banned = scrape(&relay).await;
    assert_eq!(value(&banned, "periscope_bans_active", &[]), 1.0);
    assert_eq!(value(&banned, "periscope_bans_total", &[]), 1.0);
    // No visitor address is ever a label.
    for s in &banned {
        for v in s.labels.values() {
            assert!(
                !v.contains("127.0.0.1") && !v.contains("203.0.113"),
                "{s:?}"
            );
        }
    }
    // Ended connections leave the gauge.
    drop(stream);
    drop(tcp);
    assert_eventually!(
        {
            let s = scrape(&relay).await;
            value(
                &s,
                "periscope_visitor_connections_active",
                &[("kind", "http")],
            ) == 0.0
                && value(
                    &s,
                    "periscope_visitor_connections_active",
                    &[("kind", "tcp")],
                ) == 0.0
        },
        5,
        "ended connections are no longer counted"
    );
    door.stop().await;
    agent.stop().await;
    relay.stop().await;
}

/// `/api/connections` as JSON.
async fn connections(relay: &TestRelay) -> Vec<serde_json::Value> {
    let (code, body) = admin_get(relay, "/api/connections", Some(&relay.admin_token)).await;
    assert_eq!(code, StatusCode::OK, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn of_kind<'a>(conns: &'a [serde_json::Value], kind: &str) -> Vec<&'a serde_json::Value> {
    conns.iter().filter(|c| c["kind"] == kind).collect()
}

#[tokio::test]
async fn connections_are_listed_and_closed_one_at_a_time() {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_tungstenite::tungstenite::Message;
    let nvr = Nvr::start().await;
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"))
    })
    .await;
    let (tcp_port, udp_port) = (free_port(), free_port());
    let echo = echo_server().await;
    let udp_echo = udp_echo_server().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token_udp("cam", &[tcp_port], &[udp_port]))
        .http("cam", nvr.addr)
        .tcp("echo", echo, tcp_port)
        .udp("webrtc", udp_echo, udp_port)
        .start()
        .await;
    agent.connected().await;
    assert!(connections(&relay).await.is_empty());
    let token = relay.admin_token.clone();

    // Two MJPEG viewers, a WebSocket, a tcp connection and a udp flow.
    let mjpeg = || async {
        let req = Request::builder()
            .uri("/mjpeg?fps=25&size=4000")
            .header("host", "cam.relay.localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let mut body = https_request(&relay, "cam.relay.localhost", false, req)
            .await
            .into_body();
        let f = http_body_util::BodyExt::frame(&mut body)
            .await
            .unwrap()
            .unwrap();
        assert!(f.is_data());
        body
    };
    let mut cam1 = mjpeg().await;
    let mut cam2 = mjpeg().await;
    let tls = tls_connect(&relay, "cam.relay.localhost", b"http/1.1").await;
    let (mut ws, _) = tokio_tungstenite::client_async("wss://cam.relay.localhost/ws/echo", tls)
        .await
        .expect("websocket through the relay");
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(ws.next().await.unwrap().unwrap(), Message::text("hello"));
    let mut tcp = visit(tcp_port).await;
    tcp.write_all(b"ping").await.unwrap();
    let mut buf = [0u8; 4];
    tcp.read_exact(&mut buf).await.unwrap();
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    assert_eq!(udp_roundtrip(&udp, udp_port, b"hi").await, b"hi");

    // Listed with who, where and how much; bit rates appear within a few seconds.
    let mut list: Vec<serde_json::Value>;
    assert_eventually!(
        {
            list = connections(&relay).await;
            let http = of_kind(&list, "http");
            http.len() == 2
                && http
                    .iter()
                    .all(|c| c["down_bps"].as_u64().unwrap() > 100_000)
        },
        8,
        "two MJPEG streams with their bit rates: {list:#?}"
    );
    let http = of_kind(&list, "http");
    for c in &http {
        assert_eq!(c["path"], "/mjpeg", "the query string is not shown: {c}");
        assert_eq!(c["host"], "cam.relay.localhost");
        assert_eq!(c["agent"], "cam");
        assert!(c["visitor"].as_str().unwrap().starts_with("127.0.0.1:"));
        assert!(c["bytes_down"].as_u64().unwrap() > 4000);
        assert!(c["started"].as_str().unwrap().ends_with('Z'));
    }
    let ws_entry = of_kind(&list, "websocket");
    assert_eq!(ws_entry.len(), 1, "{list:#?}");
    assert_eq!(ws_entry[0]["path"], "/ws/echo");
    assert!(ws_entry[0]["bytes_up"].as_u64().unwrap() >= 5);
    let tcp_entry = of_kind(&list, "tcp");
    assert_eq!(tcp_entry.len(), 1, "{list:#?}");
    assert_eq!(tcp_entry[0]["host"], format!(":{tcp_port}"));
    assert_eq!(
        tcp_entry[0]["visitor"],
        tcp.local_addr().unwrap().to_string()
    );
    // Counted while the (spliced, zero-copy) connection is still open.
    assert_eq!(
        (
            tcp_entry[0]["bytes_up"].as_u64(),
            tcp_entry[0]["bytes_down"].as_u64()
        ),
        (Some(4), Some(4)),
        "{list:#?}"
    );
    let udp_entry = of_kind(&list, "udp");
    assert_eq!(udp_entry.len(), 1, "{list:#?}");
    assert_eq!(
        udp_entry[0]["visitor"],
        udp.local_addr().unwrap().to_string()
    );
    assert!(udp_entry[0]["bytes_up"].as_u64().unwrap() >= 2);

    // The tunnels list sums their traffic.
    let (_, tunnels) = admin_get(&relay, "/api/tunnels", Some(&token)).await;
    let tunnels: Vec<serde_json::Value> = serde_json::from_str(&tunnels).unwrap();
    let cam = tunnels.iter().find(|t| t["type"] == "http").unwrap();
    assert_eq!(cam["streams"], 3, "two MJPEG and the WebSocket: {cam}");
    assert!(cam["out_bps"].as_u64().unwrap() > 200_000, "{cam}");
    assert_eq!(cam["target"], nvr.addr.to_string());
    assert_eq!(cam["port"], relay.https.port());
    let t = tunnels.iter().find(|t| t["type"] == "tcp").unwrap();
    assert_eq!(
        (t["target"].as_str(), t["streams"].as_u64()),
        (Some("echo"), Some(1))
    );
    assert_eq!(t["port"], tcp_port);
    let u = tunnels.iter().find(|t| t["type"] == "udp").unwrap();
    assert_eq!(
        (u["target"].as_str(), u["streams"].as_u64()),
        (Some("webrtc"), Some(1))
    );

    // Closing needs the token; an unknown id is a 404.
    let first = http[0]["id"].as_u64().unwrap();
    let path = format!("/api/connections/{first}");
    assert_eq!(
        admin_call(&relay, "DELETE", &path, None, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        admin_call(
            &relay,
            "DELETE",
            "/api/connections/999999",
            Some(&token),
            ""
        )
        .await
        .0,
        StatusCode::NOT_FOUND
    );
    // Close the first MJPEG stream: its viewer sees the end, the other goes on.
    assert_eq!(
        admin_call(&relay, "DELETE", &path, Some(&token), "")
            .await
            .0,
        StatusCode::NO_CONTENT
    );
    // Which viewer held it is not known from here: read both until one ends.
    let ended = async |b: &mut hyper::body::Incoming| loop {
        match http_body_util::BodyExt::frame(b).await {
            None | Some(Err(_)) => return,
            Some(Ok(_)) => {}
        }
    };
    let survivor = tokio::select! {
        _ = ended(&mut cam1) => &mut cam2,
        _ = ended(&mut cam2) => &mut cam1,
        _ = tokio::time::sleep(std::time::Duration::from_secs(5)) => panic!("no stream ended"),
    };
    // The other viewer's stream goes on.
    for _ in 0..3 {
        let f = tokio::time::timeout(
            std::time::Duration::from_secs(5),
            http_body_util::BodyExt::frame(survivor),
        )
        .await
        .expect("the other stream still flows");
        assert!(f.unwrap().unwrap().is_data());
    }
    let list = connections(&relay).await;
    assert_eq!(of_kind(&list, "http").len(), 1, "{list:#?}");
    assert!(list.iter().all(|c| c["id"] != first));
    // The WebSocket, by the other route (POST …/close).
    let ws_id = ws_entry[0]["id"].as_u64().unwrap();
    let (code, _) = admin_call(
        &relay,
        "POST",
        &format!("/api/connections/{ws_id}/close"),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let end = tokio::time::timeout(std::time::Duration::from_secs(5), async {
        loop {
            match ws.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the WebSocket ended");
    // The tcp connection: the visitor's socket closes.
    let tcp_id = tcp_entry[0]["id"].as_u64().unwrap();
    let (code, _) = admin_call(
        &relay,
        "DELETE",
        &format!("/api/connections/{tcp_id}"),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .expect("the tcp connection ended");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    // The udp flow.
    let udp_id = udp_entry[0]["id"].as_u64().unwrap();
    let (code, _) = admin_call(
        &relay,
        "DELETE",
        &format!("/api/connections/{udp_id}"),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eventually!(
        of_kind(&connections(&relay).await, "udp").is_empty(),
        5,
        "the udp flow is gone"
    );
    // The remaining MJPEG stream still flows; when its viewer leaves, the list is empty.
    let list = connections(&relay).await;
    assert_eq!(list.len(), 1, "{list:#?}");
    drop((cam1, cam2));
    assert_eventually!(
        connections(&relay).await.is_empty(),
        5,
        "entries leave with their connections"
    );
    agent.stop().await;
    relay.stop().await;
}

fn run_periscope(args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test]
async fn token_and_share_ledger_revocations_and_bans_take_effect_at_once() {
    use std::os::unix::fs::PermissionsExt;
    let nvr = Nvr::start().await;
    let relay = TestRelay::start_configured(|c| {
        with_users(c, &[("alice", "alice-password", &["cam.relay.localhost"])]);
    })
    .await;
    let token = relay.admin_token.clone();
    // The CLI writes the ledger the relay reads (same data directory).
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"relay.localhost\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:{}\"\n",
            relay.data_dir().display(),
            relay.https.port()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (ok, agent_token, err) = run_periscope(&[
        "token", "issue", "--config", c, "--agent", "cam", "--ttl", "1h",
    ]);
    assert!(ok, "{err}");
    let ledger = relay.data_dir().join("issued.json");
    assert_eq!(
        std::fs::metadata(&ledger).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let ledger_text = std::fs::read_to_string(&ledger).unwrap();
    assert!(
        !ledger_text.contains(agent_token.trim()),
        "no token in the ledger"
    );
    // And the API (a second token, for another agent).
    let (code, issued) = admin_call(
        &relay,
        "POST",
        "/api/tokens",
        Some(&token),
        r#"{"agent":"spare","ttl":"2h"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{issued}");
    let mut agent = AgentBuilder::new(&relay, agent_token.trim())
        .http("cam", nvr.addr)
        .start()
        .await;
    agent.connected().await;
    let (_, list) = admin_get(&relay, "/api/tokens", Some(&token)).await;
    let list: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap();
    assert_eq!(list.len(), 2, "{list:#?}");
    assert_eq!(list[0]["agent"], "spare", "newest first");
    let cam = &list[1];
    assert_eq!(cam["agent"], "cam");
    assert_eq!(
        (cam["revoked"].as_bool(), cam["connected"].as_bool()),
        (Some(false), Some(true))
    );
    assert!(cam["expires"].as_str().unwrap().ends_with('Z'));
    assert!(cam.get("token").is_none());
    // Revoking it disconnects the agent at once (not at the next sweep).
    let jti = cam["jti"].as_str().unwrap().to_string();
    let t0 = std::time::Instant::now();
    let (code, _) = admin_call(
        &relay,
        "POST",
        &format!("/api/tokens/{jti}/revoke"),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    agent
        .wait_for("disconnected", |s| {
            !matches!(s, agent::Status::Connected { .. })
        })
        .await;
    assert!(
        t0.elapsed() < std::time::Duration::from_secs(2),
        "{:?}",
        t0.elapsed()
    );
    let (_, list) = admin_get(&relay, "/api/tokens", Some(&token)).await;
    assert!(list.contains(r#""revoked":true"#), "{list}");
    assert_eq!(
        admin_call(
            &relay,
            "POST",
            "/api/tokens/not-hex/revoke",
            Some(&token),
            ""
        )
        .await
        .0,
        StatusCode::BAD_REQUEST
    );
    agent.stop().await;

    // Share links: issued by the CLI, listed, revoked through the API.
    let port = free_port();
    let echo = echo_server().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .http("cam", nvr.addr)
        .tcp("echo", echo, port)
        .start()
        .await;
    agent.connected().await;
    let (ok, url, err) = run_periscope(&[
        "share",
        "--config",
        c,
        "--host",
        "cam.relay.localhost",
        "--ttl",
        "1h",
        "--user-label",
        "neighbour",
    ]);
    assert!(ok, "{err}");
    let link = url
        .trim()
        .split_once(&format!(":{}", relay.https.port()))
        .unwrap()
        .1
        .to_string();
    let (_, shares) = admin_get(&relay, "/api/shares", Some(&token)).await;
    let shares: Vec<serde_json::Value> = serde_json::from_str(&shares).unwrap();
    assert_eq!(shares.len(), 1, "{shares:#?}");
    assert_eq!(shares[0]["host"], "cam.relay.localhost");
    assert_eq!(shares[0]["label"], "neighbour");
    assert_eq!(shares[0]["revoked"], false);
    let open_link = || async {
        let req = Request::builder()
            .uri(link.as_str())
            .header("host", "cam.relay.localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        https_request(&relay, "cam.relay.localhost", false, req).await
    };
    let r = open_link().await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the link works");
    let cookie = r.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    // A live stream opened with the link is listed under it.
    let req = Request::builder()
        .uri("/mjpeg?fps=10&size=1000")
        .header("host", "cam.relay.localhost")
        .header("cookie", &cookie)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut stream = https_request(&relay, "cam.relay.localhost", false, req).await;
    assert_eq!(stream.status(), StatusCode::OK);
    let share_id = shares[0]["jti"].as_str().unwrap().to_string();
    let list = connections(&relay).await;
    assert_eq!(list[0]["user"], format!("share:{share_id}"), "{list:#?}");
    // So is a raw-port connection from the address the link logged in.
    let tcp = visit(port).await;
    let mut listed: Vec<serde_json::Value>;
    assert_eventually!(
        {
            listed = connections(&relay).await;
            listed.iter().any(|c| c["kind"] == "tcp")
        },
        5,
        "the tcp connection is listed: {listed:#?}"
    );
    let raw = listed.iter().find(|c| c["kind"] == "tcp").unwrap();
    assert_eq!(raw["user"], format!("share:{share_id}"), "{raw}");
    drop(tcp);
    let (code, _) = admin_call(
        &relay,
        "POST",
        &format!("/api/shares/{share_id}/revoke"),
        Some(&token),
        "",
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    // At once: the link is refused and its stream ends.
    assert_eq!(open_link().await.status(), StatusCode::FORBIDDEN);
    let end = tokio::time::timeout(std::time::Duration::from_secs(3), async {
        while let Some(Ok(_)) = http_body_util::BodyExt::frame(stream.body_mut()).await {}
    })
    .await;
    assert!(end.is_ok(), "the share's stream ended");
    let (_, shares) = admin_get(&relay, "/api/shares", Some(&token)).await;
    assert!(shares.contains(r#""revoked":true"#), "{shares}");

    // A ban through the API refuses the address at once; a bad body is refused.
    for bad in [
        r#"{"ip":"nope","duration":"1h"}"#,
        r#"{"ip":"127.0.0.1","duration":"soon"}"#,
        r#"{"ip":"127.0.0.1"}"#,
    ] {
        let code = admin_call(&relay, "POST", "/api/bans", Some(&token), bad)
            .await
            .0;
        assert!(code.is_client_error(), "{bad}: {code}");
    }
    let (code, _) = admin_call(
        &relay,
        "POST",
        "/api/bans",
        Some(&token),
        r#"{"ip":"127.0.0.1","duration":"forever"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    let req = Request::builder()
        .uri("/.periscope/login")
        .header("host", "cam.relay.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    assert_eq!(
        https_request(&relay, "cam.relay.localhost", false, req)
            .await
            .status(),
        StatusCode::FORBIDDEN,
        "banned at once"
    );
    let (_, bans) = admin_get(&relay, "/api/bans", Some(&token)).await;
    assert!(
        bans.contains(r#""ip":"127.0.0.1""#) && bans.contains("forever"),
        "{bans}"
    );
    let (code, _) = admin_call(&relay, "DELETE", "/api/bans/127.0.0.1", Some(&token), "").await;
    assert_eq!(code, StatusCode::NO_CONTENT);
    assert_eq!(
        open_link().await.status(),
        StatusCode::FORBIDDEN,
        "still revoked, but not banned"
    );
    // A damaged ledger: the listing says so, issuing still hands out the token.
    std::fs::write(relay.data_dir().join("issued.json"), b"{\"tokens\": [1").unwrap();
    let (code, _) = admin_get(&relay, "/api/tokens", Some(&token)).await;
    assert_eq!(code, StatusCode::INTERNAL_SERVER_ERROR);
    let (code, issued) = admin_call(
        &relay,
        "POST",
        "/api/tokens",
        Some(&token),
        r#"{"agent":"spare","ttl":"2h"}"#,
    )
    .await;
    assert_eq!(code, StatusCode::OK, "{issued}");
    assert!(issued.contains("\"token\":\"ey"), "{issued}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn recent_errors_are_on_the_api_and_the_status_page() {
    trace();
    let relay = TestRelay::start().await;
    let token = relay.admin_token.clone();
    // A rejected agent is a warning in the relay's log, and so on its status page.
    let mut agent = AgentBuilder::new(&relay, "not-a-jwt")
        .tcp("echo", echo_server().await, free_port())
        .start()
        .await;
    agent
        .wait_for("rejected", |s| matches!(s, agent::Status::Rejected { .. }))
        .await;
    let mut errors: Vec<serde_json::Value>;
    assert_eventually!(
        {
            let (status, body) = admin_get(&relay, "/api/errors", Some(&token)).await;
            assert_eq!(status, StatusCode::OK);
            errors = serde_json::from_str(&body).unwrap();
            errors.iter().any(|e| {
                e["level"] == "WARN"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("agent rejected: bad token"))
            })
        },
        5,
        "the rejection is listed: {errors:#?}"
    );
    assert!(errors
        .iter()
        .all(|e| e["time"].as_str().is_some_and(|t| t.ends_with('Z'))));
    let (_, page) = admin_get(&relay, "/", None).await;
    assert!(page.contains("Recent errors") && page.contains("/api/errors"));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn admin_over_tls_with_the_relays_certificate() {
    // What a non-loopback `listen.admin` gets; forced here on loopback.
    let relay = TestRelay::start_configured(|c| c.listen.admin_tls = true).await;
    let token = relay.admin_token.clone();
    let trust = [relay.data_dir().join("self-signed.crt")];
    let tls = tls_connect_to(relay.admin, &trust, "localhost", b"http/1.1").await;
    assert_eq!(
        admin_call_over(tls, "GET", "/api/agents", Some(&token), "").await,
        (StatusCode::OK, "[]".to_string())
    );
    let tls = tls_connect_to(relay.admin, &trust, "localhost", b"http/1.1").await;
    assert_eq!(
        admin_call_over(tls, "GET", "/api/agents", None, "").await.0,
        StatusCode::UNAUTHORIZED
    );
    // Plain HTTP gets no answer from it.
    let tcp = tokio::net::TcpStream::connect(relay.admin).await.unwrap();
    let plain = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        hyper::client::conn::http1::handshake::<_, Full<Bytes>>(hyper_util::rt::TokioIo::new(tcp)),
    )
    .await
    .unwrap();
    let (mut send, conn) = plain.unwrap();
    tokio::spawn(conn);
    let r = send
        .send_request(
            Request::get("/healthz")
                .header("host", "localhost")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert!(r.is_err(), "plain HTTP must not be answered: {r:?}");
    relay.stop().await;
}

#[test]
fn a_non_loopback_admin_address_means_tls() {
    let mut c = relay::RelayConfig::dev(std::env::temp_dir());
    assert!(!c.admin_over_tls());
    c.listen.admin = "[::]:9090".parse().unwrap();
    assert!(c.admin_over_tls());
    c.validate().unwrap();
}

//! The edge's certificates and its plain-HTTP listener: per-host certificates from the
//! development CA, redirects to https, HSTS.

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

/// A relay (adjusted by `f`) whose `cam.relay.localhost` is public, and an agent publishing
/// `target` there.
async fn cam_relay(
    target: std::net::SocketAddr,
    f: impl FnOnce(&mut relay::RelayConfig),
) -> (TestRelay, TestAgent) {
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"));
        f(c)
    })
    .await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    (relay, agent)
}

/// [`cam_relay`] serving a fake NVR.
async fn limited(f: impl FnOnce(&mut relay::RelayConfig)) -> (TestRelay, TestAgent, Nvr) {
    let nvr = Nvr::start().await;
    let (relay, agent) = cam_relay(nvr.addr, f).await;
    (relay, agent, nvr)
}

/// `method path` for `cam.relay.localhost`, without a body.
fn cam_request(method: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(path)
        .header("host", "cam.relay.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// `GET path` for `cam.relay.localhost`.
fn get(path: &str) -> Request<Full<Bytes>> {
    cam_request("GET", path)
}

/// Send `head` to the plain-HTTP listener and return the response head.
async fn plain(relay: &TestRelay, head: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(relay.http).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), s.read(&mut buf))
        .await
        .expect("answer in time")
        .unwrap();
    String::from_utf8_lossy(&buf[..n]).to_string()
}

#[tokio::test]
async fn http_listener_redirects_to_https_and_never_proxies() {
    let relay = TestRelay::start().await;
    let port = relay.https.port();
    let get = plain(
        &relay,
        "GET /doc/page.html?x=1 HTTP/1.1\r\nHost: Cam.Relay.Localhost\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(get.starts_with("HTTP/1.1 301"), "{get}");
    assert!(
        get.to_ascii_lowercase().contains(&format!(
            "location: https://cam.relay.localhost:{port}/doc/page.html?x=1\r\n"
        )),
        "{get}"
    );
    // A POST keeps its method and body through a 308.
    let post = plain(
        &relay,
        "POST /api HTTP/1.1\r\nHost: cam.relay.localhost\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert!(post.starts_with("HTTP/1.1 308"), "{post}");
    // No Host: nothing to redirect to. Unknown ACME token: 404, and no path tricks.
    let bare = plain(&relay, "GET / HTTP/1.0\r\n\r\n").await;
    assert!(
        bare.starts_with("HTTP/1.0 400") || bare.starts_with("HTTP/1.1 400"),
        "{bare}"
    );
    for path in [
        "/.well-known/acme-challenge/abc",
        "/.well-known/acme-challenge/..%2f..%2fetc%2fpasswd",
    ] {
        let r = plain(
            &relay,
            &format!("GET {path} HTTP/1.1\r\nHost: relay.localhost\r\nConnection: close\r\n\r\n"),
        )
        .await;
        assert!(r.starts_with("HTTP/1.1 404"), "{path}: {r}");
    }
}

#[tokio::test]
async fn routed_hostnames_get_their_own_certificate_and_hsts_is_configurable() {
    let target = echo_server().await;
    for hsts in [false, true] {
        let relay = TestRelay::start_configured(|c| c.tls.hsts = hsts).await;
        let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
            .http("cam", target)
            .start()
            .await;
        agent.connected().await;
        // The development CA signed a certificate for exactly this name (tls_connect trusts
        // only dev-ca.crt and the relay's self-signed certificate).
        let tls = tls_connect(&relay, "cam.relay.localhost", b"http/1.1").await;
        let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
        let self_signed =
            pem::parse(std::fs::read(relay.data_dir().join("self-signed.crt")).unwrap()).unwrap();
        assert_ne!(
            leaf.as_ref(),
            self_signed.contents(),
            "per-host certificate"
        );
        drop(tls);
        // A name nobody claimed gets no certificate of its own (nothing is signed for a
        // visitor's made-up SNI); the relay's own certificate answers and the page is a 404.
        let other = tls_connect(&relay, "nothing.relay.localhost", b"http/1.1").await;
        let leaf = other.get_ref().1.peer_certificates().unwrap()[0].clone();
        assert_eq!(leaf.as_ref(), self_signed.contents());
        drop(other);

        let req = Request::builder()
            .uri("/")
            .header("host", "nothing.relay.localhost")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = https_request(&relay, "nothing.relay.localhost", false, req).await;
        assert_eq!(resp.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            resp.headers().get("strict-transport-security").is_some(),
            hsts,
            "hsts={hsts}"
        );
        agent.stop().await;
        relay.stop().await;
    }
}

#[tokio::test]
async fn tcp_tunnel_with_tls_is_terminated_at_the_relay() {
    let echo = echo_server().await;
    let relay = TestRelay::start().await;
    let port = free_port();
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .tcp("cam", echo, port)
        .configure(|c| c.tunnels[0].tls = true)
        .start()
        .await;
    let agent::Status::Connected { public, .. } = agent.connected().await else {
        unreachable!()
    };
    assert_eq!(public[0].1, format!("tls://cam.relay.localhost:{port}"));
    // The visitor speaks TLS (verified against the development CA for the tunnel's name);
    // the echo target sees and returns plain bytes.
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut tls = tls_connect_to(
        addr,
        &[relay.data_dir().join("dev-ca.crt")],
        "cam.relay.localhost",
        b"http/1.1",
    )
    .await;
    tls.write_all(b"live video frame").await.unwrap();
    let mut buf = [0u8; 16];
    tokio::time::timeout(std::time::Duration::from_secs(5), tls.read_exact(&mut buf))
        .await
        .expect("echo in time")
        .unwrap();
    assert_eq!(&buf, b"live video frame");
    drop(tls);
    agent.stop().await;

    // The certificate's name must be one the token allows.
    let mut other = AgentBuilder::new(&relay, &relay.token("other", &[port]))
        .tcp("cam", echo, port)
        .configure(|c| c.tunnels[0].tls = true)
        .start()
        .await;
    let s = other
        .wait_for("rejected", |s| matches!(s, agent::Status::Rejected { .. }))
        .await;
    let agent::Status::Rejected { reason, detail } = s else {
        unreachable!()
    };
    assert_eq!(reason, proto::RejectReason::HostnameNotAllowed);
    assert!(detail.contains("cam.relay.localhost"), "{detail}");
    other.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn websocket_over_http2_extended_connect() {
    use futures_util::{SinkExt, StreamExt};
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio_tungstenite::tungstenite::{protocol::Role, Message};

    let (relay, agent, _nvr) = limited(|_| {}).await;
    let tls = tls_connect(&relay, "cam.relay.localhost", b"h2").await;
    let (mut send, conn) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
        .handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    // Two WebSockets on one HTTP/2 connection, as a browser's camera grid does.
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let mut req = Request::builder()
            .method(http::Method::CONNECT)
            .uri("https://cam.relay.localhost/ws/echo")
            .header("sec-websocket-version", "13")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        req.extensions_mut()
            .insert(hyper::ext::Protocol::from_static("websocket"));
        let resp = send.send_request(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let io = hyper::upgrade::on(resp).await.unwrap();
        sockets.push(
            tokio_tungstenite::WebSocketStream::from_raw_socket(
                TokioIo::new(io),
                Role::Client,
                None,
            )
            .await,
        );
    }
    for (i, ws) in sockets.iter_mut().enumerate() {
        ws.send(Message::text(format!("tile {i}"))).await.unwrap();
        let got = tokio::time::timeout(std::time::Duration::from_secs(5), ws.next())
            .await
            .expect("echo in time")
            .unwrap()
            .unwrap();
        assert_eq!(got, Message::text(format!("tile {i}")));
    }
    // A plain CONNECT is not proxied anywhere.
    let req = Request::builder()
        .method(http::Method::CONNECT)
        .uri("https://cam.relay.localhost:443")
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn slow_visitors_are_dropped_by_the_handshake_and_header_timeouts() {
    let limit = std::time::Duration::from_millis(500);
    let (relay, agent, _nvr) = limited(|c| {
        c.limits.visitor_handshake_timeout = limit;
        c.limits.header_read_timeout = limit;
    })
    .await;
    // No ClientHello at all: closed after the handshake timeout.
    let mut silent = tokio::net::TcpStream::connect(relay.https).await.unwrap();
    let t0 = std::time::Instant::now();
    let mut buf = [0u8; 64];
    let n = tokio::time::timeout(std::time::Duration::from_secs(5), silent.read(&mut buf))
        .await
        .expect("closed in time")
        .unwrap_or(0);
    assert_eq!(n, 0);
    assert!(t0.elapsed() >= limit && t0.elapsed() < std::time::Duration::from_secs(3));

    // Slowloris: a head trickled one header every 200 ms never completes; the relay gives up
    // after the header timeout although bytes keep coming.
    let mut tls = tls_connect(&relay, "cam.relay.localhost", b"http/1.1").await;
    tls.write_all(b"GET /api/request HTTP/1.1\r\nHost: cam.relay.localhost\r\n")
        .await
        .unwrap();
    let t0 = std::time::Instant::now();
    let closed = async {
        let mut i = 0;
        loop {
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            i += 1;
            if tls
                .write_all(format!("x-slow-{i}: 1\r\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let mut b = [0u8; 256];
            if let Ok(r) =
                tokio::time::timeout(std::time::Duration::from_millis(1), tls.read(&mut b)).await
            {
                // EOF, an error, or hyper's 408: the relay is done with us.
                if r.map_or(true, |n| n == 0 || b[..n].starts_with(b"HTTP/1.1 408")) {
                    return;
                }
            }
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(5), closed)
        .await
        .expect("the relay closed a slowloris connection");
    assert!(t0.elapsed() < std::time::Duration::from_secs(3));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn http2_streams_per_connection_are_capped() {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let (relay, agent, _nvr) = limited(|c| c.limits.http2_max_streams = 2).await;
    let tls = tls_connect(&relay, "cam.relay.localhost", b"h2").await;
    let (send, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    let mjpeg = || {
        let mut send = send.clone();
        async move {
            let req = Request::builder()
                .uri("https://cam.relay.localhost/mjpeg?fps=10&size=1000")
                .body(Full::new(Bytes::new()))
                .unwrap();
            send.send_request(req).await
        }
    };
    let a = mjpeg().await.unwrap();
    let b = mjpeg().await.unwrap();
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    // Two endless streams are open: a third waits for a slot...
    let third = tokio::spawn(mjpeg());
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream started past the cap");
    // ...and gets one when a stream ends.
    drop(a);
    let c = tokio::time::timeout(std::time::Duration::from_secs(5), third)
        .await
        .expect("third stream after a slot freed")
        .unwrap()
        .unwrap();
    assert_eq!(c.status(), StatusCode::OK);
    drop((b, c));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn connections_to_the_recorder_are_reused_like_upstream_keepalive() {
    let (relay, agent, nvr) = limited(|_| {}).await;
    // Twenty requests from separate visitor connections, one after another: one recorder
    // connection carries them all.
    for _ in 0..20 {
        let resp = https_request(&relay, "cam.relay.localhost", false, get("/api/request")).await;
        assert_eq!(resp.status(), StatusCode::OK);
        http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap();
    }
    assert_eq!(
        nvr.connections(),
        1,
        "sequential requests reuse one connection"
    );
    // A response still streaming keeps its connection: a concurrent request gets another.
    let stream = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        get("/mjpeg?fps=10&size=1000"),
    )
    .await;
    let resp = https_request(&relay, "cam.relay.localhost", false, get("/api/request")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(nvr.connections(), 2);
    drop((stream, resp));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_recorder_closing_kept_alive_connections_costs_no_request() {
    // `/sloppy/casing` answers with a Content-Length and no `Connection: close`, then closes:
    // every pooled connection is stale by the next request. Each GET must still succeed
    // (retried on a new connection when the stale one fails).
    let (relay, agent, nvr) = limited(|_| {}).await;
    for i in 0..20 {
        let resp = https_request(&relay, "cam.relay.localhost", false, get("/sloppy/casing")).await;
        assert_eq!(resp.status(), StatusCode::OK, "request {i}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(&body[..], b"casing body");
    }
    assert!(nvr.connections() >= 20);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_request_lost_on_a_stale_connection_is_retried_when_safe() {
    // The keep-alive race made deterministic: each connection answers its first request and
    // keeps the connection open, then drops it unanswered when a second request arrives (as a
    // recorder whose keep-alive timer fired while that request was on its way).
    let target = tcp_server(|mut s| async move {
        let mut buf = vec![0u8; 4096];
        let mut head = Vec::new();
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => head.extend_from_slice(&buf[..n]),
            }
        }
        let _ = s
            .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfresh")
            .await;
        let _ = s.read(&mut buf).await;
    })
    .await;
    let (relay, agent) = cam_relay(target, |_| {}).await;
    for i in 0..5 {
        let resp = https_request(
            &relay,
            "cam.relay.localhost",
            false,
            cam_request("GET", "/"),
        )
        .await;
        assert_eq!(resp.status(), StatusCode::OK, "GET {i}");
    }
    // A POST is not repeated behind the visitor's back: it fails with a 502 instead.
    let resp = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        cam_request("POST", "/"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::BAD_GATEWAY);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn an_agent_stream_budget_bounds_requests_in_flight() {
    let (relay, agent, _nvr) = limited(|c| {
        c.limits.streams_per_agent = 2;
        c.limits.connect_timeout = std::time::Duration::from_millis(500);
    })
    .await;
    let a = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        get("/mjpeg?fps=10&size=100"),
    )
    .await;
    let b = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        get("/mjpeg?fps=10&size=100"),
    )
    .await;
    assert_eq!((a.status(), b.status()), (StatusCode::OK, StatusCode::OK));
    // Both streams are busy: a third request waits connect_timeout, then 504.
    let t0 = std::time::Instant::now();
    let c = https_request(&relay, "cam.relay.localhost", false, get("/api/request")).await;
    assert_eq!(c.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(t0.elapsed() < std::time::Duration::from_secs(3));
    // One stream ends: requests flow again (and idle kept-alive ones never block a new one).
    drop(a);
    for _ in 0..3 {
        let r = status_once_unblocked(&relay).await;
        assert_eq!(r, StatusCode::OK);
    }
    drop(b);
    agent.stop().await;
    relay.stop().await;
}

/// Retry a request for up to 5 s until it is not a 504 (a freed stream is returned by a task).
async fn status_once_unblocked(relay: &TestRelay) -> StatusCode {
    let t0 = std::time::Instant::now();
    loop {
        let r = https_request(relay, "cam.relay.localhost", false, get("/api/request")).await;
        if r.status() != StatusCode::GATEWAY_TIMEOUT
            || t0.elapsed() > std::time::Duration::from_secs(5)
        {
            return r.status();
        }
    }
}

/// A CA for certificate-file tests: its PEM, and an issuer for leaf certificates.
fn file_ca() -> (String, rcgen::Issuer<'static, rcgen::KeyPair>) {
    let mut p = rcgen::CertificateParams::default();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "files test CA");
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.self_signed(&key).unwrap();
    (cert.pem(), rcgen::Issuer::new(p, key))
}

/// A leaf for `names` signed by `ca`: (certificate PEM, key PEM, certificate DER).
fn file_leaf(
    ca: &rcgen::Issuer<'static, rcgen::KeyPair>,
    names: &[&str],
) -> (String, String, Vec<u8>) {
    let mut p =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    p.distinguished_name
        .push(rcgen::DnType::CommonName, names[0]);
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = p.signed_by(&key, ca).unwrap();
    (cert.pem(), key.serialize_pem(), cert.der().to_vec())
}

/// `[tls] cert/key` files: a certificate for exactly `cam.example.test`, and a wildcard
/// `*.example.test`. A client trusting only the files' CA verifies the relay for
/// `cam.example.test` and sees that very certificate; the request reaches the recorder, and
/// the agent (pinning the relay's fingerprint) connects to the same certificate on QUIC.
#[tokio::test]
async fn certificate_files_for_a_hostname_and_a_wildcard_are_served() {
    let nvr = Nvr::start().await;
    let (ca_pem, ca) = file_ca();
    let dir = tempfile::tempdir().unwrap();
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &ca_pem).unwrap();
    let trust = [ca_file];
    for (i, names) in [
        &["cam.example.test"][..],
        &["*.example.test", "example.test"][..],
    ]
    .into_iter()
    .enumerate()
    {
        let (cert_pem, key_pem, der) = file_leaf(&ca, names);
        let cert_file = dir.path().join(format!("cert{i}.pem"));
        let key_file = dir.path().join(format!("key{i}.pem"));
        // The chain as an operator would install it: leaf, then the CA.
        std::fs::write(&cert_file, format!("{cert_pem}{ca_pem}")).unwrap();
        std::fs::write(&key_file, &key_pem).unwrap();
        let relay = TestRelay::start_configured(|c| {
            c.domain = "example.test".into();
            c.tls.cert = Some(cert_file.clone());
            c.tls.key = Some(key_file.clone());
            c.access
                .push(relay::config::AccessRule::public("cam.example.test"));
        })
        .await;
        let mut agent = AgentBuilder::new(&relay, &relay.token_hosts("cam", &["cam.example.test"]))
            .http("cam", nvr.addr)
            .start()
            .await;
        agent.connected().await;
        for alpn in [&b"h2"[..], b"http/1.1"] {
            let tls = tls_connect_to(relay.https, &trust, "cam.example.test", alpn).await;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(leaf.as_ref(), &der[..], "{names:?}: the file's certificate");
        }
        let req = Request::builder()
            .uri("/api/request")
            .header("host", "cam.example.test")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = https_request_to(relay.https, &trust, "cam.example.test", true, req).await;
        assert_eq!(resp.status(), StatusCode::OK, "{names:?}");
        let body = http_body_util::BodyExt::collect(resp.into_body())
            .await
            .unwrap()
            .to_bytes();
        let seen: serde_json::Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(seen["host"], "cam.example.test");
        if names[0].starts_with('*') {
            // Any other name under the wildcard verifies with the same certificate (a 404:
            // nothing is routed there).
            let tls = tls_connect_to(relay.https, &trust, "nvr.example.test", b"h2").await;
            let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].clone();
            assert_eq!(leaf.as_ref(), &der[..]);
        }
        agent.stop().await;
        relay.stop().await;
    }
}

/// A wrong `[tls]` file stops the relay at start with an error naming the setting and the
/// file: missing certificate or key, a key file holding no key, a key of another certificate.
#[tokio::test]
async fn certificate_file_errors_name_the_file() {
    let (_, ca) = file_ca();
    let dir = tempfile::tempdir().unwrap();
    let (cert_pem, key_pem, _) = file_leaf(&ca, &["cam.example.test"]);
    let (_, other_key, _) = file_leaf(&ca, &["other.example.test"]);
    let path = |n: &str| dir.path().join(n);
    std::fs::write(path("cert.pem"), &cert_pem).unwrap();
    std::fs::write(path("key.pem"), &key_pem).unwrap();
    std::fs::write(path("other.key"), &other_key).unwrap();
    std::fs::write(path("garbage.key"), "not a key\n").unwrap();
    std::fs::write(path("garbage.crt"), "not a certificate\n").unwrap();
    let cases = [
        ("missing.pem", "key.pem", "tls.cert", "missing.pem"),
        ("garbage.crt", "key.pem", "tls.cert", "garbage.crt"),
        ("cert.pem", "missing.key", "tls.key", "missing.key"),
        ("cert.pem", "garbage.key", "tls.key", "garbage.key"),
        ("cert.pem", "other.key", "does not belong", "other.key"),
    ];
    for (cert, key, want, file) in cases {
        let mut c = relay::RelayConfig::dev(dir.path().join(format!("data-{cert}-{key}")));
        c.domain = "example.test".into();
        c.listen.https = "127.0.0.1:0".parse().unwrap();
        c.listen.http = "127.0.0.1:0".parse().unwrap();
        c.listen.quic = "127.0.0.1:0".parse().unwrap();
        c.listen.admin = "127.0.0.1:0".parse().unwrap();
        c.tls.cert = Some(path(cert));
        c.tls.key = Some(path(key));
        let err = match relay::Relay::bind(c).await {
            Ok(_) => panic!("{cert} + {key}: the relay started"),
            Err(e) => e.to_string(),
        };
        assert!(
            err.contains(want) && err.contains(&path(file).display().to_string()),
            "{cert} + {key}: {err}"
        );
    }
    // The matching pair starts.
    let mut c = relay::RelayConfig::dev(dir.path().join("data-ok"));
    c.domain = "example.test".into();
    c.listen.https = "127.0.0.1:0".parse().unwrap();
    c.listen.http = "127.0.0.1:0".parse().unwrap();
    c.listen.quic = "127.0.0.1:0".parse().unwrap();
    c.listen.admin = "127.0.0.1:0".parse().unwrap();
    c.tls.cert = Some(path("cert.pem"));
    c.tls.key = Some(path("key.pem"));
    relay::Relay::bind(c).await.expect("a matching pair starts");
}

/// `periscope check` reads `tls.cert` / `tls.key` as the relay does at start: a good pair is
/// reported with its names and expiry, a key of another certificate fails naming the file, a
/// certificate that does not cover `*.DOMAIN` gets a note.
#[test]
fn check_reads_the_certificate_files() {
    let (_, ca) = file_ca();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let (wild, wild_key, _) = file_leaf(&ca, &["*.example.test", "example.test"]);
    let (cam, cam_key, _) = file_leaf(&ca, &["cam.example.test"]);
    std::fs::write(path("wild.pem"), wild).unwrap();
    std::fs::write(path("wild.key"), wild_key).unwrap();
    std::fs::write(path("cam.pem"), cam).unwrap();
    std::fs::write(path("cam.key"), cam_key).unwrap();
    let check = |cert: &str, key: &str| {
        let cfg = path("relay.toml");
        std::fs::write(
            &cfg,
            format!(
                "domain = \"example.test\"\ndata_dir = \"{}\"\n[tls]\ncert = \"{}\"\nkey = \"{}\"\n",
                path("data").display(),
                path(cert).display(),
                path(key).display()
            ),
        )
        .unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_periscope"))
            .args(["check", "--config"])
            .arg(&cfg)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, err) = check("wild.pem", "wild.key");
    assert!(ok, "{err}");
    assert!(
        err.contains("certificate for *.example.test, example.test valid until")
            && err.contains("tls.key matches"),
        "{err}"
    );
    assert!(!err.contains("does not cover"), "{err}");

    let (ok, err) = check("cam.pem", "cam.key");
    assert!(ok, "{err}");
    assert!(err.contains("does not cover *.example.test"), "{err}");

    let (ok, err) = check("wild.pem", "cam.key");
    assert!(!ok, "a key of another certificate passed: {err}");
    assert!(
        err.contains("does not belong") && err.contains(&path("cam.key").display().to_string()),
        "{err}"
    );
}

//! The HTTPS edge: HTTP/1.1 and HTTP/2 through the tunnel to the fake recorder, routing rules,
//! per-tunnel HTTP options, timeouts, limits, streaming and backpressure.

use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio_tungstenite::tungstenite::Message;

use agent::config::TransportChoice;

use crate::common::{nvr, *};

const HOST: &str = "cam.relay.localhost";

/// A relay whose `cam.relay.localhost` is public, adjusted by `f`.
async fn public_relay_with(f: impl FnOnce(&mut relay::RelayConfig)) -> TestRelay {
    TestRelay::start_configured(|c| {
        c.access.push(relay::config::AccessRule::public(HOST));
        f(c)
    })
    .await
}

async fn public_relay() -> TestRelay {
    public_relay_with(|_| {}).await
}

/// A public relay (adjusted by `relay_cfg`) and a connected agent publishing `target` as
/// `cam` (tunnel adjusted by `tunnel_cfg`).
async fn publish(
    target: std::net::SocketAddr,
    relay_cfg: impl FnOnce(&mut relay::RelayConfig),
    tunnel_cfg: impl FnOnce(&mut agent::config::TunnelConfig),
) -> (TestRelay, TestAgent) {
    publish_over(target, relay_cfg, tunnel_cfg, TransportChoice::Auto).await
}

/// Like [`publish`], the agent on transport `transport`.
async fn publish_over(
    target: std::net::SocketAddr,
    relay_cfg: impl FnOnce(&mut relay::RelayConfig),
    tunnel_cfg: impl FnOnce(&mut agent::config::TunnelConfig),
    transport: TransportChoice,
) -> (TestRelay, TestAgent) {
    let relay = public_relay_with(relay_cfg).await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .tunnel(tunnel_cfg)
        .transport(transport)
        .start()
        .await;
    let s = agent.connected().await;
    let agent::Status::Connected { public, .. } = s else {
        unreachable!()
    };
    assert_eq!(
        public[0].1,
        format!("https://{HOST}:{}", relay.https.port())
    );
    (relay, agent)
}

/// The fake recorder published with default options.
async fn cam() -> (TestRelay, TestAgent, Nvr) {
    cam_over(TransportChoice::Auto).await
}

/// The fake recorder published with default options, the agent on `transport`.
async fn cam_over(transport: TransportChoice) -> (TestRelay, TestAgent, Nvr) {
    let nvr = Nvr::start().await;
    let (relay, mut agent) = publish_over(nvr.addr, |_| {}, |_| {}, transport).await;
    if transport != TransportChoice::Auto {
        let kind = match transport {
            TransportChoice::Tcp => proto::transport::TransportKind::Tcp,
            _ => proto::transport::TransportKind::Quic,
        };
        let agent::Status::Connected { transport: got, .. } = agent.connected().await else {
            unreachable!()
        };
        assert_eq!(got, kind);
    }
    (relay, agent, nvr)
}

/// A request for `path` on `host`: origin-form with a Host header for HTTP/1.1, absolute
/// (`:authority`) for HTTP/2, with a forged `X-Forwarded-For`, `X-Real-IP` and
/// `X-Forwarded-Proto`.
fn request(host: &str, h2: bool, method: &str, path: &str, body: Bytes) -> Request<Full<Bytes>> {
    let b = Request::builder().method(method);
    let b = if h2 {
        b.uri(format!("https://{host}{path}"))
    } else {
        b.uri(path).header("host", host)
    };
    b.header("x-forwarded-for", "10.9.9.9")
        .header("x-real-ip", "10.9.9.9")
        .header("x-forwarded-proto", "http")
        .body(Full::new(body))
        .unwrap()
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    request(host, false, "GET", path, Bytes::new())
}

async fn send(relay: &TestRelay, h2: bool, path: &str) -> http::Response<hyper::body::Incoming> {
    https_request(
        relay,
        HOST,
        h2,
        request(HOST, h2, "GET", path, Bytes::new()),
    )
    .await
}

async fn text(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap()
}

/// What the recorder saw of a request (`/api/request`).
async fn seen(relay: &TestRelay, h2: bool) -> serde_json::Value {
    let resp = send(relay, h2, "/api/request").await;
    assert_eq!(resp.status(), StatusCode::OK, "h2={h2}");
    serde_json::from_str(&text(resp).await).unwrap()
}

fn header<'a>(seen: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    seen["headers"].get(name)
}

#[tokio::test]
async fn get_over_http1_and_http2_with_forwarded_headers() {
    get_with_forwarded_headers(TransportChoice::Quic).await
}

#[tokio::test]
async fn get_over_the_tcp_fallback() {
    get_with_forwarded_headers(TransportChoice::Tcp).await
}

async fn get_with_forwarded_headers(transport: TransportChoice) {
    let (relay, agent, _nvr) = cam_over(transport).await;
    for h2 in [false, true] {
        let s = seen(&relay, h2).await;
        let one = |v: &str| serde_json::json!([v]);
        assert_eq!(
            header(&s, "x-forwarded-for"),
            Some(&one("127.0.0.1")),
            "{s}"
        );
        assert_eq!(header(&s, "x-real-ip"), Some(&one("127.0.0.1")), "{s}");
        assert_eq!(header(&s, "x-forwarded-proto"), Some(&one("https")), "{s}");
        assert_eq!(header(&s, "x-forwarded-host"), Some(&one(HOST)), "{s}");
        assert_eq!(
            header(&s, "forwarded"),
            Some(&one(&format!("for=127.0.0.1;proto=https;host={HOST}")))
        );
        assert_eq!(s["host"], HOST, "{s}");
        // Moonfire's check (X-Forwarded-Proto): the recorder knows the visitor is on https,
        // whatever the visitor claimed.
        assert_eq!(s["secure"], true, "{s}");
        assert!(
            !s.to_string().contains("10.9.9.9"),
            "visitor's own forwarding headers must not pass: {s}"
        );
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn forwarded_headers_off_strips_the_visitors_and_adds_none() {
    let nvr = Nvr::start().await;
    let (relay, agent) = publish(nvr.addr, |_| {}, |t| t.forwarded_headers = Some(false)).await;
    for h2 in [false, true] {
        let s = seen(&relay, h2).await;
        for h in [
            "x-forwarded-for",
            "x-real-ip",
            "x-forwarded-proto",
            "x-forwarded-host",
            "forwarded",
        ] {
            assert_eq!(header(&s, h), None, "{h}: {s}");
        }
        assert_eq!(s["host"], HOST);
        // Nothing tells the plain-HTTP recorder about https (the visitor's claim is gone too).
        assert_eq!(s["secure"], false, "{s}");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn host_header_target_or_literal() {
    let nvr = Nvr::start().await;
    for (choice, want) in [
        ("target", nvr.addr.to_string()),
        ("nvr.lan:8080", "nvr.lan:8080".to_string()),
    ] {
        let (relay, agent) =
            publish(nvr.addr, |_| {}, |t| t.host_header = Some(choice.into())).await;
        for h2 in [false, true] {
            let s = seen(&relay, h2).await;
            assert_eq!(s["host"], want.as_str(), "{choice} h2={h2}: {s}");
            // The public name still reaches the recorder in X-Forwarded-Host.
            assert_eq!(
                header(&s, "x-forwarded-host"),
                Some(&serde_json::json!([HOST]))
            );
        }
        agent.stop().await;
        relay.stop().await;
    }
}

#[tokio::test]
async fn redirects_to_the_recorder_point_at_the_public_url() {
    let (relay, agent, nvr) = cam().await;
    let public = format!("https://{HOST}:{}/doc/page.html", relay.https.port());
    for h2 in [false, true] {
        // To the target's own address: Location, Content-Location and Refresh.
        let r = send(&relay, h2, "/self").await;
        assert_eq!(r.status(), StatusCode::FOUND);
        assert_eq!(r.headers()["location"], public.as_str(), "h2={h2}");
        assert_eq!(r.headers()["content-location"], public.as_str());
        assert_eq!(r.headers()["refresh"], format!("0; url={public}").as_str());
        // Built from the Host header it was given: http://PUBLIC/… becomes https.
        let r = send(&relay, h2, "/host").await;
        assert_eq!(r.headers()["location"], public.as_str(), "h2={h2}");
        // Another LAN address is not ours to rewrite.
        let r = send(&relay, h2, "/").await;
        assert_eq!(r.headers()["location"], "http://192.168.1.50/doc/page.html");
    }
    agent.stop().await;
    relay.stop().await;

    let (relay, agent) = publish(nvr.addr, |_| {}, |t| t.rewrite_redirects = Some(false)).await;
    let r = send(&relay, false, "/self").await;
    assert_eq!(
        r.headers()["location"],
        format!("http://{}/doc/page.html", nvr.addr).as_str()
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn https_recorder_with_a_self_signed_certificate() {
    let nvr = Nvr::start_tls().await;
    // Not verified: works, over TLS, with the configured SNI.
    let (relay, agent) = publish(
        nvr.addr,
        |_| {},
        |t| {
            t.target_tls = Some(true);
            t.target_tls_verify = Some(false);
            t.target_sni = Some("nvr.lan".into());
        },
    )
    .await;
    for h2 in [false, true] {
        let s = seen(&relay, h2).await;
        assert_eq!(s["host"], HOST, "{s}");
        // Over TLS to the recorder: it sees no X-Forwarded-Proto lie either way.
        assert_eq!(s["secure"], true, "{s}");
        let r = send(&relay, h2, "/self").await;
        assert_eq!(
            r.headers()["location"],
            format!("https://{HOST}:{}/doc/page.html", relay.https.port()).as_str(),
        );
    }
    agent.stop().await;
    relay.stop().await;
    // The recorder saw the configured SNI on every handshake.
    let snis = nvr.snis();
    assert!(!snis.is_empty());
    assert!(
        snis.iter().all(|s| s.as_deref() == Some("nvr.lan")),
        "SNI seen by the recorder: {snis:?}"
    );
    // Without target_sni the target is an address: no SNI at all (RFC 6066 forbids IPs there).
    let (relay, agent) = publish(
        nvr.addr,
        |_| {},
        |t| {
            t.target_tls = Some(true);
            t.target_tls_verify = Some(false);
        },
    )
    .await;
    assert_eq!(seen(&relay, false).await["host"], HOST);
    let later = &nvr.snis()[snis.len()..];
    assert!(
        !later.is_empty() && later.iter().all(Option::is_none),
        "{later:?}"
    );
    agent.stop().await;
    relay.stop().await;
    // Verified against the web PKI: the self-signed certificate fails, the visitor gets a 502
    // quickly and the agent logs why (with the target_tls_verify hint).
    let logs = capture_logs();
    let (relay, agent) = publish(nvr.addr, |_| {}, |t| t.target_tls = Some(true)).await;
    let t0 = Instant::now();
    let r = send(&relay, false, "/api/request").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(t0.elapsed() < Duration::from_secs(3));
    let log = logs.text();
    assert!(
        log.contains("WARN")
            && log.contains("TLS handshake failed: invalid peer certificate")
            && log.contains("needs target_tls_verify = false"),
        "agent log: {log}"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn unknown_host_is_404_and_sni_mismatch_is_421() {
    let (relay, agent, _nvr) = cam().await;
    let r = https_request(
        &relay,
        "nothing.relay.localhost",
        false,
        get("nothing.relay.localhost", "/"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // TLS for cam.relay.localhost, request for another host on the same connection.
    let r = https_request(&relay, HOST, false, get("other.relay.localhost", "/")).await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn dead_target_is_a_fast_502() {
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let (relay, agent) = publish(dead, |_| {}, |_| {}).await;
    let t0 = Instant::now();
    let r = send(&relay, true, "/").await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(t0.elapsed() < Duration::from_secs(2));
    // The request went out right behind the stream's opening (pipelined); the agent's
    // "refused" reply still decides the page.
    assert!(text(r).await.contains("not accepting connections"));
    agent.stop().await;
    relay.stop().await;
}

/// A listener whose accept queue is full: the kernel drops further SYNs, so a connect
/// neither succeeds nor fails (like a recorder that hangs). Keep the returned value alive.
async fn never_accepting() -> (
    std::net::SocketAddr,
    Vec<tokio::net::TcpStream>,
    tokio::net::TcpListener,
) {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let l = sock.listen(1).unwrap();
    let addr = l.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..8 {
        if let Ok(Ok(s)) = tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(addr),
        )
        .await
        {
            fillers.push(s);
        }
    }
    (addr, fillers, l)
}

#[tokio::test]
async fn target_that_never_accepts_is_a_fast_504() {
    let (addr, _fillers, _l) = never_accepting().await;
    // The relay's deadline (limits.connect_timeout) fires first…
    let (relay, agent) = publish(
        addr,
        |c| c.limits.connect_timeout = Duration::from_secs(1),
        |_| {},
    )
    .await;
    let t0 = Instant::now();
    let r = send(&relay, false, "/").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    assert!(text(r).await.contains("did not answer within 1s"));
    agent.stop().await;
    relay.stop().await;
    // …or the agent's own connect_timeout, reported as a Timeout.
    let relay = public_relay().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", addr)
        .configure(|c| c.connect_timeout = Duration::from_millis(500))
        .start()
        .await;
    agent.connected().await;
    let t0 = Instant::now();
    let r = send(&relay, true, "/").await;
    assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
    assert!(text(r).await.contains("did not answer in time"));
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_slow_answer_is_not_a_timeout() {
    let nvr = Nvr::start().await;
    let (relay, agent) = publish(
        nvr.addr,
        |c| c.limits.connect_timeout = Duration::from_secs(1),
        |_| {},
    )
    .await;
    for h2 in [false, true] {
        let r = send(&relay, h2, "/slow?ms=2000").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(text(r).await, "slow answer");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn streamed_response_is_not_buffered() {
    let (relay, agent, nvr) = cam().await;
    for h2 in [false, true] {
        let mut body = send(&relay, h2, "/stream").await.into_body();
        // The first frame must arrive while the target still holds the second.
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first frame arrives without waiting for the rest")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "frame-1\n");
        nvr.release();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "frame-2\n");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn mjpeg_streams_and_a_stalled_viewer_holds_the_recorder_back() {
    let (relay, agent, nvr) = cam().await;
    for h2 in [false, true] {
        // 2000 frames of 32 KiB per second: 64 MiB/s if nothing pushed back.
        let r = send(&relay, h2, "/mjpeg?fps=2000&size=32768").await;
        assert_eq!(
            r.headers()["content-type"],
            format!("multipart/x-mixed-replace; boundary={}", nvr::BOUNDARY).as_str()
        );
        let mut body = r.into_body();
        let mut got = Vec::new();
        while got.len() < 256 * 1024 {
            let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
                .await
                .expect("frames keep coming")
                .unwrap()
                .unwrap();
            got.extend_from_slice(&f.into_data().unwrap());
        }
        assert!(got.starts_with(format!("--{}\r\n", nvr::BOUNDARY).as_bytes()));
        // Stop reading: the recorder's writes must block once the buffers on the way fill.
        let before = nvr.mjpeg_sent();
        tokio::time::sleep(Duration::from_secs(2)).await;
        let stalled = nvr.mjpeg_sent();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let later = nvr.mjpeg_sent();
        assert!(
            later - before < 32 << 20,
            "h2={h2}: the recorder wrote {} MiB to a viewer that stopped reading",
            (later - before) >> 20
        );
        assert!(
            later - stalled < 1 << 20,
            "h2={h2}: still writing ({} KiB in the last second)",
            (later - stalled) >> 10
        );
        drop(body);
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn sloppy_recorder_responses_pass_through() {
    let (relay, agent, _nvr) = cam().await;
    for h2 in [false, true] {
        let r = send(&relay, h2, "/sloppy/casing").await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        assert_eq!(r.headers()["content-type"], "text/plain");
        assert_eq!(r.headers()["x-camera-name"], "Front Door");
        assert_eq!(text(r).await, "casing body");

        let r = send(&relay, h2, "/sloppy/duplicate").await;
        let cookies: Vec<_> = r.headers().get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1; Path=/", "b=2; Path=/"], "h2={h2}");
        let dups: Vec<_> = r.headers().get_all("x-dup").iter().collect();
        assert_eq!(dups, ["one", "two"]);
        assert_eq!(text(r).await, "dup body!");

        let r = send(&relay, h2, "/sloppy/lf").await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        assert_eq!(r.headers()["x-line-ends"], "lf");
        assert_eq!(text(r).await, "lf body");

        let r = send(&relay, h2, "/sloppy/close").await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        assert_eq!(text(r).await, "body until the recorder closes");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn large_upload_and_download_with_checksums() {
    const N: usize = 32 << 20;
    let (relay, agent, _nvr) = cam().await;
    let data = Bytes::from(nvr::pattern(N));
    let sum = nvr::sha256_hex(&data);
    for h2 in [false, true] {
        let r = https_request(
            &relay,
            HOST,
            h2,
            request(HOST, h2, "POST", "/upload", data.clone()),
        )
        .await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        assert_eq!(text(r).await, format!("{N} {sum}"), "h2={h2}");

        let r = send(&relay, h2, &format!("/download?bytes={N}")).await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        assert_eq!(r.headers()["x-sha256"], sum.as_str());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body.len(), N, "h2={h2}");
        assert_eq!(nvr::sha256_hex(&body), sum, "h2={h2}");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn oversized_request_head_is_431() {
    let (relay, agent, _nvr) = cam().await;
    let with_headers = |h2: bool, kib: usize| {
        let mut r = request(HOST, h2, "GET", "/api/request", Bytes::new());
        for i in 0..kib / 4 {
            r.headers_mut().insert(
                http::HeaderName::from_bytes(format!("x-big-{i}").as_bytes()).unwrap(),
                http::HeaderValue::from_str(&"v".repeat(4096)).unwrap(),
            );
        }
        r
    };
    for h2 in [false, true] {
        // Under the 64 KiB default: passes.
        let r = https_request(&relay, HOST, h2, with_headers(h2, 48)).await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        // Over it: 431 with a page saying why.
        let r = https_request(&relay, HOST, h2, with_headers(h2, 72)).await;
        assert_eq!(
            r.status(),
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "h2={h2}"
        );
        assert!(text(r).await.contains("too large"));
    }
    // Far over it (past hyper's buffer): HTTP/1.1 still answers 431 before closing.
    let mut tls = tls_connect(&relay, HOST, b"http/1.1").await;
    let head = format!(
        "GET / HTTP/1.1\r\nHost: {HOST}\r\nX-Big: {}\r\n\r\n",
        "v".repeat(90 * 1024)
    );
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = tls.write_all(head.as_bytes()).await;
    let mut answer = vec![0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), tls.read(&mut answer))
        .await
        .expect("an answer")
        .unwrap_or(0);
    assert!(
        answer[..n].starts_with(b"HTTP/1.1 431"),
        "{:?}",
        String::from_utf8_lossy(&answer[..n])
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn private_by_default() {
    let nvr = Nvr::start().await;
    let relay = TestRelay::start().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", nvr.addr)
        .start()
        .await;
    agent.connected().await;
    let r = send(&relay, false, "/api/request").await;
    // Deny by default: a login is required (browsers are sent to the login page).
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/.periscope/login?next="));
    assert!(
        !text(r).await.contains("client_ip"),
        "nothing reached the recorder"
    );
    agent.stop().await;
    relay.stop().await;
}

async fn websocket(
    relay: &TestRelay,
    path: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>> {
    let tls = tls_connect(relay, HOST, b"http/1.1").await;
    let (ws, resp) = tokio_tungstenite::client_async(format!("wss://{HOST}{path}"), tls)
        .await
        .expect("websocket handshake through the relay");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    ws
}

async fn next_message<S>(ws: &mut S) -> Message
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    tokio::time::timeout(Duration::from_secs(5), ws.next())
        .await
        .expect("a message in time")
        .expect("open")
        .expect("no error")
}

#[tokio::test]
async fn websocket_echo_and_pushed_video_through_the_edge() {
    websocket_echo_and_video(TransportChoice::Quic).await
}

#[tokio::test]
async fn websocket_over_the_tcp_fallback() {
    websocket_echo_and_video(TransportChoice::Tcp).await
}

async fn websocket_echo_and_video(transport: TransportChoice) {
    let (relay, agent, _nvr) = cam_over(transport).await;
    let mut ws = websocket(&relay, "/ws/echo").await;
    for i in 0..3 {
        ws.send(Message::text(format!("frame {i}"))).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("frame {i}"))
        );
    }
    ws.send(Message::binary(vec![7u8; 100_000])).await.unwrap();
    assert_eq!(
        next_message(&mut ws).await,
        Message::binary(vec![7u8; 100_000])
    );
    let mut video = websocket(&relay, "/ws/video?fps=50").await;
    for i in 0..10 {
        assert_eq!(
            next_message(&mut video).await,
            Message::binary(format!("frame {i}").into_bytes())
        );
    }
    agent.stop().await;
    relay.stop().await;
}

/// Wait (up to `secs`) for the relay to close a WebSocket; true when it did.
async fn closed_within<S>(ws: &mut S, secs: u64) -> bool
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(_))) => {}
        }
    }
}

#[tokio::test]
async fn websocket_idle_timeout_spares_live_connections() {
    let nvr = Nvr::start().await;
    let (relay, agent) = publish(
        nvr.addr,
        |c| c.limits.idle_timeout = Duration::from_secs(1),
        |_| {},
    )
    .await;
    // Traffic one way only (pushed video) keeps it open well past the idle limit.
    let mut video = websocket(&relay, "/ws/video?fps=5").await;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        assert!(next_message(&mut video).await.is_binary());
    }
    // An echo socket with a message every 400 ms lives too…
    let mut ws = websocket(&relay, "/ws/echo").await;
    for i in 0..6 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        ws.send(Message::text(format!("ping {i}"))).await.unwrap();
        assert_eq!(
            next_message(&mut ws).await,
            Message::text(format!("ping {i}"))
        );
    }
    // …and is closed once silent for the limit.
    let silent = Instant::now();
    assert!(
        closed_within(&mut ws, 5).await,
        "silent WebSocket was not closed"
    );
    assert!(silent.elapsed() >= Duration::from_millis(900));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn agent_offline_is_a_502_that_says_since_when() {
    let (relay, agent, _nvr) = cam().await;
    agent.stop().await;
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        let r = send(&relay, false, "/").await;
        status = r.status();
        if status == StatusCode::BAD_GATEWAY {
            let body = text(r).await;
            assert!(body.contains("offline since 20"), "{body}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status, StatusCode::BAD_GATEWAY);
    relay.stop().await;
}

/// An HTTP/2 connection to the edge with SNI `sni`: one `SendRequest` for many requests.
async fn h2_connection(
    relay: &TestRelay,
    sni: &str,
) -> hyper::client::conn::http2::SendRequest<Full<Bytes>> {
    let tls = tls_connect(relay, sni, b"h2").await;
    let (send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    send
}

/// HTTP/2 lets a client reuse one connection for several names (coalescing). The edge checks
/// each request's `:authority` against the connection's SNI, so a second request on the same
/// connection for another *routed and public* hostname is a 421, not a way around the SNI,
/// and the connection keeps serving its own name.
#[tokio::test]
async fn http2_authority_is_checked_per_request_not_per_connection() {
    const NVR2: &str = "nvr.relay.localhost";
    let nvr = Nvr::start().await;
    let relay = public_relay_with(|c| c.access.push(relay::config::AccessRule::public(NVR2))).await;
    let mut agent = AgentBuilder::new(&relay, &relay.token_hosts("cam", &[HOST, NVR2]))
        .http("cam", nvr.addr)
        .http("nvr", nvr.addr)
        .start()
        .await;
    agent.connected().await;
    let mut h2 = h2_connection(&relay, HOST).await;
    let mut ask = async |authority: &str| {
        let req = request(authority, true, "GET", "/api/request", Bytes::new());
        let r = h2.send_request(req).await.unwrap();
        assert_eq!(r.version(), http::Version::HTTP_2);
        let status = r.status();
        (status, text(r).await)
    };
    let (status, body) = ask(HOST).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = ask(NVR2).await;
    assert_eq!(
        status,
        StatusCode::MISDIRECTED_REQUEST,
        "second request, other authority on the same connection: {body}"
    );
    assert!(!body.contains("client_ip"), "reached the recorder: {body}");
    let (status, _) = ask(HOST).await;
    assert_eq!(
        status,
        StatusCode::OK,
        "the connection still serves its own name"
    );
    // The other name is routed: on a connection of its own it answers.
    let mut other = h2_connection(&relay, NVR2).await;
    let r = other
        .send_request(request(NVR2, true, "GET", "/api/request", Bytes::new()))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    agent.stop().await;
    relay.stop().await;
}

/// An http tunnel with an explicit `hostname` (outside `NAME.DOMAIN`, with case and a
/// trailing dot to normalise) is routed when the token's `hosts` allow it; a token that does
/// not allow it gets the agent refused with a reason naming the hostname, and nothing is
/// routed there.
#[tokio::test]
async fn explicit_hostnames_are_routed_only_when_the_token_allows_them() {
    const NAME: &str = "cameras.home.test";
    let nvr = Nvr::start().await;
    let relay = public_relay_with(|c| c.access.push(relay::config::AccessRule::public(NAME))).await;
    let mut agent = AgentBuilder::new(&relay, &relay.token_hosts("cam", &["*.home.test"]))
        .http("cam", nvr.addr)
        .tunnel(|t| t.hostname = Some("Cameras.Home.Test.".into()))
        .start()
        .await;
    let agent::Status::Connected { public, .. } = agent.connected().await else {
        unreachable!()
    };
    assert_eq!(
        public[0].1,
        format!("https://{NAME}:{}", relay.https.port())
    );
    let r = https_request(&relay, NAME, true, get(NAME, "/api/request")).await;
    assert_eq!(r.status(), StatusCode::OK);
    let s: serde_json::Value = serde_json::from_str(&text(r).await).unwrap();
    assert_eq!(s["host"], NAME);
    // Not also published under NAME.DOMAIN.
    let r = https_request(&relay, HOST, false, get(HOST, "/")).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    agent.stop().await;
    relay.stop().await;

    // The token allows only cam.relay.localhost: the explicit hostname is refused.
    let relay = public_relay_with(|c| c.access.push(relay::config::AccessRule::public(NAME))).await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", nvr.addr)
        .tunnel(|t| t.hostname = Some(NAME.into()))
        .start()
        .await;
    let s = agent
        .wait_for("rejected", |s| matches!(s, agent::Status::Rejected { .. }))
        .await;
    let agent::Status::Rejected { reason, detail } = s else {
        unreachable!()
    };
    assert_eq!(reason, proto::RejectReason::HostnameNotAllowed);
    assert!(
        detail.contains(NAME) && detail.contains("not in the token"),
        "{detail}"
    );
    // Nothing claimed the name: the development CA signed nothing for it (the relay answers
    // with its own self-signed certificate, which a client trusting the CA refuses), unlike
    // the routed case above.
    let err = tls_handshake_error(&relay, NAME).await;
    assert!(err.contains("UnknownIssuer"), "{err}");
    agent.stop().await;
    relay.stop().await;
}

/// A TLS handshake with the edge for `sni`, trusting the development CA, that must fail; why.
async fn tls_handshake_error(relay: &TestRelay, sni: &str) -> String {
    use tokio_rustls::rustls;
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(relay.data_dir().join("dev-ca.crt")).unwrap();
    roots
        .add(rustls::pki_types::CertificateDer::from(
            pem::parse(pem).unwrap().into_contents(),
        ))
        .unwrap();
    let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(relay.https).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from(sni.to_string()).unwrap();
    match tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg))
        .connect(name, tcp)
        .await
    {
        Ok(_) => panic!("{sni}: the relay has a certificate for it"),
        Err(e) => format!("{e:?}"),
    }
}

/// Send raw bytes on `stream`, return what comes back until the peer closes (5 s at most).
async fn raw_exchange<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin>(
    mut stream: S,
    bytes: &[u8],
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    stream.write_all(bytes).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).to_string()
}

/// Two Host headers (different, or the same twice) written by hand on a real TLS connection
/// to the edge, and on the plain-HTTP listener, are a 400: never routed, never redirected.
#[tokio::test]
async fn duplicate_host_headers_are_refused() {
    let (relay, agent, _nvr) = cam().await;
    for second in ["other.relay.localhost", HOST] {
        let head = format!(
            "GET /api/request HTTP/1.1\r\nHost: {HOST}\r\nHost: {second}\r\nConnection: close\r\n\r\n"
        );
        let tls = tls_connect(&relay, HOST, b"http/1.1").await;
        let r = raw_exchange(tls, head.as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "https, Host twice ({second}): {r}"
        );
        assert!(!r.contains("client_ip"), "{r}");
        let tcp = tokio::net::TcpStream::connect(relay.http).await.unwrap();
        let r = raw_exchange(tcp, head.as_bytes()).await;
        assert!(
            r.starts_with("HTTP/1.1 400"),
            "http, Host twice ({second}): {r}"
        );
        assert!(!r.to_ascii_lowercase().contains("location:"), "{r}");
    }
    // The same request with one Host header is fine.
    let head = format!("GET /api/request HTTP/1.1\r\nHost: {HOST}\r\nConnection: close\r\n\r\n");
    let r = raw_exchange(
        tls_connect(&relay, HOST, b"http/1.1").await,
        head.as_bytes(),
    )
    .await;
    assert!(
        r.starts_with("HTTP/1.1 200") && r.contains("client_ip"),
        "{r}"
    );
    agent.stop().await;
    relay.stop().await;
}

/// A 16-camera grid over HTTP/2: 16 endless MJPEG streams at once on ONE connection (HTTP/1.1
/// browsers stop at 6 per host), every tile receiving frames.
#[tokio::test]
async fn sixteen_mjpeg_tiles_on_one_http2_connection() {
    let (relay, agent, nvr) = cam().await;
    let h2 = h2_connection(&relay, HOST).await;
    let boundary = format!("--{}\r\n", nvr::BOUNDARY);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<usize>(16);
    let release = std::sync::Arc::new(tokio::sync::Notify::new());
    let mut tiles = Vec::new();
    for tile in 0..16 {
        let mut h2 = h2.clone();
        let tx = tx.clone();
        let boundary = boundary.clone();
        let release = release.clone();
        tiles.push(tokio::spawn(async move {
            let req = request(HOST, true, "GET", "/mjpeg?fps=20&size=4096", Bytes::new());
            let r = h2.send_request(req).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK, "tile {tile}");
            let mut body = r.into_body();
            let mut got = Vec::new();
            // Five frames each, then keep the stream open until every tile has them.
            while got
                .windows(boundary.len())
                .filter(|w| *w == boundary.as_bytes())
                .count()
                < 5
            {
                let f = body.frame().await.expect("stream ended").unwrap();
                if let Ok(d) = f.into_data() {
                    got.extend_from_slice(&d);
                }
            }
            tx.send(tile).await.unwrap();
            release.notified().await;
            drop(body);
        }));
    }
    drop(tx);
    let mut done = std::collections::BTreeSet::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    while done.len() < 16 {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(t)) => {
                done.insert(t);
            }
            _ => panic!("only tiles {done:?} received 5 frames within 15 s"),
        }
    }
    // All 16 streams were open at once on the one connection.
    assert!(
        nvr.connections() >= 16,
        "recorder connections: {}",
        nvr.connections()
    );
    release.notify_waiters();
    for t in tiles {
        t.await.unwrap();
    }
    agent.stop().await;
    relay.stop().await;
}

/// Server-sent events pass one by one: each event reaches the visitor before the recorder has
/// written the next (no buffering for `text/event-stream`), over HTTP/1.1 and HTTP/2.
#[tokio::test]
async fn server_sent_events_arrive_one_by_one() {
    let (relay, agent, nvr) = cam().await;
    for h2 in [false, true] {
        let before = nvr.events_written();
        let r = send(&relay, h2, "/events?ms=1000&n=3").await;
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()["content-type"], "text/event-stream");
        let mut body = r.into_body();
        let mut got = String::new();
        for i in 1..=3u64 {
            let want = format!("id: {i}\ndata: event {i}\n\n");
            while !got.ends_with(&want) {
                let f = tokio::time::timeout(Duration::from_secs(5), body.frame())
                    .await
                    .unwrap_or_else(|_| panic!("h2={h2}: event {i} did not arrive: {got:?}"))
                    .expect("stream ended")
                    .unwrap();
                if let Ok(d) = f.into_data() {
                    got.push_str(std::str::from_utf8(&d).unwrap());
                }
            }
            assert_eq!(
                nvr.events_written() - before,
                i,
                "h2={h2}: event {i} arrived only after the recorder wrote the next"
            );
        }
        assert!(body.collect().await.unwrap().to_bytes().is_empty());
    }
    agent.stop().await;
    relay.stop().await;
}

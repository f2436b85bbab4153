//! `periscope demo`: relay + agent + test camera started through the library, then used the
//! way a browser would, through the relay's HTTPS edge.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use periscope::demo::{self, Demo, DemoOptions};
use tokio_tungstenite::tungstenite::Message;
use tokio_util::sync::CancellationToken;

use crate::common::*;

/// `relay.localhost`: webpki refuses a certificate for `*.localhost`, which is what the
/// command's default domain would give.
async fn start_demo() -> (Demo, CancellationToken) {
    trace();
    let shutdown = CancellationToken::new();
    let demo = demo::start(
        DemoOptions {
            https_port: Some(0),
            domain: "relay.localhost".into(),
        },
        shutdown.clone(),
    )
    .await
    .unwrap();
    (demo, shutdown)
}

/// HTTP Basic credentials of the demo user (the rule allows them, for curl).
fn basic(demo: &Demo) -> String {
    use base64::Engine;
    let pair = format!("{}:{}", demo::USER, demo.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    )
}

fn get(demo: &Demo, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", &demo.host)
        .header("authorization", basic(demo))
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Split complete `Content-Length`-framed parts off the front of a multipart buffer.
fn take_parts(buf: &mut Vec<u8>, parts: &mut Vec<Vec<u8>>) {
    loop {
        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
            return;
        };
        let head = String::from_utf8_lossy(&buf[..end]).to_string();
        assert!(head.starts_with("--periscopeframe\r\n"), "{head}");
        assert!(head.contains("Content-Type: image/jpeg"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .expect("Content-Length")
            .trim()
            .parse()
            .unwrap();
        let start = end + 4;
        if buf.len() < start + len + 2 {
            return;
        }
        parts.push(buf[start..start + len].to_vec());
        assert_eq!(&buf[start + len..start + len + 2], b"\r\n");
        buf.drain(..start + len + 2);
    }
}

#[tokio::test]
async fn demo_serves_page_mjpeg_websocket_and_udp_echo() {
    let (demo, _shutdown) = start_demo().await;
    let port = demo.https.port();
    assert_eq!(demo.url, format!("https://cam.relay.localhost:{port}"));
    let banner = demo.banner();
    assert!(banner.contains(&demo.url), "{banner}");
    assert!(
        banner.contains(&format!(
            "curl -k -u demo:{pw} --resolve cam.relay.localhost:{port}:127.0.0.1 https://cam.relay.localhost:{port}/",
            pw = demo.password
        )),
        "{banner}"
    );
    assert!(
        banner.contains(&format!("login   demo / {}", demo.password)),
        "{banner}"
    );
    assert!(banner.contains(&demo.share_url), "{banner}");
    assert!(banner.contains("Ctrl-C"), "{banner}");
    // The status link carries a working admin token.
    assert!(banner.contains(&demo.admin_url), "{banner}");
    let (addr, token) = demo
        .admin_url
        .strip_prefix("http://")
        .and_then(|s| s.split_once("/#"))
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tcp))
        .await
        .unwrap();
    tokio::spawn(conn);
    let resp = send
        .send_request(
            Request::get("/api/agents")
                .header("host", addr)
                .header("authorization", format!("Bearer {token}"))
                .body(http_body_util::Empty::<Bytes>::new())
                .unwrap(),
        )
        .await
        .unwrap();
    let agents = BodyExt::collect(resp.into_body()).await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&agents).contains(r#""name":"demo""#),
        "{agents:?}"
    );

    // Private like a real relay: a browser without a session goes to the login page.
    let edge = |h2: bool, req: Request<Full<Bytes>>| {
        https_request_to(
            demo.https,
            std::slice::from_ref(&demo.cert_file),
            &demo.host,
            h2,
            req,
        )
    };
    let page = |auth: Option<String>| {
        let mut b = Request::builder()
            .uri(format!("https://{}/", demo.host))
            .header("accept", "text/html");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    };
    let resp = edge(true, page(None)).await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    assert!(resp.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/.periscope/login"));
    // The share link opens it without a login (a session cookie for this hostname).
    let share_path = demo.share_url.strip_prefix(&demo.url).unwrap().to_string();
    let resp = edge(
        false,
        Request::builder()
            .uri(share_path)
            .header("host", &demo.host)
            .body(Full::new(Bytes::new()))
            .unwrap(),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::SEE_OTHER);
    let cookie = resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .split(';')
        .next()
        .unwrap()
        .to_string();
    let mut req = page(None);
    req.headers_mut().insert("cookie", cookie.parse().unwrap());
    assert_eq!(edge(true, req).await.status(), StatusCode::OK);

    // The page with the demo login, over HTTP/2 as a browser would.
    let resp = edge(true, page(Some(basic(&demo)))).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let page = resp.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&page);
    assert!(page.contains(r#"src="/mjpeg""#), "{page}");
    assert!(page.contains("/ws"), "{page}");

    // Two MJPEG frames, through the relay (HTTP/1.1).
    let resp = https_request_to(
        demo.https,
        std::slice::from_ref(&demo.cert_file),
        &demo.host,
        false,
        get(&demo, "/mjpeg"),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert_eq!(ct, "multipart/x-mixed-replace; boundary=periscopeframe");
    let mut body = resp.into_body();
    let (mut buf, mut parts) = (Vec::new(), Vec::new());
    tokio::time::timeout(Duration::from_secs(10), async {
        while parts.len() < 2 {
            let frame = body.frame().await.expect("stream ended").unwrap();
            if let Ok(data) = frame.into_data() {
                buf.extend_from_slice(&data);
                take_parts(&mut buf, &mut parts);
            }
        }
    })
    .await
    .expect("two MJPEG frames within 10 s");
    for jpeg in &parts {
        assert_eq!(&jpeg[..2], &[0xFF, 0xD8], "SOI");
        assert_eq!(&jpeg[jpeg.len() - 2..], &[0xFF, 0xD9], "EOI");
    }
    assert_ne!(parts[0], parts[1], "the picture moves");
    drop(body);

    // The frame counter over a WebSocket, through the relay.
    let tls = tls_connect_to(
        demo.https,
        std::slice::from_ref(&demo.cert_file),
        &demo.host,
        b"http/1.1",
    )
    .await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(
        format!("wss://{}:{port}/ws", demo.host),
    )
    .unwrap();
    req.headers_mut()
        .insert("authorization", basic(&demo).parse().unwrap());
    let (mut ws, resp) = tokio_tungstenite::client_async(req, tls).await.unwrap();
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    let mut counters = Vec::new();
    while counters.len() < 2 {
        let msg = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .expect("a counter within 5 s")
            .expect("websocket open")
            .unwrap();
        if let Message::Text(t) = msg {
            counters.push(t.as_str().parse::<u64>().unwrap());
        }
    }
    assert!(counters[0] < counters[1], "{counters:?}");

    // The UDP echo through the relay's udp tunnel.
    let udp = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    udp.send_to(b"hello camera", demo.udp).await.unwrap();
    let mut b = [0u8; 64];
    let (n, from) = tokio::time::timeout(Duration::from_secs(5), udp.recv_from(&mut b))
        .await
        .unwrap()
        .unwrap();
    assert_eq!((&b[..n], from), (&b"hello camera"[..], demo.udp));

    // Stop while the WebSocket is open: everything ends quickly, the edge is gone.
    let https = demo.https;
    tokio::time::timeout(Duration::from_secs(10), demo.stop())
        .await
        .expect("the demo stops within 10 s");
    assert!(tokio::net::TcpStream::connect(https).await.is_err());
}

#[tokio::test]
async fn demo_on_a_busy_port_is_an_error() {
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = busy.local_addr().unwrap().port();
    let err = demo::start(
        DemoOptions {
            https_port: Some(port),
            domain: "relay.localhost".into(),
        },
        CancellationToken::new(),
    )
    .await
    .unwrap_err();
    assert!(format!("{err:#}").contains("cannot listen on"), "{err:#}");
}

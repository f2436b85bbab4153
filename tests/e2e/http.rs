//! The HTTPS edge: HTTP/1.1 and HTTP/2 through the tunnel, routing rules, streaming.

use std::{sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};

use crate::common::*;

/// A relay whose `cam.relay.localhost` is public.
async fn public_relay() -> TestRelay {
    TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"))
    })
    .await
}

async fn cam() -> (TestRelay, TestAgent, Arc<tokio::sync::Notify>) {
    let release = Arc::new(tokio::sync::Notify::new());
    let target = http_target(release.clone()).await;
    let relay = public_relay().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    let s = agent.connected().await;
    let agent::Status::Connected { public, .. } = s else {
        unreachable!()
    };
    assert_eq!(
        public[0].1,
        format!("https://cam.relay.localhost:{}", relay.https.port())
    );
    (relay, agent, release)
}

fn get(host: &str, path: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .uri(path)
        .header("host", host)
        .header("x-forwarded-for", "10.9.9.9")
        .body(Full::new(Bytes::new()))
        .unwrap()
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

#[tokio::test]
async fn get_over_http1_and_http2_with_forwarded_headers() {
    let (relay, agent, _) = cam().await;
    for h2 in [false, true] {
        let req = if h2 {
            Request::builder()
                .uri("https://cam.relay.localhost/headers")
                .header("x-forwarded-for", "10.9.9.9")
                .body(Full::new(Bytes::new()))
                .unwrap()
        } else {
            get("cam.relay.localhost", "/headers")
        };
        let resp = https_request(&relay, "cam.relay.localhost", h2, req).await;
        assert_eq!(resp.status(), StatusCode::OK, "h2={h2}");
        let body = text(resp).await;
        assert!(
            body.contains("x-forwarded-for: 127.0.0.1\n"),
            "h2={h2}: {body}"
        );
        assert!(
            !body.contains("10.9.9.9"),
            "visitor's own X-Forwarded-For must not pass: {body}"
        );
        assert!(body.contains("x-forwarded-proto: https\n"), "{body}");
        assert!(body.contains("host: cam.relay.localhost\n"), "{body}");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn unknown_host_is_404_and_sni_mismatch_is_421() {
    let (relay, agent, _) = cam().await;
    let r = https_request(
        &relay,
        "nothing.relay.localhost",
        false,
        get("nothing.relay.localhost", "/"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    // TLS for cam.relay.localhost, request for another host on the same connection.
    let r = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        get("other.relay.localhost", "/"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::MISDIRECTED_REQUEST);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn dead_target_is_a_fast_502() {
    let relay = public_relay().await;
    let dead = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", dead)
        .start()
        .await;
    agent.connected().await;
    let t0 = std::time::Instant::now();
    let r = https_request(
        &relay,
        "cam.relay.localhost",
        true,
        get("cam.relay.localhost", "/"),
    )
    .await;
    assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
    assert!(t0.elapsed() < Duration::from_secs(2));
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn streamed_response_is_not_buffered() {
    let (relay, agent, release) = cam().await;
    for h2 in [false, true] {
        let resp = https_request(
            &relay,
            "cam.relay.localhost",
            h2,
            get("cam.relay.localhost", "/stream"),
        )
        .await;
        let mut body = resp.into_body();
        // The first frame must arrive while the target still holds the second.
        let first = tokio::time::timeout(Duration::from_secs(5), body.frame())
            .await
            .expect("first frame arrives without waiting for the rest")
            .unwrap()
            .unwrap();
        assert_eq!(first.into_data().unwrap(), "frame-1\n");
        release.notify_one();
        let rest = body.collect().await.unwrap().to_bytes();
        assert_eq!(rest, "frame-2\n");
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn private_by_default() {
    let release = Arc::new(tokio::sync::Notify::new());
    let target = http_target(release).await;
    let relay = TestRelay::start().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    let r = https_request(
        &relay,
        "cam.relay.localhost",
        false,
        get("cam.relay.localhost", "/headers"),
    )
    .await;
    // Deny by default: a login is required (browsers are sent to the login page).
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()["location"]
        .to_str()
        .unwrap()
        .starts_with("/.periscope/login?next="));
    assert!(
        !text(r).await.contains("x-forwarded-for"),
        "nothing reached the recorder"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn websocket_through_the_edge() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let target = tcp_server(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
    .await;
    let relay = public_relay().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    let tls = tls_connect(&relay, "cam.relay.localhost", b"http/1.1").await;
    let (mut ws, resp) = tokio_tungstenite::client_async("wss://cam.relay.localhost/live", tls)
        .await
        .expect("websocket handshake through the relay");
    assert_eq!(resp.status(), StatusCode::SWITCHING_PROTOCOLS);
    for i in 0..3 {
        ws.send(Message::text(format!("frame {i}"))).await.unwrap();
        let back = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back, Message::text(format!("frame {i}")));
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn agent_offline_is_a_502_that_says_since_when() {
    let (relay, agent, _) = cam().await;
    agent.stop().await;
    let mut status = StatusCode::OK;
    for _ in 0..100 {
        let r = https_request(
            &relay,
            "cam.relay.localhost",
            false,
            get("cam.relay.localhost", "/"),
        )
        .await;
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

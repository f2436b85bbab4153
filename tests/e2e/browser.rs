//! Interop with a real browser: headless Chromium (Debian `chromium`) logs in on a protected
//! hostname, then loads the fake recorder's page, its MJPEG picture and its WebSocket through
//! the relay. Driven over the DevTools protocol. `#[ignore]`d: needs Chromium; run by
//! tests/interop.sh (`cargo test --test e2e browser:: -- --ignored`).

use std::{path::PathBuf, process::Stdio, time::Duration};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use crate::common::*;

fn chromium() -> Option<PathBuf> {
    ["chromium", "chromium-browser", "google-chrome"]
        .iter()
        .find_map(|name| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|d| d.join(name))
                    .find(|p| p.is_file())
            })
        })
}

/// A DevTools session on one page.
struct Page {
    ws: tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>,
    next: u64,
}

impl Page {
    async fn call(&mut self, method: &str, params: serde_json::Value) -> serde_json::Value {
        self.next += 1;
        let id = self.next;
        let msg = serde_json::json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string())).await.unwrap();
        loop {
            let m = tokio::time::timeout(Duration::from_secs(20), self.ws.next())
                .await
                .expect("DevTools answer")
                .unwrap()
                .unwrap();
            let Ok(text) = m.to_text() else { continue };
            let v: serde_json::Value = serde_json::from_str(text).unwrap();
            if v["id"] == id {
                return v;
            }
        }
    }

    /// Evaluate `expr` in the page; its value as JSON.
    async fn eval(&mut self, expr: &str) -> serde_json::Value {
        let r = self
            .call(
                "Runtime.evaluate",
                serde_json::json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        r["result"]["result"]["value"].clone()
    }

    /// Poll `expr` until it is true (20 s at most).
    async fn until(&mut self, expr: &str, what: &str) {
        eprintln!("browser: waiting for {what}");
        for _ in 0..200 {
            if self.eval(expr).await == serde_json::Value::Bool(true) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let state = self
            .eval("location.href + ' | ' + document.body.innerText.slice(0, 300)")
            .await;
        panic!("browser never reached `{what}`; page: {state}");
    }
}

/// GET a DevTools HTTP endpoint (it keeps the connection open: read by Content-Length).
async fn devtools_get(port: u16, path: &str) -> String {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return String::new();
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return String::new();
    }
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_secs(2), s.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => return String::new(),
        };
        buf.extend_from_slice(&chunk[..n]);
        let text = String::from_utf8_lossy(&buf).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let len = head
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())
                        .flatten()
                })
                .unwrap_or(0);
            if body.len() >= len {
                return body.to_string();
            }
        }
    }
}

/// Start headless Chromium and attach to its page over DevTools.
async fn launch(browser: &std::path::Path) -> (tokio::process::Child, tempfile::TempDir, Page) {
    let profile = tempfile::tempdir().unwrap();
    let child = tokio::process::Command::new(browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--ignore-certificate-errors",
            "--remote-debugging-port=0",
            "--remote-allow-origins=*",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    eprintln!("browser: started");
    // Chromium creates DevToolsActivePort before it writes the port into it: wait for a
    // port that parses, not for the file.
    let port_file = profile.path().join("DevToolsActivePort");
    let devtools_port = || -> Option<u16> {
        std::fs::read_to_string(&port_file)
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    };
    assert_eventually!(
        devtools_port().is_some(),
        30,
        "Chromium did not start its DevTools"
    );
    let port = devtools_port().expect("DevTools port");
    let mut list = serde_json::Value::Null;
    for _ in 0..100 {
        if let Ok(v @ serde_json::Value::Array(_)) =
            serde_json::from_str(&devtools_get(port, "/json/list").await)
        {
            list = v;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let url = list
        .as_array()
        .expect("the DevTools target list")
        .iter()
        .find(|t| t["type"] == "page")
        .expect("a page target")["webSocketDebuggerUrl"]
        .as_str()
        .unwrap()
        .to_string();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    let (ws, _) = tokio_tungstenite::client_async(url, tcp).await.unwrap();
    (child, profile, Page { ws, next: 0 })
}

#[tokio::test]
#[ignore = "needs Chromium; run by tests/interop.sh"]
async fn chromium_logs_in_then_sees_the_recorder_page_picture_and_websocket() {
    let Some(browser) = chromium() else {
        panic!("chromium not found (apt-get install chromium)");
    };
    let relay = TestRelay::start_configured(|c| {
        with_users(c, &[("alice", "alice-password", &[])]);
    })
    .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let camera = periscope::camera::Camera::start(shutdown.clone())
        .await
        .unwrap();
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", camera.http_addr())
        .start()
        .await;
    agent.connected().await;

    let (mut child, _profile, mut page) = launch(&browser).await;

    let site = format!("https://cam.relay.localhost:{}/", relay.https.port());
    page.call("Page.navigate", serde_json::json!({ "url": site }))
        .await;
    page.until(
        "location.pathname === '/.periscope/login' && !!document.getElementById('p')",
        "the login page",
    )
    .await;
    page.eval(
        "document.getElementById('u').value = 'alice';\
         document.getElementById('p').value = 'alice-password';\
         document.querySelector('form').submit(); true",
    )
    .await;
    page.until(
        "location.pathname === '/' && document.title.length > 0 && !!document.getElementById('ws')",
        "the recorder's page after login",
    )
    .await;
    // HttpOnly: scripts on the page never see the session cookie.
    assert_eq!(
        page.eval("document.cookie.includes('periscope')").await,
        false
    );
    page.until(
        "document.querySelector('img').complete && document.querySelector('img').naturalWidth > 0",
        "the MJPEG picture",
    )
    .await;
    page.until(
        "document.getElementById('ws').textContent.startsWith('WebSocket: frame')",
        "frames over the WebSocket",
    )
    .await;
    // Logout, and the page is private again.
    page.call(
        "Page.navigate",
        serde_json::json!({ "url": format!("{site}.periscope/logout") }),
    )
    .await;
    page.until(
        "location.pathname === '/.periscope/login'",
        "the login page after logout",
    )
    .await;
    page.call("Page.navigate", serde_json::json!({ "url": site }))
        .await;
    page.until(
        "location.pathname === '/.periscope/login'",
        "login required again",
    )
    .await;

    let _ = child.kill().await;
    shutdown.cancel();
    agent.stop().await;
    relay.stop().await;
}

/// Save a DevTools screenshot (base64 PNG) to `target/` (the CI artifact) and, with
/// `PERISCOPE_UPDATE_DOCS=1`, to `docs/` (the README's picture).
async fn screenshot(page: &mut Page, name: &str) {
    use base64::Engine as _;
    let shot = page
        .call(
            "Page.captureScreenshot",
            serde_json::json!({"format": "png", "captureBeyondViewport": true}),
        )
        .await;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["result"]["data"].as_str().expect("screenshot data"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG"), "a PNG");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![root.join("target")];
    if std::env::var_os("PERISCOPE_UPDATE_DOCS").is_some() {
        dirs.push(root.join("docs"));
    }
    for d in dirs {
        std::fs::create_dir_all(&d).unwrap();
        std::fs::write(d.join(name), &png).unwrap();
        eprintln!("browser: screenshot {}", d.join(name).display());
    }
}

#[tokio::test]
#[ignore = "needs Chromium; run by tests/interop.sh"]
async fn chromium_status_page_shows_and_closes_a_live_mjpeg_stream() {
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    let Some(browser) = chromium() else {
        panic!("chromium not found (apt-get install chromium)");
    };
    let relay = TestRelay::start_configured(|c| {
        c.access
            .push(relay::config::AccessRule::public("cam.relay.localhost"));
    })
    .await;
    let shutdown = tokio_util::sync::CancellationToken::new();
    let camera = periscope::camera::Camera::start(shutdown.clone())
        .await
        .unwrap();
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", camera.http_addr())
        .start()
        .await;
    agent.connected().await;
    // A ban to show, and a live MJPEG stream held open while the browser looks.
    let (code, _) = admin_call(
        &relay,
        "POST",
        "/api/bans",
        Some(&relay.admin_token),
        r#"{"ip":"203.0.113.9","duration":"1h"}"#,
    )
    .await;
    assert_eq!(code, http::StatusCode::NO_CONTENT);
    let req = http::Request::builder()
        .uri("/mjpeg")
        .header("host", "cam.relay.localhost")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = https_request(&relay, "cam.relay.localhost", false, req).await;
    assert_eq!(resp.status(), http::StatusCode::OK);
    let mut stream = resp.into_body();
    let (frames_tx, mut frames_rx) = tokio::sync::mpsc::unbounded_channel();
    let reader = tokio::spawn(async move {
        while let Some(Ok(f)) = stream.frame().await {
            if f.is_data() && frames_tx.send(()).is_err() {
                break;
            }
        }
        // The end of the stream, as the visitor sees it.
    });
    frames_rx.recv().await.expect("the stream flows");

    let (mut child, _profile, mut page) = launch(&browser).await;
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 1100, "height": 900, "deviceScaleFactor": 1, "mobile": false}),
    )
    .await;
    let url = format!("http://{}/#{}", relay.admin, relay.admin_token);
    page.call("Page.navigate", serde_json::json!({ "url": url }))
        .await;
    let rows = |table: &str| format!("document.querySelectorAll('#{table} tbody tr').length");
    page.until(
        "[...document.querySelectorAll('#conns tbody td.path')].some(td => td.textContent === 'cam.relay.localhost/mjpeg')",
        "the MJPEG stream in the connections table",
    )
    .await;
    page.until(
        "document.querySelector('#conns tbody tr').textContent.includes('Mbit/s') || document.querySelector('#conns tbody tr').textContent.includes('kbit/s')",
        "its bit rate",
    )
    .await;
    page.until(
        "document.querySelector('#agents tbody').textContent.includes('cam') && document.querySelector('#agents tbody').textContent.includes('healthy')",
        "the agent with its health",
    )
    .await;
    page.until(
        &format!(
            "!!document.querySelector('#tunnels a[href=\"https://cam.relay.localhost:{}\"]')",
            relay.https.port()
        ),
        "the tunnel's URL",
    )
    .await;
    page.until(
        "document.querySelector('#bans tbody').textContent.includes('203.0.113.9')",
        "the ban",
    )
    .await;
    assert_eq!(page.eval(&rows("conns")).await, 1);
    assert_eq!(
        page.eval("document.getElementById('state').className")
            .await,
        "ok"
    );
    // No third-party assets: everything came from the admin listener.
    assert_eq!(
        page.eval("performance.getEntriesByType('resource').filter(r => !r.name.startsWith(location.origin)).length")
            .await,
        0
    );
    screenshot(&mut page, "status-page.png").await;
    // On a phone: the page itself does not scroll sideways (tables scroll in their boxes).
    page.call(
        "Emulation.setDeviceMetricsOverride",
        serde_json::json!({"width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": true}),
    )
    .await;
    page.until(
        "document.documentElement.scrollWidth <= window.innerWidth + 1",
        "no sideways scrolling on a phone",
    )
    .await;
    screenshot(&mut page, "status-page-phone.png").await;
    // The close button ends the stream for its viewer.
    page.eval("document.querySelector('#conns button[data-close]').click(); true")
        .await;
    tokio::time::timeout(Duration::from_secs(10), reader)
        .await
        .expect("the closed stream ended for the visitor")
        .unwrap();
    page.until(
        "document.querySelector('#conns tbody').textContent.includes('no live connections')",
        "the row gone after close",
    )
    .await;

    let _ = child.kill().await;
    shutdown.cancel();
    agent.stop().await;
    relay.stop().await;
}

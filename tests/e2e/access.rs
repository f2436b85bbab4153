//! Edge access control: deny by default, logins, sessions per hostname, bans, share links,
//! IP rules, rate limits, and raw ports unlocked by a web login.

use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use relay::{config::AccessRule, RelayConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::common::*;

const CAM: &str = "cam.relay.localhost";
const DOOR: &str = "door.relay.localhost";

/// A relay with users alice (any host) and bob (door only), `f` adjusting the config, and
/// agents `cam` and `door` each publishing the header-echoing fake recorder.
async fn setup(f: impl FnOnce(&mut RelayConfig)) -> (TestRelay, Vec<TestAgent>) {
    let relay = TestRelay::start_configured(|c| {
        with_users(
            c,
            &[
                ("alice", "alice-password", &[]),
                ("bob", "bob-password", &[DOOR]),
            ],
        );
        f(c);
    })
    .await;
    let target = Nvr::start().await.addr;
    let mut agents = Vec::new();
    for name in ["cam", "door"] {
        let mut a = AgentBuilder::new(&relay, &relay.token(name, &[]))
            .http(name, target)
            .start()
            .await;
        a.connected().await;
        agents.push(a);
    }
    (relay, agents)
}

async fn stop(relay: TestRelay, agents: Vec<TestAgent>) {
    for a in agents {
        a.stop().await;
    }
    relay.stop().await;
}

fn request(
    method: Method,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", host);
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

async fn send(
    relay: &TestRelay,
    host: &str,
    req: Request<Full<Bytes>>,
) -> http::Response<hyper::body::Incoming> {
    https_request(relay, host, false, req).await
}

async fn get(
    relay: &TestRelay,
    host: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> http::Response<hyper::body::Incoming> {
    send(relay, host, request(Method::GET, host, path, headers)).await
}

async fn text(resp: http::Response<hyper::body::Incoming>) -> String {
    String::from_utf8_lossy(&resp.into_body().collect().await.unwrap().to_bytes()).into_owned()
}

fn origin(relay: &TestRelay, host: &str) -> String {
    format!("https://{host}:{}", relay.https.port())
}

/// POST the login form; returns the response.
async fn login_as(
    relay: &TestRelay,
    host: &str,
    user: &str,
    password: &str,
    next: &str,
) -> http::Response<hyper::body::Incoming> {
    let body = format!("user={user}&password={password}&next={next}");
    let req = Request::builder()
        .method(Method::POST)
        .uri("/.periscope/login")
        .header("host", host)
        .header("origin", origin(relay, host))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    send(relay, host, req).await
}

/// Log in and return the `name=value` of the session cookie.
async fn session_cookie(relay: &TestRelay, host: &str, user: &str, password: &str) -> String {
    let r = login_as(relay, host, user, password, "/").await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "login as {user} on {host}"
    );
    cookie_of(&r)
}

fn cookie_of(r: &http::Response<hyper::body::Incoming>) -> String {
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    set.split(';').next().unwrap().to_string()
}

const BROWSER: (&str, &str) = ("accept", "text/html,application/xhtml+xml,*/*;q=0.8");

#[tokio::test]
async fn browsers_go_to_login_and_api_clients_get_401() {
    let (relay, agents) = setup(|_| {}).await;
    let r = get(&relay, CAM, "/headers?x=1", &[BROWSER]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[header::LOCATION],
        "/.periscope/login?next=/headers%3Fx%3D1"
    );
    let r = get(
        &relay,
        CAM,
        "/api/status",
        &[("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(!r.headers().contains_key(header::WWW_AUTHENTICATE));
    assert!(text(r).await.contains("login required"));
    let r = send(&relay, CAM, request(Method::POST, CAM, "/api/ptz", &[])).await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The login page: self-contained, no scripts, framing refused.
    let r = get(&relay, CAM, "/.periscope/login?next=/ui3.htm", &[BROWSER]).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert!(r.headers()[header::CONTENT_SECURITY_POLICY]
        .to_str()
        .unwrap()
        .contains("default-src 'none'"));
    let page = text(r).await;
    assert!(page.contains("name=\"password\"") && page.contains("value=\"/ui3.htm\""));
    assert!(!page.contains("<script") && !page.contains("http://") && !page.contains("https://"));
    stop(relay, agents).await;
}

#[tokio::test]
async fn login_access_logout() {
    let (relay, agents) = setup(|_| {}).await;
    let r = login_as(&relay, CAM, "alice", "alice-password", "%2Fheaders%3Fa%3D1").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        r.headers()[header::LOCATION],
        "/headers?a=1",
        "original URL restored"
    );
    let set = r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    for attr in [
        "__Host-periscope=",
        "Path=/",
        "Secure",
        "HttpOnly",
        "SameSite=Lax",
        "Max-Age=43200",
    ] {
        assert!(set.contains(attr), "{attr} missing in {set}");
    }
    assert!(!set.contains("Domain"), "{set}");
    let cookie = cookie_of(&r);
    // h1 and h2, the session cookie stripped, the recorder's own cookies kept.
    for h2 in [false, true] {
        let req = request(
            Method::GET,
            CAM,
            "/headers",
            &[("cookie", &format!("nvr=1; {cookie}; other=2"))],
        );
        let r = https_request(&relay, CAM, h2, req).await;
        assert_eq!(r.status(), StatusCode::OK, "h2={h2}");
        let seen = text(r).await;
        assert!(
            !seen.contains("periscope"),
            "session cookie reached the recorder: {seen}"
        );
        assert!(seen.contains("cookie: nvr=1; other=2\n"), "{seen}");
    }
    // Logout ends the session on the server, not only in the browser.
    let r = get(&relay, CAM, "/.periscope/logout", &[("cookie", &cookie)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert!(r.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let r = get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Reserved paths never reach the recorder.
    let r = get(&relay, CAM, "/.periscope/anything", &[("cookie", &cookie)]).await;
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    stop(relay, agents).await;
}

#[tokio::test]
async fn cookie_for_one_hostname_never_opens_another() {
    let (relay, agents) = setup(|_| {}).await;
    let cam = session_cookie(&relay, CAM, "alice", "alice-password").await;
    assert_eq!(
        get(&relay, CAM, "/headers", &[("cookie", &cam)])
            .await
            .status(),
        StatusCode::OK
    );
    let r = get(&relay, DOOR, "/headers", &[BROWSER, ("cookie", &cam)]).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "cam's cookie must not open door"
    );
    // Per-user hostnames: bob may open door only.
    let r = login_as(&relay, CAM, "bob", "bob-password", "/").await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(text(r).await.contains("Wrong user name or password"));
    let door = session_cookie(&relay, DOOR, "bob", "bob-password").await;
    assert_eq!(
        get(&relay, DOOR, "/headers", &[("cookie", &door)])
            .await
            .status(),
        StatusCode::OK
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn access_rule_users_limit_who_logs_in() {
    let (relay, agents) = setup(|c| {
        c.access.push(AccessRule {
            host: CAM.into(),
            users: vec!["bob".into()],
            ..AccessRule::default()
        });
    })
    .await;
    // alice may open every hostname herself, but cam's rule names only bob (and bob's own
    // list does not include cam): nobody gets in.
    assert_eq!(
        login_as(&relay, CAM, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_as(&relay, CAM, "bob", "bob-password", "/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        login_as(&relay, DOOR, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn tampered_expired_and_idle_sessions_are_refused() {
    let (relay, agents) = setup(|c| {
        c.auth.session_lifetime = Duration::from_secs(3600);
        c.auth.session_idle = Duration::from_secs(1800);
    })
    .await;
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    let mut tampered = cookie.clone().into_bytes();
    let i = tampered.len() - 1;
    tampered[i] = if tampered[i] == b'0' { b'1' } else { b'0' };
    let tampered = String::from_utf8(tampered).unwrap();
    let r = get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &tampered)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    // Used every 20 minutes: alive until its lifetime ends.
    for _ in 0..2 {
        relay.clock.advance(Duration::from_secs(1200));
        assert_eq!(
            get(&relay, CAM, "/headers", &[("cookie", &cookie)])
                .await
                .status(),
            StatusCode::OK
        );
    }
    relay.clock.advance(Duration::from_secs(1201));
    let r = get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)]).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "expired after session_lifetime"
    );
    // Idle timeout.
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    relay.clock.advance(Duration::from_secs(1801));
    let r = get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)]).await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "ended after session_idle"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn five_failures_ban_the_address_everywhere_until_it_expires() {
    let (relay, agents) = setup(|_| {}).await;
    for i in 1..=4 {
        let r = login_as(&relay, CAM, "alice", "wrong", "/").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED, "failure {i}");
    }
    let r = login_as(&relay, CAM, "nosuchuser", "wrong", "/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN, "5th failure bans");
    assert!(text(r).await.contains("banned"));
    // Banned: even the right password, on every hostname, before any hashing.
    let r = login_as(&relay, CAM, "alice", "alice-password", "/").await;
    assert_eq!(r.status(), StatusCode::FORBIDDEN);
    assert_eq!(
        get(&relay, DOOR, "/", &[BROWSER]).await.status(),
        StatusCode::FORBIDDEN
    );
    // Visible (and clearable) in the data directory.
    let bans = relay::access::bans::BanFile::load(&relay.data_dir()).unwrap();
    assert_eq!(bans.bans.len(), 1);
    assert_eq!(bans.bans[0].ip.to_string(), "127.0.0.1");
    assert_eq!(bans.bans[0].user, "nosuchuser");
    // Default ban_for is 15 minutes.
    relay.clock.advance(Duration::from_secs(14 * 60));
    assert_eq!(
        login_as(&relay, CAM, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::FORBIDDEN
    );
    relay.clock.advance(Duration::from_secs(61));
    assert_eq!(
        login_as(&relay, CAM, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::SEE_OTHER
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn ban_forever_outlasts_any_time() {
    let (relay, agents) = setup(|c| {
        c.auth.ban_after_failures = 2;
        c.auth.ban_forever = true;
    })
    .await;
    for _ in 0..2 {
        login_as(&relay, CAM, "alice", "wrong", "/").await;
    }
    relay.clock.advance(Duration::from_secs(365 * 24 * 3600));
    assert_eq!(
        login_as(&relay, CAM, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::FORBIDDEN,
        "a permanent ban holds a year later"
    );
    let bans = relay::access::bans::BanFile::load(&relay.data_dir()).unwrap();
    assert_eq!(bans.bans.len(), 1);
    stop(relay, agents).await;
}

#[tokio::test]
async fn ban_cleared_by_hand_is_lifted_at_once() {
    let (relay, agents) = setup(|c| c.auth.ban_after_failures = 2).await;
    for _ in 0..2 {
        login_as(&relay, CAM, "alice", "wrong", "/").await;
    }
    assert_eq!(
        get(&relay, CAM, "/", &[BROWSER]).await.status(),
        StatusCode::FORBIDDEN
    );
    // What `periscope ban clear --all` does.
    relay::access::bans::BanFile::default()
        .save(&relay.data_dir())
        .unwrap();
    assert_eventually!(
        get(&relay, CAM, "/", &[BROWSER]).await.status() == StatusCode::SEE_OTHER,
        5,
        "ban not lifted"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn share_link_opens_one_hostname_until_it_expires_or_is_revoked() {
    let (relay, agents) = setup(|_| {}).await;
    let (token, _) = relay.share_token(CAM, Duration::from_secs(3600));
    let link = format!("/.periscope/share?t={token}");
    // Not valid on another hostname.
    assert_eq!(
        get(&relay, DOOR, &link, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    let r = get(&relay, CAM, &link, &[]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(r.headers()[header::LOCATION], "/");
    let cookie = cookie_of(&r);
    assert_eq!(
        get(&relay, CAM, "/headers", &[("cookie", &cookie)])
            .await
            .status(),
        StatusCode::OK
    );
    // Tampered link.
    let bad = format!("{}x", link);
    assert_eq!(
        get(&relay, CAM, &bad, &[]).await.status(),
        StatusCode::FORBIDDEN
    );
    // The session ends with the link.
    relay.clock.advance(Duration::from_secs(3601));
    let r = get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)]).await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER);
    assert_eq!(
        get(&relay, CAM, &link, &[]).await.status(),
        StatusCode::FORBIDDEN,
        "expired link"
    );
    // Revocation ends the sessions it opened.
    let (token, jti) = relay.share_token(CAM, Duration::from_secs(3600));
    let r = get(&relay, CAM, &format!("/.periscope/share?t={token}"), &[]).await;
    let cookie = cookie_of(&r);
    assert_eq!(
        get(&relay, CAM, "/headers", &[("cookie", &cookie)])
            .await
            .status(),
        StatusCode::OK
    );
    relay::token::Revocations::revoke(&relay.data_dir(), &jti, std::time::SystemTime::now())
        .unwrap();
    assert_eventually!(
        get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)])
            .await
            .status()
            == StatusCode::SEE_OTHER,
        5,
        "revoked link still opens the hostname"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn allow_ips_skip_the_login_and_deny_ips_win_over_everything() {
    let (relay, agents) = setup(|c| {
        c.access.push(AccessRule {
            host: CAM.into(),
            allow_ips: vec!["127.0.0.0/8".parse().unwrap()],
            ..AccessRule::default()
        });
        c.access.push(AccessRule {
            host: DOOR.into(),
            public: true,
            deny_ips: vec!["::ffff:127.0.0.1/128".parse().unwrap()],
            ..AccessRule::default()
        });
    })
    .await;
    let r = get(
        &relay,
        CAM,
        "/headers",
        &[("authorization", "Digest username=\"nvr\"")],
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::OK,
        "allow-listed network skips the login"
    );
    // The recorder's own credentials pass untouched when the edge did not use them.
    assert!(text(r)
        .await
        .contains("authorization: Digest username=\"nvr\"\n"));
    let r = get(&relay, DOOR, "/headers", &[]).await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "deny_ips wins over public"
    );
    let r = login_as(&relay, DOOR, "alice", "alice-password", "/").await;
    assert_eq!(
        r.status(),
        StatusCode::FORBIDDEN,
        "deny_ips wins over a login"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn ipv6_rules_match_ipv6_visitors() {
    let (relay, agents) = setup(|c| {
        c.listen.https = "[::1]:0".parse().unwrap();
        c.access.push(AccessRule {
            host: CAM.into(),
            allow_ips: vec!["::1/128".parse().unwrap()],
            ..AccessRule::default()
        });
        c.access.push(AccessRule {
            host: DOOR.into(),
            public: true,
            deny_ips: vec!["::/64".parse().unwrap()],
            ..AccessRule::default()
        });
    })
    .await;
    assert!(relay.https.is_ipv6());
    assert_eq!(
        get(&relay, CAM, "/headers", &[]).await.status(),
        StatusCode::OK,
        "::1 is in ::1/128: no login"
    );
    assert_eq!(
        get(&relay, DOOR, "/", &[]).await.status(),
        StatusCode::FORBIDDEN,
        "::1 is in ::/64: refused although public"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn relay_wide_deny_ips_refuse_the_connection() {
    let (relay, agents) = setup(|c| c.auth.deny_ips = vec!["127.0.0.1".parse().unwrap()]).await;
    let tcp = tokio::net::TcpStream::connect(relay.https).await.unwrap();
    let mut tcp = tcp;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), tcp.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "connection must be closed at once"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn spoofed_forwarded_headers_never_match_allow_ips() {
    let (relay, agents) = setup(|c| {
        c.auth.allow_ips = vec!["10.9.9.0/24".parse().unwrap()];
    })
    .await;
    let r = get(
        &relay,
        CAM,
        "/headers",
        &[
            BROWSER,
            ("x-forwarded-for", "10.9.9.9"),
            ("x-real-ip", "10.9.9.9"),
            ("forwarded", "for=10.9.9.9"),
        ],
    )
    .await;
    assert_eq!(
        r.status(),
        StatusCode::SEE_OTHER,
        "headers from the visitor are not its address"
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn basic_auth_where_enabled_and_never_passed_on() {
    use base64::Engine;
    let (relay, agents) = setup(|c| {
        c.access.push(AccessRule {
            host: CAM.into(),
            basic: true,
            ..AccessRule::default()
        });
    })
    .await;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let good = format!("Basic {}", b64("alice:alice-password"));
    for _ in 0..2 {
        // The second time comes from the verified-credentials cache.
        let r = get(&relay, CAM, "/headers", &[("authorization", &good)]).await;
        assert_eq!(r.status(), StatusCode::OK);
        let seen = text(r).await;
        assert!(
            !seen.contains("authorization"),
            "edge credentials reached the recorder: {seen}"
        );
    }
    let bad = format!("Basic {}", b64("alice:nope"));
    let r = get(
        &relay,
        CAM,
        "/headers",
        &[("authorization", &bad), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    assert!(r.headers()[header::WWW_AUTHENTICATE]
        .to_str()
        .unwrap()
        .starts_with("Basic realm="));
    // Door has no basic rule: Basic credentials do not open it.
    let door = format!("Basic {}", b64("bob:bob-password"));
    let r = get(
        &relay,
        DOOR,
        "/headers",
        &[("authorization", &door), ("accept", "application/json")],
    )
    .await;
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    stop(relay, agents).await;
}

#[tokio::test]
async fn cross_site_login_and_open_redirects_are_refused() {
    let (relay, agents) = setup(|_| {}).await;
    let req = Request::builder()
        .method(Method::POST)
        .uri("/.periscope/login")
        .header("host", CAM)
        .header("origin", "https://evil.example")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Full::new(Bytes::from(
            "user=alice&password=alice-password&next=/",
        )))
        .unwrap();
    assert_eq!(send(&relay, CAM, req).await.status(), StatusCode::FORBIDDEN);
    for next in [
        "%2F%2Fevil.example%2F",
        "https%3A%2F%2Fevil.example%2F",
        "%2F%5Cevil.example",
    ] {
        let r = login_as(&relay, CAM, "alice", "alice-password", next).await;
        assert_eq!(r.status(), StatusCode::SEE_OTHER);
        assert_eq!(r.headers()[header::LOCATION], "/", "next={next}");
    }
    stop(relay, agents).await;
}

#[tokio::test]
async fn request_rate_limit_answers_429() {
    let (relay, agents) = setup(|c| {
        c.limits.requests_per_second = 1;
        c.limits.request_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_ne!(
            get(&relay, CAM, "/", &[BROWSER]).await.status(),
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    let r = get(&relay, CAM, "/", &[BROWSER]).await;
    assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(r.headers()[header::RETRY_AFTER], "1");
    relay.clock.advance(Duration::from_secs(2));
    assert_ne!(
        get(&relay, CAM, "/", &[BROWSER]).await.status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    stop(relay, agents).await;
}

#[tokio::test]
async fn connections_per_address_are_capped() {
    let (relay, agents) = setup(|c| c.limits.connections_per_ip = 2).await;
    let _a = tls_connect(&relay, CAM, b"http/1.1").await;
    let _b = tls_connect(&relay, CAM, b"http/1.1").await;
    let mut c = tokio::net::TcpStream::connect(relay.https).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "third connection must be closed"
    );
    drop((_a, _b));
    // A slot is free again when the relay keeps a new connection open (waiting for TLS).
    assert_eventually!(
        {
            let mut c = tokio::net::TcpStream::connect(relay.https).await.unwrap();
            tokio::time::timeout(Duration::from_millis(200), c.read(&mut buf))
                .await
                .is_err()
        },
        5,
        "slots not released"
    );
    assert_eq!(
        get(&relay, CAM, "/", &[BROWSER]).await.status(),
        StatusCode::SEE_OTHER
    );
    stop(relay, agents).await;
}

/// A raw port closed to this address: the relay closes the connection at once (EOF or
/// reset within a second, before the visitor sends anything), never leaves it hanging.
async fn closed_at_once(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return true;
    };
    let mut buf = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await,
        Ok(Ok(0) | Err(_))
    )
}

/// Connect to a raw port and try one echo round trip; false if the relay closed it.
async fn echo_works(port: u16) -> bool {
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"ping").await.is_err() {
        return false;
    }
    let mut buf = [0u8; 4];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && &buf == b"ping"
}

#[tokio::test]
async fn raw_tcp_port_opens_only_after_a_web_login_on_the_same_agent() {
    let relay = TestRelay::start_configured(|c| {
        c.port_access.clear(); // the production default: login
        with_users(c, &[("alice", "alice-password", &[])]);
    })
    .await;
    let web = Nvr::start().await.addr;
    let echo = echo_server().await;
    let (rtsp, other) = (free_port(), free_port());
    let mut cam = AgentBuilder::new(&relay, &relay.token("cam", &[rtsp]))
        .http("cam", web)
        .tcp("rtsp", echo, rtsp)
        .start()
        .await;
    cam.connected().await;
    let mut door = AgentBuilder::new(&relay, &relay.token("door", &[other]))
        .http("door", web)
        .tcp("raw", echo, other)
        .start()
        .await;
    door.connected().await;
    assert!(
        !echo_works(rtsp).await,
        "raw port must be closed before login"
    );
    assert!(closed_at_once(rtsp).await, "and closed at once, not held");
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    assert!(echo_works(rtsp).await, "login on cam opens cam's raw port");
    assert!(!echo_works(other).await, "but not another agent's");
    // Logout closes it again (for new connections).
    get(&relay, CAM, "/.periscope/logout", &[("cookie", &cookie)]).await;
    assert!(!echo_works(rtsp).await);
    // The session's idle timeout closes it too.
    session_cookie(&relay, CAM, "alice", "alice-password").await;
    assert!(echo_works(rtsp).await);
    relay.clock.advance(Duration::from_secs(3 * 3600));
    assert!(!echo_works(rtsp).await);
    cam.stop().await;
    door.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn tcp_tunnel_connections_per_tunnel_are_capped() {
    let port = free_port();
    let relay = TestRelay::start_configured(|c| c.limits.connections_per_tunnel = 2).await;
    let echo = echo_server().await;
    let mut a = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .tcp("echo", echo, port)
        .start()
        .await;
    a.connected().await;
    let open = |_| async move {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .unwrap();
        s.write_all(b"ping").await.unwrap();
        let mut buf = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut buf))
            .await
            .unwrap()
            .unwrap();
        s
    };
    let (first, second) = (open(0).await, open(1).await);
    assert!(closed_at_once(port).await, "a third connection is refused");
    drop(first);
    assert_eventually!(echo_works(port).await, 5, "a slot frees when one closes");
    drop(second);
    a.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn port_access_modes_open_and_allow_ips() {
    let (open, listed) = (free_port(), free_port());
    let relay = TestRelay::start_configured(|c| {
        c.port_access.clear();
        c.port_access.push(relay::config::PortAccessRule {
            ports: relay::PortRange { lo: open, hi: open },
            mode: relay::config::PortMode::Open,
            allow_ips: vec![],
            deny_ips: vec![],
        });
        c.port_access.push(relay::config::PortAccessRule {
            ports: relay::PortRange {
                lo: listed,
                hi: listed,
            },
            mode: relay::config::PortMode::AllowIps,
            allow_ips: vec!["10.0.0.0/8".parse().unwrap()],
            deny_ips: vec![],
        });
    })
    .await;
    let echo = echo_server().await;
    let mut a = AgentBuilder::new(&relay, &relay.token("cam", &[open, listed]))
        .tcp("open", echo, open)
        .tcp("listed", echo, listed)
        .start()
        .await;
    a.connected().await;
    assert!(echo_works(open).await, "mode = open");
    assert!(!echo_works(listed).await, "127.0.0.1 is not in 10.0.0.0/8");
    a.stop().await;
    relay.stop().await;
}

/// Run the `periscope` binary with `args`, `stdin` piped in; returns (success, stdout, stderr).
fn periscope(args: &[&str], stdin: &str) -> (bool, String, String) {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_periscope"))
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_warns_about_every_public_rule() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("relay.toml");
    let base = format!(
        "domain = \"relay.localhost\"\ndata_dir = \"{}\"\n",
        dir.path().join("data").display()
    );
    std::fs::write(
        &cfg,
        format!("{base}[[access]]\nhost = \"cam.relay.localhost\"\nusers = [\"alice\"]\n"),
    )
    .unwrap();
    let (ok, _, err) = periscope(&["check", "--config", cfg.to_str().unwrap()], "");
    assert!(ok, "{err}");
    assert!(
        !err.contains("warning"),
        "a private rule warns of nothing: {err}"
    );
    std::fs::write(
        &cfg,
        format!(
            "{base}[[access]]\nhost = \"cam.relay.localhost\"\npublic = true\n\
             [[port_access]]\nports = \"8554\"\nmode = \"open\"\n"
        ),
    )
    .unwrap();
    let (ok, _, err) = periscope(&["check", "--config", cfg.to_str().unwrap()], "");
    assert!(ok, "{err}");
    assert!(
        err.contains("warning: [[access]] cam.relay.localhost is public"),
        "{err}"
    );
    assert!(
        err.contains("warning: [[port_access]] 8554 is open"),
        "{err}"
    );
}

#[tokio::test]
async fn cli_manages_users_share_links_and_bans() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let cfg = dir.path().join("relay.toml");
    std::fs::write(
        &cfg,
        format!(
            "domain = \"relay.localhost\"\ndata_dir = \"{}\"\n[listen]\nhttps = \"127.0.0.1:8443\"\n",
            data.display()
        ),
    )
    .unwrap();
    let c = cfg.to_str().unwrap();
    let (ok, _, err) = periscope(
        &["user", "add", "--config", c, "alice", "--host", CAM],
        "alice-password\n",
    );
    assert!(ok, "{err}");
    let (ok, _, err) = periscope(
        &["user", "add", "--config", c, "alice"],
        "another-password\n",
    );
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, _, err) = periscope(&["user", "add", "--config", c, "bob"], "short\n");
    assert!(!ok && err.contains("at least 8"), "{err}");
    let users = data.join("users.toml");
    let text = std::fs::read_to_string(&users).unwrap();
    assert!(
        text.contains("$argon2id$") && !text.contains("alice-password"),
        "{text}"
    );
    assert_eq!(
        std::fs::metadata(&users).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let (ok, out, _) = periscope(&["user", "list", "--config", c], "");
    assert!(ok && out.contains("alice\tcam.relay.localhost"), "{out}");
    // A share link for cam, and its revocation.
    let (ok, out, err) = periscope(
        &[
            "share",
            "--config",
            c,
            "--host",
            CAM,
            "--ttl",
            "1h",
            "--user-label",
            "neighbour",
        ],
        "",
    );
    assert!(ok, "{err}");
    let url = out.trim();
    assert!(
        url.starts_with("https://cam.relay.localhost:8443/.periscope/share?t=ey"),
        "{url}"
    );
    let id = err
        .split("(id ")
        .nth(1)
        .unwrap()
        .split(',')
        .next()
        .unwrap()
        .to_string();
    let (ok, _, err) = periscope(&["share", "revoke", "--config", c, &id], "");
    assert!(ok, "{err}");
    assert!(std::fs::read_to_string(data.join("revoked.json"))
        .unwrap()
        .contains(&id));
    // Bans: list and clear.
    relay::access::bans::BanFile {
        bans: vec![relay::access::bans::Ban {
            ip: "203.0.113.9".parse().unwrap(),
            since: 1,
            until: 0,
            user: "root".into(),
        }],
    }
    .save(&data)
    .unwrap();
    let (ok, out, _) = periscope(&["ban", "list", "--config", c], "");
    assert!(
        ok && out.contains("203.0.113.9\tuntil forever") && out.contains("root"),
        "{out}"
    );
    let (ok, _, err) = periscope(&["ban", "clear", "--config", c, "203.0.113.9"], "");
    assert!(ok && err.contains("lifted 1"), "{err}");
    let (_, out, _) = periscope(&["ban", "list", "--config", c], "");
    assert!(out.is_empty(), "{out}");
    // The user made by the CLI logs in at a relay using that users file; a new password or
    // removal ends the session.
    let relay = TestRelay::start_configured(|c| c.auth.users_file = Some(users.clone())).await;
    let target = Nvr::start().await.addr;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    assert_eq!(
        get(&relay, CAM, "/headers", &[("cookie", &cookie)])
            .await
            .status(),
        StatusCode::OK
    );
    // Disabling ends the session and refuses logins; enabling lets the user in again.
    let (ok, _, err) = periscope(&["user", "disable", "--config", c, "alice"], "");
    assert!(ok, "{err}");
    assert_eventually!(
        get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)])
            .await
            .status()
            == StatusCode::SEE_OTHER,
        5,
        "disabled user's session still works"
    );
    let (_, out, _) = periscope(&["user", "list", "--config", c], "");
    assert!(out.contains("alice (disabled)"), "{out}");
    assert_eq!(
        login_as(&relay, CAM, "alice", "alice-password", "/")
            .await
            .status(),
        StatusCode::UNAUTHORIZED
    );
    let (ok, _, err) = periscope(&["user", "enable", "--config", c, "alice"], "");
    assert!(ok, "{err}");
    // (Failed logins count toward a ban: wait for the relay's once-a-second reload instead of
    // retrying.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    // A new password ends the sessions opened with the old one.
    let (ok, _, err) = periscope(
        &["user", "passwd", "--config", c, "alice"],
        "new-alice-password\n",
    );
    assert!(ok, "{err}");
    assert_eventually!(
        get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)])
            .await
            .status()
            == StatusCode::SEE_OTHER,
        5,
        "session survived a password change"
    );
    let cookie = session_cookie(&relay, CAM, "alice", "new-alice-password").await;
    let (ok, _, err) = periscope(&["user", "remove", "--config", c, "alice"], "");
    assert!(ok, "{err}");
    assert_eventually!(
        get(&relay, CAM, "/headers", &[BROWSER, ("cookie", &cookie)])
            .await
            .status()
            == StatusCode::SEE_OTHER,
        5,
        "removed user's session still works"
    );
    agent.stop().await;
    relay.stop().await;
}

/// A recorder with an endless MJPEG stream at `/live` (a part every 50 ms), a small
/// snapshot at `/snap` and 300 kB at `/big`.
async fn mjpeg_target() -> std::net::SocketAddr {
    tcp_server(|s| async move {
        let svc = hyper::service::service_fn(|req: Request<hyper::body::Incoming>| async move {
            let resp = if req.uri().path() == "/live" {
                let (mut tx, body) =
                    http_body_util::channel::Channel::<Bytes, std::convert::Infallible>::new(2);
                tokio::spawn(async move {
                    while tx
                        .send_data(Bytes::from_static(
                            b"--x\r\nContent-Type: image/jpeg\r\n\r\nJPEG\r\n",
                        ))
                        .await
                        .is_ok()
                    {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                });
                http::Response::builder()
                    .header("content-type", "multipart/x-mixed-replace; boundary=x")
                    .body(body.boxed())
                    .unwrap()
            } else if req.uri().path() == "/big" {
                http::Response::new(Full::new(Bytes::from(vec![7u8; 300_000])).boxed())
            } else {
                http::Response::new(Full::new(Bytes::from_static(b"snapshot")).boxed())
            };
            Ok::<_, std::convert::Infallible>(resp)
        });
        let _ = hyper::server::conn::http1::Builder::new()
            .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
            .await;
    })
    .await
}

async fn mjpeg_relay(f: impl FnOnce(&mut RelayConfig)) -> (TestRelay, TestAgent) {
    let relay = TestRelay::start_configured(|c| {
        with_users(c, &[("alice", "alice-password", &[])]);
        f(c);
    })
    .await;
    let target = mjpeg_target().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    (relay, agent)
}

#[tokio::test]
async fn live_streams_per_user_and_stream_time_limit() {
    let (relay, agent) = mjpeg_relay(|c| {
        c.limits.streams_per_user = 1;
        c.limits.stream_time_limit = Some(Duration::from_secs(2));
    })
    .await;
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    let first = get(&relay, CAM, "/live", &[("cookie", &cookie)]).await;
    assert_eq!(first.status(), StatusCode::OK);
    let mut body = first.into_body();
    body.frame().await.unwrap().unwrap();
    let second = get(&relay, CAM, "/live", &[("cookie", &cookie)]).await;
    assert_eq!(
        second.status(),
        StatusCode::TOO_MANY_REQUESTS,
        "one live stream per user"
    );
    let snap = get(&relay, CAM, "/snap", &[("cookie", &cookie)]).await;
    assert_eq!(
        snap.status(),
        StatusCode::OK,
        "snapshots are not live streams"
    );
    // The stream ends by itself at stream_time_limit, which frees the user's slot.
    let t0 = std::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .expect("stream ended at its time limit")
        .unwrap();
    assert!(t0.elapsed() < Duration::from_secs(5));
    assert_eventually!(
        get(&relay, CAM, "/live", &[("cookie", &cookie)])
            .await
            .status()
            == StatusCode::OK,
        5,
        "stream slot not released"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn requests_in_flight_per_hostname_are_capped() {
    let (relay, agent) = mjpeg_relay(|c| {
        c.access.push(AccessRule::public(CAM));
        c.limits.connections_per_tunnel = 1;
    })
    .await;
    let first = get(&relay, CAM, "/live", &[]).await;
    assert_eq!(first.status(), StatusCode::OK);
    let r = get(&relay, CAM, "/snap", &[]).await;
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers().contains_key(header::RETRY_AFTER));
    drop(first);
    assert_eventually!(
        get(&relay, CAM, "/snap", &[]).await.status() == StatusCode::OK,
        5,
        "slot not released when the stream's visitor left"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn many_failures_for_one_user_slow_it_down_without_locking_the_owner_out() {
    // Addresses are never banned here: this is a botnet spreading guesses below the ban.
    let (relay, agents) = setup(|c| c.auth.ban_after_failures = 1000).await;
    for _ in 0..5 {
        let r = login_as(&relay, CAM, "alice", "guess", "/").await;
        assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    }
    let t0 = std::time::Instant::now();
    let r = login_as(&relay, CAM, "alice", "alice-password", "/").await;
    assert_eq!(r.status(), StatusCode::SEE_OTHER, "the owner still gets in");
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "attempt was not slowed"
    );
    // An address that logged in as alice is not slowed any more.
    let t0 = std::time::Instant::now();
    login_as(&relay, CAM, "alice", "guess", "/").await;
    assert!(t0.elapsed() < Duration::from_millis(900));
    stop(relay, agents).await;
}

#[tokio::test]
async fn bandwidth_per_tunnel_is_capped() {
    let (relay, agent) = mjpeg_relay(|c| {
        c.access.push(AccessRule::public(CAM));
        c.limits.bandwidth_per_tunnel = 100_000;
    })
    .await;
    let t0 = std::time::Instant::now();
    let r = get(&relay, CAM, "/big", &[]).await;
    let body = r.into_body().collect().await.unwrap().to_bytes();
    let took = t0.elapsed();
    assert_eq!(body.len(), 300_000);
    // 100 kB of burst, then 200 kB at 100 kB/s.
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn bandwidth_cap_applies_to_tcp_tunnels() {
    let port = free_port();
    let relay = TestRelay::start_configured(|c| c.limits.bandwidth_per_tunnel = 100_000).await;
    let echo = echo_server().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[port]))
        .tcp("t", echo, port)
        .start()
        .await;
    agent.connected().await;
    let t0 = std::time::Instant::now();
    let back = roundtrip(port, &vec![1u8; 300_000]).await;
    let took = t0.elapsed();
    assert_eq!(back.len(), 300_000);
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited() {
    let (relay, agents) = setup(|c| {
        c.limits.new_connections_per_second = 1;
        c.limits.new_connection_burst = 2;
    })
    .await;
    for _ in 0..2 {
        assert_eq!(
            get(&relay, CAM, "/", &[BROWSER]).await.status(),
            StatusCode::SEE_OTHER
        );
    }
    let mut c = tokio::net::TcpStream::connect(relay.https).await.unwrap();
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), c.read(&mut buf))
        .await
        .unwrap();
    assert!(
        matches!(n, Ok(0) | Err(_)),
        "third new connection at once must be closed"
    );
    relay.clock.advance(Duration::from_secs(2));
    assert_eq!(
        get(&relay, CAM, "/", &[BROWSER]).await.status(),
        StatusCode::SEE_OTHER
    );
    stop(relay, agents).await;
}

/// A WebSocket echo target.
async fn ws_echo_target() -> std::net::SocketAddr {
    use futures_util::{SinkExt, StreamExt};
    tcp_server(|s| async move {
        let Ok(mut ws) = tokio_tungstenite::accept_async(s).await else {
            return;
        };
        while let Some(Ok(msg)) = ws.next().await {
            if msg.is_text() && ws.send(msg).await.is_err() {
                return;
            }
        }
    })
    .await
}

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_rustls::client::TlsStream<tokio::net::TcpStream>>;

/// Open a WebSocket to CAM through the relay with `cookie`; the HTTP status if refused.
async fn ws_open(relay: &TestRelay, cookie: &str) -> Result<Ws, u16> {
    use tokio_tungstenite::tungstenite::{client::IntoClientRequest, Error};
    let tls = tls_connect(relay, CAM, b"http/1.1").await;
    let mut req = "wss://cam.relay.localhost/live"
        .into_client_request()
        .unwrap();
    if !cookie.is_empty() {
        req.headers_mut().insert("cookie", cookie.parse().unwrap());
    }
    match tokio_tungstenite::client_async(req, tls).await {
        Ok((ws, _)) => Ok(ws),
        Err(Error::Http(resp)) => Err(resp.status().as_u16()),
        Err(e) => panic!("websocket: {e}"),
    }
}

async fn ws_echo(ws: &mut Ws, text: &str) -> bool {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    if ws.send(Message::text(text)).await.is_err() {
        return false;
    }
    matches!(
        tokio::time::timeout(Duration::from_secs(5), ws.next()).await,
        Ok(Some(Ok(m))) if m == Message::text(text)
    )
}

#[tokio::test]
async fn websockets_count_as_live_streams_and_end_at_the_time_limit() {
    let relay = TestRelay::start_configured(|c| {
        with_users(c, &[("alice", "alice-password", &[])]);
        c.limits.streams_per_user = 1;
        c.limits.stream_time_limit = Some(Duration::from_secs(2));
    })
    .await;
    let target = ws_echo_target().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    assert_eq!(
        ws_open(&relay, "").await.err(),
        Some(401),
        "no login, no WebSocket"
    );
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    let mut ws = ws_open(&relay, &cookie).await.expect("first WebSocket");
    assert!(ws_echo(&mut ws, "one").await);
    assert_eq!(
        ws_open(&relay, &cookie).await.err(),
        Some(429),
        "one live stream per user"
    );
    // The time limit ends the WebSocket (the echo target would keep it forever).
    let t0 = std::time::Instant::now();
    let mut ended = false;
    while t0.elapsed() < Duration::from_secs(8) {
        if !ws_echo(&mut ws, "tick").await {
            ended = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ended, "WebSocket outlived stream_time_limit");
    drop(ws);
    // Its stream slot was released with the connection.
    let mut again = None;
    for _ in 0..50 {
        if let Ok(ws) = ws_open(&relay, &cookie).await {
            again = Some(ws);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut again = again.expect("stream slot not released");
    assert!(ws_echo(&mut again, "two").await);
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn websocket_holds_its_hostname_slot_and_bandwidth_applies() {
    let relay = TestRelay::start_configured(|c| {
        c.access.push(AccessRule::public(CAM));
        c.limits.connections_per_tunnel = 1;
        c.limits.bandwidth_per_tunnel = 50_000;
    })
    .await;
    let target = ws_echo_target().await;
    let mut agent = AgentBuilder::new(&relay, &relay.token("cam", &[]))
        .http("cam", target)
        .start()
        .await;
    agent.connected().await;
    let mut ws = ws_open(&relay, "").await.expect("websocket");
    assert_eq!(
        get(&relay, CAM, "/", &[]).await.status(),
        StatusCode::SERVICE_UNAVAILABLE,
        "the WebSocket holds the hostname's only slot"
    );
    // 150 kB echoed back at 50 kB/s: about two seconds after the burst.
    let big = "x".repeat(150_000);
    let t0 = std::time::Instant::now();
    assert!(ws_echo(&mut ws, &big).await);
    let took = t0.elapsed();
    assert!(took >= Duration::from_millis(1500), "took {took:?}");
    drop(ws);
    assert_eventually!(
        get(&relay, CAM, "/", &[]).await.status() != StatusCode::SERVICE_UNAVAILABLE,
        5,
        "slot not released when the WebSocket closed"
    );
    agent.stop().await;
    relay.stop().await;
}

#[tokio::test]
async fn raw_udp_port_opens_only_after_a_web_login_on_the_same_agent() {
    let relay = TestRelay::start_configured(|c| {
        c.port_access.clear(); // the production default: login
        with_users(c, &[("alice", "alice-password", &[])]);
    })
    .await;
    let web = Nvr::start().await.addr;
    let echo = udp_echo_server().await;
    let port = free_port();
    let mut cam = AgentBuilder::new(&relay, &relay.token_udp("cam", &[], &[port]))
        .http("cam", web)
        .udp("webrtc", echo, port)
        .start()
        .await;
    cam.connected().await;
    let sock = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let ask = |msg: &'static [u8]| udp_ask(&sock, port, msg, Duration::from_millis(300));
    // Before a login: dropped without an answer, and counted.
    assert_eq!(ask(b"before").await, None);
    assert!(relay.udp_stats("cam", "webrtc").drop_access >= 1);
    // After a login on the agent's hostname from this address: the flow opens.
    let cookie = session_cookie(&relay, CAM, "alice", "alice-password").await;
    assert_eq!(udp_roundtrip(&sock, port, b"after").await, b"after");
    // Logout: the flow closes on the next sweep and new packets are dropped again.
    get(&relay, CAM, "/.periscope/logout", &[("cookie", &cookie)]).await;
    let t0 = std::time::Instant::now();
    while ask(b"after logout").await.is_some() {
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "flow still open after logout"
        );
    }
    cam.stop().await;
    relay.stop().await;
}

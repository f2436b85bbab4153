//! The relay's own pages on every protected hostname: login, logout, share links, and the
//! answers for visitors who are not let in.

use std::net::IpAddr;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::{sessions::Holder, Failure, RESERVED};
use crate::{
    config::AccessRule,
    http::{full, page, Body, Visitor},
    Shared,
};

const LOGIN: &str = "/.periscope/login";
const LOGOUT: &str = "/.periscope/logout";
const SHARE: &str = "/.periscope/share";
/// Largest login form accepted.
const MAX_FORM: usize = 8 * 1024;

/// Answer a request for a path under [`RESERVED`].
pub(super) async fn reserved(
    shared: &Shared,
    v: &Visitor,
    host: &str,
    rule: Option<&AccessRule>,
    req: Request<Incoming>,
) -> Response<Body> {
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or_default().to_string();
    let ip = v.peer.ip();
    match (req.method(), path.as_str()) {
        (&Method::GET | &Method::HEAD, LOGIN) => {
            let next = form_value(&query, "next").unwrap_or_default();
            login_page(StatusCode::OK, host, &safe_next(&next), None)
        }
        (&Method::POST, LOGIN) => login_post(shared, ip, host, rule, req).await,
        (&Method::GET | &Method::POST, LOGOUT) => {
            if req.method() == Method::POST && !same_origin(&req, host) {
                return page(
                    StatusCode::FORBIDDEN,
                    "Forbidden",
                    "Cross-site request refused.",
                );
            }
            let mut h = req.headers().clone();
            for c in super::take_cookie(&mut h) {
                if let Some(s) = shared.access.sessions.remove(&c, host) {
                    tracing::info!(visitor.addr = %ip, host, "logout: {}", s.holder);
                }
            }
            let mut r = redirect(LOGIN);
            r.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "__Host-periscope=; Path=/; Secure; HttpOnly; SameSite=Lax; Max-Age=0",
                ),
            );
            r
        }
        (&Method::GET | &Method::HEAD, SHARE) => share(shared, ip, host, &query),
        _ => page(
            StatusCode::NOT_FOUND,
            "Not found",
            "There is nothing at this address.",
        ),
    }
}

/// A share link: `/.periscope/share?t=TOKEN`.
fn share(shared: &Shared, ip: IpAddr, host: &str, query: &str) -> Response<Body> {
    let a = &shared.access;
    let now = a.now();
    let token = form_value(query, "t").unwrap_or_default();
    let claims = shared
        .keys
        .verify_share(&token, now)
        .ok()
        .filter(|c| c.sub == host && !shared.revocations.contains(&c.jti));
    let Some(c) = claims else {
        tracing::warn!(visitor.addr = %ip, host, "invalid, expired or revoked share link");
        shared.metrics.login_failures.inc();
        if a.bans.failure(ip, "(share link)", now) {
            shared.metrics.bans_total.inc();
            tracing::warn!(visitor.addr = %ip, "address banned after failed logins");
        }
        return page(
            StatusCode::FORBIDDEN,
            "Link not valid",
            "This link is invalid, has expired or was revoked. Ask for a new one.",
        );
    };
    let ends = std::time::UNIX_EPOCH + std::time::Duration::from_secs(c.exp);
    tracing::info!(visitor.addr = %ip, host, link = %c.jti, label = ?c.label, "share link opened");
    let holder = Holder::Share {
        jti: c.jti,
        label: c.label,
    };
    match super::start_session(shared, host, ip, holder, Some(ends)) {
        Ok(cookie) => with_cookie(redirect("/"), &cookie),
        Err(e) => {
            tracing::warn!("cannot start a session: {e}");
            busy()
        }
    }
}

async fn login_post(
    shared: &Shared,
    ip: IpAddr,
    host: &str,
    rule: Option<&AccessRule>,
    req: Request<Incoming>,
) -> Response<Body> {
    // CSRF: a login form posted from another site is refused (the cookie is SameSite=Lax too).
    if !same_origin(&req, host) {
        return page(
            StatusCode::FORBIDDEN,
            "Forbidden",
            "Cross-site request refused.",
        );
    }
    let body = tokio::time::timeout(
        std::time::Duration::from_secs(10),
        Limited::new(req.into_body(), MAX_FORM).collect(),
    )
    .await;
    let Ok(Ok(body)) = body else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The login form was not readable.",
        );
    };
    let form = String::from_utf8_lossy(&body.to_bytes()).into_owned();
    let user = form_value(&form, "user").unwrap_or_default();
    let password = form_value(&form, "password").unwrap_or_default();
    let next = safe_next(&form_value(&form, "next").unwrap_or_default());
    match super::authenticate(shared, ip, host, rule, &user, &password).await {
        Ok(u) => match super::start_session(
            shared,
            host,
            ip,
            Holder::User {
                stamp: super::sessions::stamp(&u.hash),
                name: u.name,
            },
            None,
        ) {
            Ok(cookie) => with_cookie(redirect(&next), &cookie),
            Err(e) => {
                tracing::warn!("cannot start a session: {e}");
                busy()
            }
        },
        Err(Failure::Wrong) => login_page(
            StatusCode::UNAUTHORIZED,
            host,
            &next,
            Some("Wrong user name or password."),
        ),
        Err(Failure::Banned(until)) => banned(until),
        Err(Failure::Busy) => busy(),
    }
}

/// Is the request from a page of this same hostname? `Origin` (sent by browsers with every
/// POST) must be `https://HOST[:port]`. An opaque origin (`null`, e.g. under a strict referrer
/// policy) needs `Sec-Fetch-Site: same-origin`; without `Origin` (non-browser clients),
/// `Sec-Fetch-Site` must not say cross-site.
fn same_origin<B>(req: &Request<B>, host: &str) -> bool {
    let h = req.headers();
    let fetch_site = h.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    match h.get(header::ORIGIN).and_then(|o| o.to_str().ok()) {
        Some("null") => fetch_site == Some("same-origin"),
        Some(o) => o
            .strip_prefix("https://")
            .is_some_and(|o| crate::token::normalize_host(o) == host),
        None => fetch_site.is_none_or(|v| v == "same-origin" || v == "none"),
    }
}

/// A visitor without a session: browsers go to the login page and come back to `next`; API
/// clients (JSON, non-GET, WebSocket) get 401.
pub(super) fn unauthenticated<B>(
    host: &str,
    rule: Option<&AccessRule>,
    req: &Request<B>,
) -> Response<Body> {
    let h = req.headers();
    let accept = h
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let api = accept.contains("application/json")
        || !(req.method() == Method::GET || req.method() == Method::HEAD)
        || h.contains_key(header::UPGRADE)
        || h.get("x-requested-with").is_some();
    let basic = rule.is_some_and(|r| r.basic);
    if !api {
        let target = req
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string();
        return redirect(&format!("{LOGIN}?next={}", encode(&safe_next(&target))));
    }
    let mut r = if accept.contains("application/json") {
        let mut r = Response::new(full(format!(
            "{{\"error\":\"login required\",\"login\":\"{LOGIN}\"}}"
        )));
        *r.status_mut() = StatusCode::UNAUTHORIZED;
        r.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    } else {
        page(
            StatusCode::UNAUTHORIZED,
            "Login required",
            "This site is private: log in first.",
        )
    };
    if basic {
        if let Ok(v) = HeaderValue::from_str(&format!("Basic realm=\"{host}\", charset=\"UTF-8\""))
        {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
    }
    r
}

pub(super) fn denied() -> Response<Body> {
    page(
        StatusCode::FORBIDDEN,
        "Forbidden",
        "Access from your network is not allowed.",
    )
}

pub(super) fn banned(until: Option<u64>) -> Response<Body> {
    let when = match until {
        Some(t) => format!(
            " until {} UTC",
            humantime::format_rfc3339_seconds(
                std::time::UNIX_EPOCH + std::time::Duration::from_secs(t)
            )
        ),
        None => String::new(),
    };
    page(
        StatusCode::FORBIDDEN,
        "Address banned",
        &format!("Too many failed logins from your address: it is refused{when}."),
    )
}

pub(super) fn too_many(retry_after: u64) -> Response<Body> {
    let mut r = page(
        StatusCode::TOO_MANY_REQUESTS,
        "Too many requests",
        "Slow down, then try again.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from(retry_after));
    r
}

pub(super) fn site_busy() -> Response<Body> {
    let mut r = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "This site has as many visitors as it allows right now; try again in a moment.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

pub(super) fn busy() -> Response<Body> {
    let mut r = page(
        StatusCode::SERVICE_UNAVAILABLE,
        "Busy",
        "Too many logins at once; try again in a moment.",
    );
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
    r
}

fn redirect(to: &str) -> Response<Body> {
    let mut r = Response::new(full(Bytes::new()));
    *r.status_mut() = StatusCode::SEE_OTHER;
    if let Ok(v) = HeaderValue::from_str(to) {
        r.headers_mut().insert(header::LOCATION, v);
    }
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

fn with_cookie(mut r: Response<Body>, cookie: &str) -> Response<Body> {
    if let Ok(v) = HeaderValue::from_str(cookie) {
        r.headers_mut().insert(header::SET_COOKIE, v);
    }
    r
}

/// Where to go after login: a path on this same hostname, never another site (`//evil`,
/// `/\evil`, `https://evil`), never our own pages; otherwise `/`.
pub(super) fn safe_next(next: &str) -> String {
    let ok = next.starts_with('/')
        && !next.starts_with("//")
        && !next.contains('\\')
        && !next.starts_with(RESERVED)
        && next.len() <= 2048
        && next.chars().all(|c| c.is_ascii_graphic());
    if ok {
        next.into()
    } else {
        "/".into()
    }
}

/// Percent-encode for a query value.
fn encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Decode `application/x-www-form-urlencoded` (or a query string) and return `key`'s value.
pub(super) fn form_value(form: &str, key: &str) -> Option<String> {
    form.split('&').find_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        (decode(k) == key).then(|| decode(v))
    })
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                match std::str::from_utf8(&b[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                {
                    Some(x) => {
                        out.push(x);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The login page: one small self-contained document (no scripts, no third-party assets).
fn login_page(status: StatusCode, host: &str, next: &str, error: Option<&str>) -> Response<Body> {
    let error = error.map_or(String::new(), |e| {
        format!("<p class=\"err\" role=\"alert\">{}</p>", escape(e))
    });
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
<meta name=\"robots\" content=\"noindex\"><title>Log in · {host}</title><style>\
*{{box-sizing:border-box}}body{{font-family:system-ui,sans-serif;background:#f3f4f6;color:#111;\
margin:0;min-height:100vh;display:flex;align-items:center;justify-content:center;padding:1rem}}\
form{{background:#fff;padding:1.5rem;border-radius:.75rem;box-shadow:0 1px 4px #0002;\
width:100%;max-width:22rem}}h1{{font-size:1.2rem;margin:0 0 .25rem}}.host{{color:#555;\
margin:0 0 1rem;word-break:break-all}}label{{display:block;margin:.75rem 0 .25rem;font-size:.9rem}}\
input{{width:100%;padding:.65rem;font-size:1rem;border:1px solid #bbb;border-radius:.4rem}}\
button{{margin-top:1.25rem;width:100%;padding:.7rem;font-size:1rem;border:0;border-radius:.4rem;\
background:#1d4ed8;color:#fff}}.err{{color:#b91c1c;margin:.5rem 0 0}}\
@media (prefers-color-scheme:dark){{body{{background:#111;color:#eee}}form{{background:#1f2937}}\
.host{{color:#aaa}}input{{background:#111;color:#eee;border-color:#555}}}}</style></head><body>\
<form method=\"post\" action=\"{LOGIN}\"><h1>Log in</h1><p class=\"host\">{host}</p>{error}\
<input type=\"hidden\" name=\"next\" value=\"{next}\">\
<label for=\"u\">User</label><input id=\"u\" name=\"user\" autocomplete=\"username\" \
autocapitalize=\"none\" required autofocus>\
<label for=\"p\">Password</label><input id=\"p\" name=\"password\" type=\"password\" \
autocomplete=\"current-password\" required>\
<button type=\"submit\">Log in</button></form></body></html>",
        host = escape(host),
        next = escape(next),
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        // Not `no-referrer`: browsers would then send `Origin: null` with the form.
        HeaderValue::from_static("same-origin"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_never_leaves_the_host() {
        assert_eq!(safe_next("/ui3.htm?x=1#a"), "/ui3.htm?x=1#a");
        for bad in [
            "//evil.example",
            "/\\evil.example",
            "https://evil.example/",
            "evil",
            "",
            "/.periscope/logout",
            "/a b",
            "/\u{0}x",
        ] {
            assert_eq!(safe_next(bad), "/", "{bad:?}");
        }
    }

    #[test]
    fn origin_check() {
        let req = |pairs: &[(&str, &str)]| {
            let mut b = Request::builder().method("POST").uri("/.periscope/login");
            for (k, v) in pairs {
                b = b.header(*k, *v);
            }
            b.body(()).unwrap()
        };
        let h = "cam.example.com";
        assert!(same_origin(
            &req(&[("origin", "https://cam.example.com")]),
            h
        ));
        assert!(same_origin(
            &req(&[("origin", "https://cam.example.com:8443")]),
            h
        ));
        assert!(!same_origin(&req(&[("origin", "https://evil.example")]), h));
        assert!(!same_origin(
            &req(&[("origin", "http://cam.example.com")]),
            h
        ));
        assert!(!same_origin(&req(&[("origin", "null")]), h));
        assert!(same_origin(
            &req(&[("origin", "null"), ("sec-fetch-site", "same-origin")]),
            h
        ));
        assert!(!same_origin(&req(&[("sec-fetch-site", "cross-site")]), h));
        assert!(same_origin(&req(&[]), h), "curl and scripts");
    }

    #[test]
    fn form_decoding() {
        let f = "user=al%69ce&password=p%26w+d%3D&next=%2Fx%3Fa%3D1";
        assert_eq!(form_value(f, "user").unwrap(), "alice");
        assert_eq!(form_value(f, "password").unwrap(), "p&w d=");
        assert_eq!(form_value(f, "next").unwrap(), "/x?a=1");
        assert_eq!(form_value("a=%", "a").unwrap(), "%");
        assert_eq!(form_value("a=%4", "a").unwrap(), "%4");
        assert!(form_value(f, "nope").is_none());
        assert_eq!(encode("/x?a=1&b"), "/x%3Fa%3D1%26b");
    }
}

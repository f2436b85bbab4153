//! Error pages: small, self-contained, listing nothing about other hostnames.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use super::Body;

/// An HTML error page with `status`, a title and one explaining sentence.
pub(crate) fn page(status: StatusCode, title: &str, detail: &str) -> Response<Body> {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width,initial-scale=1\">\
         <title>{code} {title}</title><style>body{{font-family:system-ui,sans-serif;\
         max-width:36rem;margin:15vh auto;padding:0 1rem;color:#222}}h1{{font-size:1.4rem}}\
         p{{color:#555}}</style></head><body><h1>{code} {title}</h1><p>{detail}</p></body></html>",
        code = status.as_u16(),
        title = escape(title),
        detail = escape(detail),
    );
    let mut r = Response::new(full(html));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    r
}

/// A complete in-memory body.
pub(crate) fn full(data: impl Into<Bytes>) -> Body {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

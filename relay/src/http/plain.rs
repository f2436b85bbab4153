//! The plain-HTTP listener (port 80): ACME http-01 answers and redirects to https. Nothing
//! is ever proxied from here.

use std::{convert::Infallible, sync::Arc, time::Duration};

use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::{sync::CancellationToken, task::TaskTracker};

use super::{
    forward::request_host,
    pages::{full, page},
    Body,
};
use crate::Shared;

const CHALLENGE_PREFIX: &str = "/.well-known/acme-challenge/";

/// Accept until `shutdown`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    listener: TcpListener,
    shutdown: CancellationToken,
    tasks: TaskTracker,
) {
    while let Some((sock, _peer)) = crate::next_connection(&listener, &shutdown, "http").await {
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let service = hyper::service::service_fn(move |req| {
                let resp = answer(&shared, &req);
                async move { Ok::<_, Infallible>(resp) }
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(16 * 1024)
                .serve_connection(TokioIo::new(sock), service);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = shutdown.cancelled() => conn.as_mut().graceful_shutdown(),
            }
        });
    }
}

fn answer(shared: &Shared, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    if let Some(token) = path.strip_prefix(CHALLENGE_PREFIX) {
        if crate::acme::valid_token(token) {
            if let Some(key_auth) = shared.certs.http_token(token) {
                return Response::builder()
                    .header(header::CONTENT_TYPE, "application/octet-stream")
                    .body(full(key_auth))
                    .unwrap_or_else(|_| Response::new(full(String::new())));
            }
        }
        return page(StatusCode::NOT_FOUND, "Not found", "No such challenge.");
    }
    let Ok(host) = request_host(req) else {
        return page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "The request has no usable Host header.",
        );
    };
    let port = match shared.https_port {
        443 => String::new(),
        p => format!(":{p}"),
    };
    let target = req.uri().path_and_query().map_or("/", |p| p.as_str());
    let location = format!("https://{host}{port}{target}");
    let status = if req.method() == Method::GET || req.method() == Method::HEAD {
        StatusCode::MOVED_PERMANENTLY
    } else {
        // 308 keeps the method and body (a POST stays a POST).
        StatusCode::PERMANENT_REDIRECT
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => {
            let mut resp = page(status, "Moved", "This site is served over https.");
            resp.headers_mut().insert(header::LOCATION, v);
            resp
        }
        Err(_) => page(
            StatusCode::BAD_REQUEST,
            "Bad request",
            "Invalid request target.",
        ),
    }
}

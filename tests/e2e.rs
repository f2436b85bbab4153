//! End-to-end tests: relay + agent + targets in-process on loopback, real sockets.
#![allow(clippy::unwrap_used)]

#[macro_use]
mod common;

mod e2e {
    mod access;
    mod admin;
    mod auth;
    mod browser;
    mod config;
    mod demo;
    mod deploy;
    mod edge_tls;
    mod fallback;
    mod http;
    mod reconnect;
    mod reload;
    mod shutdown;
    mod tcp;
    mod udp;
}

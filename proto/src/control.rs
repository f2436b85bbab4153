//! Control-stream messages.
//!
//! Postcard encodes enum variants by index: append new variants and fields only at the end.

use serde::{Deserialize, Serialize};

use crate::Secret;

/// One message on the control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Control {
    /// Agent → relay, first message: who I am and what I serve.
    Hello(Hello),
    /// Relay → agent: accepted; here are the public addresses.
    Welcome(Welcome),
    /// Relay → agent: refused, with a reason. After a `Hello` the connection closes; after a
    /// `TunnelUpdate` the session goes on with its previous tunnels.
    Reject(Reject),
    /// Liveness / RTT probe carrying an opaque value.
    Ping(u64),
    /// Answer to [`Control::Ping`] with the same value.
    Pong(u64),
    /// Relay → agent: stop using this connection, reconnect (relay restarting).
    GoAway(GoAway),
    /// Agent → relay: the whole new tunnel list (the agent's config was reloaded), answered
    /// with `Welcome` (every tunnel's public address) or `Reject`. A tunnel whose spec is
    /// unchanged keeps its id; a changed one comes with a new id.
    TunnelUpdate(Vec<TunnelSpec>),
}

/// The agent's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Control protocol version the agent speaks.
    pub version: u16,
    /// Agent software version, for the relay's logs and status page.
    pub agent_version: String,
    /// The agent's JWT, issued by this relay.
    pub token: Secret,
    /// Tunnels the agent wants published.
    pub tunnels: Vec<TunnelSpec>,
}

/// Control protocol version (inside `Hello`); the frame version byte is separate.
pub const CONTROL_VERSION: u16 = 1;

/// Kind of tunnel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TunnelKind {
    /// HTTP(S) site routed by hostname.
    Http,
    /// Raw TCP on a public port.
    Tcp,
    /// UDP flows on a public port.
    Udp,
}

impl std::fmt::Display for TunnelKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TunnelKind::Http => "http",
            TunnelKind::Tcp => "tcp",
            TunnelKind::Udp => "udp",
        })
    }
}

/// A tunnel the agent offers. The target address stays on the agent: the relay only ever
/// names the tunnel by `id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TunnelSpec {
    /// Agent-chosen id, unique within the session; data streams name it.
    pub id: u32,
    /// Tunnel name from the agent's config (`cam`, `ssh`).
    pub name: String,
    /// What it carries.
    pub kind: TunnelKind,
    /// Public port asked for (tcp/udp).
    pub remote_port: Option<u16>,
    /// Explicit public hostname asked for (http); default is `NAME.DOMAIN`.
    pub hostname: Option<String>,
    /// tcp: the relay terminates TLS on the public port with the certificate of `hostname`
    /// (default `NAME.DOMAIN`) and carries plain bytes to the target.
    pub tls: bool,
    /// How the relay treats requests and responses of an http tunnel (`None` for tcp/udp).
    /// Added before 1.0: `TunnelSpec` sits inside `Hello`'s list, so a relay and an agent from
    /// either side of this field cannot decode each other's `Hello`; upgrade both.
    pub http: Option<HttpOptions>,
}

/// Per-tunnel HTTP behaviour the relay applies at the edge. The agent still connects only to
/// its own pinned target; `target` here is informational (Host and redirect rewriting).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpOptions {
    /// Add `X-Forwarded-*`, `X-Real-IP` and `Forwarded`. Visitor-sent ones are stripped
    /// either way.
    pub forwarded_headers: bool,
    /// `Host` sent to the target; `None` keeps the visitor's.
    pub host_header: Option<String>,
    /// Rewrite `Location`, `Content-Location` and `Refresh` URLs that point at the target (or
    /// at `http://` + the public hostname) to the public `https://` URL.
    pub rewrite_redirects: bool,
    /// The target as configured on the agent, `host:port`.
    pub target: String,
    /// The target speaks TLS (its URLs are `https://`).
    pub target_tls: bool,
}

impl HttpOptions {
    /// Defaults for a plain-HTTP target at `target`.
    pub fn new(target: impl Into<String>) -> Self {
        HttpOptions {
            forwarded_headers: true,
            host_header: None,
            rewrite_redirects: true,
            target: target.into(),
            target_tls: false,
        }
    }
}

/// Relay's acceptance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome {
    /// Session id assigned by the relay (for logs on both sides).
    pub session: u64,
    /// Agent name from the token.
    pub agent: String,
    /// Public address of each tunnel.
    pub tunnels: Vec<Assigned>,
}

/// Where a tunnel is reachable.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Assigned {
    /// The tunnel's id from the `Hello`.
    pub id: u32,
    /// Public URL or `host:port`.
    pub public: String,
}

/// Relay's refusal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reject {
    /// Machine-readable reason.
    pub reason: RejectReason,
    /// Human-readable detail for the agent's log.
    pub detail: String,
}

/// Why the relay refused an agent. The agent decides whether retrying can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectReason {
    /// Protocol version not supported.
    Version,
    /// Token signature, issuer or audience invalid, or not a token at all.
    BadToken,
    /// Token expired.
    Expired,
    /// Token revoked.
    Revoked,
    /// A tunnel asks for a hostname the token does not allow.
    HostnameNotAllowed,
    /// A tunnel asks for a port the token does not allow.
    PortNotAllowed,
    /// A port or hostname is held by another agent, or cannot be bound.
    InUse,
    /// The tunnel list is invalid (duplicate ids, missing port).
    BadTunnel,
    /// The relay is shutting down.
    ShuttingDown,
}

impl RejectReason {
    /// True when retrying with the same token and config cannot succeed.
    pub fn is_permanent(self) -> bool {
        !matches!(self, RejectReason::InUse | RejectReason::ShuttingDown)
    }
}

impl std::fmt::Display for RejectReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RejectReason::Version => "protocol version not supported",
            RejectReason::BadToken => "bad token",
            RejectReason::Expired => "token expired",
            RejectReason::Revoked => "token revoked",
            RejectReason::HostnameNotAllowed => "hostname not allowed by token",
            RejectReason::PortNotAllowed => "port not allowed by token",
            RejectReason::InUse => "already in use",
            RejectReason::BadTunnel => "invalid tunnel list",
            RejectReason::ShuttingDown => "relay shutting down",
        })
    }
}

/// Relay going away.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoAway {
    /// Why, for the agent's log.
    pub reason: String,
    /// Suggested delay before reconnecting.
    pub reconnect_after_ms: u32,
}

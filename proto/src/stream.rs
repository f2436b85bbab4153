//! The header that starts every data stream, and the agent's one-frame answer.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

/// First frame of a relay-opened data stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamOpen {
    /// Tunnel id from the agent's `Hello`. Never an address.
    pub tunnel: u32,
    /// The visitor's address as the relay saw it on the socket.
    pub visitor: SocketAddr,
    /// The relay address the visitor connected to (for PROXY headers).
    pub server: SocketAddr,
    /// What the stream carries.
    pub kind: StreamKind,
}

/// What a data stream carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Raw TCP bytes.
    Tcp,
    /// One HTTP request or upgraded connection.
    Http,
    /// One UDP flow: the stream carries no payload (the flow's packets travel as datagrams,
    /// see [`crate::datagram`]) and lives as long as the flow. Either side ends it to end the
    /// flow.
    Udp {
        /// The flow id the relay assigned; datagrams of this flow start with it.
        flow: u64,
    },
}

/// The agent's answer on a data stream, before any payload bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamReply {
    /// The target is connected; raw bytes follow.
    Connected,
    /// The target could not be reached; the stream ends.
    Failed(StreamError),
}

/// Why the agent could not serve a stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamError {
    /// What failed.
    pub kind: StreamErrorKind,
    /// Detail for logs (the OS error).
    pub detail: String,
}

/// Classes of stream failure, mapped to 502/504 pages by the HTTP edge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamErrorKind {
    /// No tunnel with that id in the agent's config.
    UnknownTunnel,
    /// The target refused the connection.
    Refused,
    /// The target did not answer within the connect timeout.
    Timeout,
    /// Other connect failure (unreachable, DNS).
    Unreachable,
}

impl std::fmt::Display for StreamError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.kind {
            StreamErrorKind::UnknownTunnel => "unknown tunnel",
            StreamErrorKind::Refused => "target refused the connection",
            StreamErrorKind::Timeout => "target did not answer in time",
            StreamErrorKind::Unreachable => "target unreachable",
        };
        write!(f, "{what}: {}", self.detail)
    }
}

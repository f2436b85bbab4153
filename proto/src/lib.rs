//! # Periscope wire protocol
//!
//! The agent dials the relay over QUIC with ALPN [`ALPN`] (`periscope/1`). Its first
//! bidirectional stream is the **control stream**: the agent sends [`Control::Hello`] with its
//! token and tunnel list; the relay answers [`Control::Welcome`] (public URLs and ports) or
//! [`Control::Reject`] with a machine-readable [`RejectReason`]. Afterwards the relay may send
//! [`Control::GoAway`] before it shuts down, the agent may send [`Control::TunnelUpdate`] (its
//! reloaded tunnel list, answered with `Welcome` or `Reject`; the session goes on either way),
//! and either side may ping.
//!
//! Every other bidirectional stream is opened by the relay for one visitor connection. It starts
//! with one [`StreamOpen`] frame naming the tunnel by **id** (never an address: the agent maps
//! the id to a target from its own configuration). The agent answers with one [`StreamReply`]
//! frame (target connected, or why not) and from then on both directions carry raw bytes.
//!
//! ## Framing
//!
//! ```text
//! +-------------+---------------------+---------------------------+
//! | version: u8 | length: u32 (BE)    | body: postcard, `length`  |
//! +-------------+---------------------+---------------------------+
//! ```
//!
//! UDP flows travel as unreliable datagrams `[flow id varint][payload]`; see [`datagram`].
//!
//! The length is checked against [`MAX_FRAME_LEN`] before anything is buffered, and decoding
//! returns `Ok(None)` while a frame is incomplete: this crate does no IO (see [`frame`]). The
//! async adapters in [`transport`] (feature `transport`, on by default) put it on QUIC, or on
//! yamux over TLS/TCP when UDP is blocked ([`transport::tcp`]: same streams, datagrams framed
//! on a dedicated stream).
#![forbid(unsafe_code)]
#![warn(missing_docs)]
#![deny(clippy::unwrap_used)]

pub mod codes;
pub mod control;
pub mod datagram;
pub mod dgram_stream;
pub mod error;
pub mod frame;
pub mod proxy;
pub mod secret;
pub mod stream;
#[cfg(feature = "transport")]
pub mod transport;

pub use control::{
    Assigned, Control, GoAway, Hello, HttpOptions, Reject, RejectReason, TunnelKind, TunnelSpec,
    Welcome,
};
pub use error::{DecodeError, Fault};
pub use frame::{decode, encode, MAX_FRAME_LEN, PROTOCOL_VERSION};
pub use secret::Secret;
pub use stream::{StreamError, StreamErrorKind, StreamKind, StreamOpen, StreamReply};

/// ALPN protocol id agents use on QUIC and on the TLS-over-TCP fallback (where it tells an
/// agent from a browser on the relay's https port).
pub const ALPN: &[u8] = b"periscope/1";

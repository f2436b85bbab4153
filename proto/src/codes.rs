//! Application close codes for QUIC connections and stream resets, in one place.
//!
//! These go on the wire: never renumber, only add.

/// Connection closed normally (agent stopping).
pub const CLOSE_NORMAL: u32 = 0;
/// The peer broke the protocol (malformed or unexpected frame).
pub const CLOSE_PROTOCOL: u32 = 1;
/// The relay refused the agent's Hello (a `Reject` frame was sent first).
pub const CLOSE_REJECTED: u32 = 2;
/// A newer session of the same agent replaced this one.
pub const CLOSE_REPLACED: u32 = 3;
/// The relay is shutting down (a `GoAway` frame was sent first).
pub const CLOSE_SHUTDOWN: u32 = 4;
/// The agent's token was revoked.
pub const CLOSE_REVOKED: u32 = 5;
/// The agent's token expired during the session.
pub const CLOSE_EXPIRED: u32 = 6;
/// The control handshake did not finish in time.
pub const CLOSE_TIMEOUT: u32 = 7;

/// Stream reset: the visitor side aborted (connection reset, not a clean close).
pub const RESET_ABORTED: u32 = 1;
/// Stream reset: the peer sent a bad stream header.
pub const RESET_PROTOCOL: u32 = 2;

/// A readable name for a close code, for logs.
pub fn close_name(code: u64) -> &'static str {
    match code {
        0 => "normal",
        1 => "protocol error",
        2 => "rejected",
        3 => "replaced by a newer session",
        4 => "relay shutting down",
        5 => "token revoked",
        6 => "token expired",
        7 => "handshake timeout",
        _ => "unknown",
    }
}

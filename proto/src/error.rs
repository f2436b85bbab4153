//! Protocol errors, sorted by who is at fault.

use crate::{codes, MAX_FRAME_LEN, PROTOCOL_VERSION};

/// Who caused an error: decides which connection is closed, with which code, and how loudly
/// it is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The peer sent bytes that do not parse.
    Malformed,
    /// The peer sent valid frames at the wrong time.
    Misbehaved,
    /// The peer speaks another protocol version.
    Incompatible,
}

/// Decoding a frame from untrusted bytes failed. Never a panic, never an unbounded allocation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The version byte is not one this side speaks.
    #[error("peer speaks protocol version {0}, this side speaks {PROTOCOL_VERSION}")]
    Version(u8),
    /// The length prefix exceeds [`MAX_FRAME_LEN`].
    #[error("frame of {0} bytes exceeds the {MAX_FRAME_LEN}-byte limit")]
    TooLarge(usize),
    /// The body does not decode as the expected message.
    #[error("malformed frame body: {0}")]
    Body(#[from] postcard::Error),
    /// The body decoded but bytes were left over inside the frame.
    #[error("frame body has {0} trailing bytes")]
    Trailing(usize),
}

impl DecodeError {
    /// Who is at fault.
    pub fn fault(&self) -> Fault {
        match self {
            DecodeError::Version(_) => Fault::Incompatible,
            _ => Fault::Malformed,
        }
    }

    /// The QUIC application close code to use when this ends a connection.
    pub fn close_code(&self) -> u32 {
        codes::CLOSE_PROTOCOL
    }
}

//! Framing of the TCP fallback's datagram stream (`transport::tcp`): datagrams,
//! liveness pings and the close code travel on one yamux stream as small frames. Sans-IO, so
//! the decoder of these untrusted bytes is fuzzed on its own (`fuzz/fuzz_targets/dgram_stream.rs`).
//!
//! ```text
//! +----------+-------------------+-----------------------------------------------+
//! | kind: u8 | length: u16 (BE)  | body, `length` bytes                           |
//! +----------+-------------------+-----------------------------------------------+
//! kind 0 DATAGRAM  body = one encoded datagram (crate::datagram), <= MAX_DATAGRAM
//! kind 1 PING      body = u64 (BE) opaque value, echoed by PONG
//! kind 2 PONG      body = u64 (BE) the PING's value
//! kind 3 CLOSE     body = code u32 (BE) + reason (UTF-8, <= MAX_REASON bytes)
//! ```
//!
//! Any other kind, or a body longer than its kind allows, is a protocol error and ends the
//! connection. Sending a datagram never blocks: when the send queue is full it is dropped and
//! counted, like a QUIC datagram the congestion controller cannot send.

use bytes::{Buf, BufMut, Bytes, BytesMut};

/// Largest encoded datagram (flow id + payload) carried on the datagram stream: a whole
/// 1472-byte UDP payload (the most an unfragmented 1500-byte IPv4 packet holds) plus the
/// largest flow id. Fixed, so UDP tunnels behave the same whatever the TCP path's MTU; QUIC's
/// limit on a typical Internet path is 1200-1452.
pub const MAX_DATAGRAM: usize = 1472 + crate::datagram::MAX_HEADER_LEN;
/// Largest close reason sent or accepted, in bytes.
pub const MAX_REASON: usize = 256;
/// Datagram-stream frame header: kind + length.
pub(crate) const FRAME_HEADER: usize = 3;

const KIND_DATAGRAM: u8 = 0;
const KIND_PING: u8 = 1;
const KIND_PONG: u8 = 2;
const KIND_CLOSE: u8 = 3;

/// Where a close reason is cut: at most [`MAX_REASON`] bytes, on a character boundary.
fn reason_end(reason: &str) -> usize {
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    end
}

/// One frame of the datagram stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DgramFrame {
    /// An encoded datagram (`[flow id][payload]`).
    Datagram(Bytes),
    /// Liveness probe; the peer answers with the same value.
    Ping(u64),
    /// Answer to a ping.
    Pong(u64),
    /// The sender closes the connection with this code and reason.
    Close {
        /// Close code from [`crate::codes`].
        code: u32,
        /// Human-readable reason.
        reason: String,
    },
}

/// A datagram-stream frame that does not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DgramFrameError {
    /// Unknown frame kind.
    #[error("unknown datagram-stream frame kind {0}")]
    Kind(u8),
    /// The body is too long or too short for its kind.
    #[error("datagram-stream frame of kind {kind} with a bad length {len}")]
    Length {
        /// Frame kind.
        kind: u8,
        /// Body length.
        len: usize,
    },
    /// The frame is too large to encode.
    #[error("datagram of {0} bytes is larger than {MAX_DATAGRAM}")]
    TooLarge(usize),
}

impl DgramFrame {
    /// Append the encoded frame to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) -> Result<(), DgramFrameError> {
        match self {
            DgramFrame::Datagram(d) => {
                if d.len() > MAX_DATAGRAM {
                    return Err(DgramFrameError::TooLarge(d.len()));
                }
                dst.reserve(FRAME_HEADER + d.len());
                dst.put_u8(KIND_DATAGRAM);
                dst.put_u16(d.len() as u16);
                dst.put_slice(d);
            }
            DgramFrame::Ping(v) | DgramFrame::Pong(v) => {
                dst.put_u8(if matches!(self, DgramFrame::Ping(_)) {
                    KIND_PING
                } else {
                    KIND_PONG
                });
                dst.put_u16(8);
                dst.put_u64(*v);
            }
            DgramFrame::Close { code, reason } => {
                let reason = &reason.as_bytes()[..reason_end(reason)];
                dst.put_u8(KIND_CLOSE);
                dst.put_u16((4 + reason.len()) as u16);
                dst.put_u32(*code);
                dst.put_slice(reason);
            }
        }
        Ok(())
    }

    /// Take one frame off the front of `src`: `Ok(None)` (and `src` untouched) while it is
    /// incomplete. The length is checked against the kind before more is buffered.
    pub fn decode(src: &mut BytesMut) -> Result<Option<DgramFrame>, DgramFrameError> {
        if src.len() < FRAME_HEADER {
            return Ok(None);
        }
        let kind = src[0];
        let len = usize::from(u16::from_be_bytes([src[1], src[2]]));
        let ok = match kind {
            KIND_DATAGRAM => len <= MAX_DATAGRAM,
            KIND_PING | KIND_PONG => len == 8,
            KIND_CLOSE => (4..=4 + MAX_REASON).contains(&len),
            k => return Err(DgramFrameError::Kind(k)),
        };
        if !ok {
            return Err(DgramFrameError::Length { kind, len });
        }
        if src.len() < FRAME_HEADER + len {
            return Ok(None);
        }
        src.advance(FRAME_HEADER);
        let mut body = src.split_to(len).freeze();
        Ok(Some(match kind {
            KIND_DATAGRAM => DgramFrame::Datagram(body),
            KIND_PING => DgramFrame::Ping(body.get_u64()),
            KIND_PONG => DgramFrame::Pong(body.get_u64()),
            _ => {
                let code = body.get_u32();
                // Invalid UTF-8 grows by replacement characters: cut again, so what decodes
                // also encodes unchanged.
                let mut reason = String::from_utf8_lossy(&body).into_owned();
                reason.truncate(reason_end(&reason));
                DgramFrame::Close { code, reason }
            }
        }))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn roundtrip(f: DgramFrame) {
        let mut b = BytesMut::new();
        f.encode(&mut b).unwrap();
        // Byte at a time: incomplete until the last byte, never an error.
        let all = b.clone();
        let mut part = BytesMut::new();
        for (i, byte) in all.iter().enumerate() {
            part.put_u8(*byte);
            let got = DgramFrame::decode(&mut part).unwrap();
            if i + 1 < all.len() {
                assert_eq!(got, None);
            } else {
                assert_eq!(got, Some(f.clone()));
            }
        }
        assert!(part.is_empty());
    }

    #[test]
    fn frames_round_trip() {
        roundtrip(DgramFrame::Datagram(Bytes::from_static(b"\x01hello")));
        roundtrip(DgramFrame::Datagram(Bytes::new()));
        roundtrip(DgramFrame::Datagram(Bytes::from(vec![7u8; MAX_DATAGRAM])));
        roundtrip(DgramFrame::Ping(u64::MAX));
        roundtrip(DgramFrame::Pong(42));
        roundtrip(DgramFrame::Close {
            code: crate::codes::CLOSE_REVOKED,
            reason: "token revoked".into(),
        });
        roundtrip(DgramFrame::Close {
            code: 0,
            reason: String::new(),
        });
    }

    #[test]
    fn golden_bytes() {
        let mut b = BytesMut::new();
        DgramFrame::Close {
            code: 5,
            reason: "ab".into(),
        }
        .encode(&mut b)
        .unwrap();
        assert_eq!(&b[..], &[3, 0, 6, 0, 0, 0, 5, b'a', b'b']);
        b.clear();
        DgramFrame::Datagram(Bytes::from_static(&[1, 9]))
            .encode(&mut b)
            .unwrap();
        assert_eq!(&b[..], &[0, 0, 2, 1, 9]);
    }

    #[test]
    fn bad_frames_rejected_before_buffering() {
        let mut b = BytesMut::from(&[9u8, 0, 0][..]);
        assert_eq!(DgramFrame::decode(&mut b), Err(DgramFrameError::Kind(9)));
        let mut b = BytesMut::from(&[KIND_DATAGRAM, 0xff, 0xff][..]);
        assert!(matches!(
            DgramFrame::decode(&mut b),
            Err(DgramFrameError::Length { .. })
        ));
        let mut b = BytesMut::from(&[KIND_PING, 0, 7][..]);
        assert!(DgramFrame::decode(&mut b).is_err());
        let mut b = BytesMut::from(&[KIND_CLOSE, 0, 3][..]);
        assert!(DgramFrame::decode(&mut b).is_err());
        assert_eq!(
            DgramFrame::Datagram(Bytes::from(vec![0; MAX_DATAGRAM + 1])).encode(&mut b),
            Err(DgramFrameError::TooLarge(MAX_DATAGRAM + 1))
        );
    }

    #[test]
    fn invalid_utf8_reason_decodes_to_what_encodes_unchanged() {
        // 200 invalid bytes become 200 three-byte replacement characters.
        let mut b = BytesMut::from(&[KIND_CLOSE, 0, 204, 0, 0, 0, 1][..]);
        b.extend_from_slice(&[0xff; 200]);
        let f = DgramFrame::decode(&mut b).unwrap().unwrap();
        let DgramFrame::Close { reason, .. } = &f else {
            panic!("not a close frame");
        };
        assert!(reason.len() <= MAX_REASON);
        roundtrip(f);
    }

    #[test]
    fn long_reason_is_cut_on_a_char_boundary() {
        let mut b = BytesMut::new();
        let reason = "é".repeat(MAX_REASON);
        DgramFrame::Close { code: 1, reason }
            .encode(&mut b)
            .unwrap();
        let Some(DgramFrame::Close { reason, .. }) = DgramFrame::decode(&mut b).unwrap() else {
            panic!("not a close frame");
        };
        assert!(reason.len() <= MAX_REASON);
        assert!(reason.chars().all(|c| c == 'é'));
    }
}

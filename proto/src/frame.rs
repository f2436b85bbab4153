//! Sans-IO framing: `[version u8][length u32 BE][postcard body]`.
//!
//! [`decode`] consumes one whole frame from the front of a buffer, or returns `Ok(None)` and
//! leaves the buffer alone when more bytes are needed. The length is checked before the caller
//! is asked to buffer more, so a peer can make us hold at most [`MAX_FRAME_LEN`] + header bytes.

use bytes::{Buf, BufMut, BytesMut};
use serde::{de::DeserializeOwned, Serialize};

use crate::DecodeError;

/// Protocol version carried in every frame header.
pub const PROTOCOL_VERSION: u8 = 1;
/// Largest frame body accepted or produced (64 KiB).
pub const MAX_FRAME_LEN: usize = 64 * 1024;
/// Bytes of header before the body.
pub const HEADER_LEN: usize = 5;

/// Errors while encoding (only our own bugs or oversized messages).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The message serialised to more than [`MAX_FRAME_LEN`] bytes.
    #[error("message of {0} bytes exceeds the {MAX_FRAME_LEN}-byte frame limit")]
    TooLarge(usize),
    /// Serialisation failed.
    #[error("encoding failed: {0}")]
    Body(#[from] postcard::Error),
}

/// Append one frame holding `msg` to `dst`.
pub fn encode<T: Serialize>(msg: &T, dst: &mut BytesMut) -> Result<(), EncodeError> {
    let body = postcard::to_allocvec(msg)?;
    if body.len() > MAX_FRAME_LEN {
        return Err(EncodeError::TooLarge(body.len()));
    }
    dst.reserve(HEADER_LEN + body.len());
    dst.put_u8(PROTOCOL_VERSION);
    dst.put_u32(body.len() as u32);
    dst.put_slice(&body);
    Ok(())
}

/// Check the header at the front of `src`: `Ok(Some(len))` once the header is complete and
/// valid, `Ok(None)` while it is incomplete.
fn header(src: &[u8]) -> Result<Option<usize>, DecodeError> {
    let Some(&version) = src.first() else {
        return Ok(None);
    };
    if version != PROTOCOL_VERSION {
        return Err(DecodeError::Version(version));
    }
    let Some(len) = src.get(1..HEADER_LEN) else {
        return Ok(None);
    };
    let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
    if len > MAX_FRAME_LEN {
        return Err(DecodeError::TooLarge(len));
    }
    Ok(Some(len))
}

/// How many more bytes are needed before [`decode`] can make progress (at least 1), or an
/// error if the header already shows the frame is invalid. Lets IO code read exactly up to the
/// end of a frame and never past it.
pub fn needed(src: &[u8]) -> Result<usize, DecodeError> {
    match header(src)? {
        None => Ok(HEADER_LEN - src.len()),
        Some(len) => Ok((HEADER_LEN + len).saturating_sub(src.len()).max(1)),
    }
}

/// Take one frame off the front of `src` and decode its body as `T`.
///
/// `Ok(None)`: incomplete, `src` untouched. `Err`: the stream is unusable, close it.
pub fn decode<T: DeserializeOwned>(src: &mut BytesMut) -> Result<Option<T>, DecodeError> {
    let Some(len) = header(src)? else {
        return Ok(None);
    };
    if src.len() < HEADER_LEN + len {
        return Ok(None);
    }
    src.advance(HEADER_LEN);
    let body = src.split_to(len);
    let (msg, rest) = postcard::take_from_bytes::<T>(&body)?;
    if !rest.is_empty() {
        return Err(DecodeError::Trailing(rest.len()));
    }
    Ok(Some(msg))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Control, GoAway};

    #[test]
    fn oversized_length_rejected_before_buffering() {
        let mut b = BytesMut::from(&[PROTOCOL_VERSION, 0xff, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            decode::<Control>(&mut b),
            Err(DecodeError::TooLarge(_))
        ));
        assert!(needed(&b).is_err());
    }

    #[test]
    fn wrong_version_is_incompatible() {
        let mut b = BytesMut::from(&[9u8][..]);
        let e = decode::<Control>(&mut b).unwrap_err();
        assert_eq!(e, DecodeError::Version(9));
        assert_eq!(e.fault(), crate::Fault::Incompatible);
    }

    #[test]
    fn leftovers_stay_in_buffer() {
        let mut b = BytesMut::new();
        encode(&Control::Ping(7), &mut b).unwrap();
        b.extend_from_slice(b"raw bytes after the frame");
        assert_eq!(decode::<Control>(&mut b).unwrap(), Some(Control::Ping(7)));
        assert_eq!(&b[..], b"raw bytes after the frame");
    }

    #[test]
    fn trailing_bytes_inside_frame_rejected() {
        let mut b = BytesMut::new();
        b.put_u8(PROTOCOL_VERSION);
        b.put_u32(3);
        b.put_slice(&[3, 7, 0]); // Ping(7) followed by a stray byte
        assert_eq!(
            decode::<Control>(&mut b).unwrap_err(),
            DecodeError::Trailing(1)
        );
    }

    #[test]
    fn needed_counts_to_frame_end() {
        let mut b = BytesMut::new();
        encode(
            &Control::GoAway(GoAway {
                reason: "bye".into(),
                reconnect_after_ms: 0,
            }),
            &mut b,
        )
        .unwrap();
        let total = b.len();
        assert_eq!(needed(&[]).unwrap(), HEADER_LEN);
        assert_eq!(needed(&b[..2]).unwrap(), HEADER_LEN - 2);
        assert_eq!(needed(&b[..HEADER_LEN]).unwrap(), total - HEADER_LEN);
    }
}

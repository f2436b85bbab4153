//! UDP flows as unreliable datagrams: `[flow id: QUIC varint][payload]`.
//!
//! ## Flows
//!
//! Each visitor address:port on a relay's public UDP port is one **flow**. The relay assigns
//! flow ids (per agent session, counting up from 1, never reused within a session) and
//! announces each new flow to the agent on its own data stream: a [`crate::StreamOpen`] with
//! [`crate::StreamKind::Udp`] naming the tunnel, the flow id and the visitor's address (so the
//! agent can prefix a PROXY v2 header). The agent opens one connected UDP socket toward the
//! tunnel's pinned target and answers [`crate::StreamReply::Connected`]; only then does the
//! relay forward the flow's datagrams (it queues a few while it waits), so a datagram never
//! arrives before its flow is known. The flow lives as long as that stream: either side ends
//! the stream to end the flow (the relay does when the flow is idle).
//!
//! ## Datagrams
//!
//! ```text
//! +---------------------------+----------------------------------+
//! | flow id: varint (1..8 B)  | payload: the UDP payload, whole  |
//! +---------------------------+----------------------------------+
//! ```
//!
//! The varint is QUIC's (RFC 9000 §16): the top two bits of the first byte give the length
//! (1, 2, 4 or 8 bytes), so flow ids run up to 2^62 - 1. A payload is never split or
//! truncated: one that does not fit the path ([`max_payload`]) is dropped and counted by the
//! caller. This module is transport-agnostic: over QUIC each encoded datagram is one QUIC
//! DATAGRAM frame; over a stream transport it is framed on a dedicated stream.

use bytes::{BufMut, Bytes, BytesMut};

/// Largest flow id a varint can carry.
pub const MAX_FLOW_ID: u64 = (1 << 62) - 1;

/// Largest flow header ([`header_len`] of [`MAX_FLOW_ID`]).
pub const MAX_HEADER_LEN: usize = 8;

/// A datagram that does not decode, or a flow id that cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DatagramError {
    /// The datagram ends inside its flow id.
    #[error("datagram of {0} bytes ends inside its flow id")]
    Truncated(usize),
    /// The flow id is above [`MAX_FLOW_ID`].
    #[error("flow id {0} is above 2^62 - 1")]
    FlowTooLarge(u64),
}

/// Bytes the flow id `flow` takes on the wire (1, 2, 4 or 8).
pub fn header_len(flow: u64) -> usize {
    match flow {
        0..=0x3f => 1,
        0x40..=0x3fff => 2,
        0x4000..=0x3fff_ffff => 4,
        _ => 8,
    }
}

/// Largest payload of flow `flow` in a datagram of at most `max_datagram` bytes (what the
/// transport's `max_datagram_size` says now).
pub fn max_payload(max_datagram: usize, flow: u64) -> usize {
    max_datagram.saturating_sub(header_len(flow))
}

/// Encode one datagram of flow `flow`.
pub fn encode(flow: u64, payload: &[u8]) -> Result<Bytes, DatagramError> {
    if flow > MAX_FLOW_ID {
        return Err(DatagramError::FlowTooLarge(flow));
    }
    let mut out = BytesMut::with_capacity(header_len(flow) + payload.len());
    match header_len(flow) {
        1 => out.put_u8(flow as u8),
        2 => out.put_u16(0x4000 | flow as u16),
        4 => out.put_u32(0x8000_0000 | flow as u32),
        _ => out.put_u64(0xc000_0000_0000_0000 | flow),
    }
    out.put_slice(payload);
    Ok(out.freeze())
}

/// Decode a datagram into its flow id and payload (the payload shares `datagram`'s memory).
/// Any byte string is either a datagram or an error: never a panic.
pub fn decode(mut datagram: Bytes) -> Result<(u64, Bytes), DatagramError> {
    let total = datagram.len();
    let Some(&first) = datagram.first() else {
        return Err(DatagramError::Truncated(0));
    };
    let len = 1usize << (first >> 6);
    let Some(head) = datagram.get(..len) else {
        return Err(DatagramError::Truncated(total));
    };
    let mut flow = u64::from(first & 0x3f);
    for &b in head.iter().skip(1) {
        flow = (flow << 8) | u64::from(b);
    }
    let payload = datagram.split_off(len);
    Ok((flow, payload))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rfc9000_examples() {
        // RFC 9000 appendix A.1 sample varints.
        assert_eq!(
            decode(Bytes::from_static(&[0x25, 1])).unwrap(),
            (37, Bytes::from_static(&[1]))
        );
        assert_eq!(decode(Bytes::from_static(&[0x40, 0x25])).unwrap().0, 37);
        assert_eq!(decode(Bytes::from_static(&[0x7b, 0xbd])).unwrap().0, 15293);
        assert_eq!(
            decode(Bytes::from_static(&[0x9d, 0x7f, 0x3e, 0x7d]))
                .unwrap()
                .0,
            494_878_333
        );
        assert_eq!(
            decode(Bytes::from_static(&[
                0xc2, 0x19, 0x7c, 0x5e, 0xff, 0x14, 0xe8, 0x8c
            ]))
            .unwrap()
            .0,
            151_288_809_941_952_652
        );
        assert_eq!(&encode(15293, b"").unwrap()[..], &[0x7b, 0xbd]);
    }

    #[test]
    fn truncated_and_too_large() {
        assert_eq!(decode(Bytes::new()), Err(DatagramError::Truncated(0)));
        assert_eq!(
            decode(Bytes::from_static(&[0x80, 1, 2])),
            Err(DatagramError::Truncated(3))
        );
        assert_eq!(
            encode(MAX_FLOW_ID + 1, b"x"),
            Err(DatagramError::FlowTooLarge(MAX_FLOW_ID + 1))
        );
        assert_eq!(header_len(MAX_FLOW_ID), MAX_HEADER_LEN);
        assert_eq!(max_payload(1200, 1), 1199);
        assert_eq!(max_payload(0, 1), 0);
    }
}

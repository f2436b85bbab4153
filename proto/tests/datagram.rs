//! Property tests for the UDP datagram codec: every (flow, payload) round-trips, the header
//! length matches the varint size, and arbitrary bytes decode or fail without panicking.
#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use periscope_proto::datagram::{self, DatagramError, MAX_FLOW_ID};
use proptest::prelude::*;

fn flow() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..=0x3f,
        0x40u64..=0x3fff,
        0x4000u64..=0x3fff_ffff,
        0x4000_0000u64..=MAX_FLOW_ID,
    ]
}

proptest! {
    #[test]
    fn roundtrip(flow in flow(), payload in prop::collection::vec(any::<u8>(), 0..1500)) {
        let wire = datagram::encode(flow, &payload).unwrap();
        prop_assert_eq!(wire.len(), datagram::header_len(flow) + payload.len());
        let (f, p) = datagram::decode(wire).unwrap();
        prop_assert_eq!(f, flow);
        prop_assert_eq!(&p[..], &payload[..]);
    }

    #[test]
    fn max_payload_fits(flow in flow(), max in 0usize..2000) {
        let n = datagram::max_payload(max, flow);
        let wire = datagram::encode(flow, &vec![0u8; n]).unwrap();
        prop_assert!(wire.len() <= max || n == 0);
    }

    #[test]
    fn flow_ids_above_62_bits_refused(flow in (MAX_FLOW_ID + 1)..=u64::MAX) {
        prop_assert_eq!(datagram::encode(flow, b"x"), Err(DatagramError::FlowTooLarge(flow)));
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
        match datagram::decode(Bytes::from(bytes.clone())) {
            Ok((flow, payload)) => {
                prop_assert!(flow <= MAX_FLOW_ID);
                prop_assert_eq!(payload.len() + (1usize << (bytes[0] >> 6)), bytes.len());
            }
            Err(DatagramError::Truncated(n)) => prop_assert_eq!(n, bytes.len()),
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }
}

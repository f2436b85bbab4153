//! Raw bytes → UDP datagram decoder: must return Ok or Err, never panic; whatever decodes
//! re-encodes to a datagram that decodes to the same flow and payload.
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use periscope_proto::datagram;

fuzz_target!(|data: &[u8]| {
    if let Ok((flow, payload)) = datagram::decode(Bytes::copy_from_slice(data)) {
        let again = datagram::encode(flow, &payload).expect("a decoded flow id encodes");
        let (f, p) = datagram::decode(again).expect("an encoded datagram decodes");
        assert_eq!((f, p), (flow, payload));
    }
});

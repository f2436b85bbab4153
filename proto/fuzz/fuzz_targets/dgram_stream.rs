//! Raw bytes → the TCP fallback's datagram-stream frame decoder: Ok or Err, never a panic;
//! `Ok(None)` leaves the input untouched; whatever decodes encodes back to the same frame.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use periscope_proto::dgram_stream::DgramFrame;

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    loop {
        let before = buf.len();
        match DgramFrame::decode(&mut buf) {
            Ok(Some(frame)) => {
                let mut again = BytesMut::new();
                frame.encode(&mut again).expect("a decoded frame encodes");
                assert_eq!(DgramFrame::decode(&mut again), Ok(Some(frame)));
                assert!(again.is_empty());
            }
            Ok(None) => {
                assert_eq!(buf.len(), before);
                break;
            }
            Err(_) => break,
        }
    }
});

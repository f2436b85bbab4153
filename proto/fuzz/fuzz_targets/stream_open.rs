//! Raw bytes → frame decoder for `StreamOpen`: must return Ok or Err, never panic, and whatever
//! decodes must encode back to a frame that decodes to the same value.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use periscope_proto::{decode, encode, StreamOpen};

fuzz_target!(|data: &[u8]| {
    let mut buf = BytesMut::from(data);
    while let Ok(Some(msg)) = decode::<StreamOpen>(&mut buf) {
        let mut again = BytesMut::new();
        encode(&msg, &mut again).expect("a decoded message encodes");
        assert_eq!(decode::<StreamOpen>(&mut again).ok().flatten(), Some(msg));
    }
});

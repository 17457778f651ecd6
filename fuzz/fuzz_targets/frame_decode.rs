//! Frame headers from arbitrary bytes: never panics; anything accepted re-encodes to the
//! same header bytes (the decoder only accepts minimal encodings).
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomcast_core::fuzzing::{decode_header, encode_header, MAX_HEADER_LEN};

fuzz_target!(|data: &[u8]| {
    if let Ok(Some((h, n))) = decode_header(data) {
        let mut out = [0u8; MAX_HEADER_LEN];
        let m = encode_header(&mut out, h.fin, h.opcode, h.mask, h.payload_len);
        if h.rsv == 0 {
            assert_eq!(&out[..m], &data[..n], "decode/encode round trip");
        }
    }
});

//! The client handshake's response parser: never panics on arbitrary server bytes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomcast_core::handshake::ClientHandshake;

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let mut hs = ClientHandshake::new("h", "/ws", [7; 16], &["roomcast.v1"], &[]);
    for piece in data.chunks(usize::from(chunk).max(1)) {
        match hs.feed(piece) {
            Ok(Some(_)) | Err(_) => return,
            Ok(None) => {}
        }
    }
});

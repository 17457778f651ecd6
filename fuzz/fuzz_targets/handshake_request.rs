//! The server handshake parser fed arbitrary bytes in arbitrary chunks: never panics,
//! never holds more than its cap, and `accept` never panics on what it parsed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomcast_core::handshake::{accept, RequestParser, ServerPolicy};

fuzz_target!(|input: (u8, &[u8])| {
    let (chunk, data) = input;
    let chunk = usize::from(chunk).max(1);
    let mut parser = RequestParser::new(1024);
    let policy = ServerPolicy {
        allowed_origins: vec!["https://ok.example".into()],
        subprotocols: vec!["roomcast.v1".into()],
    };
    for piece in data.chunks(chunk) {
        match parser.feed(piece) {
            Ok(Some((req, used))) => {
                assert!(used <= piece.len());
                let _ = accept(&req, &policy).map(|a| a.response_bytes());
                let _ = req.query_param("user");
                return;
            }
            Ok(None) => {}
            Err(_) => return,
        }
    }
});

//! A `Connection` in either role fed arbitrary bytes in arbitrary chunks: never panics,
//! never reports a text message that is not UTF-8 or larger than its limit, and goes
//! quiet after it closes.
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomcast_core::connection::{Connection, ConnectionConfig, WsEvent};
use roomcast_core::rng::Rng;

fuzz_target!(|input: (bool, u8, &[u8])| {
    let (server, chunk, data) = input;
    let config = ConnectionConfig {
        max_message_size: 4096,
        ..Default::default()
    };
    let mut conn = if server {
        Connection::server(config)
    } else {
        Connection::client(config, Rng::from_u64(1))
    };
    let mut closed = false;
    for piece in data.chunks(usize::from(chunk).max(1)) {
        conn.handle_read(piece);
        while let Some(ev) = conn.poll_event() {
            assert!(!closed, "event after close");
            match ev {
                WsEvent::Text(t) => {
                    assert!(std::str::from_utf8(t.as_bytes()).is_ok());
                    assert!(t.len() <= 4096);
                }
                WsEvent::Binary(b) => assert!(b.len() <= 4096),
                WsEvent::Closed { .. } | WsEvent::Failed { .. } => closed = true,
                WsEvent::Ping(_) | WsEvent::Pong(_) => {}
            }
        }
        while conn.poll_transmit().is_some() {}
    }
});

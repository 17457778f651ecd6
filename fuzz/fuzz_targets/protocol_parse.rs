//! The JSON request parser on arbitrary text, and the hub answering it: never panics,
//! and every reply is valid JSON.
#![no_main]
use libfuzzer_sys::fuzz_target;
use roomcast_core::hub::ConnectRequest;
use roomcast_core::{Hub, HubConfig, Output, Timestamp};

fuzz_target!(|text: &str| {
    let _ = roomcast_core::protocol::parse_request(text);
    let mut hub = Hub::new(HubConfig::default(), [1; 32], Timestamp(0));
    let id = hub.connect(Timestamp(0), ConnectRequest::default()).expect("room for one");
    hub.handle_text(Timestamp(1), id, text).expect("known connection");
    while let Some(out) = hub.poll_output() {
        if let Output::Send { msg, .. } = out {
            serde_json::from_str::<serde_json::Value>(msg.text()).expect("replies are JSON");
        }
    }
    hub.check_invariants();
});

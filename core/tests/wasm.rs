//! The core's behaviour on wasm32, where an accidental clock read (`Instant::now`) or
//! ambient randomness would panic: the hub simulation, the client machine and the
//! frame codec run here under `wasm-bindgen-test` (node).
//!
//! Run: `cargo test -p roomcast-core --target wasm32-unknown-unknown --test wasm`.
#![cfg(target_arch = "wasm32")]

mod support;

use roomcast_core::client::{Client, ClientConfig, ClientOutput};
use roomcast_core::connection::{Connection, ConnectionConfig, WsEvent};
use roomcast_core::rng::Rng;
use roomcast_core::Timestamp;
use support::sim::{run_seed, SimConfig};
use wasm_bindgen_test::wasm_bindgen_test;

#[wasm_bindgen_test]
fn hub_simulation_runs_on_wasm() {
    let mut total = support::sim::SimReport::default();
    for seed in 0..40 {
        total.add(&run_seed(seed, &SimConfig::default()));
    }
    assert!(
        total.room_deliveries > 0 && total.heartbeat_reaps > 0,
        "{total:?}"
    );
}

#[wasm_bindgen_test]
fn client_machine_runs_on_wasm() {
    let mut c = Client::new(
        ClientConfig {
            url: "ws://x/ws".into(),
            ..Default::default()
        },
        [5; 32],
        Timestamp(0),
    );
    assert!(matches!(
        c.poll_output(),
        Some(ClientOutput::Connect { .. })
    ));
    c.handle_close(Timestamp(1), 1, Some(1006));
    let t = c.poll_timeout().expect("retry scheduled");
    assert!(t.0 <= 501);
}

#[wasm_bindgen_test]
fn frames_round_trip_on_wasm() {
    let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(1));
    let mut server = Connection::server(ConnectionConfig::default());
    client.send_text("héllo wasm").unwrap();
    while let Some(b) = client.poll_transmit() {
        server.handle_read(&b);
    }
    match server.poll_event() {
        Some(WsEvent::Text(t)) => assert_eq!(t.as_str(), "héllo wasm"),
        other => panic!("{other:?}"),
    }
}

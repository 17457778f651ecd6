//! Token checks on arbitrary input never panic: as a token string against every kind of
//! key, and (when the input is a JSON object) as the claims of a correctly signed HS256
//! token, so the claim parsing (`sub`, `exp`, `info`, `rooms`, `caps`) is reached too,
//! then through a hub that admits connections by token.
#![no_main]
use std::sync::Arc;

use jsonwebtoken::{encode, EncodingKey, Header};
use libfuzzer_sys::fuzz_target;
use roomcast_core::auth::{AuthConfig, KeySet, Verifier};
use roomcast_core::hub::ConnectRequest;
use roomcast_core::{Hub, HubConfig, Output, Timestamp};

const SECRET: &[u8] = b"fuzzing-secret-fuzzing-secret-32";
const GOLDEN: &str = include_str!("../../core/tests/data/golden_tokens.json");

fn verifier() -> Verifier {
    let doc: serde_json::Value = serde_json::from_str(GOLDEN).unwrap();
    let mut keys = KeySet::new();
    keys.add_secret(SECRET).unwrap();
    keys.add_pem(doc["public_keys"].as_str().unwrap()).unwrap();
    Verifier::new(AuthConfig {
        keys,
        ..AuthConfig::default()
    })
}

fuzz_target!(|text: &str| {
    let v = Arc::new(verifier());
    let now = 1_900_000_000_000;
    let _ = v.connection(text, now);
    let _ = v.room(text, Some("ada"), "room", now);
    let _ = KeySet::new().add_pem(text);
    let signed = serde_json::from_str::<Box<serde_json::value::RawValue>>(text)
        .ok()
        .and_then(|claims| encode(&Header::default(), &claims, &EncodingKey::from_secret(SECRET).ok()?).ok());
    if let Some(t) = &signed {
        let _ = v.connection(t, now);
        let _ = v.room(t, Some("ada"), "room", now);
    }
    let config = HubConfig {
        auth: Some(v),
        clock_unix_ms: now,
        ..HubConfig::default()
    };
    let mut hub = Hub::new(config, [1; 32], Timestamp(0));
    let token = signed.unwrap_or_else(|| text.to_owned());
    let req = ConnectRequest {
        token: Some(token.clone()),
        ..Default::default()
    };
    let _ = hub.connect(Timestamp(0), req);
    if let Ok(id) = hub.connect(Timestamp(0), ConnectRequest::default()) {
        let auth = serde_json::json!({"type": "auth", "token": token}).to_string();
        hub.handle_text(Timestamp(1), id, &auth).unwrap();
        let join = serde_json::json!({"type": "join", "room": "room", "token": token}).to_string();
        let _ = hub.handle_text(Timestamp(2), id, &join);
    }
    hub.handle_timeout(Timestamp(3_600_000_000));
    while let Some(out) = hub.poll_output() {
        if let Output::Send { msg, .. } = out {
            serde_json::from_str::<serde_json::Value>(msg.text()).expect("replies are JSON");
        }
    }
    hub.check_invariants();
});

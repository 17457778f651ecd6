//! Tokens minted by PyJWT (`tests/auth/mint_golden.py`), checked by the core's verifier:
//! every algorithm roomcast accepts, each fault with the answer PROTOCOL.md gives it.

use std::time::Duration;

use roomcast_core::auth::{AuthConfig, AuthError, KeySet, Verifier};
use serde_json::Value;

const GOLDEN: &str = include_str!("data/golden_tokens.json");

fn verifier(doc: &Value) -> Verifier {
    let mut keys = KeySet::new();
    keys.add_secret(doc["secret"].as_str().unwrap().as_bytes())
        .unwrap();
    assert_eq!(keys.add_pem(doc["public_keys"].as_str().unwrap()), Ok(3));
    Verifier::new(AuthConfig {
        keys,
        audience: Some(doc["audience"].as_str().unwrap().to_owned()),
        issuer: Some(doc["issuer"].as_str().unwrap().to_owned()),
        leeway: Duration::from_secs(doc["leeway"].as_u64().unwrap()),
        ..AuthConfig::default()
    })
}

fn answer(r: &Result<roomcast_core::auth::Identity, AuthError>) -> &'static str {
    match r {
        Ok(_) => "ok",
        Err(AuthError::Expired) => "expired",
        Err(AuthError::NotYetValid) => "not_yet_valid",
        Err(AuthError::BadSignature) => "bad_signature",
        Err(AuthError::Audience) => "audience",
        Err(AuthError::Issuer) => "issuer",
        Err(AuthError::UnknownKey(_)) => "unknown_key",
        Err(AuthError::MissingClaim(_)) => "missing_claim",
        Err(AuthError::Malformed) => "malformed",
        Err(AuthError::Algorithm(_)) => "algorithm",
        Err(other) => panic!("unexpected {other:?}"),
    }
}

#[test]
fn every_golden_token_gets_its_documented_answer() {
    let doc: Value = serde_json::from_str(GOLDEN).unwrap();
    let v = verifier(&doc);
    let now = doc["now"].as_u64().unwrap() * 1000;
    let mut algs = std::collections::BTreeSet::new();
    let cases = doc["cases"].as_array().unwrap();
    for case in cases {
        let got = v.connection(case["token"].as_str().unwrap(), now);
        assert_eq!(
            answer(&got),
            case["expect"].as_str().unwrap(),
            "{} / {}: {got:?}",
            case["alg"],
            case["name"]
        );
        if let Ok(id) = got {
            assert_eq!(id.user, "ada");
            // exp is read onto the hub's clock: an hour after `now`.
            if case["name"] == "valid" {
                assert_eq!(id.expires_unix_ms, now + 3_600_000);
            }
            algs.insert(case["alg"].as_str().unwrap().to_owned());
        }
    }
    let want: std::collections::BTreeSet<String> = ["HS256", "RS256", "ES256", "EdDSA"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(algs, want, "a valid token of every algorithm passes");
    assert!(cases.len() >= 50);
}

#[test]
fn the_same_tokens_expire_on_the_given_clock_not_the_system_clock() {
    let doc: Value = serde_json::from_str(GOLDEN).unwrap();
    let v = verifier(&doc);
    let valid = doc["cases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["alg"] == "EdDSA" && c["name"] == "valid")
        .unwrap()["token"]
        .as_str()
        .unwrap();
    // exp is now + 3600 s; the leeway is 5 s.
    let now = doc["now"].as_u64().unwrap() * 1000;
    assert!(v.connection(valid, now + 3_605_000).is_ok());
    assert_eq!(
        v.connection(valid, now + 3_605_001).unwrap_err(),
        AuthError::Expired
    );
}

#[test]
fn without_the_secret_hs256_is_an_algorithm_no_key_verifies() {
    let doc: Value = serde_json::from_str(GOLDEN).unwrap();
    let mut keys = KeySet::new();
    keys.add_pem(doc["public_keys"].as_str().unwrap()).unwrap();
    let v = Verifier::new(AuthConfig {
        keys,
        ..AuthConfig::default()
    });
    for case in doc["cases"].as_array().unwrap() {
        if case["alg"] == "HS256" {
            let got = v.connection(
                case["token"].as_str().unwrap(),
                doc["now"].as_u64().unwrap() * 1000,
            );
            assert!(
                matches!(got, Err(AuthError::Algorithm(_))),
                "{}: {got:?}",
                case["name"]
            );
        }
    }
}

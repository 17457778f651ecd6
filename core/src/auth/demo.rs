//! Demo tokens: `GET /demo/token?user=NAME` (natively) or `/hub/{name}/demo/token` (the
//! Worker) mints a short-lived HS256 token for any name, with no password. It exists so
//! the chat demo, and anyone trying roomcast, sees the real token flow (first-message
//! `auth`, `expiring`, refresh through the client's token function) before writing a
//! backend. It proves nothing about who the caller is: never turn it on where identity
//! matters; mint tokens in your own backend instead.
//!
//! The answer is decided here so both runtimes give the same one: 200 `{"token",
//! "expires_in"}`; 400 for a missing or invalid name; 204 (no body) when the server
//! mints no demo tokens, so a page can find out without an error in its console.

use jsonwebtoken::{encode, EncodingKey, Header};
use serde_json::json;

use crate::handshake::query_value;
use crate::protocol;

/// How demo tokens are signed and how long they live (see the module docs).
#[derive(Clone, PartialEq, Eq)]
pub struct DemoTokens {
    secret: Vec<u8>,
    ttl_s: u64,
    audience: Option<String>,
    issuer: Option<String>,
}

impl std::fmt::Debug for DemoTokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // never the secret
        f.debug_struct("DemoTokens")
            .field("ttl_s", &self.ttl_s)
            .finish_non_exhaustive()
    }
}

/// Why no demo token was minted.
#[derive(Debug, thiserror::Error)]
pub enum DemoTokenError {
    /// `user` is missing, undecodable or breaks the protocol's name rules.
    #[error("give ?user=NAME: 1 to 128 bytes of UTF-8, no control characters")]
    BadUser,
    /// The signing library refused (an unusable secret).
    #[error("cannot sign: {0}")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

/// An HTTP answer for the demo token route: status and JSON body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DemoAnswer {
    /// 200, 204 or 400 (500 if signing failed).
    pub status: u16,
    /// JSON, or empty.
    pub body: String,
}

impl DemoTokens {
    /// Signs with `secret` (the HS256 secret the hub verifies with) tokens that live
    /// `ttl_s` seconds (at least 1).
    pub fn new(secret: impl Into<Vec<u8>>, ttl_s: u64) -> DemoTokens {
        DemoTokens {
            secret: secret.into(),
            ttl_s: ttl_s.max(1),
            audience: None,
            issuer: None,
        }
    }

    /// Also writes `aud` and `iss` (those the server requires, so its own demo tokens
    /// pass its checks).
    pub fn with_audience_issuer(
        mut self,
        audience: Option<String>,
        issuer: Option<String>,
    ) -> DemoTokens {
        self.audience = audience;
        self.issuer = issuer;
        self
    }

    /// Lifetime of each token, in seconds.
    pub fn ttl_s(&self) -> u64 {
        self.ttl_s
    }

    /// A token for `user`, valid from `now_unix_ms`; its `info` says it is a demo token
    /// so everyone who sees it in `from` or presence can tell.
    pub fn mint(&self, user: &str, now_unix_ms: u64) -> Result<String, DemoTokenError> {
        if !protocol::valid_name(user) {
            return Err(DemoTokenError::BadUser);
        }
        let now = now_unix_ms / 1000;
        let mut claims = json!({
            "sub": user,
            "iat": now,
            "exp": now.saturating_add(self.ttl_s),
            "info": {"name": user, "demo": true},
        });
        if let Some(aud) = &self.audience {
            claims["aud"] = aud.as_str().into();
        }
        if let Some(iss) = &self.issuer {
            claims["iss"] = iss.as_str().into();
        }
        let key = EncodingKey::from_secret(&self.secret).map_err(DemoTokenError::Sign)?;
        encode(&Header::default(), &claims, &key).map_err(DemoTokenError::Sign)
    }
}

/// The answer to `GET …/demo/token?query` at `now_unix_ms`, by a server minting with
/// `demo` (or none).
pub fn demo_token_answer(
    demo: Option<&DemoTokens>,
    query: Option<&str>,
    now_unix_ms: u64,
) -> DemoAnswer {
    let Some(demo) = demo else {
        return DemoAnswer {
            status: 204,
            body: String::new(),
        };
    };
    let minted = match query.and_then(|q| query_value(q, "user")) {
        Some(Ok(user)) => demo.mint(&user, now_unix_ms),
        _ => Err(DemoTokenError::BadUser),
    };
    let (status, body) = match minted {
        Ok(token) => (200, json!({"token": token, "expires_in": demo.ttl_s})),
        Err(e @ DemoTokenError::BadUser) => (
            400,
            json!({"error": {"code": "bad_request", "message": e.to_string()}}),
        ),
        Err(e @ DemoTokenError::Sign(_)) => (
            500,
            json!({"error": {"code": "internal", "message": e.to_string()}}),
        ),
    };
    DemoAnswer {
        status,
        body: body.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::{AuthConfig, KeySet, Verifier};

    const SECRET: &[u8] = b"demo-secret-0123456789abcdef-0123456789";
    const NOW_MS: u64 = 1_900_000_000_000;

    fn verifier() -> Verifier {
        let mut keys = KeySet::new();
        keys.add_secret(SECRET).unwrap();
        Verifier::new(AuthConfig {
            keys,
            ..AuthConfig::default()
        })
    }

    #[test]
    fn minted_tokens_verify_with_the_same_secret_and_expire() {
        let d = DemoTokens::new(SECRET, 60);
        let t = d.mint("ada lovelace", NOW_MS + 999).unwrap();
        let id = verifier().connection(&t, NOW_MS).unwrap();
        assert_eq!(id.user, "ada lovelace");
        assert_eq!(id.expires_unix_ms, NOW_MS + 60_000);
        assert!(id.info.unwrap().get().contains("\"demo\":true"));
        assert!(
            verifier().connection(&t, NOW_MS + 70_000).is_err(),
            "expired"
        );
        assert!(matches!(d.mint("", 0), Err(DemoTokenError::BadUser)));
        assert!(!format!("{d:?}").contains("demo-secret"));
        assert_eq!(DemoTokens::new(SECRET, 0).ttl_s(), 1);
    }

    #[test]
    fn a_server_requiring_aud_and_iss_accepts_its_own_demo_tokens() {
        let mut keys = KeySet::new();
        keys.add_secret(SECRET).unwrap();
        let v = Verifier::new(AuthConfig {
            keys,
            audience: Some("app".into()),
            issuer: Some("https://me".into()),
            ..AuthConfig::default()
        });
        let plain = DemoTokens::new(SECRET, 60).mint("ann", NOW_MS).unwrap();
        assert!(v.connection(&plain, NOW_MS).is_err());
        let d = DemoTokens::new(SECRET, 60)
            .with_audience_issuer(Some("app".into()), Some("https://me".into()));
        let t = d.mint("ann", NOW_MS).unwrap();
        assert_eq!(v.connection(&t, NOW_MS).unwrap().user, "ann");
    }

    #[test]
    fn the_route_answers_the_same_everywhere() {
        let d = DemoTokens::new(SECRET, 60);
        let ok = demo_token_answer(Some(&d), Some("x=1&user=J%C3%BCrgen+K"), NOW_MS);
        assert_eq!(ok.status, 200);
        let body: serde_json::Value = serde_json::from_str(&ok.body).unwrap();
        assert_eq!(body["expires_in"], 60);
        let id = verifier()
            .connection(body["token"].as_str().unwrap(), NOW_MS)
            .unwrap();
        assert_eq!(id.user, "Jürgen K");
        for q in [None, Some("user="), Some("user=%zz"), Some("users=a")] {
            let a = demo_token_answer(Some(&d), q, NOW_MS);
            assert_eq!(a.status, 400, "{q:?}");
            assert!(a.body.contains("bad_request"));
        }
        assert_eq!(
            demo_token_answer(None, Some("user=ann"), NOW_MS),
            DemoAnswer {
                status: 204,
                body: String::new()
            }
        );
    }
}

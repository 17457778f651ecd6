//! Checking a token: signature by the `jsonwebtoken` crate, everything about time by the
//! hub's own clock, then the claims roomcast reads (`sub`, `info`, `rooms`, `caps` for a
//! connection; `sub`, `room`, `allow`, `info` for a room token).

use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::value::RawValue;

use super::caps::{Caps, CapsError, Ops, Scope};
use super::keys::KeySet;
use crate::protocol;

/// The most leeway allowed on `exp` and `nbf` (PROTOCOL.md: at most 5 s).
pub const MAX_LEEWAY: Duration = Duration::from_secs(5);

/// The largest `info` claim, serialized.
pub const MAX_INFO_LEN: usize = 1024;

/// How tokens are checked, and what an authenticated connection is held to.
#[derive(Debug)]
pub struct AuthConfig {
    /// The keys; empty means tokens are not used (the open default).
    pub keys: KeySet,
    /// When set, a token's `aud` must contain this.
    pub audience: Option<String>,
    /// When set, a token's `iss` must equal this.
    pub issuer: Option<String>,
    /// Slack on `exp` and `nbf` for clocks that disagree (capped at [`MAX_LEEWAY`]).
    pub leeway: Duration,
    /// A token without `caps` has no rights (instead of the open default's all).
    pub deny_by_default: bool,
    /// How long before `exp` the connection is sent `expiring`.
    pub expiring_notice: Duration,
    /// How long after `exp` a connection that sent no new token is closed 4001.
    pub grace: Duration,
    /// How long a connection that did not present a token in the URL has to send `auth`.
    pub auth_timeout: Duration,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            keys: KeySet::new(),
            audience: None,
            issuer: None,
            leeway: MAX_LEEWAY,
            deny_by_default: false,
            expiring_notice: Duration::from_secs(30),
            grace: Duration::from_secs(10),
            auth_timeout: Duration::from_secs(10),
        }
    }
}

/// Why a token was refused. Every variant refuses (HTTP 401 on the upgrade, close 4001
/// for `auth`, `forbidden` for a room token); they differ for logs and tests.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    /// A token was needed and none came.
    #[error("a token is required")]
    Missing,
    /// Not three base64url parts of JSON, or an unknown `alg` (`none` among them).
    #[error("malformed token")]
    Malformed,
    /// The header's `alg` is one no configured key verifies.
    #[error("algorithm {0} is not accepted")]
    Algorithm(String),
    /// The header names a `kid` no key carries.
    #[error("unknown key id {0:?}")]
    UnknownKey(String),
    /// No key verifies the signature.
    #[error("bad signature")]
    BadSignature,
    /// `exp` is past (beyond the leeway).
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token not yet valid")]
    NotYetValid,
    /// `aud` does not name this server.
    #[error("wrong audience")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error("wrong issuer")]
    Issuer,
    /// A required claim is absent.
    #[error("missing claim {0}")]
    MissingClaim(&'static str),
    /// A claim has the wrong type or breaks its rule (a `sub` that is not a valid name,
    /// `info` that is not an object or too big, a `rooms` entry that is not a name).
    #[error("bad claim {0}")]
    BadClaim(&'static str),
    /// The `caps` claim cannot be understood.
    #[error("bad caps: {0}")]
    Caps(#[from] CapsError),
    /// A new token for a connection names another user.
    #[error("the token is for another user")]
    OtherUser,
    /// A room token for another room.
    #[error("the room token is for another room")]
    OtherRoom,
}

/// Who a verified connection token says the connection is.
#[derive(Debug, Clone)]
pub struct Identity {
    /// `sub`.
    pub user: String,
    /// `exp`, in Unix milliseconds.
    pub expires_unix_ms: u64,
    /// `info`, the serialized JSON object.
    pub info: Option<Box<RawValue>>,
    /// `rooms`: joined at connect.
    pub rooms: Vec<String>,
    /// `caps`, when the token carries them.
    pub caps: Option<Caps>,
}

/// What a verified room token grants.
#[derive(Debug, Clone)]
pub struct RoomGrant {
    /// `exp`, in Unix milliseconds.
    pub expires_unix_ms: u64,
    /// `allow` (default: join, publish, presence, history).
    pub ops: Ops,
}

#[derive(Deserialize)]
struct ConnClaims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    info: Option<Box<RawValue>>,
    rooms: Option<serde_json::Value>,
    caps: Option<Box<RawValue>>,
    /// Only room tokens have it: one presented as a connection token is refused (it
    /// would otherwise admit its holder with the default rights).
    room: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct RoomClaims {
    sub: Option<serde_json::Value>,
    exp: Option<serde_json::Value>,
    nbf: Option<serde_json::Value>,
    room: Option<serde_json::Value>,
    allow: Option<Vec<String>>,
}

/// Checks tokens against an [`AuthConfig`].
#[derive(Debug)]
pub struct Verifier {
    config: AuthConfig,
}

/// A verifier equals only itself: keys are secrets and cannot be compared (this lets a
/// [`crate::HubConfig`] holding one be compared, as settings tests do).
impl PartialEq for Verifier {
    fn eq(&self, other: &Verifier) -> bool {
        std::ptr::eq(self, other)
    }
}

impl Eq for Verifier {}

impl Verifier {
    /// A verifier for these settings (leeway capped at [`MAX_LEEWAY`]).
    pub fn new(mut config: AuthConfig) -> Verifier {
        config.leeway = config.leeway.min(MAX_LEEWAY);
        Verifier { config }
    }

    /// The settings.
    pub fn config(&self) -> &AuthConfig {
        &self.config
    }

    /// Whether tokens are required (some key is configured).
    pub fn enabled(&self) -> bool {
        !self.config.keys.is_empty()
    }

    /// Verifies a connection token at `now_unix_ms` (the hub's clock, read as Unix time:
    /// never the system clock).
    pub fn connection(&self, token: &str, now_unix_ms: u64) -> Result<Identity, AuthError> {
        let c: ConnClaims = self.decode(token)?;
        if c.room.is_some() {
            return Err(AuthError::BadClaim("room"));
        }
        let expires_unix_ms = self.check_time(c.exp.as_ref(), c.nbf.as_ref(), now_unix_ms)?;
        let user = user_claim(c.sub.as_ref())?;
        let info = match c.info {
            Some(raw) if raw.get().len() > MAX_INFO_LEN => return Err(AuthError::BadClaim("info")),
            Some(raw) if !raw.get().trim_start().starts_with('{') => {
                return Err(AuthError::BadClaim("info"))
            }
            info => info,
        };
        let rooms = match c.rooms {
            None => Vec::new(),
            Some(serde_json::Value::Array(list)) => list
                .into_iter()
                .map(|v| match v {
                    serde_json::Value::String(s) if protocol::valid_name(&s) => Ok(s),
                    _ => Err(AuthError::BadClaim("rooms")),
                })
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(AuthError::BadClaim("rooms")),
        };
        let caps = c.caps.map(|raw| Caps::parse(&raw)).transpose()?;
        Ok(Identity {
            user,
            expires_unix_ms,
            info,
            rooms,
            caps,
        })
    }

    /// Verifies a room token for `user` joining `room` at `now_unix_ms`.
    pub fn room(
        &self,
        token: &str,
        user: Option<&str>,
        room: &str,
        now_unix_ms: u64,
    ) -> Result<RoomGrant, AuthError> {
        let c: RoomClaims = self.decode(token)?;
        let expires_unix_ms = self.check_time(c.exp.as_ref(), c.nbf.as_ref(), now_unix_ms)?;
        if Some(user_claim(c.sub.as_ref())?.as_str()) != user {
            return Err(AuthError::OtherUser);
        }
        match &c.room {
            Some(serde_json::Value::String(r)) if r == room => {}
            Some(serde_json::Value::String(_)) => return Err(AuthError::OtherRoom),
            Some(_) => return Err(AuthError::BadClaim("room")),
            None => return Err(AuthError::MissingClaim("room")),
        }
        let ops = match &c.allow {
            None => Ops::ROOM_DEFAULT,
            Some(names) => Ops::parse(Scope::Rooms, names)?,
        };
        Ok(RoomGrant {
            expires_unix_ms,
            ops,
        })
    }

    /// The signature and the `aud`/`iss` checks, by the crate; time is left to us.
    fn decode<T: serde::de::DeserializeOwned>(&self, token: &str) -> Result<T, AuthError> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| AuthError::Malformed)?;
        if !self.config.keys.verifies(header.alg) {
            return Err(AuthError::Algorithm(format!("{:?}", header.alg)));
        }
        if let Some(kid) = header.kid.as_deref() {
            if !self.config.keys.has_kid(kid) {
                return Err(AuthError::UnknownKey(kid.to_owned()));
            }
        }
        let validation = self.validation(header.alg);
        let mut last = AuthError::BadSignature;
        for key in self
            .config
            .keys
            .candidates(header.alg, header.kid.as_deref())
        {
            match jsonwebtoken::decode::<T>(token, &key.key, &validation) {
                Ok(data) => return Ok(data.claims),
                Err(e) => {
                    last = match e.into_kind() {
                        ErrorKind::InvalidSignature => continue,
                        // This key cannot verify this token at all (a P-384 key asked
                        // for ES256, say): another key of the algorithm may.
                        ErrorKind::InvalidEcdsaKey
                        | ErrorKind::InvalidRsaKey(_)
                        | ErrorKind::InvalidEddsaKey
                        | ErrorKind::InvalidKeyFormat => {
                            last = AuthError::BadSignature;
                            continue;
                        }
                        ErrorKind::InvalidAudience => AuthError::Audience,
                        ErrorKind::InvalidIssuer => AuthError::Issuer,
                        ErrorKind::MissingRequiredClaim(c) if c == "aud" => AuthError::Audience,
                        ErrorKind::MissingRequiredClaim(c) if c == "iss" => AuthError::Issuer,
                        ErrorKind::InvalidClaimFormat(c) if c == "aud" => AuthError::Audience,
                        ErrorKind::InvalidClaimFormat(c) if c == "iss" => AuthError::Issuer,
                        _ => AuthError::Malformed,
                    };
                    // The signature was good (the claims were what failed): no other
                    // key can do better.
                    return Err(last);
                }
            }
        }
        Err(last)
    }

    fn validation(&self, alg: Algorithm) -> Validation {
        let mut v = Validation::new(alg);
        // Time is the hub's, not the crate's (which would read the system clock).
        v.validate_exp = false;
        v.validate_nbf = false;
        v.leeway = 0;
        v.required_spec_claims.clear();
        match &self.config.audience {
            Some(aud) => {
                v.set_audience(&[aud]);
                v.required_spec_claims.insert("aud".to_owned());
            }
            None => v.validate_aud = false,
        }
        if let Some(iss) = &self.config.issuer {
            v.set_issuer(&[iss]);
            v.required_spec_claims.insert("iss".to_owned());
        }
        v
    }

    /// `exp` (required) and `nbf` against `now_unix`; returns `exp` in Unix ms.
    fn check_time(
        &self,
        exp: Option<&serde_json::Value>,
        nbf: Option<&serde_json::Value>,
        now_unix: u64,
    ) -> Result<u64, AuthError> {
        let exp = seconds(exp.ok_or(AuthError::MissingClaim("exp"))?)
            .ok_or(AuthError::BadClaim("exp"))?;
        let leeway = u64::try_from(self.config.leeway.as_millis()).unwrap_or(u64::MAX);
        let exp_ms = exp.saturating_mul(1000);
        if now_unix > exp_ms.saturating_add(leeway) {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = nbf {
            let nbf_ms = seconds(nbf)
                .ok_or(AuthError::BadClaim("nbf"))?
                .saturating_mul(1000);
            if nbf_ms > now_unix.saturating_add(leeway) {
                return Err(AuthError::NotYetValid);
            }
        }
        Ok(exp_ms)
    }
}

/// A NumericDate: whole seconds (a fraction is cut, as RFC 7519 allows).
fn seconds(v: &serde_json::Value) -> Option<u64> {
    let n = v.as_number()?;
    n.as_u64().or_else(|| {
        n.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

fn user_claim(sub: Option<&serde_json::Value>) -> Result<String, AuthError> {
    match sub {
        None => Err(AuthError::MissingClaim("sub")),
        Some(serde_json::Value::String(s)) if protocol::valid_name(s) => Ok(s.clone()),
        Some(_) => Err(AuthError::BadClaim("sub")),
    }
}

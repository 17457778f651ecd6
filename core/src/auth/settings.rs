//! Token settings as every runtime is given them (flags and environment natively,
//! variables in the Worker), checked and turned into a [`Verifier`] in one place, so the
//! same values are accepted or refused with the same error everywhere.

use super::keys::{KeyError, KeySet};
use super::verify::{AuthConfig, Verifier};

/// The raw token settings (`ROOMCAST_AUTH_*`).
#[derive(Debug, Clone, Default)]
pub struct AuthSettings {
    /// The HS256 shared secret (`ROOMCAST_AUTH_SECRET`).
    pub secret: Option<String>,
    /// PEM texts of public keys, each possibly holding several `kid:`-named blocks
    /// (natively the contents of the `--auth-public-key` files).
    pub public_keys: Vec<String>,
    /// Required `aud` (`ROOMCAST_AUTH_AUDIENCE`).
    pub audience: Option<String>,
    /// Required `iss` (`ROOMCAST_AUTH_ISSUER`).
    pub issuer: Option<String>,
    /// A token without `caps` has no rights (`ROOMCAST_AUTH_DENY_BY_DEFAULT`).
    pub deny_by_default: bool,
}

/// Token settings that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthSettingsError {
    /// The secret is unusable.
    #[error("the auth secret: {0}")]
    Secret(KeyError),
    /// The `index`th public key text (from 0) is unusable.
    #[error("public key text {index}: {error}")]
    PublicKey {
        /// Which text.
        index: usize,
        /// Why.
        error: KeyError,
    },
    /// An audience, an issuer or deny-by-default without any key: tokens would not be
    /// checked at all, which is surely not what was meant.
    #[error("audience, issuer and deny-by-default need an auth secret or public key")]
    OptionsWithoutKey,
}

impl AuthSettings {
    /// The verifier these settings describe; `None` when no key is given (the open
    /// default, where `?user=` is taken at face value).
    pub fn verifier(&self) -> Result<Option<Verifier>, AuthSettingsError> {
        let mut keys = KeySet::new();
        if let Some(secret) = &self.secret {
            keys.add_secret(secret.as_bytes())
                .map_err(AuthSettingsError::Secret)?;
        }
        for (index, text) in self.public_keys.iter().enumerate() {
            keys.add_pem(text)
                .map_err(|error| AuthSettingsError::PublicKey { index, error })?;
        }
        if keys.is_empty() {
            let options = self.deny_by_default || self.audience.is_some() || self.issuer.is_some();
            return if options {
                Err(AuthSettingsError::OptionsWithoutKey)
            } else {
                Ok(None)
            };
        }
        Ok(Some(Verifier::new(AuthConfig {
            keys,
            audience: self.audience.clone(),
            issuer: self.issuer.clone(),
            deny_by_default: self.deny_by_default,
            ..AuthConfig::default()
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn no_key_is_the_open_default_unless_options_ask_for_checks() {
        assert!(AuthSettings::default().verifier().unwrap().is_none());
        for s in [
            AuthSettings {
                deny_by_default: true,
                ..Default::default()
            },
            AuthSettings {
                audience: Some("a".into()),
                ..Default::default()
            },
            AuthSettings {
                issuer: Some("i".into()),
                ..Default::default()
            },
        ] {
            assert_eq!(
                s.verifier().unwrap_err(),
                AuthSettingsError::OptionsWithoutKey
            );
        }
    }

    #[test]
    fn bad_keys_are_named() {
        let s = AuthSettings {
            secret: Some("short".into()),
            ..Default::default()
        };
        assert_eq!(
            s.verifier().unwrap_err(),
            AuthSettingsError::Secret(KeyError::ShortSecret(5))
        );
        let s = AuthSettings {
            secret: Some(SECRET.into()),
            public_keys: vec!["no pem here".into()],
            ..Default::default()
        };
        assert_eq!(
            s.verifier().unwrap_err(),
            AuthSettingsError::PublicKey {
                index: 0,
                error: KeyError::NoPemBlock
            }
        );
        let s = AuthSettings {
            secret: Some(SECRET.into()),
            deny_by_default: true,
            audience: Some("aud".into()),
            ..Default::default()
        };
        let v = s.verifier().unwrap().unwrap();
        assert!(v.enabled() && v.config().deny_by_default);
        assert_eq!(v.config().audience.as_deref(), Some("aud"));
    }
}

//! The keys tokens are checked with: one HS256 shared secret and any number of PEM
//! public keys (RS256, ES256, EdDSA), each optionally named by a `kid` for rotation.
//!
//! Both runtimes read keys the same way: a PEM text holding one or more blocks, each
//! optionally preceded by a line `kid: NAME` (natively the text comes from the files given
//! to `--auth-public-key`, in the Worker from the `ROOMCAST_AUTH_PUBLIC_KEY` variable).
//! Which algorithm a key verifies is fixed by its kind, never by the token: an RSA key
//! verifies RS256 only, an EC key ES256, an Ed25519 key EdDSA, the secret HS256. That is
//! what refuses algorithm confusion (an HS256 token "signed" with a public key).

use jsonwebtoken::{Algorithm, DecodingKey};

/// A key configuration that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The shared secret is empty.
    #[error("the auth secret is empty")]
    EmptySecret,
    /// The shared secret is shorter than 32 bytes, HS256's own strength.
    #[error("the auth secret is {0} bytes; use at least 32")]
    ShortSecret(usize),
    /// The text holds no `-----BEGIN ...-----` block.
    #[error("no PEM block found")]
    NoPemBlock,
    /// A block starts and never ends.
    #[error("PEM block {0} has no END line")]
    UnterminatedBlock(usize),
    /// A block that is not an RSA, EC (P-256) or Ed25519 public key.
    #[error("PEM block {0} is not an RSA, EC or Ed25519 public key")]
    UnsupportedKey(usize),
    /// Two keys carry the same `kid`.
    #[error("two keys are named kid {0:?}")]
    DuplicateKid(String),
    /// A `kid:` line with nothing after it.
    #[error("an empty `kid:` line")]
    EmptyKid,
}

/// One verification key.
pub(crate) struct Key {
    pub(crate) kid: Option<String>,
    /// The one algorithm this key verifies.
    pub(crate) alg: Algorithm,
    pub(crate) key: DecodingKey,
}

/// Every key the server accepts tokens from.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<Key>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key material (a secret in a log is a leaked secret).
        let keys: Vec<_> = self
            .keys
            .iter()
            .map(|k| (k.alg, k.kid.as_deref()))
            .collect();
        f.debug_struct("KeySet").field("keys", &keys).finish()
    }
}

/// Tokens signed with HS256 need a secret at least this long (RFC 7518 3.2).
pub const MIN_SECRET_LEN: usize = 32;

impl KeySet {
    /// No keys: tokens are not required (the open default).
    pub fn new() -> KeySet {
        KeySet::default()
    }

    /// Whether no key is configured.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// How many keys are configured.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Adds the HS256 shared secret (the bytes as given; at least 32 of them).
    pub fn add_secret(&mut self, secret: &[u8]) -> Result<(), KeyError> {
        if secret.is_empty() {
            return Err(KeyError::EmptySecret);
        }
        if secret.len() < MIN_SECRET_LEN {
            return Err(KeyError::ShortSecret(secret.len()));
        }
        let key = DecodingKey::from_secret(secret).map_err(|_| KeyError::EmptySecret)?;
        self.keys.push(Key {
            kid: None,
            alg: Algorithm::HS256,
            key,
        });
        Ok(())
    }

    /// Adds every public key of a PEM text (see the module docs for the `kid:` lines);
    /// returns how many it added. All or nothing: on error no key of the text is kept.
    pub fn add_pem(&mut self, text: &str) -> Result<usize, KeyError> {
        let mut added = Vec::new();
        let mut kid: Option<String> = None;
        let mut lines = text.lines();
        let mut block = 0;
        while let Some(line) = lines.next() {
            let line = line.trim();
            if let Some(name) = line.strip_prefix("kid:") {
                let name = name.trim();
                if name.is_empty() {
                    return Err(KeyError::EmptyKid);
                }
                kid = Some(name.to_owned());
                continue;
            }
            if !(line.starts_with("-----BEGIN ") && line.ends_with("-----")) {
                continue; // comments and text around blocks, as openssl writes them
            }
            block += 1;
            let mut pem = String::with_capacity(512);
            pem.push_str(line);
            pem.push('\n');
            let mut ended = false;
            for l in lines.by_ref() {
                let l = l.trim();
                pem.push_str(l);
                pem.push('\n');
                if l.starts_with("-----END ") {
                    ended = true;
                    break;
                }
            }
            if !ended {
                return Err(KeyError::UnterminatedBlock(block));
            }
            let (alg, key) =
                parse_public_key(pem.as_bytes()).ok_or(KeyError::UnsupportedKey(block))?;
            added.push(Key {
                kid: kid.take(),
                alg,
                key,
            });
        }
        if added.is_empty() {
            return Err(KeyError::NoPemBlock);
        }
        for (i, k) in added.iter().enumerate() {
            if let Some(name) = &k.kid {
                let clash = self
                    .keys
                    .iter()
                    .chain(&added[..i])
                    .any(|o| o.kid.as_ref() == Some(name));
                if clash {
                    return Err(KeyError::DuplicateKid(name.clone()));
                }
            }
        }
        let n = added.len();
        self.keys.extend(added);
        Ok(n)
    }

    /// The keys a token with this header may be checked against: those named by its
    /// `kid` (when it has one) that verify its algorithm.
    pub(crate) fn candidates<'a>(
        &'a self,
        alg: Algorithm,
        kid: Option<&'a str>,
    ) -> impl Iterator<Item = &'a Key> + 'a {
        self.keys
            .iter()
            .filter(move |k| k.alg == alg && (kid.is_none() || k.kid.as_deref() == kid))
    }

    /// Whether some key carries this `kid`.
    pub(crate) fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Whether some key verifies this algorithm.
    pub(crate) fn verifies(&self, alg: Algorithm) -> bool {
        self.keys.iter().any(|k| k.alg == alg)
    }
}

/// The key in one PEM block and the one algorithm it verifies.
fn parse_public_key(pem: &[u8]) -> Option<(Algorithm, DecodingKey)> {
    if let Ok(k) = DecodingKey::from_rsa_pem(pem) {
        return Some((Algorithm::RS256, k));
    }
    if let Ok(k) = DecodingKey::from_ec_pem(pem) {
        return Some((Algorithm::ES256, k));
    }
    if let Ok(k) = DecodingKey::from_ed_pem(pem) {
        return Some((Algorithm::EdDSA, k));
    }
    None
}

"""Keys and tokens for the token scenarios, made with `cryptography` and minted with
PyJWT: never by roomcast.

Run as a script it writes a fresh key set to a JSON file, for a server that must be
configured before the tests start (scripts/test.sh's Worker instances):

    python tokens.py OUT.json   # {"secret", "public_keys" (PEM text), "private": {...}}
"""

from __future__ import annotations

import json
import os
import sys
import time
from dataclasses import dataclass

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

AUD = "roomcast-tests"
ISS = "https://issuer.test"
ALGS = ["HS256", "RS256", "ES256", "EdDSA"]
KIDS = {"RS256": "rsa-1", "ES256": "ec-1", "EdDSA": "ed-1"}


def public_pem(key) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()


def new_key(alg: str):
    if alg == "HS256":
        return os.urandom(32).hex()
    if alg == "RS256":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if alg == "ES256":
        return ec.generate_private_key(ec.SECP256R1())
    return ed25519.Ed25519PrivateKey.generate()


@dataclass
class Keys:
    signing: dict  # alg -> the key the server knows (secret, or private key)
    others: dict  # alg -> a key of the same kind the server does not know

    @property
    def secret(self) -> str:
        return self.signing["HS256"]

    @property
    def rsa_public_pem(self) -> bytes:
        return public_pem(self.signing["RS256"])

    def public_keys(self) -> str:
        """The server's key file: every public key after its `kid:` line."""
        return "".join(
            f"kid: {KIDS[a]}\n" + public_pem(self.signing[a]).decode() for a in KIDS
        )

    def mint(self, alg: str = "HS256", key=None, headers=None, **claims) -> str:
        """A token for the test server (its aud and iss, exp in 5 min unless given)."""
        body = {"aud": AUD, "iss": ISS, "exp": int(time.time()) + 300, **claims}
        h = {"kid": KIDS[alg]} if alg in KIDS else {}
        h.update(headers or {})
        k = key if key is not None else self.signing[alg]
        return jwt.encode(body, k, algorithm=alg, headers=h or None)

    def to_json(self) -> str:
        def dump(keys):
            return {a: (k if a == "HS256" else private_pem(k)) for a, k in keys.items()}

        return json.dumps({
            "secret": self.secret,
            "public_keys": self.public_keys(),
            "signing": dump(self.signing),
            "others": dump(self.others),
        })

    @classmethod
    def from_json(cls, text: str) -> "Keys":
        doc = json.loads(text)

        def load(keys):
            return {
                a: (k if a == "HS256" else serialization.load_pem_private_key(k.encode(), None))
                for a, k in keys.items()
            }

        return cls(signing=load(doc["signing"]), others=load(doc["others"]))


def generate() -> Keys:
    return Keys(
        signing={a: new_key(a) for a in ALGS},
        others={a: new_key(a) for a in ALGS},
    )


if __name__ == "__main__":
    with open(sys.argv[1], "w") as f:
        f.write(generate().to_json())

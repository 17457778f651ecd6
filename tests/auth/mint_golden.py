#!/usr/bin/env python3
"""Mints roomcast's golden JWTs with PyJWT (an independent implementation).

Writes core/tests/data/golden_tokens.json: fresh keys (public halves only), and for each
algorithm roomcast accepts (HS256, RS256, ES256, EdDSA) a set of tokens with the answer
the server must give. Times are fixed around NOW, so the core test pins its clock there.

    .venv/bin/python tests/auth/mint_golden.py   # needs PyJWT and cryptography

Rerunning makes new keys and tokens; the expected answers do not change.
"""
import base64
import hashlib
import hmac
import json
import os
import sys

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

NOW = 1_900_000_000
AUD = "roomcast"
ISS = "https://auth.example"
LEEWAY = 5


def pem_public(key):
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def main(out_path):
    secret = os.urandom(32).hex()
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ec_key = ec.generate_private_key(ec.SECP256R1())
    ed_key = ed25519.Ed25519PrivateKey.generate()
    others = {
        "HS256": os.urandom(32).hex(),
        "RS256": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "ES256": ec.generate_private_key(ec.SECP256R1()),
        "EdDSA": ed25519.Ed25519PrivateKey.generate(),
    }
    algs = {
        "HS256": (secret, None),
        "RS256": (rsa_key, "rsa-1"),
        "ES256": (ec_key, "ec-1"),
        "EdDSA": (ed_key, "ed-1"),
    }
    base = {"sub": "ada", "aud": AUD, "iss": ISS, "iat": NOW, "exp": NOW + 3600}
    cases = []
    for alg, (key, kid) in algs.items():
        headers = {"kid": kid} if kid else None

        def mint(claims, k=key, h=headers):
            return jwt.encode(claims, k, algorithm=alg, headers=h)

        cases += [
            (alg, "valid", mint(base), "ok"),
            (alg, "expired 1 s past the leeway", mint({**base, "exp": NOW - LEEWAY - 1}), "expired"),
            (alg, "expired within the leeway", mint({**base, "exp": NOW - LEEWAY + 1}), "ok"),
            (alg, "not yet valid", mint({**base, "nbf": NOW + LEEWAY + 1}), "not_yet_valid"),
            (alg, "nbf within the leeway", mint({**base, "nbf": NOW + LEEWAY - 1}), "ok"),
            (alg, "wrong signature", mint(base, k=others[alg]), "bad_signature"),
            (alg, "wrong aud", mint({**base, "aud": "someone-else"}), "audience"),
            (alg, "no aud", mint({k: v for k, v in base.items() if k != "aud"}), "audience"),
            (alg, "wrong iss", mint({**base, "iss": "https://evil.example"}), "issuer"),
            (alg, "unknown kid", mint(base, h={"kid": "retired-key"}), "unknown_key"),
            (alg, "no exp", mint({k: v for k, v in base.items() if k != "exp"}), "missing_claim"),
            (alg, "no sub", mint({k: v for k, v in base.items() if k != "sub"}), "missing_claim"),
        ]
    # alg none: PyJWT writes it when asked to.
    cases.append(("none", "alg none", jwt.encode(base, None, algorithm="none"), "malformed"))
    # Algorithm confusion: an HS256 token whose HMAC key is the RSA public key's PEM (PyJWT
    # refuses to make one, so it is made by hand), checked against a key set that has the
    # RSA key (and a secret, so HS256 is known): it must fail the signature, never pass.
    pub_pem = pem_public(rsa_key).encode()
    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    body = b64(json.dumps(base).encode())
    sig = b64(hmac.new(pub_pem, f"{head}.{body}".encode(), hashlib.sha256).digest())
    cases.append(("HS256", "confusion: HS256 keyed with the RSA public key", f"{head}.{body}.{sig}", "bad_signature"))
    # The same forged token with no kid.
    head2 = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    sig2 = b64(hmac.new(pub_pem, f"{head2}.{body}".encode(), hashlib.sha256).digest())
    cases.append(("HS256", "confusion without kid", f"{head2}.{body}.{sig2}", "bad_signature"))
    # RS256 asked for, signed PS256 (same RSA key): an algorithm no key verifies.
    cases.append(("PS256", "PS256 with the RSA key", jwt.encode(base, rsa_key, algorithm="PS256", headers={"kid": "rsa-1"}), "algorithm"))
    cases.append(("garbage", "not a JWT", "not.a.jwt", "malformed"))

    doc = {
        "generated_by": f"PyJWT {jwt.__version__}",
        "now": NOW,
        "leeway": LEEWAY,
        "audience": AUD,
        "issuer": ISS,
        "secret": secret,
        "public_keys": "kid: rsa-1\n" + pem_public(rsa_key) + "kid: ec-1\n" + pem_public(ec_key) + "kid: ed-1\n" + pem_public(ed_key),
        "cases": [{"alg": a, "name": n, "token": t, "expect": e} for a, n, t, e in cases],
    }
    with open(out_path, "w") as f:
        json.dump(doc, f, indent=1)
        f.write("\n")
    print(f"{len(cases)} cases written to {out_path}")


if __name__ == "__main__":
    here = os.path.dirname(os.path.abspath(__file__))
    default = os.path.join(here, "..", "..", "core", "tests", "data", "golden_tokens.json")
    main(sys.argv[1] if len(sys.argv) > 1 else default)

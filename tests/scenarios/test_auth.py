"""Signed tokens against a real server, native or the Worker: every token here is minted
by PyJWT (with `cryptography` for the keys, tokens.py), never by roomcast, with fresh
keys per run.

The AUTH server takes an HS256 secret and RS256, ES256 and EdDSA public keys (each with a
kid), an audience and an issuer (PROTOCOL.md "Identity", "Authorization").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from conftest import Endpoint, _http_from_ws, require, start_server
from rc import TIMEOUT, Client, close_code, uid, with_query
from tokens import ALGS, AUD, ISS, Keys, generate


@pytest.fixture(scope="module")
def keys() -> Keys:
    """Fresh keys, or (ROOMCAST_AUTH_KEYS) those a preconfigured server was started with."""
    path = os.environ.get("ROOMCAST_AUTH_KEYS")
    if path:
        return Keys.from_json(Path(path).read_text())
    return generate()


def _auth_server(keys: Keys, *extra: str, name: str):
    """A server with these keys: ROOMCAST_WS_URL_<NAME> (started with the keys of
    ROOMCAST_AUTH_KEYS, as scripts/test.sh starts the Worker's), else a native one."""
    url = os.environ.get(f"ROOMCAST_WS_URL_{name.upper().replace('-', '_')}")
    if url:
        assert os.environ.get("ROOMCAST_AUTH_KEYS"), f"{name}: a preconfigured server needs ROOMCAST_AUTH_KEYS"
        yield Endpoint(url, _http_from_ws(url))
        return
    require("spawn_configured")
    folder = Path(tempfile.mkdtemp(prefix="roomcast-keys-"))
    pem = folder / "keys.pem"
    pem.write_text("# rotation: one block per key, each named by the line before it\n" + keys.public_keys())
    flags = ["--auth-secret", keys.secret, "--auth-public-key", str(pem),
             "--auth-audience", AUD, "--auth-issuer", ISS, *extra]
    if name == "auth":
        flags.append("--demo-tokens")  # as the Worker's AUTH instance (worker_tests.bash)
    s = start_server(*flags, name=name)
    yield Endpoint(s.ws_url, s.http_url, s)
    s.terminate()


@pytest.fixture(scope="module")
def auth_server(keys):
    yield from _auth_server(keys, name="auth")


@pytest.fixture(scope="module")
def deny_server(keys):
    yield from _auth_server(keys, "--auth-deny-by-default", name="auth-deny")


async def url_status(url: str) -> int | None:
    """The HTTP status of an upgrade to `url` (None: it was accepted)."""
    try:
        ws = await connect(url, open_timeout=TIMEOUT)
    except InvalidStatus as e:
        return e.response.status_code
    await ws.close()
    return None


async def first_message(url: str, token: str) -> Client:
    """Connects without a URL token and sends `auth` first; returns the welcomed client."""
    ws = await connect(url, open_timeout=TIMEOUT, ping_interval=None)
    await ws.send(json.dumps({"type": "auth", "token": token}))
    w = json.loads(await asyncio.wait_for(ws.recv(), TIMEOUT))
    assert w["type"] == "welcome", w
    return Client(ws, w)


def faults(keys: Keys, alg: str) -> dict[str, str]:
    """Tokens that must be refused, by name."""
    now = int(time.time())
    bad = {
        "expired": keys.mint(alg, sub="ada", exp=now - 60),
        "not yet valid": keys.mint(alg, sub="ada", nbf=now + 120),
        "wrong signature": keys.mint(alg, key=keys.others[alg], sub="ada"),
        "wrong aud": keys.mint(alg, sub="ada", aud="someone-else"),
        "wrong iss": keys.mint(alg, sub="ada", iss="https://evil.test"),
        "unknown kid": keys.mint(alg, sub="ada", headers={"kid": "retired"}),
        "no sub": keys.mint(alg),
    }
    return bad


def forged(keys: Keys) -> dict[str, str]:
    """Tokens no key can have signed: alg none, and HS256 keyed with the RSA public key."""
    body = {"sub": "ada", "aud": AUD, "iss": ISS, "exp": int(time.time()) + 300}

    def b64(b: bytes) -> str:
        return base64.urlsafe_b64encode(b).rstrip(b"=").decode()

    head = b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}).encode())
    payload = b64(json.dumps(body).encode())
    sig = b64(hmac.new(keys.rsa_public_pem, f"{head}.{payload}".encode(), hashlib.sha256).digest())
    return {
        "alg none": jwt.encode(body, None, algorithm="none"),
        "confusion": f"{head}.{payload}.{sig}",
        "garbage": "a.b.c",
    }


@pytest.mark.parametrize("alg", ALGS)
async def test_a_valid_token_of_each_algorithm_connects_by_url_and_by_auth(auth_server, keys, alg):
    user = uid("ada")
    info = {"name": "Ada", "alg": alg}
    token = keys.mint(alg, sub=user, info=info)
    c = await Client.open(with_query(auth_server.ws_url, token=token, user="mallory"))
    assert c.welcome["user"] == user, "the token's sub, never ?user="
    assert c.welcome["info"] == info
    await c.close()
    c = await first_message(auth_server.ws_url, token)
    assert c.welcome["user"] == user
    await c.ok({"type": "join", "room": uid("r")})
    await c.close()


@pytest.mark.parametrize("alg", ALGS)
async def test_every_fault_refuses_401_in_the_url_and_4001_in_auth(auth_server, keys, alg):
    for name, token in {**faults(keys, alg), **forged(keys)}.items():
        assert await url_status(with_query(auth_server.ws_url, token=token)) == 401, name
        ws = await connect(auth_server.ws_url, open_timeout=TIMEOUT, ping_interval=None)
        await ws.send(json.dumps({"type": "auth", "token": token}))
        c = Client(ws, {"conn": "", "user": None})
        closed = await c.closed()
        assert close_code(closed) == 4001, name
        assert closed.rcvd.reason == "unauthorized", name


async def test_without_a_token_nothing_but_auth_is_heard(auth_server):
    # ?user= alone is no identity.
    ws = await connect(with_query(auth_server.ws_url, user="eve"), open_timeout=TIMEOUT)
    await ws.send(json.dumps({"type": "join", "room": "lobby"}))
    c = Client(ws, {"conn": "", "user": None})
    closed = await c.closed()
    assert close_code(closed) == 4001


async def test_caps_confine_a_connection_to_its_grants(auth_server, keys):
    game = uid("game")
    caps = [
        {"rooms": [f"{game}:*"], "allow": ["join"]},
        {"users": ["support"], "allow": ["publish"]},
    ]
    c = await Client.open(with_query(auth_server.ws_url, token=keys.mint(sub=uid("g"), caps=caps)))
    await c.ok({"type": "join", "room": f"{game}:1"})
    for req in [
        {"type": "join", "room": "lobby"},
        {"type": "publish", "room": f"{game}:1", "event": "move"},
        {"type": "subscribe", "channel": "news"},
        {"type": "publish", "user": "bob", "event": "dm"},
    ]:
        r = await c.request(req)
        assert r["type"] == "error" and r["code"] == "forbidden", (req, r)
    assert (await c.request({"type": "publish", "user": "support", "event": "dm"}))["type"] == "ack"
    await c.close()


async def test_deny_by_default_needs_a_grant_or_a_room_token(deny_server, keys):
    user = uid("u")
    room = uid("vip")
    c = await Client.open(with_query(deny_server.ws_url, token=keys.mint(sub=user)))
    r = await c.request({"type": "join", "room": room})
    assert r["code"] == "forbidden", r
    for name, rt in {
        "other room": keys.mint(sub=user, room=uid("x")),
        "other user": keys.mint(sub=uid("v"), room=room),
        "expired": keys.mint(sub=user, room=room, exp=int(time.time()) - 60),
    }.items():
        r = await c.request({"type": "join", "room": room, "token": rt})
        assert r["code"] == "forbidden", (name, r)
    await c.ok({"type": "join", "room": room, "token": keys.mint(sub=user, room=room)})
    await c.ok({"type": "publish", "room": room, "event": "hi"})
    await c.close()


async def test_a_room_token_expiring_takes_the_member_out(auth_server, keys):
    # Real time, kept short: the token lives ~2 s (whole seconds, as JWTs count).
    user = uid("u")
    room = uid("brief")
    c = await Client.open(with_query(auth_server.ws_url, token=keys.mint(sub=user)))
    exp = int(time.time()) + 2
    await c.ok({"type": "join", "room": room, "token": keys.mint(sub=user, room=room, exp=exp)})
    left = await c.expect(lambda m: m.get("type") == "left", timeout=8)
    assert left == {"type": "left", "room": room, "reason": "token_expired"}
    assert time.time() >= exp - 0.1
    r = await c.request({"type": "publish", "room": room, "event": "e"})
    assert r["code"] == "not_member", r
    await c.close()


async def test_expiring_then_refresh_keeps_the_connection(auth_server, keys):
    user = uid("u")
    c = await Client.open(
        with_query(auth_server.ws_url, token=keys.mint(sub=user, exp=int(time.time()) + 4))
    )
    # Less than the 30 s notice is left: `expiring` comes at half the token's life.
    m = await c.expect(lambda m: m.get("type") == "expiring")
    assert 0 < m["in_ms"] <= 4_000
    await c.ok({"type": "auth", "token": keys.mint(sub=user)})
    # Someone else's token is not a refresh.
    await c.send({"type": "auth", "token": keys.mint(sub=uid("other"))})
    closed = await c.closed()
    assert close_code(closed) == 4001


async def test_the_rooms_claim_joins_at_connect(auth_server, keys):
    room = uid("team")
    a = await Client.open(with_query(auth_server.ws_url, token=keys.mint(sub=uid("a"))))
    await a.ok({"type": "join", "room": room})
    b = await Client.open(with_query(auth_server.ws_url, token=keys.mint(sub=uid("b"), rooms=[room])))
    joined = await b.expect(lambda m: m.get("type") == "joined")
    assert joined["room"] == room and joined["members"] == 2, joined
    await a.ok({"type": "publish", "room": room, "event": "hello"})
    m = await b.expect(lambda m: m.get("type") == "message")
    assert m["event"] == "hello"
    await a.close()
    await b.close()


async def test_max_rooms_bounds_the_rooms_a_server_holds():
    # Not a token rule, but the bound that keeps anonymous clients from pinning memory.
    require("spawn_configured")
    s = start_server("--max-rooms", "2", name="max-rooms")
    try:
        a = await Client.open(s.ws_url)
        await a.ok({"type": "join", "room": "one"})
        await a.ok({"type": "join", "room": "two"})
        r = await a.request({"type": "join", "room": "three"})
        assert r["type"] == "error" and r["code"] == "too_many_rooms", r
        b = await Client.open(s.ws_url)
        await b.ok({"type": "join", "room": "one"})
        await a.ok({"type": "leave", "room": "two"})
        await a.ok({"type": "join", "room": "three"})
        await a.close()
        await b.close()
    finally:
        s.terminate()


async def test_a_server_without_keys_answers_auth_and_room_tokens_unsupported(ws_url):
    # Both runtimes: the open default checks no token, and says so instead of ignoring it.
    c = await Client.open(ws_url, user=uid("u"))
    r = await c.request({"type": "auth", "token": "a.b.c"})
    assert r["type"] == "error" and r["code"] == "unsupported", r
    r = await c.request({"type": "join", "room": uid("r"), "token": "a.b.c"})
    assert r["type"] == "error" and r["code"] == "unsupported", r
    r = await c.request({"type": "auth"})
    assert r["type"] == "error" and r["code"] == "bad_request", r
    await c.close()


def _demo_token_url(ws_url: str, query: str) -> str:
    """`…/ws` -> `…/demo/token?query`, on the native server and the Worker's hub alike."""
    http = ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    base = http.split("?", 1)[0]
    assert base.endswith("/ws"), base
    return f"{base[: -len('/ws')]}/demo/token?{query}"


async def http_get(url: str) -> tuple[int, dict, str]:
    def get():
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT) as r:
                return r.status, dict(r.headers), r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers), e.read().decode()
    return await asyncio.to_thread(get)


async def test_demo_tokens_verify_with_pyjwt_and_connect(auth_server, keys):
    # The AUTH server mints demo tokens (demo only): PyJWT checks the signature with the
    # secret and the claims; the token then opens a connection by first-message auth.
    user = uid("demo")
    status, headers, body = await http_get(_demo_token_url(auth_server.ws_url, f"user={user}"))
    assert status == 200, body
    assert headers.get("Cache-Control", headers.get("cache-control")) == "no-store"
    answer = json.loads(body)
    claims = jwt.decode(answer["token"], keys.secret, algorithms=["HS256"], audience=AUD, issuer=ISS)
    assert claims["sub"] == user and claims["info"] == {"name": user, "demo": True}
    assert claims["exp"] - claims["iat"] == answer["expires_in"] == 300
    c = await first_message(auth_server.ws_url, answer["token"])
    assert c.welcome["user"] == user and c.welcome["info"]["demo"] is True
    await c.close()
    for query in ["", "user=", "user=%zz"]:
        status, _, body = await http_get(_demo_token_url(auth_server.ws_url, query))
        assert status == 400 and json.loads(body)["error"]["code"] == "bad_request", (query, body)


async def test_a_server_without_demo_tokens_answers_204(ws_url):
    status, _, body = await http_get(_demo_token_url(ws_url, "user=ann"))
    assert (status, body) == (204, "")

"""Every error code a client can trigger, with the precedence of the protocol."""

from __future__ import annotations

import asyncio
import json

import pytest

from rc import Client, assert_fields, uid


@pytest.fixture
async def c(ws_url):
    client = await Client.open(ws_url)
    yield client
    await client.close()


async def error_for(c: Client, text: str) -> dict:
    """Sends raw text and returns the reply, which must be an `error`; then checks that
    the connection is still usable."""
    await c.send_text(text)
    m = json.loads(await c.recv_text())
    assert m.get("type") == "error", f"{text!r} was answered {m}"
    assert isinstance(m.get("message"), str), m
    assert set(m) <= {"type", "id", "code", "message"}, m
    assert await c.barrier() == []
    return m


def code(m: dict) -> str:
    return m["code"]


# --- bad_json ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    ["not json", "{", '{"type":"ping",}', "[1,2]", '"ping"', "42", "null", ""],
    ids=["garbage", "truncated", "trailing-comma", "array", "string", "number", "null", "empty"],
)
async def test_bad_json(c, text):
    m = await error_for(c, text)
    assert code(m) == "bad_json", m
    assert "id" not in m


# --- bad_request ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        {"type": "dance"},
        {"room": "r"},
        {"type": 5},
        {"type": "join"},
        {"type": "leave"},
        {"type": "subscribe"},
        {"type": "unsubscribe"},
        {"type": "publish", "room": "r"},  # no event
        {"type": "publish", "event": "e"},  # no target
        {"type": "join", "room": 5},
        {"type": "join", "room": None},
        {"type": "join", "room": ["r"]},
        {"type": "join", "room": "r", "presence": "yes"},
        {"type": "join", "room": "r", "since": -1},
        {"type": "join", "room": "r", "since": "3"},
        {"type": "join", "room": "r", "since": 1.5},
        {"type": "join", "room": "r", "since": 1, "epoch": 7},
        {"type": "subscribe", "channel": {"name": "c"}},
        {"type": "publish", "room": "r", "event": 1},
        {"type": "publish", "room": "r", "event": "e", "echo": "true"},
        {"type": "publish", "user": 12, "event": "e"},
        {"type": "publish", "room": "r", "channel": "c", "event": "e"},
        {"type": "publish", "room": "r", "user": "u", "event": "e"},
        {"type": "publish", "channel": "c", "user": "u", "event": "e"},
    ],
    ids=lambda r: json.dumps(r, separators=(",", ":")),
)
async def test_bad_request_with_id(c, req):
    m = await error_for(c, json.dumps({**req, "id": "r1"}))
    assert_fields(m, {"type": "error", "id": "r1", "code": "bad_request", "message": ...})


@pytest.mark.parametrize(
    "bad_id",
    ["true", "[1]", '{"a":1}', json.dumps("x" * 65)],
    ids=["bool", "array", "object", "string-65-bytes"],
)
async def test_bad_id_is_bad_request_not_echoed(c, bad_id):
    m = await error_for(c, '{"type":"ping","id":' + bad_id + "}")
    assert code(m) == "bad_request", m
    assert "id" not in m, f"a bad id must not be echoed: {m}"


@pytest.mark.parametrize(
    "text",
    [
        '{"type":"ping","id":null}',
        '{"type":"join","room":"ROOM","presence":null}',
        '{"type":"join","room":"ROOM","since":null}',
        '{"type":"join","room":"ROOM","since":1,"epoch":null}',
        '{"type":"publish","room":"ROOM","event":"e","echo":null}',
        '{"type":"publish","room":"ROOM","user":null,"event":"e"}',
    ],
    ids=["id", "presence", "since", "epoch", "echo", "second-target"],
)
async def test_null_field_is_bad_request(c, text):
    """`null` is a JSON type like any other: where a number, string or bool belongs it
    is ill-typed (bad_request), not the same as leaving the field out."""
    room = uid("room")
    await c.ok({"type": "join", "room": room})
    m = await error_for(c, text.replace("ROOM", room))
    assert code(m) == "bad_request", m
    assert "id" not in m


async def test_bad_id_multibyte_over_64_bytes(c):
    rid = "é" * 33  # 33 characters, 66 bytes
    m = await error_for(c, json.dumps({"type": "ping", "id": rid}, ensure_ascii=False))
    assert code(m) == "bad_request" and "id" not in m, m


async def test_bad_request_before_bad_name(c):
    # two targets AND a bad name: bad_request wins
    m = await error_for(c, json.dumps({"type": "publish", "room": "", "user": "u", "event": "e", "id": 1}))
    assert code(m) == "bad_request", m
    # ill-typed field AND a bad name
    m = await error_for(c, json.dumps({"type": "join", "room": "", "presence": 1, "id": 2}))
    assert code(m) == "bad_request", m


# --- bad_name ---------------------------------------------------------------------------

BAD_NAMES = {
    "empty": "",
    "129-bytes": "a" * 129,
    "130-bytes-65-chars": "é" * 65,
    "control-char": "a\u0007b",
    "newline": "line\nbreak",
    "nul": "a\u0000",
    "del": "a\u007f",
    "c1-control": "a\u0085",
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=BAD_NAMES.keys())
@pytest.mark.parametrize(
    "make",
    [
        lambda n: {"type": "join", "room": n},
        lambda n: {"type": "leave", "room": n},
        lambda n: {"type": "subscribe", "channel": n},
        lambda n: {"type": "unsubscribe", "channel": n},
        lambda n: {"type": "publish", "room": n, "event": "e"},
        lambda n: {"type": "publish", "channel": n, "event": "e"},
        lambda n: {"type": "publish", "user": n, "event": "e"},
        lambda n: {"type": "publish", "user": "u", "event": n},
    ],
    ids=["join", "leave", "subscribe", "unsubscribe", "pub-room", "pub-channel", "pub-user", "pub-event"],
)
async def test_bad_name(c, make, name):
    m = await error_for(c, json.dumps({**make(name), "id": 11}))
    assert_fields(m, {"type": "error", "id": 11, "code": "bad_name", "message": ...})


async def test_longest_names_accepted(c, ws_url):
    room = uid("r")
    room = room + "x" * (128 - len(room))
    assert len(room.encode()) == 128
    ack = await c.ok({"type": "join", "room": room})
    assert ack["room"] == room
    ch = "é" * 64  # 128 bytes
    await c.ok({"type": "subscribe", "channel": ch})
    await c.ok({"type": "unsubscribe", "channel": ch})
    ack = await c.ok({"type": "publish", "room": room, "event": "ü" * 64})
    assert ack["delivered"] == 0


async def test_bad_name_before_not_member(c):
    m = await error_for(c, json.dumps({"type": "publish", "room": "a\u0001", "event": "e"}))
    assert code(m) == "bad_name", m


# --- not_member -------------------------------------------------------------------------


async def test_not_member_room_publish(c):
    m = await error_for(c, json.dumps({"type": "publish", "room": uid("r"), "event": "e", "id": 4}))
    assert_fields(m, {"type": "error", "id": 4, "code": "not_member", "message": ...})


# --- unsupported --------------------------------------------------------------------------


async def test_binary_message_unsupported(c):
    await c.ws.send(b"\x00\x01binary")
    m = json.loads(await c.recv_text())
    assert_fields(m, {"type": "error", "code": "unsupported", "message": ...})
    assert await c.barrier() == []  # still open and usable


# --- rate_limited -----------------------------------------------------------------------


async def test_rate_limited_flood(c):
    n = 800  # burst is 500, refilled at 200/s: a flood this fast overruns it
    for i in range(n):
        await c.send({"type": "ping", "id": i})
    got = [json.loads(await c.recv_text()) for _ in range(n)]
    pongs = [m for m in got if m["type"] == "pong"]
    errors = [m for m in got if m["type"] == "error"]
    assert len(pongs) + len(errors) == n, got[:3]
    assert len(pongs) >= 500, f"only {len(pongs)} of the first burst were served"
    assert errors, "no request was rate limited"
    for m in errors:
        assert_fields(m, {"type": "error", "id": ..., "code": "rate_limited", "message": ...})
    # every reply matches its request, in order
    assert [m["id"] for m in got] == list(range(n))
    # the connection stays open; once the bucket refills requests are served again
    for _ in range(100):
        await c.send({"type": "ping", "id": "after"})
        m = json.loads(await c.recv_text())
        if m["type"] == "pong":
            break
        assert m["code"] == "rate_limited", m
        await asyncio.sleep(0.05)  # pacing only: lets the bucket refill
    assert m == {"type": "pong", "id": "after"}, m


# --- limits on rooms and subscriptions (defaults: 1000 each) ---------------------------


async def paced_ok(c: Client, req: dict, deadline_s: float = 30.0) -> dict:
    """A request retried while rate limited (to stay under the limit, not to sync)."""
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while True:
        r = await c.request(req)
        if r["type"] == "error" and r["code"] == "rate_limited" and loop.time() < end:
            await asyncio.sleep(0.02)
            continue
        return r


async def test_too_many_rooms(c):
    base = uid("many")
    for i in range(1000):
        r = await paced_ok(c, {"type": "join", "room": f"{base}-{i}"})
        assert r["type"] == "ack", f"join {i}: {r}"
    r = await paced_ok(c, {"type": "join", "room": f"{base}-1000"})
    assert r["type"] == "error" and r["code"] == "too_many_rooms", r
    # rejoining a room already joined is not a new room
    r = await paced_ok(c, {"type": "join", "room": f"{base}-0"})
    assert r["type"] == "ack", r
    # after leaving one, there is room again
    r = await paced_ok(c, {"type": "leave", "room": f"{base}-1"})
    assert r["type"] == "ack", r
    r = await paced_ok(c, {"type": "join", "room": f"{base}-1000"})
    assert r["type"] == "ack", r


async def test_too_many_subscriptions(c):
    base = uid("subs")
    for i in range(1000):
        r = await paced_ok(c, {"type": "subscribe", "channel": f"{base}-{i}"})
        assert r["type"] == "ack", f"subscribe {i}: {r}"
    r = await paced_ok(c, {"type": "subscribe", "channel": f"{base}-1000"})
    assert r["type"] == "error" and r["code"] == "too_many_subscriptions", r
    r = await paced_ok(c, {"type": "subscribe", "channel": f"{base}-0"})
    assert r["type"] == "ack", r


async def test_room_full(room_limit_server):
    room = uid("full")
    a = await Client.open(room_limit_server.ws_url)
    b = await Client.open(room_limit_server.ws_url)
    try:
        await a.ok({"type": "join", "room": room})
        r = await b.request({"type": "join", "room": room})
        assert r["type"] == "error" and r["code"] == "room_full", r
        # the first member leaving makes room again
        await a.ok({"type": "leave", "room": room})
        await b.ok({"type": "join", "room": room})
    finally:
        await a.close()
        await b.close()


async def test_forbidden(no_room_creation_server):
    c = await Client.open(no_room_creation_server.ws_url)
    try:
        r = await c.request({"type": "join", "room": uid("new")})
        assert r["type"] == "error" and r["code"] == "forbidden", r
        assert await c.barrier() == [], "the refusal changed nothing else"
    finally:
        await c.close()

"""Connection basics: welcome, pings, request ids, tolerance of unknown fields."""

from __future__ import annotations

import json

from rc import Client, assert_fields, uid


async def test_welcome_anonymous(ws_url):
    c = await Client.open(ws_url)
    try:
        w = c.welcome
        assert_fields(w, {"type": "welcome", "conn": ..., "user": None, "heartbeat": ...})
        assert isinstance(w["conn"], str) and w["conn"], w
        hb = w["heartbeat"]
        assert_fields(hb, {"interval_ms": ..., "timeout_ms": ...})
        for k in ("interval_ms", "timeout_ms"):
            assert isinstance(hb[k], int) and not isinstance(hb[k], bool) and hb[k] > 0, hb
    finally:
        await c.close()


async def test_welcome_with_user_and_unique_conn(ws_url):
    user = uid("alice")
    a = await Client.open(ws_url, user=user)
    b = await Client.open(ws_url, user=user)
    anon = await Client.open(ws_url)
    try:
        assert a.welcome["user"] == user
        assert b.welcome["user"] == user
        assert anon.welcome["user"] is None
        conns = {a.conn, b.conn, anon.conn}
        assert len(conns) == 3, f"conn ids must be unique per connection: {conns}"
    finally:
        for c in (a, b, anon):
            await c.close()


async def test_ping_with_number_id(ws_url):
    c = await Client.open(ws_url)
    try:
        await c.send({"type": "ping", "id": 42})
        assert json.loads(await c.recv_text()) == {"type": "pong", "id": 42}
    finally:
        await c.close()


async def test_ping_with_string_id(ws_url):
    c = await Client.open(ws_url)
    try:
        rid = "x" * 64  # the longest id allowed
        await c.send({"type": "ping", "id": rid})
        assert json.loads(await c.recv_text()) == {"type": "pong", "id": rid}
    finally:
        await c.close()


async def test_ping_without_id_has_no_id(ws_url):
    c = await Client.open(ws_url)
    try:
        await c.send_text('{ "type" : "ping" }')  # not the exact heartbeat text
        assert json.loads(await c.recv_text()) == {"type": "pong"}
    finally:
        await c.close()


async def test_heartbeat_exact_text(ws_url):
    """`{"type":"ping"}` byte for byte is answered by exactly `{"type":"pong"}`."""
    c = await Client.open(ws_url)
    try:
        for _ in range(3):
            await c.send_text('{"type":"ping"}')
            assert await c.recv_text() == '{"type":"pong"}'
    finally:
        await c.close()


async def test_ids_echoed_in_ack_and_error(ws_url):
    c = await Client.open(ws_url)
    room = uid("room")
    try:
        await c.send({"type": "join", "room": room, "id": 7})
        ack = await c.recv()
        assert ack["type"] == "ack" and ack["id"] == 7, ack
        await c.send({"type": "leave", "room": uid("other"), "id": "req-1"})
        err = await c.recv()
        assert err["type"] == "error" and err["id"] == "req-1", err
        assert err["code"] == "not_member", err
        # Ids are echoed as sent: a float and a big integer keep their value.
        await c.send_text('{"type":"ping","id":1.5}')
        assert json.loads(await c.recv_text()) == {"type": "pong", "id": 1.5}
        await c.send_text('{"type":"ping","id":9007199254740993}')
        assert json.loads(await c.recv_text()) == {"type": "pong", "id": 9007199254740993}
    finally:
        await c.close()


async def test_no_id_in_reply_without_id(ws_url):
    c = await Client.open(ws_url)
    room = uid("room")
    try:
        await c.send({"type": "join", "room": room})
        ack = await c.recv()
        assert ack["type"] == "ack" and "id" not in ack, ack
        await c.send({"type": "leave", "room": uid("nope")})
        err = await c.recv()
        assert err["type"] == "error" and "id" not in err, err
        await c.send({"type": "subscribe", "channel": uid("ch")})
        ack = await c.recv()
        assert ack["type"] == "ack" and "id" not in ack, ack
    finally:
        await c.close()


async def test_unknown_fields_ignored(ws_url):
    a = await Client.open(ws_url)
    b = await Client.open(ws_url)
    room = uid("room")
    try:
        extra = {"extra": {"nested": [1, 2, {"x": None}]}, "zzz": True, "ID": "not-the-id"}
        await a.send({"type": "ping", "id": 1, **extra})
        assert json.loads(await a.recv_text()) == {"type": "pong", "id": 1}
        ack = await a.ok({"type": "join", "room": room, **extra})
        assert ack["room"] == room
        await b.ok({"type": "join", "room": room, "flavour": "vanilla"})
        ack = await a.ok({"type": "publish", "room": room, "event": "e", "data": 1, **extra})
        assert ack["delivered"] == 1, ack
        m = await b.recv()
        assert m["type"] == "message" and m["data"] == 1 and "extra" not in m, m
    finally:
        await a.close()
        await b.close()

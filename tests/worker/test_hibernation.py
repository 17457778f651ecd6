"""Hibernation, storage and alarms of the roomcast Durable Object, end to end under workerd.

Eviction is observed, not assumed: a connection admitted after a wake-up gets a `conn` id
whose prefix (the hub instance, drawn from a fresh seed on every restore) differs from the
ids handed out before. Only heartbeats (`{"type":"ping"}`, answered by workerd's
auto-response without waking the object) are sent while idling.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.error
import urllib.request

import pytest
from rc import Client, is_msg, is_presence, uid

HEARTBEAT = '{"type":"ping"}'


def instance(conn: str) -> str:
    """The hub-instance part of a connection id (`{instance}-{n}`, see the core hub)."""
    return conn.rsplit("-", 1)[0]


async def idle(clients: list[Client], seconds: float) -> None:
    """Keeps the sockets alive with heartbeats only, which never reach the hub."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        for c in clients:
            await c.send_text(HEARTBEAT)
            assert await c.recv_text() == '{"type":"pong"}'
        await asyncio.sleep(min(3.0, max(0.0, end - loop.time())))


async def test_rooms_users_subscriptions_and_seq_survive_eviction(hub_url, evict_after):
    ann_name, bob_name = uid("ann"), uid("bob")
    ann = await Client.open(hub_url, user=ann_name)
    bob = await Client.open(hub_url, user=bob_name)
    others: list[Client] = []
    try:
        room, chan = uid("room"), uid("chan")
        ack = await ann.ok({"type": "join", "room": room, "presence": True})
        epoch = ack["epoch"]
        await bob.ok({"type": "join", "room": room})
        await ann.expect(is_presence(room))
        for c in (ann, bob):
            await c.ok({"type": "subscribe", "channel": chan})
        # Enough long room names that ann's snapshot outgrows a 2 KiB attachment and is
        # kept in storage instead.
        long_rooms = [f"{i:02d}-{'x' * 100}-{uid('r')}" for i in range(20)]
        for r in long_rooms:
            await ann.ok({"type": "join", "room": r})
        await bob.ok({"type": "join", "room": long_rooms[-1]})
        r = await ann.ok({"type": "publish", "room": room, "event": "m1", "data": 1})
        assert r["seq"] == 1, r
        m = await bob.expect(is_msg("m1"))
        assert m["seq"] == 1, m
        assert await ann.barrier() == [] and await bob.barrier() == []

        await idle([ann, bob], evict_after)

        carl = await Client.open(hub_url)
        others.append(carl)
        assert instance(carl.conn) != instance(ann.conn), (
            f"the hub was not rebuilt after {evict_after}s idle ({carl.conn} vs {ann.conn}): "
            "set ROOMCAST_EVICT_AFTER_S longer"
        )
        # the room: same epoch, seq continues, members and senders intact
        r = await ann.ok({"type": "publish", "room": room, "event": "m2", "data": 2})
        assert r["seq"] == 2 and r["delivered"] == 1, r
        m = await bob.expect(is_msg("m2"))
        assert m["seq"] == 2 and m["room"] == room and m["from"] == ann.peer, m
        # users
        r = await carl.ok({"type": "publish", "user": bob_name, "event": "dm"})
        assert r["delivered"] == 1, r
        assert (await bob.expect(is_msg("dm")))["user"] == bob_name
        # channel subscriptions
        r = await ann.ok({"type": "publish", "channel": chan, "event": "c"})
        assert r["delivered"] == 1, r
        assert (await bob.expect(is_msg("c")))["channel"] == chan
        # memberships that lived in storage (ann's snapshot was too big to attach)
        r = await bob.ok({"type": "publish", "room": long_rooms[-1], "event": "l"})
        assert r["delivered"] == 1, r
        assert (await ann.expect(is_msg("l")))["room"] == long_rooms[-1]
        await ann.ok({"type": "leave", "room": long_rooms[0]})
        # presence subscription and member list
        ack = await carl.ok({"type": "join", "room": room, "presence": True})
        assert ack["members"] == 3 and ack["epoch"] == epoch and ack["seq"] == 2, ack
        assert ann.peer in ack["present"] and bob.peer in ack["present"], ack
        p = await ann.expect(is_presence(room))
        assert p.get("joined") == [carl.peer], p
        # history from before the eviction, from storage
        dave = await Client.open(hub_url)
        others.append(dave)
        await dave.send({"type": "join", "room": room, "since": 0, "epoch": epoch, "id": "j"})
        got = [json.loads(await dave.recv_text()) for _ in range(3)]
        assert [m.get("seq") for m in got[:2]] == [1, 2], got
        assert got[2]["type"] == "ack" and got[2]["recovered"] is True, got
        for watcher in (ann, carl):
            p = await watcher.expect(is_presence(room))
            assert p.get("joined") == [dave.peer], p
        # nothing lost, nothing extra
        for c in (ann, bob, carl, dave):
            assert await c.barrier() == [], c.conn
    finally:
        for c in (ann, bob, *others):
            await c.close()


def api(hub_url: str, method: str, path: str, body: dict | None = None) -> tuple[int, dict]:
    """The hub's server HTTP API (`/hub/NAME/api/...`), with the instance's key."""
    key = os.environ.get("ROOMCAST_API_KEY")
    base = hub_url.replace("ws://", "http://", 1).removesuffix("/ws") + "/api"
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(base + path, data=data, method=method,
                                 headers={"Authorization": f"Bearer {key}",
                                          "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


async def test_what_the_server_api_made_survives_eviction(hub_url, evict_after):
    """Rooms the API made (with their data, even empty) and channel links survive the
    object's eviction; observed by a connection id of a new hub instance."""
    if not os.environ.get("ROOMCAST_API_KEY"):
        pytest.skip("ROOMCAST_API_KEY unset: the instance has no server API")
    room, chan = uid("stage"), uid("chan")
    call = asyncio.to_thread
    status, r = await call(api, hub_url, "PUT", f"/rooms/{room}", {"data": {"topic": "news"}})
    assert status == 200, r
    epoch = r["epoch"]
    assert (await call(api, hub_url, "PUT", f"/channels/{chan}/rooms/{room}"))[0] == 200
    status, r = await call(api, hub_url, "POST", "/publish", {"room": room, "event": "e", "data": 1})
    assert (status, r["seq"]) == (200, 1), r
    before = await Client.open(hub_url)
    first = before.conn
    await before.close()

    await asyncio.sleep(evict_after)  # no socket open: nothing keeps the object awake

    c = await Client.open(hub_url)
    try:
        assert instance(c.conn) != instance(first), (
            f"the hub was not rebuilt after {evict_after}s idle ({c.conn} vs {first})"
        )
        status, r = await call(api, hub_url, "GET", f"/rooms/{room}")
        assert status == 200, r
        assert (r["data"], r["epoch"], r["seq"]) == ({"topic": "news"}, epoch, 1), r
        await c.ok({"type": "join", "room": room})
        status, r = await call(api, hub_url, "POST", "/publish", {"channel": chan, "event": "via"})
        assert (status, r) == (200, {"delivered": 1}), "the channel link was kept"
        assert (await c.expect(is_msg("via")))["channel"] == chan
    finally:
        await c.close()


async def _expires(url: str, age: float, keep_awake: bool) -> None:
    e = await Client.open(url)
    try:
        room = uid("gone")
        epoch = (await e.ok({"type": "join", "room": room}))["epoch"]
        assert (await e.ok({"type": "publish", "room": room, "event": "x"}))["seq"] == 1
        await e.ok({"type": "leave", "room": room})
        # The empty room lives for the history age; only the alarm ends it (a late join
        # would otherwise still find seq 1).
        loop = asyncio.get_running_loop()
        end = loop.time() + age + 3
        while loop.time() < end:
            if keep_awake:
                await e.ok({"type": "subscribe", "channel": "awake"})  # reaches the hub
            else:
                await e.send_text(HEARTBEAT)  # does not
                assert await e.recv_text() == '{"type":"pong"}'
            await asyncio.sleep(2)
        g = await Client.open(url)
        try:
            # Which case ran is observed, not assumed: a hub rebuilt after an eviction hands
            # out ids of a new instance; one kept awake, of the same.
            if keep_awake:
                assert instance(g.conn) == instance(e.conn), (
                    f"the hub kept awake was rebuilt ({g.conn} vs {e.conn})"
                )
            else:
                assert instance(g.conn) != instance(e.conn), (
                    f"no eviction in {age + 3}s with heartbeats only ({g.conn} vs {e.conn}): "
                    "the evicted case did not run"
                )
            ack = await g.ok({"type": "join", "room": room})
            assert ack["seq"] == 0 and ack["epoch"] != epoch, (
                f"room not expired {age}s after it emptied (keep_awake={keep_awake}): {ack}"
            )
        finally:
            await g.close()
    finally:
        await e.close()


async def test_alarm_expires_empty_rooms_awake_and_evicted(hub_url, history_age):
    """The alarm is set at an absolute time (an offset would be ~56 years late): it fires
    in an awake object, and wakes an evicted one."""
    other = hub_url.replace("/ws", "-2/ws")
    await asyncio.gather(
        _expires(hub_url, history_age, keep_awake=True),
        _expires(other, history_age, keep_awake=False),
    )

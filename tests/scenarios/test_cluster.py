"""Several native servers on one real Redis (PROTOCOL.md "Several native servers: one
Redis"): a `redis-server` started for this module, three `roomcast --redis` nodes, and
clients spread over them. Faults are real: the pub/sub link killed with `CLIENT KILL`,
the data flushed, Redis stopped and started again.

Native only: the Worker keeps each hub in one Durable Object.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
import shutil
import socket
import subprocess
import tempfile
import time

import pytest

from conftest import require, start_server
from rc import TIMEOUT, Client, close_code, uid


API_KEY = "cluster-api-key-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def resp(port: int, *args: str) -> bytes:
    """One Redis command over RESP, its raw answer's first line (enough for PONG, OK and
    integers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        cmd = f"*{len(args)}\r\n" + "".join(f"${len(a.encode())}\r\n{a}\r\n" for a in args)
        s.sendall(cmd.encode())
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data.split(b"\r\n", 1)[0]


class Redis:
    """A real redis-server on a free loopback port, no persistence."""

    def __init__(self) -> None:
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.exe = exe
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix="roomcast-redis-")
        self.proc: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", self.dir],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while True:
            try:
                if resp(self.port, "PING") == b"+PONG":
                    return
            except OSError:
                pass
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait(10)
            self.proc = None

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def redis():
    require("redis_backplane")
    r = Redis()
    yield r
    r.close()


@pytest.fixture(scope="module")
def nodes(redis):
    """Three nodes on the module's Redis (2 s Redis timeout by default)."""
    servers = [start_server("--redis", redis.url, "--api-key", API_KEY, name=f"node{i}")
               for i in range(3)]
    yield servers
    for s in servers:
        s.terminate()


def msgs(room: str):
    return lambda m: m.get("type") == "message" and m.get("room") == room


async def collect(c: Client, room: str, n: int, timeout: float = TIMEOUT) -> list[dict]:
    got = []
    while len(got) < n:
        got.append(await c.expect(msgs(room), timeout=timeout))
    return got


async def test_publishers_on_two_nodes_give_every_member_one_sequence(nodes):
    room = uid("r")
    clients = [await Client.open(n.ws_url, user=uid(f"u{i}")) for i, n in enumerate(nodes)]
    for c in clients:
        ack = await c.ok({"type": "join", "room": room})
    epoch = ack["epoch"]
    a, b = clients[0], clients[1]

    async def publish(c: Client, tag: str):
        acks = []
        for i in range(40):
            r = await c.ok({"type": "publish", "room": room, "event": "m",
                            "data": {"by": tag, "i": i}, "echo": True})
            acks.append(r["seq"])
        return acks

    acks_a, acks_b = await asyncio.gather(publish(a, "a"), publish(b, "b"))
    assert sorted(acks_a + acks_b) == list(range(1, 81)), "one seq per room across nodes"
    seen = [await collect(c, room, 80) for c in clients]
    for got in seen:
        assert [m["seq"] for m in got] == list(range(1, 81))
    # the same message at the same seq everywhere, and each publisher's acks name its own
    assert seen[0] == seen[1] == seen[2]
    by_seq = {m["seq"]: m["data"]["by"] for m in seen[0]}
    assert all(by_seq[s] == "a" for s in acks_a) and all(by_seq[s] == "b" for s in acks_b)
    # a later join on any node sees the same position
    d = await Client.open(nodes[2].ws_url)
    ack = await d.ok({"type": "join", "room": room})
    assert (ack["epoch"], ack["seq"]) == (epoch, 80)
    for c in (*clients, d):
        await c.close()


async def test_reconnecting_to_another_node_recovers_exactly_what_was_missed(nodes):
    room = uid("r")
    pub = await Client.open(nodes[0].ws_url)
    await pub.ok({"type": "join", "room": room})
    leaver = await Client.open(nodes[1].ws_url)
    ack = await leaver.ok({"type": "join", "room": room})
    epoch = ack["epoch"]
    for i in range(5):
        await pub.ok({"type": "publish", "room": room, "event": "m", "data": i})
    last = (await collect(leaver, room, 5))[-1]["seq"]
    await leaver.close()
    for i in range(5, 12):
        await pub.ok({"type": "publish", "room": room, "event": "m", "data": i})
    # back on a node that never had this room
    back = await Client.open(nodes[2].ws_url)
    await back.send({"type": "join", "room": room, "since": last, "epoch": epoch, "id": "j"})
    replay = []
    while True:
        m = await back.recv()
        if m.get("type") == "ack":
            break
        replay.append(m)
    assert [m["seq"] for m in replay] == list(range(6, 13)) and [m["data"] for m in replay] == list(range(5, 12))
    assert m["recovered"] is True and m["seq"] == 12
    # and live again
    await pub.ok({"type": "publish", "room": room, "event": "m", "data": 12})
    assert (await back.expect(msgs(room)))["seq"] == 13
    # a position beyond the room's is not recovered
    other = await Client.open(nodes[0].ws_url)
    r = await other.ok({"type": "join", "room": room, "since": 99, "epoch": epoch})
    assert r["recovered"] is False
    for c in (pub, back, other):
        await c.close()


async def test_channels_users_and_broadcasts_reach_every_node(nodes):
    chan, user = uid("ch"), uid("bob")
    sub = await Client.open(nodes[1].ws_url, user=user)
    await sub.ok({"type": "subscribe", "channel": chan})
    sender = await Client.open(nodes[0].ws_url)
    await sender.ok({"type": "subscribe", "channel": chan})
    await sender.ok({"type": "publish", "channel": chan, "event": "c", "data": 1})
    m = await sub.expect(lambda m: m.get("event") == "c")
    assert m["channel"] == chan and m["from"]["conn"] == sender.conn
    await sender.ok({"type": "publish", "user": user, "event": "dm", "data": 2})
    m = await sub.expect(lambda m: m.get("event") == "dm")
    assert m["user"] == user and m["data"] == 2
    await sub.close()
    await sender.close()


async def test_the_api_disconnects_a_user_on_every_node(nodes):
    user = uid("mallory")
    here = await Client.open(nodes[0].ws_url, user=user)
    there = await Client.open(nodes[2].ws_url, user=user)
    bystander = await Client.open(nodes[2].ws_url, user=uid("bob"))
    req = urllib.request.Request(
        f"{nodes[1].http_url}/api/users/{user}/disconnect",
        data=json.dumps({"code": 4003, "reason": "banned"}).encode(), method="POST",
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"})
    r = await asyncio.to_thread(lambda: json.load(urllib.request.urlopen(req, timeout=10)))
    assert r == {"disconnected": 0}, "none on the node asked; the others carry it out"
    for c in (here, there):
        closed = await c.closed(timeout=TIMEOUT)
        assert close_code(closed) == 4003 and closed.rcvd.reason == "banned"
    assert await bystander.barrier() == []
    await bystander.close()


async def test_a_killed_pubsub_link_is_repaired_without_disconnecting_anyone(nodes, redis):
    room = uid("r")
    pub = await Client.open(nodes[0].ws_url)
    await pub.ok({"type": "join", "room": room})
    watchers = [await Client.open(n.ws_url) for n in nodes]
    for w in watchers:
        await w.ok({"type": "join", "room": room})
    # every node's pub/sub connection dies; 100 publishes follow at once
    killed = resp(redis.port, "CLIENT", "KILL", "TYPE", "pubsub")
    assert killed.startswith(b":") and int(killed[1:]) >= 3, killed
    for i in range(100):
        await pub.ok({"type": "publish", "room": room, "event": "m", "data": i})
    for w in watchers:
        got = await collect(w, room, 100)
        assert [m["seq"] for m in got] == list(range(1, 101))
        assert [m["data"] for m in got] == list(range(100))
    for c in (pub, *watchers):
        assert await c.barrier() == [], "still connected, nothing else"
        await c.close()


async def test_a_flushed_redis_starts_a_new_epoch_and_never_loses_silently(nodes, redis):
    room = uid("r")
    a = await Client.open(nodes[0].ws_url)
    b = await Client.open(nodes[1].ws_url)
    ack = await a.ok({"type": "join", "room": room})
    await b.ok({"type": "join", "room": room})
    old_epoch = ack["epoch"]
    await a.ok({"type": "publish", "room": room, "event": "m", "data": 1, "echo": True})
    last = (await collect(b, room, 1))[0]["seq"]
    assert resp(redis.port, "FLUSHALL") == b"+OK"
    # the next message carries a new epoch: members here cannot be told what was lost,
    # so they are closed 1013 and learn it on their rejoin
    await a.send({"type": "publish", "room": room, "event": "m", "data": 2})
    closed = await b.closed(timeout=TIMEOUT)
    assert close_code(closed) == 1013
    c = await Client.open(nodes[2].ws_url)
    r = await c.ok({"type": "join", "room": room, "since": last, "epoch": old_epoch})
    assert r["recovered"] is False and r["epoch"] != old_epoch
    await c.close()


async def test_redis_down_refuses_what_needs_it_and_comes_back(nodes, redis):
    room = uid("r")
    a = await Client.open(nodes[0].ws_url)
    await a.ok({"type": "join", "room": room})
    redis.stop()
    try:
        r = await a.request({"type": "publish", "room": room, "event": "m"}, timeout=TIMEOUT)
        assert r["type"] == "error" and r["code"] == "unavailable"
        r = await a.request({"type": "join", "room": uid("new")}, timeout=TIMEOUT)
        assert r["type"] == "error" and r["code"] == "unavailable"
        assert await a.barrier() == [], "the connection is kept"
    finally:
        redis.start()
    # back (empty: it restarted without persistence). A new room works as soon as the
    # nodes reconnect; the old room's log is gone, so its member is closed 1013 and
    # learns on its rejoin that it did not recover.
    c = await Client.open(nodes[1].ws_url)
    fresh = uid("fresh")
    deadline = time.monotonic() + TIMEOUT
    while (r := await c.request({"type": "join", "room": fresh}))["type"] != "ack":
        assert r["code"] == "unavailable" and time.monotonic() < deadline, r
        await asyncio.sleep(0.1)
    # the command connection reconnects on its first failure: a publish may need a retry
    while (r := await c.request({"type": "publish", "room": fresh, "event": "m"}))["type"] != "ack":
        assert r["code"] == "unavailable" and time.monotonic() < deadline, r
        await asyncio.sleep(0.1)
    assert r["seq"] == 1
    # the old room: the node's resync after the reconnect finds a new epoch
    closed = await a.closed(timeout=TIMEOUT)
    assert close_code(closed) == 1013
    a2 = await Client.open(nodes[0].ws_url)
    r = await a2.ok({"type": "join", "room": room, "since": 0, "epoch": "the-old-one"})
    assert r["recovered"] is False and r["epoch"] != "the-old-one"
    await a2.close()
    await c.close()


async def test_a_node_killed_takes_only_its_own_connections(redis):
    servers = [start_server("--redis", redis.url, name=f"kill{i}") for i in range(2)]
    try:
        room = uid("r")
        a = await Client.open(servers[0].ws_url)
        b = await Client.open(servers[1].ws_url)
        epoch = (await a.ok({"type": "join", "room": room}))["epoch"]
        await b.ok({"type": "join", "room": room})
        for i in range(3):
            await a.ok({"type": "publish", "room": room, "event": "m", "data": i})
        assert [m["seq"] for m in await collect(b, room, 3)] == [1, 2, 3]
        servers[1].proc.kill()  # SIGKILL: no goodbye to anyone
        servers[1].proc.wait(10)
        await b.closed(timeout=TIMEOUT)
        for i in range(3, 6):
            await a.ok({"type": "publish", "room": room, "event": "m", "data": i})
        # b's user comes back on the surviving node and recovers exactly what it missed
        b2 = await Client.open(servers[0].ws_url)
        await b2.send({"type": "join", "room": room, "since": 3, "epoch": epoch, "id": "j"})
        got = [await b2.recv() for _ in range(4)]
        assert [m.get("seq") for m in got[:3]] == [4, 5, 6]
        assert got[3]["type"] == "ack" and got[3]["recovered"] is True
        assert await a.barrier() == [], "the survivor's clients saw nothing else"
        await a.close()
        await b2.close()
    finally:
        for s in servers:
            s.terminate()


async def test_a_stalled_redis_costs_a_bounded_wait_and_then_works(nodes, redis):
    room = uid("r")
    a = await Client.open(nodes[0].ws_url)
    await a.ok({"type": "join", "room": room})
    # every Redis client stalls for 3 s (what a long command or a failover looks like)
    assert resp(redis.port, "CLIENT", "PAUSE", "3000", "ALL") == b"+OK"
    started = time.monotonic()
    for i in range(5):
        await a.send({"type": "publish", "room": room, "event": "m", "id": i})
    replies = [await a.recv(timeout=TIMEOUT) for _ in range(5)]
    assert all(r["type"] == "error" and r["code"] == "unavailable" for r in replies), replies
    # the 2 s Redis timeout bounds the wait; the queued ones are not each given 2 s more
    assert time.monotonic() - started < 4.5
    assert await a.barrier() == [], "the connection is kept"
    deadline = time.monotonic() + TIMEOUT
    while (r := await a.request({"type": "publish", "room": room, "event": "m"}))["type"] != "ack":
        assert time.monotonic() < deadline, r
        await asyncio.sleep(0.2)
    await a.close()

"""Rooms: join/leave acks, presence, room publishing, exclusion and ordering."""

from __future__ import annotations

import asyncio
import time

from rc import Client, assert_fields, is_msg, join, presence_until, uid

ACK_OPTIONAL = {"room", "channel"}  # implementations may name the target in an ack


async def clients(url: str, n: int, user: str | None = None) -> list[Client]:
    return [await Client.open(url, user=user) for _ in range(n)]


async def close_all(cs) -> None:
    for c in cs:
        await c.close()


async def test_join_ack_fields(ws_url):
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await a.send({"type": "join", "room": room, "id": 1})
        ack = await a.recv()
        assert_fields(ack, {"type": "ack", "id": 1, "room": room, "members": 1, "epoch": ..., "seq": 0})
        assert isinstance(ack["epoch"], str), ack
        ack2 = await join(b, room)
        assert_fields(ack2, {"type": "ack", "id": ..., "room": room, "members": 2, "epoch": ack["epoch"], "seq": 0})
        assert "recovered" not in ack2 and "present" not in ack2
    finally:
        await close_all((a, b))


async def test_join_ack_seq_is_latest(ws_url):
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(a, room)
        for i in range(3):
            await a.ok({"type": "publish", "room": room, "event": "e", "data": i})
        ack = await join(b, room)
        assert ack["seq"] == 3 and ack["members"] == 2, ack
    finally:
        await close_all((a, b))


async def test_join_with_presence_lists_present(ws_url):
    a, b, c = await clients(ws_url, 3)
    c_user = uid("carol")
    await c.close()
    c = await Client.open(ws_url, user=c_user)
    room = uid("room")
    try:
        await join(a, room)
        await join(b, room, presence=True)
        ack = await join(c, room, presence=True)
        assert_fields(
            ack,
            {"type": "ack", "id": ..., "room": room, "members": 3, "epoch": ..., "seq": 0, "present": ...},
        )
        present = ack["present"]
        assert isinstance(present, list), ack
        for p in present:
            assert_fields(p, {"conn": ..., "user": ...})
        # The list holds the room's members, the joiner included (docs/protocol.md; the
        # server caps it at its own limit, far above 3), each once.
        for peer in (a.peer, b.peer, {"conn": c.conn, "user": c_user}):
            assert peer in present, f"{peer} missing from present {present}"
        assert len(present) == 3, present
    finally:
        await close_all((a, b, c))


async def test_presence_joined_and_left(ws_url):
    """Presence goes only to presence:true joiners; a leave and a disconnect both count."""
    watcher, quiet, bob = await clients(ws_url, 3)
    carol_user = uid("carol")
    carol = await Client.open(ws_url, user=carol_user)
    room = uid("room")
    try:
        await join(watcher, room, presence=True)
        await join(quiet, room)  # presence off: must never see presence events
        await presence_until(watcher, room, joined=[quiet.peer])

        await join(bob, room, presence=True)
        await presence_until(watcher, room, joined=[bob.peer])

        await join(carol, room)
        assert carol.peer == {"conn": carol.conn, "user": carol_user}
        await presence_until(watcher, room, joined=[carol.peer])
        await presence_until(bob, room, joined=[carol.peer])

        await bob.ok({"type": "leave", "room": room})
        await presence_until(watcher, room, left=[bob.peer])

        await carol.close()  # disconnect = leaving every room
        await presence_until(watcher, room, left=[carol.peer])

        assert not [m for m in await quiet.barrier() if m.get("type") == "presence"], (
            "a member that joined without presence received presence events"
        )
        # bob left: nothing about carol's disconnect reaches him
        assert not [m for m in await bob.barrier() if m.get("type") == "presence"]
    finally:
        await close_all((watcher, quiet, bob, carol))


async def test_user_presence_counts_each_user_once(ws_url):
    """`presence: "users"`: a user's second tab is no news, closing one of two tabs is no
    departure, the last one is; `present` lists each user once. A per-connection watcher
    beside it sees every tab (and is the test's sync point)."""
    ann = uid("ann")
    watcher, per_conn = await clients(ws_url, 2)
    tab1 = await Client.open(ws_url, user=ann)
    tab2 = await Client.open(ws_url, user=ann)
    late = await Client.open(ws_url)
    room = uid("room")
    try:
        await join(watcher, room, presence="users")
        await join(per_conn, room, presence=True)
        await presence_until(watcher, room, joined=[per_conn.peer])

        await join(tab1, room)
        await presence_until(watcher, room, joined=[tab1.peer])
        await join(tab2, room)
        await presence_until(per_conn, room, joined=[tab1.peer, tab2.peer])
        assert not [m for m in await watcher.barrier() if m.get("type") == "presence"], (
            "a user's second connection reported as a new user"
        )

        ack = await join(late, room, presence="users")
        users = [p["user"] for p in ack["present"]]
        assert sorted(u for u in users if u == ann) == [ann], ack
        assert len(ack["present"]) == 4, ack  # watcher, per_conn, ann once, late
        await presence_until(watcher, room, joined=[late.peer])

        await tab1.close()
        await presence_until(per_conn, room, left=[tab1.peer])
        assert not [m for m in await watcher.barrier() if m.get("type") == "presence"], (
            "a false `left` for a user still in the room"
        )
        await tab2.close()
        await presence_until(watcher, room, left=[tab2.peer])
    finally:
        await close_all((watcher, per_conn, tab1, tab2, late))


async def test_second_join_acked_without_presence_change(ws_url):
    watcher, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(watcher, room, presence=True)
        await join(b, room)
        await presence_until(watcher, room, joined=[b.peer])
        ack = await join(b, room)  # again
        assert ack["members"] == 2, ack
        # b can switch presence on with a second join
        ack = await join(b, room, presence=True)
        assert ack["members"] == 2 and "present" in ack, ack
        c = await Client.open(ws_url)
        try:
            await join(c, room)
            await presence_until(b, room, joined=[c.peer])
        finally:
            await c.close()
        got = [m for m in await watcher.barrier() if m.get("type") == "presence"]
        joined_b = [p for m in got for p in m.get("joined", []) if p == b.peer]
        assert not joined_b, f"second join reported b again: {got}"
    finally:
        await close_all((watcher, b))


async def test_leave_ack_and_not_member(ws_url):
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(a, room)
        await join(b, room)
        await a.send({"type": "leave", "room": room, "id": "l1"})
        ack = await a.recv()
        assert_fields(ack, {"type": "ack", "id": "l1"}, ACK_OPTIONAL)
        assert ack.get("room", room) == room
        # no longer a member: leave again, publish to it
        err = await a.request({"type": "leave", "room": room})
        assert err["type"] == "error" and err["code"] == "not_member", err
        err = await a.request({"type": "publish", "room": room, "event": "e"})
        assert err["type"] == "error" and err["code"] == "not_member", err
        # b no longer counts a
        ack = await b.ok({"type": "publish", "room": room, "event": "e"})
        assert ack["delivered"] == 0, ack
        await a.assert_quiet()
    finally:
        await close_all((a, b))


async def test_leave_never_joined_room_not_member(ws_url):
    a = await Client.open(ws_url)
    try:
        err = await a.request({"type": "leave", "room": uid("never")})
        assert_fields(err, {"type": "error", "id": ..., "code": "not_member", "message": ...})
        assert isinstance(err["message"], str)
    finally:
        await a.close()


async def test_room_publish_without_echo(ws_url):
    alice_user = uid("alice")
    a = await Client.open(ws_url, user=alice_user)
    b, c = await clients(ws_url, 2)
    room = uid("room")
    try:
        for x in (a, b, c):
            await join(x, room)
        data = {"text": "héllo ☃", "n": [1, 2.5, None, True], "nested": {"k": "v"}}
        await a.send({"type": "publish", "room": room, "event": "chat", "data": data, "id": 9})
        ack = await a.recv()
        assert_fields(ack, {"type": "ack", "id": 9, "delivered": 2, "seq": 1})
        sent_at = time.time() * 1000
        for x in (b, c):
            m = await x.recv()
            # `ts`: the server's Unix time in ms (a clock check, not a latency one: the
            # server and this test read the same machine's clock)
            assert isinstance(m["ts"], int) and abs(m["ts"] - sent_at) < 60_000, m
            assert_fields(
                m,
                {
                    "type": "message",
                    "room": room,
                    "seq": 1,
                    "ts": ...,
                    "event": "chat",
                    "data": data,
                    "from": {"conn": a.conn, "user": alice_user},
                },
            )
        await a.assert_quiet()  # the sender got only its ack
    finally:
        await close_all((a, b, c))


async def test_room_publish_with_echo(ws_url):
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(a, room)
        await join(b, room)
        ack = await a.ok({"type": "publish", "room": room, "event": "e", "data": "x", "echo": True})
        assert ack["delivered"] == 2 and ack["seq"] == 1, ack
        for x in (a, b):
            m = await x.expect(is_msg("e", room=room))
            assert m["seq"] == 1 and m["data"] == "x" and m["from"] == a.peer, m
        # echo false explicitly = default
        ack = await a.ok({"type": "publish", "room": room, "event": "e", "echo": False})
        assert ack["delivered"] == 1 and ack["seq"] == 2, ack
        await a.assert_quiet()
    finally:
        await close_all((a, b))


async def test_data_absent_is_null(ws_url):
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(a, room)
        await join(b, room)
        await a.ok({"type": "publish", "room": room, "event": "nodata"})
        m = await b.recv()
        assert "data" in m and m["data"] is None, m
    finally:
        await close_all((a, b))


async def test_exclusion(ws_url):
    """Only members of the target room receive; members of other rooms and idle
    connections get nothing."""
    a, b, other, idle = await clients(ws_url, 4)
    room, room2 = uid("room"), uid("room")
    try:
        await join(a, room)
        await join(b, room)
        await join(other, room2)
        ack = await a.ok({"type": "publish", "room": room, "event": "e"})
        assert ack["delivered"] == 1, ack
        await b.expect(is_msg("e", room=room))
        await other.assert_quiet()
        await idle.assert_quiet()
        # and the other way round
        ack = await other.ok({"type": "publish", "room": room2, "event": "f"})
        assert ack["delivered"] == 0, ack
        await a.assert_quiet()
        await b.assert_quiet()
    finally:
        await close_all((a, b, other, idle))


async def test_seq_order_many_messages(ws_url):
    n = 300  # under the burst of 500 requests
    a, b = await clients(ws_url, 2)
    room = uid("room")
    try:
        await join(a, room)
        await join(b, room)
        for i in range(n):
            await a.send({"type": "publish", "room": room, "event": "n", "data": i, "id": i})
        acks = [await a.recv() for _ in range(n)]
        assert [x.get("id") for x in acks] == list(range(n)), "acks out of order"
        assert [x.get("seq") for x in acks] == list(range(1, n + 1)), acks[:5]
        got = [await b.recv() for _ in range(n)]
        assert [m["data"] for m in got] == list(range(n))
        assert [m["seq"] for m in got] == list(range(1, n + 1))
    finally:
        await close_all((a, b))


async def test_two_senders_each_in_order(ws_url):
    a, b, r = await clients(ws_url, 3)
    room = uid("room")
    try:
        for x in (a, b, r):
            await join(x, room)
        n = 100

        async def burst(x: Client, tag: str) -> None:
            for i in range(n):
                await x.send({"type": "publish", "room": room, "event": tag, "data": i})
            # read our acks and the other sender's messages (unread, they would stall close)
            got = [await x.recv() for _ in range(2 * n)]
            acks = [m for m in got if m["type"] == "ack"]
            assert len(acks) == n and all(m["delivered"] == 2 for m in acks), acks[:3]
            other = [m["data"] for m in got if m["type"] == "message"]
            assert other == list(range(n)), other[:5]

        await asyncio.gather(burst(a, "a"), burst(b, "b"))
        got = [await r.recv() for _ in range(2 * n)]
        assert [m["seq"] for m in got] == list(range(1, 2 * n + 1))
        for tag in ("a", "b"):
            assert [m["data"] for m in got if m["event"] == tag] == list(range(n))
    finally:
        await close_all((a, b, r))

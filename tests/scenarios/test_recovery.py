"""Recovery with `join` + `since`/`epoch`.

`recovery_server` keeps at least 3 messages per room (the worker's default hub, or
`--history 3`); `history_server` exactly 3, for the cases where history must run out.
"""

from __future__ import annotations

from rc import Client, assert_fields, join, uid


async def publish_n(c: Client, room: str, first: int, n: int) -> None:
    for i in range(first, first + n):
        ack = await c.ok({"type": "publish", "room": room, "event": "n", "data": i})
        assert ack["seq"] == i, ack


async def rejoin(c: Client, room: str, **kw) -> tuple[list[dict], dict]:
    """Joins with recovery fields; returns (messages before the ack, the ack)."""
    await c.send({"type": "join", "room": room, "id": "rejoin", **kw})
    before = []
    while True:
        m = await c.recv()
        if m.get("type") == "ack" and m.get("id") == "rejoin":
            return before, m
        assert m.get("type") == "message", f"unexpected before the ack: {m}"
        before.append(m)


async def test_join_without_since_has_no_recovered(ws_url):
    c = await Client.open(ws_url)
    try:
        ack = await join(c, uid("room"))
        assert "recovered" not in ack, ack
    finally:
        await c.close()


async def test_since_current_seq_recovered_true(ws_url):
    """Nothing missed: recovered true, whatever the history setting."""
    a, b = await Client.open(ws_url), await Client.open(ws_url)
    room = uid("room")
    try:
        epoch = (await join(a, room))["epoch"]
        before, ack = await rejoin(b, room, since=0, epoch=epoch)
        assert before == []
        assert_fields(
            ack,
            {"type": "ack", "id": "rejoin", "room": room, "members": 2, "epoch": epoch, "seq": 0, "recovered": True},
        )
    finally:
        await a.close()
        await b.close()


async def test_recovery_replays_missed_messages(recovery_server):
    url = recovery_server.ws_url
    pub, sub = await Client.open(url, user=uid("pub")), await Client.open(url)
    room = uid("room")
    try:
        await join(pub, room)
        ack = await join(sub, room)
        epoch = ack["epoch"]
        await publish_n(pub, room, 1, 5)
        seen = [await sub.recv() for _ in range(5)]
        assert [m["seq"] for m in seen] == [1, 2, 3, 4, 5]
        last = seen[-1]["seq"]

        await sub.ok({"type": "leave", "room": room})
        await publish_n(pub, room, 6, 2)  # missed while away

        before, ack = await rejoin(sub, room, since=last, epoch=epoch)
        assert [m["seq"] for m in before] == [6, 7], before
        for m in before:
            assert_fields(
                m,
                {"type": "message", "room": room, "seq": ..., "ts": ..., "event": "n", "data": m["seq"], "from": pub.peer},
            )
        assert_fields(
            ack,
            {"type": "ack", "id": "rejoin", "room": room, "members": 2, "epoch": epoch, "seq": 7, "recovered": True},
        )
        # live delivery continues after the replay
        await publish_n(pub, room, 8, 1)
        m = await sub.recv()
        assert m["seq"] == 8 and m["data"] == 8, m
    finally:
        await pub.close()
        await sub.close()


async def test_recovery_after_disconnect(recovery_server):
    url = recovery_server.ws_url
    pub = await Client.open(url)
    room = uid("room")
    try:
        sub = await Client.open(url)
        epoch = (await join(sub, room))["epoch"]
        await join(pub, room)
        await publish_n(pub, room, 1, 1)
        assert (await sub.recv())["seq"] == 1
        await sub.close()
        await publish_n(pub, room, 2, 3)  # history (3) holds 2, 3, 4: exactly what was missed
        sub = await Client.open(url)
        before, ack = await rejoin(sub, room, since=1, epoch=epoch)
        assert [m["seq"] for m in before] == [2, 3, 4], before
        assert ack["recovered"] is True and ack["seq"] == 4, ack
        await sub.close()
    finally:
        await pub.close()


async def test_recovery_false_when_history_too_short(history_server):
    url = history_server.ws_url
    pub, sub = await Client.open(url), await Client.open(url)
    room = uid("room")
    try:
        await join(pub, room)
        epoch = (await join(sub, room))["epoch"]
        await publish_n(pub, room, 1, 2)
        assert [(await sub.recv())["seq"] for _ in range(2)] == [1, 2]
        await sub.ok({"type": "leave", "room": room})
        await publish_n(pub, room, 3, 4)  # 3..6 missed; history keeps only 4, 5, 6
        before, ack = await rejoin(sub, room, since=2, epoch=epoch)
        assert before == [], f"nothing may be replayed when history has a gap: {before}"
        assert_fields(
            ack,
            {"type": "ack", "id": "rejoin", "room": room, "members": 2, "epoch": epoch, "seq": 6, "recovered": False},
        )
    finally:
        await pub.close()
        await sub.close()


async def test_recovery_since_beyond_latest(recovery_server):
    url = recovery_server.ws_url
    pub, sub = await Client.open(url), await Client.open(url)
    room = uid("room")
    try:
        epoch = (await join(pub, room))["epoch"]
        await publish_n(pub, room, 1, 2)
        before, ack = await rejoin(sub, room, since=10, epoch=epoch)
        assert before == [] and ack["recovered"] is False and ack["seq"] == 2, (before, ack)
    finally:
        await pub.close()
        await sub.close()


async def test_recovery_wrong_epoch_replays_whole_epoch(recovery_server):
    """Another epoch: if the history still starts at seq 1 it is all replayed, but
    `recovered` is false (what the old epoch held after N is gone)."""
    url = recovery_server.ws_url
    pub, sub = await Client.open(url), await Client.open(url)
    room = uid("room")
    try:
        await join(pub, room)
        await publish_n(pub, room, 1, 2)
        before, ack = await rejoin(sub, room, since=5, epoch="some-older-epoch")
        assert [m["seq"] for m in before] == [1, 2], before
        assert ack["recovered"] is False and ack["seq"] == 2, ack
    finally:
        await pub.close()
        await sub.close()


async def test_recovery_wrong_epoch_history_not_from_start(history_server):
    url = history_server.ws_url
    pub, sub = await Client.open(url), await Client.open(url)
    room = uid("room")
    try:
        await join(pub, room)
        await publish_n(pub, room, 1, 5)  # history holds 3, 4, 5 only
        before, ack = await rejoin(sub, room, since=1, epoch="some-older-epoch")
        assert before == [], before
        assert ack["recovered"] is False and ack["seq"] == 5, ack
    finally:
        await pub.close()
        await sub.close()


async def test_room_seq_outlives_members(recovery_server):
    """With history on, an emptied room keeps its epoch and seq (for the history age)."""
    url = recovery_server.ws_url
    a = await Client.open(url)
    room = uid("room")
    try:
        ack = await join(a, room)
        epoch = ack["epoch"]
        await publish_n(a, room, 1, 2)
        await a.ok({"type": "leave", "room": room})
        b = await Client.open(url)
        try:
            before, ack = await rejoin(b, room, since=1, epoch=epoch)
            assert [m["seq"] for m in before] == [2], before
            assert ack["epoch"] == epoch and ack["seq"] == 2 and ack["recovered"] is True, ack
            assert ack["members"] == 1, ack
        finally:
            await b.close()
    finally:
        await a.close()

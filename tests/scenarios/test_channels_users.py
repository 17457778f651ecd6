"""Channels (subscribe/publish/unsubscribe) and user targeting."""

from __future__ import annotations

from rc import Client, assert_fields, uid

ACK_OPTIONAL = {"room", "channel"}


async def test_channel_subscribe_publish_unsubscribe(ws_url):
    a = await Client.open(ws_url)
    b = await Client.open(ws_url, user=uid("bob"))
    outsider = await Client.open(ws_url)
    ch = uid("ch")
    try:
        await a.send({"type": "subscribe", "channel": ch, "id": "s1"})
        assert_fields(await a.recv(), {"type": "ack", "id": "s1"}, ACK_OPTIONAL)
        await b.ok({"type": "subscribe", "channel": ch})

        await b.send({"type": "publish", "channel": ch, "event": "news", "data": [1], "id": 5})
        ack = await b.recv()
        assert_fields(ack, {"type": "ack", "id": 5, "delivered": 1})  # no seq for a channel
        m = await a.recv()
        assert_fields(
            m,
            {"type": "message", "channel": ch, "ts": ..., "event": "news", "data": [1], "from": b.peer},
        )
        await b.assert_quiet()
        await outsider.assert_quiet()

        # echo to self on a channel
        ack = await b.ok({"type": "publish", "channel": ch, "event": "news", "echo": True})
        assert ack["delivered"] == 2, ack
        for x in (a, b):
            m = await x.recv()
            assert m["type"] == "message" and m["channel"] == ch and m["data"] is None, m

        await a.send({"type": "unsubscribe", "channel": ch, "id": "u1"})
        assert_fields(await a.recv(), {"type": "ack", "id": "u1"}, ACK_OPTIONAL)
        ack = await b.ok({"type": "publish", "channel": ch, "event": "news"})
        assert ack["delivered"] == 0, ack
        await a.assert_quiet()
    finally:
        for c in (a, b, outsider):
            await c.close()


async def test_channel_publish_requires_subscription(ws_url):
    a, b = await Client.open(ws_url), await Client.open(ws_url)
    ch = uid("ch")
    try:
        await a.ok({"type": "subscribe", "channel": ch})
        err = await b.request({"type": "publish", "channel": ch, "event": "e"})
        assert err["type"] == "error" and err["code"] == "not_member", err
        await a.assert_quiet()
        # a channel nobody subscribes to
        err = await b.request({"type": "publish", "channel": uid("empty"), "event": "e"})
        assert err["type"] == "error" and err["code"] == "not_member", err
    finally:
        await a.close()
        await b.close()


async def test_subscribe_twice_acked_once_delivered(ws_url):
    a, b = await Client.open(ws_url), await Client.open(ws_url)
    ch = uid("ch")
    try:
        await a.ok({"type": "subscribe", "channel": ch})
        await a.ok({"type": "subscribe", "channel": ch})
        await b.ok({"type": "subscribe", "channel": ch})
        ack = await b.ok({"type": "publish", "channel": ch, "event": "e", "data": 1})
        assert ack["delivered"] == 1, ack
        m = await a.recv()
        assert m["data"] == 1
        await a.assert_quiet()  # exactly once
        # one unsubscribe undoes both subscribes (no change on the second)
        await a.ok({"type": "unsubscribe", "channel": ch})
        ack = await b.ok({"type": "publish", "channel": ch, "event": "e"})
        assert ack["delivered"] == 0, ack
    finally:
        await a.close()
        await b.close()


async def test_unsubscribe_when_not_subscribed_acked(ws_url):
    a = await Client.open(ws_url)
    try:
        await a.send({"type": "unsubscribe", "channel": uid("never"), "id": 3})
        ack = await a.recv()
        assert_fields(ack, {"type": "ack", "id": 3}, ACK_OPTIONAL)
    finally:
        await a.close()


async def test_user_targeting_two_devices(ws_url):
    user = uid("dana")
    sender_user = uid("sam")
    d1 = await Client.open(ws_url, user=user)
    d2 = await Client.open(ws_url, user=user)
    s = await Client.open(ws_url, user=sender_user)
    other = await Client.open(ws_url, user=uid("olga"))
    try:
        await s.send({"type": "publish", "user": user, "event": "dm", "data": {"hi": 1}, "id": 1})
        ack = await s.recv()
        assert_fields(ack, {"type": "ack", "id": 1, "delivered": 2})
        for d in (d1, d2):
            m = await d.recv()
            assert_fields(
                m,
                {
                    "type": "message",
                    "user": user,
                    "ts": ...,
                    "event": "dm",
                    "data": {"hi": 1},
                    "from": {"conn": s.conn, "user": sender_user},
                },
            )
        await s.assert_quiet()
        await other.assert_quiet()
    finally:
        for c in (d1, d2, s, other):
            await c.close()


async def test_user_targeting_own_other_device(ws_url):
    user = uid("dana")
    d1 = await Client.open(ws_url, user=user)
    d2 = await Client.open(ws_url, user=user)
    try:
        ack = await d1.ok({"type": "publish", "user": user, "event": "sync", "data": 1})
        assert ack["delivered"] == 1, ack
        m = await d2.recv()
        assert m["type"] == "message" and m["user"] == user and m["from"] == d1.peer, m
        await d1.assert_quiet()
        ack = await d1.ok({"type": "publish", "user": user, "event": "sync", "echo": True})
        assert ack["delivered"] == 2, ack
        for d in (d1, d2):
            m = await d.recv()
            assert m["event"] == "sync" and m["data"] is None, m
    finally:
        await d1.close()
        await d2.close()


async def test_user_targeting_nobody_online(ws_url):
    a = await Client.open(ws_url)
    try:
        ack = await a.ok({"type": "publish", "user": uid("ghost"), "event": "e"})
        assert ack["delivered"] == 0, ack
    finally:
        await a.close()


async def test_user_targeting_after_disconnect(ws_url):
    user = uid("eve")
    d1 = await Client.open(ws_url, user=user)
    d2 = await Client.open(ws_url, user=user)
    s = await Client.open(ws_url)
    try:
        await d2.close()
        # The server learns of the close asynchronously: wait (bounded) until it counts 1.
        for _ in range(100):
            ack = await s.ok({"type": "publish", "user": user, "event": "e"})
            if ack["delivered"] == 1:
                break
            await d1.recv()
        assert ack["delivered"] == 1, ack
    finally:
        for c in (d1, d2, s):
            await c.close()

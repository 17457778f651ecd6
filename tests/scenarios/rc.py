"""Test-side helpers: a small JSON client on `websockets`, plus name and URL utilities.

Nothing here is roomcast code: it speaks the wire protocol (docs/protocol.md) from the
outside, as any third-party client would. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import uuid
from typing import Any, Callable
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

# Bound on any single wait for a message (seconds).
TIMEOUT = float(os.environ.get("ROOMCAST_TEST_TIMEOUT", "5"))

_ids = itertools.count(1)


# ROOMCAST_CLUSTER_URLS="ws://A/ws,ws://B/ws,...": the suite against several nodes on
# one Redis. Every client opened on ROOMCAST_WS_URL goes to the next node in turn, so
# the clients of one scenario are spread over the nodes (scripts: see tests/scenarios/
# README.md). Unset: every client goes where it is told.
_CLUSTER = [u for u in os.environ.get("ROOMCAST_CLUSTER_URLS", "").split(",") if u]
_next_node = itertools.count()


def _spread(url: str) -> str:
    base = os.environ.get("ROOMCAST_WS_URL")
    if not _CLUSTER or not base or not url.startswith(base):
        return url
    node = _CLUSTER[next(_next_node) % len(_CLUSTER)]
    return node + url[len(base):]


def uid(prefix: str) -> str:
    """A unique name, so tests never share a room, channel or user (the worker runs
    every test against one hub)."""
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def with_query(url: str, **params: str) -> str:
    """`url` with query parameters added (existing ones kept)."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    query.extend((k, v) for k, v in params.items())
    return urlunsplit(parts._replace(query=urlencode(query)))


def compact(obj: Any) -> str:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False)


class Client:
    """One protocol connection. `welcome` holds the first message."""

    def __init__(self, ws: ClientConnection, welcome: dict):
        self.ws = ws
        self.welcome = welcome
        self.conn: str = welcome["conn"]
        self.user: str | None = welcome["user"]
        # Messages read while waiting for something else, in arrival order.
        self.pending: list[dict] = []

    @property
    def peer(self) -> dict:
        """How others see this connection (`from`, presence entries)."""
        return {"conn": self.conn, "user": self.user}

    @classmethod
    async def open(cls, url: str, user: str | None = None, **kwargs: Any) -> "Client":
        url = _spread(url)
        if user is not None:
            url = with_query(url, user=user)
        options: dict[str, Any] = {
            "open_timeout": TIMEOUT,
            "close_timeout": TIMEOUT,
            "ping_interval": None,  # roomcast pings us; websockets answers automatically
            "max_size": None,
            "compression": None,
        }
        ws = await connect(url, **{**options, **kwargs})
        try:
            text = await asyncio.wait_for(ws.recv(), TIMEOUT)
        except BaseException:
            await ws.close()
            raise
        assert isinstance(text, str), f"welcome must be a text message, got {text!r}"
        welcome = json.loads(text)
        assert welcome.get("type") == "welcome", f"first message must be welcome: {welcome}"
        return cls(ws, welcome)

    async def close(self) -> None:
        await self.ws.close()

    # --- sending -----------------------------------------------------------------

    async def send(self, obj: Any) -> None:
        await self.ws.send(compact(obj))

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    # --- receiving ---------------------------------------------------------------

    async def recv_text(self, timeout: float = TIMEOUT) -> str:
        """The next raw text message (bypasses `pending`)."""
        msg = await asyncio.wait_for(self.ws.recv(), timeout)
        assert isinstance(msg, str), f"expected a text message, got binary {msg!r}"
        return msg

    async def recv(self, timeout: float = TIMEOUT) -> dict:
        """The next message, parsed."""
        if self.pending:
            return self.pending.pop(0)
        return json.loads(await self.recv_text(timeout))

    async def expect(self, pred: Callable[[dict], bool], timeout: float = TIMEOUT) -> dict:
        """The first message matching `pred`; the others stay in `pending`, in order."""
        for i, m in enumerate(self.pending):
            if pred(m):
                return self.pending.pop(i)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(
                    f"timed out after {timeout}s waiting for a matching message; "
                    f"unmatched so far: {self.pending}"
                )
            try:
                m = json.loads(await self.recv_text(left))
            except asyncio.TimeoutError:
                continue
            if pred(m):
                return m
            self.pending.append(m)

    async def reply(self, rid: Any, timeout: float = TIMEOUT) -> dict:
        """The ack or error that echoes request id `rid`."""
        return await self.expect(
            lambda m: m.get("type") in ("ack", "error") and m.get("id") == rid, timeout
        )

    async def request(self, obj: dict, timeout: float = TIMEOUT) -> dict:
        """Sends `obj` with a fresh numeric id and returns its ack or error."""
        rid = next(_ids)
        await self.send({**obj, "id": rid})
        return await self.reply(rid, timeout)

    async def ok(self, obj: dict, timeout: float = TIMEOUT) -> dict:
        """`request` that must be acked."""
        r = await self.request(obj, timeout)
        assert r["type"] == "ack", f"{obj} was refused: {r}"
        return r

    async def barrier(self, timeout: float = TIMEOUT) -> list[dict]:
        """Round-trips a `ping` with a fresh id and returns every other message that
        arrived before its `pong`. The server answers one connection's requests in
        order, so anything it had queued for us before reading the ping is in the list:
        an empty list proves that nothing was sent to us."""
        rid = f"barrier-{next(_ids)}"
        await self.send({"type": "ping", "id": rid})
        before = list(self.pending)
        self.pending.clear()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            assert left > 0, f"no pong for barrier {rid} within {timeout}s; got {before}"
            m = json.loads(await self.recv_text(left))
            if m.get("type") == "pong" and m.get("id") == rid:
                return before
            before.append(m)

    async def assert_quiet(self) -> None:
        got = await self.barrier()
        assert got == [], f"expected no messages, got {got}"

    async def closed(self, timeout: float = TIMEOUT) -> ConnectionClosed:
        """Reads until the server closes the connection; returns the close exception
        (its `.rcvd` holds the server's close frame, if any)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            left = deadline - loop.time()
            assert left > 0, f"connection not closed within {timeout}s"
            try:
                await asyncio.wait_for(self.ws.recv(), left)
            except ConnectionClosed as e:
                return e
            except asyncio.TimeoutError:
                continue


def close_code(exc: ConnectionClosed) -> int | None:
    return exc.rcvd.code if exc.rcvd is not None else None


async def join(c: Client, room: str, **kw: Any) -> dict:
    return await c.ok({"type": "join", "room": room, **kw})


def is_msg(event: str | None = None, **fields: Any) -> Callable[[dict], bool]:
    def pred(m: dict) -> bool:
        if m.get("type") != "message":
            return False
        if event is not None and m.get("event") != event:
            return False
        return all(m.get(k) == v for k, v in fields.items())

    return pred


def is_presence(room: str) -> Callable[[dict], bool]:
    return lambda m: m.get("type") == "presence" and m.get("room") == room


async def presence_until(
    c: Client, room: str, joined: list[dict] | None = None, left: list[dict] | None = None
) -> list[dict]:
    """Collects `presence` messages for `room` until the union of their `joined` and
    `left` lists covers the expected peers (the server may batch or split them).
    Returns the messages seen."""
    want_j = [compact(p) for p in joined or []]
    want_l = [compact(p) for p in left or []]
    seen_j: list[str] = []
    seen_l: list[str] = []
    msgs = []
    while not (all(p in seen_j for p in want_j) and all(p in seen_l for p in want_l)):
        m = await c.expect(is_presence(room))
        msgs.append(m)
        for key in m:
            assert key in ("type", "room", "joined", "left"), f"unexpected field {key}: {m}"
        assert "joined" in m or "left" in m, m
        j = [compact(p) for p in m.get("joined", [])]
        l_ = [compact(p) for p in m.get("left", [])]
        assert not set(j) & set(l_), f"a peer both joined and left in one message: {m}"
        seen_j += j
        seen_l += l_
    return msgs


def assert_fields(m: dict, required: dict[str, Any], optional: set[str] = frozenset()) -> None:
    """`m` has exactly the keys of `required` (with those values; `...` = any) plus
    possibly some of `optional`."""
    for k, v in required.items():
        assert k in m, f"missing `{k}` in {m}"
        if v is not ...:
            assert m[k] == v, f"`{k}`: expected {v!r}, got {m[k]!r} in {m}"
    extra = set(m) - set(required) - set(optional)
    assert not extra, f"unexpected fields {sorted(extra)} in {m}"

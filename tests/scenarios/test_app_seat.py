"""The application's seat against a real server: proxy hooks answered by a Python
backend (hook_backend.py, standard library only), and the server HTTP API driven with
`urllib` (PROTOCOL.md "Application hooks and RPC", "Server HTTP API").
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
import urllib.error
import urllib.request

import pytest

from conftest import Endpoint, _http_from_ws, missing, require, start_server
from hook_backend import HookBackend, RemoteBackend
from rc import TIMEOUT, Client, close_code, uid

API_KEY = "test-api-key-0123456789"


@pytest.fixture(scope="module")
def backend():
    """The Python backend: ROOMCAST_HOOK_BACKEND (one running as its own process, which
    the Worker under test calls; worker_tests.bash starts both), else one in this
    process."""
    remote = os.environ.get("ROOMCAST_HOOK_BACKEND")
    b = RemoteBackend(remote) if remote else HookBackend()
    yield b
    b.close()


@pytest.fixture(scope="module")
def hooked(backend):
    """A server whose hooks go to `backend` (timeout 500ms, the Cookie header passed to
    connect): ROOMCAST_WS_URL_HOOKS (the Worker's), else a native one."""
    url = os.environ.get("ROOMCAST_WS_URL_HOOKS")
    if url:
        yield Endpoint(url, _http_from_ws(url))
        return
    require("spawn_configured")
    s = start_server("--proxy-url", backend.url, "--proxy-timeout", "500ms",
                     "--proxy-headers", "Cookie", name="hooked")
    yield s
    s.terminate()


@pytest.fixture(scope="module")
def backend_down():
    """A server whose join and rpc hooks go to a port nobody listens on (timeout 300ms):
    ROOMCAST_WS_URL_HOOKS_DOWN (the Worker's), else a native one."""
    url = os.environ.get("ROOMCAST_WS_URL_HOOKS_DOWN")
    if url:
        yield Endpoint(url, _http_from_ws(url))
        return
    require("spawn_configured")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    server = start_server("--proxy-url", f"http://127.0.0.1:{port}", "--proxy-timeout", "300ms",
                          "--proxy-hooks", "join,rpc", name="proxy-down")
    yield server
    server.terminate()


@pytest.fixture(scope="module")
def api_server():
    """A server with the API on (key API_KEY) and --no-room-creation: ROOMCAST_WS_URL_API
    (the Worker's, started by worker_tests.bash with the same key), else a native one."""
    url = os.environ.get("ROOMCAST_WS_URL_API")
    if url:
        yield Endpoint(url, _http_from_ws(url))
        return
    require("spawn_configured")
    s = start_server("--api-key", API_KEY, "--history", "50", "--no-room-creation", name="api")
    yield Endpoint(s.ws_url, s.http_url, s)
    s.terminate()


def err(r: dict) -> str:
    assert r["type"] == "error", r
    return r["code"]


async def test_a_hook_refuses_a_join_with_its_own_code_and_lets_others_in(hooked):
    room = uid("vip")
    c = await Client.open(hooked.ws_url, user=uid("guest"))
    assert err(await c.request({"type": "join", "room": room})) == "members_only"
    boss = await Client.open(hooked.ws_url, user="boss")
    ack = await boss.ok({"type": "join", "room": room})
    assert ack["members"] == 1
    assert err(await c.request({"type": "subscribe", "channel": "secret"})) == "forbidden"
    await c.ok({"type": "subscribe", "channel": uid("open")})
    await c.close()
    await boss.close()


async def test_a_hook_rewrites_a_publish_before_anyone_sees_it(hooked, backend):
    room = uid("r")
    a = await Client.open(hooked.ws_url, user=uid("a"))
    b = await Client.open(hooked.ws_url, user=uid("b"))
    await a.ok({"type": "join", "room": room})
    await b.ok({"type": "join", "room": room})
    ack = await a.ok({"type": "publish", "room": room, "event": "say", "data": {"text": "darn it"}})
    assert ack["seq"] == 1
    m = await b.expect(lambda m: m.get("type") == "message")
    assert m["data"] == {"text": "**** it"} and m["seq"] == 1
    seen = [c for c in backend.calls_of("publish") if c.get("room") == room]
    assert seen and seen[0]["user"] == a.user and seen[0]["conn"] == a.conn
    assert seen[0]["event"] == "say" and seen[0]["data"] == {"text": "darn it"}
    await a.close()
    await b.close()


async def test_rpc_is_answered_by_the_backend(hooked):
    user = uid("u")
    c = await Client.open(hooked.ws_url, user=user)
    r = await c.ok({"type": "rpc", "method": "add", "data": {"a": 2, "b": 3}})
    assert r["data"] == 5
    r = await c.ok({"type": "rpc", "method": "whoami"})
    assert r["data"] == {"conn": c.conn, "user": user, "info": None}
    assert err(await c.request({"type": "rpc", "method": "nope"})) == "no_such_method"
    assert err(await c.request({"type": "rpc", "method": "explode"})) == "unavailable"
    assert err(await c.request({"type": "rpc", "method": ""})) == "bad_name"
    await c.close()


async def test_a_hook_that_hangs_is_unavailable_and_what_follows_waits_in_order(hooked):
    room = uid("r")
    c = await Client.open(hooked.ws_url, user=uid("u"))
    await c.ok({"type": "join", "room": room})
    started = time.monotonic()
    await c.send({"type": "publish", "room": room, "event": "slow", "id": "slow"})
    await c.send({"type": "rpc", "method": "add", "data": {"a": 1, "b": 1}, "id": "after"})
    first = await c.recv(timeout=TIMEOUT)
    second = await c.recv(timeout=TIMEOUT)
    assert (first["id"], err(first)) == ("slow", "unavailable")
    assert (second["id"], second["type"], second["data"]) == ("after", "ack", 2)
    assert time.monotonic() - started >= 0.45, "refused at the timeout, not before"
    await c.close()


async def test_the_backend_hears_of_disconnects(hooked, backend):
    user = uid("leaver")
    c = await Client.open(hooked.ws_url, user=user)
    await c.close()
    deadline = time.monotonic() + TIMEOUT
    while not any(b.get("user") == user for b in backend.calls_of("disconnect")):
        assert time.monotonic() < deadline, "no disconnect call"
        await asyncio.sleep(0.05)


async def test_a_backend_that_is_down_means_unavailable_not_a_hang(backend_down):
    c = await Client.open(backend_down.ws_url, user=uid("u"))
    assert err(await c.request({"type": "join", "room": uid("r")})) == "unavailable"
    assert err(await c.request({"type": "rpc", "method": "add"})) == "unavailable"
    # the connection is fine otherwise
    assert await c.barrier() == []
    await c.close()


async def test_the_backend_admits_connections_by_cookie(hooked, backend):
    name = uid("carol")
    c = await Client.open(hooked.ws_url, additional_headers={"Cookie": f"theme=dark; session={name}"})
    assert c.user == name and c.welcome["info"] == {"via": "cookie"}
    joined = await c.expect(lambda m: m.get("type") == "joined")
    assert joined["room"] == f"lobby-{name}"
    seen = [b for b in backend.calls_of("connect") if b["headers"].get("cookie", "").endswith(name)]
    assert seen and seen[0]["conn"] == c.conn
    await c.close()
    # refused: closed 4003 with the backend's message, before any welcome
    from websockets.asyncio.client import connect as ws_connect
    from websockets.exceptions import ConnectionClosed
    ws = await ws_connect(hooked.ws_url, additional_headers={"Cookie": "session=banned"},
                          open_timeout=TIMEOUT, close_timeout=TIMEOUT)
    # the Worker decides it while serving the upgrade: local workerd delivers such a close
    # late (see the capability), but it must come, and nothing before it
    wait = TIMEOUT if missing("prompt_api_close") is None else 40.0
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(ws.recv(), wait)
    assert close_code(closed.value) == 4003 and closed.value.rcvd.reason == "go away"


async def test_a_connect_hook_that_is_down_closes_1013():
    require("spawn_configured")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = start_server("--proxy-url", f"http://127.0.0.1:{port}", "--proxy-timeout", "300ms",
                          "--proxy-hooks", "connect", name="connect-down")
    try:
        from websockets.asyncio.client import connect as ws_connect
        from websockets.exceptions import ConnectionClosed
        ws = await ws_connect(server.ws_url, open_timeout=TIMEOUT, close_timeout=TIMEOUT)
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(ws.recv(), TIMEOUT)
        assert close_code(closed.value) == 1013, "try again later"
    finally:
        server.terminate()


# --- the server HTTP API ---------------------------------------------------------------


def api_base(server) -> str:
    """`…/ws` -> `…/api`: `/api` natively, `/hub/{name}/api` on the Worker."""
    http = server.ws_url.replace("ws://", "http://", 1).replace("wss://", "https://", 1)
    base = http.split("?", 1)[0]
    assert base.endswith("/ws"), base
    return base[: -len("/ws")] + "/api"


def api(server, method: str, path: str, body: dict | None = None, key: str | None = API_KEY):
    req = urllib.request.Request(
        f"{api_base(server)}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    if key is not None:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=TIMEOUT) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


async def call(server, *args, **kwargs):
    return await asyncio.to_thread(api, server, *args, **kwargs)


async def test_the_api_needs_the_key(api_server):
    assert (await call(api_server, "GET", "/stats", key=None))[0] == 401
    assert (await call(api_server, "GET", "/stats", key="wrong-key-0123456789"))[0] == 401
    status, stats = await call(api_server, "GET", "/stats")
    assert status == 200 and "connections" in stats


async def test_rooms_members_and_publish_through_the_api(api_server):
    room = uid("stage")
    status, r = await call(api_server, "PUT", f"/rooms/{room}", {"data": {"topic": "news"}})
    assert status == 200 and r["data"] == {"topic": "news"}
    # --no-room-creation: clients may join only what the server made
    c = await Client.open(api_server.ws_url, user=uid("ann"))
    assert err(await c.request({"type": "join", "room": uid("other")})) == "forbidden"
    # a server join is told to the connection
    status, r = await call(api_server, "POST", f"/rooms/{room}/members", {"conn": c.conn})
    assert (status, r) == (200, {"joined": 1})
    joined = await c.expect(lambda m: m.get("type") == "joined")
    assert joined["room"] == room and joined["members"] == 1 and joined["seq"] == 0
    status, r = await call(api_server, "GET", f"/rooms/{room}")
    assert r["members"] == 1 and r["connections"][0]["conn"] == c.conn
    # publish to the room, the user, everyone
    status, r = await call(api_server, "POST", "/publish", {"room": room, "event": "news", "data": 1})
    assert (status, r) == (200, {"delivered": 1, "seq": 1})
    m = await c.expect(lambda m: m.get("type") == "message")
    assert m["from"] is None and m["seq"] == 1 and m["data"] == 1
    status, r = await call(api_server, "POST", "/publish", {"user": c.user, "event": "dm"})
    assert r == {"delivered": 1}
    await c.expect(lambda m: m.get("event") == "dm")
    # a channel linked to the room reaches its members
    channel = uid("ch")
    assert (await call(api_server, "PUT", f"/channels/{channel}/rooms/{room}"))[0] == 200
    status, r = await call(api_server, "POST", "/publish", {"channel": channel, "event": "via"})
    assert r == {"delivered": 1}
    await c.expect(lambda m: m.get("event") == "via")
    # history
    status, h = await call(api_server, "GET", f"/rooms/{room}/history?since=0")
    assert status == 200 and h["seq"] == 1 and h["messages"][0]["data"] == 1
    # the server takes it out: told
    status, _ = await call(api_server, "DELETE", f"/rooms/{room}/members/{c.conn}")
    assert status == 200
    left = await c.expect(lambda m: m.get("type") == "left")
    assert left == {"type": "left", "room": room, "reason": "server"}
    # and removing the room tells its members
    await call(api_server, "POST", f"/rooms/{room}/members", {"user": c.user})
    await c.expect(lambda m: m.get("type") == "joined")
    assert (await call(api_server, "DELETE", f"/rooms/{room}"))[0] == 200
    left = await c.expect(lambda m: m.get("type") == "left")
    assert left["reason"] == "room_removed"
    assert (await call(api_server, "GET", f"/rooms/{room}"))[0] == 404
    await c.close()


async def test_disconnect_a_user(api_server):
    user = uid("bob")
    a = await Client.open(api_server.ws_url, user=user)
    b = await Client.open(api_server.ws_url, user=user)
    status, r = await call(api_server, "POST", f"/users/{user}/disconnect", {"code": 4003, "reason": "banned"})
    assert (status, r) == (200, {"disconnected": 2})
    status, r = await call(api_server, "POST", f"/users/{user}/disconnect")
    assert (status, r) == (200, {"disconnected": 0}), "they are gone"
    # local workerd delivers a close decided while serving HTTP late: it must still come
    wait = TIMEOUT if missing("prompt_api_close") is None else 40.0
    for c in (a, b):
        closed = await c.closed(timeout=wait)
        assert close_code(closed) == 4003 and closed.rcvd.reason == "banned"


async def test_api_errors(api_server):
    assert (await call(api_server, "POST", "/connections/nobody/disconnect"))[0] == 404
    assert (await call(api_server, "POST", "/publish", {"event": "e"}))[0] == 400
    assert (await call(api_server, "POST", "/publish", {"room": uid("none"), "event": "e"}))[0] == 404
    assert (await call(api_server, "GET", "/nowhere"))[0] == 404
    status, r = await call(api_server, "PUT", f"/rooms/{uid('x')}", {"max_members": 0})
    assert status == 400 and r["error"]["code"] == "bad_request"


async def test_without_a_key_there_is_no_api(server):
    status, r = await call(server, "GET", "/stats", key="anything-at-all-0123")
    assert status == 404, r

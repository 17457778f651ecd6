"""The WebSocket layer: handshakes, frame-level violations, limits, liveness, shutdown.

Most of these use the raw socket client in rawws.py, which does exactly what it is
told, including what a client library would refuse to do.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time

import pytest
from websockets.exceptions import InvalidStatus

import rawws
from conftest import require
from rawws import OP_BINARY, OP_CONT, OP_PING, OP_TEXT, RawWS, http_upgrade
from rc import Client, close_code, uid, with_query

# --- handshake --------------------------------------------------------------------------


def status_of(url: str, **kw) -> rawws.Response:
    sock, resp = http_upgrade(url, **kw)
    sock.close()
    return resp


def test_raw_handshake_accepted(ws_url):
    with RawWS.connect(ws_url) as ws:  # checks 101 and Sec-WebSocket-Accept
        w = ws.recv_json()
        assert w["type"] == "welcome", w
        ws.send_text('{"type":"ping","id":1}')
        assert ws.recv_json() == {"type": "pong", "id": 1}


@pytest.mark.parametrize(
    "key", ["not-a-valid-key", "dG9vIHNob3J0", ""], ids=["garbage", "12-bytes", "empty"]
)
def test_handshake_bad_key_400(ws_url, key):
    require("handshake_validation")
    assert status_of(ws_url, key=key).status == 400


def test_handshake_missing_key_400(ws_url):
    sock, resp = http_upgrade(ws_url, key=None)
    sock.close()
    assert resp.status == 400


@pytest.mark.parametrize("version", ["8", "14", "abc"])
def test_handshake_bad_version_426(ws_url, version):
    resp = status_of(ws_url, version=version)
    assert resp.status == 426, resp
    assert resp.header("sec-websocket-version") == "13", (
        f"a 426 must say which version is supported: {resp.headers}"
    )


def test_handshake_wrong_path_404(ws_url):
    host, port, path = rawws.target(ws_url)
    path = path.split("?")[0]
    assert status_of(f"ws://{host}:{port}{path}-nope").status == 404


@pytest.mark.parametrize(
    "user", ["", "u" * 129, "a\u0001b"], ids=["empty", "129-bytes", "control-char"]
)
def test_handshake_bad_user_400(ws_url, user):
    assert status_of(with_query(ws_url, user=user)).status == 400


def test_origin_refused_403(origin_server):
    url = origin_server.ws_url
    assert status_of(url, origin="http://evil.example").status == 403
    # the allowed origin gets in
    with RawWS.connect(url, origin="http://good.example") as ws:
        assert ws.recv_json()["type"] == "welcome"


async def test_origin_refused_403_client_library(origin_server):
    with pytest.raises(InvalidStatus) as e:
        await Client.open(origin_server.ws_url, origin="http://evil.example")
    assert e.value.response.status_code == 403
    c = await Client.open(origin_server.ws_url, origin="http://good.example")
    await c.close()


async def test_max_connections_503(max_connections_server):
    url = max_connections_server.ws_url
    a = await Client.open(url)
    b = await Client.open(url)
    try:
        assert status_of(url).status == 503
        with pytest.raises(InvalidStatus) as e:
            await Client.open(url)
        assert e.value.response.status_code == 503
        await a.close()
        # The server frees the slot once it has seen the close: poll, bounded.
        deadline = time.monotonic() + 5
        while True:
            st = status_of(url).status
            if st == 101 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        assert st == 101, f"slot not freed after a close: still {st}"
    finally:
        await a.close()
        await b.close()


# --- frames -----------------------------------------------------------------------------


def open_raw(url: str) -> RawWS:
    ws = RawWS.connect(url)
    assert ws.recv_json()["type"] == "welcome"
    return ws


def test_fragmented_message_reassembled(ws_url):
    text = json.dumps({"type": "ping", "id": "frag", "pad": "p" * 300}).encode()
    with open_raw(ws_url) as ws:
        ws.send_frame(OP_TEXT, text[:100], fin=False)
        ws.send_frame(OP_PING, b"interleaved control frame")
        ws.send_frame(OP_CONT, text[100:200], fin=False)
        ws.send_frame(OP_CONT, text[200:], fin=True)
        assert ws.recv_json() == {"type": "pong", "id": "frag"}


def test_invalid_utf8_closes_1007(ws_url):
    require("frame_validation")
    with open_raw(ws_url) as ws:
        ws.send_frame(OP_TEXT, b'{"type":"ping","x":"\xff\xfe"}')
        code, eof = ws.wait_close()
        assert code == 1007, f"expected close 1007, got {code}"
        assert eof


def test_large_invalid_utf8_closes_1007(ws_url):
    """Invalid UTF-8 deep inside a message of a few KiB, in one frame and split over
    fragments: the long-input path of the validator (SIMD from 64 bytes on) must catch it
    too. The bad bytes sit at odd offsets, between valid multi-byte text, and the message
    ends in ASCII."""
    require("frame_validation")
    head = b'{"type":"ping","id":"big","pad":"'
    body = ("κόσμε-€-𝄞-abc-" * 200).encode()  # a few KiB of valid mixed-width text
    for at, bad in ((1031, b"\xff"), (2053, b"\xed\xa0\x80"), (len(body) - 7, b"\xc0\xaf")):
        cut = body[:at]
        while cut and (cut[-1] & 0xC0) == 0x80:  # keep the text before the bad bytes valid
            cut = cut[:-1]
        text = head + cut + bad + body[len(cut):] + b'"}'
        assert len(text) > 4096
        with open_raw(ws_url) as ws:
            ws.send_frame(OP_TEXT, text)
            code, eof = ws.wait_close()
            assert code == 1007, f"bad bytes at {len(head) + len(cut)}: expected close 1007, got {code}"
            assert eof
        with open_raw(ws_url) as ws:
            ws.send_frame(OP_TEXT, text[:1500], fin=False)
            ws.send_frame(OP_CONT, text[1500:], fin=True)
            code, _ = ws.wait_close()
            assert code == 1007, f"fragmented, bad bytes at {len(head) + len(cut)}: got {code}"


def test_invalid_utf8_across_fragments_closes_1007(ws_url):
    require("frame_validation")
    with open_raw(ws_url) as ws:
        # a 3-byte sequence cut after its lead byte, followed by ASCII
        ws.send_frame(OP_TEXT, b'{"type":"ping","x":"\xe2', fin=False)
        ws.send_frame(OP_CONT, b'abc"}', fin=True)
        code, _ = ws.wait_close()
        assert code == 1007, f"expected close 1007, got {code}"


def test_unmasked_client_frame_closes_1002(ws_url):
    require("frame_validation")
    with open_raw(ws_url) as ws:
        ws.send_frame(OP_TEXT, b'{"type":"ping","id":1}', mask=False)
        code, eof = ws.wait_close()
        assert code == 1002, f"expected close 1002, got {code}"
        assert eof


@pytest.mark.parametrize(
    "frame",
    [
        rawws.encode_frame(0x3, b"x"),  # reserved opcode
        rawws.encode_frame(OP_TEXT, b"{}", rsv=0x4),  # RSV1 without an extension
        rawws.encode_frame(OP_CONT, b"x"),  # continuation with nothing to continue
        rawws.encode_frame(OP_PING, b"p", fin=False),  # fragmented control frame
        rawws.encode_frame(OP_PING, b"p" * 126),  # control frame over 125 bytes
        rawws.encode_frame(0x8, b"\x03\xe7"),  # close code 999
    ],
    ids=["reserved-opcode", "rsv1", "orphan-continuation", "fragmented-ping", "long-ping", "close-999"],
)
def test_protocol_violation_closes_1002(ws_url, frame):
    require("frame_validation")
    with open_raw(ws_url) as ws:
        ws.send(frame)
        code, _ = ws.wait_close()
        assert code == 1002, f"expected close 1002, got {code}"


async def test_message_at_limit_accepted(small_messages_server):
    c = await Client.open(small_messages_server.ws_url)
    try:
        head = '{"type":"ping","id":1,"pad":"'
        text = head + "p" * (1024 - len(head) - 2) + '"}'
        assert len(text.encode()) == 1024
        await c.send_text(text)
        assert json.loads(await c.recv_text()) == {"type": "pong", "id": 1}
    finally:
        await c.close()


async def test_oversized_message_closes_1009(small_messages_server):
    c = await Client.open(small_messages_server.ws_url)
    try:
        head = '{"type":"ping","id":1,"pad":"'
        text = head + "p" * (1025 - len(head) - 2) + '"}'
        assert len(text.encode()) == 1025
        await c.send_text(text)
        closed = await c.closed()
        assert close_code(closed) == 1009, f"expected close 1009, got {closed!r}"
    finally:
        await c.close()


def test_oversized_across_fragments_closes_1009(small_messages_server):
    """The limit is on the whole message, not on each frame."""
    with open_raw(small_messages_server.ws_url) as ws:
        ws.send_frame(OP_TEXT, b'{"type":"ping","pad":"' + b"p" * 600, fin=False)
        ws.send_frame(OP_CONT, b"p" * 600 + b'"}', fin=True)
        code, _ = ws.wait_close()
        assert code == 1009, f"expected close 1009, got {code}"


def test_oversized_binary_closes_1009(small_messages_server):
    with open_raw(small_messages_server.ws_url) as ws:
        ws.send_frame(OP_BINARY, b"\x00" * 2000)
        code, _ = ws.wait_close()
        assert code == 1009, f"expected close 1009, got {code}"


# --- liveness ---------------------------------------------------------------------------


async def test_heartbeat_reaps_silent_peer(fast_ping_server):
    """A peer that completes the handshake and then never answers (or sends) anything
    is dropped after `max_missed` (2) ping intervals; a peer that answers stays."""
    require("server_pings")
    url = fast_ping_server.ws_url
    live = await Client.open(url)  # websockets answers protocol pings by itself
    try:
        hb = live.welcome["heartbeat"]
        assert hb == {"interval_ms": 200, "timeout_ms": 200}, hb
        raw = RawWS.connect(url)
        try:
            t0 = time.monotonic()
            assert raw.recv_json()["type"] == "welcome"
            # never write again: read until the server gives up on us (off the loop)
            code, eof = await asyncio.to_thread(raw.wait_close, 5.0)
            elapsed = time.monotonic() - t0
        finally:
            raw.close()
        assert raw.pings >= 1, "the server sent no protocol ping before dropping the peer"
        assert eof, "the TCP connection was not closed"
        assert 0.3 <= elapsed <= 3.0, f"silent peer dropped after {elapsed:.2f}s (expected ~0.4s)"
        # the answering client outlived the silent one and still works
        assert await live.barrier() == []
    finally:
        await live.close()


def test_heartbeat_any_frame_counts_as_alive(fast_ping_server):
    """A peer that never answers protocol pings but keeps sending its own heartbeat text
    stays connected well past the drop time (2 × 200 ms). (The server pings only idle
    connections, so this one may see none.)"""
    require("server_pings")
    with open_raw(fast_ping_server.ws_url) as ws:
        t0 = time.monotonic()
        n = 0
        while time.monotonic() - t0 < 1.2:  # three times the drop time
            ws.send_text('{"type":"ping"}')
            assert ws.recv_json() == {"type": "pong"}, "heartbeat not answered"
            n += 1
            time.sleep(0.1)  # the client's heartbeat cadence (pacing, not synchronisation)
        ws.send_text('{"type":"ping","id":"still-here"}')
        assert ws.recv_json() == {"type": "pong", "id": "still-here"}


# --- shutdown ---------------------------------------------------------------------------


async def test_shutdown_closes_1001_and_exits_0(own_server):
    url = own_server.ws_url
    room = uid("room")
    clients = [await Client.open(url, user=uid("u")) for _ in range(3)]
    for c in clients:
        await c.ok({"type": "join", "room": room})
    raw = open_raw(url)
    try:
        own_server.proc.send_signal(signal.SIGTERM)
        for c in clients:
            closed = await c.closed(timeout=10)
            assert close_code(closed) == 1001, f"expected close 1001, got {closed!r}"
        code, _ = await asyncio.to_thread(raw.wait_close, 10.0)
        assert code == 1001, code
        rc = await asyncio.to_thread(own_server.proc.wait, 15)
        assert rc == 0, f"server exited {rc} after SIGTERM"
    finally:
        raw.close()
        for c in clients:
            await c.close()

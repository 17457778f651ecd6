"""Hand-built RFC 6455 over a plain TCP socket, for what a well-behaved client library
refuses to do: malformed handshakes, unmasked or invalid frames, silent peers.

Blocking sockets with timeouts: every read is bounded.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import socket
import struct
import time
from dataclasses import dataclass, field
from urllib.parse import urlsplit

GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA


def accept_for(key: str) -> str:
    return base64.b64encode(hashlib.sha1((key + GUID).encode()).digest()).decode()


def new_key() -> str:
    return base64.b64encode(os.urandom(16)).decode()


def target(url: str) -> tuple[str, int, str]:
    """(host, port, path-with-query) of a ws:// URL."""
    u = urlsplit(url)
    assert u.scheme in ("ws", "http"), f"only plain ws:// is supported here: {url}"
    path = u.path or "/"
    if u.query:
        path += "?" + u.query
    return u.hostname or "127.0.0.1", u.port or 80, path


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    rest: bytes = b""  # bytes read past the header block

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


def read_http_head(sock: socket.socket, timeout: float) -> Response:
    sock.settimeout(timeout)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            raise AssertionError(f"connection closed before an HTTP response; got {buf!r}")
        buf += chunk
        assert len(buf) < 65536, "response head too large"
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    assert parts[0].startswith("HTTP/1."), f"not an HTTP response: {lines[0]!r}"
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    return Response(int(parts[1]), parts[2] if len(parts) > 2 else "", headers, rest)


def handshake_request(
    host: str,
    port: int,
    path: str,
    *,
    key: str | None = None,
    version: str | None = "13",
    origin: str | None = None,
    extra: dict[str, str] | None = None,
    upgrade: bool = True,
) -> bytes:
    lines = [f"GET {path} HTTP/1.1", f"Host: {host}:{port}"]
    if upgrade:
        lines += ["Upgrade: websocket", "Connection: Upgrade"]
    if key is not None:
        lines.append(f"Sec-WebSocket-Key: {key}")
    if version is not None:
        lines.append(f"Sec-WebSocket-Version: {version}")
    if origin is not None:
        lines.append(f"Origin: {origin}")
    for k, v in (extra or {}).items():
        lines.append(f"{k}: {v}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def http_upgrade(url: str, timeout: float = 5.0, **kw) -> tuple[socket.socket, Response]:
    """Sends an upgrade request (see `handshake_request` for the knobs) and reads the
    response head. The caller owns (and must close) the socket."""
    host, port, path = target(url)
    sock = socket.create_connection((host, port), timeout=timeout)
    try:
        kw.setdefault("key", new_key())
        sock.sendall(handshake_request(host, port, path, **kw))
        return sock, read_http_head(sock, timeout)
    except BaseException:
        sock.close()
        raise


def encode_frame(
    opcode: int,
    payload: bytes,
    *,
    fin: bool = True,
    mask: bool = True,
    rsv: int = 0,
) -> bytes:
    b0 = (0x80 if fin else 0) | (rsv << 4) | opcode
    n = len(payload)
    mbit = 0x80 if mask else 0
    if n < 126:
        head = struct.pack("!BB", b0, mbit | n)
    elif n < 65536:
        head = struct.pack("!BBH", b0, mbit | 126, n)
    else:
        head = struct.pack("!BBQ", b0, mbit | 127, n)
    if not mask:
        return head + payload
    key = os.urandom(4)
    masked = bytes(b ^ key[i % 4] for i, b in enumerate(payload))
    return head + key + masked


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        assert self.opcode == OP_CLOSE
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None

    def text(self) -> str:
        return self.payload.decode("utf-8")


@dataclass
class RawWS:
    """A WebSocket client that does exactly what it is told, byte for byte."""

    sock: socket.socket
    buf: bytes = b""
    pings: int = 0  # protocol pings received (and not answered)
    log: list = field(default_factory=list)

    @classmethod
    def connect(cls, url: str, timeout: float = 5.0, **kw) -> "RawWS":
        key = new_key()
        sock, resp = http_upgrade(url, timeout, key=key, **kw)
        if resp.status != 101:
            sock.close()
            raise AssertionError(f"handshake refused: {resp.status} {resp.reason}")
        assert resp.header("sec-websocket-accept") == accept_for(key), resp.headers
        return cls(sock, resp.rest)

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "RawWS":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, opcode: int, payload: bytes, **kw) -> None:
        self.sock.sendall(encode_frame(opcode, payload, **kw))

    def send_text(self, text: str) -> None:
        self.send_frame(OP_TEXT, text.encode())

    def _fill(self, n: int, deadline: float) -> bool:
        """Buffers at least n bytes; False on EOF."""
        while len(self.buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no complete frame before the deadline (have {self.buf[:32]!r})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError:
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def recv_frame(self, timeout: float = 5.0) -> Frame | None:
        """The next frame, or None once the server has closed the TCP connection."""
        deadline = time.monotonic() + timeout
        if not self._fill(2, deadline):
            return None
        b0, b1 = self.buf[0], self.buf[1]
        assert not b1 & 0x80, "server frames must not be masked"
        n, off = b1 & 0x7F, 2
        if n == 126:
            if not self._fill(4, deadline):
                return None
            n, off = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            if not self._fill(10, deadline):
                return None
            n, off = struct.unpack("!Q", self.buf[2:10])[0], 10
        if not self._fill(off + n, deadline):
            return None
        payload = self.buf[off : off + n]
        self.buf = self.buf[off + n :]
        f = Frame(bool(b0 & 0x80), b0 & 0x0F, payload)
        self.log.append(f)
        return f

    def recv_json(self, timeout: float = 5.0) -> dict:
        """The next text message, reassembled from its frames (protocol pings are
        counted, not answered; pongs are skipped)."""
        deadline = time.monotonic() + timeout
        parts: list[bytes] = []
        while True:
            f = self.recv_frame(max(deadline - time.monotonic(), 0.001))
            assert f is not None, "connection closed while waiting for a text message"
            if f.opcode == OP_PING:
                self.pings += 1
                continue
            if f.opcode == OP_PONG:
                continue
            if parts:
                assert f.opcode == OP_CONT, f"expected a continuation frame, got {f}"
            else:
                assert f.opcode == OP_TEXT, f"expected a text message, got {f}"
            parts.append(f.payload)
            if f.fin:
                return json.loads(b"".join(parts))

    def wait_close(self, timeout: float = 5.0) -> tuple[int | None, bool]:
        """Reads until the server ends the connection. Returns (close code or None if no
        close frame came, whether the TCP connection was then closed by the server)."""
        deadline = time.monotonic() + timeout
        code = None
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(
                    f"server did not end the connection within {timeout}s "
                    f"(close code so far: {code})"
                )
            try:
                f = self.recv_frame(left)
            except TimeoutError:
                continue
            if f is None:
                return code, True
            if f.opcode == OP_PING:
                self.pings += 1
            elif f.opcode == OP_CLOSE and code is None:
                code = f.close_code or 1005
                # Answer the close, as RFC 6455 asks, then wait for the TCP close.
                try:
                    self.send_frame(OP_CLOSE, f.payload[:2])
                except OSError:
                    pass

"""Fixtures: which server the suite talks to, and what that runtime can do.

Environment (see README.md in this folder):
  ROOMCAST_WS_URL         WebSocket URL of the server under test (ws://127.0.0.1:PORT/ws, or
                          ws://127.0.0.1:PORT/hub/NAME/ws for the worker). Unset: a native
                          `roomcast` is built and started on a free port.
  ROOMCAST_HTTP_URL       Its HTTP base, if it differs from the one derived from the WS URL.
  ROOMCAST_TARGET         native (default) | worker: which capability column applies.
  ROOMCAST_WS_URL_<NAME>  A dedicated, specially configured server for a profile (HISTORY,
                          SMALL_MESSAGES, MAX_CONNECTIONS, ORIGIN, FAST_PING); on the native
                          target these are started by the fixtures themselves.
  ROOMCAST_BIN            A prebuilt `roomcast` binary (default: target/debug/roomcast, built
                          with cargo on first use).
  SCENARIO_SERVER_FLAGS   Flags added to every native server the fixtures start, e.g.
                          `--threads 1` (scripts/test.sh runs the suite again that way).
  SCENARIO_SERVER_LOGS    Folder for the native servers' logs (default tests/artifacts/servers);
                          scripts/test.sh scans them for panics after the run.
"""

from __future__ import annotations

import atexit
import os
import re
import shlex
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import pytest

REPO = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO / "tests" / "artifacts"

TARGET = os.environ.get("ROOMCAST_TARGET", "native")

# What each runtime can do. A test that needs a capability its target lacks is skipped,
# with the reason below. Only what a platform truly cannot do belongs here.
CAPABILITIES: dict[str, dict[str, str | None]] = {
    # capability: {target: None if supported, else the reason it is not}
    "server_pings": {
        "native": None,
        "worker": "workerd answers protocol pings itself and the Durable Object sends none "
        "(idle hubs must hibernate): liveness there is the client's heartbeat",
    },
    "process_signals": {
        "native": None,
        "worker": "the process belongs to workerd/wrangler; there is no SIGTERM shutdown "
        "of one hub to observe",
    },
    "frame_validation": {
        "native": None,
        "worker": "workerd validates client frames itself before the Durable Object sees "
        "them: it decodes invalid UTF-8 as U+FFFD (no 1007), accepts unmasked client frames "
        "and control frames over 125 bytes, and after a 1002 waits for the peer instead of "
        "dropping TCP",
    },
    "handshake_validation": {
        "native": None,
        "worker": "locally, workerd's entry re-issues the upgrade with a key of its own, so "
        "a malformed Sec-WebSocket-Key never reaches roomcast (a missing key and a wrong "
        "version are still refused)",
    },
    "prompt_api_close": {
        "native": None,
        "worker": "a close the Durable Object decides while serving an HTTP request (the "
        "server API's disconnect, a connect hook's refusal) reaches the client only when "
        "its socket next has traffic, or ~10-15 s later (local workerd 1.20261117; "
        "worker/README.md)",
    },
    "redis_backplane": {
        "native": None,
        "worker": "several native servers share rooms through Redis (--redis); a Worker "
        "keeps each hub in its one Durable Object and needs no backplane",
    },
    "spawn_configured": {
        "native": None,
        "worker": "a differently configured hub needs its own deployment: set "
        "ROOMCAST_WS_URL_<PROFILE> to one",
    },
}

# Server flags per profile, for the scenarios that need a specially configured server.
PROFILES: dict[str, list[str]] = {
    "HISTORY": ["--history", "3"],
    "SMALL_MESSAGES": ["--max-message-size", "1024"],
    "MAX_CONNECTIONS": ["--max-connections", "2"],
    "ORIGIN": ["--allowed-origin", "http://good.example"],
    "FAST_PING": ["--ping-interval", "200ms", "--pong-timeout", "200ms"],
    "ROOM_LIMIT": ["--max-room-members", "1"],
    "NO_ROOM_CREATION": ["--no-room-creation"],
}


def missing(cap: str) -> str | None:
    """Why the current target lacks `cap`, or None if it has it."""
    table = CAPABILITIES[cap]
    if TARGET not in table:
        raise pytest.UsageError(f"unknown ROOMCAST_TARGET {TARGET!r}: one of {list(table)}")
    return table[TARGET]


def require(cap: str) -> None:
    reason = missing(cap)
    if reason:
        pytest.skip(f"{TARGET}: {reason}")


# --- native server processes ----------------------------------------------------------

_LISTEN_RE = re.compile(r"^listening on http://(\S+)\s*$")
_live: list["ServerProcess"] = []


@dataclass
class ServerProcess:
    args: list[str]
    proc: subprocess.Popen
    addr: str
    log_path: Path
    lines: list[str] = field(default_factory=list)

    @property
    def ws_url(self) -> str:
        return f"ws://{self.addr}/ws"

    @property
    def http_url(self) -> str:
        return f"http://{self.addr}"

    def terminate(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after `timeout`. Returns the exit status."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        if self in _live:
            _live.remove(self)
        return self.proc.returncode


def _kill_all() -> None:
    for s in list(_live):
        if s.proc.poll() is None:
            s.proc.kill()
            try:
                s.proc.wait(5)
            except subprocess.TimeoutExpired:
                pass


atexit.register(_kill_all)

_build_lock = threading.Lock()
_built: list[Path] = []


def roomcast_binary() -> Path:
    """The native server binary, built once per session if needed."""
    env_bin = os.environ.get("ROOMCAST_BIN")
    if env_bin:
        return Path(env_bin)
    with _build_lock:
        if not _built:
            cmd = ["cargo", "build", "--quiet", "-p", "roomcast-tokio", "--bin", "roomcast"]
            r = subprocess.run(cmd, cwd=REPO, timeout=1800)
            if r.returncode != 0:
                pytest.exit(f"`{' '.join(cmd)}` failed", returncode=2)
            target_dir = Path(os.environ.get("CARGO_TARGET_DIR", REPO / "target"))
            _built.append(target_dir / "debug" / "roomcast")
        return _built[0]


# Added to every server's flags (SCENARIO_SERVER_FLAGS), e.g. ["--threads", "1"].
EXTRA_FLAGS = shlex.split(os.environ.get("SCENARIO_SERVER_FLAGS", ""))
SERVER_LOGS = Path(os.environ.get("SCENARIO_SERVER_LOGS") or ARTIFACTS / "servers")


def start_server(*flags: str, name: str = "roomcast", timeout: float = 30.0) -> ServerProcess:
    """Starts `roomcast --bind 127.0.0.1:0 FLAGS` and waits for its `listening on` line."""
    binary = roomcast_binary()
    SERVER_LOGS.mkdir(parents=True, exist_ok=True)
    log_path = SERVER_LOGS / f"{name}-{os.getpid()}-{time.monotonic_ns()}.log"
    args = [str(binary), "--bind", "127.0.0.1:0", *flags, *EXTRA_FLAGS]
    log = open(log_path, "w")
    log.write(f"# {shlex.join(args)}\n")
    log.flush()
    # Same process group as pytest, so that a `timeout` around the suite kills servers too.
    proc = subprocess.Popen(
        args,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        bufsize=1,
    )
    lines: list[str] = []
    found: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            log.write(line)
            log.flush()
            m = _LISTEN_RE.match(line)
            if m and not found:
                found.append(m.group(1))
                ready.set()
        ready.set()
        log.close()

    threading.Thread(target=pump, daemon=True).start()
    if not ready.wait(timeout) or not found:
        proc.kill()
        proc.wait(5)
        raise RuntimeError(
            f"{args} did not print `listening on http://ADDR` within {timeout}s; "
            f"stdout: {lines!r}; stderr in {log_path}"
        )
    server = ServerProcess(args, proc, found[0], log_path, lines)
    _live.append(server)
    return server


# --- fixtures -------------------------------------------------------------------------


@dataclass
class Endpoint:
    ws_url: str
    http_url: str
    process: ServerProcess | None = None


def _http_from_ws(ws_url: str) -> str:
    u = urlsplit(ws_url)
    scheme = "https" if u.scheme == "wss" else "http"
    return f"{scheme}://{u.netloc}"


@pytest.fixture(scope="session")
def server() -> Endpoint:
    """The server under test (default configuration)."""
    url = os.environ.get("ROOMCAST_WS_URL")
    if url:
        yield Endpoint(url, os.environ.get("ROOMCAST_HTTP_URL") or _http_from_ws(url))
        return
    if TARGET != "native":
        pytest.exit("ROOMCAST_WS_URL is required for a non-native target", returncode=2)
    s = start_server(name="default")
    yield Endpoint(s.ws_url, s.http_url, s)
    s.terminate()


@pytest.fixture(scope="session")
def ws_url(server: Endpoint) -> str:
    return server.ws_url


def _profile(name: str):
    url = os.environ.get(f"ROOMCAST_WS_URL_{name}")
    if url:
        yield Endpoint(url, _http_from_ws(url))
        return
    require("spawn_configured")
    s = start_server(*PROFILES[name], name=name.lower())
    yield Endpoint(s.ws_url, s.http_url, s)
    s.terminate()


@pytest.fixture(scope="session")
def room_limit_server():
    """`--max-room-members 1`: a second member gets `room_full`."""
    yield from _profile("ROOM_LIMIT")


@pytest.fixture(scope="session")
def no_room_creation_server():
    """`--no-room-creation`: clients may only join rooms the server created."""
    yield from _profile("NO_ROOM_CREATION")


@pytest.fixture(scope="session")
def history_server():
    """`--history 3`: three messages per room kept for recovery."""
    yield from _profile("HISTORY")


# Runtimes whose default configuration keeps room history (enough for a few messages).
HISTORY_BY_DEFAULT = {"native": True, "worker": True}


@pytest.fixture(scope="session")
def recovery_server(server: Endpoint):
    """A server with history on, of any length of at least 3: the default server where
    the runtime keeps history by default (the Durable Object), else the HISTORY profile."""
    if HISTORY_BY_DEFAULT.get(TARGET) and not os.environ.get("ROOMCAST_WS_URL_HISTORY"):
        yield server
        return
    yield from _profile("HISTORY")


@pytest.fixture(scope="session")
def small_messages_server():
    """`--max-message-size 1024`."""
    yield from _profile("SMALL_MESSAGES")


@pytest.fixture
def max_connections_server():
    """`--max-connections 2` (function scope: the test counts connections)."""
    yield from _profile("MAX_CONNECTIONS")


@pytest.fixture(scope="session")
def origin_server():
    """`--allowed-origin http://good.example`."""
    yield from _profile("ORIGIN")


@pytest.fixture
def fast_ping_server():
    """`--ping-interval 200ms --pong-timeout 200ms`."""
    yield from _profile("FAST_PING")


@pytest.fixture
def own_server():
    """A fresh native server owned by one test (which may stop it)."""
    require("process_signals")
    s = start_server(name="own")
    yield s
    s.terminate()

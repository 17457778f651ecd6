"""A small application backend for roomcast's HTTP proxy hooks, written with the Python
standard library only (no roomcast code): it is what a team would write in any language.

Rules it applies (the scenarios check each one through a real server):
- connect: a `session=NAME` cookie makes the connection user NAME (with `info`
  `{"via": "cookie"}`) and puts it in room `lobby-NAME`; `session=banned` is refused;
  no cookie: admitted as it came;
- join: rooms named `vip-*` are refused with the application's code `members_only`,
  unless the user is `boss`;
- subscribe: channel `secret` is refused `forbidden`;
- publish: `data.text` has the word "darn" masked; a publish with event `slow` never gets
  an answer in time (the backend sleeps past roomcast's timeout);
- rpc: `add` answers the sum of `data.a` and `data.b`; `whoami` answers who is asking
  (conn, user, info); anything else is refused `no_such_method`;
- disconnect: recorded (best effort) so a test can see it arrived.

Every call is recorded in `calls`, as roomcast sent it.

Run as a program (`python hook_backend.py PORT`) it serves the same rules on that port
for a server started elsewhere (the Worker under wrangler dev), and answers
`GET /calls?hook=NAME` with the calls it recorded, so the tests read them over HTTP
(`RemoteBackend`).
"""

from __future__ import annotations

import json
import sys
import threading
import time
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class HookBackend:
    def __init__(self, port: int = 0) -> None:
        self.calls: list[tuple[str, dict]] = []
        self.lock = threading.Lock()
        self.slow_seconds = 3.0
        backend = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                url = urllib.parse.urlsplit(self.path)
                if url.path != "/calls":
                    self.send_response(404)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                hook = urllib.parse.parse_qs(url.query).get("hook", [""])[0]
                raw = json.dumps(backend.calls_of(hook)).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                hook = self.path.rsplit("/", 1)[-1]
                with backend.lock:
                    backend.calls.append((hook, body))
                answer = backend.decide(hook, body)
                if answer is None:
                    self.send_response(500)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                raw = json.dumps(answer).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(raw)))
                self.end_headers()
                try:
                    self.wfile.write(raw)
                except BrokenPipeError:
                    pass  # roomcast gave up waiting (the slow hook): expected

        self.server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}/hooks"

    def decide(self, hook: str, body: dict) -> dict | None:
        if hook == "connect":
            cookies = dict(
                part.strip().split("=", 1)
                for part in body.get("headers", {}).get("cookie", "").split(";")
                if "=" in part
            )
            session = cookies.get("session")
            if session == "banned":
                return {"error": {"code": "banned", "message": "go away"}}
            if session:
                return {"user": session, "info": {"via": "cookie"}, "rooms": [f"lobby-{session}"]}
            return {}
        if hook == "join":
            if body["room"].startswith("vip-") and body.get("user") != "boss":
                return {"error": {"code": "members_only", "message": "vip rooms are for the boss"}}
            return {}
        if hook == "subscribe":
            if body["channel"] == "secret":
                return {"error": {"code": "forbidden", "message": "not for you"}}
            return {}
        if hook == "publish":
            if body.get("event") == "slow":
                time.sleep(self.slow_seconds)
                return {}
            data = body.get("data")
            if isinstance(data, dict) and isinstance(data.get("text"), str):
                return {"data": {**data, "text": data["text"].replace("darn", "****")}}
            return {}
        if hook == "rpc":
            data = body.get("data") or {}
            if body["method"] == "add":
                return {"data": data["a"] + data["b"]}
            if body["method"] == "whoami":
                return {"data": {"conn": body["conn"], "user": body["user"], "info": body["info"]}}
            if body["method"] == "explode":
                return None  # a backend error: roomcast answers `unavailable`
            return {"error": {"code": "no_such_method", "message": body["method"]}}
        if hook == "disconnect":
            return {}
        return {"error": {"code": "unknown_hook", "message": hook}}

    def calls_of(self, hook: str) -> list[dict]:
        with self.lock:
            return [b for h, b in self.calls if h == hook]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class RemoteBackend:
    """A HookBackend running as its own process (`python hook_backend.py PORT`), as the
    tests see it: its hook URL and the calls it recorded."""

    def __init__(self, base: str) -> None:
        self.base = base.rstrip("/")

    @property
    def url(self) -> str:
        return f"{self.base}/hooks"

    def calls_of(self, hook: str) -> list[dict]:
        q = urllib.parse.urlencode({"hook": hook})
        with urllib.request.urlopen(f"{self.base}/calls?{q}", timeout=10) as r:
            return json.load(r)

    def close(self) -> None:
        pass


if __name__ == "__main__":
    backend = HookBackend(int(sys.argv[1]))
    print(f"listening on http://127.0.0.1:{backend.server.server_address[1]}", flush=True)
    try:
        backend.thread.join()
    except KeyboardInterrupt:
        pass

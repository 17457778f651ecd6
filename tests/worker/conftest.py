"""Worker-only tests: what only a Durable Object does (hibernation, storage, alarms).

Environment (worker_tests in scripts/test.sh sets it):
  ROOMCAST_WS_URL        ws://127.0.0.1:PORT/hub/NAME/ws of a `worker/run-local.sh` instance;
                         each test swaps NAME for a fresh hub, so it alone decides when its
                         Durable Object is idle
  ROOMCAST_HISTORY_AGE_S the instance's ROOMCAST_HISTORY_AGE, in seconds (run it with
                         `--var ROOMCAST_HISTORY_AGE:30s`); the alarm test needs it
  ROOMCAST_EVICT_AFTER_S how long an idle object takes to be evicted (default 15: local
                         workerd evicts after ~10 s without events)

The JSON client is the scenario suite's (tests/scenarios/rc.py).
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scenarios"))

from rc import uid  # noqa: E402


@pytest.fixture
def hub_url() -> str:
    """The socket URL of a hub no other test uses."""
    base = os.environ.get("ROOMCAST_WS_URL")
    if not base:
        pytest.exit("ROOMCAST_WS_URL (a worker hub URL) is required", returncode=2)
    url, n = re.subn(r"/hub/[^/?]+/ws", f"/hub/{uid('hib')}/ws", base)
    if n != 1:
        pytest.exit(f"ROOMCAST_WS_URL {base!r} is not a /hub/NAME/ws URL", returncode=2)
    return url


@pytest.fixture
def history_age() -> float:
    v = os.environ.get("ROOMCAST_HISTORY_AGE_S")
    if not v:
        pytest.skip("ROOMCAST_HISTORY_AGE_S unset: the instance's history age is unknown")
    return float(v)


@pytest.fixture
def evict_after() -> float:
    return float(os.environ.get("ROOMCAST_EVICT_AFTER_S", "15"))

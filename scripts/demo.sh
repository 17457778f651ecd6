#!/usr/bin/env bash
# Builds the browser package and the server, then serves the chat demo (in memory, no
# external service) on http://127.0.0.1:8080 — or on the address given with --bind —
# with demo tokens: the page gets a signed token for the name you type (DEMO ONLY).
# Extra arguments go to `roomcast` (see `roomcast --help`).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
./scripts/build-wasm.sh
exec cargo run --release -p roomcast-tokio --bin roomcast -- --www www --history 100 --demo-tokens "$@"

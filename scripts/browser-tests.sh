#!/usr/bin/env bash
# Browser tests, against the real native server:
#   wasm  the `roomcast` package in headless Chromium (wasm-bindgen-test, adapters/browser/tests)
#   e2e   the chat demo in www/, two pages, a server restart, demo tokens refreshed
#         through the page's token function, an rpc and server-made membership
#         (Playwright, tests/e2e)
#
#   ./scripts/browser-tests.sh            # both
#   ./scripts/browser-tests.sh wasm       # one of them
#
# Installs what is missing first: Debian `chromium` and `chromium-driver` (apt-get), the
# wasm toolchain (scripts/build-wasm.sh), the npm packages of tests/e2e (`npm ci`; only
# playwright-core, which never downloads a browser: /usr/bin/chromium is used). Writes
# tests/artifacts/browser/counts.txt ("PASSED FAILED SKIPPED") and logs and screenshots
# next to it. Every process it starts is stopped when it exits.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
ART="$ROOT/tests/artifacts/browser"
mkdir -p "$ART"
export PATH="${CARGO_HOME:-$HOME/.cargo}/bin:$PATH"
export CHROMEDRIVER="${CHROMEDRIVER:-/usr/bin/chromedriver}"
export ROOMCAST_BIN="${ROOMCAST_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/debug/roomcast}"

PASSED=0 FAILED=0 SKIPPED=0
SERVER_PID=""
CHILD_PID=""
rm -f "$ART/counts.txt"

cleanup() {
	local pid
	for pid in "$CHILD_PID" "$SERVER_PID"; do
		if [[ -n "$pid" ]]; then
			kill "$pid" 2>/dev/null || true
			wait "$pid" 2>/dev/null || true
		fi
	done
	echo "$PASSED $FAILED $SKIPPED" >"$ART/counts.txt"
	echo "browser tests: $PASSED passed, $FAILED failed, $SKIPPED skipped"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# bounded SECS CMD...: runs CMD under `timeout`, in the background so that a TERM or INT
# sent to this script reaches it too (timeout puts CMD in a process group of its own and
# passes the signal on to the whole group: cargo, the test runner, chromedriver, Chromium).
bounded() {
	timeout --kill-after=10 "$@" &
	CHILD_PID=$!
	local rc=0
	wait "$CHILD_PID" || rc=$?
	CHILD_PID=""
	return "$rc"
}

as_root() {
	if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo -n "$@"; fi
}

prereqs() {
	if [[ ! -x /usr/bin/chromium || ! -x /usr/bin/chromedriver ]]; then
		echo "installing chromium and chromium-driver"
		as_root env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
		as_root env DEBIAN_FRONTEND=noninteractive timeout 900 \
			apt-get install -y -qq --no-install-recommends chromium chromium-driver
	fi
	bounded 1800 ./scripts/build-wasm.sh # also installs the matching wasm-bindgen-test-runner
	bounded 900 cargo build -p roomcast-tokio --bin roomcast
}

# start_server ARGS...: starts roomcast on a free port and sets ADDR from its ready line.
start_server() {
	local out="$ART/wasm-server.out"
	: >"$out"
	"$ROOMCAST_BIN" --bind 127.0.0.1:0 "$@" >"$out" 2>"$ART/wasm-server.log" &
	SERVER_PID=$!
	local deadline=$((SECONDS + 30))
	ADDR=""
	while [[ -z "$ADDR" ]]; do
		ADDR="$(sed -n 's|^listening on http://\([^ ]*\).*|\1|p' "$out" | head -n1)"
		if [[ -n "$ADDR" ]]; then break; fi
		if ((SECONDS > deadline)) || ! kill -0 "$SERVER_PID" 2>/dev/null; then
			echo "roomcast did not start; see $ART/wasm-server.log" >&2
			return 1
		fi
		sleep 0.1
	done
}

run_wasm() {
	start_server --history 100
	local rc=0
	# The URL is read at compile time (wasm cannot spawn or read the environment).
	ROOMCAST_TEST_WS_URL="ws://$ADDR/ws" bounded 900 \
		cargo test -p roomcast-browser --target wasm32-unknown-unknown -- --nocapture \
		>"$ART/wasm-test.log" 2>&1 || rc=$?
	cat "$ART/wasm-test.log"
	kill "$SERVER_PID" 2>/dev/null || true
	wait "$SERVER_PID" 2>/dev/null || true
	SERVER_PID=""
	local p f i
	read -r p f i < <(awk '/^test result:/ {
		for (n = 1; n <= NF; n++) {
			if ($(n+1) ~ /^passed/) p += $n
			if ($(n+1) ~ /^failed/) f += $n
			if ($(n+1) ~ /^ignored/) i += $n
		}
	} END { print p+0, f+0, i+0 }' "$ART/wasm-test.log")
	if grep -q '^SKIPPED' "$ART/wasm-test.log"; then
		echo "some wasm tests were skipped for lack of a server" >&2
		rc=1
	fi
	PASSED=$((PASSED + p)) FAILED=$((FAILED + f)) SKIPPED=$((SKIPPED + i))
	if ((rc != 0 && f == 0)); then FAILED=$((FAILED + 1)); fi
	return "$rc"
}

run_e2e() {
	local lock_sum stamp="tests/e2e/node_modules/.lock.sha256"
	lock_sum="$(sha256sum tests/e2e/package-lock.json | cut -d' ' -f1)"
	if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$lock_sum" ]]; then
		# playwright-core has no install script and never fetches a browser
		PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 bounded 600 npm ci --prefix tests/e2e --no-audit --no-fund
		echo "$lock_sum" >"$stamp"
	fi
	local rc=0
	rm -f "$ART/e2e.tap"
	bounded 600 node --test --test-reporter=spec --test-reporter-destination=stdout \
		--test-reporter=tap --test-reporter-destination="$ART/e2e.tap" \
		tests/e2e/chat.test.mjs tests/e2e/tokens.test.mjs tests/e2e/app.test.mjs \
		tests/e2e/cluster.test.mjs || rc=$?
	touch "$ART/e2e.tap"
	local p f s
	p="$(awk '/^# pass /{print $3}' "$ART/e2e.tap")"
	f="$(awk '/^# fail /{print $3}' "$ART/e2e.tap")"
	s="$(awk '/^# skipped /{print $3}' "$ART/e2e.tap")"
	PASSED=$((PASSED + ${p:-0})) FAILED=$((FAILED + ${f:-0})) SKIPPED=$((SKIPPED + ${s:-0}))
	if ((rc != 0 && ${f:-0} == 0)); then FAILED=$((FAILED + 1)); fi
	return "$rc"
}

parts=("$@")
if ((${#parts[@]} == 0)); then parts=(wasm e2e); fi
prereqs
status=0
for part in "${parts[@]}"; do
	case "$part" in
	wasm) run_wasm || status=1 ;;
	e2e) run_e2e || status=1 ;;
	*)
		echo "unknown part: $part (wasm, e2e)" >&2
		exit 2
		;;
	esac
done
exit "$status"

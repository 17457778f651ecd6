#!/usr/bin/env bash
# Runs every roomcast test. Usage:
#
#   ./scripts/test.sh             # every stage, in order, stopping at the first failure
#   ./scripts/test.sh STAGE...    # only those stages (e.g. `scenarios autobahn`)
#   ./scripts/test.sh --list      # the stages
#
# It installs what it needs first (stage `prereqs`): the wasm32 target, and a Python venv
# at .venv with the pinned tools of tests/requirements.txt. Every stage runs under a
# timeout; every process a stage starts is stopped when it ends. The last line printed
# is the test total: `total: N passed, M failed, K skipped`.
#
# Every stage counts what it ran (a check such as fmt counts as one test) and prints its
# count; a stage that passed fewer tests than its entry in MIN_PASSED fails, so a test
# binary that a `cfg` slip empties, a skip that spreads, or a suite that breaks off early
# cannot pass quietly. When a stage gains tests, raise its minimum to the new count.
#
# Adding a stage: write `stage_NAME() { ... }` below, put NAME in STAGES and its minimum in
# MIN_PASSED.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

# In order; each is a `stage_NAME` function below.
STAGES=(prereqs fmt clippy cargo_test wasm_build wasm_test scenarios adversarial autobahn browser worker fuzz bench_smoke)
ARTIFACTS="$ROOT/tests/artifacts"
VENV="$ROOT/.venv"
PY="$VENV/bin/python"

# Fewest passed tests per stage (skipped ones do not count), with the whole suite selected.
# PYTEST_ARGS (a subset of the scenarios) lowers scenarios/worker to 1, AUTOBAHN_CASES lowers
# autobahn to 1. Counts as of the commit that last changed them, on a full run.
declare -A MIN_PASSED=(
	[prereqs]=1
	[fmt]=1
	[clippy]=1
	[cargo_test]=340
	[wasm_build]=1
	[wasm_test]=3        # core/tests/wasm.rs
	[scenarios]=458      # 229 twice: multi-threaded and --threads 1 (9 of them a Redis cluster)
	[adversarial]=33     # 28, then 5 again on one thread
	[autobahn]=602       # 301 of the 517 cases in each role (216 compression cases: skipped)
	[browser]=13         # 7 wasm-bindgen tests in Chromium, 6 Playwright
	[worker]=207         # dry-run 1, scenarios 228 - 23 skipped, hibernation 3, e2e 1
	[fuzz]=7
	[bench_smoke]=1
)

PASSED=0
FAILED=0
SKIPPED=0
# The current stage's own counts.
STAGE_PASSED=0
STAGE_FAILED=0
STAGE_SKIPPED=0
CURRENT=""

log() { printf '\n==> %s\n' "$*"; }

# count PASSED FAILED SKIPPED: adds to the totals.
count() {
	PASSED=$((PASSED + ${1:-0}))
	FAILED=$((FAILED + ${2:-0}))
	SKIPPED=$((SKIPPED + ${3:-0}))
	STAGE_PASSED=$((STAGE_PASSED + ${1:-0}))
	STAGE_FAILED=$((STAGE_FAILED + ${2:-0}))
	STAGE_SKIPPED=$((STAGE_SKIPPED + ${3:-0}))
}

# stage_min STAGE: the fewest passed tests STAGE may report (see MIN_PASSED).
stage_min() {
	case "$1" in
	scenarios | worker) [[ -z "${PYTEST_ARGS:-}" ]] || {
		echo 1
		return
	} ;;
	autobahn) [[ -z "${AUTOBAHN_CASES:-}" ]] || {
		echo 1
		return
	} ;;
	esac
	echo "${MIN_PASSED[$1]:?no MIN_PASSED entry for stage $1}"
}

# stage_counts: the current stage's counts, for its summary line.
stage_counts() {
	printf '%d passed, %d failed, %d skipped' "$STAGE_PASSED" "$STAGE_FAILED" "$STAGE_SKIPPED"
}

# bounded SECONDS CMD...: runs CMD, killed (with its process group) after SECONDS.
bounded() {
	local secs=$1
	shift
	timeout --kill-after=20 "$secs" "$@"
}

on_exit() {
	local rc=$?
	trap - EXIT INT TERM
	# Stop anything this script left running in the background (by pid: only ours).
	local pids
	pids="$(jobs -p || true)"
	if [[ -n "$pids" ]]; then
		# shellcheck disable=SC2086
		kill $pids 2>/dev/null || true
		wait 2>/dev/null || true
	fi
	if [[ $rc -ne 0 ]]; then
		if [[ $FAILED -eq 0 ]]; then FAILED=1; fi
		printf '\nFAILED: stage `%s` (exit %d; %s)\n' "$CURRENT" "$rc" "$(stage_counts)"
	else
		printf '\nall stages passed\n'
	fi
	printf 'total: %d passed, %d failed, %d skipped\n' "$PASSED" "$FAILED" "$SKIPPED"
	exit "$rc"
}
if [[ "${1:-}" == "--list" ]]; then
	printf '%s\n' "${STAGES[@]}"
	exit 0
fi
trap on_exit EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- stages -------------------------------------------------------------------------------

stage_prereqs() {
	if ! command -v cargo >/dev/null; then
		echo "cargo not found: install Rust with rustup first" >&2
		return 1
	fi
	local have
	have="$(rustup component list --installed 2>/dev/null || true)"
	for comp in rustfmt clippy; do
		if ! grep -q "^$comp" <<<"$have"; then
			bounded 600 rustup component add "$comp"
		fi
	done
	if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
		bounded 600 rustup target add wasm32-unknown-unknown
	fi
	# Python tools, pinned; reinstalled when tests/requirements.txt changes.
	local req="$ROOT/tests/requirements.txt"
	local stamp="$VENV/.requirements.sha256"
	local want
	want="$(sha256sum "$req" | cut -d' ' -f1)"
	if [[ ! -x "$PY" ]]; then
		bounded 300 python3 -m venv "$VENV"
	fi
	if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
		bounded 600 "$PY" -m pip install --quiet --disable-pip-version-check -r "$req"
		echo "$want" >"$stamp"
	fi
	"$PY" -c 'import pytest, websockets, kosoku, jwt, cryptography' # fail here, not halfway through
	# A real Redis for the cluster scenarios (tests/scenarios/test_cluster.py starts and
	# stops its own redis-server on a free port; no daemon is left running).
	if ! command -v redis-server >/dev/null; then
		local sudo=()
		[[ $(id -u) -eq 0 ]] || sudo=(sudo -n)
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 600 apt-get update -qq
		"${sudo[@]}" env DEBIAN_FRONTEND=noninteractive timeout 900 \
			apt-get install -y -qq --no-install-recommends redis-server
		# Debian's package starts a daemon on 6379; the tests never use it
		"${sudo[@]}" service redis-server stop >/dev/null 2>&1 || true
	fi
	count 1 0 0
}

stage_fmt() {
	bounded 300 cargo fmt --all -- --check
	count 1 0 0
}

stage_clippy() {
	bounded 1800 cargo clippy --workspace --all-targets -- -D warnings
	count 1 0 0
}

stage_cargo_test() {
	local out="$ARTIFACTS/cargo-test.log"
	local rc=0
	bounded 2400 cargo test --workspace --exclude roomcast-adversarial 2>&1 | tee "$out" || rc=$?
	count_cargo_log "$out"
	return "$rc"
}

stage_wasm_build() {
	bounded 1200 cargo build -p roomcast-core --target wasm32-unknown-unknown
	count 1 0 0
}

stage_wasm_test() {
	# The core's simulation, client machine and codec on wasm32 (node), where an ambient
	# clock or RNG would panic. Needs wasm-bindgen-test-runner at the lock file's version.
	bounded 1800 ./scripts/ensure-wasm-bindgen.sh
	local out="$ARTIFACTS/wasm-test.log" rc=0
	bounded 1200 cargo test -p roomcast-core --target wasm32-unknown-unknown --test wasm 2>&1 | tee "$out" || rc=$?
	count_cargo_log "$out"
	return "$rc"
}

# Browser: the wasm package in headless Chromium against a real server (wasm-bindgen-test)
# and the chat demo end to end across a server restart (Playwright). Installs chromium and
# chromium-driver (apt-get), wasm-bindgen-cli at Cargo.lock's version and tests/e2e's npm
# packages (npm ci) when missing; builds www/pkg (the one release build).
stage_browser() {
	local rc=0 counts="$ARTIFACTS/browser/counts.txt"
	rm -f "$counts"
	bounded 3000 ./scripts/browser-tests.sh || rc=$?
	if [[ -f "$counts" ]]; then
		# shellcheck disable=SC2046
		count $(cat "$counts") # "PASSED FAILED SKIPPED"
	fi
	return "$rc"
}

# The Cloudflare Worker under `wrangler dev --local` (workerd): deploy dry-run, the same
# scenario suite, and the hibernation tests. worker/worker_tests.bash holds the function.
# shellcheck source=../worker/worker_tests.bash
source "$ROOT/worker/worker_tests.bash"
stage_worker() { worker_tests; }

stage_fuzz() {
	# Every fuzz target briefly on the kept corpus (60 s in all); long runs: scripts/fuzz.sh long
	local out="$ARTIFACTS/fuzz.log" rc=0
	bounded 2400 ./scripts/fuzz.sh smoke 2>&1 | tee "$out" || rc=$?
	if [[ $rc -eq 0 ]]; then count 7 0 0; else count 0 1 0; fi
	return "$rc"
}

# Adversarial tests against the real binary (tests/adversarial; docs/reliability.md):
# slow consumers, floods, frame abuse, slow handshakes, half-open peers, 2k connections
# chatting, shutdown under load, limits. About 1 min on 2 cores; bounded to 5 min.
stage_adversarial() {
	local out="$ARTIFACTS/adversarial.log" out1="$ARTIFACTS/adversarial-threads1.log" rc=0
	bounded 900 cargo build -p roomcast-tokio --bin roomcast -p roomcast-adversarial --tests
	ROOMCAST_ADVERSARIAL_NO_BUILD=1 bounded 300 cargo test -p roomcast-adversarial --no-fail-fast 2>&1 | tee "$out" || rc=$?
	count_cargo_log "$out"
	# The tests that load the server's write path hardest, again on one thread (the
	# current-thread runtime of a one-core machine: the hub task writes sockets itself,
	# partial writes are handed back, flushed bytes are reported in lumps).
	log "adversarial: slow consumers, floods and shutdown with roomcast --threads 1"
	ROOMCAST_ADVERSARIAL_NO_BUILD=1 ROOMCAST_ADVERSARIAL_THREADS=1 bounded 300 \
		cargo test -p roomcast-adversarial --no-fail-fast --test slow_consumer --test floods --test shutdown \
		2>&1 | tee "$out1" || rc=$?
	count_cargo_log "$out1"
	return "$rc"
}

stage_bench_smoke() {
	# The benchmark suite's quick mode (bench/run.sh --quick: ~40 s once built): every
	# workload against every peer once, no thresholds; fails only if a cell cannot run.
	# The full matrix is `bench/run.sh --full` (docs/benchmarks.md).
	local out="$ARTIFACTS/bench-smoke.jsonl" rc=0
	bounded 1800 ./bench/run.sh --quick --out "$out" || rc=$?
	if [[ $rc -eq 0 ]]; then count 1 0 0; else count 0 1 0; fi
	return "$rc"
}

# count_cargo_log FILE: adds the totals of every "test result:" line in a cargo test log.
count_cargo_log() {
	local p f i
	read -r p f i < <(awk '/^test result:/ {
		for (n = 1; n <= NF; n++) {
			if ($(n+1) ~ /^passed/) p += $n
			if ($(n+1) ~ /^failed/) f += $n
			if ($(n+1) ~ /^ignored/) i += $n
		}
	} END { print p+0, f+0, i+0 }' "$1")
	count "$p" "$f" "$i"
}

stage_scenarios() {
	# Protocol scenario suite against the native server (the fixtures start the servers),
	# then again with every server on one thread: the current-thread runtime a one-core
	# machine gets by default, where the hub task writes sockets itself.
	bounded 900 cargo build -p roomcast-tokio --bin roomcast
	local bin="${CARGO_TARGET_DIR:-$ROOT/target}/debug/roomcast" rc=0
	run_scenarios native ROOMCAST_TARGET=native ROOMCAST_BIN="$bin" || rc=$?
	run_scenarios native-threads1 ROOMCAST_TARGET=native ROOMCAST_BIN="$bin" \
		SCENARIO_SERVER_FLAGS="--threads 1" || rc=$?
	return "$rc"
}

# run_scenarios LABEL [VAR=VALUE...]: the pytest suite of tests/scenarios with that
# environment (e.g. ROOMCAST_TARGET=worker ROOMCAST_WS_URL=ws://127.0.0.1:PORT/hub/t/ws),
# counted into the totals. Extra pytest arguments: PYTEST_ARGS="-k recovery -x". The logs
# of the servers the fixtures start land in $ARTIFACTS/servers-LABEL and fail the run if
# one panicked (a task the runtime survives would not fail a test).
run_scenarios() {
	local label=$1
	shift
	local xml="$ARTIFACTS/scenarios-$label.xml"
	local logs="$ARTIFACTS/servers-$label"
	local rc=0
	local extra=()
	read -ra extra <<<"${PYTEST_ARGS:-}"
	rm -rf "$xml" "$logs"
	(
		cd tests/scenarios
		env "$@" SCENARIO_SERVER_LOGS="$logs" timeout --kill-after=20 1200 \
			"$PY" -m pytest -q -p no:cacheprovider --junitxml="$xml" "${extra[@]}"
	) || rc=$?
	junit_count "$xml"
	if [[ $rc -eq 5 ]]; then
		echo "pytest collected no test" >&2
	fi
	no_panics "scenarios ($label) servers" "$logs" || rc=1
	return "$rc"
}

# no_panics WHAT DIR_OR_FILE...: fails (and counts a failure) if any of those server logs
# has a Rust panic message in it.
no_panics() {
	local what=$1
	shift
	local hits
	hits="$(grep -rsn -e 'panicked at' -- "$@" | head -n 20 || true)"
	if [[ -n "$hits" ]]; then
		echo "$what: a server panicked:" >&2
		echo "$hits" >&2
		count 0 1 0
		return 1
	fi
}

stage_autobahn() {
	local rc=0
	KOSOKU="$VENV/bin/kosoku" PYTHON="$PY" ROOMCAST_BIN="${CARGO_TARGET_DIR:-$ROOT/target}/debug/roomcast" \
		bounded 2400 bash tests/autobahn/run.sh all || rc=$?
	local f
	for f in "$ARTIFACTS"/autobahn/*/counts.txt; do
		[[ -f "$f" ]] || continue
		# shellcheck disable=SC2046
		count $(cat "$f")
	done
	return "$rc"
}

# junit_count FILE: adds a pytest junit XML's totals.
junit_count() {
	[[ -f "$1" ]] || return 0
	# shellcheck disable=SC2046
	count $("$PY" - "$1" <<'EOF'
import sys, xml.etree.ElementTree as ET
root = ET.parse(sys.argv[1]).getroot()
suites = [root] if root.tag == "testsuite" else root.findall("testsuite")
t = f = s = 0
for x in suites:
    t += int(x.get("tests", 0)); s += int(x.get("skipped", 0))
    f += int(x.get("failures", 0)) + int(x.get("errors", 0))
print(t - f - s, f, s)
EOF
	)
}

# --- main ---------------------------------------------------------------------------------

selected=("$@")
if [[ ${#selected[@]} -eq 0 ]]; then
	selected=("${STAGES[@]}")
elif [[ " ${selected[*]} " != *" prereqs "* ]]; then
	selected=(prereqs "${selected[@]}")
fi

mkdir -p "$ARTIFACTS"
for stage in "${selected[@]}"; do
	if ! declare -F "stage_$stage" >/dev/null; then
		echo "unknown stage: $stage (see --list)" >&2
		exit 2
	fi
	CURRENT="$stage"
	STAGE_PASSED=0 STAGE_FAILED=0 STAGE_SKIPPED=0
	log "$stage"
	start=$SECONDS
	"stage_$stage"
	min="$(stage_min "$stage")"
	if ((STAGE_PASSED < min)); then
		echo "stage $stage passed $STAGE_PASSED tests, fewer than its minimum $min" \
			"(MIN_PASSED in scripts/test.sh): tests vanished, were skipped, or a run broke off" >&2
		exit 1
	fi
	echo "--- $stage ok: $(stage_counts); minimum $min ($((SECONDS - start))s)"
done
CURRENT=""

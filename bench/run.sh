#!/usr/bin/env bash
# roomcast's benchmark suite (docs/benchmarks.md).
#
#   bench/run.sh --quick          # smoke: every workload × every peer once, < 60 s once built
#   bench/run.sh --full           # 5 repetitions of the full matrix (~30 min), written to
#                                 # bench/results/latest.jsonl; then the report:
#   target/release/roomcast-bench report bench/results/latest.jsonl
#
# Extra options go to `roomcast-bench suite`: --reps N, --workload W, --peer P, --out FILE.
# It installs its npm peers (bench/peers/package-lock.json: bun, ws) and builds the Rust
# binaries in release. Servers run pinned to core 0, the load generator to core 1; every
# process it starts ends by itself (bounded runs, SIGTERM then SIGKILL for servers).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

mode=""
args=()
for a in "$@"; do
	case "$a" in
	--quick | --full) mode="$a" ;;
	*) args+=("$a") ;;
	esac
done
if [[ -z "$mode" ]]; then
	echo "usage: bench/run.sh --quick|--full [--reps N] [--workload W]... [--peer P]... [--n N]... [--payload B]... [--out FILE]" >&2
	exit 2
fi

for tool in node npm taskset cargo; do
	command -v "$tool" >/dev/null || {
		echo "bench: $tool is required" >&2
		exit 1
	}
done
if [[ $(nproc --all) -lt 2 ]]; then
	echo "bench: needs 2 cores (server and generator pinned apart)" >&2
	exit 1
fi

peers="$ROOT/bench/peers"
if [[ ! -x "$peers/node_modules/.bin/bun" || ! -f "$peers/node_modules/ws/package.json" ]]; then
	(cd "$peers" && timeout 600 npm ci --no-audit --no-fund --loglevel=error)
fi

timeout 2400 cargo build --release --quiet -p roomcast-bench -p roomcast-tokio --bins

has_out=0
for a in "${args[@]+"${args[@]}"}"; do [[ "$a" == "--out" ]] && has_out=1; done
if [[ $has_out -eq 0 ]]; then
	if [[ "$mode" == "--full" ]]; then
		args+=(--out "$ROOT/bench/results/latest.jsonl")
	else
		mkdir -p "${CARGO_TARGET_DIR:-$ROOT/target}/bench"
		args+=(--out "${CARGO_TARGET_DIR:-$ROOT/target}/bench/quick.jsonl")
	fi
fi

# The whole suite is bounded too: quick well under its minute, full under an hour.
limit=300
[[ "$mode" == "--full" ]] && limit=3600
export ROOMCAST_ROOT="$ROOT"
exec timeout --kill-after=30 "$limit" "${CARGO_TARGET_DIR:-$ROOT/target}/release/roomcast-bench" suite "$mode" "${args[@]}"

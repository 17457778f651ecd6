#!/usr/bin/env bash
# Fuzzing the core with cargo-fuzz (libFuzzer, nightly toolchain).
#
#   scripts/fuzz.sh smoke          # every target briefly on the kept corpus (60 s in all): CI
#   scripts/fuzz.sh long [MINUTES] # every target MINUTES each (default 10), corpus grows
#   scripts/fuzz.sh run TARGET [SECONDS]
#
# Corpora live in fuzz/corpus/TARGET and are committed; a crash leaves its input in
# fuzz/artifacts/TARGET: turn it into a unit test next to the code, then fix.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT/fuzz"

TARGETS=(frame_decode handshake_request handshake_response connection_stream protocol_parse hub_ops token_verify)

ensure_tools() {
	if ! rustup toolchain list | grep -q '^nightly'; then
		timeout 900 rustup toolchain install nightly --profile minimal
	fi
	if ! command -v cargo-fuzz >/dev/null; then
		# no --locked: the registry mirror may lack the exact versions of its lock file
		timeout 1200 cargo install cargo-fuzz
	fi
}

# run_target TARGET SECONDS [grow]: without `grow` the kept corpus is only read (libFuzzer
# writes what it finds to its first corpus directory, here a scratch one), so a smoke run
# leaves the committed corpus as it was; `long` and `run` grow it.
run_target() {
	local target=$1 secs=$2 grow=${3:-}
	mkdir -p "corpus/$target"
	echo "fuzz: $target for ${secs}s"
	local log rc=0 scratch="" dirs=("corpus/$target")
	log="$(mktemp)"
	if [[ "$grow" != grow ]]; then
		scratch="$(mktemp -d)"
		dirs=("$scratch" "corpus/$target")
	fi
	timeout --kill-after=30 $((secs + 300)) cargo +nightly fuzz run "$target" "${dirs[@]}" -- \
		-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 >"$log" 2>&1 || rc=$?
	if [[ -n "$scratch" ]]; then rm -rf "$scratch"; fi
	grep -E '^(Done|SUMMARY|thread .* panicked)' "$log" || true
	if [[ $rc -ne 0 ]]; then
		tail -40 "$log"
		echo "fuzz: $target FAILED (exit $rc); the input is in fuzz/artifacts/$target" >&2
	fi
	rm -f "$log"
	return "$rc"
}

mode=${1:-smoke}
ensure_tools
timeout 1800 cargo +nightly fuzz build
case "$mode" in
smoke)
	per=$((60 / ${#TARGETS[@]}))
	for t in "${TARGETS[@]}"; do run_target "$t" "$per"; done
	echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
	;;
long)
	mins=${2:-10}
	for t in "${TARGETS[@]}"; do run_target "$t" $((mins * 60)) grow; done
	echo "fuzz: ${#TARGETS[@]} passed, 0 failed"
	;;
run)
	run_target "$2" "${3:-60}" grow
	;;
*)
	echo "usage: $0 smoke | long [MINUTES] | run TARGET [SECONDS]" >&2
	exit 2
	;;
esac

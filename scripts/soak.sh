#!/usr/bin/env bash
# Soak run: mixed load against a fresh roomcast (release build) for DURATION, then checks
# that every well-behaved client got exactly what it should and that the server's RSS and
# open files are back near their post-warm-up baseline. Not part of scripts/test.sh.
#
#   ./scripts/soak.sh 30m                 # DURATION: 90s, 5m, 1h, ... (default 30m)
#   ./scripts/soak.sh 5m --clients 300    # further arguments go to the soak binary
#
# The log is kept in tests/artifacts/soak-<UTC time>.log. Exit status 0 means SOAK PASSED.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DURATION="${1:-30m}"
shift || true
case "$DURATION" in
*[0-9]s | *[0-9]m | *[0-9]h | *[0-9]) ;;
*) echo "usage: $0 DURATION [soak args...]  (e.g. 30m, 90s)" >&2; exit 2 ;;
esac
mkdir -p tests/artifacts
LOG="tests/artifacts/soak-$(date -u +%Y%m%dT%H%M%SZ).log"
cargo build --release -p roomcast-tokio --bin roomcast -p roomcast-adversarial --bin soak
{
	echo "# $(date -u +%FT%TZ) $(uname -srm); $(nproc) cores; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | xargs)"
	echo "# load before: $(cut -d' ' -f1-3 /proc/loadavg)"
} | tee "$LOG"
# The run's own bound: the duration, the warm-up (at most 2 min), and 10 min of slack
# for stopping, quiescing and building.
secs=$(python3 -c "import sys,re; s=sys.argv[1]; m={'s':1,'m':60,'h':3600}; print(int(s[:-1])*m[s[-1]] if s[-1] in m else int(s))" "$DURATION")
rc=0
ROOMCAST_ADVERSARIAL_NO_BUILD=1 timeout --kill-after=30 $((secs + 720)) \
	"${CARGO_TARGET_DIR:-target}/release/soak" --duration "$DURATION" "$@" 2>&1 | tee -a "$LOG" || rc=$?
echo "# load after: $(cut -d' ' -f1-3 /proc/loadavg); log: $LOG" | tee -a "$LOG"
exit "$rc"

#!/usr/bin/env bash
# Builds the browser package (npm name `roomcast`) into www/pkg/, ready for the chat demo
# and for `npm publish www/pkg`. Usage:
#
#   ./scripts/build-wasm.sh            # release build into www/pkg
#   OUT=/some/dir ./scripts/build-wasm.sh
#
# Installs what it needs first: the wasm32-unknown-unknown target, and wasm-bindgen-cli at
# exactly the wasm-bindgen version in Cargo.lock (the CLI and the library must match, or
# the generated glue does not fit the module).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
OUT="${OUT:-$ROOT/www/pkg}"
CARGO_BIN="${CARGO_HOME:-$HOME/.cargo}/bin"
export PATH="$CARGO_BIN:$PATH"

# the wasm32 target and wasm-bindgen-cli at exactly Cargo.lock's version
"$ROOT/scripts/ensure-wasm-bindgen.sh"

cargo build -p roomcast-browser --target wasm32-unknown-unknown --release
rm -rf "$OUT"
mkdir -p "$OUT"
wasm-bindgen --target web --out-dir "$OUT" \
	"${CARGO_TARGET_DIR:-$ROOT/target}/wasm32-unknown-unknown/release/roomcast_browser.wasm"

# package.json with the workspace version
version="$(awk '/^\[workspace.package\]/ { p = 1 } p && /^version = / { gsub(/^version = "|"$/, ""); print; exit }' Cargo.toml)"
sed "s/0.0.0-set-by-build-wasm/$version/" adapters/browser/npm/package.json >"$OUT/package.json"
cp adapters/browser/npm/README.md "$OUT/README.md"
echo "wrote $OUT ($(du -sh "$OUT"/roomcast_browser_bg.wasm | cut -f1) wasm, package roomcast@$version)"

#!/usr/bin/env bash
# Makes sure the wasm32 target and wasm-bindgen-cli at EXACTLY the wasm-bindgen version in
# Cargo.lock are installed (the CLI and test runner refuse to work with any other).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' "$ROOT/Cargo.lock")"
if [[ -z "$want" ]]; then
	echo "wasm-bindgen not found in Cargo.lock" >&2
	exit 1
fi
if ! rustup target list --installed | grep -qx wasm32-unknown-unknown; then
	rustup target add wasm32-unknown-unknown
fi
have="$(wasm-bindgen --version 2>/dev/null | awk '{print $2}' || true)"
if [[ "$have" != "$want" ]]; then
	echo "installing wasm-bindgen-cli $want (found: ${have:-none})"
	# no --locked: the registry mirror may lack the exact versions of its lock file
	cargo install wasm-bindgen-cli --version "$want" --force
fi
if ! command -v node >/dev/null; then
	echo "node is required to run wasm tests (wasm-bindgen-test-runner uses it)" >&2
	exit 1
fi
echo "wasm-bindgen $want ready"

#!/usr/bin/env bash
# Installs what building and running the worker needs, once; later runs are no-ops.
#   npm tools (package-lock.json): wrangler + workerd, Node 22 for wrangler, wasm-opt
#   cargo: worker-build 0.8 (~5 min) and wasm-bindgen-cli at the crate's pinned version
# Offline-safe after the first run; every install is bounded by a timeout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$HOME/.cargo/bin:$PATH"

stamp=node_modules/.package-lock.sha256
want="$(sha256sum package-lock.json | cut -d' ' -f1)"
if [[ ! -x node_modules/.bin/wrangler || ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
	# `npm install`, not `npm ci`: the lock was made on Linux without the other platforms'
	# optional workerd binaries, which `npm ci` insists on. Versions are pinned exactly.
	echo "setup.sh: npm install"
	timeout 900 npm install --no-audit --no-fund --loglevel=error
	echo "$want" >"$stamp"
fi

if ! command -v worker-build >/dev/null; then
	echo "setup.sh: cargo install worker-build (a few minutes, once)"
	timeout 1800 cargo install worker-build --version '^0.8' --locked
fi

bindgen="$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' Cargo.toml)"
if ! command -v wasm-bindgen >/dev/null ||
	[[ "$(wasm-bindgen --version | awk '{print $2}')" != "$bindgen" ]]; then
	echo "setup.sh: cargo install wasm-bindgen-cli $bindgen (a few minutes, once)"
	# --locked fails against the registry mirror; a plain install works
	timeout 1800 cargo install wasm-bindgen-cli --version "$bindgen"
fi

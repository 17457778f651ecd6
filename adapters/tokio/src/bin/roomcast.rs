//! The `roomcast` server binary: flags (each with a `ROOMCAST_...` environment variable)
//! mapped onto [`roomcast_tokio::Config`], one ready line on stdout, logs on stderr, and a
//! graceful shutdown on SIGINT/SIGTERM.
// The field docs below are the `--help` text, where URLs must stay plain.
#![allow(rustdoc::bare_urls)]

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use roomcast_tokio::core::auth::{AuthSettings, AuthSettingsError, DemoTokens, Verifier};
use roomcast_tokio::core::values;
use roomcast_tokio::{heartbeat_for, Config, Server};
use roomcast_tokio::{ApiKey, ProxyHook, ProxyHooks, RedisConfig};
use tracing::{error, info};
use tracing_subscriber::EnvFilter;

/// Message size in echo mode unless set: Autobahn sends messages of up to 16 MiB.
const ECHO_MAX_MESSAGE: usize = 64 << 20;

/// roomcast: a realtime server that organises WebSocket connections into rooms, channels
/// and users.
///
/// Clients connect to ws://ADDR/ws (optionally ?user=NAME: the open default identity,
/// with no authentication) and speak the JSON protocol of PROTOCOL.md. The server also
/// serves static files at / (the chat demo), GET /healthz and GET /metrics (Prometheus).
/// When ready it prints exactly one line, `listening on http://ADDR`, to stdout; logs go to
/// stderr. SIGINT or SIGTERM close every connection with 1001 and exit 0.
#[derive(Debug, Parser)]
#[command(name = "roomcast", version)]
struct Args {
    /// Address to listen on. Port 0 picks a free port; the ready line shows the real one.
    #[arg(
        long,
        env = "ROOMCAST_BIND",
        value_name = "ADDR",
        default_value = "127.0.0.1:8080"
    )]
    bind: String,

    /// Directory of static files served at / (index.html for /). Default: ./www if it
    /// exists, else a small built-in page.
    #[arg(long, env = "ROOMCAST_WWW", value_name = "DIR")]
    www: Option<PathBuf>,

    /// A browser origin allowed to open WebSockets, e.g. https://chat.example.com.
    /// Repeat the flag (or comma-separate in the variable) for several. Without any,
    /// every origin is allowed; requests without an Origin header (non-browser clients)
    /// are always allowed. Refused origins get HTTP 403.
    #[arg(
        long = "allowed-origin",
        env = "ROOMCAST_ALLOWED_ORIGIN",
        value_name = "ORIGIN",
        value_delimiter = ','
    )]
    allowed_origins: Vec<String>,

    /// Most WebSocket connections at once; past it upgrades get HTTP 503.
    #[arg(
        long,
        env = "ROOMCAST_MAX_CONNECTIONS",
        value_name = "N",
        default_value_t = 100_000
    )]
    max_connections: usize,

    /// Largest WebSocket message accepted (whole message, across fragments), in bytes
    /// or with a unit (64KiB, 1MiB, 1MB). Bigger ones close the connection with 1009.
    /// Default 1MiB (64MiB with --echo).
    #[arg(long, env = "ROOMCAST_MAX_MESSAGE_SIZE", value_name = "BYTES", value_parser = parse_size)]
    max_message_size: Option<usize>,

    /// How often an idle connection is pinged (e.g. 25s, 500ms); also advertised to
    /// clients as heartbeat.interval_ms, the cadence of their own heartbeat.
    #[arg(
        long,
        env = "ROOMCAST_PING_INTERVAL",
        value_name = "DUR",
        default_value = "25s",
        value_parser = parse_positive_duration
    )]
    ping_interval: Duration,

    /// How long a ping may go unanswered. A connection silent for the ping interval
    /// plus this (rounded up to whole intervals, at least two) is dropped and counted as
    /// a heartbeat timeout. Also advertised to clients as heartbeat.timeout_ms: how long
    /// they wait for any message after their heartbeat before reconnecting.
    #[arg(
        long,
        env = "ROOMCAST_PONG_TIMEOUT",
        value_name = "DUR",
        default_value = "20s",
        value_parser = parse_positive_duration
    )]
    pong_timeout: Duration,

    /// Messages kept per room (for at most --history-age) so reconnecting clients can
    /// recover what they missed with `join` + `since`: on by default, as on the Worker,
    /// bounded by --history-max-bytes. 0 turns history off.
    #[arg(
        long,
        env = "ROOMCAST_HISTORY",
        value_name = "N",
        default_value_t = roomcast_core::hub::DEFAULT_HISTORY
    )]
    history: usize,

    /// How long a room message stays recoverable. An empty room lives on until its
    /// history has aged out, so its seq continues for clients coming back.
    #[arg(
        long,
        env = "ROOMCAST_HISTORY_AGE",
        value_name = "DURATION",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    history_age: Duration,

    /// Bytes of history kept across all rooms together (or with a unit as for
    /// --max-message-size). Past it the oldest messages go first, whichever room holds
    /// them, so no client can make the server hold history without bound.
    #[arg(
        long,
        env = "ROOMCAST_HISTORY_MAX_BYTES",
        value_name = "BYTES",
        default_value = "32MiB",
        value_parser = parse_size
    )]
    history_max_bytes: usize,

    /// Presence changes of a room within this window reach its watchers as one
    /// `presence` message (who joined then left within it is not told at all), so a
    /// room reconnecting at once costs each watcher a few messages, not one per member.
    /// 0 sends each change at once.
    #[arg(
        long,
        env = "ROOMCAST_PRESENCE_BATCH",
        value_name = "DURATION",
        default_value = "50ms",
        value_parser = parse_window
    )]
    presence_batch: Duration,

    /// Most members per room; joins past it get `room_full`. Default: no limit.
    #[arg(long, env = "ROOMCAST_MAX_ROOM_MEMBERS", value_name = "N")]
    max_room_members: Option<usize>,

    /// Most rooms one connection may be in at once; joins past it get `too_many_rooms`.
    #[arg(
        long,
        env = "ROOMCAST_MAX_ROOMS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 1000
    )]
    max_rooms_per_connection: usize,

    /// Most rooms the server holds at once; a join that would create one more gets
    /// `too_many_rooms`. Default: no bound but connections × --max-rooms-per-connection.
    #[arg(long, env = "ROOMCAST_MAX_ROOMS", value_name = "N")]
    max_rooms: Option<usize>,

    /// Require a signed token (JWT, HS256) on every connection, checked with this shared
    /// secret (at least 32 bytes). `?user=` is then ignored. Prefer the environment
    /// variable: a flag shows in the process list.
    #[arg(
        long,
        env = "ROOMCAST_AUTH_SECRET",
        value_name = "SECRET",
        hide_env_values = true
    )]
    auth_secret: Option<String>,

    /// Require a signed token checked with the public keys in this PEM file (RS256,
    /// ES256 or EdDSA; several blocks, each after a `kid: NAME` line, for rotation).
    /// Repeatable; with --auth-secret too, both kinds are accepted.
    #[arg(
        long,
        env = "ROOMCAST_AUTH_PUBLIC_KEY",
        value_name = "FILE",
        value_delimiter = ','
    )]
    auth_public_key: Vec<PathBuf>,

    /// Tokens must name this audience in `aud`.
    #[arg(long, env = "ROOMCAST_AUTH_AUDIENCE", value_name = "AUD")]
    auth_audience: Option<String>,

    /// Tokens must name this issuer in `iss`.
    #[arg(long, env = "ROOMCAST_AUTH_ISSUER", value_name = "ISS")]
    auth_issuer: Option<String>,

    /// A token without `caps` may do nothing (instead of everything a client may do
    /// without tokens): every right then comes from a grant or a room token.
    #[arg(
        long,
        env = "ROOMCAST_AUTH_DENY_BY_DEFAULT",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    auth_deny_by_default: bool,

    /// DEMO ONLY: serve `GET /demo/token?user=NAME`, which gives anyone a signed token
    /// for any name (no password), so the chat demo shows the real token flow. Signs
    /// with --auth-secret, or a random secret made at start when there is none; either
    /// way every connection then needs a token.
    #[arg(
        long,
        env = "ROOMCAST_DEMO_TOKENS",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    demo_tokens: bool,

    /// Lifetime of a demo token (refreshed by the clients before it ends).
    #[arg(
        long,
        env = "ROOMCAST_DEMO_TOKEN_TTL",
        value_name = "DUR",
        default_value = "5m",
        value_parser = parse_positive_duration
    )]
    demo_token_ttl: Duration,

    /// Serve the server HTTP API under /api/ (publish, rooms, members, channel links,
    /// history, disconnects, stats) to callers sending `Authorization: Bearer KEY`.
    /// Off without a key. Prefer the environment variable.
    #[arg(
        long,
        env = "ROOMCAST_API_KEY",
        value_name = "KEY",
        hide_env_values = true
    )]
    api_key: Option<String>,

    /// Let an HTTP backend decide: roomcast POSTs JSON to URL/connect, URL/join,
    /// URL/subscribe, URL/publish, URL/rpc and URL/disconnect (those in --proxy-hooks);
    /// the backend answers 200 with {} (allow), {"error":{"code","message"}} (refuse)
    /// and optionally "data" (a publish's replaced data, an rpc's answer) or, for
    /// connect, "user", "info", "rooms". http:// only.
    #[arg(long, env = "ROOMCAST_PROXY_URL", value_name = "URL")]
    proxy_url: Option<String>,

    /// Which hooks go to --proxy-url (comma-separated).
    #[arg(
        long,
        env = "ROOMCAST_PROXY_HOOKS",
        value_name = "HOOKS",
        value_delimiter = ',',
        default_value = "connect,join,subscribe,publish,rpc,disconnect"
    )]
    proxy_hooks: Vec<String>,

    /// Upgrade request headers the connect hook receives (comma-separated, e.g.
    /// `Cookie,Authorization`); none by default.
    #[arg(
        long,
        env = "ROOMCAST_PROXY_HEADERS",
        value_name = "NAMES",
        value_delimiter = ','
    )]
    proxy_headers: Vec<String>,

    /// How long the backend may take before the request is refused `unavailable`.
    #[arg(
        long,
        env = "ROOMCAST_PROXY_TIMEOUT",
        value_name = "DUR",
        default_value = "1s",
        value_parser = parse_positive_duration
    )]
    proxy_timeout: Duration,

    /// Calls to the backend at once; past it requests are refused `unavailable` (a slow
    /// backend cannot pile up work here).
    #[arg(
        long,
        env = "ROOMCAST_PROXY_MAX_IN_FLIGHT",
        value_name = "N",
        default_value_t = 256
    )]
    proxy_max_in_flight: usize,

    /// Share rooms with every roomcast node on this Redis (`redis://HOST:PORT[/DB]`):
    /// room seqs, history and recovery live in Redis; channels, users and broadcasts
    /// reach every node. Without it: one process, everything in memory.
    #[arg(long, env = "ROOMCAST_REDIS_URL", value_name = "URL")]
    redis: Option<String>,

    /// Prefix of roomcast's Redis keys and channels (several deployments, one Redis).
    #[arg(
        long,
        env = "ROOMCAST_REDIS_PREFIX",
        value_name = "PREFIX",
        default_value = "rc"
    )]
    redis_prefix: String,

    /// Most channels one connection may subscribe to at once; subscribes past it get
    /// `too_many_subscriptions`.
    #[arg(
        long,
        env = "ROOMCAST_MAX_SUBSCRIPTIONS_PER_CONNECTION",
        value_name = "N",
        default_value_t = 1000
    )]
    max_subscriptions_per_connection: usize,

    /// Requests one connection may send in a burst (the size of its token bucket).
    /// Requests past the rate limit get `rate_limited`.
    #[arg(
        long,
        env = "ROOMCAST_RATE_LIMIT_BURST",
        value_name = "N",
        default_value_t = 500,
        value_parser = clap::value_parser!(u32).range(1..)
    )]
    rate_limit_burst: u32,

    /// Requests per second refilled into each connection's bucket: the sustained rate.
    #[arg(
        long,
        env = "ROOMCAST_RATE_LIMIT_PER_SECOND",
        value_name = "N",
        default_value_t = 200
    )]
    rate_limit_per_second: u32,

    /// How long a connection may stay over the rate limit (getting `rate_limited`)
    /// before it is closed with 1008.
    #[arg(
        long,
        env = "ROOMCAST_RATE_LIMIT_GRACE",
        value_name = "DUR",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    rate_limit_grace: Duration,

    /// Unsent output allowed per connection (bytes, or with a unit as for
    /// --max-message-size). A connection that falls further behind is closed with 1008
    /// "slow consumer"; nobody else waits for it.
    #[arg(
        long,
        env = "ROOMCAST_MAX_BUFFERED",
        value_name = "BYTES",
        default_value = "1MiB",
        value_parser = parse_size
    )]
    max_buffered: usize,

    /// How long a client has to send a whole HTTP request head (the WebSocket upgrade,
    /// or the next request on an idle keep-alive connection) before the TCP connection
    /// is dropped.
    #[arg(
        long,
        env = "ROOMCAST_HANDSHAKE_TIMEOUT",
        value_name = "DUR",
        default_value = "10s",
        value_parser = parse_positive_duration
    )]
    handshake_timeout: Duration,

    /// Most TCP connections not (yet) upgraded to a WebSocket at once: handshakes in
    /// progress and plain HTTP connections. Past it new TCP connections get HTTP 503 and
    /// are closed at once.
    #[arg(
        long,
        env = "ROOMCAST_MAX_PENDING_HANDSHAKES",
        value_name = "N",
        default_value_t = 1024,
        value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..)
    )]
    max_pending_handshakes: usize,

    /// Clients may only join rooms that already exist (created through the embedding
    /// API); joining any other room gets `forbidden`. By default a join creates the room.
    #[arg(
        long,
        env = "ROOMCAST_NO_ROOM_CREATION",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    no_room_creation: bool,

    /// Conformance mode for the Autobahn test suite: every WebSocket, on any path, is a
    /// plain echo server (text back as text, binary as binary); no rooms, no protocol.
    #[arg(
        long,
        env = "ROOMCAST_ECHO",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    echo: bool,

    /// Also serve the benchmark suite's tiny protocol (bench/, docs/benchmarks.md), so
    /// the suite measures this server: GET /echo echoes, and on GET /room the text `sub`
    /// joins the room `bench` and any other text goes to its members verbatim, through
    /// the same hub as the JSON protocol at /ws (which stays served). Benchmarks only.
    #[arg(
        long,
        env = "ROOMCAST_BENCH_PROTOCOL",
        value_parser = clap::builder::BoolishValueParser::new()
    )]
    bench_protocol: bool,

    /// Worker threads for connections. Default: one per core this process may run on
    /// (its CPU affinity, so `taskset -c 0` means one). With 1 everything runs on the
    /// main thread with tokio's current-thread scheduler, which skips the work-stealing
    /// bookkeeping a single worker would only pay for.
    #[arg(long, env = "ROOMCAST_THREADS", value_name = "N")]
    threads: Option<usize>,

    /// Log filter: a level (error, warn, info, debug, trace) or a tracing directive
    /// such as `info,roomcast_tokio=debug`.
    #[arg(
        long,
        env = "ROOMCAST_LOG",
        value_name = "LEVEL",
        default_value = "info"
    )]
    log: String,
}

/// A size (`1048576`, `64KiB`, `1MiB`, `1GiB`, `1MB`): the grammar every runtime shares.
fn parse_size(s: &str) -> Result<usize, String> {
    values::parse_size(s).map_err(|e| format!("{s:?}: {e}"))
}

/// A duration as below where 0 turns something off.
fn parse_window(s: &str) -> Result<Duration, String> {
    values::parse_millis_or_zero(s)
        .map(Duration::from_millis)
        .map_err(|e| format!("{s:?}: {e}"))
}

/// A duration (`500ms`, `25s`, `2m`, `1h`) that is not zero: the grammar every runtime
/// shares.
fn parse_positive_duration(s: &str) -> Result<Duration, String> {
    values::parse_millis(s)
        .map(Duration::from_millis)
        .map_err(|e| format!("{s:?}: {e}"))
}

impl Args {
    /// The token settings, when a key is given (checked by the core, as the Worker's).
    fn auth(&self, demo_secret: Option<&str>) -> Result<Option<Verifier>, String> {
        let mut public_keys = Vec::with_capacity(self.auth_public_key.len());
        for path in &self.auth_public_key {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("--auth-public-key {}: {e}", path.display()))?;
            public_keys.push(text);
        }
        let settings = AuthSettings {
            secret: self.auth_secret.clone().or(demo_secret.map(str::to_owned)),
            public_keys,
            audience: self.auth_audience.clone(),
            issuer: self.auth_issuer.clone(),
            deny_by_default: self.auth_deny_by_default,
        };
        settings.verifier().map_err(|e| match e {
            AuthSettingsError::PublicKey { index, error } => format!(
                "--auth-public-key {}: {error}",
                self.auth_public_key[index].display()
            ),
            AuthSettingsError::Secret(error) => format!("--auth-secret: {error}"),
            other => format!("{other} (--auth-secret or --auth-public-key)"),
        })
    }

    fn config(&self) -> Result<Config, String> {
        let mut config = Config::default();
        let hub = &mut config.hub;
        hub.max_connections = self.max_connections;
        hub.max_message_size = self.max_message_size.unwrap_or(if self.echo {
            ECHO_MAX_MESSAGE
        } else {
            hub.max_message_size
        });
        hub.heartbeat = heartbeat_for(self.ping_interval, self.pong_timeout);
        hub.history.max_messages = self.history;
        hub.history.max_age_ms = u64::try_from(self.history_age.as_millis()).unwrap_or(u64::MAX);
        hub.history.max_total_bytes = self.history_max_bytes;
        hub.presence_batch_ms = u64::try_from(self.presence_batch.as_millis()).unwrap_or(u64::MAX);
        hub.max_room_members = self.max_room_members;
        hub.clients_create_rooms = !self.no_room_creation;
        hub.max_rooms_per_conn = self.max_rooms_per_connection;
        hub.max_rooms = self.max_rooms;
        let demo_secret = (self.demo_tokens && self.auth_secret.is_none()).then(random_secret);
        hub.auth = self.auth(demo_secret.as_deref())?.map(Arc::new);
        if self.demo_tokens {
            let secret = self
                .auth_secret
                .clone()
                .or(demo_secret)
                .expect("one of them is set");
            config.demo_tokens = Some(
                DemoTokens::new(secret, self.demo_token_ttl.as_secs())
                    .with_audience_issuer(self.auth_audience.clone(), self.auth_issuer.clone()),
            );
        }
        hub.max_subscriptions_per_conn = self.max_subscriptions_per_connection;
        if let Some(key) = self
            .api_key
            .as_deref()
            .map(str::trim)
            .filter(|k| !k.is_empty())
        {
            if key.len() < 16 {
                return Err("--api-key: use at least 16 characters".into());
            }
            config.api_key = Some(ApiKey(key.to_owned()));
        }
        if let Some(url) = self
            .redis
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
        {
            if !(url.starts_with("redis://") || url.starts_with("unix://")) {
                return Err(format!("--redis {url:?}: give redis://HOST[:PORT][/DB]"));
            }
            let mut redis = RedisConfig::new(url);
            redis.prefix = self.redis_prefix.clone();
            config = config.with_redis(redis);
        }
        if let Some(url) = &self.proxy_url {
            let hooks = self
                .proxy_hooks
                .iter()
                .filter(|h| !h.trim().is_empty())
                .map(|h| ProxyHook::parse(h))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| format!("--proxy-hooks: {e}"))?;
            let proxy = ProxyHooks::new(url, hooks, self.proxy_timeout, self.proxy_max_in_flight)
                .map_err(|e| format!("--proxy-url: {e}"))?;
            config = config.with_hooks(proxy);
            config.hook_headers = self
                .proxy_headers
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
        }
        let hub = &mut config.hub;
        hub.rate_limit.burst = self.rate_limit_burst;
        hub.rate_limit.per_second = self.rate_limit_per_second;
        hub.rate_limit.grace_ms =
            u64::try_from(self.rate_limit_grace.as_millis()).unwrap_or(u64::MAX);
        hub.max_buffered_bytes = self.max_buffered;
        config.handshake_timeout = self.handshake_timeout;
        config.max_pending_handshakes = self.max_pending_handshakes;
        config.allowed_origins = self
            .allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        config.echo = self.echo;
        config.bench_protocol = self.bench_protocol;
        config.www = match &self.www {
            Some(dir) if dir.is_dir() => Some(dir.clone()),
            Some(dir) => return Err(format!("--www {}: not a directory", dir.display())),
            None => Some(PathBuf::from("www")).filter(|d| d.is_dir()),
        };
        Ok(config)
    }
}

/// 32 random bytes as hex: the demo tokens' secret when none is given (it dies with the
/// process, and so do the tokens signed with it).
fn random_secret() -> String {
    let mut b = [0u8; 32];
    getrandom::fill(&mut b).expect("the OS random source");
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> ExitCode {
    let args = Args::parse();
    let filter = match EnvFilter::try_new(&args.log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("roomcast: invalid --log {:?}: {e}", args.log);
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = match args.config() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("roomcast: {e}");
            return ExitCode::from(2);
        }
    };
    let threads = match args.threads {
        Some(0) => {
            eprintln!("roomcast: --threads must be at least 1");
            return ExitCode::from(2);
        }
        Some(n) => n,
        None => std::thread::available_parallelism().map_or(1, |n| n.get()),
    };
    let built = if threads == 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("roomcast: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = runtime.block_on(run(args.bind, config));
    // Sockets still closing after the shutdown bound are dropped with the runtime.
    runtime.shutdown_timeout(Duration::from_millis(500));
    code
}

async fn run(bind: String, config: Config) -> ExitCode {
    // Register the signal handlers before announcing readiness, so a signal sent right
    // after the ready line is a graceful shutdown, never the default kill.
    let signal = match Signals::register() {
        Ok(s) => s,
        Err(e) => {
            error!("cannot install signal handlers: {e}");
            return ExitCode::FAILURE;
        }
    };
    let echo = config.echo;
    let www = config.www.clone();
    let server = match Server::bind(&bind, config).await {
        Ok(s) => s,
        Err(e) => {
            error!("{e}");
            return ExitCode::FAILURE;
        }
    };
    let addr = server.local_addr();
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "listening on http://{addr}");
    let _ = stdout.flush();
    drop(stdout);
    info!(
        %addr,
        echo,
        www = ?www,
        "roomcast ready"
    );
    server.run_until(signal.wait()).await;
    ExitCode::SUCCESS
}

/// SIGINT and SIGTERM, registered up front.
struct Signals {
    #[cfg(unix)]
    int: tokio::signal::unix::Signal,
    #[cfg(unix)]
    term: tokio::signal::unix::Signal,
}

impl Signals {
    #[cfg(unix)]
    fn register() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            int: signal(SignalKind::interrupt())?,
            term: signal(SignalKind::terminate())?,
        })
    }

    #[cfg(not(unix))]
    fn register() -> std::io::Result<Signals> {
        Ok(Signals {})
    }

    #[cfg(unix)]
    async fn wait(mut self) {
        tokio::select! {
            _ = self.int.recv() => info!("SIGINT: shutting down"),
            _ = self.term.recv() => info!("SIGTERM: shutting down"),
        }
    }

    #[cfg(not(unix))]
    async fn wait(self) {
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C: shutting down");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Args::command().debug_assert();
    }

    #[test]
    fn every_flag_has_an_environment_variable() {
        let cmd = Args::command();
        for arg in cmd.get_arguments() {
            let Some(long) = arg.get_long() else { continue };
            if matches!(long, "help" | "version") {
                continue;
            }
            let mut want = format!("ROOMCAST_{}", long.to_ascii_uppercase().replace('-', "_"));
            if long == "redis" {
                want.push_str("_URL"); // PROTOCOL.md names it so
            }
            let env = arg.get_env().map(|e| e.to_string_lossy().into_owned());
            assert_eq!(env.as_deref(), Some(want.as_str()), "--{long}");
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1024"), Ok(1024));
        assert_eq!(parse_size("64KiB"), Ok(65536));
        assert_eq!(parse_size("1M"), Ok(1 << 20));
        assert_eq!(parse_size("1MB"), Ok(1_000_000));
        assert!(parse_size("0").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("1XB").is_err());
        assert!(parse_size("99999999999999999999").is_err());
    }

    #[test]
    fn echo_raises_the_message_limit_unless_set() {
        let a = Args::parse_from(["roomcast", "--echo"]);
        assert_eq!(a.config().unwrap().hub.max_message_size, ECHO_MAX_MESSAGE);
        let a = Args::parse_from(["roomcast", "--echo", "--max-message-size", "1KiB"]);
        assert_eq!(a.config().unwrap().hub.max_message_size, 1024);
        let a = Args::parse_from(["roomcast"]);
        assert_eq!(a.config().unwrap().hub.max_message_size, 1 << 20);
    }

    #[test]
    fn defaults_are_the_library_defaults() {
        let c = Args::parse_from(["roomcast"]).config().unwrap();
        let d = Config::default();
        assert_eq!(c.hub, d.hub);
        assert_eq!(c.handshake_timeout, d.handshake_timeout);
        assert_eq!(c.max_pending_handshakes, d.max_pending_handshakes);
    }

    #[test]
    fn limit_flags_map_onto_the_config() {
        let a = Args::parse_from([
            "roomcast",
            "--max-rooms-per-connection",
            "3",
            "--max-subscriptions-per-connection",
            "2",
            "--rate-limit-burst",
            "10",
            "--rate-limit-per-second",
            "1",
            "--rate-limit-grace",
            "1500ms",
            "--max-buffered",
            "64KiB",
            "--handshake-timeout",
            "500ms",
            "--max-pending-handshakes",
            "7",
            "--history-max-bytes",
            "2MiB",
        ]);
        let c = a.config().unwrap();
        assert_eq!(c.hub.max_rooms_per_conn, 3);
        assert_eq!(c.hub.max_subscriptions_per_conn, 2);
        assert_eq!(c.hub.rate_limit.burst, 10);
        assert_eq!(c.hub.rate_limit.per_second, 1);
        assert_eq!(c.hub.rate_limit.grace_ms, 1500);
        assert_eq!(c.hub.max_buffered_bytes, 64 * 1024);
        assert_eq!(c.handshake_timeout, Duration::from_millis(500));
        assert_eq!(c.max_pending_handshakes, 7);
        assert_eq!(c.hub.history.max_total_bytes, 2 << 20);
        for bad in [
            ["--rate-limit-burst", "0"],
            ["--max-pending-handshakes", "0"],
            ["--handshake-timeout", "0s"],
            ["--max-buffered", "0"],
            ["--rate-limit-grace", "soon"],
        ] {
            let got = Args::try_parse_from(["roomcast", bad[0], bad[1]]);
            assert!(got.is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn heartbeat_flags_map_onto_the_hub() {
        let a = Args::parse_from([
            "roomcast",
            "--ping-interval",
            "200ms",
            "--pong-timeout",
            "1s",
            "--history",
            "50",
            "--allowed-origin",
            "https://a.example/",
            "--allowed-origin",
            "https://b.example",
            "--max-room-members",
            "3",
            "--no-room-creation",
        ]);
        let c = a.config().unwrap();
        assert_eq!(c.hub.heartbeat.interval_ms, 200);
        assert_eq!(c.hub.heartbeat.timeout_ms, 1000);
        assert_eq!(c.hub.heartbeat.max_missed, 6);
        assert_eq!(c.hub.history.max_messages, 50);
        assert_eq!(c.hub.history.max_age_ms, 5 * 60 * 1000);
        assert_eq!(c.hub.presence_batch_ms, 50);
        assert_eq!(
            c.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        let off = Args::parse_from(["roomcast", "--presence-batch", "0", "--history", "0"]);
        let off = off.config().unwrap();
        assert_eq!(
            (off.hub.presence_batch_ms, off.hub.history.max_messages),
            (0, 0)
        );
    }
}

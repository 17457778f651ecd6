//! The hub configuration of a deployment, read from Worker variables.
//!
//! The variables carry the same names and meanings as the native server's environment
//! variables (`ROOMCAST_MAX_CONNECTIONS`, ...), so one set of values configures either
//! runtime. What differs is forced by the platform and fixed here: the hub never sends
//! protocol pings (workerd owns the sockets and an idle hub must be able to sleep), and
//! history is on by default because a Durable Object keeps it in its own storage.

use std::sync::Arc;

use roomcast_core::auth::{AuthSettings, AuthSettingsError, DemoTokens};
use roomcast_core::handshake::ServerPolicy;
use roomcast_core::hub::{HeartbeatConfig, HistoryConfig, HubConfig};
use roomcast_core::values;
use thiserror::Error;

/// The subprotocol offered to clients that ask for one (same as the native server).
pub const SUBPROTOCOL: &str = "roomcast.v1";

/// Messages kept per room when `ROOMCAST_HISTORY` is not set (the native server's too).
pub use roomcast_core::hub::DEFAULT_HISTORY;

/// Every variable read, for documentation and error messages.
pub const VARIABLES: &[&str] = &[
    "ROOMCAST_ALLOWED_ORIGIN",
    "ROOMCAST_AUTH_SECRET",
    "ROOMCAST_AUTH_PUBLIC_KEY",
    "ROOMCAST_AUTH_AUDIENCE",
    "ROOMCAST_AUTH_ISSUER",
    "ROOMCAST_AUTH_DENY_BY_DEFAULT",
    "ROOMCAST_API_KEY",
    "ROOMCAST_DEMO_TOKENS",
    "ROOMCAST_DEMO_TOKEN_TTL",
    "ROOMCAST_MAX_CONNECTIONS",
    "ROOMCAST_MAX_MESSAGE_SIZE",
    "ROOMCAST_HISTORY",
    "ROOMCAST_HISTORY_AGE",
    "ROOMCAST_PRESENCE_BATCH",
    "ROOMCAST_PING_INTERVAL",
    "ROOMCAST_PONG_TIMEOUT",
    "ROOMCAST_HISTORY_MAX_BYTES",
    "ROOMCAST_MAX_ROOM_MEMBERS",
    "ROOMCAST_NO_ROOM_CREATION",
    "ROOMCAST_MAX_ROOMS",
    "ROOMCAST_MAX_ROOMS_PER_CONNECTION",
    "ROOMCAST_MAX_SUBSCRIPTIONS_PER_CONNECTION",
    "ROOMCAST_RATE_LIMIT_BURST",
    "ROOMCAST_RATE_LIMIT_PER_SECOND",
    "ROOMCAST_RATE_LIMIT_GRACE",
    "ROOMCAST_PROXY_URL",
    "ROOMCAST_PROXY_HOOKS",
    "ROOMCAST_PROXY_HEADERS",
    "ROOMCAST_PROXY_TIMEOUT",
    "ROOMCAST_PROXY_MAX_IN_FLIGHT",
];

/// The hooks `ROOMCAST_PROXY_HOOKS` may name, in the order of its default (all).
pub const PROXY_HOOKS: [&str; 6] = [
    "connect",
    "join",
    "subscribe",
    "publish",
    "rpc",
    "disconnect",
];

/// The application's HTTP backend (`ROOMCAST_PROXY_*`, the same variables as the native
/// `--proxy-*` flags): roomcast `fetch`es `URL/{hook}` with the core's hook bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxySettings {
    /// The base URL (`http://` or `https://`), without a trailing slash.
    pub url: String,
    /// Which hooks it answers (names of [`PROXY_HOOKS`]); default all.
    pub hooks: Vec<&'static str>,
    /// Upgrade headers the `connect` hook receives (`ROOMCAST_PROXY_HEADERS`).
    pub headers: Vec<String>,
    /// How long a call may take before the request is refused `unavailable` (default 1 s).
    pub timeout_ms: u64,
    /// Calls in flight at once per hub; past it `unavailable` (default 256).
    pub max_in_flight: usize,
}

impl ProxySettings {
    /// Whether `hook` goes to the backend.
    pub fn has(&self, hook: &str) -> bool {
        self.hooks.contains(&hook)
    }
}

/// A variable that could not be understood. Deploying with a typo must fail loudly (every
/// upgrade answers 500 naming the variable) rather than silently run with defaults.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{name}={value:?}: {problem}")]
pub struct SettingsError {
    /// The variable.
    pub name: &'static str,
    /// Its value.
    pub value: String,
    /// What is wrong with it.
    pub problem: String,
}

/// What one deployment runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Configuration of every hub (one per Durable Object).
    pub hub: HubConfig,
    /// Handshake policy (allowed origins, subprotocol).
    pub policy: ServerPolicy,
    /// The server HTTP API's key (`ROOMCAST_API_KEY`, a Worker secret): the API under
    /// `/hub/{name}/api/` is off (404) without it.
    pub api_key: Option<String>,
    /// Demo tokens minted at `/hub/{name}/demo/token` (`ROOMCAST_DEMO_TOKENS`; demos
    /// only: anyone gets a token for any name).
    pub demo_tokens: Option<DemoTokens>,
    /// The application's hook backend (`ROOMCAST_PROXY_URL`), if any.
    pub proxy: Option<ProxySettings>,
}

impl Settings {
    /// Reads the settings through `var`, which returns a variable's value if it is set.
    /// Empty values count as unset, so a variable can be blanked in `wrangler.toml`.
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Settings, SettingsError> {
        let get = |name: &'static str| {
            var(name)
                .map(|v| v.trim().to_owned())
                .filter(|v| !v.is_empty())
                .map(|v| (name, v))
        };
        let mut hub = HubConfig {
            heartbeat: HeartbeatConfig {
                server_pings: false,
                ..HeartbeatConfig::default()
            },
            history: HistoryConfig {
                max_messages: DEFAULT_HISTORY,
                ..HistoryConfig::default()
            },
            presence_batch_ms: roomcast_core::hub::PRESENCE_BATCH_MS,
            ..HubConfig::default()
        };
        if let Some((name, v)) = get("ROOMCAST_MAX_CONNECTIONS") {
            hub.max_connections = parse_count(name, &v, 1)?;
        }
        if let Some((name, v)) = get("ROOMCAST_MAX_MESSAGE_SIZE") {
            hub.max_message_size = parse_size(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_HISTORY") {
            hub.history.max_messages = parse_count(name, &v, 0)?;
        }
        if let Some((name, v)) = get("ROOMCAST_HISTORY_AGE") {
            hub.history.max_age_ms = parse_millis(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_PRESENCE_BATCH") {
            hub.presence_batch_ms =
                values::parse_millis_or_zero(&v).map_err(|e| bad(name, &v, e.to_string()))?;
        }
        if let Some((name, v)) = get("ROOMCAST_PING_INTERVAL") {
            hub.heartbeat.interval_ms = parse_millis(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_PONG_TIMEOUT") {
            hub.heartbeat.timeout_ms = parse_millis(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_HISTORY_MAX_BYTES") {
            hub.history.max_total_bytes = parse_size(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_MAX_ROOM_MEMBERS") {
            hub.max_room_members = Some(parse_count(name, &v, 1)?);
        }
        if let Some((name, v)) = get("ROOMCAST_NO_ROOM_CREATION") {
            hub.clients_create_rooms = !parse_bool(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_MAX_ROOMS") {
            hub.max_rooms = Some(parse_count(name, &v, 1)?);
        }
        if let Some((name, v)) = get("ROOMCAST_MAX_ROOMS_PER_CONNECTION") {
            hub.max_rooms_per_conn = parse_count(name, &v, 1)?;
        }
        if let Some((name, v)) = get("ROOMCAST_MAX_SUBSCRIPTIONS_PER_CONNECTION") {
            hub.max_subscriptions_per_conn = parse_count(name, &v, 1)?;
        }
        if let Some((name, v)) = get("ROOMCAST_RATE_LIMIT_BURST") {
            hub.rate_limit.burst = parse_u32(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_RATE_LIMIT_PER_SECOND") {
            hub.rate_limit.per_second = parse_u32(name, &v)?;
        }
        if let Some((name, v)) = get("ROOMCAST_RATE_LIMIT_GRACE") {
            hub.rate_limit.grace_ms = parse_millis(name, &v)?;
        }
        hub.auth = auth_settings(&get)?
            .verifier()
            .map_err(auth_error)?
            .map(Arc::new);
        let demo_tokens = demo_tokens(&get)?;
        let api_key = match get("ROOMCAST_API_KEY") {
            Some((name, v)) if v.len() < 16 => {
                return Err(SettingsError {
                    name,
                    value: "(not shown)".into(),
                    problem: "use at least 16 characters".into(),
                })
            }
            Some((_, v)) => Some(v),
            None => None,
        };
        let allowed_origins = get("ROOMCAST_ALLOWED_ORIGIN")
            .map(|(_, v)| {
                v.split(',')
                    .map(str::trim)
                    .filter(|o| !o.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let proxy = proxy_settings(&get)?;
        Ok(Settings {
            hub,
            proxy,
            policy: ServerPolicy {
                allowed_origins,
                subprotocols: vec![SUBPROTOCOL.to_owned()],
            },
            demo_tokens,
            api_key,
        })
    }
}

/// The `ROOMCAST_AUTH_*` variables (the secret as a Worker secret; the public keys as
/// PEM text, blocks named by `kid:` lines, as in a native key file).
fn auth_settings(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
) -> Result<AuthSettings, SettingsError> {
    let deny_by_default = match get("ROOMCAST_AUTH_DENY_BY_DEFAULT") {
        Some((name, v)) => parse_bool(name, &v)?,
        None => false,
    };
    Ok(AuthSettings {
        secret: get("ROOMCAST_AUTH_SECRET").map(|(_, v)| v),
        public_keys: get("ROOMCAST_AUTH_PUBLIC_KEY")
            .map(|(_, v)| vec![v])
            .unwrap_or_default(),
        audience: get("ROOMCAST_AUTH_AUDIENCE").map(|(_, v)| v),
        issuer: get("ROOMCAST_AUTH_ISSUER").map(|(_, v)| v),
        deny_by_default,
    })
}

/// `ROOMCAST_DEMO_TOKENS` (and its `_TTL`, default 5 minutes): signed with the auth
/// secret, which must be set. The native server can make a random one at start; every
/// isolate of a Worker would make a different one, so here it must be given.
fn demo_tokens(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
) -> Result<Option<DemoTokens>, SettingsError> {
    let Some((name, v)) = get("ROOMCAST_DEMO_TOKENS") else {
        return Ok(None);
    };
    if !parse_bool(name, &v)? {
        return Ok(None);
    }
    let Some((_, secret)) = get("ROOMCAST_AUTH_SECRET") else {
        return Err(bad(
            name,
            &v,
            "demo tokens are signed with ROOMCAST_AUTH_SECRET: set it",
        ));
    };
    let ttl_ms = match get("ROOMCAST_DEMO_TOKEN_TTL") {
        Some((name, v)) => parse_millis(name, &v)?,
        None => 300_000,
    };
    Ok(Some(
        DemoTokens::new(secret.into_bytes(), ttl_ms / 1000).with_audience_issuer(
            get("ROOMCAST_AUTH_AUDIENCE").map(|(_, v)| v),
            get("ROOMCAST_AUTH_ISSUER").map(|(_, v)| v),
        ),
    ))
}

/// `ROOMCAST_PROXY_URL` and the variables that shape it (ignored without the URL).
fn proxy_settings(
    get: &impl Fn(&'static str) -> Option<(&'static str, String)>,
) -> Result<Option<ProxySettings>, SettingsError> {
    let Some((name, url)) = get("ROOMCAST_PROXY_URL") else {
        return Ok(None);
    };
    let scheme_ok = url.starts_with("http://") || url.starts_with("https://");
    if !scheme_ok
        || url
            .split_once("://")
            .is_none_or(|(_, rest)| rest.is_empty())
    {
        return Err(bad(name, &url, "give http(s)://HOST[:PORT][/PATH]"));
    }
    let hooks = match get("ROOMCAST_PROXY_HOOKS") {
        None => PROXY_HOOKS.to_vec(),
        Some((name, v)) => v
            .split(',')
            .map(str::trim)
            .filter(|h| !h.is_empty())
            .map(|h| {
                PROXY_HOOKS.into_iter().find(|k| *k == h).ok_or_else(|| {
                    bad(
                        name,
                        &v,
                        format!("unknown hook {h:?}: one of {}", PROXY_HOOKS.join(", ")),
                    )
                })
            })
            .collect::<Result<_, _>>()?,
    };
    let headers = get("ROOMCAST_PROXY_HEADERS")
        .map(|(_, v)| {
            v.split(',')
                .map(str::trim)
                .filter(|h| !h.is_empty())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let timeout_ms = match get("ROOMCAST_PROXY_TIMEOUT") {
        Some((name, v)) => match parse_millis(name, &v)? {
            0 => return Err(bad(name, &v, "must be more than zero")),
            ms => ms,
        },
        None => 1000,
    };
    let max_in_flight = match get("ROOMCAST_PROXY_MAX_IN_FLIGHT") {
        Some((name, v)) => parse_count(name, &v, 1)?,
        None => 256,
    };
    Ok(Some(ProxySettings {
        url: url.trim_end_matches('/').to_owned(),
        hooks,
        headers,
        timeout_ms,
        max_in_flight,
    }))
}

/// Names the variable at fault, never its value (a secret in an error page or a log is
/// a leaked secret).
fn auth_error(e: AuthSettingsError) -> SettingsError {
    let name = match e {
        AuthSettingsError::Secret(_) => "ROOMCAST_AUTH_SECRET",
        AuthSettingsError::PublicKey { .. } => "ROOMCAST_AUTH_PUBLIC_KEY",
        _ => "ROOMCAST_AUTH_SECRET",
    };
    SettingsError {
        name,
        value: "(not shown)".to_owned(),
        problem: e.to_string(),
    }
}

fn bad(name: &'static str, value: &str, problem: impl Into<String>) -> SettingsError {
    SettingsError {
        name,
        value: value.to_owned(),
        problem: problem.into(),
    }
}

fn parse_count(name: &'static str, v: &str, min: usize) -> Result<usize, SettingsError> {
    let n: usize = v
        .parse()
        .map_err(|_| bad(name, v, "expected a whole number"))?;
    if n < min {
        return Err(bad(name, v, format!("must be at least {min}")));
    }
    Ok(n)
}

fn parse_u32(name: &'static str, v: &str) -> Result<u32, SettingsError> {
    let n = parse_count(name, v, 1)?;
    u32::try_from(n).map_err(|_| bad(name, v, "too large"))
}

/// `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`, as the native server's boolean
/// variables.
fn parse_bool(name: &'static str, v: &str) -> Result<bool, SettingsError> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "true" | "yes" | "on" => Ok(true),
        "0" | "false" | "no" | "off" => Ok(false),
        _ => Err(bad(name, v, "expected true or false")),
    }
}

/// A size in the grammar every runtime shares (`roomcast_core::values`).
fn parse_size(name: &'static str, v: &str) -> Result<usize, SettingsError> {
    values::parse_size(v).map_err(|e| bad(name, v, e.to_string()))
}

/// A duration in the grammar every runtime shares (`roomcast_core::values`).
fn parse_millis(name: &'static str, v: &str) -> Result<u64, SettingsError> {
    values::parse_millis(v).map_err(|e| bad(name, v, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(pairs: &[(&str, &str)]) -> Result<Settings, SettingsError> {
        let map: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Settings::from_vars(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_are_the_protocol_defaults_with_history_and_no_server_pings() {
        let s = with(&[]).unwrap();
        let d = HubConfig::default();
        assert!(!s.hub.heartbeat.server_pings);
        assert_eq!(s.hub.heartbeat.interval_ms, d.heartbeat.interval_ms);
        assert_eq!(s.hub.history.max_messages, DEFAULT_HISTORY);
        assert_eq!(s.hub.history.max_age_ms, d.history.max_age_ms);
        assert_eq!(s.hub.presence_batch_ms, 50, "the native server's window");
        assert_eq!(s.hub.max_rooms_per_conn, d.max_rooms_per_conn);
        assert_eq!(s.hub.max_rooms, None);
        assert_eq!(s.hub.max_message_size, 1 << 20);
        assert!(s.policy.allowed_origins.is_empty());
        assert_eq!(s.policy.subprotocols, vec![SUBPROTOCOL.to_owned()]);
    }

    #[test]
    fn variables() {
        let s = with(&[
            ("ROOMCAST_MAX_CONNECTIONS", "2"),
            ("ROOMCAST_MAX_MESSAGE_SIZE", "64KiB"),
            ("ROOMCAST_HISTORY", "0"),
            ("ROOMCAST_HISTORY_AGE", "2m"),
            ("ROOMCAST_PRESENCE_BATCH", "0"),
            ("ROOMCAST_PING_INTERVAL", "500ms"),
            ("ROOMCAST_PONG_TIMEOUT", "2s"),
            ("ROOMCAST_MAX_ROOMS", "5000"),
            (
                "ROOMCAST_ALLOWED_ORIGIN",
                " http://a.example, https://b.example ,",
            ),
        ])
        .unwrap();
        assert_eq!(s.hub.max_connections, 2);
        assert_eq!(s.hub.max_rooms, Some(5000));
        assert_eq!(s.hub.max_message_size, 65536);
        assert_eq!(s.hub.history.max_messages, 0);
        assert_eq!(s.hub.history.max_age_ms, 120_000);
        assert_eq!(s.hub.presence_batch_ms, 0);
        assert_eq!(s.hub.heartbeat.interval_ms, 500);
        assert_eq!(s.hub.heartbeat.timeout_ms, 2000);
        assert_eq!(
            s.policy.allowed_origins,
            vec![
                "http://a.example".to_owned(),
                "https://b.example".to_owned()
            ]
        );
        let s = with(&[
            ("ROOMCAST_HISTORY_MAX_BYTES", "4MiB"),
            ("ROOMCAST_MAX_ROOM_MEMBERS", "1"),
            ("ROOMCAST_NO_ROOM_CREATION", "true"),
            ("ROOMCAST_MAX_ROOMS_PER_CONNECTION", "3"),
            ("ROOMCAST_MAX_SUBSCRIPTIONS_PER_CONNECTION", "4"),
            ("ROOMCAST_RATE_LIMIT_BURST", "5"),
            ("ROOMCAST_RATE_LIMIT_PER_SECOND", "6"),
            ("ROOMCAST_RATE_LIMIT_GRACE", "7s"),
        ])
        .unwrap();
        assert_eq!(s.hub.history.max_total_bytes, 4 << 20);
        assert_eq!(s.hub.max_room_members, Some(1));
        assert!(!s.hub.clients_create_rooms);
        assert_eq!(s.hub.max_rooms_per_conn, 3);
        assert_eq!(s.hub.max_subscriptions_per_conn, 4);
        assert_eq!(s.hub.rate_limit.burst, 5);
        assert_eq!(s.hub.rate_limit.per_second, 6);
        assert_eq!(s.hub.rate_limit.grace_ms, 7000);
        assert!(
            with(&[("ROOMCAST_NO_ROOM_CREATION", "0")])
                .unwrap()
                .hub
                .clients_create_rooms
        );
        assert_eq!(
            with(&[("ROOMCAST_MAX_MESSAGE_SIZE", "1024")])
                .unwrap()
                .hub
                .max_message_size,
            1024
        );
        assert_eq!(
            with(&[("ROOMCAST_HISTORY", " ")])
                .unwrap()
                .hub
                .history
                .max_messages,
            100
        );
    }

    #[test]
    fn sizes_and_durations_read_as_the_native_flags_do() {
        // One grammar for both runtimes (the worker once refused GiB).
        let s = with(&[
            ("ROOMCAST_HISTORY_MAX_BYTES", "1GiB"),
            ("ROOMCAST_MAX_MESSAGE_SIZE", "2MB"),
            ("ROOMCAST_PING_INTERVAL", "1h"),
        ])
        .unwrap();
        assert_eq!(s.hub.history.max_total_bytes, 1 << 30);
        assert_eq!(s.hub.max_message_size, 2_000_000);
        assert_eq!(s.hub.heartbeat.interval_ms, 3_600_000);
    }

    #[test]
    fn errors_name_the_variable() {
        for (k, v) in [
            ("ROOMCAST_MAX_CONNECTIONS", "0"),
            ("ROOMCAST_MAX_CONNECTIONS", "many"),
            ("ROOMCAST_MAX_MESSAGE_SIZE", "0"),
            ("ROOMCAST_MAX_MESSAGE_SIZE", "1 parsec"),
            ("ROOMCAST_MAX_MESSAGE_SIZE", "99999999999999999999M"),
            ("ROOMCAST_PING_INTERVAL", "soon"),
            ("ROOMCAST_PONG_TIMEOUT", "0s"),
            ("ROOMCAST_NO_ROOM_CREATION", "maybe"),
            ("ROOMCAST_MAX_ROOM_MEMBERS", "0"),
            ("ROOMCAST_RATE_LIMIT_BURST", "99999999999"),
            ("ROOMCAST_HISTORY_MAX_BYTES", "lots"),
        ] {
            let e = with(&[(k, v)]).unwrap_err();
            assert_eq!(e.name, k);
            assert!(e.to_string().starts_with(k), "{e}");
        }
    }

    #[test]
    fn demo_tokens_need_the_auth_secret_and_take_a_lifetime() {
        let secret = ("ROOMCAST_AUTH_SECRET", "0123456789abcdef0123456789abcdef");
        assert_eq!(with(&[secret]).unwrap().demo_tokens, None);
        let s = with(&[secret, ("ROOMCAST_DEMO_TOKENS", "true")]).unwrap();
        assert_eq!(s.demo_tokens.unwrap().ttl_s(), 300);
        let s = with(&[
            secret,
            ("ROOMCAST_DEMO_TOKENS", "1"),
            ("ROOMCAST_DEMO_TOKEN_TTL", "90s"),
        ])
        .unwrap();
        assert_eq!(s.demo_tokens.unwrap().ttl_s(), 90);
        assert_eq!(
            with(&[secret, ("ROOMCAST_DEMO_TOKENS", "off")])
                .unwrap()
                .demo_tokens,
            None
        );
        let e = with(&[("ROOMCAST_DEMO_TOKENS", "true")]).unwrap_err();
        assert_eq!(e.name, "ROOMCAST_DEMO_TOKENS");
        assert!(e.problem.contains("ROOMCAST_AUTH_SECRET"));
    }

    #[test]
    fn auth_variables_make_the_verifier_and_errors_never_show_the_secret() {
        let s = with(&[
            ("ROOMCAST_AUTH_SECRET", "0123456789abcdef0123456789abcdef"),
            ("ROOMCAST_AUTH_AUDIENCE", "roomcast"),
            ("ROOMCAST_AUTH_DENY_BY_DEFAULT", "true"),
        ])
        .unwrap();
        let v = s.hub.auth.expect("tokens required");
        assert!(v.enabled() && v.config().deny_by_default);
        assert_eq!(v.config().audience.as_deref(), Some("roomcast"));
        assert!(
            with(&[]).unwrap().hub.auth.is_none(),
            "no key: the open default"
        );

        let e = with(&[("ROOMCAST_AUTH_SECRET", "hunter2-hunter2")]).unwrap_err();
        assert_eq!(e.name, "ROOMCAST_AUTH_SECRET");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        let e = with(&[("ROOMCAST_AUTH_PUBLIC_KEY", "not a key")]).unwrap_err();
        assert_eq!(e.name, "ROOMCAST_AUTH_PUBLIC_KEY");
        let e = with(&[("ROOMCAST_AUTH_ISSUER", "iss")]).unwrap_err();
        assert!(e.problem.contains("need an auth secret"), "{e}");
    }

    #[test]
    fn proxy_variables_read_as_the_native_flags() {
        assert_eq!(with(&[]).unwrap().proxy, None);
        let p = with(&[("ROOMCAST_PROXY_URL", "http://127.0.0.1:9/hooks/")])
            .unwrap()
            .proxy
            .unwrap();
        assert_eq!(p.url, "http://127.0.0.1:9/hooks");
        assert_eq!(p.hooks, PROXY_HOOKS.to_vec());
        assert_eq!((p.timeout_ms, p.max_in_flight), (1000, 256));
        assert!(p.headers.is_empty());
        let p = with(&[
            ("ROOMCAST_PROXY_URL", "https://app.example/rc"),
            ("ROOMCAST_PROXY_HOOKS", "join, rpc"),
            ("ROOMCAST_PROXY_HEADERS", "Cookie, Authorization"),
            ("ROOMCAST_PROXY_TIMEOUT", "500ms"),
            ("ROOMCAST_PROXY_MAX_IN_FLIGHT", "8"),
        ])
        .unwrap()
        .proxy
        .unwrap();
        assert!(p.has("join") && p.has("rpc") && !p.has("connect") && !p.has("disconnect"));
        assert_eq!(
            p.headers,
            vec!["Cookie".to_owned(), "Authorization".to_owned()]
        );
        assert_eq!((p.timeout_ms, p.max_in_flight), (500, 8));
        for (var, value) in [
            ("ROOMCAST_PROXY_URL", "ftp://x"),
            ("ROOMCAST_PROXY_URL", "http://"),
            ("ROOMCAST_PROXY_HOOKS", "join,leave"),
            ("ROOMCAST_PROXY_TIMEOUT", "0s"),
            ("ROOMCAST_PROXY_MAX_IN_FLIGHT", "0"),
        ] {
            let mut vars = vec![(var, value)];
            if var != "ROOMCAST_PROXY_URL" {
                vars.push(("ROOMCAST_PROXY_URL", "http://127.0.0.1:9"));
            }
            assert_eq!(with(&vars).unwrap_err().name, var, "{var}={value}");
        }
    }
}

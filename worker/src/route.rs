//! Which requests the Worker answers itself, and the name of the hub they address.
//!
//! Static files at their own paths never reach this code: the platform's asset layer
//! serves `www/` first. What is left under `/hub/` is either a hub socket
//! (`/hub/{name}/ws`) or the demo page bound to that hub (`/hub/{name}/...`, the files
//! of `www/` under a prefix, so the page can work out its hub from its own address).
//! The name is checked with the same rule as room and user names
//! ([`roomcast_core::protocol::valid_name`]) so a URL cannot create a Durable Object
//! whose name no client could otherwise spell.

use roomcast_core::protocol::valid_name;
use thiserror::Error;

/// Prefix of every hub path.
pub const HUB_PREFIX: &str = "/hub/";
/// The socket's path segment after the hub name.
pub const SOCKET_SEGMENT: &str = "ws";

/// What a request path asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// `/hub/{name}/ws` with a valid, decoded name: the socket of that hub.
    Hub(String),
    /// `/hub/{name}/{rest}`: the static file at `/{rest}` (the demo page for that hub).
    HubPage(String),
    /// `/hub/{name}` without the slash: redirect to `/hub/{name}/`, so the page's
    /// relative asset paths resolve under the prefix.
    HubPageSlash,
    /// A hub path whose name cannot be a hub name: answered 400, like a bad user.
    BadHubName(BadHubName),
    /// Anything else: 404 (the asset layer already had its chance).
    NotFound,
}

/// Why a hub name in a path was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum BadHubName {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding in the hub name")]
    BadPercentEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("hub name is not UTF-8")]
    NotUtf8,
    /// Empty, longer than 128 bytes, or with control characters (PROTOCOL.md "Names").
    #[error("hub name breaks the naming rules (1 to 128 bytes, no control characters)")]
    Invalid,
}

/// Classifies a raw (still percent-encoded) URL path.
///
/// The name is the single path segment after the prefix; a `/` inside a name must
/// arrive encoded as `%2F`, so `/hub/a/b/ws` is file `/b/ws` of hub `a`'s page rather
/// than hub `a/b`, keeping one URL per hub.
pub fn classify(raw_path: &str) -> Route {
    let Some(rest) = raw_path.strip_prefix(HUB_PREFIX) else {
        return Route::NotFound;
    };
    let (raw_name, tail) = match rest.split_once('/') {
        Some((name, tail)) => (name, Some(tail)),
        None if rest.is_empty() => return Route::NotFound,
        None => (rest, None),
    };
    let name = match percent_decode(raw_name) {
        Ok(name) if valid_name(&name) => name,
        Ok(_) => return Route::BadHubName(BadHubName::Invalid),
        Err(e) => return Route::BadHubName(e),
    };
    match tail {
        None => Route::HubPageSlash,
        Some(SOCKET_SEGMENT) => Route::Hub(name),
        Some(file) => Route::HubPage(format!("/{file}")),
    }
}

/// The path of a hub's socket, encoding what a path segment cannot carry as is; the
/// inverse of [`classify`] for documentation, tests and tools.
pub fn hub_path(name: &str) -> String {
    let mut out = String::with_capacity(HUB_PREFIX.len() + name.len() + 3);
    out.push_str(HUB_PREFIX);
    for &b in name.as_bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out.push('/');
    out.push_str(SOCKET_SEGMENT);
    out
}

/// RFC 3986 percent-decoding (no `+` for space: this is a path, not a form).
fn percent_decode(s: &str) -> Result<String, BadHubName> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = |j: usize| bytes.get(j).and_then(|&c| (c as char).to_digit(16));
            match (hex(i + 1), hex(i + 2)) {
                (Some(hi), Some(lo)) => out.push((hi * 16 + lo) as u8),
                _ => return Err(BadHubName::BadPercentEncoding),
            }
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| BadHubName::NotUtf8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_paths() {
        assert_eq!(classify("/hub/lobby/ws"), Route::Hub("lobby".into()));
        assert_eq!(classify("/hub/caf%C3%A9/ws"), Route::Hub("café".into()));
        assert_eq!(classify("/hub/a%2Fb/ws"), Route::Hub("a/b".into()));
        assert_eq!(classify("/hub/a+b/ws"), Route::Hub("a+b".into()));
        assert_eq!(classify(&hub_path("x y/é")), Route::Hub("x y/é".into()));
    }

    #[test]
    fn pages_and_misses() {
        for p in ["/", "/ws", "/hub/", "/hubs/a/ws", "/index.html"] {
            assert_eq!(classify(p), Route::NotFound, "{p}");
        }
        assert_eq!(classify("/hub/a"), Route::HubPageSlash);
        assert_eq!(classify("/hub/a/"), Route::HubPage("/".into()));
        assert_eq!(classify("/hub/a/app.js"), Route::HubPage("/app.js".into()));
        assert_eq!(
            classify("/hub/a/pkg/x.wasm"),
            Route::HubPage("/pkg/x.wasm".into())
        );
        assert_eq!(
            classify("/hub/a/ws-nope"),
            Route::HubPage("/ws-nope".into())
        );
        assert_eq!(classify("/hub/a/b/ws"), Route::HubPage("/b/ws".into()));
        assert_eq!(classify("/hub/a/ws/"), Route::HubPage("/ws/".into()));
    }

    #[test]
    fn bad_names() {
        assert_eq!(classify("/hub//ws"), Route::BadHubName(BadHubName::Invalid));
        assert_eq!(
            classify("/hub/a%01b/ws"),
            Route::BadHubName(BadHubName::Invalid)
        );
        let long = "n".repeat(129);
        assert_eq!(
            classify(&format!("/hub/{long}/ws")),
            Route::BadHubName(BadHubName::Invalid)
        );
        assert_eq!(
            classify(&format!("/hub/{}/ws", &long[1..])),
            Route::Hub(long[1..].to_owned())
        );
        assert_eq!(
            classify("/hub/a%zz/ws"),
            Route::BadHubName(BadHubName::BadPercentEncoding)
        );
        assert_eq!(
            classify("/hub/a%ff/ws"),
            Route::BadHubName(BadHubName::NotUtf8)
        );
    }
}

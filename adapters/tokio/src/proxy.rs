//! [`ProxyHooks`]: the application's hooks answered by an HTTP backend in any language
//! (`--proxy-url`). For each hooked request roomcast POSTs JSON to `URL/join`,
//! `URL/subscribe`, `URL/publish`, `URL/rpc` (and, after the fact, `URL/disconnect`)
//! with `conn`, `user`, `info` and the request's fields; the backend answers 200 with
//! `{}` (allow), `{"error":{"code":C,"message":M}}` (refuse with that code), and
//! optionally `"data"` (publish: the replaced data; rpc: the answer).
//!
//! A backend that is down, slow, answers anything but 200 with a JSON object, or has
//! more requests in flight than `max_in_flight` gets the request refused
//! `unavailable`; nothing waits on it past the timeout, and no connection hangs.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use roomcast_core::hub::{
    disconnect_request, hook_answer, hook_request, Answer, DisconnectReason, HookCaller,
    HookConfig, Question,
};
use serde_json::value::RawValue;
use serde_json::Value;
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::hooks::{Caller, HookFuture, Hooks, PublishRequest};

/// Largest answer read from the backend.
const MAX_ANSWER: usize = 1 << 20;

/// Which hooks go to the backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ProxyHook {
    /// `URL/connect` (with the `--proxy-headers` headers).
    Connect,
    /// `URL/join`.
    Join,
    /// `URL/subscribe`.
    Subscribe,
    /// `URL/publish`.
    Publish,
    /// `URL/rpc`.
    Rpc,
    /// `URL/disconnect` (after the fact, best effort).
    Disconnect,
}

impl ProxyHook {
    /// Every hook, the default of `--proxy-hooks`.
    pub const ALL: [ProxyHook; 6] = [
        ProxyHook::Connect,
        ProxyHook::Join,
        ProxyHook::Subscribe,
        ProxyHook::Publish,
        ProxyHook::Rpc,
        ProxyHook::Disconnect,
    ];

    /// The path segment and flag value.
    pub fn name(self) -> &'static str {
        match self {
            ProxyHook::Connect => "connect",
            ProxyHook::Join => "join",
            ProxyHook::Subscribe => "subscribe",
            ProxyHook::Publish => "publish",
            ProxyHook::Rpc => "rpc",
            ProxyHook::Disconnect => "disconnect",
        }
    }

    /// Reads a flag value.
    pub fn parse(s: &str) -> Result<ProxyHook, ProxyError> {
        ProxyHook::ALL
            .into_iter()
            .find(|h| h.name() == s.trim())
            .ok_or_else(|| ProxyError::UnknownHook(s.to_owned()))
    }
}

/// A proxy configuration that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// Not an `http://` URL (TLS to the backend: put it behind a local proxy).
    #[error("proxy URL {0:?}: give http://HOST[:PORT][/PATH]")]
    BadUrl(String),
    /// Not one of join, subscribe, publish, rpc, disconnect.
    #[error("unknown hook {0:?}: one of connect, join, subscribe, publish, rpc, disconnect")]
    UnknownHook(String),
}

/// Hooks answered by an HTTP backend: see the module docs.
pub struct ProxyHooks {
    client: Client<HttpConnector, Full<Bytes>>,
    /// The base URL, without a trailing slash.
    base: String,
    hooks: BTreeSet<ProxyHook>,
    timeout: Duration,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for ProxyHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProxyHooks")
            .field("base", &self.base)
            .field("hooks", &self.hooks)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ProxyHooks {
    /// Hooks for the backend at `url` (`http://` only), for `hooks`, each call bounded
    /// by `timeout`, at most `max_in_flight` calls at once (past it: `unavailable`).
    pub fn new(
        url: &str,
        hooks: impl IntoIterator<Item = ProxyHook>,
        timeout: Duration,
        max_in_flight: usize,
    ) -> Result<ProxyHooks, ProxyError> {
        let uri: http::Uri = url.parse().map_err(|_| ProxyError::BadUrl(url.into()))?;
        if uri.scheme_str() != Some("http") || uri.host().is_none() {
            return Err(ProxyError::BadUrl(url.into()));
        }
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(timeout));
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(ProxyHooks {
            client,
            base: url.trim_end_matches('/').to_owned(),
            hooks: hooks.into_iter().collect(),
            timeout,
            in_flight: Arc::new(Semaphore::new(max_in_flight.max(1))),
        })
    }

    /// POSTs `body` to `URL/hook` and reads the answer.
    fn call(&self, hook: ProxyHook, body: Value) -> HookFuture<Answer> {
        let Ok(permit) = self.in_flight.clone().try_acquire_owned() else {
            warn!(
                hook = hook.name(),
                "proxy backend busy: refusing unavailable"
            );
            return Box::pin(async { Answer::Unavailable });
        };
        let url = format!("{}/{}", self.base, hook.name());
        let client = self.client.clone();
        let timeout = self.timeout;
        Box::pin(async move {
            let _permit = permit;
            let req = Request::builder()
                .method(Method::POST)
                .uri(&url)
                .header(header::CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(body.to_string())));
            let Ok(req) = req else {
                return Answer::Unavailable;
            };
            let answer = tokio::time::timeout(timeout, async {
                let resp = client.request(req).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = Limited::new(resp.into_body(), MAX_ANSWER)
                    .collect()
                    .await
                    .map_err(|e| e.to_string())?
                    .to_bytes();
                hook_answer(hook.name(), status, &body).map_err(|e| e.to_string())
            })
            .await;
            match answer {
                Ok(Ok(a)) => a,
                Ok(Err(e)) => {
                    warn!(%url, "proxy backend failed: {e}");
                    Answer::Unavailable
                }
                Err(_) => {
                    debug!(%url, "proxy backend too slow");
                    Answer::Unavailable
                }
            }
        })
    }

    /// Asks the backend `question` (the body and the answer's reading are the core's).
    fn ask(&self, hook: ProxyHook, who: &Caller, question: &Question) -> HookFuture<Answer> {
        self.call(hook, hook_request(&caller(who), question))
    }

    fn on(&self, hook: ProxyHook) -> bool {
        self.hooks.contains(&hook)
    }
}

/// The core's view of who is asking.
fn caller(c: &Caller) -> HookCaller<'_> {
    HookCaller {
        wire_id: &c.wire_id,
        user: c.user.as_deref(),
        info: c.info.as_deref(),
    }
}

impl Hooks for ProxyHooks {
    fn decides(&self) -> HookConfig {
        HookConfig {
            connect: self.on(ProxyHook::Connect),
            join: self.on(ProxyHook::Join),
            subscribe: self.on(ProxyHook::Subscribe),
            publish: self.on(ProxyHook::Publish),
            rpc: self.on(ProxyHook::Rpc),
            // the core's deadline is a little later than ours, so the backend's own
            // timeout answers first and is logged
            timeout_ms: u64::try_from(self.timeout.as_millis())
                .unwrap_or(u64::MAX)
                .saturating_add(100),
            ..HookConfig::default()
        }
    }

    fn connect(&self, who: Caller, headers: Vec<(String, String)>) -> HookFuture<Answer> {
        self.ask(ProxyHook::Connect, &who, &Question::Connect { headers })
    }

    fn join(&self, who: Caller, room: String, presence: bool) -> HookFuture<Answer> {
        self.ask(ProxyHook::Join, &who, &Question::Join { room, presence })
    }

    fn subscribe(&self, who: Caller, channel: String) -> HookFuture<Answer> {
        self.ask(ProxyHook::Subscribe, &who, &Question::Subscribe { channel })
    }

    fn publish(&self, who: Caller, p: PublishRequest) -> HookFuture<Answer> {
        let q = Question::Publish {
            target_kind: p.target_kind,
            target: p.target,
            event: p.event,
            data: p.data,
        };
        self.ask(ProxyHook::Publish, &who, &q)
    }

    fn rpc(&self, who: Caller, method: String, data: Option<Box<RawValue>>) -> HookFuture<Answer> {
        self.ask(ProxyHook::Rpc, &who, &Question::Rpc { method, data })
    }

    fn disconnected(&self, who: Caller, reason: DisconnectReason) {
        if !self.on(ProxyHook::Disconnect) {
            return;
        }
        let body = disconnect_request(&caller(&who), reason.as_str());
        let call = self.call(ProxyHook::Disconnect, body);
        tokio::spawn(async move {
            let _ = call.await;
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_and_hook_names_are_checked() {
        assert!(ProxyHooks::new("https://x", ProxyHook::ALL, Duration::from_secs(1), 8).is_err());
        assert!(ProxyHooks::new("x", ProxyHook::ALL, Duration::from_secs(1), 8).is_err());
        assert_eq!(ProxyHook::parse(" rpc"), Ok(ProxyHook::Rpc));
        assert_eq!(ProxyHook::parse("connect"), Ok(ProxyHook::Connect));
        assert!(ProxyHook::parse("hello").is_err());
    }
}

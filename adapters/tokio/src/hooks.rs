//! The application's seat natively: a [`Hooks`] trait an embedding application
//! implements (every method has a default that allows), and [`ProxyHooks`], the same
//! hooks answered by an HTTP backend in any language (`--proxy-url`).
//!
//! The core parks a request the application decides ([`Output::Decide`]); the hub task
//! hands it to the hooks on a task of its own and feeds the answer back
//! ([`Hub::handle_decision`]). A hook that takes too long is the core's business: past
//! [`HookConfig::timeout_ms`] the request is refused `unavailable`, and a late answer is
//! ignored. Nothing a hook does can stall the hub or another connection.
//!
//! [`Output::Decide`]: roomcast_core::hub::Output::Decide
//! [`Hub::handle_decision`]: roomcast_core::hub::Hub::handle_decision

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use roomcast_core::hub::{Answer, ConnId, Decision, DisconnectReason, HookConfig, Question};
use serde_json::value::RawValue;

/// What a hook returns: a boxed future, so hooks can be stored as `dyn Hooks`.
pub type HookFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Who is asking, as a hook sees the connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The hub's handle of the connection (for [`crate::Roomcast::call`]).
    pub conn: ConnId,
    /// Its id as clients see it (`conn` in `welcome` and `from`).
    pub wire_id: String,
    /// Its user (`?user=` or the token's `sub`), if any.
    pub user: Option<String>,
    /// Its token's `info` (a JSON object), if any.
    pub info: Option<String>,
}

/// A publish waiting for the application.
#[derive(Debug, Clone)]
pub struct PublishRequest {
    /// `room`, `channel` or `user`.
    pub target_kind: &'static str,
    /// The room, channel or user.
    pub target: String,
    /// The event name.
    pub event: String,
    /// The raw JSON data, if any.
    pub data: Option<Box<RawValue>>,
}

/// Application code in the decisions the core leaves to it. Implement the methods for
/// the operations you decide and say which in [`Hooks::decides`]; the defaults allow
/// everything (and `rpc` answers `unsupported`). Each method runs on a task of its own,
/// so it may await a database or an HTTP call; the core keeps that connection's later
/// requests in order behind it and serves everyone else meanwhile.
pub trait Hooks: Send + Sync + 'static {
    /// Which operations go through the hooks, and their timeout. Default: join,
    /// subscribe, publish and rpc, 1 s. Leave out what you do not decide: each hooked
    /// request costs a trip through your code.
    fn decides(&self) -> HookConfig {
        HookConfig {
            join: true,
            subscribe: true,
            publish: true,
            rpc: true,
            ..HookConfig::default()
        }
    }

    /// May `caller` come in, and as whom? `headers` are the upgrade headers the server
    /// was told to pass on (`--proxy-headers`, [`crate::Config::hook_headers`]).
    /// [`Answer::admit`] sets its user, `info` and initial rooms; a refusal closes it
    /// 4003. Only asked when [`Hooks::decides`] turns `connect` on (default: off).
    fn connect(&self, caller: Caller, headers: Vec<(String, String)>) -> HookFuture<Answer> {
        let _ = (caller, headers);
        Box::pin(async { Answer::allow() })
    }

    /// May `caller` join `room`? (Caps and limits were checked already.)
    fn join(&self, caller: Caller, room: String, presence: bool) -> HookFuture<Answer> {
        let _ = (caller, room, presence);
        Box::pin(async { Answer::allow() })
    }

    /// May `caller` subscribe to `channel`?
    fn subscribe(&self, caller: Caller, channel: String) -> HookFuture<Answer> {
        let _ = (caller, channel);
        Box::pin(async { Answer::allow() })
    }

    /// May `caller` publish this? [`Answer::with_data`] replaces the message's data
    /// (moderation, enrichment, server timestamps).
    fn publish(&self, caller: Caller, publish: PublishRequest) -> HookFuture<Answer> {
        let _ = (caller, publish);
        Box::pin(async { Answer::allow() })
    }

    /// Answers `caller`'s call of `method` ([`Answer::with_data`] is the reply).
    fn rpc(
        &self,
        caller: Caller,
        method: String,
        data: Option<Box<RawValue>>,
    ) -> HookFuture<Answer> {
        let _ = (caller, data);
        Box::pin(async move { Answer::refuse("unsupported", format!("no method {method:?}")) })
    }

    /// After the fact, best effort: the connection is gone. Never rely on it for
    /// correctness (a crash sends nothing).
    fn disconnected(&self, caller: Caller, reason: DisconnectReason) {
        let _ = (caller, reason);
    }
}

/// Runs the hook that answers `decision`.
pub(crate) fn ask(hooks: &dyn Hooks, decision: Decision) -> HookFuture<Answer> {
    let caller = Caller {
        conn: decision.conn,
        wire_id: decision.wire_id.into(),
        user: decision.user.map(|u| u.to_string()),
        info: decision.info.map(String::from),
    };
    match decision.question {
        Question::Connect { headers } => hooks.connect(caller, headers),
        Question::Join { room, presence } => hooks.join(caller, room, presence),
        Question::Subscribe { channel } => hooks.subscribe(caller, channel),
        Question::Publish {
            target_kind,
            target,
            event,
            data,
        } => hooks.publish(
            caller,
            PublishRequest {
                target_kind,
                target,
                event,
                data,
            },
        ),
        Question::Rpc { method, data } => hooks.rpc(caller, method, data),
        // A question this adapter does not know yet (the enum grows): refused, not hung.
        _ => Box::pin(async { Answer::Unavailable }),
    }
}

/// A [`Hooks`] value shared by every clone of a [`crate::Config`].
#[derive(Clone)]
pub struct SharedHooks(pub(crate) Arc<dyn Hooks>);

impl std::fmt::Debug for SharedHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("SharedHooks")
            .field(&self.0.decides())
            .finish()
    }
}

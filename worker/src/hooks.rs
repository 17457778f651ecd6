//! The application's hooks on the Worker: the same decisions as the native server's
//! `Hooks` (PROTOCOL.md "Application hooks and RPC"), answered either by Rust compiled
//! into the Worker (implement [`EdgeHooks`] and return it from `app::hooks`) or by an
//! HTTP backend reached with `fetch` (`ROOMCAST_PROXY_URL`, the `FetchHooks` of the
//! wasm build).
//!
//! The core parks each hooked request and asks through `Output::Decide`; the Durable
//! Object runs the answer's future while it goes on serving everyone else, and hands
//! the answer back ([`crate::driver::Driver::decided`]). Nothing here blocks: workerd
//! runs one isolate thread, so the futures are not `Send`.

use std::future::Future;
use std::pin::Pin;

use roomcast_core::hub::{Answer, Decision, HookCaller, HookConfig, Question};

/// A future the Durable Object drives to completion (single-threaded: not `Send`).
pub type HookFuture<T> = Pin<Box<dyn Future<Output = T>>>;

/// Who is asking, as hooks see them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    /// The connection's id as clients see it (`conn` in `welcome`).
    pub conn: String,
    /// Its user, if any.
    pub user: Option<String>,
    /// Its `info` (a JSON object's text), if any.
    pub info: Option<String>,
}

impl Caller {
    /// The caller of a parked request.
    pub fn of(d: &Decision) -> Caller {
        Caller {
            conn: d.wire_id.to_string(),
            user: d.user.as_deref().map(str::to_owned),
            info: d.info.as_deref().map(str::to_owned),
        }
    }

    /// The core's view of it (what the hook wire format reads).
    pub fn wire(&self) -> HookCaller<'_> {
        HookCaller {
            wire_id: &self.conn,
            user: self.user.as_deref(),
            info: self.info.as_deref(),
        }
    }
}

/// The application's seat on the Worker. Every method has the default of "nothing to
/// decide", so an implementation names only what it cares about.
pub trait EdgeHooks {
    /// Which operations the hub parks for [`EdgeHooks::decide`], and how long it waits
    /// before refusing them `unavailable`.
    fn decides(&self) -> HookConfig;

    /// Answers one parked request: allow (with replaced data for a publish, the reply
    /// for an rpc, `user`/`info`/`rooms` for a connect), refuse with a code, or
    /// `Unavailable`. `Question` grows with the protocol: match it with a wildcard arm.
    fn decide(&self, caller: Caller, question: Question) -> HookFuture<Answer>;

    /// After the fact and best effort: `caller` is gone, for `reason`
    /// (`DisconnectReason::as_str`). `None`: nothing to run.
    fn disconnected(&self, caller: Caller, reason: &'static str) -> Option<HookFuture<()>> {
        let _ = (caller, reason);
        None
    }
}

/// A connection that left, for [`EdgeHooks::disconnected`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Departure {
    /// Who left.
    pub caller: Caller,
    /// Why (`DisconnectReason::as_str`).
    pub reason: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::hub::{hook_request, Ticket};
    use roomcast_core::ConnId;
    use std::sync::Arc;

    #[test]
    fn a_caller_carries_what_the_hook_body_names() {
        let d = Decision {
            ticket: Ticket(7),
            conn: ConnId::from_u64(3),
            wire_id: "c-3".into(),
            user: Some(Arc::from("ann")),
            info: Some(r#"{"plan":"pro"}"#.into()),
            question: Question::Rpc {
                method: "add".into(),
                data: None,
            },
        };
        let c = Caller::of(&d);
        assert_eq!(c.conn, "c-3");
        let body = hook_request(&c.wire(), &d.question);
        assert_eq!(body["conn"], "c-3");
        assert_eq!(body["user"], "ann");
        assert_eq!(body["info"]["plan"], "pro");
        assert_eq!(body["method"], "add");
    }
}

//! [`FetchHooks`] (wasm32 only): the application's hooks answered by an HTTP backend
//! (`ROOMCAST_PROXY_URL`), reached with the Workers `fetch`. The bodies and the reading
//! of answers are the core's (`roomcast_core::hub::proxy_wire`), so a backend written
//! for the native `--proxy-url` answers the Worker unchanged.
//!
//! A backend that is down, slow, answers anything but 200 with a JSON object, or has
//! more calls in flight than `ROOMCAST_PROXY_MAX_IN_FLIGHT` gets the request refused
//! `unavailable`; a call never outlives `ROOMCAST_PROXY_TIMEOUT`.

use std::cell::Cell;
use std::rc::Rc;
use std::time::Duration;

use futures_util::future::{select, Either};
use roomcast_core::hub::{
    disconnect_request, hook_answer, hook_request, Answer, HookConfig, Question,
};
use serde_json::Value;
use wasm_bindgen::JsValue;
use worker::{console_warn, Delay, Fetch, Headers, Method, Request, RequestInit};

use crate::hooks::{Caller, EdgeHooks, HookFuture};
use crate::settings::ProxySettings;

/// Largest answer read from the backend.
const MAX_ANSWER: usize = 1 << 20;

/// Hooks answered by the backend at `ROOMCAST_PROXY_URL`: see the module docs.
#[derive(Debug)]
pub struct FetchHooks {
    settings: ProxySettings,
    in_flight: Rc<Cell<usize>>,
}

/// Gives its slot back when the call ends, however it ends.
struct Slot(Rc<Cell<usize>>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

impl FetchHooks {
    /// Hooks for the configured backend.
    pub fn new(settings: ProxySettings) -> FetchHooks {
        FetchHooks {
            settings,
            in_flight: Rc::new(Cell::new(0)),
        }
    }

    /// POSTs `body` to `URL/hook`; `None` when the backend is busy, down, slow or
    /// answered something unreadable (logged).
    fn call(&self, hook: &'static str, body: Value) -> HookFuture<Option<Answer>> {
        if self.in_flight.get() >= self.settings.max_in_flight {
            console_warn!("roomcast: proxy backend busy: {hook} refused unavailable");
            return Box::pin(async { None });
        }
        self.in_flight.set(self.in_flight.get() + 1);
        let slot = Slot(self.in_flight.clone());
        let url = format!("{}/{hook}", self.settings.url);
        let timeout = Duration::from_millis(self.settings.timeout_ms);
        Box::pin(async move {
            let _slot = slot;
            let call = Box::pin(post(&url, hook, body.to_string()));
            match select(call, Delay::from(timeout)).await {
                Either::Left((Ok(a), _)) => Some(a),
                Either::Left((Err(e), _)) => {
                    console_warn!("roomcast: proxy backend {url}: {e}");
                    None
                }
                Either::Right(_) => {
                    console_warn!("roomcast: proxy backend {url}: no answer in {timeout:?}");
                    None
                }
            }
        })
    }
}

/// One call: the request, the status and at most [`MAX_ANSWER`] bytes of answer.
async fn post(url: &str, hook: &str, body: String) -> Result<Answer, String> {
    let headers = Headers::new();
    headers
        .set("content-type", "application/json")
        .map_err(|e| e.to_string())?;
    let mut init = RequestInit::new();
    init.with_method(Method::Post)
        .with_headers(headers)
        .with_body(Some(JsValue::from_str(&body)));
    let req = Request::new_with_init(url, &init).map_err(|e| e.to_string())?;
    let mut resp = Fetch::Request(req)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = resp.status_code();
    let bytes = resp.bytes().await.map_err(|e| e.to_string())?;
    if bytes.len() > MAX_ANSWER {
        return Err(format!("an answer of {} bytes", bytes.len()));
    }
    hook_answer(hook, status, &bytes).map_err(|e| e.to_string())
}

impl EdgeHooks for FetchHooks {
    fn decides(&self) -> HookConfig {
        let s = &self.settings;
        HookConfig {
            connect: s.has("connect"),
            join: s.has("join"),
            subscribe: s.has("subscribe"),
            publish: s.has("publish"),
            rpc: s.has("rpc"),
            // the core's deadline a little later than the call's own, so the call's
            // timeout answers first and is logged
            timeout_ms: s.timeout_ms.saturating_add(100),
            ..HookConfig::default()
        }
    }

    fn decide(&self, caller: Caller, question: Question) -> HookFuture<Answer> {
        let body = hook_request(&caller.wire(), &question);
        let call = self.call(question.hook(), body);
        Box::pin(async move { call.await.unwrap_or(Answer::Unavailable) })
    }

    fn disconnected(&self, caller: Caller, reason: &'static str) -> Option<HookFuture<()>> {
        if !self.settings.has("disconnect") {
            return None;
        }
        let call = self.call("disconnect", disconnect_request(&caller.wire(), reason));
        Some(Box::pin(async move {
            let _ = call.await;
        }))
    }
}

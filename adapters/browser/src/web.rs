//! The wasm-bindgen class. Only plumbing: every decision is the core machine's.

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::rc::{Rc, Weak};

use js_sys::{Function, Object, Promise, Reflect, JSON};
use roomcast_core::client::{Client, ClientError, ClientEvent, ClientOutput, ClientState};
use roomcast_core::{protocol, Timestamp};
use wasm_bindgen::prelude::*;
use wasm_bindgen::JsCast;
use web_sys::{CloseEvent, Crypto, MessageEvent, Url, WebSocket};

use crate::glue::{self, JoinOptions, Options, Publish, EVENT_NAMES};

#[wasm_bindgen(typescript_custom_section)]
const TS_TYPES: &'static str = r#"
/** Options of `new RoomcastClient(url, options)`; every field is optional and the
 * defaults are the core's (first retry within 0.5 s, cap 30 s, queue 256, ack 10 s). */
export interface RoomcastOptions {
  /** Identity, sent as `?user=NAME` (the server's open identity mode). */
  user?: string;
  /** A signed token for a server that checks them: a string, or a function (sync or
   * async) called before every (re)connect and when the server says the token is
   * `expiring`, so it can fetch a fresh one from your backend. Sent as the first
   * message (`auth`), never in the URL. A throw or rejection counts as a failed
   * connection attempt (an `error` event with code `token_unavailable`, then a retry). */
  token?: string | (() => string | Promise<string>);
  /** Upper bound of the first retry delay, ms (full jitter: uniform in 0..=this). */
  backoffInitialMs?: number;
  /** Upper bound of any retry delay, ms. */
  backoffMaxMs?: number;
  /** A connection open this long resets the backoff, ms. */
  stableAfterMs?: number;
  /** Publishes kept while offline; past this the oldest are dropped (`dropped` event). */
  offlineQueue?: number;
  /** How long a request waits for its ack before its promise rejects with `timeout`, ms. */
  ackTimeoutMs?: number;
  /** How long a socket may take to open and be welcomed, ms. */
  connectTimeoutMs?: number;
  /** Other nodes of the same service (several servers sharing one Redis): after a failed
   * attempt or a lost connection the client tries the next URL in turn, and recovers
   * what it missed there. Resolved like the main URL. */
  fallbackUrls?: string[];
}

/** Options of `join(room, options)`. */
export interface RoomcastJoinOptions {
  /** Receive this room's `presence` events and a `present` list in the ack: `true` (or
   * `"connections"`) for every connection, `"users"` for every user once (a user's
   * second tab is no news, closing one of two tabs is no departure). */
  presence?: boolean | "connections" | "users";
}

/** A connection as the server shows it. */
export interface RoomcastPeer {
  conn: string;
  user: string | null;
  /** The user's public profile (their token's `info` claim), when they have one. */
  info?: Record<string, unknown>;
}

type RoomcastTarget =
  | { room: string; channel?: never; user?: never }
  | { channel: string; room?: never; user?: never }
  | { user: string; room?: never; channel?: never };

/** Argument of `publish`: exactly one target, an event name, any JSON `data`. */
export type RoomcastPublish = RoomcastTarget & {
  event: string;
  data?: unknown;
  /** Also deliver to this connection (default false). */
  echo?: boolean;
};

/** What a promise resolves with: the server's `ack` (or a local one while offline). */
export interface RoomcastAck {
  type: "ack";
  id?: number;
  room?: string;
  channel?: string;
  /** join: members in the room. */
  members?: number;
  /** join: the room's epoch; room publish: n/a. */
  epoch?: string;
  /** join: the room's latest seq; room publish: the message's seq. */
  seq?: number;
  /** join after a reconnect: whether everything missed was replayed. */
  recovered?: boolean;
  /** join with presence: who is in the room (capped by the server). */
  present?: RoomcastPeer[];
  /** publish: how many connections it was sent to. */
  delivered?: number;
}

/** A delivered message; `room`+`seq`, `channel` or `user` say how it came. */
export interface RoomcastMessage {
  room?: string;
  seq?: number;
  channel?: string;
  user?: string;
  event: string;
  data: unknown;
  /** The sender, or null when the server sent it. */
  from: RoomcastPeer | null;
  /** When the server accepted it, in ms since the Unix epoch (as `Date.now()`). */
  ts?: number;
}

export interface RoomcastPresence { room: string; joined: RoomcastPeer[]; left: RoomcastPeer[] }

/** The connection state. `retryAt` is `Date.now()`-scale ms, for a countdown. */
export type RoomcastState =
  | { state: "connecting" }
  | { state: "open" }
  | { state: "reconnecting"; attempt: number; delayMs: number; retryAt: number }
  | { state: "closed"; code: number | null };

/** Rejection value of every promise and payload of `error`: a protocol error code
 * (`not_member`, `bad_name`, ...) or a client one (`timeout`, `disconnected`, `dropped`,
 * `closed`, `bad_request`). */
export interface RoomcastError extends Error { code: string; id?: number }

export interface RoomcastEventMap {
  message: RoomcastMessage;
  presence: RoomcastPresence;
  state: RoomcastState;
  /** Errors that belong to no pending promise (those reject their promise instead). */
  error: RoomcastError;
  /** After a rejoin: whether every missed room message was replayed. */
  recovered: { room: string; recovered: boolean };
  /** A (new) connection was welcomed; after a reconnect `conn` changes. */
  welcome: { conn: string; user: string | null; info?: Record<string, unknown> };
  /** The server put this connection in a room (a token's `rooms`, the server API, a
   * hook): it is rejoined after a reconnect like your own joins. */
  joined: { type: "joined"; room: string; members: number; epoch: string; seq: number };
  /** The server took this connection out of a room; it is no longer rejoined.
   * `reason`: `server`, `room_removed` or `token_expired`. */
  left: { room: string; reason: string };
  /** Offline publishes dropped because the queue was full (total so far). */
  dropped: { total: number };
  /** The automatic rejoin after a reconnect was acknowledged: `ack` is the server's join
   * ack (members, present list, seq), to refresh what the page shows about the room. */
  rejoined: { room: string; ack: Record<string, unknown> };
}

export interface RoomcastClient {
  /** Adds a handler (once: adding the same function again does nothing). */
  on<K extends keyof RoomcastEventMap>(event: K, handler: (payload: RoomcastEventMap[K]) => void): void;
  /** Removes a handler added with `on`. */
  off<K extends keyof RoomcastEventMap>(event: K, handler: (payload: RoomcastEventMap[K]) => void): void;
}
"#;

#[wasm_bindgen]
extern "C" {
    #[wasm_bindgen(js_name = setTimeout)]
    fn set_timeout(handler: &Function, ms: i32) -> JsValue;
    #[wasm_bindgen(js_name = clearTimeout)]
    fn clear_timeout(handle: &JsValue);
    #[wasm_bindgen(js_name = queueMicrotask)]
    fn queue_microtask(f: &Function);
    #[wasm_bindgen(js_namespace = performance, js_name = now)]
    fn performance_now() -> f64;
    #[wasm_bindgen(js_namespace = console, js_name = error)]
    fn console_error(a: &JsValue, b: &JsValue);

    /// The options object of the constructor, typed for TypeScript only (read as JSON).
    #[wasm_bindgen(typescript_type = "RoomcastOptions")]
    pub type RoomcastOptions;

    /// The options object of `join`, typed for TypeScript only (read as JSON).
    #[wasm_bindgen(typescript_type = "RoomcastJoinOptions")]
    pub type RoomcastJoinOptions;
}

/// The machine's clock: monotonic milliseconds (the core clamps anyway).
fn now() -> Timestamp {
    Timestamp(performance_now().max(0.0) as u64)
}

/// Wall-clock ms, only to date a retry for the page's countdown.
fn wall_now() -> u64 {
    js_sys::Date::now().max(0.0) as u64
}

/// 32 bytes from the platform CSPRNG, so clients that lost the same server do not retry
/// in lockstep. `Math.random` only where `crypto` is missing (never in a browser).
fn seed() -> [u8; 32] {
    let mut s = [0u8; 32];
    let crypto = Reflect::get(&js_sys::global(), &"crypto".into())
        .ok()
        .and_then(|c| c.dyn_into::<Crypto>().ok());
    let ok = crypto.is_some_and(|c| c.get_random_values_with_u8_array(&mut s).is_ok());
    if !ok {
        for b in &mut s {
            *b = (js_sys::Math::random() * 256.0) as u8;
        }
    }
    s
}

/// An `Error` with a `code` (and the request `id`), which is what JS code branches on.
fn js_error(code: &str, message: &str, id: Option<u64>) -> JsValue {
    let e = js_sys::Error::new(message);
    let _ = Reflect::set(&e, &"code".into(), &code.into());
    if let Some(id) = id {
        let _ = Reflect::set(&e, &"id".into(), &(id as f64).into());
    }
    e.into()
}

fn client_error(e: ClientError) -> JsValue {
    let code = match e {
        ClientError::BadName => "bad_name",
        ClientError::BadData => "bad_request",
        ClientError::Closed => "closed",
    };
    js_error(code, &e.to_string(), None)
}

/// A thrown value or rejection reason as text for a `token_unavailable` error.
fn describe(e: &JsValue, fallback: &str) -> String {
    e.dyn_ref::<js_sys::Error>()
        .map(|e| String::from(e.message()))
        .or_else(|| e.as_string())
        .map_or_else(|| fallback.to_owned(), |m| format!("{fallback}: {m}"))
}

/// The `token` option: absent, a string, or a function.
fn token_source(options: Option<&JsValue>) -> Result<Option<TokenSource>, JsValue> {
    let Some(o) = options.filter(|o| o.is_object()) else {
        return Ok(None);
    };
    let t = Reflect::get(o, &"token".into()).unwrap_or(JsValue::UNDEFINED);
    if t.is_undefined() || t.is_null() {
        Ok(None)
    } else if let Some(s) = t.as_string() {
        Ok(Some(TokenSource::Fixed(s)))
    } else if let Some(f) = t.dyn_ref::<Function>() {
        Ok(Some(TokenSource::Call(f.clone())))
    } else {
        Err(type_error("token must be a string or a function"))
    }
}

fn type_error(message: &str) -> JsValue {
    js_sys::TypeError::new(message).into()
}

/// `JSON.stringify(v)` for an options object; `None` for `undefined`/`null`.
fn stringify_opt(v: Option<&JsValue>) -> Result<Option<String>, String> {
    let Some(v) = v.filter(|v| !v.is_undefined() && !v.is_null()) else {
        return Ok(None);
    };
    if !v.is_object() {
        return Err("options must be an object".into());
    }
    JSON::stringify(v)
        .map_err(|_| "options are not JSON-serializable".to_owned())
        .map(|s| s.as_string())
}

/// Resolves `url` against the page (so `"/ws"` works) and turns `http(s):` into
/// `ws(s):`, then adds `?user=`.
fn resolve_url(url: &str, user: Option<&str>) -> Result<String, JsValue> {
    let base = Reflect::get(&js_sys::global(), &"location".into())
        .ok()
        .filter(|l| l.is_object())
        .and_then(|l| Reflect::get(&l, &"href".into()).ok())
        .and_then(|h| h.as_string());
    let parsed = match &base {
        Some(b) => Url::new_with_base(url, b),
        None => Url::new(url),
    }
    .map_err(|_| type_error(&format!("invalid WebSocket URL: {url}")))?;
    match parsed.protocol().as_str() {
        "ws:" | "wss:" => {}
        "http:" => parsed.set_protocol("ws:"),
        "https:" => parsed.set_protocol("wss:"),
        other => {
            return Err(type_error(&format!(
                "a WebSocket URL needs ws:, wss:, http: or https:, not {other}"
            )))
        }
    }
    parsed.set_hash("");
    if let Some(user) = user {
        parsed.search_params().set("user", user);
    }
    Ok(parsed.href())
}

/// One WebSocket and the callbacks that feed it to the machine, detached and closed
/// when dropped so a socket the machine gave up on cannot call into freed closures.
struct Socket {
    ws: WebSocket,
    _onopen: Closure<dyn Fn()>,
    _onmessage: Closure<dyn Fn(MessageEvent)>,
    _onclose: Closure<dyn Fn(CloseEvent)>,
}

impl Drop for Socket {
    fn drop(&mut self) {
        self.ws.set_onopen(None);
        self.ws.set_onmessage(None);
        self.ws.set_onclose(None);
        let _ = self.ws.close();
    }
}

/// Where tokens come from: the `token` option.
enum TokenSource {
    Fixed(String),
    Call(Function),
}

struct Inner {
    machine: RefCell<Client>,
    tokens: Option<TokenSource>,
    sockets: RefCell<BTreeMap<u64, Socket>>,
    /// Promise settlers by request id.
    pending: RefCell<BTreeMap<u64, (Function, Function)>>,
    handlers: RefCell<Vec<(&'static str, Function)>>,
    timer: RefCell<Option<JsValue>>,
    timer_cb: Closure<dyn Fn()>,
    /// Set while outputs are drained: a handler that calls back into the client only
    /// queues work, which the running drain then picks up in order.
    driving: Cell<bool>,
    retry_at: Cell<Option<u64>>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        if let Some(h) = self.timer.get_mut().take() {
            clear_timeout(&h);
        }
    }
}

impl Inner {
    /// Drains the machine's outputs, then re-arms the one timer from `poll_timeout()`.
    /// Called after every input.
    fn drive(self: &Rc<Self>) {
        if self.driving.replace(true) {
            return;
        }
        loop {
            let out = self.machine.borrow_mut().poll_output();
            let Some(out) = out else { break };
            match out {
                ClientOutput::Connect { socket, url } => self.connect(socket, &url),
                ClientOutput::Send { socket, text } => {
                    let sockets = self.sockets.borrow();
                    if let Some(s) = sockets.get(&socket) {
                        // a socket that died meanwhile: its close event tells the machine
                        let _ = s.ws.send_with_str(&text);
                    }
                }
                ClientOutput::Close {
                    socket,
                    code,
                    reason,
                } => {
                    let s = self.sockets.borrow_mut().remove(&socket);
                    if let Some(s) = s {
                        let _ = s.ws.close_with_code_and_reason(code, &reason);
                    }
                }
                ClientOutput::FetchToken { ticket } => self.fetch_token(ticket),
                ClientOutput::Event(e) => self.dispatch(e),
            }
        }
        self.driving.set(false);
        self.rearm();
    }

    /// Answers a token ticket: a fixed token at once (the running drain picks up the
    /// machine's next outputs), a function's result when its promise settles.
    fn fetch_token(self: &Rc<Self>, ticket: u64) {
        let called = match &self.tokens {
            None => Err("no token option".to_owned()),
            Some(TokenSource::Fixed(t)) => {
                self.machine
                    .borrow_mut()
                    .handle_token(now(), ticket, Ok(t.clone()));
                return;
            }
            Some(TokenSource::Call(f)) => f
                .call0(&JsValue::UNDEFINED)
                .map_err(|e| describe(&e, "the token function threw")),
        };
        let value = match called {
            Ok(v) => v,
            Err(m) => {
                self.machine
                    .borrow_mut()
                    .handle_token(now(), ticket, Err(m));
                return;
            }
        };
        // Promise.resolve also takes a plain string, so sync and async functions meet
        // here, and the answer always arrives on a later task, never inside this drain.
        let settled = wasm_bindgen_futures::JsFuture::from(Promise::resolve(&value));
        let w = Rc::downgrade(self);
        wasm_bindgen_futures::spawn_local(async move {
            let answer = match settled.await {
                Ok(v) => v
                    .as_string()
                    .ok_or_else(|| "the token function must give a string".to_owned()),
                Err(e) => Err(describe(&e, "the token function's promise rejected")),
            };
            if let Some(i) = w.upgrade() {
                i.machine.borrow_mut().handle_token(now(), ticket, answer);
                i.drive();
            }
        });
    }

    fn rearm(&self) {
        if let Some(h) = self.timer.borrow_mut().take() {
            clear_timeout(&h);
        }
        let deadline = self.machine.borrow().poll_timeout();
        if let Some(t) = deadline {
            let delay = t.0.saturating_sub(now().0).min(i32::MAX as u64) as i32;
            let h = set_timeout(self.timer_cb.as_ref().unchecked_ref(), delay);
            *self.timer.borrow_mut() = Some(h);
        }
    }

    fn connect(self: &Rc<Self>, socket: u64, url: &str) {
        let ws = match WebSocket::new(url) {
            Ok(ws) => ws,
            Err(_) => {
                // refused before any network: the machine treats it as a failed attempt
                self.machine
                    .borrow_mut()
                    .handle_close(now(), socket, Some(1006));
                return;
            }
        };
        let weak: Weak<Inner> = Rc::downgrade(self);
        let w = weak.clone();
        let onopen = Closure::<dyn Fn()>::new(move || {
            if let Some(i) = w.upgrade() {
                i.machine.borrow_mut().handle_open(now(), socket);
                i.drive();
            }
        });
        let w = weak.clone();
        let onmessage = Closure::<dyn Fn(MessageEvent)>::new(move |ev: MessageEvent| {
            // binary messages are not part of protocol v1: ignored
            if let (Some(i), Some(text)) = (w.upgrade(), ev.data().as_string()) {
                i.machine.borrow_mut().handle_message(now(), socket, &text);
                i.drive();
            }
        });
        let w = weak;
        let onclose = Closure::<dyn Fn(CloseEvent)>::new(move |ev: CloseEvent| {
            if let Some(i) = w.upgrade() {
                i.machine
                    .borrow_mut()
                    .handle_close(now(), socket, Some(ev.code()));
                let gone = i.sockets.borrow_mut().remove(&socket);
                drop(gone);
                i.drive();
            }
        });
        ws.set_onopen(Some(onopen.as_ref().unchecked_ref()));
        ws.set_onmessage(Some(onmessage.as_ref().unchecked_ref()));
        ws.set_onclose(Some(onclose.as_ref().unchecked_ref()));
        self.sockets.borrow_mut().insert(
            socket,
            Socket {
                ws,
                _onopen: onopen,
                _onmessage: onmessage,
                _onclose: onclose,
            },
        );
    }

    fn dispatch(&self, e: ClientEvent) {
        let wall = wall_now();
        let (name, json) = glue::event_payload(&e, wall);
        match e {
            ClientEvent::State(ClientState::Reconnecting { delay_ms, .. }) => {
                self.retry_at.set(Some(wall.saturating_add(delay_ms)));
            }
            ClientEvent::State(ClientState::Closed { .. }) => {
                self.retry_at.set(None);
                // Closed for good: nothing can settle the rest any more (the machine does
                // not fail a join it never sent), and a promise must not hang forever.
                let orphans = std::mem::take(&mut *self.pending.borrow_mut());
                for (id, (_, reject)) in orphans {
                    let err = js_error("closed", "client closed", Some(id));
                    let _ = reject.call1(&JsValue::UNDEFINED, &err);
                }
            }
            ClientEvent::State(_) => self.retry_at.set(None),
            ClientEvent::Ack { id, .. } => {
                let settle = self.pending.borrow_mut().remove(&id);
                if let Some((resolve, _)) = settle {
                    let ack = JSON::parse(&json).unwrap_or(JsValue::NULL);
                    let _ = resolve.call1(&JsValue::UNDEFINED, &ack);
                }
                return;
            }
            ClientEvent::Error { id, code, message } => {
                let err = js_error(&code, &message, id);
                let settle = id.and_then(|id| self.pending.borrow_mut().remove(&id));
                match settle {
                    Some((_, reject)) => {
                        let _ = reject.call1(&JsValue::UNDEFINED, &err);
                    }
                    None => self.emit("error", &err),
                }
                return;
            }
            _ => {}
        }
        let payload = JSON::parse(&json).unwrap_or(JsValue::NULL);
        self.emit(name, &payload);
    }

    fn emit(&self, name: &str, payload: &JsValue) {
        // a copy, so a handler may call on/off while we iterate
        let targets: Vec<Function> = self
            .handlers
            .borrow()
            .iter()
            .filter(|(n, _)| *n == name)
            .map(|(_, f)| f.clone())
            .collect();
        for f in targets {
            if let Err(e) = f.call1(&JsValue::UNDEFINED, payload) {
                // one broken handler must not stop the client or the other handlers
                console_error(&format!("roomcast: a '{name}' handler threw").into(), &e);
            }
        }
    }

    /// A Promise settled by the ack or error of request `id` (or rejected right away
    /// for a caller mistake).
    fn request(self: &Rc<Self>, r: Result<u64, JsValue>) -> Promise {
        let id = match r {
            Ok(id) => id,
            Err(e) => {
                self.drive();
                return Promise::reject(&e);
            }
        };
        let mut settlers = None;
        let p = Promise::new(&mut |resolve, reject| settlers = Some((resolve, reject)));
        if let Some(s) = settlers {
            self.pending.borrow_mut().insert(id, s);
        }
        self.drive();
        p
    }
}

/// A reconnecting roomcast connection: rooms, channels and subscriptions survive server
/// restarts and network changes, missed room messages are replayed exactly once, and
/// publishes made while offline are sent after the rejoin.
#[wasm_bindgen]
pub struct RoomcastClient {
    inner: Rc<Inner>,
}

#[wasm_bindgen]
impl RoomcastClient {
    /// Starts connecting at once. `url` may be relative to the page (`"/ws"`) and may use
    /// `http(s):`; `options.user` is sent as `?user=`. Throws a `TypeError` for a bad URL,
    /// user name or option, since retrying could never fix those.
    #[wasm_bindgen(constructor)]
    pub fn new(url: &str, options: Option<RoomcastOptions>) -> Result<RoomcastClient, JsValue> {
        let tokens = token_source(options.as_ref().map(AsRef::as_ref))?;
        let text =
            stringify_opt(options.as_ref().map(AsRef::as_ref)).map_err(|m| type_error(&m))?;
        let options = Options::parse(text.as_deref()).map_err(|m| type_error(&m))?;
        if let Some(u) = &options.user {
            if !protocol::valid_name(u) {
                return Err(type_error(
                    "user must be 1 to 128 bytes with no control characters",
                ));
            }
        }
        let url = resolve_url(url, options.user.as_deref())?;
        let mut options = options;
        options.fallback_urls = std::mem::take(&mut options.fallback_urls)
            .iter()
            .map(|u| resolve_url(u, options.user.as_deref()))
            .collect::<Result<_, _>>()?;
        let machine = Client::new(options.into_config(url, tokens.is_some()), seed(), now());
        let inner = Rc::new_cyclic(|weak: &Weak<Inner>| {
            let w = weak.clone();
            Inner {
                machine: RefCell::new(machine),
                tokens,
                sockets: RefCell::new(BTreeMap::new()),
                pending: RefCell::new(BTreeMap::new()),
                handlers: RefCell::new(Vec::new()),
                timer: RefCell::new(None),
                timer_cb: Closure::<dyn Fn()>::new(move || {
                    if let Some(i) = w.upgrade() {
                        i.timer.borrow_mut().take();
                        i.machine.borrow_mut().handle_timeout(now());
                        i.drive();
                    }
                }),
                driving: Cell::new(false),
                retry_at: Cell::new(None),
            }
        });
        // Start on the next microtask, so handlers added right after `new` see the
        // first `state` event.
        let w = Rc::downgrade(&inner);
        let start: Function = Closure::once_into_js(move || {
            if let Some(i) = w.upgrade() {
                i.drive();
            }
        })
        .unchecked_into();
        queue_microtask(&start);
        Ok(RoomcastClient { inner })
    }

    /// Joins `room` now, or as soon as connected, and keeps it joined across reconnects
    /// (rejoining with the last seq seen, so missed messages are replayed).
    #[wasm_bindgen(unchecked_return_type = "Promise<RoomcastAck>")]
    pub fn join(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] room: JsValue,
        options: Option<RoomcastJoinOptions>,
    ) -> Promise {
        let r = (|| {
            let room = room
                .as_string()
                .ok_or_else(|| js_error("bad_request", "room must be a string", None))?;
            let opts = stringify_opt(options.as_ref().map(AsRef::as_ref))
                .and_then(|t| JoinOptions::parse(t.as_deref()))
                .map_err(|m| js_error("bad_request", &m, None))?;
            self.inner
                .machine
                .borrow_mut()
                .join(&room, opts.presence())
                .map_err(client_error)
        })();
        self.inner.request(r)
    }

    /// Leaves `room`; it is no longer rejoined.
    #[wasm_bindgen(unchecked_return_type = "Promise<RoomcastAck>")]
    pub fn leave(&self, #[wasm_bindgen(unchecked_param_type = "string")] room: JsValue) -> Promise {
        self.named_request(room, "room", Client::leave)
    }

    /// Subscribes to `channel` and keeps the subscription across reconnects.
    #[wasm_bindgen(unchecked_return_type = "Promise<RoomcastAck>")]
    pub fn subscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] channel: JsValue,
    ) -> Promise {
        self.named_request(channel, "channel", Client::subscribe)
    }

    /// Unsubscribes from `channel`.
    #[wasm_bindgen(unchecked_return_type = "Promise<RoomcastAck>")]
    pub fn unsubscribe(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] channel: JsValue,
    ) -> Promise {
        self.named_request(channel, "channel", Client::unsubscribe)
    }

    /// Publishes `{ room | channel | user, event, data, echo }`. While offline it is
    /// queued (bounded) and sent after the rejoin; if the connection drops after it was
    /// sent but before its ack, the promise rejects with `disconnected` rather than risk
    /// a silent duplicate: resend with an idempotency key in `data` if it matters.
    #[wasm_bindgen(unchecked_return_type = "Promise<RoomcastAck>")]
    pub fn publish(
        &self,
        #[wasm_bindgen(unchecked_param_type = "RoomcastPublish")] message: JsValue,
    ) -> Promise {
        let r = (|| {
            let text = stringify_opt(Some(&message))
                .map_err(|m| js_error("bad_request", &m, None))?
                .ok_or_else(|| js_error("bad_request", "publish needs an object", None))?;
            let p = Publish::parse(&text).map_err(|m| js_error("bad_request", &m, None))?;
            self.inner
                .machine
                .borrow_mut()
                .publish(p.target, &p.event, p.data.as_deref(), p.echo)
                .map_err(client_error)
        })();
        self.inner.request(r)
    }

    /// Calls `method` on the server's application (an rpc hook) with any JSON `data`;
    /// resolves with its answer. Rejects with the application's own error code when it
    /// refuses, `unsupported` when the server answers no rpc, `unavailable` when the
    /// application did not answer in time, and `disconnected` if the connection dropped
    /// after the call was sent (it may or may not have run). Queued while offline.
    #[wasm_bindgen(unchecked_return_type = "Promise<unknown>")]
    pub fn rpc(
        &self,
        #[wasm_bindgen(unchecked_param_type = "string")] method: JsValue,
        data: JsValue,
    ) -> Promise {
        let r = (|| {
            let method = method
                .as_string()
                .ok_or_else(|| js_error("bad_request", "method must be a string", None))?;
            let data = if data.is_undefined() {
                None
            } else {
                let text = JSON::stringify(&data)
                    .ok()
                    .and_then(|s| s.as_string())
                    .ok_or_else(|| {
                        js_error("bad_request", "data is not JSON-serializable", None)
                    })?;
                Some(text)
            };
            self.inner
                .machine
                .borrow_mut()
                .rpc(&method, data.as_deref())
                .map_err(client_error)
        })();
        let acked = wasm_bindgen_futures::JsFuture::from(self.inner.request(r));
        wasm_bindgen_futures::future_to_promise(async move {
            let ack = acked.await?;
            let data = Reflect::get(&ack, &"data".into()).unwrap_or(JsValue::NULL);
            Ok(if data.is_undefined() {
                JsValue::NULL
            } else {
                data
            })
        })
    }

    /// Adds an event handler; see `RoomcastEventMap` for the names and payloads.
    #[wasm_bindgen(skip_typescript)]
    pub fn on(&self, event: &str, handler: JsValue) -> Result<(), JsValue> {
        let (name, f) = check_handler(event, handler)?;
        let mut hs = self.inner.handlers.borrow_mut();
        if !hs
            .iter()
            .any(|(n, g)| *n == name && Object::is(g.as_ref(), f.as_ref()))
        {
            hs.push((name, f));
        }
        Ok(())
    }

    /// Removes a handler added with `on`.
    #[wasm_bindgen(skip_typescript)]
    pub fn off(&self, event: &str, handler: JsValue) -> Result<(), JsValue> {
        let (name, f) = check_handler(event, handler)?;
        self.inner
            .handlers
            .borrow_mut()
            .retain(|(n, g)| !(*n == name && Object::is(g.as_ref(), f.as_ref())));
        Ok(())
    }

    /// The connection state, as in the `state` event.
    #[wasm_bindgen(getter, unchecked_return_type = "RoomcastState")]
    pub fn state(&self) -> JsValue {
        let json = glue::state_json(
            self.inner.machine.borrow().state(),
            self.inner.retry_at.get(),
        );
        JSON::parse(&json).unwrap_or(JsValue::NULL)
    }

    /// Closes for good (no reconnect); pending promises reject with `closed`. Keep a
    /// reference to a client you use: an unreferenced one is garbage-collected, which
    /// closes it too.
    pub fn close(&self) {
        self.inner.machine.borrow_mut().close();
        self.inner.drive();
    }
}

/// `free()`, `[Symbol.dispose]()` and the garbage collector (an unreferenced client is
/// finalized by wasm-bindgen) all end here: close properly, so the socket gets a 1000 and
/// pending promises reject with `closed` instead of hanging.
impl Drop for RoomcastClient {
    fn drop(&mut self) {
        self.inner.machine.borrow_mut().close();
        self.inner.drive();
    }
}

fn check_handler(event: &str, handler: JsValue) -> Result<(&'static str, Function), JsValue> {
    let name = EVENT_NAMES
        .iter()
        .copied()
        .find(|n| *n == event)
        .ok_or_else(|| {
            type_error(&format!(
                "unknown event {event:?}; one of {}",
                EVENT_NAMES.join(", ")
            ))
        })?;
    let f = handler
        .dyn_into::<Function>()
        .map_err(|_| type_error("handler must be a function"))?;
    Ok((name, f))
}

impl RoomcastClient {
    /// A request whose only argument is a room or channel name: checks it is a string,
    /// runs the machine's method, and settles the promise with its ack or error.
    fn named_request(
        &self,
        name: JsValue,
        what: &str,
        call: fn(&mut Client, &str) -> Result<u64, ClientError>,
    ) -> Promise {
        let r = match name.as_string() {
            Some(n) => call(&mut self.inner.machine.borrow_mut(), &n).map_err(client_error),
            None => Err(js_error(
                "bad_request",
                &format!("{what} must be a string"),
                None,
            )),
        };
        self.inner.request(r)
    }
}

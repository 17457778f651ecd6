//! The platform glue (wasm32 only): the Worker's `fetch`, the [`HubObject`] Durable
//! Object, and the [`Sockets`] / [`Store`] implementations over workerd's hibernatable
//! WebSockets and the object's SQLite storage.
//!
//! Every handler follows the same shape: read the time, borrow the [`Live`] state
//! (restoring it first if the object was evicted), feed one input, flush, release the
//! borrow, and only then await storage (the alarm). The `RefCell` is never borrowed
//! across an `.await`, so interleaved events cannot observe a half-applied input.

use std::cell::{Cell, RefCell, RefMut};
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;

use futures_util::stream::{FuturesUnordered, StreamExt};

use roomcast_core::api::{self, ApiRequest, ApiResponse};
use roomcast_core::auth::{demo_token_answer, AuthError};
use roomcast_core::close;
use roomcast_core::handshake::{self, Reject, RejectReason};
use roomcast_core::hub::{
    Answer, ConnId, ConnectError, ConnectRequest, HistoryConfig, HistorySnapshot, RoomSnapshot,
    Ticket,
};
use roomcast_core::protocol::{HEARTBEAT_PING, HEARTBEAT_PONG};
use roomcast_core::Timestamp;
use serde::Deserialize;
use wasm_bindgen::JsValue;
use worker::{
    console_error, console_warn, durable_object, event, Context, Date, DurableObject, Env, Headers,
    Request, RequestInit, Response, Result, ScheduledTime, SqlStorage, SqlStorageValue, State,
    WebSocket, WebSocketIncomingMessage, WebSocketPair, WebSocketRequestResponsePair,
};

use crate::attachment;
use crate::driver::{
    Driver, SavedSocket, SocketError, Sockets, Store, StoreError, StoredMessage, CLOSE_STATE_LOST,
};
use crate::hooks::{Caller, EdgeHooks, HookFuture};
use crate::route::{self, Route};
use crate::settings::{Settings, SettingsError};

/// The Durable Object namespace binding in `wrangler.toml`.
const HUB_BINDING: &str = "HUB";
/// The static assets binding in `wrangler.toml`.
const ASSETS_BINDING: &str = "ASSETS";

fn now() -> Timestamp {
    Timestamp(Date::now().as_millis())
}

/// Reads a Worker variable as text: `[vars]` values may be TOML numbers, which arrive
/// as JSON rather than strings, and must not be silently ignored.
fn read_var(env: &Env, name: &str) -> Option<String> {
    if let Ok(v) = env.var(name) {
        return Some(v.to_string());
    }
    match env.object_var::<serde_json::Value>(name).ok()? {
        serde_json::Value::String(s) => Some(s),
        other => Some(other.to_string()),
    }
}

fn read_settings(env: &Env) -> std::result::Result<Settings, SettingsError> {
    Settings::from_vars(|name| read_var(env, name))
}

fn reject(r: &Reject) -> Result<Response> {
    let mut resp = Response::error(format!("{}\n", r.reason.message()), r.status)?;
    if r.status == 426 {
        resp.headers_mut().set("Sec-WebSocket-Version", "13")?;
    }
    Ok(resp)
}

fn misconfigured(e: &SettingsError) -> Result<Response> {
    console_error!("roomcast: bad configuration: {e}");
    Response::error(format!("roomcast is misconfigured: {e}\n"), 500)
}

/// The upgrade request as the core's handshake rules see it.
///
/// workerd only hands over requests it parsed as HTTP/1.1 (or terminated HTTP/2 and 3
/// as such), and may drop the hop-by-hop `Connection` header; its `Upgrade` header is
/// what makes a request upgradable at all, so a missing `Connection` is restored.
fn core_request(req: &Request) -> Result<handshake::Request> {
    let url = req.url()?;
    let target = match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_owned(),
    };
    let mut headers: Vec<(String, String)> = req.headers().entries().collect();
    if !headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("connection"))
    {
        headers.push(("connection".to_owned(), "upgrade".to_owned()));
    }
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("host")) {
        if let Some(host) = url.host_str() {
            headers.push(("host".to_owned(), host.to_owned()));
        }
    }
    Ok(handshake::Request::from_parts(
        req.method().as_ref(),
        &target,
        1,
        headers,
    ))
}

/// The Worker: hub sockets go to their Durable Object, `/hub/{name}/...` pages to the
/// static assets under that prefix; everything else missed the assets and is a 404.
#[event(fetch)]
async fn fetch(req: Request, env: Env, _ctx: Context) -> Result<Response> {
    let url = req.url()?;
    let upgrade = req
        .headers()
        .get("upgrade")?
        .is_some_and(|u| u.eq_ignore_ascii_case("websocket"));
    let name = match route::classify(url.path()) {
        Route::Hub(name) => name,
        Route::BadHubName(e) => return Response::error(format!("{e}\n"), 400),
        Route::NotFound => return reject(&Reject::new(404, RejectReason::NotFound)),
        // a socket on any other path is a wrong path, as on the native server
        Route::HubPage(_) | Route::HubPageSlash if upgrade => {
            return reject(&Reject::new(404, RejectReason::NotFound))
        }
        Route::HubPageSlash => {
            let mut to = url.clone();
            to.set_path(&format!("{}/", url.path()));
            return Response::redirect_with_status(to, 308);
        }
        Route::HubPage(file) if is_api(&file) => {
            // The key is checked here, before the Durable Object is woken.
            let key = match read_settings(&env) {
                Ok(s) => s.api_key,
                Err(e) => return misconfigured(&e),
            };
            if let Some(refused) = api_refusal(&req, key.as_deref())? {
                return Ok(refused);
            }
            let stub = env
                .durable_object(HUB_BINDING)?
                .id_from_name(&name_of(&url))?
                .get_stub()?;
            return stub.fetch_with_request(req).await;
        }
        Route::HubPage(file) if file == "/demo/token" => {
            let demo = match read_settings(&env) {
                Ok(s) => s.demo_tokens,
                Err(e) => return misconfigured(&e),
            };
            let a = demo_token_answer(demo.as_ref(), url.query(), now().as_millis());
            let headers = Headers::new();
            headers.set("cache-control", "no-store")?;
            if a.status == 204 {
                return Ok(Response::empty()?.with_status(204).with_headers(headers));
            }
            headers.set("content-type", "application/json")?;
            return Ok(Response::ok(a.body)?
                .with_status(a.status)
                .with_headers(headers));
        }
        Route::HubPage(file) => {
            let mut to = url.clone();
            to.set_path(&file);
            let init = RequestInit {
                method: req.method(),
                headers: req.headers().clone(),
                ..RequestInit::default()
            };
            return env
                .assets(ASSETS_BINDING)?
                .fetch(to.as_str(), Some(init))
                .await;
        }
    };
    let settings = match read_settings(&env) {
        Ok(s) => s,
        Err(e) => return misconfigured(&e),
    };
    // Refuse bad handshakes here, without waking the hub: a bad token in the URL too
    // (the Durable Object checks it again, with the same core: nothing the Worker could
    // pass along would be harder to forge than the token itself).
    let core_req = core_request(&req)?;
    if let Err(r) = handshake::accept(&core_req, &settings.policy) {
        return reject(&r);
    }
    if let Some(v) = settings.hub.auth.as_ref().filter(|v| v.enabled()) {
        if let Some(token) = core_req.query_param("token") {
            let refused = match token {
                Ok(t) => v.connection(&t, now().as_millis()).err(),
                Err(_) => Some(AuthError::Malformed),
            };
            if refused.is_some() {
                return reject(&Reject::new(401, RejectReason::Unauthorized));
            }
        }
    }
    let stub = env
        .durable_object(HUB_BINDING)?
        .id_from_name(&name)?
        .get_stub()?;
    stub.fetch_with_request(req).await
}

/// What an awake object holds; dropped by an eviction and rebuilt by [`HubObject::live`].
struct Live {
    driver: Driver,
    sockets: SocketMap,
}

/// The open sockets by connection (the tags give the way back).
struct SocketMap(HashMap<ConnId, WebSocket>);

impl Sockets for SocketMap {
    fn send(&mut self, conn: ConnId, text: &str) -> std::result::Result<(), SocketError> {
        let ws = self
            .0
            .get(&conn)
            .ok_or_else(|| SocketError("no socket".into()))?;
        ws.send_with_str(text)
            .map_err(|e| SocketError(e.to_string()))
    }

    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        if let Some(ws) = self.0.get(&conn) {
            if let Err(e) = ws.close(Some(code), Some(reason)) {
                console_warn!("roomcast: close {conn}: {e}");
            }
        }
    }

    fn attach(&mut self, conn: ConnId, value: &str) -> std::result::Result<(), SocketError> {
        let ws = self
            .0
            .get(&conn)
            .ok_or_else(|| SocketError("no socket".into()))?;
        ws.serialize_attachment(value)
            .map_err(|e| SocketError(e.to_string()))
    }

    fn forget(&mut self, conn: ConnId) {
        self.0.remove(&conn);
    }
}

/// The object's SQLite storage; the schema and statements are in `sql.rs`.
struct SqlStore(SqlStorage);

// The statements, shared with the host tests that run them against SQLite.
#[path = "sql.rs"]
mod sql;
use sql::SCHEMA;

fn int(v: u64) -> SqlStorageValue {
    // seqs and millisecond times stay far below 2^53
    SqlStorageValue::Integer(v.min(i64::MAX as u64) as i64)
}

fn store_err(e: worker::Error) -> StoreError {
    StoreError(e.to_string())
}

#[derive(Deserialize)]
struct RoomRow {
    name: String,
    epoch: String,
    seq: f64,
}

#[derive(Deserialize)]
struct HistoryRow {
    room: String,
    seq: f64,
    at: f64,
    text: String,
}

#[derive(Deserialize)]
struct ConnRow {
    id: String,
    snapshot: String,
}

impl SqlStore {
    fn run(&self, query: &str, args: Vec<SqlStorageValue>) -> std::result::Result<(), StoreError> {
        self.0.exec(query, args).map(drop).map_err(store_err)
    }

    fn create_schema(&self) -> std::result::Result<(), StoreError> {
        SCHEMA.iter().try_for_each(|q| self.run(q, Vec::new()))
    }
}

impl Store for SqlStore {
    fn save_room(
        &mut self,
        room: &str,
        epoch: &str,
        seq: u64,
    ) -> std::result::Result<(), StoreError> {
        self.run(sql::SAVE_ROOM, vec![room.into(), epoch.into(), int(seq)])
    }

    fn save_message(
        &mut self,
        msg: &StoredMessage<'_>,
        history: &HistoryConfig,
    ) -> std::result::Result<(), StoreError> {
        if msg.seq == 1 {
            self.run(sql::CLEAR_HISTORY, vec![msg.room.into()])?;
        }
        self.save_room(msg.room, msg.epoch, msg.seq)?;
        if history.max_messages > 0 {
            self.run(
                sql::SAVE_MESSAGE,
                vec![msg.room.into(), int(msg.seq), int(msg.at), msg.text.into()],
            )?;
        }
        let (seq_bound, at_bound) = sql::prune_bounds(msg.seq, msg.at, history);
        self.run(
            sql::PRUNE_HISTORY,
            vec![msg.room.into(), int(seq_bound), int(at_bound)],
        )
    }

    fn delete_room(&mut self, room: &str) -> std::result::Result<(), StoreError> {
        self.run(sql::CLEAR_HISTORY, vec![room.into()])?;
        self.run(sql::DELETE_ROOM, vec![room.into()])
    }

    fn load_rooms(&mut self) -> std::result::Result<Vec<RoomSnapshot>, StoreError> {
        let rooms: Vec<RoomRow> = self
            .0
            .exec(sql::LOAD_ROOMS, None)
            .and_then(|c| c.to_array())
            .map_err(store_err)?;
        let rows: Vec<HistoryRow> = self
            .0
            .exec(sql::LOAD_HISTORY, None)
            .and_then(|c| c.to_array())
            .map_err(store_err)?;
        let mut history: BTreeMap<String, Vec<HistorySnapshot>> = BTreeMap::new();
        for r in rows {
            history.entry(r.room).or_default().push(HistorySnapshot {
                seq: r.seq as u64,
                at: r.at as u64,
                text: r.text,
            });
        }
        Ok(rooms
            .into_iter()
            .map(|r| RoomSnapshot {
                history: history.remove(&r.name).unwrap_or_default(),
                name: r.name,
                epoch: r.epoch,
                seq: r.seq as u64,
                persistent: false,
                max_members: None,
                data: None,
            })
            .collect())
    }

    fn save_conn(&mut self, conn: ConnId, snapshot: &str) -> std::result::Result<(), StoreError> {
        self.run(
            sql::SAVE_CONN,
            vec![conn.as_u64().to_string().into(), snapshot.into()],
        )
    }

    fn delete_conn(&mut self, conn: ConnId) -> std::result::Result<(), StoreError> {
        self.run(sql::DELETE_CONN, vec![conn.as_u64().to_string().into()])
    }

    fn save_server_state(&mut self, json: &str) -> std::result::Result<(), StoreError> {
        self.run(sql::SAVE_SERVER_STATE, vec![json.into()])
    }

    fn load_server_state(&mut self) -> std::result::Result<Option<String>, StoreError> {
        #[derive(Deserialize)]
        struct Row {
            value: String,
        }
        let rows: Vec<Row> = self
            .0
            .exec(sql::LOAD_SERVER_STATE, None)
            .and_then(|c| c.to_array())
            .map_err(store_err)?;
        Ok(rows.into_iter().next().map(|r| r.value))
    }

    fn load_conns(&mut self) -> std::result::Result<Vec<(ConnId, String)>, StoreError> {
        let rows: Vec<ConnRow> = self
            .0
            .exec(sql::LOAD_CONNS, None)
            .and_then(|c| c.to_array())
            .map_err(store_err)?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((ConnId::from_u64(r.id.parse().ok()?), r.snapshot)))
            .collect())
    }
}

/// Whether a hub page path is the server API's (`/api` or below).
fn is_api(file: &str) -> bool {
    file == "/api" || file.starts_with("/api/")
}

/// The hub's name in a `/hub/{name}/…` URL, decoded (the route was classified already).
fn name_of(url: &worker::Url) -> String {
    let raw = url
        .path()
        .trim_start_matches("/hub/")
        .split('/')
        .next()
        .unwrap_or_default();
    match route::classify(&format!("/hub/{raw}/ws")) {
        Route::Hub(name) => name,
        _ => raw.to_owned(),
    }
}

/// The answer to an API call without the right key: 404 while the API is off, 401 for
/// a missing or wrong key; `None` when the key is right.
fn api_refusal(req: &Request, key: Option<&str>) -> Result<Option<Response>> {
    let Some(key) = key else {
        let a = ApiResponse::error(
            404,
            "not_found",
            "the server API is off: set ROOMCAST_API_KEY",
        );
        return json_answer(&a).map(Some);
    };
    let given = req.headers().get("authorization")?;
    if api::authorized(given.as_deref(), key) {
        return Ok(None);
    }
    let mut resp = json_answer(&ApiResponse::unauthorized())?;
    resp.headers_mut()
        .set("www-authenticate", "Bearer realm=\"roomcast\"")?;
    Ok(Some(resp))
}

/// An API answer as a response: JSON, never cached.
fn json_answer(a: &ApiResponse) -> Result<Response> {
    let headers = Headers::new();
    headers.set("content-type", "application/json")?;
    headers.set("cache-control", "no-store")?;
    Ok(Response::ok(a.body.clone())?
        .with_status(a.status)
        .with_headers(headers))
}

/// One hub: the Durable Object for one `/hub/{name}/ws`.
#[durable_object]
pub struct HubObject {
    state: State,
    settings: std::result::Result<Settings, SettingsError>,
    live: RefCell<Option<Live>>,
    /// The alarm time last set by this instance (unknown after an eviction).
    alarm_at: Cell<Option<u64>>,
    /// The hub's deadline after the last flush.
    want_alarm: Cell<Option<u64>>,
    /// The application's hooks (`app::hooks`), if any.
    hooks: Option<Rc<dyn EdgeHooks>>,
}

/// What a flush left for the application: the hook calls to make, each ending with the
/// answer to hand back (`None` for an after-the-fact call).
type Work = Vec<HookFuture<Option<(Ticket, Answer)>>>;

impl HubObject {
    fn sql(&self) -> SqlStore {
        SqlStore(self.state.storage().sql())
    }

    /// The awake state, rebuilt from the sockets and storage if the object was evicted.
    fn live(&self, now: Timestamp) -> Result<RefMut<'_, Live>> {
        let mut slot = self.live.borrow_mut();
        if slot.is_none() {
            *slot = Some(self.restore(now)?);
        }
        Ok(RefMut::map(slot, |s| s.as_mut().expect("filled above")))
    }

    fn restore(&self, now: Timestamp) -> Result<Live> {
        let settings = self.settings.as_ref().map_err(|e| e.to_string())?;
        let mut seed = [0u8; 32];
        getrandom::getrandom(&mut seed).map_err(|e| e.to_string())?;
        let sockets = self.state.get_websockets();
        let saved: Vec<SavedSocket> = sockets
            .iter()
            .map(|ws| SavedSocket {
                conn: self
                    .state
                    .get_tags(ws)
                    .iter()
                    .find_map(|t| attachment::parse_tag(t)),
                attachment: ws.deserialize_attachment::<String>().ok().flatten(),
            })
            .collect();
        let mut store = self.sql();
        let restored = Driver::restore(settings.hub.clone(), seed, now, &saved, &mut store);
        for e in &restored.errors {
            console_error!("roomcast: restore: {e}");
        }
        let mut skip = vec![false; sockets.len()];
        for (i, why) in &restored.lost {
            console_warn!("roomcast: closing a socket whose state was lost: {why}");
            skip[*i] = true;
            let _ = sockets[*i].close(Some(CLOSE_STATE_LOST), Some("hub state lost"));
        }
        for &i in &restored.closing {
            skip[i] = true;
        }
        let map = sockets
            .into_iter()
            .zip(saved)
            .zip(skip)
            .filter(|(_, skip)| !skip)
            .filter_map(|((ws, s), _)| Some((s.conn?, ws)))
            .collect();
        let driver = if self.hooks.is_some() {
            restored.driver.with_hooks(true)
        } else {
            restored.driver
        };
        Ok(Live {
            driver,
            sockets: SocketMap(map),
        })
    }

    /// Drains the hub and remembers its next deadline for [`HubObject::arm_alarm`].
    /// Returns the hook calls the flush asked for, for [`HubObject::settle`]: taken here,
    /// in the same borrow, so each handler settles what its own input caused.
    fn flush(&self, live: &mut Live) -> Work {
        let Live { driver, sockets } = live;
        for e in driver.flush(sockets, &mut self.sql()) {
            console_error!("roomcast: {e}");
        }
        self.want_alarm
            .set(driver.deadline().map(Timestamp::as_millis));
        let mut work: Work = Vec::new();
        let Some(hooks) = &self.hooks else {
            return work;
        };
        for d in driver.take_asks() {
            let ticket = d.ticket;
            let call = hooks.decide(Caller::of(&d), d.question);
            work.push(Box::pin(async move { Some((ticket, call.await)) }));
        }
        for gone in driver.take_departures() {
            if let Some(call) = hooks.disconnected(gone.caller, gone.reason) {
                work.push(Box::pin(async move {
                    call.await;
                    None
                }));
            }
        }
        work
    }

    /// Runs the hook calls of `work` while the object goes on serving other events
    /// (workerd interleaves them at this await), hands each answer back as it comes, and
    /// runs what those answers release (the next request a connection queued behind a
    /// parked one). Calls are bounded by their own timeout; the hub's deadline (the
    /// alarm) refuses what still has no answer.
    async fn settle(&self, work: Work) {
        let mut calls: FuturesUnordered<_> = work.into_iter().collect();
        while let Some(done) = calls.next().await {
            let Some((ticket, answer)) = done else {
                continue;
            };
            let now = now();
            let more = match self.live(now) {
                Ok(mut live) => {
                    live.driver.decided(now, ticket, answer);
                    self.flush(&mut live)
                }
                Err(e) => {
                    console_error!("roomcast: hook answer: {e}");
                    Vec::new()
                }
            };
            calls.extend(more);
            self.arm_alarm().await;
        }
    }

    /// Points the object's one alarm at the hub's deadline. `set_alarm` takes an offset
    /// for integers and durations, so the absolute time goes in as a `Date`.
    async fn arm_alarm(&self) {
        let want = self.want_alarm.get();
        if want == self.alarm_at.get() {
            return;
        }
        let storage = self.state.storage();
        let result = match want {
            Some(at) => {
                let date = js_sys::Date::new(&JsValue::from_f64(at as f64));
                storage.set_alarm(ScheduledTime::new(date)).await
            }
            None => storage.delete_alarm().await,
        };
        match result {
            Ok(()) => self.alarm_at.set(want),
            Err(e) => console_error!("roomcast: alarm: {e}"),
        }
    }

    fn conn_of(&self, ws: &WebSocket) -> Option<ConnId> {
        self.state
            .get_tags(ws)
            .iter()
            .find_map(|t| attachment::parse_tag(t))
    }

    /// The socket ended: tell the hub and forget the socket. After a close frame, finish
    /// the close handshake: echo a valid code, answer an invalid one with 1002 (as the
    /// native server does); an error if workerd already answered is ignored.
    async fn ended(&self, ws: &WebSocket, code: u16, answer: bool) -> Result<()> {
        if let Some(conn) = self.conn_of(ws) {
            let now = now();
            let work = {
                let mut live = self.live(now)?;
                let _ = live.driver.closed(now, conn, code);
                live.sockets.forget(conn);
                self.flush(&mut live)
            };
            self.arm_alarm().await;
            self.settle(work).await;
        }
        if answer {
            let reply = if code == close::code::NO_STATUS {
                None
            } else if close::is_valid_on_wire(code) {
                Some(code)
            } else {
                Some(close::code::PROTOCOL_ERROR)
            };
            let _ = ws.close(reply, reply.map(|_| ""));
        }
        Ok(())
    }
}

impl HubObject {
    /// An HTTP request to this hub: the server API or a socket upgrade.
    async fn serve(&self, mut req: Request) -> Result<Response> {
        let settings = match &self.settings {
            Ok(s) => s,
            Err(e) => return misconfigured(e),
        };
        let url = req.url()?;
        if let Route::HubPage(file) = route::classify(url.path()) {
            if is_api(&file) {
                // checked again: nothing reaches the hub's API around the key
                if let Some(refused) = api_refusal(&req, settings.api_key.as_deref())? {
                    return Ok(refused);
                }
                let body = req.bytes().await?;
                let now = now();
                let method = req.method().to_string();
                let (answer, work) = {
                    let mut live = self.live(now)?;
                    let a = live.driver.api(
                        now,
                        ApiRequest {
                            method: &method,
                            path: &file["/api".len()..],
                            query: url.query(),
                            body: &body,
                        },
                    );
                    (a, self.flush(&mut live))
                };
                self.arm_alarm().await;
                self.settle(work).await;
                return json_answer(&answer);
            }
        }
        let core_req = core_request(&req)?;
        let accept = match handshake::accept(&core_req, &settings.policy) {
            Ok(a) => a,
            Err(r) => return reject(&r),
        };
        let user = match core_req.query_param("user") {
            None => None,
            Some(Ok(u)) => Some(u),
            Some(Err(_)) => return reject(&Reject::new(400, RejectReason::BadUser)),
        };
        let headers = match &settings.proxy {
            Some(p) => p
                .headers
                .iter()
                .filter_map(|h| Some((h.clone(), req.headers().get(h).ok()??)))
                .collect(),
            None => Vec::new(),
        };
        let pair = WebSocketPair::new()?;
        let now = now();
        let work = {
            let mut live = self.live(now)?;
            let token = match core_req.query_param("token") {
                None => None,
                Some(Ok(t)) => Some(t),
                Some(Err(_)) => return reject(&Reject::new(401, RejectReason::Unauthorized)),
            };
            let request = ConnectRequest {
                user,
                token,
                headers,
                ..ConnectRequest::default()
            };
            let conn = match live.driver.connect(now, request) {
                Ok(conn) => conn,
                Err(ConnectError::BadUser) => {
                    return reject(&Reject::new(400, RejectReason::BadUser))
                }
                Err(ConnectError::Unauthorized(_)) => {
                    return reject(&Reject::new(401, RejectReason::Unauthorized))
                }
                // Full (and anything a later core refuses for): try again later.
                Err(_) => return reject(&Reject::new(503, RejectReason::ServerFull)),
            };
            self.state
                .accept_websocket_with_tags(&pair.server, &[&attachment::tag(conn)]);
            live.sockets.0.insert(conn, pair.server);
            self.flush(&mut live)
        };
        self.arm_alarm().await;
        // A connect hook answers before the upgrade completes (welcome or close 4003
        // follow it at once).
        self.settle(work).await;
        let mut resp = Response::from_websocket(pair.client)?;
        if let Some(p) = accept.protocol {
            resp.headers_mut().set("Sec-WebSocket-Protocol", &p)?;
        }
        Ok(resp)
    }
}

impl DurableObject for HubObject {
    fn new(state: State, env: Env) -> Self {
        let mut settings = read_settings(&env);
        let hooks = settings.as_ref().ok().and_then(crate::app::hooks);
        if let (Ok(s), Some(h)) = (&mut settings, &hooks) {
            s.hub.hooks = h.decides();
        }
        // Heartbeats are answered by workerd without waking the hub, so idle hubs sleep.
        match WebSocketRequestResponsePair::new(HEARTBEAT_PING, HEARTBEAT_PONG) {
            Ok(pair) => state.set_websocket_auto_response(&pair),
            Err(e) => console_error!("roomcast: auto-response: {e:?}"),
        }
        if let Err(e) = SqlStore(state.storage().sql()).create_schema() {
            console_error!("roomcast: schema: {e}");
        }
        HubObject {
            state,
            settings,
            live: RefCell::new(None),
            alarm_at: Cell::new(None),
            want_alarm: Cell::new(None),
            hooks,
        }
    }

    async fn fetch(&self, req: Request) -> Result<Response> {
        self.serve(req).await
    }

    async fn websocket_message(
        &self,
        ws: WebSocket,
        message: WebSocketIncomingMessage,
    ) -> Result<()> {
        let Some(conn) = self.conn_of(&ws) else {
            return Ok(());
        };
        let now = now();
        let work = {
            let mut live = self.live(now)?;
            // Err: the hub no longer knows this socket (it closed it); drop the message.
            let _ = match &message {
                WebSocketIncomingMessage::String(text) => live.driver.text(now, conn, text),
                WebSocketIncomingMessage::Binary(bytes) => {
                    live.driver.binary(now, conn, bytes.len())
                }
            };
            self.flush(&mut live)
        };
        self.arm_alarm().await;
        self.settle(work).await;
        Ok(())
    }

    async fn websocket_close(
        &self,
        ws: WebSocket,
        code: usize,
        _reason: String,
        _was_clean: bool,
    ) -> Result<()> {
        let code = u16::try_from(code).unwrap_or(close::code::PROTOCOL_ERROR);
        self.ended(&ws, code, true).await
    }

    async fn websocket_error(&self, ws: WebSocket, error: worker::Error) -> Result<()> {
        console_warn!("roomcast: socket error: {error}");
        self.ended(&ws, close::code::ABNORMAL, false).await
    }

    async fn alarm(&self) -> Result<Response> {
        let now = now();
        self.alarm_at.set(None); // it just fired
        let work = {
            let mut live = self.live(now)?;
            live.driver.timeout(now);
            self.flush(&mut live)
        };
        self.arm_alarm().await;
        self.settle(work).await;
        Response::ok("")
    }
}

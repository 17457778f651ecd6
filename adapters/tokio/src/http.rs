//! HTTP: the WebSocket upgrade through the core's handshake rules, static files,
//! `/healthz` and `/metrics`, as services that work with plain hyper and with axum/tower.
//!
//! The upgrade never decides anything itself: the core's `accept` answers the handshake
//! (400/426/403 and the 101's accept key and subprotocol), the hub answers admission
//! (503 when full, 400 for a bad user), and refusals are sent exactly as the core words
//! them, so every runtime refuses the same request the same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode, Version};
use http_body_util::{BodyExt, Full, Limited};
use roomcast_core::api;
use roomcast_core::auth::demo_token_answer;
use roomcast_core::handshake::{self, Accept, Reject, RejectReason};
use roomcast_core::hub::{ConnectError, ConnectRequest};
use tracing::{debug, warn};

use crate::commands::ConnectRefused;
use crate::handle::Roomcast;
use crate::responses::{json_response, text_response};
use crate::socket::{self, Mode};

/// What an upgraded socket is served as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// A hub connection on the JSON protocol.
    Hub,
    /// An echo socket (conformance mode, or the benchmark protocol's `/echo`).
    Echo,
    /// The benchmark protocol's room socket (`Config::bench_protocol`).
    BenchRoom,
}

/// The boxed future all services here return.
pub type ResponseFuture =
    Pin<Box<dyn Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send>>;

/// The peer address of a request, when the server knows it (added by [`crate::Server`];
/// insert it yourself in a custom hyper server to get `remote_addr` in the connection's
/// hub metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// The core's refusal as a hyper response: the status, headers and body of
/// `Reject::response_bytes`, parsed back so nothing is worded twice.
pub(crate) fn reject_response(reject: &Reject) -> Response<Full<Bytes>> {
    let raw = reject.response_bytes();
    let mut headers = [httparse::EMPTY_HEADER; 16];
    let mut parsed = httparse::Response::new(&mut headers);
    let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&raw) else {
        // The core builds this response itself; fall back to the bare status.
        let mut resp = text_response(StatusCode::BAD_REQUEST, "bad request\n");
        *resp.status_mut() = StatusCode::from_u16(reject.status).unwrap_or(StatusCode::BAD_REQUEST);
        return resp;
    };
    let mut resp = Response::new(Full::new(Bytes::copy_from_slice(&raw[head_len..])));
    *resp.status_mut() = StatusCode::from_u16(reject.status).unwrap_or(StatusCode::BAD_REQUEST);
    for h in parsed.headers.iter() {
        // hyper frames the body itself.
        if h.name.eq_ignore_ascii_case("content-length") {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(h.name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            resp.headers_mut().append(name, value);
        }
    }
    resp
}

fn switching_protocols(accept: &Accept) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(v) = HeaderValue::from_str(&accept.accept_key) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(p) = accept.protocol.as_deref() {
        if let Ok(v) = HeaderValue::from_str(p) {
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, v);
        }
    }
    resp
}

/// The core's view of a hyper request head.
fn core_request<B>(req: &Request<B>) -> handshake::Request {
    let target = req
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/");
    let version = match req.version() {
        Version::HTTP_09 | Version::HTTP_10 => 0,
        _ => 1,
    };
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    handshake::Request::from_parts(req.method().as_str(), target, version, headers)
}

/// Whether a request asks for a WebSocket (used to route upgrades on unknown paths to a
/// 404 in the core's words rather than a static-file lookup).
fn wants_websocket<B>(req: &Request<B>) -> bool {
    req.headers()
        .get_all(header::UPGRADE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("websocket"))
}

impl Roomcast {
    /// Answers a WebSocket upgrade request on whatever route it arrived (the path is not
    /// checked), for any HTTP framework built on hyper: call it from your handler and
    /// return its response. The 101 is returned only after the hub admitted the
    /// connection; the socket is then served on a task of its own.
    pub async fn upgrade<B>(&self, req: Request<B>) -> Response<Full<Bytes>> {
        let kind = if self.shared.config.echo {
            Kind::Echo
        } else {
            Kind::Hub
        };
        self.upgrade_as(req, kind).await
    }

    async fn upgrade_as<B>(&self, mut req: Request<B>, kind: Kind) -> Response<Full<Bytes>> {
        let shared = &self.shared;
        let core_req = core_request(&req);
        let accept = match handshake::accept(&core_req, &shared.policy) {
            Ok(a) => a,
            Err(reject) => return self.refuse(&reject),
        };
        let on_upgrade = hyper::upgrade::on(&mut req);
        let params = shared.socket_params.clone();
        if kind == Kind::Echo {
            let mode = Mode::Echo {
                shutdown: shared.shutdown.wait(),
            };
            let guard = shared.sockets.enter();
            tokio::spawn(socket::serve(on_upgrade, mode, params, guard));
            shared.metrics.handshake_accepted();
            return switching_protocols(&accept);
        }
        let user = match core_req.query_param("user") {
            None => None,
            Some(Ok(u)) => Some(u),
            Some(Err(_)) => return self.refuse(&Reject::new(400, RejectReason::BadUser)),
        };
        let mut metadata = std::collections::BTreeMap::new();
        if let Some(PeerAddr(addr)) = req.extensions().get::<PeerAddr>() {
            metadata.insert("remote_addr".to_owned(), addr.to_string());
        }
        if let Some(ua) = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
        {
            metadata.insert("user_agent".to_owned(), ua.chars().take(256).collect());
        }
        // A token in the URL; checked by the hub before anything is admitted. (Request
        // URLs are never logged, so it stays out of logs.)
        let token = match core_req.query_param("token") {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(_)) => return self.refuse(&Reject::new(401, RejectReason::Unauthorized)),
        };
        // The headers the application's `connect` hook was promised (`--proxy-headers`).
        let headers = shared
            .config
            .hook_headers
            .iter()
            .filter_map(|name| {
                let v = req.headers().get(name.as_str())?.to_str().ok()?;
                Some((name.to_ascii_lowercase(), v.to_owned()))
            })
            .collect();
        let request = ConnectRequest {
            user,
            token,
            metadata,
            headers,
        };
        let registered = match self.connect(request).await {
            Ok(r) => r,
            Err(refused) => {
                let reject = match refused {
                    ConnectRefused::Hub(ConnectError::BadUser) => {
                        Reject::new(400, RejectReason::BadUser)
                    }
                    ConnectRefused::Hub(ConnectError::Unauthorized(e)) => {
                        tracing::debug!(error = %e, "token refused at the upgrade");
                        Reject::new(401, RejectReason::Unauthorized)
                    }
                    // Full, shutting down, stopped (and anything a later core refuses
                    // for): try again later.
                    _ => Reject::new(503, RejectReason::ServerFull),
                };
                return self.refuse(&reject);
            }
        };
        let mode = Mode::Hub {
            conn: registered.conn,
            commands: shared.commands.clone(),
            rx: registered.rx,
            bench: kind == Kind::BenchRoom,
        };
        let guard = shared.sockets.enter();
        tokio::spawn(socket::serve(on_upgrade, mode, params, guard));
        shared.metrics.handshake_accepted();
        switching_protocols(&accept)
    }

    fn refuse(&self, reject: &Reject) -> Response<Full<Bytes>> {
        debug!(status = reject.status, reason = ?reject.reason, "upgrade refused");
        self.shared.metrics.handshake_refused(reject.status);
        reject_response(reject)
    }

    /// A service answering WebSocket upgrades on the route it is mounted on
    /// (`Router::route_service("/ws", rc.ws_handler())` in axum; any hyper server).
    pub fn ws_handler(&self) -> WsHandler {
        WsHandler { rc: self.clone() }
    }

    /// The complete roomcast HTTP service: the WebSocket endpoint at `Config::ws_path`,
    /// `/healthz`, `/metrics` and static files from `Config::www`. Use it as your axum
    /// fallback service, or serve it directly with hyper (see [`crate::Server`]).
    pub fn service(&self) -> RoomcastService {
        RoomcastService { rc: self.clone() }
    }

    /// The server HTTP API (`/api/…`, see [`roomcast_core::api`]): the key, then the
    /// body (bounded), then the core's answer, computed on the hub task.
    async fn api<B>(&self, req: Request<B>, path: String) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Some(key) = self.shared.config.api_key.as_ref() else {
            let a = api::ApiResponse::error(
                404,
                "not_found",
                "the server API is off: start with --api-key",
            );
            return json_response(a.status, a.body);
        };
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        if !api::authorized(given, &key.0) {
            let a = api::ApiResponse::unauthorized();
            let mut resp = json_response(a.status, a.body);
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"roomcast\""),
            );
            return resp;
        }
        let method = req.method().as_str().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let body = match Limited::new(req.into_body(), api::MAX_BODY).collect().await {
            Ok(b) => b.to_bytes(),
            Err(_) => {
                let a = api::ApiResponse::error(413, "bad_request", "body too large or unreadable");
                return json_response(a.status, a.body);
            }
        };
        let answer = self
            .call(move |hub, now| {
                api::handle(
                    hub,
                    now,
                    api::ApiRequest {
                        method: &method,
                        path: &path,
                        query: query.as_deref(),
                        body: &body,
                    },
                )
            })
            .await;
        match answer {
            Ok(a) => json_response(a.status, a.body),
            Err(_) => text_response(StatusCode::SERVICE_UNAVAILABLE, "hub stopped\n"),
        }
    }

    async fn route<B>(&self, req: Request<B>) -> Response<Full<Bytes>>
    where
        B: http_body::Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let shared = &self.shared;
        shared.metrics.http_request();
        let path = req.uri().path();
        if (shared.config.echo && wants_websocket(&req)) || path == shared.config.ws_path {
            return self.upgrade(req).await;
        }
        if shared.config.bench_protocol && wants_websocket(&req) {
            match path {
                "/echo" => return self.upgrade_as(req, Kind::Echo).await,
                "/room" => return self.upgrade_as(req, Kind::BenchRoom).await,
                _ => {}
            }
        }
        if wants_websocket(&req) {
            return self.refuse(&Reject::new(404, RejectReason::NotFound));
        }
        if let Some(rest) = path.strip_prefix("/api") {
            if rest.is_empty() || rest.starts_with('/') {
                let rest = rest.to_owned();
                return self.api(req, rest).await;
            }
        }
        let method = req.method();
        if method != Method::GET && method != Method::HEAD {
            let mut resp = text_response(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            resp.headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            return resp;
        }
        match path {
            "/demo/token" => {
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
                let a =
                    demo_token_answer(shared.config.demo_tokens.as_ref(), req.uri().query(), now);
                json_response(a.status, a.body)
            }
            "/healthz" => {
                if self.is_running() {
                    text_response(StatusCode::OK, "ok\n")
                } else {
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "hub stopped\n")
                }
            }
            "/metrics" => match self.metrics_text().await {
                Ok(text) => {
                    let mut resp = Response::new(Full::new(Bytes::from(text)));
                    resp.headers_mut().insert(
                        header::CONTENT_TYPE,
                        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                    );
                    resp
                }
                Err(e) => {
                    warn!("metrics unavailable: {e}");
                    text_response(StatusCode::SERVICE_UNAVAILABLE, "hub stopped\n")
                }
            },
            _ => match &shared.statics {
                Some(files) => files.serve(method, path, req.headers()).await,
                None => crate::statics::fallback(path, method == Method::HEAD),
            },
        }
    }
}

/// The WebSocket endpoint as a service, for mounting on a route of your own router.
///
/// Implements both `hyper::service::Service` and `tower_service::Service` (what axum's
/// `route_service` takes), for requests with any body type.
#[derive(Clone, Debug)]
pub struct WsHandler {
    rc: Roomcast,
}

/// Every roomcast route (see [`Roomcast::service`]) as a hyper and tower service.
#[derive(Clone, Debug)]
pub struct RoomcastService {
    rc: Roomcast,
}

/// Implements hyper's and tower's `Service` for a handle type whose `async fn` answers a
/// request: the two traits differ only in `&self` vs `&mut self` and readiness. The body
/// type's bounds are the handler's (the WebSocket endpoint takes any body; the whole
/// service reads the API's bodies).
macro_rules! roomcast_service {
    ($ty:ty, $method:ident, $($bounds:tt)+) => {
        impl<B> hyper::service::Service<Request<B>> for $ty
        where
            $($bounds)+
        {
            type Response = Response<Full<Bytes>>;
            type Error = Infallible;
            type Future = ResponseFuture;

            fn call(&self, req: Request<B>) -> Self::Future {
                let rc = self.rc.clone();
                Box::pin(async move { Ok(rc.$method(req).await) })
            }
        }

        impl<B> tower_service::Service<Request<B>> for $ty
        where
            $($bounds)+
        {
            type Response = Response<Full<Bytes>>;
            type Error = Infallible;
            type Future = ResponseFuture;

            fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
                Poll::Ready(Ok(()))
            }

            fn call(&mut self, req: Request<B>) -> Self::Future {
                hyper::service::Service::call(&*self, req)
            }
        }
    };
}

roomcast_service!(WsHandler, upgrade, B: Send + 'static);
roomcast_service!(
    RoomcastService,
    route,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_the_core_wording() {
        let resp = reject_response(&Reject::from(RejectReason::UnsupportedVersion));
        assert_eq!(resp.status(), 426);
        assert_eq!(resp.headers()["sec-websocket-version"], "13");
        assert_eq!(resp.headers()["connection"], "close");
        assert!(resp.headers().get("content-length").is_none());
        let resp = reject_response(&Reject::new(503, RejectReason::ServerFull));
        assert_eq!(resp.status(), 503);
    }

    #[test]
    fn core_request_keeps_target_and_version() {
        let req = Request::builder()
            .uri("/ws?user=a%20b")
            .version(Version::HTTP_10)
            .header("Host", "x")
            .body(())
            .unwrap();
        let r = core_request(&req);
        assert_eq!(r.path, "/ws");
        assert_eq!(r.query.as_deref(), Some("user=a%20b"));
        assert_eq!(r.version, 0);
        assert_eq!(r.header("host"), Some("x"));
    }
}

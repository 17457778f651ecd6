//! The HTTP/1.1 opening handshake (RFC 6455 §4), both sides, without I/O.
//!
//! The server side is split in three so each runtime uses only what it lacks: an
//! incremental [`RequestParser`] for adapters that read raw bytes, a [`Request`] that
//! adapters with their own HTTP stack (hyper) build from parts, and [`accept`], the one
//! place that decides whether an upgrade is allowed and what the 101 or error response
//! says. The client side, [`ClientHandshake`], writes the request and checks the answer.
//!
//! Both parsers are bounded (a peer cannot make us buffer more than the configured header
//! bytes), scan each byte for the end of the head once rather than on every read, and
//! report how many bytes of the last read belonged to the head: the rest are WebSocket
//! frames that arrived early and must be fed to the [`crate::connection::Connection`].

use base64::engine::general_purpose::STANDARD as BASE64;
use base64::Engine as _;
use thiserror::Error;

/// Default bound on the request or response head: large enough for browsers' cookies,
/// small enough that thousands of half-open handshakes cost little.
pub const DEFAULT_MAX_HEADER_BYTES: usize = 8192;

/// The GUID RFC 6455 appends to the key to prove the server speaks WebSocket.
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

/// Most headers a head may carry; more is answered with 431 like an oversized head.
const MAX_HEADERS: usize = 64;

/// Why a handshake could not proceed.
///
/// On the server these come from parsing (answer with [`HandshakeError::reject`]); on the
/// client they mean the server's answer is not a valid upgrade, and the connection must
/// be dropped.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum HandshakeError {
    /// The head did not end within the configured number of bytes.
    #[error("HTTP head exceeds {limit} bytes")]
    HeadersTooLarge {
        /// The configured bound.
        limit: usize,
    },
    /// The head is not valid HTTP/1.x.
    #[error("malformed HTTP head: {0}")]
    Malformed(httparse::Error),
    /// `feed` was called after the head was complete (a caller bug: the remaining bytes
    /// belong to the connection).
    #[error("handshake already complete")]
    AlreadyComplete,
    /// Client: the server answered with a status other than 101.
    #[error("server answered {0} instead of 101")]
    BadStatus(u16),
    /// Client: the 101 response lacks `Upgrade: websocket`.
    #[error("response lacks Upgrade: websocket")]
    MissingUpgrade,
    /// Client: the 101 response lacks `Connection: upgrade`.
    #[error("response lacks Connection: upgrade")]
    MissingConnectionUpgrade,
    /// Client: `Sec-WebSocket-Accept` is missing or does not match our key.
    #[error("Sec-WebSocket-Accept does not match the key")]
    BadAccept,
    /// Client: the server chose a subprotocol we did not offer.
    #[error("server selected a subprotocol we did not offer: {0:?}")]
    UnexpectedProtocol(String),
    /// Client: the server enabled an extension we did not offer.
    #[error("server selected an extension we did not offer")]
    UnexpectedExtensions,
}

impl HandshakeError {
    /// The response a server sends for a request it could not parse: 431 for heads that
    /// are too large (or carry too many headers), 400 otherwise.
    pub fn reject(&self) -> Reject {
        match self {
            HandshakeError::HeadersTooLarge { .. }
            | HandshakeError::Malformed(httparse::Error::TooManyHeaders) => {
                Reject::new(431, RejectReason::HeadersTooLarge)
            }
            _ => Reject::new(400, RejectReason::Malformed),
        }
    }
}

/// Accumulates an HTTP head until its blank line, scanning each byte once.
#[derive(Debug, Clone)]
struct HeadBuffer {
    buf: Vec<u8>,
    max: usize,
    done: bool,
}

impl HeadBuffer {
    fn new(max: usize) -> Self {
        HeadBuffer {
            buf: Vec::new(),
            max,
            done: false,
        }
    }

    /// Appends `bytes`; once the head is complete, `buf` holds exactly the head and the
    /// number of bytes of `bytes` that belonged to it is returned.
    fn feed(&mut self, bytes: &[u8]) -> Result<Option<usize>, HandshakeError> {
        if self.done {
            return Err(HandshakeError::AlreadyComplete);
        }
        let old_len = self.buf.len();
        // Never hold more than the bound: bytes past it cannot be part of a valid head.
        let take = bytes.len().min(self.max - old_len);
        self.buf.extend_from_slice(&bytes[..take]);
        // A terminator may straddle reads: back up at most 3 already-scanned bytes.
        let start = old_len.saturating_sub(3);
        if let Some(pos) = self.buf[start..].windows(4).position(|w| w == b"\r\n\r\n") {
            let end = start + pos + 4;
            self.buf.truncate(end);
            self.done = true;
            return Ok(Some(end - old_len));
        }
        if self.buf.len() >= self.max {
            return Err(HandshakeError::HeadersTooLarge { limit: self.max });
        }
        Ok(None)
    }
}

fn collect_headers(headers: &[httparse::Header<'_>]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|h| {
            (
                h.name.to_owned(),
                String::from_utf8_lossy(h.value).trim().to_owned(),
            )
        })
        .collect()
}

fn find_header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn header_values_in<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    headers
        .iter()
        .filter(move |(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Comma-separated list elements across every occurrence of a header.
fn list_items<'a>(
    headers: &'a [(String, String)],
    name: &'a str,
) -> impl Iterator<Item = &'a str> + 'a {
    header_values_in(headers, name)
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|s| !s.is_empty())
}

fn has_token(headers: &[(String, String)], name: &str, token: &str) -> bool {
    list_items(headers, name).any(|t| t.eq_ignore_ascii_case(token))
}

/// Why a query parameter could not be decoded; the adapter answers 400 rather than
/// guessing what a mangled user name meant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum QueryError {
    /// A `%` not followed by two hex digits.
    #[error("invalid percent-encoding")]
    BadPercentEncoding,
    /// The decoded bytes are not UTF-8.
    #[error("decoded value is not UTF-8")]
    NotUtf8,
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// `application/x-www-form-urlencoded` decoding: `%XX` escapes and `+` as space.
fn form_decode(s: &str) -> Result<String, QueryError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b'%' => {
                let hi = bytes.get(i + 1).copied().and_then(hex_value);
                let lo = bytes.get(i + 2).copied().and_then(hex_value);
                match (hi, lo) {
                    (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
                    _ => return Err(QueryError::BadPercentEncoding),
                }
                i += 3;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| QueryError::NotUtf8)
}

/// A parsed upgrade request: what [`accept`] and the hub (user id in the query, path
/// routing) need, independent of which HTTP stack read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The method, e.g. `GET`.
    pub method: String,
    /// The path part of the request target, without the query.
    pub path: String,
    /// The raw (still encoded) query after `?`, if any.
    pub query: Option<String>,
    /// The HTTP/1.x minor version (httparse's convention): 1 = HTTP/1.1, 0 = HTTP/1.0.
    pub version: u8,
    /// Headers in arrival order, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// Builds a request from an already parsed head, so adapters with their own HTTP
    /// stack (hyper) share the same [`accept`] rules. `target` is the path with its
    /// optional `?query`.
    pub fn from_parts(
        method: &str,
        target: &str,
        version: u8,
        headers: Vec<(String, String)>,
    ) -> Self {
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p.to_owned(), Some(q.to_owned())),
            None => (target.to_owned(), None),
        };
        Request {
            method: method.to_owned(),
            path,
            query,
            version,
            headers,
        }
    }

    /// The first value of a header, matched case-insensitively as HTTP requires.
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }

    /// Every value of a header, for headers that may repeat (`Sec-WebSocket-Protocol`).
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        header_values_in(&self.headers, name)
    }

    /// The decoded value of the first `key` parameter of the query (`+` is a space).
    ///
    /// `None` if absent; `Some(Err)` if present but undecodable, which must be
    /// distinguishable from absent so the server refuses (400) instead of treating a
    /// mangled user name as anonymous. A key without `=` has an empty value.
    pub fn query_param(&self, key: &str) -> Option<Result<String, QueryError>> {
        query_value(self.query.as_deref()?, key)
    }
}

/// The form-decoded value of `key` in a query string (without the `?`), as
/// [`Request::query_param`] reads it, for plain HTTP routes too.
pub fn query_value(query: &str, key: &str) -> Option<Result<String, QueryError>> {
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if form_decode(k).is_ok_and(|k| k == key) {
            return Some(form_decode(v));
        }
    }
    None
}

/// Reads an upgrade request from raw bytes, across as many reads as it takes.
#[derive(Debug, Clone)]
pub struct RequestParser {
    head: HeadBuffer,
}

impl Default for RequestParser {
    /// Bounded by [`DEFAULT_MAX_HEADER_BYTES`].
    fn default() -> Self {
        RequestParser::new(DEFAULT_MAX_HEADER_BYTES)
    }
}

impl RequestParser {
    /// A parser that refuses heads longer than `max_header_bytes`, so a slow or hostile
    /// peer cannot make a handshake hold unbounded memory.
    pub fn new(max_header_bytes: usize) -> Self {
        RequestParser {
            head: HeadBuffer::new(max_header_bytes),
        }
    }

    /// Feeds the next bytes read from the socket.
    ///
    /// `Ok(None)`: the head is not complete yet, all bytes were kept. `Ok(Some((req, n)))`:
    /// the first `n` bytes of *this call's* input ended the head; the rest are WebSocket
    /// frames sent before our 101 and must go to the connection. Errors mean the request is
    /// unusable: answer with [`HandshakeError::reject`] and close.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<(Request, usize)>, HandshakeError> {
        let Some(consumed) = self.head.feed(bytes)? else {
            return Ok(None);
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        match req.parse(&self.head.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Malformed(httparse::Error::Token))
            }
            Err(e) => return Err(HandshakeError::Malformed(e)),
        }
        let request = Request::from_parts(
            req.method.expect("complete parse has a method"),
            req.path.expect("complete parse has a path"),
            req.version.expect("complete parse has a version"),
            collect_headers(req.headers),
        );
        // The head is no longer needed; free it now rather than when the parser drops.
        self.head.buf = Vec::new();
        Ok(Some((request, consumed)))
    }
}

/// What a server is willing to accept, checked by [`accept`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerPolicy {
    /// Allowed `Origin` values (e.g. `https://example.com`); empty allows any. Browsers
    /// always send `Origin`, so this is what stops other sites' pages from connecting
    /// with the user's cookies; requests without one (non-browser clients) are allowed.
    pub allowed_origins: Vec<String>,
    /// Subprotocols the server speaks, e.g. `["roomcast.v1"]`.
    pub subprotocols: Vec<String>,
}

/// Why a handshake was refused; typed so adapters and metrics can tell causes apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// The method is not GET.
    NotGet,
    /// Older than HTTP/1.1.
    OldHttpVersion,
    /// No `Host` header.
    MissingHost,
    /// `Upgrade` lacks the `websocket` token.
    NotWebSocketUpgrade,
    /// `Connection` lacks the `upgrade` token.
    NotConnectionUpgrade,
    /// `Sec-WebSocket-Version` is not 13 (answered with 426).
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` is missing, repeated, or not 16 bytes of base64.
    BadKey,
    /// `Origin` is not allowed by the policy.
    OriginNotAllowed,
    /// The head is larger than the bound (or has too many headers).
    HeadersTooLarge,
    /// The head is not valid HTTP.
    Malformed,
    /// No endpoint at this path (adapter/hub decision).
    NotFound,
    /// Too many connections (adapter/hub decision).
    ServerFull,
    /// The user id in the request is invalid (adapter/hub decision).
    BadUser,
    /// The token in the request was refused (answered with 401; which fault is not
    /// said, so a prober learns nothing).
    Unauthorized,
}

impl RejectReason {
    /// The short body of the error response, for humans debugging a failed connect.
    pub fn message(self) -> &'static str {
        match self {
            RejectReason::NotGet => "WebSocket upgrade requires GET",
            RejectReason::OldHttpVersion => "WebSocket upgrade requires HTTP/1.1",
            RejectReason::MissingHost => "missing Host header",
            RejectReason::NotWebSocketUpgrade => "missing Upgrade: websocket",
            RejectReason::NotConnectionUpgrade => "missing Connection: upgrade",
            RejectReason::UnsupportedVersion => "unsupported Sec-WebSocket-Version (need 13)",
            RejectReason::BadKey => "missing or invalid Sec-WebSocket-Key",
            RejectReason::OriginNotAllowed => "origin not allowed",
            RejectReason::HeadersTooLarge => "request header too large",
            RejectReason::Malformed => "malformed request",
            RejectReason::NotFound => "not found",
            RejectReason::ServerFull => "server full",
            RejectReason::BadUser => "invalid user",
            RejectReason::Unauthorized => "unauthorized",
        }
    }

    /// The status this reason is normally answered with.
    pub fn default_status(self) -> u16 {
        match self {
            RejectReason::UnsupportedVersion => 426,
            RejectReason::OriginNotAllowed => 403,
            RejectReason::HeadersTooLarge => 431,
            RejectReason::NotFound => 404,
            RejectReason::ServerFull => 503,
            RejectReason::Unauthorized => 401,
            _ => 400,
        }
    }
}

/// A refused handshake: the HTTP error response to send before closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reject {
    /// HTTP status code.
    pub status: u16,
    /// Why.
    pub reason: RejectReason,
}

impl From<RejectReason> for Reject {
    /// The reason with its usual status.
    fn from(reason: RejectReason) -> Self {
        Reject::new(reason.default_status(), reason)
    }
}

fn status_text(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        426 => "Upgrade Required",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Error",
    }
}

impl Reject {
    /// A refusal with an explicit status, for decisions made outside [`accept`] (404 for
    /// a wrong path, 503 when full, 400 for a bad user).
    pub fn new(status: u16, reason: RejectReason) -> Self {
        Reject { status, reason }
    }

    /// The complete HTTP response. It closes the connection (`Connection: close`) since
    /// a refused socket is never reused; a 426 names the version we speak, as RFC 6455
    /// §4.4 asks, so a client can retry with it.
    pub fn response_bytes(&self) -> Vec<u8> {
        let body = self.reason.message();
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n",
            self.status,
            status_text(self.status),
            body.len() + 1
        );
        if self.status == 426 {
            out.push_str("Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\n");
        }
        out.push_str("\r\n");
        out.push_str(body);
        out.push('\n');
        out.into_bytes()
    }
}

/// An accepted handshake: what the 101 response must say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accept {
    /// The `Sec-WebSocket-Accept` value derived from the client's key.
    pub accept_key: String,
    /// The subprotocol selected, if any.
    pub protocol: Option<String>,
}

impl Accept {
    /// The complete `101 Switching Protocols` response; after writing it the socket
    /// speaks WebSocket frames.
    pub fn response_bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
            self.accept_key
        );
        if let Some(p) = &self.protocol {
            out.push_str("Sec-WebSocket-Protocol: ");
            out.push_str(p);
            out.push_str("\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }
}

/// The `Sec-WebSocket-Accept` value for a client key (RFC 6455 §4.2.2): proof that the
/// server understood the upgrade, so a cache or non-WebSocket server cannot fake one.
pub fn accept_key(key: &str) -> String {
    let mut sha = sha1_smol::Sha1::new();
    sha.update(key.as_bytes());
    sha.update(WS_GUID.as_bytes());
    BASE64.encode(sha.digest().bytes())
}

/// Decides whether to upgrade `req` under `policy`.
///
/// Checks run in a fixed order (method, version, Host, Upgrade, Connection, WebSocket
/// version, key, origin), so a request with several faults always gets the same answer
/// from every runtime. The subprotocol is the first one in the client's preference order
/// that the policy offers; a client asking only for unknown ones is still accepted,
/// without the header, and decides itself whether to go on.
pub fn accept(req: &Request, policy: &ServerPolicy) -> Result<Accept, Reject> {
    let headers = &req.headers;
    if req.method != "GET" {
        return Err(RejectReason::NotGet.into());
    }
    if req.version < 1 {
        return Err(RejectReason::OldHttpVersion.into());
    }
    if find_header(headers, "host").is_none_or(str::is_empty) {
        return Err(RejectReason::MissingHost.into());
    }
    if !has_token(headers, "upgrade", "websocket") {
        return Err(RejectReason::NotWebSocketUpgrade.into());
    }
    if !has_token(headers, "connection", "upgrade") {
        return Err(RejectReason::NotConnectionUpgrade.into());
    }
    if !list_items(headers, "sec-websocket-version").any(|v| v == "13") {
        return Err(RejectReason::UnsupportedVersion.into());
    }
    let mut keys = header_values_in(headers, "sec-websocket-key");
    let key = match (keys.next(), keys.next()) {
        (Some(k), None) => k,
        _ => return Err(RejectReason::BadKey.into()),
    };
    if !BASE64.decode(key).is_ok_and(|k| k.len() == 16) {
        return Err(RejectReason::BadKey.into());
    }
    if !policy.allowed_origins.is_empty() {
        if let Some(origin) = find_header(headers, "origin") {
            if !policy
                .allowed_origins
                .iter()
                .any(|o| o.eq_ignore_ascii_case(origin))
            {
                return Err(RejectReason::OriginNotAllowed.into());
            }
        }
    }
    let protocol = list_items(headers, "sec-websocket-protocol")
        .find(|p| policy.subprotocols.iter().any(|s| s == p))
        .map(str::to_owned);
    Ok(Accept {
        accept_key: accept_key(key),
        protocol,
    })
}

/// The server's answer to our upgrade request, once validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Always 101 once validated; kept for logging.
    pub status: u16,
    /// The subprotocol the server selected (one we offered), if any.
    pub protocol: Option<String>,
    /// All response headers, names as sent, values trimmed.
    pub headers: Vec<(String, String)>,
}

impl Response {
    /// The first value of a header, case-insensitively (cookies, server diagnostics).
    pub fn header(&self, name: &str) -> Option<&str> {
        find_header(&self.headers, name)
    }
}

/// Removes bytes that would end a header line early, so caller-supplied values can never
/// inject headers or split the request.
fn header_safe(s: &str) -> String {
    s.chars()
        .filter(|c| !matches!(c, '\r' | '\n' | '\0'))
        .collect()
}

/// The client half of the handshake: builds the request and validates the response.
#[derive(Debug, Clone)]
pub struct ClientHandshake {
    request: Vec<u8>,
    expected_accept: String,
    protocols: Vec<String>,
    head: HeadBuffer,
}

impl ClientHandshake {
    /// Prepares a handshake. `key` must be 16 fresh random bytes (from the caller's
    /// seeded generator: the core draws no entropy of its own); `host` is the `Host`
    /// header value (with the port when not the default); `protocols` are offered in
    /// preference order. CR, LF and NUL are removed from every caller string so no value
    /// can inject a header.
    pub fn new(
        host: &str,
        path_and_query: &str,
        key: [u8; 16],
        protocols: &[&str],
        extra_headers: &[(&str, &str)],
    ) -> Self {
        let key = BASE64.encode(key);
        let path = header_safe(path_and_query).replace(' ', "%20");
        let path = if path.is_empty() {
            "/".to_owned()
        } else {
            path
        };
        let protocols: Vec<String> = protocols
            .iter()
            .map(|p| header_safe(p).trim().to_owned())
            .filter(|p| !p.is_empty())
            .collect();
        let mut req = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n",
            header_safe(host)
        );
        if !protocols.is_empty() {
            req.push_str("Sec-WebSocket-Protocol: ");
            req.push_str(&protocols.join(", "));
            req.push_str("\r\n");
        }
        for (name, value) in extra_headers {
            let name: String = header_safe(name)
                .chars()
                .filter(|c| !c.is_whitespace() && *c != ':')
                .collect();
            if name.is_empty() {
                continue;
            }
            req.push_str(&name);
            req.push_str(": ");
            req.push_str(&header_safe(value));
            req.push_str("\r\n");
        }
        req.push_str("\r\n");
        ClientHandshake {
            request: req.into_bytes(),
            expected_accept: accept_key(&key),
            protocols,
            head: HeadBuffer::new(DEFAULT_MAX_HEADER_BYTES),
        }
    }

    /// The bytes to write before reading the response.
    pub fn request_bytes(&self) -> Vec<u8> {
        self.request.clone()
    }

    /// Feeds bytes read from the socket, like [`RequestParser::feed`]: once the head is
    /// complete, returns the validated response and how many bytes of this call's input
    /// it used; the rest are the server's first frames.
    pub fn feed(&mut self, bytes: &[u8]) -> Result<Option<(Response, usize)>, HandshakeError> {
        let Some(consumed) = self.head.feed(bytes)? else {
            return Ok(None);
        };
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&self.head.buf) {
            Ok(httparse::Status::Complete(_)) => {}
            Ok(httparse::Status::Partial) => {
                return Err(HandshakeError::Malformed(httparse::Error::Token))
            }
            Err(e) => return Err(HandshakeError::Malformed(e)),
        }
        let status = resp.code.expect("complete parse has a status");
        let headers = collect_headers(resp.headers);
        self.head.buf = Vec::new();

        if status != 101 {
            return Err(HandshakeError::BadStatus(status));
        }
        if !has_token(&headers, "upgrade", "websocket") {
            return Err(HandshakeError::MissingUpgrade);
        }
        if !has_token(&headers, "connection", "upgrade") {
            return Err(HandshakeError::MissingConnectionUpgrade);
        }
        if find_header(&headers, "sec-websocket-accept") != Some(self.expected_accept.as_str()) {
            return Err(HandshakeError::BadAccept);
        }
        if list_items(&headers, "sec-websocket-extensions")
            .next()
            .is_some()
        {
            return Err(HandshakeError::UnexpectedExtensions);
        }
        let protocol = {
            let mut chosen = list_items(&headers, "sec-websocket-protocol");
            match (chosen.next(), chosen.next()) {
                (None, _) => None,
                (Some(p), None) if self.protocols.iter().any(|o| o == p) => Some(p.to_owned()),
                (Some(p), _) => return Err(HandshakeError::UnexpectedProtocol(p.to_owned())),
            }
        };
        Ok(Some((
            Response {
                status,
                protocol,
                headers,
            },
            consumed,
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn request(extra: &str) -> Request {
        let raw = format!(
            "GET /ws?user=bob HTTP/1.1\r\nHost: example.com\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
        );
        let (req, n) = RequestParser::default()
            .feed(raw.as_bytes())
            .unwrap()
            .unwrap();
        assert_eq!(n, raw.len());
        req
    }

    fn without(req: &Request, name: &str) -> Request {
        let mut r = req.clone();
        r.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        r
    }

    fn with(req: &Request, name: &str, value: &str) -> Request {
        let mut r = without(req, name);
        r.headers.push((name.to_owned(), value.to_owned()));
        r
    }

    fn reject_of(req: &Request) -> Reject {
        accept(req, &ServerPolicy::default()).unwrap_err()
    }

    #[test]
    fn rfc_accept_key_vector() {
        assert_eq!(accept_key(KEY), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn parses_request_fields() {
        let req = request("Origin: https://a.example\r\nX-Multi: 1\r\nx-multi: 2\r\n");
        assert_eq!(req.method, "GET");
        assert_eq!(req.path, "/ws");
        assert_eq!(req.query.as_deref(), Some("user=bob"));
        assert_eq!(req.version, 1);
        assert_eq!(req.header("HOST"), Some("example.com"));
        assert_eq!(req.header_values("X-MULTI").collect::<Vec<_>>(), ["1", "2"]);
        assert_eq!(req.header("absent"), None);
    }

    #[test]
    fn parser_incremental_byte_by_byte_with_early_frames() {
        let head = format!(
            "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        let mut all = head.clone().into_bytes();
        all.extend_from_slice(b"\x81\x80abcd");
        // Every split point, including terminators split across feeds.
        for cut in 0..all.len() {
            let mut p = RequestParser::default();
            let first = p.feed(&all[..cut]).unwrap();
            let (req, n, base) = match first {
                Some((req, n)) => (req, n, 0),
                None => {
                    let (req, n) = p.feed(&all[cut..]).unwrap().unwrap();
                    (req, n, cut)
                }
            };
            assert_eq!(base + n, head.len(), "cut {cut}");
            assert_eq!(req.path, "/ws");
        }
        // One byte at a time.
        let mut p = RequestParser::default();
        let mut done = None;
        for (i, b) in all.iter().enumerate() {
            if let Some((_, n)) = p.feed(core::slice::from_ref(b)).unwrap() {
                done = Some((i, n));
                break;
            }
        }
        assert_eq!(done, Some((head.len() - 1, 1)));
        assert_eq!(p.feed(b"x"), Err(HandshakeError::AlreadyComplete));
    }

    #[test]
    fn parser_bounds_header_bytes() {
        let mut p = RequestParser::new(64);
        assert_eq!(p.feed(b"GET / HTTP/1.1\r\nHost: x\r\n"), Ok(None));
        let err = p.feed(&[b'a'; 100]).unwrap_err();
        assert_eq!(err, HandshakeError::HeadersTooLarge { limit: 64 });
        assert_eq!(err.reject().status, 431);
        // Exactly at the bound is fine.
        let head = b"GET / HTTP/1.1\r\nHost: x\r\n\r\n";
        let mut p = RequestParser::new(head.len());
        assert!(p.feed(head).unwrap().is_some());
    }

    #[test]
    fn parser_rejects_garbage_and_too_many_headers() {
        let err = RequestParser::default()
            .feed(b"\x16\x03\x01 hello\r\n\r\n")
            .unwrap_err();
        assert!(matches!(err, HandshakeError::Malformed(_)));
        assert_eq!(err.reject().status, 400);
        let mut many = String::from("GET / HTTP/1.1\r\n");
        for i in 0..100 {
            many.push_str(&format!("X-{i}: v\r\n"));
        }
        many.push_str("\r\n");
        let err = RequestParser::default().feed(many.as_bytes()).unwrap_err();
        assert_eq!(err.reject().status, 431);
    }

    #[test]
    fn accepts_valid_request() {
        let a = accept(&request(""), &ServerPolicy::default()).unwrap();
        assert_eq!(a.accept_key, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        assert_eq!(a.protocol, None);
        assert_eq!(
            a.response_bytes(),
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n"
        );
    }

    #[test]
    fn token_lists_are_case_insensitive() {
        let req = request("");
        let req = with(&req, "upgrade", "h2c, WebSocket");
        let req = with(&req, "CONNECTION", "keep-alive, UPGRADE");
        assert!(accept(&req, &ServerPolicy::default()).is_ok());
    }

    #[test]
    fn rejects_each_fault_with_its_status() {
        let req = request("");
        let mut post = req.clone();
        post.method = "POST".into();
        assert_eq!(reject_of(&post), Reject::new(400, RejectReason::NotGet));
        let mut old = req.clone();
        old.version = 0;
        assert_eq!(reject_of(&old).reason, RejectReason::OldHttpVersion);
        assert_eq!(
            reject_of(&without(&req, "host")).reason,
            RejectReason::MissingHost
        );
        assert_eq!(
            reject_of(&with(&req, "upgrade", "h2c")).reason,
            RejectReason::NotWebSocketUpgrade
        );
        assert_eq!(
            reject_of(&without(&req, "upgrade")).reason,
            RejectReason::NotWebSocketUpgrade
        );
        assert_eq!(
            reject_of(&with(&req, "connection", "keep-alive")).reason,
            RejectReason::NotConnectionUpgrade
        );
        let v8 = reject_of(&with(&req, "sec-websocket-version", "8"));
        assert_eq!(v8, Reject::new(426, RejectReason::UnsupportedVersion));
        let text = String::from_utf8(v8.response_bytes()).unwrap();
        assert!(text.starts_with("HTTP/1.1 426 Upgrade Required\r\n"));
        assert!(text.contains("\r\nSec-WebSocket-Version: 13\r\n"));
        assert_eq!(
            reject_of(&without(&req, "sec-websocket-version")).status,
            426
        );
        for bad in [
            "",
            "abc",
            "dGhlIHNhbXBsZSBub25j",
            "dGhlIHNhbXBsZSBub25jZQ",
            "dGhlIHNhbXBsZSBub25jZXg=",
        ] {
            assert_eq!(
                reject_of(&with(&req, "sec-websocket-key", bad)),
                Reject::new(400, RejectReason::BadKey),
                "{bad:?}"
            );
        }
        assert_eq!(
            reject_of(&without(&req, "sec-websocket-key")).reason,
            RejectReason::BadKey
        );
        let mut twice = req.clone();
        twice.headers.push(("Sec-WebSocket-Key".into(), KEY.into()));
        assert_eq!(reject_of(&twice).reason, RejectReason::BadKey);
    }

    #[test]
    fn origin_allowlist() {
        let policy = ServerPolicy {
            allowed_origins: vec!["https://good.example".into()],
            subprotocols: vec![],
        };
        let req = request("");
        assert!(
            accept(&req, &policy).is_ok(),
            "no Origin: non-browser client allowed"
        );
        assert!(accept(&with(&req, "origin", "https://GOOD.example"), &policy).is_ok());
        let r = accept(&with(&req, "origin", "https://evil.example"), &policy).unwrap_err();
        assert_eq!(r, Reject::new(403, RejectReason::OriginNotAllowed));
        assert!(accept(
            &with(&req, "origin", "https://evil.example"),
            &ServerPolicy::default()
        )
        .is_ok());
    }

    #[test]
    fn subprotocol_selection() {
        let policy = ServerPolicy {
            allowed_origins: vec![],
            subprotocols: vec!["roomcast.v1".into(), "chat".into()],
        };
        let req =
            request("Sec-WebSocket-Protocol: foo, chat\r\nSec-WebSocket-Protocol: roomcast.v1\r\n");
        let a = accept(&req, &policy).unwrap();
        assert_eq!(
            a.protocol.as_deref(),
            Some("chat"),
            "client preference order"
        );
        assert!(String::from_utf8(a.response_bytes())
            .unwrap()
            .contains("\r\nSec-WebSocket-Protocol: chat\r\n"));
        let only_unknown = request("Sec-WebSocket-Protocol: foo\r\n");
        assert_eq!(accept(&only_unknown, &policy).unwrap().protocol, None);
        assert!(
            !String::from_utf8(accept(&only_unknown, &policy).unwrap().response_bytes())
                .unwrap()
                .contains("Sec-WebSocket-Protocol")
        );
    }

    #[test]
    fn reject_response_format() {
        let r = Reject::new(503, RejectReason::ServerFull);
        let text = String::from_utf8(r.response_bytes()).unwrap();
        assert_eq!(
            text,
            "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 12\r\nConnection: close\r\n\r\nserver full\n"
        );
        assert_eq!(Reject::from(RejectReason::NotFound).status, 404);
        assert_eq!(Reject::from(RejectReason::BadUser).status, 400);
    }

    #[test]
    fn query_params_decode() {
        let r = Request::from_parts(
            "GET",
            "/ws?a=1&user=b%C3%B6b+x&flag&e=&bad=%zz&nu=%FF&user=second",
            1,
            vec![],
        );
        assert_eq!(r.path, "/ws");
        assert_eq!(r.query_param("user"), Some(Ok("böb x".to_owned())));
        assert_eq!(r.query_param("a"), Some(Ok("1".to_owned())));
        assert_eq!(r.query_param("flag"), Some(Ok(String::new())));
        assert_eq!(r.query_param("e"), Some(Ok(String::new())));
        assert_eq!(
            r.query_param("bad"),
            Some(Err(QueryError::BadPercentEncoding))
        );
        assert_eq!(r.query_param("nu"), Some(Err(QueryError::NotUtf8)));
        assert_eq!(r.query_param("missing"), None);
        let r = Request::from_parts("GET", "/ws?x=%4", 1, vec![]);
        assert_eq!(
            r.query_param("x"),
            Some(Err(QueryError::BadPercentEncoding))
        );
        let r = Request::from_parts("GET", "/ws", 1, vec![]);
        assert_eq!(r.query, None);
        assert_eq!(r.query_param("user"), None);
        let r = Request::from_parts("GET", "/ws?us%65r=enc", 1, vec![]);
        assert_eq!(r.query_param("user"), Some(Ok("enc".to_owned())));
    }

    fn server_answer(req_bytes: &[u8], policy: &ServerPolicy) -> Vec<u8> {
        let (req, _) = RequestParser::default().feed(req_bytes).unwrap().unwrap();
        accept(&req, policy).unwrap().response_bytes()
    }

    #[test]
    fn client_roundtrip_with_server() {
        let policy = ServerPolicy {
            allowed_origins: vec![],
            subprotocols: vec!["roomcast.v1".into()],
        };
        let mut c = ClientHandshake::new(
            "example.com:8080",
            "/ws?user=bob",
            *b"the sample nonce",
            &["roomcast.v1"],
            &[("Origin", "https://example.com")],
        );
        let req = c.request_bytes();
        let text = String::from_utf8(req.clone()).unwrap();
        assert!(text.starts_with("GET /ws?user=bob HTTP/1.1\r\nHost: example.com:8080\r\n"));
        assert!(text.contains(&format!("Sec-WebSocket-Key: {KEY}\r\n")));
        assert!(text.contains("Origin: https://example.com\r\n"));
        let mut answer = server_answer(&req, &policy);
        let head_len = answer.len();
        answer.extend_from_slice(b"\x81\x02hi");
        for cut in 0..answer.len() {
            let mut c = c.clone();
            let (resp, n, base) = match c.feed(&answer[..cut]).unwrap() {
                Some((r, n)) => (r, n, 0),
                None => {
                    let (r, n) = c.feed(&answer[cut..]).unwrap().unwrap();
                    (r, n, cut)
                }
            };
            assert_eq!(base + n, head_len);
            assert_eq!(resp.status, 101);
            assert_eq!(resp.protocol.as_deref(), Some("roomcast.v1"));
        }
        let (resp, _) = c.feed(&answer).unwrap().unwrap();
        assert_eq!(
            resp.header("sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
    }

    fn client() -> ClientHandshake {
        ClientHandshake::new("h", "/ws", *b"the sample nonce", &["a", "b"], &[])
    }

    #[test]
    fn client_rejects_bad_responses() {
        let ok = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n";
        let feed = |head: &str| client().feed(format!("{head}\r\n").as_bytes());
        assert!(feed(ok).unwrap().is_some());
        assert_eq!(
            feed("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n"),
            Err(HandshakeError::BadStatus(403))
        );
        assert_eq!(
            feed(&ok.replace("Upgrade: websocket", "Upgrade: h2c")),
            Err(HandshakeError::MissingUpgrade)
        );
        assert_eq!(
            feed(&ok.replace("Connection: Upgrade", "Connection: close")),
            Err(HandshakeError::MissingConnectionUpgrade)
        );
        assert_eq!(
            feed(&ok.replace("s3pP", "AAAA")),
            Err(HandshakeError::BadAccept)
        );
        assert_eq!(
            feed(&format!(
                "{ok}Sec-WebSocket-Extensions: permessage-deflate\r\n"
            )),
            Err(HandshakeError::UnexpectedExtensions)
        );
        assert_eq!(
            feed(&format!("{ok}Sec-WebSocket-Protocol: c\r\n")),
            Err(HandshakeError::UnexpectedProtocol("c".into()))
        );
        assert_eq!(
            feed(&format!("{ok}Sec-WebSocket-Protocol: a, b\r\n")),
            Err(HandshakeError::UnexpectedProtocol("a".into()))
        );
        let (r, _) = feed(&format!("{ok}Sec-WebSocket-Protocol: b\r\n"))
            .unwrap()
            .unwrap();
        assert_eq!(r.protocol.as_deref(), Some("b"));
        assert!(matches!(
            client().feed(b"garbage\r\n\r\n"),
            Err(HandshakeError::Malformed(_))
        ));
    }

    #[test]
    fn client_never_injects_headers() {
        let c = ClientHandshake::new(
            "h\r\nEvil: 1",
            "/p ath\r\n",
            [0; 16],
            &["x\r\nEvil: 2"],
            &[("X-A\r\nEvil", "v\r\nEvil: 3"), ("", "dropped")],
        );
        let text = String::from_utf8(c.request_bytes()).unwrap();
        assert!(!text.contains("\r\nEvil"), "{text}");
        assert!(text.starts_with("GET /p%20ath HTTP/1.1\r\n"));
        assert!(text.ends_with("\r\n\r\n") && text.matches("\r\n\r\n").count() == 1);
        // Our own request parses and is accepted.
        assert!(accept(
            &RequestParser::default()
                .feed(text.as_bytes())
                .unwrap()
                .unwrap()
                .0,
            &ServerPolicy::default()
        )
        .is_ok());
    }
}

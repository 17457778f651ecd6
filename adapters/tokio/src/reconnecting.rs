//! The reconnecting client for Rust users: the core's [`Client`] machine (the same one the
//! browser package runs) driven by tokio, over this crate's [`client`](crate::client)
//! sockets.
//!
//! Reconnect with backoff and jitter, rejoin with recovery (exactly-once room delivery
//! within history), resubscribe, offline queue and heartbeat all live in the core; this
//! module only opens sockets when the machine asks, moves text both ways, and arms one
//! timer for `poll_timeout()`.
//!
//! Against a server that checks tokens, start it with [`ReconnectingClient::start_with_token`]
//! and a [`TokenProvider`]: the closure runs before every (re)connect and whenever the
//! server says the token is `expiring`, so a short-lived token is always fresh.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomcast_tokio::reconnecting::RequestError> {
//! use roomcast_tokio::reconnecting::{ReconnectingClient, Target};
//! use roomcast_tokio::core::client::{ClientConfig, ClientEvent};
//!
//! let mut rc = ReconnectingClient::start(ClientConfig {
//!     url: "ws://127.0.0.1:8080/ws?user=ada".into(),
//!     ..Default::default()
//! });
//! rc.join("lobby", true).await?;
//! rc.publish(Target::Room("lobby".into()), "say", Some(r#""hi""#), false).await?;
//! while let Some(event) = rc.next_event().await {
//!     if let ClientEvent::Message(m) = event {
//!         println!("{} from {:?}: {}", m.event, m.from, m.data);
//!     }
//! #   break;
//! }
//! rc.close().await;
//! # Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt::Display;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use roomcast_core::client::{
    Client, ClientConfig, ClientError as MachineError, ClientEvent, ClientOutput,
};
use roomcast_core::protocol::Presence;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::client::{self, ClientOptions, Message};
use crate::clock::Clock;

pub use roomcast_core::client::PublishTarget as Target;

/// Why a request failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The server refused it, or the client gave up (`timeout`, `disconnected`,
    /// `dropped`, `closed`, `cancelled`): the code says which.
    #[error("{code}: {message}")]
    Refused {
        /// Protocol error code or client-side reason.
        code: String,
        /// For humans.
        message: String,
    },
    /// The arguments break the protocol's rules (bad name, invalid JSON data).
    #[error("invalid request: {0}")]
    Invalid(#[from] MachineError),
    /// The client task has stopped.
    #[error("client stopped")]
    Stopped,
}

type Reply = oneshot::Sender<Result<String, RequestError>>;

enum Cmd {
    Join(String, Presence, Reply),
    Leave(String, Reply),
    Subscribe(String, Reply),
    Unsubscribe(String, Reply),
    Publish(Target, String, Option<String>, bool, Reply),
    Rpc(String, Option<String>, Reply),
    Close(oneshot::Sender<()>),
}

enum SocketEvent {
    Opened(u64, client::Client),
    Failed(u64),
    /// The provider's answer to a token ticket.
    Token(u64, Result<String, String>),
}

/// What a token provider's call returns.
pub type TokenFuture = Pin<Box<dyn Future<Output = Result<String, String>> + Send>>;

/// Where fresh tokens come from: usually a call to the application's backend, which
/// mints a short-lived token for the signed-in user. Called before every (re)connect
/// and when the server warns that the current token is `expiring`.
#[derive(Clone)]
pub struct TokenProvider(Arc<dyn Fn() -> TokenFuture + Send + Sync>);

impl TokenProvider {
    /// A provider from an async closure; its error is reported (as a
    /// `token_unavailable` error event) and the connect is retried with backoff.
    pub fn new<F, Fut, E>(f: F) -> TokenProvider
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, E>> + Send + 'static,
        E: Display,
    {
        TokenProvider(Arc::new(move || {
            let fut = f();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        }))
    }

    /// Always the same token: fine for tests and long-lived service tokens; it cannot
    /// be refreshed, so the connection ends (4001) when it expires.
    pub fn fixed(token: impl Into<String>) -> TokenProvider {
        let token: String = token.into();
        TokenProvider(Arc::new(move || {
            let t = token.clone();
            Box::pin(async move { Ok(t) })
        }))
    }
}

impl std::fmt::Debug for TokenProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenProvider")
    }
}

/// A client that stays connected: see the module docs. Requests can also be made from
/// other tasks through a [`Handle`] while this one reads events.
pub struct ReconnectingClient {
    handle: Handle,
    events: mpsc::UnboundedReceiver<ClientEvent>,
    task: JoinHandle<()>,
}

/// A cloneable way to make requests of a [`ReconnectingClient`] from any task.
#[derive(Clone)]
pub struct Handle {
    commands: mpsc::UnboundedSender<Cmd>,
}

impl ReconnectingClient {
    /// Starts connecting to `config.url` in the background (call inside a tokio runtime).
    /// The jitter seed comes from the OS.
    pub fn start(config: ClientConfig) -> ReconnectingClient {
        Self::start_with(config, ClientOptions::default())
    }

    /// As [`ReconnectingClient::start`], with socket options (headers, limits).
    pub fn start_with(config: ClientConfig, options: ClientOptions) -> ReconnectingClient {
        Self::spawn(config, options, None)
    }

    /// As [`ReconnectingClient::start_with`], for a server that checks signed tokens:
    /// `tokens` is asked for a token before every connect (sent as the first message
    /// `auth`, never in the URL) and again on `expiring`.
    pub fn start_with_token(
        mut config: ClientConfig,
        options: ClientOptions,
        tokens: TokenProvider,
    ) -> ReconnectingClient {
        config.token = true;
        Self::spawn(config, options, Some(tokens))
    }

    fn spawn(
        config: ClientConfig,
        options: ClientOptions,
        tokens: Option<TokenProvider>,
    ) -> ReconnectingClient {
        let mut seed = [0u8; 32];
        // A failed OS random source only weakens jitter (clients may retry in step); the
        // machine is still correct, so fall back to a time-derived seed.
        if getrandom::fill(&mut seed).is_err() {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos());
            seed[..16].copy_from_slice(&t.to_le_bytes());
        }
        let clock = Clock::new();
        let machine = Client::new(config, seed, clock.now());
        let (commands, cmd_rx) = mpsc::unbounded_channel();
        let (ev_tx, events) = mpsc::unbounded_channel();
        let task = tokio::spawn(drive(machine, clock, options, tokens, cmd_rx, ev_tx));
        ReconnectingClient {
            handle: Handle { commands },
            events,
            task,
        }
    }

    /// A handle for making requests from other tasks.
    pub fn handle(&self) -> Handle {
        self.handle.clone()
    }

    /// Joins a room and keeps it joined across reconnects; resolves with the ack JSON.
    /// Presence: `false`, `true` (per connection) or [`Presence::Users`] (per user).
    pub async fn join(
        &self,
        room: &str,
        presence: impl Into<Presence>,
    ) -> Result<String, RequestError> {
        self.handle.join(room, presence).await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<String, RequestError> {
        self.handle.leave(room).await
    }

    /// Subscribes to a channel and keeps the subscription across reconnects.
    pub async fn subscribe(&self, channel: &str) -> Result<String, RequestError> {
        self.handle.subscribe(channel).await
    }

    /// Unsubscribes from a channel.
    pub async fn unsubscribe(&self, channel: &str) -> Result<String, RequestError> {
        self.handle.unsubscribe(channel).await
    }

    /// Publishes an event (`data` is raw JSON text); queued while offline. Resolves
    /// with the ack JSON (`delivered`, and `seq` for a room).
    pub async fn publish(
        &self,
        target: Target,
        event: &str,
        data: Option<&str>,
        echo: bool,
    ) -> Result<String, RequestError> {
        self.handle.publish(target, event, data, echo).await
    }

    /// Calls `method` on the server's application with raw JSON `data`; resolves with
    /// the answer's raw JSON (`null` when it gave none). A refusal carries the
    /// application's own code.
    pub async fn rpc(&self, method: &str, data: Option<&str>) -> Result<String, RequestError> {
        self.handle.rpc(method, data).await
    }

    /// The next event: messages, presence, state changes, recoveries, rejoins, errors
    /// no request is waiting for. `None` once the client is closed and drained.
    pub async fn next_event(&mut self) -> Option<ClientEvent> {
        self.events.recv().await
    }

    /// Closes for good (no retry) and waits for the background task to finish.
    pub async fn close(self) {
        let (tx, rx) = oneshot::channel();
        if self.handle.commands.send(Cmd::Close(tx)).is_ok() {
            let _ = rx.await;
        }
        let _ = self.task.await;
    }
}

impl Handle {
    async fn ask(&self, make: impl FnOnce(Reply) -> Cmd) -> Result<String, RequestError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(make(tx))
            .map_err(|_| RequestError::Stopped)?;
        rx.await.map_err(|_| RequestError::Stopped)?
    }

    /// Joins a room and keeps it joined across reconnects; resolves with the ack JSON.
    pub async fn join(
        &self,
        room: &str,
        presence: impl Into<Presence>,
    ) -> Result<String, RequestError> {
        let room = room.to_owned();
        let presence = presence.into();
        self.ask(|r| Cmd::Join(room, presence, r)).await
    }

    /// Leaves a room.
    pub async fn leave(&self, room: &str) -> Result<String, RequestError> {
        let room = room.to_owned();
        self.ask(|r| Cmd::Leave(room, r)).await
    }

    /// Subscribes to a channel and keeps the subscription across reconnects.
    pub async fn subscribe(&self, channel: &str) -> Result<String, RequestError> {
        let channel = channel.to_owned();
        self.ask(|r| Cmd::Subscribe(channel, r)).await
    }

    /// Unsubscribes from a channel.
    pub async fn unsubscribe(&self, channel: &str) -> Result<String, RequestError> {
        let channel = channel.to_owned();
        self.ask(|r| Cmd::Unsubscribe(channel, r)).await
    }

    /// Publishes an event (`data` is raw JSON text); queued while offline. Resolves
    /// with the ack JSON (`delivered`, and `seq` for a room).
    pub async fn publish(
        &self,
        target: Target,
        event: &str,
        data: Option<&str>,
        echo: bool,
    ) -> Result<String, RequestError> {
        let event = event.to_owned();
        let data = data.map(str::to_owned);
        self.ask(|r| Cmd::Publish(target, event, data, echo, r))
            .await
    }

    /// Calls `method` on the server's application; resolves with the answer's raw JSON.
    pub async fn rpc(&self, method: &str, data: Option<&str>) -> Result<String, RequestError> {
        let method = method.to_owned();
        let data = data.map(str::to_owned);
        let ack = self.ask(|r| Cmd::Rpc(method, data, r)).await?;
        Ok(ack_data(&ack))
    }
}

/// The raw JSON of an ack's `data` (`null` when absent).
fn ack_data(ack: &str) -> String {
    #[derive(serde::Deserialize)]
    struct Ack<'a> {
        #[serde(borrow, default)]
        data: Option<&'a serde_json::value::RawValue>,
    }
    serde_json::from_str::<Ack<'_>>(ack)
        .ok()
        .and_then(|a| a.data.map(|d| d.get().to_owned()))
        .unwrap_or_else(|| "null".to_owned())
}

/// The next text from the current socket, or never if there is none.
async fn next_text(
    socket: &mut Option<(u64, client::Client)>,
) -> (u64, Option<String>, Option<u16>) {
    match socket {
        None => std::future::pending().await,
        Some((id, c)) => loop {
            match c.recv().await {
                Ok(Message::Text(t)) => return (*id, Some(t.as_str().to_owned()), None),
                Ok(Message::Binary(_)) => continue, // not part of protocol v1
                Err(client::ClientError::Closed(info)) => return (*id, None, Some(info.code)),
                Err(_) => return (*id, None, Some(roomcast_core::close::code::ABNORMAL)),
            }
        },
    }
}

async fn drive(
    mut machine: Client,
    clock: Clock,
    options: ClientOptions,
    tokens: Option<TokenProvider>,
    mut commands: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<ClientEvent>,
) {
    let mut socket: Option<(u64, client::Client)> = None;
    let mut pending: HashMap<u64, Reply> = HashMap::new();
    let (sock_tx, mut sock_rx) = mpsc::unbounded_channel::<SocketEvent>();
    let mut closing: Option<oneshot::Sender<()>> = None;
    // The socket the machine asked for last: an older attempt that opens late is closed.
    let mut wanted = 0u64;
    loop {
        // Apply everything the machine asked for.
        while let Some(out) = machine.poll_output() {
            match out {
                ClientOutput::Connect { socket: id, url } => {
                    wanted = id;
                    let tx = sock_tx.clone();
                    let options = options.clone();
                    tokio::spawn(async move {
                        let ev = match client::Client::connect_with(&url, options).await {
                            Ok(c) => SocketEvent::Opened(id, c),
                            Err(_) => SocketEvent::Failed(id),
                        };
                        let _ = tx.send(ev);
                    });
                }
                ClientOutput::FetchToken { ticket } => {
                    let tx = sock_tx.clone();
                    let call = tokens.as_ref().map(|t| (t.0)());
                    tokio::spawn(async move {
                        let answer = match call {
                            Some(fut) => fut.await,
                            None => Err("no token provider".to_owned()),
                        };
                        let _ = tx.send(SocketEvent::Token(ticket, answer));
                    });
                }
                ClientOutput::Send { socket: id, text } => {
                    if let Some((cur, c)) = &socket {
                        if *cur == id && c.send_text(text).await.is_err() {
                            machine.handle_close(clock.now(), id, None);
                        }
                    }
                }
                ClientOutput::Close {
                    socket: id,
                    code,
                    reason,
                } => {
                    if socket.as_ref().is_some_and(|(cur, _)| *cur == id) {
                        let (_, c) = socket.take().expect("checked");
                        tokio::spawn(async move {
                            let _ = c.close(code, &reason).await;
                        });
                    }
                }
                ClientOutput::Event(ClientEvent::Ack { id, body }) => match pending.remove(&id) {
                    Some(reply) => {
                        let _ = reply.send(Ok(body));
                    }
                    None => {
                        let _ = events.send(ClientEvent::Ack { id, body });
                    }
                },
                ClientOutput::Event(ClientEvent::Error {
                    id: Some(id),
                    code,
                    message,
                }) if pending.contains_key(&id) => {
                    let reply = pending.remove(&id).expect("checked");
                    let _ = reply.send(Err(RequestError::Refused { code, message }));
                }
                ClientOutput::Event(e) => {
                    let _ = events.send(e);
                }
            }
        }
        if let Some(done) = closing.take() {
            let _ = done.send(());
            return;
        }
        let deadline = machine.poll_timeout().map(|t| clock.instant(t));
        tokio::select! {
            cmd = commands.recv() => {
                let Some(cmd) = cmd else {
                    // every handle dropped: close quietly
                    machine.close();
                    continue;
                };
                let (result, reply) = match cmd {
                    Cmd::Join(room, presence, r) => (machine.join(&room, presence), r),
                    Cmd::Leave(room, r) => (machine.leave(&room), r),
                    Cmd::Subscribe(ch, r) => (machine.subscribe(&ch), r),
                    Cmd::Unsubscribe(ch, r) => (machine.unsubscribe(&ch), r),
                    Cmd::Publish(target, event, data, echo, r) => {
                        (machine.publish(target, &event, data.as_deref(), echo), r)
                    }
                    Cmd::Rpc(method, data, r) => (machine.rpc(&method, data.as_deref()), r),
                    Cmd::Close(done) => {
                        machine.close();
                        closing = Some(done);
                        continue;
                    }
                };
                match result {
                    Ok(id) => {
                        pending.insert(id, reply);
                    }
                    Err(e) => {
                        let _ = reply.send(Err(RequestError::Invalid(e)));
                    }
                }
            }
            ev = sock_rx.recv() => match ev.expect("the task holds a sender") {
                SocketEvent::Opened(id, c) if id == wanted => {
                    machine.handle_open(clock.now(), id);
                    socket = Some((id, c));
                }
                SocketEvent::Opened(_, stale) => {
                    tokio::spawn(async move {
                        let _ = stale.close(1000, "superseded").await;
                    });
                }
                SocketEvent::Failed(id) => machine.handle_close(clock.now(), id, Some(1006)),
                SocketEvent::Token(ticket, answer) => machine.handle_token(clock.now(), ticket, answer),
            },
            (id, text, code) = next_text(&mut socket) => match text {
                Some(t) => machine.handle_message(clock.now(), id, &t),
                None => {
                    socket = None;
                    machine.handle_close(clock.now(), id, code);
                }
            },
            () = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => machine.handle_timeout(clock.now()),
        }
    }
}

//! The task that owns the [`Hub`].
//!
//! The hub is a plain `&mut self` state machine, so exactly one task owns it and others
//! talk to it through a bounded command channel (`crate::commands`): no lock is ever held
//! around routing, and the bound turns an overloaded hub into TCP backpressure on the
//! clients instead of unbounded memory. The task drains every ready command (up to a
//! batch) before it re-arms its single timer, and appends each `Output::Send` to the
//! receiver's outbox (`crate::outbox`): a room message is encoded once, whatever the room
//! size, and a burst wakes each receiver once. On a one-thread runtime the task writes the
//! outboxes of idle receivers itself once the batch is done, instead of waking them at
//! all.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

use roomcast_core::hub::{Answer, ConnId, DisconnectReason, Event, Hub, Output};
use tokio::sync::{broadcast, mpsc};
use tracing::{debug, info, trace};

use crate::clock::Clock;
use crate::commands::{Command, ConnectRefused, Registered};
use crate::config::BENCH_ROOM;
use crate::hooks::{self, Caller, Hooks};
use crate::metrics::Metrics;
use crate::outbox::{outbox, Due, OutboxTx};
use crate::redis_backplane::{Backplane, BackplaneInput};
use crate::socket;

/// Commands queued for the hub before a sender waits (backpressure past this).
pub(crate) const COMMAND_QUEUE: usize = 16 * 1024;
/// Most commands handled per wake-up before timers get a look.
const BATCH: usize = 1024;
/// Hub events buffered per [`crate::Roomcast::subscribe_events`] receiver before it lags.
pub(crate) const EVENT_QUEUE: usize = 1024;

/// Hashes a [`ConnId`] with one multiply: ids are assigned by the hub, never by a peer,
/// so there is nothing to defend against and SipHash would only cost time per send.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ConnMap = HashMap<ConnId, OutboxTx, BuildHasherDefault<IdHasher>>;

/// The hub task's state besides the hub itself.
struct HubTask {
    hub: Hub,
    clock: Clock,
    conns: ConnMap,
    events: broadcast::Sender<Event>,
    /// Outboxes this task writes itself at the end of the batch (`OutboxTx::frames`).
    direct_due: Vec<(ConnId, Due)>,
    /// Counts the bytes this task writes to sockets itself.
    metrics: Arc<Metrics>,
    /// Directly written bytes are reported to the hub in lumps of this much, as the
    /// socket tasks report theirs (`socket::flush_report_min`).
    flush_report_min: usize,
    shutting_down: bool,
    /// The application's hooks, and the way back for their answers (weak: the hub task
    /// must still stop when every handle and socket is gone).
    hooks: Option<(Arc<dyn Hooks>, mpsc::WeakSender<Command>)>,
    /// The Redis backplane (`--redis`), if this node shares rooms with others.
    backplane: Option<Backplane>,
}

/// The application's hooks and the way back for their answers.
pub(crate) type HookSeat = Option<(Arc<dyn Hooks>, mpsc::WeakSender<Command>)>;

pub(crate) async fn run_hub(
    hub: Hub,
    mut commands: mpsc::Receiver<Command>,
    clock: Clock,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
    (hooks, backplane): (HookSeat, Option<Backplane>),
) {
    let mut task = HubTask {
        hooks,
        backplane,
        flush_report_min: socket::flush_report_min(hub.config()),
        hub,
        clock,
        conns: ConnMap::default(),
        events,
        direct_due: Vec::new(),
        metrics,
        shutting_down: false,
    };
    let mut batch = Vec::with_capacity(BATCH);
    // One timer for the whole hub, re-armed only when the hub's next deadline changes.
    let sleep = tokio::time::sleep_until(clock.instant(roomcast_core::Timestamp(0)));
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let next = task.hub.poll_timeout();
        if next != armed {
            if let Some(t) = next {
                sleep.as_mut().reset(clock.instant(t));
            }
            armed = next;
        }
        tokio::select! {
            n = commands.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                for cmd in batch.drain(..) {
                    task.handle(cmd);
                    task.route();
                }
                // The batch is over: room messages held for it go out as one burst per
                // member.
                task.hub.flush();
                task.route();
                task.write_direct();
            }
            () = &mut sleep, if armed.is_some() => {
                // Fired: whatever the next deadline is, the timer must be re-armed.
                armed = None;
                let now = clock.now();
                task.hub.handle_timeout(now);
                task.route();
                task.write_direct();
            }
        }
    }
    debug!("hub task stopped: every handle and socket is gone");
}

impl HubTask {
    fn handle(&mut self, cmd: Command) {
        let now = self.clock.now();
        let hub = &mut self.hub;
        // `Err` from the hub here only means the connection is already gone (closed by
        // the hub and freed after its grace period): nothing to do.
        match cmd {
            Command::Text { conn, text } => {
                let _ = hub.handle_text(now, conn, text.as_str());
            }
            Command::BenchText { conn, text } => {
                // The tiny protocol: `sub` joins the one room, anything else goes to its
                // members as it is. Liveness is counted as for a JSON request.
                let _ = hub.handle_activity(now, conn);
                let _ = match text.as_str() {
                    "sub" => hub.join_untold(now, conn, BENCH_ROOM, false),
                    // Nobody subscribed yet: the room does not exist, nothing to deliver.
                    t => hub.send_raw_to_room(now, BENCH_ROOM, t, &[]).map(drop),
                };
            }
            Command::Flushed { conn, bytes } => {
                let _ = hub.handle_flushed(conn, bytes);
            }
            Command::Activity { conn } => {
                let _ = hub.handle_activity(now, conn);
            }
            Command::Binary { conn, len } => {
                let _ = hub.handle_binary(now, conn, len);
            }
            Command::Disconnect { conn, reason } => {
                trace!(%conn, reason = reason.as_str(), "socket gone");
                let _ = hub.handle_disconnect(now, conn, reason);
                self.conns.remove(&conn);
            }
            Command::Connect { req, reply } => {
                if self.shutting_down {
                    let _ = reply.send(Err(ConnectRefused::ShuttingDown));
                    return;
                }
                match hub.connect(now, req) {
                    Ok(conn) => {
                        let (tx, rx) = outbox();
                        self.conns.insert(conn, tx);
                        if reply.send(Ok(Registered { conn, rx })).is_err() {
                            // The HTTP request went away before the answer: undo.
                            self.conns.remove(&conn);
                            let _ = hub.handle_disconnect(
                                now,
                                conn,
                                DisconnectReason::Closed { code: Some(1006) },
                            );
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ConnectRefused::Hub(e)));
                    }
                }
            }
            Command::Call(f) => f(hub, now),
            Command::Decided { ticket, answer } => {
                let _ = hub.handle_decision(now, ticket, answer);
            }
            Command::Backplane(input) => match input {
                BackplaneInput::Appended { ticket, result } => {
                    hub.handle_appended(now, ticket, result);
                }
                BackplaneInput::Logged {
                    room,
                    epoch,
                    seq,
                    body,
                } => hub.handle_logged(now, &room, &epoch, seq, &body),
                BackplaneInput::Loaded { room, loaded } => hub.handle_loaded(now, &room, loaded),
                BackplaneInput::LoadFailed { room } => hub.handle_load_failed(now, &room),
                BackplaneInput::Resync => hub.handle_backplane_resync(now),
                BackplaneInput::Remote { node, forward } => hub.handle_remote(now, node, &forward),
                BackplaneInput::Control { control } => hub.handle_control(now, &control),
            },
            Command::Shutdown { done } => {
                if !self.shutting_down {
                    info!(
                        connections = hub.stats().connections,
                        "shutting down: closing every connection with 1001"
                    );
                }
                self.shutting_down = true;
                hub.shutdown(now);
                let _ = done.send(());
            }
        }
    }

    /// Writes the outboxes of idle sockets that received something in this batch (one
    /// write each, whatever the batch held), and accounts for the bytes as the socket task
    /// does for its own writes.
    fn write_direct(&mut self) {
        let mut due = std::mem::take(&mut self.direct_due);
        let mut bytes = 0;
        for (conn, outbox) in due.drain(..) {
            // A connection closed since is no longer idle: its write does nothing.
            let written = outbox.write(self.flush_report_min);
            bytes += written.bytes;
            if written.report > 0 {
                let _ = self.hub.handle_flushed(conn, written.report);
            }
        }
        if bytes > 0 {
            self.metrics.written(bytes);
        }
        self.direct_due = due;
    }

    /// Runs the hook that answers `decision` on a task of its own; its answer comes
    /// back as a command. Without hooks (or once the hub is going away) it is refused
    /// `unavailable` at once.
    fn decide(&mut self, decision: roomcast_core::hub::Decision) {
        let ticket = decision.ticket;
        let back = self
            .hooks
            .as_ref()
            .and_then(|(h, w)| Some((h, w.upgrade()?)));
        let Some((hooks, back)) = back else {
            let now = self.clock.now();
            let _ = self.hub.handle_decision(now, ticket, Answer::Unavailable);
            return;
        };
        let answer = hooks::ask(hooks.as_ref(), decision);
        tokio::spawn(async move {
            let answer = answer.await;
            let _ = back.send(Command::Decided { ticket, answer }).await;
        });
    }

    /// Drains the hub's outputs to the socket queues.
    fn route(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    if let Some(due) = self.conns.get(&conn).and_then(|tx| tx.frame(&msg)) {
                        self.direct_due.push((conn, due));
                    }
                }
                Output::SendFrames { conn, frames } => {
                    if let Some(due) = self.conns.get(&conn).and_then(|tx| tx.frames(&frames)) {
                        self.direct_due.push((conn, due));
                    }
                }
                Output::Ping { conn } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        tx.ping();
                    }
                }
                Output::Close { conn, code, reason } => {
                    // Nothing follows a close: the outbox ignores anything after it.
                    if let Some(tx) = self.conns.remove(&conn) {
                        tx.close(code, reason);
                    }
                }
                Output::Decide(decision) => self.decide(*decision),
                Output::Event(event) => {
                    if let (Event::RoomRemoved { room }, Some(b)) = (&event, &self.backplane) {
                        b.unfollow(room.clone());
                    }
                    if let Event::Disconnected {
                        conn,
                        wire_id,
                        user,
                        reason,
                    } = &event
                    {
                        debug!(%conn, reason = reason.as_str(), "disconnected");
                        if let Some((hooks, _)) = &self.hooks {
                            let caller = Caller {
                                conn: *conn,
                                wire_id: wire_id.to_string(),
                                user: user.as_deref().map(str::to_owned),
                                info: None,
                            };
                            hooks.disconnected(caller, reason.clone());
                        }
                    }
                    if self.events.receiver_count() > 0 {
                        let _ = self.events.send(event);
                    }
                }
                Output::Control(c) => {
                    if let Some(b) = &self.backplane {
                        b.control(*c);
                    }
                }
                Output::Forward(f) => match &self.backplane {
                    Some(b) => b.forward(*f),
                    None => trace!("dropping a backplane forward: no backplane configured"),
                },
                Output::Append(a) => match &self.backplane {
                    Some(b) => b.append(*a),
                    None => {
                        let now = self.clock.now();
                        let err = Err(roomcast_core::hub::BackplaneError::Unavailable);
                        self.hub.handle_appended(now, a.ticket, err);
                    }
                },
                Output::Load(l) => match &self.backplane {
                    Some(b) => b.load(*l),
                    None => {
                        let now = self.clock.now();
                        self.hub.handle_load_failed(now, &l.room);
                    }
                },
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use roomcast_core::hub::{ConnectError, ConnectRequest, Event, RoomOptions};

    use crate::commands::ConnectRefused;
    use crate::config::Config;
    use crate::handle::{CallError, Roomcast};

    #[tokio::test]
    async fn call_runs_on_the_hub_and_survives_a_panic() {
        let rc = Roomcast::new(Config::default());
        rc.call(|hub, now| hub.create_room(now, "lobby", RoomOptions::default()))
            .await
            .unwrap()
            .unwrap();
        let panicked = rc.call(|_hub, _| -> () { panic!("boom") }).await;
        assert_eq!(panicked, Err(CallError::Panicked));
        let rooms = rc
            .call(|hub, _| hub.rooms().map(str::to_owned).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(rooms, ["lobby"]);
        assert!(rc.is_running());
        assert!(rc
            .metrics_text()
            .await
            .unwrap()
            .contains("roomcast_rooms 1\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn admission_events_and_shutdown() {
        let mut config = Config::default();
        config.hub.max_connections = 1;
        let rc = Roomcast::new(config);
        let mut events = rc.subscribe_events();
        let req = ConnectRequest {
            user: Some("ada".into()),
            ..ConnectRequest::default()
        };
        let mut reg = rc.connect(req.clone()).await.unwrap();
        let welcome = reg.rx.take(false).await;
        assert_eq!(welcome.pieces.len(), 1, "welcome");
        assert!(matches!(
            events.recv().await,
            Ok(Event::Connected { user: Some(u), .. }) if &*u == "ada"
        ));
        assert_eq!(
            rc.connect(req).await.err(),
            Some(ConnectRefused::Hub(ConnectError::Full))
        );
        // Shutdown closes the connection with 1001 and refuses newcomers; with no socket
        // task running, it returns at once.
        assert!(rc.shutdown().await);
        let last = reg.rx.take(false).await;
        assert!(matches!(last.close, Some((1001, _))));
        assert!(last.is_final(), "nothing follows a close");
        assert_eq!(
            rc.connect(ConnectRequest::default()).await.err(),
            Some(ConnectRefused::ShuttingDown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_drives_heartbeat_pings_and_reaping() {
        let mut config = Config::default();
        config.hub.heartbeat = crate::config::heartbeat_for(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_millis(200),
        );
        let rc = Roomcast::new(config);
        let mut reg = rc.connect(ConnectRequest::default()).await.unwrap();
        assert_eq!(reg.rx.take(false).await.pieces.len(), 1, "welcome");
        // With the clock paused, tokio jumps straight to the hub's deadlines.
        assert!(reg.rx.take(false).await.ping);
        assert!(matches!(reg.rx.take(false).await.close, Some((1001, _))));
        assert_eq!(rc.stats().await.unwrap().heartbeat_timeouts, 1);
    }
}

//! Soak run: mixed load against a fresh `roomcast` for a configurable duration, then a
//! check that nothing was lost and nothing leaked.
//!
//! ```text
//! soak [--duration 30m] [--clients 150] [--rooms 20] [--seed N]
//! ```
//! (`scripts/soak.sh DURATION` builds in release mode and runs it.)
//!
//! Actors, all at once, over source addresses 127.0.0.1-8:
//! - anchors: one per room, member for the whole run (so rooms keep their epoch);
//! - churners (`--clients`): connect, join 1-3 rooms, publish about once a second, now
//!   and then leave a room for another, disconnect after 2-20 s and reconnect;
//! - sluggish readers: like churners but pausing up to 40 ms after every message and for
//!   2 s now and then (they keep up on average, so they must never be closed);
//! - a firehose room with two publishers of 16 KiB messages at 50/s each, and stallers
//!   that join it and stop reading until the server closes them (1008), then come back;
//! - misbehavers: junk after the handshake, oversized frame headers, handshakes abandoned
//!   halfway, resets mid-session, silent (half-open) peers, short request floods.
//!
//! Every well-behaved client checks, message by message, that each room's seqs arrive
//! contiguous from its join onwards (so delivered == expected, exactly once, in order),
//! and that seq N of a room is the same message for every receiver and for the
//! publisher's ack. Before leaving a room (or disconnecting) it publishes a "bye" with
//! echo and waits for it, so the tail of every membership is checked too.
//!
//! Leaks: a warm-up phase (a tenth of the duration, 20 s to 2 min) runs the same mix and
//! quiesces (every client gone); the server's RSS and open files then are the baseline.
//! After the main phase quiesces the same way, open files must equal the baseline (+2)
//! and RSS must be within 25% + 8 MiB of it. Exit status 0 only if every check passed.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use roomcast_adversarial::raw::{self, RawWs, TEXT};
use roomcast_adversarial::ws::{self, Ws};
use roomcast_adversarial::{Rng, Server};
use serde_json::{json, Value};
use tokio::net::TcpSocket;
use tokio::sync::watch;
use tokio::time::{sleep, sleep_until, timeout, Instant};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// Bound on any reply a well-behaved client waits for.
const REPLY: Duration = Duration::from_secs(10);
const FIREHOSE: &str = "firehose";
const VIOLATIONS_KEPT: usize = 50;

struct Options {
    duration: Duration,
    clients: usize,
    rooms: usize,
    seed: u64,
}

fn parse_args() -> Result<Options, String> {
    let mut o = Options {
        duration: Duration::from_secs(30 * 60),
        clients: 150,
        rooms: 20,
        seed: 1,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().ok_or(format!("{a} needs a value"));
        match a.as_str() {
            "--duration" => o.duration = parse_duration(&val()?)?,
            "--clients" => o.clients = val()?.parse().map_err(|e| format!("--clients: {e}"))?,
            "--rooms" => o.rooms = val()?.parse().map_err(|e| format!("--rooms: {e}"))?,
            "--seed" => o.seed = val()?.parse().map_err(|e| format!("--seed: {e}"))?,
            "-h" | "--help" => {
                return Err(
                    "usage: soak [--duration 30m] [--clients 150] [--rooms 20] [--seed N]".into(),
                )
            }
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if o.rooms == 0 || o.clients == 0 {
        return Err("--rooms and --clients must be at least 1".into());
    }
    Ok(o)
}

/// `90s`, `5m`, `1h`, or plain seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, mult) = match s.chars().last() {
        Some('s') => (&s[..s.len() - 1], 1),
        Some('m') => (&s[..s.len() - 1], 60),
        Some('h') => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    let n: u64 = num.parse().map_err(|_| format!("bad duration {s:?}"))?;
    Ok(Duration::from_secs(n * mult))
}

/// (room, epoch, seq): one room message.
type MessageKey = (String, String, u64);
/// (publisher, counter): who published it.
type Origin = (u64, u64);

/// Counters and the shared ledger.
#[derive(Default)]
struct Shared {
    /// (room, epoch, seq) -> (publisher, counter): the first observer records, every
    /// other one compares.
    ledger: Mutex<HashMap<MessageKey, Origin>>,
    violations: Mutex<Vec<String>>,
    violation_count: AtomicU64,
    publishes: AtomicU64,
    delivered: AtomicU64,
    intervals: AtomicU64,
    sessions: AtomicU64,
    max_ack_us: AtomicU64,
    staller_1008: AtomicU64,
    staller_other_close: AtomicU64,
    staller_dropped: AtomicU64,
    staller_still_open: AtomicU64,
    misbehaved: AtomicU64,
    misbehaver_unexpected: AtomicU64,
}

impl Shared {
    fn violation(&self, what: String) {
        self.violation_count.fetch_add(1, Relaxed);
        let mut v = self.violations.lock().unwrap();
        if v.len() < VIOLATIONS_KEPT {
            eprintln!("VIOLATION: {what}");
            v.push(what);
        }
    }

    fn check_ledger(&self, room: &str, epoch: &str, seq: u64, who: Origin, by: &str) {
        let mut l = self.ledger.lock().unwrap();
        let prev = *l
            .entry((room.to_owned(), epoch.to_owned(), seq))
            .or_insert(who);
        drop(l);
        if prev != who {
            self.violation(format!(
                "{by}: {room}#{seq} is {who:?} here but {prev:?} elsewhere"
            ));
        }
    }
}

/// Per-phase context.
#[derive(Clone)]
struct Ctx {
    addr: SocketAddr,
    shared: Arc<Shared>,
    stop: watch::Receiver<bool>,
    rooms: usize,
}

impl Ctx {
    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }
}

fn source(i: u64) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1 + (i % 8) as u8))
}

/// A room this client is in: the epoch, and the seq it expects next.
struct Membership {
    epoch: String,
    next: u64,
}

/// Why a well-behaved session ended early.
#[derive(Debug)]
struct Abort(String);

/// A well-behaved client connection with its checks.
struct Member {
    ws: Ws,
    name: String,
    id: u64,
    rooms: HashMap<String, Membership>,
    counter: u64,
    next_req: u64,
    ctx: Ctx,
    /// Pause after each message (sluggish readers).
    sluggish: Option<Rng>,
}

impl Member {
    async fn connect(ctx: &Ctx, name: String, id: u64, sluggish: bool) -> Result<Member, Abort> {
        let (ws, _) = timeout(REPLY, async {
            let ws = ws::try_connect_from(source(id), ctx.addr, "/ws").await?;
            Ok::<_, String>((ws, ()))
        })
        .await
        .map_err(|_| Abort(format!("{name}: connect timed out")))?
        .map_err(|e| Abort(format!("{name}: connect: {e}")))?;
        let mut m = Member {
            ws,
            name,
            id,
            rooms: HashMap::new(),
            counter: 0,
            next_req: 0,
            ctx: ctx.clone(),
            sluggish: sluggish.then(|| Rng::new(id ^ 0x51)),
        };
        let w = m.next(Instant::now() + REPLY).await?;
        if w["type"] != "welcome" {
            return Err(Abort(format!("{}: first message {w}", m.name)));
        }
        m.ctx.shared.sessions.fetch_add(1, Relaxed);
        Ok(m)
    }

    /// The next message: a room delivery is checked and counted here (`None`), anything
    /// else is returned.
    async fn next_any(&mut self, deadline: Instant) -> Result<Option<Value>, Abort> {
        let m = ws::next_json_until(&mut self.ws, deadline)
            .await
            .map_err(|e| Abort(format!("{}: {e:?}", self.name)))?;
        if m["type"] == "message" && m["room"].is_string() {
            self.delivery(&m);
            if let Some(rng) = self.sluggish.as_mut() {
                sleep(Duration::from_millis(rng.below(40))).await;
            }
            return Ok(None);
        }
        Ok(Some(m))
    }

    /// The next message that is not a room delivery, before `deadline`.
    async fn next(&mut self, deadline: Instant) -> Result<Value, Abort> {
        loop {
            if let Some(m) = self.next_any(deadline).await? {
                return Ok(m);
            }
        }
    }

    fn delivery(&mut self, m: &Value) {
        let shared = Arc::clone(&self.ctx.shared);
        shared.delivered.fetch_add(1, Relaxed);
        let room = m["room"].as_str().unwrap_or_default();
        let seq = m["seq"].as_u64().unwrap_or(0);
        let Some(r) = self.rooms.get_mut(room) else {
            shared.violation(format!(
                "{}: message for {room} while not a member: {m}",
                self.name
            ));
            return;
        };
        if seq != r.next {
            shared.violation(format!(
                "{}: {room} seq {seq}, expected {} (lost, duplicated or reordered)",
                self.name, r.next
            ));
        }
        r.next = seq + 1;
        let who = (
            m["data"]["p"].as_u64().unwrap_or(u64::MAX),
            m["data"]["c"].as_u64().unwrap_or(u64::MAX),
        );
        let epoch = r.epoch.clone();
        shared.check_ledger(room, &epoch, seq, who, &self.name);
    }

    /// Reads deliveries until `until` (or stop); no reply is expected meanwhile.
    async fn idle(&mut self, until: Instant) -> Result<(), Abort> {
        let mut stop = self.ctx.stop.clone();
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            tokio::select! {
                m = ws::next_json_until(&mut self.ws, until) => match m {
                    Ok(m) if m["type"] == "message" && m["room"].is_string() => {
                        self.delivery(&m);
                        if let Some(rng) = self.sluggish.as_mut() {
                            sleep(Duration::from_millis(rng.below(40))).await;
                        }
                    }
                    Ok(m) => return Err(Abort(format!("{}: unexpected {m}", self.name))),
                    Err(ws::WsEnd::Timeout) => return Ok(()),
                    Err(e) => return Err(Abort(format!("{}: {e:?}", self.name))),
                },
                _ = stop.changed() => {}
            }
        }
    }

    async fn request(&mut self, mut req: Value) -> Result<Value, Abort> {
        self.next_req += 1;
        let id = self.next_req;
        req["id"] = json!(id);
        self.ws
            .send(Message::text(req.to_string()))
            .await
            .map_err(|e| Abort(format!("{}: send: {e}", self.name)))?;
        let t = Instant::now();
        let deadline = t + REPLY;
        let m = self.next(deadline).await?;
        if m["id"] != id {
            return Err(Abort(format!("{}: reply {m} to request {id}", self.name)));
        }
        if self.sluggish.is_none() {
            let us = t.elapsed().as_micros() as u64;
            self.ctx.shared.max_ack_us.fetch_max(us, Relaxed);
        }
        Ok(m)
    }

    async fn join(&mut self, room: &str) -> Result<(), Abort> {
        if self.rooms.contains_key(room) {
            return Ok(());
        }
        let ack = self.request(json!({"type": "join", "room": room})).await?;
        if ack["type"] != "ack" {
            return Err(Abort(format!("{}: join {room}: {ack}", self.name)));
        }
        let seq = ack["seq"].as_u64().unwrap_or(0);
        let epoch = ack["epoch"].as_str().unwrap_or_default().to_owned();
        self.rooms.insert(
            room.to_owned(),
            Membership {
                epoch,
                next: seq + 1,
            },
        );
        Ok(())
    }

    async fn publish(&mut self, room: &str, event: &str, pad: usize) -> Result<u64, Abort> {
        self.counter += 1;
        let c = self.counter;
        let req = json!({"type": "publish", "room": room, "event": event, "echo": true,
                         "data": {"p": self.id, "c": c, "pad": "x".repeat(pad)}});
        let ack = self.request(req).await?;
        if ack["type"] != "ack" {
            return Err(Abort(format!("{}: publish to {room}: {ack}", self.name)));
        }
        self.ctx.shared.publishes.fetch_add(1, Relaxed);
        let seq = ack["seq"].as_u64().unwrap_or(0);
        if let Some(r) = self.rooms.get(room) {
            let epoch = r.epoch.clone();
            self.ctx
                .shared
                .check_ledger(room, &epoch, seq, (self.id, c), &self.name);
        }
        Ok(seq)
    }

    /// Publishes a "bye" with echo and reads up to it: every message of the room up to
    /// now has been checked. Then leaves.
    async fn leave(&mut self, room: &str) -> Result<(), Abort> {
        let bye = self.publish(room, "bye", 0).await?;
        let deadline = Instant::now() + REPLY;
        while self.rooms.get(room).is_some_and(|r| r.next <= bye) {
            if let Some(m) = self.next_any(deadline).await? {
                return Err(Abort(format!(
                    "{}: unexpected {m} before own bye",
                    self.name
                )));
            }
        }
        let ack = self.request(json!({"type": "leave", "room": room})).await?;
        if ack["type"] != "ack" {
            return Err(Abort(format!("{}: leave {room}: {ack}", self.name)));
        }
        self.rooms.remove(room);
        self.ctx.shared.intervals.fetch_add(1, Relaxed);
        Ok(())
    }

    /// Leaves every room (checking each) and closes cleanly.
    async fn finish(mut self) -> Result<(), Abort> {
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for r in rooms {
            self.leave(&r).await?;
        }
        let _ = self
            .ws
            .send(Message::Close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            })))
            .await;
        // Wait (bounded) for the server's close reply so it is not cut short.
        let _ = timeout(Duration::from_secs(5), async {
            while let Some(Ok(_)) = self.ws.next().await {}
        })
        .await;
        Ok(())
    }
}

/// A churner (or sluggish reader): sessions of joins, publishes, room changes.
async fn churner(ctx: Ctx, id: u64, sluggish: bool) {
    let mut rng = Rng::new(id.wrapping_mul(0x9E37_79B9) ^ 7);
    let kind = if sluggish { "sluggish" } else { "churner" };
    while !ctx.stopping() {
        let name = format!("{kind}-{id}");
        let result = async {
            let mut m = Member::connect(&ctx, name.clone(), id, sluggish).await?;
            let n_rooms = 1 + rng.below(3);
            for _ in 0..n_rooms {
                let room = format!("room-{}", rng.below(ctx.rooms as u64));
                m.join(&room).await?;
            }
            let secs = if sluggish {
                10 + rng.below(30)
            } else {
                2 + rng.below(18)
            };
            let end = Instant::now() + Duration::from_secs(secs);
            while Instant::now() < end && !ctx.stopping() {
                let pause = Duration::from_millis(500 + rng.below(1000));
                m.idle(Instant::now() + pause).await?;
                if ctx.stopping() {
                    break;
                }
                let roll = rng.below(100);
                let joined: Vec<String> = m.rooms.keys().cloned().collect();
                if sluggish && roll < 5 {
                    // Stop reading for 2 s: a backlog builds, then is caught up.
                    sleep(Duration::from_secs(2)).await;
                } else if roll < 80 && !sluggish {
                    let room = &joined[rng.below(joined.len() as u64) as usize];
                    m.publish(room, "chat", rng.below(300) as usize).await?;
                } else if roll < 90 {
                    let old = &joined[rng.below(joined.len() as u64) as usize];
                    m.leave(old).await?;
                    let room = format!("room-{}", rng.below(ctx.rooms as u64));
                    m.join(&room).await?;
                } else if sluggish && roll < 20 {
                    let room = &joined[rng.below(joined.len() as u64) as usize];
                    m.publish(room, "chat", 10).await?;
                }
            }
            m.finish().await
        }
        .await;
        if let Err(Abort(e)) = result {
            ctx.shared.violation(e);
            // Do not hammer the server if something is badly wrong.
            sleep(Duration::from_millis(500)).await;
        }
    }
}

/// One member per room for the whole phase.
async fn anchor(ctx: Ctx, id: u64, room: String) {
    let result = async {
        let mut m = Member::connect(&ctx, format!("anchor-{room}"), id, false).await?;
        m.join(&room).await?;
        while !ctx.stopping() {
            m.idle(Instant::now() + Duration::from_secs(5)).await?;
        }
        m.finish().await
    }
    .await;
    if let Err(Abort(e)) = result {
        ctx.shared.violation(e);
    }
}

/// Publishes 16 KiB messages to the firehose at 50/s.
async fn firehose_publisher(ctx: Ctx, id: u64) {
    let result = async {
        let mut m = Member::connect(&ctx, format!("firehose-pub-{id}"), id, false).await?;
        m.join(FIREHOSE).await?;
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        while !ctx.stopping() {
            tick.tick().await;
            m.publish(FIREHOSE, "blob", 16 * 1024).await?;
        }
        m.finish().await
    }
    .await;
    if let Err(Abort(e)) = result {
        ctx.shared.violation(e);
    }
}

/// Joins the firehose and stops reading; after a while looks at how it was ended.
async fn staller(ctx: Ctx, id: u64) {
    let mut rng = Rng::new(id ^ 0xABCD);
    while !ctx.stopping() {
        let sock = TcpSocket::new_v4().expect("socket");
        let _ = sock.set_recv_buffer_size(4096);
        let _ = sock.bind(SocketAddr::new(source(id), 0));
        let Ok(Ok(stream)) = timeout(REPLY, sock.connect(ctx.addr)).await else {
            ctx.shared
                .violation(format!("staller-{id}: connect failed"));
            sleep(Duration::from_secs(1)).await;
            continue;
        };
        let Ok(mut p) = RawWs::upgrade(stream, ctx.addr, "/ws").await else {
            ctx.shared
                .violation(format!("staller-{id}: upgrade failed"));
            continue;
        };
        let join = json!({"type": "join", "room": FIREHOSE, "id": 1}).to_string();
        if p.send_frame(true, TEXT, join.as_bytes()).await.is_err() {
            continue;
        }
        // Stall 5-15 s (or until stop), then read what is there.
        let until = Instant::now() + Duration::from_secs(5 + rng.below(10));
        let mut stop = ctx.stop.clone();
        tokio::select! {
            () = sleep_until(until) => {}
            _ = stop.wait_for(|s| *s) => {}
        }
        match p.ending(Duration::from_secs(20)).await {
            raw::Ending::Close(Some((1008, _))) => ctx.shared.staller_1008.fetch_add(1, Relaxed),
            raw::Ending::Close(_) => ctx.shared.staller_other_close.fetch_add(1, Relaxed),
            raw::Ending::StillOpen => ctx.shared.staller_still_open.fetch_add(1, Relaxed),
            raw::Ending::Dropped(_) => ctx.shared.staller_dropped.fetch_add(1, Relaxed),
        };
    }
}

/// A stream of short-lived bad peers.
async fn misbehaver(ctx: Ctx, seed: u64) {
    let mut rng = Rng::new(seed);
    let mut silent = Vec::new();
    let mut tick = tokio::time::interval(Duration::from_millis(700));
    while !ctx.stopping() {
        tick.tick().await;
        // Silent peers are kept 15 s (the server reaps them at 10 s), then dropped.
        silent.retain(|(since, _): &(Instant, RawWs)| since.elapsed() < Duration::from_secs(15));
        ctx.shared.misbehaved.fetch_add(1, Relaxed);
        let addr = ctx.addr;
        let ok = match rng.below(6) {
            0 => {
                let mut p = RawWs::welcomed(addr, "/ws").await;
                let _ = p.send_raw(&rng.bytes(1024)).await;
                matches!(p.ending(REPLY).await.code(), Some(1002 | 1007 | 1009))
            }
            1 => {
                let mut p = RawWs::welcomed(addr, "/ws").await;
                let _ = p.send_raw(&raw::header_declaring(TEXT, 1 << 62)).await;
                p.ending(REPLY).await.code() == Some(1009)
            }
            2 => {
                let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
                let _ = tokio::io::AsyncWriteExt::write_all(
                    &mut s,
                    b"GET /ws HTTP/1.1\r\nHost: x\r\nUpg",
                )
                .await;
                true // dropped (FIN) halfway
            }
            3 => {
                let mut p = RawWs::welcomed(addr, "/ws").await;
                let room = format!("room-{}", rng.below(ctx.rooms as u64));
                let join = json!({"type": "join", "room": room, "id": 1}).to_string();
                let _ = p.send_frame(true, TEXT, join.as_bytes()).await;
                let s = p.into_stream();
                #[allow(deprecated)] // zero linger: the drop sends a RST, nothing blocks
                let _ = s.set_linger(Some(Duration::ZERO));
                true
            }
            4 => {
                if silent.len() < 5 {
                    silent.push((Instant::now(), RawWs::welcomed(addr, "/ws").await));
                }
                true
            }
            _ => {
                // 600 requests at once: the burst is 500, so some are rate limited; the
                // connection stays open.
                let mut p = RawWs::welcomed(addr, "/ws").await;
                let mut batch = Vec::new();
                for i in 0..600 {
                    let t = format!(r#"{{"type":"ping","id":{i}}}"#);
                    batch.extend_from_slice(&raw::encode_frame(
                        true,
                        TEXT,
                        t.as_bytes(),
                        [1, 2, 3, 4],
                    ));
                }
                let _ = p.send_raw(&batch).await;
                let mut limited = 0;
                let mut ok = true;
                for _ in 0..600 {
                    match p.read_json(REPLY).await {
                        Ok(m) if m["code"] == "rate_limited" => limited += 1,
                        Ok(m) if m["type"] == "pong" => {}
                        _ => {
                            ok = false;
                            break;
                        }
                    }
                }
                ok && limited > 0
            }
        };
        if !ok {
            ctx.shared.misbehaver_unexpected.fetch_add(1, Relaxed);
        }
    }
}

/// Runs every actor until `length` has passed, then stops them and waits (bounded)
/// for them to finish.
async fn phase(server: &Server, shared: &Arc<Shared>, o: &Options, length: Duration, label: &str) {
    let (stop_tx, stop_rx) = watch::channel(false);
    let ctx = Ctx {
        addr: server.addr,
        shared: Arc::clone(shared),
        stop: stop_rx,
        rooms: o.rooms,
    };
    let mut tasks = Vec::new();
    let mut id = 0u64;
    let mut next_id = || {
        id += 1;
        id
    };
    for r in 0..o.rooms {
        tasks.push(tokio::spawn(anchor(
            ctx.clone(),
            next_id(),
            format!("room-{r}"),
        )));
    }
    tasks.push(tokio::spawn(anchor(
        ctx.clone(),
        next_id(),
        FIREHOSE.to_owned(),
    )));
    for _ in 0..o.clients {
        tasks.push(tokio::spawn(churner(ctx.clone(), next_id(), false)));
    }
    for _ in 0..(o.clients / 15).max(1) {
        tasks.push(tokio::spawn(churner(ctx.clone(), next_id(), true)));
    }
    for _ in 0..2 {
        tasks.push(tokio::spawn(firehose_publisher(ctx.clone(), next_id())));
    }
    for _ in 0..3 {
        tasks.push(tokio::spawn(staller(ctx.clone(), next_id())));
    }
    tasks.push(tokio::spawn(misbehaver(ctx.clone(), o.seed ^ next_id())));

    let start = Instant::now();
    let end = start + length;
    let mut last_delivered = shared.delivered.load(Relaxed);
    let mut last_report = start;
    while Instant::now() < end {
        let next = (last_report + Duration::from_secs(60)).min(end);
        sleep_until(next).await;
        let d = shared.delivered.load(Relaxed);
        let rate = (d - last_delivered) as f64 / last_report.elapsed().as_secs_f64();
        last_delivered = d;
        last_report = Instant::now();
        println!(
            "[{label} {:>5.0}s] server RSS {} KiB, fds {}, connections {}; {:.0} deliveries/s; \
             publishes {}, sessions {}, violations {}",
            start.elapsed().as_secs_f64(),
            server.rss_kib(),
            server.open_fds(),
            server.metric("roomcast_connections").await,
            rate,
            shared.publishes.load(Relaxed),
            shared.sessions.load(Relaxed),
            shared.violation_count.load(Relaxed),
        );
    }
    stop_tx.send_replace(true);
    let stopping = Instant::now();
    for t in tasks {
        match timeout(Duration::from_secs(60), t).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => shared.violation(format!("{label}: an actor failed: {e}")),
            Err(_) => shared.violation(format!(
                "{label}: an actor did not finish within 60 s of stop"
            )),
        }
    }
    println!(
        "[{label}] every actor finished {:?} after stop",
        stopping.elapsed()
    );
}

/// Waits (bounded) until the server has no connections and no sockets left.
async fn quiesce(server: &Server) -> bool {
    let ok = server
        .wait_metric("roomcast_sockets", Duration::from_secs(60), |v| v == 0.0)
        .await
        .is_ok();
    ok && server
        .wait_metric("roomcast_connections", Duration::from_secs(10), |v| {
            v == 0.0
        })
        .await
        .is_ok()
}

fn main() -> std::process::ExitCode {
    let o = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            eprintln!("{e}");
            return std::process::ExitCode::from(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let ok = rt.block_on(run(o));
    if ok {
        std::process::ExitCode::SUCCESS
    } else {
        std::process::ExitCode::FAILURE
    }
}

async fn run(o: Options) -> bool {
    let server = Server::start(&["--ping-interval", "5s", "--pong-timeout", "5s"]);
    let shared = Arc::new(Shared::default());
    let start_rss = server.rss_kib();
    let start_fds = server.open_fds();
    let warmup = (o.duration / 10).clamp(Duration::from_secs(20), Duration::from_secs(120));
    println!(
        "soak: server pid {} on {}; warm-up {warmup:?}, then {:?}; {} churners, {} sluggish, \
         {} rooms + firehose; seed {}",
        server.pid(),
        server.addr,
        o.duration,
        o.clients,
        (o.clients / 15).max(1),
        o.rooms,
        o.seed
    );
    phase(&server, &shared, &o, warmup, "warm-up").await;
    let t = Instant::now();
    let q1 = quiesce(&server).await;
    println!("[warm-up] quiesced in {:?}", t.elapsed());
    let base_rss = server.rss_kib();
    let base_fds = server.open_fds();
    println!("baseline after warm-up: RSS {base_rss} KiB, fds {base_fds} (at start: {start_rss} KiB, {start_fds})");

    let t = Instant::now();
    phase(&server, &shared, &o, o.duration, "soak").await;
    let q2 = quiesce(&server).await;
    let ran = t.elapsed();
    let end_rss = server.rss_kib();
    let end_fds = server.open_fds();
    let metrics = server.metrics().await;
    let m = |name: &str| {
        roomcast_adversarial::metric_value(&metrics, name)
            .unwrap_or_else(|| panic!("the server exports no metric {name:?}"))
    };

    let s = &shared;
    let violations = s.violation_count.load(Relaxed);
    let rss_limit = base_rss + base_rss / 4 + 8 * 1024;
    let fds_ok = end_fds <= base_fds + 2;
    let rss_ok = end_rss <= rss_limit;
    let panicked = server.stderr().contains("panicked");
    println!(
        "\nsoak result after {ran:?} (+ warm-up {warmup:?}):\n\
         - well-behaved: {} publishes, {} deliveries checked (contiguous seqs per membership, \
           same message per seq everywhere), {} memberships closed with a bye barrier, {} \
           sessions; violations: {violations}\n\
         - slowest reply to a request (sluggish readers excluded): {:.1} ms\n\
         - stallers: {} closed 1008, {} other close, {} dropped, {} not closed; server counted {} slow-consumer \
           closes, {} heartbeat timeouts, {} rate-limited requests\n\
         - misbehavers: {} bad peers, {} with an unexpected outcome\n\
         - quiesced: warm-up {q1}, end {q2}\n\
         - server RSS: start {start_rss} KiB, baseline {base_rss} KiB, end {end_rss} KiB (limit \
           {rss_limit} KiB: baseline + 25% + 8 MiB) -> {}\n\
         - server open files: start {start_fds}, baseline {base_fds}, end {end_fds} (limit \
           baseline + 2) -> {}\n\
         - server panicked: {panicked}",
        s.publishes.load(Relaxed),
        s.delivered.load(Relaxed),
        s.intervals.load(Relaxed),
        s.sessions.load(Relaxed),
        s.max_ack_us.load(Relaxed) as f64 / 1000.0,
        s.staller_1008.load(Relaxed),
        s.staller_other_close.load(Relaxed),
        s.staller_dropped.load(Relaxed),
        s.staller_still_open.load(Relaxed),
        m("roomcast_slow_consumer_closes_total"),
        m("roomcast_heartbeat_timeouts_total"),
        m("roomcast_rate_limited_total"),
        s.misbehaved.load(Relaxed),
        s.misbehaver_unexpected.load(Relaxed),
        if rss_ok { "ok" } else { "FAIL" },
        if fds_ok { "ok" } else { "FAIL" },
    );
    for v in s.violations.lock().unwrap().iter() {
        println!("  violation: {v}");
    }
    let pass = violations == 0
        && s.misbehaver_unexpected.load(Relaxed) == 0
        && q1
        && q2
        && rss_ok
        && fds_ok
        && !panicked;
    println!("SOAK {}", if pass { "PASSED" } else { "FAILED" });
    pass
}

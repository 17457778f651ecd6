//! One load-generator process: opens its share of a cell's connections, says `ready`,
//! waits for `go T0 TM T1` on stdin (CLOCK_MONOTONIC nanoseconds: measure from T0, phase
//! B of the slow-consumer run from TM, stop at T1), runs the workload and prints one
//! `WorkerResult` JSON line. Every wait is bounded; the process exits when done.

use std::cell::{Cell, RefCell};
use std::io::{BufRead, Write as _};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::Ordering::{Relaxed, SeqCst};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::client::{self, Reader, Rng, OP_CLOSE, OP_PING, OP_TEXT};
use crate::hist::{Histogram, Sparse};
use crate::now_ns;
use crate::shm::{Shm, CONNECTED, RING, SUBSCRIBED};

/// The JSON protocol's room for every workload.
const ROOM: &str = "bench";
/// Bound on every setup wait (connects, subscriptions).
const SETUP_LIMIT: Duration = Duration::from_secs(60);
/// A fan-out message nobody completed for this long is counted lost and skipped.
const STALL: u64 = 5_000_000_000;

/// Bun's chat benchmark message list (50 messages; 32 copies make its 1600 per round).
const CHAT_MESSAGES: [&str; 20] = [
    "Hello World!",
    "Hello World! 1",
    "Hello World! 2",
    "Hello World! 3",
    "Hello World! 4",
    "Hello World! 5",
    "Hello World! 6",
    "Hello World! 7",
    "Hello World! 8",
    "Hello World! 9",
    "What is the meaning of life?",
    "where is the bathroom?",
    "zoo",
    "kangaroo",
    "erlang",
    "elixir",
    "bun",
    "mochi",
    "typescript",
    "javascript",
];

/// What a worker is asked to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Spec {
    /// fanout, chat, echo, echo_latency, idle, churn, slow_consumer.
    pub workload: String,
    /// `tiny` or `json`.
    pub proto: String,
    /// Server address.
    pub addr: SocketAddr,
    /// WebSocket path.
    pub path: String,
    /// This worker's index.
    pub shard: usize,
    /// Connections this worker opens (subscribers, clients).
    pub conns: usize,
    /// First source-address index (spreads workers over source addresses).
    pub src_offset: usize,
    /// Counted receivers across all workers (fan-out).
    pub total: usize,
    /// Whether this worker runs the fan-out publisher.
    pub publisher: bool,
    /// Payload bytes.
    pub payload: usize,
    /// Fan-out: messages in flight ahead of the last receiver.
    pub window: usize,
    /// Open loop: messages per second over all connections.
    pub rate: f64,
    /// Churn: concurrent loops.
    pub concurrency: usize,
    /// Chat: messages each client sends per round.
    pub per_round: usize,
    /// Shared counters file (fan-out).
    pub shm: Option<String>,
    /// Slow-consumer run: add one subscriber that stops reading at TM.
    pub slow: bool,
    /// Churn: warm-up before `ready`, in ms.
    pub prewarm_ms: u64,
}

/// What a worker reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WorkerResult {
    /// Messages (or handshakes) counted in [T0, T1) (phase B: [TM, T1)).
    pub count: u64,
    /// Slow-consumer phase A: [T0, TM).
    pub count_a: u64,
    /// Sequence gaps seen by receivers.
    pub gaps: u64,
    /// Failed connects, refused upgrades, broken connections.
    pub errors: u64,
    /// Fan-out messages that never reached every receiver.
    pub lost: u64,
    /// Latencies in [T0, T1) (phase B for the slow consumer).
    pub hist: Sparse,
    /// Slow-consumer phase A latencies.
    pub hist_a: Sparse,
    /// Chat rounds completed.
    pub rounds: u64,
    /// Slow consumer: whether the server closed it.
    pub slow_closed: Option<bool>,
    /// Anything worth a look.
    pub note: String,
}

/// The measurement window, once `go` arrived.
#[derive(Clone, Copy)]
struct Window {
    t0: u64,
    tm: u64,
    t1: u64,
}

impl Window {
    const PENDING: Window = Window {
        t0: u64::MAX,
        tm: u64::MAX,
        t1: u64::MAX,
    };
}

/// Runs the worker described by `spec_json` and exits the process.
pub fn main(spec_json: &str) -> ! {
    let spec: Spec = serde_json::from_str(spec_json).expect("worker spec");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let local = tokio::task::LocalSet::new();
    let result = local.block_on(&rt, run(spec));
    let line = serde_json::to_string(&result).expect("result json");
    println!("result {line}");
    let _ = std::io::stdout().flush();
    // Open sockets and tasks go with the process.
    std::process::exit(0);
}

fn ready() {
    println!("ready");
    let _ = std::io::stdout().flush();
}

/// Waits for `go T0 TM T1` on stdin (blocking is fine: nothing else must run meanwhile
/// except sockets the kernel buffers for us).
async fn wait_go() -> Window {
    let line = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        let _ = std::io::stdin().lock().read_line(&mut s);
        s
    })
    .await
    .unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() != 3 {
        // The suite went away: stop now.
        std::process::exit(3);
    }
    Window {
        t0: v[0],
        tm: v[1],
        t1: v[2],
    }
}

async fn sleep_until_ns(t: u64) {
    let now = now_ns();
    if t > now {
        tokio::time::sleep(Duration::from_nanos(t - now)).await;
    }
}

fn subscribe_frame(proto: &str, rng: &mut Rng) -> Vec<u8> {
    let mut f = Vec::new();
    if proto == "json" {
        let j = format!(r#"{{"type":"join","room":"{ROOM}"}}"#);
        client::encode(&mut f, OP_TEXT, j.as_bytes(), rng.next_u32());
    } else {
        client::encode(&mut f, OP_TEXT, b"sub", rng.next_u32());
    }
    f
}

/// A room message of `len` payload bytes carrying `seq` and the time.
fn publish_frame(
    out: &mut Vec<u8>,
    proto: &str,
    seq: u64,
    t: u64,
    len: usize,
    echo: bool,
    mask: u32,
) {
    let mut p = Vec::with_capacity(len + 96);
    if proto == "json" {
        p.extend_from_slice(br#"{"type":"publish","room":""#);
        p.extend_from_slice(ROOM.as_bytes());
        p.extend_from_slice(br#"","event":"m","#);
        if echo {
            p.extend_from_slice(br#""echo":true,"#);
        }
        p.extend_from_slice(br#""data":""#);
        client::stamp(&mut p, seq, t, len.saturating_sub(2).max(33));
        p.extend_from_slice(br#""}"#);
    } else {
        client::stamp(&mut p, seq, t, len.max(33));
    }
    client::encode(out, OP_TEXT, &p, mask);
}

/// Reads until a text frame containing `needle` (JSON acks), within `limit`.
async fn read_until(
    rd: &mut OwnedReadHalf,
    reader: &mut Reader,
    needle: &[u8],
    limit: Duration,
) -> bool {
    let fut = async {
        loop {
            while let Some(f) = reader.next_frame() {
                if f.opcode == OP_TEXT && client::find(reader.payload(f), needle).is_some() {
                    return true;
                }
                if f.opcode == OP_CLOSE {
                    return false;
                }
            }
            match reader.fill(rd).await {
                Ok(0) | Err(_) => return false,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(limit, fut).await.unwrap_or(false)
}

/// An upgraded connection split in halves, with what arrived early.
struct Conn {
    rd: OwnedReadHalf,
    wr: OwnedWriteHalf,
    reader: Reader,
}

/// Opens `n` connections (up to 128 at a time), sends each `first` if given, and (JSON)
/// waits for each join's ack. Failures are counted, not fatal.
async fn open_many(
    spec: &Spec,
    n: usize,
    src_offset: usize,
    subscribe: bool,
    errors: &mut u64,
) -> Vec<Conn> {
    let mut out = Vec::with_capacity(n);
    let mut set = JoinSet::new();
    let mut next = 0;
    let deadline = tokio::time::Instant::now() + SETUP_LIMIT;
    while out.len() + (*errors as usize) < n {
        while next < n && set.len() < 128 {
            let addr = spec.addr;
            let path = spec.path.clone();
            let proto = spec.proto.clone();
            let src = src_offset + next;
            next += 1;
            set.spawn_local(async move {
                let (stream, early) = client::connect(addr, src, &path).await?;
                let (rd, mut wr) = stream.into_split();
                let mut c = Conn {
                    rd,
                    wr: {
                        if subscribe {
                            let mut rng = Rng::new(src as u64 + 7);
                            wr.write_all(&subscribe_frame(&proto, &mut rng)).await?;
                        }
                        wr
                    },
                    reader: Reader::new(early),
                };
                if subscribe
                    && proto == "json"
                    && !read_until(&mut c.rd, &mut c.reader, br#""type":"ack""#, SETUP_LIMIT).await
                {
                    return Err(std::io::Error::other("join not acknowledged"));
                }
                Ok::<Conn, std::io::Error>(c)
            });
        }
        match tokio::time::timeout_at(deadline, set.join_next()).await {
            Ok(Some(Ok(Ok(c)))) => out.push(c),
            Ok(Some(_)) => *errors += 1,
            Ok(None) => break,
            Err(_) => {
                *errors += (n - out.len()) as u64;
                break;
            }
        }
    }
    out
}

async fn run(spec: Spec) -> WorkerResult {
    match spec.workload.as_str() {
        "fanout" | "slow_consumer" => fanout(spec).await,
        "chat" => chat(spec).await,
        "echo" => echo(spec).await,
        "echo_latency" => echo_latency(spec).await,
        "idle" => idle(spec).await,
        "churn" => churn(spec).await,
        other => WorkerResult {
            note: format!("unknown workload {other}"),
            errors: 1,
            ..WorkerResult::default()
        },
    }
}

// ---------------------------------------------------------------------------------------
// Fan-out (and the slow-consumer variant)

struct FanCtx {
    shm: Shm,
    json: bool,
    total: u64,
    window: Cell<Window>,
    first: Cell<usize>,
    count_a: Cell<u64>,
    count_b: Cell<u64>,
    gaps: Cell<u64>,
    broken: Cell<u64>,
    completed: Notify,
}

async fn subscriber(mut c: Conn, ctx: Rc<FanCtx>, mut rng: Rng) {
    let mut first = true;
    let mut last: Option<u64> = None;
    let mut pong = Vec::new();
    loop {
        let t = now_ns();
        let w = ctx.window.get();
        while let Some(f) = c.reader.next_frame() {
            match f.opcode {
                OP_TEXT => {}
                OP_PING => {
                    client::encode(&mut pong, 10, c.reader.payload(f), rng.next_u32());
                    continue;
                }
                OP_CLOSE => {
                    ctx.broken.set(ctx.broken.get() + 1);
                    return;
                }
                _ => continue,
            }
            let p = c.reader.payload(f);
            let Some((seq, _)) = client::read_stamp(p) else {
                continue; // welcome, acks
            };
            let order = if ctx.json {
                client::json_seq(p)
            } else {
                Some(seq)
            };
            if let Some(o) = order {
                if let Some(l) = last {
                    if o > l + 1 {
                        ctx.gaps.set(ctx.gaps.get() + (o - l - 1));
                    }
                }
                last = Some(o);
            }
            if first {
                first = false;
                ctx.first.set(ctx.first.get() + 1);
                ctx.shm.word(SUBSCRIBED).fetch_add(1, SeqCst);
            }
            if t >= w.t0 && t < w.tm.min(w.t1) {
                ctx.count_a.set(ctx.count_a.get() + 1);
            } else if t >= w.tm && t < w.t1 {
                ctx.count_b.set(ctx.count_b.get() + 1);
            }
            if ctx.shm.count(seq).fetch_add(1, Relaxed) + 1 == ctx.total {
                ctx.shm.last(seq).store(t, Relaxed);
                ctx.completed.notify_one();
            }
        }
        if !pong.is_empty() {
            let _ = c.wr.write_all(&pong).await;
            pong.clear();
        }
        match c.reader.fill(&mut c.rd).await {
            Ok(0) | Err(_) => {
                ctx.broken.set(ctx.broken.get() + 1);
                return;
            }
            Ok(_) => {}
        }
    }
}

/// The subscriber that stops reading at TM, then (after T1) checks whether the server
/// closed it. Returns whether it was closed.
async fn slow_subscriber(mut c: Conn, ctx: Rc<FanCtx>) -> bool {
    loop {
        let w = ctx.window.get();
        if now_ns() >= w.tm {
            break;
        }
        while c.reader.next_frame().is_some() {}
        let wait = if w.tm == u64::MAX {
            Duration::from_millis(5)
        } else {
            Duration::from_nanos(w.tm.saturating_sub(now_ns()))
        };
        match tokio::time::timeout(wait, c.reader.fill(&mut c.rd)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            _ => {}
        }
    }
    // Stopped: hold the socket until T1, then drain for a bounded time.
    sleep_until_ns(ctx.window.get().t1).await;
    let drain = async {
        loop {
            while c.reader.next_frame().is_some() {}
            match c.reader.fill(&mut c.rd).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    };
    tokio::time::timeout(Duration::from_millis(300), drain)
        .await
        .unwrap_or(false)
}

async fn fanout(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    let shm = Shm::open(spec.shm.as_deref().expect("fanout needs shm"), false).expect("shm");
    let ctx = Rc::new(FanCtx {
        shm,
        json: spec.proto == "json",
        total: spec.total as u64,
        window: Cell::new(Window::PENDING),
        first: Cell::new(0),
        count_a: Cell::new(0),
        count_b: Cell::new(0),
        gaps: Cell::new(0),
        broken: Cell::new(0),
        completed: Notify::new(),
    });
    let subs = open_many(&spec, spec.conns, spec.src_offset, true, &mut res.errors).await;
    let live = subs.len();
    for (i, c) in subs.into_iter().enumerate() {
        tokio::task::spawn_local(subscriber(c, ctx.clone(), Rng::new(i as u64 + 99)));
    }
    let slow = if spec.slow {
        let mut e = 0;
        let mut v = open_many(&spec, 1, spec.src_offset + spec.conns, true, &mut e).await;
        res.errors += e;
        v.pop().map(|c| {
            client::set_recv_buffer(c.rd.as_ref(), 4096);
            tokio::task::spawn_local(slow_subscriber(c, ctx.clone()))
        })
    } else {
        None
    };
    let mut publisher: Option<OwnedWriteHalf> = None;
    if spec.publisher {
        let mut e = 0;
        let json = spec.proto == "json";
        let mut v = open_many(&spec, 1, spec.src_offset + spec.conns + 1, json, &mut e).await;
        res.errors += e;
        if let Some(Conn {
            mut rd,
            wr,
            mut reader,
        }) = v.pop()
        {
            // Acks (JSON) are read and dropped by a task of their own.
            tokio::task::spawn_local(async move {
                loop {
                    while reader.next_frame().is_some() {}
                    match reader.fill(&mut rd).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            });
            publisher = Some(wr);
        }
    }
    let mut rng = Rng::new(0xfeed + spec.shard as u64);
    let mut seq: u64 = 0;
    let mut buf = Vec::new();
    ctx.shm.word(CONNECTED).fetch_add(live as u64, SeqCst);
    // Once every worker has connected its subscribers, probe until every subscriber has
    // a message: only then is every subscription known to be in effect (the tiny
    // protocol has no acknowledgement). One probe at a time, the next only once the last
    // one stopped spreading, so a slow server never builds a backlog before the run.
    let setup_end = now_ns() + SETUP_LIMIT.as_nanos() as u64;
    if let Some(wr) = publisher.as_mut() {
        let total = spec.total as u64;
        while ctx.shm.word(CONNECTED).load(SeqCst) < total && now_ns() < setup_end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        'probing: while ctx.shm.word(SUBSCRIBED).load(SeqCst) < total && now_ns() < setup_end {
            buf.clear();
            let probe = seq;
            ctx.shm.count(probe).store(0, SeqCst);
            publish_frame(
                &mut buf,
                &spec.proto,
                probe,
                now_ns(),
                spec.payload,
                false,
                rng.next_u32(),
            );
            seq += 1;
            if wr.write_all(&buf).await.is_err() {
                res.errors += 1;
                break;
            }
            let mut seen = 0;
            let mut changed = now_ns();
            loop {
                tokio::time::sleep(Duration::from_millis(5)).await;
                let c = ctx.shm.count(probe).load(SeqCst);
                let now = now_ns();
                if c >= total || now >= setup_end {
                    break 'probing;
                }
                if c != seen {
                    seen = c;
                    changed = now;
                } else if now - changed > 200_000_000 {
                    break; // stopped spreading: some subscriptions came late; probe again
                }
            }
        }
    } else {
        while ctx.first.get() < live && now_ns() < setup_end {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
    if ctx.first.get() < live {
        res.note = format!("only {} of {live} subscribers live", ctx.first.get());
    }
    ready();
    let w = wait_go().await;
    ctx.window.set(w);
    let probes = seq;
    let mut hist_a = Histogram::default();
    let mut hist_b = Histogram::default();
    if let Some(mut wr) = publisher {
        let mut send_times = vec![0u64; RING];
        let mut complete = seq;
        let mut progress = now_ns();
        let window = spec.window.min(RING / 2) as u64;
        let total = spec.total as u64;
        loop {
            let now = now_ns();
            if now >= w.t1 {
                break;
            }
            while complete < seq && ctx.shm.count(complete).load(Relaxed) >= total {
                let st = send_times[complete as usize % RING];
                let last = ctx.shm.last(complete).load(Relaxed);
                if st >= w.t0 && st < w.t1 && last >= st {
                    if st < w.tm {
                        hist_a.record(last - st);
                    } else {
                        hist_b.record(last - st);
                    }
                }
                complete += 1;
                progress = now;
            }
            if complete < seq && now - progress > STALL {
                if std::env::var_os("ROOMCAST_BENCH_DEBUG").is_some() {
                    eprintln!(
                        "stall at {complete} (sent {seq}): count {} of {total}; next {:?}",
                        ctx.shm.count(complete).load(Relaxed),
                        (complete + 1..seq.min(complete + 6))
                            .map(|s| ctx.shm.count(s).load(Relaxed))
                            .collect::<Vec<_>>()
                    );
                }
                res.lost += 1;
                complete += 1;
                progress = now;
            }
            buf.clear();
            while seq < complete + window {
                ctx.shm.count(seq).store(0, Relaxed);
                ctx.shm.last(seq).store(0, Relaxed);
                send_times[seq as usize % RING] = now;
                publish_frame(
                    &mut buf,
                    &spec.proto,
                    seq,
                    now,
                    spec.payload,
                    false,
                    rng.next_u32(),
                );
                seq += 1;
            }
            if !buf.is_empty() {
                if wr.write_all(&buf).await.is_err() {
                    res.errors += 1;
                    res.note = "publisher connection failed".into();
                    break;
                }
            } else {
                let _ =
                    tokio::time::timeout(Duration::from_millis(1), ctx.completed.notified()).await;
            }
        }
    }
    if spec.publisher {
        let live_note = format!("published {}", seq - probes);
        res.note = if res.note.is_empty() {
            live_note
        } else {
            format!("{}; {live_note}", res.note)
        };
    }
    // Let deliveries in flight at T1 land (they are outside the window anyway).
    sleep_until_ns(w.t1 + 100_000_000).await;
    if let Some(h) = slow {
        res.slow_closed = h.await.ok();
    }
    let slowing = w.tm < w.t1;
    res.count = if slowing {
        ctx.count_b.get()
    } else {
        ctx.count_a.get()
    };
    res.count_a = if slowing { ctx.count_a.get() } else { 0 };
    res.gaps = ctx.gaps.get();
    res.errors += ctx.broken.get();
    if slowing {
        res.hist = hist_b.to_sparse();
        res.hist_a = hist_a.to_sparse();
    } else {
        res.hist = hist_a.to_sparse();
    }
    res
}

// ---------------------------------------------------------------------------------------
// Chat

struct ChatCtx {
    json: bool,
    window: Cell<Window>,
    first: Cell<usize>,
    in_round: Cell<u64>,
    target: Cell<u64>,
    count: Cell<u64>,
    done: Notify,
}

async fn chat_reader(mut rd: OwnedReadHalf, mut reader: Reader, ctx: Rc<ChatCtx>) {
    let mut first = true;
    loop {
        let t = now_ns();
        let w = ctx.window.get();
        let mut n = 0u64;
        while let Some(f) = reader.next_frame() {
            if f.opcode != OP_TEXT {
                continue;
            }
            let p = reader.payload(f);
            // JSON: only room messages count. Tiny: every text but roomcast's greeting
            // (its `--bench-protocol` room socket is a hub connection, welcomed as any).
            if ctx.json && !p.starts_with(br#"{"type":"message""#)
                || !ctx.json && p.starts_with(br#"{"type":"welcome""#)
            {
                continue;
            }
            n += 1;
        }
        if n > 0 {
            if first {
                first = false;
                ctx.first.set(ctx.first.get() + 1);
            }
            if t >= w.t0 && t < w.t1 {
                ctx.count.set(ctx.count.get() + n);
            }
            ctx.in_round.set(ctx.in_round.get() + n);
            if ctx.in_round.get() >= ctx.target.get() {
                ctx.done.notify_one();
            }
        }
        match reader.fill(&mut rd).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

fn chat_batch(proto: &str, per_round: usize, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for i in 0..per_round {
        let m = CHAT_MESSAGES[i % CHAT_MESSAGES.len()];
        if proto == "json" {
            let j = format!(
                r#"{{"type":"publish","room":"{ROOM}","event":"m","echo":true,"data":"{m}"}}"#
            );
            client::encode(&mut out, OP_TEXT, j.as_bytes(), rng.next_u32());
        } else {
            client::encode(&mut out, OP_TEXT, m.as_bytes(), rng.next_u32());
        }
    }
    out
}

async fn chat(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    let ctx = Rc::new(ChatCtx {
        json: spec.proto == "json",
        window: Cell::new(Window::PENDING),
        first: Cell::new(0),
        in_round: Cell::new(0),
        target: Cell::new(u64::MAX),
        count: Cell::new(0),
        done: Notify::new(),
    });
    let conns = open_many(&spec, spec.conns, spec.src_offset, true, &mut res.errors).await;
    let c = conns.len();
    let mut writers = Vec::with_capacity(c);
    for conn in conns {
        tokio::task::spawn_local(chat_reader(conn.rd, conn.reader, ctx.clone()));
        writers.push(conn.wr);
    }
    let mut rng = Rng::new(5);
    let setup_end = now_ns() + SETUP_LIMIT.as_nanos() as u64;
    while ctx.first.get() < c && now_ns() < setup_end {
        let probe = chat_batch(&spec.proto, 1, &mut rng);
        if let Some(w) = writers.first_mut() {
            let _ = w.write_all(&probe).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ready();
    let w = wait_go().await;
    ctx.window.set(w);
    let batches: Vec<Vec<u8>> = (0..c)
        .map(|_| chat_batch(&spec.proto, spec.per_round, &mut rng))
        .collect();
    let per_round = (c * spec.per_round * c) as u64;
    while now_ns() < w.t1 {
        ctx.in_round.set(0);
        ctx.target.set(per_round);
        for (wr, b) in writers.iter_mut().zip(&batches) {
            if wr.write_all(b).await.is_err() {
                res.errors += 1;
            }
        }
        let left = Duration::from_nanos(w.t1.saturating_sub(now_ns()));
        match tokio::time::timeout(left.min(Duration::from_secs(5)), ctx.done.notified()).await {
            Ok(()) => res.rounds += 1,
            Err(_) => {
                if ctx.in_round.get() < per_round && now_ns() < w.t1 {
                    res.lost += per_round - ctx.in_round.get();
                }
            }
        }
    }
    res.count = ctx.count.get();
    res
}

// ---------------------------------------------------------------------------------------
// Echo, closed loop

async fn echo(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    let conns = open_many(&spec, spec.conns, spec.src_offset, false, &mut res.errors).await;
    ready();
    let w = wait_go().await;
    let hist = Rc::new(RefCell::new(Histogram::default()));
    let count = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let mut set = JoinSet::new();
    for (i, mut c) in conns.into_iter().enumerate() {
        let payload = vec![b'e'; spec.payload];
        let mut frame = Vec::new();
        // One masked frame per connection, sent again and again: the server unmasks
        // every copy; the generator spends nothing on it.
        client::encode(
            &mut frame,
            OP_TEXT,
            &payload,
            Rng::new(i as u64 + 1).next_u32(),
        );
        let (hist, count, errors) = (hist.clone(), count.clone(), errors.clone());
        let want = spec.payload;
        set.spawn_local(async move {
            loop {
                let sent = now_ns();
                if sent >= w.t1 {
                    return;
                }
                if c.wr.write_all(&frame).await.is_err() {
                    errors.set(errors.get() + 1);
                    return;
                }
                let got = loop {
                    if let Some(f) = c.reader.next_frame() {
                        if f.opcode == OP_TEXT {
                            break f.end - f.start;
                        }
                        continue;
                    }
                    match c.reader.fill(&mut c.rd).await {
                        Ok(0) | Err(_) => {
                            errors.set(errors.get() + 1);
                            return;
                        }
                        Ok(_) => {}
                    }
                };
                let t = now_ns();
                if got != want {
                    errors.set(errors.get() + 1);
                }
                if sent >= w.t0 && t < w.t1 {
                    count.set(count.get() + 1);
                    hist.borrow_mut().record(t - sent);
                }
            }
        });
    }
    let limit = Duration::from_nanos(w.t1.saturating_sub(now_ns())) + Duration::from_secs(2);
    let _ = tokio::time::timeout(limit, async { while set.join_next().await.is_some() {} }).await;
    res.count = count.get();
    res.errors += errors.get();
    res.hist = hist.borrow().to_sparse();
    res
}

// ---------------------------------------------------------------------------------------
// Echo, open loop: a pacer thread sends each message at its intended time, whatever
// the answers do; latency counts from the intended time (no coordinated omission).

async fn echo_latency(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    let conns = open_many(&spec, spec.conns, spec.src_offset, false, &mut res.errors).await;
    let mut writers = Vec::with_capacity(conns.len());
    let hist = Rc::new(RefCell::new(Histogram::default()));
    let count = Rc::new(Cell::new(0u64));
    let window = Rc::new(Cell::new(Window::PENDING));
    for c in conns {
        let Conn { rd, wr, mut reader } = c;
        // The pacer writes with blocking calls from its own thread, on a second
        // descriptor of the same socket.
        let std_stream = match wr.reunite(rd) {
            Ok(s) => s.into_std(),
            Err(_) => continue,
        };
        let Ok(std_stream) = std_stream else { continue };
        let Ok(pacer_side) = std_stream.try_clone() else {
            continue;
        };
        let _ = pacer_side.set_nonblocking(false);
        writers.push(pacer_side);
        let _ = std_stream.set_nonblocking(true);
        let Ok(stream) = TcpStream::from_std(std_stream) else {
            continue;
        };
        let (mut rd, wr) = stream.into_split();
        let (hist, count, window) = (hist.clone(), count.clone(), window.clone());
        tokio::task::spawn_local(async move {
            let _keep = wr;
            loop {
                let t = now_ns();
                let w = window.get();
                while let Some(f) = reader.next_frame() {
                    if f.opcode != OP_TEXT {
                        continue;
                    }
                    if let Some((_, intended)) = client::read_stamp(reader.payload(f)) {
                        if intended >= w.t0 && intended < w.t1 {
                            count.set(count.get() + 1);
                            hist.borrow_mut().record(t.saturating_sub(intended));
                        }
                    }
                }
                match reader.fill(&mut rd).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {}
                }
            }
        });
    }
    ready();
    let w = wait_go().await;
    window.set(w);
    let interval = 1e9 / spec.rate.max(1.0);
    let payload = spec.payload;
    let sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let sent2 = sent.clone();
    let start = now_ns();
    let pacer = std::thread::spawn(move || {
        use std::io::Write as _;
        // SAFETY: prctl with an integer argument only changes this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
        }
        let mut rng = Rng::new(77);
        let mut frame = Vec::with_capacity(payload + 16);
        let n = writers.len().max(1);
        let mut k: u64 = 0;
        loop {
            let intended = start + (k as f64 * interval) as u64;
            if intended >= w.t1 {
                break;
            }
            let now = now_ns();
            if intended > now {
                std::thread::sleep(Duration::from_nanos(intended - now));
            }
            frame.clear();
            let mut p = Vec::with_capacity(payload);
            client::stamp(&mut p, k, intended, payload.max(33));
            client::encode(&mut frame, OP_TEXT, &p, rng.next_u32());
            if let Some(s) = writers.get_mut(k as usize % n) {
                let _ = s.write_all(&frame);
            }
            k += 1;
            sent2.store(k, Relaxed);
        }
    });
    sleep_until_ns(w.t1 + 200_000_000).await;
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    res.count = count.get();
    res.hist = hist.borrow().to_sparse();
    let expected = ((w.t1 - w.t0) as f64 / interval) as u64;
    if res.count + res.count / 50 < expected {
        res.lost = expected.saturating_sub(res.count);
    }
    res.note = format!("sent {}", sent.load(Relaxed));
    res
}

// ---------------------------------------------------------------------------------------
// Idle connections

async fn idle(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    let conns = open_many(&spec, spec.conns, spec.src_offset, true, &mut res.errors).await;
    if spec.proto != "json" {
        // No acknowledgement in the tiny protocol: give the server time to process.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    res.count = conns.len() as u64;
    ready();
    let _w = wait_go().await;
    drop(conns);
    res
}

// ---------------------------------------------------------------------------------------
// Churn: connect, upgrade, join, one message and back, close; over and over.

async fn churn_once(
    addr: SocketAddr,
    path: &str,
    proto: &str,
    src: usize,
    tag: u64,
) -> std::io::Result<()> {
    let (stream, early) = client::connect(addr, src, path).await?;
    let (mut rd, mut wr) = stream.into_split();
    let mut reader = Reader::new(early);
    let mut rng = Rng::new(tag + 1);
    let mut out = subscribe_frame(proto, &mut rng);
    let limit = Duration::from_secs(2);
    if proto == "json" {
        wr.write_all(&out).await?;
        if !read_until(&mut rd, &mut reader, br#""type":"ack""#, limit).await {
            return Err(std::io::Error::other("no join ack"));
        }
        out.clear();
    }
    let mut p = Vec::new();
    client::stamp(&mut p, tag, 0, 40);
    if proto == "json" {
        let j = format!(
            r#"{{"type":"publish","room":"{ROOM}","event":"m","echo":true,"data":"{}"}}"#,
            String::from_utf8_lossy(&p)
        );
        client::encode(&mut out, OP_TEXT, j.as_bytes(), rng.next_u32());
    } else {
        client::encode(&mut out, OP_TEXT, &p, rng.next_u32());
    }
    wr.write_all(&out).await?;
    if !read_until(&mut rd, &mut reader, &p[..33], limit).await {
        return Err(std::io::Error::other("own message not received"));
    }
    out.clear();
    client::encode(&mut out, OP_CLOSE, &1000u16.to_be_bytes(), rng.next_u32());
    wr.write_all(&out).await?;
    // Wait for the server's close frame (or the end of the stream), bounded.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            while let Some(f) = reader.next_frame() {
                if f.opcode == OP_CLOSE {
                    return;
                }
            }
            match reader.fill(&mut rd).await {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    Ok(())
}

async fn churn_loops(spec: &Spec, until: u64, w: Window) -> (u64, u64) {
    let count = Rc::new(Cell::new(0u64));
    let errors = Rc::new(Cell::new(0u64));
    let next = Rc::new(Cell::new(spec.src_offset as u64));
    let mut set = JoinSet::new();
    for _ in 0..spec.concurrency.max(1) {
        let (count, errors, next) = (count.clone(), errors.clone(), next.clone());
        let (addr, path, proto) = (spec.addr, spec.path.clone(), spec.proto.clone());
        set.spawn_local(async move {
            while now_ns() < until {
                let tag = next.get();
                next.set(tag + 1);
                let r = tokio::time::timeout(
                    Duration::from_secs(5),
                    churn_once(addr, &path, &proto, tag as usize, tag),
                )
                .await;
                let t = now_ns();
                match r {
                    Ok(Ok(())) => {
                        if t >= w.t0 && t < w.t1 {
                            count.set(count.get() + 1);
                        }
                    }
                    _ => errors.set(errors.get() + 1),
                }
            }
        });
    }
    while set.join_next().await.is_some() {}
    (count.get(), errors.get())
}

async fn churn(spec: Spec) -> WorkerResult {
    let mut res = WorkerResult::default();
    // Warm up (allocator pools, accept queues) before the baseline is taken.
    let warm_until = now_ns() + spec.prewarm_ms * 1_000_000;
    let (_, e) = churn_loops(&spec, warm_until, Window::PENDING).await;
    res.errors += e;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ready();
    let w = wait_go().await;
    let (n, e) = churn_loops(&spec, w.t1, w).await;
    res.count = n;
    res.errors += e;
    res
}

//! The suite: for every cell of the matrix and every peer, a fresh server pinned to core
//! 0, generator processes pinned to core 1, and one JSON line of results.

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::hist::Histogram;
use crate::now_ns;
use crate::procfs;
use crate::worker::{Spec, WorkerResult};

/// Every peer, in the suite's base order (rotated by repetition).
pub const PEERS: [&str; 8] = [
    "roomcast",
    "roomcast-json",
    "bun",
    "ws",
    "tokio-tungstenite",
    "fastwebsockets",
    // Only with `ROOMCAST_BENCH_BASE=/path/to/an/older/roomcast`: the same two command
    // lines on that binary, for an A/B of a change in one run.
    "roomcast-base",
    "roomcast-json-base",
];

/// Core the servers run on; the generator gets the other one.
const SERVER_CPU: usize = 0;
const CLIENT_CPU: usize = 1;
/// Most connections one generator process opens (20k descriptors per process here).
const CONNS_PER_WORKER: usize = 10_000;

/// One cell of the matrix.
#[derive(Debug, Clone)]
pub struct Cell {
    workload: &'static str,
    n: usize,
    payload: usize,
    warm_ms: u64,
    dur_ms: u64,
    /// Slow consumer: phase B length (phase A is `dur_ms`).
    dur_b_ms: u64,
    per_round: usize,
    rate: f64,
    window: usize,
    /// Idle: wait before measuring; churn: wait before the leak check.
    settle_ms: u64,
}

impl Cell {
    fn new(workload: &'static str, n: usize, payload: usize, warm_ms: u64, dur_ms: u64) -> Cell {
        Cell {
            workload,
            n,
            payload,
            warm_ms,
            dur_ms,
            dur_b_ms: 0,
            per_round: 0,
            rate: 0.0,
            window: 32,
            settle_ms: 1500,
        }
    }

    fn is_echo(&self) -> bool {
        matches!(self.workload, "echo" | "echo_latency")
    }
}

/// The matrix for `--quick` or `--full`.
pub fn matrix(full: bool) -> Vec<Cell> {
    let mut v = Vec::new();
    if full {
        for n in [100, 1000, 10_000, 18_000] {
            v.push(Cell::new("fanout", n, 64, 500, 2000));
        }
        for (c, m) in [(32, 1600), (256, 50)] {
            let mut cell = Cell::new("chat", c, 0, 300, 2000);
            cell.per_round = m;
            v.push(cell);
        }
        for conns in [100, 500] {
            for size in [20, 512, 16 * 1024] {
                v.push(Cell::new("echo", conns, size, 300, 1500));
            }
        }
        let mut lat = Cell::new("echo_latency", 1000, 64, 500, 3000);
        lat.rate = 10_000.0;
        v.push(lat);
        for n in [1000, 5000, 10_000, 18_000] {
            v.push(Cell::new("idle", n, 0, 0, 0));
        }
        v.push(Cell::new("churn", 32, 40, 500, 2000));
        let mut slow = Cell::new("slow_consumer", 1000, 4096, 500, 1500);
        slow.dur_b_ms = 2500;
        v.push(slow);
    } else {
        v.push(Cell::new("fanout", 1000, 64, 100, 250));
        let mut chat = Cell::new("chat", 32, 0, 100, 250);
        chat.per_round = 1600;
        v.push(chat);
        v.push(Cell::new("echo", 100, 512, 100, 250));
        let mut lat = Cell::new("echo_latency", 200, 64, 100, 250);
        lat.rate = 2000.0;
        v.push(lat);
        let mut idle = Cell::new("idle", 1000, 0, 0, 0);
        idle.settle_ms = 200;
        v.push(idle);
        let mut churn = Cell::new("churn", 8, 40, 100, 250);
        churn.settle_ms = 600;
        v.push(churn);
        let mut slow = Cell::new("slow_consumer", 1000, 4096, 100, 200);
        slow.dur_b_ms = 200;
        v.push(slow);
    }
    v
}

/// Suite options.
pub struct Options {
    /// Workspace root (where `target/release` and `bench/peers` are).
    pub root: PathBuf,
    /// Full matrix (else quick).
    pub full: bool,
    /// Repetitions.
    pub reps: usize,
    /// Only these workloads (empty: all).
    pub workloads: Vec<String>,
    /// Only these peers (empty: all).
    pub peers: Vec<String>,
    /// Only cells with this n (empty: all).
    pub ns: Vec<usize>,
    /// Only cells with this payload (empty: all).
    pub payloads: Vec<usize>,
    /// Where JSON lines go (besides stdout).
    pub out: Option<PathBuf>,
}

struct Server {
    child: Child,
    addr: String,
    label: String,
    path: String,
    proto: &'static str,
}

/// A release binary of the workspace (honouring `CARGO_TARGET_DIR`, as cargo does).
fn bin(root: &Path, name: &str) -> String {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    target.join("release").join(name).display().to_string()
}

/// The command line of `peer` for `cell`, its label, WebSocket path and protocol.
fn server_command(
    root: &Path,
    peer: &str,
    cell: &Cell,
) -> Option<(Vec<String>, String, String, &'static str)> {
    if let Some(ours) = peer.strip_suffix("-base") {
        let Ok(base) = std::env::var("ROOMCAST_BENCH_BASE") else {
            static WARNED: std::sync::atomic::AtomicBool =
                std::sync::atomic::AtomicBool::new(false);
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                eprintln!("bench: {peer} skipped: set ROOMCAST_BENCH_BASE to a roomcast binary");
            }
            return None;
        };
        let (mut argv, label, path, proto) = server_command(root, ours, cell)?;
        argv[0] = base;
        return Some((argv, format!("{label} [base build]"), path, proto));
    }
    let bind = ["--bind".to_owned(), "127.0.0.1:0".to_owned()];
    let path = if cell.is_echo() { "/echo" } else { "/room" };
    let peers = root.join("bench/peers");
    let (argv, label, path, proto): (Vec<String>, &str, &str, &'static str) = match peer {
        // The real binary on the tiny protocol (`--bench-protocol`: /echo is its echo
        // socket, /room a hub room fed raw texts), with the same output budget as on
        // JSON below (the tiny protocol has no request rate limit to lift).
        "roomcast" => (
            vec![
                bin(root, "roomcast"),
                bind[0].clone(),
                bind[1].clone(),
                "--bench-protocol".into(),
                "--log".into(),
                "warn".into(),
                "--max-buffered".into(),
                "16MiB".into(),
            ],
            "roomcast --bench-protocol (--max-buffered 16MiB)",
            path,
            "tiny",
        ),
        "roomcast-json" if cell.is_echo() => return None,
        // The real binary on its JSON protocol, with two limits out of the benchmark's
        // way: the request rate limit (a saturating publisher or a chat client sending
        // 1600 messages a round is far above 200/s), and the unsent-output budget,
        // raised from 1 MiB to 16 MiB (Bun's default backpressure limit) so a chat round
        // is not cut by slow-consumer closes the other peers do not have.
        "roomcast-json" => (
            vec![
                bin(root, "roomcast"),
                bind[0].clone(),
                bind[1].clone(),
                "--log".into(),
                "warn".into(),
                "--rate-limit-burst".into(),
                "4000000".into(),
                "--rate-limit-per-second".into(),
                "4000000".into(),
                "--rate-limit-grace".into(),
                "1000000s".into(),
                "--max-buffered".into(),
                "16MiB".into(),
            ],
            "roomcast (JSON protocol, rate limit lifted, --max-buffered 16MiB)",
            "/ws",
            "json",
        ),
        "bun" => (
            vec![
                peers.join("node_modules/.bin/bun").display().to_string(),
                peers.join("bun-server.js").display().to_string(),
            ],
            "Bun.serve",
            path,
            "tiny",
        ),
        "ws" => (
            vec![
                "node".into(),
                peers.join("ws-server.mjs").display().to_string(),
            ],
            "node + ws",
            path,
            "tiny",
        ),
        "tokio-tungstenite" => (
            vec![
                bin(root, "peer-tungstenite"),
                bind[0].clone(),
                bind[1].clone(),
            ],
            "peer-tungstenite",
            path,
            "tiny",
        ),
        "fastwebsockets" => (
            vec![
                bin(root, "peer-fastwebsockets"),
                bind[0].clone(),
                bind[1].clone(),
            ],
            "peer-fastwebsockets",
            path,
            "tiny",
        ),
        _ => return None,
    };
    Some((argv, label.to_owned(), path.to_owned(), proto))
}

fn start_server(root: &Path, peer: &str, cell: &Cell) -> Result<Option<Server>, String> {
    let Some((argv, label, path, proto)) = server_command(root, peer, cell) else {
        return Ok(None);
    };
    // Profiling: ROOMCAST_BENCH_WRAP="valgrind --tool=callgrind" runs the server under it.
    let wrap: Vec<String> = std::env::var("ROOMCAST_BENCH_WRAP")
        .map(|w| w.split_whitespace().map(str::to_owned).collect())
        .unwrap_or_default();
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(SERVER_CPU.to_string())
        .args(&wrap)
        .args(&argv)
        .env("PORT", "0")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| format!("{peer}: cannot start {}: {e}", argv[0]))?;
    let stdout = child.stdout.take().expect("piped");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stdout);
        let mut line = String::new();
        let _ = r.read_line(&mut line);
        let _ = tx.send(line);
        // Keep draining so the server never blocks on a full pipe.
        let mut sink = String::new();
        while r.read_line(&mut sink).map(|n| n > 0).unwrap_or(false) {
            sink.clear();
        }
    });
    // A profiler around the server (valgrind reading debug info) can take far longer to
    // start than the server itself.
    let ready_wait = Duration::from_secs(if wrap.is_empty() { 20 } else { 180 });
    let line = rx.recv_timeout(ready_wait).unwrap_or_default();
    let Some(addr) = line.trim().strip_prefix("listening on http://") else {
        stop(&mut child);
        return Err(format!("{peer}: no ready line (got {line:?})"));
    };
    Ok(Some(Server {
        addr: addr.to_owned(),
        child,
        label,
        path,
        proto,
    }))
}

fn stop(child: &mut Child) {
    let pid = child.id() as libc::pid_t;
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(pid, libc::SIGTERM);
    }
    let end = Instant::now() + Duration::from_secs(6);
    while Instant::now() < end {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

struct Worker {
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<String>,
}

fn spawn_worker(spec: &Spec) -> Result<Worker, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new("taskset")
        .arg("-c")
        .arg(CLIENT_CPU.to_string())
        .arg(exe)
        .arg("worker")
        .arg(serde_json::to_string(spec).expect("spec"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start a worker: {e}"))?;
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    let (tx, lines) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    Ok(Worker {
        child,
        stdin,
        lines,
    })
}

fn sleep_until(t: u64) {
    let now = now_ns();
    if t > now {
        std::thread::sleep(Duration::from_nanos(t - now));
    }
}

fn us(ns: Option<u64>) -> Value {
    ns.map(|v| json!((v as f64 / 100.0).round() / 10.0))
        .unwrap_or(Value::Null)
}

/// Runs one cell against one peer; returns its JSON line (or `None` when the peer does
/// not take part in this workload).
fn run_cell(opts: &Options, cell: &Cell, peer: &str, rep: usize) -> Result<Option<Value>, String> {
    let Some(mut server) = start_server(&opts.root, peer, cell)? else {
        return Ok(None);
    };
    let result = measure(cell, peer, rep, &mut server);
    stop(&mut server.child);
    result.map(Some)
}

fn measure(cell: &Cell, peer: &str, rep: usize, server: &mut Server) -> Result<Value, String> {
    let pid = server.child.id();
    std::thread::sleep(Duration::from_millis(150));
    let rss_base = procfs::rss_kb(pid);
    let fds_base = procfs::fd_count(pid);
    let kernel_base = procfs::kernel_bytes();
    let addr = server
        .addr
        .parse()
        .map_err(|e| format!("bad address {}: {e}", server.addr))?;
    let fanout = matches!(cell.workload, "fanout" | "slow_consumer");
    let shm_path = fanout.then(|| format!("/dev/shm/roomcast-bench-{}-{rep}", std::process::id()));
    let _shm = match &shm_path {
        Some(p) => Some(crate::shm::Shm::open(p, true).map_err(|e| format!("shm: {e}"))?),
        None => None,
    };
    // Connections per worker process.
    let total = cell.n;
    let shards = match cell.workload {
        "fanout" | "slow_consumer" | "idle" => total.div_ceil(CONNS_PER_WORKER).max(1),
        _ => 1,
    };
    let mut workers = Vec::new();
    for shard in 0..shards {
        let conns = total / shards + usize::from(shard < total % shards);
        let spec = Spec {
            workload: cell.workload.to_owned(),
            proto: server.proto.to_owned(),
            addr,
            path: server.path.clone(),
            shard,
            conns: if cell.workload == "churn" { 0 } else { conns },
            src_offset: shard * 3 + rep,
            total: if cell.workload == "slow_consumer" {
                total - 1
            } else {
                total
            },
            publisher: shard == 0,
            payload: cell.payload,
            window: cell.window,
            rate: cell.rate,
            concurrency: cell.n,
            per_round: cell.per_round,
            shm: shm_path.clone(),
            slow: cell.workload == "slow_consumer" && shard == 0,
            prewarm_ms: cell.warm_ms,
        };
        let mut spec = spec;
        if cell.workload == "slow_consumer" && shard == 0 {
            spec.conns -= 1; // the slow subscriber is the N-th
        }
        workers.push(spawn_worker(&spec)?);
    }
    let ready_by = Instant::now() + Duration::from_secs(120);
    for w in &mut workers {
        loop {
            let left = ready_by.saturating_duration_since(Instant::now());
            match w.lines.recv_timeout(left) {
                Ok(l) if l == "ready" => break,
                Ok(_) => continue,
                Err(_) => {
                    for w in &mut workers {
                        let _ = w.child.kill();
                        let _ = w.child.wait();
                    }
                    return Err(format!(
                        "{peer} {}: a worker never became ready",
                        cell.workload
                    ));
                }
            }
        }
    }
    std::thread::sleep(Duration::from_millis(if cell.workload == "idle" {
        500
    } else {
        0
    }));
    let rss_ready = procfs::rss_kb(pid);
    let kernel_ready = procfs::kernel_bytes();
    let fds_ready = procfs::fd_count(pid);
    let go = now_ns();
    let t0 = go + cell.warm_ms * 1_000_000;
    let (tm, t1) = if cell.workload == "slow_consumer" {
        let tm = t0 + cell.dur_ms * 1_000_000;
        (tm, tm + cell.dur_b_ms * 1_000_000)
    } else {
        (u64::MAX, t0 + cell.dur_ms * 1_000_000)
    };
    for w in &mut workers {
        let _ = writeln!(w.stdin, "go {t0} {tm} {t1}");
        let _ = w.stdin.flush();
    }
    let wpids: Vec<u32> = workers.iter().map(|w| w.child.id()).collect();
    let client_cpu = || wpids.iter().map(|&p| procfs::cpu_ns(p)).sum::<u64>();
    sleep_until(t0);
    let (s0, c0, a0) = (procfs::cpu_ns(pid), client_cpu(), now_ns());
    let us0 = procfs::user_sys_ticks(pid);
    let mut rss_max = procfs::rss_kb(pid);
    let mut s_mid = None;
    let rss_start = rss_max;
    while now_ns() < t1 {
        let next = (now_ns() + 100_000_000).min(t1);
        if s_mid.is_none() && tm < t1 && next >= tm {
            sleep_until(tm);
            s_mid = Some((procfs::cpu_ns(pid), now_ns()));
        }
        sleep_until(next);
        rss_max = rss_max.max(procfs::rss_kb(pid));
    }
    let (s1, c1, a1) = (procfs::cpu_ns(pid), client_cpu(), now_ns());
    let us1 = procfs::user_sys_ticks(pid);
    let (du, ds) = (us1.0.saturating_sub(us0.0), us1.1.saturating_sub(us0.1));
    let user_share = if du + ds > 0 {
        json!((du as f64 / (du + ds) as f64 * 1000.0).round() / 1000.0)
    } else {
        Value::Null
    };
    let rss_end = procfs::rss_kb(pid);
    let mut results = Vec::new();
    for w in &mut workers {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut got = None;
        while let Ok(l) = w
            .lines
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            if let Some(j) = l.strip_prefix("result ") {
                got = serde_json::from_str::<WorkerResult>(j).ok();
                break;
            }
        }
        let _ = w.child.kill();
        let _ = w.child.wait();
        results
            .push(got.ok_or_else(|| format!("{peer} {}: a worker gave no result", cell.workload))?);
    }
    if let Some(p) = &shm_path {
        let _ = std::fs::remove_file(p);
    }
    // Merge.
    let mut hist = Histogram::default();
    let mut hist_a = Histogram::default();
    let (mut count, mut count_a, mut gaps, mut errors, mut lost, mut rounds) = (0, 0, 0, 0, 0, 0);
    let mut slow_closed = None;
    let mut notes = Vec::new();
    for r in &results {
        hist.merge(&r.hist);
        hist_a.merge(&r.hist_a);
        count += r.count;
        count_a += r.count_a;
        gaps += r.gaps;
        errors += r.errors;
        lost += r.lost;
        rounds += r.rounds;
        slow_closed = slow_closed.or(r.slow_closed);
        if !r.note.is_empty() {
            notes.push(r.note.clone());
        }
    }
    let wall = (a1 - a0).max(1) as f64 / 1e9;
    let server_cpu = s1.saturating_sub(s0) as f64 / 1e3; // µs
    let client_util = c1.saturating_sub(c0) as f64 / 1e9 / wall;
    let mut line = json!({
        "workload": cell.workload,
        "peer": peer,
        "proto": server.proto,
        "server": server.label,
        "n": cell.n,
        "payload": cell.payload,
        "rep": rep,
        "msgs_per_s": null,
        "p50_us": us(hist.quantile(0.5)),
        "p99_us": us(hist.quantile(0.99)),
        "p999_us": us(hist.quantile(0.999)),
        "server_cpu_us_per_msg": null,
        "server_cpu_util": (server_cpu / 1e6 / wall * 1000.0).round() / 1000.0,
        "server_user_share": user_share,
        "server_rss_kb": rss_end,
        "client_cpu_util": (client_util * 1000.0).round() / 1000.0,
        "client_bound": client_util > 0.9,
        "seq_gaps": gaps,
        "lost": lost,
        "errors": errors,
        "duration_s": (wall * 1000.0).round() / 1000.0,
        "load1": procfs::load1(),
    });
    let per_s = |c: u64, secs: f64| (c as f64 / secs).round();
    let obj = line.as_object_mut().expect("object");
    match cell.workload {
        "idle" => {
            let n = results.iter().map(|r| r.count).sum::<u64>().max(1);
            obj.insert("conns".into(), json!(n));
            obj.insert(
                "user_bytes_per_conn".into(),
                json!(((rss_ready.saturating_sub(rss_base)) * 1024) / n),
            );
            obj.insert(
                "kernel_bytes_per_conn".into(),
                json!(kernel_ready.saturating_sub(kernel_base) / n),
            );
            obj.insert("server_rss_kb".into(), json!(rss_ready));
            obj.insert("rss_base_kb".into(), json!(rss_base));
            obj.insert("fds".into(), json!(fds_ready));
        }
        "slow_consumer" => {
            let (sm, am) = s_mid.unwrap_or((s1, a1));
            let wall_a = (am - a0).max(1) as f64 / 1e9;
            let wall_b = (a1 - am).max(1) as f64 / 1e9;
            let b = per_s(count, wall_b);
            let a = per_s(count_a, wall_a);
            obj.insert("msgs_per_s".into(), json!(b));
            obj.insert("baseline_msgs_per_s".into(), json!(a));
            obj.insert(
                "throughput_ratio".into(),
                json!(if a > 0.0 {
                    (b / a * 1000.0).round() / 1000.0
                } else {
                    0.0
                }),
            );
            obj.insert("baseline_p50_us".into(), us(hist_a.quantile(0.5)));
            obj.insert("baseline_p99_us".into(), us(hist_a.quantile(0.99)));
            obj.insert("slow_closed".into(), json!(slow_closed));
            obj.insert("rss_start_kb".into(), json!(rss_start));
            obj.insert("rss_max_kb".into(), json!(rss_max));
            if count > 0 {
                let cpu_b = s1.saturating_sub(sm) as f64 / 1e3;
                obj.insert(
                    "server_cpu_us_per_msg".into(),
                    json!((cpu_b / count as f64 * 1000.0).round() / 1000.0),
                );
            }
        }
        "churn" => {
            std::thread::sleep(Duration::from_millis(cell.settle_ms));
            let rss_after = procfs::rss_kb(pid);
            let fds_after = procfs::fd_count(pid);
            obj.insert("msgs_per_s".into(), json!(per_s(count, wall)));
            obj.insert("handshakes".into(), json!(count));
            obj.insert("rss_before_kb".into(), json!(rss_ready));
            obj.insert("rss_after_kb".into(), json!(rss_after));
            obj.insert("fds_before".into(), json!(fds_ready));
            obj.insert("fds_after".into(), json!(fds_after));
            // Back to baseline: no descriptor left, RSS within 10% (allocator slack).
            obj.insert(
                "leak_free".into(),
                json!(fds_after <= fds_ready && rss_after <= rss_ready + rss_ready / 10 + 512),
            );
            obj.insert("rss_base_kb".into(), json!(rss_base));
            obj.insert("fds_base".into(), json!(fds_base));
            if count > 0 {
                obj.insert(
                    "server_cpu_us_per_msg".into(),
                    json!((server_cpu / count as f64 * 1000.0).round() / 1000.0),
                );
            }
        }
        _ => {
            obj.insert("msgs_per_s".into(), json!(per_s(count, wall)));
            if count > 0 {
                obj.insert(
                    "server_cpu_us_per_msg".into(),
                    json!((server_cpu / count as f64 * 1000.0).round() / 1000.0),
                );
            }
            if cell.workload == "chat" {
                obj.insert("rounds".into(), json!(rounds));
                obj.insert("per_round".into(), json!(cell.per_round));
            }
            if cell.workload == "echo_latency" {
                obj.insert("rate".into(), json!(cell.rate));
            }
        }
    }
    if !notes.is_empty() {
        obj.insert("note".into(), json!(notes.join("; ")));
    }
    Ok(line)
}

fn cmd_out(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_default()
}

fn lock_version(root: &Path, name: &str) -> String {
    let lock = std::fs::read_to_string(root.join("Cargo.lock")).unwrap_or_default();
    let key = format!("name = \"{name}\"\nversion = \"");
    lock.find(&key)
        .map(|i| {
            let rest = &lock[i + key.len()..];
            rest[..rest.find('"').unwrap_or(0)].to_owned()
        })
        .unwrap_or_default()
}

/// Machine and versions, the first line of every results file.
pub fn meta(opts: &Options) -> Value {
    let root = &opts.root;
    let peers = root.join("bench/peers");
    let ws_version = std::fs::read_to_string(peers.join("node_modules/ws/package.json"))
        .ok()
        .and_then(|s| serde_json::from_str::<Value>(&s).ok())
        .and_then(|v| v["version"].as_str().map(str::to_owned))
        .unwrap_or_default();
    let git = cmd_out(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "rev-parse",
            "--short",
            "HEAD",
        ],
    );
    let dirty = !cmd_out(
        "git",
        &[
            "-C",
            &root.display().to_string(),
            "status",
            "--porcelain",
            "--",
            "core",
            "adapters/tokio",
        ],
    )
    .is_empty();
    json!({
        "workload": "meta",
        "mode": if opts.full { "full" } else { "quick" },
        "reps": opts.reps,
        "started_unix": std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0),
        "kernel": cmd_out("uname", &["-r"]),
        "cpu": procfs::cpu_model(),
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "nproc_online": cmd_out("nproc", &["--all"]),
        "load1_start": procfs::load1(),
        "roomcast": format!("{git}{}", if dirty { "+dirty" } else { "" }),
        "rustc": cmd_out("rustc", &["--version"]),
        "bun": cmd_out(&peers.join("node_modules/.bin/bun").display().to_string(), &["--version"]),
        "node": cmd_out("node", &["--version"]),
        "ws": ws_version,
        "tokio": lock_version(root, "tokio"),
        "tokio-tungstenite": lock_version(root, "tokio-tungstenite"),
        "fastwebsockets": lock_version(root, "fastwebsockets"),
        "hyper": lock_version(root, "hyper"),
        "server_cpu": SERVER_CPU,
        "client_cpu": CLIENT_CPU,
    })
}

/// Runs the suite; returns whether every cell ran.
pub fn run(opts: &Options) -> bool {
    let meta = meta(opts);
    procfs::pin_self(CLIENT_CPU);
    let mut out = opts.out.as_ref().map(|p| {
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        std::fs::File::create(p).expect("results file")
    });
    let mut emit = |v: &Value| {
        let s = v.to_string();
        println!("{s}");
        if let Some(f) = out.as_mut() {
            let _ = writeln!(f, "{s}");
        }
    };
    emit(&meta);
    let cells: Vec<Cell> = matrix(opts.full)
        .into_iter()
        .filter(|c| opts.workloads.is_empty() || opts.workloads.iter().any(|w| w == c.workload))
        .filter(|c| opts.ns.is_empty() || opts.ns.contains(&c.n))
        .filter(|c| opts.payloads.is_empty() || opts.payloads.contains(&c.payload))
        .collect();
    let peers: Vec<&str> = PEERS
        .iter()
        .copied()
        .filter(|p| opts.peers.is_empty() || opts.peers.iter().any(|q| q == p))
        .collect();
    let mut ok = true;
    for rep in 0..opts.reps {
        for cell in &cells {
            for i in 0..peers.len() {
                let peer = peers[(i + rep) % peers.len()];
                match run_cell(opts, cell, peer, rep) {
                    Ok(Some(line)) => emit(&line),
                    Ok(None) => {}
                    Err(e) => {
                        ok = false;
                        emit(&json!({
                            "workload": cell.workload, "peer": peer, "n": cell.n,
                            "payload": cell.payload, "rep": rep, "error": e,
                        }));
                    }
                }
            }
        }
    }
    ok
}

//! # roomcast-adversarial
//!
//! Test harness for hostile and heavy peers against the real `roomcast` binary: the
//! server runs as a child process ([`Server`]), peers are raw TCP sockets speaking
//! RFC 6455 by hand ([`raw::RawWs`], for what a well-behaved client cannot send) or
//! tokio-tungstenite ([`ws`], a proper client we did not write). Nothing here links
//! roomcast's own crates, so the tests judge the server from the outside.
//!
//! Rules every test follows: every wait has a deadline and waits for an event (a frame,
//! a line, an exit, a metric reaching a value), never for time to pass; every process is
//! killed when its handle drops; only loopback addresses are used.

#![warn(missing_docs)]

pub mod raw;
pub mod ws;

use std::io::{BufRead, BufReader};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// Default bound on a single wait.
pub const WAIT: Duration = Duration::from_secs(10);

/// Loopback source addresses used to spread client ports (about 28k ephemeral ports per
/// source address on the test machines).
pub const SOURCE_ADDRS: [Ipv4Addr; 4] = [
    Ipv4Addr::new(127, 0, 0, 1),
    Ipv4Addr::new(127, 0, 0, 2),
    Ipv4Addr::new(127, 0, 0, 3),
    Ipv4Addr::new(127, 0, 0, 4),
];

/// Most stderr lines kept per server (later ones are counted, not stored).
const STDERR_KEEP: usize = 10_000;

/// Path of the `roomcast` binary under test.
///
/// `ROOMCAST_BIN` wins if set. Otherwise the binary of the same profile in this
/// workspace's target directory, brought up to date once per process with
/// `cargo build -p roomcast-tokio --bin roomcast` (set `ROOMCAST_ADVERSARIAL_NO_BUILD=1` to
/// skip that and use what is there).
pub fn roomcast_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("ROOMCAST_BIN") {
            return PathBuf::from(p);
        }
        let exe = std::env::current_exe().expect("current exe");
        let mut dir = exe.parent().expect("exe dir").to_path_buf();
        if dir.file_name().is_some_and(|n| n == "deps") {
            dir.pop();
        }
        let bin = dir.join("roomcast");
        if std::env::var_os("ROOMCAST_ADVERSARIAL_NO_BUILD").is_none() {
            build_roomcast(&dir);
        }
        assert!(
            bin.is_file(),
            "{} not found: build it with `cargo build -p roomcast-tokio --bin roomcast` \
             (or set ROOMCAST_BIN)",
            bin.display()
        );
        bin
    })
    .clone()
}

/// Runs `cargo build` for the server into the profile directory `dir` (a no-op when it
/// is up to date), bounded in time.
fn build_roomcast(dir: &std::path::Path) {
    let target_dir = dir.parent().expect("target dir");
    let release = dir.file_name().is_some_and(|n| n == "release");
    let manifest = concat!(env!("CARGO_MANIFEST_DIR"), "/../../Cargo.toml");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "--quiet",
        "-p",
        "roomcast-tokio",
        "--bin",
        "roomcast",
    ])
    .arg("--manifest-path")
    .arg(manifest)
    .env("CARGO_TARGET_DIR", target_dir)
    .stdin(Stdio::null());
    if release {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().expect("spawn cargo build");
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if let Some(status) = child.try_wait().expect("cargo build") {
            assert!(status.success(), "cargo build of roomcast failed: {status}");
            return;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cargo build of roomcast took over 15 minutes");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A `roomcast` child process, killed (SIGKILL) when dropped unless it already exited.
pub struct Server {
    child: Child,
    /// The address from its ready line.
    pub addr: SocketAddr,
    stderr: Arc<Mutex<Stderr>>,
    exit: Option<ExitStatus>,
}

#[derive(Default)]
struct Stderr {
    lines: Vec<String>,
    dropped: usize,
}

impl Server {
    /// Starts `roomcast --bind 127.0.0.1:0 --log warn ARGS...` and waits (bounded) for its
    /// ready line.
    pub fn start(args: &[&str]) -> Server {
        Server::start_logging(args, "warn")
    }

    /// Like [`Server::start`] with another `--log` filter.
    ///
    /// `ROOMCAST_ADVERSARIAL_THREADS=N` (in the test's environment) adds `--threads N`
    /// unless the test passes its own: `scripts/test.sh adversarial` runs some tests a
    /// second time on one thread, the configuration of a one-core machine.
    pub fn start_logging(args: &[&str], log: &str) -> Server {
        let mut cmd = Command::new(roomcast_bin());
        cmd.args(["--bind", "127.0.0.1:0", "--log", log]).args(args);
        if let Some(n) = std::env::var_os("ROOMCAST_ADVERSARIAL_THREADS") {
            if !args.contains(&"--threads") {
                cmd.arg("--threads").arg(n);
            }
        }
        cmd.current_dir(std::env::temp_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // The server reads its settings from ROOMCAST_* too: only our flags count.
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("ROOMCAST_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn roomcast");
        let stdout = child.stdout.take().expect("stdout");
        let stderr_pipe = child.stderr.take().expect("stderr");
        let stderr = Arc::new(Mutex::new(Stderr::default()));
        let sink = Arc::clone(&stderr);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                let mut s = sink.lock().unwrap();
                if s.lines.len() < STDERR_KEEP {
                    s.lines.push(line);
                } else {
                    s.dropped += 1;
                }
            }
        });
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "roomcast {args:?} printed no ready line within {WAIT:?}; stderr: {}",
                    stderr.lock().unwrap().lines.join("\n")
                );
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"));
        Server {
            child,
            addr,
            stderr,
            exit: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `ws://ADDR{path}`.
    pub fn ws_url(&self, path: &str) -> String {
        format!("ws://{}{path}", self.addr)
    }

    /// Resident memory of the server (VmRSS), in KiB.
    pub fn rss_kib(&self) -> u64 {
        rss_kib(self.pid())
    }

    /// Open file descriptors of the server.
    pub fn open_fds(&self) -> usize {
        open_fds(self.pid())
    }

    /// Everything the server wrote to stderr so far.
    pub fn stderr(&self) -> String {
        let s = self.stderr.lock().unwrap();
        let mut out = s.lines.join("\n");
        if s.dropped > 0 {
            out.push_str(&format!("\n... and {} more lines", s.dropped));
        }
        out
    }

    /// Panics if the server's stderr mentions a panic.
    pub fn assert_no_panic(&self) {
        let s = self.stderr();
        assert!(!s.contains("panicked"), "the server panicked; stderr:\n{s}");
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        self.signal(libc::SIGTERM);
    }

    fn signal(&self, sig: libc::c_int) {
        let pid = libc::pid_t::try_from(self.pid()).expect("pid fits");
        // SAFETY: kill(2) with our own child's pid and a valid signal number.
        let rc = unsafe { libc::kill(pid, sig) };
        assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
    }

    /// Waits up to `within` for the process to exit; `None` if it is still running.
    pub fn wait_exit(&mut self, within: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                self.exit = Some(status);
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The body of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        let (status, body) = http_get(self.addr, "/metrics").await;
        assert_eq!(status, 200, "GET /metrics");
        body
    }

    /// The sum of every sample of metric `name` (all label sets, or the one series
    /// named); panics if the server does not export the metric at all.
    pub async fn metric(&self, name: &str) -> f64 {
        let body = self.metrics().await;
        metric_value(&body, name)
            .unwrap_or_else(|| panic!("the server exports no metric {name:?}; /metrics:\n{body}"))
    }

    /// Polls `/metrics` (every 20 ms, bounded by `within`) until `ok(value of name)`;
    /// returns the last value and whether it got there. Panics if the metric is missing.
    pub async fn wait_metric(
        &self,
        name: &str,
        within: Duration,
        ok: impl Fn(f64) -> bool,
    ) -> Result<f64, f64> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let v = self.metric(name).await;
            if ok(v) {
                return Ok(v);
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(v);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The sum of every sample of metric `name` in a Prometheus text body: a plain name
/// (`roomcast_sockets`: every label set) or one series (`roomcast_closes_total{code="1008"}`).
///
/// `None` if the body does not declare the metric at all (no `# TYPE` line for its name):
/// a renamed or removed metric must not read as zero. A declared metric with no sample for
/// the series asked for is 0 (a labelled counter appears at its first increment).
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    let family = name.split_once('{').map_or(name, |(f, _)| f);
    let declared = body.lines().any(|l| {
        l.strip_prefix("# TYPE ")
            .and_then(|rest| rest.split_whitespace().next())
            == Some(family)
    });
    if !declared {
        return None;
    }
    let sum = body
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = if rest.starts_with('{') && !name.contains('{') {
                rest.rsplit_once(' ')?.1
            } else {
                rest.strip_prefix(' ')?
            };
            Some(
                value
                    .trim()
                    .parse::<f64>()
                    .unwrap_or_else(|e| panic!("metric line {l:?}: value not a number ({e})")),
            )
        })
        .sum();
    Some(sum)
}

/// VmRSS of process `pid` in KiB (0 if it is gone).
pub fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// Open file descriptors of process `pid` (0 if it is gone).
pub fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// A one-shot `GET path` with `Connection: close`: status and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let resp = http_exchange(addr, req.as_bytes()).await;
    let status = status_of(&resp).unwrap_or_else(|| panic!("no HTTP status in {resp:?}"));
    let body = resp
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

/// Sends raw request bytes and reads the response until the server closes (bounded).
pub async fn http_exchange(addr: SocketAddr, req: &[u8]) -> String {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(req).await.expect("write request");
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out).await;
        String::from_utf8_lossy(&out).into_owned()
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("HTTP response within the bound")
}

/// Sends raw request bytes and reads until the end of the response head (or the
/// connection's end), bounded: for upgrades, which leave the connection open.
pub async fn http_head(addr: SocketAddr, req: &[u8]) -> String {
    let fut = async {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        // The server may answer (and close) before reading a huge request: keep going.
        let (mut r, mut w) = s.split();
        let write = async {
            let _ = w.write_all(req).await;
            std::future::pending::<()>().await
        };
        let read = async {
            let mut out = Vec::new();
            let mut buf = [0u8; 4096];
            while !out.windows(4).any(|w| w == b"\r\n\r\n") {
                match r.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                }
            }
            String::from_utf8_lossy(&out).into_owned()
        };
        tokio::select! {
            () = write => unreachable!(),
            head = read => head,
        }
    };
    tokio::time::timeout(WAIT, fut)
        .await
        .expect("HTTP response head within the bound")
}

/// The status code of an HTTP response head.
pub fn status_of(resp: &str) -> Option<u16> {
    resp.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A TCP connection to `addr` from source address `src` (any free port).
pub async fn connect_from(src: IpAddr, addr: SocketAddr) -> std::io::Result<TcpStream> {
    let sock = match src {
        IpAddr::V4(_) => TcpSocket::new_v4()?,
        IpAddr::V6(_) => TcpSocket::new_v6()?,
    };
    sock.bind(SocketAddr::new(src, 0))?;
    let stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// A small deterministic PRNG (xorshift64*) for reproducible junk and load shapes.
#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    /// Seeded; a zero seed is replaced by a fixed non-zero one.
    pub fn new(seed: u64) -> Rng {
        Rng(if seed == 0 {
            0x9E37_79B9_7F4A_7C15
        } else {
            seed
        })
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 8);
        while out.len() < len {
            out.extend_from_slice(&self.next_u64().to_le_bytes());
        }
        out.truncate(len);
        out
    }
}

/// Samples a process's RSS until stopped; reports the peak. The sampling interval is a
/// measurement cadence, not synchronisation.
pub struct RssSampler {
    stop: Arc<std::sync::atomic::AtomicBool>,
    handle: Option<std::thread::JoinHandle<u64>>,
}

impl RssSampler {
    /// Starts sampling `pid` every `every`.
    pub fn start(pid: u32, every: Duration) -> RssSampler {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut peak = 0;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                peak = peak.max(rss_kib(pid));
                std::thread::sleep(every);
            }
            peak.max(rss_kib(pid))
        });
        RssSampler {
            stop,
            handle: Some(handle),
        }
    }

    /// Stops and returns the peak RSS seen, in KiB.
    pub fn finish(mut self) -> u64 {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.handle.take().map(|h| h.join().unwrap()).unwrap_or(0)
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::metric_value;

    const BODY: &str =
        "# HELP roomcast_sockets x\n# TYPE roomcast_sockets gauge\nroomcast_sockets 3\n\
        # HELP roomcast_closes_total y\n# TYPE roomcast_closes_total counter\n\
        roomcast_closes_total{code=\"1000\"} 2\nroomcast_closes_total{code=\"1008\"} 1\n\
        # HELP roomcast_rooms z\n# TYPE roomcast_rooms gauge\nroomcast_rooms 0\n";

    #[test]
    fn metric_value_reads_series_and_refuses_missing_names() {
        assert_eq!(metric_value(BODY, "roomcast_sockets"), Some(3.0));
        assert_eq!(metric_value(BODY, "roomcast_rooms"), Some(0.0));
        assert_eq!(metric_value(BODY, "roomcast_closes_total"), Some(3.0));
        assert_eq!(
            metric_value(BODY, "roomcast_closes_total{code=\"1008\"}"),
            Some(1.0)
        );
        // A declared counter with no sample for that label set yet.
        assert_eq!(
            metric_value(BODY, "roomcast_closes_total{code=\"1011\"}"),
            Some(0.0)
        );
        // Not exported at all, or a prefix of another name: missing, not zero.
        assert_eq!(metric_value(BODY, "roomcast_socket"), None);
        assert_eq!(metric_value(BODY, "roomcast_connections"), None);
        assert_eq!(metric_value(BODY, "roomcast_sockets_total"), None);
    }
}

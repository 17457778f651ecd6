//! roomcast-bench: the benchmark suite's load generator and runner.
//!
//! ```text
//! roomcast-bench suite --quick|--full [--reps N] [--workload W]... [--peer P]... [--n N]...
//!                      [--payload B]... [--out FILE]
//! roomcast-bench report FILE          # markdown tables of a results file
//! roomcast-bench worker SPEC_JSON     # one generator process (started by `suite`)
//! ```
//!
//! `bench/run.sh` builds everything and runs `suite`; docs/benchmarks.md describes the
//! workloads, the tiny benchmark protocol every peer speaks, and the latest results.
#![warn(missing_docs)]

mod client;
mod hist;
mod procfs;
mod report;
mod shm;
mod suite;
mod worker;

use std::path::PathBuf;
use std::process::ExitCode;

/// CLOCK_MONOTONIC in nanoseconds: one clock for every process of a run.
pub fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn usage() -> ExitCode {
    eprintln!(
        "usage: roomcast-bench suite --quick|--full [--reps N] [--workload W]... [--peer P]... [--n N]... [--payload B]... [--out FILE]\n       roomcast-bench report FILE"
    );
    ExitCode::from(2)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("worker") => match args.get(1) {
            Some(spec) => worker::main(spec),
            None => usage(),
        },
        Some("report") => match args.get(1) {
            Some(f) => match std::fs::read_to_string(f) {
                Ok(s) => {
                    print!("{}", report::markdown(&s));
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("{f}: {e}");
                    ExitCode::FAILURE
                }
            },
            None => usage(),
        },
        Some("suite") => {
            let mut opts = suite::Options {
                root: std::env::var("ROOMCAST_ROOT")
                    .map(PathBuf::from)
                    .unwrap_or_else(|_| PathBuf::from(".")),
                full: false,
                reps: 0,
                workloads: Vec::new(),
                peers: Vec::new(),
                ns: Vec::new(),
                payloads: Vec::new(),
                out: None,
            };
            let mut it = args.iter().skip(1);
            while let Some(a) = it.next() {
                match a.as_str() {
                    "--quick" => opts.full = false,
                    "--full" => opts.full = true,
                    "--reps" => opts.reps = it.next().and_then(|v| v.parse().ok()).unwrap_or(1),
                    "--workload" => opts.workloads.extend(it.next().cloned()),
                    "--peer" => opts.peers.extend(it.next().cloned()),
                    "--n" => opts
                        .ns
                        .extend(it.next().and_then(|v| v.parse::<usize>().ok())),
                    "--payload" => opts
                        .payloads
                        .extend(it.next().and_then(|v| v.parse::<usize>().ok())),
                    "--out" => opts.out = it.next().map(PathBuf::from),
                    "--root" => opts.root = it.next().map(PathBuf::from).unwrap_or_default(),
                    _ => return usage(),
                }
            }
            if opts.reps == 0 {
                opts.reps = if opts.full { 5 } else { 1 };
            }
            if suite::run(&opts) {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        _ => usage(),
    }
}

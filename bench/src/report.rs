//! Markdown tables of a results file: medians, min–max, and ratios oriented so that a
//! ratio above 1 means roomcast is better (throughput: ours ÷ peer; latency, CPU and
//! memory: peer ÷ ours), each the median of the per-repetition paired ratios.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde_json::Value;

fn median(v: &mut [f64]) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn fmt_num(v: f64) -> String {
    if v >= 100_000.0 {
        format!("{:.0}k", v / 1000.0)
    } else if v >= 10_000.0 {
        format!("{:.1}k", v / 1000.0)
    } else if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// `median (min–max)` of a field over lines.
fn stat(lines: &[&Value], key: &str) -> String {
    let mut v: Vec<f64> = lines.iter().filter_map(|l| l[key].as_f64()).collect();
    let (Some(lo), Some(hi)) = (
        v.iter().copied().reduce(f64::min),
        v.iter().copied().reduce(f64::max),
    ) else {
        return "–".into();
    };
    let m = median(&mut v).unwrap_or(0.0);
    if v.len() == 1 {
        fmt_num(m)
    } else {
        format!("{} ({}–{})", fmt_num(m), fmt_num(lo), fmt_num(hi))
    }
}

fn med(lines: &[&Value], key: &str) -> String {
    let mut v: Vec<f64> = lines.iter().filter_map(|l| l[key].as_f64()).collect();
    median(&mut v).map(fmt_num).unwrap_or_else(|| "–".into())
}

/// Median over repetitions of ours/peer (or peer/ours when `lower_better`).
fn ratio(ours: &[&Value], peer: &[&Value], key: &str, lower_better: bool) -> String {
    let mut r = Vec::new();
    for o in ours {
        let rep = &o["rep"];
        if let Some(p) = peer.iter().find(|p| &p["rep"] == rep) {
            if let (Some(a), Some(b)) = (o[key].as_f64(), p[key].as_f64()) {
                if a > 0.0 && b > 0.0 {
                    r.push(if lower_better { b / a } else { a / b });
                }
            }
        }
    }
    median(&mut r)
        .map(|x| format!("{x:.2}"))
        .unwrap_or_else(|| "–".into())
}

/// The report for a results file.
pub fn markdown(text: &str) -> String {
    let lines: Vec<Value> = text
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let mut out = String::new();
    // Group by (workload, n, payload) in file order.
    let mut cells: Vec<(String, u64, u64)> = Vec::new();
    let mut by: BTreeMap<(String, u64, u64, String), Vec<&Value>> = BTreeMap::new();
    let mut errors = Vec::new();
    for l in &lines {
        let w = l["workload"].as_str().unwrap_or("").to_owned();
        if w == "meta" || w.is_empty() {
            continue;
        }
        if l.get("error").is_some() {
            errors.push(l);
            continue;
        }
        let key = (
            w.clone(),
            l["n"].as_u64().unwrap_or(0),
            l["payload"].as_u64().unwrap_or(0),
        );
        if !cells.contains(&key) {
            cells.push(key.clone());
        }
        let peer = l["peer"].as_str().unwrap_or("").to_owned();
        by.entry((key.0, key.1, key.2, peer)).or_default().push(l);
    }
    let peers = crate::suite::PEERS;
    let mut last_workload = String::new();
    for (w, n, payload) in &cells {
        let get = |p: &str| {
            by.get(&(w.clone(), *n, *payload, p.to_owned()))
                .cloned()
                .unwrap_or_default()
        };
        let ours = get("roomcast");
        let ours_json = get("roomcast-json");
        if *w != last_workload {
            last_workload = w.clone();
        }
        let _ = writeln!(
            out,
            "\n#### {w}, n = {n}{}\n",
            if *payload > 0 {
                format!(", {payload} B")
            } else {
                String::new()
            }
        );
        match w.as_str() {
            "idle" => {
                let _ = writeln!(out, "| peer | user B/conn | kernel B/conn (both ends) | RSS KiB | ratio roomcast | ratio roomcast-json |");
                let _ = writeln!(out, "|---|---|---|---|---|---|");
                for p in peers {
                    let l = get(p);
                    if l.is_empty() {
                        continue;
                    }
                    let _ = writeln!(
                        out,
                        "| {p} | {} | {} | {} | {} | {} |",
                        stat(&l, "user_bytes_per_conn"),
                        stat(&l, "kernel_bytes_per_conn"),
                        med(&l, "server_rss_kb"),
                        ratio(&ours, &l, "user_bytes_per_conn", true),
                        ratio(&ours_json, &l, "user_bytes_per_conn", true),
                    );
                }
            }
            "churn" => {
                let _ = writeln!(out, "| peer | handshakes/s | server µs/handshake | leak-free runs | fds before→after | RSS KiB before→after | ratio roomcast | ratio roomcast-json |");
                let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
                for p in peers {
                    let l = get(p);
                    if l.is_empty() {
                        continue;
                    }
                    let ok = l
                        .iter()
                        .filter(|x| x["leak_free"].as_bool() == Some(true))
                        .count();
                    let _ = writeln!(
                        out,
                        "| {p} | {} | {} | {ok}/{} | {}→{} | {}→{} | {} | {} |",
                        stat(&l, "msgs_per_s"),
                        med(&l, "server_cpu_us_per_msg"),
                        l.len(),
                        med(&l, "fds_before"),
                        med(&l, "fds_after"),
                        med(&l, "rss_before_kb"),
                        med(&l, "rss_after_kb"),
                        ratio(&ours, &l, "msgs_per_s", false),
                        ratio(&ours_json, &l, "msgs_per_s", false),
                    );
                }
            }
            "slow_consumer" => {
                let _ = writeln!(out, "| peer | others' msgs/s without → with | ratio with/without | p99 µs without → with | slow one closed | RSS KiB start → max | client-bound |");
                let _ = writeln!(out, "|---|---|---|---|---|---|---|");
                for p in peers {
                    let l = get(p);
                    if l.is_empty() {
                        continue;
                    }
                    let closed = l
                        .iter()
                        .filter(|x| x["slow_closed"].as_bool() == Some(true))
                        .count();
                    let bound = l
                        .iter()
                        .filter(|x| x["client_bound"].as_bool() == Some(true))
                        .count();
                    let _ = writeln!(
                        out,
                        "| {p} | {} → {} | {} | {} → {} | {closed}/{} | {} → {} | {bound}/{} |",
                        med(&l, "baseline_msgs_per_s"),
                        med(&l, "msgs_per_s"),
                        stat(&l, "throughput_ratio"),
                        med(&l, "baseline_p99_us"),
                        med(&l, "p99_us"),
                        l.len(),
                        med(&l, "rss_start_kb"),
                        med(&l, "rss_max_kb"),
                        l.len(),
                    );
                }
            }
            "echo_latency" => {
                let _ = writeln!(out, "| peer | answered/s | p50 µs | p99 µs | p99.9 µs | server µs/msg | client-bound | p99 ratio roomcast |");
                let _ = writeln!(out, "|---|---|---|---|---|---|---|---|");
                for p in peers {
                    let l = get(p);
                    if l.is_empty() {
                        continue;
                    }
                    let bound = l
                        .iter()
                        .filter(|x| x["client_bound"].as_bool() == Some(true))
                        .count();
                    let _ = writeln!(
                        out,
                        "| {p} | {} | {} | {} | {} | {} | {bound}/{} | {} |",
                        med(&l, "msgs_per_s"),
                        stat(&l, "p50_us"),
                        stat(&l, "p99_us"),
                        stat(&l, "p999_us"),
                        med(&l, "server_cpu_us_per_msg"),
                        l.len(),
                        ratio(&ours, &l, "p99_us", true),
                    );
                }
            }
            _ => {
                let lat = w == "fanout";
                let _ = writeln!(
                    out,
                    "| peer | msgs/s median (min–max) | {}server µs/msg | server CPU (user share) | client-bound | seq gaps / lost | ratio roomcast | ratio roomcast-json | CPU/msg ratio roomcast | CPU/msg ratio roomcast-json |",
                    if lat { "p50 µs | p99 µs | " } else { "" }
                );
                let _ = writeln!(
                    out,
                    "|---|---|{}---|---|---|---|---|---|---|---|",
                    if lat { "---|---|" } else { "" }
                );
                for p in peers {
                    let l = get(p);
                    if l.is_empty() {
                        continue;
                    }
                    let bound = l
                        .iter()
                        .filter(|x| x["client_bound"].as_bool() == Some(true))
                        .count();
                    let gaps: u64 = l.iter().filter_map(|x| x["seq_gaps"].as_u64()).sum();
                    let lost: u64 = l.iter().filter_map(|x| x["lost"].as_u64()).sum();
                    let latcols = if lat {
                        format!("{} | {} | ", med(&l, "p50_us"), med(&l, "p99_us"))
                    } else {
                        String::new()
                    };
                    let _ = writeln!(
                        out,
                        "| {p} | {} | {latcols}{} | {} ({}) | {bound}/{} | {gaps} / {lost} | {} | {} | {} | {} |",
                        stat(&l, "msgs_per_s"),
                        med(&l, "server_cpu_us_per_msg"),
                        med(&l, "server_cpu_util"),
                        med(&l, "server_user_share"),
                        l.len(),
                        ratio(&ours, &l, "msgs_per_s", false),
                        ratio(&ours_json, &l, "msgs_per_s", false),
                        ratio(&ours, &l, "server_cpu_us_per_msg", true),
                        ratio(&ours_json, &l, "server_cpu_us_per_msg", true),
                    );
                }
            }
        }
    }
    if !errors.is_empty() {
        let _ = writeln!(out, "\n#### Cells that failed\n");
        for e in errors {
            let _ = writeln!(
                out,
                "- {} / {} / n = {} / rep {}: {}",
                e["workload"].as_str().unwrap_or(""),
                e["peer"].as_str().unwrap_or(""),
                e["n"],
                e["rep"],
                e["error"].as_str().unwrap_or("")
            );
        }
    }
    out
}

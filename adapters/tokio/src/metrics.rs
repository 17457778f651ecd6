//! Counters only the adapter can see (handshake answers, close codes, socket bytes) and
//! the Prometheus text rendering of them together with the hub's [`Stats`].
//!
//! These are atomics and a small mutex-guarded map rather than hub state because they are
//! updated by socket tasks and HTTP handlers, off the hub task, at most once per
//! connection or per syscall.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use roomcast_core::hub::Stats;

/// Adapter-side counters shared by every task.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    handshakes_accepted: AtomicU64,
    handshakes_refused: Mutex<BTreeMap<u16, u64>>,
    closes: Mutex<BTreeMap<u16, u64>>,
    socket_bytes_read: AtomicU64,
    socket_bytes_written: AtomicU64,
    http_requests: AtomicU64,
    pending_handshakes: AtomicUsize,
    pending_handshakes_refused: AtomicU64,
}

/// Held by the task serving an accepted TCP connection until it is upgraded or ends:
/// one unit of [`Metrics::try_pending`]'s bound.
pub(crate) struct PendingHandshake(Arc<Metrics>);

impl PendingHandshake {
    /// Ends the pending phase; returns how many connections are still pending.
    pub(crate) fn finish(self) -> usize {
        // `Drop` does the count; the value after it is read here.
        let metrics = Arc::clone(&self.0);
        drop(self);
        metrics.pending_count()
    }
}

impl Drop for PendingHandshake {
    fn drop(&mut self) {
        self.0.pending_handshakes.fetch_sub(1, Ordering::AcqRel);
    }
}

fn bump(map: &Mutex<BTreeMap<u16, u64>>, key: u16) {
    // A poisoned map only means another thread panicked mid-increment; counts stay usable.
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(key).or_default() += 1;
}

fn snapshot(map: &Mutex<BTreeMap<u16, u64>>) -> BTreeMap<u16, u64> {
    map.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

impl Metrics {
    pub(crate) fn handshake_accepted(&self) {
        self.handshakes_accepted.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn handshake_refused(&self, status: u16) {
        bump(&self.handshakes_refused, status);
    }

    /// A WebSocket ended with this close code (sent or received; 1006 when the TCP
    /// connection ended without a closing handshake).
    pub(crate) fn closed(&self, code: u16) {
        bump(&self.closes, code);
    }

    pub(crate) fn read(&self, n: usize) {
        self.socket_bytes_read
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn written(&self, n: usize) {
        self.socket_bytes_written
            .fetch_add(n as u64, Ordering::Relaxed);
    }

    pub(crate) fn http_request(&self) {
        self.http_requests.fetch_add(1, Ordering::Relaxed);
    }

    /// TCP connections in their HTTP phase right now.
    pub(crate) fn pending_count(&self) -> usize {
        self.pending_handshakes.load(Ordering::Acquire)
    }

    /// Counts one more TCP connection in its HTTP phase (handshake not finished, or plain
    /// HTTP), unless `max` already are: then counts a refusal and returns `None`.
    pub(crate) fn try_pending(self: &Arc<Self>, max: usize) -> Option<PendingHandshake> {
        let admitted = self
            .pending_handshakes
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .is_ok();
        if admitted {
            Some(PendingHandshake(Arc::clone(self)))
        } else {
            self.pending_handshakes_refused
                .fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// Renders the Prometheus text exposition format (version 0.0.4).
    pub(crate) fn render(&self, stats: &Stats, open_sockets: usize) -> String {
        let mut out = String::with_capacity(4096);
        let mut gauge = |name: &str, help: &str, v: u64| {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n"
            );
        };
        gauge(
            "roomcast_connections",
            "Open WebSocket connections admitted by the hub.",
            stats.connections as u64,
        );
        gauge(
            "roomcast_rooms",
            "Rooms that exist (including empty rooms kept for history).",
            stats.rooms as u64,
        );
        gauge(
            "roomcast_channels",
            "Channels that exist.",
            stats.channels as u64,
        );
        gauge(
            "roomcast_users",
            "Distinct users with at least one open connection.",
            stats.users as u64,
        );
        gauge(
            "roomcast_sockets",
            "WebSocket tasks running, including ones still closing.",
            open_sockets as u64,
        );
        gauge(
            "roomcast_pending_handshakes",
            "TCP connections not (yet) upgraded to a WebSocket: handshakes in progress and \
             plain HTTP connections, bounded by --max-pending-handshakes.",
            self.pending_handshakes.load(Ordering::Acquire) as u64,
        );
        gauge(
            "roomcast_history_bytes",
            "Bytes of room history held, all rooms together (bounded by --history-max-bytes).",
            stats.history_bytes as u64,
        );
        let counters: [(&str, &str, u64); 20] = [
            (
                "roomcast_messages_received_total",
                "WebSocket messages received from clients.",
                stats.messages_in,
            ),
            (
                "roomcast_received_bytes_total",
                "Bytes of messages received from clients.",
                stats.bytes_in,
            ),
            (
                "roomcast_messages_sent_total",
                "Messages handed to connections for sending.",
                stats.messages_out,
            ),
            (
                "roomcast_sent_bytes_total",
                "Frame bytes handed to connections for sending.",
                stats.bytes_out,
            ),
            (
                "roomcast_rate_limited_total",
                "Requests refused with rate_limited.",
                stats.rate_limited,
            ),
            (
                "roomcast_slow_consumer_closes_total",
                "Connections closed because their unsent output exceeded the limit.",
                stats.slow_consumers,
            ),
            (
                "roomcast_history_evicted_total",
                "History messages dropped to keep all rooms' history under --history-max-bytes.",
                stats.history_evicted,
            ),
            (
                "roomcast_backplane_appends_total",
                "Room messages appended to the Redis backplane's logs (--redis).",
                stats.backplane_appends,
            ),
            (
                "roomcast_backplane_refused_total",
                "Room publishes and joins refused unavailable because Redis was.",
                stats.backplane_refused,
            ),
            (
                "roomcast_backplane_loads_total",
                "Reads of a room's log in Redis answered (joins, gap repairs, checks).",
                stats.backplane_loads,
            ),
            (
                "roomcast_backplane_gaps_total",
                "Gaps in a room's sequence seen on the pub/sub link, each repaired from the log.",
                stats.backplane_gaps,
            ),
            (
                "roomcast_backplane_duplicates_total",
                "Room messages that arrived twice from the backplane, dropped.",
                stats.backplane_duplicates,
            ),
            (
                "roomcast_backplane_resets_total",
                "Rooms whose members were closed 1013 because Redis lost what they missed.",
                stats.backplane_resets,
            ),
            (
                "roomcast_backplane_load_timeouts_total",
                "Reads of a room's log in Redis given up because no answer came in time.",
                stats.backplane_load_timeouts,
            ),
            (
                "roomcast_heartbeat_timeouts_total",
                "Connections dropped after the heartbeat window passed in silence.",
                stats.heartbeat_timeouts,
            ),
            (
                "roomcast_handshakes_accepted_total",
                "WebSocket upgrades accepted.",
                self.handshakes_accepted.load(Ordering::Relaxed),
            ),
            (
                "roomcast_socket_read_bytes_total",
                "Bytes read from WebSocket sockets.",
                self.socket_bytes_read.load(Ordering::Relaxed),
            ),
            (
                "roomcast_socket_written_bytes_total",
                "Bytes written to WebSocket sockets.",
                self.socket_bytes_written.load(Ordering::Relaxed),
            ),
            (
                "roomcast_http_requests_total",
                "HTTP requests served (upgrades included).",
                self.http_requests.load(Ordering::Relaxed),
            ),
            (
                "roomcast_pending_handshakes_refused_total",
                "TCP connections answered 503 and closed at once because \
                 --max-pending-handshakes connections were already pending.",
                self.pending_handshakes_refused.load(Ordering::Relaxed),
            ),
        ];
        for (name, help, v) in counters {
            let _ = write!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
            );
        }
        let labelled = [
            (
                "roomcast_handshakes_refused_total",
                "WebSocket upgrades refused, by HTTP status.",
                "status",
                snapshot(&self.handshakes_refused),
            ),
            (
                "roomcast_closes_total",
                "WebSocket connections ended, by close code (1006: no closing handshake).",
                "code",
                snapshot(&self.closes),
            ),
        ];
        for (name, help, label, values) in labelled {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
            for (k, v) in values {
                let _ = writeln!(out, "{name}{{{label}=\"{k}\"}} {v}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_once() {
        let m = Metrics::default();
        m.closed(1000);
        m.closed(1000);
        m.closed(1009);
        m.handshake_refused(403);
        let stats = Stats {
            connections: 3,
            heartbeat_timeouts: 2,
            ..Stats::default()
        };
        let text = m.render(&stats, 4);
        assert!(text.contains("roomcast_connections 3\n"));
        assert!(text.contains("roomcast_heartbeat_timeouts_total 2\n"));
        assert!(text.contains("roomcast_closes_total{code=\"1000\"} 2\n"));
        assert!(text.contains("roomcast_closes_total{code=\"1009\"} 1\n"));
        assert!(text.contains("roomcast_handshakes_refused_total{status=\"403\"} 1\n"));
        assert_eq!(text.matches("# TYPE roomcast_closes_total ").count(), 1);
        assert!(text.contains("roomcast_pending_handshakes 0\n"));
        assert!(text.contains("roomcast_pending_handshakes_refused_total 0\n"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').expect("name value");
            assert!(name.starts_with("roomcast_"), "{line}");
            assert!(value.parse::<u64>().is_ok(), "{line}");
        }
    }

    #[test]
    fn pending_handshakes_are_bounded_and_released() {
        let m = Arc::new(Metrics::default());
        let a = m.try_pending(2).expect("first");
        let b = m.try_pending(2).expect("second");
        assert!(m.try_pending(2).is_none(), "over the bound");
        drop(a);
        let c = m.try_pending(2).expect("a released slot is reused");
        let text = m.render(&Stats::default(), 0);
        assert!(text.contains("roomcast_pending_handshakes 2\n"), "{text}");
        assert!(text.contains("roomcast_pending_handshakes_refused_total 1\n"));
        drop((b, c));
        assert_eq!(m.pending_handshakes.load(Ordering::Acquire), 0);
    }
}

//! History and recovery: each room's recent messages, one byte budget for all of them,
//! and what a rejoining client is replayed.
//!
//! A room's log is trimmed by count and age when it grows and when its room's timer
//! fires; past the byte budget the oldest messages of any room go first. Replay follows
//! PROTOCOL.md "Ordering and recovery": the same epoch resumes after `since` when the log
//! still reaches back that far; another epoch gets the whole epoch only if the log still
//! starts at seq 1, and is never told it recovered.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, VecDeque};

use super::config::HistoryConfig;
use super::membership::Room;
use super::registry::Registry;
use crate::outgoing::Outgoing;
use crate::time::Timestamp;

/// One kept room message, exactly as it was delivered.
pub(crate) struct HistoryEntry {
    pub(crate) seq: u64,
    pub(crate) at: Timestamp,
    pub(crate) msg: Outgoing,
}

/// A room's kept messages, oldest first, seqs increasing.
pub(crate) type RoomLog = VecDeque<HistoryEntry>;

/// What a rejoin with a position gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Replay {
    /// Replay the kept messages from this seq on (none when `None`).
    pub(crate) from: Option<u64>,
    /// Whether the client has everything it missed once replayed.
    pub(crate) recovered: bool,
}

/// The history settings and the byte count of every room's log together.
pub(crate) struct History {
    config: HistoryConfig,
    bytes: usize,
    evicted: u64,
}

impl History {
    pub(crate) fn new(config: HistoryConfig) -> History {
        History {
            config,
            bytes: 0,
            evicted: 0,
        }
    }

    /// Whether rooms keep messages at all.
    pub(crate) fn enabled(&self) -> bool {
        self.config.max_messages > 0
    }

    /// Bytes held across all rooms.
    pub(crate) fn bytes(&self) -> usize {
        self.bytes
    }

    /// Messages dropped so far to stay within the byte budget.
    pub(crate) fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Whether the logs together hold more than the byte budget.
    pub(crate) fn over_budget(&self) -> bool {
        self.bytes > self.config.max_total_bytes
    }

    /// Appends a room message and trims that room's log by count and age.
    pub(crate) fn append(&mut self, log: &mut RoomLog, entry: HistoryEntry, now: Timestamp) {
        self.bytes += entry.msg.wire_len();
        log.push_back(entry);
        self.trim(log, now);
    }

    /// Appends a restored message as it was (no trimming: the restore trims after).
    /// Entries out of order or past `seq` are skipped.
    pub(crate) fn restore(&mut self, log: &mut RoomLog, entry: HistoryEntry, seq: u64) {
        if entry.seq <= seq && log.back().is_none_or(|b| b.seq < entry.seq) {
            self.bytes += entry.msg.wire_len();
            log.push_back(entry);
        }
    }

    /// Merges entries a backplane loaded (at or below `upto`, the room's seq) under the
    /// log, keeping the longest run of consecutive seqs that ends at `upto`: replay
    /// must never skip a seq it claims to have.
    pub(crate) fn merge(
        &mut self,
        log: &mut RoomLog,
        older: Vec<HistoryEntry>,
        upto: u64,
        now: Timestamp,
    ) {
        let mut all = std::collections::BTreeMap::new();
        for e in log.drain(..) {
            self.bytes -= e.msg.wire_len();
            all.insert(e.seq, e);
        }
        for e in older {
            if e.seq <= upto {
                all.entry(e.seq).or_insert(e);
            }
        }
        let mut run = Vec::new();
        let mut expect = upto;
        for (seq, e) in all.into_iter().rev() {
            if seq != expect || expect == 0 {
                break;
            }
            run.push(e);
            expect -= 1;
        }
        for e in run.into_iter().rev() {
            self.bytes += e.msg.wire_len();
            log.push_back(e);
        }
        self.trim(log, now);
    }

    /// Drops the messages past the count limit or older than the age limit.
    pub(crate) fn trim(&mut self, log: &mut RoomLog, now: Timestamp) {
        while let Some(front) = log.front() {
            if log.len() > self.config.max_messages
                || front.at.saturating_add(self.config.max_age()) <= now
            {
                self.bytes -= front.msg.wire_len();
                log.pop_front();
            } else {
                break;
            }
        }
    }

    /// Forgets a removed room's log.
    pub(crate) fn discard(&mut self, log: &RoomLog) {
        self.bytes -= log.iter().map(|h| h.msg.wire_len()).sum::<usize>();
    }

    /// When an empty room's log has aged out (and the room may go), if it holds any.
    pub(crate) fn expires_at(&self, log: &RoomLog) -> Option<Timestamp> {
        log.back()
            .map(|last| last.at.saturating_add(self.config.max_age()))
    }

    /// Brings the logs together back under the byte budget (to 7/8 of it, so eviction
    /// runs once per eighth of the budget, not on every publish): the oldest messages go
    /// first, whichever room holds them. Returns the rooms whose logs it emptied.
    pub(crate) fn evict(&mut self, rooms: &mut Registry<Room>) -> Vec<usize> {
        let target = self.config.max_total_bytes / 8 * 7;
        // Oldest first across rooms: a heap of each room's oldest entry.
        let mut heap: BinaryHeap<Reverse<(Timestamp, u64, usize)>> = rooms
            .iter()
            .filter_map(|(rk, r)| r.log.front().map(|h| Reverse((h.at, h.seq, rk))))
            .collect();
        let mut emptied = Vec::new();
        while self.bytes > target {
            let Some(Reverse((_, _, rk))) = heap.pop() else {
                break;
            };
            let log = &mut rooms[rk].log;
            let Some(front) = log.pop_front() else {
                continue;
            };
            self.bytes -= front.msg.wire_len();
            self.evicted += 1;
            match log.front() {
                Some(h) => heap.push(Reverse((h.at, h.seq, rk))),
                None => emptied.push(rk),
            }
        }
        emptied
    }

    /// What a join of a room at `(epoch, seq)` with the client's position `since` /
    /// `client_epoch` gets replayed (call [`History::trim`] first).
    pub(crate) fn replay(
        log: &RoomLog,
        epoch: &str,
        seq: u64,
        since: Option<u64>,
        client_epoch: Option<&str>,
    ) -> Replay {
        const NOTHING: Replay = Replay {
            from: None,
            recovered: false,
        };
        let oldest = log.front().map(|e| e.seq);
        if client_epoch == Some(epoch) {
            let since = since.unwrap_or(0);
            if since > seq {
                return NOTHING;
            }
            if since == seq {
                return Replay {
                    from: None,
                    recovered: true,
                };
            }
            match oldest {
                Some(o) if o <= since + 1 => Replay {
                    from: Some(since + 1),
                    recovered: true,
                },
                _ => NOTHING,
            }
        } else {
            match oldest {
                Some(1) => Replay {
                    from: Some(1),
                    recovered: false,
                },
                _ => NOTHING,
            }
        }
    }

    /// The byte count matches the logs.
    pub(crate) fn check(&self, rooms: &Registry<Room>) {
        let held: usize = rooms
            .iter()
            .flat_map(|(_, r)| r.log.iter().map(|h| h.msg.wire_len()))
            .sum();
        assert_eq!(held, self.bytes, "history byte count");
        for (_, r) in rooms.iter() {
            let mut prev = 0;
            for h in &r.log {
                assert!(h.seq > prev && h.seq <= r.seq, "history seqs in order");
                prev = h.seq;
            }
        }
    }
}

//! Deadlines: one heap for every connection and room timer, deleted lazily.
//!
//! An entry names what it is for; when it fires the hub checks it is still wanted (the
//! connection's recorded deadline, the room's uid), so rescheduling never searches the
//! heap. Stale entries are swept once the heap has doubled (see [`TimerTable::push`]).

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use super::types::ConnId;
use crate::time::Timestamp;

/// What a deadline is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Timer {
    /// A connection's heartbeat or closing grace.
    Conn(ConnId),
    /// An empty room's history expiry (`uid` tells a reused slot apart).
    Room { slot: usize, uid: u64 },
    /// A backplane load's deadline (`hub::backplane`).
    Load { serial: u64 },
    /// The end of a room's presence window (`hub::presence`).
    Presence { slot: usize, uid: u64 },
}

/// The heap is never swept below this size (sweeping a small heap gains nothing).
const MIN_SWEEP: usize = 1024;

pub(crate) struct TimerTable {
    heap: BinaryHeap<Reverse<(Timestamp, Timer)>>,
    /// Heap size at which stale entries are swept out.
    sweep_at: usize,
}

impl TimerTable {
    pub(crate) fn new() -> TimerTable {
        TimerTable {
            heap: BinaryHeap::new(),
            sweep_at: MIN_SWEEP,
        }
    }

    /// The earliest deadline, stale or not.
    pub(crate) fn next(&self) -> Option<Timestamp> {
        self.heap.peek().map(|Reverse((t, _))| *t)
    }

    /// Takes the earliest entry due at `now`.
    pub(crate) fn pop_due(&mut self, now: Timestamp) -> Option<(Timestamp, Timer)> {
        match self.heap.peek() {
            Some(Reverse((t, _))) if *t <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Schedules `timer` at `at`.
    ///
    /// Timers are deleted lazily: a freed connection's entry stays in the heap until its
    /// deadline, tens of seconds for a heartbeat. Under connection churn (a reconnect
    /// storm, 20k handshakes a second in the benchmark) that is hundreds of thousands of
    /// dead entries and megabytes that never come back. So once the heap has doubled
    /// since the last sweep, the entries `live` rejects are dropped: the heap stays within
    /// twice its live entries (plus a floor), at O(1) amortized cost per push.
    pub(crate) fn push(
        &mut self,
        at: Timestamp,
        timer: Timer,
        live: impl Fn(Timestamp, Timer) -> bool,
    ) {
        self.heap.push(Reverse((at, timer)));
        if self.heap.len() < self.sweep_at {
            return;
        }
        self.heap.retain(|&Reverse((t, timer))| live(t, timer));
        let kept = self.heap.len();
        self.sweep_at = (2 * kept).max(MIN_SWEEP);
        if self.heap.capacity() > 2 * self.sweep_at {
            self.heap.shrink_to(self.sweep_at);
        }
    }

    /// Entries in the heap, stale ones included.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// The heap's allocation, in entries.
    #[cfg(test)]
    pub(crate) fn capacity(&self) -> usize {
        self.heap.capacity()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_entries_come_out_in_order_and_only_when_due() {
        let mut t = TimerTable::new();
        let a = ConnId::new(1, 1);
        let b = ConnId::new(2, 1);
        t.push(Timestamp(20), Timer::Conn(b), |_, _| true);
        t.push(Timestamp(10), Timer::Conn(a), |_, _| true);
        assert_eq!(t.next(), Some(Timestamp(10)));
        assert_eq!(t.pop_due(Timestamp(9)), None);
        assert_eq!(
            t.pop_due(Timestamp(25)),
            Some((Timestamp(10), Timer::Conn(a)))
        );
        assert_eq!(
            t.pop_due(Timestamp(25)),
            Some((Timestamp(20), Timer::Conn(b)))
        );
        assert_eq!(t.pop_due(Timestamp(25)), None);
    }

    #[test]
    fn a_doubled_heap_drops_what_is_no_longer_wanted() {
        let mut t = TimerTable::new();
        for i in 0..MIN_SWEEP - 1 {
            t.push(
                Timestamp(i as u64),
                Timer::Conn(ConnId::new(i, 1)),
                |_, _| true,
            );
        }
        assert_eq!(t.len(), MIN_SWEEP - 1, "no sweep below the threshold");
        // The push that reaches the threshold sweeps: keep only even slots.
        t.push(
            Timestamp(5000),
            Timer::Room { slot: 0, uid: 1 },
            |_, timer| matches!(timer, Timer::Conn(id) if id.slot() % 2 == 0),
        );
        assert_eq!(t.len(), MIN_SWEEP / 2);
    }
}

//! Per-worker deadlines: a min-heap of (deadline, token) with lazy invalidation.
//!
//! Each connection keeps its own `deadline` and the time of the entry it has in the heap
//! (`timer_at`). Moving a deadline later pushes nothing; the stale entry, when it comes
//! due, re-arms at the connection's current deadline. So the heap holds about one entry per
//! connection and no entry is pushed per request.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// A connection's deadline bookkeeping, in worker-clock milliseconds (0 = none).
#[derive(Debug, Default, Clone, Copy)]
pub struct Deadline {
    pub at: u64,
    /// Time of this connection's entry in the heap (0 = none).
    pub queued: u64,
}

/// Monotonic milliseconds since the worker started (never 0 once started).
pub struct Clock {
    origin: Instant,
}

impl Clock {
    pub fn new() -> Clock {
        Clock {
            origin: Instant::now(),
        }
    }

    pub fn now_ms(&self) -> u64 {
        self.origin.elapsed().as_millis() as u64 + 1
    }
}

impl Default for Clock {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(u64, usize)>>,
}

impl Timers {
    /// Sets `d` to expire at `at` (0 clears it).
    #[inline]
    pub fn set(&mut self, d: &mut Deadline, token: usize, at: u64) {
        d.at = at;
        if at != 0 && (d.queued == 0 || at < d.queued) {
            d.queued = at;
            self.heap.push(Reverse((at, token)));
        }
    }

    /// Milliseconds until the earliest entry, if any.
    pub fn next_in(&self, now: u64) -> Option<u64> {
        self.heap
            .peek()
            .map(|Reverse((at, _))| at.saturating_sub(now))
    }

    /// Pops the next entry due by `now`: `(entry_time, token)`. The caller checks the
    /// connection with [`Timers::fire`].
    #[inline]
    pub fn pop_due(&mut self, now: u64) -> Option<(u64, usize)> {
        match self.heap.peek() {
            Some(Reverse((at, _))) if *at <= now => self.heap.pop().map(|Reverse(e)| e),
            _ => None,
        }
    }

    /// Decides what a popped entry means for a connection whose deadline is `d`: true if
    /// it has expired. A moved deadline is re-queued; stale entries are ignored.
    #[inline]
    pub fn fire(&mut self, d: &mut Deadline, token: usize, entry: u64, now: u64) -> bool {
        if d.queued != entry {
            return false;
        }
        d.queued = 0;
        if d.at == 0 {
            return false;
        }
        if d.at <= now {
            d.at = 0;
            return true;
        }
        d.queued = d.at;
        self.heap.push(Reverse((d.at, token)));
        false
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extending_a_deadline_pushes_nothing_and_still_fires() {
        let mut t = Timers::default();
        let mut d = Deadline::default();
        t.set(&mut d, 7, 100);
        for at in [150, 200, 250] {
            t.set(&mut d, 7, at);
        }
        assert_eq!(t.len(), 1);
        let (e, tok) = t.pop_due(120).unwrap();
        assert!(!t.fire(&mut d, tok, e, 120), "moved deadline re-queues");
        assert!(t.pop_due(249).is_none());
        let (e, tok) = t.pop_due(250).unwrap();
        assert_eq!(tok, 7);
        assert!(t.fire(&mut d, tok, e, 250));
        assert!(t.is_empty());
    }

    #[test]
    fn earlier_deadline_and_cleared_deadline() {
        let mut t = Timers::default();
        let mut d = Deadline::default();
        t.set(&mut d, 1, 100);
        t.set(&mut d, 1, 50);
        assert_eq!(t.next_in(0), Some(50));
        let (e, tok) = t.pop_due(60).unwrap();
        assert!(t.fire(&mut d, tok, e, 60));
        let (e, tok) = t.pop_due(100).unwrap();
        assert!(!t.fire(&mut d, tok, e, 100), "stale entry ignored");
        t.set(&mut d, 1, 10);
        t.set(&mut d, 1, 0);
        let (e, tok) = t.pop_due(10).unwrap();
        assert!(
            !t.fire(&mut d, tok, e, 10),
            "cleared deadline does not fire"
        );
    }
}

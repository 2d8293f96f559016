//! Deadline heap for delayed answers; the event loop polls with the time to the next one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::Instant;

/// Pending deadlines, each naming a connection slot and the id of the connection that set
/// it (a slot may be reused; a stale entry is recognised by its id and ignored).
#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<(Instant, usize, u64)>>,
}

impl Timers {
    pub fn push(&mut self, at: Instant, slot: usize, id: u64) {
        self.heap.push(Reverse((at, slot, id)));
    }

    /// The earliest deadline, if any.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.heap.peek().map(|Reverse((at, _, _))| *at)
    }

    /// Removes and returns one entry due at or before `now`, earliest first.
    pub fn pop_due(&mut self, now: Instant) -> Option<(usize, u64)> {
        match self.heap.peek() {
            Some(Reverse((at, _, _))) if *at <= now => {
                self.heap.pop().map(|Reverse((_, slot, id))| (slot, id))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn pops_due_entries_in_deadline_order() {
        let t0 = Instant::now();
        let ms = |m| t0 + Duration::from_millis(m);
        let mut t = Timers::default();
        t.push(ms(30), 3, 30);
        t.push(ms(10), 1, 10);
        t.push(ms(20), 2, 20);
        assert_eq!(t.next_deadline(), Some(ms(10)));
        assert_eq!(t.pop_due(ms(5)), None);
        assert_eq!(t.pop_due(ms(25)), Some((1, 10)));
        assert_eq!(t.pop_due(ms(25)), Some((2, 20)));
        assert_eq!(t.pop_due(ms(25)), None);
        assert_eq!(t.next_deadline(), Some(ms(30)));
    }
}

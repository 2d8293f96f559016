//! Process-wide request counters: one cache-padded block per thread, summed when read.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Counters written by one event-loop thread only; padded so threads never share a line.
#[derive(Debug, Default)]
#[repr(align(128))]
pub struct ThreadStats {
    requests: AtomicU64,
    connections: AtomicU64,
    accepted: AtomicU64,
}

impl ThreadStats {
    /// A request other than `/health` and `/stats`.
    pub fn request(&self) {
        self.requests.fetch_add(1, Relaxed);
    }

    /// A connection's first counted request.
    pub fn connection(&self) {
        self.connections.fetch_add(1, Relaxed);
    }

    pub fn accepted(&self) {
        self.accepted.fetch_add(1, Relaxed);
    }
}

/// Totals over all threads.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub requests: u64,
    pub connections: u64,
    pub accepted: u64,
}

/// All threads' counters.
#[derive(Debug)]
pub struct Stats {
    threads: Box<[ThreadStats]>,
}

impl Stats {
    pub fn new(threads: usize) -> Self {
        Stats {
            threads: (0..threads.max(1))
                .map(|_| ThreadStats::default())
                .collect(),
        }
    }

    pub fn thread(&self, i: usize) -> &ThreadStats {
        &self.threads[i]
    }

    pub fn totals(&self) -> Totals {
        self.threads.iter().fold(Totals::default(), |t, s| Totals {
            requests: t.requests + s.requests.load(Relaxed),
            connections: t.connections + s.connections.load(Relaxed),
            accepted: t.accepted + s.accepted.load(Relaxed),
        })
    }
}

impl Totals {
    /// `{"id":"A","requests":N,"connections":M,"accepted":K}` (ids are validated to need no
    /// escaping).
    pub fn write_json(&self, id: &str, out: &mut impl Write) -> std::io::Result<()> {
        write!(
            out,
            "{{\"id\":\"{id}\",\"requests\":{},\"connections\":{},\"accepted\":{}}}",
            self.requests, self.connections, self.accepted
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_threads_and_formats_json() {
        let s = Stats::new(2);
        s.thread(0).request();
        s.thread(1).request();
        s.thread(1).connection();
        s.thread(0).accepted();
        s.thread(1).accepted();
        s.thread(1).accepted();
        let mut out = Vec::new();
        s.totals().write_json("A", &mut out).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"id":"A","requests":2,"connections":1,"accepted":3}"#
        );
    }
}

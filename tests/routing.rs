//! Routing modes, end to end: real backends with different fixed latencies behind the real
//! proxy, a bounded concurrent keep-alive load, and where the responses came from.

mod common;

use common::*;
use std::collections::HashMap;
use std::io::Write;

const THREADS: usize = 8;
const PER_THREAD: usize = 50;

/// Sends THREADS x PER_THREAD keep-alive GETs through a proxy in `mode` in front of
/// `servers`; returns the share of responses per backend id.
fn shares(mode: &str, servers: &[(&Backend, f64)]) -> HashMap<String, f64> {
    let p = Proxy::with_config(
        &config_weighted(servers),
        &["--mode", mode, "--workers", "2"],
    );
    let addr = p.addr;
    let ids: Vec<String> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(move || {
                    let mut c = connect(addr);
                    let mut pending = Vec::new();
                    let mut ids = Vec::with_capacity(PER_THREAD);
                    for _ in 0..PER_THREAD {
                        c.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                        let r = read_response(&mut c, &mut pending, "GET").expect("response");
                        assert_eq!(r.status, 200, "{mode}");
                        ids.push(r.backend());
                    }
                    ids
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    let mut counts: HashMap<String, f64> = HashMap::new();
    for id in &ids {
        *counts.entry(id.clone()).or_default() += 1.0;
    }
    let total = ids.len() as f64;
    counts.values_mut().for_each(|c| *c /= total);
    eprintln!("{mode}: {counts:?}");
    counts
}

fn share(m: &HashMap<String, f64>, id: &str) -> f64 {
    m.get(id).copied().unwrap_or(0.0)
}

#[test]
fn latency_modes_move_traffic_to_the_fast_backend() {
    let a = Backend::start("A", "fixed:5", &[]);
    let b = Backend::start("B", "fixed:60", &[]);
    for mode in [
        "adaptive_sma",
        "adaptive-ewma",
        "peak-ewma",
        "least-request",
    ] {
        let s = shares(mode, &[(&a, 1.0), (&b, 1.0)]);
        assert!(share(&s, "A") > 0.7, "{mode}: {s:?}");
    }
}

#[test]
fn round_robin_splits_evenly_and_weighted_follows_loads() {
    let a = Backend::start("A", "fixed:5", &[]);
    let b = Backend::start("B", "fixed:60", &[]);
    let c = Backend::start("C", "fixed:60", &[]);
    let s = shares("round-robin", &[(&a, 1.0), (&b, 1.0), (&c, 1.0)]);
    for id in ["A", "B", "C"] {
        assert!(
            (share(&s, id) - 1.0 / 3.0).abs() < 0.03,
            "round-robin: {s:?}"
        );
    }
    let s = shares("weighted", &[(&a, 3.0), (&b, 1.0)]);
    assert!((share(&s, "A") - 0.75).abs() < 0.03, "weighted: {s:?}");
    // With three servers power of two choices still favours the fast one (at most the 2/3
    // of draws that include it).
    let s = shares("adaptive_ewma", &[(&a, 1.0), (&b, 1.0), (&c, 1.0)]);
    assert!(share(&s, "A") > 0.55, "adaptive_ewma, three servers: {s:?}");
}

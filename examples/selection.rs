//! Microbenchmark of backend selection: nanoseconds per pick, and per pick + finish (the
//! whole per-request balancer cost, both clock reads included), for every mode with 3, 30
//! and 300 backends in one tier, on one thread and on two threads sharing the stats.
//!
//!     cargo run --release --example selection
//!
//! Numbers are for comparing modes and sizes within one run on one machine; the first
//! lines print which machine.

use std::hint::black_box;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use corelb::balancer::{seed_thread_rng, Balancer};
use corelb::config::{BackendSpec, Mode, RoutingParams};

const SIZES: [usize; 3] = [3, 30, 300];
const ITERS: u64 = 2_000_000;

fn servers(n: usize) -> Vec<BackendSpec> {
    (0..n)
        .map(|i| BackendSpec {
            name: format!("s{i}"),
            address: "127.0.0.1".into(),
            port: 10_000 + i as u16,
            priority: 0,
            // Unequal weights, so the weighted schedule and weighted draws are exercised.
            load: [1.0, 2.0, 3.0][i % 3],
            addr: SocketAddr::from(([127, 0, 0, 1], 10_000 + i as u16)),
            protocol: Default::default(),
            tls: None,
        })
        .collect()
}

/// A balancer with every backend measured (latencies 1..=50 ms).
fn warmed(mode: Mode, n: usize) -> Balancer {
    let b = Balancer::with_params(&servers(n), mode, RoutingParams::default());
    for k in 0..(n as u64 * 20) {
        if let Some(i) = b.pick(None) {
            b.finish(i, Duration::from_millis(1 + (k * 7 + i as u64) % 50), true);
        }
    }
    b
}

fn ns_per(iters: u64, f: impl FnOnce()) -> f64 {
    let t = Instant::now();
    f();
    t.elapsed().as_nanos() as f64 / iters as f64
}

fn pick_only(b: &Balancer) -> f64 {
    // Picks never finished: in-flight counts grow, which changes which server wins but not
    // how many are compared. Latency modes read the clock once per pick.
    ns_per(ITERS, || {
        for _ in 0..ITERS {
            black_box(b.pick(black_box(None)));
        }
    })
}

fn pick_finish(b: &Balancer, iters: u64) -> f64 {
    let lat = Duration::from_millis(10);
    ns_per(iters, || {
        for _ in 0..iters {
            if let Some(i) = b.pick(black_box(None)) {
                b.finish(i, black_box(lat), true);
            }
        }
    })
}

fn main() {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!("cpu: {cpu}, {cores} cores; {ITERS} iterations per cell");
    println!("ns/op        mode  |   pick only: 3 / 30 / 300   | pick+finish: 3 / 30 / 300  | 2 threads pick+finish, 3");
    seed_thread_rng(42);
    for mode in Mode::ALL {
        let mut only = Vec::new();
        let mut both = Vec::new();
        for n in SIZES {
            only.push(pick_only(&warmed(mode, n)));
            both.push(pick_finish(&warmed(mode, n), ITERS));
        }
        // Two threads on the same 3 backends: the cost of sharing the stats cache lines.
        let b = warmed(mode, 3);
        let per_thread = ITERS / 2;
        let shared: f64 = std::thread::scope(|s| {
            let hs: Vec<_> = (0..2)
                .map(|_| s.spawn(|| pick_finish(&b, per_thread)))
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<f64>() / 2.0
        });
        println!(
            "{:>14}  | {:7.1} {:7.1} {:7.1}     | {:7.1} {:7.1} {:7.1}    | {:7.1}",
            mode.name(),
            only[0],
            only[1],
            only[2],
            both[0],
            both[1],
            both[2],
            shared
        );
    }
}

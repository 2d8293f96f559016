//! Policy and balancer tests: empty sets, single servers, ties, weights, tiers, decay and
//! probing with synthetic time, an invariant over random configurations, and a simulation
//! of the seed's backends.

use super::*;

const MS: Duration = Duration::from_millis(1);
const SEC: Micros = 1_000_000;

pub(crate) fn servers(spec: &[(&str, u32, f64)]) -> Vec<BackendSpec> {
    spec.iter()
        .enumerate()
        .map(|(i, (name, priority, load))| BackendSpec {
            name: name.to_string(),
            address: "127.0.0.1".into(),
            port: 8000 + i as u16,
            priority: *priority,
            load: *load,
            addr: SocketAddr::from(([127, 0, 0, 1], 8000 + i as u16)),
            protocol: Default::default(),
            tls: None,
        })
        .collect()
}

fn balancer(mode: Mode, spec: &[(&str, u32, f64)]) -> Balancer {
    Balancer::with_params_at(&servers(spec), mode, RoutingParams::default(), 0)
}

const SAMPLING: [Mode; 4] = [
    Mode::LeastRequest,
    Mode::AdaptiveSma,
    Mode::AdaptiveEwma,
    Mode::PeakEwma,
];
const LATENCY: [Mode; 3] = [Mode::AdaptiveSma, Mode::AdaptiveEwma, Mode::PeakEwma];

fn down(b: &Balancer, i: usize, is_down: bool) {
    b.backend(i).stats.down.store(is_down, Relaxed);
}

/// Picks and immediately finishes `n` requests with latency `lat(i)`, 1 ms apart starting
/// at `t`; returns the picks per backend and the time after.
fn run_sequential(
    b: &Balancer,
    n: usize,
    t: Micros,
    lat: impl Fn(usize) -> Duration,
) -> (Vec<usize>, Micros) {
    let mut counts = vec![0; b.len()];
    let mut t = t;
    for _ in 0..n {
        t += 1000;
        let i = b.pick_at(None, t).expect("a server");
        counts[i] += 1;
        b.finish_at(i, lat(i), true, t);
    }
    (counts, t)
}

fn assert_shares(counts: &[usize], want: &[f64], tol: f64, what: &str) {
    let total: usize = counts.iter().sum();
    for (i, (&c, &w)) in counts.iter().zip(want).enumerate() {
        let got = c as f64 / total as f64;
        assert!(
            (got - w).abs() <= tol,
            "{what}: backend {i} got {got:.3}, want {w:.3} +- {tol} ({counts:?})"
        );
    }
}

#[test]
fn round_robin_cycles_in_order() {
    let set = Backends::new(&servers(&[("A", 0, 1.0), ("B", 0, 1.0), ("C", 0, 1.0)]));
    let rr = RoundRobin::new(&set);
    let picks: Vec<_> = (0..6).map(|_| rr.pick(&set, None, 0).unwrap()).collect();
    assert_eq!(picks, [0, 1, 2, 0, 1, 2]);
}

#[test]
fn round_robin_skips_down_and_excluded_and_spills_to_next_tier() {
    let set = Backends::new(&servers(&[("A", 0, 1.0), ("B", 0, 1.0), ("C", 1, 1.0)]));
    let rr = RoundRobin::new(&set);
    assert_eq!(set.tiers, vec![vec![0, 1], vec![2]]);
    set.backend(0).stats.down.store(true, Relaxed);
    assert!((0..4).all(|_| rr.pick(&set, None, 0) == Some(1)));
    assert_eq!(
        rr.pick(&set, Some(1), 0),
        Some(2),
        "retry moves to the next tier"
    );
    set.backend(1).stats.down.store(true, Relaxed);
    assert_eq!(rr.pick(&set, None, 0), Some(2));
    set.backend(2).stats.down.store(true, Relaxed);
    assert_eq!(rr.pick(&set, None, 0), None);
}

#[test]
fn every_mode_handles_empty_single_and_all_down() {
    for mode in Mode::ALL {
        let b = balancer(mode, &[]);
        assert_eq!(b.pick_at(None, 0), None, "{mode}: empty");
        let b = balancer(mode, &[("A", 3, 2.0)]);
        assert_eq!(b.pick_at(None, 0), Some(0), "{mode}: single");
        assert_eq!(b.pick_at(Some(0), 0), None, "{mode}: single excluded");
        let b = balancer(mode, &[("A", 0, 1.0), ("B", 0, 1.0), ("C", 1, 1.0)]);
        for i in 0..3 {
            down(&b, i, true);
        }
        assert_eq!(b.pick_at(None, 0), None, "{mode}: all down");
        down(&b, 1, false);
        assert_eq!(b.pick_at(None, 0), Some(1), "{mode}: the one up");
        assert_eq!(b.pick_at(Some(1), 0), None, "{mode}: the one up, excluded");
    }
}

#[test]
fn every_mode_spills_to_the_next_tier_and_returns() {
    let spec = [("A", 0, 1.0), ("B", 0, 1.0), ("C", 1, 1.0), ("D", 2, 1.0)];
    for mode in Mode::ALL {
        let b = balancer(mode, &spec);
        let (c, t) = run_sequential(&b, 100, 0, |_| MS);
        assert_eq!(c[2] + c[3], 0, "{mode}: tier 0 takes all: {c:?}");
        down(&b, 0, true);
        let (c, t) = run_sequential(&b, 100, t, |_| MS);
        assert_eq!(c, [0, 100, 0, 0], "{mode}: B alone in tier 0");
        down(&b, 1, true);
        let (c, t) = run_sequential(&b, 100, t, |_| MS);
        assert_eq!(c, [0, 0, 100, 0], "{mode}: spill to tier 1");
        down(&b, 2, true);
        let (c, t) = run_sequential(&b, 10, t, |_| MS);
        assert_eq!(c, [0, 0, 0, 10], "{mode}: spill to tier 2");
        down(&b, 0, false);
        down(&b, 1, false);
        let (c, _) = run_sequential(&b, 100, t, |_| MS);
        assert_eq!(c[2] + c[3], 0, "{mode}: back to tier 0: {c:?}");
        assert!(c[0] > 20 && c[1] > 20, "{mode}: both of tier 0: {c:?}");
    }
}

#[test]
fn every_mode_spreads_evenly_under_equal_stats() {
    seed_thread_rng(1);
    let spec = [("A", 0, 1.0), ("B", 0, 1.0), ("C", 0, 1.0)];
    for mode in Mode::ALL {
        let b = balancer(mode, &spec);
        let (c, _) = run_sequential(&b, 6000, 0, |_| 10 * MS);
        assert_shares(&c, &[1.0 / 3.0; 3], 0.03, mode.name());
    }
}

#[test]
fn every_mode_spreads_evenly_with_requests_in_flight() {
    seed_thread_rng(2);
    let spec = [("A", 0, 1.0), ("B", 0, 1.0), ("C", 0, 1.0), ("D", 0, 1.0)];
    for mode in Mode::ALL {
        let b = balancer(mode, &spec);
        run_sequential(&b, 400, 0, |_| 10 * MS);
        // 400 picks without answers: the load term must spread them, not herd.
        let mut c = [0; 4];
        for _ in 0..400 {
            c[b.pick_at(None, 500_000).unwrap()] += 1;
        }
        assert!(c.iter().all(|&n| (90..=110).contains(&n)), "{mode}: {c:?}");
    }
}

#[test]
fn weighted_follows_nginx_smooth_sequence() {
    let b = balancer(
        Mode::Weighted,
        &[("a", 0, 5.0), ("b", 0, 1.0), ("c", 0, 1.0)],
    );
    let seq: String = (0..14)
        .map(|_| ["a", "b", "c"][b.pick_at(None, 0).unwrap()])
        .collect();
    // nginx's ngx_http_upstream_get_peer comment: { a, a, b, a, c, a, a }.
    assert_eq!(seq, "aabacaaaabacaa");
}

#[test]
fn integer_weights_keep_ratios() {
    assert_eq!(integer_weights(&[1.0, 1.0, 1.0]), [1, 1, 1]);
    assert_eq!(integer_weights(&[3.0, 1.0]), [3, 1]);
    assert_eq!(integer_weights(&[0.5, 0.3]), [5, 3]);
    assert_eq!(integer_weights(&[0.25, 0.75, 0.5]), [1, 3, 2]);
    let w = integer_weights(&[1e9, 1.0]);
    assert!(w.iter().sum::<u64>() <= MAX_SCHEDULE as u64 && w[1] >= 1);
    let w = integer_weights(&[0.37, 0.41, 0.22]);
    let r = w[0] as f64 / w[2] as f64;
    assert!((r / (0.37 / 0.22) - 1.0).abs() < 0.01, "{w:?}");
}

#[test]
fn weighted_honours_loads_and_skips_down_servers_proportionally() {
    let b = balancer(
        Mode::Weighted,
        &[("A", 0, 0.5), ("B", 0, 0.3), ("C", 0, 0.2)],
    );
    let (c, _) = run_sequential(&b, 1000, 0, |_| MS);
    assert_eq!(c, [500, 300, 200], "exact over whole cycles");
    down(&b, 2, true);
    let (c, _) = run_sequential(&b, 800, 0, |_| MS);
    assert_shares(&c, &[0.625, 0.375, 0.0], 0.01, "C down");
}

#[test]
fn sampling_modes_honour_weights_within_5_percent() {
    seed_thread_rng(3);
    let spec = [("A", 0, 3.0), ("B", 0, 1.0), ("C", 0, 1.0)];
    for mode in SAMPLING {
        // One at a time: ties at equal estimates fall to the weighted draw.
        let b = balancer(mode, &spec);
        let (c, _) = run_sequential(&b, 10_000, 0, |_| 10 * MS);
        assert_shares(&c, &[0.6, 0.2, 0.2], 0.05, mode.name());
        // Many in flight: the load term n / w settles in proportion to the weights.
        let b = balancer(mode, &spec);
        run_sequential(&b, 300, 0, |_| 10 * MS);
        let mut c = vec![0; 3];
        for _ in 0..1000 {
            c[b.pick_at(None, 400_000).unwrap()] += 1;
        }
        assert_shares(&c, &[0.6, 0.2, 0.2], 0.05, mode.name());
    }
}

#[test]
fn sampling_breaks_ties_at_random() {
    seed_thread_rng(4);
    let b = balancer(Mode::LeastRequest, &[("A", 0, 1.0), ("B", 0, 1.0)]);
    let (c, _) = run_sequential(&b, 2000, 0, |_| MS);
    assert_shares(&c, &[0.5, 0.5], 0.05, "ties");
}

#[test]
fn latency_modes_prefer_the_fast_server() {
    seed_thread_rng(5);
    let spec = [("A", 0, 1.0), ("B", 0, 1.0)];
    for mode in LATENCY {
        let b = balancer(mode, &spec);
        let lat = |i| if i == 0 { 5 * MS } else { 60 * MS };
        let (c, _) = run_sequential(&b, 1000, 0, lat);
        assert!(c[0] > 950, "{mode}: {c:?}");
    }
}

#[test]
fn latency_modes_avoid_a_slow_server_and_retry_it_later() {
    seed_thread_rng(6);
    let spec = [("A", 0, 1.0), ("B", 0, 1.0)];
    for mode in LATENCY {
        let b = balancer(mode, &spec);
        // Both measured; then B answers one request in 5 s.
        let (_, mut t) = run_sequential(&b, 20, 0, |_| 10 * MS);
        let i = b.pick_at(Some(0), t).unwrap();
        assert_eq!(i, 1);
        t += 5 * SEC;
        b.finish_at(1, Duration::from_secs(5), true, t);
        // B is avoided while its estimate is high...
        let (c, t2) = run_sequential(&b, 1000, t, |_| 10 * MS);
        assert!(c[1] <= 1, "{mode}: B avoided: {c:?}");
        // ...and tried again once it decayed (synthetic time: two minutes later).
        let (c, t3) = run_sequential(&b, 100, t2 + 120 * SEC, |_| 10 * MS);
        assert!(c[1] >= 1, "{mode}: B retried: {c:?}");
        // B is fast again (now faster than A): it takes the traffic back.
        let lat = |i| if i == 0 { 10 * MS } else { 5 * MS };
        let (c, _) = run_sequential(&b, 2000, t3, lat);
        assert!(c[1] > 1500, "{mode}: B back: {c:?}");
    }
}

#[test]
fn a_server_failing_fast_is_not_preferred() {
    seed_thread_rng(7);
    let b = balancer(Mode::AdaptiveEwma, &[("A", 0, 1.0), ("B", 0, 1.0)]);
    let mut c = [0; 2];
    let mut t = 0;
    for _ in 0..500 {
        t += 1000;
        let i = b.pick_at(None, t).unwrap();
        c[i] += 1;
        // B refuses connections at once; A answers in 50 ms.
        let (lat, ok) = if i == 0 {
            (50 * MS, true)
        } else {
            (Duration::ZERO, false)
        };
        b.finish_at(i, lat, ok, t);
    }
    assert!(c[0] > 450, "{c:?}");
}

#[test]
fn a_new_or_stale_server_is_probed_one_request_at_a_time() {
    seed_thread_rng(8);
    for mode in LATENCY {
        let b = balancer(mode, &[("A", 0, 1.0), ("B", 0, 1.0)]);
        // A is measured and busy (200 ms x 50 in flight); B never answered.
        let t = 1000;
        for _ in 0..10 {
            let i = b.pick_at(Some(1), t).unwrap();
            b.finish_at(i, 200 * MS, true, t);
        }
        for _ in 0..50 {
            b.pick_at(Some(1), t).unwrap();
        }
        let mut c = [0; 2];
        for _ in 0..100 {
            c[b.pick_at(None, t).unwrap()] += 1;
        }
        assert_eq!(c[1], 1, "{mode}: one probe to B: {c:?}");
        // B answers: now it is compared on its estimate and takes its share.
        b.finish_at(1, 20 * MS, true, t + 20_000);
        let mut c = [0; 2];
        for _ in 0..100 {
            c[b.pick_at(None, t + 20_000).unwrap()] += 1;
        }
        assert!(c[1] > 50, "{mode}: B measured: {c:?}");
    }
}

#[test]
fn an_idle_server_is_probed_after_twice_its_estimate() {
    seed_thread_rng(9);
    for mode in [Mode::AdaptiveSma, Mode::AdaptiveEwma] {
        let b = balancer(mode, &[("A", 0, 1.0), ("B", 0, 1.0)]);
        // Both measured at t = 1 ms: A 10 ms, B 300 ms; A then busy with 30 in flight.
        let t = 1000;
        b.pick_at(None, t);
        b.pick_at(None, t);
        b.finish_at(0, 10 * MS, true, t);
        b.finish_at(1, 300 * MS, true, t);
        for _ in 0..30 {
            b.pick_at(Some(1), t).unwrap();
        }
        let count = |at| {
            let mut c = [0; 2];
            for _ in 0..50 {
                c[b.pick_at(None, at).unwrap()] += 1;
            }
            c
        };
        // 500 ms after B's answer: within 2 x 300 ms, B is not probed.
        assert_eq!(count(t + 500_000)[1], 0, "{mode}");
        // 700 ms after: one probe, and only one while it is in flight.
        assert_eq!(count(t + 700_000)[1], 1, "{mode}");
    }
}

#[test]
fn least_request_prefers_the_least_loaded() {
    seed_thread_rng(9);
    let b = balancer(Mode::LeastRequest, &[("A", 0, 1.0), ("B", 0, 1.0)]);
    for _ in 0..10 {
        b.pick_at(Some(1), 0);
    }
    assert!((0..10).all(|_| b.pick_at(None, 0) == Some(1)));
}

/// A small xorshift for the property test (independent of the pick generator).
struct Gen(u64);
impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[test]
fn property_no_mode_picks_an_unusable_server_or_the_wrong_tier() {
    seed_thread_rng(10);
    let mut g = Gen(0x2545_F491_4F6C_DD1D);
    let names: Vec<String> = (0..16).map(|i| format!("s{i}")).collect();
    for case in 0..600 {
        let n = g.below(13) as usize;
        let spec: Vec<(&str, u32, f64)> = (0..n)
            .map(|i| {
                let load = [0.1, 0.5, 1.0, 1.0, 3.0, 7.5][g.below(6) as usize];
                (names[i].as_str(), g.below(3) as u32, load)
            })
            .collect();
        let mode = Mode::ALL[case % Mode::ALL.len()];
        let params = RoutingParams {
            choices: 1 + g.below(4) as usize,
            adaptive_choices: 1 + g.below(4) as usize,
            ..RoutingParams::default()
        };
        let b = Balancer::with_params_at(&servers(&spec), mode, params, 0);
        let mut t = 0;
        for _round in 0..20 {
            // Random health, load and history.
            for i in 0..n {
                down(&b, i, g.below(3) == 0);
                if g.below(4) == 0 {
                    t += g.below(3 * SEC);
                    let lat = Duration::from_micros(g.below(2_000_000));
                    b.backend(i).stats.inflight.fetch_add(1, Relaxed);
                    b.finish_at(i, lat, g.below(5) != 0, t);
                }
            }
            let exclude = (n > 0 && g.below(2) == 0).then(|| g.below(n as u64) as usize);
            let usable: Vec<usize> = (0..n).filter(|&i| b.members().usable(i, exclude)).collect();
            let best_prio = usable.iter().map(|&i| spec[i].1).min();
            match b.pick_at(exclude, t) {
                None => assert!(usable.is_empty(), "{mode} case {case}: None but {usable:?}"),
                Some(i) => {
                    assert!(usable.contains(&i), "{mode} case {case}: picked {i}");
                    assert_eq!(Some(spec[i].1), best_prio, "{mode} case {case}: tier");
                }
            }
        }
    }
}

#[test]
fn snapshot_reports_every_estimator_in_every_mode() {
    let b = balancer(Mode::RoundRobin, &[("A", 0, 1.0)]);
    let s = b.snapshot_at(0);
    assert_eq!(s[0].sma_us, 30_000.0);
    assert_eq!(s[0].peak_ewma_us, 30_000.0);
    for (k, ms) in [10u64, 20, 400].into_iter().enumerate() {
        b.pick_at(None, 0);
        b.finish_at(0, Duration::from_millis(ms), k != 1, 1000 * (k as u64 + 1));
    }
    let s = &b.snapshot_at(3000)[0];
    assert_eq!((s.requests, s.errors, s.inflight), (3, 1, 0));
    // The failed 20 ms exchange counted as 1 s; the first sample filled the window.
    let w = super::DEFAULT_SMA_WINDOW as f64;
    assert_eq!(
        s.sma_us,
        ((w - 2.0) * 10_000.0 + 1_000_000.0 + 400_000.0) / w
    );
    let w = (-1000.0f64 / 10e6).exp();
    assert_eq!(s.peak_ewma_us, 1_000_000.0 * w + 400_000.0 * (1.0 - w));
    assert!(s.ewma_us > 10_000.0 && s.ewma_us < 1_000_000.0);
    assert_eq!(s.idle_us, 0);
}

/// Closed-loop simulation of the seed system with synthetic time: `clients` connections
/// each send a request as soon as the previous one is answered; A cycles 10, 15, 20, 400,
/// 400, 400, 10, 15, 20 ms, B takes 200 ms, C 250 ms. Returns requests per second and the
/// share per backend.
fn simulate_seed(mode: Mode, params: RoutingParams, clients: usize, secs: u64) -> (f64, [f64; 3]) {
    use std::cmp::Reverse;
    use std::collections::BinaryHeap;
    const CYCLE: [u64; 9] = [10, 15, 20, 400, 400, 400, 10, 15, 20];
    let b = Balancer::with_params_at(
        &servers(&[("A", 0, 1.0), ("B", 0, 1.0), ("C", 0, 1.0)]),
        mode,
        params,
        0,
    );
    let mut a_next = 0;
    let mut done = [0u64; 3];
    // (finish time, backend, latency)
    let mut heap = BinaryHeap::new();
    let mut send = |t: Micros, heap: &mut BinaryHeap<Reverse<(Micros, usize, u64)>>| {
        let i = b.pick_at(None, t).unwrap();
        let ms = match i {
            0 => {
                a_next += 1;
                CYCLE[(a_next - 1) % 9]
            }
            1 => 200,
            _ => 250,
        };
        heap.push(Reverse((t + ms * 1000, i, ms)));
    };
    for k in 0..clients {
        send(k as Micros * 10, &mut heap);
    }
    let end = secs * SEC;
    while let Some(Reverse((t, i, ms))) = heap.pop() {
        if t > end {
            break;
        }
        b.finish_at(i, Duration::from_millis(ms), true, t);
        done[i] += 1;
        send(t, &mut heap);
    }
    let total: u64 = done.iter().sum();
    let share = done.map(|d| d as f64 / total as f64);
    (total as f64 / secs as f64, share)
}

#[test]
fn seed_simulation_latency_modes_beat_round_robin() {
    seed_thread_rng(11);
    let p = RoutingParams::default();
    let (rr, _) = simulate_seed(Mode::RoundRobin, p, 100, 30);
    // Round robin: 100 / mean(143, 200, 250 ms) = 505 req/s.
    assert!((490.0..520.0).contains(&rr), "round robin {rr}");
    let p2 = RoutingParams {
        adaptive_choices: 2,
        ..p
    };
    let runs = Mode::ALL.map(|m| (m, p, "")).into_iter().chain([
        (Mode::AdaptiveSma, p2, " (2 choices)"),
        (Mode::AdaptiveEwma, p2, " (2 choices)"),
    ]);
    for (mode, params, note) in runs {
        let (rps, s) = simulate_seed(mode, params, 100, 30);
        eprintln!(
            "seed sim c=100 {mode}{note}: {rps:.0} req/s, A {:.2} B {:.2} C {:.2}",
            s[0], s[1], s[2]
        );
    }
    for mode in [Mode::AdaptiveSma, Mode::AdaptiveEwma] {
        let (rps, share) = simulate_seed(mode, p, 100, 30);
        assert!(rps > rr * 1.1, "{mode}: {rps} vs round robin {rr}");
        assert!(
            share[0] > share[1] && share[1] > share[2],
            "{mode}: {share:?}"
        );
    }
}

#[test]
fn membership_changes_are_published_atomically_and_slots_are_never_reused() {
    let b = balancer(Mode::Weighted, &[("A", 0, 1.0), ("B", 0, 1.0)]);
    let g0 = b.generation();
    assert_eq!((b.len(), b.capacity()), (2, 64));
    // A change is invisible until published.
    let mut e = b.edit();
    let c = e.add(&servers(&[("C", 0, 2.0)])[0]).unwrap();
    e.set_state(0, SlotState::Retiring);
    assert_eq!(b.members().iter().collect::<Vec<_>>(), [0, 1]);
    let g1 = e.publish();
    assert!(g1 > g0 && b.generation() == g1);
    assert_eq!(c, 2);
    assert_eq!(b.members().iter().collect::<Vec<_>>(), [1, 2]);
    // Weights apply in place: B 1, C 2.
    let (counts, _) = run_sequential(&b, 300, 0, |_| MS);
    assert_eq!(counts, [0, 100, 200]);
    let mut e = b.edit();
    e.tune(1, 3.0, 0);
    e.publish();
    let (counts, _) = run_sequential(&b, 500, 0, |_| MS);
    assert_eq!(counts, [0, 300, 200]);
    // A priority change moves a server to another tier.
    let mut e = b.edit();
    e.tune(2, 2.0, 1);
    e.publish();
    assert_eq!(b.members().tiers, vec![vec![1], vec![2]]);
    // Retired slots stay retired; the next server takes a new slot.
    let mut e = b.edit();
    e.set_state(0, SlotState::Gone);
    let d = e.add(&servers(&[("A", 0, 1.0)])[0]).unwrap();
    e.publish();
    assert_eq!(d, 3);
    assert_eq!(b.listed().collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(b.backend(0).state(), SlotState::Gone);
    // Nothing changed: no new generation.
    let g = b.generation();
    assert_eq!(b.edit().publish(), g);
}

#[test]
fn a_full_slot_table_refuses_new_servers() {
    let b = Balancer::with_capacity_at(
        &servers(&[("A", 0, 1.0)]),
        Mode::RoundRobin,
        RoutingParams::default(),
        0,
        2,
    );
    let mut e = b.edit();
    assert!(e.add(&servers(&[("B", 0, 1.0)])[0]).is_ok());
    let err = e.add(&servers(&[("C", 0, 1.0)])[0]).unwrap_err();
    assert!(err.contains("maxServers"), "{err}");
    e.publish();
    assert_eq!(
        b.backend(7).state(),
        SlotState::Gone,
        "out of range reads as gone"
    );
    assert!(!b.backend(7).available());
}

#[test]
fn a_lease_counts_in_flight_until_ended_and_a_dropped_one_is_reaped() {
    let b = balancer(Mode::RoundRobin, &[("a", 0, 1.0), ("b", 0, 1.0)]);
    let inflight = |i: usize| b.backend(i).stats.inflight.load(Relaxed);
    let l1 = b.lease(None).expect("a pick");
    let l2 = b.lease(None).expect("a pick");
    assert_eq!((inflight(0), inflight(1)), (1, 1));
    assert_ne!(l1.backend(), l2.backend());
    let (i1, i2) = (l1.backend(), l2.backend());
    b.finish_lease(l1, std::time::Duration::from_millis(2), true);
    assert_eq!(inflight(i1), 0);
    // Dropped instead of ended: counted until this thread reaps it, then once only.
    drop(l2);
    assert_eq!(inflight(i2), 1);
    let mut scratch = Vec::new();
    b.reap_dropped(&mut scratch);
    assert_eq!(inflight(i2), 0);
    b.reap_dropped(&mut scratch);
    assert_eq!(inflight(i2), 0, "reaped once");
    let l3 = b.lease(None).expect("a pick");
    let i3 = l3.backend();
    b.cancel_lease(l3);
    b.reap_dropped(&mut scratch);
    assert_eq!((inflight(0), inflight(1), i3 < 2), (0, 0, true));
}

//! Latency estimators: the pure update rules (SMA window, EWMA, peak EWMA), each taking the
//! time as an argument, and [`Estimates`], one backend's estimates in atomics shared by all
//! workers. Choosing a backend from them is `policy`'s job.
//!
//! Times are [`Micros`] since a process-wide epoch ([`now_us`]), so tests drive the rules
//! with synthetic timestamps.
//!
//! # Sharing without locks
//!
//! Every worker records every finished exchange into the same [`Estimates`]; all updates
//! are single-word atomics with `Relaxed` ordering (they are statistics: nothing else is
//! published through them).
//! - EWMA and peak EWMA are `f64` bits in an `AtomicU64`, updated by a
//!   `compare_exchange_weak` loop over a pure function of the previous value: each update is
//!   one atomic read-modify-write of the whole state, so concurrent updates serialize and
//!   none is lost.
//! - The time of the latest response is advanced with `fetch_max`, which hands every
//!   observer the disjoint interval since the previous one. The peak EWMA's decay over that
//!   interval is therefore applied exactly once in total, whatever order concurrent CAS
//!   loops land in; only the relative order of two samples that finish at the same moment
//!   can differ from their completion order.
//! - The SMA window is a ring of `AtomicU32` indexed by the exchange's sequence number
//!   (the backend's `requests` counter) plus a running sum; see [`Sma`] for the races it
//!   tolerates.
//! - The idle decay a policy reads is applied to the stored SMA and EWMA by the response
//!   that ends the pause (a `fill`, and inside the CAS function), so it is never undone.
//!   `fetch_max` hands the pause to that one response; any racing with it see an interval
//!   of about zero and apply no decay, so it is applied once.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Microseconds since the process-wide epoch (the first call to [`now_us`]).
pub type Micros = u64;

/// The current time in [`Micros`]. One `Instant::now()` (vDSO, no syscall).
pub fn now_us() -> Micros {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    EPOCH.get_or_init(Instant::now).elapsed().as_micros() as Micros
}

/// Whole microseconds of `d` as `f64`.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// An `f64` stored as its bits in an `AtomicU64`.
#[derive(Debug, Default)]
pub struct AtomicF64(AtomicU64);

impl AtomicF64 {
    pub fn new(v: f64) -> AtomicF64 {
        AtomicF64(AtomicU64::new(v.to_bits()))
    }

    #[inline]
    pub fn load(&self) -> f64 {
        f64::from_bits(self.0.load(Relaxed))
    }

    pub fn store(&self, v: f64) {
        self.0.store(v.to_bits(), Relaxed)
    }

    /// Replaces the value `v` with `f(v)` atomically (CAS loop); returns the new value.
    /// `f` may run more than once under contention, so it must be pure.
    #[inline]
    pub fn update(&self, f: impl Fn(f64) -> f64) -> f64 {
        let mut cur = self.0.load(Relaxed);
        loop {
            let next = f(f64::from_bits(cur));
            match self
                .0
                .compare_exchange_weak(cur, next.to_bits(), Relaxed, Relaxed)
            {
                Ok(_) => return next,
                Err(actual) => cur = actual,
            }
        }
    }
}

/// Idle decay steps per time constant.
const DECAY_STEPS: f64 = 64.0;

/// Which estimate a policy reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Estimator {
    Sma,
    Ewma,
    PeakEwma,
}

/// The estimators' parameters and their pure update and read rules. All values in
/// microseconds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rules {
    /// Least EWMA weight of a new sample.
    pub alpha: f64,
    /// Time the SMA and EWMA span at most: a sample arriving `dt` after the previous one
    /// weighs at least `1 - exp(-dt / avg_span)` (a busy server is averaged over many
    /// responses, a quiet one over few).
    pub avg_span: f64,
    /// Peak EWMA time constant: a peak fades by 1/e over this much time.
    pub peak_tau: f64,
    /// Time constant of the SMA and EWMA decay while a backend sends no responses; also
    /// how long without a response makes an estimate stale (re-seeded by the next sample,
    /// and probed one request at a time).
    pub idle_tau: f64,
    /// Estimate of a backend that has not answered yet.
    pub default_rtt: f64,
    /// A failed exchange counts as at least this slow.
    pub error_latency: f64,
}

impl Rules {
    /// The sample recorded for an exchange: its latency, raised to `error_latency` when it
    /// failed (a server that fails fast must not look fast).
    #[inline]
    pub fn sample(&self, latency: Duration, ok: bool) -> f64 {
        let us = micros(latency);
        if ok {
            us
        } else {
            us.max(self.error_latency)
        }
    }

    /// `value` after `idle` microseconds without a response: it decays towards zero with
    /// time constant `tau`, so a backend that was slow once looks cheaper as time passes
    /// and is tried again (the decay tower and Finagle apply when reading a cost). Idle
    /// time counts in whole steps of `tau / 64`, so servers that answered within the last
    /// step compare on their estimates alone (equal estimates tie exactly) rather than on
    /// which answered last.
    #[inline]
    pub fn decay(value: f64, idle: Micros, tau: f64) -> f64 {
        let steps = (idle as f64 * DECAY_STEPS / tau).floor();
        if steps < 1.0 {
            value
        } else {
            value * (-steps / DECAY_STEPS).exp()
        }
    }

    /// Whether a backend that last answered `idle` ago has no current estimate.
    #[inline]
    pub fn stale(&self, measured: bool, idle: Micros, tau: f64) -> bool {
        !measured || idle as f64 >= tau
    }

    /// EWMA after `sample`, `elapsed` after the previous sample; a stale estimate is
    /// replaced by the sample. The sample weighs `max(alpha, 1 - exp(-elapsed / avg_span))`.
    #[inline]
    pub fn ewma_next(&self, prev: f64, sample: f64, stale: bool, elapsed: Micros) -> f64 {
        if stale {
            sample
        } else {
            prev + self.ewma_weight(elapsed) * (sample - prev)
        }
    }

    /// The weight of an EWMA sample `elapsed` after the previous one.
    #[inline]
    pub fn ewma_weight(&self, elapsed: Micros) -> f64 {
        self.time_weight_at_least(elapsed, self.alpha)
    }

    /// `1 - exp(-elapsed / avg_span)`, at least `floor`: the share of an average a sample
    /// `elapsed` after the previous one stands for.
    #[inline]
    pub fn time_weight_at_least(&self, elapsed: Micros, floor: f64) -> f64 {
        let by_time = elapsed as f64 / self.avg_span;
        // 1 - exp(-x) < x: below the floor there is no need for the exp (busy servers).
        if by_time <= floor {
            floor
        } else {
            (1.0 - (-by_time).exp()).max(floor)
        }
    }

    /// Peak EWMA after `sample`, `elapsed` after the previous sample (Finagle's rule): a
    /// sample above the estimate replaces it at once; otherwise the estimate moves towards
    /// the sample by `1 - exp(-elapsed / tau)`. The first sample replaces the default.
    #[inline]
    pub fn peak_next(&self, prev: f64, sample: f64, elapsed: Micros, first: bool) -> f64 {
        if first || sample > prev {
            sample
        } else {
            let w = (-(elapsed as f64) / self.peak_tau).exp();
            prev * w + sample * (1.0 - w)
        }
    }
}

/// A shared simple moving average over the last `window` samples: a ring of `AtomicU32`
/// microsecond samples and their running sum.
///
/// A sample goes to slot `seq % window`, where `seq` is the exchange's sequence number
/// (unique per backend): the writer `swap`s its sample in and adds `new - old` to the sum
/// with `fetch_add` (wrapping `u64` arithmetic, so deltas commute). Every value swapped in
/// is added once and subtracted once by whoever swaps it out, so when no write is in
/// progress `sum` equals the ring's total exactly. Races tolerated:
/// - a reader between a writer's swap and its `fetch_add` sees the sum off by that one
///   delta (the mean off by at most one sample / `window`); reads clamp to the valid range;
/// - two writers `window` sequence numbers apart can hit the same slot in either order, so
///   the ring holds the last `window` samples give or take one in flight per worker;
/// - [`fill`](Sma::fill), and [`push_n`](Sma::push_n) of a sample that stands for several
///   slots (the first after a pause), racing with another push can overwrite a concurrent
///   sample (it is lost, the sum stays exact).
#[derive(Debug)]
pub struct Sma {
    ring: Box<[AtomicU32]>,
    sum: AtomicU64,
}

impl Sma {
    pub fn new(window: usize) -> Sma {
        let window = window.max(1);
        Sma {
            ring: (0..window).map(|_| AtomicU32::new(0)).collect(),
            sum: AtomicU64::new(0),
        }
    }

    pub fn window(&self) -> usize {
        self.ring.len()
    }

    #[inline]
    fn put(&self, slot: usize, v: u32) {
        let old = self.ring[slot].swap(v, Relaxed);
        self.sum
            .fetch_add(u64::from(v).wrapping_sub(u64::from(old)), Relaxed);
    }

    /// Records sample `seq` (microseconds, saturating at `u32::MAX`, 71 minutes) into `n`
    /// consecutive slots from its own: the oldest `n` samples give way to it.
    #[inline]
    pub fn push_n(&self, seq: u64, sample: f64, n: usize) {
        let len = self.ring.len() as u64;
        for k in 0..n.min(self.ring.len()) as u64 {
            self.put(((seq + k) % len) as usize, sample as u32);
        }
    }

    /// Fills the whole window with `sample`: the first sample, or the first after the
    /// estimate went stale, stands for the whole window until `window` more arrive.
    pub fn fill(&self, sample: f64) {
        for slot in 0..self.ring.len() {
            self.put(slot, sample as u32);
        }
    }

    /// The `q` quantile (0..1) of the window's samples, in microseconds; `scratch` holds
    /// the copy it selects in.
    pub fn quantile(&self, q: f64, scratch: &mut Vec<u32>) -> u32 {
        scratch.clear();
        scratch.extend(self.ring.iter().map(|s| s.load(Relaxed)));
        let k = ((scratch.len() as f64 * q) as usize).min(scratch.len() - 1);
        *scratch.select_nth_unstable(k).1
    }

    /// The mean of the window (meaningful once a sample was recorded: the first one fills).
    #[inline]
    pub fn mean(&self) -> f64 {
        let n = self.ring.len() as f64;
        // A transiently "negative" sum (a subtraction landed before its addition) reads 0.
        let sum = (self.sum.load(Relaxed) as i64).max(0) as f64;
        (sum / n).min(f64::from(u32::MAX))
    }
}

/// One backend's latency estimates, shared by all workers. Every estimator is kept up to
/// date in every mode (the metrics show all of them); a policy reads the one it uses.
#[derive(Debug)]
pub struct Estimates {
    /// When the latest response arrived (or when the backend was created), advanced with
    /// `fetch_max`.
    last: AtomicU64,
    sma: Sma,
    ewma: AtomicF64,
    peak: AtomicF64,
}

/// An estimate as a policy sees it at some instant.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Microseconds, decayed for the time since the latest response.
    pub value: f64,
    /// No response yet, or none for longer than the estimator's time constant.
    pub stale: bool,
}

impl Estimates {
    /// Estimates for a backend created at `now`; every estimator starts at `default_rtt`.
    pub fn new(window: usize, default_rtt: f64, now: Micros) -> Estimates {
        Estimates {
            last: AtomicU64::new(now),
            sma: Sma::new(window),
            ewma: AtomicF64::new(default_rtt),
            peak: AtomicF64::new(default_rtt),
        }
    }

    /// The `q` quantile of the recent responses (the SMA window), in microseconds.
    pub fn quantile(&self, q: f64, scratch: &mut Vec<u32>) -> u32 {
        self.sma.quantile(q, scratch)
    }

    /// Records a response of `sample` microseconds at `now`. `seq` is the backend's
    /// completed-exchange count before this one (0 for the first response).
    pub fn observe(&self, rules: &Rules, seq: u64, sample: f64, now: Micros) {
        let prev = self.last.fetch_max(now, Relaxed);
        let elapsed = now.saturating_sub(prev);
        let first = seq == 0;
        let stale = rules.stale(!first, elapsed, rules.idle_tau);
        // The decay a policy read over the idle gap is kept, not undone by this sample:
        // otherwise a server that was slow once, then tried again after its estimate
        // decayed, would be pushed back to its old estimate by its first fast answer and
        // starve (each answer restarts the decay).
        let decayed = |v: f64| Rules::decay(v, elapsed, rules.idle_tau);
        if stale {
            self.sma.fill(sample);
        } else {
            let mean = self.sma.mean();
            let d = decayed(mean);
            if d < mean {
                self.sma.fill(d);
            }
            // The window spans at most about `avg_span`: a sample after a gap stands for
            // that share of the window (one slot for a busy server).
            let w = self.sma.window();
            let share = rules.time_weight_at_least(elapsed, 1.0 / w as f64);
            let slots = ((share * w as f64).round() as usize).clamp(1, w);
            self.sma.push_n(seq, sample, slots);
        }
        self.ewma
            .update(|v| rules.ewma_next(decayed(v), sample, stale, elapsed));
        self.peak
            .update(|v| rules.peak_next(v, sample, elapsed, first));
    }

    /// Forgets the history: every estimate reads as stale until the next response, which
    /// then replaces it. Used when a server comes back after an outage, so samples from
    /// before (failures counted as slow) do not keep it from being tried.
    pub fn forget(&self) {
        self.last.store(0, Relaxed);
    }

    /// Microseconds since the latest response (or since creation) at `now`.
    #[inline]
    pub fn idle(&self, now: Micros) -> Micros {
        now.saturating_sub(self.last.load(Relaxed))
    }

    /// The `which` estimate at `now`; `measured` says whether any response was recorded.
    #[inline]
    pub fn read(&self, rules: &Rules, which: Estimator, measured: bool, now: Micros) -> Reading {
        let idle = self.idle(now);
        let (raw, tau) = match which {
            Estimator::Sma if measured => (self.sma.mean(), rules.idle_tau),
            Estimator::Sma => (rules.default_rtt, rules.idle_tau),
            Estimator::Ewma => (self.ewma.load(), rules.idle_tau),
            Estimator::PeakEwma => (self.peak.load(), rules.peak_tau),
        };
        Reading {
            value: Rules::decay(raw, idle, tau),
            stale: rules.stale(measured, idle, tau),
        }
    }

    pub fn sma_window(&self) -> usize {
        self.sma.window()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: f64 = 1000.0;
    const SEC: u64 = 1_000_000;

    fn rules() -> Rules {
        Rules {
            alpha: 0.2,
            avg_span: 0.5e6,
            peak_tau: 10e6,
            idle_tau: 10e6,
            default_rtt: 30.0 * MS,
            error_latency: 1000.0 * MS,
        }
    }

    #[test]
    fn atomic_f64_update_is_not_lost_under_contention() {
        let a = AtomicF64::new(0.0);
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    for _ in 0..10_000 {
                        a.update(|v| v + 1.0);
                    }
                });
            }
        });
        assert_eq!(a.load(), 20_000.0);
    }

    #[test]
    fn ewma_moves_by_alpha_and_reseeds_when_stale() {
        let r = rules();
        // Samples close together weigh alpha.
        assert_eq!(r.ewma_next(100.0, 200.0, false, 1000), 120.0);
        assert_eq!(r.ewma_next(100.0, 200.0, true, 1000), 200.0);
        let mut v = 100.0;
        for _ in 0..100 {
            v = r.ewma_next(v, 50.0, false, 10);
        }
        assert!((v - 50.0).abs() < 1e-6);
    }

    #[test]
    fn peak_ewma_jumps_up_at_once_and_decays_with_time() {
        let r = rules();
        // A slower sample replaces the estimate immediately.
        assert_eq!(r.peak_next(10.0 * MS, 400.0 * MS, 1, false), 400.0 * MS);
        // A faster one moves it by 1 - exp(-elapsed / tau): after tau, 63% of the way.
        let v = r.peak_next(400.0 * MS, 100.0 * MS, 10 * SEC, false);
        let want = 400.0 * MS * (-1f64).exp() + 100.0 * MS * (1.0 - (-1f64).exp());
        assert!((v - want).abs() < 1e-6);
        // Samples close together barely move it: the peak is remembered for about tau.
        let v = r.peak_next(400.0 * MS, 10.0 * MS, 1000, false);
        assert!(v > 399.0 * MS);
        // The first sample replaces the default even if it is lower.
        assert_eq!(r.peak_next(30.0 * MS, 5.0 * MS, 0, true), 5.0 * MS);
    }

    #[test]
    fn decay_is_exponential_in_steps_of_tau_over_64() {
        assert_eq!(Rules::decay(100.0, 0, 64e6), 100.0);
        assert_eq!(Rules::decay(100.0, 999_999, 64e6), 100.0);
        assert_eq!(
            Rules::decay(100.0, 1_000_000, 64e6),
            100.0 * (-1.0f64 / 64.0).exp()
        );
        let v = Rules::decay(100.0, 64_000_000, 64e6);
        assert!((v - 100.0 / std::f64::consts::E).abs() < 1e-9);
    }

    #[test]
    fn errors_count_as_slow() {
        let r = rules();
        assert_eq!(r.sample(Duration::ZERO, false), 1000.0 * MS);
        assert_eq!(r.sample(Duration::from_secs(2), false), 2000.0 * MS);
        assert_eq!(r.sample(Duration::from_millis(5), true), 5.0 * MS);
    }

    #[test]
    fn sma_first_sample_fills_then_window_slides() {
        let s = Sma::new(4);
        s.fill(100.0);
        assert_eq!(s.mean(), 100.0);
        for (seq, v) in [(1u64, 200.0), (2, 200.0), (3, 200.0)] {
            s.push_n(seq, v, 1);
        }
        assert_eq!(s.mean(), 175.0);
        s.push_n(4, 200.0, 1);
        assert_eq!(s.mean(), 200.0);
        // A sample standing for 2 slots replaces the 2 oldest.
        s.push_n(5, 600.0, 2);
        assert_eq!(s.mean(), 400.0);
        // Window 1 is the latest sample.
        let one = Sma::new(1);
        one.fill(5.0);
        one.push_n(1, 9.0, 1);
        assert_eq!(one.mean(), 9.0);
    }

    #[test]
    fn sma_sum_is_exact_after_concurrent_pushes() {
        let s = Sma::new(8);
        s.fill(0.0);
        let seq = AtomicU64::new(1);
        std::thread::scope(|sc| {
            for t in 0..2u32 {
                let (s, seq) = (&s, &seq);
                sc.spawn(move || {
                    for k in 0..20_000u32 {
                        s.push_n(seq.fetch_add(1, Relaxed), f64::from(k % 97 + t * 1000), 1);
                    }
                });
            }
        });
        let total: u64 = s.ring.iter().map(|v| u64::from(v.load(Relaxed))).sum();
        assert_eq!(s.sum.load(Relaxed), total);
    }

    #[test]
    fn estimates_start_at_default_and_decay_while_idle() {
        let r = rules();
        let e = Estimates::new(16, r.default_rtt, 0);
        for which in [Estimator::Sma, Estimator::Ewma, Estimator::PeakEwma] {
            let at0 = e.read(&r, which, false, 0);
            assert_eq!(at0.value, 30.0 * MS);
            assert!(at0.stale, "unmeasured is stale");
            let later = e.read(&r, which, false, 10 * SEC);
            assert!((later.value - 30.0 * MS / std::f64::consts::E).abs() < 1.0);
        }
    }

    #[test]
    fn estimates_follow_samples_with_synthetic_time() {
        let r = rules();
        let e = Estimates::new(4, r.default_rtt, 0);
        let mut t = 0;
        for (seq, ms) in [10.0, 10.0, 10.0, 10.0, 400.0].into_iter().enumerate() {
            t += 1000;
            e.observe(&r, seq as u64, ms * MS, t);
        }
        let sma = e.read(&r, Estimator::Sma, true, t);
        let ewma = e.read(&r, Estimator::Ewma, true, t);
        let peak = e.read(&r, Estimator::PeakEwma, true, t);
        assert!(!sma.stale && !ewma.stale && !peak.stale);
        assert_eq!(sma.value, (3.0 * 10.0 + 400.0) / 4.0 * MS);
        assert!((ewma.value - (10.0 + 0.2 * 390.0) * MS).abs() < 1e-6);
        assert_eq!(peak.value, 400.0 * MS);
        // After the idle time constant every estimate is stale; the next sample re-seeds.
        let t2 = t + 11 * SEC;
        assert!(e.read(&r, Estimator::Ewma, true, t2).stale);
        e.observe(&r, 5, 20.0 * MS, t2);
        assert_eq!(e.read(&r, Estimator::Sma, true, t2).value, 20.0 * MS);
        assert_eq!(e.read(&r, Estimator::Ewma, true, t2).value, 20.0 * MS);
        let p = e.read(&r, Estimator::PeakEwma, true, t2).value;
        assert!(
            p < 0.4 * 400.0 * MS && p > 20.0 * MS,
            "peak mostly forgotten: {p}"
        );
    }

    #[test]
    fn a_sample_after_a_gap_weighs_by_the_time_it_stands_for() {
        let r = Rules {
            alpha: 0.004,
            ..rules()
        };
        // Busy: alpha. After one span: 1 - 1/e. Long after: almost all.
        assert_eq!(r.ewma_weight(1000), 0.004);
        assert!((r.ewma_weight(500_000) - (1.0 - (-1.0f64).exp())).abs() < 1e-12);
        assert!(r.ewma_weight(5 * SEC) > 0.9999);
        assert_eq!(r.time_weight_at_least(1000, 0.5), 0.5);
    }

    #[test]
    fn a_server_slow_once_recovers_with_its_first_fast_answers() {
        // 512 answers of 1 s, then 2 s without any (it lost every comparison), then a fast
        // probe: both averages drop most of the way at once, and the idle decay seen by
        // the policy is not undone.
        let r = Rules {
            alpha: 0.004,
            ..rules()
        };
        let e = Estimates::new(512, r.default_rtt, 0);
        let mut t = 0;
        for seq in 0..512 {
            t += 2000;
            e.observe(&r, seq, 1000.0 * MS, t);
        }
        let before = e.read(&r, Estimator::Ewma, true, t).value;
        assert!((before - 1000.0 * MS).abs() < 1.0, "{before}");
        t += 2 * SEC;
        let seen = e.read(&r, Estimator::Ewma, true, t).value;
        e.observe(&r, 512, 10.0 * MS, t);
        for which in [Estimator::Sma, Estimator::Ewma] {
            let v = e.read(&r, which, true, t).value;
            assert!(v < 0.05 * seen, "{which:?}: {v} after {seen}");
        }
        // A busy server's single answer moves its average by alpha only.
        let busy = Estimates::new(512, r.default_rtt, 0);
        for seq in 0..600 {
            busy.observe(&r, seq, 100.0 * MS, 1000 + seq * 100);
        }
        busy.observe(&r, 600, 1000.0 * MS, 1000 + 600 * 100);
        let v = busy.read(&r, Estimator::Ewma, true, 1000 + 600 * 100).value;
        assert!((v - (100.0 + 0.004 * 900.0) * MS).abs() < 1.0, "{v}");
    }

    #[test]
    fn out_of_order_timestamps_do_not_move_time_back() {
        let r = rules();
        let e = Estimates::new(4, r.default_rtt, 0);
        e.observe(&r, 0, 10.0 * MS, 5000);
        e.observe(&r, 1, 10.0 * MS, 4000);
        assert_eq!(e.idle(5000), 0);
    }
}

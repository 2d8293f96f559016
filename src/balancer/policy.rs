//! The routing policies behind [`Policy`]: round robin, smooth weighted round robin over a
//! precomputed schedule, and best-of-d sampling (power of two choices by default) over
//! in-flight counts or latency estimates. Per-backend stats and estimates live in the parent
//! module and `estimator`.
//!
//! Every policy walks the tiers best first and returns a server of the first tier that has
//! an available one. A pick costs O(1) in the number of servers while the servers it draws
//! are up; only a tier that is mostly down (or the `exclude`d server and few others) is
//! scanned, once per pick.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::rng::XorShift;

use super::estimator::{Estimator, Micros, Rules};
use super::{Backend, Backends};
use crate::config::MAX_CHOICES;

/// A routing policy. Implementations keep their own shared state in atomics.
pub trait Policy: Send + Sync {
    /// Chooses a backend for a new request at time `now`, never `exclude` (the server a
    /// retry is moving away from) and never one that is down; `None` when no server can
    /// take it. Only policies that say [`uses_clock`](Policy::uses_clock) read `now`.
    fn pick(&self, set: &Backends, exclude: Option<usize>, now: Micros) -> Option<usize>;

    /// Whether [`pick`](Policy::pick) needs the current time.
    fn uses_clock(&self) -> bool {
        false
    }
}

/// Round robin within the best tier that has an available server: one `fetch_add` per
/// pick (on the membership's per-tier counter) while all servers are up. Ignores weights:
/// it is the plain rotation.
pub struct RoundRobin;

impl RoundRobin {
    pub fn new(_set: &Backends) -> RoundRobin {
        RoundRobin
    }
}

impl Policy for RoundRobin {
    fn pick(&self, set: &Backends, exclude: Option<usize>, _now: Micros) -> Option<usize> {
        for (tier, next) in set.tiers.iter().zip(set.next.iter()) {
            let n = tier.len();
            let start = next.fetch_add(1, Relaxed);
            for k in 0..n {
                let i = tier[(start + k) % n];
                if set.usable(i, exclude) {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// One tier's smooth weighted round-robin sequence (nginx's algorithm) over one cycle:
/// every server appears in proportion to its integer weight, spread as evenly as SWRR
/// spreads it. Computed once; the weighted policy indexes it with one `fetch_add` and the
/// sampling policies draw from it to sample servers in proportion to their weights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    pub slots: Box<[u32]>,
}

/// Longest schedule built; weights whose exact ratios would need more are rounded to fit.
pub const MAX_SCHEDULE: usize = 1 << 16;
/// Relative error allowed when turning weights into integers.
const WEIGHT_TOLERANCE: f64 = 0.005;

impl Schedule {
    /// The SWRR cycle of the servers `tier` (slot indices) with `weights` (one each).
    pub fn new(weights: &[f64], tier: &[usize]) -> Schedule {
        let ints = integer_weights(weights);
        let total: u64 = ints.iter().sum();
        let mut current = vec![0i64; tier.len()];
        let mut slots = Vec::with_capacity(total as usize);
        for _ in 0..total {
            for (c, &w) in current.iter_mut().zip(&ints) {
                *c += w as i64;
            }
            // The largest current weight wins, the first on ties; it pays the total back.
            let best =
                (1..current.len()).fold(0, |b, k| if current[k] > current[b] { k } else { b });
            current[best] -= total as i64;
            slots.push(tier[best] as u32);
        }
        Schedule {
            slots: slots.into_boxed_slice(),
        }
    }
}

/// Integer weights in the same ratios as `w` within [`WEIGHT_TOLERANCE`] (3:1 stays 3:1,
/// 0.5:0.3 becomes 5:3), the smallest such, with a total of at most [`MAX_SCHEDULE`]
/// (beyond that the ratios are rounded, every server keeping at least 1).
pub fn integer_weights(w: &[f64]) -> Vec<u64> {
    if w.is_empty() {
        return Vec::new();
    }
    let w: Vec<f64> = w
        .iter()
        .map(|&x| if x.is_finite() && x > 0.0 { x } else { 1.0 })
        .collect();
    let min = w.iter().cloned().fold(f64::INFINITY, f64::min);
    // Scale s makes the smallest weight s, so rounding errs by at most 0.5/s: s = 100 always
    // meets the tolerance; usually s = 1..3 does.
    for s in 1..=100u32 {
        let exact: Vec<f64> = w.iter().map(|x| x / min * f64::from(s)).collect();
        let ints: Vec<u64> = exact.iter().map(|x| x.round().max(1.0) as u64).collect();
        if ints.iter().sum::<u64>() > MAX_SCHEDULE as u64 {
            break;
        }
        let ok = exact
            .iter()
            .zip(&ints)
            .all(|(x, &n)| ((n as f64 - x) / x).abs() <= WEIGHT_TOLERANCE);
        if ok {
            return ints;
        }
    }
    let sum: f64 = w.iter().sum();
    let room = (MAX_SCHEDULE - w.len()) as f64;
    w.iter()
        .map(|x| 1 + (x / sum * room).floor() as u64)
        .collect()
}

/// Smooth weighted round robin: each tier's [`Schedule`] indexed by one shared
/// `fetch_add`, so the sequence and the proportions hold across workers without locks.
/// A slot whose server is unusable costs another `fetch_add`: the slots of a down server
/// are skipped and the others keep their proportions. After a few misses in a row (most of
/// the tier down) the tier is scanned from there.
pub struct Weighted;

/// `fetch_add`s tried per tier before scanning it.
const WEIGHTED_TRIES: usize = 4;

impl Weighted {
    pub fn new(_set: &Backends) -> Weighted {
        Weighted
    }
}

impl Policy for Weighted {
    fn pick(&self, set: &Backends, exclude: Option<usize>, _now: Micros) -> Option<usize> {
        for (sched, next) in set.schedules.iter().zip(set.next.iter()) {
            let slots = &sched.slots;
            let n = slots.len();
            let mut at = 0;
            for _ in 0..WEIGHTED_TRIES {
                at = next.fetch_add(1, Relaxed) % n;
                let i = slots[at] as usize;
                if set.usable(i, exclude) {
                    return Some(i);
                }
            }
            for k in 1..n {
                let i = slots[(at + k) % n] as usize;
                if set.usable(i, exclude) {
                    return Some(i);
                }
            }
        }
        None
    }
}

/// What a sampling policy compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Load {
    /// In-flight requests divided by the weight.
    Requests,
    /// A latency estimate times the load factor `1 + in_flight / weight`.
    Latency(Estimator),
}

/// Power-of-`choices` sampling: draws `choices` distinct available servers of the best
/// tier at random, in proportion to their weights, and takes the cheapest; ties go to the
/// first drawn. With `choices` >= a tier's size it compares the whole tier.
///
/// Costs, with `w` the weight and `n` the requests in flight there:
/// - `Requests`: `n / w`;
/// - `Latency(e)`: `estimate_e * (1 + n / w)`: the Finagle cost `estimate * (n + 1)` when
///   `w = 1`; a weight acts as capacity (queueing shared by `w`), so at equal estimates
///   in-flight counts settle in proportion to the weights, and with nothing in flight ties
///   fall to the weighted draw. A server that never answered costs nothing while it has
///   nothing in flight, so it is probed at once. A stale server (no response yet, or none
///   for the estimator's time constant, over which its estimate decays towards zero) loses
///   to every fresh one while it has a request in flight: new and recovering servers are
///   probed one request at a time, never flooded.
pub struct Sampling {
    load: Load,
    choices: usize,
    rules: Rules,
    /// Exponent on the load factor (1: Finagle's estimate x (in-flight + 1)).
    bias: f64,
    /// `1 / bias` when it is a small integer `k`: costs are then compared as
    /// `estimate^k x load` (the k-th power of the cost, the same order) with no `powf`.
    inv_bias: Option<i32>,
}

/// An idle server (nothing in flight) that has not answered for this many times its
/// latency estimate is probed with one request.
const PROBE_AFTER: f64 = 2.0;

/// Draws per candidate before falling back to a scan of the tier.
const DRAWS_PER_CHOICE: usize = 3;
/// Steps along a weighted schedule to move off a server already drawn.
const MAX_STEPS: usize = 8;

/// A cost: (stale and busy, value); smaller is better.
type Cost = (bool, f64);

impl Sampling {
    pub fn new(load: Load, choices: usize, rules: Rules) -> Sampling {
        Sampling {
            load,
            choices: choices.clamp(1, MAX_CHOICES),
            rules,
            bias: 1.0,
            inv_bias: Some(1),
        }
    }

    /// Sets the exponent on the load factor, in (0, 1].
    pub fn with_bias(mut self, bias: f64) -> Sampling {
        self.bias = bias;
        let inv = 1.0 / bias;
        let k = inv.round();
        self.inv_bias = ((1.0..=16.0).contains(&k) && (inv - k).abs() < 1e-9).then_some(k as i32);
        self
    }

    /// A number ordered as `estimate * load^bias` is (equal where it is equal, 0 where
    /// the estimate is 0).
    #[inline]
    fn rank(&self, estimate: f64, load: f64) -> f64 {
        match self.inv_bias {
            Some(1) => estimate * load,
            // Estimates are microseconds below 2^32: the 16th power stays finite.
            Some(k) => estimate.powi(k) * load,
            None => estimate * load.powf(self.bias),
        }
    }

    #[inline]
    fn cost(&self, b: &Backend, now: Micros) -> Cost {
        let s = &b.stats;
        let n = f64::from(s.inflight.load(Relaxed));
        match self.load {
            Load::Requests => (false, n / b.weight()),
            Load::Latency(e) => {
                let measured = s.requests.load(Relaxed) > 0;
                if !measured && n == 0.0 {
                    // Never answered, nothing in flight: probe it now.
                    return (false, 0.0);
                }
                let r = s.est.read(&self.rules, e, measured, now);
                if n == 0.0 && (r.stale || s.est.idle(now) as f64 > PROBE_AFTER * r.value.max(1.0))
                {
                    // Nothing in flight and no answer for longer than the time constant
                    // (idle, or back from an outage), or for longer than its estimate says
                    // it needs (it lost every comparison since, so it is only known by old
                    // answers): probe it with one request, as a new server is. A server
                    // that was slow is thus retried about every PROBE_AFTER x its latency,
                    // one request at a time, and its next answer updates its estimate.
                    return (false, 0.0);
                }
                (
                    r.stale && n >= 1.0,
                    self.rank(r.value, 1.0 + n / b.weight()),
                )
            }
        }
    }

    /// The best of up to `choices` distinct usable servers drawn from tier `t`.
    fn pick_tier(
        &self,
        set: &Backends,
        t: usize,
        exclude: Option<usize>,
        now: Micros,
    ) -> Option<usize> {
        let tier = &set.tiers[t];
        if self.choices >= tier.len() {
            return self.scan(set, t, exclude, now, usize::MAX);
        }
        let slots = &set.schedules[t].slots;
        let len = slots.len();
        // (backend, cost) of the best so far and the backends drawn, at most `choices`.
        let mut best: Option<(usize, Cost)> = None;
        let mut drawn = [usize::MAX; MAX_CHOICES];
        let mut found = 0;
        let mut first_pos = 0;
        for _ in 0..DRAWS_PER_CHOICE * self.choices {
            let r = next_u64();
            let mut pos = if found == 1 && len > 1 {
                // The second draw skips the first's slot: with equal weights the pair is
                // always distinct.
                let p = bounded(r, len - 1);
                p + usize::from(p >= first_pos)
            } else {
                bounded(r, len)
            };
            let mut i = slots[pos] as usize;
            // A weighted schedule repeats servers; SWRR interleaves them, so a few steps
            // reach another one.
            let mut steps = 0;
            while drawn[..found].contains(&i) && steps < MAX_STEPS {
                pos = (pos + 1) % len;
                i = slots[pos] as usize;
                steps += 1;
            }
            if drawn[..found].contains(&i) || !set.usable(i, exclude) {
                continue;
            }
            if found == 0 {
                first_pos = pos;
            }
            drawn[found] = i;
            found += 1;
            let c = self.cost(set.backend(i), now);
            if best.is_none_or(|(_, bc)| c < bc) {
                best = Some((i, c));
            }
            if found == self.choices {
                break;
            }
        }
        match best {
            Some((i, _)) => Some(i),
            // Nothing usable drawn: most of the tier is down. Compare what a scan finds.
            None => self.scan(set, t, exclude, now, self.choices),
        }
    }

    /// The cheapest of the first `limit` usable servers of tier `t`, scanning from a
    /// weighted random start so ties are broken as the draws break them.
    fn scan(
        &self,
        set: &Backends,
        t: usize,
        exclude: Option<usize>,
        now: Micros,
        limit: usize,
    ) -> Option<usize> {
        let tier = &set.tiers[t];
        let slots = &set.schedules[t].slots;
        let n = tier.len();
        if n == 0 {
            return None;
        }
        let start_backend = slots[bounded(next_u64(), slots.len())] as usize;
        let start = set.position[start_backend];
        let mut best: Option<(usize, Cost)> = None;
        let mut seen = 0;
        for k in 0..n {
            let i = tier[(start + k) % n];
            if !set.usable(i, exclude) {
                continue;
            }
            let c = self.cost(set.backend(i), now);
            if best.is_none_or(|(_, bc)| c < bc) {
                best = Some((i, c));
            }
            seen += 1;
            if seen == limit {
                break;
            }
        }
        best.map(|(i, _)| i)
    }
}

impl Policy for Sampling {
    fn pick(&self, set: &Backends, exclude: Option<usize>, now: Micros) -> Option<usize> {
        (0..set.tiers.len()).find_map(|t| self.pick_tier(set, t, exclude, now))
    }

    fn uses_clock(&self) -> bool {
        matches!(self.load, Load::Latency(_))
    }
}

/// `r` mapped onto `0..n` (Lemire's multiply-shift; the bias is below 2^-32 for our `n`).
#[inline]
fn bounded(r: u64, n: usize) -> usize {
    ((u128::from(r) * n as u128) >> 64) as usize
}

thread_local! {
    static RNG: Cell<XorShift> = Cell::new(initial_seed());
}

/// A distinct generator per thread: a global counter and the time as its seed.
fn initial_seed() -> XorShift {
    static THREADS: AtomicU64 = AtomicU64::new(0);
    let n = THREADS.fetch_add(1, Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    XorShift::new(n ^ t.rotate_left(17))
}

/// The next number from this thread's generator: no locks, no shared state.
#[inline]
pub fn next_u64() -> u64 {
    RNG.with(|c| {
        let mut r = c.get();
        let x = r.next_u64();
        c.set(r);
        x
    })
}

/// Restarts this thread's generator from `seed` (tests and benchmarks, for repeatability).
pub fn seed_thread_rng(seed: u64) {
    RNG.with(|c| c.set(XorShift::new(seed)));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_orders_as_estimate_times_load_to_the_bias() {
        let rules = crate::config::RoutingParams::default().rules();
        seed_thread_rng(3);
        for bias in [1.0, 0.5, 0.25, 0.2, 0.3, 0.7] {
            let s = Sampling::new(Load::Latency(Estimator::Ewma), 3, rules).with_bias(bias);
            assert_eq!(s.inv_bias.is_some(), (1.0 / bias).fract() == 0.0, "{bias}");
            let draw = || {
                let est = (next_u64() % 2_000_000) as f64;
                let load = 1.0 + (next_u64() % 200) as f64 / 4.0;
                (est, load)
            };
            for _ in 0..10_000 {
                let (a, b) = (draw(), draw());
                let exact = |(e, l): (f64, f64)| e * l.powf(bias);
                let (ea, eb) = (exact(a), exact(b));
                // Skip near-ties, where rounding may order either way.
                if (ea - eb).abs() <= 1e-9 * ea.max(eb) {
                    continue;
                }
                assert_eq!(
                    s.rank(a.0, a.1) < s.rank(b.0, b.1),
                    ea < eb,
                    "bias {bias}: {a:?} vs {b:?}"
                );
            }
            assert_eq!(s.rank(0.0, 5.0), 0.0);
        }
    }
}

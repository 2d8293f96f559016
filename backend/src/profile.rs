//! Latency profiles: how long a counted request waits before its answer; pure, time is an argument.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Server A of the seed system cycles through these delays, one per request.
pub const SEED_A_CYCLE_MS: [u64; 9] = [10, 15, 20, 400, 400, 400, 10, 15, 20];
/// Server B of the seed system always takes this long.
pub const SEED_B_MS: u64 = 200;
/// Server C of the seed system always takes this long.
pub const SEED_C_MS: u64 = 250;

/// Small xorshift64* generator: deterministic per seed, no dependency.
#[derive(Debug, Clone)]
pub struct XorShift(u64);

impl XorShift {
    /// Any seed works, zero included: it is spread with one splitmix64 step first.
    pub fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        XorShift(if z == 0 { 1 } else { z })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Exponentially distributed with the given mean.
    pub fn exp(&mut self, mean: f64) -> f64 {
        -mean * (1.0 - self.next_f64()).ln()
    }
}

/// The `--profile` value, validated.
#[derive(Debug, Clone, PartialEq)]
pub enum ProfileSpec {
    /// The seed system's per-id latencies.
    Seed,
    /// No delay at all.
    Fast,
    /// The same delay for every request.
    Fixed(Duration),
    /// `workers` virtual servers with exponential service times of mean `mean`.
    Queue { workers: usize, mean: Duration },
}

impl ProfileSpec {
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut parts = s.split(':');
        let kind = parts.next().unwrap_or("");
        let args: Vec<&str> = parts.collect();
        let bad =
            || format!("bad profile {s:?}: expected seed, fast, fixed:MS or queue:WORKERS:MEAN_MS");
        match (kind, args.as_slice()) {
            ("seed", []) => Ok(ProfileSpec::Seed),
            ("fast", []) => Ok(ProfileSpec::Fast),
            ("fixed", [ms]) => Ok(ProfileSpec::Fixed(parse_ms(ms).ok_or_else(bad)?)),
            ("queue", [w, mean]) => {
                let workers: usize = w.parse().map_err(|_| bad())?;
                let mean = parse_ms(mean).ok_or_else(bad)?;
                if workers == 0 || mean.is_zero() {
                    return Err(format!(
                        "bad profile {s:?}: WORKERS and MEAN_MS must be > 0"
                    ));
                }
                Ok(ProfileSpec::Queue { workers, mean })
            }
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for ProfileSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ProfileSpec::Seed => f.write_str("seed"),
            ProfileSpec::Fast => f.write_str("fast"),
            ProfileSpec::Fixed(d) => write!(f, "fixed:{}", fmt_ms(*d)),
            ProfileSpec::Queue { workers, mean } => write!(f, "queue:{workers}:{}", fmt_ms(*mean)),
        }
    }
}

/// Milliseconds, fractional allowed ("2.5"), never negative.
fn parse_ms(s: &str) -> Option<Duration> {
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0).then(|| Duration::from_secs_f64(v / 1000.0))
}

fn fmt_ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1000.0;
    if ms.fract() == 0.0 {
        format!("{}", ms as u64)
    } else {
        format!("{ms}")
    }
}

/// `--slow FACTOR:DURATION_MS:PERIOD_MS`: slow during the first `duration` of every `period`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlowPhase {
    pub factor: f64,
    pub duration: Duration,
    pub period: Duration,
}

impl SlowPhase {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("bad --slow {s:?}: expected FACTOR:DURATION_MS:PERIOD_MS");
        let parts: Vec<&str> = s.split(':').collect();
        let [factor, duration, period] = parts.as_slice() else {
            return Err(bad());
        };
        let factor: f64 = factor.parse().map_err(|_| bad())?;
        let duration = parse_ms(duration).ok_or_else(bad)?;
        let period = parse_ms(period).ok_or_else(bad)?;
        if !factor.is_finite() || factor < 0.0 {
            return Err(format!("bad --slow {s:?}: FACTOR must be >= 0"));
        }
        if period.is_zero() || duration > period {
            return Err(format!(
                "bad --slow {s:?}: need 0 < PERIOD_MS and DURATION_MS <= PERIOD_MS"
            ));
        }
        Ok(SlowPhase {
            factor,
            duration,
            period,
        })
    }

    /// The factor in force `elapsed` after start: `Some(FACTOR)` in a slow phase, else `None`.
    pub fn factor_at(&self, elapsed: Duration) -> Option<f64> {
        let into = elapsed.as_nanos() % self.period.as_nanos();
        (into < self.duration.as_nanos()).then_some(self.factor)
    }
}

/// `--stall R:MS`: a fraction `rate` of answers waits `extra` more, on top of the profile's
/// delay (a pause like a garbage collection's).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stall {
    pub rate: f64,
    pub extra: Duration,
}

impl Stall {
    pub fn parse(s: &str) -> Result<Self, String> {
        let bad = || format!("bad --stall {s:?}: expected R:MS, R within 0..1");
        let (rate, ms) = s.split_once(':').ok_or_else(bad)?;
        let rate: f64 = rate.parse().map_err(|_| bad())?;
        let extra = parse_ms(ms).ok_or_else(bad)?;
        if !(0.0..=1.0).contains(&rate) {
            return Err(bad());
        }
        Ok(Stall { rate, extra })
    }

    /// The extra wait of the next answer: `extra` with probability `rate`, else zero.
    pub fn draw(&self, rng: &mut XorShift) -> Duration {
        if rng.next_f64() < self.rate {
            self.extra
        } else {
            Duration::ZERO
        }
    }
}

/// FIFO queue in front of a fixed pool of virtual workers.
///
/// Because the queue is FIFO and each service time is drawn on arrival, a request's start is
/// known when it arrives: the earliest time any worker is free. So the queue needs no list
/// of waiters, only when each worker frees up; the caller turns the result into one timer.
/// A client that leaves while queued still holds its slot, as in a server that does not
/// notice disconnects.
#[derive(Debug, Clone)]
pub struct QueueSim {
    /// Time (since start) at which each worker finishes its last accepted request.
    free_at: Vec<Duration>,
    mean_ms: f64,
    rng: XorShift,
}

impl QueueSim {
    pub fn new(workers: usize, mean: Duration, seed: u64) -> Self {
        QueueSim {
            free_at: vec![Duration::ZERO; workers.max(1)],
            mean_ms: mean.as_secs_f64() * 1000.0,
            rng: XorShift::new(seed),
        }
    }

    /// Admits a request arriving at `now` whose service time is scaled by `factor`;
    /// returns its total latency (queueing plus service).
    pub fn admit(&mut self, now: Duration, factor: f64) -> Duration {
        let (slot, free) = self
            .free_at
            .iter()
            .copied()
            .enumerate()
            .min_by_key(|&(_, t)| t)
            .expect("at least one worker");
        let service = Duration::from_secs_f64(self.rng.exp(self.mean_ms) * factor / 1000.0);
        let done = free.max(now) + service;
        self.free_at[slot] = done;
        done - now
    }

    /// Workers still busy at `now`.
    #[cfg(test)]
    pub fn busy(&self, now: Duration) -> usize {
        self.free_at.iter().filter(|&&t| t > now).count()
    }
}

enum Base {
    /// Cycles through a list, one step per request, shared by all threads.
    Cycle(&'static [u64]),
    Constant(Duration),
    /// One pool per process, shared by all threads.
    Queue(Mutex<QueueSim>),
    Fast,
}

/// The delay source of one process: a profile plus the optional slow phase.
pub struct Latency {
    base: Base,
    next: AtomicU64,
    slow: Option<SlowPhase>,
}

impl Latency {
    /// Fails for the seed profile with an id it does not know.
    pub fn new(
        spec: &ProfileSpec,
        id: &str,
        slow: Option<SlowPhase>,
        seed: u64,
    ) -> Result<Self, String> {
        let base = match spec {
            ProfileSpec::Seed => match id {
                "A" => Base::Cycle(&SEED_A_CYCLE_MS),
                "B" => Base::Constant(Duration::from_millis(SEED_B_MS)),
                "C" => Base::Constant(Duration::from_millis(SEED_C_MS)),
                _ => return Err(format!("profile seed knows ids A, B, C (got {id:?})")),
            },
            ProfileSpec::Fast => Base::Fast,
            ProfileSpec::Fixed(d) => Base::Constant(*d),
            ProfileSpec::Queue { workers, mean } => {
                Base::Queue(Mutex::new(QueueSim::new(*workers, *mean, seed)))
            }
        };
        Ok(Latency {
            base,
            next: AtomicU64::new(0),
            slow,
        })
    }

    /// Delay for the next request, arriving `elapsed` after start.
    pub fn delay(&self, elapsed: Duration) -> Duration {
        let factor = self.slow.and_then(|s| s.factor_at(elapsed));
        match &self.base {
            Base::Fast => match factor {
                // A slow phase must be visible even without a base delay: FACTOR ms.
                Some(f) => Duration::from_secs_f64(f / 1000.0),
                None => Duration::ZERO,
            },
            Base::Cycle(cycle) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % cycle.len() as u64;
                scale(Duration::from_millis(cycle[i as usize]), factor)
            }
            Base::Constant(d) => scale(*d, factor),
            Base::Queue(q) => q
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .admit(elapsed, factor.unwrap_or(1.0)),
        }
    }
}

fn scale(d: Duration, factor: Option<f64>) -> Duration {
    match factor {
        Some(f) => d.mul_f64(f),
        None => d,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    #[test]
    fn seed_a_cycles_in_order() {
        let l = Latency::new(&ProfileSpec::Seed, "A", None, 1).unwrap();
        let got: Vec<u64> = (0..18).map(|_| l.delay(ms(0)).as_millis() as u64).collect();
        let mut want = SEED_A_CYCLE_MS.to_vec();
        want.extend_from_slice(&SEED_A_CYCLE_MS);
        assert_eq!(got, want);
    }

    #[test]
    fn seed_b_c_constant_and_unknown_id_rejected() {
        let b = Latency::new(&ProfileSpec::Seed, "B", None, 1).unwrap();
        let c = Latency::new(&ProfileSpec::Seed, "C", None, 1).unwrap();
        for _ in 0..5 {
            assert_eq!(b.delay(ms(3)), ms(200));
            assert_eq!(c.delay(ms(3)), ms(250));
        }
        let err = Latency::new(&ProfileSpec::Seed, "D", None, 1)
            .err()
            .unwrap();
        assert!(err.contains("profile seed knows ids A, B, C"), "{err}");
    }

    #[test]
    fn parses_profiles() {
        assert_eq!(ProfileSpec::parse("seed"), Ok(ProfileSpec::Seed));
        assert_eq!(ProfileSpec::parse("fast"), Ok(ProfileSpec::Fast));
        assert_eq!(ProfileSpec::parse("fixed:5"), Ok(ProfileSpec::Fixed(ms(5))));
        assert_eq!(
            ProfileSpec::parse("queue:4:10"),
            Ok(ProfileSpec::Queue {
                workers: 4,
                mean: ms(10)
            })
        );
        for bad in [
            "",
            "slow",
            "fixed",
            "fixed:x",
            "fixed:-1",
            "queue:0:5",
            "queue:2",
            "fast:1",
        ] {
            assert!(ProfileSpec::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            ProfileSpec::parse("queue:4:10").unwrap().to_string(),
            "queue:4:10"
        );
        assert_eq!(
            ProfileSpec::parse("fixed:2.5").unwrap().to_string(),
            "fixed:2.5"
        );
    }

    #[test]
    fn slow_phase_math() {
        let s = SlowPhase::parse("3:100:1000").unwrap();
        assert_eq!(s.factor_at(ms(0)), Some(3.0));
        assert_eq!(s.factor_at(ms(99)), Some(3.0));
        assert_eq!(s.factor_at(ms(100)), None);
        assert_eq!(s.factor_at(ms(999)), None);
        assert_eq!(s.factor_at(ms(1000)), Some(3.0));
        assert_eq!(s.factor_at(ms(5050)), Some(3.0));
        assert_eq!(s.factor_at(ms(5150)), None);
        for bad in ["3:100", "x:1:2", "2:200:100", "2:0:0", "-1:1:2"] {
            assert!(SlowPhase::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn slow_phase_scales_delays() {
        let slow = SlowPhase::parse("4:100:1000").ok();
        let fixed = Latency::new(&ProfileSpec::Fixed(ms(5)), "X", slow, 1).unwrap();
        assert_eq!(fixed.delay(ms(50)), ms(20));
        assert_eq!(fixed.delay(ms(500)), ms(5));
        let fast = Latency::new(&ProfileSpec::Fast, "X", slow, 1).unwrap();
        assert_eq!(fast.delay(ms(1050)), ms(4));
        assert_eq!(fast.delay(ms(1500)), Duration::ZERO);
        let seed = Latency::new(&ProfileSpec::Seed, "B", slow, 1).unwrap();
        assert_eq!(seed.delay(ms(2000)), ms(800));
    }

    #[test]
    fn stall_parses_and_picks_its_fraction() {
        let s = Stall::parse("0.02:500").unwrap();
        assert_eq!((s.rate, s.extra), (0.02, ms(500)));
        assert_eq!(
            Stall::parse("1:2.5").unwrap().extra,
            Duration::from_micros(2500)
        );
        for bad in [
            "", "0.5", "x:5", "0.5:x", "1.5:5", "-0.1:5", "0.5:-1", "NaN:5",
        ] {
            assert!(Stall::parse(bad).is_err(), "{bad}");
        }
        let mut rng = XorShift::new(3);
        let never = Stall::parse("0:500").unwrap();
        let always = Stall::parse("1:500").unwrap();
        assert!((0..1000).all(|_| never.draw(&mut rng).is_zero()));
        assert!((0..1000).all(|_| always.draw(&mut rng) == ms(500)));
        let hits = (0..100_000).filter(|_| !s.draw(&mut rng).is_zero()).count();
        assert!((1_700..2_300).contains(&hits), "{hits}");
    }

    #[test]
    fn queue_single_worker_serialises() {
        let mut q = QueueSim::new(1, ms(10), 7);
        let mut shadow = XorShift::new(7);
        let mut expected_end = 0.0;
        for _ in 0..5 {
            expected_end += shadow.exp(10.0);
            let d = q.admit(ms(0), 1.0).as_secs_f64() * 1000.0;
            assert!((d - expected_end).abs() < 1e-3, "{d} vs {expected_end}");
        }
        assert_eq!(q.busy(ms(0)), 1);
    }

    #[test]
    fn queue_free_workers_serve_immediately() {
        let mut q = QueueSim::new(3, ms(10), 9);
        let mut shadow = XorShift::new(9);
        for _ in 0..3 {
            let want = shadow.exp(10.0);
            let got = q.admit(ms(0), 1.0).as_secs_f64() * 1000.0;
            assert!((got - want).abs() < 1e-3);
        }
        assert_eq!(q.busy(ms(0)), 3);
        // The fourth waits for the first worker to free up.
        let first_free = *q.free_at.iter().min().unwrap();
        let want = first_free.as_secs_f64() * 1000.0 + shadow.exp(10.0);
        let got = q.admit(ms(0), 1.0).as_secs_f64() * 1000.0;
        assert!((got - want).abs() < 1e-3);
    }

    #[test]
    fn queue_latency_grows_with_load() {
        let mean_latency = |gap_ms: u64| {
            let mut q = QueueSim::new(2, ms(10), 3);
            let n = 20_000;
            let total: f64 = (0..n)
                .map(|i| q.admit(ms(i * gap_ms), 1.0).as_secs_f64() * 1000.0)
                .sum();
            total / n as f64
        };
        let idle = mean_latency(1000);
        assert!((idle - 10.0).abs() < 0.5, "idle mean {idle}");
        let busy = mean_latency(6); // utilisation 10/(2*6) = 83%
        assert!(busy > idle * 1.5, "busy {busy} idle {idle}");
    }

    #[test]
    fn queue_slow_factor_scales_service() {
        let mut a = QueueSim::new(1, ms(10), 5);
        let mut b = QueueSim::new(1, ms(10), 5);
        let da = a.admit(ms(0), 1.0).as_secs_f64();
        let db = b.admit(ms(0), 3.0).as_secs_f64();
        assert!((db - 3.0 * da).abs() < 1e-6);
    }

    #[test]
    fn xorshift_is_deterministic_and_uniform() {
        let mut a = XorShift::new(42);
        let mut b = XorShift::new(42);
        assert!((0..100).all(|_| a.next_u64() == b.next_u64()));
        let mut r = XorShift::new(0);
        let hits = (0..100_000).filter(|_| r.next_f64() < 0.25).count();
        assert!((23_000..27_000).contains(&hits), "{hits}");
        assert!((0..1000).all(|_| (0.0..1.0).contains(&r.next_f64())));
    }
}

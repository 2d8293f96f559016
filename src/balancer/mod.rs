//! Backend selection: the shared backend set with per-backend stats in cache-padded atomics,
//! priority tiers, and the routing modes (`policy`) over latency estimates (`estimator`).
//!
//! Every worker holds the same `Arc<Balancer>` and calls it without locks: policies take
//! `&self` and read or update atomics only. Health state is published here too (the
//! `down` flag), so a policy never picks a server that is down; deciding health is not this
//! module's job.

mod estimator;
mod policy;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

use crossbeam_utils::CachePadded;

use crate::config::{Config, Mode, Server};

pub use estimator::{micros, now_us, AtomicF64, Estimates, Estimator, Micros, Reading, Rules};
pub use policy::{
    integer_weights, next_u64, seed_thread_rng, Load, Policy, RoundRobin, Sampling, Schedule,
    Weighted, MAX_CHOICES, MAX_SCHEDULE,
};

/// Responses in the `adaptive-sma` window. Latency estimates must be smooth over the time
/// a burst of requests takes to come back: after a herd of requests lands on a server, its
/// fast answers return first and its slow ones together later, so a short window swings
/// low then high and traffic swings with it (measured on the seed's A, B, C at wrk -c100:
/// window 32 oscillated between 20 and 400 ms on A and served 613 req/s; 512 holds A near
/// its 143 ms mean and served 646). 512 responses are about a second of a busy server.
pub const DEFAULT_SMA_WINDOW: usize = 512;
/// Least weight of each new response in the `adaptive-ewma` average (the seed used 0.2,
/// which let A's average reach 232 ms, past B): 1/250 averages a busy server over its last
/// few hundred responses, for the reason given at [`DEFAULT_SMA_WINDOW`].
pub const DEFAULT_EWMA_ALPHA: f64 = 0.004;
/// How much time the `adaptive-sma`/`adaptive-ewma` averages span at most: a quiet
/// server's responses weigh by the time between them, so its average covers about half a
/// second rather than hundreds of responses (at 10 req/s, alpha alone would take 25 s to
/// notice a change).
pub const DEFAULT_AVG_SPAN: Duration = Duration::from_millis(500);
/// `peak-ewma` time constant (Finagle's and Linkerd's default): a peak fades over ~10 s.
pub const DEFAULT_PEAK_EWMA_TAU: Duration = Duration::from_secs(10);
/// How fast SMA and EWMA estimates decay while a server sends no responses, and how long
/// without a response makes an estimate stale (re-seeded by the next response; the server
/// is probed one request at a time until then).
pub const DEFAULT_IDLE_DECAY: Duration = Duration::from_secs(10);
/// Estimate of a server that has not answered yet (Linkerd's default RTT).
pub const DEFAULT_RTT: Duration = Duration::from_millis(30);
/// A failed exchange counts as a response at least this slow.
pub const DEFAULT_ERROR_LATENCY: Duration = Duration::from_secs(1);
/// Servers compared per pick by `least-request` and `peak-ewma`: power of two choices, as
/// in Envoy, Finagle and Linkerd.
pub const DEFAULT_CHOICES: usize = 2;
/// Servers compared per pick by `adaptive-sma` and `adaptive-ewma`. In-flight counts are
/// shared and exact, so the load term alone keeps a best-of-3 from herding; against the
/// seed's A, B, C (all three compared) it measured 600 req/s at wrk -c100, against 545 for
/// power of two choices, which never compares A with both others.
pub const DEFAULT_ADAPTIVE_CHOICES: usize = 3;
/// `adaptive-sma`/`adaptive-ewma`: exponent on the load factor `1 + in_flight / weight`
/// (Envoy's `active_request_bias`). The latency estimate already contains queueing, so the
/// load term is there to break up herds before answers come back, not to rank servers.
/// With the load term alone deciding, servers settle where `estimate * (1 + n)^bias` is
/// equal, so request shares go as `estimate^-(1 + 1/bias)`: bias 1 sends a server twice as
/// slow 1/4 of the traffic, bias 0.2 sends it 1/64. Seed scenario (wrk -c100, smooth
/// estimates): bias 0.5 served 611 req/s (75/16/9 % to A/B/C), 0.25 633, 0.2 648
/// (85/12/4); unequal-capacity queues were served as well (p99 513 ms at 0.2).
pub const DEFAULT_ADAPTIVE_BIAS: f64 = 0.2;

/// Tuning of the routing modes; `Default` gives the `DEFAULT_*` constants.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoutingParams {
    /// `adaptive-sma`: responses in the moving window (>= 1).
    pub sma_window: usize,
    /// `adaptive-ewma`: least weight of each new response, in (0, 1].
    pub ewma_alpha: f64,
    /// `adaptive-sma`/`adaptive-ewma`: the averages span about this much time at most: a
    /// response `dt` after the previous one weighs at least `1 - exp(-dt / avg_span)` in
    /// the EWMA and replaces that share of the SMA window (> 0).
    pub avg_span: Duration,
    /// `peak-ewma`: time constant of the decay of a peak (> 0).
    pub peak_ewma_tau: Duration,
    /// `adaptive-sma`/`adaptive-ewma`: time constant of the decay while idle, and the
    /// staleness limit (> 0).
    pub idle_decay: Duration,
    /// Estimate before the first response (> 0).
    pub default_rtt: Duration,
    /// Floor of the sample recorded for a failed exchange.
    pub error_latency: Duration,
    /// Servers compared per pick by `least-request` and `peak-ewma`, 1..=4.
    pub choices: usize,
    /// Servers compared per pick by `adaptive-sma` and `adaptive-ewma`, 1..=4.
    pub adaptive_choices: usize,
    /// Exponent on the load factor for `adaptive-sma` and `adaptive-ewma`, in (0, 1].
    pub adaptive_bias: f64,
}

impl Default for RoutingParams {
    fn default() -> Self {
        RoutingParams {
            sma_window: DEFAULT_SMA_WINDOW,
            ewma_alpha: DEFAULT_EWMA_ALPHA,
            avg_span: DEFAULT_AVG_SPAN,
            peak_ewma_tau: DEFAULT_PEAK_EWMA_TAU,
            idle_decay: DEFAULT_IDLE_DECAY,
            default_rtt: DEFAULT_RTT,
            error_latency: DEFAULT_ERROR_LATENCY,
            choices: DEFAULT_CHOICES,
            adaptive_choices: DEFAULT_ADAPTIVE_CHOICES,
            adaptive_bias: DEFAULT_ADAPTIVE_BIAS,
        }
    }
}

impl RoutingParams {
    /// Checks the ranges above; the error names the field.
    pub fn validate(&self) -> Result<(), String> {
        let positive = |name: &str, d: Duration| {
            if d.is_zero() {
                Err(format!("{name}: must be greater than 0"))
            } else {
                Ok(())
            }
        };
        if self.sma_window == 0 || self.sma_window > 1 << 16 {
            return Err(format!(
                "sma_window: expected 1..65536, got {}",
                self.sma_window
            ));
        }
        if !(self.ewma_alpha > 0.0 && self.ewma_alpha <= 1.0) {
            return Err(format!(
                "ewma_alpha: expected a number in (0, 1], got {}",
                self.ewma_alpha
            ));
        }
        for (name, n) in [
            ("choices", self.choices),
            ("adaptive_choices", self.adaptive_choices),
        ] {
            if !(1..=MAX_CHOICES).contains(&n) {
                return Err(format!("{name}: expected 1..={MAX_CHOICES}, got {n}"));
            }
        }
        if !(self.adaptive_bias > 0.0 && self.adaptive_bias <= 1.0) {
            return Err(format!(
                "adaptive_bias: expected a number in (0, 1], got {}",
                self.adaptive_bias
            ));
        }
        positive("peak_ewma_tau", self.peak_ewma_tau)?;
        positive("avg_span", self.avg_span)?;
        positive("idle_decay", self.idle_decay)?;
        positive("default_rtt", self.default_rtt)
    }

    /// The estimators' rules in microseconds.
    pub fn rules(&self) -> Rules {
        Rules {
            alpha: self.ewma_alpha,
            avg_span: micros(self.avg_span),
            peak_tau: micros(self.peak_ewma_tau),
            idle_tau: micros(self.idle_decay),
            default_rtt: micros(self.default_rtt),
            error_latency: micros(self.error_latency),
        }
    }
}

/// Counters and state for one backend, shared by all workers.
#[derive(Debug)]
pub struct Stats {
    /// Requests currently sent to this backend and not yet answered.
    pub inflight: AtomicU32,
    /// Completed exchanges (any status); also the sequence number of the next latency
    /// sample.
    pub requests: AtomicU64,
    /// Exchanges that failed at the transport or protocol level (the client got a 5xx
    /// generated by the proxy, or a truncated response).
    pub errors: AtomicU64,
    /// Sum of upstream latencies in microseconds (mean = sum / requests).
    pub latency_sum_us: AtomicU64,
    /// Health: true while the server is considered down.
    pub down: AtomicBool,
    /// Latency estimates (SMA, EWMA, peak EWMA), kept in every mode.
    pub est: Estimates,
}

impl Stats {
    pub fn new(sma_window: usize, default_rtt: Duration, now: Micros) -> Stats {
        Stats {
            inflight: AtomicU32::new(0),
            requests: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            latency_sum_us: AtomicU64::new(0),
            down: AtomicBool::new(false),
            est: Estimates::new(sma_window, micros(default_rtt), now),
        }
    }
}

impl Default for Stats {
    fn default() -> Self {
        Stats::new(DEFAULT_SMA_WINDOW, DEFAULT_RTT, now_us())
    }
}

/// One configured backend.
#[derive(Debug)]
pub struct Backend {
    pub name: String,
    pub addr: SocketAddr,
    /// `Host` value used for HTTP/1.0 requests that carry none.
    pub host: Vec<u8>,
    pub priority: u32,
    /// Relative share within its tier (config `load`, > 0).
    pub weight: f64,
    pub stats: CachePadded<Stats>,
}

impl Backend {
    fn new(s: &Server, params: &RoutingParams, now: Micros) -> Backend {
        Backend {
            name: s.name.clone(),
            addr: s.addr,
            host: format!("{}:{}", s.address, s.port).into_bytes(),
            priority: s.priority,
            weight: if s.load.is_finite() && s.load > 0.0 {
                s.load
            } else {
                1.0
            },
            stats: CachePadded::new(Stats::new(params.sma_window, params.default_rtt, now)),
        }
    }

    #[inline]
    pub fn available(&self) -> bool {
        !self.stats.down.load(Relaxed)
    }
}

/// The backends, grouped into tiers by ascending priority.
#[derive(Debug)]
pub struct Backends {
    pub list: Vec<Backend>,
    /// Indices into `list`, one vector per priority, best first.
    pub tiers: Vec<Vec<usize>>,
    /// Each tier's smooth weighted round-robin cycle.
    pub schedules: Vec<Schedule>,
    /// Each backend's index within its tier.
    pub position: Vec<usize>,
}

impl Backends {
    pub fn new(servers: &[Server]) -> Backends {
        Self::with_params(servers, &RoutingParams::default(), now_us())
    }

    pub fn with_params(servers: &[Server], params: &RoutingParams, now: Micros) -> Backends {
        let list: Vec<Backend> = servers
            .iter()
            .map(|s| Backend::new(s, params, now))
            .collect();
        let mut prios: Vec<u32> = list.iter().map(|b| b.priority).collect();
        prios.sort_unstable();
        prios.dedup();
        let tiers: Vec<Vec<usize>> = prios
            .iter()
            .map(|p| {
                (0..list.len())
                    .filter(|&i| list[i].priority == *p)
                    .collect()
            })
            .collect();
        let schedules = tiers.iter().map(|t| Schedule::new(&list, t)).collect();
        let mut position = vec![0; list.len()];
        for tier in &tiers {
            for (k, &i) in tier.iter().enumerate() {
                position[i] = k;
            }
        }
        Backends {
            list,
            tiers,
            schedules,
            position,
        }
    }

    #[inline]
    pub(crate) fn usable(&self, i: usize, exclude: Option<usize>) -> bool {
        Some(i) != exclude && self.list[i].available()
    }
}

/// One backend's numbers for metrics, as the routing modes see them at one instant.
#[derive(Debug, Clone, PartialEq)]
pub struct BackendSnapshot {
    pub name: String,
    pub available: bool,
    pub inflight: u32,
    pub requests: u64,
    pub errors: u64,
    /// Estimates in microseconds, decayed for the time since the latest response (the
    /// default RTT before the first).
    pub sma_us: f64,
    pub ewma_us: f64,
    pub peak_ewma_us: f64,
    /// Microseconds since the latest response (or since start).
    pub idle_us: u64,
}

/// The backend set and the policy that picks from it, shared by all workers.
pub struct Balancer {
    pub set: Backends,
    pub mode: Mode,
    pub params: RoutingParams,
    rules: Rules,
    policy: Box<dyn Policy>,
    clock: bool,
}

impl Balancer {
    /// The balancer for `cfg`'s servers, mode and routing parameters.
    pub fn new(cfg: &Config) -> Balancer {
        Self::with_params(&cfg.servers, cfg.mode, cfg.routing)
    }

    pub fn with_params(servers: &[Server], mode: Mode, params: RoutingParams) -> Balancer {
        Self::with_params_at(servers, mode, params, now_us())
    }

    /// As [`with_params`](Balancer::with_params), the backends created at `now`.
    pub fn with_params_at(
        servers: &[Server],
        mode: Mode,
        params: RoutingParams,
        now: Micros,
    ) -> Balancer {
        let set = Backends::with_params(servers, &params, now);
        let rules = params.rules();
        let sampling = |load, choices| Box::new(Sampling::new(load, choices, rules));
        let biased = |load, choices| {
            Box::new(Sampling::new(load, choices, rules).with_bias(params.adaptive_bias))
        };
        let (p2c, adaptive) = (params.choices, params.adaptive_choices);
        let policy: Box<dyn Policy> = match mode {
            Mode::RoundRobin => Box::new(RoundRobin::new(&set)),
            Mode::Weighted => Box::new(Weighted::new(&set)),
            Mode::LeastRequest => sampling(Load::Requests, p2c),
            Mode::AdaptiveSma => biased(Load::Latency(Estimator::Sma), adaptive),
            Mode::AdaptiveEwma => biased(Load::Latency(Estimator::Ewma), adaptive),
            Mode::PeakEwma => sampling(Load::Latency(Estimator::PeakEwma), p2c),
        };
        Balancer {
            clock: policy.uses_clock(),
            set,
            mode,
            params,
            rules,
            policy,
        }
    }

    /// Picks a backend and counts the request as in flight there.
    #[inline]
    pub fn pick(&self, exclude: Option<usize>) -> Option<usize> {
        let now = if self.clock { now_us() } else { 0 };
        self.pick_at(exclude, now)
    }

    /// As [`pick`](Balancer::pick) at time `now`.
    #[inline]
    pub fn pick_at(&self, exclude: Option<usize>, now: Micros) -> Option<usize> {
        let i = self.policy.pick(&self.set, exclude, now)?;
        self.set.list[i].stats.inflight.fetch_add(1, Relaxed);
        Some(i)
    }

    /// Takes back a [`pick`](Balancer::pick) that was not used (a retry refusing a server
    /// it already tried, slow start declining): nothing is recorded.
    #[inline]
    pub fn cancel(&self, i: usize) {
        self.set.list[i].stats.inflight.fetch_sub(1, Relaxed);
    }

    /// Ends an exchange started by [`pick`](Balancer::pick): counts it and records its
    /// latency in every estimator.
    #[inline]
    pub fn finish(&self, i: usize, latency: Duration, ok: bool) {
        self.finish_at(i, latency, ok, now_us())
    }

    /// As [`finish`](Balancer::finish) at time `now`.
    pub fn finish_at(&self, i: usize, latency: Duration, ok: bool, now: Micros) {
        let s = &self.set.list[i].stats;
        let seq = s.requests.fetch_add(1, Relaxed);
        s.latency_sum_us
            .fetch_add(latency.as_micros() as u64, Relaxed);
        if !ok {
            s.errors.fetch_add(1, Relaxed);
        }
        s.est
            .observe(&self.rules, seq, self.rules.sample(latency, ok), now);
        // Last, so a pick never sees the request gone but its latency not yet counted.
        s.inflight.fetch_sub(1, Relaxed);
    }

    /// Every backend's counters and estimates now.
    pub fn snapshot(&self) -> Vec<BackendSnapshot> {
        self.snapshot_at(now_us())
    }

    /// As [`snapshot`](Balancer::snapshot) at time `now`.
    pub fn snapshot_at(&self, now: Micros) -> Vec<BackendSnapshot> {
        self.set
            .list
            .iter()
            .map(|b| {
                let s = &b.stats;
                let requests = s.requests.load(Relaxed);
                let read = |e| s.est.read(&self.rules, e, requests > 0, now).value;
                BackendSnapshot {
                    name: b.name.clone(),
                    available: b.available(),
                    inflight: s.inflight.load(Relaxed),
                    requests,
                    errors: s.errors.load(Relaxed),
                    sma_us: read(Estimator::Sma),
                    ewma_us: read(Estimator::Ewma),
                    peak_ewma_us: read(Estimator::PeakEwma),
                    idle_us: s.est.idle(now),
                }
            })
            .collect()
    }

    pub fn backend(&self, i: usize) -> &Backend {
        &self.set.list[i]
    }

    pub fn len(&self) -> usize {
        self.set.list.len()
    }

    pub fn is_empty(&self) -> bool {
        self.set.list.is_empty()
    }
}

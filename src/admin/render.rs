//! What the admin endpoints say: one [`Stats`] gathered from the shared atomics and the
//! metrics summary, rendered as JSON (`/stats`, `/events`) or Prometheus text (`/metrics`).
//! Pure functions over that value, so the formats are tested without a running proxy.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::health::HealthView;
use crate::metrics::{code_of, Summary};
use crate::shared::{Event, Shared};

/// Events /stats carries (the most recent).
const EVENTS_SHOWN: usize = 50;

/// Upper bounds of the Prometheus latency buckets, in seconds (`+Inf` follows).
pub const BUCKETS_S: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Everything the admin side reports at one instant.
#[derive(Debug, Clone, Serialize)]
pub struct Stats {
    pub version: &'static str,
    pub time_unix_ms: u64,
    pub mode: String,
    pub upstream: String,
    pub workers: usize,
    pub uptime_s: f64,
    /// The proxy is draining before it stops.
    pub stopping: bool,
    pub totals: Totals,
    pub backends: Vec<BackendStats>,
    /// Recent reloads, additions and drains, oldest first.
    pub events: Vec<Event>,
    /// Since-start latency histograms for `/metrics`: the total, then one per backend.
    #[serde(skip)]
    pub hists: Vec<Buckets>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Totals {
    /// Requests completed per second over the last complete second and the last ten.
    pub rps_1s: f64,
    pub rps_10s: f64,
    /// Responses with a 5xx status or broken off, in the last complete second.
    pub errors_1s: u64,
    /// Responses since start, proxied or answered by the proxy itself (updated each second).
    pub requests: u64,
    /// Of those, answered by the proxy itself (malformed requests, no server available).
    pub local: u64,
    pub active_connections: u64,
    /// Upstream connections open now, busy and pooled; of which idle in the pools.
    pub upstream_connections_open: u64,
    pub upstream_connections_idle: u64,
    /// Buffers held by connections now, and buffers waiting in the workers' pools.
    pub buffers_in_use: u64,
    pub buffers_pooled: u64,
    pub accepted: u64,
    pub upstream_connects: u64,
    pub rejected: u64,
    pub retries: u64,
    /// The same by what failed (`shared::RETRY_REASONS`).
    pub retries_by_reason: BTreeMap<&'static str, u64>,
    /// Of those, the ones only the retry policy allowed.
    pub policy_retries: u64,
    /// Hedges sent, and those that answered before the first attempt.
    pub hedges: u64,
    pub hedge_wins: u64,
    /// Attempts cancelled because another attempt of their request answered first.
    pub hedges_cancelled: u64,
    /// Requests a retry policy covers that outgrew the replay buffer (not replayable).
    pub replay_overflows: u64,
    /// Exchanges the client gave up on before the response was complete (logged as 499).
    pub client_aborts: u64,
    /// Trailer fields dropped where HTTP/1.1 could not carry them.
    pub trailers_dropped: u64,
    /// Panics caught in an exchange (that exchange was closed; the worker went on).
    pub panics: u64,
    /// Worker threads restarted after dying.
    pub worker_restarts: u64,
    /// Body bytes relayed with splice(2) (zero copy), both directions.
    pub spliced_bytes: u64,
    /// Upgraded connections (after a 101): open now, since start, bytes each way.
    pub tunnels_open: u64,
    pub tunnels: u64,
    pub tunnel_bytes_up: u64,
    pub tunnel_bytes_down: u64,
    pub log_dropped: u64,
    /// Configuration reloads applied and refused (the running configuration kept).
    pub reloads: u64,
    pub reload_failures: u64,
    /// Servers that started draining (removed or drained on request), and drains done.
    pub drains: u64,
    pub drains_done: u64,
    /// The HTTP/2 front end's counters (h2stats.rs).
    pub h2: super::h2stats::H2Stats,
    /// TLS to clients (tlsstats.rs).
    pub tls: super::tlsstats::TlsStats,
    /// Request latency as clients see it.
    pub latency_ms: Latency,
    /// Responses since start by status code.
    pub codes: BTreeMap<String, u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BackendStats {
    pub name: String,
    pub address: String,
    pub tier: u32,
    pub weight: f64,
    pub health: HealthStats,
    pub inflight: u32,
    /// Completed exchanges since start (live).
    pub requests: u64,
    /// Exchanges that failed at the transport or protocol level.
    pub errors: u64,
    /// Exchanges completed in the last complete second.
    pub rps: u64,
    pub sma_ms: f64,
    pub ewma_ms: f64,
    pub peak_ewma_ms: f64,
    /// Upstream latency (time to the response head).
    pub latency_ms: Latency,
    pub codes: BTreeMap<String, u64>,
    /// gRPC calls that ended on this backend (updated each second).
    pub grpc: GrpcStats,
}

/// A backend's gRPC calls since start.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct GrpcStats {
    pub calls: u64,
    /// Calls that ended with a grpc-status other than 0 (OK).
    pub errors: u64,
    /// Calls by grpc-status (numeric, as a string key).
    pub statuses: BTreeMap<String, u64>,
    /// Calls by method (`/tts.TTS/Synthesize`, at most 64 names, then `other`) and status.
    pub methods: BTreeMap<String, BTreeMap<String, u64>>,
}

impl GrpcStats {
    fn add(&mut self, method: &str, status: u32, n: u64) {
        self.calls += n;
        if status != 0 {
            self.errors += n;
        }
        *self.statuses.entry(status.to_string()).or_insert(0) += n;
        *self
            .methods
            .entry(method.to_string())
            .or_default()
            .entry(status.to_string())
            .or_insert(0) += n;
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct HealthStats {
    /// `up`, `down` (failed active checks) or `ejected` (passive).
    pub state: &'static str,
    #[serde(flatten)]
    pub view: HealthView,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub last: Percentiles,
    pub since_start: Percentiles,
}

/// Percentiles in milliseconds; `None` when nothing was recorded.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Percentiles {
    pub count: u64,
    pub p50: Option<f64>,
    pub p90: Option<f64>,
    pub p99: Option<f64>,
    pub max: Option<f64>,
}

/// A histogram as Prometheus buckets: counts per [`BUCKETS_S`] bound (not cumulative).
#[derive(Debug, Clone, Default)]
pub struct Buckets {
    pub per_bound: [u64; BUCKETS_S.len()],
    pub count: u64,
    pub sum_s: f64,
}

/// Microseconds to milliseconds, kept to the microsecond.
fn ms(us: f64) -> f64 {
    us.round() / 1000.0
}

fn percentiles(h: &Histogram<u64>) -> Percentiles {
    if h.is_empty() {
        return Percentiles::default();
    }
    let q = |q: f64| Some(ms(h.value_at_quantile(q) as f64));
    Percentiles {
        count: h.len(),
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: Some(ms(h.max() as f64)),
    }
}

/// Buckets a microsecond histogram: a value counts under the first bound at or above the
/// lowest value HDR keeps as equivalent to it, so the error stays within its precision.
pub fn buckets(h: &Histogram<u64>) -> Buckets {
    let mut b = Buckets {
        count: h.len(),
        ..Buckets::default()
    };
    let bounds_us = BUCKETS_S.map(|s| (s * 1e6) as u64);
    let mut sum_us = 0u128;
    for v in h.iter_recorded() {
        let value = v.value_iterated_to();
        let n = v.count_at_value();
        sum_us += h.median_equivalent(value) as u128 * n as u128;
        let i = bounds_us.partition_point(|&bound| bound < h.lowest_equivalent(value));
        if let Some(slot) = b.per_bound.get_mut(i) {
            *slot += n;
        }
    }
    b.sum_s = sum_us as f64 / 1e6;
    b
}

fn codes(row: &[u64]) -> BTreeMap<String, u64> {
    row.iter()
        .enumerate()
        .filter(|(_, &n)| n > 0)
        .map(|(i, &n)| (code_of(i).to_string(), n))
        .collect()
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Reads everything once. The summary lock is held only to copy numbers out.
pub fn gather(shared: &Shared, summary: &Mutex<Summary>) -> Stats {
    let snap = shared.balancer.snapshot();
    let slots: Vec<usize> = snap.iter().map(|s| s.slot).collect();
    let m = {
        let sum = summary.lock().unwrap_or_else(|e| e.into_inner());
        Measured::of(&sum, &slots, shared.balancer.capacity())
    };
    let backends = backend_stats(shared, snap, &m);
    let totals = totals(shared, &m);
    Stats {
        version: env!("CARGO_PKG_VERSION"),
        time_unix_ms: unix_ms(),
        mode: shared.cfg.mode.to_string(),
        upstream: shared.cfg.upstream.to_string(),
        workers: shared.cfg.workers.max(1),
        uptime_s: (shared.started.elapsed().as_secs_f64() * 1000.0).round() / 1000.0,
        stopping: shared.stop.load(Relaxed),
        totals,
        backends,
        events: shared.events.recent(EVENTS_SHOWN),
        hists: m.hists,
    }
}

/// What the metrics summary says, read under its lock: latencies and status codes in
/// total and per backend (in snapshot order), rates, histograms, gRPC calls per slot.
struct Measured {
    total_lat: Latency,
    total_codes: BTreeMap<String, u64>,
    backend_lat: Vec<Latency>,
    backend_codes: Vec<BTreeMap<String, u64>>,
    /// Answers the proxy made itself.
    local: u64,
    rps_1s: f64,
    rps_10s: f64,
    errors_1s: u64,
    backend_rps: Vec<u64>,
    hists: Vec<Buckets>,
    /// Per balancer slot.
    grpc: Vec<GrpcStats>,
}

impl Measured {
    /// From `sum`, for the backends in `slots` (snapshot order); rows of code counts per
    /// slot, the last (local answers) at `capacity`.
    fn of(sum: &Summary, slots: &[usize], capacity: usize) -> Measured {
        let lat = |last: &Histogram<u64>, start: &Histogram<u64>| Latency {
            last: percentiles(last),
            since_start: percentiles(start),
        };
        let backend_lat = (slots.iter().copied())
            .map(
                |i| match (sum.last_backends.get(i), sum.since_start_backends.get(i)) {
                    (Some(l), Some(s)) => lat(l, s),
                    _ => Latency::default(),
                },
            )
            .collect();
        let mut all = [0u64; crate::metrics::CODES];
        for row in &sum.codes {
            for (a, x) in all.iter_mut().zip(row) {
                *a += x;
            }
        }
        let empty = crate::metrics::histogram();
        let hists = std::iter::once(&sum.since_start_total)
            .chain(
                slots
                    .iter()
                    .map(|&i| sum.since_start_backends.get(i).unwrap_or(&empty)),
            )
            .map(buckets)
            .collect();
        let mut grpc = vec![GrpcStats::default(); capacity];
        for (b, method, status, calls) in sum.grpc.rows() {
            if let Some(g) = grpc.get_mut(b) {
                g.add(method, status, calls);
            }
        }
        Measured {
            total_lat: lat(&sum.last_total, &sum.since_start_total),
            total_codes: codes(&all),
            backend_lat,
            backend_codes: (slots.iter().copied())
                .map(|i| sum.codes.get(i).map(|r| codes(r)).unwrap_or_default())
                .collect(),
            local: sum.codes.get(capacity).map_or(0, |r| r.iter().sum()),
            rps_1s: sum.rps(1),
            rps_10s: sum.rps(10),
            errors_1s: sum.errors_per_second.back().copied().unwrap_or(0),
            backend_rps: (slots.iter())
                .map(|&i| sum.last_backends.get(i).map_or(0, Histogram::len))
                .collect(),
            hists,
            grpc,
        }
    }
}

/// Each backend of `snap`: its spec, health, live counters and what `m` measured.
fn backend_stats(
    shared: &Shared,
    snap: Vec<crate::balancer::BackendSnapshot>,
    m: &Measured,
) -> Vec<BackendStats> {
    snap.into_iter()
        .enumerate()
        .map(|(k, s)| {
            let i = s.slot;
            let b = shared.balancer.backend(i);
            let h = shared.health.view(&shared.balancer, i);
            let state = h.state(s.state);
            BackendStats {
                name: s.name,
                address: b.addr.to_string(),
                tier: b.priority(),
                weight: b.weight(),
                health: HealthStats { state, view: h },
                inflight: s.inflight,
                requests: s.requests,
                errors: s.errors,
                rps: m.backend_rps.get(k).copied().unwrap_or(0),
                sma_ms: ms(s.sma_us),
                ewma_ms: ms(s.ewma_us),
                peak_ewma_ms: ms(s.peak_ewma_us),
                latency_ms: m.backend_lat.get(k).cloned().unwrap_or_default(),
                codes: m.backend_codes.get(k).cloned().unwrap_or_default(),
                grpc: m.grpc.get(i).cloned().unwrap_or_default(),
            }
        })
        .collect()
}

/// The totals: what `m` measured and the workers' shared counters.
fn totals(shared: &Shared, m: &Measured) -> Totals {
    let c = &shared.counters;
    Totals {
        rps_1s: m.rps_1s,
        rps_10s: m.rps_10s,
        errors_1s: m.errors_1s,
        requests: m.total_codes.values().sum(),
        local: m.local,
        active_connections: c.active_clients.load(Relaxed),
        upstream_connections_open: c.upstream_open.load(Relaxed),
        upstream_connections_idle: c.upstream_idle.load(Relaxed),
        buffers_in_use: c.buffers_in_use.load(Relaxed),
        buffers_pooled: c.buffers_pooled.load(Relaxed),
        accepted: c.accepted.load(Relaxed),
        upstream_connects: c.upstream_connects.load(Relaxed),
        rejected: c.rejected.load(Relaxed),
        retries: c.retries.load(Relaxed),
        retries_by_reason: (crate::shared::RETRY_REASONS.iter().copied())
            .zip(c.retry_reasons.iter().map(|n| n.load(Relaxed)))
            .collect(),
        policy_retries: c.policy_retries.load(Relaxed),
        hedges: c.hedges.load(Relaxed),
        hedge_wins: c.hedge_wins.load(Relaxed),
        hedges_cancelled: c.hedges_cancelled.load(Relaxed),
        replay_overflows: c.replay_overflows.load(Relaxed),
        client_aborts: c.client_aborts.load(Relaxed),
        trailers_dropped: c.trailers_dropped.load(Relaxed),
        panics: c.panics.load(Relaxed),
        worker_restarts: c.worker_restarts.load(Relaxed),
        spliced_bytes: c.spliced_bytes.load(Relaxed),
        tunnels_open: c.tunnels_open.load(Relaxed),
        tunnels: c.tunnels.load(Relaxed),
        tunnel_bytes_up: c.tunnel_bytes_up.load(Relaxed),
        tunnel_bytes_down: c.tunnel_bytes_down.load(Relaxed),
        h2: super::h2stats::H2Stats::read(c),
        tls: super::tlsstats::TlsStats::read(c),
        log_dropped: shared.log_dropped.load(Relaxed),
        reloads: c.reloads.load(Relaxed),
        reload_failures: c.reload_failures.load(Relaxed),
        drains: c.drains.load(Relaxed),
        drains_done: c.drains_done.load(Relaxed),
        latency_ms: m.total_lat.clone(),
        codes: m.total_codes.clone(),
    }
}

/// A small fixed `Stats` for format tests.
#[cfg(test)]
pub(super) fn sample() -> Stats {
    use crate::metrics::histogram;
    let mut codes = BTreeMap::new();
    codes.insert("200".to_string(), 3);
    let backend = |name: &str| BackendStats {
        name: name.into(),
        address: "127.0.0.1:1".into(),
        tier: 0,
        weight: 1.0,
        health: HealthStats {
            state: "up",
            view: HealthView {
                up: true,
                checked_down: false,
                ejected: false,
                ejections: 0,
                changed_at_unix_ms: 1_700_000_000_000,
                ramp: 1.0,
                check: "grpc",
                last_check: "grpc SERVING",
            },
        },
        inflight: 1,
        requests: 3,
        errors: 0,
        rps: 3,
        sma_ms: 10.0,
        ewma_ms: 11.5,
        peak_ewma_ms: 12.25,
        latency_ms: Latency::default(),
        codes: codes.clone(),
        grpc: GrpcStats::default(),
    };
    let mut all = BTreeMap::new();
    all.insert("200".to_string(), 6);
    all.insert("503".to_string(), 2);
    let mut h = histogram();
    h.record(2000).unwrap();
    Stats {
        version: "0",
        time_unix_ms: 0,
        mode: "round-robin".into(),
        upstream: "persistent".into(),
        workers: 1,
        uptime_s: 1.5,
        stopping: false,
        totals: Totals {
            rps_1s: 8.0,
            rps_10s: 0.8,
            errors_1s: 2,
            requests: 8,
            local: 2,
            active_connections: 4,
            upstream_connections_open: 3,
            upstream_connections_idle: 1,
            buffers_in_use: 2,
            buffers_pooled: 8,
            accepted: 5,
            upstream_connects: 2,
            rejected: 0,
            retries: 1,
            retries_by_reason: BTreeMap::from([("reset", 1)]),
            policy_retries: 0,
            hedges: 0,
            hedge_wins: 0,
            hedges_cancelled: 0,
            replay_overflows: 0,
            client_aborts: 0,
            trailers_dropped: 0,
            panics: 0,
            worker_restarts: 0,
            spliced_bytes: 0,
            tunnels_open: 0,
            tunnels: 0,
            tunnel_bytes_up: 0,
            tunnel_bytes_down: 0,
            h2: Default::default(),
            tls: Default::default(),
            log_dropped: 0,
            reloads: 0,
            reload_failures: 0,
            drains: 0,
            drains_done: 0,
            latency_ms: Latency::default(),
            codes: all,
        },
        backends: vec![
            BackendStats {
                grpc: {
                    let mut g = GrpcStats::default();
                    g.add("/tts.TTS/Synthesize", 0, 5);
                    g.add("/tts.TTS/Synthesize", 14, 2);
                    g.add("other", 13, 1);
                    g
                },
                ..backend("A")
            },
            backend("we\"ird\\"),
        ],
        events: Vec::new(),
        hists: vec![buckets(&h), buckets(&h), Buckets::default()],
    }
}

#[cfg(test)]
#[path = "render_tests.rs"]
mod tests;

//! A worker's context: what every connection of one worker uses (the registry, buffers,
//! timers, the clock reading, the retry budget, the log and histograms) and the one place
//! where an exchange, finished or not, is accounted.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mio::Registry;

use crate::access_log::{LogSender, Record};
use crate::balancer::Lease;
use crate::buffer::BufPool;
use crate::config::types::RetryOn;
use crate::health::Outcome;
use crate::http::Canned;
use crate::metrics::WorkerHists;
use crate::retry::RetryBudget;
use crate::rng::XorShift;
use crate::shared::Shared;
use crate::shared::RETRY_REASONS;
use crate::timer::Timers;

use super::decide::{self, Again, Failure, Limits, Replay, Tried};
use super::exchange::{Exchange, Start};
use super::pipe::PipePool;

/// Most buffers a worker pools at all.
const POOL_MAX: usize = 4096;
/// Most finished exchanges kept for reuse (their boxes, not their buffers).
const SPARE_MAX: usize = 1024;

pub(crate) struct Ctx {
    pub id: usize,
    pub registry: Registry,
    pub shared: Arc<Shared>,
    pub bufs: BufPool,
    /// Empty pipes for splicing large bodies.
    pub pipes: PipePool,
    pub timers: Timers,
    /// Worker-clock milliseconds of the current loop iteration.
    pub now: u64,
    /// Clients whose drive was cut short and must run again before sleeping.
    pub again: Vec<usize>,
    /// The exchange deadlines' timeouts, in ms.
    limits: Limits,
    /// Scratch for the balancer leases this worker dropped without ending them.
    pub dropped_leases: Vec<u32>,
    /// Scratch for rewriting heads.
    pub scratch: Vec<u8>,
    pub draining: bool,
    /// Client connections of this worker still in their TLS handshake.
    pub tls_handshaking: u32,
    /// Upstream slots closed while handling the current event batch: later events of the
    /// batch for those tokens belong to the closed socket, not to a new one in the slot.
    pub closed_ups: Vec<usize>,
    /// h2c connections with frames queued in this event batch, flushed at its end.
    pub mux_dirty: Vec<usize>,
    /// HTTP/2 clients with output queued in this event batch, written at its end.
    pub h2_flush: Vec<usize>,
    /// The end-of-batch flush runs: sessions write their output at once.
    pub flushing: bool,
    /// HTTP/2 streams (client, stream id) made due while their session was out of its
    /// client for a step: marked when it is put back.
    pub marks: Vec<(usize, crate::h2::StreamId)>,
    /// Scratch: the owners of a broken h2c connection's streams.
    pub broke: Vec<(usize, crate::h2::StreamId)>,
    /// Per backend: (worker ms when computed, its p95 latency in ms), for hedging delays.
    p95: Vec<(u64, u64)>,
    /// Scratch for the p95's selection.
    samples: Vec<u32>,
    /// Per-request CSV records go here (None: logging off).
    pub log: Option<LogSender>,
    /// This worker's latency histograms, handed to the aggregator once a second.
    pub hists: WorkerHists,
    /// Limits how much retries can add to the load on a failing pool.
    pub budget: RetryBudget,
    /// This worker's random numbers (slow-start admission).
    pub rng: XorShift,
    /// Boxes of finished exchanges, so a new request allocates nothing. The boxes (not
    /// the exchanges) are the point: the client's phase owns one by pointer.
    #[allow(clippy::vec_box)]
    spare: Vec<Box<Exchange>>,
    /// Test hook: a request for exactly this path panics (`CORELB_TEST_PANIC_PATH`, read
    /// once at start) once its server is picked, so tests can show that a panic closes
    /// only its own exchange and gives its pick back.
    pub panic_path: Option<Box<[u8]>>,
    /// The test hook matched the request being started: it panics once attached.
    pub panic_armed: bool,
}

impl Ctx {
    /// The `X-Forwarded-Proto` requests from `sock` carry: set (`http` or `https`) only
    /// when a TLS listener is configured, so backends can trust it; `None` otherwise.
    #[inline]
    pub fn forwarded_proto(&self, sock: &crate::transport::Transport) -> Option<&'static [u8]> {
        self.shared.cfg.tls.as_ref().map(|_| match sock.is_tls() {
            true => &b"https"[..],
            false => &b"http"[..],
        })
    }

    pub fn new(id: usize, registry: Registry, shared: Arc<Shared>, log: Option<LogSender>) -> Ctx {
        let backends = shared.balancer.capacity();
        Ctx {
            id,
            registry,
            bufs: BufPool::new(POOL_MAX),
            pipes: PipePool::new(shared.cfg.splice_min, shared.cfg.notsent_lowat),
            timers: Timers::default(),
            now: 1,
            again: Vec::new(),
            limits: Self::limits_of(&shared),
            dropped_leases: Vec::new(),
            scratch: Vec::with_capacity(4096),
            draining: false,
            tls_handshaking: 0,
            closed_ups: Vec::new(),
            mux_dirty: Vec::new(),
            h2_flush: Vec::new(),
            flushing: false,
            marks: Vec::new(),
            broke: Vec::new(),
            p95: Vec::new(),
            samples: Vec::new(),
            log,
            hists: WorkerHists::new(backends),
            budget: RetryBudget::new(shared.cfg.retry.budget, shared.cfg.retry.min_per_sec),
            rng: XorShift::new(id as u64 + 1),
            spare: Vec::new(),
            panic_armed: false,
            panic_path: std::env::var_os("CORELB_TEST_PANIC_PATH")
                .map(|p| p.into_encoded_bytes().into_boxed_slice()),
            shared,
        }
    }

    #[inline]
    pub fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// The timeouts that set an exchange's deadlines (in ms, worked out once: the
    /// configuration does not change under a worker).
    #[inline]
    pub fn limits(&self) -> Limits {
        self.limits
    }

    fn limits_of(shared: &Shared) -> Limits {
        let t = &shared.cfg.timeouts;
        Limits {
            client: Self::ms(t.client),
            upstream: Self::ms(t.upstream),
            idle: Self::ms(t.idle),
            send: Self::ms(t.send),
        }
    }

    /// A new exchange, in a recycled box when one is spare.
    pub fn exchange(&mut self, s: Start) -> Box<Exchange> {
        match self.spare.pop() {
            Some(mut b) => {
                let index = std::mem::take(&mut b.head_index);
                *b = Exchange::new(s);
                b.head_index = index;
                b
            }
            None => Box::new(Exchange::new(s)),
        }
    }

    /// Takes back an exchange that ended: its buffers return to the pool, its box is kept.
    pub fn recycle(&mut self, mut ex: Box<Exchange>) {
        self.bufs.release(&mut ex.head);
        self.bufs.release(&mut ex.replay);
        self.bufs.release(&mut ex.resp_buf);
        self.bufs.release(&mut ex.out);
        // Empty pipes go back to the pool; one still holding bytes is closed.
        self.pipes.release(&mut ex.splice.req);
        self.pipes.release(&mut ex.splice.resp);
        if self.spare.len() < SPARE_MAX {
            self.spare.push(ex);
        }
    }

    pub fn count_request(&self) {
        self.shared.counters.requests.fetch_add(1, Relaxed);
    }

    pub fn count_rejected(&self) {
        self.shared.counters.rejected.fetch_add(1, Relaxed);
    }

    /// Trailer fields not forwarded: past http::MAX_SECTION_FIELDS, or not expressible.
    pub fn count_trailers_dropped(&self, n: u64) {
        if n > 0 {
            self.shared.counters.trailers_dropped.fetch_add(n, Relaxed);
        }
    }

    /// Accounts an exchange with `backend`, finished or not: the shared backend stats
    /// (latency and in-flight count for the policies), passive health, this worker's
    /// histograms and the CSV log. Every exchange that reached a backend ends here once.
    pub fn account(&mut self, lease: Lease, ex: &Exchange, status: u16, outcome: Outcome) {
        let backend = lease.backend();
        let ok = outcome == Outcome::Ok && status < 500;
        let total_us = ex.started.elapsed().as_micros() as u64;
        let upstream_us = if ex.ttfb_us > 0 { ex.ttfb_us } else { total_us };
        self.shared
            .balancer
            .finish_lease(lease, Duration::from_micros(upstream_us), ok);
        self.shared
            .health
            .observe(&self.shared.balancer, backend, outcome);
        self.hists.record(
            Some(backend),
            status,
            upstream_us,
            total_us,
            !ok || status >= 500,
        );
        if let Some(log) = &self.log {
            let mut rec = ex.rec;
            rec.backend = Some(backend as u16);
            rec.upstream_h2 = self.upstream_h2(backend);
            rec.status = status;
            rec.upstream_us = upstream_us;
            rec.total_us = total_us;
            rec.attempts = 1u8.saturating_add(ex.retries).saturating_add(ex.hedge.sent);
            rec.stamp();
            log.send(rec);
        }
    }

    /// Counts a gRPC call that ended on `backend` with grpc-status `status` in this
    /// worker's (backend, method, status) table (`/metrics` `corelb_grpc_calls_total`,
    /// `/stats` `backends[].grpc`); `method` is the request's `:path`. Allocates nothing
    /// once the method was seen. This is only the gRPC table: the call is still accounted
    /// once by [`Ctx::account`], with `self.shared.health.grpc_outcome(status)` as its
    /// outcome (so the configured statuses count toward ejection) and the CSV record's
    /// `grpc_status` set with `Record::set_grpc_status`.
    #[inline]
    pub fn account_grpc(&mut self, backend: usize, method: &[u8], status: u32) {
        self.hists.record_grpc(backend, method, status);
    }

    /// Accounts the exchange that ended in a 101 with `backend`: the backend's stats,
    /// health and this worker's histograms, with the latency to the 101 (the tunnel that
    /// follows may last hours and must not look like a slow response to the policies).
    /// The CSV record is the tunnel's, written when it ends ([`Ctx::log_record`]).
    pub fn account_upgrade(&mut self, lease: Lease, ex: &Exchange) {
        let backend = lease.backend();
        let total_us = ex.started.elapsed().as_micros() as u64;
        self.shared
            .balancer
            .finish_lease(lease, Duration::from_micros(ex.ttfb_us), true);
        self.shared
            .health
            .observe(&self.shared.balancer, backend, Outcome::Ok);
        self.hists
            .record(Some(backend), 101, ex.ttfb_us, total_us, false);
    }

    /// `backend` speaks HTTP/2 (h2c): the CSV's `upstream_protocol`.
    fn upstream_h2(&self, backend: usize) -> bool {
        self.shared.balancer.backend(backend).protocol == crate::config::Protocol::H2c
    }

    /// Sends a finished record to the CSV log (if logging is on).
    pub fn log_record(&self, mut rec: Record) {
        if let Some(log) = &self.log {
            rec.stamp();
            log.send(rec);
        }
    }

    /// Accounts an exchange the client gave up on (or broke with a bad body) while it was
    /// with `backend`: not the backend's success nor its failure, and no latency sample,
    /// since the backend did not get to finish. Logged with `status` (499, or the 400
    /// answered for a bad body).
    pub fn account_client_abort(&mut self, lease: Lease, ex: &Exchange, status: u16) {
        let backend = lease.backend();
        let total_us = ex.started.elapsed().as_micros() as u64;
        self.shared.balancer.cancel_lease(lease);
        self.shared.counters.client_aborts.fetch_add(1, Relaxed);
        self.hists
            .record(Some(backend), status, total_us, total_us, false);
        if let Some(log) = &self.log {
            let mut rec = ex.rec;
            rec.backend = Some(backend as u16);
            rec.upstream_h2 = self.upstream_h2(backend);
            rec.status = status;
            rec.upstream_us = ex.ttfb_us;
            rec.total_us = total_us;
            rec.stamp();
            log.send(rec);
        }
    }

    /// Where a failed attempt of `ex` on backend `old` goes next (a new lease, or `None`:
    /// back to `old` under the attempt's own), and how, or `None` when
    /// it is not retried: the keep-alive race goes back to the same server on a fresh
    /// connection, outside the budget; anything else safe to replay goes to another
    /// server (a refused stream, to the same one if no other can take it), if the retry
    /// budget allows. The policy excludes the server that just failed; servers that
    /// failed earlier are refused here (a few draws, then give up). Every protocol pair
    /// shares this (`lifecycle.rs` then records the retry).
    pub fn retry_target(
        &mut self,
        ex: &Exchange,
        old: usize,
        why: Failure,
    ) -> Option<(Option<Lease>, Again)> {
        let retry = &self.shared.cfg.retry;
        let policy_retries = retry.policy.as_ref().map_or(0, |p| p.max_attempts - 1);
        let replay = decide::replay(&ex.attempt_facts(), why, retry.count, policy_retries);
        let reasons = &self.shared.counters.retry_reasons;
        match replay {
            Replay::No => return None,
            Replay::Fresh => {
                // The keep-alive race: counted apart from the failures it looks like.
                reasons[RETRY_REASONS.len() - 1].fetch_add(1, Relaxed);
                return Some((None, Again::StaleConnection));
            }
            Replay::Elsewhere | Replay::Policy => {}
        }
        let pick = self.lease_untried(old, ex.tried);
        // Not processed: the same server may take it on another connection.
        let again = match pick {
            Some(_) => Again::Elsewhere,
            None if why == Failure::Refused => Again::Refused,
            None => return None,
        };
        // The budget pays for a retry that goes ahead, not for looking for a server.
        if !self.budget.withdraw(self.now) {
            if let Some(l) = pick {
                self.shared.balancer.cancel_lease(l);
            }
            return None;
        }
        let c = &self.shared.counters;
        c.retry_reasons[why.label()].fetch_add(1, Relaxed);
        if replay == Replay::Policy {
            c.policy_retries.fetch_add(1, Relaxed);
        }
        Some((pick, again))
    }

    /// Another server than `old` and those in `tried`, leased: the routing policy's pick
    /// without `old`, drawn again (a few times, then given up) while it names one tried.
    pub fn lease_untried(&self, old: usize, mut tried: Tried) -> Option<Lease> {
        tried.insert(old);
        let balancer = &self.shared.balancer;
        for _ in 0..4 {
            match balancer.lease(Some(old)) {
                Some(l) if tried.contains(l.backend()) => balancer.cancel_lease(l),
                other => return other,
            }
        }
        None
    }

    /// `backend`'s 95th percentile latency over its recent responses (all workers'), in
    /// ms rounded up, plus 1 ms: a deadline on the worker's millisecond clock can fire up
    /// to 1 ms early. Recomputed at most every 100 ms.
    pub fn p95_ms(&mut self, backend: usize) -> u64 {
        if self.p95.len() <= backend {
            self.p95.resize(backend + 1, (0, 0));
        }
        let (at, ms) = self.p95[backend];
        if at != 0 && self.now < at + 100 {
            return ms;
        }
        let est = &self.shared.balancer.backend(backend).stats.est;
        let us = est.quantile(0.95, &mut self.samples);
        if us == 0 {
            // No response yet: the estimators' starting round trip, not a cached guess.
            return Ctx::ms(self.shared.cfg.routing.default_rtt).max(1);
        }
        let ms = u64::from(us).div_ceil(1000) + 1;
        self.p95[backend] = (self.now, ms);
        ms
    }

    /// What the retry policy replays a request with this method and path after, and its
    /// per-try timeout in ms (0: none), if it covers it (a gRPC call's broken connection
    /// is its UNAVAILABLE).
    pub fn retry_terms(&self, method: &[u8], path: &[u8], grpc: bool) -> (RetryOn, u64) {
        match &self.shared.cfg.retry.policy {
            Some(p) if p.covers(method, path) => {
                let on = if grpc && p.on.has(RetryOn::UNAVAILABLE) {
                    p.on.with(RetryOn::RESET)
                } else {
                    p.on
                };
                (on, p.per_try.map_or(0, Ctx::ms))
            }
            _ => (RetryOn::default(), 0),
        }
    }

    /// How long retry number `ex.retries` of `ex` waits first, in ms: a random time up to
    /// the retry policy's backoff ceiling, if the policy covers `ex` and has a backoff
    /// (full jitter, so retries of many requests spread out); 0: none.
    pub fn backoff_ms(&mut self, ex: &Exchange) -> u64 {
        let policy = self.shared.cfg.retry.policy.as_ref();
        let Some(b) = policy
            .and_then(|p| p.backoff)
            .filter(|_| !ex.retry_on.is_empty())
        else {
            return 0;
        };
        let ceiling = Ctx::ms(b.ceiling(u32::from(ex.retries)));
        self.rng.below(ceiling + 1)
    }

    /// Accounts a failed attempt that is retried: the backend's stats and health only
    /// (the exchange itself goes on and is accounted when it ends).
    pub fn account_attempt(&mut self, lease: Lease, attempt: Instant) {
        let backend = lease.backend();
        self.shared
            .balancer
            .finish_lease(lease, attempt.elapsed(), false);
        self.shared
            .health
            .observe(&self.shared.balancer, backend, Outcome::Failure);
    }

    /// Records an answer the proxy made itself (no backend exchange).
    pub fn log_local(&mut self, mut rec: Record, canned: Canned) {
        self.hists
            .record(None, canned.status, 0, 0, canned.status >= 500);
        if let Some(log) = &self.log {
            rec.status = canned.status;
            rec.stamp();
            log.send(rec);
        }
    }
}

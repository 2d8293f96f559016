//! Availability: active health checks (heartbeats) with rise/fall hysteresis on their own
//! thread, passive outlier ejection fed by the workers, and the per-worker retry budget.
//!
//! Both kinds of check publish one `down` flag per backend (in the balancer's shared stats);
//! policies read only that flag. Everything shared is atomics: workers report outcomes
//! with a few relaxed loads and, only on failure, stores.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::balancer::Balancer;
use crate::config::{Check, HealthSettings, OutlierSettings};
use crate::worker::Shared;

/// How an exchange with a backend ended, for passive checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// A 5xx answer from the backend.
    ServerError,
    /// Connect failure, reset, timeout or malformed response.
    Failure,
}

/// One backend's health state, shared by the checker and the workers.
#[derive(Debug, Default)]
struct Cell {
    /// Active checks consider the server down.
    checked_down: AtomicBool,
    /// Health-clock ms until which the server is ejected (0: not ejected).
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    /// Consecutive failed exchanges (passive).
    failures: AtomicU32,
    /// Unix ms of the last up/down change.
    changed_at: AtomicU64,
    /// Health-clock ms when the server last became available (slow start).
    up_since: AtomicU64,
}

/// A backend's health as reported to the admin side.
#[derive(Debug, Clone, serde::Serialize)]
pub struct HealthView {
    pub up: bool,
    pub checked_down: bool,
    pub ejected: bool,
    pub ejections: u32,
    pub changed_at_unix_ms: u64,
    /// Share of full weight during slow start, 1.0 otherwise.
    pub ramp: f64,
}

/// Shared health state of every backend.
pub struct Health {
    pub settings: HealthSettings,
    pub outlier: OutlierSettings,
    cells: Box<[CachePadded<Cell>]>,
    epoch: Instant,
    debug: bool,
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Health {
    pub fn new(
        settings: HealthSettings,
        outlier: OutlierSettings,
        backends: usize,
        debug: bool,
    ) -> Health {
        let now = unix_ms();
        let cells = (0..backends)
            .map(|_| {
                let c = Cell::default();
                c.changed_at.store(now, Relaxed);
                CachePadded::new(c)
            })
            .collect();
        Health {
            settings,
            outlier,
            cells,
            epoch: Instant::now(),
            debug,
        }
    }

    /// Milliseconds on the health clock (never 0).
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Recomputes backend `i`'s `down` flag from both checks. Returns the new availability
    /// if it changed.
    fn publish(&self, bal: &Balancer, i: usize, now: u64) -> Option<bool> {
        let c = &self.cells[i];
        let ejected = c.ejected_until.load(Relaxed) > now;
        let down = c.checked_down.load(Relaxed) || ejected;
        let was_down = bal.backend(i).stats.down.swap(down, Relaxed);
        if was_down == down {
            return None;
        }
        c.changed_at.store(unix_ms(), Relaxed);
        if !down {
            c.up_since.store(now, Relaxed);
        }
        Some(!down)
    }

    /// Passive check: a worker finished an exchange with backend `i`.
    #[inline]
    pub fn observe(&self, bal: &Balancer, i: usize, outcome: Outcome) {
        let c = &self.cells[i];
        let failed = match outcome {
            Outcome::Ok => false,
            Outcome::ServerError => self.outlier.on_5xx,
            Outcome::Failure => true,
        };
        if !failed {
            // Avoid a shared write per request: only reset a non-zero count.
            if c.failures.load(Relaxed) != 0 {
                c.failures.store(0, Relaxed);
            }
            return;
        }
        let n = c.failures.fetch_add(1, Relaxed) + 1;
        if self.outlier.consecutive > 0 && n >= self.outlier.consecutive {
            self.eject(bal, i, n);
        }
    }

    fn eject(&self, bal: &Balancer, i: usize, failures: u32) {
        let now = self.now_ms();
        let c = &self.cells[i];
        if c.ejected_until.load(Relaxed) > now {
            return;
        }
        // Fail open: never eject the last server that can take traffic.
        let others = (0..bal.len()).any(|j| j != i && bal.backend(j).available());
        if !others {
            if c.failures.swap(0, Relaxed) != 0 {
                eprintln!(
                    "corelb: server {} failed {failures} times in a row but is the last available server: failing open, not ejecting",
                    bal.backend(i).name
                );
            }
            return;
        }
        let k = c.ejections.fetch_add(1, Relaxed) + 1;
        let time = (self.outlier.base * k).min(self.outlier.max);
        c.ejected_until
            .store(now + time.as_millis() as u64, Relaxed);
        c.failures.store(0, Relaxed);
        // Two workers may eject the last two servers at once: look again after the
        // store, and take this ejection back if it left nothing.
        if !(0..bal.len()).any(|j| j != i && bal.backend(j).available()) {
            c.ejected_until.store(0, Relaxed);
            c.ejections.fetch_sub(1, Relaxed);
            return;
        }
        if self.publish(bal, i, now) == Some(false) {
            eprintln!(
                "corelb: server {} ({}) ejected for {:?} after {failures} consecutive failures (ejection #{k})",
                bal.backend(i).name,
                bal.backend(i).addr,
                time
            );
        }
    }

    /// Ends expired ejections; returns when the next one ends (health-clock ms), if any.
    fn expire_ejections(&self, bal: &Balancer, now: u64) -> Option<u64> {
        let mut next = None;
        for i in 0..self.cells.len() {
            let until = self.cells[i].ejected_until.load(Relaxed);
            if until == 0 {
                continue;
            }
            if until <= now {
                self.cells[i].ejected_until.store(0, Relaxed);
                if self.publish(bal, i, now) == Some(true) {
                    eprintln!("corelb: server {} back from ejection", bal.backend(i).name);
                }
            } else {
                next = Some(next.map_or(until, |n: u64| n.min(until)));
            }
        }
        next
    }

    /// Slow start: the fraction of its full share backend `i` should get now.
    #[inline]
    pub fn ramp(&self, i: usize) -> f64 {
        let ss = self.settings.slow_start.as_millis() as u64;
        if ss == 0 {
            return 1.0;
        }
        let since = self.cells[i].up_since.load(Relaxed);
        if since == 0 {
            return 1.0;
        }
        let age = self.now_ms().saturating_sub(since);
        if age >= ss {
            1.0
        } else {
            (age as f64 / ss as f64).max(0.05)
        }
    }

    pub fn view(&self, bal: &Balancer, i: usize) -> HealthView {
        let c = &self.cells[i];
        HealthView {
            up: bal.backend(i).available(),
            checked_down: c.checked_down.load(Relaxed),
            ejected: c.ejected_until.load(Relaxed) > self.now_ms(),
            ejections: c.ejections.load(Relaxed),
            changed_at_unix_ms: c.changed_at.load(Relaxed),
            ramp: self.ramp(i),
        }
    }
}

/// Rise/fall hysteresis of one server's active checks (pure, for tests).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    pub up: bool,
    successes: u32,
    failures: u32,
}

impl Hysteresis {
    /// Servers start up, as HAProxy's do: traffic flows before the first check.
    pub fn new() -> Hysteresis {
        Hysteresis {
            up: true,
            successes: 0,
            failures: 0,
        }
    }

    /// Feeds one check result; returns `Some(new_state)` when the state flips.
    pub fn feed(&mut self, ok: bool, rise: u32, fall: u32) -> Option<bool> {
        if ok {
            self.successes += 1;
            self.failures = 0;
            if !self.up && self.successes >= rise {
                self.up = true;
                return Some(true);
            }
        } else {
            self.failures += 1;
            self.successes = 0;
            if self.up && self.failures >= fall {
                self.up = false;
                return Some(false);
            }
        }
        None
    }

    pub fn streak(&self) -> (u32, u32) {
        (self.successes, self.failures)
    }
}

impl Default for Hysteresis {
    fn default() -> Self {
        Self::new()
    }
}

/// A worker's retry budget: each request deposits `ratio` of a token, each retry spends
/// one; `min_per_sec` tokens also trickle in so a quiet worker can still retry. Per worker,
/// so no state is shared (Finagle's RetryBudget, without the sliding window).
#[derive(Debug, Clone)]
pub struct RetryBudget {
    tokens: f64,
    cap: f64,
    ratio: f64,
    min_per_sec: f64,
    last_ms: u64,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: f64) -> RetryBudget {
        let cap = (min_per_sec * 10.0).max(10.0);
        RetryBudget {
            tokens: min_per_sec.max(1.0),
            cap,
            ratio,
            min_per_sec,
            last_ms: 0,
        }
    }

    #[inline]
    pub fn deposit(&mut self) {
        self.tokens = (self.tokens + self.ratio).min(self.cap);
    }

    /// Takes one token if there is one; `now_ms` refills the trickle.
    pub fn withdraw(&mut self, now_ms: u64) -> bool {
        if self.last_ms != 0 {
            let dt = now_ms.saturating_sub(self.last_ms) as f64 / 1000.0;
            self.tokens = (self.tokens + dt * self.min_per_sec).min(self.cap);
        }
        self.last_ms = now_ms;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

// ---- the active checker -------------------------------------------------------------

const WAKE: Token = Token(usize::MAX);

enum ProbeState {
    Idle,
    Connecting(TcpStream),
    Writing(TcpStream, usize),
    Reading(TcpStream, Vec<u8>),
}

struct Probe {
    addr: SocketAddr,
    state: ProbeState,
    due: Instant,
    deadline: Instant,
    hyst: Hysteresis,
    last: &'static str,
    rng: u64,
}

/// The health-check thread.
pub struct Checker {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Checker {
    pub fn start(shared: Arc<Shared>) -> io::Result<Checker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corelb-health".into())
            .spawn(move || check_loop(poll, shared, s2))?;
        Ok(Checker {
            waker,
            stop,
            thread,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

fn xorshift(s: &mut u64) -> u64 {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    *s
}

/// `base` shifted by up to ±10%, so probes of many servers do not synchronise.
fn jittered(base: Duration, rng: &mut u64) -> Duration {
    let f = 0.9 + (xorshift(rng) % 2001) as f64 / 10_000.0;
    base.mul_f64(f)
}

fn check_loop(mut poll: Poll, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    let (health, bal) = (&shared.health, &shared.balancer);
    let s = health.settings.clone();
    let start = Instant::now();
    let mut probes: Vec<Probe> = (0..bal.len())
        .map(|i| {
            let mut rng =
                0x9E37_79B9_7F4A_7C15u64 ^ (i as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03);
            // First probes spread over the first interval.
            let offset = s
                .interval
                .mul_f64((xorshift(&mut rng) % 1000) as f64 / 1000.0);
            Probe {
                addr: bal.backend(i).addr,
                state: ProbeState::Idle,
                due: start + offset,
                deadline: start,
                hyst: Hysteresis::new(),
                last: "not checked yet",
                rng,
            }
        })
        .collect();
    let mut events = Events::with_capacity(64);
    let mut next_table = start + s.interval;
    let request_for = |addr: SocketAddr| {
        match &s.check {
        Check::Http { path, .. } => {
            format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: corelb-health\r\nConnection: close\r\n\r\n").into_bytes()
        }
        Check::Tcp => Vec::new(),
    }
    };
    while !stop.load(Relaxed) {
        let now = Instant::now();
        let mut wake_at = now + Duration::from_millis(500);
        if s.enabled {
            for p in &probes {
                let t = if matches!(p.state, ProbeState::Idle) {
                    p.due
                } else {
                    p.deadline
                };
                wake_at = wake_at.min(t);
            }
        }
        if let Some(until) = health.expire_ejections(bal, health.now_ms()) {
            let in_ms = until.saturating_sub(health.now_ms());
            wake_at = wake_at.min(now + Duration::from_millis(in_ms));
        }
        let timeout = wake_at.saturating_duration_since(now);
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        if !s.enabled {
            continue;
        }
        // Progress probes with events, then start due ones and time out late ones.
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let i = ev.token().0;
            let result = advance(&mut probes[i], &s.check, &request_for, poll.registry());
            if let Some((ok, why)) = result {
                finish(&mut probes[i], i, ok, why, health, bal, &s, poll.registry());
            }
        }
        let now = Instant::now();
        for (i, p) in probes.iter_mut().enumerate() {
            match p.state {
                ProbeState::Idle if now >= p.due => match TcpStream::connect(p.addr) {
                    Ok(mut sock) => {
                        if poll
                            .registry()
                            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
                            .is_ok()
                        {
                            p.state = ProbeState::Connecting(sock);
                            p.deadline = now + s.timeout;
                        }
                    }
                    Err(_) => finish(
                        p,
                        i,
                        false,
                        "connect failed",
                        health,
                        bal,
                        &s,
                        poll.registry(),
                    ),
                },
                ProbeState::Idle => {}
                _ if now >= p.deadline => {
                    finish(p, i, false, "timed out", health, bal, &s, poll.registry())
                }
                _ => {}
            }
        }
        if health.debug && now >= next_table {
            next_table = now + s.interval;
            print_table(&probes, health, bal);
        }
    }
}

/// Moves a probe along after a readiness event; `Some((ok, why))` when it has a result.
fn advance(
    p: &mut Probe,
    check: &Check,
    request_for: &dyn Fn(SocketAddr) -> Vec<u8>,
    _reg: &mio::Registry,
) -> Option<(bool, &'static str)> {
    loop {
        match std::mem::replace(&mut p.state, ProbeState::Idle) {
            ProbeState::Idle => return None,
            ProbeState::Connecting(sock) => {
                match sock.take_error() {
                    Ok(Some(_)) | Err(_) => return Some((false, "connection refused")),
                    Ok(None) => {}
                }
                match sock.peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        p.state = ProbeState::Connecting(sock);
                        return None;
                    }
                    Err(_) => return Some((false, "connection refused")),
                }
                match check {
                    Check::Tcp => return Some((true, "tcp connect ok")),
                    Check::Http { .. } => p.state = ProbeState::Writing(sock, 0),
                }
            }
            ProbeState::Writing(sock, off) => {
                let req = request_for(p.addr);
                match (&sock).write(&req[off..]) {
                    Ok(n) if off + n == req.len() => {
                        p.state = ProbeState::Reading(sock, Vec::new())
                    }
                    Ok(n) => {
                        p.state = ProbeState::Writing(sock, off + n);
                        return None;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.state = ProbeState::Writing(sock, off);
                        return None;
                    }
                    Err(_) => return Some((false, "reset while sending check")),
                }
            }
            ProbeState::Reading(mut sock, mut buf) => {
                let mut chunk = [0u8; 1024];
                match sock.read(&mut chunk) {
                    Ok(0) => return Some(status_result(&buf, check, true)),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        let r = status_result(&buf, check, false);
                        if r.1 != "incomplete" {
                            return Some(r);
                        }
                        if buf.len() > 16 * 1024 {
                            return Some((false, "check response head too large"));
                        }
                        p.state = ProbeState::Reading(sock, buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.state = ProbeState::Reading(sock, buf);
                        return None;
                    }
                    Err(_) => return Some((false, "reset while reading check")),
                }
            }
        }
    }
}

fn status_result(buf: &[u8], check: &Check, eof: bool) -> (bool, &'static str) {
    let Check::Http { expect, .. } = check else {
        return (true, "ok");
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(_) if r.code.is_some() => {
            if r.code == Some(*expect) {
                (true, "http status ok")
            } else {
                (false, "unexpected http status")
            }
        }
        Ok(_) if !eof => (false, "incomplete"),
        _ => (false, "malformed http response"),
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    p: &mut Probe,
    i: usize,
    ok: bool,
    why: &'static str,
    health: &Health,
    bal: &Balancer,
    s: &HealthSettings,
    reg: &mio::Registry,
) {
    let mut old = std::mem::replace(&mut p.state, ProbeState::Idle);
    match &mut old {
        ProbeState::Connecting(sock)
        | ProbeState::Writing(sock, _)
        | ProbeState::Reading(sock, _) => {
            let _ = reg.deregister(sock);
        }
        ProbeState::Idle => {}
    }
    drop(old);
    p.last = why;
    p.due = Instant::now() + jittered(s.interval, &mut p.rng);
    if let Some(up) = p.hyst.feed(ok, s.rise, s.fall) {
        let cell = &health.cells[i];
        cell.checked_down.store(!up, Relaxed);
        if up {
            // Recovered by active checks: an ejection from while it was dead ends too (as
            // Envoy's outlier detection does on a successful active check), and latency
            // estimates from before the outage are forgotten, so it is probed at once.
            cell.ejected_until.store(0, Relaxed);
            cell.failures.store(0, Relaxed);
            bal.backend(i).stats.est.forget();
        }
        let changed = health.publish(bal, i, health.now_ms());
        let b = bal.backend(i);
        let verb = if up { "UP" } else { "DOWN" };
        let (succ, fail) = p.hyst.streak();
        let streak = if up {
            format!("{succ} consecutive successful checks")
        } else {
            format!("{fail} consecutive failed checks ({why})")
        };
        if health.debug || changed.is_some() {
            eprintln!(
                "corelb: server {} ({}, priority {}) is {verb}: {streak}",
                b.name, b.addr, b.priority
            );
        }
    }
}

fn print_table(probes: &[Probe], health: &Health, bal: &Balancer) {
    let mut out = String::from("corelb: heartbeat status\n  server           address                priority  state     last check\n");
    for (i, p) in probes.iter().enumerate() {
        let b = bal.backend(i);
        let v = health.view(bal, i);
        let state = if v.ejected {
            "EJECTED"
        } else if v.up {
            "UP"
        } else {
            "DOWN"
        };
        out.push_str(&format!(
            "  {:<16} {:<22} {:>8}  {:<9} {}\n",
            b.name,
            b.addr.to_string(),
            b.priority,
            state,
            p.last
        ));
    }
    eprint!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hysteresis_needs_fall_failures_and_rise_successes() {
        let mut h = Hysteresis::new();
        assert_eq!(h.feed(false, 2, 3), None);
        assert_eq!(h.feed(false, 2, 3), None);
        assert_eq!(
            h.feed(true, 2, 3),
            None,
            "a success resets the failure streak"
        );
        assert_eq!(h.feed(false, 2, 3), None);
        assert_eq!(h.feed(false, 2, 3), None);
        assert_eq!(h.feed(false, 2, 3), Some(false));
        assert_eq!(h.feed(false, 2, 3), None, "already down");
        assert_eq!(h.feed(true, 2, 3), None);
        assert_eq!(
            h.feed(false, 2, 3),
            None,
            "a failure resets the success streak"
        );
        assert_eq!(h.feed(true, 2, 3), None);
        assert_eq!(h.feed(true, 2, 3), Some(true));
    }

    #[test]
    fn flapping_does_not_flip_the_state() {
        let mut h = Hysteresis::new();
        for i in 0..100 {
            assert_eq!(h.feed(i % 2 == 0, 2, 3), None);
        }
        assert!(h.up);
    }

    #[test]
    fn retry_budget_limits_retries_to_a_share_of_requests() {
        let mut b = RetryBudget::new(0.2, 0.0);
        let mut allowed = 0;
        for _ in 0..1000 {
            b.deposit();
            if b.withdraw(1) {
                allowed += 1;
            }
        }
        // 20% of 1000, plus the initial token.
        assert!((200..=202).contains(&allowed), "{allowed}");
        // With no deposits, the trickle still allows min_per_sec.
        let mut b = RetryBudget::new(0.2, 10.0);
        while b.withdraw(1000) {}
        assert!(!b.withdraw(1000));
        assert!(b.withdraw(1100), "100 ms at 10/s refills one token");
    }

    #[test]
    fn check_specs() {
        assert_eq!(Check::parse("tcp"), Some(Check::Tcp));
        assert_eq!(
            Check::parse("http"),
            Some(Check::Http {
                path: "/health".into(),
                expect: 200
            })
        );
        assert_eq!(
            Check::parse("http:/ping"),
            Some(Check::Http {
                path: "/ping".into(),
                expect: 200
            })
        );
        assert_eq!(
            Check::parse("http:/ping:204"),
            Some(Check::Http {
                path: "/ping".into(),
                expect: 204
            })
        );
        assert_eq!(Check::parse("http:ping"), None);
        assert_eq!(Check::parse("udp"), None);
    }

    #[test]
    fn status_results() {
        let c = Check::Http {
            path: "/".into(),
            expect: 200,
        };
        assert!(status_result(b"HTTP/1.1 200 OK\r\n", &c, false).0);
        assert!(!status_result(b"HTTP/1.1 503 X\r\n", &c, false).0);
        assert_eq!(status_result(b"HTTP/1.1", &c, false).1, "incomplete");
        assert!(!status_result(b"garbage!", &c, true).0);
    }
}

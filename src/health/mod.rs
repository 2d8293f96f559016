//! Availability: each backend's health state in atomics, passive outlier ejection fed by
//! the workers, slow start, and the rise/fall hysteresis; `checker` is the heartbeat
//! thread that runs the active checks, `grpc` the gRPC health call it makes (sans-IO).
//!
//! Each server has its own effective check ([`HealthSettings::check_for`]): the one chosen,
//! else TCP for HTTP/1.1 servers and the gRPC health check for h2c servers.
//!
//! Both kinds of check publish one `down` flag per backend (in the balancer's shared stats);
//! policies read only that flag. Everything shared is atomics: workers report outcomes
//! with a few relaxed loads and, only on failure, stores.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crossbeam_utils::CachePadded;

pub mod checker;
pub mod grpc;

use crate::balancer::{Balancer, SlotState};
use crate::config::{Check, HealthSettings, OutlierSettings};

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
    /// The last active check's reason, as an index into [`REASONS`].
    last: AtomicU8,
}

/// The reasons the TCP and HTTP checks give, shared with the admin side by index (the
/// checker writes one byte per check, see [`reason_index`]). The first is the state before
/// any check; the gRPC check's reasons are `grpc::REASONS` and `grpc::status_reason`'s.
pub const REASONS: &[&str] = &[
    "not checked yet",
    "tcp connect ok",
    "http status ok",
    "connect failed",
    "connection refused",
    "timed out",
    "reset while sending check",
    "reset while reading check",
    "check response head too large",
    "unexpected http status",
    "malformed http response",
    "tls handshake ok",
    "tls handshake failed",
    "tls certificate refused",
    "tls settings unusable",
    "other",
];

/// Where the gRPC check's reasons start in the one-byte index: its fixed reasons, then
/// one per grpc-status (0..=16, then out of range).
const GRPC_REASONS: usize = 64;
const GRPC_STATUSES: usize = 128;

/// The reason a one-byte index names (see [`reason_index`]).
fn reason(index: u8) -> &'static str {
    let i = index as usize;
    if i >= GRPC_STATUSES {
        grpc::status_reason((i - GRPC_STATUSES) as u32)
    } else if i >= GRPC_REASONS {
        grpc::REASONS
            .get(i - GRPC_REASONS)
            .copied()
            .unwrap_or("other")
    } else {
        REASONS.get(i).copied().unwrap_or("other")
    }
}

/// The one-byte index of `why` among all the checks' reasons (`other` when missing;
/// checked by a test).
fn reason_index(why: &str) -> u8 {
    let found = REASONS
        .iter()
        .position(|r| *r == why)
        .or_else(|| {
            let k = grpc::REASONS.iter().position(|r| *r == why)?;
            Some(GRPC_REASONS + k)
        })
        .or_else(|| {
            let code = (0..=17).find(|&c| grpc::status_reason(c) == why)?;
            Some(GRPC_STATUSES + code as usize)
        })
        .or_else(|| REASONS.iter().position(|r| *r == "other"));
    found.unwrap_or(0) as u8
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
    /// The active check's kind: `tcp`, `http`, `grpc`, or `off`.
    pub check: &'static str,
    /// What the last active check found (`grpc SERVING`, `grpc NOT_SERVING`, `timed
    /// out`, ...).
    pub last_check: &'static str,
}

impl HealthView {
    /// The one state shown for a server in `/stats`, `/servers`, `/metrics` and the
    /// dashboard: `drain` (leaving, by admin or reload) before `ejected` (taken out by
    /// passive checks, even while its active checks pass) before `up` and `down`.
    pub fn state(&self, slot: SlotState) -> &'static str {
        if slot != SlotState::Active {
            "drain"
        } else if self.ejected {
            "ejected"
        } else if self.up {
            "up"
        } else {
            "down"
        }
    }
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
    /// The health of the balancer's `capacity` backend slots; each server is checked by
    /// its protocol's check unless `settings` chose one for all.
    pub fn new(
        settings: HealthSettings,
        outlier: OutlierSettings,
        capacity: usize,
        debug: bool,
    ) -> Health {
        let now = unix_ms();
        let cells = (0..capacity)
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

    /// Backend `i`'s effective active check (its protocol's, unless one was chosen).
    pub fn check(&self, bal: &Balancer, i: usize) -> Check {
        self.settings.check_for(bal.backend(i).protocol)
    }

    /// What a gRPC call that ended with grpc-status `code` means for passive ejection:
    /// [`Outcome::Failure`] for the configured statuses (UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// INTERNAL by default), else [`Outcome::Ok`]. Pass it to [`Health::observe`].
    #[inline]
    pub fn grpc_outcome(&self, code: u32) -> Outcome {
        if self.outlier.grpc_status_is_failure(code) {
            Outcome::Failure
        } else {
            Outcome::Ok
        }
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
        let others = bal
            .members()
            .iter()
            .any(|j| j != i && bal.backend(j).available());
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
        if !bal
            .members()
            .iter()
            .any(|j| j != i && bal.backend(j).available())
        {
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
            check: if self.settings.enabled {
                self.check(bal, i).kind()
            } else {
                "off"
            },
            last_check: reason(c.last.load(Relaxed)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_displayed_state_with_drain_then_ejected_first() {
        let v = |up, ejected| HealthView {
            up,
            checked_down: !up,
            ejected,
            ejections: 0,
            changed_at_unix_ms: 0,
            ramp: 1.0,
            check: "tcp",
            last_check: "ok",
        };
        // /stats once said "up" here while /servers said "ejected".
        assert_eq!(v(true, true).state(SlotState::Active), "ejected");
        assert_eq!(v(false, true).state(SlotState::Active), "ejected");
        assert_eq!(v(true, false).state(SlotState::Active), "up");
        assert_eq!(v(false, false).state(SlotState::Active), "down");
        for s in [SlotState::Drain, SlotState::Retiring] {
            assert_eq!(v(true, true).state(s), "drain");
        }
    }

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
    fn reasons_are_found_by_name() {
        assert_eq!(reason(reason_index("not checked yet")), "not checked yet");
        assert_eq!(reason(reason_index(grpc::R_GOAWAY)), grpc::R_GOAWAY);
        assert!(REASONS.len() <= GRPC_REASONS);
        assert!(GRPC_REASONS + grpc::REASONS.len() <= GRPC_STATUSES);
        assert_eq!(reason(reason_index("no such reason")), "other");
        assert_eq!(reason(reason_index("")), "other");
        for code in 0..=17 {
            let r = grpc::status_reason(code);
            assert_eq!(reason(reason_index(r)), r);
        }
        for r in grpc::REASONS.iter().chain(REASONS) {
            assert_eq!(reason(reason_index(r)), *r);
        }
    }

    #[test]
    fn grpc_statuses_map_to_outcomes_and_checks_follow_protocols() {
        use crate::config::{BackendSpec, GrpcStatusSet, Protocol};
        let spec = |protocol| BackendSpec {
            name: "x".into(),
            address: "127.0.0.1".into(),
            port: 1,
            priority: 0,
            load: 1.0,
            addr: "127.0.0.1:1".parse().unwrap(),
            protocol,
            tls: None,
        };
        let servers = [spec(Protocol::Http1), spec(Protocol::H2c)];
        let bal = Balancer::with_params(
            &servers,
            crate::config::Mode::RoundRobin,
            Default::default(),
        );
        let h = Health::new(
            HealthSettings::default(),
            OutlierSettings::default(),
            2,
            false,
        );
        assert_eq!(h.check(&bal, 0), Check::Tcp);
        assert_eq!(h.check(&bal, 1), Check::Grpc { service: "".into() });
        for code in [8, 13, 14] {
            assert_eq!(h.grpc_outcome(code), Outcome::Failure, "{code}");
        }
        for code in [0, 1, 2, 4, 5, 12, 16, 99, u32::MAX] {
            assert_eq!(h.grpc_outcome(code), Outcome::Ok, "{code}");
        }
        let chosen = HealthSettings {
            check: Some(Check::Http {
                path: "/h".into(),
                expect: 200,
            }),
            ..HealthSettings::default()
        };
        let outlier = OutlierSettings {
            grpc_statuses: GrpcStatusSet::of(&[4]).unwrap(),
            ..OutlierSettings::default()
        };
        let h = Health::new(chosen, outlier, 2, false);
        assert_eq!(
            h.check(&bal, 1).kind(),
            "http",
            "a chosen check applies to every server"
        );
        assert_eq!(h.grpc_outcome(4), Outcome::Failure);
        assert_eq!(h.grpc_outcome(14), Outcome::Ok);
    }

    #[test]
    fn flapping_does_not_flip_the_state() {
        let mut h = Hysteresis::new();
        for i in 0..100 {
            assert_eq!(h.feed(i % 2 == 0, 2, 3), None);
        }
        assert!(h.up);
    }
}

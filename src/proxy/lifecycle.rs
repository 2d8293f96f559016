//! An exchange's course, written once for every protocol pair (an HTTP/1.1 client or an
//! HTTP/2 stream, to an HTTP/1.1 server or an h2c stream): the drivers (`end.rs` for
//! HTTP/1.1 clients, `h2/` for HTTP/2 streams) do the I/O and call these for the rest.
//!
//! - deadlines: an attempt's upstream deadline bounded by its per-try timeout
//!   ([`upstream_deadline`]), and what an expiry means ([`expiry`]);
//! - retry: what the exchange learns and counts when an attempt is retried
//!   ([`Ctx::retried`]); the decision itself is `Ctx::retry_target` (`decide::replay`);
//! - fail: the status a failure answers with, and its grpc-status ([`Answer`]);
//! - finish and early ends: how the ending counts for the server, the call table and the
//!   log ([`Ctx::finished`], [`Ctx::outcome`], [`Ctx::account_end`],
//!   [`Ctx::account_early_end`], [`Ctx::unreachable`]), and a hedge that takes an
//!   attempt's place ([`Ctx::hedge_promoted`]).
//!
//! Every attempt holds a `balancer::Lease` (`Exchange::lease`); only these functions end
//! one, so a pick is finished or given back exactly once.

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::balancer::Lease;
use crate::debug;
use crate::health::Outcome;

use super::context::Ctx;
use super::decide::{Again, Blame, Failure};
use super::exchange::Exchange;
use super::grpc;

/// An attempt's upstream deadline `at` (worker-clock ms, 0: none), bounded by its per-try
/// timeout once `sent` (the whole request went out; the timeout starts then, once).
pub(super) fn upstream_deadline(ex: &mut Exchange, sent: bool, at: u64, now: u64) -> u64 {
    if !sent {
        return at;
    }
    match (ex.request_sent(now), at) {
        (0, at) => at,
        (by, 0) => by,
        (by, at) => at.min(by),
    }
}

/// What an attempt's upstream deadline passing at `now` means: the connect took too long,
/// the per-try timeout ran out before the response head, or the server went quiet.
pub(super) fn expiry(ex: &Exchange, connecting: bool, now: u64) -> Failure {
    if connecting {
        Failure::ConnectTimeout
    } else if ex.per_try_over(now) {
        Failure::PerTryTimeout
    } else {
        Failure::Timeout
    }
}

/// How a failed attempt is answered when it is not retried, in HTTP and gRPC terms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Answer {
    /// 502, or 504 after a timeout.
    pub status: u16,
    /// The grpc-status a gRPC call gets instead (UNAVAILABLE, DEADLINE_EXCEEDED).
    pub grpc: u32,
    pub reason: &'static str,
}

impl Answer {
    pub fn to(why: Failure) -> Answer {
        let status = why.canned().status;
        Answer {
            status,
            grpc: grpc::for_http(status),
            reason: why.reason(),
        }
    }
}

/// A gRPC call's facts for the call table: its method (the `:path`) and the grpc-status
/// it ended with, if one came or corelb answered one.
#[derive(Clone, Copy)]
pub(super) struct Call<'a> {
    pub method: &'a [u8],
    pub status: Option<u32>,
}

/// Why a hedge takes the place of the attempt it raced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Promote {
    /// Its response came first.
    Won,
    /// The other attempt failed (or answered a status that does not win).
    Failed,
    /// Neither answered within another delay: the older gives way to a new hedge.
    Superseded,
}

impl Ctx {
    /// After `why` ended the attempt of `ex` and the driver detached it, the next goes
    /// to the server `next` leases, or with `None` back to the same one under the
    /// attempt's own lease, as `again` says (`Ctx::retry_target`). What the exchange
    /// learns, the counters and the log line are the same for every pair. Returns the
    /// next attempt's lease, and how long the retry policy's backoff makes it wait (ms;
    /// 0: it starts now).
    pub fn retried(
        &mut self,
        ex: &mut Exchange,
        next: Option<Lease>,
        why: Failure,
        again: Again,
    ) -> (Lease, u64) {
        let old = ex.lease.take().expect("a failed attempt holds its lease");
        let old_backend = old.backend();
        let next = match next {
            Some(next) => {
                self.account_attempt(old, ex.attempt);
                next
            }
            // Back to the same server: the attempt goes on under the same pick.
            None => old,
        };
        self.bufs.release(&mut ex.resp_buf);
        self.bufs.release(&mut ex.out);
        ex.up = None;
        ex.retries += 1;
        ex.stale_retried |= again == Again::StaleConnection;
        ex.tried.insert(old_backend);
        self.shared.counters.retries.fetch_add(1, Relaxed);
        let wait = if again.same_server() {
            0
        } else {
            self.backoff_ms(ex)
        };
        let names = &self.shared.balancer;
        debug!(
            "worker {}: {} on {}: retrying on {}{}{}",
            self.id,
            why.reason(),
            names.backend(old_backend).name,
            names.backend(next.backend()).name,
            match again {
                Again::Elsewhere => "",
                Again::StaleConnection => " (stale keep-alive connection)",
                Again::Refused => " (on another connection)",
            },
            if wait > 0 {
                format!(" in {wait} ms")
            } else {
                String::new()
            }
        );
        (next, wait)
    }

    /// How an exchange that completed with `status` counts for its server: a 5xx is a
    /// server error; a gRPC status other than 0 is an error for its stats, and a failure
    /// for passive health when it is one of `outlierDetection.grpcStatuses`
    /// (UNAVAILABLE, RESOURCE_EXHAUSTED, INTERNAL by default).
    pub fn outcome(&self, status: u16, grpc_status: Option<u32>) -> Outcome {
        if status >= 500 {
            return Outcome::ServerError;
        }
        match grpc_status {
            Some(grpc::OK) | None => Outcome::Ok,
            Some(code) => match self.shared.health.grpc_outcome(code) {
                Outcome::Ok => Outcome::ServerError,
                failure => failure,
            },
        }
    }

    /// Accounts the ending of `ex` with `backend` (`Ctx::account`); a gRPC call also in
    /// the call table and the log's grpc_status column: its grpc-status, or, for an
    /// answer without one, the status a 5xx means in gRPC terms (else UNKNOWN).
    pub fn account_end(
        &mut self,
        lease: Lease,
        ex: &mut Exchange,
        status: u16,
        outcome: Outcome,
        call: Option<Call>,
    ) {
        if let Some(call) = call {
            let code = call.status.unwrap_or(if status >= 500 {
                grpc::for_http(status)
            } else {
                grpc::UNKNOWN
            });
            ex.rec.set_grpc_status(code);
            self.account_grpc(lease.backend(), call.method, code);
        }
        self.account(lease, ex, status, outcome);
    }

    /// Accounts `ex`, whose attempt completed: with its response's status and, for a
    /// gRPC call, its grpc-status (`Ctx::outcome`), ending the attempt's lease.
    pub fn finished(&mut self, ex: &mut Exchange, call: Option<Call>) {
        let lease = ex.lease.take().expect("a finished attempt holds its lease");
        let outcome = self.outcome(ex.status, call.and_then(|c| c.status));
        let status = ex.status;
        self.account_end(lease, ex, status, outcome, call);
    }

    /// Accounts `ex`, whose attempt on `backend` ended before it completed. The server's
    /// fault (`Blame::Backend`) counts against it: `status` (the answer sent), else the
    /// status of a response broken off, else 502. The client's (`Blame::Client`) counts
    /// for neither side: a client abort, 499 unless `status` says otherwise, and for a
    /// gRPC call CANCELLED.
    pub fn account_early_end(
        &mut self,
        lease: Lease,
        ex: &mut Exchange,
        status: u16,
        blame: Blame,
        call: Option<Call>,
    ) {
        match blame {
            Blame::Backend => {
                let status = [status, ex.status, 502].into_iter().find(|&s| s != 0);
                let status = status.unwrap_or(502);
                self.account_end(lease, ex, status, Outcome::Failure, call);
            }
            Blame::Client => {
                if let Some(call) = call {
                    ex.rec.set_grpc_status(grpc::CANCELLED);
                    self.account_grpc(lease.backend(), call.method, grpc::CANCELLED);
                }
                let status = if status == 0 { 499 } else { status };
                self.account_client_abort(lease, ex, status);
            }
        }
    }

    /// No connection to `backend` could be had for `ex`'s attempt (no descriptor, no
    /// route): the pick is finished as a failure with no latency sample, and the 502 the
    /// client gets is logged as corelb's own answer, naming the server.
    pub fn unreachable(&mut self, lease: Lease, ex: &mut Exchange) {
        let backend = lease.backend();
        self.shared
            .balancer
            .finish_lease(lease, std::time::Duration::ZERO, false);
        ex.up = None;
        let mut rec = ex.rec;
        rec.backend = Some(backend as u16);
        self.log_local(rec, crate::http::BAD_GATEWAY);
    }

    /// A hedge took the place of the attempt that held `old` (begun at `began`), whose
    /// connection or stream the driver let go: a failed attempt is a failure sample; one
    /// that only lost the race gives its server back with no sample and counts in
    /// `hedges_cancelled`. A won race ends the hedging.
    pub fn hedge_promoted(&mut self, ex: &mut Exchange, old: Lease, began: Instant, why: Promote) {
        match why {
            Promote::Failed => self.account_attempt(old, began),
            Promote::Won | Promote::Superseded => {
                self.shared.balancer.cancel_lease(old);
                self.shared.counters.hedges_cancelled.fetch_add(1, Relaxed);
            }
        }
        if why == Promote::Won {
            ex.hedge.at = 0;
            self.shared.counters.hedge_wins.fetch_add(1, Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufPool;

    use super::super::exchange::Resp;

    fn exchange(per_try: u64) -> Exchange {
        let mut ex = Exchange::test_get(&mut BufPool::new(4));
        ex.per_try = per_try;
        ex
    }

    #[test]
    fn the_per_try_timeout_starts_once_the_request_is_sent_and_bounds_the_deadline() {
        let mut ex = exchange(200);
        assert_eq!(
            upstream_deadline(&mut ex, false, 5000, 1000),
            5000,
            "not sent yet"
        );
        assert_eq!(upstream_deadline(&mut ex, true, 5000, 1000), 1200);
        // It started once: a later step does not move it.
        assert_eq!(upstream_deadline(&mut ex, true, 5100, 1100), 1200);
        assert_eq!(
            upstream_deadline(&mut ex, true, 0, 1100),
            1200,
            "no other deadline"
        );
        let mut none = exchange(0);
        assert_eq!(upstream_deadline(&mut none, true, 5000, 1000), 5000);
    }

    #[test]
    fn an_expiry_is_a_connect_timeout_a_per_try_timeout_or_a_timeout() {
        let mut ex = exchange(200);
        upstream_deadline(&mut ex, true, 5000, 1000);
        assert_eq!(expiry(&ex, true, 1300), Failure::ConnectTimeout);
        assert_eq!(expiry(&ex, false, 1300), Failure::PerTryTimeout);
        assert_eq!(
            expiry(&ex, false, 1100),
            Failure::Timeout,
            "per-try not over"
        );
        ex.resp = Resp::Done;
        assert_eq!(expiry(&ex, false, 1300), Failure::Timeout, "the head came");
    }

    #[test]
    fn a_failure_answers_in_http_and_grpc_terms() {
        let t = Answer::to(Failure::Timeout);
        assert_eq!((t.status, t.grpc), (504, grpc::DEADLINE_EXCEEDED));
        let r = Answer::to(Failure::Reset);
        assert_eq!((r.status, r.grpc), (502, grpc::UNAVAILABLE));
        assert_eq!(Answer::to(Failure::PerTryTimeout).status, 504);
    }
}

//! An HTTP/2 stream's attempts, whichever kind of server carries them: a stream attached
//! to a connection (an HTTP/1.1 one of its own, or a stream of a shared h2c one) and
//! detached from it; and one step of the stream: a hedge
//! racing the attempt goes first; then the leg takes its turn (`h1_leg.rs` on an HTTP/1.1
//! connection of its own, `h2c_leg.rs` on a stream of a shared h2c connection); then what
//! the turn found is handled the same way for both: a hedge planned or called off, the
//! backend's deadline re-armed, the stream finished, retried, failed, or a status the
//! retry policy would replay forwarded as the server gave it.

use std::sync::atomic::Ordering::Relaxed;

use crate::balancer::Lease;
use crate::config::Protocol;
use crate::debug;
use crate::h2::ErrorCode;
use crate::health::Outcome;

use super::super::conns::{Owner, Proxy};
use super::super::context::Ctx;
use super::super::decide::{Blame, Failure};
use super::super::grpc;
use super::super::h2_session::{H2Session, H2Stream};
use super::super::lifecycle::{self, Answer};

/// What one turn of a stream's leg found.
pub(super) enum LegStep {
    /// (something moved)
    Running(bool),
    /// The whole response went to the client.
    Done,
    /// The h2c connection had no room for the stream after all: put it on another one.
    NoRoom,
    /// The attempt failed.
    Failed(Failure),
    /// A 502/503/504 head a retry policy replays (held by the leg).
    Status(u16),
    /// A Trailers-Only status the hedging policy calls non-fatal, while another attempt
    /// runs or may still go out (kept in the inbox).
    NonFatal,
}

impl Proxy {
    /// Puts stream `i` on a connection to `backend` (HTTP/1.1 or h2c, as the backend
    /// speaks). False if none could be made: the stream was answered 502 (or UNAVAILABLE)
    /// and is gone.
    pub(super) fn h2_attach(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
        lease: Lease,
        fresh: bool,
    ) -> bool {
        let backend = lease.backend();
        let h2c = self.ctx.shared.balancer.backend(backend).protocol == Protocol::H2c;
        let st = &mut s.streams[i];
        if !h2c {
            self.h2_request_head(st, &s.from);
        }
        let got = if h2c {
            self.mux_for(backend, ci, st.id, fresh)
        } else {
            let owner = Owner::Stream {
                client: ci,
                id: st.id,
            };
            // The stream's own deadline runs on a pooled connection, not the connection's.
            self.connection_to(backend, owner, fresh, false)
        };
        match got {
            Some((ui, reused)) => {
                let st = &mut s.streams[i];
                st.due = true;
                st.leg_for(h2c);
                st.ex.begin_attempt(ui, reused, lease);
                st.restart();
                // The backend's deadline is the stream's (`step.rs`), once connected: an
                // h2c connection's connect is its own, an HTTP/1.1 one's on its timer.
                st.deadline = if h2c {
                    self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.connect)
                } else {
                    0
                };
                true
            }
            None => {
                let mut st = s.streams.swap_remove(i);
                self.h2_end_hedging(ci, &mut st);
                self.ctx.unreachable(lease, &mut st.ex);
                if s.conn.can_send(st.id) {
                    s.conn.release(st.id, st.unreleased);
                }
                reply(s, st.id, st.grpc, 502, st.req_end, "backend unreachable");
                st.recycle(&mut self.ctx, &mut s.conn);
                false
            }
        }
    }

    /// Detaches stream `st` from its upstream (closing an HTTP/1.1 connection, leaving an
    /// h2c one with `code`); returns the attempt's lease, for the caller to account the
    /// exchange with (`None` if not attached).
    pub(super) fn h2_drop_leg(
        &mut self,
        ci: usize,
        st: &mut H2Stream,
        code: ErrorCode,
    ) -> Option<Lease> {
        if let Some(lease) = st.pending.take() {
            // Never attached (or a retry backing off): only the pick is given back; the
            // server never saw this attempt.
            st.backoff_at = 0;
            self.ctx.shared.balancer.cancel_lease(lease);
            return None;
        }
        self.h2_end_hedging(ci, st);
        let ui = st.ex.up.take()?;
        if st.on_h2c() {
            self.mux_detach(ui, ci, st.id, code);
        } else {
            self.remove_upstream(ui);
        }
        st.ex.lease.take()
    }

    /// One step of stream `i`: returns (something moved, the stream is gone).
    #[inline]
    pub(super) fn h2_stream_step(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
    ) -> (bool, bool) {
        if s.streams[i].pending.is_some() {
            return (false, false);
        }
        let h2c = s.streams[i].on_h2c();
        // A hedge racing this attempt goes first: its answer may make it the attempt.
        let hedged = if h2c {
            self.h2_hedge_step(ci, s, i)
        } else {
            self.h2_h1_hedge_step(ci, &mut s.streams[i])
        };
        let turn = if h2c {
            self.h2_leg(ci, s, i)
        } else {
            self.h2_h1_turn(s, i)
        };
        if let LegStep::Running(_) | LegStep::Done = turn {
            let st = &mut s.streams[i];
            // An HTTP/1.1 answer wins with its first bytes, an h2c one with its head.
            let answered = if h2c { st.head_sent } else { st.ex.got_bytes };
            if answered && st.ex.hedge.up.is_some() {
                // This attempt's answer won the race: the hedge is cancelled.
                let c = &self.ctx.shared.counters;
                c.hedges_cancelled.fetch_add(1, Relaxed);
                self.h2_end_hedging(ci, st);
            } else if !st.alt.planned {
                self.h2_plan_hedge(st);
            }
        }
        match turn {
            LegStep::Running(moved) => {
                self.h2_arm_backend(s, i, moved);
                (moved || hedged, false)
            }
            LegStep::Done => {
                self.h2_finish(ci, s, i);
                (true, true)
            }
            LegStep::NoRoom => {
                let st = &mut s.streams[i];
                let ui = st.ex.up.take().expect("an attempt runs");
                self.mux_detach(ui, ci, st.id, ErrorCode::CANCEL);
                // The same pick, on another connection.
                let lease = st.ex.lease.take().expect("an attempt holds its lease");
                (true, !self.h2_attach(ci, s, i, lease, false))
            }
            LegStep::Failed(_) | LegStep::Status(_)
                if self.h2_hedge_takes_over(ci, &mut s.streams[i]) =>
            {
                (true, false)
            }
            LegStep::Failed(why) => self.h2_leg_fail(ci, s, i, why),
            LegStep::NonFatal => self.h2_non_fatal(ci, s, i),
            LegStep::Status(code) => {
                if let Some(attached) = self.h2_retry(ci, s, i, Failure::Status(code)) {
                    return (true, !attached);
                }
                // No replay after all: forwarded as the server gave it.
                s.streams[i].final_answer = true;
                self.h2_stream_step(ci, s, i)
            }
        }
    }

    /// Stream `i` after a turn that did not end it: the backend's deadline (the stream's
    /// own, on the session's timer, whichever kind of server) runs while corelb waits on
    /// the backend, not on the client. An HTTP/1.1 connection still connecting is bounded
    /// by its connect timer instead.
    #[inline]
    fn h2_arm_backend(&mut self, s: &mut H2Session, i: usize, moved: bool) {
        let st = &mut s.streams[i];
        if !st.on_h2c() && self.ups[st.ex.on()].is_connecting() {
            return;
        }
        let on_client = st.waits_on_client(&s.conn) || st.ex.ready > 0;
        if on_client {
            st.deadline = 0;
        } else if moved || st.deadline == 0 {
            let t = &self.ctx.shared.cfg.timeouts;
            // A WebSocket tunnel's quiet is bounded by the tunnel timeout.
            let idle = if st.websocket.is_some() && st.head_sent {
                t.tunnel
            } else {
                t.upstream
            };
            // A per-try timeout bounds the wait for the response head, from when the whole
            // request went out.
            let sent = st.req_sent && !st.head_sent;
            let (at, now) = (self.ctx.now + Ctx::ms(idle), self.ctx.now);
            st.deadline = lifecycle::upstream_deadline(&mut st.ex, sent, at, now);
        }
    }

    /// Stream `i`'s whole response went out: accounted, and its upstream given back (an
    /// HTTP/1.1 connection pooled or closed; an h2c stream leaves its connection).
    fn h2_finish(&mut self, ci: usize, s: &mut H2Session, i: usize) {
        let mut st = s.streams.swap_remove(i);
        self.h2_end_hedging(ci, &mut st);
        let ui = st
            .ex
            .up
            .take()
            .expect("a completed stream ran on a connection");
        let (ex, call) = st.for_accounting();
        self.ctx.finished(ex, call);
        if st.on_h2c() {
            let code = if st.req_sent {
                ErrorCode::NO_ERROR
            } else {
                ErrorCode::CANCEL
            };
            self.mux_detach(ui, ci, st.id, code);
        } else {
            self.h2_h1_done(&st, ui);
        }
        if st.unreleased > 0 {
            s.conn.release(st.id, st.unreleased);
        }
        if !st.req_end {
            // The response is complete before the request: the client may stop sending.
            s.conn.reset(st.id, ErrorCode::NO_ERROR);
        }
        st.recycle(&mut self.ctx, &mut s.conn);
    }

    /// The attempt of stream `i` failed: a Trailers-Only UNAVAILABLE from an h2c server
    /// is tried elsewhere if allowed, else forwarded as the server gave it (its message
    /// and details); anything else is [`Proxy::h2_fail`]'s.
    fn h2_leg_fail(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
        why: Failure,
    ) -> (bool, bool) {
        let st = &mut s.streams[i];
        let answered = st.on_h2c()
            && self.ups[st.ex.on()]
                .mux()
                .and_then(|m| m.stream(ci, st.id).map(|k| m.streams[k].head.is_some()))
                .unwrap_or(false);
        if why == Failure::Refused && answered {
            if let Some(attached) = self.h2_retry(ci, s, i, Failure::Refused) {
                return (true, !attached);
            }
            s.streams[i].final_answer = true;
            return self.h2_stream_step(ci, s, i);
        }
        self.h2_fail(ci, s, i, why)
    }

    /// Fails stream `i`'s attempt: retried if safe, else 502/504 before the response head
    /// or RST_STREAM(INTERNAL_ERROR) after it. Returns (moved, the stream is gone).
    pub(super) fn h2_fail(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
        why: Failure,
    ) -> (bool, bool) {
        let st = &mut s.streams[i];
        let backend = self.ups[st.ex.on()].backend;
        if self.h2_hedge_takes_over(ci, st) {
            debug!(
                "worker {}: HTTP/2 stream {} hedge takes over",
                self.ctx.id, st.id
            );
            return (true, false);
        }
        debug!(
            "worker {}: HTTP/2 stream {} failed on {} ({})",
            self.ctx.id,
            st.id,
            self.ctx.shared.balancer.backend(backend).name,
            why.reason()
        );
        if st.head_sent {
            if st.grpc && !st.end_sent {
                // The call's answer started: it ends with a gRPC status, not a reset.
                let answer = Answer::to(why);
                grpc::end_with(&mut s.conn, st.id, answer.grpc, answer.reason);
                st.grpc_status = Some(answer.grpc);
                st.end_sent = true;
            } else {
                s.conn.reset(st.id, ErrorCode::INTERNAL_ERROR);
            }
            self.h2_abort(ci, s, i, Blame::Backend);
            return (true, true);
        }
        if let Some(attached) = self.h2_retry(ci, s, i, why) {
            return (true, !attached);
        }
        let mut st = s.streams.swap_remove(i);
        let lease = self.h2_drop_leg(ci, &mut st, ErrorCode::CANCEL);
        let answer = Answer::to(why);
        if st.grpc {
            st.grpc_status = Some(answer.grpc);
        }
        if let Some(lease) = lease {
            let (ex, call) = st.for_accounting();
            let status = answer.status;
            self.ctx
                .account_end(lease, ex, status, Outcome::Failure, call);
        }
        s.conn.release(st.id, st.unreleased);
        reply(s, st.id, st.grpc, answer.status, st.req_end, answer.reason);
        st.recycle(&mut self.ctx, &mut s.conn);
        (true, true)
    }

    /// Tries stream `i` again after `why`, as `end.rs` does for HTTP/1.1. `None`: not
    /// retried; `Some(attached)`: a new attempt (or the stream was answered 502).
    pub(super) fn h2_retry(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
        why: Failure,
    ) -> Option<bool> {
        let st = &mut s.streams[i];
        let ui = st.ex.on();
        let old = self.ups[ui].backend;
        let (next, again) = self.ctx.retry_target(&st.ex, old, why)?;
        // The failed attempt's lease stays with the exchange for `retried`.
        st.ex.lease = self.h2_drop_leg(ci, st, ErrorCode::CANCEL);
        let (next, wait) = self.ctx.retried(&mut st.ex, next, why, again);
        if wait > 0 {
            // The retry policy's backoff: attached again once it is over (h2_attach_pending).
            st.backoff_at = self.ctx.now + wait;
            st.deadline = 0;
            st.pending = Some(next);
            return Some(true);
        }
        Some(self.h2_attach(ci, s, i, next, again.same_server()))
    }
}

/// Stream `i` of `s` answered in gRPC terms if it is a call, else with `status`.
pub(super) fn reply(
    s: &mut H2Session,
    id: u32,
    grpc_call: bool,
    status: u16,
    done: bool,
    why: &str,
) {
    if grpc_call {
        grpc::answer(&mut s.conn, id, grpc::for_http(status), why, done);
    } else {
        super::super::h2_session::h2_answer(&mut s.conn, id, status, done);
    }
}

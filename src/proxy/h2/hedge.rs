//! Hedged HTTP/2 streams (`hedgingPolicy`): a stream the policy covers whose request went
//! out whole and that has had no answer some delay after is sent once more, to another
//! server speaking the same protocol.
//!
//! - Over h2c (a gRPC unary call, say), with its request body held whole: both legs run
//!   on the one stream. The hedge's progress is kept in `H2Stream::alt` and its connection
//!   in `ex.hedge`, and [`H2Stream::swap_legs`] lets the h2c leg's code serve either. The
//!   first response head wins; the other stream is reset with CANCEL. A Trailers-Only
//!   answer with a status the policy calls non-fatal (and UNAVAILABLE) does not win: the
//!   other leg carries on, and the next hedge, if the policy allows one, goes out at once.
//! - Over HTTP/1.1, a request without a body (as for an HTTP/1.1 client, `proxy/hedge.rs`):
//!   the hedge is another connection in `ex.hedge` that is sent the request head. Its
//!   first response bytes win (a status the retry policy replays does not); the other
//!   connection is closed.
//!
//! The loser's server is given back without a latency sample.

use std::sync::atomic::Ordering::Relaxed;

use crate::config::types::RetrySettings;
use crate::config::Protocol;
use crate::debug;
use crate::h2::ErrorCode;

use super::super::conns::{connect_result, upstream_token, Owner, Proxy, UpState};
use super::super::context::Ctx;
use super::super::exchange::{Exchange, Hedge, Resp};
use super::super::grpc;
use super::super::h2_session::H2Session;
use super::super::h2_session::{AltLeg, H2Stream, Leg};
use super::super::h2_translate::Origin;
use super::super::hedge::status_of;
use super::super::io::{would_block, write2};
use super::super::lifecycle::Promote;

/// Stream `st` may (still) be hedged: an h2c attempt with no response head yet, and the
/// whole request held, so another server can be sent all of it.
fn may_hedge(st: &H2Stream, replay_max: usize) -> bool {
    let held = st.body.as_ref().map_or(0, |b| b.len());
    st.on_h2c()
        && st.ex.hedgeable
        && st.req_end
        && st.replayable
        && st.base == 0
        && held <= replay_max
        && !st.head_sent
        && st.ex.resp == Resp::Head
}

/// Whether a Trailers-Only `code` leaves a hedged call to its other attempts.
pub(super) fn non_fatal(retry: &RetrySettings, code: u32) -> bool {
    let policy = retry.hedging.as_ref();
    code == grpc::UNAVAILABLE || policy.is_some_and(|p| p.non_fatal.contains(code))
}

/// Whether another attempt of hedged `ex` runs or may still go out.
pub(super) fn more_attempts(retry: &RetrySettings, ex: &Exchange) -> bool {
    let max = retry.hedging.as_ref().map_or(0, |p| p.max_attempts);
    ex.hedgeable && (ex.hedge.up.is_some() || u32::from(ex.hedge.sent) + 1 < max)
}

impl Proxy {
    /// Plans the hedge of `st` once its first attempt has sent the whole request: the
    /// delay runs from there (a client slow to send its body does not make it shorter).
    pub(super) fn h2_plan_hedge(&mut self, st: &mut H2Stream) {
        if st.alt.planned || !st.req_sent || !st.ex.hedgeable || st.ex.retries > 0 {
            return;
        }
        st.alt.planned = true;
        if !st.on_h2c() && !may_hedge_h1(st) {
            // An HTTP/1.1 leg is hedged only without a request body.
            return;
        }
        let backend = self.ups[st.ex.on()].backend;
        if let Some(delay) = self.hedge_delay(backend) {
            st.ex.hedge.at = self.ctx.now + delay;
        }
    }

    /// The session's timer reached stream `i`'s hedge moment: the hedge goes out. If one
    /// already runs and neither has answered, the older attempt gives way to it first (at
    /// most two run at once), within the policy's attempts.
    pub(super) fn h2_hedge_timer(&mut self, ci: usize, s: &mut H2Session, i: usize) {
        let st = &mut s.streams[i];
        st.ex.hedge.at = 0;
        if !st.on_h2c() {
            self.h2_h1_hedge_timer(ci, st, &s.from);
            return;
        }
        let max = self.ctx.shared.cfg.retry.replay_max();
        if !may_hedge(st, max) || self.h2_answered(ci, st) {
            return;
        }
        if st.ex.hedge.up.is_some() {
            if !st.alt.opened {
                // The running hedge has not even been opened: leave things be.
                return;
            }
            self.h2_promote(ci, st, Promote::Superseded);
        }
        self.h2_launch_hedge(ci, st);
    }

    /// The current attempt of `st` has its response head (held or not).
    fn h2_answered(&self, ci: usize, st: &mut H2Stream) -> bool {
        let up = st.ex.up.and_then(|u| self.ups.get(u));
        let Some(m) = up.and_then(|u| u.mux()) else {
            return false;
        };
        st.leg
            .find(m, ci, st.id)
            .is_some_and(|k| m.streams[k].head.is_some())
    }

    /// Opens the hedge of `st` on another h2c server, within the retry budget.
    fn h2_launch_hedge(&mut self, ci: usize, st: &mut H2Stream) {
        let old = self.ups[st.ex.on()].backend;
        let Some(lease) = self.hedge_target(old, st.ex.tried, Protocol::H2c) else {
            return;
        };
        let b = lease.backend();
        let Some((ui, reused)) = self.mux_for(b, ci, st.id, false) else {
            self.ctx.shared.balancer.cancel_lease(lease);
            return;
        };
        let sent = st.ex.hedge.sent + 1;
        let next = self.next_hedge_at(b, sent);
        st.ex.hedge = Hedge::launched(next, ui, lease, sent, reused);
        st.alt = AltLeg {
            sent: st.base,
            planned: true,
            ..AltLeg::default()
        };
        self.h2_hedge_launched(st, old, b);
    }

    /// Stream `st`'s hedge from server `old` on `b` went out: counted and logged.
    fn h2_hedge_launched(&mut self, st: &mut H2Stream, old: usize, b: usize) {
        st.due = true;
        self.ctx.shared.counters.hedges.fetch_add(1, Relaxed);
        debug!(
            "worker {}: hedging HTTP/2 stream {} from {} on {}",
            self.ctx.id,
            st.id,
            self.ctx.shared.balancer.backend(old).name,
            self.ctx.shared.balancer.backend(b).name
        );
    }

    /// A step of stream `i`'s hedge: its request out, then the race. Returns whether
    /// anything moved. The hedge wins with the first response head; one that fails, or
    /// answers a non-fatal status, is dropped.
    pub(super) fn h2_hedge_step(&mut self, ci: usize, s: &mut H2Session, i: usize) -> bool {
        let Some(hu) = s.streams[i].ex.hedge.up else {
            return false;
        };
        if !self.ctx.mux_dirty.contains(&hu) {
            self.ctx.mux_dirty.push(hu);
        }
        // The hedge opens with the attempts before it in grpc-previous-rpc-attempts (the
        // first attempt, earlier hedges and retries), as gRPC's hedging design has it.
        let st = &mut s.streams[i];
        st.swap_legs();
        let retries = st.ex.retries;
        st.ex.retries = retries.saturating_add(st.ex.hedge.sent);
        let sent = self.h2_leg_send(ci, s, i);
        let st = &mut s.streams[i];
        st.ex.retries = retries;
        if st.req_sent {
            // The hedge's own per-try timeout starts with its whole request out.
            st.ex.request_sent(self.ctx.now);
        }
        st.swap_legs();
        let mut moved = match sent {
            Ok(m) => m,
            Err(_) => {
                self.h2_drop_hedge(ci, st);
                return true;
            }
        };
        let m = self.ups[hu].mux().expect("a mux");
        let Some(k) = m.stream_at(ci, st.id, &mut st.alt.mk) else {
            self.h2_drop_hedge(ci, st);
            return true;
        };
        let ms = &m.streams[k];
        if let Some(head) = ms.head.as_ref() {
            let trailers_only = ms.drained_to_end();
            let code = if st.grpc && trailers_only {
                grpc::status(head)
            } else {
                None
            };
            if code.is_some_and(|c| non_fatal(&self.ctx.shared.cfg.retry, c)) {
                // Not an answer that ends the call: the current attempt carries on, and
                // the next hedge (if any) goes out at once.
                self.h2_drop_hedge(ci, st);
                if st.ex.hedge.at != 0 {
                    st.ex.hedge.at = self.ctx.now;
                }
                return true;
            }
            // If the current attempt has its head too (held until its first message), it
            // goes first: nothing moves until one of them does.
            if !self.h2_answered(ci, st) {
                self.h2_promote(ci, st, Promote::Won);
                moved = true;
            }
        } else if ms.gone.is_some() {
            self.h2_drop_hedge(ci, st);
            moved = true;
        }
        moved
    }

    /// The hedge becomes `st`'s current attempt; the former one is reset (CANCEL) and its
    /// server given back, with a failure sample only if it failed.
    fn h2_promote(&mut self, ci: usize, st: &mut H2Stream, why: Promote) {
        st.swap_legs();
        let old = st
            .ex
            .hedge
            .up
            .take()
            .expect("the attempt ran on a connection");
        self.h2_leave(ci, st, old, "gives way to its hedge");
        let began = st.ex.hedge.started;
        let old_lease = st
            .ex
            .hedge
            .lease
            .take()
            .expect("the attempt held its lease");
        self.ctx.hedge_promoted(&mut st.ex, old_lease, began, why);
        // The backend's deadline starts again with this attempt (`h2_leg_step`).
        st.deadline = 0;
        st.due = true;
    }

    /// Stream `i`'s current attempt answered a status the hedging policy calls non-fatal:
    /// a running hedge takes its place, else the next hedge goes out now and does (and
    /// any after it at once). With neither, the answer is the call's. Returns (moved,
    /// the stream is gone).
    pub(super) fn h2_non_fatal(&mut self, ci: usize, s: &mut H2Session, i: usize) -> (bool, bool) {
        let st = &mut s.streams[i];
        if st.ex.hedge.up.is_none() {
            self.h2_launch_hedge(ci, st);
        }
        if st.ex.hedge.up.is_some() {
            self.h2_promote(ci, st, Promote::Failed);
            if st.ex.hedge.at != 0 {
                st.ex.hedge.at = self.ctx.now;
            }
            return (true, false);
        }
        st.final_answer = true;
        self.h2_stream_step(ci, s, i)
    }

    /// `st`'s current attempt failed: true if a running hedge takes its place (on
    /// HTTP/1.1, one that sent its whole request).
    pub(super) fn h2_hedge_takes_over(&mut self, ci: usize, st: &mut H2Stream) -> bool {
        if st.ex.hedge.up.is_none() || st.head_sent {
            return false;
        }
        if st.on_h2c() {
            self.h2_promote(ci, st, Promote::Failed);
        } else if self.h1_hedge_sent(st) {
            self.h2_h1_promote(st, Promote::Failed);
        } else {
            self.h2_drop_hedge(ci, st);
            return false;
        }
        true
    }

    /// No hedging any more for `st` (it has an answer, or it ended): a running hedge is
    /// reset (CANCEL) and no other goes out.
    pub(super) fn h2_end_hedging(&mut self, ci: usize, st: &mut H2Stream) {
        st.ex.hedge.at = 0;
        self.h2_drop_hedge(ci, st);
    }

    /// Resets `st`'s hedge, if one runs, giving its server back without a sample; no
    /// later attempt of the stream goes there.
    pub(super) fn h2_drop_hedge(&mut self, ci: usize, st: &mut H2Stream) {
        let Some(h) = st.ex.hedge.up.take() else {
            return;
        };
        self.h2_leave(ci, st, h, "drops its hedge");
        if let Some(lease) = st.ex.hedge.lease.take() {
            self.ctx.shared.balancer.cancel_lease(lease);
        }
    }

    /// Takes `st`'s leg on connection `ui` off it (RST_STREAM CANCEL on h2c; an HTTP/1.1
    /// connection closes), keeping later attempts off its server (`what` for the debug
    /// log).
    fn h2_leave(&mut self, ci: usize, st: &mut H2Stream, ui: usize, what: &str) {
        let backend = self.ups[ui].backend;
        debug!(
            "worker {}: HTTP/2 stream {} {what} on {}",
            self.ctx.id,
            st.id,
            self.ctx.shared.balancer.backend(backend).name
        );
        if self.ups[ui].is_h2c() {
            self.mux_detach(ui, ci, st.id, ErrorCode::CANCEL);
        } else {
            self.remove_upstream(ui);
        }
        st.ex.tried.insert(backend);
    }

    /// The hedge moment of `st`, on an HTTP/1.1 leg: a hedge goes out (the older attempt
    /// giving way first if a hedge already runs and neither has answered).
    fn h2_h1_hedge_timer(&mut self, ci: usize, st: &mut H2Stream, from: &Origin) {
        if !may_hedge_h1(st) {
            return;
        }
        if st.ex.hedge.up.is_some() {
            if !self.h1_hedge_sent(st) {
                // The running hedge has not even sent its request: leave things be.
                return;
            }
            self.h2_h1_promote(st, Promote::Superseded);
        }
        let old = self.ups[st.ex.on()].backend;
        let Some(lease) = self.hedge_target(old, st.ex.tried, Protocol::Http1) else {
            return;
        };
        let b = lease.backend();
        let owner = Owner::Stream {
            client: ci,
            id: st.id,
        };
        // A hedge's deadline is its connection's.
        let Some((ui, reused)) = self.connection_to(b, owner, false, true) else {
            self.ctx.shared.balancer.cancel_lease(lease);
            return;
        };
        // The head again: the attempt's went back to the pool once written.
        self.h2_request_head(st, from);
        let sent = st.ex.hedge.sent + 1;
        let next = self.next_hedge_at(b, sent);
        st.ex.hedge = Hedge::launched(next, ui, lease, sent, reused);
        st.alt.try_by = 0;
        self.h2_hedge_launched(st, old, b);
    }

    /// The HTTP/1.1 hedge of `st` is connected and has sent its whole request.
    fn h1_hedge_sent(&self, st: &H2Stream) -> bool {
        let head = st.ex.head.as_ref().map_or(0, |b| b.len());
        (st.ex.hedge.up).is_some_and(|h| self.ups[h].state == UpState::Busy)
            && st.ex.hedge.off >= head
    }

    /// A step of `st`'s HTTP/1.1 hedge, if one runs: its connect and request head, then
    /// the race. Returns whether anything moved. The hedge wins with the first response
    /// bytes (not a status the retry policy replays); the current attempt wins once it
    /// has any (`h2_stream_step`).
    pub(super) fn h2_h1_hedge_step(&mut self, ci: usize, st: &mut H2Stream) -> bool {
        let Some(h) = st.ex.hedge.up else {
            return false;
        };
        let u = &mut self.ups[h];
        if u.state == UpState::Connecting {
            match connect_result(u) {
                None => return false,
                Some(false) => {
                    self.h2_drop_hedge(ci, st);
                    return true;
                }
                Some(true) => {
                    u.state = UpState::Busy;
                    let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.upstream);
                    self.ctx.timers.set(&mut u.timer, upstream_token(h).0, at);
                }
            }
        }
        let head = st.ex.head.as_ref().map_or(&[][..], |b| b.bytes());
        let mut moved = false;
        if u.io.writable && st.ex.hedge.off < head.len() {
            match write2(&mut u.sock, &head[st.ex.hedge.off..], &[], &mut u.io) {
                Ok(n) => {
                    st.ex.hedge.off += n;
                    moved = true;
                    if st.ex.hedge.off == head.len() && st.ex.per_try > 0 {
                        // The hedge's own per-try timeout starts with its request out.
                        st.alt.try_by = self.ctx.now + st.ex.per_try;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.h2_drop_hedge(ci, st);
                    return true;
                }
            }
        }
        if !self.h1_hedge_sent(st) || !self.ups[h].io.readable {
            return moved;
        }
        // Response bytes, or the hedge's server closed: look without taking them.
        let mut line = [0u8; 12];
        match self.ups[h].sock.tcp().peek(&mut line) {
            Ok(0) => self.h2_drop_hedge(ci, st),
            Ok(n) if status_of(&line[..n]).is_some_and(|s| st.ex.retry_on.has_status(s)) => {
                self.h2_drop_hedge(ci, st)
            }
            Ok(_) => self.h2_h1_promote(st, Promote::Won),
            Err(e) if would_block(&e) => {
                self.ups[h].io.readable = false;
                return moved;
            }
            Err(_) => self.h2_drop_hedge(ci, st),
        }
        true
    }

    /// The HTTP/1.1 hedge becomes `st`'s current attempt: the former one's connection is
    /// closed and its server given back, with a failure sample only if it failed. What
    /// the former one read (a head the retry policy replays, a broken one) is dropped.
    fn h2_h1_promote(&mut self, st: &mut H2Stream, why: Promote) {
        let ex = &mut st.ex;
        let (old, h) = (ex.on(), ex.hedge.on());
        let old_backend = self.ups[old].backend;
        ex.up = ex.hedge.up.take();
        let hedge_lease = (ex.hedge.lease.take()).expect("a running hedge holds its lease");
        let old_lease = (ex.lease.replace(hedge_lease)).expect("an attempt holds its lease");
        ex.reused = ex.hedge.reused;
        ex.rec.reused = ex.hedge.reused;
        let first = std::mem::replace(&mut ex.attempt, ex.hedge.started);
        ex.try_by = std::mem::take(&mut st.alt.try_by);
        ex.tried.insert(old_backend);
        // The new attempt's response starts afresh; its request went out whole.
        self.ctx.bufs.release(&mut ex.resp_buf);
        (ex.resp, ex.status, ex.ready) = (Resp::Head, 0, 0);
        (ex.got_bytes, ex.keep) = (false, false);
        self.ctx.bufs.release(&mut ex.head);
        ex.head_off = 0;
        if let Leg::H1 { resp_tail, .. } = &mut st.leg {
            resp_tail.clear();
        }
        st.req_sent = true;
        // The backend's deadline starts again with this attempt, on the stream.
        st.deadline = 0;
        self.ctx
            .timers
            .set(&mut self.ups[h].timer, upstream_token(h).0, 0);
        st.due = true;
        self.ctx.hedge_promoted(&mut st.ex, old_lease, first, why);
        debug!(
            "worker {}: HTTP/2 stream {} gives way to its hedge on {}",
            self.ctx.id,
            st.id,
            self.server_name(h)
        );
        self.remove_upstream(old);
    }
}

/// Stream `st`, on an HTTP/1.1 leg, may (still) be hedged: covered, its request (with no
/// body) sent whole, and no response byte yet.
fn may_hedge_h1(st: &H2Stream) -> bool {
    st.ex.hedgeable
        && st.req_end
        && st.req_sent
        && st.base == 0
        && st.body.as_ref().is_none_or(|b| b.is_empty())
        && st.websocket.is_none()
        && !st.head_sent
        && st.ex.resp == Resp::Head
        && !st.ex.got_bytes
}

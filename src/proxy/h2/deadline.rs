//! A session's deadlines, all on its client's timer: the client's idle or send deadline,
//! and per stream the upstream's, the call's `grpc-timeout`, the send stall, a hedge's
//! moment and a retry's backoff. When the timer fires, what is due is done: streams fail
//! or end DEADLINE_EXCEEDED, hedges go out, backed-off retries attach, an idle or stalled
//! client gets GOAWAY.

use std::sync::atomic::Ordering::Relaxed;

use crate::debug;
use crate::h2::ErrorCode;

use super::super::conns::{client_token, Phase, Proxy};
use super::super::decide::Blame;
use super::super::grpc;
use super::super::h2_session::{ClientWait, H2Session};
use super::super::io::write2;
use super::super::lifecycle;

impl Proxy {
    /// Arms the client's timer for the session's next deadline: the client's idle (or
    /// stalled) one, or the earliest of its h2c streams'. Armed early is fine (the timer
    /// checks what is due when it fires); it is moved only when a deadline comes sooner.
    pub(super) fn h2_arm(&mut self, ci: usize, s: &mut H2Session) {
        let next = s
            .streams
            .iter()
            .flat_map(|st| {
                let ex = &st.ex;
                [
                    st.deadline,
                    st.call_deadline,
                    st.stall_at,
                    ex.hedge.at,
                    st.backoff_at,
                ]
            })
            .chain([s.idle_at, s.trim_at])
            .filter(|&t| t != u64::MAX)
            .filter(|&t| t != 0)
            .min()
            .unwrap_or(0);
        if next != 0 && (s.armed == 0 || next < s.armed) {
            let c = &mut self.clients[ci];
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, next);
            s.armed = next;
        }
    }

    /// The client's timer fired: h2c streams past their deadlines fail (a call past its
    /// grpc-timeout ends DEADLINE_EXCEEDED); if the client's own idle (or stalled)
    /// deadline passed, GOAWAY and close.
    pub(in crate::proxy) fn h2_timeout(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        let Phase::H2(mut s) = std::mem::replace(&mut c.phase, Phase::H2Out) else {
            return;
        };
        s.armed = 0;
        s.sweep = true;
        let now = self.ctx.now;
        let mut i = 0;
        while i < s.streams.len() {
            let at = s.streams[i].ex.hedge.at;
            if at != 0 && now >= at {
                self.h2_hedge_timer(ci, &mut s, i);
            }
            let at = s.streams[i].backoff_at;
            if at != 0 && now >= at {
                // A retry's backoff is over: the next step attaches it.
                s.attaching = true;
            }
            let st = &s.streams[i];
            let call_over = st.call_deadline != 0 && now >= st.call_deadline;
            let idle_over = st.deadline != 0 && now >= st.deadline;
            let stalled = st.stall_at != 0 && now >= st.stall_at;
            if call_over {
                self.h2_call_expired(ci, &mut s, i);
            } else if stalled {
                // The client kept its window shut past the send timeout.
                debug!(
                    "worker {}: HTTP/2 stream {} send timeout",
                    self.ctx.id, st.id
                );
                let c = &self.ctx.shared.counters;
                c.h2_send_timeouts.fetch_add(1, Relaxed);
                self.h2_abort(ci, &mut s, i, Blame::Client);
            } else if idle_over {
                let connecting = self.ups[st.ex.on()].is_connecting();
                let why = lifecycle::expiry(&st.ex, connecting, now);
                self.h2_fail(ci, &mut s, i, why);
            } else {
                i += 1;
                continue;
            }
            // The stream at `i` is gone or was moved: look at `i` again.
        }
        if s.idle_at != 0 && now >= s.idle_at {
            if s.waiting_client == ClientWait::Send {
                // Each response abandoned with the connection counts once.
                let n = s.streams.iter().filter(|st| st.has_more()).count() as u64;
                let c = &self.ctx.shared.counters;
                c.h2_send_timeouts.fetch_add(n, Relaxed);
            }
            let c = &mut self.clients[ci];
            debug!("worker {}: HTTP/2 client {} timed out", self.ctx.id, c.peer);
            s.conn.go_away(ErrorCode::NO_ERROR);
            // Best effort: the socket may not take it.
            let _ = write2(&mut c.sock, s.conn.pending_output(), &[], &mut c.io);
            self.clients[ci].phase = Phase::H2(s);
            self.close_client(ci);
            return;
        }
        self.clients[ci].phase = Phase::H2(s);
        self.drive(ci);
    }

    /// Stream `i`'s grpc-timeout passed: the upstream stream is cancelled and the call
    /// ends DEADLINE_EXCEEDED (a Trailers-Only answer, or trailers after its head).
    fn h2_call_expired(&mut self, ci: usize, s: &mut H2Session, i: usize) {
        let mut st = s.streams.swap_remove(i);
        debug!(
            "worker {}: HTTP/2 stream {} deadline exceeded",
            self.ctx.id, st.id
        );
        let lease = self.h2_drop_leg(ci, &mut st, ErrorCode::CANCEL);
        const WHY: &str = "deadline exceeded in corelb";
        if st.head_sent {
            if !st.end_sent {
                grpc::end_with(&mut s.conn, st.id, grpc::DEADLINE_EXCEEDED, WHY);
            }
        } else {
            s.conn.release(st.id, st.unreleased);
            grpc::answer(&mut s.conn, st.id, grpc::DEADLINE_EXCEEDED, WHY, st.req_end);
        }
        st.unreleased = 0;
        st.grpc_status = Some(grpc::DEADLINE_EXCEEDED);
        match lease {
            Some(lease) => {
                let status = if st.head_sent { st.ex.status } else { 504 };
                let outcome = self.ctx.outcome(st.ex.status, st.grpc_status);
                let (ex, call) = st.for_accounting();
                self.ctx.account_end(lease, ex, status, outcome, call);
            }
            // Not attached (a retry backing off, its pick given back): logged as corelb's.
            None => self.ctx.log_local(st.ex.rec, crate::http::GATEWAY_TIMEOUT),
        }
        if !st.req_end {
            s.conn.reset(st.id, ErrorCode::NO_ERROR);
        }
        st.recycle(&mut self.ctx, &mut s.conn);
    }
}

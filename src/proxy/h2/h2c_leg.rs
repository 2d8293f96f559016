//! One HTTP/2 stream's leg over an h2c upstream connection (`proxy/h2c_pool.rs`): the request
//! head as HEADERS, the body as DATA within the backend's windows, request trailers; the
//! response head, DATA and trailers from the stream's inbox to the client within the
//! client's windows, releasing the backend's window only as the client takes the bytes.
//!
//! The request body sent upstream stays buffered (up to the replay buffer, 64 KiB unless
//! the retry policy says) until the
//! response head arrives, so a stream the backend refused (REFUSED_STREAM, or above its
//! GOAWAY's last stream id) can be sent again elsewhere even after its body went out.

use std::sync::atomic::Ordering::Relaxed;

use crate::config::types::RetryOn;
use crate::h2::ErrorCode;

use super::super::back::{InboxBody, ResponseBody};
use super::super::conns::Proxy;
use super::super::context::Ctx;
use super::super::decide::Failure;
use super::super::exchange::Resp;
use super::super::grpc;
use super::super::h2_session::{H2Session, OUT_HIGH};
use super::super::h2_translate as translate;
use super::super::h2c_conn::{Gone, InboxHead};
use super::super::lifecycle;
use super::forward::{forward, To};
use super::hedge;

/// What one step of the leg found.
pub(super) enum LegStep {
    /// (something moved)
    Running(bool),
    /// The whole response went to the client.
    Done,
    /// The connection had no room for the stream after all: put it on another one.
    NoRoom,
    /// The attempt failed.
    Failed(Gone),
    /// A 502/503/504 head a retry policy replays (kept in the inbox).
    Status(u16),
    /// A Trailers-Only status the hedging policy calls non-fatal, while another attempt
    /// runs or may still go out (kept in the inbox).
    NonFatal,
}

impl Proxy {
    /// One step of stream `i`'s h2c leg: returns (something moved, the stream is gone).
    pub(super) fn h2_leg_step(&mut self, ci: usize, s: &mut H2Session, i: usize) -> (bool, bool) {
        // A hedge racing this attempt goes first: its answer may make it the attempt.
        let hedged = self.h2_hedge_step(ci, s, i);
        let leg = self.h2_leg(ci, s, i);
        if let Some(ui) = s.streams[i].ex.up {
            if !self.ctx.mux_dirty.contains(&ui) {
                self.ctx.mux_dirty.push(ui);
            }
        }
        match leg {
            LegStep::Running(moved) => {
                let st = &mut s.streams[i];
                // The backend's deadline runs while we wait on it, not on the client.
                let on_client = st.waits_on_client(&s.conn) || st.ex.ready > 0;
                if on_client {
                    st.deadline = 0;
                } else if moved || st.deadline == 0 {
                    st.deadline = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.upstream);
                    // A per-try timeout bounds the wait for the response head, from when
                    // the whole request went out.
                    let sent = st.up_end && !st.head_sent;
                    let (at, now) = (st.deadline, self.ctx.now);
                    st.deadline = lifecycle::upstream_deadline(&mut st.ex, sent, at, now);
                }
                if !st.alt.planned && st.up_end {
                    self.h2_plan_hedge(st);
                }
                if st.head_sent && st.ex.hedge.up.is_some() {
                    // This attempt's answer won the race: the hedge is cancelled.
                    let c = &self.ctx.shared.counters;
                    c.hedges_cancelled.fetch_add(1, Relaxed);
                    self.h2_end_hedging(ci, st);
                }
                (moved || hedged, false)
            }
            LegStep::Done => {
                self.h2_leg_finish(ci, s, i);
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
                self.h2_leg_step(ci, s, i)
            }
        }
    }

    fn h2_leg(&mut self, ci: usize, s: &mut H2Session, i: usize) -> LegStep {
        let mut moved = false;
        match self.h2_leg_send(ci, s, i) {
            Ok(m) => moved |= m,
            Err(leg) => return leg,
        }
        self.h2_leg_recv(ci, s, i, moved)
    }

    /// The request upstream: HEADERS once the connection is up, then body and trailers
    /// within the backend's windows.
    pub(super) fn h2_leg_send(
        &mut self,
        ci: usize,
        s: &mut H2Session,
        i: usize,
    ) -> Result<bool, LegStep> {
        let H2Session {
            conn,
            streams,
            up,
            from,
            ..
        } = s;
        let st = &mut streams[i];
        let ui = st.ex.on();
        let mut moved = false;
        if !st.opened {
            translate::upstream_fields(&st.fields, from, up);
            let end = st.req_end && st.unsent().is_empty() && st.req_trailers.is_none();
            let (id, fields) = (st.id, &*up);
            // A retried call says how many attempts went before it (gRPC's retry design).
            let mut n = itoa::Buffer::new();
            let previous: &[(&[u8], &[u8])] = match st.ex.retries {
                r if r > 0 && st.grpc => &[(b"grpc-previous-rpc-attempts", n.format(r).as_bytes())],
                _ => &[],
            };
            // Fits: the client's head was held to http::MAX_HEADERS fields at open.
            let open = |p: &[(&[u8], &[u8])]| self.mux_open(ui, ci, id, p, end);
            match translate::with_pairs(fields, previous, open).0 {
                Ok(false) => return Ok(false),
                Ok(true) => {}
                Err(()) => {
                    let m = self.ups[ui].mux().expect("a mux");
                    let gone = m.stream(ci, id).and_then(|k| m.streams[k].gone);
                    return Err(gone.map_or(LegStep::NoRoom, LegStep::Failed));
                }
            }
            st.opened = true;
            st.up_end = end;
            moved = true;
        }
        if st.up_end || st.head_sent && st.ex.resp == Resp::Done {
            return Ok(moved);
        }
        let m = self.ups[ui].mux_mut().expect("a mux");
        let sid = m.streams[m.stream_at(ci, st.id, &mut st.mk).expect("registered")].sid;
        let pending = st.unsent();
        if !pending.is_empty() {
            let last = st.req_end && st.req_trailers.is_none();
            let len = pending.len();
            match m.conn.send_data(sid, pending, last) {
                Ok(n) if n > 0 => {
                    moved = true;
                    st.up_end = last && n == len;
                    // An h2c server may refuse the stream, whatever the policy: the body
                    // is kept for that within the replay buffer.
                    let max = self.ctx.shared.cfg.retry.replay_max();
                    if st.body_went(n, true, max, conn) && !st.ex.retry_on.is_empty() {
                        let c = &self.ctx.shared.counters;
                        c.replay_overflows.fetch_add(1, Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => return Err(LegStep::Failed(Gone::Lost)),
            }
        }
        let all_sent = st.unsent().is_empty();
        if st.req_end && all_sent && !st.up_end {
            // The trailers stay with the stream: a replay sends them again.
            let (r, dropped) = match st.req_trailers.as_ref() {
                Some(t) => translate::with_pairs(t, &[], |p| m.conn.send_trailers(sid, p)),
                None => (m.conn.send_data(sid, &[], true).map(|_| ()), 0),
            };
            self.ctx.count_trailers_dropped(dropped);
            if r.is_err() {
                return Err(LegStep::Failed(Gone::Lost));
            }
            st.up_end = true;
            moved = true;
        }
        Ok(moved)
    }

    /// The response from the stream's inbox to the client.
    fn h2_leg_recv(&mut self, ci: usize, s: &mut H2Session, i: usize, mut moved: bool) -> LegStep {
        let H2Session { conn, streams, .. } = s;
        let st = &mut streams[i];
        let ui = st.ex.on();
        let m = self.ups[ui].mux_mut().expect("a mux");
        let Some(k) = m.stream_at(ci, st.id, &mut st.mk) else {
            return LegStep::Failed(Gone::Lost);
        };
        let ms = &mut m.streams[k];
        // A call a retry policy covers commits with its first message (or its end), not
        // with its head: a backend lost between the two leaves it replayable.
        let hold = st.grpc
            && !st.ex.retry_on.is_empty()
            && !ms.end
            && ms.data.as_ref().is_none_or(|d| d.is_empty());
        if !st.head_sent && hold && ms.head.is_some() {
            return match ms.gone {
                Some(why) => LegStep::Failed(why),
                None => LegStep::Running(moved),
            };
        }
        if !st.head_sent {
            let replay = |s| st.ex.retry_on.has_status(s) && st.replayable && !st.final_answer;
            let head = match ms.take_head(replay) {
                InboxHead::Wait => return LegStep::Running(moved),
                InboxHead::Gone(why) => return LegStep::Failed(why),
                InboxHead::Replay(s) => return LegStep::Status(s),
                InboxHead::Head(head) => head,
            };
            let status = head.status().unwrap_or(502);
            let trailers_only = ms.drained_to_end();
            if st.grpc && trailers_only {
                let code = grpc::status(&head);
                // UNAVAILABLE before anything reached the client: another server may serve
                // it (put back, so the failure path can still answer with it).
                // So does RESOURCE_EXHAUSTED when a retry policy says so.
                let exhausted = code == Some(grpc::RESOURCE_EXHAUSTED)
                    && st.ex.retry_on.has(RetryOn::RESOURCE_EXHAUSTED);
                // A status a hedging policy calls non-fatal leaves the call to another
                // attempt, running or still allowed.
                let retry = &self.ctx.shared.cfg.retry;
                let non_fatal = code.is_some_and(|c| hedge::non_fatal(retry, c))
                    && hedge::more_attempts(retry, &st.ex);
                if non_fatal && st.replayable && !st.final_answer {
                    ms.head = Some(head);
                    return LegStep::NonFatal;
                }
                let unavailable = code == Some(grpc::UNAVAILABLE) || exhausted;
                if unavailable && st.replayable && !st.final_answer {
                    ms.head = Some(head);
                    return LegStep::Failed(Gone::Refused);
                }
                st.grpc_status = code;
            }
            let end = trailers_only && ms.trailers.is_none();
            if conn.pending_output().len() >= OUT_HIGH {
                ms.head = Some(head);
                return LegStep::Running(moved);
            }
            // Fits: the mux refused response heads over http::MAX_SECTION_FIELDS.
            let _ = translate::with_pairs(&head, &[], |p| conn.send_headers(st.id, p, end));
            m.conn.recycle(head);
            st.head_sent = true;
            st.end_sent = end;
            st.ex.took_head(status, &mut self.ctx.bufs);
            // No replay once the response started: the kept body goes.
            st.let_go_of_body();
            moved = true;
            if end {
                st.ex.resp = Resp::Done;
                return LegStep::Done;
            }
        }
        let mut body = InboxBody {
            conn: &mut m.conn,
            ms,
        };
        let to = To {
            id: st.id,
            grpc: st.grpc,
            end_sent: &mut st.end_sent,
            grpc_status: &mut st.grpc_status,
        };
        let f = forward(conn, to, &mut body);
        // The client's window decides when more goes out.
        st.ex.ready = body.held();
        st.ex.rec.response_bytes += f.bytes;
        self.ctx.count_trailers_dropped(f.dropped);
        let ms = &mut m.streams[k];
        ms.release_drained(&mut self.ctx.bufs);
        if st.end_sent {
            st.ex.resp = Resp::Done;
            return LegStep::Done;
        }
        match ms.gone {
            Some(why) if f.lost.is_some() => LegStep::Failed(why),
            _ => LegStep::Running(moved || f.moved),
        }
    }

    /// Stream `i`'s whole response went out: accounted, and its upstream stream leaves
    /// the connection.
    fn h2_leg_finish(&mut self, ci: usize, s: &mut H2Session, i: usize) {
        let mut st = s.streams.swap_remove(i);
        self.h2_end_hedging(ci, &mut st);
        let ui = st
            .ex
            .up
            .take()
            .expect("a completed stream ran on a connection");
        let code = if st.up_end {
            ErrorCode::NO_ERROR
        } else {
            ErrorCode::CANCEL
        };
        self.mux_detach(ui, ci, st.id, code);
        let (ex, call) = st.for_accounting();
        self.ctx.finished(ex, call);
        if st.unreleased > 0 {
            s.conn.release(st.id, st.unreleased);
        }
        if !st.req_end {
            // The response is complete before the request: the client may stop sending.
            s.conn.reset(st.id, ErrorCode::NO_ERROR);
        }
        st.recycle(&mut self.ctx, &mut s.conn);
    }

    /// The h2c attempt of stream `i` failed: tried again if safe, else answered (a 502
    /// or 504, or in gRPC terms) before the response head, or reset after it.
    fn h2_leg_fail(&mut self, ci: usize, s: &mut H2Session, i: usize, why: Gone) -> (bool, bool) {
        let st = &mut s.streams[i];
        let m = self.ups[st.ex.on()].mux().expect("a mux");
        let answered = m
            .stream(ci, st.id)
            .is_some_and(|k| m.streams[k].head.is_some());
        if why == Gone::Refused && answered {
            // A Trailers-Only UNAVAILABLE: tried elsewhere if allowed, else forwarded as the
            // server gave it (its message and details).
            if let Some(attached) = self.h2_retry(ci, s, i, Failure::Refused) {
                return (true, !attached);
            }
            s.streams[i].final_answer = true;
            return self.h2_leg_step(ci, s, i);
        }
        self.h2_fail(ci, s, i, why.failure())
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

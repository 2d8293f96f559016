//! One HTTP/2 stream's turn over an h2c upstream connection (`proxy/h2c_pool.rs`; `step.rs`
//! handles what it finds): the request head as HEADERS, the body as DATA within the
//! backend's windows, request trailers; the response head from the stream's inbox (a
//! gRPC Trailers-Only answer sorted first), then its DATA and trailers to the client
//! within the client's windows (`forward.rs`), releasing the backend's window only as
//! the client takes the bytes.
//!
//! The request body sent upstream stays in the stream (up to the replay buffer, 64 KiB
//! unless the retry policy says) until the response head arrives, so a stream the backend
//! refused (REFUSED_STREAM, or above its GOAWAY's last stream id) can be sent again
//! elsewhere even after its body went out.

use std::sync::atomic::Ordering::Relaxed;

use crate::config::types::RetryOn;

use super::super::back::{InboxBody, ResponseBody};
use super::super::conns::Proxy;
use super::super::decide::Failure;
use super::super::exchange::Resp;
use super::super::grpc;
use super::super::h2_session::{H2Session, OUT_HIGH};
use super::super::h2_translate as translate;
use super::super::h2c_conn::InboxHead;
use super::forward::{forward, To};
use super::hedge;
use super::step::LegStep;

impl Proxy {
    /// One turn of stream `i`'s h2c leg (`step.rs` handles what it finds): the request
    /// out, then the response from the stream's inbox.
    pub(super) fn h2_leg(&mut self, ci: usize, s: &mut H2Session, i: usize) -> LegStep {
        let mut moved = false;
        match self.h2_leg_send(ci, s, i) {
            Ok(m) => moved |= m,
            Err(leg) => return leg,
        }
        let leg = self.h2_leg_recv(ci, s, i, moved);
        if let Some(ui) = s.streams[i].ex.up {
            if !self.ctx.mux_dirty.contains(&ui) {
                self.ctx.mux_dirty.push(ui);
            }
        }
        leg
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
        if !st.leg.opened() {
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
                    return Err(gone.map_or(LegStep::NoRoom, |g| LegStep::Failed(g.failure())));
                }
            }
            st.leg.set_opened();
            st.req_sent = end;
            moved = true;
        }
        if st.req_sent || st.head_sent && st.ex.resp == Resp::Done {
            return Ok(moved);
        }
        let m = self.ups[ui].mux_mut().expect("a mux");
        let Some(k) = st.leg.find(m, ci, st.id) else {
            return Err(LegStep::Failed(Failure::Reset));
        };
        let sid = m.streams[k].sid;
        let pending = st.unsent();
        if !pending.is_empty() {
            let last = st.req_end && st.req_trailers.is_none();
            let len = pending.len();
            match m.conn.send_data(sid, pending, last) {
                Ok(n) if n > 0 => {
                    moved = true;
                    st.req_sent = last && n == len;
                    // An h2c server may refuse the stream, whatever the policy: the body
                    // is kept for that within the replay buffer.
                    let max = self.ctx.shared.cfg.retry.replay_max();
                    if st.body_went(n, true, max, conn) && !st.ex.retry_on.is_empty() {
                        let c = &self.ctx.shared.counters;
                        c.replay_overflows.fetch_add(1, Relaxed);
                    }
                }
                Ok(_) => {}
                Err(_) => return Err(LegStep::Failed(Failure::Reset)),
            }
        }
        let all_sent = st.unsent().is_empty();
        if st.req_end && all_sent && !st.req_sent {
            // The trailers stay with the stream: a replay sends them again.
            let (r, dropped) = match st.req_trailers.as_ref() {
                Some(t) => translate::with_pairs(t, &[], |p| m.conn.send_trailers(sid, p)),
                None => (m.conn.send_data(sid, &[], true).map(|_| ()), 0),
            };
            self.ctx.count_trailers_dropped(dropped);
            if r.is_err() {
                return Err(LegStep::Failed(Failure::Reset));
            }
            st.req_sent = true;
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
        let Some(k) = st.leg.find(m, ci, st.id) else {
            return LegStep::Failed(Failure::Reset);
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
                Some(why) => LegStep::Failed(why.failure()),
                None => LegStep::Running(moved),
            };
        }
        if !st.head_sent {
            let replay = |s| st.ex.retry_on.has_status(s) && st.replayable && !st.final_answer;
            let head = match ms.take_head(replay) {
                InboxHead::Wait => return LegStep::Running(moved),
                InboxHead::Gone(why) => return LegStep::Failed(why.failure()),
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
                    return LegStep::Failed(Failure::Refused);
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
            Some(why) if f.lost.is_some() => LegStep::Failed(why.failure()),
            _ => LegStep::Running(moved || f.moved),
        }
    }
}

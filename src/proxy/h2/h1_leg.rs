//! One HTTP/2 stream's leg on an HTTP/1.1 connection (pooled or per request), its turn
//! (`step.rs` attaches the stream and handles what the turn finds):
//! the connection up, the request head and body written with the framing decided at open
//! (`back::H1Request`: Content-Length, or chunked with the client's trailers), the response
//! read by `h1_response.rs`, its heads sent as HEADERS and its body forwarded
//! (`forward.rs`); the connection pooled or closed once the stream is done.

use std::io::IoSlice;
use std::sync::atomic::Ordering::Relaxed;

use crate::config::UpstreamMode;
use crate::h2::Connection;
use crate::http::{self, Body, BodyKind};

use super::super::back::H1Body;
use super::super::conns::{connect_result, upstream_token, Owner, Proxy, UpState};
use super::super::decide::{self, Failure, PoolCheck};
use super::super::exchange::Resp;
use super::super::h1_response::{self, Kind, Unframe};
use super::super::h2_session::{self, H2Stream, Leg};
use super::super::h2_session::{H2Session, OUT_HIGH};
use super::super::h2_translate::{self as translate, UpstreamFraming};
use super::super::io::{read_into, would_block, Io};
use super::super::lifecycle;
use super::forward::{forward, To};
use super::step::LegStep;

/// A connecting upstream's state after an event.
enum Connect {
    Up,
    Waiting,
    Failed,
}

/// What a read of the response did.
enum Read {
    Idle,
    Moved,
    Failed(Failure),
}

impl Proxy {
    /// Stream `st`'s HTTP/1.1 request head into `ex.head`, unless it is there: built from
    /// its fields (checked at open) for the first attempt on an HTTP/1.1 backend, and again
    /// for a later one or a hedge once the head went back to the pool.
    pub(super) fn h2_request_head(&mut self, st: &mut H2Stream, from: &translate::Origin) {
        if st.ex.head.as_ref().is_some_and(|h| !h.is_empty()) {
            return;
        }
        let close = self.ctx.shared.cfg.upstream == UpstreamMode::PerRequest;
        let scratch = &mut self.ctx.scratch;
        scratch.clear();
        // Checked at open (`translate::target`); what HTTP/1.1 cannot carry is left out.
        let key = st.websocket.as_ref().map(|k| &k[..]);
        // The framing chosen at open, whatever the client sent since: a body that was
        // still to come then goes chunked on every attempt (had the client ended its
        // stream by now, a head built from that would say the request has no body, and
        // the body sent after it would read as another request).
        let open_end = st.framing == UpstreamFraming::None;
        let built = translate::request_head(&st.fields, open_end, from, close, key, scratch);
        debug_assert!(built.is_ok_and(|h| h.framing == st.framing));
        let buf = st.ex.head.get_or_insert_with(|| self.ctx.bufs.get());
        buf.clear();
        if scratch.len() > buf.capacity() {
            buf.grow(scratch.len());
        }
        buf.space()[..scratch.len()].copy_from_slice(scratch);
        buf.filled(scratch.len());
    }

    fn h2_connected(&mut self, ui: usize) -> Connect {
        let u = &mut self.ups[ui];
        match connect_result(u) {
            None => Connect::Waiting,
            Some(true) => {
                u.state = UpState::Busy;
                Connect::Up
            }
            Some(false) => Connect::Failed,
        }
    }

    /// One turn of stream `i`'s HTTP/1.1 leg (`step.rs` handles what it finds): the
    /// connection up, the request out, the response read and parsed (heads as HEADERS),
    /// its body forwarded.
    #[inline(always)]
    pub(super) fn h2_h1_turn(&mut self, s: &mut H2Session, i: usize) -> LegStep {
        let ui = s.streams[i].ex.on();
        if self.ups[ui].state == UpState::Connecting {
            match self.h2_connected(ui) {
                Connect::Waiting => return LegStep::Running(false),
                Connect::Failed => return LegStep::Failed(Failure::Connect),
                // The connect timer is done: the stream's own deadline runs from here.
                Connect::Up => {
                    self.ctx
                        .timers
                        .set(&mut self.ups[ui].timer, upstream_token(ui).0, 0)
                }
            }
        }
        let mut moved = false;
        match self.h2_send_request(s, i) {
            Ok(m) => moved |= m,
            Err(()) if !s.streams[i].head_sent && s.streams[i].ex.resp == Resp::Head => {
                return LegStep::Failed(Failure::Reset)
            }
            Err(()) => {
                // The backend answered and stopped reading: send no more.
                let st = &mut s.streams[i];
                st.req_closed = true;
                st.ex.keep = false;
            }
        }
        let H2Session { conn, streams, .. } = s;
        let st = &mut streams[i];
        if st.final_answer && st.ex.status != 0 && st.ex.resp == Resp::Head {
            // A status a retry policy would replay, held, and not replayed after all: the
            // head goes to the client as the server gave it.
            st.ex.status = 0;
            if let Err(why) = self.h2_process_response(conn, st) {
                return LegStep::Failed(why);
            }
            moved = true;
        }
        match self.h2_recv_response(s, i) {
            Read::Idle => {}
            Read::Moved => moved = true,
            Read::Failed(Failure::Status(code)) => return LegStep::Status(code),
            Read::Failed(why) => return LegStep::Failed(why),
        }
        let mut dropped = 0;
        moved |= h2_send_response(s, i, &mut dropped);
        self.ctx.count_trailers_dropped(dropped);
        if s.streams[i].end_sent {
            return LegStep::Done;
        }
        LegStep::Running(moved)
    }

    /// Stream `st`'s whole response went out: its HTTP/1.1 connection pooled or closed.
    pub(super) fn h2_h1_done(&mut self, st: &H2Stream, ui: usize) {
        let cfg = &self.ctx.shared.cfg;
        let (persistent, max_idle) = (
            cfg.upstream == UpstreamMode::Persistent,
            cfg.max_idle_per_backend,
        );
        let u = &self.ups[ui];
        let io: Io = u.io;
        let pool = decide::may_pool(&PoolCheck {
            persistent,
            // A response the client stopped taking was not read to its end.
            keep: st.ex.keep && st.ex.resp == Resp::Done,
            request_done: st.req_sent,
            unread: io.readable || io.rdhup,
            draining: self.ctx.draining,
            pooled: self.idle[u.backend].len(),
            max_idle,
        });
        if pool {
            self.pool(ui);
        } else {
            self.remove_upstream(ui);
        }
    }

    /// Head and body bytes to the backend. `Err` if the connection broke.
    fn h2_send_request(&mut self, s: &mut H2Session, i: usize) -> Result<bool, ()> {
        let H2Session { conn, streams, .. } = s;
        let st = &mut streams[i];
        let u = &mut self.ups[st.ex.on()];
        let Leg::H1 { req, .. } = &mut st.leg else {
            return Err(());
        };
        if st.req_sent || st.req_closed || !u.io.writable {
            return Ok(false);
        }
        let head: &[u8] = st
            .ex
            .head
            .as_ref()
            .map_or(&[], |h| &h.bytes()[st.ex.head_off..]);
        let from = (st.sent - st.base) as usize;
        let payload: &[u8] = st.body.as_ref().map_or(&[], |b| &b.bytes()[from..]);
        let hl = head.len();
        let slices = req.next(head, payload, st.req_end, st.req_trailers.as_ref());
        if slices.iter().all(|s| s.is_empty()) {
            self.ctx.count_trailers_dropped(req.take_dropped());
            if !req.done(st.req_end) {
                return Ok(false);
            }
            st.req_sent = true;
            // The whole request went: the backend's deadline is worked out again, with
            // the per-try timeout starting now (`h2_arm_backend`).
            st.deadline = 0;
            if st.framing == UpstreamFraming::Raw {
                // The client ended its side of the WebSocket tunnel: so does corelb.
                u.sock.shutdown_write();
            }
            return Ok(false);
        }
        let total: usize = slices.iter().map(|s| s.len()).sum();
        let r = u.sock.write_vectored(&slices.map(IoSlice::new));
        let n = match r {
            Ok(n) => n,
            Err(e) if would_block(&e) => {
                u.io.writable = false;
                return Ok(false);
            }
            Err(_) => return Err(()),
        };
        if n < total {
            u.io.writable = false;
        }
        let (head_n, k) = req.wrote(n, hl);
        self.ctx.count_trailers_dropped(req.take_dropped());
        st.ex.head_off += head_n;
        if head_n > 0 && head_n == hl {
            // Sent whole: the buffer goes back to the pool (a slow response would hold it);
            // a retry builds the head again from the stream's fields.
            self.ctx.bufs.release(&mut st.ex.head);
            st.ex.head_off = 0;
        }
        if k > 0 {
            // Kept for a replay while a retry policy covers the stream and they fit.
            let policy = !st.ex.retry_on.is_empty();
            let max = self.ctx.shared.cfg.retry.replay_max();
            if st.body_went(k, policy, max, conn) {
                let c = &self.ctx.shared.counters;
                c.replay_overflows.fetch_add(1, Relaxed);
            }
        }
        Ok(true)
    }

    /// Response bytes from the backend, when the stream may take more.
    fn h2_recv_response(&mut self, s: &mut H2Session, i: usize) -> Read {
        let H2Session { conn, streams, .. } = s;
        let st = &mut streams[i];
        let ex = &mut st.ex;
        let u = &mut self.ups[ex.on()];
        if !u.io.readable
            || matches!(ex.resp, Resp::Done | Resp::Truncated)
            || ex.ready > 0
            || (st.head_sent && conn.send_capacity(st.id) == 0)
            || conn.pending_output().len() >= OUT_HIGH
        {
            return Read::Idle;
        }
        let buf = ex.resp_buf.get_or_insert_with(|| self.ctx.bufs.get());
        if buf.space().is_empty() {
            if ex.resp == Resp::Head && buf.capacity() <= http::MAX_HEAD {
                buf.grow(http::MAX_HEAD + 1);
            } else {
                return Read::Idle;
            }
        }
        match read_into(&mut u.sock, buf, &mut u.io) {
            Ok(0) => {
                ex.keep = false;
                if ex.resp == Resp::Body(Body::UntilClose) {
                    ex.resp = Resp::Done;
                    return Read::Moved;
                }
                Read::Failed(Failure::Reset)
            }
            Ok(_) => {
                ex.got_bytes = true;
                match self.h2_process_response(conn, st) {
                    Ok(()) => Read::Moved,
                    Err(why) => Read::Failed(why),
                }
            }
            Err(e) if would_block(&e) => Read::Idle,
            Err(_) => Read::Failed(Failure::Reset),
        }
    }

    /// Parses response heads (sent as HEADERS) and body framing in the read buffer. A
    /// 502/503/504 head a retry policy replays is left in the buffer (`Failure::Status`).
    fn h2_process_response(
        &mut self,
        conn: &mut Connection,
        st: &mut H2Stream,
    ) -> Result<(), Failure> {
        self.h2_parse_response(conn, st)
            .map_err(|why| why.unwrap_or(Failure::Status(st.ex.status)))
    }

    /// [`Proxy::h2_process_response`]'s work (`h1_response.rs` reads the response; heads
    /// go as HEADERS): `Err(None)` for a head to replay (its status in `ex.status`),
    /// `Err(Some(..))` for a malformed response.
    fn h2_parse_response(
        &mut self,
        conn: &mut Connection,
        st: &mut H2Stream,
    ) -> Result<(), Option<Failure>> {
        let bad = |why: &'static str| Some(Failure::BadResponse(why));
        loop {
            let ex = &mut st.ex;
            if let (Resp::Body(_), Leg::H1 { resp_tail, .. }) = (ex.resp, &mut st.leg) {
                return h1_response::body(ex, Unframe::KeepTail(resp_tail)).map_err(Some);
            }
            if ex.resp != Resp::Head {
                return Ok(());
            }
            let buf = ex.resp_buf.as_ref().expect("response bytes");
            let mut headers = http::header_array();
            let ws = st.websocket.is_some();
            let r = match h1_response::parse(buf.bytes(), &mut headers, ex, ws) {
                Ok(Some(r)) => r,
                Ok(None) => return Ok(()),
                Err(e) => return Err(bad(e.0)),
            };
            let names = &mut self.ctx.scratch;
            let head_len = match h1_response::kind(&r, ex, !st.final_answer) {
                Kind::Replay(status) => {
                    ex.status = status;
                    return Err(None);
                }
                Kind::Switch => {
                    // The backend took the WebSocket: the stream answers 200 (RFC 8441
                    // §5) and carries the tunnel's bytes until either side ends.
                    let key = (st.websocket.as_ref()).ok_or(bad("101 without an upgrade"))?;
                    let want = h2_session::websocket_accept(key);
                    let mut accept_ok = false;
                    let mut pairs: Vec<(&[u8], &[u8])> = vec![(b":status", b"200")];
                    r.each_field(|name, value| {
                        if name.eq_ignore_ascii_case("sec-websocket-accept") {
                            accept_ok = value == want.as_bytes();
                        } else if name.len() > 13
                            && name[..14].eq_ignore_ascii_case("sec-websocket-")
                        {
                            pairs.push((name.as_bytes(), value));
                        }
                    });
                    if !accept_ok {
                        return Err(bad("101 without the right Sec-WebSocket-Accept"));
                    }
                    let lower: Vec<(Vec<u8>, &[u8])> = (pairs.iter())
                        .map(|(n, v)| (n.to_ascii_lowercase(), *v))
                        .collect();
                    let fields: Vec<(&[u8], &[u8])> =
                        lower.iter().map(|(n, v)| (&n[..], *v)).collect();
                    conn.send_headers(st.id, &fields, false).ok();
                    st.head_sent = true;
                    let n = r.head_len;
                    let (bufs, until_close) = (&mut self.ctx.bufs, BodyKind::UntilClose);
                    h1_response::took_final(ex, bufs, 200, false, until_close);
                    self.ctx.bufs.release(&mut ex.head);
                    self.ctx.shared.counters.tunnels.fetch_add(1, Relaxed);
                    n
                }
                Kind::Interim => {
                    translate::response_fields(&r, names, |f| conn.send_headers(st.id, f, false))
                        .ok();
                    r.head_len
                }
                Kind::Final => {
                    let end = r.body == BodyKind::None;
                    translate::response_fields(&r, names, |f| conn.send_headers(st.id, f, end))
                        .ok();
                    st.head_sent = true;
                    st.end_sent = end;
                    let (n, status, keep, body) = (r.head_len, r.status, r.keep_alive, r.body);
                    h1_response::took_final(ex, &mut self.ctx.bufs, status, keep, body);
                    n
                }
            };
            ex.resp_buf
                .as_mut()
                .expect("response bytes")
                .consume(head_len);
            if st.head_sent && st.replayable {
                // No replay once the response started: the kept body goes.
                st.let_go_of_body();
            }
        }
    }

    /// The timer of an HTTP/1.1 connection serving an HTTP/2 stream fired: its connect
    /// took too long, or it carries a hedge past its deadline (a stream's other deadlines
    /// are its own, `step.rs`).
    pub(in crate::proxy) fn h2_upstream_timeout(&mut self, ui: usize) {
        let u = &self.ups[ui];
        let Owner::Stream { client: ci, id } = u.owner() else {
            return;
        };
        let connecting = u.is_connecting();
        let now = self.ctx.now;
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        let super::super::conns::Phase::H2(mut s) =
            std::mem::replace(&mut c.phase, super::super::conns::Phase::H2Out)
        else {
            return;
        };
        if let Some(i) = s.stream(id) {
            if s.streams[i].ex.hedge.up == Some(ui) {
                // A hedge that timed out is given up; its stream goes on.
                self.h2_drop_hedge(ci, &mut s.streams[i]);
            } else {
                let why = lifecycle::expiry(&s.streams[i].ex, connecting, now);
                self.h2_fail(ci, &mut s, i, why);
            }
        }
        self.clients[ci].phase = super::super::conns::Phase::H2(s);
        self.drive(ci);
    }
}

/// Response data to the client within the windows; the end of the stream (trailers from a
/// chunked body, or an empty END_STREAM) once all is sent (`forward.rs`). True if anything
/// was queued; trailer fields dropped are added to `dropped`.
fn h2_send_response(s: &mut H2Session, i: usize, dropped: &mut u64) -> bool {
    let H2Session {
        conn,
        streams,
        trailers,
        ..
    } = s;
    let st = &mut streams[i];
    let Leg::H1 { resp_tail, .. } = &st.leg else {
        return false;
    };
    if !st.head_sent || st.end_sent {
        return false;
    }
    let to = To {
        id: st.id,
        grpc: st.grpc,
        end_sent: &mut st.end_sent,
        grpc_status: &mut st.grpc_status,
    };
    let f = forward(conn, to, &mut H1Body::new(&mut st.ex, resp_tail, trailers));
    st.ex.rec.response_bytes += f.bytes;
    *dropped += f.dropped;
    f.moved
}

//! An HTTP/1.1 client's exchange on an HTTP/1.1 server (`Hop::Http1`), one turn of its
//! step (`h1_step.rs`): the request head and body to the server, more body from the
//! client, the response read, validated and rewritten, and written to the client, each
//! with backpressure. Large body stretches go through pipes (`splice.rs`). What a turn
//! cannot settle itself (a failure, a status the retry policy replays) goes back to the
//! step as a `Flow`.

use std::sync::atomic::Ordering::Relaxed;

use crate::debug;
use crate::http::{self, Body, BodyKind, Reply};

use super::conns::{Flow, Proxy, Step, UpState};
use super::decide::Blame;
use super::decide::Failure;
use super::exchange::{Req, Resp};
use super::h1_response::{self, Kind, Unframe};
use super::io::{read_into, would_block, write2, write_out};

impl Proxy {
    /// `step_proxy`'s turn on an HTTP/1.1 server: a hedge racing the attempt first, then
    /// the request's bytes out, the response's to the client, more of it read.
    #[inline]
    pub(super) fn relay_turn(&mut self, ci: usize) -> Flow {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let mut ui = ex.on();
        // hedge hook: a hedge racing the first attempt (hedge.rs).
        if ex.hedge.up.is_some() {
            self.hedge_step(ci);
            let Some((_, ex)) = self.clients[ci].split() else {
                return Flow::Idle;
            };
            // (The hedge may have taken over.)
            ui = ex.on();
        }
        if self.ups[ui].state == UpState::Connecting {
            return Flow::Idle;
        }
        let mut progress = false;
        for dir in [Self::send_request, Self::send_response, Self::recv_response] {
            match dir(self, ci) {
                Flow::Idle => {}
                Flow::Moved => progress = true,
                over => return over,
            }
        }
        if progress {
            Flow::Moved
        } else {
            Flow::Idle
        }
    }

    /// Request direction: head and body bytes to the backend, more body from the client.
    fn send_request(&mut self, ci: usize) -> Flow {
        let id = self.ctx.id;
        let replay_max = self.ctx.shared.cfg.retry.replay_max();
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.req == Req::Closed {
            return Flow::Idle;
        }
        // Splice hook: a large body stretch goes through a pipe (splice.rs; it looks only
        // at a body whose buffered bytes went).
        if ex.req == Req::Body && ex.body_ready == 0 && !ex.splice.off {
            if let Some(flow) = self.splice_request(ci) {
                return flow;
            }
        }
        let (c, ex) = self.clients[ci].split().expect("proxying");
        let u = &mut self.ups[ex.on()];
        let mut progress = false;
        if (ex.head_pending() || ex.body_ready > 0) && u.io.writable {
            let head: &[u8] = ex.head.as_ref().map_or(&[], |h| &h.bytes()[ex.head_off..]);
            let body: &[u8] = c.buf.as_ref().map_or(&[], |b| &b.bytes()[..ex.body_ready]);
            match write2(&mut u.sock, head, body, &mut u.io) {
                Ok(mut n) => {
                    progress = true;
                    if let Some(h) = &ex.head {
                        let k = n.min(h.len() - ex.head_off);
                        ex.head_off += k;
                        n -= k;
                    }
                    if n > 0 {
                        // Kept for a replay while a retry policy covers the request.
                        let buf = c.buf.as_mut().expect("body bytes");
                        let (keep, max) = (!ex.retry_on.is_empty(), replay_max);
                        if ex.body_went(buf, n, keep, max, &mut self.ctx.bufs) {
                            let c = &self.ctx.shared.counters;
                            c.replay_overflows.fetch_add(1, Relaxed);
                        }
                    }
                    ex.settle_req();
                }
                Err(e) if would_block(&e) => {}
                Err(_) if ex.resp != Resp::Head => {
                    // The backend answered and stopped reading (a 413 with Connection:
                    // close, say): keep forwarding its answer, send nothing more.
                    let dropped = ex.close_request();
                    if let Some(b) = c.buf.as_mut() {
                        b.consume(dropped);
                    }
                    return Flow::Moved;
                }
                Err(_) => return Flow::Failed(Failure::Reset),
            }
        }
        // (`req_splice_next`: the splice hook above takes the body from here.)
        if ex.req == Req::Body
            && ex.body_ready == 0
            && c.io.readable
            && !ex.req_splice_next(self.ctx.pipes.min, replay_max)
        {
            let buf = c.buf.get_or_insert_with(|| self.ctx.bufs.get());
            // Bulk growth: an emptied body buffer the last read filled doubles (buffer.rs).
            if buf.is_empty() {
                self.ctx
                    .bufs
                    .enlarge(buf, ex.req_hot, ex.body.opaque_left());
            }
            let room = buf.space().len();
            match read_into(c.sock, buf, c.io) {
                Ok(0) => {
                    debug!("worker {id}: client {} closed mid-body", c.peer);
                    self.abort(ci, Blame::Client);
                    return Flow::Over(Step::Closed);
                }
                Ok(n) => {
                    ex.req_hot = n == room;
                    progress = true;
                    match ex.body.advance(buf.bytes()) {
                        Ok(n) => {
                            ex.body_ready = n;
                            ex.settle_req();
                        }
                        Err(e) => {
                            debug!("worker {id}: bad request body from {}: {e}", c.peer);
                            if ex.resp == Resp::Head && ex.out.is_none() {
                                // Nothing answered yet: drop the backend exchange, answer 400.
                                self.end_upstream(ci, 400, Blame::Client);
                                self.respond(ci, http::BAD_REQUEST, true, true);
                                return Flow::Over(Step::Progress);
                            }
                            self.abort(ci, Blame::Client);
                            return Flow::Over(Step::Closed);
                        }
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.abort(ci, Blame::Client);
                    return Flow::Over(Step::Closed);
                }
            }
        }
        if progress {
            Flow::Moved
        } else {
            Flow::Idle
        }
    }

    /// Response direction, write side: pending head and body bytes to the client.
    fn send_response(&mut self, ci: usize) -> Flow {
        let (mut c, mut ex) = self.clients[ci].split().expect("proxying");
        // Splice hook: bytes in the response pipe go first (splice.rs).
        if ex.resp_piped() {
            if let Some(flow) = self.splice_send_response(ci) {
                return flow;
            }
            (c, ex) = self.clients[ci].split().expect("proxying");
        }
        if !ex.pending_out() || !c.io.writable {
            return Flow::Idle;
        }
        let body: &[u8] = ex.resp_buf.as_ref().map_or(&[], |b| &b.bytes()[..ex.ready]);
        match write_out(c.sock, &mut ex.out, &mut self.ctx.bufs, body, c.io) {
            Ok((n, of_body)) => {
                ex.rec.response_bytes += n as u64;
                if of_body > 0 {
                    ex.resp_buf.as_mut().expect("body bytes").consume(of_body);
                    ex.ready -= of_body;
                }
                Flow::Moved
            }
            Err(e) if would_block(&e) => Flow::Idle,
            Err(_) => {
                debug!(
                    "worker {}: client {} went away mid-response",
                    self.ctx.id, c.peer
                );
                self.abort(ci, Blame::Client);
                Flow::Over(Step::Closed)
            }
        }
    }

    /// Response direction, read side: bytes from the backend, parsed and validated.
    fn recv_response(&mut self, ci: usize) -> Flow {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.final_answer && ex.resp == Resp::Head {
            // A status the retry policy could not replay after all: its head, still in
            // the buffer, goes on as the server gave it.
            return match self.process_response(ci) {
                Flow::Idle => Flow::Moved,
                flow => flow,
            };
        }
        let u = &mut self.ups[ex.on()];
        if !u.io.readable || matches!(ex.resp, Resp::Done | Resp::Truncated) {
            return Flow::Idle;
        }
        // Heads (a run of 1xx) the client has not taken yet: wait for it first.
        if ex.out.as_ref().is_some_and(|o| o.len() >= http::MAX_HEAD) {
            return Flow::Idle;
        }
        // Splice hook: a large body stretch goes through a pipe (splice.rs; it looks only
        // at a response body).
        if matches!(ex.resp, Resp::Body(_)) && !ex.splice.off {
            if let Some(flow) = self.splice_recv_response(ci) {
                return flow;
            }
        }
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let u = &mut self.ups[ex.on()];
        let buf = ex.resp_buf.get_or_insert_with(|| self.ctx.bufs.get());
        // Bulk growth: an emptied body buffer the last read filled doubles (buffer.rs).
        if let (true, Resp::Body(body)) = (buf.is_empty(), ex.resp) {
            self.ctx.bufs.enlarge(buf, ex.resp_hot, body.opaque_left());
        }
        if buf.space().is_empty() {
            if ex.resp == Resp::Head && buf.capacity() <= http::MAX_HEAD {
                buf.grow(http::MAX_HEAD + 1);
            } else {
                return Flow::Idle;
            }
        }
        let room = buf.space().len();
        match read_into(&mut u.sock, buf, &mut u.io) {
            Ok(0) => {
                ex.keep = false;
                if ex.resp == Resp::Body(Body::UntilClose) {
                    ex.resp = Resp::Done;
                    return Flow::Moved;
                }
                Flow::Failed(Failure::Reset)
            }
            Ok(n) => {
                ex.resp_hot = n == room;
                ex.got_bytes = true;
                match self.process_response(ci) {
                    Flow::Idle => Flow::Moved,
                    flow => flow,
                }
            }
            Err(e) if would_block(&e) => Flow::Idle,
            // Reset by the backend.
            Err(_) => Flow::Failed(Failure::Reset),
        }
    }

    /// Parses response heads and validates body bytes that arrived (`h1_response.rs`);
    /// heads are rewritten for the client into `Exchange::out`.
    fn process_response(&mut self, ci: usize) -> Flow {
        let draining = self.ctx.draining;
        loop {
            let (_, ex) = self.clients[ci].split().expect("proxying");
            if let Resp::Body(_) = ex.resp {
                let how = if ex.dechunk {
                    Unframe::Dechunk
                } else {
                    Unframe::Keep
                };
                return match h1_response::body(ex, how) {
                    Ok(()) => Flow::Moved,
                    Err(why) => Flow::Failed(why),
                };
            }
            if ex.resp != Resp::Head {
                return Flow::Idle;
            }
            let body_done = ex.body.is_done();
            let http10 = ex.http10;
            let buf = ex.resp_buf.as_ref().expect("response bytes");
            let mut headers = http::header_array();
            let r = match h1_response::parse(buf.bytes(), &mut headers, ex, ex.upgrade) {
                Ok(Some(r)) => r,
                Ok(None) => return Flow::Idle,
                Err(bad) => return Flow::Failed(Failure::BadResponse(bad.0)),
            };
            let scratch = &mut self.ctx.scratch;
            scratch.clear();
            let mut reply = Reply {
                http10,
                close: false,
                dechunk: false,
            };
            // A 502/503/504 head a retry policy replays goes to the exchange's step; if no
            // replay is possible after all, it is parsed again and forwarded as it is.
            let replay = !ex.final_answer && ex.out.is_none();
            let head_len = match h1_response::kind(&r, ex, replay) {
                Kind::Replay(status) => return Flow::Status(status),
                Kind::Switch => {
                    // Only for an upgrade request: the head goes to the client, then the
                    // tunnel starts (step_proxy). Bytes after it stay in `resp_buf` for the
                    // tunnel.
                    if !body_done {
                        let bad = Failure::BadResponse("101 before the request body was sent");
                        return Flow::Failed(bad);
                    }
                    r.write_client(scratch, &reply);
                    let n = r.head_len;
                    h1_response::took_final(ex, &mut self.ctx.bufs, 101, false, BodyKind::None);
                    // Nothing more of the request goes: the connection is the tunnel's.
                    self.ctx.bufs.release(&mut ex.head);
                    ex.resp = Resp::Done;
                    n
                }
                Kind::Interim => {
                    if !http10 {
                        r.write_client(scratch, &reply);
                    }
                    r.head_len
                }
                Kind::Final => {
                    let dechunk = http10 && r.body == BodyKind::Chunked;
                    reply.close = !ex.keep_alive
                        || !body_done
                        || draining
                        || dechunk
                        || r.body == BodyKind::UntilClose;
                    reply.dechunk = dechunk;
                    r.write_client(scratch, &reply);
                    let (n, status, body) = (r.head_len, r.status, r.body);
                    // A response before the whole request body was sent leaves the
                    // connection out of step: never reused.
                    let keep = r.keep_alive && body_done;
                    h1_response::took_final(ex, &mut self.ctx.bufs, status, keep, body);
                    ex.dechunk = dechunk;
                    ex.keep_alive = !reply.close;
                    n
                }
            };
            ex.resp_buf
                .as_mut()
                .expect("response bytes")
                .consume(head_len);
            if !scratch.is_empty() {
                let out = ex.out.get_or_insert_with(|| self.ctx.bufs.get());
                if out.capacity() - out.end() < scratch.len() {
                    out.grow(out.end() + scratch.len());
                }
                out.space()[..scratch.len()].copy_from_slice(scratch);
                out.filled(scratch.len());
            }
        }
    }
}

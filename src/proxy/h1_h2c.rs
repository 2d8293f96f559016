//! HTTP/1.1 clients to h2c backends: an exchange whose backend speaks HTTP/2 runs as one
//! stream of a shared per-worker connection (`h2c_pool.rs`, `Hop::H2c`), translated both
//! ways as NGINX and Envoy do. This is one turn of the exchange's step (`h1_step.rs`).
//!
//! - The request: the rewritten HTTP/1.1 head (`Exchange::head`: hop-by-hop fields and
//!   those `Connection` named already gone, X-Forwarded-For extended, Via added, framing
//!   corelb's own) becomes HTTP/2 fields (`:method`, `:scheme` https for a TLS client
//!   else http, `:authority` from Host, `:path`, lowercase names, `te: trailers` if the
//!   client sent it), taken from where `Exchange::head_index` says its parts are: the
//!   head is written once and never parsed again. The body goes
//!   as DATA without its chunk framing, within the backend's windows: the client is read
//!   only while they are open. Chunked request trailers become HTTP/2 trailers.
//! - The response: the HTTP/2 head becomes a status line and head. Its body goes with its
//!   content-length, else chunked (DATA as chunks, trailers in the chunked trailer
//!   section), or until close to an HTTP/1.0 client. Trailers HTTP/1.1 cannot carry are
//!   dropped and counted (`trailers_dropped`). DATA goes from the stream's inbox straight
//!   to the client socket, and the backend's window is released only as the client takes
//!   the bytes.
//! - `Expect: 100-continue` is answered here once the stream is open (the backend gets no
//!   `expect`; HTTP/2 1xx heads are not relayed).
//!
//! A turn's failure goes to the step, which handles it as for an HTTP/1.1 server (a safe
//! retry under `decide::replay`, REFUSED_STREAM and GOAWAY-unprocessed as
//! `Failure::Refused`, else a 502/504; after the response head the client connection
//! closes with the body cut short). The shared connection's timer is its own (connect,
//! pool idle): the exchange's deadlines are on the client's timer, as for every hop.

use std::sync::atomic::Ordering::Relaxed;

use crate::buffer::{Buf, BufPool};
use crate::debug;
use crate::h2::{ErrorCode, Fields};
use crate::http::{self, Body};

use super::back::{InboxBody, Next, ResponseBody};
use super::conns::{Flow, Phase, Proxy, Step};
use super::context::Ctx;
use super::decide::{Blame, Failure, Waits};
use super::exchange::{Exchange, Hop, Req, Resp};
use super::h1_h2c_translate::{
    chunk_line, framing, request_pairs, response_head, trailer_pairs, ClientFraming, H2cLeg,
};
use super::h2_translate::trailer_lines;
use super::h2c_conn::{InboxHead, MuxStream};
use super::io::{read_into, would_block, write_out};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
/// Why a request head could not be sent as HTTP/2 (not expected: corelb wrote it).
const UNTRANSLATABLE: &str = "request head not translatable to HTTP/2";

impl Proxy {
    /// `step_proxy`'s turn on an h2c stream: a hedge racing the attempt first, then the
    /// request out, the response to the client; the frames this queued go out at its end.
    pub(super) fn h1_h2c_turn(&mut self, ci: usize) -> Flow {
        // hedge hook: a hedge racing this attempt goes first; its head may make it the
        // attempt (hedge.rs).
        let hedged = self.h2c_hedge_step(ci);
        let Some((_, ex)) = self.clients[ci].split() else {
            return Flow::Idle;
        };
        let ui = ex.on();
        let mut moved = hedged;
        let flow = match self.h1_h2c_send(ci, ui) {
            sent @ (Flow::Idle | Flow::Moved) => {
                moved |= matches!(sent, Flow::Moved);
                self.h1_h2c_recv(ci, ui)
            }
            other => other,
        };
        if let Some((_, ex)) = self.clients[ci].split() {
            if ex.got_bytes && ex.hedge.up.is_some() {
                // This attempt's head won the race: the hedge is cancelled.
                let c = &self.ctx.shared.counters;
                c.hedges_cancelled.fetch_add(1, Relaxed);
                self.end_hedging(ci);
                moved = true;
            }
        }
        // Frames queued by this turn (HEADERS, DATA, WINDOW_UPDATE) go out now; frames
        // left unflushed count as progress, for the step to come back to them.
        if !self.mux_flush(ui) {
            moved = true;
        }
        match flow {
            Flow::Idle if moved => Flow::Moved,
            flow => flow,
        }
    }

    /// The request upstream: HEADERS once the connection is up, then the body as DATA
    /// within the windows (reading the client only while they are open), then END_STREAM
    /// or the trailers.
    fn h1_h2c_send(&mut self, ci: usize, ui: usize) -> Flow {
        let mut moved = false;
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.resp == Resp::Truncated {
            // Cut short mid-response: nothing more of the request goes.
            return Flow::Idle;
        }
        if !leg_of(&mut ex.hop).opened {
            if self.ups[ui].is_connecting() {
                return Flow::Idle;
            }
            let end = ex.body.is_done() && ex.body_ready == 0;
            let opened = self.h1_h2c_open(ci, ui, end);
            let (_, ex) = self.clients[ci].split().expect("proxying");
            match opened {
                None => return Flow::Failed(Failure::BadResponse(UNTRANSLATABLE)),
                Some(Ok(false)) => return Flow::Idle,
                Some(Ok(true)) => {}
                Some(Err(())) => {
                    let m = self.ups[ui].mux().expect("a mux");
                    return match m.stream(ci, 0).and_then(|k| m.streams[k].gone) {
                        Some(g) => Flow::Failed(g.failure()),
                        // A pooled connection turned full: another one. A new connection
                        // without room is the backend refusing.
                        None if ex.reused => Flow::NoRoom,
                        None => Flow::Failed(Failure::Refused),
                    };
                }
            }
            let leg = leg_of(&mut ex.hop);
            (leg.opened, leg.up_end) = (true, end);
            ex.head_off = ex.head.as_ref().map_or(0, |h| h.len());
            ex.settle_req();
            if std::mem::take(&mut ex.expect) && !ex.http10 && !end && ex.body_ready == 0 {
                // The client waits for a go-ahead before its body; the backend saw no
                // `expect`, so it is given here.
                append(&mut self.ctx.bufs, &mut ex.out, CONTINUE);
            }
            moved = true;
        }
        loop {
            match self.h1_h2c_body(ci, ui) {
                Ok(m) => moved |= m,
                Err(()) => return Flow::Failed(Failure::Reset),
            }
            match self.h1_h2c_read_body(ci, ui) {
                Ok(true) => moved = true,
                Ok(false) if moved => return Flow::Moved,
                Ok(false) => return Flow::Idle,
                Err(step) => return Flow::Over(step),
            }
        }
    }

    /// Opens client `ci`'s stream on h2c connection `ui` with the request's HTTP/2 fields
    /// (from its rewritten head), ending it if `end`: `mux_open`'s answer, or `None` if
    /// the head cannot be read.
    pub(super) fn h1_h2c_open(
        &mut self,
        ci: usize,
        ui: usize,
        end: bool,
    ) -> Option<Result<bool, ()>> {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let te = ex.h2.te_trailers;
        let scheme: &[u8] = if ex.h2.https { b"https" } else { b"http" };
        let head = ex.head.take();
        let index = std::mem::take(&mut ex.head_index);
        let mut names = std::mem::take(&mut self.ctx.scratch);
        let opened = match head.as_ref() {
            Some(h) => request_pairs(h.bytes(), &index, scheme, te, &mut names, |pairs| {
                self.mux_open(ui, ci, 0, pairs, end)
            }),
            None => None,
        };
        self.ctx.scratch = names;
        let (_, ex) = self.clients[ci].split().expect("proxying");
        ex.head = head;
        ex.head_index = index;
        opened
    }

    /// Validated body bytes from the client's buffer as DATA, as far as the windows
    /// allow; then END_STREAM or the trailers. `Err` if the connection is gone.
    fn h1_h2c_body(&mut self, ci: usize, ui: usize) -> Result<bool, ()> {
        let replay_max = self.ctx.shared.cfg.retry.replay_max();
        let c = &mut self.clients[ci];
        let Phase::Proxy(ex) = &mut c.phase else {
            return Ok(false);
        };
        let policy = !ex.retry_on.is_empty();
        let chunked = ex.h2.chunked;
        let leg = leg_of(&mut ex.hop);
        if leg.up_end || ex.req == Req::Closed {
            return Ok(false);
        }
        let m = self.ups[ui].mux_mut().expect("a mux");
        let k = m.stream(ci, 0).ok_or(())?;
        if m.streams[k].gone.is_some() {
            // The backend reset the stream (or lost the connection): nothing more goes;
            // the response side says what that means.
            return Ok(false);
        }
        let sid = m.streams[k].sid;
        let mut moved = false;
        if ex.body_ready > 0 {
            let buf = c.buf.as_mut().expect("body bytes");
            let bytes = &buf.bytes()[..ex.body_ready];
            let mut room = m.conn.send_capacity(sid);
            let mut at = 0;
            if chunked {
                // The bytes were validated (`Exchange::body`); this decoder only finds the
                // data in them, and the trailer lines.
                while at < bytes.len() {
                    if leg.dec.in_data() {
                        if room == 0 {
                            break;
                        }
                        let end = bytes.len().min(at + room);
                        let p = leg.dec.decode(&bytes[at..end]).map_err(|_| ())?;
                        let data = &bytes[at..][p.data];
                        if m.conn.send_data(sid, data, false).map_err(|_| ())? != data.len() {
                            return Err(());
                        }
                        room -= data.len();
                        at += p.consumed;
                    } else {
                        let b = bytes[at];
                        if leg.dec.in_trailers() && !(leg.trailers.is_empty() && b == b'\r') {
                            leg.trailers.push(b);
                        }
                        leg.dec.decode(&bytes[at..=at]).map_err(|_| ())?;
                        at += 1;
                    }
                }
            } else {
                let n = bytes.len().min(room);
                let last = ex.body.is_done() && n == bytes.len();
                if n > 0 || last {
                    at = m.conn.send_data(sid, &bytes[..n], last).map_err(|_| ())?;
                    leg.up_end = last && at == bytes.len();
                }
            }
            if at > 0 {
                // Kept for a replay (an h2c server may refuse the stream, whatever the
                // policy) within the replay buffer, in the same buffer as every pair's.
                if ex.body_went(buf, at, true, replay_max, &mut self.ctx.bufs) && policy {
                    let c = &self.ctx.shared.counters;
                    c.replay_overflows.fetch_add(1, Relaxed);
                }
                moved = true;
            }
        }
        let leg = leg_of(&mut ex.hop);
        if !leg.up_end && ex.body.is_done() && ex.body_ready == 0 {
            let r = if leg.trailers.is_empty() {
                m.conn.send_data(sid, &[], true).map(|_| ())
            } else {
                let mut names = std::mem::take(&mut self.ctx.scratch);
                let (r, dropped) =
                    trailer_pairs(&leg.trailers, &mut names, |p| m.conn.send_trailers(sid, p));
                self.ctx.scratch = names;
                if dropped > 0 {
                    let c = &self.ctx.shared.counters;
                    c.trailers_dropped.fetch_add(dropped, Relaxed);
                }
                r
            };
            r.map_err(|_| ())?;
            leg.up_end = true;
            moved = true;
        }
        ex.settle_req();
        Ok(moved)
    }

    /// Reads more request body from the client when the backend can take some. `Ok(true)`
    /// if bytes came; `Err` if the exchange ended (the client left or sent a bad body).
    fn h1_h2c_read_body(&mut self, ci: usize, ui: usize) -> Result<bool, Step> {
        let id = self.ctx.id;
        let c = &mut self.clients[ci];
        let Phase::Proxy(ex) = &mut c.phase else {
            return Ok(false);
        };
        let leg = leg_of(&mut ex.hop);
        let unsent = ex.body_ready > 0;
        if leg.up_end || ex.req != Req::Body || ex.body.is_done() || unsent || !c.io.readable {
            return Ok(false);
        }
        let m = self.ups[ui].mux().expect("a mux");
        let room = m
            .stream(ci, 0)
            .map_or(0, |k| m.conn.send_capacity(m.streams[k].sid));
        if room == 0 {
            // Backpressure: the client waits until the backend opens its window.
            return Ok(false);
        }
        let buf = c.buf.get_or_insert_with(|| self.ctx.bufs.get());
        if buf.is_empty() {
            self.ctx
                .bufs
                .enlarge(buf, ex.req_hot, ex.body.opaque_left());
        }
        let space = buf.space().len();
        match read_into(&mut c.sock, buf, &mut c.io) {
            Ok(0) => {
                debug!("worker {id}: client {} closed mid-body", c.peer);
                self.abort(ci, Blame::Client);
                Err(Step::Closed)
            }
            Ok(n) => {
                ex.req_hot = n == space;
                match ex.body.advance(buf.bytes()) {
                    Ok(n) => {
                        ex.body_ready = n;
                        ex.settle_req();
                        Ok(true)
                    }
                    Err(e) => {
                        debug!("worker {id}: bad request body from {}: {e}", c.peer);
                        if ex.resp == Resp::Head && ex.out.is_none() {
                            self.end_upstream(ci, 400, Blame::Client);
                            self.respond(ci, http::BAD_REQUEST, true, true);
                            return Err(Step::Progress);
                        }
                        self.abort(ci, Blame::Client);
                        Err(Step::Closed)
                    }
                }
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(_) => {
                self.abort(ci, Blame::Client);
                Err(Step::Closed)
            }
        }
    }

    /// The response from the stream's inbox to the client: the head translated, DATA
    /// written from the inbox (as chunks when chunked) and released to the backend, then
    /// the end of the body.
    fn h1_h2c_recv(&mut self, ci: usize, ui: usize) -> Flow {
        let draining = self.ctx.draining;
        let c = &mut self.clients[ci];
        let Phase::Proxy(ex) = &mut c.phase else {
            return Flow::Idle;
        };
        if ex.resp == Resp::Truncated {
            // Cut short: what arrived goes to the client, nothing more is read.
            if ex.out.is_none() || !c.io.writable {
                return Flow::Idle;
            }
            let bufs = &mut self.ctx.bufs;
            return match write_out(&mut c.sock, &mut ex.out, bufs, &[], &mut c.io) {
                Ok((n, _)) => {
                    ex.rec.response_bytes += n as u64;
                    Flow::Moved
                }
                Err(e) if would_block(&e) => Flow::Idle,
                Err(_) => {
                    self.abort(ci, Blame::Client);
                    Flow::Over(Step::Closed)
                }
            };
        }
        let m = self.ups[ui].mux_mut().expect("a mux");
        let Some(k) = m.stream(ci, 0) else {
            return Flow::Failed(Failure::Reset);
        };
        let ms = &mut m.streams[k];
        let mut moved = false;
        if ex.resp == Resp::Head {
            if let Some(turn) = take_head(&mut self.ctx, ex, ms, draining) {
                return turn;
            }
            moved = true;
        }
        let leg = leg_of(&mut ex.hop);
        let mut body = InboxBody {
            conn: &mut m.conn,
            ms,
        };
        let mut lost = false;
        loop {
            let (data, take) = match body.next() {
                Next::Data(d, _) if leg.framing == ClientFraming::Bodiless => {
                    // A body where HTTP/1.1 has none (HEAD, 204, 304): not relayed.
                    let n = d.len();
                    body.taken(n);
                    continue;
                }
                Next::Data(d, _) => {
                    if leg.framing == ClientFraming::Chunked && leg.chunk_left == 0 {
                        let mut line = [0u8; 24];
                        let n = chunk_line(leg.any_chunk, d.len(), &mut line);
                        append(&mut self.ctx.bufs, &mut ex.out, &line[..n]);
                        leg.chunk_left = d.len();
                        leg.any_chunk = true;
                    }
                    let take = match leg.framing {
                        ClientFraming::Chunked => leg.chunk_left,
                        ClientFraming::Length | ClientFraming::Close => d.len(),
                        ClientFraming::Unset | ClientFraming::Bodiless => 0,
                    };
                    (d, take)
                }
                Next::End(trailers) if !leg.end_queued && leg.framing != ClientFraming::Unset => {
                    // The whole body is out: its end follows, with the trailers if HTTP/1.1
                    // can carry them here.
                    let scratch = &mut self.ctx.scratch;
                    scratch.clear();
                    let dropped = end_of_body(leg, trailers, scratch);
                    if dropped > 0 {
                        let c = &self.ctx.shared.counters;
                        c.trailers_dropped.fetch_add(dropped, Relaxed);
                    }
                    body.finish();
                    if !scratch.is_empty() {
                        append(&mut self.ctx.bufs, &mut ex.out, scratch);
                    }
                    leg.end_queued = true;
                    ex.resp = Resp::Done;
                    moved = true;
                    (&[][..], 0)
                }
                Next::Lost(_) => {
                    lost = true;
                    (&[][..], 0)
                }
                Next::End(_) | Next::Wait => (&[][..], 0),
            };
            if ex.out.is_none() && take == 0 || !c.io.writable {
                break;
            }
            let bufs = &mut self.ctx.bufs;
            match write_out(&mut c.sock, &mut ex.out, bufs, &data[..take], &mut c.io) {
                Ok((n, of_data)) => {
                    moved = true;
                    ex.rec.response_bytes += n as u64;
                    if of_data > 0 {
                        body.taken(of_data);
                        if leg.framing == ClientFraming::Chunked {
                            leg.chunk_left -= of_data;
                        }
                    }
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    debug!(
                        "worker {}: client {} went away mid-response",
                        self.ctx.id, c.peer
                    );
                    self.abort(ci, Blame::Client);
                    return Flow::Over(Step::Closed);
                }
            }
        }
        let ms = &mut m.streams[k];
        ms.release_drained(&mut self.ctx.bufs);
        // Cut short mid-body: what arrived went out; the client sees the truncation.
        match ms.gone {
            Some(why) if lost && ex.out.is_none() => Flow::Failed(why.failure()),
            _ if moved => Flow::Moved,
            _ => Flow::Idle,
        }
    }

    /// Takes client `ci`'s exchange off its stream on h2c connection `ui` (the `end.rs`
    /// hooks): a stream still open is reset (NO_ERROR once the response is complete, else
    /// CANCEL); the shared connection stays.
    pub(super) fn h1_h2c_detach(&mut self, ci: usize, ui: usize) {
        let mut code = ErrorCode::CANCEL;
        if let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) {
            if matches!(&ex.hop, Hop::H2c(leg) if leg.end_queued) {
                code = ErrorCode::NO_ERROR;
            }
        }
        self.mux_detach(ui, ci, 0, code);
    }
}

/// The h2c stream of an exchange's attempt. Called only on such an attempt.
#[inline]
fn leg_of(hop: &mut Hop) -> &mut H2cLeg {
    match hop {
        Hop::H2c(leg) => leg,
        Hop::Http1 => unreachable!("an h2c attempt"),
    }
}

/// Where an exchange on an h2c stream stands, for its deadlines (`h1_step.rs`): `inbox`,
/// the stream holds response bytes for the client; `room`, the server takes body now.
pub(super) fn waits(ex: &Exchange, leg: &H2cLeg, inbox: bool, room: bool, writable: bool) -> Waits {
    Waits {
        client_slow: (ex.out.is_some() || inbox) && !writable,
        need_client_body: leg.opened
            && !leg.up_end
            && !ex.body.is_done()
            && ex.body_ready == 0
            && room,
        request_pending: !leg.up_end && ex.body_ready > 0,
        response_done: leg.end_queued,
        response_started: ex.resp != Resp::Head,
    }
}

/// The response head from stream `ms`'s inbox, as an HTTP/1.1 head in `ex.out`, framed
/// for the client; the request is then no longer replayed. `Some(turn)` instead when
/// there is no head yet (or it broke), or a 502/503/504 a retry policy replays.
fn take_head(ctx: &mut Ctx, ex: &mut Exchange, ms: &mut MuxStream, draining: bool) -> Option<Flow> {
    let replay = |s| ex.retry_on.has_status(s) && !ex.final_answer;
    let head = match ms.take_head(replay) {
        InboxHead::Wait => return Some(Flow::Idle),
        InboxHead::Gone(why) => return Some(Flow::Failed(why.failure())),
        InboxHead::Replay(s) => return Some(Flow::Status(s)),
        InboxHead::Head(head) => head,
    };
    let empty = ms.drained_to_end();
    let status = head.status().unwrap_or(502);
    let length = head
        .get(b"content-length")
        .and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
    let framing = framing(
        status,
        ex.method == http::Method::Head,
        length,
        empty && ms.trailers.is_none(),
        ex.http10,
    );
    if framing == ClientFraming::Close || draining {
        ex.keep_alive = false;
    }
    let scratch = &mut ctx.scratch;
    scratch.clear();
    response_head(
        &head,
        status,
        framing,
        length,
        ex.http10,
        ex.keep_alive,
        scratch,
    );
    append(&mut ctx.bufs, &mut ex.out, scratch);
    leg_of(&mut ex.hop).framing = framing;
    // A response is under way: the request will not be replayed.
    ex.took_head(status, &mut ctx.bufs);
    ex.give_up_replay(&mut ctx.bufs);
    ex.resp = Resp::Body(Body::UntilClose);
    None
}

/// Appends `bytes` to `out` (taking a buffer from the pool if there is none).
fn append(bufs: &mut BufPool, out: &mut Option<Buf>, bytes: &[u8]) {
    let b = out.get_or_insert_with(|| bufs.get());
    if b.capacity() - b.end() < bytes.len() {
        b.grow(b.end() + bytes.len());
    }
    b.space()[..bytes.len()].copy_from_slice(bytes);
    b.filled(bytes.len());
}

/// The end of a response body into `out`: for chunked, the last chunk and the trailer
/// section with `trailers`. Returns how many trailer fields were dropped (HTTP/1.1 cannot
/// carry them with the other framings).
fn end_of_body(leg: &H2cLeg, trailers: Option<&Fields>, out: &mut Vec<u8>) -> u64 {
    if leg.framing != ClientFraming::Chunked {
        return trailers.map_or(0, |t| t.regular().count() as u64);
    }
    if leg.any_chunk {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n");
    let dropped = trailers.map_or(0, |t| trailer_lines(t, out));
    out.extend_from_slice(b"\r\n");
    dropped
}

#[cfg(test)]
#[path = "h1_h2c_tests.rs"]
mod tests;

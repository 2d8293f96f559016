//! Zero-copy relaying of large bodies with splice(2): socket -> pipe -> socket, in both
//! directions (as HAProxy's `option splice-auto`). Once a body's head is written and any
//! body bytes already buffered are sent, a stretch of opaque body bytes of at least the
//! threshold (`--splice-min`, [`SPLICE_MIN`] by default) moves through a pipe from the
//! worker's pool; everything else is copied through buffers. A stretch is the rest of a
//! Content-Length body, or the rest of one chunk's data in a chunked body: the chunk-size
//! lines, the CRLF after each chunk's data and the trailers are read, validated and
//! forwarded (or removed, when de-chunking) in user space as when copying, and a later
//! large chunk takes a pipe again.
//!
//! The pipe is the body's buffer: bytes in it count as pending output (response) or as
//! request bytes still to send, for the deadlines and the end of the exchange, and they
//! go out before any buffered byte that follows them. Each splice is limited to the bytes
//! the stretch leaves, so the framing after a chunk and a pipelined next message stay in
//! the socket. Readiness flags are cleared only on `EAGAIN`: a splice in that would block
//! with bytes in the pipe may mean "pipe full", so the source keeps its flag until the
//! pipe has drained and a splice in still would block.

use std::sync::atomic::Ordering::Relaxed;

use crate::debug;
use crate::http::Body;

use super::conns::{Flow, Proxy, Step};
use super::decide::{Blame, Failure};
use super::exchange::{Req, Resp};
use super::io::{would_block, Io};
use super::pipe::{drain, fill, splice_len, use_splice};
impl Proxy {
    /// Request direction, spliced: pipe to backend, client to pipe. `None` when this body
    /// is not spliced (the copying path handles it).
    pub(super) fn splice_request(&mut self, ci: usize) -> Option<Flow> {
        let (c, ex) = self.clients[ci].split().expect("proxying");
        ex.splice.off |= c.sock.tcp_fd().is_none() || self.ups[ex.on()].sock.tcp_fd().is_none();
        if ex.req != Req::Body || ex.body_ready > 0 || ex.splice.off {
            return None;
        }
        let left = ex.body.opaque_left();
        if left == 0 && !ex.req_piped() {
            // A stretch ended and its bytes are sent: the framing after it (or nothing,
            // at the end of a Content-Length body) is copied.
            self.ctx.pipes.release(&mut ex.splice.req);
        }
        if ex.splice.req.is_none() {
            if !use_splice(left, ex.body_ready, false, self.ctx.pipes.min) {
                return None;
            }
            // A body a retry policy keeps for a replay is copied while the rest fits.
            if ex.keeps_for_replay(left, self.ctx.shared.cfg.retry.replay_max()) {
                return None;
            }
            ex.splice.req = self.ctx.pipes.get();
            if ex.splice.req.is_none() {
                ex.splice.off = true;
                return None;
            }
            let u = &mut self.ups[ex.on()];
            self.ctx.pipes.bound_unsent(&u.sock, &mut u.io);
            // The copy reads around spliced stretches (chunk framing) start small again.
            ex.req_hot = false;
            if c.buf.as_ref().is_some_and(|b| b.is_empty()) {
                self.ctx.bufs.release(c.buf);
            }
        }
        let u = &mut self.ups[ex.on()];
        let p = ex.splice.req.as_mut().expect("engaged");
        let (Some(up_fd), Some(client_fd)) = (u.sock.tcp_fd(), c.sock.tcp_fd()) else {
            return None;
        };
        let mut moved = false;
        let mut left = left;
        for round in 0..2 {
            if p.held > 0 && u.io.writable {
                match drain(p, up_fd, &mut u.io) {
                    Ok(n) => {
                        moved = true;
                        ex.rec.request_bytes += n as u64;
                        ex.body_sent += n as u64;
                        // Spliced bytes are not kept: no replay.
                        if !ex.retry_on.is_empty() && !ex.replay_lost {
                            let c = &self.ctx.shared.counters;
                            c.replay_overflows.fetch_add(1, Relaxed);
                        }
                        ex.replay_lost = true;
                        self.ctx
                            .shared
                            .counters
                            .spliced_bytes
                            .fetch_add(n as u64, Relaxed);
                    }
                    Err(e) if would_block(&e) => {}
                    Err(_) if ex.resp != Resp::Head => {
                        // As when copying: the backend answered and stopped reading.
                        let dropped = ex.close_request();
                        debug_assert_eq!(dropped, 0);
                        return Some(Flow::Moved);
                    }
                    Err(_) => return Some(Flow::Failed(Failure::Reset)),
                }
            }
            if round == 1 || left == 0 || !c.io.readable || p.room() == 0 {
                break;
            }
            match fill(client_fd, p, splice_len(left, p.room()), c.io) {
                Ok(0) => {
                    debug!("worker {}: client {} closed mid-body", self.ctx.id, c.peer);
                    self.abort(ci, Blame::Client);
                    return Some(Flow::Over(Step::Closed));
                }
                Ok(n) => {
                    moved = true;
                    left -= n as u64;
                    ex.body.skip_opaque(n as u64);
                }
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.abort(ci, Blame::Client);
                    return Some(Flow::Over(Step::Closed));
                }
            }
        }
        if left == 0 && p.held == 0 {
            self.ctx.pipes.release(&mut ex.splice.req);
        }
        ex.settle_req();
        Some(if moved { Flow::Moved } else { Flow::Idle })
    }

    /// Response direction, write side: the pipe's bytes to the client. `None` when the
    /// pipe holds nothing (the copying path handles the rest).
    pub(super) fn splice_send_response(&mut self, ci: usize) -> Option<Flow> {
        let (c, ex) = self.clients[ci].split().expect("proxying");
        let p = ex.splice.resp.as_mut().filter(|p| p.held > 0)?;
        if !c.io.writable {
            return Some(Flow::Idle);
        }
        match drain(p, c.sock.tcp_fd()?, c.io) {
            Ok(n) => {
                ex.rec.response_bytes += n as u64;
                self.ctx
                    .shared
                    .counters
                    .spliced_bytes
                    .fetch_add(n as u64, Relaxed);
                if p.held == 0 && resp_opaque_left(ex.resp) == 0 {
                    // The stretch is delivered: what follows (a chunk's CRLF, the next
                    // size line) is copied; a later large chunk takes a pipe again.
                    self.ctx.pipes.release(&mut ex.splice.resp);
                }
                Some(Flow::Moved)
            }
            Err(e) if would_block(&e) => Some(Flow::Idle),
            Err(_) => {
                debug!(
                    "worker {}: client {} went away mid-response",
                    self.ctx.id, c.peer
                );
                self.abort(ci, Blame::Client);
                Some(Flow::Over(Step::Closed))
            }
        }
    }

    /// Response direction, read side: backend to pipe, then on to the client. `None` when
    /// this body is not spliced. Called only while the backend is readable.
    pub(super) fn splice_recv_response(&mut self, ci: usize) -> Option<Flow> {
        let (c, ex) = self.clients[ci].split().expect("proxying");
        let Resp::Body(body) = ex.resp else {
            return None;
        };
        ex.splice.off |= c.sock.tcp_fd().is_none() || self.ups[ex.on()].sock.tcp_fd().is_none();
        if ex.splice.off || matches!(body, Body::UntilClose) {
            return None;
        }
        let left = body.opaque_left();
        if left == 0 {
            // Not in a stretch (a chunk-size line, the CRLF after a chunk's data, the
            // trailers): copied and parsed. Bytes still in the pipe go to the client
            // before them (`splice_send_response` goes first).
            if !ex.resp_piped() {
                self.ctx.pipes.release(&mut ex.splice.resp);
            }
            return None;
        }
        let engaged = ex.splice.resp.is_some();
        if !use_splice(left, 0, engaged, self.ctx.pipes.min) {
            return None;
        }
        let buffered = ex.resp_buf.as_ref().map_or(0, |b| b.len());
        if ex.out.is_some() || ex.ready > 0 || buffered > 0 {
            // The head and the body bytes already read (with a chunked body, the framing
            // and the first data of this chunk) go first; read no more into the buffer
            // meanwhile.
            return Some(Flow::Idle);
        }
        if !engaged {
            ex.splice.resp = self.ctx.pipes.get();
            if ex.splice.resp.is_none() {
                ex.splice.off = true;
                return None;
            }
            self.ctx.pipes.bound_unsent(c.sock, c.io);
        }
        // Nothing is buffered: the buffer goes back to the pool while the pipe carries the
        // stretch, and the copy reads after it (chunk framing) start small again.
        self.ctx.bufs.release(&mut ex.resp_buf);
        ex.resp_hot = false;
        let u = &mut self.ups[ex.on()];
        let p = ex.splice.resp.as_mut().expect("engaged");
        if p.room() == 0 {
            return Some(Flow::Idle);
        }
        match fill(u.sock.tcp_fd()?, p, splice_len(left, p.room()), &mut u.io) {
            Ok(0) => {
                ex.keep = false;
                Some(Flow::Failed(Failure::Reset))
            }
            Ok(n) => {
                ex.got_bytes = true;
                let mut body = body;
                body.skip_opaque(n as u64);
                ex.resp = if body.is_done() {
                    // The body's last byte: anything more in the socket is past the
                    // response, and such a connection is not pooled (as when copying).
                    probe_unread(u.sock.tcp(), &mut u.io);
                    Resp::Done
                } else {
                    // More of the stretch, or (chunked) the framing after it.
                    Resp::Body(body)
                };
                // On to the client in the same step, if it can take them.
                match self.splice_send_response(ci) {
                    Some(Flow::Idle) | None => Some(Flow::Moved),
                    flow => flow,
                }
            }
            Err(e) if would_block(&e) => Some(Flow::Idle),
            Err(_) => Some(Flow::Failed(Failure::Reset)),
        }
    }
}

/// Opaque response body bytes still to read in the current stretch (0 outside one).
fn resp_opaque_left(resp: Resp) -> u64 {
    match resp {
        Resp::Body(b) => b.opaque_left(),
        _ => 0,
    }
}

/// After a spliced body's last byte: clears `io.readable` if nothing more is queued, as a
/// short read would have; bytes or EOF past the response leave it set.
fn probe_unread(sock: &mio::net::TcpStream, io: &mut Io) {
    let mut b = [0u8; 1];
    match sock.peek(&mut b) {
        Ok(0) => io.rdhup = true,
        Ok(_) => {}
        Err(e) if would_block(&e) => io.readable = false,
        Err(_) => {}
    }
}

//! Client connections: reading and validating request heads, starting an exchange for
//! each request, answers the proxy makes itself, and closing politely (lingering so the
//! client reads our last response rather than a reset).

use std::sync::atomic::Ordering::Relaxed;

use crate::access_log::Record;
use crate::balancer::Lease;
use crate::buffer::Buf;
use crate::config::UpstreamMode;
use crate::debug;
use crate::http::{self, Body, BodyKind, Canned, Forward, Method};

use super::conns::{client_token, Phase, Proxy, Step};
use super::context::Ctx;
use super::decide::Blame;
use super::exchange::Start;
use super::h1_h2c_translate::H2Facts;
use super::io::{read_into, would_block, write2};

/// How long a closing connection keeps reading (and discarding) so the peer receives
/// our last response instead of a reset.
const LINGER_MS: u64 = 2000;

/// What a parsed head leads to.
enum Parsed {
    Step(Step),
    /// An exchange was started: send it to the backend this lease picked.
    Send(Lease),
}

impl Proxy {
    pub(super) fn arm_idle(&mut self, ci: usize) {
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.idle);
        let c = &mut self.clients[ci];
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    pub(super) fn step_head(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        if c.buf.as_ref().is_some_and(|b| !b.is_empty()) {
            let mut buf = c.buf.take().expect("checked");
            let parsed = self.parse_head(ci, &mut buf);
            match self.clients.get_mut(ci) {
                Some(c) if c.buf.is_none() => c.buf = Some(buf),
                _ => self.ctx.bufs.put(buf),
            }
            match parsed {
                Parsed::Step(Step::Blocked) => {}
                Parsed::Step(step) => return step,
                Parsed::Send(lease) => {
                    self.attach(ci, lease, false);
                    if std::mem::take(&mut self.ctx.panic_armed) {
                        panic!("test hook: a request for the panic path, attached");
                    }
                    return Step::Progress;
                }
            }
        }
        let c = &mut self.clients[ci];
        if !c.io.readable {
            if c.buf.as_ref().is_some_and(Buf::is_empty) {
                // Idle between requests: hold no buffer.
                self.ctx.bufs.release(&mut c.buf);
            }
            return Step::Blocked;
        }
        let was_empty = c.buf.as_ref().is_none_or(Buf::is_empty);
        let buf = c.buf.get_or_insert_with(|| self.ctx.bufs.get());
        if buf.space().is_empty() {
            // A head larger than one buffer: grow up to the head limit (+1 to detect excess).
            buf.grow(http::MAX_HEAD + 1);
        }
        let read = read_into(&mut c.sock, buf, &mut c.io);
        if c.sock.is_tls() && self.tls_progress(ci) {
            return Step::Progress;
        }
        let c = &mut self.clients[ci];
        match read {
            Ok(0) => {
                self.close_client(ci);
                Step::Closed
            }
            Ok(_) => {
                if was_empty {
                    // First byte of a head: the head timeout starts now and is not
                    // extended by further bytes, which stops slowloris.
                    let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.client);
                    self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
                }
                Step::Progress
            }
            Err(e) if would_block(&e) => {
                if c.buf.as_ref().is_some_and(Buf::is_empty) {
                    self.ctx.bufs.release(&mut c.buf);
                }
                Step::Blocked
            }
            Err(_) => {
                self.close_client(ci);
                Step::Closed
            }
        }
    }

    /// Parses a head from `buf` (taken out of the client) and starts the exchange.
    fn parse_head(&mut self, ci: usize, buf: &mut Buf) -> Parsed {
        let id = self.ctx.id;
        let peer = self.clients[ci].peer.get();
        let mut headers = http::header_array();
        // h2 hook: the HTTP/2 client preface starts a session instead (h2/mod.rs).
        match super::h2_session::preface(buf.bytes()) {
            super::h2_session::Preface::Partial => return Parsed::Step(Step::Blocked),
            super::h2_session::Preface::Full => return Parsed::Step(self.h2_start(ci)),
            // ALPN promised HTTP/2: anything but its preface is a protocol error.
            super::h2_session::Preface::No if self.clients[ci].sock.alpn_h2() => {
                debug!("worker {id}: {peer}: ALPN h2 without the HTTP/2 preface");
                self.close_client(ci);
                return Parsed::Step(Step::Closed);
            }
            super::h2_session::Preface::No => {}
        }
        let req = match http::parse_request(buf.bytes(), &mut headers) {
            Ok(Some(r)) => r,
            Ok(None) => return Parsed::Step(Step::Blocked),
            Err(reject) => {
                debug!("worker {id}: {} from {peer}: {reject:?}", reject.status());
                self.ctx.count_rejected();
                let rec = Record::new(id, peer, Method::Other, b"");
                self.ctx.log_local(rec, reject.canned());
                self.respond(ci, reject.canned(), true, false);
                return Parsed::Step(Step::Progress);
            }
        };
        let head_len = req.head_len;
        if self.ctx.panic_path.as_deref() == Some(req.path().as_bytes()) {
            self.ctx.panic_armed = true;
        }
        // The path is copied only when it will be logged.
        let path: &[u8] = if self.ctx.log.is_some() {
            req.path().as_bytes()
        } else {
            b""
        };
        let mut rec = Record::new(id, peer, req.method, path);
        rec.tls = self.clients[ci].sock.tls_version();
        rec.request_bytes = head_len as u64;
        let mut body = Body::new(req.body);
        // Validate the body bytes already here before anything goes upstream, so a
        // malformed chunked body that arrived with its head is never forwarded.
        let body_ready = match body.advance(&buf.bytes()[head_len..]) {
            Ok(n) => n,
            Err(e) => {
                debug!("worker {id}: 400 from {peer}: {e}");
                self.ctx.count_rejected();
                self.ctx.log_local(rec, http::BAD_REQUEST);
                self.respond(ci, http::BAD_REQUEST, true, false);
                return Parsed::Step(Step::Progress);
            }
        };
        let Some(lease) = self.pick_backend() else {
            let close = req.body != BodyKind::None || !req.keep_alive;
            debug!("worker {id}: 503: no server available");
            buf.consume(head_len + body_ready);
            self.ctx.log_local(rec, http::SERVICE_UNAVAILABLE);
            let body_left = !body.is_done();
            self.respond(ci, http::SERVICE_UNAVAILABLE, close || body_left, body_left);
            return Parsed::Step(Step::Progress);
        };
        self.ctx.count_request();
        let proto = self.ctx.forwarded_proto(&self.clients[ci].sock);
        let (retry_on, per_try) =
            self.ctx
                .retry_terms(req.method_str().as_bytes(), req.path().as_bytes(), false);
        let cfg = &self.ctx.shared.cfg;
        let hedgeable = req.body == BodyKind::None
            && !req.upgrade
            && cfg
                .retry
                .hedging
                .as_ref()
                .is_some_and(|h| h.covers(req.method_str().as_bytes(), req.path().as_bytes()));
        let close = cfg.upstream == UpstreamMode::PerRequest;
        let (method, http10, keep_alive, expect, upgrade) = (
            req.method,
            req.minor == 0,
            req.keep_alive,
            req.expect_continue,
            req.upgrade,
        );
        let https = self.clients[ci].sock.is_tls();
        let head = self.ctx.bufs.get();
        let mut ex = self.ctx.exchange(Start {
            method,
            http10,
            // An upgrade request may be followed by the new protocol's bytes: unless the
            // backend switches, the connection closes after the response.
            keep_alive: keep_alive && !self.ctx.draining && !upgrade,
            expect,
            upgrade,
            body,
            body_ready,
            head,
            rec,
        });
        ex.h2 = H2Facts::new(req.te_trailers, req.body == BodyKind::Chunked, https);
        // (The server's name borrowed from the shared state beside the scratch buffer: no
        // clone of the `Arc` all workers share, whose count would bounce between cores.)
        let ctx = &mut self.ctx;
        let b = ctx.shared.balancer.backend(lease.backend());
        let scratch = &mut ctx.scratch;
        scratch.clear();
        req.write_upstream(
            scratch,
            &mut ex.head_index,
            &Forward {
                client_ip: peer.ip(),
                close,
                host: &b.host,
                proto,
            },
        );
        // The read that brought the head filled the buffer: the body is arriving fast, so
        // its next read may take a larger buffer (buffer.rs, bulk growth).
        let filled = buf.space().is_empty();
        buf.consume(head_len);
        let head = ex.head.as_mut().expect("a new exchange's head");
        if scratch.len() > head.capacity() {
            head.grow(scratch.len());
        }
        head.space()[..scratch.len()].copy_from_slice(scratch);
        head.filled(scratch.len());
        ex.req_hot = filled;
        ex.retry_on = retry_on;
        ex.per_try = per_try;
        ex.hedgeable = hedgeable;
        self.ctx.budget.deposit();
        let c = &mut self.clients[ci];
        c.phase = Phase::Proxy(ex);
        // While proxying, the client has a deadline only when we wait on it.
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, 0);
        Parsed::Send(lease)
    }

    /// Starts writing a locally generated response. `body_left`: the client may still be
    /// sending a request body that will not be read.
    pub(super) fn respond(&mut self, ci: usize, canned: Canned, close: bool, body_left: bool) {
        let close = close || self.ctx.draining;
        let c = &mut self.clients[ci];
        let rest = if close {
            canned.close
        } else {
            canned.keep_alive
        };
        let old = std::mem::replace(
            &mut c.phase,
            Phase::Local {
                rest,
                close,
                body_left,
            },
        );
        if let Phase::Proxy(ex) = old {
            self.ctx.recycle(ex);
        }
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.idle);
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    pub(super) fn step_local(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Phase::Local {
            rest,
            close,
            body_left,
        } = &mut c.phase
        else {
            return Step::Blocked;
        };
        if !rest.is_empty() {
            if !c.io.writable {
                return Step::Blocked;
            }
            match write2(&mut c.sock, rest, &[], &mut c.io) {
                Ok(n) => *rest = &rest[n..],
                Err(e) if would_block(&e) => return Step::Blocked,
                Err(_) => {
                    self.close_client(ci);
                    return Step::Closed;
                }
            }
            if !rest.is_empty() {
                return Step::Blocked;
            }
        }
        if *close {
            let body_left = *body_left;
            self.linger_or_close(ci, body_left);
            Step::Closed
        } else {
            c.phase = Phase::Head;
            self.arm_idle(ci);
            Step::Progress
        }
    }

    /// Closes after a final response. If the client may still be sending, shut down our
    /// side and discard its input for a while, so it reads our response, not a reset.
    pub(super) fn linger_or_close(&mut self, ci: usize, body_left: bool) {
        let c = &mut self.clients[ci];
        let unread = c.buf.as_ref().is_some_and(|b| !b.is_empty()) || c.io.readable || body_left;
        if !unread {
            self.close_client(ci);
            return;
        }
        c.sock.shutdown_write();
        if let Phase::Proxy(ex) = std::mem::replace(&mut c.phase, Phase::Linger) {
            self.ctx.recycle(ex);
        }
        if let Some(b) = c.buf.as_mut() {
            b.clear();
        }
        let at = self.ctx.now + LINGER_MS;
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    pub(super) fn step_linger(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        if !c.io.readable {
            return Step::Blocked;
        }
        let buf = c.buf.get_or_insert_with(|| self.ctx.bufs.get());
        buf.clear();
        match read_into(&mut c.sock, buf, &mut c.io) {
            Ok(0) => {
                self.close_client(ci);
                Step::Closed
            }
            Ok(_) => Step::Progress,
            Err(e) if would_block(&e) => Step::Blocked,
            Err(_) => {
                self.close_client(ci);
                Step::Closed
            }
        }
    }

    pub(super) fn close_client(&mut self, ci: usize) {
        if !self.clients.contains(ci) {
            return;
        }
        self.end_upstream(ci, 0, Blame::Client);
        // h2 hook: an HTTP/2 session's streams end with the connection.
        self.h2_close_streams(ci);
        let mut c = self.clients.remove(ci);
        self.tls_forget(&c.sock);
        self.ctx.bufs.release(&mut c.buf);
        match c.phase {
            Phase::Proxy(ex) => self.ctx.recycle(ex),
            Phase::Tunnel(t) => self.end_tunnel(t),
            _ => {}
        }
        self.ctx
            .shared
            .counters
            .active_clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    pub(super) fn client_timeout(&mut self, ci: usize) {
        // end.rs hook: an exchange backing off before a retry has no upstream; the timer
        // starts its next attempt.
        if matches!(self.clients[ci].phase, Phase::Proxy(_)) && self.backoff_over(ci) {
            return;
        }
        // hedge hook: while an exchange waits on its backend, the timer is its hedge's.
        if matches!(self.clients[ci].phase, Phase::Proxy(_)) && self.hedge_timer(ci) {
            return;
        }
        let c = &mut self.clients[ci];
        let id = self.ctx.id;
        match c.phase {
            Phase::Head if c.buf.as_ref().is_some_and(|b| !b.is_empty()) => {
                debug!("worker {id}: 408: head from {} too slow", c.peer);
                if let Some(b) = c.buf.as_mut() {
                    b.clear();
                }
                self.respond(ci, http::REQUEST_TIMEOUT, true, false);
                self.drive(ci);
            }
            // h2 hook: a stalled or idle HTTP/2 connection closes with its streams.
            Phase::H2(_) => self.h2_timeout(ci),
            // h1_step hook: an exchange keeps both of its deadlines on this timer.
            Phase::Proxy(_) => self.exchange_timeout(ci),
            _ => {
                if c.sock.handshaking() {
                    debug!("worker {id}: TLS handshake from {} too slow", c.peer);
                    let counters = &self.ctx.shared.counters;
                    counters.tls_handshake_timeouts.fetch_add(1, Relaxed);
                }
                self.close_client(ci)
            }
        }
    }
}

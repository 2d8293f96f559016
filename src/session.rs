//! Client and upstream connections and the exchange that links them: reading a request
//! head, choosing a backend, streaming the request body up and the response down with
//! backpressure, and ending the exchange (keep-alive, close, or an error answer).
//!
//! Each connection records readiness (`Io`); `Worker::drive` then moves bytes until
//! neither side can progress. Edge-triggered: a flag is cleared only on `WouldBlock` or a
//! short read/write.

use std::io::{self, IoSlice, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::Interest;

use crate::access_log::Record;
use crate::buffer::Buf;
use crate::config::UpstreamMode;
use crate::debug;
use crate::health::Outcome;
use crate::http::{self, Body, BodyKind, Canned, Forward, Method, Reply};
use crate::timer::Deadline;
use crate::worker::{client_token, upstream_token, Worker};

const NONE: usize = usize::MAX;
/// Steps one drive may take before yielding to other connections.
const MAX_STEPS: usize = 64;
/// How long a closing connection keeps reading (and discarding) so the peer receives
/// our last response instead of a reset.
const LINGER_MS: u64 = 2000;

/// Recorded readiness of one socket.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Io {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut down its side: keep reading until EOF even after a short read.
    pub rdhup: bool,
}

impl Io {
    #[inline]
    pub fn note(&mut self, ev: &mio::event::Event) {
        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
            self.readable = true;
        }
        if ev.is_read_closed() {
            self.rdhup = true;
        }
        if ev.is_writable() || ev.is_write_closed() || ev.is_error() {
            self.writable = true;
        }
    }
}

/// What a client connection is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being exchanged with upstream `Client::up`.
    Proxy,
    /// Writing a locally generated response; then close or read the next request.
    Local { close: bool },
    /// Response sent, write side shut: discarding input until EOF before closing.
    Linger,
}

pub(crate) struct Client {
    pub sock: TcpStream,
    pub peer: SocketAddr,
    pub buf: Option<Buf>,
    pub phase: Phase,
    pub io: Io,
    pub timer: Deadline,
    /// Upstream slab index while `phase == Proxy`.
    pub up: usize,
    pub keep_alive: bool,
    pub http10: bool,
    /// The request said `Expect: 100-continue`: the client waits for the backend before
    /// sending its body, so that wait is not the client's fault.
    pub expect: bool,
    pub method: Method,
    /// Request body still to be read from the client.
    pub body: Body,
    /// Validated request body bytes at the front of `buf`, not yet sent upstream.
    pub body_ready: usize,
    /// Locally generated response being written.
    pub canned: &'static [u8],
}

impl Client {
    pub fn new(sock: TcpStream, peer: SocketAddr) -> Client {
        Client {
            sock,
            peer,
            buf: None,
            phase: Phase::Head,
            io: Io::default(),
            timer: Deadline::default(),
            up: NONE,
            keep_alive: true,
            http10: false,
            expect: false,
            method: Method::Get,
            body: Body::Done,
            body_ready: 0,
            canned: b"",
        }
    }

    /// Between requests with nothing buffered.
    pub fn is_idle(&self) -> bool {
        self.phase == Phase::Head && self.buf.as_ref().is_none_or(Buf::is_empty)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpState {
    Connecting,
    Busy,
    Idle,
}

/// Where the response to the current request stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resp {
    Head,
    Body(Body),
    /// Fully received and validated.
    Done,
    /// The backend closed or broke mid-body: forward what arrived, then close the client.
    Truncated,
}

pub(crate) struct Upstream {
    pub sock: TcpStream,
    pub backend: usize,
    /// Owning client while busy.
    pub client: usize,
    pub state: UpState,
    pub io: Io,
    pub timer: Deadline,
    /// The rewritten request head, kept until the response head arrives so the request
    /// can be replayed on another server.
    pub head: Option<Buf>,
    /// Bytes of `head` already written.
    pub head_off: usize,
    /// Request body bytes written to this connection (a body once sent cannot be replayed).
    pub body_sent: u64,
    /// Any response byte arrived on this connection for this exchange.
    pub got_bytes: bool,
    /// Attempts made for this request before this one (retries so far).
    pub retries: u8,
    /// Backends (index < 64) this request already failed on: a retry never returns there.
    pub tried: u64,
    /// The one transparent replay after a stale pooled connection has been used.
    pub stale_retried: bool,
    /// The request direction ended early: the backend answered (or stopped reading) before
    /// the body was sent. Nothing more is sent; the client connection closes afterwards.
    pub req_closed: bool,
    /// Response bytes read from the backend.
    pub buf: Option<Buf>,
    /// Response head (and any 1xx heads) to write to the client.
    pub out: Option<Buf>,
    pub resp: Resp,
    /// Validated response body bytes at the front of `buf`, ready for the client.
    pub ready: usize,
    pub dechunk: bool,
    /// The backend may be sent another request after this response.
    pub keep: bool,
    /// This exchange runs on a pooled connection.
    pub reused: bool,
    pub status: u16,
    /// When the client's request was taken on (total latency).
    pub started: Instant,
    /// When this attempt on this connection began (upstream latency).
    pub attempt: Instant,
    /// Microseconds from `started` to the response head (0 until it arrives).
    pub ttfb_us: u64,
    /// The log record of the current exchange, completed when it ends.
    pub rec: Record,
}

impl Upstream {
    pub fn is_idle(&self) -> bool {
        self.state == UpState::Idle
    }

    pub fn is_connecting(&self) -> bool {
        self.state == UpState::Connecting
    }

    fn pending_out(&self) -> bool {
        self.out.is_some() || self.ready > 0
    }

    /// Head bytes still to write.
    fn head_pending(&self) -> bool {
        self.head.as_ref().is_some_and(|h| self.head_off < h.len())
    }
}

/// Result of one step of a client's exchange.
enum Step {
    Progress,
    Blocked,
    Closed,
}

/// Why an exchange failed on the upstream side.
#[derive(Debug, Clone, Copy)]
enum Failure {
    Connect,
    ConnectTimeout,
    Reset,
    Timeout,
    BadResponse(&'static str),
}

impl Failure {
    fn reason(self) -> &'static str {
        match self {
            Failure::Connect => "connect failed",
            Failure::ConnectTimeout => "connect timed out",
            Failure::Reset => "connection reset or closed",
            Failure::Timeout => "timed out",
            Failure::BadResponse(why) => why,
        }
    }

    fn canned(self) -> Canned {
        match self {
            Failure::Timeout | Failure::ConnectTimeout => http::GATEWAY_TIMEOUT,
            _ => http::BAD_GATEWAY,
        }
    }
}

#[inline]
fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Reads into `buf`'s free space. `Ok(0)` is EOF; a short read clears `io.readable`.
#[inline]
fn read_into(sock: &mut TcpStream, buf: &mut Buf, io: &mut Io) -> io::Result<usize> {
    let space = buf.space();
    let room = space.len();
    debug_assert!(room > 0);
    loop {
        match sock.read(space) {
            Ok(n) => {
                if n > 0 && n < room && !io.rdhup {
                    io.readable = false;
                }
                buf.filled(n);
                return Ok(n);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => {
                if would_block(&e) {
                    io.readable = false;
                }
                return Err(e);
            }
        }
    }
}

/// Writes `a` then `b` with one `writev`. A short write clears `io.writable`.
#[inline]
fn write2(sock: &mut TcpStream, a: &[u8], b: &[u8], io: &mut Io) -> io::Result<usize> {
    let total = a.len() + b.len();
    let r = if a.is_empty() {
        sock.write(b)
    } else if b.is_empty() {
        sock.write(a)
    } else {
        sock.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
    };
    match r {
        Ok(n) => {
            if n < total {
                io.writable = false;
            }
            Ok(n)
        }
        Err(e) => {
            if would_block(&e) {
                io.writable = false;
            }
            Err(e)
        }
    }
}

impl Worker {
    fn ms(d: Duration) -> u64 {
        d.as_millis() as u64
    }

    /// Moves client `ci`'s exchange forward until it blocks.
    pub(crate) fn drive(&mut self, ci: usize) {
        for _ in 0..MAX_STEPS {
            let Some(c) = self.clients.get(ci) else {
                return;
            };
            let step = match c.phase {
                Phase::Head => self.step_head(ci),
                Phase::Proxy => self.step_proxy(ci),
                Phase::Local { close } => self.step_local(ci, close),
                Phase::Linger => self.step_linger(ci),
            };
            match step {
                Step::Progress => continue,
                Step::Blocked | Step::Closed => return,
            }
        }
        self.again.push(ci);
    }

    pub(crate) fn arm_idle(&mut self, ci: usize) {
        let at = self.now + Self::ms(self.shared.cfg.timeouts.idle);
        let c = &mut self.clients[ci];
        self.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    // ---- reading a request head -------------------------------------------------------

    fn step_head(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        if c.buf.as_ref().is_some_and(|b| !b.is_empty()) {
            let mut buf = c.buf.take().expect("checked");
            let step = self.parse_head(ci, &mut buf);
            if let Some(c) = self.clients.get_mut(ci) {
                if c.buf.is_none() {
                    c.buf = Some(buf);
                } else {
                    self.bufs.put(buf);
                }
            } else {
                self.bufs.put(buf);
            }
            if !matches!(step, Step::Blocked) {
                return step;
            }
        }
        let c = &mut self.clients[ci];
        if !c.io.readable {
            if c.buf.as_ref().is_some_and(Buf::is_empty) {
                // Idle between requests: hold no buffer.
                self.bufs.release(&mut c.buf);
            }
            return Step::Blocked;
        }
        let was_empty = c.buf.as_ref().is_none_or(Buf::is_empty);
        let buf = c.buf.get_or_insert_with(|| self.bufs.get());
        if buf.space().is_empty() {
            // A head larger than one buffer: grow up to the head limit (+1 to detect excess).
            buf.grow(http::MAX_HEAD + 1);
        }
        match read_into(&mut c.sock, buf, &mut c.io) {
            Ok(0) => {
                self.close_client(ci);
                Step::Closed
            }
            Ok(_) => {
                if was_empty {
                    // First byte of a head: the head timeout starts now and is not
                    // extended by further bytes, which stops slowloris.
                    let at = self.now + Self::ms(self.shared.cfg.timeouts.client);
                    self.timers.set(&mut c.timer, client_token(ci).0, at);
                }
                Step::Progress
            }
            Err(e) if would_block(&e) => {
                if c.buf.as_ref().is_some_and(Buf::is_empty) {
                    self.bufs.release(&mut c.buf);
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
    fn parse_head(&mut self, ci: usize, buf: &mut Buf) -> Step {
        let mut headers = http::header_array();
        let req = match http::parse_request(buf.bytes(), &mut headers) {
            Ok(Some(r)) => r,
            Ok(None) => return Step::Blocked,
            Err(reject) => {
                debug!(
                    "worker {}: {} from {}: {:?}",
                    self.id,
                    reject.status(),
                    self.clients[ci].peer,
                    reject
                );
                self.shared
                    .counters
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let rec = Record::new(self.id, self.clients[ci].peer, Method::Other, b"");
                self.log_local(rec, reject.canned());
                self.respond(ci, reject.canned(), true);
                return Step::Progress;
            }
        };
        let head_len = req.head_len;
        let peer = self.clients[ci].peer;
        // The path is copied only when it will be logged.
        let path: &[u8] = if self.log.is_some() {
            req.path().as_bytes()
        } else {
            b""
        };
        let mut rec = Record::new(self.id, peer, req.method, path);
        rec.request_bytes = head_len as u64;
        let mut body = Body::new(req.body);
        // Validate the body bytes already here before anything goes upstream, so a
        // malformed chunked body that arrived with its head is never forwarded.
        let body_ready = match body.advance(&buf.bytes()[head_len..]) {
            Ok(n) => n,
            Err(e) => {
                debug!(
                    "worker {}: 400 from {}: {e}",
                    self.id, self.clients[ci].peer
                );
                self.shared
                    .counters
                    .rejected
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                self.log_local(rec, http::BAD_REQUEST);
                self.respond(ci, http::BAD_REQUEST, true);
                return Step::Progress;
            }
        };
        let Some(backend) = self.pick_backend() else {
            let close = req.body != BodyKind::None || !req.keep_alive;
            debug!("worker {}: 503: no server available", self.id);
            buf.consume(head_len + body_ready);
            self.log_local(rec, http::SERVICE_UNAVAILABLE);
            self.respond(ci, http::SERVICE_UNAVAILABLE, close || !body.is_done());
            return Step::Progress;
        };
        let shared = self.shared.clone();
        let b = shared.balancer.backend(backend);
        self.scratch.clear();
        req.write_upstream(
            &mut self.scratch,
            &Forward {
                client_ip: self.clients[ci].peer.ip(),
                close: shared.cfg.upstream == UpstreamMode::PerRequest,
                host: &b.host,
            },
        );
        let c = &mut self.clients[ci];
        c.keep_alive = req.keep_alive && !self.draining;
        c.http10 = req.minor == 0;
        c.expect = req.expect_continue;
        c.method = req.method;
        c.body = body;
        c.body_ready = body_ready;
        buf.consume(head_len);
        self.shared
            .counters
            .requests
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);

        let mut head = self.bufs.get();
        if self.scratch.len() > head.capacity() {
            head.grow(self.scratch.len());
        }
        head.space()[..self.scratch.len()].copy_from_slice(&self.scratch);
        head.filled(self.scratch.len());

        self.budget.deposit();
        match self.upstream_for(backend, ci, false) {
            Some(ui) => {
                let u = &mut self.ups[ui];
                rec.reused = u.reused;
                u.rec = rec;
                u.retries = 0;
                u.tried = 0;
                u.stale_retried = false;
                u.head = Some(head);
                let c = &mut self.clients[ci];
                c.up = ui;
                c.phase = Phase::Proxy;
                // While proxying, the client has a deadline only when we wait on it.
                self.timers.set(&mut c.timer, client_token(ci).0, 0);
                Step::Progress
            }
            None => {
                self.bufs.put(head);
                self.shared.balancer.finish(backend, Duration::ZERO, false);
                rec.backend = Some(backend as u16);
                self.log_local(rec, http::BAD_GATEWAY);
                let c = &mut self.clients[ci];
                let close = !c.body.is_done() || !c.keep_alive;
                buf.consume(c.body_ready);
                c.body_ready = 0;
                self.respond(ci, http::BAD_GATEWAY, close);
                Step::Progress
            }
        }
    }

    /// Picks a backend for a new request. A server in slow start (recovered recently) is
    /// declined with probability 1 - ramp and another drawn, so its share rises linearly.
    fn pick_backend(&mut self) -> Option<usize> {
        let b = self.shared.balancer.pick(None)?;
        let ramp = self.shared.health.ramp(b);
        if ramp >= 1.0 || self.rng.next_f64() < ramp {
            return Some(b);
        }
        match self.shared.balancer.pick(Some(b)) {
            Some(other) => {
                self.shared.balancer.cancel(b);
                Some(other)
            }
            None => Some(b),
        }
    }

    /// A connection to `backend` for client `ci`: a pooled one, or a new one connecting.
    fn upstream_for(&mut self, backend: usize, ci: usize, fresh: bool) -> Option<usize> {
        let now = self.now;
        let resp_to = Self::ms(self.shared.cfg.timeouts.upstream);
        if self.shared.cfg.upstream == UpstreamMode::Persistent && !fresh {
            if let Some(ui) = self.idle[backend].pop() {
                let u = &mut self.ups[ui];
                u.state = UpState::Busy;
                u.client = ci;
                u.reused = true;
                u.started = Instant::now();
                u.attempt = u.started;
                u.resp = Resp::Head;
                u.ready = 0;
                u.keep = false;
                u.status = 0;
                u.head_off = 0;
                u.body_sent = 0;
                u.got_bytes = false;
                u.req_closed = false;
                u.ttfb_us = 0;
                self.timers
                    .set(&mut u.timer, upstream_token(ui).0, now + resp_to);
                return Some(ui);
            }
        }
        let addr = self.shared.balancer.backend(backend).addr;
        let mut sock = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                debug!("worker {}: connect to {addr} failed: {e}", self.id);
                return None;
            }
        };
        let entry = self.ups.vacant_entry();
        let ui = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                upstream_token(ui),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return None;
        }
        self.shared
            .counters
            .upstream_connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        entry.insert(Upstream {
            sock,
            backend,
            client: ci,
            state: UpState::Connecting,
            io: Io::default(),
            timer: Deadline::default(),
            head: None,
            head_off: 0,
            body_sent: 0,
            got_bytes: false,
            retries: 0,
            tried: 0,
            stale_retried: false,
            req_closed: false,
            buf: None,
            out: None,
            resp: Resp::Head,
            ready: 0,
            dechunk: false,
            keep: false,
            reused: false,
            status: 0,
            started: Instant::now(),
            attempt: Instant::now(),
            ttfb_us: 0,
            rec: Record::new(self.id, self.clients[ci].peer, Method::Other, b""),
        });
        let at = now + Self::ms(self.shared.cfg.timeouts.connect);
        let u = &mut self.ups[ui];
        self.timers.set(&mut u.timer, upstream_token(ui).0, at);
        Some(ui)
    }

    /// Checks a connecting upstream after an event. Returns false if it failed (the
    /// client has been answered) or is still connecting.
    pub(crate) fn connected(&mut self, ui: usize) -> bool {
        let u = &mut self.ups[ui];
        if !u.io.writable {
            return false;
        }
        match u.sock.take_error() {
            Ok(None) => {}
            Ok(Some(_)) | Err(_) => {
                let ci = u.client;
                self.fail(ci, Failure::Connect);
                return false;
            }
        }
        match u.sock.peer_addr() {
            Ok(_) => {
                let _ = u.sock.set_nodelay(true);
                u.state = UpState::Busy;
                let at = self.now + Self::ms(self.shared.cfg.timeouts.upstream);
                self.timers.set(&mut u.timer, upstream_token(ui).0, at);
                true
            }
            Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                u.io.writable = false;
                false
            }
            Err(_) => {
                let ci = u.client;
                self.fail(ci, Failure::Connect);
                false
            }
        }
    }

    // ---- the exchange -----------------------------------------------------------------

    fn step_proxy(&mut self, ci: usize) -> Step {
        let ui = self.clients[ci].up;
        if self.ups[ui].state == UpState::Connecting {
            return Step::Blocked;
        }
        let mut progress = false;
        match self.send_request(ci, ui) {
            Ok(true) => progress = true,
            Ok(false) => {}
            Err(step) => return step,
        }
        match self.send_response(ci, ui) {
            Ok(true) => progress = true,
            Ok(false) => {}
            Err(step) => return step,
        }
        match self.recv_response(ci, ui) {
            Ok(true) => progress = true,
            Ok(false) => {}
            Err(step) => return step,
        }
        let (c, u) = (&self.clients[ci], &self.ups[ui]);
        if u.resp == Resp::Done && !c.body.is_done() && !u.req_closed {
            // The response is complete before the request body: send no more of it (a
            // backend that stopped reading would stall us); the client connection closes
            // after the response, as the rest of its body cannot be told from a request.
            self.close_request(ci, ui);
        }
        let (c, u) = (&self.clients[ci], &self.ups[ui]);
        if !u.pending_out() && (u.req_closed || (!u.head_pending() && c.body_ready == 0)) {
            match u.resp {
                Resp::Done => return self.finish(ci),
                Resp::Truncated => {
                    self.abort(ci, false);
                    return Step::Closed;
                }
                _ => {}
            }
        }
        if progress {
            self.arm_exchange(ci, ui);
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    /// Sets the deadlines of an exchange after progress: the side we now wait on gets one.
    fn arm_exchange(&mut self, ci: usize, ui: usize) {
        let t = self.shared.cfg.timeouts;
        let now = self.now;
        let (c, u) = (&mut self.clients[ci], &mut self.ups[ui]);
        let waiting_100 = c.expect && u.resp == Resp::Head && !u.got_bytes;
        let (client_at, up_at) = if u.pending_out() && !c.io.writable {
            // Blocked on a slow reader: the client's send timeout, not the backend's.
            (now + Self::ms(t.idle), 0)
        } else if !c.body.is_done()
            && c.body_ready == 0
            && !u.head_pending()
            && !u.req_closed
            && !waiting_100
        {
            (now + Self::ms(t.client), now + Self::ms(t.upstream))
        } else {
            (0, now + Self::ms(t.upstream))
        };
        self.timers.set(&mut c.timer, client_token(ci).0, client_at);
        if u.resp == Resp::Done {
            self.timers.set(&mut u.timer, upstream_token(ui).0, 0);
        } else {
            self.timers.set(&mut u.timer, upstream_token(ui).0, up_at);
        }
    }

    /// Request direction: head and body bytes to the backend, more body from the client.
    fn send_request(&mut self, ci: usize, ui: usize) -> Result<bool, Step> {
        let (c, u) = (&mut self.clients[ci], &mut self.ups[ui]);
        if u.req_closed {
            return Ok(false);
        }
        let mut progress = false;
        if (u.head_pending() || c.body_ready > 0) && u.io.writable {
            let head: &[u8] = u.head.as_ref().map_or(&[], |h| &h.bytes()[u.head_off..]);
            let body: &[u8] = c.buf.as_ref().map_or(&[], |b| &b.bytes()[..c.body_ready]);
            match write2(&mut u.sock, head, body, &mut u.io) {
                Ok(mut n) => {
                    progress = true;
                    if let Some(h) = &u.head {
                        let k = n.min(h.len() - u.head_off);
                        u.head_off += k;
                        n -= k;
                    }
                    if n > 0 {
                        c.buf.as_mut().expect("body bytes").consume(n);
                        c.body_ready -= n;
                        u.rec.request_bytes += n as u64;
                        u.body_sent += n as u64;
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) if u.resp != Resp::Head => {
                    // The backend answered and stopped reading (a 413 with Connection:
                    // close, say): keep forwarding its answer, send nothing more.
                    self.close_request(ci, ui);
                    return Ok(true);
                }
                Err(_) => {
                    self.fail(ci, Failure::Reset);
                    return Err(Step::Progress);
                }
            }
        }
        let (c, u) = (&mut self.clients[ci], &mut self.ups[ui]);
        if !u.head_pending() && c.body_ready == 0 && !c.body.is_done() && c.io.readable {
            let buf = c.buf.get_or_insert_with(|| self.bufs.get());
            match read_into(&mut c.sock, buf, &mut c.io) {
                Ok(0) => {
                    debug!("worker {}: client {} closed mid-body", self.id, c.peer);
                    self.abort(ci, true);
                    return Err(Step::Closed);
                }
                Ok(_) => {
                    progress = true;
                    let bytes = buf.bytes();
                    match c.body.advance(bytes) {
                        Ok(n) => c.body_ready = n,
                        Err(e) => {
                            debug!("worker {}: bad request body from {}: {e}", self.id, c.peer);
                            if u.resp == Resp::Head && u.out.is_none() {
                                // Nothing answered yet: drop the backend exchange, answer 400.
                                self.end_upstream(ci, 400, Outcome::Ok);
                                self.respond(ci, http::BAD_REQUEST, true);
                                return Err(Step::Progress);
                            }
                            self.abort(ci, true);
                            return Err(Step::Closed);
                        }
                    }
                }
                Err(e) if would_block(&e) => {}
                Err(_) => {
                    self.abort(ci, true);
                    return Err(Step::Closed);
                }
            }
        }
        Ok(progress)
    }

    /// Ends the request direction early: unsent body bytes are dropped, the backend
    /// connection is not reused and the client connection closes after the response.
    fn close_request(&mut self, ci: usize, ui: usize) {
        let (c, u) = (&mut self.clients[ci], &mut self.ups[ui]);
        u.req_closed = true;
        u.keep = false;
        if let Some(b) = c.buf.as_mut() {
            b.consume(c.body_ready);
        }
        c.body_ready = 0;
        c.keep_alive = false;
    }

    /// Response direction, write side: pending head and body bytes to the client.
    fn send_response(&mut self, ci: usize, ui: usize) -> Result<bool, Step> {
        let (c, u) = (&mut self.clients[ci], &mut self.ups[ui]);
        if !u.pending_out() || !c.io.writable {
            return Ok(false);
        }
        let head: &[u8] = u.out.as_ref().map_or(&[], |h| h.bytes());
        let body: &[u8] = u.buf.as_ref().map_or(&[], |b| &b.bytes()[..u.ready]);
        match write2(&mut c.sock, head, body, &mut c.io) {
            Ok(mut n) => {
                u.rec.response_bytes += n as u64;
                if let Some(h) = u.out.as_mut() {
                    let k = n.min(h.len());
                    h.consume(k);
                    n -= k;
                    if h.is_empty() {
                        self.bufs.release(&mut u.out);
                    }
                }
                if n > 0 {
                    u.buf.as_mut().expect("body bytes").consume(n);
                    u.ready -= n;
                }
                Ok(true)
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(_) => {
                debug!(
                    "worker {}: client {} went away mid-response",
                    self.id, c.peer
                );
                self.abort(ci, true);
                Err(Step::Closed)
            }
        }
    }

    /// Response direction, read side: bytes from the backend, parsed and validated.
    fn recv_response(&mut self, ci: usize, ui: usize) -> Result<bool, Step> {
        let u = &mut self.ups[ui];
        if !u.io.readable || matches!(u.resp, Resp::Done | Resp::Truncated) {
            return Ok(false);
        }
        // Heads (a run of 1xx) the client has not taken yet: wait for it first.
        if u.out.as_ref().is_some_and(|o| o.len() >= http::MAX_HEAD) {
            return Ok(false);
        }
        let buf = u.buf.get_or_insert_with(|| self.bufs.get());
        if buf.space().is_empty() {
            if u.resp == Resp::Head && buf.capacity() <= http::MAX_HEAD {
                buf.grow(http::MAX_HEAD + 1);
            } else {
                return Ok(false);
            }
        }
        match read_into(&mut u.sock, buf, &mut u.io) {
            Ok(0) => self.upstream_eof(ci, ui).map(|_| true),
            Ok(_) => {
                self.ups[ui].got_bytes = true;
                self.process_response(ci, ui)?;
                Ok(true)
            }
            Err(e) if would_block(&e) => Ok(false),
            Err(_) => {
                // Reset by the backend.
                self.upstream_broke(ci, ui, Failure::Reset)?;
                Ok(true)
            }
        }
    }

    /// Parses response heads and validates body bytes that arrived.
    fn process_response(&mut self, ci: usize, ui: usize) -> Result<(), Step> {
        loop {
            let u = &mut self.ups[ui];
            match u.resp {
                Resp::Head => {
                    let c = &self.clients[ci];
                    let (http10, keep_alive, body_done) =
                        (c.http10, c.keep_alive, c.body.is_done());
                    let head_req = c.method == Method::Head;
                    let buf = u.buf.as_mut().expect("response bytes");
                    let mut headers = http::header_array();
                    let r = match http::parse_response(buf.bytes(), &mut headers, head_req) {
                        Ok(Some(r)) => r,
                        Ok(None) => return Ok(()),
                        Err(bad) => {
                            return self.upstream_broke(ci, ui, Failure::BadResponse(bad.0));
                        }
                    };
                    self.scratch.clear();
                    let head_len = r.head_len;
                    if r.informational() {
                        if !http10 {
                            r.write_client(
                                &mut self.scratch,
                                &Reply {
                                    http10,
                                    close: false,
                                    dechunk: false,
                                },
                            );
                        }
                    } else {
                        let dechunk = http10 && r.body == BodyKind::Chunked;
                        let close = !keep_alive
                            || !body_done
                            || self.draining
                            || dechunk
                            || r.body == BodyKind::UntilClose;
                        r.write_client(
                            &mut self.scratch,
                            &Reply {
                                http10,
                                close,
                                dechunk,
                            },
                        );
                        // A response before the whole request body was sent leaves the
                        // connection out of step: never reused.
                        u.keep = r.keep_alive && body_done;
                        u.status = r.status;
                        u.ttfb_us = u.attempt.elapsed().as_micros() as u64;
                        // A response is under way: the request will not be replayed.
                        if u.head.as_ref().is_none_or(|h| u.head_off >= h.len()) {
                            self.bufs.release(&mut u.head);
                        }
                        u.dechunk = dechunk;
                        u.resp = Resp::Body(Body::new(r.body));
                        self.clients[ci].keep_alive = !close;
                    }
                    buf.consume(head_len);
                    if !self.scratch.is_empty() {
                        let out = u.out.get_or_insert_with(|| self.bufs.get());
                        if out.capacity() - out.end() < self.scratch.len() {
                            out.grow(out.end() + self.scratch.len());
                        }
                        out.space()[..self.scratch.len()].copy_from_slice(&self.scratch);
                        out.filled(self.scratch.len());
                    }
                }
                Resp::Body(mut body) => {
                    let buf = u.buf.as_mut().expect("response bytes");
                    let ready = u.ready;
                    let fresh = &mut buf.bytes_mut()[ready..];
                    let total = fresh.len();
                    let res = match &mut body {
                        Body::Chunked(d) if u.dechunk => d.decode_in_place(fresh),
                        b => b.advance(fresh).map(|n| (n, n)),
                    };
                    let (consumed, data) = match res {
                        Ok(v) => v,
                        Err(e) => {
                            return self.upstream_broke(ci, ui, Failure::BadResponse(chunk_err(e)));
                        }
                    };
                    if let Body::Chunked(d) = &body {
                        if d.is_done() {
                            body = Body::Done;
                        }
                    }
                    u.ready += data;
                    if consumed < total || data < consumed {
                        // Framing bytes removed (de-chunked), or bytes past the end of the
                        // response: drop them; such a backend connection is not reused.
                        if consumed < total {
                            u.keep = false;
                        }
                        buf.truncate(u.ready);
                    }
                    u.resp = if body.is_done() {
                        Resp::Done
                    } else {
                        Resp::Body(body)
                    };
                    return Ok(());
                }
                Resp::Done | Resp::Truncated => return Ok(()),
            }
        }
    }

    /// The backend closed its side.
    fn upstream_eof(&mut self, ci: usize, ui: usize) -> Result<(), Step> {
        let u = &mut self.ups[ui];
        u.keep = false;
        match u.resp {
            Resp::Body(Body::UntilClose) => {
                u.resp = Resp::Done;
                Ok(())
            }
            _ => self.upstream_broke(ci, ui, Failure::Reset),
        }
    }

    /// The backend failed mid-exchange: answer 502/504 if the client has seen nothing,
    /// else forward what arrived and close.
    fn upstream_broke(&mut self, ci: usize, ui: usize, why: Failure) -> Result<(), Step> {
        let u = &mut self.ups[ui];
        u.keep = false;
        if u.resp == Resp::Head && u.out.is_none() {
            self.fail(ci, why);
            return Err(Step::Progress);
        }
        debug!(
            "worker {}: backend {} broke mid-response: {}",
            self.id,
            self.shared.balancer.backend(u.backend).name,
            why.reason()
        );
        u.resp = Resp::Truncated;
        Ok(())
    }

    /// Tries the request again after `why`: on another server, or for a pooled connection
    /// the backend had already closed (the keep-alive race), on a fresh connection to the
    /// same one. True if a new attempt is under way (or the client has been answered).
    ///
    /// Only what is safe: nothing reached the client, no body byte was consumed, and either
    /// the connect failed, the connection broke before any response byte, or the method is
    /// idempotent (then a timeout or a break mid-head is retried too).
    fn retry(&mut self, ci: usize, why: Failure) -> bool {
        let Some(c) = self.clients.get(ci) else {
            return false;
        };
        let (ui, method) = (c.up, c.method);
        if ui == NONE {
            return false;
        }
        let u = &self.ups[ui];
        if u.head.is_none() || u.body_sent > 0 || u.out.is_some() {
            return false;
        }
        // A non-idempotent request that was written whole may have been processed: it is
        // replayed only if the connection never came up or broke before it was all sent.
        let written = u.head.as_ref().is_some_and(|h| u.head_off >= h.len());
        let allowed = match why {
            Failure::Connect | Failure::ConnectTimeout => true,
            Failure::Reset if !u.got_bytes => method.idempotent() || !written,
            Failure::Reset | Failure::Timeout => method.idempotent(),
            Failure::BadResponse(_) => false,
        };
        let stale = u.reused && !u.got_bytes && matches!(why, Failure::Reset);
        if !allowed {
            return false;
        }
        let old = u.backend;
        let next = if stale {
            // The keep-alive race is no fault of the server: same server, new connection,
            // outside the retry budget, once.
            if u.stale_retried {
                return false;
            }
            old
        } else {
            if u.retries as u32 >= self.shared.cfg.retry.count || !self.budget.withdraw(self.now) {
                return false;
            }
            let tried = u.tried | bit(old);
            // The policy excludes the server that just failed; servers that failed earlier
            // are refused here (a few draws, then give up).
            let mut pick = None;
            for _ in 0..4 {
                match self.shared.balancer.pick(Some(old)) {
                    Some(b) if tried & bit(b) != 0 => self.shared.balancer.cancel(b),
                    other => {
                        pick = other;
                        break;
                    }
                }
            }
            match pick {
                Some(b) => b,
                None => return false,
            }
        };
        // Detach the failed attempt.
        let mut u = self.remove_upstream(ui);
        if !stale {
            let latency = u.attempt.elapsed();
            self.shared.balancer.finish(old, latency, false);
            self.shared
                .health
                .observe(&self.shared.balancer, old, Outcome::Failure);
        }
        self.bufs.release(&mut u.buf);
        self.bufs.release(&mut u.out);
        let head = u.head.take();
        let (started, mut rec, retries) = (u.started, u.rec, u.retries + 1);
        let stale_retried = u.stale_retried || stale;
        let tried = u.tried | bit(old);
        drop(u);
        self.shared
            .counters
            .retries
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        debug!(
            "worker {}: {} on {}: retrying on {}{}",
            self.id,
            why.reason(),
            self.shared.balancer.backend(old).name,
            self.shared.balancer.backend(next).name,
            if stale {
                " (stale keep-alive connection)"
            } else {
                ""
            }
        );
        self.clients[ci].up = NONE;
        match self.upstream_for(next, ci, stale) {
            Some(nu) => {
                let u = &mut self.ups[nu];
                u.head = head;
                u.head_off = 0;
                u.body_sent = 0;
                u.got_bytes = false;
                u.retries = retries;
                u.tried = tried;
                u.stale_retried = stale_retried;
                u.started = started;
                rec.reused = u.reused;
                u.rec = rec;
                self.clients[ci].up = nu;
                true
            }
            None => {
                self.bufs.release(&mut { head });
                self.shared.balancer.finish(next, Duration::ZERO, false);
                rec.backend = Some(next as u16);
                self.log_local(rec, http::BAD_GATEWAY);
                let c = &mut self.clients[ci];
                let close = !c.body.is_done() || !c.keep_alive;
                if let Some(b) = c.buf.as_mut() {
                    b.consume(c.body_ready);
                }
                c.body_ready = 0;
                self.respond(ci, http::BAD_GATEWAY, close);
                true
            }
        }
    }

    /// Fails the exchange before any response byte reached the client: closes the
    /// upstream and answers with the matching 502/504.
    fn fail(&mut self, ci: usize, why: Failure) {
        if self.retry(ci, why) {
            return;
        }
        let Some(c) = self.clients.get(ci) else {
            return;
        };
        let ui = c.up;
        if ui == NONE {
            return;
        }
        let u = &self.ups[ui];
        debug!(
            "worker {}: backend {} failed ({}) for {}: answering {}",
            self.id,
            self.shared.balancer.backend(u.backend).name,
            why.reason(),
            c.peer,
            why.canned().status
        );
        self.end_upstream(ci, why.canned().status, Outcome::Failure);
        let c = &mut self.clients[ci];
        let close = !c.body.is_done() || !c.keep_alive;
        if let Some(b) = c.buf.as_mut() {
            b.consume(c.body_ready);
        }
        c.body_ready = 0;
        self.respond(ci, why.canned(), close);
    }

    /// Detaches and closes client `ci`'s upstream before its exchange completed, logging
    /// it with `status`: the error answer sent, the status of a response broken off, or
    /// 499 when the client left before any response.
    /// `outcome` says whether the backend was at fault, for passive health checks.
    fn end_upstream(&mut self, ci: usize, status: u16, outcome: Outcome) {
        let c = &mut self.clients[ci];
        let ui = std::mem::replace(&mut c.up, NONE);
        if ui == NONE {
            return;
        }
        let mut u = self.remove_upstream(ui);
        let status = match status {
            0 if u.status != 0 => u.status,
            0 => 499,
            s => s,
        };
        self.record_exchange(u.backend, u.started, u.ttfb_us, u.rec, status, outcome);
        self.bufs.release(&mut u.head);
        self.bufs.release(&mut u.buf);
        self.bufs.release(&mut u.out);
    }

    /// Ends a completed exchange: the upstream goes back to the pool or closes, the client
    /// reads its next request or closes.
    fn finish(&mut self, ci: usize) -> Step {
        let ui = std::mem::replace(&mut self.clients[ci].up, NONE);
        let persistent = self.shared.cfg.upstream == UpstreamMode::Persistent;
        let max_idle = self.shared.cfg.max_idle_per_backend;
        let u = &self.ups[ui];
        let ok = u.status < 500;
        let outcome = if ok {
            Outcome::Ok
        } else {
            Outcome::ServerError
        };
        self.record_exchange(u.backend, u.started, u.ttfb_us, u.rec, u.status, outcome);
        let u = &mut self.ups[ui];
        self.bufs.release(&mut u.head);
        self.bufs.release(&mut u.buf);
        self.bufs.release(&mut u.out);
        let body_done = self.clients[ci].body.is_done();
        let pool = &mut self.idle[u.backend];
        // Reuse only after a cleanly framed, complete exchange the backend did not close.
        // `readable` still set means bytes may be queued past the response: not clean.
        if persistent
            && u.keep
            && body_done
            && !u.io.readable
            && !u.io.rdhup
            && !self.draining
            && pool.len() < max_idle
        {
            u.state = UpState::Idle;
            u.client = NONE;
            u.io.readable = false;
            pool.push(ui);
            let at = self.now + Self::ms(self.shared.cfg.timeouts.pool_idle);
            self.timers.set(&mut u.timer, upstream_token(ui).0, at);
        } else {
            self.remove_upstream(ui);
        }
        let c = &mut self.clients[ci];
        if c.keep_alive && c.body.is_done() && !self.draining {
            c.phase = Phase::Head;
            c.body_ready = 0;
            if c.buf.as_ref().is_some_and(Buf::is_empty) {
                self.bufs.release(&mut c.buf);
            }
            self.arm_idle(ci);
            Step::Progress
        } else {
            self.linger_or_close(ci);
            Step::Closed
        }
    }

    /// Records a finished exchange: shared backend stats, this worker's histograms, the
    /// CSV log.
    fn record_exchange(
        &mut self,
        backend: usize,
        started: Instant,
        ttfb_us: u64,
        mut rec: Record,
        status: u16,
        outcome: Outcome,
    ) {
        let ok = outcome == Outcome::Ok && status < 500;
        let total_us = started.elapsed().as_micros() as u64;
        let upstream_us = if ttfb_us > 0 { ttfb_us } else { total_us };
        self.shared
            .balancer
            .finish(backend, Duration::from_micros(upstream_us), ok);
        self.shared
            .health
            .observe(&self.shared.balancer, backend, outcome);
        self.hists.record(
            Some(backend),
            status,
            upstream_us,
            total_us,
            !ok || status >= 500,
        );
        if let Some(log) = &self.log {
            rec.backend = Some(backend as u16);
            rec.status = status;
            rec.upstream_us = upstream_us;
            rec.total_us = total_us;
            rec.stamp();
            log.send(rec);
        }
    }

    /// Records an answer the proxy made itself (no backend exchange).
    fn log_local(&mut self, mut rec: Record, canned: Canned) {
        self.hists
            .record(None, canned.status, 0, 0, canned.status >= 500);
        if let Some(log) = &self.log {
            rec.status = canned.status;
            rec.stamp();
            log.send(rec);
        }
    }

    /// Tears the exchange down: closes the upstream (counted as an error) and the client.
    fn abort(&mut self, ci: usize, client_side: bool) {
        let outcome = if client_side {
            Outcome::Ok
        } else {
            Outcome::Failure
        };
        self.end_upstream(ci, 0, outcome);
        self.close_client(ci);
    }

    // ---- local answers and closing ----------------------------------------------------

    /// Starts writing a locally generated response.
    fn respond(&mut self, ci: usize, canned: Canned, close: bool) {
        let c = &mut self.clients[ci];
        let close = close || !c.keep_alive || self.draining;
        c.canned = if close {
            canned.close
        } else {
            canned.keep_alive
        };
        c.phase = Phase::Local { close };
        let at = self.now + Self::ms(self.shared.cfg.timeouts.idle);
        self.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    fn step_local(&mut self, ci: usize, close: bool) -> Step {
        let c = &mut self.clients[ci];
        if !c.canned.is_empty() {
            if !c.io.writable {
                return Step::Blocked;
            }
            match write2(&mut c.sock, c.canned, &[], &mut c.io) {
                Ok(n) => c.canned = &c.canned[n..],
                Err(e) if would_block(&e) => return Step::Blocked,
                Err(_) => {
                    self.close_client(ci);
                    return Step::Closed;
                }
            }
            if !c.canned.is_empty() {
                return Step::Blocked;
            }
        }
        if close {
            self.linger_or_close(ci);
            Step::Closed
        } else {
            c.phase = Phase::Head;
            c.body = Body::Done;
            self.arm_idle(ci);
            Step::Progress
        }
    }

    /// Closes after a final response. If the client may still be sending, shut down our
    /// side and discard its input for a while, so it reads our response, not a reset.
    fn linger_or_close(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        let unread =
            c.buf.as_ref().is_some_and(|b| !b.is_empty()) || c.io.readable || !c.body.is_done();
        if !unread {
            self.close_client(ci);
            return;
        }
        let _ = c.sock.shutdown(Shutdown::Write);
        c.phase = Phase::Linger;
        if let Some(b) = c.buf.as_mut() {
            b.clear();
        }
        let at = self.now + LINGER_MS;
        self.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    fn step_linger(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        if !c.io.readable {
            return Step::Blocked;
        }
        let buf = c.buf.get_or_insert_with(|| self.bufs.get());
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

    pub(crate) fn close_client(&mut self, ci: usize) {
        if !self.clients.contains(ci) {
            return;
        }
        self.end_upstream(ci, 0, Outcome::Ok);
        let mut c = self.clients.remove(ci);
        self.bufs.release(&mut c.buf);
        self.shared
            .counters
            .active_clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }

    // ---- deadlines ----------------------------------------------------------------------

    /// Fires every deadline that is due.
    pub(crate) fn expire(&mut self) {
        let now = self.now;
        while let Some((entry, token)) = self.timers.pop_due(now) {
            match crate::worker::slot(mio::Token(token)) {
                crate::worker::Slot::Client(ci) => {
                    let Some(c) = self.clients.get_mut(ci) else {
                        continue;
                    };
                    if self.timers.fire(&mut c.timer, token, entry, now) {
                        self.client_timeout(ci);
                    }
                }
                crate::worker::Slot::Upstream(ui) => {
                    let Some(u) = self.ups.get_mut(ui) else {
                        continue;
                    };
                    if self.timers.fire(&mut u.timer, token, entry, now) {
                        self.upstream_timeout(ui);
                    }
                }
            }
        }
    }

    fn client_timeout(&mut self, ci: usize) {
        let c = &self.clients[ci];
        match c.phase {
            Phase::Head if c.buf.as_ref().is_some_and(|b| !b.is_empty()) => {
                debug!("worker {}: 408: head from {} too slow", self.id, c.peer);
                let c = &mut self.clients[ci];
                if let Some(b) = c.buf.as_mut() {
                    b.clear();
                }
                self.respond(ci, http::REQUEST_TIMEOUT, true);
                self.drive(ci);
            }
            Phase::Proxy => {
                debug!("worker {}: client {} stalled mid-exchange", self.id, c.peer);
                self.abort(ci, true);
            }
            _ => self.close_client(ci),
        }
    }

    fn upstream_timeout(&mut self, ui: usize) {
        let u = &self.ups[ui];
        if u.is_idle() {
            self.close_idle_upstream(ui);
            return;
        }
        let ci = u.client;
        let why = if u.is_connecting() {
            Failure::ConnectTimeout
        } else {
            Failure::Timeout
        };
        if self.upstream_broke(ci, ui, why).is_ok() {
            // Mid-response: forward what arrived, then close.
        }
        if self.clients.contains(ci) {
            self.drive(ci);
        }
    }
}

/// A backend's bit in a `tried` set (indices past 63 are not tracked).
#[inline]
fn bit(backend: usize) -> u64 {
    if backend < 64 {
        1 << backend
    } else {
        0
    }
}

fn chunk_err(e: http::chunked::ChunkError) -> &'static str {
    match e {
        http::chunked::ChunkError::MissingDataCrlf => "chunk data not followed by CRLF",
        _ => "invalid chunked framing",
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn print_sizes() {
        eprintln!(
            "Client {} B, slab entry {} B, Upstream {} B, Record {} B",
            std::mem::size_of::<super::Client>(),
            std::mem::size_of::<slab::Slab<super::Client>>(),
            std::mem::size_of::<super::Upstream>(),
            std::mem::size_of::<crate::access_log::Record>()
        );
    }
}

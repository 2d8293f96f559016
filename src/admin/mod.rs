//! The admin listener: its own thread with a small mio loop serving `/stats` (JSON),
//! `/metrics` (Prometheus), `/events` (Server-Sent Events, one update a second), `/health`
//! and the live dashboard page. It never runs on a worker and only reads shared atomics and
//! the metrics summary, so a busy proxy still answers it and it never slows the workers.
//! What the endpoints say lives in `render`.
//!
//! It also takes the control calls: `GET /servers`, `PUT /servers/{name}` (a JSON body),
//! `DELETE /servers/{name}` and `POST /reload`, handed to [`Control`]. Off loopback, those
//! that change something need `Authorization: Bearer TOKEN` (`--admin-token`), and are
//! refused outright when no token was set.

mod h2stats;
mod prometheus;
mod render;
mod tlsstats;

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Registry, Token, Waker};
use slab::Slab;

use crate::control::Control;
use crate::http;
use crate::metrics::Summary;
use crate::shared::Shared;

pub use prometheus::prometheus;
pub use render::{gather, Stats, BUCKETS_S};

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// Longest request head read; a longer one is answered 431.
const MAX_HEAD: usize = 8 * 1024;
/// Most admin connections at once; more are closed as they are accepted.
const MAX_CONNS: usize = 256;
/// Pending output above which a connection's further (pipelined) requests wait.
const OUT_HIGH: usize = 256 * 1024;
/// Pending output above which an event-stream client that stopped reading is dropped.
const EVENTS_BACKLOG: usize = 1024 * 1024;
/// Bytes read and discarded per drive once a connection stopped taking requests.
const DISCARD_MAX: usize = 64 * 1024;
/// Request connections idle this long are closed.
const IDLE: Duration = Duration::from_secs(30);
/// How often `/events` clients get an update.
pub const EVENT_EVERY: Duration = Duration::from_secs(1);
/// Read/answer/write rounds per connection before other connections get a turn.
const ROUNDS: usize = 16;

const DASHBOARD: &str = include_str!("assets/dashboard.html");
const UPLOT_JS: &str = include_str!("assets/uplot.iife.min.js");
const UPLOT_CSS: &str = include_str!("assets/uplot.min.css");

/// The running admin thread.
pub struct Admin {
    /// The bound address (port 0 resolved).
    pub addr: SocketAddr,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    thread: JoinHandle<()>,
}

impl Admin {
    /// Binds `addr` and starts serving on a thread of its own.
    pub fn start(
        addr: SocketAddr,
        shared: Arc<Shared>,
        summary: Arc<Mutex<Summary>>,
        control: Option<Arc<Control>>,
    ) -> io::Result<Admin> {
        let std_listener = std::net::TcpListener::bind(addr)?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let guard = match (addr.ip().is_loopback(), shared.cfg.admin_token.clone()) {
            (true, _) => Guard::Open,
            (false, Some(t)) => Guard::Token(t),
            (false, None) => {
                eprintln!(
                    "corelb: admin on {addr} is not loopback and no --admin-token (or CORELB_ADMIN_TOKEN) is set: PUT, DELETE and POST /reload are refused"
                );
                Guard::Refuse
            }
        };
        let mut listener = TcpListener::from_std(std_listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let stop = Arc::new(AtomicBool::new(false));
        let mut server = AdminLoop {
            poll,
            listener,
            conns: Slab::new(),
            again: Vec::new(),
            stop: stop.clone(),
            ctx: Ctx {
                shared,
                summary,
                control,
                guard,
            },
        };
        let thread = std::thread::Builder::new()
            .name("corelb-admin".into())
            .spawn(move || server.run())?;
        Ok(Admin {
            addr,
            stop,
            waker,
            thread,
        })
    }

    /// Stops the thread and closes every admin connection.
    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

/// Who may make changing calls (PUT, DELETE, POST).
enum Guard {
    /// Loopback: anyone who can connect.
    Open,
    /// Off loopback: `Authorization: Bearer TOKEN`.
    Token(String),
    /// Off loopback without a token: nobody.
    Refuse,
}

/// What answers need: the proxy's shared state, the latency summary and the control plane.
struct Ctx {
    shared: Arc<Shared>,
    summary: Arc<Mutex<Summary>>,
    control: Option<Arc<Control>>,
    guard: Guard,
}

impl Ctx {
    fn stats(&self) -> Stats {
        gather(&self.shared, &self.summary)
    }
}

struct AdminLoop {
    poll: Poll,
    listener: TcpListener,
    conns: Slab<Conn>,
    /// Connections whose drive was cut short and must run again before sleeping.
    again: Vec<usize>,
    stop: Arc<AtomicBool>,
    ctx: Ctx,
}

impl AdminLoop {
    fn run(&mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_tick = Instant::now() + EVENT_EVERY;
        while !self.stop.load(Relaxed) {
            let timeout = if self.again.is_empty() {
                next_tick.saturating_duration_since(Instant::now())
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                eprintln!("corelb: admin: poll failed: {e}");
                return;
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept(),
                    WAKER => {}
                    Token(t) => self.drive(t - FIRST),
                }
            }
            for i in std::mem::take(&mut self.again) {
                self.drive(i);
            }
            let now = Instant::now();
            if now >= next_tick {
                next_tick = now + EVENT_EVERY;
                self.tick(now);
            }
        }
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    if self.conns.len() >= MAX_CONNS {
                        continue; // dropped: closed at once
                    }
                    let _ = sock.set_nodelay(true);
                    let entry = self.conns.vacant_entry();
                    let token = Token(FIRST + entry.key());
                    if self
                        .poll
                        .registry()
                        .register(&mut sock, token, Interest::READABLE | Interest::WRITABLE)
                        .is_ok()
                    {
                        entry.insert(Conn::new(sock));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // Out of descriptors and the like: try again on the next event.
                    crate::debug!("admin: accept failed: {e}");
                    return;
                }
            }
        }
    }

    fn drive(&mut self, i: usize) {
        let Some(c) = self.conns.get_mut(i) else {
            return;
        };
        match c.drive(&self.ctx) {
            Next::Wait => {}
            Next::Again => self.again.push(i),
            Next::Close => close(self.poll.registry(), &mut self.conns, i),
        }
    }

    /// Once a second: an update to every event stream, and idle connections closed.
    fn tick(&mut self, now: Instant) {
        let streams: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase == Phase::Events)
            .map(|(i, _)| i)
            .collect();
        if !streams.is_empty() {
            let event = event(&self.ctx.stats());
            for &i in &streams {
                let c = &mut self.conns[i];
                if c.pending() > EVENTS_BACKLOG {
                    close(self.poll.registry(), &mut self.conns, i);
                } else {
                    c.out.extend_from_slice(&event);
                    self.drive(i);
                }
            }
        }
        let idle: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.phase != Phase::Events && now.duration_since(c.last) > IDLE)
            .map(|(i, _)| i)
            .collect();
        for i in idle {
            close(self.poll.registry(), &mut self.conns, i);
        }
    }
}

fn close(registry: &Registry, conns: &mut Slab<Conn>, i: usize) {
    if let Some(mut c) = conns.try_remove(i) {
        let _ = registry.deregister(&mut c.sock);
    }
}

/// One `data:` event of the event stream: the `/stats` JSON on one line.
fn event(stats: &Stats) -> Vec<u8> {
    let mut e = b"data: ".to_vec();
    // serde_json writes no raw newlines: the JSON is one line.
    let _ = serde_json::to_writer(&mut e, stats);
    e.extend_from_slice(b"\n\n");
    e
}

/// Where a connection is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading requests and answering them in order.
    Requests,
    /// Streaming events until the client leaves.
    Events,
    /// Sending what is left, then closing.
    Closing,
}

/// What the loop does with a connection after driving it.
enum Next {
    Wait,
    Again,
    Close,
}

struct Conn {
    sock: TcpStream,
    phase: Phase,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    /// The client closed its side.
    eof: bool,
    last: Instant,
}

/// The parts of a request head an answer depends on.
struct Head {
    method: Method,
    path: String,
    keep_alive: bool,
    http10: bool,
    has_body: bool,
    /// Content-Length (0 without a body; `None`: chunked).
    body_len: Option<u64>,
    /// The Authorization field.
    auth: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Head,
    Put,
    Delete,
    Post,
    Other,
}

/// A complete answer: status, content type, body, extra header lines.
struct Answer {
    status: u16,
    ctype: &'static str,
    body: Vec<u8>,
    extra: &'static str,
}

impl Answer {
    fn text(status: u16, body: &str) -> Answer {
        Answer {
            status,
            ctype: "text/plain; charset=utf-8",
            body: body.as_bytes().to_vec(),
            extra: "Cache-Control: no-store\r\n",
        }
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        201 => "Created",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        411 => "Length Required",
        413 => "Content Too Large",
        422 => "Unprocessable Content",
        507 => "Insufficient Storage",
        431 => "Request Header Fields Too Large",
        503 => "Service Unavailable",
        _ => "",
    }
}

impl Conn {
    fn new(sock: TcpStream) -> Conn {
        Conn {
            sock,
            phase: Phase::Requests,
            inbuf: Vec::new(),
            out: Vec::new(),
            sent: 0,
            eof: false,
            last: Instant::now(),
        }
    }

    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Reads, answers and writes until nothing moves (or the round limit).
    fn drive(&mut self, ctx: &Ctx) -> Next {
        for _ in 0..ROUNDS {
            let mut progress = match self.read() {
                Ok(p) => p,
                Err(_) => return Next::Close,
            };
            if self.phase == Phase::Requests {
                progress |= self.answer_all(ctx);
                // No request can complete any more once the client closed its side.
                if self.eof && self.pending() < OUT_HIGH {
                    self.phase = Phase::Closing;
                }
            }
            match self.flush() {
                Ok(wrote) => progress |= wrote,
                Err(_) => return Next::Close,
            }
            if self.pending() == 0 && (self.phase == Phase::Closing || self.eof) {
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                return Next::Close;
            }
            if !progress {
                return Next::Wait;
            }
        }
        Next::Again
    }

    /// Reads what the socket has (requests up to the head limit; later bytes are read and
    /// discarded). Returns whether anything happened.
    fn read(&mut self) -> io::Result<bool> {
        let mut progress = false;
        let mut discarded = 0;
        let mut chunk = [0u8; 4096];
        while !self.eof {
            let keep = self.phase == Phase::Requests;
            let room = if keep {
                if self.inbuf.len() >= MAX_HEAD || self.pending() >= OUT_HIGH {
                    break;
                }
                (MAX_HEAD - self.inbuf.len()).min(chunk.len())
            } else {
                if discarded >= DISCARD_MAX {
                    break;
                }
                chunk.len()
            };
            match self.sock.read(&mut chunk[..room]) {
                Ok(0) => {
                    self.eof = true;
                    progress = true;
                }
                Ok(n) => {
                    if keep {
                        self.inbuf.extend_from_slice(&chunk[..n]);
                    } else {
                        discarded += n;
                    }
                    self.last = Instant::now();
                    progress = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(progress)
    }

    /// Writes pending output until the socket would block. Returns whether it wrote.
    fn flush(&mut self) -> io::Result<bool> {
        let mut wrote = false;
        while self.sent < self.out.len() {
            match self.sock.write(&self.out[self.sent..]) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.sent += n;
                    wrote = true;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if wrote {
            self.last = Instant::now();
        }
        if self.sent == self.out.len() {
            self.out.clear();
            self.sent = 0;
            if self.out.capacity() > OUT_HIGH {
                self.out.shrink_to(16 * 1024);
            }
        } else if self.sent > 64 * 1024 {
            self.out.drain(..self.sent);
            self.sent = 0;
        }
        Ok(wrote)
    }

    /// Answers every complete request in the input, in order, while output is not backed
    /// up. Returns whether it answered any.
    fn answer_all(&mut self, ctx: &Ctx) -> bool {
        let mut progress = false;
        while self.phase == Phase::Requests && self.pending() < OUT_HIGH && !self.inbuf.is_empty() {
            match parse(&self.inbuf) {
                Ok(None) if self.inbuf.len() < MAX_HEAD => break,
                Ok(None) => self.fail(431),
                Ok(Some((n, head))) => {
                    // A body (the control calls' JSON) must fit in the head buffer.
                    let Some(len) = head.body_len else {
                        self.fail(411);
                        progress = true;
                        continue;
                    };
                    let total = n as u64 + len;
                    if total > MAX_HEAD as u64 {
                        self.fail(413);
                    } else if (self.inbuf.len() as u64) < total {
                        if self.eof {
                            self.fail(400);
                        } else {
                            break;
                        }
                    } else {
                        let body: Vec<u8> = self.inbuf[n..total as usize].to_vec();
                        self.inbuf.drain(..total as usize);
                        self.answer(ctx, head, &body);
                    }
                }
                Err(status) => self.fail(status),
            }
            progress = true;
        }
        progress
    }

    /// Answers a request that cannot be read, then closes.
    fn fail(&mut self, status: u16) {
        self.inbuf.clear();
        let body = format!("{} {}\n", status, reason(status));
        self.write_answer(&Answer::text(status, &body), false, false, false);
        self.phase = Phase::Closing;
    }

    fn answer(&mut self, ctx: &Ctx, head: Head, body: &[u8]) {
        let path = head.path.split('?').next().unwrap_or("");
        if path == "/reload" || path == "/servers" || path.starts_with("/servers/") {
            let a = control(ctx, &head, path, body);
            let head_only = head.method == Method::Head;
            self.write_answer(&a, head_only, head.keep_alive, head.http10);
            if !head.keep_alive {
                self.phase = Phase::Closing;
            }
            return;
        }
        if head.method != Method::Get && head.method != Method::Head {
            let a = Answer {
                extra: "Allow: GET, HEAD\r\n",
                ..Answer::text(405, "405 Method Not Allowed\n")
            };
            self.write_answer(&a, false, false, false);
            self.phase = Phase::Closing;
            return;
        }
        if head.has_body {
            self.fail(400);
            return;
        }
        let head_only = head.method == Method::Head;
        if path == "/events" {
            self.start_events(ctx, head_only);
            return;
        }
        let a = route(ctx, path);
        self.write_answer(&a, head_only, head.keep_alive, head.http10);
        if !head.keep_alive {
            self.phase = Phase::Closing;
        }
    }

    fn write_answer(&mut self, a: &Answer, head_only: bool, keep_alive: bool, http10: bool) {
        let connection = match (keep_alive, http10) {
            (false, _) => "Connection: close\r\n",
            (true, true) => "Connection: keep-alive\r\n",
            (true, false) => "",
        };
        let _ = write!(
            self.out,
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}{}\r\n",
            a.status,
            reason(a.status),
            a.ctype,
            a.body.len(),
            a.extra,
            connection
        );
        if !head_only {
            self.out.extend_from_slice(&a.body);
        }
    }

    /// Turns the connection into an event stream: headers, then an event at once (the page
    /// fills without waiting a second), then one per tick.
    fn start_events(&mut self, ctx: &Ctx, head_only: bool) {
        self.inbuf.clear();
        self.out.extend_from_slice(
            b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-store\r\n\
              Connection: close\r\n\r\n",
        );
        if head_only {
            self.phase = Phase::Closing;
            return;
        }
        self.out.extend_from_slice(b"retry: 1000\n\n");
        self.out.extend_from_slice(&event(&ctx.stats()));
        self.phase = Phase::Events;
    }
}

/// Parses one request head with the proxy's own strict parser: `Ok(None)` when
/// incomplete, `Err(status)` when bad.
fn parse(buf: &[u8]) -> Result<Option<(usize, Head)>, u16> {
    let mut headers = http::header_array();
    let req = match http::parse_request(buf, &mut headers) {
        Ok(Some(r)) => r,
        Ok(None) => return Ok(None),
        Err(reject) => return Err(reject.status()),
    };
    let method = match req.method {
        http::Method::Get => Method::Get,
        http::Method::Head => Method::Head,
        http::Method::Put => Method::Put,
        http::Method::Delete => Method::Delete,
        http::Method::Post => Method::Post,
        _ => Method::Other,
    };
    let body_len = match req.body {
        http::BodyKind::Length(n) => Some(n),
        http::BodyKind::Chunked => None,
        _ => Some(0),
    };
    let auth = req
        .field("authorization")
        .map(|v| String::from_utf8_lossy(v).into_owned());
    let head = Head {
        method,
        path: req.path().to_string(),
        keep_alive: req.keep_alive,
        http10: req.minor == 0,
        has_body: req.body != http::BodyKind::None,
        body_len,
        auth,
    };
    Ok(Some((req.head_len, head)))
}

fn json(status: u16, body: String) -> Answer {
    Answer {
        status,
        ctype: "application/json",
        body: body.into_bytes(),
        extra: "Cache-Control: no-store\r\n",
    }
}

/// `%XX` escapes decoded (a server name in a path: `api%231` is `api#1`).
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%' && i + 2 < b.len() {
            if let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The control calls: `GET /servers`, `PUT`/`DELETE /servers/{name}`, `POST /reload`.
fn control(ctx: &Ctx, head: &Head, path: &str, body: &[u8]) -> Answer {
    let Some(control) = &ctx.control else {
        return json(503, r#"{"ok":false,"error":"no control plane"}"#.into());
    };
    let reading = matches!(head.method, Method::Get | Method::Head);
    let allowed = match path {
        "/reload" => head.method == Method::Post,
        "/servers" => reading,
        _ => matches!(head.method, Method::Put | Method::Delete),
    };
    if !allowed {
        let allow = match path {
            "/reload" => "Allow: POST\r\n",
            "/servers" => "Allow: GET, HEAD\r\n",
            _ => "Allow: PUT, DELETE\r\n",
        };
        return Answer {
            extra: allow,
            ..json(405, r#"{"ok":false,"error":"method not allowed"}"#.into())
        };
    }
    if !reading {
        match &ctx.guard {
            Guard::Open => {}
            Guard::Refuse => {
                return json(
                    403,
                    r#"{"ok":false,"error":"the admin listener is not on loopback and no admin token is set (--admin-token or CORELB_ADMIN_TOKEN): changes are refused"}"#.into(),
                )
            }
            Guard::Token(t) => {
                let given = head.auth.as_deref().and_then(|a| a.strip_prefix("Bearer "));
                if !given.is_some_and(|g| constant_time_eq(g.trim().as_bytes(), t.as_bytes())) {
                    return Answer {
                        extra: "WWW-Authenticate: Bearer\r\n",
                        ..json(401, r#"{"ok":false,"error":"Authorization: Bearer TOKEN required"}"#.into())
                    };
                }
            }
        }
    }
    match (head.method, path) {
        (Method::Post, "/reload") => {
            let r = control.reload();
            json(
                if r.ok { 200 } else { 422 },
                serde_json::to_string(&r).unwrap_or_default(),
            )
        }
        (_, "/servers") => json(
            200,
            serde_json::to_string(&control.servers()).unwrap_or_default(),
        ),
        (m, p) => {
            let name = percent_decode(p.trim_start_matches("/servers/"));
            let (status, body) = if m == Method::Put {
                control.put(&name, body)
            } else {
                control.delete(&name)
            };
            json(status, body)
        }
    }
}

/// Compares without stopping at the first difference (the token's length aside).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The answer to a GET of `path` (everything but `/events`).
fn route(ctx: &Ctx, path: &str) -> Answer {
    let asset = |ctype, body: &str, cache| Answer {
        status: 200,
        ctype,
        body: body.as_bytes().to_vec(),
        extra: cache,
    };
    match path {
        "/" | "/index.html" => asset(
            "text/html; charset=utf-8",
            DASHBOARD,
            "Cache-Control: no-cache\r\n",
        ),
        "/assets/uplot.js" => asset(
            "text/javascript; charset=utf-8",
            UPLOT_JS,
            "Cache-Control: max-age=3600\r\n",
        ),
        "/assets/uplot.css" => asset(
            "text/css; charset=utf-8",
            UPLOT_CSS,
            "Cache-Control: max-age=3600\r\n",
        ),
        "/stats" => Answer {
            status: 200,
            ctype: "application/json",
            body: serde_json::to_vec(&ctx.stats()).unwrap_or_default(),
            extra: "Cache-Control: no-store\r\n",
        },
        "/metrics" => Answer {
            status: 200,
            ctype: "text/plain; version=0.0.4; charset=utf-8",
            body: prometheus(&ctx.stats()).into_bytes(),
            extra: "Cache-Control: no-store\r\n",
        },
        "/health" if ctx.shared.stop.load(Relaxed) => Answer::text(503, "stopping\n"),
        "/health" => Answer::text(200, "ok\n"),
        _ => Answer::text(404, "404 Not Found\n"),
    }
}

#[cfg(test)]
mod tests;

//! One client connection: an explicit state machine over reused buffers, driven by recorded
//! readiness (read/write until `WouldBlock`). Owns no timers or counters, only their use.

use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::time::{Duration, Instant};

use corelb::http::chunked::ChunkedDecoder;
use mio::net::TcpStream;

use crate::config::Config;
use crate::framing::{body_step, read_headers, refill, BodyFraming, BodyUse, Source};
use crate::profile::{Latency, XorShift};
use crate::response::{
    end_head, pattern, start_head, status_has_body, ConnHeader, Framing, SmallBody, PATTERN_RUN,
};
use crate::route::Route;
use crate::stats::{Stats, ThreadStats};
use crate::timer::Timers;

mod upgrade;

/// Read buffer per connection; also the largest request head accepted.
pub const READ_BUF: usize = 64 * 1024;
/// Headers parsed per request; more is answered with 431.
pub const MAX_HEADERS: usize = 128;
/// Steps (each at most one read or one write batch) per drive before yielding to others.
const BUDGET: usize = 64;

/// What a connection may touch while it is driven.
pub struct Ctx<'a> {
    pub cfg: &'a Config,
    pub latency: &'a Latency,
    pub stats: &'a Stats,
    pub thread: &'a ThreadStats,
    pub rng: &'a mut XorShift,
    pub timers: &'a mut Timers,
    pub start: Instant,
    /// Time of this event-loop turn.
    pub now: Instant,
    /// This connection's slot (its token).
    pub slot: usize,
}

impl Ctx<'_> {
    /// The wait before a default-route answer (HTTP/1.1, h2c) or a TTS call's (gRPC): the
    /// profile's delay, plus `--stall`'s extra for the requests it picks.
    pub fn answer_delay(&mut self) -> Duration {
        let elapsed = self.now.saturating_duration_since(self.start);
        let delay = self.latency.delay(elapsed);
        match self.cfg.stall {
            Some(stall) => delay + stall.draw(self.rng),
            None => delay,
        }
    }
}

/// Buffers kept across connections by the event loop, so accepting does not allocate.
pub struct Buffers {
    rbuf: Vec<u8>,
    wbuf: Vec<u8>,
    head: Vec<u8>,
}

impl Buffers {
    pub fn new() -> Self {
        Buffers {
            rbuf: vec![0; READ_BUF],
            wbuf: Vec::with_capacity(4096),
            head: Vec::new(),
        }
    }
}

/// What the event loop should do after driving a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Drive {
    /// Waiting for readiness or a timer.
    Open,
    /// Used its budget while still able to progress: drive it again next turn.
    Yield,
    /// Done or failed: drop it.
    Close,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Again,
    Wait,
    Close,
}

enum Fill {
    Read,
    Blocked,
    /// The read buffer is full and holds one unfinished head.
    Full,
    Eof,
    Failed,
}

enum Flush {
    Done,
    Blocked,
    Failed,
}

/// The request being answered.
#[derive(Debug, Clone, Copy)]
struct Req {
    route: Route,
    head_only: bool,
    keep_alive: bool,
    http10: bool,
}

impl Req {
    fn conn_header(&self, close: bool) -> ConnHeader {
        match (close, self.http10) {
            (true, _) => ConnHeader::Close,
            (false, true) => ConnHeader::KeepAlive,
            (false, false) => ConnHeader::None,
        }
    }
}

/// How a delayed answer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Ok,
    /// `--error-rate`: 500 (or `--error-status`).
    Error,
    /// `--close-rate`: head and half the body, then close.
    CutOff,
}

#[derive(Debug, Clone, Copy)]
struct Answer {
    delay: Duration,
    outcome: Outcome,
}

enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// Reading the request body.
    Body {
        framing: BodyFraming,
        usage: BodyUse,
    },
    /// Waiting for the timer of a delayed answer.
    Delay { answer: Answer },
    /// Sending `wbuf`, then `source`; then the next request, or close.
    Write { source: Source, close: bool },
    /// `/hang`: discard input until the client leaves.
    Hang,
    /// After a 101 (`/ws`, `/upgrade-echo`): see upgrade.rs.
    Upgraded {
        ws: bool,
        sent_close: bool,
        /// Close once the output is flushed.
        closing: bool,
    },
}

pub struct Conn {
    pub sock: TcpStream,
    /// Unique per event loop; timers carry it to detect a reused slot.
    pub id: u64,
    pub readable: bool,
    pub writable: bool,
    rbuf: Vec<u8>,
    rstart: usize,
    rend: usize,
    wbuf: Vec<u8>,
    wpos: usize,
    /// The raw head of a `/headers` request.
    head: Vec<u8>,
    /// Has carried a counted request.
    counted: bool,
    req: Req,
    phase: Phase,
}

impl Conn {
    pub fn new(sock: TcpStream, id: u64, bufs: Buffers) -> Self {
        Conn {
            sock,
            id,
            // Data may have arrived before registration; the first read finds out.
            readable: true,
            writable: true,
            rbuf: bufs.rbuf,
            rstart: 0,
            rend: 0,
            wbuf: bufs.wbuf,
            wpos: 0,
            head: bufs.head,
            counted: false,
            req: Req {
                route: Route::Default,
                head_only: false,
                keep_alive: true,
                http10: false,
            },
            phase: Phase::Head,
        }
    }

    pub fn into_buffers(mut self) -> Buffers {
        self.wbuf.clear();
        self.head.clear();
        Buffers {
            rbuf: self.rbuf,
            wbuf: self.wbuf,
            head: self.head,
        }
    }

    /// Makes as much progress as readiness allows, within a budget.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        for _ in 0..BUDGET {
            let step = match self.phase {
                Phase::Head => self.step_head(ctx),
                Phase::Body { .. } => self.step_body(ctx),
                Phase::Delay { .. } => Step::Wait,
                Phase::Write { .. } => self.step_write(),
                Phase::Hang => self.step_hang(),
                Phase::Upgraded { .. } => self.step_upgraded(),
            };
            match step {
                Step::Again => {}
                Step::Wait => return Drive::Open,
                Step::Close => return Drive::Close,
            }
        }
        Drive::Yield
    }

    /// The delay timer fired: prepare the answer (the caller drives it out).
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        if let Phase::Delay { answer } = self.phase {
            self.answer(ctx, answer);
        }
    }

    fn step_head(&mut self, ctx: &mut Ctx<'_>) -> Step {
        if self.rstart < self.rend && self.parse_head(ctx) {
            return Step::Again;
        }
        match self.fill() {
            Fill::Read => Step::Again,
            Fill::Blocked => Step::Wait,
            Fill::Full => {
                self.reject(ctx, 431);
                Step::Again
            }
            Fill::Eof | Fill::Failed => Step::Close,
        }
    }

    /// Parses one head from the read buffer and starts its request. False: need more bytes.
    fn parse_head(&mut self, ctx: &mut Ctx<'_>) -> bool {
        let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
        let mut req = httparse::Request::new(&mut headers);
        let input = &self.rbuf[self.rstart..self.rend];
        let n = match req.parse(input) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => return false,
            Err(httparse::Error::TooManyHeaders) => {
                self.reject(ctx, 431);
                return true;
            }
            Err(_) => {
                self.reject(ctx, 400);
                return true;
            }
        };
        let info = match read_headers(req.headers) {
            Ok(info) => info,
            Err(code) => {
                self.reject(ctx, code);
                return true;
            }
        };
        let Ok(route) = Route::of(req.path.unwrap_or("/")) else {
            self.reject(ctx, 400);
            return true;
        };
        if matches!(route, Route::Ws | Route::UpgradeEcho) {
            let key = req
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("sec-websocket-key"));
            let accept = key.map(|h| upgrade::accept_key(h.value));
            if route == Route::Ws && accept.is_none() {
                self.reject(ctx, 400);
                return true;
            }
            self.rstart += n;
            self.count(ctx);
            self.start_upgrade(&ctx.cfg.id, route, accept);
            return true;
        }
        let http10 = req.version == Some(0);
        let head_only = req.method == Some("HEAD");
        if route == Route::Headers {
            self.head.clear();
            self.head.extend_from_slice(&input[..n]);
        }
        self.rstart += n;

        let keep_alive = !info.close && (!http10 || info.keep_alive);
        self.req = Req {
            route,
            head_only,
            keep_alive,
            http10,
        };
        if route == Route::Hang {
            self.count(ctx);
            self.phase = Phase::Hang;
            return true;
        }

        let framing = match info.content_length {
            _ if info.chunked => Some(BodyFraming::Chunked(ChunkedDecoder::new())),
            Some(len) if len > 0 => Some(BodyFraming::Length(len)),
            _ => None,
        };
        if framing.is_some() && info.expect_continue && !http10 {
            self.wbuf
                .extend_from_slice(b"HTTP/1.1 100 Continue\r\n\r\n");
        }
        let usage = match route {
            Route::Echo => {
                // The head goes out first; the body streams as it arrives.
                let framing = if info.chunked {
                    Framing::Chunked
                } else {
                    Framing::Length(info.content_length.unwrap_or(0))
                };
                let conn = self.req.conn_header(!keep_alive);
                start_head(&mut self.wbuf, 200, &ctx.cfg.id, framing, conn);
                self.wbuf
                    .extend_from_slice(b"Content-Type: application/octet-stream\r\n");
                end_head(&mut self.wbuf);
                BodyUse::Echo {
                    chunked: info.chunked,
                }
            }
            Route::Sink => BodyUse::Sink { bytes: 0, sum: 0 },
            Route::Discard => BodyUse::Count { bytes: 0 },
            _ => BodyUse::Discard,
        };
        match framing {
            Some(framing) => self.phase = Phase::Body { framing, usage },
            None => self.finish(ctx, usage),
        }
        true
    }

    fn step_body(&mut self, ctx: &mut Ctx<'_>) -> Step {
        // Pending output first (100 Continue, echoed data): an echo reads no faster than
        // the client takes its answer.
        match self.flush() {
            Flush::Done => {}
            Flush::Blocked => return Step::Wait,
            Flush::Failed => return Step::Close,
        }
        if self.rstart < self.rend {
            let Phase::Body { framing, usage } = &mut self.phase else {
                unreachable!("step_body outside the body phase");
            };
            let input = &self.rbuf[self.rstart..self.rend];
            let emit = !self.req.head_only;
            return match body_step(framing, usage, input, &mut self.wbuf, emit) {
                Ok((n, done)) => {
                    self.rstart += n;
                    if done {
                        let usage = *usage;
                        self.finish(ctx, usage);
                    }
                    Step::Again
                }
                // The echo head is already out: all we can do is stop.
                Err(_) if matches!(usage, BodyUse::Echo { .. }) => Step::Close,
                Err(_) => {
                    self.reject(ctx, 400);
                    Step::Again
                }
            };
        }
        match self.fill() {
            Fill::Read => Step::Again,
            Fill::Blocked => Step::Wait,
            Fill::Full | Fill::Eof | Fill::Failed => Step::Close,
        }
    }

    fn step_write(&mut self) -> Step {
        match self.flush() {
            Flush::Done => {}
            Flush::Blocked => return Step::Wait,
            Flush::Failed => return Step::Close,
        }
        let Phase::Write { source, close } = &mut self.phase else {
            unreachable!("step_write outside the write phase");
        };
        match source {
            // The rest of an unchunked body goes from the static pattern straight to the
            // socket: no copy per request (large downloads in benchmarks).
            Source::Pattern {
                next,
                end,
                chunked: false,
            } if *next < *end => {
                if !self.writable {
                    return Step::Wait;
                }
                let n = (*end - *next).min(PATTERN_RUN as u64) as usize;
                match self.sock.write(pattern(*next, n)) {
                    Ok(0) => return Step::Close,
                    Ok(k) => *next += k as u64,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.writable = false;
                        return Step::Wait;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => return Step::Close,
                }
            }
            Source::Pattern { .. } => refill(&mut self.wbuf, source),
            Source::Done if *close => {
                let _ = self.sock.shutdown(Shutdown::Write);
                return Step::Close;
            }
            Source::Done => self.phase = Phase::Head,
        }
        Step::Again
    }

    fn step_hang(&mut self) -> Step {
        self.rstart = 0;
        self.rend = 0;
        match self.fill() {
            Fill::Read => Step::Again,
            Fill::Blocked => Step::Wait,
            Fill::Full | Fill::Eof | Fill::Failed => Step::Close,
        }
    }

    /// The body is in (or there was none): answer, now or after a delay.
    /// Counts a request once it is complete (body read), so a request aborted mid-body
    /// is never counted as seen.
    fn count(&mut self, ctx: &mut Ctx<'_>) {
        if self.req.route.counted() {
            ctx.thread.request();
            if !self.counted {
                self.counted = true;
                ctx.thread.connection();
            }
        }
    }

    fn finish(&mut self, ctx: &mut Ctx<'_>, usage: BodyUse) {
        self.count(ctx);
        let req = self.req;
        let close = !req.keep_alive;
        let conn = req.conn_header(close);
        let id = ctx.cfg.id.as_str();
        let out = &mut self.wbuf;
        let mut source = Source::Done;
        let mut close_after = close;
        match req.route {
            Route::Echo => {
                if usage == (BodyUse::Echo { chunked: true }) && !req.head_only {
                    out.extend_from_slice(b"0\r\n\r\n");
                }
            }
            Route::Sink => {
                let (bytes, sum) = match usage {
                    BodyUse::Sink { bytes, sum } => (bytes, sum),
                    _ => (0, 0),
                };
                let body = SmallBody::new(format_args!("{{\"bytes\":{bytes},\"sum\":{sum}}}"));
                simple(out, id, 200, "application/json", body.bytes(), conn, req);
            }
            Route::Discard => {
                let bytes = match usage {
                    BodyUse::Count { bytes } => bytes,
                    _ => 0,
                };
                let body = SmallBody::new(format_args!("{{\"bytes\":{bytes}}}"));
                simple(out, id, 200, "application/json", body.bytes(), conn, req);
            }
            Route::Health => simple(out, id, 200, "text/plain", b"ok\n", conn, req),
            Route::Flap => {
                // Process-wide, so every check (whatever connection) alternates.
                static FLAPS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
                if FLAPS
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                    .is_multiple_of(2)
                {
                    simple(out, id, 200, "text/plain", b"ok\n", conn, req)
                } else {
                    simple(out, id, 503, "text/plain", b"flap\n", conn, req)
                }
            }
            Route::Stats => {
                let mut buf = [0u8; 256];
                let mut cur = io::Cursor::new(&mut buf[..]);
                let _ = ctx.stats.totals().write_json(id, &mut cur);
                let len = cur.position() as usize;
                simple(out, id, 200, "application/json", &buf[..len], conn, req);
            }
            Route::Headers => simple(out, id, 200, "text/plain", &self.head, conn, req),
            Route::Status(code) if status_has_body(code) => {
                let body = SmallBody::new(format_args!("status {code}\n"));
                simple(out, id, code, "text/plain", body.bytes(), conn, req);
            }
            Route::Status(code) => {
                start_head(out, code, id, Framing::NoBody, conn);
                if code == 304 {
                    out.extend_from_slice(b"ETag: \"x\"\r\n");
                }
                end_head(out);
            }
            Route::Close => {
                start_head(out, 200, id, Framing::Length(100), ConnHeader::None);
                out.extend_from_slice(b"Content-Type: text/plain\r\n");
                end_head(out);
                if !req.head_only {
                    out.extend_from_slice(b"0123456789");
                }
                close_after = true;
            }
            // Upgrades switch in parse_head and never get here.
            Route::Ws | Route::UpgradeEcho => {
                simple(out, id, 400, "text/plain", b"upgrade\n", conn, req)
            }
            Route::Garbage => {
                out.extend_from_slice(b"HTTX/1.1 2OO NOPE\r\n\r\n");
                close_after = true;
            }
            Route::Bytes { len, chunked } => {
                let framing = if chunked {
                    Framing::Chunked
                } else {
                    Framing::Length(len)
                };
                start_head(out, 200, id, framing, conn);
                out.extend_from_slice(b"Content-Type: application/octet-stream\r\n");
                if chunked {
                    out.extend_from_slice(b"Trailer: X-Checksum\r\n");
                }
                end_head(out);
                if !req.head_only {
                    source = Source::Pattern {
                        next: 0,
                        end: len,
                        chunked,
                    };
                }
            }
            Route::Default => {
                let delay = ctx.answer_delay();
                return self.answer_after(ctx, delay);
            }
            Route::Delay(ms) => return self.answer_after(ctx, Duration::from_millis(ms)),
            Route::Hang => {
                self.phase = Phase::Hang;
                return;
            }
        }
        self.start_write(source, close_after);
    }

    fn answer_after(&mut self, ctx: &mut Ctx<'_>, delay: Duration) {
        let (err, cut) = (ctx.cfg.error_rate, ctx.cfg.close_rate);
        let outcome = if err + cut > 0.0 {
            outcome_of(ctx.rng.next_f64(), err, cut)
        } else {
            Outcome::Ok
        };
        let answer = Answer { delay, outcome };
        if delay.is_zero() {
            self.answer(ctx, answer);
        } else {
            ctx.timers.push(ctx.now + delay, ctx.slot, self.id);
            self.phase = Phase::Delay { answer };
        }
    }

    /// Writes the default-route answer.
    fn answer(&mut self, ctx: &mut Ctx<'_>, answer: Answer) {
        let req = self.req;
        let id = ctx.cfg.id.as_str();
        let ms = (answer.delay.as_secs_f64() * 1000.0).round() as u64;
        let cut = answer.outcome == Outcome::CutOff;
        let code = if answer.outcome == Outcome::Error {
            ctx.cfg.error_status
        } else {
            200
        };
        let conn = req.conn_header(!req.keep_alive);
        let out = &mut self.wbuf;
        let mut source = Source::Done;
        match ctx.cfg.size {
            Some(size) if code == 200 => {
                start_head(out, code, id, Framing::Length(size), conn);
                let _ = write!(out, "Content-Type: text/plain\r\nX-Latency-Ms: {ms}\r\n");
                end_head(out);
                if !req.head_only {
                    let end = if cut { size / 2 } else { size };
                    source = Source::Pattern {
                        next: 0,
                        end,
                        chunked: false,
                    };
                }
            }
            _ => {
                let body = if code == 500 {
                    SmallBody::new(format_args!("Error from server {id} after {ms} ms\n"))
                } else {
                    SmallBody::new(format_args!("Response from server {id} after {ms} ms\n"))
                };
                let body = body.bytes();
                start_head(out, code, id, Framing::Length(body.len() as u64), conn);
                let _ = write!(out, "Content-Type: text/plain\r\nX-Latency-Ms: {ms}\r\n");
                end_head(out);
                if !req.head_only {
                    let len = if cut { body.len() / 2 } else { body.len() };
                    out.extend_from_slice(&body[..len]);
                }
            }
        }
        self.start_write(source, !req.keep_alive || cut);
    }

    /// Sends the head in `wbuf`, then `source`. The first stretch of a body is copied behind
    /// the head, so a small response leaves in one write.
    fn start_write(&mut self, mut source: Source, close: bool) {
        refill(&mut self.wbuf, &mut source);
        self.phase = Phase::Write { source, close };
    }

    /// Answers a malformed request and closes.
    fn reject(&mut self, ctx: &mut Ctx<'_>, code: u16) {
        self.wbuf.clear();
        self.wpos = 0;
        let body = SmallBody::new(format_args!("{}\n", crate::response::reason(code)));
        let req = Req {
            head_only: false,
            ..self.req
        };
        simple(
            &mut self.wbuf,
            &ctx.cfg.id,
            code,
            "text/plain",
            body.bytes(),
            ConnHeader::Close,
            req,
        );
        self.phase = Phase::Write {
            source: Source::Done,
            close: true,
        };
    }

    /// Reads once into the free end of the read buffer.
    fn fill(&mut self) -> Fill {
        if !self.readable {
            return Fill::Blocked;
        }
        if self.rstart == self.rend {
            self.rstart = 0;
            self.rend = 0;
        }
        if self.rend == self.rbuf.len() {
            if self.rstart == 0 {
                return Fill::Full;
            }
            self.rbuf.copy_within(self.rstart..self.rend, 0);
            self.rend -= self.rstart;
            self.rstart = 0;
        }
        loop {
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => return Fill::Eof,
                Ok(n) => {
                    self.rend += n;
                    return Fill::Read;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Fill::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Fill::Failed,
            }
        }
    }

    /// Writes `wbuf` until it is empty or the socket is full.
    fn flush(&mut self) -> Flush {
        while self.wpos < self.wbuf.len() {
            if !self.writable {
                return Flush::Blocked;
            }
            match self.sock.write(&self.wbuf[self.wpos..]) {
                Ok(0) => return Flush::Failed,
                Ok(n) => self.wpos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.writable = false;
                    return Flush::Blocked;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Flush::Failed,
            }
        }
        self.wbuf.clear();
        self.wpos = 0;
        Flush::Done
    }
}

/// Maps one uniform draw to an outcome, so both rates are fractions of all requests
/// (errors first when they add up to more than 1).
fn outcome_of(u: f64, error_rate: f64, close_rate: f64) -> Outcome {
    if u < error_rate {
        Outcome::Error
    } else if u < error_rate + close_rate {
        Outcome::CutOff
    } else {
        Outcome::Ok
    }
}

/// A complete response with a small body (left out for HEAD).
fn simple(
    out: &mut Vec<u8>,
    id: &str,
    code: u16,
    content_type: &str,
    body: &[u8],
    conn: ConnHeader,
    req: Req,
) {
    start_head(out, code, id, Framing::Length(body.len() as u64), conn);
    let _ = write!(out, "Content-Type: {content_type}\r\n");
    end_head(out);
    if !req.head_only {
        out.extend_from_slice(body);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_follow_both_rates() {
        let mut rng = XorShift::new(3);
        let mut counts = [0usize; 3];
        for _ in 0..100_000 {
            match outcome_of(rng.next_f64(), 0.1, 0.2) {
                Outcome::Error => counts[0] += 1,
                Outcome::CutOff => counts[1] += 1,
                Outcome::Ok => counts[2] += 1,
            }
        }
        assert!((9_000..11_000).contains(&counts[0]), "{counts:?}");
        assert!((19_000..21_000).contains(&counts[1]), "{counts:?}");
        assert_eq!(outcome_of(0.99, 0.0, 0.0), Outcome::Ok);
        assert_eq!(outcome_of(0.99, 1.0, 0.0), Outcome::Error);
        assert_eq!(outcome_of(0.5, 0.0, 1.0), Outcome::CutOff);
    }

    #[test]
    fn connection_header_by_version() {
        let req = |http10| Req {
            route: Route::Default,
            head_only: false,
            keep_alive: true,
            http10,
        };
        assert_eq!(req(false).conn_header(false), ConnHeader::None);
        assert_eq!(req(true).conn_header(false), ConnHeader::KeepAlive);
        assert_eq!(req(true).conn_header(true), ConnHeader::Close);
    }
}

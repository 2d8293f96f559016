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

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::Ordering::Relaxed;

use crate::debug;
use crate::http::Body;
use crate::transport::Transport;

use super::decide::Failure;
use super::end::Blame;
use super::exchange::{Exchange, Req, Resp};
use super::io::{would_block, Io};
use super::relay::Flow;
use super::{Proxy, Step};

/// The default threshold: a stretch of at least this many opaque body bytes left when
/// splicing could start is spliced (`--splice-min`; 0 turns splicing off).
pub const SPLICE_MIN: u64 = crate::config::DEFAULT_SPLICE_MIN;
/// Pipe sizes asked for, in order; refused, the pipe keeps the system's default (64 KiB).
/// Modest on purpose: every open pipe counts against the user's pipe quota
/// (`fs.pipe-user-pages-soft`, 64 MiB by default), pooled ones included, and a user over
/// it gets tiny pipes (then bodies are copied).
const PIPE_SIZES: [i32; 1] = [256 << 10];
/// A pipe smaller than this is not worth a splice: the body is copied instead.
const PIPE_MIN: usize = 64 * 1024;
/// Empty pipes a worker keeps for reuse.
const POOL_MAX: usize = 8;

/// Should a body's next bytes be spliced? `left`: opaque bytes not yet read (the rest of
/// a Content-Length body, or of a chunk's data); `buffered`: validated body bytes still in
/// the buffer (they go first, by copy); `engaged`: a pipe already carries this stretch (it
/// then carries it to the end); `min`: the threshold, 0 for never.
pub(crate) fn use_splice(left: u64, buffered: usize, engaged: bool, min: u64) -> bool {
    buffered == 0 && (engaged || (min > 0 && left >= min))
}

/// Bytes one splice into a pipe with `room` free may take: never past the body's end.
pub(crate) fn splice_len(left: u64, room: usize) -> usize {
    left.min(room as u64) as usize
}

/// A pipe and the body bytes it holds.
pub(crate) struct Pipe {
    r: OwnedFd,
    w: OwnedFd,
    cap: u32,
    held: u32,
}

impl Pipe {
    fn new() -> io::Result<Pipe> {
        let mut fds: [RawFd; 2] = [-1; 2];
        // SAFETY: pipe2 writes two descriptors into the two-element array on success.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: pipe2 succeeded, so both descriptors are open and owned by nothing else.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        let mut cap = -1;
        for size in PIPE_SIZES {
            // SAFETY: fcntl on a descriptor we own; F_SETPIPE_SZ only resizes the pipe.
            cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_SETPIPE_SZ, size) };
            if cap > 0 {
                break;
            }
        }
        if cap <= 0 {
            // SAFETY: fcntl on a descriptor we own; F_GETPIPE_SZ only reads the size.
            cap = unsafe { libc::fcntl(w.as_raw_fd(), libc::F_GETPIPE_SZ) };
        }
        if cap < PIPE_MIN as i32 {
            return Err(io::Error::other("pipe too small"));
        }
        Ok(Pipe {
            r,
            w,
            cap: cap as u32,
            held: 0,
        })
    }

    #[inline]
    pub fn held(&self) -> usize {
        self.held as usize
    }

    #[inline]
    fn room(&self) -> usize {
        (self.cap - self.held) as usize
    }
}

/// A worker's empty pipes, and the threshold above which bodies take one. A pipe that
/// still holds bytes is never pooled: it is closed.
pub(crate) struct PipePool {
    free: Vec<Pipe>,
    /// A pipe could not be made (descriptor limit, pipe quota): bodies are copied.
    failures: u64,
    /// Stretches of at least this many bytes are spliced; 0: none are.
    pub min: u64,
    /// `TCP_NOTSENT_LOWAT` for a socket bodies are spliced into; 0: left alone.
    lowat: u32,
}

impl Default for PipePool {
    fn default() -> Self {
        PipePool::new(SPLICE_MIN, crate::config::DEFAULT_NOTSENT_LOWAT)
    }
}

impl PipePool {
    /// An empty pool splicing stretches of at least `min` bytes (0: never), into sockets
    /// whose unsent bytes it bounds at `lowat` (0: the kernel's default).
    pub fn new(min: u64, lowat: u64) -> PipePool {
        PipePool {
            free: Vec::new(),
            failures: 0,
            min,
            lowat: lowat.min(u32::MAX as u64) as u32,
        }
    }

    /// Bounds the unsent bytes of `sock`, which a body is about to be spliced into, once
    /// per connection. Without a bound a socket whose reader is slower than the writer
    /// queues up to its whole send buffer (4 MiB by default) of pages that left the pipe:
    /// they sit in the kernel and go cold in the cache before the reader copies them, and
    /// the queued segments are sent from the reader's own acknowledgements. With it the
    /// socket reports writable only below `lowat` unsent bytes; bytes in flight (the
    /// congestion window) are not limited.
    fn bound_unsent(&self, sock: &Transport, io: &mut Io) {
        if self.lowat > 0 && !io.lowat && !sock.is_tls() {
            io.lowat = true;
            if let Err(e) = socket2::SockRef::from(sock.tcp()).set_tcp_notsent_lowat(self.lowat) {
                debug!("TCP_NOTSENT_LOWAT refused ({e}): the send queue is unbounded");
            }
        }
    }

    fn get(&mut self) -> Option<Pipe> {
        if let Some(p) = self.free.pop() {
            return Some(p);
        }
        match Pipe::new() {
            Ok(p) => Some(p),
            Err(e) => {
                self.failures += 1;
                if self.failures.is_power_of_two() {
                    debug!("no pipe for splicing ({e}): copying instead");
                }
                None
            }
        }
    }

    /// Returns the pipe in `slot`, if any: pooled when empty, else closed.
    pub fn release(&mut self, slot: &mut Option<Pipe>) {
        if let Some(p) = slot.take() {
            if p.held == 0 && self.free.len() < POOL_MAX {
                self.free.push(p);
            }
        }
    }
}

/// An exchange's pipes, one per direction, while its bodies are spliced.
#[derive(Default)]
pub(crate) struct Splicing {
    pub req: Option<Pipe>,
    pub resp: Option<Pipe>,
    /// No pipe could be had for this exchange: it copies.
    pub off: bool,
}

impl Exchange {
    /// Request body bytes wait in the request pipe.
    #[inline]
    pub fn req_piped(&self) -> bool {
        self.splice.req.as_ref().is_some_and(|p| p.held > 0)
    }

    /// Response body bytes wait in the response pipe.
    #[inline]
    pub fn resp_piped(&self) -> bool {
        self.splice.resp.as_ref().is_some_and(|p| p.held > 0)
    }

    /// The request body's next bytes will be spliced once its buffered bytes are sent
    /// (`min`: the threshold): the copying path reads no more of it into the buffer. Not
    /// while a retry policy keeps the body for a replay and the rest fits in its
    /// `replay_max` bytes: those are copied (and kept).
    #[inline]
    pub fn req_splice_next(&self, min: u64, replay_max: usize) -> bool {
        let left = self.body.opaque_left();
        !self.splice.off
            && use_splice(left, 0, false, min)
            && !self.keeps_for_replay(left, replay_max)
    }

    /// A retry policy keeps this request's body for a replay, and `left` more bytes
    /// still fit in the `replay_max` kept.
    fn keeps_for_replay(&self, left: u64, replay_max: usize) -> bool {
        let kept = self.replay.as_ref().map_or(0, |r| r.len()) as u64;
        !self.retry_on.is_empty() && !self.replay_lost && kept + left <= replay_max as u64
    }

    /// Drops the request bytes in the pipe (the request direction was closed early).
    pub fn drop_req_pipe(&mut self) {
        if self.req_piped() {
            self.splice.req = None;
        }
    }
}

fn check(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// One splice(2) of at most `len` bytes, retried on EINTR.
fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
    loop {
        let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
        // SAFETY: both descriptors are open and owned by the caller; null offsets make
        // splice use (and advance) the descriptors' own positions; no memory is passed.
        let r = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                flags,
            )
        };
        match check(r) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// Splices up to `len` (> 0) bytes from socket `from` into the pipe. `Ok(0)` is EOF.
/// `EAGAIN` clears `io.readable` only if the pipe is empty (else the pipe may be full).
fn fill(from: RawFd, p: &mut Pipe, len: usize, io: &mut Io) -> io::Result<usize> {
    debug_assert!(len > 0 && len <= p.room());
    match splice(from, p.w.as_raw_fd(), len) {
        Ok(n) => {
            p.held += n as u32;
            Ok(n)
        }
        Err(e) => {
            if would_block(&e) && p.held == 0 {
                io.readable = false;
            }
            Err(e)
        }
    }
}

/// Splices the pipe's bytes into socket `to` until it is empty or the socket would block
/// (`EAGAIN` clears `io.writable`). Returns the bytes moved; an error only if none moved.
fn drain(p: &mut Pipe, to: RawFd, io: &mut Io) -> io::Result<usize> {
    let mut moved = 0;
    while p.held > 0 {
        match splice(p.r.as_raw_fd(), to, p.held()) {
            Ok(n) => {
                p.held -= n as u32;
                moved += n;
            }
            Err(e) => {
                if would_block(&e) {
                    io.writable = false;
                }
                if moved == 0 {
                    return Err(e);
                }
                break;
            }
        }
    }
    Ok(moved)
}

impl Proxy {
    /// Request direction, spliced: pipe to backend, client to pipe. `None` when this body
    /// is not spliced (the copying path handles it).
    pub(super) fn splice_request(&mut self, ci: usize) -> Option<Flow> {
        let (c, ex) = self.clients[ci].split().expect("proxying");
        ex.splice.off |= c.sock.tcp_fd().is_none() || self.ups[ex.up].sock.tcp_fd().is_none();
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
            let u = &mut self.ups[ex.up];
            self.ctx.pipes.bound_unsent(&u.sock, &mut u.io);
            // The copy reads around spliced stretches (chunk framing) start small again.
            ex.req_hot = false;
            if c.buf.as_ref().is_some_and(|b| b.is_empty()) {
                self.ctx.bufs.release(c.buf);
            }
        }
        let u = &mut self.ups[ex.up];
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
                    Err(_) => {
                        self.fail(ci, Failure::Reset);
                        return Some(Flow::Over(Step::Progress));
                    }
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
        ex.splice.off |= c.sock.tcp_fd().is_none() || self.ups[ex.up].sock.tcp_fd().is_none();
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
        let u = &mut self.ups[ex.up];
        let p = ex.splice.resp.as_mut().expect("engaged");
        if p.room() == 0 {
            return Some(Flow::Idle);
        }
        match fill(u.sock.tcp_fd()?, p, splice_len(left, p.room()), &mut u.io) {
            Ok(0) => {
                ex.keep = false;
                Some(self.upstream_broke(ci, Failure::Reset))
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
                    Some(Flow::Over(step)) => Some(Flow::Over(step)),
                    _ => Some(Flow::Moved),
                }
            }
            Err(e) if would_block(&e) => Some(Flow::Idle),
            Err(_) => Some(self.upstream_broke(ci, Failure::Reset)),
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_bodies_above_the_threshold_with_nothing_buffered_are_spliced() {
        const M: u64 = SPLICE_MIN;
        assert!(use_splice(M, 0, false, M));
        assert!(use_splice(1 << 30, 0, false, M));
        assert!(!use_splice(M - 1, 0, false, M));
        assert!(!use_splice(1 << 30, 1, false, M), "buffered bytes go first");
        assert!(
            use_splice(1, 0, true, M),
            "an engaged pipe carries the stretch to its end"
        );
        assert!(!use_splice(1, 5, true, M));
        assert!(
            use_splice(4096, 0, false, 4096),
            "the threshold is a setting"
        );
        assert!(!use_splice(1 << 30, 0, false, 0), "0: never");
    }

    #[test]
    fn a_splice_never_asks_past_the_body() {
        assert_eq!(splice_len(10, 1 << 20), 10);
        assert_eq!(splice_len(1 << 30, 65536), 65536);
        assert_eq!(splice_len(0, 65536), 0);
    }

    #[test]
    fn pipes_are_pooled_only_when_empty() {
        let mut pool = PipePool::default();
        let mut slot = pool.get();
        let p = slot.as_mut().expect("a pipe");
        assert!(p.cap as usize >= PIPE_MIN);
        pool.release(&mut slot);
        assert_eq!(pool.free.len(), 1);
        let mut slot = pool.get();
        assert_eq!(pool.free.len(), 0, "reused");
        slot.as_mut().unwrap().held = 1;
        pool.release(&mut slot);
        assert!(slot.is_none());
        assert_eq!(pool.free.len(), 0, "a pipe with bytes is closed");
    }

    #[test]
    fn a_socket_spliced_into_gets_its_unsent_bytes_bounded_once() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let sock = Transport::Tcp(mio::net::TcpStream::connect(l.local_addr().unwrap()).unwrap());
        let lowat = || {
            socket2::SockRef::from(sock.tcp())
                .tcp_notsent_lowat()
                .unwrap()
        };
        let kernel_default = lowat();
        let mut io = Io::default();
        PipePool::new(SPLICE_MIN, 0).bound_unsent(&sock, &mut io);
        assert_eq!(lowat(), kernel_default, "0 leaves the socket alone");
        assert!(!io.lowat);
        PipePool::new(SPLICE_MIN, 128 << 10).bound_unsent(&sock, &mut io);
        assert_eq!(lowat(), 128 << 10);
        assert!(io.lowat);
        PipePool::new(SPLICE_MIN, 64 << 10).bound_unsent(&sock, &mut io);
        assert_eq!(lowat(), 128 << 10, "set once per connection");
    }

    #[test]
    fn a_pipe_carries_bytes_between_sockets_exactly() {
        use std::io::{Read, Write};
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        b.set_nonblocking(true).unwrap();
        let l2 = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let c = std::net::TcpStream::connect(l2.local_addr().unwrap()).unwrap();
        let (mut d, _) = l2.accept().unwrap();
        c.set_nonblocking(true).unwrap();
        a.write_all(b"0123456789next").unwrap();
        let mut pool = PipePool::default();
        let mut p = pool.get().unwrap();
        let mut io = Io {
            readable: true,
            writable: true,
            ..Io::default()
        };
        let mut got = 0;
        while got < 10 {
            let want = splice_len(10 - got as u64, p.room());
            match fill(b.as_raw_fd(), &mut p, want, &mut io) {
                Ok(n) => got += n,
                Err(e) if would_block(&e) => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(p.held(), 10);
        assert_eq!(drain(&mut p, c.as_raw_fd(), &mut io).unwrap(), 10);
        assert_eq!(p.held(), 0);
        let mut out = [0u8; 10];
        d.read_exact(&mut out).unwrap();
        assert_eq!(&out, b"0123456789");
        let mut rest = [0u8; 4];
        (&b).read_exact(&mut rest).unwrap();
        assert_eq!(&rest, b"next", "bytes past the body stay in the socket");
        assert!(io.readable, "never cleared while bytes came");
        assert!(matches!(fill(b.as_raw_fd(), &mut p, 1, &mut io), Err(e) if would_block(&e)));
        assert!(
            !io.readable,
            "an empty pipe and EAGAIN: the socket is drained"
        );
    }
}

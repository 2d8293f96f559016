//! Pipes for splice(2) and the splice calls themselves: a worker's pool of empty pipes,
//! an exchange's pipes per direction (`Splicing`), when a stretch of body is worth a
//! pipe, and moving bytes socket -> pipe -> socket with the readiness rules of the
//! copying path. `splice.rs` drives them for an exchange.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::debug;
use crate::transport::Transport;

use super::io::{would_block, Io};

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
    pub(super) r: OwnedFd,
    pub(super) w: OwnedFd,
    cap: u32,
    pub(super) held: u32,
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
    pub(super) fn room(&self) -> usize {
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
    pub(super) fn bound_unsent(&self, sock: &Transport, io: &mut Io) {
        if self.lowat > 0 && !io.lowat && !sock.is_tls() {
            io.lowat = true;
            if let Err(e) = socket2::SockRef::from(sock.tcp()).set_tcp_notsent_lowat(self.lowat) {
                debug!("TCP_NOTSENT_LOWAT refused ({e}): the send queue is unbounded");
            }
        }
    }

    pub(super) fn get(&mut self) -> Option<Pipe> {
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
pub(super) fn fill(from: RawFd, p: &mut Pipe, len: usize, io: &mut Io) -> io::Result<usize> {
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
pub(super) fn drain(p: &mut Pipe, to: RawFd, io: &mut Io) -> io::Result<usize> {
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

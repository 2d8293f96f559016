//! Socket I/O helpers for the proxy's connections: recorded readiness, and read and write
//! calls that clear it on `WouldBlock` or a short transfer (edge-triggered mio).

use std::io;

use crate::buffer::{Buf, BufPool};
use crate::transport::Transport;

/// Recorded readiness of one socket.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct Io {
    pub readable: bool,
    pub writable: bool,
    /// The peer shut down its side: keep reading until EOF even after a short read.
    pub rdhup: bool,
    /// The connection is gone both ways (reset, or hung up): nothing more can be sent.
    pub hup: bool,
    /// Its unsent bytes are bounded (`TCP_NOTSENT_LOWAT`, set once a body is spliced in).
    pub lowat: bool,
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
        if ev.is_write_closed() || ev.is_error() {
            self.hup = true;
        }
    }
}

#[inline]
pub(crate) fn would_block(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::WouldBlock
}

/// Reads into `buf`'s free space. `Ok(0)` is EOF; a short read clears `io.readable`.
#[inline]
pub(crate) fn read_into(sock: &mut Transport, buf: &mut Buf, io: &mut Io) -> io::Result<usize> {
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
pub(crate) fn write2(sock: &mut Transport, a: &[u8], b: &[u8], io: &mut Io) -> io::Result<usize> {
    let total = a.len() + b.len();
    match sock.write2(a, b) {
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

/// Writes the bytes queued in `out` for a client (a head, a chunk line, a body's end) and
/// then `data`, with one `writev`; what went of `out` is taken off it (its buffer back to
/// `bufs` once empty). Returns the bytes written, and how many of them were `data`'s.
#[inline]
pub(crate) fn write_out(
    sock: &mut Transport,
    out: &mut Option<Buf>,
    bufs: &mut BufPool,
    data: &[u8],
    io: &mut Io,
) -> io::Result<(usize, usize)> {
    let head: &[u8] = out.as_ref().map_or(&[], |o| o.bytes());
    let n = write2(sock, head, data, io)?;
    let mut rest = n;
    if let Some(o) = out.as_mut() {
        let k = rest.min(o.len());
        o.consume(k);
        rest -= k;
        if o.is_empty() {
            bufs.release(out);
        }
    }
    Ok((n, rest))
}

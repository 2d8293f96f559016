//! The byte stream under every client and upstream connection: plain TCP, or TLS (rustls,
//! sans-IO) over TCP. Drivers read and write through [`Transport`] and never see which;
//! only plain TCP offers its descriptor for splice and `TCP_NOTSENT_LOWAT` ([`Transport::tcp_fd`]).
//!
//! TLS keeps the drivers' edge-triggered contract: a read that returns less than the room
//! it was given has drained the socket (or hit EOF), so clearing `readable` stays right;
//! a short write means the socket pushed back. Ciphertext rustls could not send yet is
//! flushed on the next writable event ([`Transport::flush_pending`]).

use std::io::{self, IoSlice, Read, Write};
use std::net::Shutdown;
use std::os::fd::{AsRawFd, RawFd};

use mio::net::TcpStream;

/// Plaintext and ciphertext rustls holds per direction before a write is short.
const TLS_BUFFER: usize = 64 * 1024;
/// Most plaintext in one TLS record.
const RECORD: usize = 16 * 1024;

thread_local! {
    /// Each worker's scratch for small writes joined into one record (thread-per-core: one
    /// per worker, never shared).
    static RAW: std::cell::RefCell<Box<[u8; RECORD]>> =
        std::cell::RefCell::new(Box::new([0; RECORD]));
}

/// Why a TLS connection failed, as counted in `/stats` (`tls.failures`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFailure {
    /// A malformed record or handshake message, or a peer breaking the protocol.
    Protocol,
    /// No version, cipher suite, group or ALPN protocol in common.
    Incompatible,
    /// The peer sent a fatal alert.
    Alert,
    /// The peer's certificate was refused (upstream side).
    Certificate,
    /// Plain HTTP sent to a TLS port.
    PlainHttp,
    /// The connection closed before the handshake completed.
    Eof,
}

impl TlsFailure {
    pub const ALL: [TlsFailure; 6] = [
        TlsFailure::Protocol,
        TlsFailure::Incompatible,
        TlsFailure::Alert,
        TlsFailure::Certificate,
        TlsFailure::PlainHttp,
        TlsFailure::Eof,
    ];

    pub fn name(self) -> &'static str {
        match self {
            TlsFailure::Protocol => "protocol",
            TlsFailure::Incompatible => "incompatible",
            TlsFailure::Alert => "alert",
            TlsFailure::Certificate => "certificate",
            TlsFailure::PlainHttp => "plain_http",
            TlsFailure::Eof => "eof",
        }
    }

    fn of(e: &rustls::Error) -> TlsFailure {
        use rustls::Error as E;
        match e {
            E::PeerIncompatible(_) | E::NoApplicationProtocol => TlsFailure::Incompatible,
            E::AlertReceived(_) => TlsFailure::Alert,
            E::InvalidCertificate(_) | E::NoCertificatesPresented => TlsFailure::Certificate,
            _ => TlsFailure::Protocol,
        }
    }
}

/// What a completed handshake negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Established {
    pub resumed: bool,
    pub tls13: bool,
    /// ALPN `h2`.
    pub h2: bool,
    /// ALPN `http/1.1` (neither: no ALPN).
    pub http11: bool,
}

/// The socket as rustls reads it, noting a short read: the socket gave less than the
/// room rustls offered, so it is drained (the plain-TCP rule, without a read that would
/// only say `WouldBlock`).
struct Probe<'a> {
    sock: &'a mut TcpStream,
    short: bool,
}

impl Read for Probe<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.sock.read(buf)?;
        self.short = n < buf.len();
        Ok(n)
    }
}

/// A TLS session over a TCP socket.
pub struct Tls {
    sock: TcpStream,
    conn: rustls::Connection,
    /// The first read has not looked at the first byte yet (server side: plain HTTP?).
    first: bool,
    /// The TCP stream reached EOF.
    eof: bool,
    /// close_notify is queued: shut the socket's write side once it is flushed.
    closing: bool,
    /// The handshake completed and [`Transport::take_established`] has not reported it.
    fresh: bool,
    pub failure: Option<TlsFailure>,
}

/// A connection's byte stream.
pub enum Transport {
    Tcp(TcpStream),
    Tls(Box<Tls>),
}

impl Transport {
    /// A server-side TLS session on an accepted socket.
    pub fn tls_server(sock: TcpStream, cfg: std::sync::Arc<rustls::ServerConfig>) -> Transport {
        let mut conn = match rustls::ServerConnection::new(cfg) {
            Ok(c) => c,
            // Only a config without a usable protocol version fails here; validated earlier.
            Err(_) => return Transport::Tcp(sock),
        };
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Transport::Tls(Box::new(Tls {
            sock,
            conn: conn.into(),
            first: true,
            eof: false,
            closing: false,
            fresh: false,
            failure: None,
        }))
    }

    /// A client-side TLS session to a backend on a (connecting) socket: the ClientHello
    /// goes out once the socket is writable; what is written before the handshake
    /// completes is held and sent after it.
    pub fn tls_client(
        sock: TcpStream,
        cfg: std::sync::Arc<rustls::ClientConfig>,
        name: rustls::pki_types::ServerName<'static>,
    ) -> io::Result<Transport> {
        let mut conn = rustls::ClientConnection::new(cfg, name)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        conn.set_buffer_limit(Some(TLS_BUFFER));
        Ok(Transport::Tls(Box::new(Tls {
            sock,
            conn: conn.into(),
            first: false,
            eof: false,
            closing: false,
            fresh: false,
            failure: None,
        })))
    }

    /// Moves a handshake on: sends what is queued, reads and processes what came. `Ok(true)`
    /// once it is complete (at once for plain TCP); `WouldBlock` while waiting.
    pub fn handshake(&mut self) -> io::Result<bool> {
        let Transport::Tls(t) = self else {
            return Ok(true);
        };
        loop {
            t.flush()?;
            if !t.conn.is_handshaking() {
                return Ok(true);
            }
            match t.conn.read_tls(&mut t.sock) {
                Ok(0) => {
                    t.failure.get_or_insert(TlsFailure::Eof);
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            if let Err(e) = t.conn.process_new_packets() {
                t.failure = Some(TlsFailure::of(&e));
                let _ = t.flush();
                return Err(io::Error::new(io::ErrorKind::InvalidData, e));
            }
        }
    }

    /// The TCP socket under the stream (to register, query, shut down).
    #[inline]
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => &t.sock,
        }
    }

    #[inline]
    pub fn tcp_mut(&mut self) -> &mut TcpStream {
        match self {
            Transport::Tcp(s) => s,
            Transport::Tls(t) => &mut t.sock,
        }
    }

    /// The descriptor to splice to or from, and to bound with `TCP_NOTSENT_LOWAT`: only a
    /// plain TCP stream carries the bytes it is given as they are.
    #[inline]
    pub fn tcp_fd(&self) -> Option<RawFd> {
        match self {
            Transport::Tcp(s) => Some(s.as_raw_fd()),
            Transport::Tls(_) => None,
        }
    }

    #[inline]
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    /// Still in the TLS handshake.
    pub fn handshaking(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(t) => t.conn.is_handshaking(),
        }
    }

    /// ALPN chose `h2`.
    pub fn alpn_h2(&self) -> bool {
        match self {
            Transport::Tcp(_) => false,
            Transport::Tls(t) => t.conn.alpn_protocol() == Some(b"h2"),
        }
    }

    /// The TLS version as the access log records it: 13, 12, or 0 for plain TCP.
    #[inline]
    pub fn tls_version(&self) -> u8 {
        match self {
            Transport::Tls(t) => match t.conn.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => 13,
                Some(rustls::ProtocolVersion::TLSv1_2) => 12,
                _ => 0,
            },
            Transport::Tcp(_) => 0,
        }
    }

    /// Once, after the handshake completed: what it negotiated.
    pub fn take_established(&mut self) -> Option<Established> {
        let Transport::Tls(t) = self else {
            return None;
        };
        if !std::mem::take(&mut t.fresh) {
            return None;
        }
        let alpn = t.conn.alpn_protocol();
        Some(Established {
            resumed: matches!(
                t.conn.handshake_kind(),
                Some(rustls::HandshakeKind::Resumed)
            ),
            tls13: t.conn.protocol_version() == Some(rustls::ProtocolVersion::TLSv1_3),
            h2: alpn == Some(b"h2"),
            http11: alpn == Some(b"http/1.1"),
        })
    }

    /// Why the TLS session failed, if it did.
    pub fn failure(&self) -> Option<TlsFailure> {
        match self {
            Transport::Tls(t) => t.failure,
            Transport::Tcp(_) => None,
        }
    }

    /// Reads plaintext into `buf`. Fewer bytes than `buf` holds means the socket was
    /// drained (or reached EOF); `Ok(0)` is EOF; `WouldBlock` when nothing is readable yet.
    #[inline]
    pub fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.read(buf),
            Transport::Tls(t) => t.read(buf),
        }
    }

    /// Writes `a` then `b` (one `writev` on plain TCP).
    #[inline]
    pub fn write2(&mut self, a: &[u8], b: &[u8]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => {
                if a.is_empty() {
                    s.write(b)
                } else if b.is_empty() {
                    s.write(a)
                } else {
                    s.write_vectored(&[IoSlice::new(a), IoSlice::new(b)])
                }
            }
            Transport::Tls(t) => t.write_all_of(&[a, b]),
        }
    }

    /// Writes the slices in order (one `writev` on plain TCP).
    #[inline]
    pub fn write_vectored(&mut self, parts: &[IoSlice<'_>]) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => s.write_vectored(parts),
            Transport::Tls(t) => {
                let mut slices = [&[][..]; 8];
                let n = parts.len().min(8);
                for (d, s) in slices.iter_mut().zip(parts) {
                    *d = s;
                }
                t.write_all_of(&slices[..n])
            }
        }
    }

    /// Sends ciphertext left over from earlier writes (on a writable event). `Ok(true)`
    /// when nothing is left.
    pub fn flush_pending(&mut self) -> io::Result<bool> {
        match self {
            Transport::Tcp(_) => Ok(true),
            Transport::Tls(t) => t.flush(),
        }
    }

    /// Shuts the write side: after close_notify (flushed now or on a later writable event)
    /// for TLS.
    pub fn shutdown_write(&mut self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown(Shutdown::Write);
            }
            Transport::Tls(t) if t.plain() => {
                let _ = t.sock.shutdown(Shutdown::Write);
            }
            Transport::Tls(t) => {
                t.conn.send_close_notify();
                t.closing = true;
                let _ = t.flush();
            }
        }
    }
}

impl Tls {
    /// Plain HTTP came to this TLS port: the rest of the connection (our 400, lingering)
    /// is plain text on the socket.
    fn plain(&self) -> bool {
        self.failure == Some(TlsFailure::PlainHttp)
    }

    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.plain() {
            return self.sock.read(buf);
        }
        if self.first {
            self.first = false;
            if let rustls::Connection::Server(_) = self.conn {
                let mut b = [0u8; 1];
                match self.sock.peek(&mut b) {
                    // A TLS record starts with its content type (22 for a handshake);
                    // a letter starts an HTTP method.
                    Ok(1) if b[0].is_ascii_uppercase() => {
                        self.failure = Some(TlsFailure::PlainHttp);
                        return Err(io::Error::new(io::ErrorKind::InvalidData, "plain HTTP"));
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        self.first = true;
                        return Err(e);
                    }
                    _ => {}
                }
            }
        }
        let mut filled = 0;
        // This call's last socket read was short: nothing more is queued (edge-triggered,
        // as for plain TCP), so no read that would only say `WouldBlock`.
        let mut drained = false;
        loop {
            match self.conn.reader().read(&mut buf[filled..]) {
                Ok(0) if !buf[filled..].is_empty() => return Ok(filled),
                Ok(n) => {
                    filled += n;
                    if filled == buf.len() {
                        return Ok(filled);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                // EOF without close_notify: an end all the same (framing decides whether
                // what came before was whole).
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return if filled > 0 { Ok(filled) } else { self.ended() };
                }
                Err(e) => return Err(e),
            }
            // Drained with nothing to show (a partial record): read once more anyway, since
            // an EOF may be queued behind the bytes (a short read says nothing about it).
            if self.eof || (drained && filled > 0) {
                return match (filled, self.eof) {
                    (0, _) => self.ended(),
                    _ => Ok(filled),
                };
            }
            let mut probe = Probe {
                sock: &mut self.sock,
                short: false,
            };
            match self.conn.read_tls(&mut probe) {
                Ok(0) => self.eof = true,
                Ok(_) => drained = probe.short,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    return if filled > 0 { Ok(filled) } else { Err(e) };
                }
                Err(e) => return Err(e),
            }
            self.process()?;
        }
    }

    /// Processes what rustls read: handshake messages answered (flushed now if the
    /// socket takes them), records decrypted.
    fn process(&mut self) -> io::Result<()> {
        let handshaking = self.conn.is_handshaking();
        if let Err(e) = self.conn.process_new_packets() {
            self.failure = Some(TlsFailure::of(&e));
            // The alert rustls queued, if the socket takes it.
            let _ = self.flush();
            return Err(io::Error::new(io::ErrorKind::InvalidData, e));
        }
        if handshaking && !self.conn.is_handshaking() {
            self.fresh = true;
        }
        if self.conn.wants_write() {
            // Handshake replies, session tickets, key updates.
            match self.flush() {
                Err(e) if e.kind() != io::ErrorKind::WouldBlock => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }

    /// The TCP stream ended with nothing left to read.
    fn ended(&mut self) -> io::Result<usize> {
        if self.conn.is_handshaking() && self.failure.is_none() {
            self.failure = Some(TlsFailure::Eof);
        }
        Ok(0)
    }

    /// Takes the parts in order, then sends: small parts (a head and a short body) go
    /// as one record in one write. Short only when the socket pushed back.
    fn write_all_of(&mut self, parts: &[&[u8]]) -> io::Result<usize> {
        if self.plain() {
            let slices: Vec<IoSlice<'_>> = parts.iter().map(|p| IoSlice::new(p)).collect();
            return self.sock.write_vectored(&slices);
        }
        let total: usize = parts.iter().map(|p| p.len()).sum();
        let several = parts.iter().filter(|p| !p.is_empty()).count() > 1;
        let taken = if several && total <= RECORD {
            RAW.with(|raw| {
                let raw = &mut *raw.borrow_mut();
                let mut at = 0;
                for p in parts {
                    raw[at..at + p.len()].copy_from_slice(p);
                    at += p.len();
                }
                self.take(&raw[..total])
            })?
        } else {
            let mut taken = 0;
            for &part in parts {
                let n = self.take(part)?;
                taken += n;
                if n < part.len() {
                    break;
                }
            }
            taken
        };
        let flushed = self.flush()?;
        if taken == 0 && total > 0 && !flushed {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(taken)
    }

    /// Gives rustls as much of `data` as it will buffer, sending what it has queued when
    /// it is full. Short only when the socket pushed back.
    fn take(&mut self, data: &[u8]) -> io::Result<usize> {
        let mut taken = 0;
        let mut full = false;
        while taken < data.len() {
            let n = self.conn.writer().write(&data[taken..])?;
            taken += n;
            if n > 0 {
                full = false;
                continue;
            }
            // Full: send what is queued; all sent means room again (twice full in a row
            // would be rustls refusing for another reason).
            if full || !self.flush()? {
                break;
            }
            full = true;
        }
        Ok(taken)
    }

    /// Writes queued ciphertext to the socket. `Ok(true)`: all of it went.
    fn flush(&mut self) -> io::Result<bool> {
        while self.conn.wants_write() {
            match self.conn.write_tls(&mut self.sock) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
                Err(e) => return Err(e),
            }
        }
        if std::mem::take(&mut self.closing) {
            let _ = self.sock.shutdown(Shutdown::Write);
        }
        Ok(true)
    }
}

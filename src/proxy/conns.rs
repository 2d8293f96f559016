//! The worker's connections, as data: the `Proxy` that owns them (slabs of clients and
//! upstreams, the idle pool, the h2c connections), what each client connection is doing
//! (`Phase`), an upstream connection and its state, a tunnel's two halves, the mio
//! tokens that name them, and the result of one step. The files beside it drive these;
//! `mod.rs` dispatches events to them.

use std::io;
use std::net::SocketAddr;
use std::time::Instant;

use mio::Token;
use slab::Slab;

use crate::access_log::Record;
use crate::buffer::Buf;
use crate::timer::Deadline;
use crate::transport::Transport;

use super::context::Ctx;
use super::decide::Failure;
use super::exchange::Exchange;
use super::h2_session::H2Session;
use super::h2c_conn::Mux;
use super::io::Io;

/// Tokens below this belong to the worker loop (listener, waker).
pub const FIRST_TOKEN: usize = 34;
#[inline]
pub(super) fn client_token(i: usize) -> Token {
    Token(FIRST_TOKEN + 2 * i)
}

#[inline]
pub(super) fn upstream_token(i: usize) -> Token {
    Token(FIRST_TOKEN + 2 * i + 1)
}

/// What a token names.
pub(super) enum Slot {
    Client(usize),
    Upstream(usize),
}

#[inline]
pub(super) fn slot(t: Token) -> Slot {
    let n = t.0 - FIRST_TOKEN;
    if n & 1 == 0 {
        Slot::Client(n / 2)
    } else {
        Slot::Upstream(n / 2)
    }
}

/// Result of one step of a client's exchange.
pub(super) enum Step {
    /// Something moved (or the client was answered): step again.
    Progress,
    /// Nothing can move until the next event.
    Blocked,
    /// The client connection is gone.
    Closed,
}

/// One worker's connections and exchanges.
pub struct Proxy {
    pub(super) ctx: Ctx,
    pub(super) clients: Slab<Client>,
    pub(super) ups: Slab<Upstream>,
    /// Idle keep-alive upstream connections per backend, most recent last.
    pub(super) idle: Vec<Vec<usize>>,
    /// HTTP/2 connections per h2c backend, busy or idle (`h2c_pool.rs`).
    pub(super) muxes: Vec<Vec<usize>>,
    /// Scratch: clients to drive after an h2c connection's event.
    pub(super) mux_wake: Vec<(usize, crate::h2::StreamId)>,
    /// The gauge values last added to `Shared`'s counters (see [`Proxy::publish_gauges`]).
    pub(super) published: [u64; 4],
}

/// What a turn of an HTTP/1.1 client's exchange (or one direction of it) did, for the
/// exchange's step (`h1_step.rs`) to act on.
pub(super) enum Flow {
    /// Nothing could move.
    Idle,
    /// Bytes moved.
    Moved,
    /// The exchange is over: the client was answered (`Step::Progress`) or is gone.
    Over(Step),
    /// The attempt failed: retried, answered 502/504, or (mid-response) the client gets
    /// what arrived and then closes.
    Failed(Failure),
    /// A 502/503/504 head the retry policy replays arrived (still unforwarded).
    Status(u16),
    /// The h2c connection had no room for the stream after all: a fresh one is needed.
    NoRoom,
}

/// A client's address in 20 bytes where a `SocketAddr` takes 32 (an idle keep-alive
/// client costs its `Client` slot): the IP as IPv6 (IPv4 mapped) and the port.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Peer {
    ip: [u8; 16],
    port: u16,
    v4: bool,
}

impl Peer {
    pub fn new(a: SocketAddr) -> Peer {
        let (ip, v4) = match a.ip() {
            std::net::IpAddr::V4(v4) => (v4.to_ipv6_mapped().octets(), true),
            std::net::IpAddr::V6(v6) => (v6.octets(), false),
        };
        Peer {
            ip,
            port: a.port(),
            v4,
        }
    }

    #[inline]
    pub fn ip(self) -> std::net::IpAddr {
        let v6 = std::net::Ipv6Addr::from(self.ip);
        match (self.v4, v6.to_ipv4_mapped()) {
            (true, Some(v4)) => v4.into(),
            _ => v6.into(),
        }
    }

    #[inline]
    pub fn get(self) -> SocketAddr {
        SocketAddr::new(self.ip(), self.port)
    }
}

impl std::fmt::Display for Peer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.get().fmt(f)
    }
}

/// What a client connection is doing; each phase owns the data it needs.
pub(crate) enum Phase {
    /// Waiting for (the rest of) a request head.
    Head,
    /// A request is being exchanged with a backend.
    Proxy(Box<Exchange>),
    /// Writing a locally generated response; then close, or read the next request.
    Local {
        rest: &'static [u8],
        close: bool,
        /// The client may still be sending a request body we will not read.
        body_left: bool,
    },
    /// Response sent, write side shut: discarding input until EOF before closing.
    Linger,
    /// After a 101: a byte tunnel between the client and its upstream (tunnel.rs).
    Tunnel(Box<Tunnel>),
    /// An HTTP/2 (h2c prior knowledge) connection: the codec and its streams (h2/).
    H2(Box<H2Session>),
    /// Its HTTP/2 session is out of the client for a step (h2/): nothing runs on the
    /// client meanwhile, and marks for its streams wait in `Ctx::marks`.
    H2Out,
}

pub(crate) struct Client {
    pub sock: Transport,
    pub peer: Peer,
    /// Bytes read from the client and not yet used (held only while there are some).
    pub buf: Option<Buf>,
    pub phase: Phase,
    pub io: Io,
    pub timer: Deadline,
}

/// A client's connection side, borrowed beside its exchange.
pub(crate) struct Side<'a> {
    pub sock: &'a mut Transport,
    pub buf: &'a mut Option<Buf>,
    pub io: &'a mut Io,
    pub peer: &'a Peer,
}

impl Client {
    /// The connection and the exchange, borrowed together (`None` unless proxying).
    #[inline]
    pub fn split(&mut self) -> Option<(Side<'_>, &mut Exchange)> {
        match &mut self.phase {
            Phase::Proxy(ex) => Some((
                Side {
                    sock: &mut self.sock,
                    buf: &mut self.buf,
                    io: &mut self.io,
                    peer: &self.peer,
                },
                ex,
            )),
            _ => None,
        }
    }

    pub fn new(sock: Transport, peer: SocketAddr) -> Client {
        Client {
            sock,
            peer: Peer::new(peer),
            buf: None,
            phase: Phase::Head,
            io: Io::default(),
            timer: Deadline::default(),
        }
    }

    /// Between requests with nothing buffered.
    pub fn is_idle(&self) -> bool {
        matches!(self.phase, Phase::Head) && self.buf.as_ref().is_none_or(Buf::is_empty)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpState {
    Connecting,
    Busy,
    Idle,
}

/// Whom an HTTP/1.1 upstream connection works for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// Nobody: idle in its backend's pool.
    Nobody,
    /// The exchange of an HTTP/1.1 client (or the tunnel it became, or its hedge).
    Exchange(usize),
    /// One stream of an HTTP/2 client.
    Stream { client: usize, id: u32 },
}

impl Owner {
    /// The client connection it works for, if any.
    #[inline]
    pub fn client(self) -> Option<usize> {
        match self {
            Owner::Nobody => None,
            Owner::Exchange(ci) | Owner::Stream { client: ci, .. } => Some(ci),
        }
    }
}

/// What an upstream connection carries.
pub(crate) enum UpKind {
    /// HTTP/1.1: one exchange at a time, for its owner.
    Http1(Owner),
    /// HTTP/2 to an h2c backend: many streams at once, whose owners its `Mux` knows
    /// (`h2c_pool.rs`).
    H2c(Box<Mux>),
}

pub(crate) struct Upstream {
    pub sock: Transport,
    pub backend: usize,
    pub kind: UpKind,
    pub state: UpState,
    pub io: Io,
    pub timer: Deadline,
}

impl Upstream {
    /// The shared HTTP/2 connection of an h2c upstream.
    #[inline]
    pub fn mux(&self) -> Option<&Mux> {
        match &self.kind {
            UpKind::H2c(m) => Some(m),
            UpKind::Http1(_) => None,
        }
    }

    #[inline]
    pub fn mux_mut(&mut self) -> Option<&mut Mux> {
        match &mut self.kind {
            UpKind::H2c(m) => Some(m),
            UpKind::Http1(_) => None,
        }
    }

    #[inline]
    pub fn is_h2c(&self) -> bool {
        matches!(self.kind, UpKind::H2c(_))
    }

    /// Whom an HTTP/1.1 connection works for (nobody, for an h2c one).
    #[inline]
    pub fn owner(&self) -> Owner {
        match self.kind {
            UpKind::Http1(o) => o,
            UpKind::H2c(_) => Owner::Nobody,
        }
    }

    /// An HTTP/1.1 connection now works for `owner`.
    #[inline]
    pub fn set_owner(&mut self, owner: Owner) {
        match &mut self.kind {
            UpKind::Http1(o) => *o = owner,
            UpKind::H2c(_) => debug_assert!(false, "an h2c connection has no owner"),
        }
    }

    pub fn is_idle(&self) -> bool {
        self.state == UpState::Idle
    }

    pub fn is_connecting(&self) -> bool {
        self.state == UpState::Connecting
    }
}

/// The result of a connect once the socket is writable: `Some(true)` up (Nagle off),
/// `Some(false)` failed, `None` still connecting.
pub(super) fn connect_result(u: &mut Upstream) -> Option<bool> {
    if !u.io.writable {
        return None;
    }
    match u.sock.tcp().take_error() {
        Ok(None) => {}
        Ok(Some(_)) | Err(_) => return Some(false),
    }
    match u.sock.tcp().peer_addr() {
        Ok(_) => {
            let _ = u.sock.tcp().set_nodelay(true);
            Some(true)
        }
        Err(e) if e.kind() == io::ErrorKind::NotConnected => {
            u.io.writable = false;
            None
        }
        Err(_) => Some(false),
    }
}

/// One direction of a tunnel.
#[derive(Debug, Default)]
pub(super) struct Half {
    /// The source sent EOF.
    pub(super) eof: bool,
    /// The EOF was passed on: the destination's write side is shut.
    pub(super) shut: bool,
    /// Bytes written to the destination.
    pub(super) bytes: u64,
}

/// A tunnel's state, boxed once in the client's phase. The client-to-backend bytes wait
/// in the client's own buffer (which may already hold bytes sent after the request).
pub(crate) struct Tunnel {
    /// The upstream connection (busy, without a deadline: the client's serves both).
    pub(super) up: usize,
    pub(super) backend: usize,
    /// Backend-to-client bytes not yet written (first, any that followed the 101 head).
    pub(super) down: Option<Buf>,
    pub(super) to_up: Half,
    pub(super) to_client: Half,
    /// When the request was taken on (the tunnel's total duration is logged from it).
    pub(super) started: Instant,
    /// Microseconds from the attempt's start to the 101 head.
    pub(super) ttfb_us: u64,
    pub(super) rec: Record,
}

#[cfg(test)]
mod tests {
    use super::Peer;
    use std::net::SocketAddr;

    #[test]
    fn a_peer_gives_back_the_address_it_was_made_from() {
        for a in [
            "192.0.2.7:5555",
            "[2001:db8::1]:80",
            "[::ffff:192.0.2.7]:1",
            "0.0.0.0:0",
        ] {
            let a: SocketAddr = a.parse().unwrap();
            assert_eq!(Peer::new(a).get(), a);
            assert_eq!(Peer::new(a).to_string(), a.to_string());
            assert_eq!(Peer::new(a).ip(), a.ip());
        }
        assert!(std::mem::size_of::<Peer>() <= 20);
    }
}

//! Listeners and the per-thread event loop: accepts, dispatches readiness, fires timers.
//! Connection behaviour lives in `conn`; this module only owns sockets, slots and time.

use std::io::{self, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use mio::event::Event;
use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token};
use socket2::{Domain, Protocol, Socket, Type};

use crate::config::{Config, Protocol as Wire};
use crate::conn::{Buffers, Conn, Ctx, Drive};
use crate::h2conn::H2Conn;
use crate::profile::{Latency, XorShift};
use crate::stats::Stats;
use crate::timer::Timers;

/// Set by SIGINT/SIGTERM; every loop checks it at least every [`MAX_WAIT`].
static STOP: AtomicBool = AtomicBool::new(false);

const LISTENER: Token = Token(usize::MAX);
/// Longest poll, so a stop request is noticed promptly.
const MAX_WAIT: Duration = Duration::from_millis(100);
const EVENTS: usize = 1024;
const BACKLOG: i32 = 4096;
/// Buffer sets kept for reuse by each loop.
const POOL_MAX: usize = 256;

/// State shared by all event-loop threads.
struct Shared {
    cfg: Config,
    latency: Latency,
    stats: Stats,
    start: Instant,
}

/// Binds all listeners, prints the listening line, runs the loops until a signal, then
/// prints the counters to stderr.
pub fn run(cfg: Config) -> Result<(), String> {
    let latency = Latency::new(&cfg.profile, &cfg.id, cfg.slow, cfg.seed)?;
    let addr = SocketAddr::new(cfg.host, cfg.port);
    let shared_port = cfg.threads > 1;
    let first = bind(addr, shared_port).map_err(|e| format!("cannot listen on {addr}: {e}"))?;
    let local = first
        .local_addr()
        .map_err(|e| format!("cannot read the bound address: {e}"))?;
    let mut listeners = vec![first];
    for _ in 1..cfg.threads {
        listeners.push(bind(local, true).map_err(|e| format!("cannot listen on {local}: {e}"))?);
    }
    ctrlc::set_handler(|| STOP.store(true, Relaxed))
        .map_err(|e| format!("cannot install the signal handler: {e}"))?;

    let mut stdout = io::stdout().lock();
    let _ = writeln!(
        stdout,
        "corelb-backend {} listening on {local} profile={} protocol={}",
        cfg.id,
        cfg.profile,
        cfg.protocol.name()
    );
    let _ = stdout.flush();
    drop(stdout);

    let shared = Arc::new(Shared {
        stats: Stats::new(cfg.threads),
        cfg,
        latency,
        start: Instant::now(),
    });
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(index, listener)| {
            let shared = Arc::clone(&shared);
            thread::Builder::new()
                .name(format!("backend-{index}"))
                .spawn(move || {
                    let result = Worker::new(shared, index, listener).and_then(Worker::run);
                    if let Err(e) = &result {
                        eprintln!("corelb-backend: event loop {index}: {e}");
                        STOP.store(true, Relaxed);
                    }
                    result
                })
        })
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot start a thread: {e}"))?;
    let mut failed = false;
    for h in handles {
        failed |= !matches!(h.join(), Ok(Ok(())));
    }

    let mut line = Vec::new();
    let _ = shared.stats.totals().write_json(&shared.cfg.id, &mut line);
    eprintln!("{}", String::from_utf8_lossy(&line));
    if failed {
        Err("an event loop failed".into())
    } else {
        Ok(())
    }
}

/// A non-blocking listener; `reuse_port` lets several threads listen on one port.
fn bind(addr: SocketAddr, reuse_port: bool) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(BACKLOG)?;
    Ok(TcpListener::from_std(socket.into()))
}

/// One event loop: its own poll, listener, connections and timers.
struct Worker {
    shared: Arc<Shared>,
    index: usize,
    poll: Poll,
    listener: TcpListener,
    /// Connections by slot; a slot is also the connection's token.
    conns: Vec<Option<AnyConn>>,
    free: Vec<usize>,
    pool: Vec<Buffers>,
    timers: Timers,
    /// Connections that used their budget, with their ids; driven again next turn.
    ready: Vec<(usize, u64)>,
    ready_next: Vec<(usize, u64)>,
    rng: XorShift,
    next_id: u64,
    now: Instant,
}

impl Worker {
    fn new(shared: Arc<Shared>, index: usize, mut listener: TcpListener) -> io::Result<Self> {
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let seed = shared.cfg.seed ^ (index as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        Ok(Worker {
            shared,
            index,
            poll,
            listener,
            conns: Vec::new(),
            free: Vec::new(),
            pool: Vec::new(),
            timers: Timers::default(),
            ready: Vec::new(),
            ready_next: Vec::new(),
            rng: XorShift::new(seed),
            next_id: 0,
            now: Instant::now(),
        })
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(EVENTS);
        while !STOP.load(Relaxed) {
            let timeout = if self.ready.is_empty() {
                let now = Instant::now();
                self.timers.next_deadline().map_or(MAX_WAIT, |at| {
                    at.saturating_duration_since(now).min(MAX_WAIT)
                })
            } else {
                Duration::ZERO
            };
            match self.poll.poll(&mut events, Some(timeout)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            self.now = Instant::now();
            for event in events.iter() {
                match event.token() {
                    LISTENER => self.accept(),
                    Token(slot) => self.on_event(slot, event),
                }
            }
            // Once per turn: due timers, then connections that yielded.
            self.fire_timers();
            self.run_ready();
        }
        Ok(())
    }

    fn accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((mut sock, _)) => {
                    self.shared.stats.thread(self.index).accepted();
                    let _ = sock.set_nodelay(true);
                    let slot = self.free.pop().unwrap_or_else(|| {
                        self.conns.push(None);
                        self.conns.len() - 1
                    });
                    let interest = Interest::READABLE | Interest::WRITABLE;
                    if let Err(e) = self
                        .poll
                        .registry()
                        .register(&mut sock, Token(slot), interest)
                    {
                        eprintln!("corelb-backend: register: {e}");
                        self.free.push(slot);
                        continue;
                    }
                    self.next_id += 1;
                    // Registration reports the current readiness; that event drives it.
                    self.conns[slot] = Some(match self.shared.cfg.protocol {
                        Wire::Http1 => {
                            let bufs = self.pool.pop().unwrap_or_else(Buffers::new);
                            AnyConn::H1(Conn::new(sock, self.next_id, bufs))
                        }
                        Wire::H2c => AnyConn::H2(Box::new(H2Conn::new(
                            sock,
                            self.next_id,
                            false,
                            self.shared.cfg.max_streams,
                        ))),
                        Wire::Grpc => AnyConn::H2(Box::new(H2Conn::new(
                            sock,
                            self.next_id,
                            true,
                            self.shared.cfg.max_streams,
                        ))),
                    });
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    // EMFILE and the like: retried on the next incoming connection.
                    eprintln!("corelb-backend: accept: {e}");
                    return;
                }
            }
        }
    }

    fn on_event(&mut self, slot: usize, event: &Event) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        // Record readiness; errors and hang-ups surface through the next read or write.
        let (readable, writable) = conn.readiness();
        if event.is_readable() || event.is_read_closed() || event.is_error() {
            *readable = true;
        }
        if event.is_writable() || event.is_write_closed() || event.is_error() {
            *writable = true;
        }
        self.drive(slot, false);
    }

    fn fire_timers(&mut self) {
        self.now = Instant::now();
        while let Some((slot, id)) = self.timers.pop_due(self.now) {
            if self.conn_id(slot) == Some(id) {
                self.drive(slot, true);
            }
        }
    }

    fn run_ready(&mut self) {
        // Take the pending list, leaving the empty spare to collect new yields.
        let mut batch = std::mem::take(&mut self.ready_next);
        std::mem::swap(&mut batch, &mut self.ready);
        for &(slot, id) in &batch {
            if self.conn_id(slot) == Some(id) {
                self.drive(slot, false);
            }
        }
        batch.clear();
        self.ready_next = batch;
    }

    fn conn_id(&self, slot: usize) -> Option<u64> {
        self.conns.get(slot)?.as_ref().map(AnyConn::id)
    }

    /// Drives one connection (first answering its delay if `timer` fired) and acts on the
    /// result.
    fn drive(&mut self, slot: usize, timer: bool) {
        let Some(conn) = self.conns.get_mut(slot).and_then(Option::as_mut) else {
            return;
        };
        let shared = &*self.shared;
        let mut ctx = Ctx {
            cfg: &shared.cfg,
            latency: &shared.latency,
            stats: &shared.stats,
            thread: shared.stats.thread(self.index),
            rng: &mut self.rng,
            timers: &mut self.timers,
            start: shared.start,
            now: self.now,
            slot,
        };
        let (id, drive) = match conn {
            AnyConn::H1(conn) => {
                if timer {
                    conn.on_timer(&mut ctx);
                }
                (conn.id, conn.drive(&mut ctx))
            }
            AnyConn::H2(conn) => {
                if timer {
                    conn.on_timer(&mut ctx);
                }
                (conn.id, conn.drive(&mut ctx))
            }
        };
        match drive {
            Drive::Open => {}
            Drive::Yield => self.ready.push((slot, id)),
            Drive::Close => self.close(slot),
        }
    }

    fn close(&mut self, slot: usize) {
        match self.conns[slot].take() {
            Some(AnyConn::H1(mut conn)) => {
                let _ = self.poll.registry().deregister(&mut conn.sock);
                if self.pool.len() < POOL_MAX {
                    self.pool.push(conn.into_buffers());
                }
            }
            Some(AnyConn::H2(mut conn)) => {
                let _ = self.poll.registry().deregister(&mut conn.sock);
            }
            None => return,
        }
        self.free.push(slot);
    }
}

/// A connection of the configured protocol.
// HTTP/1 connections are the common case and stay inline; HTTP/2 ones are boxed.
#[allow(clippy::large_enum_variant)]
enum AnyConn {
    H1(Conn),
    H2(Box<H2Conn>),
}

impl AnyConn {
    fn id(&self) -> u64 {
        match self {
            AnyConn::H1(c) => c.id,
            AnyConn::H2(c) => c.id,
        }
    }

    fn readiness(&mut self) -> (&mut bool, &mut bool) {
        match self {
            AnyConn::H1(c) => (&mut c.readable, &mut c.writable),
            AnyConn::H2(c) => (&mut c.readable, &mut c.writable),
        }
    }
}

//! One pinned worker thread: its own mio `Poll`, its own SO_REUSEPORT listener, its own
//! client and upstream connections, idle pools, buffers and timers.
//!
//! The loop records readiness per connection and then drives that connection's exchange
//! (in `session`). Once per iteration, after the event batch, it accepts new clients,
//! expires deadlines and re-drives connections whose work was cut short for fairness.
//! Nothing here is shared with other workers except the `Arc<Shared>` of atomics.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token, Waker};
use slab::Slab;

use crate::access_log::LogSender;
use crate::balancer::Balancer;
use crate::buffer::BufPool;
use crate::config::Config;
use crate::metrics::{Snapshot, WorkerHists};
use crate::session::{Client, Upstream};
use crate::timer::{Clock, Timers};

pub(crate) const LISTENER: Token = Token(0);
pub(crate) const WAKER: Token = Token(1);
const FIRST: usize = 2;

/// Most connections accepted per loop iteration before other work gets a turn.
const ACCEPT_BATCH: usize = 256;
/// Buffers a worker keeps pooled while quiet.
const POOL_KEEP: usize = 8;
/// Most buffers a worker pools at all.
const POOL_MAX: usize = 4096;

#[inline]
pub(crate) fn client_token(i: usize) -> Token {
    Token(FIRST + 2 * i)
}

#[inline]
pub(crate) fn upstream_token(i: usize) -> Token {
    Token(FIRST + 2 * i + 1)
}

/// What a token names.
pub(crate) enum Slot {
    Client(usize),
    Upstream(usize),
}

#[inline]
pub(crate) fn slot(t: Token) -> Slot {
    let n = t.0 - FIRST;
    if n & 1 == 0 {
        Slot::Client(n / 2)
    } else {
        Slot::Upstream(n / 2)
    }
}

/// Counters all workers add to (read by the main thread and later by metrics).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub rejected: AtomicU64,
    /// Requests tried again on another server (or on a fresh connection).
    pub retries: AtomicU64,
    pub active_clients: AtomicU64,
}

/// State shared by every worker: configuration, balancer, stop flag.
pub struct Shared {
    pub cfg: Config,
    pub balancer: Balancer,
    pub health: crate::health::Health,
    pub stop: AtomicBool,
    pub counters: Counters,
    /// When the proxy started (uptime).
    pub started: std::time::Instant,
    /// CSV records dropped because the log queue was full (0 when logging is off).
    pub log_dropped: Arc<AtomicU64>,
}

static DEBUG: AtomicBool = AtomicBool::new(false);

pub fn set_debug(on: bool) {
    DEBUG.store(on, Relaxed);
}

#[inline]
pub fn debug_enabled() -> bool {
    DEBUG.load(Relaxed)
}

/// Prints a line to stderr when `-d` is on.
#[macro_export]
macro_rules! debug {
    ($($arg:tt)*) => {
        if $crate::worker::debug_enabled() {
            eprintln!("corelb: {}", format_args!($($arg)*));
        }
    };
}

/// Opens a non-blocking SO_REUSEPORT listener on `addr`.
pub fn listen(addr: SocketAddr) -> io::Result<std::net::TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&addr.into())?;
    s.listen(4096)?;
    Ok(s.into())
}

/// A worker's handle as seen by the main thread.
pub struct Handle {
    pub waker: Arc<Waker>,
    pub thread: std::thread::JoinHandle<()>,
}

pub struct Worker {
    pub(crate) id: usize,
    pub(crate) poll: Poll,
    pub(crate) listener: Option<TcpListener>,
    pub(crate) shared: Arc<Shared>,
    pub(crate) clients: Slab<Client>,
    pub(crate) ups: Slab<Upstream>,
    /// Idle keep-alive upstream connections per backend, most recent last.
    pub(crate) idle: Vec<Vec<usize>>,
    pub(crate) bufs: BufPool,
    pub(crate) timers: Timers,
    pub(crate) clock: Clock,
    pub(crate) now: u64,
    /// Clients whose drive was cut short and must run again before sleeping.
    pub(crate) again: Vec<usize>,
    /// Scratch for rewriting heads.
    pub(crate) scratch: Vec<u8>,
    pub(crate) draining: bool,
    accept_pending: bool,
    /// Worker-clock ms before which accepting is not retried (after EMFILE and the like).
    accept_after: u64,
    /// Upstream slots closed while handling the current event batch: later events of the
    /// batch for those tokens belong to the closed socket, not to a new one in the slot.
    pub(crate) closed_ups: Vec<usize>,
    /// Per-request CSV records go here (None: logging off).
    pub(crate) log: Option<LogSender>,
    /// This worker's latency histograms, handed to the aggregator once a second.
    pub(crate) hists: WorkerHists,
    metrics: crossbeam_channel::Sender<Snapshot>,
    /// Limits how much retries can add to the load on a failing pool.
    pub(crate) budget: crate::health::RetryBudget,
    /// This worker's random numbers (slow-start admission).
    pub(crate) rng: XorShift,
}

/// A tiny per-worker PRNG: no shared state, no locks.
pub(crate) struct XorShift(u64);

impl XorShift {
    pub(crate) fn new(seed: u64) -> XorShift {
        XorShift(seed | 1)
    }

    /// Uniform in [0, 1).
    #[inline]
    pub(crate) fn next_f64(&mut self) -> f64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        (x >> 11) as f64 / (1u64 << 53) as f64
    }
}

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        listener: std::net::TcpListener,
        log: Option<LogSender>,
        metrics: crossbeam_channel::Sender<Snapshot>,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::from_std(listener);
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let backends = shared.balancer.len();
        Ok((
            Worker {
                id,
                poll,
                listener: Some(listener),
                clients: Slab::with_capacity(1024),
                ups: Slab::with_capacity(1024),
                idle: vec![Vec::new(); backends],
                bufs: BufPool::new(POOL_MAX),
                timers: Timers::default(),
                clock: Clock::new(),
                now: 1,
                again: Vec::new(),
                scratch: Vec::with_capacity(4096),
                draining: false,
                accept_pending: false,
                accept_after: 0,
                closed_ups: Vec::new(),
                log,
                hists: WorkerHists::new(backends),
                metrics,
                budget: crate::health::RetryBudget::new(
                    shared.cfg.retry.budget,
                    shared.cfg.retry.min_per_sec,
                ),
                rng: XorShift::new(0x2545_F491_4F6C_DD1D ^ (id as u64 + 1)),
                shared,
            },
            waker,
        ))
    }

    /// Runs until asked to stop and every in-flight exchange is done (or the drain
    /// timeout passes).
    pub fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut drain_deadline = 0;
        let mut quiet_loops = 0u32;
        loop {
            let timeout = if !self.again.is_empty()
                || (self.accept_pending && self.accept_after <= self.now)
            {
                Some(Duration::ZERO)
            } else if self.accept_pending {
                Some(Duration::from_millis(self.accept_after - self.now))
            } else {
                // Wake at least once a second so a stop request is never missed.
                Some(Duration::from_millis(
                    self.timers.next_in(self.now).unwrap_or(1000).min(1000),
                ))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("corelb: worker {}: poll failed: {e}", self.id);
                    return;
                }
            }
            self.now = self.clock.now_ms();
            self.closed_ups.clear();

            // Idle pooled connections first: a backend's close that arrived in this batch
            // must be seen before a client event reuses the connection.
            for ev in events.iter() {
                if let Slot::Upstream(ui) = slot_of(ev.token()) {
                    if self.ups.get(ui).is_some_and(|u| u.is_idle()) {
                        self.close_idle_upstream(ui);
                    }
                }
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => self.accept_pending = true,
                    WAKER => {}
                    t => match slot(t) {
                        Slot::Client(ci) => self.client_event(ci, ev),
                        Slot::Upstream(ui) if self.closed_ups.contains(&ui) => {}
                        Slot::Upstream(ui) => self.upstream_event(ui, ev),
                    },
                }
            }
            if self.accept_pending && !self.draining && self.accept_after <= self.now {
                self.accept();
            }
            // Clients cut short last round. Driving one may cut it short again: it then
            // lands in the fresh `self.again` and must stay there (edge-triggered: its bytes
            // are already queued, no new event will come for them).
            let mut again = std::mem::take(&mut self.again);
            for &ci in &again {
                if self.clients.contains(ci) {
                    self.drive(ci);
                }
            }
            if self.again.is_empty() {
                again.clear();
                self.again = again;
            }
            self.expire();
            let instant = std::time::Instant::now();
            if self.hists.due(instant) {
                // Off the request path: a copy once a second, never blocking.
                let _ = self.metrics.try_send(self.hists.take(self.id, instant));
            }

            if self.shared.stop.load(Relaxed) && !self.draining {
                self.start_drain();
                drain_deadline = self.now + self.shared.cfg.timeouts.drain.as_millis() as u64;
            }
            if self.draining && (self.clients.is_empty() || self.now >= drain_deadline) {
                break;
            }
            if events.is_empty() {
                quiet_loops += 1;
                if quiet_loops == 5 {
                    self.bufs.trim(POOL_KEEP);
                }
            } else {
                quiet_loops = 0;
            }
        }
        let left = self.clients.len();
        if left > 0 {
            eprintln!(
                "corelb: worker {}: drain timeout, closing {left} connections",
                self.id
            );
        }
        let cis: Vec<usize> = self.clients.iter().map(|(i, _)| i).collect();
        for ci in cis {
            self.close_client(ci);
        }
        // The last interval: the aggregator is waiting for it before the final dumps.
        let last = self.hists.take(self.id, std::time::Instant::now());
        let _ = self.metrics.send(last);
        debug!("worker {} stopped", self.id);
    }

    fn accept(&mut self) {
        for _ in 0..ACCEPT_BATCH {
            let Some(listener) = self.listener.as_ref() else {
                self.accept_pending = false;
                return;
            };
            match listener.accept() {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    self.add_client(sock, peer);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.accept_pending = false;
                    return;
                }
                // A connection reset while queued: skip it, take the next.
                Err(e)
                    if matches!(
                        e.kind(),
                        io::ErrorKind::Interrupted | io::ErrorKind::ConnectionAborted
                    ) => {}
                Err(e) => {
                    // EMFILE, ENFILE, ENOBUFS: the backlog is still waiting and, edge-
                    // triggered, will not be reported again: retry shortly.
                    debug!("worker {}: accept failed: {e}", self.id);
                    self.accept_after = self.now + 10;
                    return;
                }
            }
        }
        // Batch limit reached: more may be waiting.
    }

    fn add_client(&mut self, mut sock: TcpStream, peer: SocketAddr) {
        let entry = self.clients.vacant_entry();
        let ci = entry.key();
        if self
            .poll
            .registry()
            .register(
                &mut sock,
                client_token(ci),
                Interest::READABLE | Interest::WRITABLE,
            )
            .is_err()
        {
            return;
        }
        entry.insert(Client::new(sock, peer));
        self.shared.counters.accepted.fetch_add(1, Relaxed);
        self.shared.counters.active_clients.fetch_add(1, Relaxed);
        // A new connection has the head timeout to send its first request (nginx's
        // client_header_timeout); one timer entry serves it until the first response.
        let at = self.now + self.shared.cfg.timeouts.client.as_millis() as u64;
        let c = &mut self.clients[ci];
        self.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    fn client_event(&mut self, ci: usize, ev: &mio::event::Event) {
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        c.io.note(ev);
        self.drive(ci);
    }

    fn upstream_event(&mut self, ui: usize, ev: &mio::event::Event) {
        let Some(u) = self.ups.get_mut(ui) else {
            return;
        };
        u.io.note(ev);
        if u.is_idle() {
            return;
        }
        let ci = u.client;
        // A failed connect has already turned into an error answer: drive that too.
        if u.is_connecting() && !self.connected(ui) && self.ups.contains(ui) {
            return;
        }
        if self.clients.contains(ci) {
            self.drive(ci);
        }
    }

    /// Stops accepting, closes idle clients and pooled connections; in-flight exchanges
    /// finish with `Connection: close`.
    fn start_drain(&mut self) {
        self.draining = true;
        if let Some(mut l) = self.listener.take() {
            let _ = self.poll.registry().deregister(&mut l);
        }
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(i, _)| i)
            .collect();
        for ci in idle {
            self.close_client(ci);
        }
        let pooled: Vec<usize> = self.idle.iter().flatten().copied().collect();
        for ui in pooled {
            self.close_idle_upstream(ui);
        }
        debug!(
            "worker {} draining: {} exchanges in flight",
            self.id,
            self.clients.len()
        );
    }

    pub(crate) fn close_idle_upstream(&mut self, ui: usize) {
        let u = self.remove_upstream(ui);
        if let Some(list) = self.idle.get_mut(u.backend) {
            list.retain(|&x| x != ui);
        }
        drop(u);
    }
}

impl Worker {
    /// Removes an upstream connection from the slab, remembering its slot for this batch.
    #[inline]
    pub(crate) fn remove_upstream(&mut self, ui: usize) -> crate::session::Upstream {
        self.closed_ups.push(ui);
        self.ups.remove(ui)
    }
}

#[inline]
fn slot_of(t: Token) -> Slot {
    if t.0 < FIRST {
        // Never matched as an upstream by callers.
        Slot::Client(usize::MAX)
    } else {
        slot(t)
    }
}

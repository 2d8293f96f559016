//! One pinned worker thread: its own mio `Poll`, its own SO_REUSEPORT listener, and its
//! own [`Proxy`] (client and upstream connections, idle pools, buffers and timers).
//!
//! The loop records readiness and hands each event to the proxy. Once per iteration,
//! after the event batch, it accepts new clients, expires deadlines, re-drives connections
//! whose work was cut short for fairness and hands its histograms to the aggregator.
//! Nothing here is shared with other workers except the `Arc<Shared>` of atomics.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::Duration;

use mio::net::TcpListener;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::access_log::LogSender;
use crate::debug;
use crate::metrics::Handover;
use crate::proxy::{Proxy, FIRST_TOKEN};
use crate::shared::Shared;
use crate::timer::Clock;

const WAKER: Token = Token(0);
/// Listener `i` has token `1 + i`.
pub const MAX_LISTENERS: usize = 32;
const _: () = assert!(
    FIRST_TOKEN > MAX_LISTENERS,
    "the proxy's tokens start after ours"
);

/// Most connections accepted per loop iteration before other work gets a turn.
const ACCEPT_BATCH: usize = 256;
/// Buffers a worker keeps pooled while quiet.
const POOL_KEEP: usize = 8;

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
    id: usize,
    poll: Poll,
    /// Each listener and whether it speaks TLS; empty once draining.
    listeners: Vec<(TcpListener, bool)>,
    /// Listeners with connections waiting, by bit.
    ready: u64,
    shared: Arc<Shared>,
    proxy: Proxy,
    clock: Clock,
    draining: bool,
    /// Worker-clock ms before which accepting is not retried (after EMFILE and the like).
    accept_after: u64,
    now: u64,
    metrics: Handover,
    /// The balancer generation this worker last acted on (see `Proxy::servers_changed`).
    generation: u64,
}

impl Worker {
    pub fn new(
        id: usize,
        shared: Arc<Shared>,
        listeners: Vec<(std::net::TcpListener, bool)>,
        log: Option<LogSender>,
        metrics: Handover,
    ) -> io::Result<(Worker, Arc<Waker>)> {
        let poll = Poll::new()?;
        let mut mine = Vec::with_capacity(listeners.len());
        for (i, (l, tls)) in listeners.into_iter().take(MAX_LISTENERS).enumerate() {
            let mut l = TcpListener::from_std(l);
            poll.registry()
                .register(&mut l, Token(1 + i), Interest::READABLE)?;
            mine.push((l, tls));
        }
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let proxy = Proxy::new(id, poll.registry().try_clone()?, shared.clone(), log);
        let generation = shared.balancer.generation();
        Ok((
            Worker {
                id,
                poll,
                listeners: mine,
                ready: 0,
                shared,
                proxy,
                clock: Clock::new(),
                draining: false,
                accept_after: 0,
                now: 1,
                metrics,
                generation,
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
            let accept_pending = self.ready != 0;
            let timeout = if self.proxy.has_pending_work()
                || (accept_pending && self.accept_after <= self.now)
            {
                Duration::ZERO
            } else if accept_pending {
                Duration::from_millis(self.accept_after - self.now)
            } else {
                // Wake at least once a second so a stop request is never missed.
                Duration::from_millis(self.proxy.next_deadline_in().unwrap_or(1000).min(1000))
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    eprintln!("corelb: worker {}: poll failed: {e}", self.id);
                    return;
                }
            }
            self.now = self.clock.now_ms();
            self.proxy.begin(self.now);
            self.proxy.close_idle_upstreams(&events);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => {}
                    Token(t) if t < FIRST_TOKEN => self.ready |= 1 << (t - 1),
                    _ => self.proxy.event(ev),
                }
            }
            if self.ready != 0 && !self.draining && self.accept_after <= self.now {
                self.accept();
            }
            self.proxy.redrive();
            self.proxy.expire();
            // What the batch queued goes out: one write per connection.
            self.proxy.flush();
            // One atomic load: a reload or an admin change published a new membership.
            let generation = self.shared.balancer.generation();
            if generation != self.generation {
                self.generation = generation;
                self.proxy.servers_changed();
            }
            self.proxy.publish_gauges();
            if let Some(snap) = self.proxy.take_histograms(false, &self.metrics.spares) {
                // Off the request path: a copy once a second, never blocking.
                let _ = self.metrics.tx.try_send(snap);
            }

            if self.shared.stop.load(Relaxed) && !self.draining {
                self.start_drain();
                drain_deadline = self.now + self.shared.cfg.timeouts.drain.as_millis() as u64;
            }
            if self.draining && (self.proxy.client_count() == 0 || self.now >= drain_deadline) {
                break;
            }
            if events.is_empty() {
                quiet_loops += 1;
                if quiet_loops == 5 {
                    self.proxy.trim_buffers(POOL_KEEP);
                }
            } else {
                quiet_loops = 0;
            }
        }
        let left = self.proxy.client_count();
        if left > 0 {
            eprintln!(
                "corelb: worker {}: drain timeout, closing {left} connections",
                self.id
            );
        }
        self.proxy.close_all();
        self.proxy.publish_gauges();
        // The last interval: the aggregator is waiting for it before the final dumps.
        if let Some(last) = self.proxy.take_histograms(true, &self.metrics.spares) {
            let _ = self.metrics.tx.send(last);
        }
        debug!("worker {} stopped", self.id);
    }

    fn accept(&mut self) {
        for i in 0..self.listeners.len() {
            if self.ready & (1 << i) != 0 {
                self.accept_from(i);
            }
        }
    }

    fn accept_from(&mut self, i: usize) {
        let (listener, tls) = &self.listeners[i];
        for _ in 0..ACCEPT_BATCH {
            match listener.accept() {
                Ok((sock, peer)) => {
                    let _ = sock.set_nodelay(true);
                    self.proxy.add_client(sock, peer, *tls);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.ready &= !(1 << i);
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

    /// Stops accepting; the proxy closes idle clients and pooled connections, and
    /// in-flight exchanges finish with `Connection: close`.
    fn start_drain(&mut self) {
        self.draining = true;
        self.ready = 0;
        for (mut l, _) in self.listeners.drain(..) {
            let _ = self.poll.registry().deregister(&mut l);
        }
        self.proxy.start_drain();
    }
}

//! The HTTP/1.1 and HTTP/2 proxy of one worker: its client and upstream connections, the exchanges
//! that link them, the idle upstream pool, and their deadlines. The worker loop hands it
//! readiness events, new clients and the clock; it never blocks and shares nothing with
//! other workers but `Shared`'s atomics.
//!
//! Each connection records readiness (`Io`); [`Proxy::drive`] then moves a client's
//! exchange until neither side can progress. Edge-triggered: a flag is cleared only on
//! `WouldBlock` or a short read/write.
//!
//! Files, lowest first (`tests/layers.rs` keeps imports pointing down this list):
//! - the model, which never names `Proxy`:
//!   - `io`: a connection's readiness, reads and writes;
//!   - `decide`: the pure decisions (replay, pooling, deadlines, whose fault), tested
//!     without sockets;
//!   - `pipe`: pipes for splice(2) and the splice calls;
//!   - `grpc`, `h2_translate`, `h1_h2c_translate`: gRPC's terms, and a head, trailers and
//!     framing translated between HTTP/1.1 and HTTP/2 (with an HTTP/1.1 exchange's h2c
//!     stream state);
//!   - `exchange`: one request and its response, with an enum per direction and one for
//!     the kind of server its attempt runs on;
//!   - `context`: the worker's context: buffers, timers, accounting, retry targets;
//!   - `h2c_conn`: one shared h2c upstream connection and its streams' inboxes;
//!   - `lifecycle`: an exchange's course for every protocol pair: deadlines, what a
//!     retry changes, error answers, and how an ending is accounted;
//!   - `back`: the back-end interface: a response body taken event by event from either
//!     server kind, and an HTTP/2 stream's request framed for an HTTP/1.1 server;
//!   - `h2_session`: an HTTP/2 client connection and its streams;
//!   - `conns`: `Proxy`, its client and upstream connections, their tokens;
//! - what moves an exchange, each `impl Proxy` over the model:
//!   - `upstream`: choosing a backend, attaching an attempt, connecting, the idle pool;
//!   - `h2c_pool`: the pool of shared h2c upstream connections, driven;
//!   - `h1_step`: one step of an HTTP/1.1 client's exchange for either server kind,
//!     what its turn found handled once, its deadlines on the client's timer;
//!   - `relay`: the turn on an HTTP/1.1 server: bytes both ways, the response validated;
//!   - `splice`: large bodies moved socket -> pipe -> socket (zero copy);
//!   - `hedge`: a second attempt racing a slow first one;
//!   - `end`: finishing, failing, retrying and aborting an exchange;
//!   - `h1_h2c`: the turn on an h2c server: the exchange as a stream of a shared
//!     connection;
//!   - `tunnel`: after a 101, the client and its upstream as a byte tunnel;
//! - the front ends: `handshake` (TLS), `client` (HTTP/1.1 heads, local answers,
//!   lingering close), `h2/` (the HTTP/2 front end, each stream to an HTTP/1.1 or h2c
//!   backend);
//! - the dispatch: this file (events, drive, deadlines, drain) and `membership`.

// The model: no file here names `Proxy` (`PROXY_LAYERS` in tests/layers.rs orders them).
mod back;
mod conns;
mod context;
pub(crate) mod decide;
mod exchange;
mod grpc;
mod h1_h2c_translate;
mod h1_response;
mod h2_session;
mod h2_translate;
mod h2c_conn;
pub(crate) mod io;
mod lifecycle;
mod pipe;
// What moves an exchange, each an `impl Proxy` over the model: back ends, front ends,
// dispatch.
mod client;
mod end;
mod h1_h2c;
mod h1_step;
mod h2;
mod h2c_pool;
mod handshake;
mod hedge;
mod membership;
mod relay;
mod splice;
mod tunnel;
mod upstream;

use std::net::SocketAddr;
use std::sync::Arc;

use mio::net::TcpStream;
use mio::{Registry, Token};
use slab::Slab;

use crate::access_log::LogSender;
use crate::debug;
use crate::metrics::Snapshot;
use crate::shared::Shared;
use crate::transport::Transport;

use conns::{client_token, slot, Client, Phase, Slot, Step};
use context::Ctx;

pub use conns::{Proxy, FIRST_TOKEN};

/// Steps one drive may take before yielding to other connections.
const MAX_STEPS: usize = 64;

impl Proxy {
    pub fn new(
        id: usize,
        registry: Registry,
        shared: Arc<Shared>,
        log: Option<LogSender>,
    ) -> Proxy {
        let backends = shared.balancer.capacity();
        Proxy {
            ctx: Ctx::new(id, registry, shared, log),
            clients: Slab::with_capacity(1024),
            ups: Slab::with_capacity(1024),
            idle: vec![Vec::new(); backends],
            muxes: vec![Vec::new(); backends],
            mux_wake: Vec::new(),
            published: [0; 4],
        }
    }

    /// Adds the change of this worker's gauges (upstream connections open and idle,
    /// buffers in use and pooled) since the last call to `Shared`'s sums: at most four
    /// Relaxed atomic adds, once per loop iteration, none when nothing changed.
    pub fn publish_gauges(&mut self) {
        // Only the filled backend slots (64 at least are allocated): every index handed
        // out is below `len`.
        let filled = self.ctx.shared.balancer.len().min(self.idle.len());
        let idle = self.idle[..filled].iter().map(Vec::len).sum::<usize>() + self.mux_idle(filled);
        let now = [
            self.ups.len() as u64,
            idle as u64,
            self.ctx.bufs.in_use() as u64,
            self.ctx.bufs.pooled() as u64,
        ];
        self.publish(now);
    }

    fn publish(&mut self, now: [u64; 4]) {
        let c = &self.ctx.shared.counters;
        let sums = [
            &c.upstream_open,
            &c.upstream_idle,
            &c.buffers_in_use,
            &c.buffers_pooled,
        ];
        for ((sum, last), v) in sums.into_iter().zip(&mut self.published).zip(now) {
            if *last != v {
                // Wrapping: a decrease is the two's complement of its size.
                sum.fetch_add(v.wrapping_sub(*last), std::sync::atomic::Ordering::Relaxed);
                *last = v;
            }
        }
    }

    /// Starts an event batch at worker-clock `now` (ms).
    pub fn begin(&mut self, now: u64) {
        self.ctx.now = now;
        self.ctx.closed_ups.clear();
        self.reap_leases();
    }

    /// Gives back the places of the balancer leases dropped since the last batch (an
    /// exchange torn down after a panic, or with its worker): none is left counted.
    fn reap_leases(&mut self) {
        let ctx = &mut self.ctx;
        ctx.shared.balancer.reap_dropped(&mut ctx.dropped_leases);
    }

    /// Milliseconds until the next deadline, if any.
    pub fn next_deadline_in(&self) -> Option<u64> {
        self.ctx.timers.next_in(self.ctx.now)
    }

    /// Some client was cut short and must be driven again before sleeping.
    pub fn has_pending_work(&self) -> bool {
        !self.ctx.again.is_empty()
    }

    pub fn client_count(&self) -> usize {
        self.clients.len()
    }

    /// This worker's histograms since the last call, if a second has passed (or `force`).
    /// Empty histograms to start the next interval in come from `spares`.
    pub fn take_histograms(
        &mut self,
        force: bool,
        spares: &crossbeam_channel::Receiver<hdrhistogram::Histogram<u64>>,
    ) -> Option<Snapshot> {
        let now = std::time::Instant::now();
        let hists = &mut self.ctx.hists;
        (force || hists.due(now)).then(|| hists.take(self.ctx.id, now, spares))
    }

    /// Gives pooled buffers back to the allocator, keeping `keep`.
    pub fn trim_buffers(&mut self, keep: usize) {
        self.ctx.bufs.trim(keep);
    }

    /// Closes idle pooled connections named in this batch first: a backend's close that
    /// arrived in the batch must be seen before a client event reuses the connection.
    pub fn close_idle_upstreams(&mut self, events: &mio::Events) {
        for ev in events.iter() {
            if ev.token().0 < FIRST_TOKEN {
                continue;
            }
            if let Slot::Upstream(ui) = slot(ev.token()) {
                if self.ups.get(ui).is_some_and(|u| u.is_idle() && !u.is_h2c()) {
                    self.close_idle_upstream(ui);
                }
            }
        }
    }

    /// Handles one readiness event for a connection token.
    pub fn event(&mut self, ev: &mio::event::Event) {
        let ci = match slot(ev.token()) {
            Slot::Client(ci) => Some(ci),
            Slot::Upstream(ui) => self.ups.get(ui).and_then(|u| u.owner().client()),
        };
        self.contained(ci, |p| p.dispatch(ev));
    }

    /// Runs `f`, which works on client `ci`'s exchange; a panic in it closes that
    /// exchange's connections only, is counted, and the worker goes on. A panic is a bug:
    /// this keeps it from taking every other connection of the worker down with it.
    fn contained(&mut self, ci: Option<usize>, f: impl FnOnce(&mut Proxy)) {
        let run = std::panic::AssertUnwindSafe(|| f(self));
        if let Err(payload) = std::panic::catch_unwind(run) {
            let what = payload
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| payload.downcast_ref::<String>().cloned())
                .unwrap_or_default();
            eprintln!(
                "corelb: worker {}: panic in an exchange ({what}); closing its connections",
                self.ctx.id
            );
            self.ctx
                .shared
                .counters
                .panics
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if let Some(ci) = ci {
                self.drop_client(ci);
            }
        }
    }

    /// Removes client `ci` and its upstream without running any exchange logic (their
    /// state may be inconsistent after a panic): the sockets close as they are dropped.
    fn drop_client(&mut self, ci: usize) {
        // h2 hook: the upstreams of an HTTP/2 session's streams go too.
        self.h2_drop_upstreams(ci);
        let Some(mut c) = self.clients.try_remove(ci) else {
            return;
        };
        self.tls_forget(&c.sock);
        self.ctx.bufs.release(&mut c.buf);
        self.ctx
            .shared
            .counters
            .active_clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Phase::Tunnel(t) = c.phase {
            self.end_tunnel(t);
        } else if let Phase::Proxy(mut ex) = c.phase {
            self.ctx.bufs.release(&mut ex.head);
            self.ctx.bufs.release(&mut ex.resp_buf);
            self.ctx.bufs.release(&mut ex.out);
            // (An h2c connection is shared: its stream of this client left it above.) A
            // hedge's connection is the exchange's too. The exchange's picks (its attempt's,
            // its hedge's, a retry's backing off) give their places back as it drops.
            for ui in [ex.up, ex.hedge.up].into_iter().flatten() {
                let own = self.ups.get(ui).is_some_and(|u| !u.is_h2c());
                if let Some(u) = own.then(|| self.ups.try_remove(ui)).flatten() {
                    self.ctx.closed_ups.push(ui);
                    if let Some(list) = self.idle.get_mut(u.backend) {
                        list.retain(|&x| x != ui);
                    }
                }
            }
        }
    }

    fn dispatch(&mut self, ev: &mio::event::Event) {
        match slot(ev.token()) {
            Slot::Client(ci) => {
                let Some(c) = self.clients.get_mut(ci) else {
                    return;
                };
                c.io.note(ev);
                if ev.is_writable() && c.sock.flush_pending().is_err() {
                    c.io.hup = true;
                }
                self.drive(ci);
            }
            Slot::Upstream(ui) if self.ctx.closed_ups.contains(&ui) => {}
            Slot::Upstream(ui) => self.upstream_event(ui, ev),
        }
    }

    /// Takes on a newly accepted client (from a TLS listener when `tls`).
    pub fn add_client(&mut self, sock: TcpStream, peer: SocketAddr, tls: bool) {
        let mut sock = match tls {
            false => Transport::Tcp(sock),
            true => match self.tls_accept(sock, peer) {
                Some(t) => t,
                None => return,
            },
        };
        let entry = self.clients.vacant_entry();
        let ci = entry.key();
        if self
            .ctx
            .registry
            .register(
                sock.tcp_mut(),
                client_token(ci),
                mio::Interest::READABLE | mio::Interest::WRITABLE,
            )
            .is_err()
        {
            self.tls_forget(&sock);
            return;
        }
        entry.insert(Client::new(sock, peer));
        let counters = &self.ctx.shared.counters;
        counters
            .accepted
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        counters
            .active_clients
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // A new connection has the head timeout to send its first request (nginx's
        // client_header_timeout); one timer entry serves it until the first response.
        if tls {
            self.arm_handshake(ci);
            return;
        }
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.client);
        let c = &mut self.clients[ci];
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    /// Drives again the clients whose work was cut short last round. Driving one may cut
    /// it short again: it then lands in the fresh list and must stay there (edge-triggered:
    /// its bytes are already queued, no new event will come for them).
    pub fn redrive(&mut self) {
        let mut again = std::mem::take(&mut self.ctx.again);
        for &ci in &again {
            if self.clients.contains(ci) {
                self.contained(Some(ci), |p| p.drive(ci));
            }
        }
        if self.ctx.again.is_empty() {
            again.clear();
            self.ctx.again = again;
        }
    }

    /// Moves client `ci`'s exchange forward until it blocks.
    fn drive(&mut self, ci: usize) {
        for _ in 0..MAX_STEPS {
            let Some(c) = self.clients.get(ci) else {
                return;
            };
            let step = match c.phase {
                Phase::Head => self.step_head(ci),
                Phase::Proxy(_) => self.step_proxy(ci),
                Phase::Local { .. } => self.step_local(ci),
                Phase::Linger => self.step_linger(ci),
                Phase::Tunnel(_) => self.step_tunnel(ci),
                Phase::H2(_) => self.step_h2(ci),
                Phase::H2Out => Step::Blocked,
            };
            match step {
                Step::Progress => continue,
                Step::Blocked | Step::Closed => return,
            }
        }
        self.ctx.again.push(ci);
    }

    /// Fires every deadline that is due.
    pub fn expire(&mut self) {
        let now = self.ctx.now;
        while let Some((entry, token)) = self.ctx.timers.pop_due(now) {
            match slot(Token(token)) {
                Slot::Client(ci) => {
                    let Some(c) = self.clients.get_mut(ci) else {
                        continue;
                    };
                    if self.ctx.timers.fire(&mut c.timer, token, entry, now) {
                        self.contained(Some(ci), |p| p.client_timeout(ci));
                    }
                }
                Slot::Upstream(ui) => {
                    let Some(u) = self.ups.get_mut(ui) else {
                        continue;
                    };
                    if self.ctx.timers.fire(&mut u.timer, token, entry, now) {
                        let ci = u.owner().client();
                        self.contained(ci, |p| p.upstream_timeout(ui));
                    }
                }
            }
        }
    }

    /// Stops taking requests: closes idle clients and pooled connections; in-flight
    /// exchanges finish with `Connection: close`.
    pub fn start_drain(&mut self) {
        self.ctx.draining = true;
        let idle: Vec<usize> = self
            .clients
            .iter()
            .filter(|(_, c)| c.is_idle())
            .map(|(i, _)| i)
            .collect();
        for ci in idle {
            self.close_client(ci);
        }
        // h2 hook: HTTP/2 sessions announce GOAWAY (two steps) and finish their streams.
        self.h2_start_drain();
        self.mux_start_drain();
        let pooled: Vec<usize> = self.idle.iter().flatten().copied().collect();
        for ui in pooled {
            self.close_idle_upstream(ui);
        }
        debug!(
            "worker {} draining: {} exchanges in flight",
            self.ctx.id,
            self.clients.len()
        );
    }

    /// Closes every client (the drain timeout passed).
    pub fn close_all(&mut self) {
        let cis: Vec<usize> = self.clients.iter().map(|(i, _)| i).collect();
        for ci in cis {
            self.close_client(ci);
        }
    }
}

impl Drop for Proxy {
    /// A worker that dies takes its connections and buffers with it: its share of the
    /// gauges goes too (a restarted worker publishes from zero).
    fn drop(&mut self) {
        self.publish([0; 4]);
        self.forget_tunnels();
        // The exchanges' leases give their places back.
        self.clients.clear();
        self.reap_leases();
    }
}

#[cfg(test)]
mod size_tests {
    #[test]
    fn print_sizes() {
        eprintln!(
            "Client {} B, Upstream {} B, Exchange {} B, Record {} B",
            std::mem::size_of::<super::Client>(),
            std::mem::size_of::<super::conns::Upstream>(),
            std::mem::size_of::<super::exchange::Exchange>(),
            std::mem::size_of::<crate::access_log::Record>()
        );
    }
}

//! Upstream connections: choosing a backend, putting an HTTP/1.1 client's attempt on
//! either server kind, taking a pooled connection or connecting a new one, noticing a
//! connect's result, and the per-backend idle pool. A connection's own timer bounds its
//! connect, its idle time in the pool and a hedge; once an attempt runs on it, the
//! attempt's deadline is its owner's. A connection knows its socket and its client, never
//! the exchange's state.

use mio::net::TcpStream;
use mio::Interest;

use crate::balancer::Lease;
use crate::config::{Protocol, UpstreamMode};
use crate::debug;
use crate::http;
use crate::timer::Deadline;
use crate::transport::Transport;

use super::conns::{
    client_token, connect_result, upstream_token, Owner, Phase, Proxy, UpKind, UpState, Upstream,
};
use super::context::Ctx;
use super::decide::Failure;
use super::exchange::Hop;
use super::h1_h2c_translate::H2cLeg;
use super::io::Io;
use super::lifecycle;

impl Proxy {
    /// Picks a backend for a new request. A server in slow start (recovered recently) is
    /// declined with probability 1 - ramp and another drawn, so its share rises linearly.
    pub(super) fn pick_backend(&mut self) -> Option<Lease> {
        let shared = &self.ctx.shared;
        let b = shared.balancer.lease(None)?;
        let ramp = shared.health.ramp(b.backend());
        if ramp >= 1.0 || self.ctx.rng.next_f64() < ramp {
            return Some(b);
        }
        match shared.balancer.lease(Some(b.backend())) {
            Some(other) => {
                shared.balancer.cancel_lease(b);
                Some(other)
            }
            None => Some(b),
        }
    }

    /// The name of the server upstream connection `ui` goes to (for the debug log).
    pub(super) fn server_name(&self, ui: usize) -> &str {
        &self.ctx.shared.balancer.backend(self.ups[ui].backend).name
    }

    /// Puts client `ci`'s exchange on the server `lease` picked: an HTTP/1.1 server's
    /// connection of its own, pooled (unless `fresh`) or connecting; or an h2c server's
    /// stream, on a shared connection (`h2c_pool.rs`). The attempt's deadline starts, on
    /// the client's timer. False if no connection could be made: the client has then been
    /// answered 502.
    pub(super) fn attach(&mut self, ci: usize, lease: Lease, fresh: bool) -> bool {
        let backend = lease.backend();
        let h2c = self.ctx.shared.balancer.backend(backend).protocol == Protocol::H2c;
        let conn = if h2c {
            self.mux_for(backend, ci, 0, fresh)
        } else {
            self.connection_to(backend, Owner::Exchange(ci), fresh, false)
        };
        let Some((ui, reused)) = conn else {
            self.unreachable(ci, lease);
            return false;
        };
        let mut hedgeable = false;
        let at = self.ctx.now + self.ctx.limits().upstream;
        let c = &mut self.clients[ci];
        if let Phase::Proxy(ex) = &mut c.phase {
            ex.begin_attempt(ui, reused, lease);
            ex.hop = if h2c {
                Hop::H2c(H2cLeg::default())
            } else {
                Hop::Http1
            };
            // The attempt's deadline starts: the upstream timeout, on the client's timer.
            // (Its request is not out yet: no per-try timeout runs, no hedge waits.)
            (ex.up_at, ex.client_at) = (at, 0);
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
            hedgeable = ex.hedgeable;
        }
        if hedgeable {
            self.plan_hedge(ci, backend);
        }
        true
    }

    /// A connection to `backend` working for `owner`, and whether it was pooled. A pooled
    /// one's timer is armed with the upstream timeout when `arm` (a hedge's deadline is its
    /// connection's); an attempt runs on its exchange's or its stream's own deadline.
    pub(super) fn connection_to(
        &mut self,
        backend: usize,
        owner: Owner,
        fresh: bool,
        arm: bool,
    ) -> Option<(usize, bool)> {
        let now = self.ctx.now;
        let cfg = &self.ctx.shared.cfg;
        if cfg.upstream == UpstreamMode::Persistent && !fresh {
            if let Some(ui) = self.idle[backend].pop() {
                let u = &mut self.ups[ui];
                u.state = UpState::Busy;
                u.set_owner(owner);
                let at = if arm {
                    now + Ctx::ms(cfg.timeouts.upstream)
                } else {
                    0
                };
                self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, at);
                return Some((ui, true));
            }
        }
        let ui = self.connect_upstream(backend, UpKind::Http1(owner))?;
        Some((ui, false))
    }

    /// Starts a non-blocking connect to `backend` for an HTTP/1.1 connection's owner, or
    /// for a shared h2c connection (`kind`); the slot is connecting, with the connect
    /// deadline armed.
    pub(super) fn connect_upstream(&mut self, backend: usize, kind: UpKind) -> Option<usize> {
        let b = self.ctx.shared.balancer.backend(backend);
        let addr = b.addr;
        let tcp = match TcpStream::connect(addr) {
            Ok(s) => s,
            Err(e) => {
                debug!("worker {}: connect to {addr} failed: {e}", self.ctx.id);
                return None;
            }
        };
        let made = match &b.tls {
            None => Ok(Transport::Tcp(tcp)),
            Some(Ok(t)) => Transport::tls_client(tcp, t.config.clone(), t.name.clone())
                .map_err(|e| e.to_string()),
            Some(Err(e)) => Err(e.clone()),
        };
        let mut sock = match made {
            Ok(s) => s,
            Err(e) => {
                debug!("worker {}: TLS to {addr}: {e}", self.ctx.id);
                return None;
            }
        };
        let entry = self.ups.vacant_entry();
        let ui = entry.key();
        self.ctx
            .registry
            .register(
                sock.tcp_mut(),
                upstream_token(ui),
                Interest::READABLE | Interest::WRITABLE,
            )
            .ok()?;
        self.ctx
            .shared
            .counters
            .upstream_connects
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let u = entry.insert(Upstream {
            sock,
            backend,
            kind,
            state: UpState::Connecting,
            io: Io::default(),
            timer: Deadline::default(),
        });
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.connect);
        self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, at);
        Some(ui)
    }

    /// No connection to `backend` could be made for client `ci`: 502, and the request
    /// body bytes already read are dropped.
    pub(super) fn unreachable(&mut self, ci: usize, lease: Lease) {
        let c = &mut self.clients[ci];
        let Phase::Proxy(ex) = &mut c.phase else {
            return;
        };
        self.ctx.unreachable(lease, ex);
        let body_left = !ex.body.is_done();
        let close = body_left || !ex.keep_alive;
        if let Some(b) = c.buf.as_mut() {
            b.consume(ex.body_ready);
        }
        self.respond(ci, http::BAD_GATEWAY, close, body_left);
    }

    pub(super) fn upstream_event(&mut self, ui: usize, ev: &mio::event::Event) {
        let Some(u) = self.ups.get_mut(ui) else {
            return;
        };
        u.io.note(ev);
        if ev.is_writable() && u.sock.flush_pending().is_err() {
            u.io.hup = true;
        }
        // h2c hook: a shared HTTP/2 connection (idle or not) is handled on its own.
        if u.is_h2c() {
            self.mux_event(ui);
            return;
        }
        if u.is_idle() {
            return;
        }
        let ci = match u.owner() {
            Owner::Nobody => return,
            Owner::Exchange(ci) => ci,
            // h2 hook: a connection serving an HTTP/2 stream is driven by its session.
            Owner::Stream { client, id } => {
                if self.clients.contains(client) {
                    self.h2_mark(client, id);
                    self.drive(client);
                }
                return;
            }
        };
        // hedge hook: a hedge's connect and bytes are seen by its exchange's step.
        if self.is_hedge(ci, ui) {
            self.drive(ci);
            return;
        }
        // A failed connect has already turned into an error answer: drive that too.
        if self.ups[ui].is_connecting() && !self.connected(ui) && self.ups.contains(ui) {
            return;
        }
        if self.clients.contains(ci) {
            self.drive(ci);
        }
    }

    /// Checks a connecting upstream after an event. Returns false if it failed (the
    /// client has been answered or the request retried) or is still connecting.
    fn connected(&mut self, ui: usize) -> bool {
        let u = &mut self.ups[ui];
        let ci = u.owner().client();
        match connect_result(u) {
            None => false,
            Some(true) => {
                // The exchange's deadline, on its client's timer, bounds it from here.
                u.state = UpState::Busy;
                self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, 0);
                true
            }
            Some(false) => {
                if let Some(ci) = ci {
                    self.fail(ci, Failure::Connect);
                }
                false
            }
        }
    }

    /// Puts a connection that served a clean exchange back into its backend's pool.
    pub(super) fn pool(&mut self, ui: usize) {
        let u = &mut self.ups[ui];
        u.state = UpState::Idle;
        u.set_owner(Owner::Nobody);
        u.io.readable = false;
        self.idle[u.backend].push(ui);
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.pool_idle);
        self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, at);
    }

    pub(super) fn close_idle_upstream(&mut self, ui: usize) {
        let u = self.remove_upstream(ui);
        if let Some(list) = self.idle.get_mut(u.backend) {
            list.retain(|&x| x != ui);
        }
    }

    /// Removes an upstream connection from the slab (closing it), remembering its slot
    /// for this batch.
    #[inline]
    pub(super) fn remove_upstream(&mut self, ui: usize) -> Upstream {
        self.ctx.closed_ups.push(ui);
        self.ups.remove(ui)
    }

    /// An upstream connection's own timer fired: an idle pooled one closes; a connect or
    /// a hedge took too long. (A running attempt's deadline is on its client's timer.)
    pub(super) fn upstream_timeout(&mut self, ui: usize) {
        let u = &self.ups[ui];
        if u.is_h2c() {
            self.mux_timeout(ui);
            return;
        }
        if u.is_idle() {
            self.close_idle_upstream(ui);
            return;
        }
        let ci = match u.owner() {
            // (Not expected: a busy connection has an owner.)
            Owner::Nobody => return,
            Owner::Exchange(ci) => ci,
            // h2 hook: a connection serving an HTTP/2 stream fails that stream only.
            Owner::Stream { .. } => {
                self.h2_upstream_timeout(ui);
                return;
            }
        };
        // hedge hook: a hedge that timed out is given up; its exchange goes on.
        if self.is_hedge(ci, ui) {
            self.drop_hedge(ci);
            return;
        }
        let connecting = self.ups[ui].is_connecting();
        let why = match self.clients.get_mut(ci).and_then(|c| c.split()) {
            Some((_, ex)) => lifecycle::expiry(ex, connecting, self.ctx.now),
            None if connecting => Failure::ConnectTimeout,
            None => Failure::Timeout,
        };
        // (Not expected mid-response, as the exchange's deadline then bounds the
        // connection; if so, what arrived is forwarded and the client closed afterwards.)
        let _ = self.upstream_broke(ci, why);
        if self.clients.contains(ci) {
            self.drive(ci);
        }
    }
}

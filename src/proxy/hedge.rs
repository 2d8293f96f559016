//! Hedged requests (`hedgingPolicy`, `--hedge-delay`): an HTTP/1.1 exchange a hedging
//! policy covers (and with no body to hold) that has heard nothing from its server some
//! delay after its request went out is sent once more, to another server speaking the
//! same protocol. On HTTP/1.1 servers the first connection to send response bytes carries
//! the exchange on, and the other is closed; on h2c servers the hedge is a stream on
//! another server's connection, the first response head wins and the other stream is
//! reset (CANCEL). A status the retry policy replays does not win. The loser is given
//! back to the balancer without a latency sample, so a lost race never punishes a server.
//! The delay is fixed, or the first server's recent 95th percentile latency.
//!
//! A hedge is planned when the first attempt begins and armed on the client's timer,
//! beside the exchange's deadlines (`h1_step.rs`). It counts against the retry budget.
//! If the first attempt fails while its hedge runs, the hedge carries the exchange on.

use std::sync::atomic::Ordering::Relaxed;

use crate::balancer::Lease;
use crate::config::types::HedgeDelay;
use crate::config::Protocol;
use crate::debug;
use crate::h2::ErrorCode;

use super::conns::{connect_result, upstream_token, Owner, Proxy, UpState};
use super::context::Ctx;
use super::exchange::{Exchange, Hedge, Hop, Resp};
use super::h1_h2c_translate::H2cLeg;
use super::io::{would_block, write2};
use super::lifecycle::Promote;

/// The status of a response whose first bytes are `b` (`HTTP/1.1 503`), if they hold it.
pub(super) fn status_of(b: &[u8]) -> Option<u16> {
    match b {
        [b'H', b'T', b'T', b'P', b'/', b'1', b'.', _, b' ', d @ ..] if d.len() == 3 => {
            d.iter().try_fold(0u16, |n, &c| {
                c.is_ascii_digit().then(|| n * 10 + u16::from(c - b'0'))
            })
        }
        _ => None,
    }
}

/// The first attempt still waits for its first response byte, its whole request sent.
pub(super) fn waiting(ex: &Exchange) -> bool {
    ex.resp == Resp::Head && !ex.got_bytes && ex.out.is_none() && !ex.head_pending()
}

impl Proxy {
    /// Plans the hedge of client `ci`'s exchange, whose first attempt just began on
    /// `backend`.
    pub(super) fn plan_hedge(&mut self, ci: usize, backend: usize) {
        let Some((_, ex)) = self.clients[ci].split() else {
            return;
        };
        if !ex.hedgeable || ex.retries > 0 || ex.hedge.up.is_some() {
            return;
        }
        let Some(delay) = self.hedge_delay(backend) else {
            return;
        };
        let at = self.ctx.now + delay;
        if let Some((_, ex)) = self.clients[ci].split() {
            ex.hedge.at = at;
        }
    }

    /// A server for a hedge of a request whose current attempt runs on `old`: another one
    /// speaking `protocol`, none of `tried`, picked (its in-flight count taken) and paid
    /// for from the retry budget. `None` if there is none or the budget is spent.
    pub(super) fn hedge_target(
        &mut self,
        old: usize,
        tried: super::decide::Tried,
        protocol: Protocol,
    ) -> Option<Lease> {
        let l = self.ctx.lease_untried(old, tried)?;
        let wrong = self.ctx.shared.balancer.backend(l.backend()).protocol != protocol;
        if wrong || !self.ctx.budget.withdraw(self.ctx.now) {
            self.ctx.shared.balancer.cancel_lease(l);
            return None;
        }
        Some(l)
    }

    /// When the hedge after the `sent`-th, just sent to `backend`, goes out: another
    /// delay on, if the policy allows more attempts (0: none).
    pub(super) fn next_hedge_at(&mut self, backend: usize, sent: u8) -> u64 {
        let policy = self.ctx.shared.cfg.retry.hedging.as_ref();
        let max_hedges = policy.map_or(1, |p| p.max_attempts - 1) as u8;
        if sent >= max_hedges {
            return 0;
        }
        self.ctx.now + self.hedge_delay(backend).unwrap_or(1)
    }

    /// How long an attempt on `backend` waits for a response byte before a hedge goes
    /// out (at least 1 ms); `None` without a hedging policy.
    pub(super) fn hedge_delay(&mut self, backend: usize) -> Option<u64> {
        let delay = match self.ctx.shared.cfg.retry.hedging.as_ref()?.delay {
            HedgeDelay::Fixed(d) => Ctx::ms(d),
            HedgeDelay::P95 => self.ctx.p95_ms(backend),
        };
        Some(delay.max(1))
    }

    /// Whether upstream `ui` is the hedge of client `ci`'s exchange.
    pub(super) fn is_hedge(&mut self, ci: usize, ui: usize) -> bool {
        self.clients
            .get_mut(ci)
            .and_then(|c| c.split())
            .is_some_and(|(_, ex)| ex.hedge.up == Some(ui))
    }

    /// The client's timer fired while proxying: true if it was the hedge's. A hedge goes
    /// out; if one already runs and neither has answered, the older attempt gives way to
    /// it first (at most two run at once), within the policy's attempts.
    pub(super) fn hedge_timer(&mut self, ci: usize) -> bool {
        let now = self.ctx.now;
        let Some((_, ex)) = self.clients[ci].split() else {
            return false;
        };
        if ex.hedge.at == 0 || now < ex.hedge.at {
            return false;
        }
        ex.hedge.at = 0;
        if !waiting(ex) {
            // Not the hedge's moment after all (the timer served another deadline).
            return false;
        }
        if ex.hedge.up.is_some() {
            if !self.hedge_sent(ci) {
                // The running hedge has not even sent its request: leave things be.
                return true;
            }
            self.promote_hedge(ci, Promote::Superseded);
        }
        self.launch_hedge(ci);
        // The exchange's deadlines and the next hedge's moment share the timer.
        self.rearm_exchange(ci);
        true
    }

    /// The running hedge of client `ci`'s exchange sent its whole request: its head
    /// written to its connection, or its stream opened on an h2c one.
    fn hedge_sent(&mut self, ci: usize) -> bool {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let h = ex.hedge.on();
        if ex.hop.is_h2c() {
            return ex.hedge.off > 0;
        }
        let head_len = ex.head.as_ref().map_or(0, |b| b.len());
        self.ups[h].state == UpState::Busy && ex.hedge.off >= head_len
    }

    /// Sends the hedge: another server than the first (and any tried) of the same kind,
    /// within the retry budget. To an HTTP/1.1 server it is a connection of its own, sent
    /// the request head; to an h2c server, a stream on that server's shared connection.
    fn launch_hedge(&mut self, ci: usize) {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let (old, tried, h2c) = (self.ups[ex.on()].backend, ex.tried, ex.hop.is_h2c());
        let kind = if h2c { Protocol::H2c } else { Protocol::Http1 };
        let Some(lease) = self.hedge_target(old, tried, kind) else {
            return;
        };
        let b = lease.backend();
        let conn = if h2c {
            self.mux_for(b, ci, 0, false)
        } else {
            self.connection_to(b, Owner::Exchange(ci), false, true)
        };
        let Some((ui, reused)) = conn else {
            self.ctx.shared.balancer.cancel_lease(lease);
            return;
        };
        let sent = self.clients[ci].split().expect("proxying").1.hedge.sent + 1;
        let next = self.next_hedge_at(b, sent);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        ex.hedge = Hedge::launched(next, ui, lease, sent, reused);
        self.ctx.shared.counters.hedges.fetch_add(1, Relaxed);
        debug!(
            "worker {}: hedging {} on {}{}",
            self.ctx.id,
            self.ctx.shared.balancer.backend(old).name,
            self.ctx.shared.balancer.backend(b).name,
            if h2c { " (h2c)" } else { "" }
        );
        // (The caller re-arms the client's timer for the next hedge's moment: the
        // exchange's deadlines share it.)
        if h2c {
            self.h2c_hedge_open(ci);
        } else {
            self.hedge_write(ci);
        }
    }

    /// Writes the request head to the hedge once it is connected.
    fn hedge_write(&mut self, ci: usize) {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let h = ex.hedge.on();
        let u = &mut self.ups[h];
        let head = ex.head.as_ref().map_or(&[][..], |b| b.bytes());
        if u.state != UpState::Busy || !u.io.writable || ex.hedge.off >= head.len() {
            return;
        }
        match write2(&mut u.sock, &head[ex.hedge.off..], &[], &mut u.io) {
            Ok(n) => {
                ex.hedge.off += n;
                if ex.hedge.off >= head.len() && ex.per_try > 0 {
                    // The hedge's own per-try timeout starts with its request out.
                    ex.hedge.try_by = self.ctx.now + ex.per_try;
                }
            }
            Err(e) if would_block(&e) => {}
            Err(_) => self.drop_hedge(ci),
        }
    }

    /// A step of client `ci`'s exchange while its hedge runs: the hedge's connect and
    /// head, then the race. The first attempt wins once it has response bytes; the hedge
    /// wins if its bytes come first.
    pub(super) fn hedge_step(&mut self, ci: usize) {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let h = ex.hedge.on();
        if ex.got_bytes || ex.resp != Resp::Head {
            // The first attempt answered first: the hedge is cancelled.
            self.ctx
                .shared
                .counters
                .hedges_cancelled
                .fetch_add(1, Relaxed);
            self.end_hedging(ci);
            return;
        }
        let u = &mut self.ups[h];
        if u.state == UpState::Connecting {
            match connect_result(u) {
                None => return,
                Some(false) => {
                    self.drop_hedge(ci);
                    return;
                }
                Some(true) => {
                    u.state = UpState::Busy;
                    let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.upstream);
                    self.ctx.timers.set(&mut u.timer, upstream_token(h).0, at);
                }
            }
        }
        self.hedge_write(ci);
        let Some((_, ex)) = self.clients[ci].split() else {
            return;
        };
        let Some(h) = ex.hedge.up.filter(|&h| self.ups[h].io.readable) else {
            return;
        };
        // Response bytes, or the hedge's server closed: look without taking them. A
        // status the retry policy replays (a 503) does not win: the first attempt goes on.
        let mut line = [0u8; 12];
        let peeked = self.ups[h].sock.tcp().peek(&mut line);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        match peeked {
            Ok(0) => self.drop_hedge(ci),
            Ok(n) if status_of(&line[..n]).is_some_and(|s| ex.retry_on.has_status(s)) => {
                self.drop_hedge(ci)
            }
            Ok(_) => self.promote_hedge(ci, Promote::Won),
            Err(e) if would_block(&e) => self.ups[h].io.readable = false,
            Err(_) => self.drop_hedge(ci),
        }
    }

    /// The hedge carries the exchange on: the first attempt's connection is closed (its
    /// stream reset, on h2c) and its server given back, without a latency sample unless
    /// it failed.
    fn promote_hedge(&mut self, ci: usize, why: Promote) {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.hop.is_h2c() {
            self.h2c_promote_hedge(ci, why);
            return;
        }
        let old = ex.on();
        let old_backend = self.ups[old].backend;
        let head_len = ex.head.as_ref().map_or(0, |b| b.len());
        ex.up = ex.hedge.up.take();
        let hedge_lease = ex
            .hedge
            .lease
            .take()
            .expect("a running hedge holds its lease");
        let old_lease = ex
            .lease
            .replace(hedge_lease)
            .expect("an attempt holds its lease");
        ex.head_off = ex.hedge.off.min(head_len);
        ex.try_by = std::mem::take(&mut ex.hedge.try_by);
        ex.reused = ex.hedge.reused;
        ex.rec.reused = ex.hedge.reused;
        let first = std::mem::replace(&mut ex.attempt, ex.hedge.started);
        ex.tried.insert(old_backend);
        self.ctx.hedge_promoted(ex, old_lease, first, why);
        self.remove_upstream(old);
        // The hedge's connection (connected: it sent its request) is the attempt's now:
        // the exchange's deadline, on the client's timer, bounds it, starting again.
        let ui = self.clients[ci].split().expect("proxying").1.on();
        let u = &mut self.ups[ui];
        self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, 0);
        self.arm_exchange(ci);
    }

    /// The first attempt failed: true if a running hedge, its request sent, takes over.
    pub(super) fn hedge_takes_over(&mut self, ci: usize) -> bool {
        let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) else {
            return false;
        };
        if ex.hedge.up.is_none() {
            return false;
        }
        if !self.hedge_sent(ci) {
            self.drop_hedge(ci);
            return false;
        }
        self.promote_hedge(ci, Promote::Failed);
        true
    }

    /// No more hedging for client `ci`'s exchange (an answer came, or it ended): a
    /// running hedge is closed and no other goes out.
    pub(super) fn end_hedging(&mut self, ci: usize) {
        if let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) {
            if ex.hedge.at == 0 && ex.hedge.up.is_none() {
                // (The common case: nothing planned, nothing running.)
                return;
            }
            ex.hedge.at = 0;
        }
        self.drop_hedge(ci);
    }

    /// Closes client `ci`'s hedge, if one runs, giving its server back (no sample) and
    /// keeping later attempts off it. A further hedge already planned still goes out.
    pub(super) fn drop_hedge(&mut self, ci: usize) {
        let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) else {
            return;
        };
        let Some(h) = ex.hedge.up.take() else {
            return;
        };
        let backend = self.ups[h].backend;
        // No later attempt of this request goes there.
        ex.tried.insert(backend);
        if let Some(lease) = ex.hedge.lease.take() {
            self.ctx.shared.balancer.cancel_lease(lease);
        }
        self.leave(ci, h);
    }

    /// Takes client `ci`'s exchange off connection `ui`: closed, or on an h2c connection
    /// (shared) its stream reset with CANCEL.
    fn leave(&mut self, ci: usize, ui: usize) {
        if !self.ups[ui].is_h2c() {
            self.remove_upstream(ui);
            return;
        }
        self.mux_detach(ui, ci, 0, ErrorCode::CANCEL);
        if !self.ctx.mux_dirty.contains(&ui) {
            self.ctx.mux_dirty.push(ui);
        }
    }

    /// Opens the h2c hedge's stream with the whole request once its connection is up
    /// (`hedge.off` 1: opened). True if it moved.
    fn h2c_hedge_open(&mut self, ci: usize) -> bool {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let h = ex.hedge.on();
        if ex.hedge.off > 0 || self.ups[h].is_connecting() {
            return false;
        }
        let opened = self.h1_h2c_open(ci, h, true);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        match opened {
            Some(Ok(false)) => false,
            Some(Ok(true)) => {
                ex.hedge.off = 1;
                if ex.per_try > 0 {
                    // The hedge's own per-try timeout starts with its request out.
                    ex.hedge.try_by = self.ctx.now + ex.per_try;
                }
                if !self.ctx.mux_dirty.contains(&h) {
                    self.ctx.mux_dirty.push(h);
                }
                true
            }
            // No room on the connection, or it is gone: no hedge this time.
            None | Some(Err(())) => {
                self.drop_hedge(ci);
                true
            }
        }
    }

    /// A step of client `ci`'s exchange on an h2c stream while its hedge runs: the
    /// hedge's stream opened, then the race. The first attempt wins once its response
    /// head went to the client's buffer; the hedge wins with a head first (not a status
    /// the retry policy replays). True if anything moved.
    pub(super) fn h2c_hedge_step(&mut self, ci: usize) -> bool {
        let Some((_, ex)) = self.clients[ci].split() else {
            return false;
        };
        let Some(h) = ex.hedge.up else {
            return false;
        };
        if ex.got_bytes || ex.resp != Resp::Head {
            // The first attempt answered first: the hedge is cancelled.
            let c = &self.ctx.shared.counters;
            c.hedges_cancelled.fetch_add(1, Relaxed);
            self.end_hedging(ci);
            return true;
        }
        let moved = self.h2c_hedge_open(ci);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.hedge.up.is_none() || ex.hedge.off == 0 {
            return moved;
        }
        let first_answered = (self.ups[ex.on()].mux())
            .and_then(|m| Some(m.streams[m.stream(ci, 0)?].head.is_some()))
            .unwrap_or(false);
        let m = self.ups[h].mux().expect("a mux");
        let Some(k) = m.stream(ci, 0) else {
            self.drop_hedge(ci);
            return true;
        };
        let ms = &m.streams[k];
        let replayed = |s: u16| ex.retry_on.has_status(s);
        match (&ms.head, ms.gone) {
            (Some(head), _) if head.status().is_some_and(replayed) => self.drop_hedge(ci),
            // If the first attempt has its head too, it goes first (`h1_h2c_recv`).
            (Some(_), _) if first_answered => return moved,
            (Some(_), _) => self.promote_hedge(ci, Promote::Won),
            (None, Some(_)) => self.drop_hedge(ci),
            (None, None) => return moved,
        }
        true
    }

    /// [`Proxy::promote_hedge`] for an exchange on an h2c stream: the hedge's stream
    /// carries it on, with its own per-try timeout; the first one's is reset.
    fn h2c_promote_hedge(&mut self, ci: usize, why: Promote) {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let (old, h) = (ex.on(), ex.hedge.on());
        ex.hedge.up = None;
        let old_backend = self.ups[old].backend;
        ex.up = Some(h);
        let hedge_lease = (ex.hedge.lease.take()).expect("a running hedge holds its lease");
        let old_lease = (ex.lease.replace(hedge_lease)).expect("an attempt holds its lease");
        ex.reused = ex.hedge.reused;
        ex.rec.reused = ex.hedge.reused;
        ex.try_by = std::mem::take(&mut ex.hedge.try_by);
        let first = std::mem::replace(&mut ex.attempt, ex.hedge.started);
        ex.tried.insert(old_backend);
        // The hedge's stream was opened with the whole (bodiless) request.
        ex.hop = Hop::H2c(H2cLeg {
            opened: true,
            up_end: true,
            ..H2cLeg::default()
        });
        (ex.status, ex.got_bytes, ex.final_answer) = (0, false, false);
        self.ctx.hedge_promoted(ex, old_lease, first, why);
        debug!(
            "worker {}: {} gives way to its hedge on {}",
            self.ctx.id,
            self.ctx.shared.balancer.backend(old_backend).name,
            self.server_name(h)
        );
        self.leave(ci, old);
        // The backend's deadline starts again with this attempt.
        self.arm_exchange(ci);
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_status_of_a_response_is_read_from_its_first_twelve_bytes() {
        assert_eq!(super::status_of(b"HTTP/1.1 503"), Some(503));
        assert_eq!(super::status_of(b"HTTP/1.0 200"), Some(200));
        assert_eq!(super::status_of(b"HTTP/1.1 50"), None);
        assert_eq!(super::status_of(b"HTTP/1.1 5x3"), None);
        assert_eq!(super::status_of(b"SSH-2.0-Open"), None);
    }
}

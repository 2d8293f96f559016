//! How an exchange ends: completed (the connection pooled or closed, the client reading
//! its next request), failed (a safe retry, or a 502/504), or torn down, for an HTTP/1.1
//! client's exchange with either kind of server. The decisions and the accounting are
//! `lifecycle.rs`'s (shared with HTTP/2 streams); each ending ends the attempt's lease once.

use crate::config::UpstreamMode;
use crate::debug;

use super::conns::{client_token, Phase, Proxy, Step};
use super::decide::{self, Blame, Failure, PoolCheck};

impl Proxy {
    /// Tries the request again after `why`: on another server, or for a pooled connection
    /// the backend had already closed (the keep-alive race), on a fresh connection to the
    /// same one. True if a new attempt is under way (or the client has been answered).
    pub(super) fn retry(&mut self, ci: usize, why: Failure) -> bool {
        let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) else {
            return false;
        };
        let Some(ui) = ex.up else {
            return false;
        };
        let old = self.ups[ui].backend;
        let Some((next, again)) = self.ctx.retry_target(ex, old, why) else {
            return false;
        };
        // Detach the failed attempt (and any hedge of it: a retried attempt is not
        // hedged); the exchange moves on with what it learnt.
        self.end_hedging(ci);
        self.drop_upstream(ci, ui);
        let (c, ex) = self.clients[ci].split().expect("proxying");
        // The body the failed attempt sent, kept for this: in front of the rest again.
        if let Some(mut kept) = ex.replay.take() {
            let n = kept.len();
            if let Some(rest) = c.buf.as_ref() {
                kept.append(rest.bytes());
            }
            self.ctx.bufs.release(c.buf);
            *c.buf = Some(kept);
            ex.body_ready += n;
        }
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let (next, wait) = self.ctx.retried(ex, next, why, again);
        if wait > 0 {
            // The retry policy's backoff: the client's timer starts the attempt.
            ex.backoff = Some(next);
            let c = &mut self.clients[ci];
            let at = self.ctx.now + wait;
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
            return true;
        }
        self.attach(ci, next, again.same_server());
        true
    }

    /// Client `ci`'s timer ended a retry backoff: the next attempt starts. False if the
    /// exchange was not backing off.
    pub(super) fn backoff_over(&mut self, ci: usize) -> bool {
        let Some((_, ex)) = self.clients[ci].split() else {
            return false;
        };
        let Some(next) = ex.backoff.take() else {
            return false;
        };
        self.attach(ci, next, false);
        if self.clients.contains(ci) {
            self.drive(ci);
        }
        true
    }

    /// Fails the exchange before any response byte reached the client: retries if that
    /// is safe, else closes the upstream and answers with the matching 502/504.
    pub(super) fn fail(&mut self, ci: usize, why: Failure) {
        // hedge hook: a hedge running with its request sent carries the exchange on.
        if self.hedge_takes_over(ci) {
            return;
        }
        if self.retry(ci, why) {
            return;
        }
        let Some(c) = self.clients.get_mut(ci) else {
            return;
        };
        let peer = c.peer;
        let Some((_, ex)) = c.split() else {
            return;
        };
        let Some(ui) = ex.up else {
            return;
        };
        debug!(
            "worker {}: backend {} failed ({}) for {peer}: answering {}",
            self.ctx.id,
            self.server_name(ui),
            why.reason(),
            why.canned().status
        );
        self.end_upstream(ci, why.canned().status, Blame::Backend);
        let (c, ex) = self.clients[ci].split().expect("proxying");
        let body_left = !ex.body.is_done();
        let close = body_left || !ex.keep_alive;
        if let Some(b) = c.buf.as_mut() {
            b.consume(ex.body_ready);
        }
        ex.body_ready = 0;
        self.respond(ci, why.canned(), close, body_left);
    }

    /// Detaches and closes client `ci`'s upstream before its exchange completed, and
    /// accounts the exchange with `status`: the error answer sent, or the status of a
    /// response broken off. `blame` says whose fault it was: the backend's counts against
    /// it (passive health, errors); the client's counts for neither side (499).
    pub(super) fn end_upstream(&mut self, ci: usize, status: u16, blame: Blame) {
        self.end_hedging(ci);
        let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) else {
            return;
        };
        let Some(ui) = ex.up.take() else {
            // Backing off before a retry: the server picked for it is given back.
            if let Some(next) = ex.backoff.take() {
                match blame {
                    Blame::Client => self.ctx.account_client_abort(next, ex, 499),
                    Blame::Backend => self.ctx.shared.balancer.cancel_lease(next),
                }
            }
            return;
        };
        self.drop_upstream(ci, ui);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if let Some(lease) = ex.lease.take() {
            self.ctx.account_early_end(lease, ex, status, blame, None);
        }
        self.ctx.bufs.release(&mut ex.head);
        self.ctx.bufs.release(&mut ex.resp_buf);
        self.ctx.bufs.release(&mut ex.out);
        self.ctx.bufs.release(&mut ex.replay);
    }

    /// Ends a completed exchange: the upstream goes back to the pool or closes, the client
    /// reads its next request or closes.
    pub(super) fn finish(&mut self, ci: usize) -> Step {
        let cfg = &self.ctx.shared.cfg;
        let (persistent, max_idle) = (
            cfg.upstream == UpstreamMode::Persistent,
            cfg.max_idle_per_backend,
        );
        let draining = self.ctx.draining;
        self.end_hedging(ci);
        let (_, ex) = self.clients[ci].split().expect("proxying");
        let ui = ex
            .up
            .take()
            .expect("a completed exchange ran on a connection");
        let u = &self.ups[ui];
        self.ctx.finished(ex, None);
        let body_done = ex.body.is_done();
        let keep_alive = ex.keep_alive;
        let pool = decide::may_pool(&PoolCheck {
            persistent,
            keep: ex.keep,
            request_done: body_done,
            // `readable` still set means bytes may be queued past the response.
            unread: u.io.readable || u.io.rdhup,
            draining,
            pooled: self.idle[u.backend].len(),
            max_idle,
        });
        if u.is_h2c() {
            // h1_h2c hook: the exchange's stream leaves the shared h2c connection.
            self.h1_h2c_detach(ci, ui);
        } else if pool {
            self.pool(ui);
        } else {
            self.remove_upstream(ui);
        }
        if keep_alive && body_done && !draining {
            let c = &mut self.clients[ci];
            if let Phase::Proxy(ex) = std::mem::replace(&mut c.phase, Phase::Head) {
                self.ctx.recycle(ex);
            }
            if c.buf.as_ref().is_some_and(|b| b.is_empty()) {
                self.ctx.bufs.release(&mut c.buf);
            }
            self.arm_idle(ci);
            Step::Progress
        } else {
            self.linger_or_close(ci, !body_done);
            Step::Closed
        }
    }

    /// Lets go of client `ci`'s upstream `ui` after an attempt that did not complete: an
    /// HTTP/1.1 connection closes; an h2c stream is reset and its shared connection stays.
    fn drop_upstream(&mut self, ci: usize, ui: usize) {
        if self.ups[ui].is_h2c() {
            // h1_h2c hook.
            self.h1_h2c_detach(ci, ui);
        } else {
            self.remove_upstream(ui);
        }
    }

    /// Tears the exchange down: closes the upstream and the client.
    pub(super) fn abort(&mut self, ci: usize, blame: Blame) {
        self.end_upstream(ci, 0, blame);
        self.close_client(ci);
    }
}

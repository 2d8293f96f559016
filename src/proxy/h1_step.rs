//! One step of an HTTP/1.1 client's exchange, whichever kind of server carries its
//! attempt (`Exchange::hop`), in the shape of `h2/step.rs` for an HTTP/2 stream:
//!
//! 1. the hop's turn: `relay.rs` moves raw HTTP/1.1 bytes (spliced when large, a hedge
//!    racing it first); `h1_h2c.rs` runs a stream on a shared h2c connection;
//! 2. one handling of what the turn found (`Flow`), the same for both kinds: the
//!    exchange finished, became a tunnel or was cut short; a failed attempt retried,
//!    answered 502/504, or (mid-response) the client given what arrived and closed; a
//!    status the retry policy replays; a full h2c connection swapped for a fresh one;
//! 3. the deadlines, both on the client's timer (`arm_exchange`, `exchange_timeout`),
//!    with the next hedge's moment. An HTTP/1.1 server's connection keeps a timer of its
//!    own only for its connect, and for a hedge.

use crate::debug;

use super::conns::{client_token, Flow, Phase, Proxy, Step, Upstream};
use super::decide::{self, Blame, Failure, Waits};
use super::exchange::{Exchange, Hop, Req, Resp};
use super::h1_h2c_translate::H2cLeg;
use super::lifecycle;

impl Proxy {
    /// One step of client `ci`'s exchange: its hop's turn, then what follows from it.
    #[inline(always)]
    pub(super) fn step_proxy(&mut self, ci: usize) -> Step {
        let Some((c, ex)) = self.clients[ci].split() else {
            return Step::Blocked;
        };
        if c.io.hup && ex.resp == Resp::Head {
            // The client reset or hung up while waiting: nobody will read the answer. (A
            // client that only half-closed still gets it, as HAProxy does by default.)
            debug!(
                "worker {}: client {} gone while waiting",
                self.ctx.id, c.peer
            );
            self.abort(ci, Blame::Client);
            return Step::Closed;
        }
        if ex.up.is_none() {
            // Backing off before a retry (end.rs): nothing to move until the timer.
            return Step::Blocked;
        }
        let flow = match ex.hop {
            Hop::Http1 => self.relay_turn(ci),
            Hop::H2c(_) => self.h1_h2c_turn(ci),
        };
        match flow {
            Flow::Idle => self.settle(ci, false),
            Flow::Moved => self.settle(ci, true),
            Flow::Over(step) => step,
            Flow::Failed(why) => match self.upstream_broke(ci, why) {
                Flow::Over(step) => step,
                // Cut short mid-response: what arrived still goes to the client.
                _ => self.settle(ci, true),
            },
            Flow::Status(code) => {
                if !self.replay_status(ci, code) {
                    // No replay after all: the next turn forwards it as the server gave it.
                    if let Some((_, ex)) = self.clients[ci].split() {
                        ex.final_answer = true;
                    }
                }
                Step::Progress
            }
            Flow::NoRoom => {
                // A pooled h2c connection turned full: the same pick, on a fresh one.
                let Some((_, ex)) = self.clients[ci].split() else {
                    return Step::Blocked;
                };
                let ui = ex.up.take().expect("an attempt runs");
                let lease = ex.lease.take().expect("an attempt holds its lease");
                self.h1_h2c_detach(ci, ui);
                self.attach(ci, lease, true);
                Step::Progress
            }
        }
    }

    /// After a turn that did not fail: the exchange ends if both directions are done
    /// (finished, a tunnel, or cut short), else its deadlines follow the progress.
    #[inline(always)]
    fn settle(&mut self, ci: usize, progress: bool) -> Step {
        let (side, ex) = self.clients[ci].split().expect("proxying");
        // The response is complete before the request body: send no more of it (a server
        // that stopped reading would stall us); the client connection closes after the
        // response, as the rest of its body cannot be told from a request. (An h2c
        // stream's request also ends with its response: bytes read but unsent go too.)
        let unsent = ex.body_ready > 0 && ex.hop.is_h2c();
        if ex.resp == Resp::Done && ex.req != Req::Closed && (!ex.body.is_done() || unsent) {
            let dropped = ex.close_request();
            if let Some(b) = side.buf.as_mut() {
                b.consume(dropped);
            }
        }
        if !ex.pending_out() {
            let request_idle = ex.req == Req::Closed
                || (ex.req != Req::Head && ex.body_ready == 0 && !ex.req_piped());
            match ex.resp {
                // The 101 head reached the client: the connections become a tunnel.
                Resp::Done if request_idle && ex.status == 101 => return self.start_tunnel(ci),
                Resp::Done if request_idle => return self.finish(ci),
                // What arrived went out: the client closes, the rest of its request moot.
                Resp::Truncated => {
                    self.abort(ci, Blame::Backend);
                    return Step::Closed;
                }
                _ => {}
            }
        }
        if progress {
            self.arm_exchange(ci);
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    /// The attempt failed with `why`: before any response byte reached the client, the
    /// exchange fails (a safe retry, or 502/504, `end.rs`); after, what arrived goes to
    /// the client, which then closes (`Resp::Truncated`).
    pub(super) fn upstream_broke(&mut self, ci: usize, why: Failure) -> Flow {
        let Some((_, ex)) = self.clients.get_mut(ci).and_then(|c| c.split()) else {
            return Flow::Over(Step::Closed);
        };
        ex.keep = false;
        if ex.resp == Resp::Head && ex.out.is_none() {
            self.fail(ci, why);
            return Flow::Over(Step::Progress);
        }
        ex.resp = Resp::Truncated;
        let ui = ex.on();
        debug!(
            "worker {}: backend {} broke mid-response: {}",
            self.ctx.id,
            self.server_name(ui),
            why.reason()
        );
        Flow::Moved
    }

    /// A 502/503/504 head the retry policy names arrived (an HTTP/1.1 server's still in
    /// `resp_buf`, an h2c stream's in its inbox): a hedge racing this attempt carries the
    /// exchange on, else the request is replayed elsewhere. False if neither could be.
    fn replay_status(&mut self, ci: usize, status: u16) -> bool {
        let (_, ex) = self.clients[ci].split().expect("proxying");
        if ex.hedge.up.is_some() {
            // The hedge reads its answer into a fresh buffer; this one is kept until the
            // hedge has taken over, for the head to be forwarded if it cannot.
            let kept = (ex.resp_buf.take(), std::mem::take(&mut ex.got_bytes));
            if self.hedge_takes_over(ci) {
                let mut buf = kept.0;
                self.ctx.bufs.release(&mut buf);
                return true;
            }
            let (_, ex) = self.clients[ci].split().expect("proxying");
            (ex.resp_buf, ex.got_bytes) = kept;
        }
        self.retry(ci, Failure::Status(status))
    }

    /// Sets the exchange's deadlines after progress: on the server while it owes us
    /// something, on the client while we wait on it. The client's timer is armed for the
    /// earlier, or the next hedge's moment.
    pub(super) fn arm_exchange(&mut self, ci: usize) {
        let limits = self.ctx.limits();
        let now = self.ctx.now;
        let c = &mut self.clients[ci];
        let writable = c.io.writable;
        let Phase::Proxy(ex) = &mut c.phase else {
            return;
        };
        let (waits, sent) = match &ex.hop {
            // A per-try timeout bounds the wait for the response head, from when the
            // whole request went out.
            Hop::Http1 => (
                ex.waits(writable),
                ex.req == Req::Sent && ex.resp == Resp::Head && !ex.got_bytes,
            ),
            Hop::H2c(leg) => h2c_waits(ex, leg, ex.up.and_then(|u| self.ups.get(u)), ci, writable),
        };
        let (client_at, up_at) = decide::deadlines(&waits, now, &limits);
        ex.up_at = lifecycle::upstream_deadline(ex, sent, up_at, now);
        ex.client_at = client_at;
        let at = timer_at(ex);
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    /// Re-arms the client's timer for the exchange's deadlines as they stand and its next
    /// hedge's moment (after a hedge went out).
    pub(super) fn rearm_exchange(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        let Phase::Proxy(ex) = &c.phase else {
            return;
        };
        let at = timer_at(ex);
        if at != 0 {
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
        }
    }

    /// `client_timeout` hook: the client's timer fired for its exchange. The server's
    /// deadline passed: the attempt fails (retried if safe, else 504, or the client closes
    /// mid-body); the client's: the exchange is aborted.
    pub(super) fn exchange_timeout(&mut self, ci: usize) {
        let now = self.ctx.now;
        let Some((c, ex)) = self.clients[ci].split() else {
            return;
        };
        let (up_at, client_at, ui) = (ex.up_at, ex.client_at, ex.up);
        if up_at != 0 && now >= up_at {
            let connecting = ui
                .and_then(|ui| self.ups.get(ui))
                .is_some_and(|u| u.is_connecting());
            let why = lifecycle::expiry(ex, connecting, now);
            debug!("worker {}: {}", self.ctx.id, why.reason());
            if matches!(self.upstream_broke(ci, why), Flow::Over(Step::Closed)) {
                return;
            }
        } else if client_at != 0 && now >= client_at {
            debug!(
                "worker {}: client {} stalled mid-exchange",
                self.ctx.id, c.peer
            );
            self.abort(ci, Blame::Client);
            return;
        } else {
            // (A deadline moved later since the timer was set.)
            let at = match timer_at(ex) {
                0 => now + 1,
                at => at,
            };
            let c = &mut self.clients[ci];
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
            return;
        }
        if self.clients.contains(ci) {
            self.drive(ci);
        }
    }
}

/// Where client `ci`'s exchange on its stream `leg` (on h2c connection `u`) stands, for
/// its deadlines, and whether its whole request went out (the per-try timeout's start).
#[inline(never)]
fn h2c_waits(
    ex: &Exchange,
    leg: &H2cLeg,
    u: Option<&Upstream>,
    ci: usize,
    writable: bool,
) -> (Waits, bool) {
    // What the stream holds for the client, and whether the server takes body now.
    let (inbox, room) = match u.and_then(|u| u.mux()) {
        Some(m) => match m.stream(ci, 0) {
            Some(k) => {
                let s = &m.streams[k];
                let inbox = s.data.as_ref().is_some_and(|d| !d.is_empty());
                (inbox, s.sid != 0 && m.conn.send_capacity(s.sid) > 0)
            }
            None => (false, false),
        },
        None => (false, false),
    };
    let waits = super::h1_h2c::waits(ex, leg, inbox, room, writable);
    (waits, leg.up_end && ex.resp == Resp::Head)
}

/// When the client's timer must fire for its exchange: the earlier of its deadlines and,
/// while it waits for its response, its hedge's moment (0: none).
#[inline]
fn timer_at(ex: &Exchange) -> u64 {
    let earlier = |a: u64, b: u64| if a == 0 || (b != 0 && b < a) { b } else { a };
    let at = earlier(ex.up_at, ex.client_at);
    if ex.hedge.at != 0 && super::hedge::waiting(ex) {
        return earlier(at, ex.hedge.at);
    }
    at
}

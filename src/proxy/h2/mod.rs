//! The HTTP/2 front end (h2c with prior knowledge): a client connection whose first bytes
//! are the HTTP/2 preface becomes a session (`Phase::H2`) owning the sans-IO codec and its
//! streams. Every stream is a request of its own: picked by the routing mode, sent over
//! an HTTP/1.1 upstream connection (pooled or per request) or as a stream of a shared h2c
//! one, retried by the same rules and accounted exactly like an HTTP/1.1 exchange (it has
//! an `Exchange` of its own).
//!
//! - `mod.rs`: the session: client bytes in and out, each step's streams, drain,
//!   teardown, and the codec's abuse counters summed into `Shared`;
//! - `open.rs`: the codec's events, and new streams checked, picked and attached;
//! - `deadline.rs`: the session's and its streams' deadlines on the client's timer;
//! - `step.rs`: a stream attached to a server of either kind, and one step of it: the leg's
//!   turn, then the stream finished, retried or failed the same way for both;
//! - `h1_leg.rs`: a stream's turn on an HTTP/1.1 connection;
//! - `h2c_leg.rs`: a stream's turn over a shared h2c upstream connection;
//! - `hedge.rs`: a hedge racing a stream's attempt;
//! - `forward.rs`: a stream's response body to the client, from either leg;
//!
//! The session's and its streams' state is `proxy/h2_session.rs`; gRPC's terms are
//! `proxy/grpc.rs`; HTTP/2 fields to an HTTP/1.1 head and back, `proxy/h2_translate.rs`.
//!
//! Flow control: received DATA is released to the codec only once written upstream, and
//! an upstream is read only when its stream's data went out, so a stream buffers at most
//! its receive window one way and one read the other.

mod deadline;
mod forward;
mod h1_leg;
mod h2c_leg;
mod hedge;
mod open;
mod step;

use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;

use crate::buffer::Buf;
use crate::debug;
use crate::h2::{self as codec, Connection, ErrorCode, Fields};

use super::conns::{Owner, Phase, Proxy, Step};
use super::context::Ctx;
use super::decide::Blame;
use super::h2_translate as translate;
use super::io::{read_into, would_block, write2};

use super::h2_session::{ClientWait, H2Session, BUSY_STREAMS, OUT_HIGH, READ_BUF, TRIM_AFTER_MS};

impl Proxy {
    /// The client sent the HTTP/2 preface: it becomes a session.
    pub(super) fn h2_start(&mut self, ci: usize) -> Step {
        let settings = codec::Settings {
            max_concurrent_streams: 128,
            // WebSocket over HTTP/2 (RFC 8441), relayed to HTTP/1.1 backends as an upgrade.
            enable_connect_protocol: true,
            // A stream's request body buffer is bounded by this window.
            initial_window_size: codec::DEFAULT_WINDOW,
            ..codec::Settings::default()
        };
        let cfg = &self.ctx.shared.cfg;
        let limits = codec::Limits {
            max_resets: cfg.h2_max_resets,
            max_streams: cfg.h2_max_streams,
            ..codec::Limits::default()
        };
        let s = H2Session {
            conn: Connection::server(settings, limits),
            streams: Vec::new(),
            published: codec::Counters::default(),
            closing: false,
            waiting_client: ClientWait::None,
            trailers: Fields::new(),
            up: Fields::new(),
            from: translate::Origin::new(
                self.clients[ci].peer.ip().to_string().as_bytes(),
                self.ctx.forwarded_proto(&self.clients[ci].sock),
            ),
            idle_at: 0,
            armed: 0,
            sweep: true,
            attaching: false,
            flush_queued: false,
            trim_at: 0,
            opened: 0,
        };
        debug!(
            "worker {}: HTTP/2 from {}",
            self.ctx.id, self.clients[ci].peer
        );
        self.clients[ci].phase = Phase::H2(Box::new(s));
        Step::Progress
    }

    /// Makes stream `id` of client `ci`'s session due: its upstream side changed. A
    /// session out of its client for a step gets the mark when it is put back.
    pub(super) fn h2_mark(&mut self, ci: usize, id: u32) {
        match self.clients.get_mut(ci).map(|c| &mut c.phase) {
            Some(Phase::H2(s)) => {
                if let Some(i) = s.stream(id) {
                    s.streams[i].due = true;
                }
            }
            // Taken out for a step.
            Some(Phase::H2Out) => self.ctx.marks.push((ci, id)),
            _ => {}
        }
    }

    /// One step of an HTTP/2 session: the session is taken out of the client's phase for
    /// the step and put back unless the connection closed.
    pub(super) fn step_h2(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Phase::H2(mut s) = std::mem::replace(&mut c.phase, Phase::H2Out) else {
            return Step::Blocked;
        };
        let mut step = self.h2_step(ci, &mut s);
        if matches!(step, Step::Closed) {
            self.h2_teardown(ci, s);
            self.close_client(ci);
        } else if self.clients.contains(ci) {
            // Marks made while the session was out: its own streams step again at once.
            if self.h2_take_marks(ci, &mut s) {
                step = Step::Progress;
            }
            self.clients[ci].phase = Phase::H2(s);
        } else {
            self.h2_teardown(ci, s);
        }
        step
    }

    /// The end of an event batch: frames queued for h2c backends go out, one write per
    /// connection, then the HTTP/2 sessions' output, one write per client.
    pub fn flush(&mut self) {
        while let Some(ui) = self.ctx.mux_dirty.pop() {
            self.mux_flush(ui);
        }
        if self.ctx.h2_flush.is_empty() {
            return;
        }
        let mut list = std::mem::take(&mut self.ctx.h2_flush);
        self.ctx.flushing = true;
        for &ci in &list {
            if self.clients.contains(ci) {
                self.contained(Some(ci), |p| p.drive(ci));
            }
        }
        self.ctx.flushing = false;
        list.clear();
        self.ctx.h2_flush = list;
        // What those steps queued for backends.
        while let Some(ui) = self.ctx.mux_dirty.pop() {
            self.mux_flush(ui);
        }
    }

    /// Applies the marks made for client `ci` while its session `s` was out; true if any.
    pub(super) fn h2_take_marks(&mut self, ci: usize, s: &mut H2Session) -> bool {
        if self.ctx.marks.is_empty() {
            return false;
        }
        let mut any = false;
        self.ctx.marks.retain(|&(c, id)| {
            if c != ci {
                // Another session's, put back since (or gone): nothing holds it out now.
                return false;
            }
            if let Some(st) = s.streams.iter_mut().find(|st| st.id == id) {
                st.due = true;
                any = true;
            }
            false
        });
        any
    }

    fn h2_step(&mut self, ci: usize, s: &mut H2Session) -> Step {
        let mut progress = false;
        // Client bytes in, through the codec.
        if !s.closing && s.conn.pending_output().len() < OUT_HIGH {
            let c = &mut self.clients[ci];
            if c.io.readable {
                let buf = c.buf.get_or_insert_with(|| self.ctx.bufs.get());
                if buf.capacity() < READ_BUF && buf.is_empty() {
                    // A pooled 32 KiB buffer (buffer.rs bulk class), not a fresh one.
                    self.ctx.bufs.enlarge(buf, true, 0);
                }
                if buf.capacity() < READ_BUF {
                    buf.grow(READ_BUF);
                }
                if !buf.space().is_empty() {
                    match read_into(&mut c.sock, buf, &mut c.io) {
                        Ok(0) => {
                            debug!("worker {}: HTTP/2 client {} left", self.ctx.id, c.peer);
                            return Step::Closed;
                        }
                        Ok(_) => progress = true,
                        Err(e) if would_block(&e) => {}
                        Err(_) => return Step::Closed,
                    }
                }
            }
            let c = &mut self.clients[ci];
            if let Some(buf) = c.buf.as_mut().filter(|b| !b.is_empty()) {
                match s.conn.recv(buf.bytes(), Instant::now()) {
                    Ok(n) => buf.consume(n),
                    Err(e) => {
                        debug!("worker {}: {} from {}", self.ctx.id, e, c.peer);
                        buf.clear();
                        s.closing = true;
                    }
                }
            }
            // A session holds a read buffer only while bytes wait in it: an empty one goes
            // back to the worker's pool (taken again at the next read, without allocating).
            if c.buf.as_ref().is_some_and(Buf::is_empty) {
                self.ctx.bufs.release(&mut c.buf);
            }
        }
        progress |= self.h2_events(ci, s);
        progress |= self.h2_attach_pending(ci, s);
        // Each due stream's upstream leg (all of them after a sweep). A stream that moved
        // stays due: its next step may move it further.
        let sweep = std::mem::take(&mut s.sweep);
        let mut i = 0;
        while i < s.streams.len() {
            if !(sweep || s.streams[i].due) {
                i += 1;
                continue;
            }
            s.streams[i].due = false;
            let (moved, gone) = self.h2_stream_step(ci, s, i);
            progress |= moved;
            if !gone {
                s.streams[i].due |= moved;
                i += 1;
            }
        }
        // Codec bytes out to the client: once per event batch (`Proxy::flush`), so the
        // answers of every backend read in the batch share a write. Output that falls
        // below the high mark lets the streams it held back move again.
        let c = &mut self.clients[ci];
        if s.conn.wants_write() && c.io.writable && !self.ctx.flushing {
            if !s.flush_queued {
                s.flush_queued = true;
                self.ctx.h2_flush.push(ci);
            }
        } else if s.conn.wants_write() && c.io.writable {
            s.flush_queued = false;
            let high = s.conn.pending_output().len() >= OUT_HIGH;
            match write2(&mut c.sock, s.conn.pending_output(), &[], &mut c.io) {
                Ok(n) => {
                    s.conn.advance_output(n);
                    progress = true;
                    s.sweep |= high && s.conn.pending_output().len() < OUT_HIGH;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return Step::Closed,
            }
        }
        self.h2_publish(s);
        if (s.closing || s.conn.is_finished()) && !s.conn.wants_write() {
            return Step::Closed;
        }
        // Idle: the codec's buffers go back too (an idle connection costs little). A busy
        // connection is often between two requests: it keeps them a while first.
        if !s.streams.is_empty() {
            s.trim_at = 0;
        } else if s.trim_at == 0 && s.opened >= BUSY_STREAMS {
            s.trim_at = self.ctx.now + TRIM_AFTER_MS;
        } else if s.trim_at != u64::MAX && self.ctx.now >= s.trim_at {
            // Not while output or a header block is still pending: tried again at the next
            // step (a busy session: at its next deadline).
            if s.conn.trim() {
                s.trim_at = u64::MAX;
                s.opened = 0;
            } else if s.trim_at != 0 {
                s.trim_at = self.ctx.now + TRIM_AFTER_MS;
            }
        }
        // The client's deadline: the send timeout while its socket takes no bytes or its
        // connection window stays shut on pending responses; the idle timeout while nothing
        // is in flight or a stream waits for its request body; else the upstreams' run. A
        // stream whose response waits on its own window has a send deadline of its own.
        let t = &self.ctx.shared.cfg.timeouts;
        let (now, send) = (self.ctx.now, Ctx::ms(t.send));
        // One pass over the streams: their own send deadlines, and what the session's
        // deadline waits for.
        let (mut window_wait, mut body_wait) = (false, false);
        for st in s.streams.iter_mut() {
            window_wait |= st.waits_for_window(&s.conn);
            body_wait |= st.waits_for_body();
            if !st.waits_for_own_window(&s.conn) {
                st.stall_at = 0;
            } else if st.stall_at == 0 {
                st.stall_at = now + send;
            }
        }
        let blocked = s.conn.wants_write() && !self.clients[ci].io.writable;
        let conn_shut = window_wait && s.conn.connection_window() == 0;
        let wait = if blocked || conn_shut {
            ClientWait::Send
        } else if s.streams.is_empty() || body_wait {
            ClientWait::Idle
        } else {
            ClientWait::None
        };
        if wait != s.waiting_client {
            s.waiting_client = wait;
            s.idle_at = match wait {
                ClientWait::None => 0,
                ClientWait::Idle => now + Ctx::ms(t.idle),
                ClientWait::Send => now + send,
            };
        }
        self.h2_arm(ci, s);
        if progress {
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    /// Ends stream `i` before its response completed (client reset, connection gone):
    /// the upstream closes and the exchange is accounted with `blame`.
    fn h2_abort(&mut self, ci: usize, s: &mut H2Session, i: usize, blame: Blame) {
        let mut st = s.streams.swap_remove(i);
        // Releases what the stream holds of the windows (no-op if the client reset it).
        s.conn.reset(st.id, ErrorCode::CANCEL);
        if st.pending.is_some() && st.backoff_at == 0 {
            // Gone before it was attached: never forwarded, no connection opened.
            let c = &self.ctx.shared.counters;
            c.h2_resets_unforwarded.fetch_add(1, Relaxed);
        }
        if st.backoff_at != 0 && blame == Blame::Client {
            // The client left while a retry waited out its backoff: a client abort, as on
            // HTTP/1.1 (`end_upstream`); the retry's pick is given back.
            if let Some(next) = st.pending.take() {
                st.backoff_at = 0;
                let (ex, call) = st.for_accounting();
                self.ctx.account_early_end(next, ex, 0, blame, call);
            }
        }
        if let Some(backend) = self.h2_drop_leg(ci, &mut st, ErrorCode::CANCEL) {
            let (ex, call) = st.for_accounting();
            self.ctx.account_early_end(backend, ex, 0, blame, call);
        }
        st.recycle(&mut self.ctx, &mut s.conn);
    }

    /// The session ends: its streams' exchanges are aborted (the client's doing).
    fn h2_teardown(&mut self, ci: usize, mut s: Box<H2Session>) {
        while !s.streams.is_empty() {
            self.h2_abort(ci, &mut s, 0, Blame::Client);
        }
        self.h2_publish(&mut s);
    }

    /// `close_client` hook: a session still in the client's phase ends with it.
    pub(super) fn h2_close_streams(&mut self, ci: usize) {
        let c = &mut self.clients[ci];
        if let Phase::H2(_) = c.phase {
            if let Phase::H2(s) = std::mem::replace(&mut c.phase, Phase::H2Out) {
                self.h2_teardown(ci, s);
            }
        }
    }

    /// `drop_client` hook (after a panic): the streams' upstreams close unaccounted (the
    /// streams' picks give their places back as the session drops).
    pub(super) fn h2_drop_upstreams(&mut self, ci: usize) {
        self.mux_drop_client(ci);
        let ups: Vec<usize> = self
            .ups
            .iter()
            .filter(|(_, u)| matches!(u.owner(), Owner::Stream { client, .. } if client == ci))
            .map(|(i, _)| i)
            .collect();
        for ui in ups {
            self.remove_upstream(ui);
        }
    }

    /// Drain: each session sends the two-step GOAWAY and finishes its streams.
    pub(super) fn h2_start_drain(&mut self) {
        for (ci, c) in self.clients.iter_mut() {
            if let Phase::H2(s) = &mut c.phase {
                s.conn.go_away_graceful();
                s.sweep = true;
                self.ctx.again.push(ci);
            }
        }
    }

    /// Adds the change of the codec's counters to `Shared`'s.
    fn h2_publish(&mut self, s: &mut H2Session) {
        let now = *s.conn.counters();
        if now == s.published {
            return;
        }
        let c = &self.ctx.shared.counters;
        let old = s.published;
        let pairs = [
            (&c.h2_rapid_resets, now.rapid_resets, old.rapid_resets),
            (
                &c.h2_continuation_floods,
                now.continuation_floods,
                old.continuation_floods,
            ),
            (
                &c.h2_hpack_bombs,
                now.hpack_bombs + now.header_lists_too_large,
                old.hpack_bombs + old.header_lists_too_large,
            ),
            (
                &c.h2_control_floods,
                now.settings_floods + now.ping_floods,
                old.settings_floods + old.ping_floods,
            ),
            (
                &c.h2_refused_streams,
                now.refused_streams,
                old.refused_streams,
            ),
            (
                &c.h2_resets_received,
                now.resets_received,
                old.resets_received,
            ),
            (
                &c.h2_protocol_errors,
                now.stream_errors + now.connection_errors,
                old.stream_errors + old.connection_errors,
            ),
            (&c.h2_streams, now.streams_opened, old.streams_opened),
            (
                &c.h2_stream_limit_goaways,
                now.stream_limit_goaways,
                old.stream_limit_goaways,
            ),
            (
                &c.h2_resets_unforwarded,
                now.resets_unforwarded,
                old.resets_unforwarded,
            ),
        ];
        for (sum, new, old) in pairs {
            if new != old {
                sum.fetch_add(new - old, Relaxed);
            }
        }
        s.published = now;
    }
}

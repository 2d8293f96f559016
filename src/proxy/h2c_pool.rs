//! HTTP/2 upstream connections to h2c backends. Each worker keeps a few per backend and
//! multiplexes the streams of all its clients over them, up to the backend's
//! MAX_CONCURRENT_STREAMS; another connection opens when every one is full. With
//! `--upstream per-request` a connection carries one stream and closes after it, as the
//! seed's non-persistent mode did.
//!
//! A connection (a [`Mux`] in its `Upstream` slot) owns the client side of the codec and
//! an inbox per stream: the response head, DATA not yet taken, trailers, and why the
//! stream is gone if it is. Socket events fill the inboxes and wake the owners (client
//! connections), which take what their clients can receive and only then release that
//! much of the upstream window: a slow client holds back the backend, and an inbox holds
//! at most one stream window.
//!
//! A connection that breaks, or says GOAWAY, takes no new streams; its streams learn why
//! ([`Gone`]), and the slot closes when the last one has left.

use crate::buffer::Buf;
use crate::config::UpstreamMode;
use crate::debug;
use crate::h2::{self as codec, Connection, ErrorCode, Event, StreamId};

use super::conns::{connect_result, upstream_token, Proxy, UpKind, UpState};
use super::context::Ctx;
use super::h2c_conn::{by_sid, client_settings, Gone, Mux, MuxStream, READ_BUF};
use super::io::{read_into, would_block, write2};

impl Proxy {
    /// A connection to h2c `backend` with room for one more stream of (`ci`, `front`),
    /// which is registered on it (not yet opened): a pooled one unless `fresh` or per
    /// request, else a new one connecting. `None` if no connection could be made.
    pub(super) fn mux_for(
        &mut self,
        backend: usize,
        ci: usize,
        front: StreamId,
        fresh: bool,
    ) -> Option<(usize, bool)> {
        let single = self.ctx.shared.cfg.upstream == UpstreamMode::PerRequest;
        let pooled = if single || fresh {
            None
        } else {
            self.muxes[backend]
                .iter()
                .copied()
                .find(|&ui| self.ups[ui].mux().is_some_and(|m| m.has_room()))
        };
        let (ui, reused) = match pooled {
            Some(ui) => (ui, true),
            None => (self.mux_connect(backend, single)?, false),
        };
        let u = &mut self.ups[ui];
        let m = u.mux_mut().expect("a mux");
        m.add(MuxStream {
            sid: 0,
            client: ci,
            front,
            head: None,
            data: None,
            end: false,
            trailers: None,
            gone: None,
        });
        if u.state == UpState::Idle {
            // Busy again: the pool-idle deadline no longer applies.
            u.state = UpState::Busy;
            self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, 0);
        }
        Some((ui, reused))
    }

    /// Opens a new connection to `backend` (connecting; the codec's preface waits).
    fn mux_connect(&mut self, backend: usize, single: bool) -> Option<usize> {
        let mux = Mux {
            conn: Connection::client(client_settings(), codec::Limits::default()),
            streams: Vec::new(),
            keys: Vec::new(),
            buf: None,
            closed: false,
            single,
        };
        let ui = self.connect_upstream(backend, UpKind::H2c(Box::new(mux)))?;
        if !single {
            self.muxes[backend].push(ui);
        }
        Some(ui)
    }

    /// Opens the registered stream of (`ci`, `front`) on connection `ui` with the request
    /// head `fields`. `Ok(false)`: not yet (still connecting); `Err`: the connection has
    /// no room after all (the backend lowered its limit) or is closing.
    pub(super) fn mux_open(
        &mut self,
        ui: usize,
        ci: usize,
        front: StreamId,
        fields: &[(&[u8], &[u8])],
        end: bool,
    ) -> Result<bool, ()> {
        let u = &mut self.ups[ui];
        let UpKind::H2c(m) = &mut u.kind else {
            unreachable!("a mux");
        };
        let k = m.stream(ci, front).ok_or(())?;
        if m.closed {
            return Err(());
        }
        // Streams open once the backend's SETTINGS say how many it takes.
        if u.state == UpState::Connecting || !m.conn.peer_settings_known() {
            return Ok(false);
        }
        let sid = m.conn.open_stream().ok_or(())?;
        m.conn.send_headers(sid, fields, end).map_err(|_| ())?;
        m.opened(k, sid);
        Ok(true)
    }

    /// Writes what the codec of connection `ui` has queued. False if the connection broke
    /// (its streams then know).
    pub(super) fn mux_flush(&mut self, ui: usize) -> bool {
        let Some(u) = self.ups.get_mut(ui) else {
            return false;
        };
        let UpKind::H2c(m) = &mut u.kind else {
            return false;
        };
        while u.state != UpState::Connecting && m.conn.wants_write() && u.io.writable {
            match write2(&mut u.sock, m.conn.pending_output(), &[], &mut u.io) {
                Ok(n) => m.conn.advance_output(n),
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    self.mux_broke(ui, Gone::Lost);
                    return false;
                }
            }
        }
        true
    }

    /// A socket event on connection `ui`: connect completion, frames in, queued frames
    /// out; the owners of the streams that changed are driven.
    pub(super) fn mux_event(&mut self, ui: usize) {
        let mut wake = std::mem::take(&mut self.mux_wake);
        self.mux_io(ui, &mut wake);
        self.wake(wake);
    }

    /// Marks the HTTP/2 streams in `wake` due and drives each of their clients once, then
    /// keeps the vector for the next event.
    fn wake(&mut self, mut wake: Vec<(usize, StreamId)>) {
        for &(ci, front) in &wake {
            if front != 0 {
                self.h2_mark(ci, front);
            }
        }
        // Each client once: runs of one client are common, so those go before the sort.
        wake.dedup_by_key(|w| w.0);
        if wake.len() > 1 {
            wake.sort_unstable_by_key(|w| w.0);
            wake.dedup_by_key(|w| w.0);
        }
        for &(ci, _) in &wake {
            if self.clients.contains(ci) {
                // A panic in one client's work closes that client only.
                self.contained(Some(ci), |p| p.drive(ci));
            }
        }
        wake.clear();
        self.mux_wake = wake;
    }

    fn mux_io(&mut self, ui: usize, wake: &mut Vec<(usize, StreamId)>) {
        let u = &mut self.ups[ui];
        if u.state == UpState::Connecting {
            match connect_result(u) {
                None => return,
                Some(true) => {
                    u.state = UpState::Busy;
                    let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.upstream);
                    let idle = u.mux().is_some_and(|m| m.streams.is_empty());
                    // No deadline while streams use it (theirs run); else the pool's.
                    let at = if idle { at } else { 0 };
                    self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, at);
                    // Streams waiting for the connection can open now.
                    let m = u.mux().expect("a mux");
                    wake.extend(m.streams.iter().map(|s| (s.client, s.front)));
                }
                Some(false) => {
                    let m = u.mux().expect("a mux");
                    wake.extend(m.streams.iter().map(|s| (s.client, s.front)));
                    self.mux_broke(ui, Gone::Connect { timeout: false });
                    return;
                }
            }
        }
        let Some(lost) = self.mux_read(ui, wake) else {
            return;
        };
        if !self.mux_flush(ui) || lost {
            if let Some(m) = self.ups.get(ui).and_then(|u| u.mux()) {
                wake.extend(m.streams.iter().map(|s| (s.client, s.front)));
            }
            if lost {
                self.mux_broke(ui, Gone::Lost);
            }
        }
    }

    /// Reads and parses what the backend sent, filling the inboxes. Returns whether the
    /// connection is lost (EOF, error, connection error), or `None` if the slot is gone.
    fn mux_read(&mut self, ui: usize, wake: &mut Vec<(usize, StreamId)>) -> Option<bool> {
        let u = self.ups.get_mut(ui)?;
        let UpKind::H2c(m) = &mut u.kind else {
            return None;
        };
        let mut lost = false;
        loop {
            if !u.io.readable || m.closed && m.streams.is_empty() {
                break;
            }
            let buf = m.buf.get_or_insert_with(|| self.ctx.bufs.get());
            if buf.capacity() < READ_BUF && buf.is_empty() {
                // A pooled 32 KiB buffer (buffer.rs bulk class), not a fresh one.
                self.ctx.bufs.enlarge(buf, true, 0);
            }
            if buf.capacity() < READ_BUF {
                buf.grow(READ_BUF);
            }
            match read_into(&mut u.sock, buf, &mut u.io) {
                Ok(0) => {
                    lost = true;
                    break;
                }
                Ok(_) => {}
                Err(e) if would_block(&e) => break,
                Err(_) => {
                    lost = true;
                    break;
                }
            }
            match m.conn.recv(buf.bytes(), std::time::Instant::now()) {
                Ok(n) => buf.consume(n),
                Err(e) => {
                    debug!("worker {}: h2c upstream: {e}", self.ctx.id);
                    buf.clear();
                    lost = true;
                }
            }
            mux_events(m, &mut self.ctx, wake);
            if lost {
                break;
            }
        }
        if m.buf.as_ref().is_some_and(Buf::is_empty) {
            self.ctx.bufs.release(&mut m.buf);
        }
        Some(lost)
    }

    /// Connection `ui` broke (or never came up): no new streams, and every stream not yet
    /// ended learns `why` (streams never opened are `Refused`: nothing reached the
    /// backend). Closes the slot if no stream uses it.
    pub(super) fn mux_broke(&mut self, ui: usize, why: Gone) {
        let Some(u) = self.ups.get_mut(ui) else {
            return;
        };
        let backend = u.backend;
        let Some(m) = u.mux_mut() else {
            return;
        };
        m.closed = true;
        let mut owners = std::mem::take(&mut self.ctx.broke);
        for s in &mut m.streams {
            if s.gone.is_none() && !(s.end && s.head.is_some()) {
                s.gone = Some(match why {
                    Gone::Lost if s.sid == 0 => Gone::Refused,
                    other => other,
                });
            }
            owners.push((s.client, s.front));
        }
        let empty = m.streams.is_empty();
        // Their owners learn it at their next step: a step soon, whatever woke this.
        for &(ci, front) in &owners {
            if front != 0 {
                self.h2_mark(ci, front);
            }
            self.ctx.again.push(ci);
        }
        owners.clear();
        self.ctx.broke = owners;
        self.muxes[backend].retain(|&x| x != ui);
        if empty {
            self.mux_close(ui);
        }
    }

    /// Removes the stream of (`ci`, `front`) from connection `ui`: what it held of the
    /// window is released, a stream still open is reset (CANCEL unless `code` says), and
    /// a connection left without streams goes back to the pool (or closes).
    pub(super) fn mux_detach(&mut self, ui: usize, ci: usize, front: StreamId, code: ErrorCode) {
        let Some(u) = self.ups.get_mut(ui) else {
            return;
        };
        let Some(m) = u.mux_mut() else {
            return;
        };
        let Some(k) = m.stream(ci, front) else {
            return;
        };
        let mut s = m.remove(k);
        if s.sid != 0 {
            if let Some(d) = s.data.as_ref() {
                m.conn.release(s.sid, d.len());
            }
            if s.gone.is_none() {
                // Ends it if it is still open (a no-op for a closed stream).
                m.conn.reset(s.sid, code);
            }
        }
        self.ctx.bufs.release(&mut s.data);
        let (closed, single, empty) = (m.closed, m.single, m.streams.is_empty());
        if empty && (closed || single || self.ctx.draining) {
            self.mux_close(ui);
            return;
        }
        if empty {
            let u = &mut self.ups[ui];
            u.state = UpState::Idle;
            let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.pool_idle);
            self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, at);
        }
        self.mux_flush(ui);
    }

    /// Closes connection `ui` (GOAWAY first, best effort).
    fn mux_close(&mut self, ui: usize) {
        let Some(u) = self.ups.get_mut(ui) else {
            return;
        };
        if let UpKind::H2c(m) = &mut u.kind {
            if u.state != UpState::Connecting && !m.conn.is_closing() {
                m.conn.go_away(ErrorCode::NO_ERROR);
                let _ = write2(&mut u.sock, m.conn.pending_output(), &[], &mut u.io);
            }
            self.ctx.bufs.release(&mut m.buf);
        }
        let backend = u.backend;
        self.muxes[backend].retain(|&x| x != ui);
        self.remove_upstream(ui);
    }

    /// The deadline of connection `ui`: connect timeout (its streams fail) or pool idle.
    pub(super) fn mux_timeout(&mut self, ui: usize) {
        let u = &self.ups[ui];
        match u.state {
            UpState::Connecting => {
                let mut wake = std::mem::take(&mut self.mux_wake);
                if let Some(m) = u.mux() {
                    wake.extend(m.streams.iter().map(|s| (s.client, s.front)));
                }
                self.mux_broke(ui, Gone::Connect { timeout: true });
                self.wake(wake);
            }
            UpState::Idle => self.mux_close(ui),
            UpState::Busy => {}
        }
    }

    /// After a panic in client `ci`'s work: its streams leave every connection.
    pub(super) fn mux_drop_client(&mut self, ci: usize) {
        let uis: Vec<usize> = self
            .ups
            .iter()
            .filter(|(_, u)| {
                u.mux()
                    .is_some_and(|m| m.streams.iter().any(|s| s.client == ci))
            })
            .map(|(i, _)| i)
            .collect();
        for ui in uis {
            let fronts: Vec<StreamId> = self.ups[ui]
                .mux()
                .map(|m| {
                    m.streams
                        .iter()
                        .filter(|s| s.client == ci)
                        .map(|s| s.front)
                        .collect()
                })
                .unwrap_or_default();
            // The streams' picks are their exchanges' leases: they give their places
            // back as the client's exchanges drop.
            for f in fronts {
                self.mux_detach(ui, ci, f, ErrorCode::CANCEL);
            }
        }
    }

    /// Backend `b` takes no new requests (drained or removed): its idle connections close,
    /// busy ones take no new streams and close after their last.
    pub(super) fn mux_retire(&mut self, b: usize) {
        for ui in std::mem::take(&mut self.muxes[b]) {
            let idle = self.ups[ui].mux().is_some_and(|m| m.streams.is_empty());
            if idle {
                self.mux_close(ui);
            } else if let Some(m) = self.ups[ui].mux_mut() {
                m.closed = true;
            }
        }
    }

    /// Drain: idle connections close, busy ones take no new streams.
    pub(super) fn mux_start_drain(&mut self) {
        for b in 0..self.muxes.len() {
            self.mux_retire(b);
        }
    }

    /// Connections to h2c backends without streams (pooled idle), among the first `filled`
    /// backend slots.
    pub(super) fn mux_idle(&self, filled: usize) -> usize {
        (self.muxes[..filled.min(self.muxes.len())].iter().flatten())
            .filter(|&&ui| self.ups[ui].is_idle())
            .count()
    }
}

/// Moves the codec's events into the inboxes, noting whose streams changed.
fn mux_events(m: &mut Mux, ctx: &mut Ctx, wake: &mut Vec<(usize, StreamId)>) {
    while let Some(ev) = m.conn.poll_event() {
        match ev {
            Event::Headers {
                stream,
                fields,
                end_stream,
            } => {
                let Some(s) = by_sid(&m.keys, &mut m.streams, stream) else {
                    continue;
                };
                // 1xx heads are not forwarded (HTTP/2 clients of gRPC never need them).
                if fields.status().is_some_and(|st| st < 200) && !end_stream {
                    continue;
                }
                // The truncation rule (http::MAX_SECTION_FIELDS): a head corelb cannot
                // forward whole is a malformed response, 502 or a stream error.
                if fields.len() > crate::http::MAX_SECTION_FIELDS {
                    m.conn.reset(stream, ErrorCode::PROTOCOL_ERROR);
                    s.gone.get_or_insert(Gone::Reset(ErrorCode::PROTOCOL_ERROR));
                    wake.push((s.client, s.front));
                    continue;
                }
                s.head = Some(fields);
                s.end |= end_stream;
                wake.push((s.client, s.front));
            }
            Event::Data {
                stream,
                data,
                end_stream,
            } => {
                let n = data.len();
                let Some(s) = by_sid(&m.keys, &mut m.streams, stream) else {
                    m.conn.release(stream, n);
                    continue;
                };
                if n > 0 {
                    s.data.get_or_insert_with(|| ctx.bufs.get()).append(data);
                }
                s.end |= end_stream;
                wake.push((s.client, s.front));
            }
            Event::Trailers { stream, fields } => {
                if let Some(s) = by_sid(&m.keys, &mut m.streams, stream) {
                    s.trailers = Some(fields);
                    s.end = true;
                    wake.push((s.client, s.front));
                }
            }
            Event::Reset { stream, code, .. } => {
                if let Some(s) = by_sid(&m.keys, &mut m.streams, stream) {
                    if s.gone.is_none() {
                        s.gone = Some(if code == ErrorCode::REFUSED_STREAM {
                            Gone::Refused
                        } else {
                            Gone::Reset(code)
                        });
                    }
                    wake.push((s.client, s.front));
                }
            }
            Event::GoAway { last_stream_id, .. } => {
                m.closed = true;
                for s in &mut m.streams {
                    if s.gone.is_none() && (s.sid == 0 || s.sid > last_stream_id) {
                        s.gone = Some(Gone::Refused);
                    }
                    wake.push((s.client, s.front));
                }
            }
            Event::WindowOpened { stream } => {
                for s in &m.streams {
                    if stream == 0 || s.sid == stream {
                        wake.push((s.client, s.front));
                    }
                }
            }
            Event::Settings => wake.extend(m.streams.iter().map(|s| (s.client, s.front))),
            Event::PingAck { .. } => {}
        }
    }
}

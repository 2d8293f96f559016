//! Upgraded connections: after a 101 (WebSocket, or any protocol the client asked for in
//! `Upgrade`), the client and its upstream connection become a byte tunnel until either
//! side closes. Each direction copies with backpressure (it reads only while its buffer
//! has room, and the buffer empties only as the other side takes it), an EOF is passed on
//! as a half-close (`shutdown(Write)` on the other side), and the tunnel ends when both
//! directions are shut, when either side resets, or after `timeouts.tunnel` with no byte
//! either way. The backend exchange was accounted at the 101; the tunnel is logged once,
//! when it ends; its upstream connection is never pooled. An idle tunnel holds no buffer.

use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;

use crate::buffer::{Buf, BufPool};
use crate::debug;
use crate::transport::Transport;

use super::conns::{client_token, upstream_token, Half, Phase, Proxy, Step, Tunnel};
use super::context::Ctx;
use super::io::{read_into, would_block, write2, Io};

/// What one direction's pump did.
#[derive(PartialEq, Eq)]
enum Pump {
    Idle,
    Moved,
    /// A read or write failed (reset): the tunnel ends.
    Broken,
}

/// Moves what it can of one direction: pending bytes to `dst`, more from `src` while the
/// buffer has room, the EOF passed on once everything before it was written.
#[allow(clippy::too_many_arguments)]
fn pump(
    src: &mut Transport,
    src_io: &mut Io,
    buf: &mut Option<Buf>,
    dst: &mut Transport,
    dst_io: &mut Io,
    half: &mut Half,
    bufs: &mut BufPool,
    counter: &AtomicU64,
) -> Pump {
    let mut moved = false;
    if let Some(b) = buf.as_mut().filter(|b| !b.is_empty()) {
        if dst_io.writable {
            match write2(dst, b.bytes(), &[], dst_io) {
                Ok(n) => {
                    b.consume(n);
                    half.bytes += n as u64;
                    counter.fetch_add(n as u64, Relaxed);
                    moved = true;
                }
                Err(e) if would_block(&e) => {}
                Err(_) => return Pump::Broken,
            }
        }
    }
    if !half.eof && src_io.readable {
        let b = buf.get_or_insert_with(|| bufs.get());
        if !b.space().is_empty() {
            match read_into(src, b, src_io) {
                Ok(0) => {
                    half.eof = true;
                    moved = true;
                }
                Ok(_) => moved = true,
                Err(e) if would_block(&e) => {}
                Err(_) => return Pump::Broken,
            }
        }
    }
    let empty = buf.as_ref().is_none_or(Buf::is_empty);
    if half.eof && !half.shut && empty {
        // Half-close: the other side reads EOF and may still answer.
        dst.shutdown_write();
        half.shut = true;
        moved = true;
    }
    if empty {
        // An idle tunnel holds no buffer.
        bufs.release(buf);
    }
    if moved {
        Pump::Moved
    } else {
        Pump::Idle
    }
}

impl Proxy {
    /// Turns client `ci`'s exchange, whose 101 head has reached the client, into a tunnel.
    pub(super) fn start_tunnel(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Phase::Proxy(mut ex) = std::mem::replace(&mut c.phase, Phase::Head) else {
            return Step::Blocked;
        };
        let ui = ex.up.take().expect("a 101 came on a connection");
        let u = &mut self.ups[ui];
        let backend = u.backend;
        self.ctx.timers.set(&mut u.timer, upstream_token(ui).0, 0);
        if let Some(lease) = ex.lease.take() {
            self.ctx.account_upgrade(lease, &ex);
        }
        let t = Tunnel {
            up: ui,
            backend,
            down: ex.resp_buf.take(),
            to_up: Half::default(),
            to_client: Half::default(),
            started: ex.started,
            ttfb_us: ex.ttfb_us,
            rec: ex.rec,
        };
        self.ctx.recycle(ex);
        c.phase = Phase::Tunnel(Box::new(t));
        let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.tunnel);
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
        let counters = &self.ctx.shared.counters;
        counters.tunnels_open.fetch_add(1, Relaxed);
        counters.tunnels.fetch_add(1, Relaxed);
        debug!(
            "worker {}: tunnel {} <-> {}",
            self.ctx.id,
            c.peer,
            self.ctx.shared.balancer.backend(backend).name
        );
        Step::Progress
    }

    /// Moves a tunnel's bytes both ways; closes it when it is over.
    pub(super) fn step_tunnel(&mut self, ci: usize) -> Step {
        let c = &mut self.clients[ci];
        let Phase::Tunnel(t) = &mut c.phase else {
            return Step::Blocked;
        };
        let u = &mut self.ups[t.up];
        let counters = &self.ctx.shared.counters;
        let bufs = &mut self.ctx.bufs;
        let up = pump(
            &mut c.sock,
            &mut c.io,
            &mut c.buf,
            &mut u.sock,
            &mut u.io,
            &mut t.to_up,
            bufs,
            &counters.tunnel_bytes_up,
        );
        let down = if up == Pump::Broken {
            Pump::Broken
        } else {
            pump(
                &mut u.sock,
                &mut u.io,
                &mut t.down,
                &mut c.sock,
                &mut c.io,
                &mut t.to_client,
                bufs,
                &counters.tunnel_bytes_down,
            )
        };
        if up == Pump::Broken || down == Pump::Broken || (t.to_up.shut && t.to_client.shut) {
            self.close_client(ci);
            return Step::Closed;
        }
        if up == Pump::Moved || down == Pump::Moved {
            // Lazily moved (timer.rs): no heap entry per byte moved.
            let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.tunnel);
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
            Step::Progress
        } else {
            Step::Blocked
        }
    }

    /// Ends a tunnel whose client is being closed: its upstream closes too (never pooled),
    /// and it is logged once, as status 101 with the bytes each way and its whole length.
    pub(super) fn end_tunnel(&mut self, mut t: Box<Tunnel>) {
        if self.ups.try_remove(t.up).is_some() {
            self.ctx.closed_ups.push(t.up);
        }
        self.ctx.bufs.release(&mut t.down);
        self.ctx.shared.counters.tunnels_open.fetch_sub(1, Relaxed);
        let mut rec = t.rec;
        rec.backend = Some(t.backend as u16);
        rec.status = 101;
        rec.upstream_us = t.ttfb_us;
        rec.request_bytes += t.to_up.bytes;
        rec.response_bytes += t.to_client.bytes;
        rec.total_us = t.started.elapsed().as_micros() as u64;
        debug!(
            "worker {}: tunnel of {} closed: {} B up, {} B down",
            self.ctx.id, rec.client, t.to_up.bytes, t.to_client.bytes
        );
        self.ctx.log_record(rec);
    }

    /// A worker that dies takes its tunnels with it: they leave the open gauge.
    pub(super) fn forget_tunnels(&mut self) {
        let open = self
            .clients
            .iter()
            .filter(|(_, c)| matches!(c.phase, Phase::Tunnel(_)))
            .count();
        let gauge = &self.ctx.shared.counters.tunnels_open;
        gauge.fetch_sub(open as u64, Relaxed);
    }
}

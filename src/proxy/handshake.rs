//! TLS handshakes of client connections: the per-worker cap on handshakes in progress,
//! the handshake deadline, what a completed or failed handshake adds to the counters, and
//! the plain-text 400 for plain HTTP sent to a TLS port. The handshake itself runs inside
//! the transport as the connection's first reads.

use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;

use mio::net::TcpStream;

use crate::debug;
use crate::http;
use crate::transport::{TlsFailure, Transport};

use super::conns::{client_token, Proxy};
use super::context::Ctx;

impl Proxy {
    /// A client accepted on a TLS listener: its session, or `None` when this worker has
    /// as many handshakes in progress as allowed (the socket is then closed).
    pub(super) fn tls_accept(&mut self, sock: TcpStream, peer: SocketAddr) -> Option<Transport> {
        let shared = &self.ctx.shared;
        let (Some(front), Some(s)) = (&shared.tls, &shared.cfg.tls) else {
            return None;
        };
        if self.ctx.tls_handshaking >= s.max_handshakes {
            shared.counters.tls_refused.fetch_add(1, Relaxed);
            debug!(
                "worker {}: {peer}: over the TLS handshake cap, closed",
                self.ctx.id
            );
            return None;
        }
        self.ctx.tls_handshaking += 1;
        Some(Transport::tls_server(sock, front.config()))
    }

    /// The handshake deadline of a new TLS client, in place of the head timeout.
    pub(super) fn arm_handshake(&mut self, ci: usize) {
        let Some(s) = &self.ctx.shared.cfg.tls else {
            return;
        };
        let at = self.ctx.now + Ctx::ms(s.handshake_timeout);
        let c = &mut self.clients[ci];
        self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
    }

    /// After a read of client `ci` during its handshake: counts a completed handshake
    /// (and gives the connection the head timeout for its first request), or a failed one.
    /// `true` when plain HTTP came to the TLS port: it has been answered with a 400.
    pub(super) fn tls_progress(&mut self, ci: usize) -> bool {
        let c = &mut self.clients[ci];
        let counters = &self.ctx.shared.counters;
        if let Some(e) = c.sock.take_established() {
            self.ctx.tls_handshaking -= 1;
            counters.tls_handshakes.fetch_add(1, Relaxed);
            if e.resumed {
                counters.tls_resumed.fetch_add(1, Relaxed);
            }
            let version = if e.tls13 {
                &counters.tls_v13
            } else {
                &counters.tls_v12
            };
            version.fetch_add(1, Relaxed);
            let alpn = match (e.h2, e.http11) {
                (true, _) => &counters.tls_alpn_h2,
                (_, true) => &counters.tls_alpn_http11,
                _ => &counters.tls_alpn_none,
            };
            alpn.fetch_add(1, Relaxed);
            let at = self.ctx.now + Ctx::ms(self.ctx.shared.cfg.timeouts.client);
            self.ctx.timers.set(&mut c.timer, client_token(ci).0, at);
            return false;
        }
        let Some(f) = c.sock.failure() else {
            return false;
        };
        debug!("worker {}: TLS from {}: {}", self.ctx.id, c.peer, f.name());
        let i = TlsFailure::ALL.iter().position(|&x| x == f).unwrap_or(0);
        counters.tls_failures[i].fetch_add(1, Relaxed);
        if f != TlsFailure::PlainHttp {
            return false;
        }
        // As NGINX and HAProxy answer: a 400 in plain text, then close. Nothing is read
        // past the first bytes, nothing forwarded.
        self.ctx.tls_handshaking -= 1;
        self.ctx.count_rejected();
        self.respond(ci, http::PLAIN_HTTP_TO_TLS, true, false);
        true
    }

    /// A client leaves: one handshake fewer in progress if it was still in one.
    pub(super) fn tls_forget(&mut self, sock: &Transport) {
        if sock.handshaking() && sock.failure() != Some(TlsFailure::PlainHttp) {
            self.ctx.tls_handshaking = self.ctx.tls_handshaking.saturating_sub(1);
        }
    }
}

//! A session's incoming streams: the codec's events read from the client, a new request
//! stream checked (method, field count, target), given a server and an exchange, and
//! attached to an upstream leg once the read that brought it is processed (a stream reset
//! right behind its HEADERS opens no backend connection); a retry backing off is attached
//! when its time comes.

use crate::access_log::Record;
use crate::debug;
use crate::h2::{ErrorCode, Event, Fields};
use crate::http::Method;

use super::super::conns::Proxy;
use super::super::context::Ctx;
use super::super::decide::Blame;
use super::super::grpc;
use super::super::h2_session::{self, H2Stream};
use super::super::h2_session::{h2_answer, H2Session};
use super::super::h2_translate as translate;
use super::step;

impl Proxy {
    /// Handles the codec's events; true if any.
    pub(super) fn h2_events(&mut self, ci: usize, s: &mut H2Session) -> bool {
        let mut any = false;
        while let Some(ev) = s.conn.poll_event() {
            any = true;
            match ev {
                Event::Headers {
                    stream,
                    fields,
                    end_stream,
                } => {
                    if s.stream(stream).is_none() {
                        self.h2_open(ci, s, stream, fields, end_stream);
                    }
                }
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    let n = data.len();
                    match s.streams.iter_mut().find(|st| st.id == stream) {
                        Some(st) if st.wants_body() => {
                            st.due = true;
                            st.take_data(&mut self.ctx, data, end_stream)
                        }
                        _ => s.conn.release(stream, n),
                    }
                }
                Event::Trailers { stream, fields } => {
                    if let Some(i) = s.stream(stream) {
                        s.streams[i].due = true;
                        s.streams[i].take_trailers(fields);
                    }
                }
                Event::Reset { stream, code, .. } => {
                    if let Some(i) = s.stream(stream) {
                        debug!("worker {}: stream {stream} reset: {code}", self.ctx.id);
                        self.h2_abort(ci, s, i, Blame::Client);
                    }
                }
                Event::WindowOpened { stream } if stream != 0 => {
                    if let Some(i) = s.stream(stream) {
                        s.streams[i].due = true;
                    }
                }
                // The connection's window or the client's settings: any stream may move.
                Event::WindowOpened { .. } | Event::Settings | Event::GoAway { .. } => {
                    s.sweep = true;
                }
                Event::PingAck { .. } => {}
            }
        }
        any
    }

    /// A new request stream: checked, picked, attached to an upstream connection.
    fn h2_open(&mut self, ci: usize, s: &mut H2Session, id: u32, fields: Fields, end: bool) {
        let peer = self.clients[ci].peer.get();
        let wid = self.ctx.id;
        let close = self.ctx.shared.cfg.upstream == crate::config::UpstreamMode::PerRequest;
        let path: &[u8] = if self.ctx.log.is_some() {
            fields.path().unwrap_or(b"")
        } else {
            b""
        };
        let method = fields.method().map_or(Method::Other, Method::of);
        let mut rec = Record::new(wid, peer, method, path);
        rec.h2 = true;
        rec.tls = self.clients[ci].sock.tls_version();
        let call = grpc::is_call(&fields);
        let websocket = method == Method::Connect && fields.protocol().is_some();
        if websocket && !fields.protocol().is_some_and(translate::is_websocket) {
            // An extended CONNECT for a protocol corelb does not relay.
            self.ctx.count_rejected();
            self.ctx.log_local(rec, crate::http::NOT_IMPLEMENTED);
            h2_answer(&mut s.conn, id, 501, end);
            return;
        }
        if method == Method::Connect && !websocket {
            // As for HTTP/1.1: CONNECT is not proxied.
            self.ctx.count_rejected();
            self.ctx.log_local(rec, crate::http::METHOD_NOT_ALLOWED);
            h2_answer(&mut s.conn, id, 405, end);
            return;
        }
        if fields.regular().count() > crate::http::MAX_HEADERS {
            // The truncation rule (http::MAX_SECTION_FIELDS): as for an HTTP/1.1 client.
            debug!("worker {wid}: 431: HTTP/2 stream {id} from {peer}: too many fields");
            self.ctx.count_rejected();
            self.ctx.log_local(rec, crate::http::HEAD_TOO_LARGE);
            h2_answer(&mut s.conn, id, 431, end);
            return;
        }
        if let Err(why) = translate::target(&fields) {
            debug!("worker {wid}: HTTP/2 stream {id} from {peer} refused: {why}");
            self.ctx.count_rejected();
            // Refused for what the client sent: counts toward its reset limit.
            let _ = s.conn.refuse_stream(id, ErrorCode::PROTOCOL_ERROR);
            return;
        }
        let Some(lease) = self.pick_backend() else {
            debug!("worker {wid}: 503: no server available");
            self.ctx.log_local(rec, crate::http::SERVICE_UNAVAILABLE);
            step::reply(s, id, call, 503, end, "no server available");
            return;
        };
        let backend = lease.backend();
        let http1 =
            self.ctx.shared.balancer.backend(backend).protocol == crate::config::Protocol::Http1;
        if websocket && !http1 {
            // An h2c backend would need extended CONNECT of its own.
            debug!("worker {wid}: 501: WebSocket over HTTP/2 to an h2c server");
            self.ctx.shared.balancer.cancel_lease(lease);
            self.ctx.count_rejected();
            self.ctx.log_local(rec, crate::http::NOT_IMPLEMENTED);
            h2_answer(&mut s.conn, id, 501, end);
            return;
        }
        self.ctx.count_request();
        self.ctx.budget.deposit();
        let ws_key = websocket.then(|| h2_session::websocket_key(&mut self.ctx.rng));
        // An HTTP/1.1 backend gets its head now; an h2c one the fields as they are.
        let mut buf = self.ctx.bufs.get();
        // How the request goes to an HTTP/1.1 server, on this attempt or a later one.
        let length =
            (fields.get(b"content-length")).and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
        let mut framing = translate::framing(length, end, websocket);
        if http1 {
            let scratch = &mut self.ctx.scratch;
            scratch.clear();
            let key = ws_key.as_ref().map(|k| &k[..]);
            match translate::request_head(&fields, end, &s.from, close, key, scratch) {
                Ok(head) => framing = head.framing,
                Err(why) => {
                    debug!("worker {wid}: HTTP/2 stream {id} from {peer} refused: {why}");
                    self.ctx.shared.balancer.cancel_lease(lease);
                    self.ctx.bufs.put(buf);
                    self.ctx.count_rejected();
                    // Refused for what the client sent: counts toward its reset limit.
                    let _ = s.conn.refuse_stream(id, ErrorCode::PROTOCOL_ERROR);
                    return;
                }
            }
            if scratch.len() > buf.capacity() {
                buf.grow(scratch.len());
            }
            buf.space()[..scratch.len()].copy_from_slice(scratch);
            buf.filled(scratch.len());
            rec.request_bytes = scratch.len() as u64;
        }
        let mut ex = self.ctx.exchange(super::super::exchange::Start {
            method,
            http10: false,
            keep_alive: true,
            expect: false,
            // HTTP/2 has no Upgrade (RFC 9113 §8.6); a 101 from the backend is a bad answer.
            upgrade: false,
            body: crate::http::Body::Done,
            body_ready: 0,
            head: buf,
            rec,
        });
        let (m, p) = (fields.method().unwrap_or(b""), fields.path().unwrap_or(b""));
        (ex.retry_on, ex.per_try) = self.ctx.retry_terms(m, p, call);
        ex.fields_kept = true;
        ex.hedgeable = !websocket
            && (self.ctx.shared.cfg.retry.hedging.as_ref()).is_some_and(|h| h.covers(m, p));
        let call_timeout = if call {
            fields.get(b"grpc-timeout").and_then(grpc::timeout)
        } else {
            None
        };
        let mut st = H2Stream::new(id, ex, framing, end, fields, call);
        st.websocket = ws_key;
        if let Some(t) = call_timeout {
            let cap = self.ctx.shared.cfg.timeouts.upstream;
            st.call_deadline = self.ctx.now + Ctx::ms(t.min(cap)).max(1);
        }
        // Attached by h2_attach_pending, after the rest of this read; what arrives before
        // (body, trailers) is kept in the form its backend takes.
        st.pending = Some(lease);
        st.leg_for(!http1);
        s.streams.push(st);
        s.attaching = true;
        s.opened = s.opened.saturating_add(1);
        if self.ctx.panic_path.as_deref() == s.streams.last().and_then(|st| st.fields.path()) {
            panic!("test hook: an HTTP/2 request for the panic path, picked");
        }
    }

    /// Attaches the streams opened by this or the previous read: once the client's socket
    /// is drained, or after one more read, so that a RST_STREAM sent right behind the
    /// HEADERS (rapid reset) finds no backend connection opened. True if any attached.
    pub(super) fn h2_attach_pending(&mut self, ci: usize, s: &mut H2Session) -> bool {
        if !std::mem::take(&mut s.attaching) {
            return false;
        }
        let drained = !self.clients[ci].io.readable;
        let mut any = false;
        let mut i = 0;
        while i < s.streams.len() {
            let st = &mut s.streams[i];
            if st.backoff_at != 0 {
                // A retry backing off: attached once its time has come (the timer).
                if self.ctx.now >= st.backoff_at {
                    st.backoff_at = 0;
                    let lease = st.pending.take().expect("a retry's server");
                    any = true;
                    if !self.h2_attach(ci, s, i, lease, false) {
                        continue;
                    }
                }
                i += 1;
                continue;
            }
            if st.pending.is_some() {
                if drained || st.waited {
                    let lease = st.pending.take().expect("checked");
                    any = true;
                    if !self.h2_attach(ci, s, i, lease, false) {
                        // Answered and removed: another stream is at `i` now.
                        continue;
                    }
                } else {
                    st.waited = true;
                    s.attaching = true;
                }
            }
            i += 1;
        }
        any
    }
}

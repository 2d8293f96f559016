//! An HTTP/2 client connection's state, as data: the session (the codec, its streams,
//! what the client's deadline waits for) and each request stream, whichever leg carries
//! it upstream: its exchange, the request body and trailers held for the upstream, what
//! of the request and response has been sent, and the questions a session's step asks of
//! it (waiting on the client, on a window, on the body). The preface check and local
//! answers are here too; `h2/` drives them.

use crate::balancer::Lease;
use crate::buffer::{Buf, BUF_SIZE};
use crate::h2::{self as codec, Connection, ErrorCode, Fields, PREFACE};

use super::back::H1Request;
use super::context::Ctx;
use super::exchange::{Exchange, Resp};
use super::h2_translate::{self as translate, UpstreamFraming};
use super::h2c_conn::Mux;
use super::lifecycle::Call;

/// What the first bytes of a connection say.
pub(super) enum Preface {
    /// Not HTTP/2: parse HTTP/1.1.
    No,
    /// A prefix of the preface: wait for more bytes.
    Partial,
    Full,
}

/// The preface's request line: a client that sends it speaks HTTP/2, and the codec checks
/// the rest (a bad preface is answered GOAWAY PROTOCOL_ERROR, not an HTTP/1.1 505).
const PRI_LINE: usize = 16;

/// Checks `b` (a new connection's first bytes) for the HTTP/2 client preface.
pub(super) fn preface(b: &[u8]) -> Preface {
    let n = b.len().min(PRI_LINE);
    if n == 0 || b[..n] != PREFACE[..n] {
        Preface::No
    } else if n < PRI_LINE {
        Preface::Partial
    } else {
        Preface::Full
    }
}

/// Stop reading the client while this much output waits for it.
pub(super) const OUT_HIGH: usize = 256 * 1024;
/// The client read buffer: a whole frame of the default MAX_FRAME_SIZE fits.
pub(super) const READ_BUF: usize = 2 * BUF_SIZE;

/// One HTTP/2 client connection.
pub(crate) struct H2Session {
    pub(super) conn: Connection,
    pub(super) streams: Vec<H2Stream>,
    /// The codec's counters already added to `Shared`'s.
    pub(super) published: codec::Counters,
    /// The connection failed or the client left: flush what is queued, then close.
    pub(super) closing: bool,
    /// What the client's deadline is armed for.
    pub(super) waiting_client: ClientWait,
    /// Scratch for decoded trailer fields.
    pub(super) trailers: Fields,
    /// Scratch for the request fields sent to h2c backends.
    pub(super) up: Fields,
    /// The client's address and scheme, as X-Forwarded-For and -Proto say them.
    pub(super) from: translate::Origin,
    /// Worker-clock ms: when the client's idle (or stalled) deadline passes (0: none).
    pub(super) idle_at: u64,
    /// When the client's timer is armed for (0: not armed).
    pub(super) armed: u64,
    /// The next step steps every stream, not only the due ones: something they may all
    /// wait on changed (the client's connection window or settings, room in the output,
    /// a timer, a drain).
    pub(super) sweep: bool,
    /// Some stream waits to be attached (`H2Stream::pending`).
    pub(super) attaching: bool,
    /// In `Ctx::h2_flush`: its output goes out at the end of the event batch.
    pub(super) flush_queued: bool,
    /// Worker-clock ms: without streams until then, the codec gives its buffers back
    /// (0: streams are open; `u64::MAX`: given back).
    pub(super) trim_at: u64,
    /// Streams opened since the codec's buffers were last given back.
    pub(super) opened: u32,
}

/// How long a busy session (at least [`BUSY_STREAMS`] streams since its buffers were last
/// given back) stays without streams before its codec's buffers are given back; others
/// give them back at once.
pub(super) const TRIM_AFTER_MS: u64 = 500;
pub(super) const BUSY_STREAMS: u32 = 16;

/// What an HTTP/2 session's own deadline waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ClientWait {
    /// Streams run; their deadlines are their own.
    None,
    /// Nothing in flight, or a request body awaited: the idle timeout.
    Idle,
    /// Output queued for a socket that takes no bytes: the send timeout.
    Send,
}

impl H2Session {
    pub(super) fn stream(&mut self, id: u32) -> Option<usize> {
        self.streams.iter().position(|s| s.id == id)
    }
}

/// Answers stream `id` with `status` and no body (a local answer). If the client was
/// still sending a body, the stream is then reset with NO_ERROR (RFC 9113 §8.1).
pub(super) fn h2_answer(conn: &mut Connection, id: u32, status: u16, request_done: bool) {
    let code = [
        b'0' + (status / 100) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
    ];
    let fields: [(&[u8], &[u8]); 2] = [(b":status", &code), (b"content-length", b"0")];
    let _ = conn.send_headers(id, &fields, true);
    if !request_done {
        conn.reset(id, ErrorCode::NO_ERROR);
    }
}

/// One request stream of a session.
pub(super) struct H2Stream {
    /// A WebSocket stream (RFC 8441): the `Sec-WebSocket-Key` sent upstream, whose
    /// accept value the backend's 101 must carry.
    pub(super) websocket: Option<[u8; 24]>,
    pub id: u32,
    pub ex: Box<Exchange>,
    /// How the request goes to an HTTP/1.1 server, decided when the stream opened.
    pub(super) framing: UpstreamFraming,
    /// The current attempt's leg, by the kind of server carrying it.
    pub(super) leg: Leg,
    /// Request payload received from the client: the bytes kept for a replay, then those
    /// this attempt has not sent ([`H2Stream::unsent`]).
    pub(super) body: Option<Buf>,
    /// Bytes of `body` not yet released to the codec (they count against the windows).
    pub unreleased: usize,
    /// The client's half ended (END_STREAM or trailers).
    pub(super) req_end: bool,
    /// The current attempt sent the whole request (on h2c, with END_STREAM).
    pub(super) req_sent: bool,
    /// No more request bytes go upstream (it failed to take them mid-response).
    pub(super) req_closed: bool,
    pub(super) head_sent: bool,
    pub(super) end_sent: bool,

    /// The request head as the client sent it: what an h2c backend gets, and what an
    /// HTTP/1.1 head is built from when a retry moves the stream to such a backend.
    pub fields: Fields,
    /// A gRPC call (content-type application/grpc): errors are answered in gRPC terms.
    pub grpc: bool,
    /// The client's request trailers, sent by every attempt.
    pub(super) req_trailers: Option<Fields>,
    /// Request body offsets from its first byte: of `body`'s first byte, sent in this
    /// attempt, and released to the client's codec (counting against its windows). Bytes
    /// are released only past `released`, so those a replay sends again are never released
    /// twice.
    pub(super) base: u64,
    pub(super) sent: u64,
    pub(super) released: u64,
    /// Every body byte sent is still in `body`, so a replay can send it again: the
    /// stream's replay buffer is its body, whichever kind of server takes it
    /// ([`H2Stream::body_went`]).
    pub(super) replayable: bool,
    /// Worker-clock ms: the backend must have moved by then (either server kind, once
    /// connected; 0: not waiting).
    pub deadline: u64,
    /// Worker-clock ms: the call's `grpc-timeout`, capped by the upstream timeout (0: none).
    pub call_deadline: u64,
    /// Worker-clock ms: response bytes wait on the client's window; past this the stream
    /// is abandoned (the send timeout; 0: not blocked).
    pub stall_at: u64,
    /// The backend picked at open, before the stream is attached: it is attached once the
    /// client's bytes read with its HEADERS are processed (or a read later), so a reset
    /// among them never opens a backend connection.
    pub pending: Option<Lease>,
    /// The stream already waited one read for `pending`.
    pub waited: bool,
    /// Worker-clock ms: a retry waits out the policy's backoff until then, its server in
    /// `pending` (0: not backing off).
    pub backoff_at: u64,
    /// The call's grpc-status, once known.
    pub grpc_status: Option<u32>,
    /// The backend's answer goes to the client as it is (no retry on UNAVAILABLE).
    pub(super) final_answer: bool,
    /// The session's next step must step this stream: something it waits on changed
    /// (a codec event, its upstream's, an attach), or it moved at its last step.
    pub due: bool,
    /// The h2c leg of a hedge racing the current attempt (`h2/hedge.rs`), while it is
    /// not the stream's: its connection and clock are in `ex.hedge`.
    pub(super) alt: AltLeg,
}

/// The current attempt's leg, by the kind of server carrying it: what only that kind
/// needs. What both need (the body and its offsets, `req_sent`) is the stream's.
pub(super) enum Leg {
    /// An HTTP/1.1 connection of its own.
    H1 {
        /// The request framed for it (`back.rs`).
        req: H1Request,
        /// A chunked response's bytes after its last data (the trailer section).
        resp_tail: Vec<u8>,
    },
    /// A stream on a shared h2c connection (`h2c_pool.rs`).
    H2c {
        /// The stream was opened upstream (HEADERS sent).
        opened: bool,
        /// Where the stream was last found among its connection's streams.
        mk: usize,
    },
}

impl Leg {
    pub fn h1(framing: UpstreamFraming) -> Leg {
        Leg::H1 {
            req: H1Request::new(framing),
            resp_tail: Vec::new(),
        }
    }

    pub fn h2c() -> Leg {
        Leg::H2c {
            opened: false,
            mk: 0,
        }
    }

    /// An h2c stream opened upstream (HEADERS sent).
    pub fn opened(&self) -> bool {
        matches!(self, Leg::H2c { opened: true, .. })
    }

    pub fn set_opened(&mut self) {
        if let Leg::H2c { opened, .. } = self {
            *opened = true;
        }
    }

    /// An h2c leg's stream `front` of `client` among `m`'s streams, looked for from where
    /// it was last found.
    pub fn find(&mut self, m: &Mux, client: usize, front: u32) -> Option<usize> {
        match self {
            Leg::H2c { mk, .. } => m.stream_at(client, front, mk),
            Leg::H1 { .. } => None,
        }
    }
}

/// What an h2c leg knows of its own progress, kept for the leg that is not the stream's
/// current attempt (a hedge). [`H2Stream::swap_legs`] trades it with the current one.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct AltLeg {
    pub opened: bool,
    pub req_sent: bool,
    pub sent: u64,
    pub mk: usize,
    /// The leg's per-try timeout (`Exchange::try_by`): each attempt has its own.
    pub try_by: u64,
    /// The stream's first hedge was planned (not swapped: it belongs to the stream).
    pub planned: bool,
}

impl H2Stream {
    pub fn new(
        id: u32,
        ex: Box<Exchange>,
        framing: UpstreamFraming,
        end: bool,
        fields: Fields,
        grpc: bool,
    ) -> H2Stream {
        H2Stream {
            id,
            ex,
            websocket: None,
            framing,
            leg: Leg::h1(framing),
            body: None,
            unreleased: 0,
            req_end: end,
            req_sent: false,
            req_closed: false,
            head_sent: false,
            end_sent: false,
            fields,
            grpc,
            req_trailers: None,
            base: 0,
            sent: 0,
            released: 0,
            replayable: true,
            deadline: 0,
            call_deadline: 0,
            stall_at: 0,
            pending: None,
            waited: false,
            backoff_at: 0,
            grpc_status: None,
            final_answer: false,
            due: true,
            alt: AltLeg::default(),
        }
    }

    /// Trades the current h2c attempt for the hedge's (`h2/hedge.rs`): its connection,
    /// start, reuse, per-try timeout and request progress. Both run on the request body kept whole.
    pub(super) fn swap_legs(&mut self) {
        let ex = &mut *self.ex;
        std::mem::swap(&mut ex.up, &mut ex.hedge.up);
        std::mem::swap(&mut ex.lease, &mut ex.hedge.lease);
        std::mem::swap(&mut ex.reused, &mut ex.hedge.reused);
        std::mem::swap(&mut ex.attempt, &mut ex.hedge.started);
        std::mem::swap(&mut ex.try_by, &mut self.alt.try_by);
        let a = &mut self.alt;
        std::mem::swap(&mut self.req_sent, &mut a.req_sent);
        std::mem::swap(&mut self.sent, &mut a.sent);
        if let Leg::H2c { opened, mk } = &mut self.leg {
            std::mem::swap(opened, &mut a.opened);
            std::mem::swap(mk, &mut a.mk);
        }
    }

    /// The stream's exchange, and its gRPC call's facts for the accounting in
    /// `lifecycle.rs` (`None`: not a call).
    pub fn for_accounting(&mut self) -> (&mut Exchange, Option<Call<'_>>) {
        let call = self.grpc.then(|| Call {
            method: self.fields.path().unwrap_or(b""),
            status: self.grpc_status,
        });
        (&mut self.ex, call)
    }

    /// Still taking request body from the client.
    pub fn wants_body(&self) -> bool {
        !self.req_end && !self.req_closed
    }

    pub fn take_data(&mut self, ctx: &mut Ctx, data: &[u8], end: bool) {
        if !data.is_empty() {
            self.body.get_or_insert_with(|| ctx.bufs.get()).append(data);
            self.unreleased += data.len();
        }
        self.req_end |= end;
    }

    /// Request trailers: kept until the response head, as the body is, so that every
    /// attempt sends them (as HTTP/2 trailers, or in a chunked body's trailer section).
    pub fn take_trailers(&mut self, fields: Fields) {
        self.req_end = true;
        // Sent once: a hedge could not carry them too.
        self.ex.hedgeable = false;
        self.req_trailers = Some(fields);
    }

    /// Request body bytes this attempt has not sent yet (those kept for a replay before
    /// them).
    pub(super) fn unsent(&self) -> &[u8] {
        let from = (self.sent - self.base) as usize;
        self.body.as_ref().map_or(&[], |b| &b.bytes()[from..])
    }

    /// `n` more request body bytes went upstream: released to the client's codec (once,
    /// however many attempts send them), and kept in `body` for a replay while `keep` (a
    /// retry policy covers the stream, or its server kind replays refused streams) and
    /// the bytes kept fit in `max`; else let go, and the stream can no longer be replayed.
    /// True if they outgrew `max` just now.
    pub(super) fn body_went(
        &mut self,
        n: usize,
        keep: bool,
        max: usize,
        conn: &mut Connection,
    ) -> bool {
        self.sent += n as u64;
        self.ex.rec.request_bytes += n as u64;
        if self.sent > self.released {
            let fresh = (self.sent - self.released) as usize;
            conn.release(self.id, fresh);
            self.unreleased -= fresh;
            self.released = self.sent;
        }
        let over = self.sent - self.base > max as u64;
        let outgrew = self.replayable && keep && over;
        if !self.replayable || !keep || over {
            self.let_go_of_body();
        }
        outgrew
    }

    /// The stream will not be replayed (a response is under way, or its body could not be
    /// kept): the body bytes already sent go.
    pub(super) fn let_go_of_body(&mut self) {
        if let Some(b) = self.body.as_mut() {
            b.consume((self.sent - self.base) as usize);
        }
        self.base = self.sent;
        self.replayable = false;
        // What this attempt sent can no longer be sent again.
        self.ex.body_sent = self.sent;
    }

    /// Waiting on the client: for request body, or for window to send response data.
    pub fn waits_on_client(&self, conn: &Connection) -> bool {
        self.waits_for_body() || self.waits_for_window(conn)
    }

    /// The request body must come from the client before the backend can answer.
    pub fn waits_for_body(&self) -> bool {
        let body_wait = self.wants_body() && self.unsent().is_empty();
        body_wait && self.ex.resp == Resp::Head
    }

    /// The response has more to send (bytes ready, or a body still coming that corelb
    /// reads only as the window allows) and the client keeps a window shut: the stream's
    /// own, or the connection's.
    pub fn waits_for_window(&self, conn: &Connection) -> bool {
        self.has_more() && conn.send_capacity(self.id) == 0
    }

    /// As [`H2Stream::waits_for_window`], on this stream's own window: a stall of this
    /// stream alone (the connection's window is the session's).
    pub fn waits_for_own_window(&self, conn: &Connection) -> bool {
        self.has_more() && conn.can_send(self.id) && conn.stream_window(self.id) == 0
    }

    /// Response bytes are still to reach the client.
    pub fn has_more(&self) -> bool {
        let more = self.ex.ready > 0 || (self.head_sent && self.ex.resp != Resp::Done);
        more && !self.end_sent
    }

    /// A new attempt writes the request from its start.
    pub(super) fn restart(&mut self) {
        self.sent = self.base;
        self.req_sent = false;
        match &mut self.leg {
            Leg::H1 { req, resp_tail } => {
                req.restart();
                resp_tail.clear();
            }
            Leg::H2c { opened, .. } => *opened = false,
        }
    }

    /// The current attempt runs over an h2c connection, not HTTP/1.1.
    pub fn on_h2c(&self) -> bool {
        matches!(self.leg, Leg::H2c { .. })
    }

    /// The next attempt goes to a server speaking h2c (else HTTP/1.1): the leg is made for
    /// it, unless the last one was of that kind already (it is restarted then).
    pub(super) fn leg_for(&mut self, h2c: bool) {
        if h2c != self.on_h2c() {
            self.leg = if h2c {
                Leg::h2c()
            } else {
                Leg::h1(self.framing)
            };
        }
    }

    /// Gives back what the stream held: buffers to the worker's pool, its exchange's box,
    /// and its request head to the session's codec (decoded into again).
    pub fn recycle(mut self, ctx: &mut Ctx, conn: &mut Connection) {
        conn.recycle(std::mem::take(&mut self.fields));
        if let Some(t) = self.req_trailers.take() {
            conn.recycle(t);
        }
        ctx.bufs.release(&mut self.body);
        ctx.recycle(self.ex);
    }
}

/// A fresh `Sec-WebSocket-Key`: 16 random bytes in base64 (RFC 6455 §4.1).
pub(super) fn websocket_key(rng: &mut crate::rng::XorShift) -> [u8; 24] {
    use base64::Engine;
    let mut raw = [0u8; 16];
    raw[..8].copy_from_slice(&rng.next_u64().to_le_bytes());
    raw[8..].copy_from_slice(&rng.next_u64().to_le_bytes());
    let mut key = [0u8; 24];
    let n = base64::engine::general_purpose::STANDARD
        .encode_slice(raw, &mut key)
        .unwrap_or(0);
    debug_assert_eq!(n, 24);
    key
}

/// The `Sec-WebSocket-Accept` a server must answer `key` with (RFC 6455 §4.2.2).
pub(super) fn websocket_accept(key: &[u8]) -> String {
    use base64::Engine;
    use sha1::{Digest, Sha1};
    let mut h = Sha1::new();
    h.update(key);
    h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_accept_value_of_rfc_6455() {
        assert_eq!(
            super::websocket_accept(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let mut rng = crate::rng::XorShift::new(7);
        let a = super::websocket_key(&mut rng);
        assert_ne!(a, super::websocket_key(&mut rng));
        assert!(a.ends_with(b"=="));
    }
}

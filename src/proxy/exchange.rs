//! One request and its response: the `Exchange`. Built fresh for each request, owned by
//! the client's phase, and moved to another upstream connection on a retry; everything
//! that belongs to the request (its framing, the rewritten head kept for replay, the
//! attempts, the log record) lives here, and nothing about sockets does.

use std::time::Instant;

use crate::access_log::Record;
use crate::balancer::Lease;
use crate::buffer::{Buf, BufPool};
use crate::http::{Body, HeadIndex, Method};

use super::decide::{Attempt, Tried, Waits};
use super::h1_h2c_translate::{H2Facts, H2cLeg};
use super::pipe::use_splice;
use super::pipe::Splicing;

/// The request direction: client to backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Req {
    /// The rewritten head is being written (body bytes may follow in the same write).
    Head,
    /// The head is written; body bytes are still to come from the client or to be written.
    Body,
    /// Everything was written.
    Sent,
    /// Ended early: the backend answered, or stopped reading, before the body was sent.
    /// Nothing more is sent; the client connection closes after the response.
    Closed,
}

/// The response direction: backend to client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Resp {
    /// Waiting for (the rest of) a response head; 1xx heads may pass first.
    Head,
    Body(Body),
    /// Fully received and validated.
    Done,
    /// The backend closed or broke mid-body: forward what arrived, then close the client.
    Truncated,
}

pub(crate) struct Exchange {
    /// The upstream connection carrying the current attempt (none between attempts, or
    /// while a retry waits out its backoff). See [`Exchange::on`].
    pub up: Option<usize>,
    /// The current attempt's pick of its server, ended when the attempt is accounted
    /// (`lifecycle.rs`); dropped with the exchange, it gives its place back by itself.
    pub lease: Option<Lease>,
    pub method: Method,
    pub http10: bool,
    /// The client connection stays open after this exchange.
    pub keep_alive: bool,
    /// The request said `Expect: 100-continue`: the client waits for the backend before
    /// sending its body, so that wait is not the client's fault.
    pub expect: bool,
    /// The request asked to switch protocols: a 101 is accepted, and leads to a tunnel.
    pub upgrade: bool,

    pub req: Req,
    /// The rewritten request head, kept until the response head arrives so the request
    /// can be replayed on another server.
    pub head: Option<Buf>,
    /// Where `head`'s method, target and fields are, for an h2c stream (`h1_h2c.rs`).
    /// Its room is kept when the exchange's box is reused (`Ctx::exchange`).
    pub head_index: HeadIndex,
    /// Bytes of `head` already written.
    pub head_off: usize,
    /// Request body still to be read from the client.
    pub body: Body,
    /// Validated request body bytes at the front of the client's buffer, not yet sent.
    pub body_ready: usize,
    /// Request body bytes written in this attempt.
    pub body_sent: u64,
    /// The body bytes this attempt sent, kept for a replay while a retry policy covers
    /// the request (or its server kind replays refused requests, h2c) and they fit in the
    /// replay buffer (`keep_for_replay`, for every pair but HTTP/2 to h2c, whose streams
    /// keep their body anyway); `replay_lost` once they did not (or went by splice): the
    /// request can no longer be replayed.
    pub replay: Option<Buf>,
    pub replay_lost: bool,

    pub resp: Resp,
    /// Response bytes read from the backend.
    pub resp_buf: Option<Buf>,
    /// Response head (and any 1xx heads) to write to the client.
    pub out: Option<Buf>,
    /// Validated response body bytes at the front of `resp_buf`, ready for the client.
    pub ready: usize,
    pub dechunk: bool,
    /// The backend may be sent another request after this response.
    pub keep: bool,
    /// Any response byte arrived in this attempt.
    pub got_bytes: bool,
    pub status: u16,

    /// Retries so far.
    pub retries: u8,
    /// Backends this request already failed on.
    pub tried: Tried,
    /// The one transparent replay after a stale pooled connection has been used.
    pub stale_retried: bool,
    /// This attempt runs on a pooled connection.
    pub reused: bool,
    /// When the client's request was taken on (total latency).
    pub started: Instant,
    /// When this attempt began (upstream latency).
    pub attempt: Instant,
    /// An attempt has begun (`attempt` is then read from the clock at each new one).
    pub attempted: bool,
    /// What the retry policy covering this request replays it after (empty: none does).
    pub retry_on: crate::config::types::RetryOn,
    /// The policy's per-try timeout in ms (0: none), and when this attempt's runs out (a
    /// worker-clock ms; 0: not started): it starts once the whole request went out, and
    /// the response head must have come by then.
    pub per_try: u64,
    pub try_by: u64,
    /// The server the next attempt goes to, while the exchange waits out the retry
    /// policy's backoff (on the client's timer) with no upstream.
    pub backoff: Option<Lease>,
    /// An HTTP/2 stream's: its request head is built again from the stream's fields for
    /// each attempt, so it counts as kept even once `head` went back to the pool.
    pub fields_kept: bool,
    /// A hedging policy covers this request (and it has no body to hold).
    pub hedgeable: bool,
    /// The hedge planned or racing the first attempt (`proxy/hedge.rs`).
    pub hedge: Hedge,
    /// Microseconds from `attempt` to the response head (0 until it arrives).
    pub ttfb_us: u64,
    /// The log record, completed when the exchange ends.
    pub rec: Record,
    /// Pipes carrying large bodies (splice.rs); their bytes count as buffered.
    pub splice: Splicing,
    /// The last body read filled the buffer: it grows before the next (buffer.rs).
    pub req_hot: bool,
    pub resp_hot: bool,
    /// The kind of server carrying the current attempt, with that kind's progress
    /// (an HTTP/1.1 client's exchange; `h1_step.rs`).
    pub hop: Hop,
    /// The request's facts an HTTP/2 hop needs (an h2c server, `h1_h2c.rs`).
    pub h2: H2Facts,
    /// Worker-clock ms (0: none): the server must have moved by `up_at`, the client by
    /// `client_at`. An HTTP/1.1 client's timer is armed for the earlier (`h1_step.rs`).
    pub up_at: u64,
    pub client_at: u64,
    /// A 502/503/504 head the retry policy names could not be replayed after all: this
    /// attempt forwards it as the server gave it.
    pub final_answer: bool,
}

/// The kind of server an HTTP/1.1 client's attempt runs on.
#[derive(Debug, Default)]
pub(crate) enum Hop {
    /// A connection of its own, carrying raw HTTP/1.1 bytes (`relay.rs`, `splice.rs`).
    #[default]
    Http1,
    /// A stream on a shared h2c connection, and how far it went (`h1_h2c.rs`).
    H2c(H2cLeg),
}

impl Hop {
    #[inline]
    pub fn is_h2c(&self) -> bool {
        matches!(self, Hop::H2c(_))
    }
}

/// The facts of a new request, from its parsed head.
pub(crate) struct Start {
    pub method: Method,
    pub http10: bool,
    pub keep_alive: bool,
    pub expect: bool,
    pub upgrade: bool,
    pub body: Body,
    pub body_ready: usize,
    pub head: Buf,
    pub rec: Record,
}

/// A hedge: the same request once more, on another server, racing the first attempt
/// until one of them sends response bytes.
#[derive(Debug)]
pub struct Hedge {
    /// Worker-clock ms when it goes out (0: none planned).
    pub at: u64,
    /// Its upstream connection (none: no hedge running).
    pub up: Option<usize>,
    /// Its pick, while it runs.
    pub lease: Option<Lease>,
    /// Request head bytes written to it.
    pub off: usize,
    /// Hedges sent so far.
    pub sent: u8,
    pub reused: bool,
    pub started: Instant,
    /// Its own per-try timeout (`Exchange::try_by`), from when its whole request went out
    /// (0: none, or not yet).
    pub try_by: u64,
}

impl Hedge {
    /// The running hedge's connection. Called only while one runs.
    #[inline]
    pub fn on(&self) -> usize {
        self.up.expect("a hedge runs")
    }

    /// The `sent`-th hedge, going out now on upstream `up` (`reused`: a pooled
    /// connection) under `lease`; the next one is due at `next` (0: none).
    pub fn launched(next: u64, up: usize, lease: Lease, sent: u8, reused: bool) -> Hedge {
        Hedge {
            at: next,
            up: Some(up),
            lease: Some(lease),
            off: 0,
            sent,
            reused,
            started: Instant::now(),
            try_by: 0,
        }
    }
}

impl Exchange {
    pub fn new(s: Start) -> Exchange {
        let now = Instant::now();
        Exchange {
            up: None,
            method: s.method,
            http10: s.http10,
            keep_alive: s.keep_alive,
            expect: s.expect,
            upgrade: s.upgrade,
            req: Req::Head,
            head: Some(s.head),
            head_index: HeadIndex::default(),
            head_off: 0,
            body: s.body,
            body_ready: s.body_ready,
            body_sent: 0,
            replay: None,
            replay_lost: false,
            resp: Resp::Head,
            resp_buf: None,
            out: None,
            ready: 0,
            dechunk: false,
            keep: false,
            got_bytes: false,
            status: 0,
            retries: 0,
            tried: Tried::default(),
            stale_retried: false,
            reused: false,
            started: now,
            attempt: now,
            attempted: false,
            retry_on: crate::config::types::RetryOn::default(),
            per_try: 0,
            try_by: 0,
            fields_kept: false,
            backoff: None,
            hedgeable: false,
            lease: None,
            hedge: Hedge {
                at: 0,
                up: None,
                lease: None,
                off: 0,
                sent: 0,
                reused: false,
                started: now,
                try_by: 0,
            },
            ttfb_us: 0,
            rec: s.rec,
            splice: Splicing::default(),
            req_hot: false,
            resp_hot: false,
            hop: Hop::Http1,
            h2: H2Facts::default(),
            up_at: 0,
            client_at: 0,
            final_answer: false,
        }
    }

    /// The server's final response head (`status`) was taken: the time to it is noted,
    /// and the request head, which will not be replayed now, goes back to the pool once it
    /// went whole. Either server kind, either front end.
    pub fn took_head(&mut self, status: u16, bufs: &mut BufPool) {
        self.status = status;
        self.got_bytes = true;
        self.ttfb_us = self.attempt.elapsed().as_micros() as u64;
        if self.head.as_ref().is_none_or(|h| self.head_off >= h.len()) {
            bufs.release(&mut self.head);
        }
    }

    /// Body bytes `sent` went to the server: they are kept in the one replay buffer
    /// (`replay`) while `keep` (a retry policy covers the request, or the server kind
    /// replays refused requests of its own) and while they fit in `replay_max`. True if
    /// they outgrew it just now: the request can no longer be replayed.
    pub fn keep_for_replay(
        &mut self,
        sent: &[u8],
        keep: bool,
        replay_max: usize,
        bufs: &mut BufPool,
    ) -> bool {
        if !keep || self.replay_lost {
            return false;
        }
        let kept = self.replay.as_ref().map_or(0, |r| r.len());
        if kept + sent.len() > replay_max {
            self.give_up_replay(bufs);
            return true;
        }
        let r = self.replay.get_or_insert_with(|| bufs.get());
        r.append(sent);
        false
    }

    /// `n` validated body bytes at the front of the client's buffer `buf` went to the
    /// server: kept for a replay as [`Exchange::keep_for_replay`] says, they leave the
    /// buffer. True if the replay buffer was outgrown just now.
    pub fn body_went(
        &mut self,
        buf: &mut Buf,
        n: usize,
        keep: bool,
        replay_max: usize,
        bufs: &mut BufPool,
    ) -> bool {
        let outgrew = self.keep_for_replay(&buf.bytes()[..n], keep, replay_max, bufs);
        buf.consume(n);
        self.body_ready -= n;
        self.rec.request_bytes += n as u64;
        self.body_sent += n as u64;
        outgrew
    }

    /// The request will not be replayed (a response is under way, or its body outgrew
    /// the replay buffer): the body kept for it goes.
    pub fn give_up_replay(&mut self, bufs: &mut BufPool) {
        self.replay_lost = true;
        bufs.release(&mut self.replay);
    }

    /// The upstream connection of the running attempt. Called only while one runs (the
    /// drivers step an exchange's attempt only once it is attached).
    #[inline]
    pub fn on(&self) -> usize {
        self.up.expect("an attempt runs")
    }

    /// Starts an attempt on upstream `up`, under the pick `lease`: the request is written
    /// again from its first byte; what the exchange learnt (retries, tried servers, start
    /// time) stays.
    pub fn begin_attempt(&mut self, up: usize, reused: bool, lease: Lease) {
        self.up = Some(up);
        self.final_answer = false;
        self.lease = Some(lease);
        self.try_by = 0;
        self.reused = reused;
        self.rec.reused = reused;
        self.req = Req::Head;
        self.head_off = 0;
        self.body_sent = 0;
        self.resp = Resp::Head;
        self.ready = 0;
        self.keep = false;
        self.got_bytes = false;
        self.status = 0;
        self.ttfb_us = 0;
        // The first attempt starts with the exchange (one clock read less per request).
        if self.attempted {
            self.attempt = Instant::now();
        }
        self.attempted = true;
    }

    /// The whole request went out at worker ms `now`: this attempt's per-try timeout, if
    /// any, starts (once). Returns when it runs out (0: none).
    pub fn request_sent(&mut self, now: u64) -> u64 {
        if self.per_try > 0 && self.try_by == 0 {
            self.try_by = now + self.per_try;
        }
        self.try_by
    }

    /// The attempt's per-try timeout ran out before its response head.
    pub fn per_try_over(&self, now: u64) -> bool {
        self.try_by != 0 && now >= self.try_by && self.resp == Resp::Head && !self.got_bytes
    }

    /// Head bytes still to write.
    pub fn head_pending(&self) -> bool {
        self.head.as_ref().is_some_and(|h| self.head_off < h.len())
    }

    /// Response bytes wait to be written to the client.
    pub fn pending_out(&self) -> bool {
        self.out.is_some() || self.ready > 0 || self.resp_piped()
    }

    /// Moves the request direction on after bytes were written or read; the one place
    /// its state changes, except for [`Exchange::close_request`].
    pub fn settle_req(&mut self) {
        if self.req == Req::Closed {
            return;
        }
        self.req = if self.head_pending() {
            Req::Head
        } else if self.body_ready > 0 || self.req_piped() || !self.body.is_done() {
            Req::Body
        } else {
            Req::Sent
        };
    }

    /// Ends the request direction early: no more is sent, the backend connection is not
    /// reused and the client connection closes after the response. Returns how many
    /// validated body bytes are dropped from the client's buffer.
    pub fn close_request(&mut self) -> usize {
        self.req = Req::Closed;
        self.keep = false;
        self.keep_alive = false;
        self.drop_req_pipe();
        std::mem::take(&mut self.body_ready)
    }

    /// What a retry decision needs to know of the current attempt.
    pub fn attempt_facts(&self) -> Attempt {
        Attempt {
            method: self.method,
            head_kept: self.head.is_some() || self.fields_kept,
            // An HTTP/2 stream's head goes back to the pool once written whole.
            head_written: match &self.head {
                Some(h) => self.head_off >= h.len(),
                None => self.fields_kept,
            },
            // A body kept whole for a replay counts as not consumed.
            body_sent: match (&self.replay, self.replay_lost) {
                (Some(_), false) => 0,
                _ => self.body_sent,
            },
            answered: self.out.is_some(),
            got_bytes: self.got_bytes,
            reused: self.reused,
            stale_retried: self.stale_retried,
            retries: self.retries,
            opted: self.retry_on,
        }
    }

    /// What the deadlines depend on, given the client's writability.
    pub fn waits(&self, client_writable: bool) -> Waits {
        let waiting_100 = self.expect && self.resp == Resp::Head && !self.got_bytes;
        Waits {
            client_slow: self.pending_out() && !client_writable,
            need_client_body: self.req == Req::Body
                && self.body_ready == 0
                && !self.req_piped()
                && !waiting_100,
            request_pending: self.req == Req::Head
                || (self.req == Req::Body && (self.body_ready > 0 || self.req_piped())),
            response_done: self.resp == Resp::Done,
            response_started: self.resp != Resp::Head,
        }
    }
}

impl Exchange {
    /// Request body bytes wait in the request pipe.
    #[inline]
    pub fn req_piped(&self) -> bool {
        self.splice.req.as_ref().is_some_and(|p| p.held > 0)
    }

    /// Response body bytes wait in the response pipe.
    #[inline]
    pub fn resp_piped(&self) -> bool {
        self.splice.resp.as_ref().is_some_and(|p| p.held > 0)
    }

    /// The request body's next bytes will be spliced once its buffered bytes are sent
    /// (`min`: the threshold): the copying path reads no more of it into the buffer. Not
    /// while a retry policy keeps the body for a replay and the rest fits in its
    /// `replay_max` bytes: those are copied (and kept).
    #[inline]
    pub fn req_splice_next(&self, min: u64, replay_max: usize) -> bool {
        let left = self.body.opaque_left();
        !self.splice.off
            && use_splice(left, 0, false, min)
            && !self.keeps_for_replay(left, replay_max)
    }

    /// A retry policy keeps this request's body for a replay, and `left` more bytes
    /// still fit in the `replay_max` kept.
    pub fn keeps_for_replay(&self, left: u64, replay_max: usize) -> bool {
        let kept = self.replay.as_ref().map_or(0, |r| r.len()) as u64;
        !self.retry_on.is_empty() && !self.replay_lost && kept + left <= replay_max as u64
    }

    /// Drops the request bytes in the pipe (the request direction was closed early).
    pub fn drop_req_pipe(&mut self) {
        if self.req_piped() {
            self.splice.req = None;
        }
    }
}

#[cfg(test)]
impl Exchange {
    /// A keep-alive GET's exchange, for unit tests.
    pub(crate) fn test_get(pool: &mut BufPool) -> Exchange {
        let peer = "127.0.0.1:1".parse().expect("address");
        Exchange::new(Start {
            method: Method::Get,
            http10: false,
            keep_alive: true,
            expect: false,
            upgrade: false,
            body: Body::new(crate::http::BodyKind::None),
            body_ready: 0,
            head: pool.get(),
            rec: Record::new(0, peer, Method::Get, b"/"),
        })
    }
}

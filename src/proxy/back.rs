//! The back-end interface's response body: what one attempt's server has for its front end
//! once the response head went, the same calls whichever kind of server it is. A front end
//! asks [`ResponseBody::next`] for the next event (data, the end with any trailers, a loss)
//! and says with [`ResponseBody::taken`] how much data the client took; it never looks
//! inside the back end. Two back ends implement it:
//! - [`H1Body`]: an HTTP/1.1 connection's read buffer, framing taken off in place
//!   (`h1_response::body`), the trailer section of a chunked body kept aside;
//! - [`InboxBody`]: a stream's inbox on an h2c connection (`h2c_conn.rs`), whose window
//!   reopens by what the client took.
//!
//! Heads are read by each kind's own reader (`h1_response.rs`, `MuxStream::take_head`).
//!
//! The request half: an h2c stream takes its body and trailers straight from the codec
//! (`send_data`, `send_trailers`); an HTTP/1.1 server takes bytes, which [`H1Request`]
//! frames for an HTTP/2 stream's body (an HTTP/1.1 client's body goes as the client framed
//! it).

use crate::buffer::Buf;
use crate::h2::{Connection, Fields};

use super::decide::Failure;
use super::exchange::{Exchange, Resp};
use super::h2_translate::{tail_trailers, trailer_lines, UpstreamFraming};
use super::h2c_conn::MuxStream;

/// What a back end's response body has next for the front end.
pub(crate) enum Next<'a> {
    /// Nothing yet.
    Wait,
    /// Data for the client, in order; `last`: nothing (no trailers either) comes after.
    Data(&'a [u8], bool),
    /// The body is whole: its trailers, if any. Returned until the front end calls
    /// [`ResponseBody::finish`].
    End(Option<&'a Fields>),
    /// The attempt was lost before the body was whole; the data that came went first.
    Lost(Failure),
}

/// A back end's response body, taken by a front end.
pub(crate) trait ResponseBody {
    /// The next event.
    fn next(&mut self) -> Next<'_>;
    /// The client took the first `n` bytes of the last `Data`.
    fn taken(&mut self, n: usize);
    /// Data bytes the back end holds that the client has not taken.
    fn held(&self) -> usize;
    /// The end went to the client: what the back end kept for it is given back.
    fn finish(&mut self);
    /// Trailer fields the back end dropped as it read them (past the bound).
    fn dropped(&self) -> u64 {
        0
    }
}

/// An HTTP/1.1 server's response body in the exchange's read buffer: `ex.ready` bytes of
/// data at its front, the trailer section of a chunked body in `tail`, read into `fields`
/// at the end.
pub(crate) struct H1Body<'a> {
    pub ex: &'a mut Exchange,
    pub tail: &'a [u8],
    pub fields: &'a mut Fields,
    dropped: u64,
    read: bool,
}

impl<'a> H1Body<'a> {
    pub fn new(ex: &'a mut Exchange, tail: &'a [u8], fields: &'a mut Fields) -> H1Body<'a> {
        H1Body {
            ex,
            tail,
            fields,
            dropped: 0,
            read: false,
        }
    }
}

impl ResponseBody for H1Body<'_> {
    #[inline]
    fn next(&mut self) -> Next<'_> {
        let done = self.ex.resp == Resp::Done;
        if self.ex.ready > 0 {
            let buf = self.ex.resp_buf.as_ref().expect("response bytes");
            // A chunked body's end may carry trailers: it goes apart.
            return Next::Data(&buf.bytes()[..self.ex.ready], done && self.tail.is_empty());
        }
        if !done {
            return Next::Wait;
        }
        if !self.read {
            self.read = true;
            self.dropped = tail_trailers(self.tail, self.fields);
        }
        Next::End((!self.fields.is_empty()).then_some(&*self.fields))
    }

    #[inline]
    fn taken(&mut self, n: usize) {
        self.ex
            .resp_buf
            .as_mut()
            .expect("response bytes")
            .consume(n);
        self.ex.ready -= n;
    }

    #[inline]
    fn held(&self) -> usize {
        self.ex.ready
    }

    #[inline]
    fn finish(&mut self) {
        self.fields.clear();
    }

    #[inline]
    fn dropped(&self) -> u64 {
        self.dropped
    }
}

/// A stream's inbox on an h2c connection (`conn`, the connection's codec): DATA the client
/// has not taken, END_STREAM, the trailers, and why the stream is gone. Its drained buffer
/// is given back by the front end (`MuxStream::release_drained`).
pub(crate) struct InboxBody<'a> {
    pub conn: &'a mut Connection,
    pub ms: &'a mut MuxStream,
}

impl ResponseBody for InboxBody<'_> {
    #[inline]
    fn next(&mut self) -> Next<'_> {
        let ms = &mut *self.ms;
        if ms.data.as_ref().is_some_and(|d| !d.is_empty()) {
            let last = ms.end && ms.trailers.is_none();
            return Next::Data(ms.data.as_ref().map_or(&[], |d| d.bytes()), last);
        }
        if ms.end {
            return Next::End(ms.trailers.as_ref());
        }
        match ms.gone {
            Some(why) => Next::Lost(why.failure()),
            None => Next::Wait,
        }
    }

    #[inline]
    fn taken(&mut self, n: usize) {
        self.ms.data.as_mut().expect("data").consume(n);
        // The backend may send as much again.
        self.conn.release(self.ms.sid, n);
    }

    #[inline]
    fn held(&self) -> usize {
        self.ms.data.as_ref().map_or(0, Buf::len)
    }

    #[inline]
    fn finish(&mut self) {
        if let Some(t) = self.ms.trailers.take() {
            self.conn.recycle(t);
        }
    }
}

/// An HTTP/2 stream's request as an HTTP/1.1 server takes it: the head, then the body in
/// corelb's framing: as it is under a Content-Length (or in a WebSocket tunnel), or chunked
/// (a chunk line before each run of data, then the last chunk with the client's trailers).
/// [`H1Request::next`] says what to write, [`H1Request::wrote`] what a write took.
pub(crate) struct H1Request {
    framing: UpstreamFraming,
    /// Chunked: the line before the next chunk's data (with the last chunk's CRLF).
    pre: [u8; 24],
    pre_len: u8,
    pre_off: u8,
    /// Chunked: data bytes of the current chunk still to write.
    chunk_left: usize,
    any_chunk: bool,
    /// Chunked: the end of the body (last chunk, trailer section), once built.
    tail: Vec<u8>,
    tail_built: bool,
    tail_off: usize,
    /// Payload bytes the last `next` handed out.
    pay: usize,
    /// Trailer fields left out of the end (see `take_dropped`).
    dropped: u64,
}

impl H1Request {
    pub fn new(framing: UpstreamFraming) -> H1Request {
        H1Request {
            framing,
            pre: [0; 24],
            pre_len: 0,
            pre_off: 0,
            chunk_left: 0,
            any_chunk: false,
            tail: Vec::new(),
            tail_built: false,
            tail_off: 0,
            pay: 0,
            dropped: 0,
        }
    }

    fn chunked(&self) -> bool {
        self.framing == UpstreamFraming::Chunked
    }

    /// A new attempt writes the request from its start (an end of the body already built,
    /// with the trailers, is kept for it).
    pub fn restart(&mut self) {
        self.pre_len = 0;
        self.pre_off = 0;
        self.chunk_left = 0;
        self.any_chunk = false;
        self.tail_off = 0;
    }

    /// Trailer fields left out of the end of the body (HTTP/1.1 cannot carry them), once
    /// it was worked out; counted once, however many attempts write it.
    #[inline]
    pub fn take_dropped(&mut self) -> u64 {
        std::mem::take(&mut self.dropped)
    }

    /// What to write next, in order: what is left of `head`, a chunk line, the body bytes
    /// of `payload` that go now, and the end of a chunked body, with the client's
    /// `trailers`, once the client `ended` its request and all its data went. All empty:
    /// nothing to write now.
    #[inline]
    pub fn next<'a>(
        &'a mut self,
        head: &'a [u8],
        payload: &'a [u8],
        ended: bool,
        trailers: Option<&Fields>,
    ) -> [&'a [u8]; 4] {
        let chunked = self.chunked();
        if chunked && self.chunk_left == 0 && self.pre_off == self.pre_len && !payload.is_empty() {
            use std::io::Write;
            let mut w = &mut self.pre[..];
            let crlf: &[u8] = if self.any_chunk { b"\r\n" } else { b"" };
            let _ = w.write_all(crlf);
            let _ = write!(w, "{:x}\r\n", payload.len());
            self.pre_len = (24 - w.len()) as u8;
            self.pre_off = 0;
            self.chunk_left = payload.len();
            self.any_chunk = true;
        }
        let pre = &self.pre[self.pre_off as usize..self.pre_len as usize];
        self.pay = if chunked {
            self.chunk_left
        } else {
            payload.len()
        };
        let pay = &payload[..self.pay];
        let body_left = !head.is_empty() || !pre.is_empty() || !pay.is_empty();
        if !body_left && ended && !self.tail_built {
            // The end of the body, worked out once: a retry writes the same.
            self.tail_built = true;
            if chunked {
                let end = &mut self.tail;
                end.clear();
                if self.any_chunk {
                    end.extend_from_slice(b"\r\n");
                }
                end.extend_from_slice(b"0\r\n");
                self.dropped = trailers.map_or(0, |t| trailer_lines(t, end));
                end.extend_from_slice(b"\r\n");
            } else {
                // HTTP/1.1 carries trailers only in a chunked body.
                self.dropped = trailers.map_or(0, |t| t.regular().count() as u64);
            }
        }
        let tail: &[u8] = if body_left || !ended || !self.tail_built {
            &[]
        } else {
            &self.tail[self.tail_off..]
        };
        [head, pre, pay, tail]
    }

    /// `n` bytes of what the last [`H1Request::next`] gave were written, `head` of them
    /// the head's at most: returns how many were the head's and how many the payload's.
    #[inline]
    pub fn wrote(&mut self, mut n: usize, head: usize) -> (usize, usize) {
        let h = n.min(head);
        n -= h;
        let pre = n.min((self.pre_len - self.pre_off) as usize);
        self.pre_off += pre as u8;
        n -= pre;
        let pay = n.min(self.pay);
        if self.chunked() {
            self.chunk_left -= pay;
        }
        n -= pay;
        self.tail_off += n;
        (h, pay)
    }

    /// With nothing left to write, the whole request went: the client `ended` it, and the
    /// body's end was written.
    #[inline]
    pub fn done(&self, ended: bool) -> bool {
        ended && self.tail_built
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buffer::BufPool;
    use crate::h2::{self as codec, Connection};
    use crate::http::{Body, BodyKind};

    use super::super::h1_response::{self, Unframe};
    use super::super::h2c_conn::{client_settings, Gone};

    /// Takes everything `body` has, `step` bytes at a time: the data, whether the last
    /// data said nothing follows, and the trailers (as "name: value" lines).
    fn drain(body: &mut impl ResponseBody, step: usize) -> (Vec<u8>, bool, Vec<String>) {
        let (mut data, mut last_seen) = (Vec::new(), false);
        loop {
            match body.next() {
                Next::Data(d, last) => {
                    let n = d.len().min(step);
                    data.extend_from_slice(&d[..n]);
                    last_seen = last && n == d.len();
                    body.taken(n);
                }
                Next::End(t) => {
                    let lines = t.map_or(Vec::new(), |t| {
                        t.iter()
                            .map(|(n, v)| format!("{}: {}", ascii(n), ascii(v)))
                            .collect()
                    });
                    body.finish();
                    return (data, last_seen, lines);
                }
                Next::Wait => panic!("waits with {} bytes held", body.held()),
                Next::Lost(why) => panic!("lost: {why:?}"),
            }
        }
    }

    fn ascii(b: &[u8]) -> String {
        String::from_utf8_lossy(b).into_owned()
    }

    #[test]
    fn an_http1_body_gives_its_data_then_its_trailers_apart() {
        let mut pool = BufPool::new(4);
        let mut ex = Exchange::test_get(&mut pool);
        let wire = b"5\r\nhello\r\n3\r\n, w\r\n0\r\nX-Sum: 9\r\nContent-Encoding: gzip\r\n\r\n";
        let mut buf = pool.get();
        buf.space()[..wire.len()].copy_from_slice(wire);
        buf.filled(wire.len());
        ex.resp_buf = Some(buf);
        ex.resp = Resp::Body(Body::new(BodyKind::Chunked));
        let mut tail = Vec::new();
        h1_response::body(&mut ex, Unframe::KeepTail(&mut tail)).expect("well-framed");
        let mut fields = Fields::new();
        let mut body = H1Body::new(&mut ex, &tail, &mut fields);
        let (data, last, trailers) = drain(&mut body, 3);
        assert_eq!(data, b"hello, w");
        assert!(
            !last,
            "trailers follow a chunked body: its data does not end the stream"
        );
        assert_eq!(trailers, ["x-sum: 9"]);
        assert_eq!(
            body.dropped(),
            1,
            "content-encoding is no trailer for HTTP/2"
        );
        assert_eq!(ex.ready, 0);

        // A body framed by its length ends with its last data.
        let mut ex = Exchange::test_get(&mut pool);
        let mut buf = pool.get();
        buf.space()[..4].copy_from_slice(b"abcd");
        buf.filled(4);
        ex.resp_buf = Some(buf);
        ex.resp = Resp::Body(Body::new(BodyKind::Length(4)));
        h1_response::body(&mut ex, Unframe::KeepTail(&mut tail)).expect("whole");
        let mut body = H1Body::new(&mut ex, &[], &mut fields);
        assert_eq!(drain(&mut body, 10), (b"abcd".to_vec(), true, vec![]));
    }

    #[test]
    fn an_inbox_gives_its_data_its_trailers_or_its_loss() {
        let mut conn = Connection::client(client_settings(), codec::Limits::default());
        let mut pool = BufPool::new(4);
        let mut ms = MuxStream {
            sid: 1,
            client: 0,
            front: 0,
            head: None,
            data: Some(pool.get()),
            end: false,
            trailers: None,
            gone: None,
        };
        ms.data.as_mut().expect("data").append(b"0123456789");
        let mut body = InboxBody {
            conn: &mut conn,
            ms: &mut ms,
        };
        match body.next() {
            Next::Data(d, last) => assert_eq!((d, last), (&b"0123456789"[..], false)),
            _ => panic!("data first"),
        }
        body.taken(10);
        assert!(matches!(body.next(), Next::Wait), "no end yet");
        body.ms.end = true;
        body.ms.trailers = Some(Fields::of(&[("grpc-status", "0")]));
        body.ms.data.as_mut().expect("data").append(b"ab");
        let (data, last, trailers) = drain(&mut body, 1);
        assert_eq!((data, last), (b"ab".to_vec(), false));
        assert_eq!(trailers, ["grpc-status: 0"]);
        assert!(ms.trailers.is_none(), "the trailers went back to the codec");
        ms.release_drained(&mut pool);
        assert!(ms.data.is_none(), "a drained buffer goes back to the pool");

        // Lost before its end: the data that came goes first.
        ms.end = false;
        ms.data = Some(pool.get());
        ms.data.as_mut().expect("data").append(b"xy");
        ms.gone = Some(Gone::Reset(codec::ErrorCode::INTERNAL_ERROR));
        let mut body = InboxBody {
            conn: &mut conn,
            ms: &mut ms,
        };
        assert!(matches!(body.next(), Next::Data(b"xy", false)));
        body.taken(2);
        assert!(matches!(body.next(), Next::Lost(Failure::Reset)));
    }

    /// Writes `head` and the body runs of `runs` (each given once the last went) through
    /// `req`, at most `step` bytes per write, then the end: the bytes a server would read.
    fn written(
        req: &mut H1Request,
        head: &[u8],
        runs: &[&[u8]],
        trailers: Option<&Fields>,
        step: usize,
    ) -> Vec<u8> {
        let (mut wire, mut head) = (Vec::new(), head);
        for (i, run) in runs.iter().enumerate() {
            let mut run: &[u8] = run;
            let ended = i + 1 == runs.len();
            loop {
                let slices = req.next(head, run, ended, trailers);
                if slices.iter().all(|s| s.is_empty()) {
                    break;
                }
                let all = slices.concat();
                let n = all.len().min(step);
                wire.extend_from_slice(&all[..n]);
                let (h, p) = req.wrote(n, head.len());
                head = &head[h..];
                run = &run[p..];
            }
        }
        assert!(req.done(true), "the whole request went");
        wire
    }

    #[test]
    fn an_http1_request_is_framed_chunked_with_its_trailers_or_by_its_length() {
        for step in [1, 4, 1000] {
            let mut req = H1Request::new(UpstreamFraming::Chunked);
            let t = Fields::of(&[("x-t", "1"), ("content-length", "9")]);
            let head = b"POST / HTTP/1.1\r\n\r\n";
            let wire = written(&mut req, head, &[b"hello", b", w"], Some(&t), step);
            let want = "POST / HTTP/1.1\r\n\r\n5\r\nhello\r\n3\r\n, w\r\n0\r\nx-t: 1\r\n\r\n";
            assert_eq!(
                String::from_utf8_lossy(&wire),
                want,
                "{step} bytes per write"
            );
            assert_eq!(req.take_dropped(), 1, "content-length is no trailer");
            // A retry writes it all again, the end with its trailers included; the field
            // left out is counted once.
            req.restart();
            let again = written(&mut req, head, &[b"hello", b", w"], Some(&t), step);
            assert_eq!(again, wire);
            assert_eq!(req.take_dropped(), 0);
        }
        let mut req = H1Request::new(UpstreamFraming::Length(8));
        let t = Fields::of(&[("x-t", "1")]);
        let wire = written(&mut req, b"H\r\n\r\n", &[b"hello", b", w"], Some(&t), 3);
        assert_eq!(wire, b"H\r\n\r\nhello, w");
        assert_eq!(req.take_dropped(), 1, "no trailer section under a length");
        let mut empty = H1Request::new(UpstreamFraming::Chunked);
        let wire = written(&mut empty, b"H\r\n\r\n", &[b""], None, 100);
        assert_eq!(
            wire, b"H\r\n\r\n0\r\n\r\n",
            "an empty chunked body is its last chunk"
        );
    }
}

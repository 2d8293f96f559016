//! A small blocking HTTP/2 client on corelb's own codec, for tests that need to see
//! frames: trailers, resets, GOAWAY, per-stream headers.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use corelb::h2::{Connection, ErrorCode, Event, Limits, Settings};

/// What came back on one stream.
#[derive(Debug, Default, Clone)]
pub struct Got {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    pub trailers: Vec<(String, String)>,
    pub reset: Option<ErrorCode>,
    pub done: bool,
}

/// A blocking HTTP/2 client on corelb's codec.
pub struct H2 {
    pub sock: TcpStream,
    pub conn: Connection,
    pub got: HashMap<u32, Got>,
    pub goaway: Option<ErrorCode>,
    pub closed: bool,
    /// Received bytes not yet parsed (a partial frame).
    pub pending: Vec<u8>,
}

pub fn pairs<'a>(v: &'a [(&'a str, &'a str)]) -> Vec<(&'a [u8], &'a [u8])> {
    v.iter()
        .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
        .collect()
}

impl H2 {
    pub fn connect(addr: SocketAddr) -> H2 {
        let sock = TcpStream::connect(addr).unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut h = H2 {
            sock,
            conn: Connection::client(Settings::default(), Limits::default()),
            got: HashMap::new(),
            goaway: None,
            closed: false,
            pending: Vec::new(),
        };
        h.flush();
        h
    }

    pub fn flush(&mut self) {
        let out = self.conn.pending_output().to_vec();
        if self.sock.write_all(&out).is_ok() {
            self.conn.advance_output(out.len());
        }
    }

    /// Opens a stream with the usual pseudo-headers plus `extra`.
    pub fn request(&mut self, method: &str, path: &str, extra: &[(&str, &str)], end: bool) -> u32 {
        let mut f = vec![
            (":method", method),
            (":scheme", "http"),
            (":authority", "corelb.test"),
            (":path", path),
        ];
        f.extend_from_slice(extra);
        self.raw_headers(&f, end)
    }

    /// Opens a stream with exactly these fields (not validated: malformed on purpose).
    pub fn raw_headers(&mut self, f: &[(&str, &str)], end: bool) -> u32 {
        let id = self.conn.open_stream().expect("stream");
        self.conn.send_headers(id, &pairs(f), end).unwrap();
        self.flush();
        id
    }

    /// Sends `fields` as stream `id`'s trailers (ending it).
    pub fn trailers(&mut self, id: u32, fields: &[(String, String)]) {
        let pairs: Vec<(&[u8], &[u8])> = fields
            .iter()
            .map(|(n, v)| (n.as_bytes(), v.as_bytes()))
            .collect();
        self.conn.send_trailers(id, &pairs).unwrap();
        self.flush();
    }

    pub fn data(&mut self, id: u32, bytes: &[u8], end: bool) {
        let mut off = 0;
        while off < bytes.len() {
            let n = match self.conn.send_data(id, &bytes[off..], end) {
                Ok(n) => n,
                Err(e) => panic!("send_data: {e}: {:?}", self.conn.error()),
            };
            off += n;
            self.flush();
            if n == 0 {
                self.pump();
            }
        }
        if bytes.is_empty() && end {
            self.conn.send_data(id, &[], true).unwrap();
            self.flush();
        }
    }

    /// Reads once (up to 200 ms) and files the events.
    pub fn pump(&mut self) {
        let mut buf = [0u8; 65536];
        match self.sock.read(&mut buf) {
            Ok(0) => self.closed = true,
            Ok(n) => {
                self.pending.extend_from_slice(&buf[..n]);
                match self.conn.recv(&self.pending, Instant::now()) {
                    Ok(used) => {
                        self.pending.drain(..used);
                    }
                    Err(_) => self.closed = true,
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(_) => self.closed = true,
        }
        while let Some(ev) = self.conn.poll_event() {
            match ev {
                Event::Headers {
                    stream,
                    fields,
                    end_stream,
                } => {
                    let g = self.got.entry(stream).or_default();
                    let st = fields.status().unwrap_or(0);
                    if st >= 200 {
                        g.status = st;
                        g.headers = fields.regular().map(|(n, v)| (s(n), s(v))).collect();
                    }
                    g.done |= end_stream;
                }
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } => {
                    let n = data.len();
                    let g = self.got.entry(stream).or_default();
                    g.body.extend_from_slice(data);
                    g.done |= end_stream;
                    self.conn.release(stream, n);
                }
                Event::Trailers { stream, fields } => {
                    let g = self.got.entry(stream).or_default();
                    g.trailers = fields.regular().map(|(n, v)| (s(n), s(v))).collect();
                    g.done = true;
                }
                Event::Reset { stream, code, .. } => {
                    let g = self.got.entry(stream).or_default();
                    g.reset = Some(code);
                    g.done = true;
                }
                Event::GoAway { code, .. } => self.goaway = Some(code),
                _ => {}
            }
        }
        self.flush();
    }

    /// Pumps until stream `id` is done (or the connection closed), at most `limit`.
    pub fn wait(&mut self, id: u32, limit: Duration) -> Got {
        let end = Instant::now() + limit;
        while Instant::now() < end && !self.closed && !self.got.get(&id).is_some_and(|g| g.done) {
            self.pump();
        }
        self.got.get(&id).cloned().unwrap_or_default()
    }

    pub fn wait_goaway(&mut self, limit: Duration) -> Option<ErrorCode> {
        let end = Instant::now() + limit;
        while Instant::now() < end && self.goaway.is_none() && !self.closed {
            self.pump();
        }
        self.goaway
    }
}

pub fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn header<'a>(g: &'a Got, name: &str) -> Option<&'a str> {
    g.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

/// The first frame of type `kind` the server sends (payload), within a few seconds.
pub fn read_frame(sock: &mut TcpStream, kinds: &[u8]) -> Option<(u8, u32, Vec<u8>)> {
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut tmp = [0u8; 4096];
    loop {
        while buf.len() >= 9 {
            let len = u32::from_be_bytes([0, buf[0], buf[1], buf[2]]) as usize;
            if buf.len() < 9 + len {
                break;
            }
            let kind = buf[3];
            let stream = u32::from_be_bytes([buf[5], buf[6], buf[7], buf[8]]) & 0x7fff_ffff;
            let payload = buf[9..9 + len].to_vec();
            buf.drain(..9 + len);
            if kinds.contains(&kind) {
                return Some((kind, stream, payload));
            }
        }
        match sock.read(&mut tmp) {
            Ok(0) | Err(_) => return None,
            Ok(n) => buf.extend_from_slice(&tmp[..n]),
        }
    }
}

pub const RST: u8 = 3;
pub const GOAWAY: u8 = 7;

pub fn code_of(kind: u8, payload: &[u8]) -> ErrorCode {
    let at = if kind == GOAWAY { 4 } else { 0 };
    ErrorCode(u32::from_be_bytes(payload[at..at + 4].try_into().unwrap()))
}

/// A raw frame: 9-byte head and payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut f = len.to_be_bytes()[1..].to_vec();
    f.extend_from_slice(&[kind, flags]);
    f.extend_from_slice(&stream.to_be_bytes());
    f.extend_from_slice(payload);
    f
}

/// Opens `n` GET streams on `h` without sending them; returns their ids.
pub fn queue_gets(h: &mut H2, path: &str, n: usize) -> Vec<u32> {
    (0..n)
        .map(|_| {
            let id = h.conn.open_stream().expect("stream");
            let f = [
                (":method", "GET"),
                (":scheme", "http"),
                (":authority", "x"),
                (":path", path),
            ];
            h.conn.send_headers(id, &pairs(&f), false).unwrap();
            id
        })
        .collect()
}

/// The codec's queued bytes, taken out to be written by hand.
pub fn take(h: &mut H2) -> Vec<u8> {
    let out = h.conn.pending_output().to_vec();
    h.conn.advance_output(out.len());
    out
}

/// One gRPC unary call `/tts.TTS/Synthesize` of `text` on `client` (a
/// `tts.SynthesizeRequest`, field 1): its answer, its grpc-status (from the trailers, or
/// the head of a Trailers-Only answer; "" if none), and how long it took.
pub fn synthesize(client: &mut H2, text: &str) -> (Got, String, Duration) {
    let mut msg = vec![0u8, 0, 0, 0, 2 + text.len() as u8, 0x0a, text.len() as u8];
    msg.extend_from_slice(text.as_bytes());
    let t = Instant::now();
    let id = client.request(
        "POST",
        "/tts.TTS/Synthesize",
        &[("content-type", "application/grpc"), ("te", "trailers")],
        false,
    );
    client.data(id, &msg, true);
    let g = client.wait(id, Duration::from_secs(5));
    let took = t.elapsed();
    let status = (g.trailers.iter().chain(&g.headers))
        .find(|(n, _)| n == "grpc-status")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    (g, status, took)
}

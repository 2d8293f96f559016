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

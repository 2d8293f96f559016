//! One h2c connection (`--protocol h2c|grpc`): socket I/O around corelb's sans-IO HTTP/2
//! codec, driven by recorded readiness like `conn::Conn`. What each stream answers lives
//! in `h2app`; this module moves bytes and feeds events to it.

use std::collections::HashMap;
use std::io::{self, Read, Write};

use corelb::h2::{Connection, Event, Limits, Settings, StreamId};
use mio::net::TcpStream;

use crate::conn::{Ctx, Drive};
use crate::h2app::{App, Job};

/// Read buffer: more than one largest frame (16 KiB + 9) plus room to batch.
const READ_BUF: usize = 64 * 1024;
/// Stop reading while this much output is waiting (the peer is not reading).
const OUT_HIGH: usize = 1024 * 1024;
const BUDGET: usize = 64;

pub struct H2Conn {
    pub sock: TcpStream,
    pub id: u64,
    pub readable: bool,
    pub writable: bool,
    h2: Connection,
    rbuf: Vec<u8>,
    rend: usize,
    jobs: HashMap<StreamId, Job>,
    /// Has carried a counted request.
    counted: bool,
    grpc: bool,
    eof: bool,
}

impl H2Conn {
    pub fn new(sock: TcpStream, id: u64, grpc: bool, max_streams: u32) -> Self {
        let settings = Settings {
            max_concurrent_streams: max_streams,
            ..Settings::default()
        };
        H2Conn {
            sock,
            id,
            readable: true,
            writable: true,
            h2: Connection::server(settings, Limits::default()),
            rbuf: vec![0; READ_BUF],
            rend: 0,
            jobs: HashMap::new(),
            counted: false,
            grpc,
            eof: false,
        }
    }

    fn app(&mut self) -> App<'_> {
        App {
            h2: &mut self.h2,
            jobs: &mut self.jobs,
            counted: &mut self.counted,
            conn_id: self.id,
            grpc: self.grpc,
        }
    }

    /// Timers of delayed answers or streamed chunks fired.
    pub fn on_timer(&mut self, ctx: &mut Ctx<'_>) {
        self.app().on_timer(ctx);
    }

    /// Makes as much progress as readiness allows, within a budget.
    pub fn drive(&mut self, ctx: &mut Ctx<'_>) -> Drive {
        for _ in 0..BUDGET {
            let mut progress = false;
            match self.flush() {
                Ok(n) => progress |= n > 0,
                Err(_) => return Drive::Close,
            }
            if self.readable && !self.eof && self.h2.pending_output().len() < OUT_HIGH {
                match self.fill(ctx) {
                    Ok(n) => progress |= n > 0,
                    Err(_) => {
                        let _ = self.flush();
                        return Drive::Close;
                    }
                }
            }
            progress |= self.app().pump(ctx);
            if self.h2.wants_write() && self.writable {
                continue;
            }
            let finished = self.h2.is_finished() || (self.eof && self.h2.active_streams() == 0);
            if finished && !self.h2.wants_write() {
                let _ = self.sock.shutdown(std::net::Shutdown::Write);
                return Drive::Close;
            }
            if self.eof && !self.h2.wants_write() && !progress {
                return Drive::Close;
            }
            if !progress {
                return Drive::Open;
            }
        }
        Drive::Yield
    }

    /// Writes pending output until it is empty or the socket is full; bytes written.
    fn flush(&mut self) -> io::Result<usize> {
        let mut total = 0;
        while self.h2.wants_write() && self.writable {
            match self.sock.write(self.h2.pending_output()) {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    self.h2.advance_output(n);
                    total += n;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.writable = false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(total)
    }

    /// Reads once, feeds the codec and handles its events; bytes read.
    fn fill(&mut self, ctx: &mut Ctx<'_>) -> io::Result<usize> {
        let n = loop {
            match self.sock.read(&mut self.rbuf[self.rend..]) {
                Ok(0) => {
                    self.eof = true;
                    return Ok(0);
                }
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    self.readable = false;
                    return Ok(0);
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        };
        self.rend += n;
        let used = self
            .h2
            .recv(&self.rbuf[..self.rend], ctx.now)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        self.rbuf.copy_within(used..self.rend, 0);
        self.rend -= used;
        self.events(ctx);
        Ok(n)
    }

    fn events(&mut self, ctx: &mut Ctx<'_>) {
        let mut app = App {
            h2: &mut self.h2,
            jobs: &mut self.jobs,
            counted: &mut self.counted,
            conn_id: self.id,
            grpc: self.grpc,
        };
        // `poll_event` borrows the codec; the data is copied out before the app acts.
        let mut scratch = Vec::new();
        loop {
            let ev = match app.h2.poll_event() {
                None => break,
                Some(Event::Data {
                    stream,
                    data,
                    end_stream,
                }) => {
                    scratch.clear();
                    scratch.extend_from_slice(data);
                    Owned::Data(stream, end_stream)
                }
                Some(Event::Headers {
                    stream,
                    fields,
                    end_stream,
                }) => Owned::Headers(stream, fields, end_stream),
                Some(Event::Trailers { stream, fields }) => Owned::Trailers(stream, fields),
                Some(Event::Reset { stream, .. }) => Owned::Reset(stream),
                Some(_) => continue,
            };
            match ev {
                Owned::Data(stream, end) => app.on_data(ctx, stream, &scratch, end),
                Owned::Headers(stream, fields, end) => app.on_headers(ctx, stream, &fields, end),
                Owned::Trailers(stream, fields) => app.on_trailers(ctx, stream, &fields),
                Owned::Reset(stream) => {
                    app.jobs.remove(&stream);
                }
            }
        }
    }
}

enum Owned {
    Data(StreamId, bool),
    Headers(StreamId, corelb::h2::Fields, bool),
    Trailers(StreamId, corelb::h2::Fields),
    Reset(StreamId),
}

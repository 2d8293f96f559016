//! Per-request CSV log: the record workers produce, the bounded channel they hand it to
//! with `try_send` (a full channel drops the record and counts it, never blocks), and the
//! one logger thread that writes the file with the csv crate.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TryRecvError, TrySendError};

use crate::http::Method;

/// Longest path kept in a record; longer paths are cut.
const PATH_MAX: usize = 128;

/// The CSV header. The seed's columns come first.
pub const COLUMNS: [&str; 19] = [
    "timestamp",
    "backend_url",
    "latency_ms",
    "status_code",
    "routing_mode",
    "worker",
    "method",
    "path",
    "request_bytes",
    "response_bytes",
    "upstream_latency_us",
    "total_latency_us",
    "reused",
    "client_addr",
    "protocol",
    "upstream_protocol",
    "grpc_status",
    "tls",
    "attempts",
];

/// One finished request. `Copy` and fixed-size, so sending it allocates nothing.
#[derive(Clone, Copy, Debug)]
pub struct Record {
    /// Microseconds since the Unix epoch when the response was complete.
    pub unix_us: u64,
    /// Backend index, or `None` for answers the proxy made itself (400, 503, ...).
    pub backend: Option<u16>,
    pub status: u16,
    pub worker: u16,
    pub method: Method,
    pub reused: bool,
    /// The client spoke HTTP/2 (the `protocol` column: `h2`, else `http1`).
    pub h2: bool,
    /// The backend spoke HTTP/2 (h2c) (the `upstream_protocol` column: `h2c`, else `http1`).
    pub upstream_h2: bool,
    /// A gRPC call's grpc-status (the `grpc_status` column; empty for other requests).
    /// Set it with [`Record::set_grpc_status`].
    pub grpc_status: Option<u8>,
    /// The client's TLS version: 12, 13, or 0 for cleartext (the `tls` column:
    /// `TLSv1.2`, `TLSv1.3` or empty).
    pub tls: u8,
    /// Attempts the request took: 1, plus its retries and hedges (the `attempts` column).
    pub attempts: u8,
    path_len: u8,
    path: [u8; PATH_MAX],
    pub request_bytes: u64,
    pub response_bytes: u64,
    pub upstream_us: u64,
    pub total_us: u64,
    pub client: SocketAddr,
}

impl Record {
    #[allow(clippy::too_many_arguments)]
    pub fn new(worker: usize, client: SocketAddr, method: Method, path: &[u8]) -> Record {
        let n = path.len().min(PATH_MAX);
        let mut p = [0u8; PATH_MAX];
        p[..n].copy_from_slice(&path[..n]);
        Record {
            unix_us: 0,
            backend: None,
            status: 0,
            worker: worker as u16,
            method,
            reused: false,
            h2: false,
            upstream_h2: false,
            grpc_status: None,
            tls: 0,
            attempts: 1,
            path_len: n as u8,
            path: p,
            request_bytes: 0,
            response_bytes: 0,
            upstream_us: 0,
            total_us: 0,
            client,
        }
    }

    pub fn path(&self) -> &[u8] {
        &self.path[..self.path_len as usize]
    }

    /// Marks the record as a gRPC call that ended with `status` (codes past 255 are kept
    /// as 255; valid codes are 0..=16).
    pub fn set_grpc_status(&mut self, status: u32) {
        self.grpc_status = Some(status.min(255) as u8);
    }

    /// Stamps the record with the current wall-clock time.
    pub fn stamp(&mut self) {
        self.unix_us = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_micros() as u64);
    }
}

/// A worker's end of the log: `None` when logging is off.
#[derive(Clone)]
pub struct LogSender {
    tx: Sender<Record>,
    dropped: Arc<AtomicU64>,
}

impl LogSender {
    /// Hands a record to the logger without ever blocking; counts it if the queue is full.
    #[inline]
    pub fn send(&self, r: Record) {
        if let Err(TrySendError::Full(_)) = self.tx.try_send(r) {
            self.dropped.fetch_add(1, Relaxed);
        }
    }
}

/// The logger thread and its counters.
pub struct Logger {
    pub sender: LogSender,
    pub dropped: Arc<AtomicU64>,
    pub written: Arc<AtomicU64>,
    thread: JoinHandle<io::Result<()>>,
}

/// What the logger needs to name backends and the mode.
pub struct LogContext {
    pub path: String,
    pub mode: String,
    /// `http://ADDR` per backend index, as known at start.
    pub backend_urls: Vec<String>,
    /// `http://ADDR` of a backend slot added since start (asked once per slot, then
    /// remembered in `backend_urls`).
    pub more_urls: Option<Arc<dyn Fn(usize) -> Option<String> + Send + Sync>>,
    pub queue: usize,
}

impl LogContext {
    /// Makes sure `backend_urls` names slot `b` if it can be named.
    fn learn(&mut self, b: usize) {
        if b < self.backend_urls.len() {
            return;
        }
        if let Some(more) = &self.more_urls {
            for i in self.backend_urls.len()..=b {
                self.backend_urls.push(more(i).unwrap_or_default());
            }
        }
    }
}

impl Logger {
    /// Creates the file (with its header) and starts the logger thread.
    pub fn start(ctx: LogContext) -> io::Result<Logger> {
        let file = File::create(&ctx.path)?;
        let (tx, rx) = crossbeam_channel::bounded(ctx.queue.max(1));
        let dropped = Arc::new(AtomicU64::new(0));
        let written = Arc::new(AtomicU64::new(0));
        let w2 = written.clone();
        let thread = std::thread::Builder::new()
            .name("corelb-log".into())
            .spawn(move || write_loop(file, rx, ctx, w2))?;
        Ok(Logger {
            sender: LogSender {
                tx,
                dropped: dropped.clone(),
            },
            dropped,
            written,
            thread,
        })
    }

    /// Waits (at most `limit`) for the logger to write what is queued and flush. Every
    /// sender must be dropped first. Returns (written, dropped).
    pub fn finish(self, limit: Duration) -> Result<(u64, u64), String> {
        let Logger {
            sender,
            dropped,
            written,
            thread,
        } = self;
        drop(sender);
        let end = std::time::Instant::now() + limit;
        while !thread.is_finished() {
            if std::time::Instant::now() >= end {
                return Err(format!(
                    "CSV logger still writing after {limit:?}; {} records written",
                    written.load(Relaxed)
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        match thread.join() {
            Ok(Ok(())) => Ok((written.load(Relaxed), dropped.load(Relaxed))),
            Ok(Err(e)) => Err(format!("CSV log: {e}")),
            Err(_) => Err("CSV logger panicked".into()),
        }
    }
}

/// How long the logger sleeps between batches. Workers never wake it: a blocked receiver
/// would cost every `try_send` a futex wake-up (a syscall and a context switch per request).
const BATCH_EVERY: Duration = Duration::from_millis(20);

fn write_loop(
    file: File,
    rx: Receiver<Record>,
    mut ctx: LogContext,
    written: Arc<AtomicU64>,
) -> io::Result<()> {
    let mut w = csv::WriterBuilder::new().from_writer(BufWriter::with_capacity(256 * 1024, file));
    w.write_record(COLUMNS)?;
    w.flush()?;
    let mut field = Vec::with_capacity(64);
    let mut last_flush = std::time::Instant::now();
    loop {
        let mut n = 0u64;
        let mut open = true;
        loop {
            match rx.try_recv() {
                Ok(r) => {
                    if let Some(b) = r.backend {
                        ctx.learn(b as usize);
                    }
                    write_record(&mut w, &mut field, &r, &ctx)?;
                    n += 1;
                }
                Err(TryRecvError::Empty) => break,
                // Empty and every sender gone: the workers have stopped.
                Err(TryRecvError::Disconnected) => {
                    open = false;
                    break;
                }
            }
        }
        if n > 0 {
            written.fetch_add(n, Relaxed);
        }
        if !open {
            break;
        }
        if last_flush.elapsed() >= Duration::from_secs(1) {
            // Make what was written visible to readers (tail -f) about once a second.
            w.flush()?;
            last_flush = std::time::Instant::now();
        }
        if n == 0 {
            std::thread::sleep(BATCH_EVERY);
        }
    }
    w.flush()?;
    Ok(())
}

fn write_record<W: Write>(
    w: &mut csv::Writer<W>,
    f: &mut Vec<u8>,
    r: &Record,
    ctx: &LogContext,
) -> io::Result<()> {
    macro_rules! field {
        ($($arg:tt)*) => {{
            f.clear();
            write!(f, $($arg)*)?;
            w.write_field(&f[..])?;
        }};
    }
    field!("{}.{:06}", r.unix_us / 1_000_000, r.unix_us % 1_000_000);
    match r.backend {
        Some(b) => w.write_field(ctx.backend_urls.get(b as usize).map_or("", String::as_str))?,
        None => w.write_field("")?,
    }
    field!("{:.3}", r.total_us as f64 / 1000.0);
    field!("{}", r.status);
    w.write_field(&ctx.mode)?;
    field!("{}", r.worker);
    w.write_field(r.method_str())?;
    w.write_field(r.path())?;
    field!("{}", r.request_bytes);
    field!("{}", r.response_bytes);
    field!("{}", r.upstream_us);
    field!("{}", r.total_us);
    w.write_field(if r.reused { "1" } else { "0" })?;
    field!("{}", r.client);
    w.write_field(if r.h2 { "h2" } else { "http1" })?;
    w.write_field(if r.upstream_h2 { "h2c" } else { "http1" })?;
    match r.grpc_status {
        Some(code) => field!("{code}"),
        None => w.write_field("")?,
    }
    w.write_field(match r.tls {
        12 => "TLSv1.2",
        13 => "TLSv1.3",
        _ => "",
    })?;
    field!("{}", r.attempts);
    w.write_record(None::<&[u8]>)?;
    Ok(())
}

impl Record {
    fn method_str(&self) -> &'static str {
        match self.method {
            Method::Get => "GET",
            Method::Head => "HEAD",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
            Method::Options => "OPTIONS",
            Method::Trace => "TRACE",
            Method::Patch => "PATCH",
            Method::Connect => "CONNECT",
            Method::Other => "OTHER",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_queue_drops_and_counts_without_blocking() {
        let (tx, _rx) = crossbeam_channel::bounded(2);
        let s = LogSender {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let r = Record::new(0, "127.0.0.1:1".parse().unwrap(), Method::Get, b"/");
        for _ in 0..5 {
            s.send(r);
        }
        assert_eq!(s.dropped.load(Relaxed), 3);
    }

    #[test]
    fn rows_have_the_seed_columns_first() {
        let dir = std::env::temp_dir().join(format!("corelb-log-{}", std::process::id()));
        let path = dir.with_extension("csv");
        let logger = Logger::start(LogContext {
            path: path.to_str().unwrap().into(),
            mode: "round-robin".into(),
            backend_urls: vec!["http://127.0.0.1:8081".into()],
            more_urls: None,
            queue: 8,
        })
        .unwrap();
        let mut r = Record::new(1, "127.0.0.1:5555".parse().unwrap(), Method::Post, b"/a,b");
        r.backend = Some(0);
        r.status = 201;
        r.total_us = 1500;
        r.upstream_us = 1200;
        r.unix_us = 1_700_000_000_123_456;
        logger.sender.send(r);
        let mut g = Record::new(
            0,
            "127.0.0.1:5556".parse().unwrap(),
            Method::Post,
            b"/tts.TTS/Synthesize",
        );
        g.backend = Some(0);
        g.status = 200;
        g.h2 = true;
        g.set_grpc_status(14);
        g.tls = 13;
        g.unix_us = 1_700_000_000_223_456;
        logger.sender.send(g);
        assert_eq!(logger.finish(Duration::from_secs(5)).unwrap(), (2, 0));
        let text = std::fs::read_to_string(&path).unwrap();
        let _ = std::fs::remove_file(&path);
        let mut lines = text.lines();
        assert_eq!(lines.next().unwrap(), COLUMNS.join(","));
        assert_eq!(
            lines.next().unwrap(),
            "1700000000.123456,http://127.0.0.1:8081,1.500,201,round-robin,1,POST,\"/a,b\",0,0,1200,1500,0,127.0.0.1:5555,http1,http1,,,1"
        );
        assert_eq!(
            lines.next().unwrap(),
            "1700000000.223456,http://127.0.0.1:8081,0.000,200,round-robin,0,POST,/tts.TTS/Synthesize,0,0,0,0,0,127.0.0.1:5556,h2,http1,14,TLSv1.3,1"
        );
    }
}

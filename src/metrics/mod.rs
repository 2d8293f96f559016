//! Latency histograms: each worker records into its own HDR histograms without locks and
//! hands a copy to the aggregator thread once a second; the aggregator merges them (off the
//! hot path), keeps the live summary, and writes `.hgrm` percentile distributions and a V2
//! interval log (`.hlog`) to `--hdr-dir`.
//!
//! gRPC calls are counted the same way: each worker counts its calls by (backend, method,
//! grpc-status) in its own [`GrpcCalls`] table ([`WorkerHists::record_grpc`]), handed over
//! with the histograms and merged into the process-wide [`GrpcTotals`]. Methods are
//! bounded: at most [`GRPC_MAX_METHODS`] distinct names per worker and per process, the
//! rest counted as [`GRPC_OTHER`].

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender};
use hdrhistogram::serialization::interval_log::{IntervalLogWriterBuilder, Tag};
use hdrhistogram::serialization::V2DeflateSerializer;
use hdrhistogram::Histogram;

/// Largest latency recorded exactly, in microseconds (10 minutes); larger ones saturate.
pub const HIST_MAX_US: u64 = 600_000_000;
/// Significant digits kept by every histogram.
pub const SIGFIG: u8 = 3;
/// How often workers hand their histograms over.
pub const FLUSH_EVERY: Duration = Duration::from_secs(1);
/// Seconds of per-second request counts kept for rates.
const HISTORY: usize = 60;
/// Status codes counted one by one: 100..=599 (others count at the nearest bound).
pub const CODES: usize = 500;

/// Requests per status code, one row per backend plus a last row for answers the proxy made
/// itself (no backend).
pub type CodeCounts = Vec<[u64; CODES]>;

/// The slot of `status` in a [`CodeCounts`] row.
#[inline]
pub fn code_index(status: u16) -> usize {
    status.clamp(100, 599) as usize - 100
}

/// The status code a [`CodeCounts`] slot stands for.
pub fn code_of(index: usize) -> u16 {
    index as u16 + 100
}

fn code_counts(backends: usize) -> CodeCounts {
    vec![[0; CODES]; backends + 1]
}

/// Most distinct gRPC methods counted by name, per worker and per process.
pub const GRPC_MAX_METHODS: usize = 64;
/// Longest method name counted by name (a longer path counts as [`GRPC_OTHER`]).
pub const GRPC_METHOD_MAX_LEN: usize = 200;
/// The method name calls past the bounds are counted under.
pub const GRPC_OTHER: &str = "other";
/// Largest grpc-status counted as itself; a larger (invalid) one counts as UNKNOWN (2),
/// as gRPC clients read it.
pub const GRPC_STATUS_LAST: u32 = 16;
const GRPC_UNKNOWN: u8 = 2;

/// One worker's gRPC calls by (backend, method, status) since its last hand-over. Method
/// names are interned once per worker (an allocation the first time a method is seen, none
/// after), so counting a call allocates nothing once its key exists.
#[derive(Debug, Default, Clone)]
pub struct GrpcCalls {
    /// Method names by id; the id [`GRPC_MAX_METHODS`] is [`GRPC_OTHER`]. Kept across
    /// hand-overs, so ids stay stable.
    methods: Vec<Box<[u8]>>,
    /// Calls by (backend, method id, status).
    counts: HashMap<(u32, u8, u8), u64>,
}

impl GrpcCalls {
    /// The id of `method`, interned if there is room.
    #[inline]
    fn method_id(&mut self, method: &[u8]) -> u8 {
        if let Some(i) = self.methods.iter().position(|m| **m == *method) {
            return i as u8;
        }
        let countable = method.first() == Some(&b'/')
            && method.len() <= GRPC_METHOD_MAX_LEN
            && method != GRPC_OTHER.as_bytes();
        if !countable || self.methods.len() >= GRPC_MAX_METHODS {
            return GRPC_MAX_METHODS as u8;
        }
        self.methods.push(method.into());
        (self.methods.len() - 1) as u8
    }

    /// Counts one call.
    #[inline]
    pub fn record(&mut self, backend: usize, method: &[u8], status: u32) {
        let m = self.method_id(method);
        let status = if status <= GRPC_STATUS_LAST {
            status as u8
        } else {
            GRPC_UNKNOWN
        };
        *self.counts.entry((backend as u32, m, status)).or_insert(0) += 1;
    }

    /// A method id's name.
    fn name(&self, id: u8) -> &[u8] {
        self.methods
            .get(id as usize)
            .map_or(GRPC_OTHER.as_bytes(), |m| &m[..])
    }

    /// Calls counted since the last [`GrpcCalls::take`].
    pub fn is_empty(&self) -> bool {
        self.counts.is_empty()
    }

    /// Copies the interval's counts out (with the names they need) and starts a new one.
    fn take(&mut self) -> GrpcCalls {
        if self.counts.is_empty() {
            return GrpcCalls::default();
        }
        GrpcCalls {
            methods: self.methods.clone(),
            counts: std::mem::take(&mut self.counts),
        }
    }

    /// (backend, method, status, calls) for every count.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &[u8], u32, u64)> + '_ {
        self.counts
            .iter()
            .map(|(&(b, m, s), &n)| (b as usize, self.name(m), s as u32, n))
    }
}

/// gRPC calls since start by backend, method and status, merged over workers (the
/// aggregator's side; not on the hot path). At most [`GRPC_MAX_METHODS`] method names,
/// the rest under [`GRPC_OTHER`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct GrpcTotals {
    methods: Vec<String>,
    /// Calls by (backend, method index or `GRPC_MAX_METHODS` for other, status).
    counts: BTreeMap<(usize, usize, u32), u64>,
}

impl GrpcTotals {
    fn method_index(&mut self, name: &[u8]) -> usize {
        let name = String::from_utf8_lossy(name);
        if name == GRPC_OTHER {
            return GRPC_MAX_METHODS;
        }
        if let Some(i) = self.methods.iter().position(|m| *m == name) {
            return i;
        }
        if self.methods.len() >= GRPC_MAX_METHODS {
            return GRPC_MAX_METHODS;
        }
        self.methods.push(name.into_owned());
        self.methods.len() - 1
    }

    /// Adds one worker's interval.
    pub fn add(&mut self, calls: &GrpcCalls) {
        for (backend, method, status, n) in calls.rows() {
            let m = self.method_index(method);
            *self.counts.entry((backend, m, status)).or_insert(0) += n;
        }
    }

    /// Every count as (backend, method, status, calls), by backend, method and status.
    pub fn rows(&self) -> impl Iterator<Item = (usize, &str, u32, u64)> + '_ {
        self.counts.iter().map(|(&(b, m, s), &n)| {
            let name = self.methods.get(m).map_or(GRPC_OTHER, String::as_str);
            (b, name, s, n)
        })
    }

    /// Distinct method names counted (without `other`).
    pub fn methods(&self) -> usize {
        self.methods.len()
    }
}

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, SIGFIG).expect("static bounds are valid")
}

/// A backend's name by its slot index (`None`: no such backend). Backends are added while
/// the proxy runs, so dumps look names up when they write.
pub type Names = Arc<dyn Fn(usize) -> Option<String> + Send + Sync>;

/// Empties `h` (a histogram is 160 KiB: an empty one is left as it is).
fn reset(h: &mut Histogram<u64>) {
    if !h.is_empty() {
        h.reset();
    }
}

/// Adds `from` (a worker's, no longer needed) into `acc`: an empty `acc` takes it whole,
/// without a copy.
fn merge(acc: &mut Histogram<u64>, from: &mut Histogram<u64>) {
    if acc.is_empty() {
        std::mem::swap(acc, from);
    } else {
        let _ = acc.add(&*from);
    }
}

/// Makes `v` at least `n` histograms long (a backend added since start).
fn grow(v: &mut Vec<Histogram<u64>>, n: usize) {
    if v.len() < n {
        v.resize_with(n, histogram);
    }
}

/// One worker's histograms since its last hand-over.
pub struct WorkerHists {
    pub total: Histogram<u64>,
    /// Per backend slot, grown when a slot first records (a histogram is 160 KiB: the
    /// slots of servers never used cost nothing).
    pub backends: Vec<Histogram<u64>>,
    /// Backend slots in all; `codes` has a row each plus the last for local answers.
    slots: usize,
    pub requests: u64,
    /// Responses with a 5xx status or broken off.
    pub errors: u64,
    /// Responses per backend (last row: none) and status code.
    pub codes: CodeCounts,
    /// gRPC calls by backend, method and status.
    pub grpc: GrpcCalls,
    next_flush: Instant,
}

/// What a worker hands over: its histograms for the last interval.
pub struct Snapshot {
    pub worker: usize,
    pub total: Histogram<u64>,
    pub backends: Vec<Histogram<u64>>,
    pub requests: u64,
    pub errors: u64,
    pub codes: CodeCounts,
    pub grpc: GrpcCalls,
}

impl WorkerHists {
    /// Histograms for up to `backends` backend slots.
    pub fn new(backends: usize) -> WorkerHists {
        WorkerHists {
            total: histogram(),
            backends: Vec::new(),
            slots: backends,
            requests: 0,
            errors: 0,
            codes: code_counts(backends),
            grpc: GrpcCalls::default(),
            next_flush: Instant::now() + FLUSH_EVERY,
        }
    }

    /// Counts one gRPC call that ended on `backend`: `method` is the request's `:path`
    /// (`/tts.TTS/Synthesize`), `status` its grpc-status (from the trailers, or the one
    /// corelb answered with). The call's latency and HTTP status are recorded separately,
    /// by [`WorkerHists::record`]. Allocates nothing once the method was seen (at most
    /// [`GRPC_MAX_METHODS`] names; others count as `other`).
    #[inline]
    pub fn record_grpc(&mut self, backend: usize, method: &[u8], status: u32) {
        self.grpc.record(backend, method, status);
    }

    /// Records one finished request: its total latency and status, and its upstream latency
    /// on the backend that served it (`None`: the proxy answered itself).
    #[inline]
    pub fn record(
        &mut self,
        backend: Option<usize>,
        status: u16,
        upstream_us: u64,
        total_us: u64,
        error: bool,
    ) {
        self.total.saturating_record(total_us.max(1));
        let local = self.slots;
        let row = match backend {
            Some(b) if b < local => {
                if b >= self.backends.len() {
                    // Once per backend slot and worker, never again.
                    grow(&mut self.backends, b + 1);
                }
                self.backends[b].saturating_record(upstream_us.max(1));
                b
            }
            _ => local,
        };
        self.codes[row][code_index(status)] += 1;
        self.requests += 1;
        self.errors += error as u64;
    }

    /// True once a second: time to hand over.
    #[inline]
    pub fn due(&self, now: Instant) -> bool {
        now >= self.next_flush
    }

    /// Hands the interval over and starts a new one in empty histograms: ones the
    /// aggregator sent back on `spares`, or new ones (no 160 KiB copy either way).
    pub fn take(
        &mut self,
        worker: usize,
        now: Instant,
        spares: &Receiver<Histogram<u64>>,
    ) -> Snapshot {
        self.next_flush = now + FLUSH_EVERY;
        let fresh = || spares.try_recv().unwrap_or_else(|_| histogram());
        let total = std::mem::replace(&mut self.total, fresh());
        let backends = self
            .backends
            .iter_mut()
            .map(|h| std::mem::replace(h, fresh()))
            .collect();
        let snap = Snapshot {
            worker,
            total,
            backends,
            requests: self.requests,
            errors: self.errors,
            codes: std::mem::replace(&mut self.codes, code_counts(self.slots)),
            grpc: self.grpc.take(),
        };
        self.requests = 0;
        self.errors = 0;
        snap
    }
}

/// Live latency and rate summary, read by the admin side.
pub struct Summary {
    pub since_start_total: Histogram<u64>,
    pub since_start_backends: Vec<Histogram<u64>>,
    /// The last complete one-second interval, merged over workers.
    pub last_total: Histogram<u64>,
    pub last_backends: Vec<Histogram<u64>>,
    /// Requests completed per second, oldest first, newest last.
    pub per_second: std::collections::VecDeque<u64>,
    pub errors_per_second: std::collections::VecDeque<u64>,
    /// Responses since start per backend (last row: answered by the proxy) and status code.
    pub codes: CodeCounts,
    /// gRPC calls since start by backend, method and status.
    pub grpc: GrpcTotals,
}

impl Summary {
    /// The summary for up to `backends` backend slots (histograms grow as slots record).
    pub fn new(backends: usize) -> Summary {
        Summary {
            since_start_total: histogram(),
            since_start_backends: Vec::new(),
            last_total: histogram(),
            last_backends: Vec::new(),
            per_second: Default::default(),
            errors_per_second: Default::default(),
            codes: code_counts(backends),
            grpc: GrpcTotals::default(),
        }
    }

    /// Mean requests per second over the last `secs` complete seconds.
    pub fn rps(&self, secs: usize) -> f64 {
        let n = secs.min(self.per_second.len());
        if n == 0 {
            return 0.0;
        }
        self.per_second.iter().rev().take(n).sum::<u64>() as f64 / n as f64
    }
}

/// Where dumps go and what they are called.
#[derive(Clone)]
pub struct DumpConfig {
    pub dir: PathBuf,
    /// `<mode>_<upstream>`, the prefix of every dump file.
    pub prefix: String,
    /// Each backend slot's name.
    pub backend_names: Names,
    /// Also dump every this often (hgrm rewritten, an hlog interval written).
    pub interval: Option<Duration>,
}

/// The aggregator thread.
/// A worker's ends of the hand-over: its snapshots go out on `tx`; emptied histograms
/// come back on `spares`, so a hand-over moves histograms instead of copying them.
#[derive(Clone)]
pub struct Handover {
    pub tx: Sender<Snapshot>,
    pub spares: Receiver<Histogram<u64>>,
}

pub struct Aggregator {
    pub tx: Sender<Snapshot>,
    pub spares: Receiver<Histogram<u64>>,
    pub summary: Arc<Mutex<Summary>>,
    thread: JoinHandle<io::Result<Vec<PathBuf>>>,
}

impl Aggregator {
    pub fn start(backends: usize, dump: Option<DumpConfig>) -> io::Result<Aggregator> {
        if let Some(d) = &dump {
            std::fs::create_dir_all(&d.dir)?;
        }
        // Room for several seconds of hand-overs from many workers.
        let (tx, rx) = crossbeam_channel::bounded(1024);
        // Emptied histograms on their way back to the workers (more are made as needed).
        let (spare_tx, spares) = crossbeam_channel::bounded(64);
        let summary = Arc::new(Mutex::new(Summary::new(backends)));
        let s2 = summary.clone();
        let thread = std::thread::Builder::new()
            .name("corelb-metrics".into())
            .spawn(move || aggregate(rx, spare_tx, s2, backends, dump))?;
        Ok(Aggregator {
            tx,
            spares,
            summary,
            thread,
        })
    }

    /// A worker's ends of the hand-over.
    pub fn handover(&self) -> Handover {
        Handover {
            tx: self.tx.clone(),
            spares: self.spares.clone(),
        }
    }

    /// Waits for the aggregator to take the workers' last hand-overs and write the final
    /// dumps. Every sender must be dropped first. Returns the files written.
    pub fn finish(self) -> io::Result<Vec<PathBuf>> {
        drop(self.tx);
        self.thread
            .join()
            .unwrap_or_else(|_| Err(io::Error::other("metrics thread panicked")))
    }
}

fn unix_now() -> Duration {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
}

fn aggregate(
    rx: Receiver<Snapshot>,
    spares: Sender<Histogram<u64>>,
    summary: Arc<Mutex<Summary>>,
    backends: usize,
    dump: Option<DumpConfig>,
) -> io::Result<Vec<PathBuf>> {
    let started_unix = unix_now();
    // Accumulators for the current one-second interval and the current dump interval.
    let mut sec_total = histogram();
    let mut sec_backends: Vec<Histogram<u64>> = Vec::new();
    let (mut sec_requests, mut sec_errors) = (0u64, 0u64);
    let mut sec_codes = code_counts(backends);
    let mut sec_grpc: Vec<GrpcCalls> = Vec::new();
    let mut win_total = histogram();
    let mut win_backends: Vec<Histogram<u64>> = Vec::new();
    let mut win_start = Instant::now();
    let mut win_start_unix = started_unix;
    let dump_every = dump
        .as_ref()
        .and_then(|d| d.interval)
        .unwrap_or(FLUSH_EVERY);

    let mut hlog = match &dump {
        Some(d) => {
            let path = d.dir.join(format!("{}.hlog", d.prefix));
            Some((BufWriter::new(File::create(&path)?), path))
        }
        None => None,
    };
    let mut serializer = V2DeflateSerializer::new();
    let mut written = Vec::new();
    let mut hlog_writer = match hlog.as_mut() {
        Some((w, path)) => {
            written.push(path.clone());
            let mut b = IntervalLogWriterBuilder::new();
            b.add_comment("corelb latency histograms, values in microseconds")
                .with_start_time(SystemTime::now())
                .with_base_time(SystemTime::now())
                .with_max_value_divisor(1000.0);
            Some(b.begin_log_with(w, &mut serializer)?)
        }
        None => None,
    };

    let mut next_sec = Instant::now() + FLUSH_EVERY;
    let mut open = true;
    while open {
        let wait = next_sec.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(mut s) => {
                merge(&mut sec_total, &mut s.total);
                grow(&mut sec_backends, s.backends.len());
                for (acc, h) in sec_backends.iter_mut().zip(&mut s.backends) {
                    merge(acc, h);
                }
                // What the worker sent is spent: emptied, it goes back for a later one.
                for mut h in std::iter::once(s.total).chain(s.backends) {
                    reset(&mut h);
                    let _ = spares.try_send(h);
                }
                sec_requests += s.requests;
                sec_errors += s.errors;
                add_codes(&mut sec_codes, &s.codes);
                if !s.grpc.is_empty() {
                    sec_grpc.push(s.grpc);
                }
                continue;
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        // A second is over (or everyone is gone): publish it.
        next_sec = Instant::now() + FLUSH_EVERY;
        // The dump window (kept only when dumps are written) takes the second first.
        if dump.is_some() {
            let _ = win_total.add(&sec_total);
            grow(&mut win_backends, sec_backends.len());
            for (acc, h) in win_backends.iter_mut().zip(&sec_backends) {
                let _ = acc.add(h);
            }
        }
        {
            let mut sum = summary.lock().unwrap_or_else(|e| e.into_inner());
            let _ = sum.since_start_total.add(&sec_total);
            grow(&mut sum.since_start_backends, sec_backends.len());
            for (acc, h) in sum.since_start_backends.iter_mut().zip(&sec_backends) {
                let _ = acc.add(h);
            }
            // The second's histograms become the last second's; the previous ones, reset
            // below, gather the next second (no copy of 160 KiB each).
            std::mem::swap(&mut sum.last_total, &mut sec_total);
            std::mem::swap(&mut sum.last_backends, &mut sec_backends);
            add_codes(&mut sum.codes, &sec_codes);
            for calls in sec_grpc.drain(..) {
                sum.grpc.add(&calls);
            }
            sum.per_second.push_back(sec_requests);
            sum.errors_per_second.push_back(sec_errors);
            while sum.per_second.len() > HISTORY {
                sum.per_second.pop_front();
                sum.errors_per_second.pop_front();
            }
        }
        reset(&mut sec_total);
        sec_backends.iter_mut().for_each(reset);
        sec_requests = 0;
        sec_errors = 0;
        sec_codes.iter_mut().for_each(|row| row.fill(0));

        let window_over = win_start.elapsed() >= dump_every;
        if let (Some(d), true) = (&dump, window_over || !open) {
            if let Some(w) = hlog_writer.as_mut() {
                let start = win_start_unix.saturating_sub(started_unix);
                let len = win_start.elapsed();
                let names = &d.backend_names;
                let tagged = std::iter::once(("total".to_string(), &win_total)).chain(
                    win_backends
                        .iter()
                        .enumerate()
                        .filter_map(|(i, h)| Some((format!("backend-{}", safe(&names(i)?)), h))),
                );
                for (tag, h) in tagged {
                    w.write_histogram(h, start, len, Tag::new(&tag))
                        .map_err(|e| io::Error::other(format!("{e:?}")))?;
                }
            }
            reset(&mut win_total);
            win_backends.iter_mut().for_each(reset);
            win_start = Instant::now();
            win_start_unix = unix_now();
            // Periodic (and final) percentile distributions, since start.
            if d.interval.is_some() || !open {
                let sum = summary.lock().unwrap_or_else(|e| e.into_inner());
                let files = write_hgrms(d, &sum)?;
                if !open {
                    written.extend(files);
                }
            }
        }
    }
    drop(hlog_writer);
    if let Some((mut w, _)) = hlog {
        w.flush()?;
    }
    Ok(written)
}

fn add_codes(acc: &mut CodeCounts, more: &CodeCounts) {
    for (a, m) in acc.iter_mut().zip(more) {
        for (x, y) in a.iter_mut().zip(m) {
            *x += y;
        }
    }
}

/// Backend names as they appear in file names and tags.
fn safe(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.@".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_hgrms(d: &DumpConfig, sum: &Summary) -> io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    let total = d.dir.join(format!("{}_total.hgrm", d.prefix));
    write_hgrm(&total, &sum.since_start_total)?;
    files.push(total);
    let named = (sum.since_start_backends.iter().enumerate())
        .filter_map(|(i, h)| Some(((d.backend_names)(i)?, h)));
    for (name, h) in named {
        let p = d
            .dir
            .join(format!("{}_backend-{}.hgrm", d.prefix, safe(&name)));
        write_hgrm(&p, h)?;
        files.push(p);
    }
    Ok(files)
}

/// Writes `h` (microseconds) as HdrHistogram's percentile distribution text, values in
/// milliseconds: the format HdrHistogram's plotter reads.
pub fn write_hgrm(path: &Path, h: &Histogram<u64>) -> io::Result<()> {
    let tmp = path.with_extension("hgrm.tmp");
    let mut w = BufWriter::new(File::create(&tmp)?);
    write_percentiles(&mut w, h)?;
    w.flush()?;
    drop(w);
    std::fs::rename(&tmp, path)
}

pub fn write_percentiles<W: Write>(w: &mut W, h: &Histogram<u64>) -> io::Result<()> {
    const SCALE: f64 = 1000.0;
    writeln!(
        w,
        "{:>12} {:>14} {:>10} {:>14}\n",
        "Value", "Percentile", "TotalCount", "1/(1-Percentile)"
    )?;
    let mut total = 0u64;
    if !h.is_empty() {
        for v in h.iter_quantiles(5) {
            total += v.count_since_last_iteration();
            let q = v.quantile_iterated_to();
            let value = v.value_iterated_to() as f64 / SCALE;
            if q < 1.0 {
                writeln!(
                    w,
                    "{value:12.3} {q:2.12} {total:10} {:14.2}",
                    1.0 / (1.0 - q)
                )?;
            } else {
                writeln!(w, "{value:12.3} {q:2.12} {total:10}")?;
            }
        }
    }
    writeln!(
        w,
        "#[Mean    = {:12.3}, StdDeviation   = {:12.3}]",
        h.mean() / SCALE,
        h.stdev() / SCALE
    )?;
    writeln!(
        w,
        "#[Max     = {:12.3}, Total count    = {:12}]",
        h.max() as f64 / SCALE,
        h.len()
    )?;
    // Sub-buckets per bucket: the power of two covering 2 * 10^sigfig (2048 for 3 digits).
    let sub_buckets = (2.0 * 10f64.powi(h.sigfig() as i32)).log2().ceil().exp2() as u64;
    writeln!(
        w,
        "#[Buckets = {:12}, SubBuckets     = {:12}]",
        h.buckets(),
        sub_buckets
    )?;
    Ok(())
}

#[cfg(test)]
mod tests;

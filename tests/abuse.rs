//! Load and abuse against the real binaries, bounded in count and time, on loopback only:
//! many concurrent keep-alive clients on one worker, slowloris against the head timeout,
//! and clients that reset mid-request. Each checks through `/stats` that connections,
//! upstream connections and buffers return to their baseline (no leak).
//!
//! Sizes default to the full scenario and can be lowered with `ABUSE_CLIENTS`,
//! `ABUSE_SLOWLORIS`, `ABUSE_RESETS`; every test prints an `ABUSE <name> key=value...`
//! line of figures (`bench/abuse.py` runs them and collects those lines).

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Barrier, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

/// The scenarios share the machine's fds and CPU: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// `var` from the environment, else `default`.
fn size(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Raises this process's fd limit to the hard limit (children inherit it); returns it.
fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
    }
    lim.rlim_cur
}

/// The gauges of `/stats` totals this file watches.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Gauges {
    active: u64,
    up_open: u64,
    up_idle: u64,
    bufs: u64,
    panics: u64,
}

impl Gauges {
    fn of(admin: SocketAddr) -> Gauges {
        let v: Value = serde_json::from_slice(&get(admin, "/stats").body).expect("stats JSON");
        let t = &v["totals"];
        let n = |k: &str| t[k].as_u64().unwrap_or_else(|| panic!("totals.{k} in {t}"));
        Gauges {
            active: n("active_connections"),
            up_open: n("upstream_connections_open"),
            up_idle: n("upstream_connections_idle"),
            bufs: n("buffers_in_use"),
            panics: n("panics"),
        }
    }

    /// Upstream connections with an exchange on them.
    fn up_busy(&self) -> u64 {
        self.up_open - self.up_idle
    }
}

/// Waits up to 15 s for the gauges to satisfy `ok`; returns the last reading and whether.
fn settle(admin: SocketAddr, ok: impl Fn(&Gauges) -> bool) -> (Gauges, bool) {
    let mut g = Gauges::of(admin);
    let done = eventually(Duration::from_secs(15), || {
        g = Gauges::of(admin);
        ok(&g)
    });
    (g, done)
}

/// Reads one response with a Content-Length body; `Err` on any failure (never panics).
fn read_one(s: &mut TcpStream, pending: &mut Vec<u8>) -> Result<u16, String> {
    let mut buf = [0u8; 8192];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(pending) {
            let code = r.code.unwrap_or(0);
            let len: usize = r
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                .and_then(|h| std::str::from_utf8(h.value).ok()?.trim().parse().ok())
                .ok_or("no Content-Length")?;
            while pending.len() < n + len {
                match s.read(&mut buf) {
                    Ok(0) => return Err("EOF in body".into()),
                    Ok(k) => pending.extend_from_slice(&buf[..k]),
                    Err(e) => return Err(e.to_string()),
                }
            }
            pending.drain(..n + len);
            return Ok(code);
        }
        match s.read(&mut buf) {
            Ok(0) => return Err("EOF before head".into()),
            Ok(k) => pending.extend_from_slice(&buf[..k]),
            Err(e) => return Err(e.to_string()),
        }
    }
}

fn percentile(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v.get(((v.len() as f64 * p).ceil() as usize).saturating_sub(1))
        .copied()
        .unwrap_or_default()
}

/// Clients per driving thread in `many_keepalive_clients_on_one_worker`.
const PER_THREAD: usize = 500;
/// Requests a driving thread has in flight at once (bounds corelb's upstream fds).
const WINDOW: usize = 25;

/// One driving thread's tally.
#[derive(Default)]
struct Tally {
    connected: usize,
    ok: usize,
    errors: usize,
    first_error: Option<String>,
}

impl Tally {
    fn error(&mut self, e: String) {
        self.errors += 1;
        self.first_error.get_or_insert(e);
    }
}

/// Connects `n` clients, waits at `held`, makes `rounds` requests on each (`WINDOW` in
/// flight at once), waits at `done` and `close`, then closes them. Never panics (the
/// barriers must be reached), and gives up on requests after `limit`.
fn drive(
    addr: SocketAddr,
    n: usize,
    rounds: usize,
    barriers: [Arc<Barrier>; 3],
    limit: Instant,
) -> Tally {
    let mut t = Tally::default();
    let mut socks: Vec<(TcpStream, Vec<u8>)> = Vec::with_capacity(n);
    for _ in 0..n {
        match TcpStream::connect(addr) {
            Ok(s) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
                socks.push((s, Vec::new()));
            }
            Err(e) => t.error(format!("connect: {e}")),
        }
    }
    t.connected = socks.len();
    barriers[0].wait();
    let req = b"GET / HTTP/1.1\r\nHost: abuse\r\n\r\n";
    for _ in 0..rounds {
        for chunk in socks.chunks_mut(WINDOW) {
            let mut sent = Vec::with_capacity(chunk.len());
            for (s, _) in chunk.iter_mut() {
                sent.push(Instant::now() < limit && s.write_all(req).is_ok());
            }
            for ((s, pending), sent) in chunk.iter_mut().zip(sent) {
                if !sent {
                    t.error("not sent (write failed or out of time)".into());
                    continue;
                }
                match read_one(s, pending) {
                    Ok(200) => t.ok += 1,
                    Ok(code) => t.error(format!("status {code}")),
                    Err(e) => t.error(e),
                }
            }
        }
    }
    barriers[1].wait();
    barriers[2].wait();
    drop(socks);
    t
}

#[test]
fn many_keepalive_clients_on_one_worker() {
    let _one = serial();
    let hard = raise_nofile() as usize;
    // Each client is one fd here and one in corelb, which also holds up to one upstream
    // fd per request in flight (threads * WINDOW); keep 1000 fds spare on both sides.
    let want = size("ABUSE_CLIENTS", 10_000);
    let threads_max = want.div_ceil(PER_THREAD);
    let n = want.min(hard.saturating_sub(threads_max * WINDOW + 1000));
    assert!(n >= 500, "fd hard limit {hard} is too low for this test");
    let rounds = 3;
    let threads = n.div_ceil(PER_THREAD);
    let b = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&b],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--client-timeout",
            "30s",
        ],
    );
    let admin = p.admin.unwrap();
    assert_eq!(get(p.addr, "/").status, 200);
    let (base, _) = settle(admin, |g| g.active == 0 && g.up_busy() == 0);

    let started = Instant::now();
    let limit = started + Duration::from_secs(40);
    let barriers: [Arc<Barrier>; 3] = std::array::from_fn(|_| Arc::new(Barrier::new(threads + 1)));
    let addr = p.addr;
    let handles: Vec<_> = (0..threads)
        .map(|i| {
            let k = PER_THREAD.min(n - i * PER_THREAD);
            let bs = barriers.clone();
            std::thread::spawn(move || drive(addr, k, rounds, bs, limit))
        })
        .collect();
    // All connected: every client is held open at once.
    barriers[0].wait();
    let connected_in = started.elapsed();
    let (held, all_held) = settle(admin, |g| g.active >= n as u64);
    // All requests answered, the connections still open.
    barriers[1].wait();
    let requests_in = started.elapsed() - connected_in;
    let still = Gauges::of(admin);
    barriers[2].wait();
    let mut t = Tally::default();
    for h in handles {
        let r = h.join().expect("driver thread");
        t.connected += r.connected;
        t.ok += r.ok;
        t.errors += r.errors;
        t.first_error = t.first_error.or(r.first_error);
    }
    let (after, back) = settle(admin, |g| {
        g.active == base.active && g.up_busy() == 0 && g.bufs == base.bufs
    });
    eprintln!(
        "ABUSE many_clients fd_hard={hard} clients={n} threads={threads} rounds={rounds} \
         connected={} held_peak={} held_after_requests={} ok={} errors={} first_error={:?} \
         connect_s={:.2} requests_s={:.2} rps={:.0} before={base:?} after={after:?}",
        t.connected,
        held.active,
        still.active,
        t.ok,
        t.errors,
        t.first_error,
        connected_in.as_secs_f64(),
        requests_in.as_secs_f64(),
        t.ok as f64 / requests_in.as_secs_f64(),
    );
    assert_eq!(t.connected, n, "every client connected");
    assert!(all_held, "corelb held {} of {n} clients", held.active);
    assert_eq!(
        still.active, n as u64,
        "all kept alive through the requests"
    );
    assert_eq!(t.errors, 0, "first error: {:?}", t.first_error);
    assert_eq!(t.ok, n * rounds, "every request got a 200");
    assert!(back, "gauges back to baseline {base:?}: {after:?}");
    assert_eq!(after.panics, 0);
}

/// GETs on one keep-alive connection every `gap` for `dur`; their latencies.
fn probe(addr: SocketAddr, dur: Duration, gap: Duration) -> (Vec<Duration>, usize) {
    let mut lat = Vec::new();
    let mut errors = 0;
    let mut conn: Option<(TcpStream, Vec<u8>)> = None;
    let end = Instant::now() + dur;
    while Instant::now() < end {
        let (s, pending) = conn.get_or_insert_with(|| (connect(addr), Vec::new()));
        let t0 = Instant::now();
        let ok = s
            .write_all(b"GET / HTTP/1.1\r\nHost: probe\r\n\r\n")
            .is_ok()
            && read_one(s, pending) == Ok(200);
        if ok {
            lat.push(t0.elapsed());
        } else {
            errors += 1;
            conn = None;
        }
        std::thread::sleep(gap);
    }
    (lat, errors)
}

/// What became of a slowloris connection.
#[derive(Default, Debug)]
struct Outcomes {
    got_408: usize,
    closed: usize,
    open: usize,
}

/// Reads what a non-blocking slowloris connection has received; true (and counted in
/// `out`) once it has a whole 408 head, or was closed or reset.
fn ended((s, got): &mut (TcpStream, Vec<u8>), out: &mut Outcomes) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        let is_408 = got.starts_with(b"HTTP/1.1 408");
        match s.read(&mut buf) {
            Ok(k) if k > 0 => got.extend_from_slice(&buf[..k]),
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                let whole = is_408 && got.windows(4).any(|w| w == b"\r\n\r\n");
                out.got_408 += usize::from(whole);
                return whole;
            }
            // EOF or reset.
            _ => {
                if is_408 {
                    out.got_408 += 1;
                } else {
                    out.closed += 1;
                }
                return true;
            }
        }
    }
}

/// Opens `n` connections and sends each one byte of a request head per second, spread
/// over the second, for `dur`; then sees how each ended (408, closed, or still open).
fn slowloris(addr: SocketAddr, n: usize, dur: Duration) -> Outcomes {
    let head = b"GET /slowloris HTTP/1.1\r\nHost: abuse\r\nX-Slow: zzzzzzzzzzzzzzzzzzzzzzzz";
    let mut socks: Vec<Option<(TcpStream, Vec<u8>)>> = (0..n)
        .map(|_| {
            let s = TcpStream::connect(addr).ok()?;
            s.set_nonblocking(true).ok()?;
            Some((s, Vec::new()))
        })
        .collect();
    let mut out = Outcomes::default();
    let start = Instant::now();
    let slices = 50;
    let mut second = 0;
    while start.elapsed() < dur {
        let byte = &head[second % head.len()..][..1];
        for slice in 0..slices {
            for s in socks.iter_mut().skip(slice).step_by(slices) {
                if let Some(conn) = s {
                    // Answered or closed by corelb: stop writing, close as a client would.
                    if ended(conn, &mut out) {
                        *s = None;
                    } else if conn.0.write(byte).is_err() {
                        if !ended(conn, &mut out) {
                            out.closed += 1;
                        }
                        *s = None;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(1000 / slices as u64));
        }
        second += 1;
    }
    // Whatever corelb sent is in the socket buffers by now; allow 5 s for stragglers.
    let end = Instant::now() + Duration::from_secs(5);
    let mut left: Vec<(TcpStream, Vec<u8>)> = socks.into_iter().flatten().collect();
    while !left.is_empty() && Instant::now() < end {
        left.retain_mut(|conn| !ended(conn, &mut out));
        std::thread::sleep(Duration::from_millis(50));
    }
    out.open = left.len();
    out
}

#[test]
fn slowloris_is_timed_out_and_normal_latency_holds() {
    let _one = serial();
    raise_nofile();
    let n = size("ABUSE_SLOWLORIS", 2000);
    let b = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&b],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--client-timeout",
            "3s",
        ],
    );
    let admin = p.admin.unwrap();
    assert_eq!(get(p.addr, "/").status, 200);
    let (base, _) = settle(admin, |g| g.active == 0 && g.up_busy() == 0);
    let gap = Duration::from_millis(2);
    let (mut calm, calm_errors) = probe(p.addr, Duration::from_secs(2), gap);

    let addr = p.addr;
    let attack = std::thread::spawn(move || slowloris(addr, n, Duration::from_secs(6)));
    let mid = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(2000));
        Gauges::of(admin)
    });
    let (mut loaded, loaded_errors) = probe(p.addr, Duration::from_millis(5500), gap);
    let out = attack.join().expect("slowloris thread");
    let mid = mid.join().expect("stats thread");
    let (after, back) = settle(admin, |g| {
        g.active == base.active && g.up_busy() == 0 && g.bufs == base.bufs
    });
    let p99_calm = percentile(&mut calm, 0.99);
    let p99_loaded = percentile(&mut loaded, 0.99);
    let floor = Duration::from_millis(5);
    eprintln!(
        "ABUSE slowloris connections={n} held_at_2s={} outcomes={out:?} probes_calm={} \
         probes_loaded={} probe_errors={} p50_calm_ms={:.3} p99_calm_ms={:.3} \
         p50_loaded_ms={:.3} p99_loaded_ms={:.3} before={base:?} after={after:?}",
        mid.active,
        calm.len(),
        loaded.len(),
        calm_errors + loaded_errors,
        percentile(&mut calm, 0.5).as_secs_f64() * 1e3,
        p99_calm.as_secs_f64() * 1e3,
        percentile(&mut loaded, 0.5).as_secs_f64() * 1e3,
        p99_loaded.as_secs_f64() * 1e3,
    );
    assert!(
        mid.active >= n as u64 / 2,
        "the attack held connections: {mid:?}"
    );
    assert_eq!(calm_errors + loaded_errors, 0, "normal GETs all answered");
    assert!(
        p99_loaded <= 2 * p99_calm.max(floor),
        "p99 under slowloris {p99_loaded:?} vs {p99_calm:?} before"
    );
    assert_eq!(out.open, 0, "every slowloris connection timed out: {out:?}");
    assert!(out.got_408 > 0, "the head timeout answers 408: {out:?}");
    assert!(back, "gauges back to baseline {base:?}: {after:?}");
    assert_eq!(after.panics, 0);
}

/// Sets SO_LINGER 0 and drops `s`: the kernel sends a reset instead of a FIN.
fn reset(s: TcpStream) {
    let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
    drop(s);
}

/// A partial request of kind `i % 5`: part of a head; a head and part of a body to /echo
/// or /sink; or a whole request whose response is slow or large (exchange in flight).
fn partial(i: usize) -> Vec<u8> {
    let body = |n: usize| vec![b'x'; n];
    match i % 5 {
        0 => b"GET / HTTP/1.1\r\nHost: abuse\r\nX-Half: ".to_vec(),
        1 => [
            &b"POST /echo HTTP/1.1\r\nHost: abuse\r\nContent-Length: 65536\r\n\r\n"[..],
            &body(4096),
        ]
        .concat(),
        2 => [
            &b"POST /sink HTTP/1.1\r\nHost: abuse\r\nContent-Length: 1048576\r\n\r\n"[..],
            &body(32768),
        ]
        .concat(),
        3 => b"GET /delay/300 HTTP/1.1\r\nHost: abuse\r\n\r\n".to_vec(),
        _ => b"GET /bytes/1048576 HTTP/1.1\r\nHost: abuse\r\n\r\n".to_vec(),
    }
}

#[test]
fn resets_mid_request_leak_nothing() {
    let _one = serial();
    raise_nofile();
    let n = size("ABUSE_RESETS", 1000);
    let b = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&b],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--pool-idle-timeout",
            "1s",
        ],
    );
    let admin = p.admin.unwrap();
    assert_eq!(get(p.addr, "/").status, 200);
    let (base, _) = settle(admin, |g| g.active == 0 && g.up_open == 0);

    let mut socks = Vec::with_capacity(n);
    let mut errors = 0;
    for i in 0..n {
        match TcpStream::connect(p.addr) {
            Ok(mut s) => {
                if s.write_all(&partial(i)).is_err() {
                    errors += 1;
                }
                socks.push((i, s));
            }
            Err(_) => errors += 1,
        }
    }
    // Half reset at once, the other half once their exchanges are under way.
    let (now, later): (Vec<_>, Vec<_>) = socks.into_iter().partition(|(i, _)| i % 2 == 0);
    now.into_iter().for_each(|(_, s)| reset(s));
    std::thread::sleep(Duration::from_millis(150));
    let mid = Gauges::of(admin);
    later.into_iter().for_each(|(_, s)| reset(s));
    let t0 = Instant::now();
    let (after, back) = settle(admin, |g| {
        g.active == base.active && g.up_busy() == 0 && g.bufs == base.bufs
    });
    let settled_in = t0.elapsed();
    // The pools keep what was reusable until their idle timeout (1 s), then nothing.
    let (drained, drained_ok) = settle(admin, |g| g.up_open == 0);
    let still = get(p.addr, "/").status;
    eprintln!(
        "ABUSE resets clients={n} connect_or_write_errors={errors} mid={mid:?} \
         before={base:?} after={after:?} settled_s={:.2} pools_after_idle={drained:?} \
         then_get={still}",
        settled_in.as_secs_f64()
    );
    assert_eq!(errors, 0, "connects and partial writes");
    assert!(
        mid.up_busy() > 0 && mid.bufs > 0,
        "exchanges were in flight at the second wave: {mid:?}"
    );
    assert!(back, "gauges back to baseline {base:?}: {after:?}");
    assert!(drained_ok, "idle pool emptied: {drained:?}");
    assert_eq!(still, 200, "the worker still serves");
    assert_eq!(after.panics, 0);
}

/// One connection's HTTP/2 reset flood: waves of 100 streams that make corelb reset them
/// (MadeYouReset: a WINDOW_UPDATE of 0, DATA after END_STREAM) or that the client resets
/// itself (rapid reset), until GOAWAY or `max` streams. Returns (streams sent, GOAWAY
/// code).
fn h2_flood(
    addr: SocketAddr,
    max: usize,
    made_you_reset: bool,
) -> (usize, Option<corelb::h2::ErrorCode>) {
    use common::h2client::*;
    let mut h = H2::connect(addr);
    let mut sent = 0;
    while sent < max {
        let ids = queue_gets(&mut h, "/delay/200", 100);
        let mut bytes = take(&mut h);
        for (k, id) in ids.iter().enumerate() {
            match (made_you_reset, k % 2) {
                (false, _) => bytes.extend(frame(3, 0, *id, &8u32.to_be_bytes())),
                (true, 0) => bytes.extend(frame(8, 0, *id, &[0, 0, 0, 0])),
                (true, _) => {
                    bytes.extend(frame(0, 1, *id, b""));
                    bytes.extend(frame(0, 0, *id, b"x"));
                }
            }
        }
        if h.sock.write_all(&bytes).is_err() {
            break;
        }
        sent += ids.len();
    }
    let code = read_frame(&mut h.sock, &[GOAWAY]).map(|(kind, _, p)| code_of(kind, &p));
    (sent, code)
}

/// Server-induced and client reset floods on HTTP/2 (MadeYouReset, CVE-2025-8671; rapid
/// reset, CVE-2023-44487): 3 connections of each, up to 3,000 streams apiece. corelb ends
/// each with GOAWAY ENHANCE_YOUR_CALM after its reset budget (200 per 10 s), and what
/// reaches the backend stays within that budget. Before, all 9,000 MadeYouReset streams
/// reached the backends over 8,875 new connections.
#[test]
fn h2_reset_floods_are_cut_off_within_the_budget() {
    let _one = serial();
    let per = size("ABUSE_H2_STREAMS", 3000);
    let b = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&b], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = p.admin.unwrap();
    let h2 = |key: &str| {
        let r = get(admin, "/stats");
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        v["totals"]["h2"][key].as_u64().unwrap_or(0)
    };
    for (name, myr) in [("made_you_reset", true), ("rapid_reset", false)] {
        let (req0, _, accepted0) = b.stats();
        let (streams0, calm0) = (h2("streams"), h2("rapid_resets"));
        let t0 = Instant::now();
        let runs: Vec<_> = (0..3).map(|_| h2_flood(p.addr, per, myr)).collect();
        let took = t0.elapsed();
        // The counters are published as each connection closes.
        settle(admin, |_| h2("rapid_resets") >= calm0 + 3);
        let (req1, _, accepted1) = b.stats();
        let streams = h2("streams") - streams0;
        eprintln!(
            "ABUSE h2_{name} connections=3 streams_written={:?} streams_read_by_corelb={streams} \
             goaways={:?} backend_requests={} backend_connections_opened={} took_s={:.2} \
             unforwarded_total={}",
            runs.iter().map(|r| r.0).collect::<Vec<_>>(),
            runs.iter().map(|r| r.1).collect::<Vec<_>>(),
            req1 - req0,
            // The second stats call's own connection is not one corelb opened.
            accepted1 - accepted0 - 1,
            took.as_secs_f64(),
            h2("resets_unforwarded")
        );
        for (_, code) in &runs {
            assert_eq!(
                *code,
                Some(corelb::h2::ErrorCode::ENHANCE_YOUR_CALM),
                "{name}"
            );
        }
        assert_eq!(h2("rapid_resets") - calm0, 3, "{name}");
        // The budget (200) plus the rest of the wave that tripped it, per connection.
        assert!(streams <= 3 * 300, "{name}: streams read {streams}");
        assert!(
            req1 - req0 <= 3 * 200,
            "{name}: backend requests {}",
            req1 - req0
        );
    }
    assert_eq!(get(p.addr, "/").status, 200, "the worker still serves");
}

/// Stalled readers: 20 HTTP/2 connections of 5 streams each (1 MiB responses) whose
/// client reads its socket but never opens a flow-control window. Each response is
/// abandoned after the send timeout, on its own window or with its connection (whose
/// window is shut too); upstream connections and buffers go back to the baseline.
/// Before, they stayed until the idle timeout (60 s) whatever was blocked.
#[test]
fn h2_stalled_readers_are_closed_after_the_send_timeout() {
    let _one = serial();
    let b = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&b],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--send-timeout",
            "2s",
            "--idle-timeout",
            "2s",
            "--pool-idle-timeout",
            "1s",
        ],
    );
    let admin = p.admin.unwrap();
    let (base, _) = settle(admin, |g| g.active == 0 && g.up_open == 0);
    let t0 = Instant::now();
    let readers: Vec<_> = (0..20)
        .map(|_| {
            let mut h = common::h2client::H2::connect(p.addr);
            for _ in 0..5 {
                h.request("GET", "/bytes/1048576", &[], true);
            }
            // Drain the socket without ever passing the bytes to the codec: no
            // WINDOW_UPDATE goes out.
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                let mut got = 0;
                h.sock
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                loop {
                    match h.sock.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got += n,
                    }
                }
                (got, t0.elapsed())
            })
        })
        .collect();
    let ends: Vec<(usize, Duration)> = readers.into_iter().map(|t| t.join().unwrap()).collect();
    let last = ends.iter().map(|e| e.1).max().unwrap();
    let (after, back) = settle(admin, |g| {
        g.active == base.active && g.up_busy() == 0 && g.bufs == base.bufs
    });
    let v: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
    let send_timeouts = v["totals"]["h2"]["send_timeouts"].as_u64().unwrap();
    eprintln!(
        "ABUSE h2_stalled_readers connections=20 streams=100 send_timeout_s=2 \
         all_closed_after_s={:.2} bytes_per_connection_max={} send_timeouts={send_timeouts} \
         after={after:?}",
        last.as_secs_f64(),
        ends.iter().map(|e| e.0).max().unwrap()
    );
    // Per connection, 4 streams fill their 256 KiB windows (the client codec's) and the
    // 1 MiB connection window with them: each response is abandoned once, on its own
    // window or with its connection.
    assert_eq!(send_timeouts, 100, "every stalled response, counted once");
    assert!(
        last >= Duration::from_millis(1900),
        "not before the send timeout"
    );
    assert!(
        last < Duration::from_secs(15),
        "closed long before 60 s: {last:?}"
    );
    assert!(back, "gauges back to baseline {base:?}: {after:?}");
}

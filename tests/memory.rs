//! Memory bounds, measured on the real binaries through /proc/PID/status: an idle
//! keep-alive client connection costs at most 256 bytes of corelb's RSS, and 1,000
//! concurrent 16 MiB downloads keep corelb's peak RSS (VmHWM) far below what buffering
//! their bodies would take (16 GiB): under 600 MiB, where a working proxy needs a few
//! tens. `bench/memory.py` measures the same on release binaries and records the figures.

mod common;

use common::*;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const MIB: u64 = 1 << 20;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with(field))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// `n` keep-alive connections, one request answered on each, left open. Requests go out
/// 200 at a time.
fn open_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let mut all = Vec::with_capacity(n);
    let mut left = n;
    while left > 0 {
        let k = left.min(200);
        let mut batch: Vec<TcpStream> = (0..k).map(|_| connect(addr)).collect();
        for s in &mut batch {
            s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        }
        for s in &mut batch {
            let r = read_response(s, &mut Vec::new(), "GET").expect("an answer");
            assert_eq!(r.status, 200);
        }
        all.extend(batch);
        left -= k;
    }
    all
}

/// Waits until a worker that saw no event for a while has trimmed its buffer pool (five
/// quiet polls of up to a second each, buffer.rs and worker.rs).
fn settle() {
    std::thread::sleep(Duration::from_secs(6));
}

#[test]
fn an_idle_keep_alive_connection_costs_at_most_256_bytes_of_rss() {
    const N: usize = 10_000;
    let start = Instant::now();
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1", "--idle-timeout", "300s"]);
    // Warm-up: the upstream pool, buffers and allocator at their working size.
    let warm = open_idle(p.addr, 200);
    settle();
    let before = status_kib(p.pid(), "VmRSS:");
    let idle = open_idle(p.addr, N);
    settle();
    let after = status_kib(p.pid(), "VmRSS:");
    let per = after.saturating_sub(before) as f64 * 1024.0 / N as f64;
    eprintln!(
        "corelb VmRSS {before} KiB -> {after} KiB with {N} more idle keep-alive connections: \
         {per:.0} B each ({:?})",
        start.elapsed()
    );
    assert!(per <= 256.0, "{per:.0} B of RSS per idle connection");
    // They are still served.
    for s in idle.iter().step_by(1000) {
        let mut s = s.try_clone().unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut s, &mut Vec::new(), "GET")
                .unwrap()
                .status,
            200
        );
    }
    drop((warm, idle));
}

/// One download's progress.
struct Download {
    sock: mio::net::TcpStream,
    sent: bool,
    head: Vec<u8>,
    /// Body bytes received (`None` until the head is complete).
    got: Option<u64>,
}

/// What [`concurrent_downloads`] saw.
struct Downloaded {
    /// Body bytes received, all downloads together.
    total: u64,
    /// Downloads complete.
    done: usize,
    /// The fewest body bytes any download received.
    least: u64,
}

/// Downloads `/bytes/len` on `n` connections at once, reading each with one shared
/// 64 KiB buffer as data arrives (every transfer in flight together). Checks the head,
/// the length and one byte of every read against the backend's pattern; calls `sample`
/// about every 50 ms. Stops when all are done or after `limit` (a slow machine makes the
/// run shorter, not a failure: the caller checks how far each download got).
fn concurrent_downloads(
    addr: SocketAddr,
    n: usize,
    len: u64,
    limit: Duration,
    mut sample: impl FnMut(),
) -> Downloaded {
    use mio::{Events, Interest, Poll, Token};
    let mut poll = Poll::new().unwrap();
    let mut events = Events::with_capacity(1024);
    let mut dl: Vec<Option<Download>> = Vec::with_capacity(n);
    for i in 0..n {
        let mut sock = mio::net::TcpStream::connect(addr).unwrap();
        poll.registry()
            .register(&mut sock, Token(i), Interest::READABLE | Interest::WRITABLE)
            .unwrap();
        dl.push(Some(Download {
            sock,
            sent: false,
            head: Vec::new(),
            got: None,
        }));
    }
    let req = format!("GET /bytes/{len} HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut buf = vec![0u8; 64 * 1024];
    let (mut done, mut total) = (0, 0u64);
    let end = Instant::now() + limit;
    let mut next_sample = Instant::now();
    while done < n && Instant::now() < end {
        poll.poll(&mut events, Some(Duration::from_millis(50)))
            .unwrap();
        if Instant::now() >= next_sample {
            sample();
            next_sample = Instant::now() + Duration::from_millis(50);
        }
        for ev in events.iter() {
            let i = ev.token().0;
            let Some(d) = dl[i].as_mut() else { continue };
            if !d.sent && ev.is_writable() {
                match d.sock.write(req.as_bytes()) {
                    Ok(k) => {
                        assert_eq!(k, req.len(), "a short request write");
                        d.sent = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                    // Not connected yet.
                    Err(e) if e.kind() == ErrorKind::NotConnected => {}
                    Err(e) => panic!("download {i}: {e}"),
                }
            }
            if !d.sent {
                continue;
            }
            loop {
                match d.sock.read(&mut buf) {
                    Ok(0) => panic!("download {i}: EOF after {:?} body bytes", d.got),
                    Ok(k) => {
                        let mut data = &buf[..k];
                        let got = match d.got {
                            Some(g) => g,
                            None => {
                                d.head.extend_from_slice(data);
                                let Some(at) = d.head.windows(4).position(|w| w == b"\r\n\r\n")
                                else {
                                    continue;
                                };
                                assert!(d.head.starts_with(b"HTTP/1.1 200"), "download {i}");
                                let body_in_head = d.head.len() - (at + 4);
                                data = &buf[k - body_in_head..k];
                                d.head = Vec::new();
                                0
                            }
                        };
                        if let Some(&b) = data.first() {
                            assert_eq!(b, b'a' + (got % 26) as u8, "download {i} at {got}");
                        }
                        let got = got + data.len() as u64;
                        assert!(got <= len, "download {i}: more than {len} bytes");
                        d.got = Some(got);
                        total += data.len() as u64;
                        if got == len {
                            dl[i] = None;
                            done += 1;
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("download {i}: {e}"),
                }
            }
        }
    }
    let least = dl
        .iter()
        .flatten()
        .map(|d| d.got.unwrap_or(0))
        .min()
        .unwrap_or(len);
    Downloaded { total, done, least }
}

#[test]
fn a_thousand_concurrent_16_mib_downloads_keep_peak_rss_bounded() {
    const N: usize = 1000;
    const LEN: u64 = 16 * MIB;
    let start = Instant::now();
    let a = Backend::start("A", "fast", &["--threads", "2"]);
    let p = Proxy::start(&[&a], &["--workers", "2"]);
    let pid = p.pid();
    let base = status_kib(pid, "VmHWM:");
    let mut peak_rss = 0;
    // About 30 s here (debug binaries, two shared cores); at most 45 s.
    let d = concurrent_downloads(p.addr, N, LEN, Duration::from_secs(45), || {
        peak_rss = peak_rss.max(status_kib(pid, "VmRSS:"));
    });
    let hwm = status_kib(pid, "VmHWM:");
    eprintln!(
        "{N} concurrent {} MiB downloads ({} done, {} MiB in {:?}): corelb VmHWM {base} KiB \
         at start, {hwm} KiB after; highest VmRSS sampled {peak_rss} KiB",
        LEN / MIB,
        d.done,
        d.total / MIB,
        start.elapsed()
    );
    if d.done < N {
        // Cut short by a slow machine: every download must still have been well under
        // way, all at once, for the peak to mean something.
        eprintln!(
            "(cut short after 45 s; the slowest download had {} bytes)",
            d.least
        );
        assert!(d.least >= 4 * MIB, "a download got only {} bytes", d.least);
    } else {
        assert_eq!(d.total, N as u64 * LEN);
    }
    assert!(hwm < 600 * 1024, "peak RSS {hwm} KiB");
}

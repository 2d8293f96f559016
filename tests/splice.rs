//! Large Content-Length bodies, and the data of large chunks in chunked bodies, are relayed
//! with splice(2), and behave exactly as copied ones: byte-exact content both ways, exact
//! framing (nothing past Content-Length is forwarded or consumed; chunk-size lines,
//! extensions and trailers forwarded as sent, or removed for an HTTP/1.0 client), chunk
//! boundaries anywhere in the reads, truncation and aborts, backpressure, early answers,
//! and the byte counts in the CSV log. `/stats` shows that splice was used.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

const MIB: usize = 1 << 20;
const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

/// The backend's `/bytes` pattern.
fn pattern(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

/// Upload bytes, unlike the download pattern.
fn upload_byte(i: u64) -> u8 {
    (i.wrapping_mul(7) % 251) as u8
}

fn spliced(admin: SocketAddr) -> u64 {
    let r = get(admin, "/stats");
    let v: Value = serde_json::from_slice(&r.body).expect("/stats is JSON");
    v["totals"]["spliced_bytes"]
        .as_u64()
        .expect("spliced_bytes")
}

fn read_head(s: &mut TcpStream) -> Vec<u8> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut b).unwrap(), 1, "EOF in head");
        head.push(b[0]);
    }
    head
}

/// Reads `len` body bytes and checks them against `f`.
fn read_checked(s: &mut TcpStream, len: u64, f: fn(u64) -> u8) {
    let mut got = 0u64;
    let mut buf = vec![0u8; MIB];
    while got < len {
        let want = ((len - got) as usize).min(buf.len());
        let n = s.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "EOF after {got} of {len} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, f(got + k as u64), "byte {}", got + k as u64);
        }
        got += n as u64;
    }
}

/// A backend that reads a body until EOF (or an error), counting its bytes in `got`, and
/// then sets `eof`.
fn sink_until_eof(s: &mut TcpStream, eof: &AtomicBool, got: &AtomicUsize) {
    let mut buf = vec![0u8; MIB];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.fetch_add(n, SeqCst),
        };
    }
    eof.store(true, SeqCst);
}

/// A backend that reads 1 MiB of a body (so it is being spliced), answers 413 and stops
/// reading, then drops the connection with the rest unread.
fn take_a_mib_then_413(mut s: TcpStream) {
    let mut buf = vec![0u8; MIB];
    let mut n = 0;
    while n < MIB {
        match s.read(&mut buf[..MIB - n]) {
            Ok(0) | Err(_) => return,
            Ok(k) => n += k,
        }
    }
    let _ = s.write_all(
        b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large",
    );
    std::thread::sleep(Duration::from_millis(300));
}

/// A scripted backend: `handler(connection_index, socket)` runs on a thread per
/// connection. Returns the address and the connection count.
fn scripted(handler: impl Fn(usize, TcpStream) + Send + Sync + 'static) -> (u16, Arc<AtomicUsize>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let conns = Arc::new(AtomicUsize::new(0));
    let c2 = conns.clone();
    let handler = Arc::new(handler);
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(s) = s else { continue };
            let i = c2.fetch_add(1, SeqCst);
            let h = handler.clone();
            std::thread::spawn(move || h(i, s));
        }
    });
    (port, conns)
}

fn proxy_for_port(port: u16, extra: &[&str]) -> Proxy {
    let cfg = format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "servers": [{}]}}"#,
        server_json("M", port, 0)
    );
    let mut args = vec!["--health-check", "off", "--workers", "1"];
    args.extend_from_slice(extra);
    Proxy::with_config(&cfg, &args)
}

/// Reads a request head from a backend socket; the Content-Length it announces.
fn backend_head(s: &mut TcpStream) -> Option<u64> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    let text = String::from_utf8_lossy(&head).to_ascii_lowercase();
    Some(
        text.lines()
            .find_map(|l| l.strip_prefix("content-length:"))
            .map_or(0, |v| v.trim().parse().unwrap()),
    )
}

#[test]
fn large_uploads_and_downloads_are_spliced_byte_exact_and_logged() {
    const LEN: u64 = 64 << 20;
    let a = Backend::start("A", "fast", &[]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let mut extra = vec!["--workers", "1", "--log-csv", csv.to_str().unwrap()];
    extra.extend_from_slice(&ADMIN);
    let mut p = Proxy::start(&[&a], &extra);
    let admin = p.admin.unwrap();
    assert_eq!(spliced(admin), 0);

    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    // Upload to /sink: the backend counts and sums what arrived.
    let head = format!("POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {LEN}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    let mut sum = 0u64;
    for i in 0..(LEN / MIB as u64) {
        let c: Vec<u8> = (0..MIB as u64)
            .map(|k| upload_byte(i * MIB as u64 + k))
            .collect();
        sum += c.iter().map(|&b| b as u64).sum::<u64>();
        s.write_all(&c).unwrap();
    }
    let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
    assert_eq!(r.status, 200);
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(LEN));
    assert_eq!(v["sum"].as_u64(), Some(sum));
    let after_upload = spliced(admin);
    assert!(
        after_upload >= LEN * 9 / 10,
        "upload spliced: {after_upload}"
    );

    // Download from /bytes, checked as it streams.
    s.write_all(format!("GET /bytes/{LEN} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    read_checked(&mut s, LEN, pattern);
    // The connection is still in step: a small request after it.
    s.write_all(b"GET /bytes/10 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), "GET").unwrap();
    assert_eq!(r.body, b"abcdefghij");

    // Echo: 16 MiB both ways at once, byte for byte. The answer starts before the upload
    // ends, so the connection closes after it.
    const ECHO: u64 = 16 << 20;
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let head = format!("POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {ECHO}\r\n\r\n");
        w.write_all(head.as_bytes()).unwrap();
        let body: Vec<u8> = (0..ECHO).map(upload_byte).collect();
        w.write_all(&body).unwrap();
    });
    let h = read_head(&mut s);
    assert!(
        h.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&h)
    );
    read_checked(&mut s, ECHO, upload_byte);
    writer.join().unwrap();
    assert_eq!(s.read(&mut [0u8; 1]).unwrap(), 0, "closed after the echo");
    let total = spliced(admin);
    assert!(
        total >= after_upload + (LEN + 2 * ECHO) * 9 / 10,
        "download and echo spliced: {total}"
    );

    // The CSV log counts the spliced bytes as it counts copied ones.
    drop(s);
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 4);
    let bytes = |r: &csv::StringRecord, i: usize| r[i].parse::<u64>().unwrap();
    let (up, down, echo) = (&rows[0], &rows[1], &rows[3]);
    assert_eq!(
        bytes(up, 8),
        head.len() as u64 + LEN,
        "upload request_bytes"
    );
    assert!(bytes(echo, 8) > ECHO && bytes(echo, 8) < ECHO + 1024);
    assert!(bytes(echo, 9) > ECHO && bytes(echo, 9) < ECHO + 1024);
    assert!(
        bytes(down, 9) > LEN && bytes(down, 9) < LEN + 1024,
        "download"
    );
}

#[test]
fn a_response_body_followed_by_garbage_is_cut_at_content_length() {
    // The backend sends its 1 MiB body, then junk on the same connection. Nothing past
    // the body reaches the client, and the connection is not reused.
    let (port, conns) = scripted(|_, mut s| {
        let body: Vec<u8> = (0..MIB as u64).map(pattern).collect();
        while backend_head(&mut s).is_some() {
            let mut out = format!("HTTP/1.1 200 OK\r\nContent-Length: {MIB}\r\n\r\n").into_bytes();
            out.extend_from_slice(&body);
            out.extend_from_slice(b"GARBAGE GARBAGE");
            if s.write_all(&out).is_err() {
                return;
            }
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for _ in 0..2 {
        s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut pending, "GET").expect("a response");
        assert_eq!(r.status, 200);
        assert_eq!(r.body.len(), MIB);
        assert!(r
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pattern(i as u64)));
        assert!(pending.is_empty(), "bytes past the body reached the client");
    }
    assert_eq!(
        conns.load(SeqCst),
        2,
        "a connection with junk after a body is not pooled"
    );
    assert!(spliced(p.admin.unwrap()) >= MIB as u64);
}

#[test]
fn a_pipelined_request_after_a_large_upload_is_answered_in_order() {
    let a = Backend::start("A", "fast", &[]);
    let mut extra = vec!["--workers", "1"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::start(&[&a], &extra);
    let mut s = connect(p.addr);
    let len = 3 * MIB as u64 + 17;
    let body: Vec<u8> = (0..len).map(upload_byte).collect();
    let sum: u64 = body.iter().map(|&b| b as u64).sum();
    // Two uploads and a download in one write: every byte of the next request stays for
    // the next request.
    let mut all = Vec::new();
    for _ in 0..2 {
        all.extend_from_slice(
            format!("PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {len}\r\n\r\n").as_bytes(),
        );
        all.extend_from_slice(&body);
    }
    all.extend_from_slice(b"GET /bytes/100000 HTTP/1.1\r\nHost: t\r\n\r\n");
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&all).unwrap());
    let mut pending = Vec::new();
    for _ in 0..2 {
        let r = read_response(&mut s, &mut pending, "PUT").unwrap();
        assert_eq!(r.status, 200, "{}", r.text());
        let v: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(v["bytes"].as_u64(), Some(len));
        assert_eq!(v["sum"].as_u64(), Some(sum));
    }
    let r = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!(r.body.len(), 100_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    writer.join().unwrap();
    assert!(spliced(p.admin.unwrap()) >= 2 * 2 * MIB as u64);
}

#[test]
fn a_backend_closing_mid_body_truncates_the_spliced_download() {
    const PROMISED: usize = 8 * MIB;
    const SENT: usize = 2 * MIB;
    let (port, conns) = scripted(|i, mut s| {
        if backend_head(&mut s).is_none() {
            return;
        }
        if i == 0 {
            let mut out =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {PROMISED}\r\n\r\n").into_bytes();
            out.extend((0..SENT as u64).map(pattern));
            let _ = s.write_all(&out);
            return; // closes mid-body
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_secs(2));
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .expect("the proxy closes the connection");
    assert_eq!(
        body.len(),
        SENT,
        "what arrived is forwarded, then the client is closed"
    );
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    assert!(spliced(p.admin.unwrap()) >= MIB as u64);
    // The proxy goes on serving, on a new upstream connection.
    let r = get(p.addr, "/small");
    assert_eq!(r.body, b"ok");
    assert_eq!(conns.load(SeqCst), 2);
}

#[test]
fn a_client_aborting_mid_upload_closes_the_upstream_connection() {
    let eof = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let (e2, g2) = (eof.clone(), got.clone());
    let (port, conns) = scripted(move |_, mut s| {
        while let Some(len) = backend_head(&mut s) {
            if len == 0 {
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
                continue;
            }
            return sink_until_eof(&mut s, &e2, &g2);
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nContent-Length: 67108864\r\n\r\n")
        .unwrap();
    let chunk = vec![b'u'; MIB];
    for _ in 0..4 {
        s.write_all(&chunk).unwrap();
    }
    let admin = p.admin.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || got.load(SeqCst) == 4 * MIB),
        "the backend got {} bytes",
        got.load(SeqCst)
    );
    assert!(spliced(admin) >= 3 * MIB as u64);
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || eof.load(SeqCst)),
        "the upstream connection is closed when the client aborts"
    );
    let r = get(p.addr, "/");
    assert_eq!(r.body, b"ok");
    assert_eq!(
        conns.load(SeqCst),
        2,
        "the aborted connection was not pooled"
    );
}

#[test]
fn a_slow_reader_gets_the_whole_spliced_download_with_bounded_memory() {
    const LEN: u64 = 64 << 20;
    let a = Backend::start("A", "fast", &[]);
    let mut extra = vec!["--workers", "1"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::start(&[&a], &extra);
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(format!("GET /bytes/{LEN} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    // About 4 MiB/s for the first 1.5 s: the proxy must hold back, not buffer.
    let mut got = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let slow_until = std::time::Instant::now() + Duration::from_millis(1500);
    while got < LEN {
        let slow = std::time::Instant::now() < slow_until;
        let want = if slow { 16 * 1024 } else { buf.len() };
        let want = want.min((LEN - got) as usize);
        let n = s.read(&mut buf[..want]).unwrap();
        assert!(n > 0, "EOF after {got} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            assert_eq!(b, pattern(got + k as u64), "byte {}", got + k as u64);
        }
        got += n as u64;
        if slow {
            std::thread::sleep(Duration::from_millis(4));
        }
    }
    let rss = p.peak_rss_kib();
    eprintln!("proxy peak RSS with a slow reader: {rss} KiB");
    assert!(rss < 32 * 1024, "peak RSS {rss} KiB");
    assert!(spliced(p.admin.unwrap()) >= LEN * 9 / 10);
}

#[test]
fn an_early_answer_during_a_spliced_upload_is_the_only_answer() {
    // The backend reads 1 MiB of the body (so the upload is being spliced), answers 413
    // and stops reading; later it drops the connection with the rest unread.
    let (port, _) = scripted(|_, mut s| {
        if backend_head(&mut s).is_none() {
            return;
        }
        take_a_mib_then_413(s);
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 33554432\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; MIB];
        for _ in 0..32 {
            // Cut short by the proxy closing: that is fine.
            if w.write_all(&chunk).is_err() {
                return;
            }
        }
    });
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    assert!(text.ends_with("too large"), "{text}");
    assert!(spliced(p.admin.unwrap()) >= MIB as u64 / 2);
    drop(s);
    let _ = writer.join();
}

/// A chunked body of chunks of `sizes` (some with extensions) and `trailers` (field lines,
/// each ending in CRLF). Returns the bytes on the wire, the data, and the offsets where a
/// sender should cut its writes: inside size lines, right after them, inside data, between
/// data and CRLF and between CR and LF, so chunk boundaries fall across reads.
fn chunked_body(
    sizes: &[usize],
    trailers: &str,
    byte: fn(u64) -> u8,
) -> (Vec<u8>, Vec<u8>, Vec<usize>) {
    let (mut wire, mut data, mut cuts) = (Vec::new(), Vec::new(), Vec::new());
    for (i, &n) in sizes.iter().enumerate() {
        let line = match i % 3 {
            0 => format!("{n:x}\r\n"),
            1 => format!("{n:X};name=\"v\";x\r\n"),
            _ => format!("{n:08x} ; a=b\r\n"),
        };
        cuts.push(wire.len() + 1);
        wire.extend_from_slice(line.as_bytes());
        cuts.push(wire.len());
        let start = data.len() as u64;
        let chunk: Vec<u8> = (start..start + n as u64).map(byte).collect();
        wire.extend_from_slice(&chunk);
        data.extend_from_slice(&chunk);
        if n > 2 {
            cuts.push(wire.len() - n / 2);
        }
        cuts.push(wire.len());
        wire.extend_from_slice(b"\r\n");
        cuts.push(wire.len() - 1);
    }
    wire.extend_from_slice(b"0\r\n");
    cuts.push(wire.len());
    wire.extend_from_slice(trailers.as_bytes());
    wire.extend_from_slice(b"\r\n");
    cuts.sort_unstable();
    cuts.dedup();
    (wire, data, cuts)
}

/// Writes `bytes` in pieces cut at `cuts`, pausing between them so each piece is a read
/// of its own at the other end. Returns false if the peer went away.
fn write_cut(s: &mut TcpStream, bytes: &[u8], cuts: &[usize]) -> bool {
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&bytes.len())) {
        if c <= at || c > bytes.len() {
            continue;
        }
        if s.write_all(&bytes[at..c]).is_err() {
            return false;
        }
        at = c;
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// Chunk sizes mixing small chunks, chunks just under and at the default threshold, and
/// large ones.
const MIXED: [usize; 9] = [5, MIB, 7, 100_000, 65_536, 65_535, 1, 3 * MIB + 3, 70_000];
const TRAILERS: &str = "X-Sum: 12345\r\nX-Note: after the big chunks\r\n";

/// Reads a request head from a backend socket, lower-cased.
fn backend_head_text(s: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut b).ok()? == 0 {
            return None;
        }
        head.push(b[0]);
    }
    Some(String::from_utf8_lossy(&head).to_ascii_lowercase())
}

fn read_exact_vec(s: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    s.read_exact(&mut v).expect("the whole body");
    v
}

#[test]
fn chunked_downloads_splice_big_chunks_and_pass_framing_and_trailers_through() {
    let (wire, data, cuts) = chunked_body(&MIXED, TRAILERS, pattern);
    let w2 = wire.clone();
    let (port, conns) = scripted(move |_, mut s| {
        while backend_head_text(&mut s).is_some() {
            let head =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, X-Note\r\n\r\n";
            if s.write_all(head).is_err() || !write_cut(&mut s, &w2, &cuts) {
                return;
            }
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let admin = p.admin.unwrap();
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    for round in 0..2 {
        s.write_all(b"GET /chunks HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let h = String::from_utf8(read_head(&mut s)).unwrap();
        assert!(h.starts_with("HTTP/1.1 200"), "{h}");
        assert!(
            h.to_ascii_lowercase()
                .contains("transfer-encoding: chunked"),
            "{h}"
        );
        // Passed through as sent: sizes, extensions, data, trailers, byte for byte, and
        // nothing after (the next response starts right after it).
        let got = read_exact_vec(&mut s, wire.len());
        assert!(got == wire, "round {round}: the chunked body differs");
    }
    let after_two = spliced(admin);
    let big: usize = MIXED.iter().filter(|&&n| n >= 64 * 1024).sum();
    // At most the first buffer of a chunk is copied (it came with its size line).
    assert!(
        after_two as usize >= 2 * (big - 4 * 256 * 1024),
        "big chunks spliced: {after_two} of {}",
        2 * big
    );
    assert!(
        after_two as usize <= 2 * data.len(),
        "only chunk data is spliced"
    );
    assert_eq!(
        conns.load(SeqCst),
        1,
        "the upstream connection stayed in step"
    );

    // An HTTP/1.0 client gets the data de-chunked, spliced as well, then a close.
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    s.write_all(b"GET /chunks HTTP/1.0\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = String::from_utf8(read_head(&mut s)).unwrap();
    assert!(
        h.starts_with("HTTP/1.0 200") || h.starts_with("HTTP/1.1 200"),
        "{h}"
    );
    let mut body = Vec::new();
    s.read_to_end(&mut body).unwrap();
    assert_eq!(body.len(), data.len());
    assert!(body == data, "the de-chunked data differs");
    assert!(spliced(admin) - after_two >= (big - 4 * 256 * 1024) as u64);
}

#[test]
fn chunked_uploads_splice_big_chunks_and_reach_the_backend_byte_exact() {
    // What the backend received, raw, per request.
    let got: Arc<std::sync::Mutex<Vec<Vec<u8>>>> = Arc::default();
    let g2 = got.clone();
    let (port, _) = scripted(move |_, mut s| {
        while let Some(head) = backend_head_text(&mut s) {
            assert!(head.contains("transfer-encoding: chunked"), "{head}");
            let mut d = corelb::http::chunked::ChunkedDecoder::new();
            let mut raw = Vec::new();
            let mut buf = vec![0u8; MIB];
            while !d.is_done() {
                let n = match s.read(&mut buf) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let used = d.validate(&buf[..n]).expect("valid chunked upload");
                assert_eq!(used, n, "nothing past the body");
                raw.extend_from_slice(&buf[..n]);
            }
            let len = raw.len();
            g2.lock().unwrap().push(raw);
            let answer = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{len}",
                len.to_string().len()
            );
            if s.write_all(answer.as_bytes()).is_err() {
                return;
            }
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let admin = p.admin.unwrap();
    let (wire, _, cuts) = chunked_body(&MIXED, TRAILERS, upload_byte);
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n";
    for _ in 0..2 {
        s.write_all(head).unwrap();
        assert!(write_cut(&mut s, &wire, &cuts));
        let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.text(), wire.len().to_string());
    }
    // Then the whole of two requests in one write: the second's head stays for it.
    let mut two = Vec::new();
    for _ in 0..2 {
        two.extend_from_slice(head);
        two.extend_from_slice(&wire);
    }
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || w.write_all(&two).unwrap());
    let mut pending = Vec::new();
    for _ in 0..2 {
        let r = read_response(&mut s, &mut pending, "POST").unwrap();
        assert_eq!(r.text(), wire.len().to_string());
    }
    writer.join().unwrap();
    let got = got.lock().unwrap();
    assert_eq!(got.len(), 4);
    for (i, raw) in got.iter().enumerate() {
        assert!(
            *raw == wire,
            "upload {i} differs (sizes, extensions, data or trailers)"
        );
    }
    let big: usize = MIXED.iter().filter(|&&n| n >= 64 * 1024).sum();
    let n = spliced(admin) as usize;
    assert!(n >= 4 * (big - 4 * 256 * 1024), "big chunks spliced: {n}");
}

#[test]
fn chunked_uploads_to_the_backend_and_downloads_with_curl_are_exact() {
    // Real binaries: a chunked upload of mixed chunks to /sink (bytes and sum of the data),
    // then curl's own chunked upload.
    let a = Backend::start("A", "fast", &[]);
    let mut extra = vec!["--workers", "1"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::start(&[&a], &extra);
    let (wire, data, cuts) = chunked_body(&MIXED, TRAILERS, upload_byte);
    let mut s = connect(p.addr);
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    assert!(write_cut(&mut s, &wire, &cuts));
    let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(data.len() as u64));
    let sum: u64 = data.iter().map(|&b| b as u64).sum();
    assert_eq!(v["sum"].as_u64(), Some(sum));
    let before = spliced(p.admin.unwrap());
    assert!(before >= 2 * MIB as u64, "spliced {before}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up.bin");
    let up: Vec<u8> = (0..5 * MIB as u64 + 11).map(upload_byte).collect();
    std::fs::write(&file, &up).unwrap();
    let url = format!("http://{}/sink", p.addr);
    let (code, out) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &format!("@{}", file.display()),
        &url,
    ]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(up.len() as u64));
    assert_eq!(
        v["sum"].as_u64(),
        Some(up.iter().map(|&b| b as u64).sum::<u64>())
    );
}

#[test]
fn a_client_aborting_mid_chunk_closes_the_upstream_connection() {
    let eof = Arc::new(AtomicBool::new(false));
    let got = Arc::new(AtomicUsize::new(0));
    let (e2, g2) = (eof.clone(), got.clone());
    let (port, conns) = scripted(move |_, mut s| {
        while let Some(head) = backend_head_text(&mut s) {
            if !head.contains("chunked") {
                if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .is_err()
                {
                    return;
                }
                continue;
            }
            return sink_until_eof(&mut s, &e2, &g2);
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    // A small chunk, then a 64 MiB one cut off after 4 MiB.
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n4000000\r\n")
        .unwrap();
    let chunk = vec![b'u'; MIB];
    for _ in 0..4 {
        s.write_all(&chunk).unwrap();
    }
    let framing = "3\r\nabc\r\n4000000\r\n".len();
    let admin = p.admin.unwrap();
    assert!(
        eventually(Duration::from_secs(10), || got.load(SeqCst)
            == framing + 4 * MIB),
        "the backend got {} bytes",
        got.load(SeqCst)
    );
    assert!(spliced(admin) >= 3 * MIB as u64);
    drop(s);
    assert!(
        eventually(Duration::from_secs(5), || eof.load(SeqCst)),
        "the upstream connection is closed when the client aborts mid-chunk"
    );
    let r = get(p.addr, "/");
    assert_eq!(r.body, b"ok");
    assert_eq!(
        conns.load(SeqCst),
        2,
        "the aborted connection was not pooled"
    );
}

#[test]
fn a_client_leaving_mid_chunk_of_a_download_closes_the_upstream_connection() {
    let gone = Arc::new(AtomicBool::new(false));
    let g2 = gone.clone();
    let (port, conns) = scripted(move |i, mut s| {
        if backend_head_text(&mut s).is_none() {
            return;
        }
        if i > 0 {
            let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
            std::thread::sleep(Duration::from_secs(2));
            return;
        }
        // One 1 GiB chunk, written until the proxy stops taking it.
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n40000000\r\n");
        // Whole periods of the pattern, so blocks follow on.
        let block: Vec<u8> = (0..26 * 40_000).map(pattern).collect();
        for _ in 0..1024 {
            if s.write_all(&block).is_err() {
                g2.store(true, SeqCst);
                return;
            }
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"GET /huge HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    assert_eq!(read_exact_vec(&mut s, 10), b"40000000\r\n");
    read_checked(&mut s, 4 * MIB as u64, pattern);
    assert!(spliced(p.admin.unwrap()) >= 2 * MIB as u64);
    drop(s);
    assert!(
        eventually(Duration::from_secs(10), || gone.load(SeqCst)),
        "the upstream connection is closed when the client leaves mid-chunk"
    );
    assert_eq!(get(p.addr, "/small").body, b"ok");
    assert_eq!(conns.load(SeqCst), 2);
}

#[test]
fn a_backend_closing_mid_chunk_truncates_the_download() {
    let (port, _) = scripted(|i, mut s| {
        if backend_head_text(&mut s).is_none() {
            return;
        }
        if i == 0 {
            let mut out =
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n800000\r\n".to_vec();
            out.extend((0..2 * MIB as u64).map(pattern));
            let _ = s.write_all(&out);
            return; // closes inside the 8 MiB chunk
        }
        let _ = s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok");
        std::thread::sleep(Duration::from_secs(2));
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    let mut body = Vec::new();
    s.read_to_end(&mut body)
        .expect("the proxy closes the connection");
    assert_eq!(
        body.len(),
        8 + 2 * MIB,
        "what arrived is forwarded, then a close"
    );
    assert_eq!(&body[..8], b"800000\r\n");
    assert!(body[8..]
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pattern(i as u64)));
    assert!(spliced(p.admin.unwrap()) >= MIB as u64);
    assert_eq!(get(p.addr, "/small").body, b"ok");
}

#[test]
fn an_early_answer_during_a_spliced_chunked_upload_is_the_only_answer() {
    let (port, _) = scripted(|_, mut s| {
        if backend_head_text(&mut s).is_none() {
            return;
        }
        take_a_mib_then_413(s);
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.write_all(b"POST /upload HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        let chunk = vec![b'x'; 4 * MIB];
        for _ in 0..8 {
            // Cut short by the proxy closing: that is fine.
            if w.write_all(b"400000\r\n").is_err()
                || w.write_all(&chunk).is_err()
                || w.write_all(b"\r\n").is_err()
            {
                return;
            }
        }
        let _ = w.write_all(b"0\r\n\r\n");
    });
    let mut all = Vec::new();
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(text.matches("HTTP/1.1 ").count(), 1, "one answer: {text}");
    assert!(text.ends_with("too large"), "{text}");
    assert!(spliced(p.admin.unwrap()) >= MIB as u64 / 2);
    drop(s);
    let _ = writer.join();
}

#[test]
fn splice_min_sets_the_threshold_and_off_copies_everything() {
    let a = Backend::start("A", "fast", &[]);
    let download = |p: &Proxy, len: u64| {
        let mut s = connect(p.addr);
        s.write_all(format!("GET /bytes/{len} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        let h = read_head(&mut s);
        assert!(h.starts_with(b"HTTP/1.1 200"));
        read_checked(&mut s, len, pattern);
    };
    // 2 MiB: a 1 MiB body is copied, an 8 MiB one spliced.
    let mut extra = vec!["--workers", "1", "--splice-min", "2MiB"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::start(&[&a], &extra);
    download(&p, MIB as u64);
    assert_eq!(spliced(p.admin.unwrap()), 0, "under the threshold: copied");
    download(&p, 8 * MIB as u64);
    assert!(spliced(p.admin.unwrap()) >= 5 * MIB as u64);
    drop(p);
    // off: nothing is spliced, the bytes are the same.
    let mut extra = vec!["--workers", "1", "--splice-min", "off"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::start(&[&a], &extra);
    download(&p, 8 * MIB as u64);
    let (wire, data, _) = chunked_body(&MIXED, TRAILERS, upload_byte);
    let mut s = connect(p.addr);
    s.write_all(b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    s.write_all(&wire).unwrap();
    let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
    let v: Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(data.len() as u64));
    assert_eq!(spliced(p.admin.unwrap()), 0, "off: never spliced");
    drop(p);
    // The file's "spliceMin" is the same setting.
    let cfg = format!(
        r#"{{"spliceMin": "off", "servers": [{}]}}"#,
        server_json("A", a.port(), 0)
    );
    let mut extra = vec!["--workers", "1", "--health-check", "off"];
    extra.extend_from_slice(&ADMIN);
    let p = Proxy::with_config(&cfg, &extra);
    download(&p, 8 * MIB as u64);
    assert_eq!(spliced(p.admin.unwrap()), 0);
}

/// What a client saw of one scripted exchange: the bytes until the proxy closed (or the
/// response's end), and whether the close came after about the 1 s timeout.
#[derive(Debug, PartialEq)]
struct Seen {
    bytes: Vec<u8>,
    timed_out: bool,
}

/// A CSV row's path, status, request_bytes and response_bytes.
type Row = (String, String, u64, u64);

/// Runs the same chunked exchanges through a proxy started with `extra`: a download whose
/// backend stalls mid-chunk, an upload whose client stalls mid-chunk, then a complete
/// download and upload of mixed chunks. Returns what the client saw, the CSV rows'
/// (path, status, request_bytes, response_bytes), and the bytes spliced.
fn chunked_scenarios(port: u16, extra: &[&str]) -> (Vec<Seen>, Vec<Row>, u64) {
    let dir = tempfile::tempdir().unwrap();
    let csv_path = dir.path().join("log.csv");
    let mut args = vec![
        "--upstream-timeout",
        "1s",
        "--client-timeout",
        "1s",
        "--log-csv",
        csv_path.to_str().unwrap(),
    ];
    args.extend_from_slice(&ADMIN);
    args.extend_from_slice(extra);
    let mut p = proxy_for_port(port, &args);
    let admin = p.admin.unwrap();
    let mut seen = Vec::new();
    let until_close = |s: &mut TcpStream| {
        let t = std::time::Instant::now();
        let mut all = Vec::new();
        let _ = s.read_to_end(&mut all);
        let e = t.elapsed();
        Seen {
            bytes: all,
            timed_out: e >= Duration::from_millis(700) && e < Duration::from_secs(5),
        }
    };
    // The backend stalls inside a 1 MiB chunk.
    let mut s = connect(p.addr);
    s.write_all(b"GET /stall-down HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    seen.push(until_close(&mut s));
    // The client stalls inside a 1 MiB chunk of its upload.
    let mut s = connect(p.addr);
    let mut up =
        b"POST /stall-up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n"
            .to_vec();
    up.extend((0..512 * 1024).map(upload_byte));
    s.write_all(&up).unwrap();
    seen.push(until_close(&mut s));
    // Complete ones, on one connection.
    let (wire, _, cuts) = chunked_body(&MIXED, TRAILERS, upload_byte);
    let mut s = connect(p.addr);
    s.write_all(b"GET /down HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut pending = Vec::new();
    let r = read_response(&mut s, &mut pending, "GET").unwrap();
    seen.push(Seen {
        bytes: r.body,
        timed_out: false,
    });
    s.write_all(b"POST /up HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    assert!(write_cut(&mut s, &wire, &cuts));
    let r = read_response(&mut s, &mut pending, "POST").unwrap();
    seen.push(Seen {
        bytes: r.body,
        timed_out: false,
    });
    let spliced = spliced(admin);
    drop(s);
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let mut rdr = csv::Reader::from_path(&csv_path).unwrap();
    let mut rows: Vec<Row> = rdr
        .records()
        .map(Result::unwrap)
        .map(|r| {
            (
                r[7].to_string(),
                r[3].to_string(),
                r[8].parse().unwrap(),
                r[9].parse().unwrap(),
            )
        })
        .collect();
    rows.sort();
    (seen, rows, spliced)
}

#[test]
fn spliced_chunks_time_out_abort_and_are_logged_exactly_as_copied_ones() {
    let (down_wire, _, _) = chunked_body(&MIXED, TRAILERS, pattern);
    let (port, _) = scripted(move |_, mut s| {
        while let Some(head) = backend_head_text(&mut s) {
            let path = head.split(' ').nth(1).unwrap_or("").to_string();
            let mut d = corelb::http::chunked::ChunkedDecoder::new();
            let mut got = 0;
            if head.contains("chunked") {
                let mut buf = vec![0u8; MIB];
                while !d.is_done() {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => {
                            d.validate(&buf[..n]).expect("valid chunked upload");
                            got += n;
                        }
                    }
                }
            }
            let ok = match path.as_str() {
                "/stall-down" => {
                    let mut out =
                        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n100000\r\n".to_vec();
                    out.extend((0..512 * 1024).map(pattern));
                    let _ = s.write_all(&out);
                    std::thread::sleep(Duration::from_secs(6));
                    return;
                }
                "/down" => {
                    let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                    s.write_all(head).is_ok() && s.write_all(&down_wire).is_ok()
                }
                _ => {
                    let body = got.to_string();
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    );
                    s.write_all(answer.as_bytes()).is_ok()
                }
            };
            if !ok {
                return;
            }
        }
    });
    let (spliced_seen, spliced_rows, n) = chunked_scenarios(port, &[]);
    let (copied_seen, copied_rows, zero) = chunked_scenarios(port, &["--splice-min", "off"]);
    assert!(n >= 4 * MIB as u64, "spliced: {n}");
    assert_eq!(zero, 0);
    // The stalled download: head, size line and the 512 KiB that came, then a close
    // after the upstream timeout.
    let stalled = &spliced_seen[0];
    assert!(stalled.timed_out, "{:?}", stalled.bytes.len());
    assert!(stalled
        .bytes
        .ends_with(&(0..512 * 1024).map(pattern).collect::<Vec<u8>>()));
    assert!(
        spliced_seen[1].timed_out,
        "the stalled upload is ended by the client timeout"
    );
    let (up_wire, _, _) = chunked_body(&MIXED, TRAILERS, upload_byte);
    let (_, down_data, _) = chunked_body(&MIXED, TRAILERS, pattern);
    assert!(spliced_seen[2].bytes == down_data, "the complete download");
    assert_eq!(
        spliced_seen[3].bytes,
        up_wire.len().to_string().into_bytes()
    );
    // Splicing changes nothing a client or the log can see.
    for (i, (a, b)) in spliced_seen.iter().zip(&copied_seen).enumerate() {
        assert!(
            a == b,
            "exchange {i}: {} bytes spliced vs {} copied",
            a.bytes.len(),
            b.bytes.len()
        );
    }
    assert_eq!(spliced_rows, copied_rows);
    assert_eq!(spliced_rows.len(), 4, "{spliced_rows:?}");
}

#[test]
fn a_slow_reader_gets_a_chunked_download_of_big_chunks_with_bounded_memory() {
    // 64 MiB in 4 MiB chunks: the proxy must hold back, chunk after chunk, not buffer.
    const CHUNK: usize = 4 * MIB;
    const CHUNKS: usize = 16;
    let (port, _) = scripted(|_, mut s| {
        if backend_head_text(&mut s).is_none() {
            return;
        }
        if s.write_all(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            .is_err()
        {
            return;
        }
        for i in 0..CHUNKS {
            let start = (i * CHUNK) as u64;
            let mut c = format!("{CHUNK:x}\r\n").into_bytes();
            c.extend((start..start + CHUNK as u64).map(pattern));
            c.extend_from_slice(b"\r\n");
            if s.write_all(&c).is_err() {
                return;
            }
        }
        let _ = s.write_all(b"0\r\nX-Done: yes\r\n\r\n");
    });
    let p = proxy_for_port(port, &ADMIN);
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(b"GET /slow HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let h = read_head(&mut s);
    assert!(h.starts_with(b"HTTP/1.1 200"));
    let slow_until = std::time::Instant::now() + Duration::from_millis(1500);
    let size_line = format!("{CHUNK:x}\r\n").into_bytes();
    for i in 0..CHUNKS {
        assert_eq!(
            read_exact_vec(&mut s, size_line.len()),
            size_line,
            "chunk {i}"
        );
        let start = (i * CHUNK) as u64;
        let mut got = 0;
        let mut buf = vec![0u8; 64 * 1024];
        while got < CHUNK {
            let slow = std::time::Instant::now() < slow_until;
            let want = if slow { 16 * 1024 } else { buf.len() }.min(CHUNK - got);
            let n = s.read(&mut buf[..want]).unwrap();
            assert!(n > 0, "EOF in chunk {i}");
            for (k, &b) in buf[..n].iter().enumerate() {
                assert_eq!(b, pattern(start + (got + k) as u64));
            }
            got += n;
            if slow {
                std::thread::sleep(Duration::from_millis(4));
            }
        }
        assert_eq!(read_exact_vec(&mut s, 2), b"\r\n");
    }
    let end = b"0\r\nX-Done: yes\r\n\r\n";
    assert_eq!(read_exact_vec(&mut s, end.len()), end);
    let rss = p.peak_rss_kib();
    eprintln!("proxy peak RSS with a slow reader of big chunks: {rss} KiB");
    assert!(rss < 32 * 1024, "peak RSS {rss} KiB");
    assert!(spliced(p.admin.unwrap()) >= (CHUNK * CHUNKS) as u64 * 9 / 10);
}

#[test]
fn a_run_of_big_chunks_is_spliced_but_for_a_small_first_read_of_each() {
    // 32 chunks of 1 MiB each way, sent in one go: each chunk's size line arrives with
    // data behind it, read by copy into a 16 KiB buffer (which must not grow chunk after
    // chunk); the rest of every chunk is spliced.
    const N: usize = 32;
    let sizes = [MIB; N];
    let (down, _, _) = chunked_body(&sizes, "", pattern);
    let (port, _) = scripted(move |_, mut s| {
        while let Some(head) = backend_head_text(&mut s) {
            if head.contains("chunked") {
                let mut d = corelb::http::chunked::ChunkedDecoder::new();
                let mut buf = vec![0u8; MIB];
                let mut got = 0;
                while !d.is_done() {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => return,
                        Ok(n) => got += d.validate(&buf[..n]).expect("valid upload"),
                    }
                }
                let body = got.to_string();
                let answer = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if s.write_all(answer.as_bytes()).is_err() {
                    return;
                }
            } else {
                let head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n";
                if s.write_all(head).is_err() || s.write_all(&down).is_err() {
                    return;
                }
            }
        }
    });
    let p = proxy_for_port(port, &ADMIN);
    let admin = p.admin.unwrap();
    let mut s = connect(p.addr);
    s.write_all(b"GET /run HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut Vec::new(), "GET").unwrap();
    assert_eq!(r.body.len(), N * MIB);
    let down_spliced = spliced(admin);
    let (up, _, _) = chunked_body(&sizes, "", upload_byte);
    let mut w = s.try_clone().unwrap();
    let writer = std::thread::spawn(move || {
        w.write_all(b"POST /run HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        w.write_all(&up).unwrap();
    });
    let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
    writer.join().unwrap();
    let (wire, _, _) = chunked_body(&sizes, "", upload_byte);
    assert_eq!(r.text(), wire.len().to_string());
    let up_spliced = spliced(admin) - down_spliced;
    eprintln!(
        "spliced: {down_spliced} of {} down, {up_spliced} up",
        N * MIB
    );
    // At most 32 KiB of each chunk copied (a 16 KiB first read, maybe two).
    let least = (N * (MIB - 32 * 1024)) as u64;
    assert!(down_spliced >= least, "downloads: {down_spliced} spliced");
    assert!(up_spliced >= least, "uploads: {up_spliced} spliced");
}

//! The HTTP/2 front end (h2c prior knowledge) through the real binaries on loopback:
//! curl, nghttp and h2load against corelb in front of HTTP/1.1 `corelb-backend`s, and a
//! small blocking client on corelb's own codec for trailers, resets and malformed input.
//! A test whose tool is missing says so and passes.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use common::h2client::{
    code_of, frame, header, pairs, queue_gets, read_frame, s, take, GOAWAY, H2, RST,
};
use common::{curl, have, Backend, Proxy};
use corelb::h2::{ErrorCode, PREFACE};

fn url(p: &Proxy, path: &str) -> String {
    format!("http://{}{path}", p.addr)
}

fn three() -> (Backend, Backend, Backend) {
    (
        Backend::start("A", "fast", &[]),
        Backend::start("B", "fast", &[]),
        Backend::start("C", "fast", &[]),
    )
}

#[test]
fn curl_get_and_post_are_byte_exact() {
    if !have("curl") {
        return;
    }
    let (a, b, c) = three();
    let p = Proxy::start(&[&a, &b, &c], &[]);
    let (code, body) = curl(&["--http2-prior-knowledge", &url(&p, "/bytes/100000")]);
    assert_eq!(code, 0);
    assert_eq!(body.len(), 100_000);
    assert!(body
        .iter()
        .enumerate()
        .all(|(i, &x)| x == b'a' + (i % 26) as u8));
    let payload: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("payload");
    std::fs::write(&file, &payload).unwrap();
    let at = format!("@{}", file.display());
    let (code, body) = curl(&[
        "--http2-prior-knowledge",
        "--data-binary",
        &at,
        &url(&p, "/echo"),
    ]);
    assert_eq!(code, 0);
    assert!(
        body == payload,
        "POST with content-length echoed byte-exact"
    );
    // Without content-length the body goes upstream chunked.
    let (code, body) = curl(&[
        "--http2-prior-knowledge",
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        &at,
        &url(&p, "/echo"),
    ]);
    assert_eq!(code, 0);
    assert!(body == payload, "chunked POST echoed byte-exact");
    // HTTP/1.1 on the same listener is unaffected.
    let r = common::get(p.addr, "/bytes/10");
    assert_eq!(r.status, 200);
    assert_eq!(r.body, b"abcdefghij");
}

#[test]
fn one_connection_spreads_streams_round_robin() {
    if !have("nghttp") {
        return;
    }
    let (a, b, c) = three();
    let p = Proxy::start(&[&a, &b, &c], &[]);
    let before = [a.requests(), b.requests(), c.requests()];
    let out = Command::new("nghttp")
        .args(["-n", "-s", "-m", "300", "-t", "30", &url(&p, "/bytes/64")])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", s(&out.stderr));
    let lines = s(&out.stdout);
    assert_eq!(lines.lines().filter(|l| l.contains(" 200 ")).count(), 300);
    let after = [a.requests(), b.requests(), c.requests()];
    for i in 0..3 {
        let n = after[i] - before[i];
        assert!((95..=105).contains(&n), "backend {i} got {n} of 300");
    }
}

#[test]
fn trailers_both_ways() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    // Response: a chunked body's trailer section becomes HTTP/2 trailers.
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/bytes/20?chunked=1", &[], true);
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200);
    assert_eq!(g.body.len(), 20);
    assert!(
        g.trailers.iter().any(|(n, _)| n == "x-checksum"),
        "{:?}",
        g.trailers
    );
    // Request: trailers go into the chunked trailer section upstream.
    let (port, rx) = capture_server();
    let json = format!(
        r#"{{"servers": [{{"priority": 0, "name": "M", "address": "127.0.0.1", "port": {port}}}], "healthCheck": {{"enabled": false}}}}"#
    );
    let p2 = Proxy::with_config(&json, &[]);
    let mut h = H2::connect(p2.addr);
    let id = h.request("POST", "/upload", &[("te", "trailers")], false);
    h.data(id, b"hello", false);
    h.conn
        .send_trailers(id, &pairs(&[("x-sum", "42"), ("host", "dropped")]))
        .unwrap();
    h.flush();
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200, "{g:?}");
    let seen = rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let seen = s(&seen);
    assert!(seen.contains("Transfer-Encoding: chunked\r\n"), "{seen}");
    assert!(
        seen.ends_with("5\r\nhello\r\n0\r\nx-sum: 42\r\n\r\n"),
        "{seen}"
    );
}

/// Regression: an HTTP/1.1 backend's response trailers past 64 were dropped on their way to
/// an HTTP/2 client without a count; request trailers to it had no bound at all. One rule
/// now on every path (http::MAX_SECTION_FIELDS = 136 fields, the rest dropped and counted).
#[test]
fn trailer_sets_follow_one_bound_and_what_is_dropped_is_counted() {
    let mut resp =
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n".to_vec();
    for (n, v) in common::many_fields("x-r", 100) {
        resp.extend_from_slice(format!("{n}: {v}\r\n").as_bytes());
    }
    resp.extend_from_slice(b"\r\n");
    let (port, rx) = capture_server_answering(resp);
    let json = format!(
        r#"{{"servers": [{{"priority": 0, "name": "M", "address": "127.0.0.1", "port": {port}}}], "healthCheck": {{"enabled": false}}}}"#
    );
    let p = Proxy::with_config(&json, &["--admin", "127.0.0.1:0"]);
    let mut h = H2::connect(p.addr);
    let id = h.request("POST", "/upload", &[("te", "trailers")], false);
    h.data(id, b"hello", false);
    h.trailers(id, &common::many_fields("x-t", 140));
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.body, b"ok");
    assert_eq!(
        g.trailers.len(),
        100,
        "every response trailer reached the client"
    );
    let seen = s(&rx.recv_timeout(Duration::from_secs(5)).unwrap());
    let sent = seen.lines().filter(|l| l.starts_with("x-t")).count();
    assert_eq!(sent, 136, "request trailers within the bound");
    assert_eq!(common::stat(&p, "trailers_dropped"), 4);
}

/// A one-shot HTTP/1.1 server: reads a chunked request to its end, hands the raw bytes
/// over, answers 200.
fn capture_server() -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    capture_server_answering(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok".to_vec())
}

/// As [`capture_server`], answering with `answer`.
fn capture_server_answering(answer: Vec<u8>) -> (u16, std::sync::mpsc::Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in l.incoming() {
            let Ok(mut c) = conn else { return };
            c.set_read_timeout(Some(Duration::from_secs(5))).ok();
            let mut got = Vec::new();
            let mut buf = [0u8; 4096];
            while !got.ends_with(b"\r\n\r\n") || !got.windows(5).any(|w| w == b"\r\n0\r\n") {
                match c.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => got.extend_from_slice(&buf[..n]),
                }
            }
            let _ = c.write_all(&answer);
            let _ = tx.send(got);
        }
    });
    (port, rx)
}

#[test]
fn h2load_without_failures() {
    if !have("h2load") {
        return;
    }
    let (a, b, c) = three();
    let p = Proxy::start(&[&a, &b, &c], &[]);
    let out = Command::new("timeout")
        .args(["60", "h2load", "-n", "2000", "-c", "4", "-m", "16"])
        .arg(url(&p, "/bytes/100"))
        .output()
        .unwrap();
    let text = s(&out.stdout);
    assert!(
        text.contains("2000 total, 2000 started, 2000 done, 2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    let total = a.requests() + b.requests() + c.requests();
    assert_eq!(total, 2000);
}

#[test]
fn sigterm_sends_goaway_and_finishes_streams() {
    let a = Backend::start("A", "fast", &[]);
    let mut p = Proxy::start(&[&a], &["--drain-timeout", "5"]);
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/delay/600", &[], true);
    // Let the request reach the backend, then drain.
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        h.pump();
    }
    p.signal("TERM");
    assert_eq!(
        h.wait_goaway(Duration::from_secs(5)),
        Some(ErrorCode::NO_ERROR)
    );
    let g = h.wait(id, Duration::from_secs(5));
    assert_eq!(g.status, 200, "the stream in flight finishes: {g:?}");
    assert!(g.reset.is_none());
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}

#[test]
fn malformed_http2_is_refused_and_never_forwarded() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let before = a.requests();
    // A broken preface: GOAWAY PROTOCOL_ERROR.
    let mut sock = TcpStream::connect(p.addr).unwrap();
    let mut bad = PREFACE.to_vec();
    bad[20] = b'X';
    sock.write_all(&bad).unwrap();
    let (kind, _, payload) = read_frame(&mut sock, &[GOAWAY]).expect("GOAWAY");
    assert_eq!(code_of(kind, &payload), ErrorCode::PROTOCOL_ERROR);
    // Malformed requests: RST_STREAM PROTOCOL_ERROR, the connection goes on.
    let cases: Vec<Vec<(&str, &str)>> = vec![
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/bytes/1"),
            ("X-Upper", "1"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/bytes/1"),
            ("connection", "keep-alive"),
        ],
        vec![(":method", "GET"), (":scheme", "http"), (":authority", "x")],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/bytes/1"),
            (":authority", "x"),
            (":status", "200"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/a b"),
        ],
    ];
    let mut h = H2::connect(p.addr);
    for f in &cases {
        let id = h.raw_headers(f, true);
        let g = h.wait(id, Duration::from_secs(5));
        assert_eq!(g.reset, Some(ErrorCode::PROTOCOL_ERROR), "{f:?}: {g:?}");
        assert_eq!(g.status, 0);
    }
    // DATA on a closed stream: STREAM_CLOSED.
    let id = h.request("GET", "/bytes/1", &[], true);
    let g = h.wait(id, Duration::from_secs(5));
    assert_eq!(g.status, 200);
    let mut frame = vec![0, 0, 1, 0, 0];
    frame.extend_from_slice(&id.to_be_bytes());
    frame.push(b'x');
    h.sock.write_all(&frame).unwrap();
    let (kind, _, payload) = read_frame(&mut h.sock, &[RST, GOAWAY]).expect("an error");
    assert_eq!(code_of(kind, &payload), ErrorCode::STREAM_CLOSED);
    // Only the one valid request reached the backend.
    assert_eq!(a.requests() - before, 1);
}

#[test]
fn client_reset_aborts_only_its_stream() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--admin", "127.0.0.1:0"]);
    let mut h = H2::connect(p.addr);
    let slow = h.request("GET", "/delay/2000", &[], true);
    let upload = h.request("POST", "/echo", &[], false);
    h.data(upload, &[b'u'; 1000], false);
    let end = Instant::now() + Duration::from_millis(200);
    while Instant::now() < end {
        h.pump();
    }
    h.conn.reset(slow, ErrorCode::CANCEL);
    h.conn.reset(upload, ErrorCode::CANCEL);
    h.flush();
    let ok = h.request("GET", "/bytes/5", &[], true);
    let g = h.wait(ok, Duration::from_secs(5));
    assert_eq!(g.status, 200);
    assert_eq!(g.body, b"abcde");
    assert_eq!(header(&g, "x-backend"), Some("A"));
    assert!(h.got.get(&slow).is_none_or(|g| g.status == 0));
    // Counted as client aborts, and the resets as HTTP/2 resets received.
    let admin = p.admin.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        let r = common::get(admin, "/stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["totals"]["client_aborts"].as_u64() == Some(2)
            && v["totals"]["h2"]["resets_received"].as_u64() == Some(2)
            && v["totals"]["h2"]["streams"].as_u64() == Some(3)
    }));
    let m = common::get(admin, "/metrics").text();
    assert!(m.contains("corelb_h2_resets_received_total 2"), "{m}");
}

#[test]
fn backend_lost_before_head_is_502_and_mid_body_is_a_stream_reset() {
    let a = Backend::start("A", "fast", &[]);
    let dead = common::dead_port();
    let json = format!(
        r#"{{"servers": [{{"priority": 0, "name": "D", "address": "127.0.0.1", "port": {dead}}}], "healthCheck": {{"enabled": false}}}}"#
    );
    let p = Proxy::with_config(&json, &[]);
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/bytes/5", &[], true);
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 502, "{g:?}");
    // /close: the backend closes mid-body: that stream is reset, the connection lives.
    let p = Proxy::start(&[&a], &[]);
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/close", &[], true);
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.reset, Some(ErrorCode::INTERNAL_ERROR), "{g:?}");
    let id = h.request("GET", "/bytes/3", &[], true);
    assert_eq!(h.wait(id, Duration::from_secs(5)).body, b"abc");
}

#[test]
fn streams_are_logged_with_their_protocol_and_retried_like_http1() {
    let a = Backend::start("A", "fast", &[]);
    let dead = common::dead_port();
    // A dead server first in line: its connect failures are retried on A (and count).
    let json = format!(
        r#"{{"servers": [{{"priority": 0, "name": "D", "address": "127.0.0.1", "port": {dead}}}, {{"priority": 0, "name": "A", "address": "127.0.0.1", "port": {}}}], "healthCheck": {{"enabled": false}}}}"#,
        a.port()
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let mut p = Proxy::with_config(
        &json,
        &[
            "--log-csv",
            csv.to_str().unwrap(),
            "--upstream",
            "per-request",
        ],
    );
    let mut h = H2::connect(p.addr);
    let ids: Vec<u32> = (0..6)
        .map(|_| h.request("GET", "/bytes/4", &[], true))
        .collect();
    for id in ids {
        let g = h.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(header(&g, "x-backend"), Some("A"));
    }
    assert_eq!(common::get(p.addr, "/bytes/1").status, 200);
    drop(h);
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(header[14], "protocol");
    assert_eq!(header[15], "upstream_protocol");
    assert_eq!(header[16], "grpc_status");
    assert_eq!(header[17], "tls");
    assert_eq!(header.last().map(String::as_str), Some("attempts"));
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 7);
    let h2 = rows.iter().filter(|r| &r[14] == "h2").count();
    let h1 = rows.iter().filter(|r| &r[14] == "http1").count();
    assert_eq!((h2, h1), (6, 1));
    assert!(rows.iter().all(|r| &r[3] == "200"));
    assert!(rows.iter().all(|r| &r[15] == "http1"), "HTTP/1.1 backends");
    assert!(
        rows.iter().all(|r| r[16].is_empty()),
        "no gRPC call, no grpc_status"
    );
    // The requests round robin sent to D first took a second attempt, on A.
    let retried = rows.iter().filter(|r| &r[18] == "2").count();
    assert!(retried >= 1, "{rows:?}");
    assert!(rows.iter().all(|r| &r[18] == "1" || &r[18] == "2"));
    // Per-request upstream mode: every request had a connection of its own.
    assert!(a.stats().1 >= 7);
}

#[test]
fn a_client_that_never_opens_its_window_is_timed_out() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&a],
        &[
            "--send-timeout",
            "1",
            "--idle-timeout",
            "1",
            "--admin",
            "127.0.0.1:0",
        ],
    );
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/bytes/1000000", &[], true);
    // Read what comes but never release it: no WINDOW_UPDATE, the window stays shut.
    let start = Instant::now();
    let mut got = 0;
    let mut buf = [0u8; 65536];
    h.sock
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let closed = loop {
        match h.sock.read(&mut buf) {
            Ok(0) => break true,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
            Err(_) => {}
        }
        if start.elapsed() > Duration::from_secs(8) {
            break false;
        }
    };
    // The stream after the send timeout, then the connection after the idle one.
    assert!(closed, "closed after the send and idle timeouts");
    assert!(start.elapsed() >= Duration::from_millis(1800));
    // The client announced a 256 KiB stream window (the codec default).
    assert!(got < 300_000, "no more than the window was sent: {got}");
    let _ = id;
    let admin = p.admin.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        let r = common::get(admin, "/stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["totals"]["client_aborts"].as_u64() == Some(1)
            && v["totals"]["h2"]["send_timeouts"].as_u64() == Some(1)
    }));
}

#[test]
fn rapid_reset_is_cut_off_and_counted() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--admin", "127.0.0.1:0"]);
    let mut h = H2::connect(p.addr);
    for _ in 0..260 {
        let Some(id) = h.conn.open_stream() else {
            break;
        };
        let f = [
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", "/delay/100"),
        ];
        h.conn.send_headers(id, &pairs(&f), true).unwrap();
        h.conn.reset(id, ErrorCode::CANCEL);
    }
    h.flush();
    assert_eq!(
        h.wait_goaway(Duration::from_secs(5)),
        Some(ErrorCode::ENHANCE_YOUR_CALM)
    );
    let admin = p.admin.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || {
        let r = common::get(admin, "/stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["totals"]["h2"]["rapid_resets"].as_u64() == Some(1)
    }));
    let m = common::get(admin, "/metrics").text();
    assert!(m.contains("corelb_h2_rapid_resets_total 1"), "{m}");
    // The worker goes on serving.
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/bytes/2", &[], true);
    assert_eq!(h.wait(id, Duration::from_secs(5)).body, b"ab");
}

#[test]
fn idle_connections_get_goaway_and_connect_is_refused() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--idle-timeout", "1"]);
    let mut h = H2::connect(p.addr);
    let f = [(":method", "CONNECT"), (":authority", "example.com:443")];
    let id = h.raw_headers(&f, false);
    let g = h.wait(id, Duration::from_secs(5));
    assert_eq!(g.status, 405, "{g:?}");
    let started = Instant::now();
    assert_eq!(
        h.wait_goaway(Duration::from_secs(5)),
        Some(ErrorCode::NO_ERROR)
    );
    assert!(started.elapsed() >= Duration::from_millis(800));
    assert_eq!(a.requests(), 0);
}

/// MadeYouReset (CVE-2025-8671): waves of streams that make corelb reset them (a
/// WINDOW_UPDATE of 0, DATA past the content-length). Those resets count toward the same
/// budget as the client's own (--h2-max-resets), so the connection ends with GOAWAY
/// ENHANCE_YOUR_CALM, and the streams reset in the read that opened them never reach a
/// backend. Before, all 3,000 streams of a connection reached the backends.
#[test]
fn made_you_reset_floods_end_the_connection_and_reach_no_backend() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--admin", "127.0.0.1:0", "--h2-max-resets", "100"]);
    let mut h = H2::connect(p.addr);
    // 30 waves of 50 streams, back to back (the budget is per 10 s).
    for _wave in 0..30 {
        let ids = queue_gets(&mut h, "/delay/500", 50);
        let mut bytes = take(&mut h);
        for (k, id) in ids.iter().enumerate() {
            if k % 2 == 0 {
                bytes.extend(frame(8, 0, *id, &[0, 0, 0, 0]));
            } else {
                // END_STREAM, then DATA on the half-closed stream.
                bytes.extend(frame(0, 1, *id, b""));
                bytes.extend(frame(0, 0, *id, b"x"));
            }
        }
        if h.sock.write_all(&bytes).is_err() {
            break;
        }
    }
    let goaway = read_frame(&mut h.sock, &[GOAWAY]).map(|(kind, _, p)| code_of(kind, &p));
    assert_eq!(goaway, Some(ErrorCode::ENHANCE_YOUR_CALM));
    let admin = p.admin.unwrap();
    let h2 = |name: &str| {
        let r = common::get(admin, "/stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        v["totals"]["h2"][name].as_u64().unwrap()
    };
    assert!(
        common::eventually(Duration::from_secs(5), || h2("rapid_resets") == 1),
        "rapid_resets {}",
        h2("rapid_resets")
    );
    // The budget bounds what reaches a backend; streams reset in the read that opened
    // them (nearly all here) reach none.
    assert!(
        h2("resets_unforwarded") >= 50,
        "{}",
        h2("resets_unforwarded")
    );
    let (requests, _, _) = a.stats();
    assert!(requests <= 100, "backend requests: {requests}");
    // Another client is served as usual.
    let mut other = H2::connect(p.addr);
    let id = other.request("GET", "/bytes/3", &[], true);
    assert_eq!(other.wait(id, Duration::from_secs(5)).status, 200);
}

/// A stream the client resets in the same read as its HEADERS opens no backend
/// connection (rapid reset left 201 connections with 0 requests before).
#[test]
fn streams_reset_at_once_open_no_backend_connection() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&a],
        &["--admin", "127.0.0.1:0", "--h2-max-resets", "1000"],
    );
    let mut h = H2::connect(p.addr);
    for _ in 0..5 {
        let ids = queue_gets(&mut h, "/bytes/1", 40);
        let mut bytes = take(&mut h);
        for id in ids {
            bytes.extend(frame(3, 0, id, &ErrorCode::CANCEL.0.to_be_bytes()));
        }
        h.sock.write_all(&bytes).unwrap();
    }
    let id = h.request("GET", "/bytes/2", &[], true);
    assert_eq!(h.wait(id, Duration::from_secs(5)).status, 200);
    // Connections that carried a request (the backend's own /stats is not one).
    let (requests, connections, _) = a.stats();
    assert_eq!(
        (requests, connections),
        (1, 1),
        "one backend connection, for one request"
    );
    let r = common::get(p.admin.unwrap(), "/metrics").text();
    assert!(r.contains("corelb_h2_resets_unforwarded_total 200"), "{r}");
}

/// RFC 9113 §5.1: DATA after the client's own RST_STREAM is a stream error STREAM_CLOSED
/// (it was silently ignored).
#[test]
fn data_after_the_clients_reset_is_answered_stream_closed() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let mut h = H2::connect(p.addr);
    let id = h.request("POST", "/echo", &[], false);
    h.data(id, b"some", false);
    h.conn.reset(id, ErrorCode::CANCEL);
    h.flush();
    h.sock.write_all(&frame(0, 0, id, b"late")).unwrap();
    let (kind, stream, payload) = read_frame(&mut h.sock, &[RST, GOAWAY]).expect("an error");
    assert_eq!((kind, stream), (RST, id));
    assert_eq!(code_of(kind, &payload), ErrorCode::STREAM_CLOSED);
}

/// An HTTP/2 stream's backend deadline (the stream's own, for either server kind) runs
/// only while corelb waits on the backend: a stream whose HTTP/1.1 connection is up and
/// waits for the client's body outlasts the connect and upstream timeouts, while a server
/// that takes the request and never answers gets the stream a 504 after the upstream one.
#[test]
fn an_http1_leg_times_out_on_its_server_not_on_a_slow_client() {
    let b = Backend::start("B", "fast", &[]);
    let args = ["--connect-timeout", "300ms", "--upstream-timeout", "300ms"];
    let p = Proxy::start(&[&b], &args);
    let mut h = H2::connect(p.addr);
    // (The sink answers once it has the whole body.)
    let id = h.request("POST", "/sink", &[("content-length", "5")], false);
    // The time under test: the connection comes up at once, the body a while later.
    std::thread::sleep(Duration::from_millis(900));
    h.data(id, b"hello", true);
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200, "{g:?}");
    assert!(s(&g.body).contains("\"bytes\":5"), "{}", s(&g.body));

    let started = Instant::now();
    let id = h.request("GET", "/hang", &[], true);
    let g = h.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 504, "{g:?}");
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

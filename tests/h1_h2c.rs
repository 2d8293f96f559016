//! HTTP/1.1 clients through corelb to h2c backends (`corelb-backend --protocol h2c`), with
//! the real binaries on loopback: requests and bodies translated to HTTP/2 (Content-Length
//! and chunked uploads, request trailers), responses back to HTTP/1.1 (Content-Length, or
//! chunked with the backend's trailers), keep-alive over shared h2c connections, resets,
//! REFUSED_STREAM retries, and a 1 GiB download in bounded memory.

mod common;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{curl, Backend, Proxy};

/// An h2c backend.
fn h2c(id: &str) -> Backend {
    Backend::start(id, "fast", &["--protocol", "h2c"])
}

/// corelb in front of `servers` as (backend, protocol), with extra flags.
fn proxy(servers: &[(&Backend, &str)], extra: &[&str]) -> Proxy {
    let list: Vec<(&str, u16, &str)> = servers
        .iter()
        .map(|(b, proto)| (b.id.as_str(), b.port(), *proto))
        .collect();
    proxy_on(&list, extra)
}

/// corelb in front of `servers` as (name, port, protocol), with extra flags.
fn proxy_on(servers: &[(&str, u16, &str)], extra: &[&str]) -> Proxy {
    let list: Vec<String> = servers
        .iter()
        .map(|(name, port, proto)| {
            format!(
                r#"{{"priority": 0, "name": "{name}", "address": "127.0.0.1", "port": {port}, "load": 1, "protocol": "{proto}"}}"#
            )
        })
        .collect();
    let json = format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "servers": [{}]}}"#,
        list.join(", ")
    );
    Proxy::with_config(&json, extra)
}

fn url(p: &Proxy, path: &str) -> String {
    format!("http://{}{path}", p.addr)
}

fn is_pattern(body: &[u8], from: u64) -> bool {
    body.iter()
        .enumerate()
        .all(|(i, &x)| x == b'a' + ((from + i as u64) % 26) as u8)
}

/// corelb's `/stats` totals.
fn totals(admin: SocketAddr) -> serde_json::Value {
    let r = common::get(admin, "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats json");
    v["totals"].clone()
}

fn sha256(path: &std::path::Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn keep_alive_spreads_requests_over_shared_h2c_connections() {
    let (a, b) = (h2c("A"), h2c("B"));
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let csv_s = csv.to_str().unwrap();
    let mut p = proxy(
        &[(&a, "h2c"), (&b, "h2c")],
        &[
            "--admin",
            "127.0.0.1:0",
            "--log-csv",
            csv_s,
            "--workers",
            "1",
        ],
    );
    let mut s = common::connect(p.addr);
    let mut pending = Vec::new();
    let mut seen = Vec::new();
    for i in 0..40u64 {
        let n = 1 + i * 997;
        let method = if i % 10 == 9 { "HEAD" } else { "GET" };
        let req = format!("{method} /bytes/{n} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let r = common::read_response(&mut s, &mut pending, method).expect("a response");
        assert_eq!(r.status, 200, "{r:?}");
        assert_eq!(r.header("Content-Length"), Some(n.to_string().as_str()));
        assert_eq!(r.header("Via"), Some("2 corelb"));
        if method == "GET" {
            assert_eq!(r.body.len() as u64, n);
            assert!(is_pattern(&r.body, 0));
        } else {
            assert!(r.body.is_empty());
        }
        seen.push(r.backend());
    }
    // No body for 204 and 304 (and the connection stays in step).
    for code in [204u16, 304] {
        let req = format!("GET /status/{code} HTTP/1.1\r\nHost: t\r\n\r\n");
        s.write_all(req.as_bytes()).unwrap();
        let r = common::read_response(&mut s, &mut pending, "GET").expect("a response");
        assert_eq!(r.status, code);
        assert!(r.header("Transfer-Encoding").is_none(), "{r:?}");
        seen.push(r.backend());
    }
    s.write_all(b"GET /bytes/2 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = common::read_response(&mut s, &mut pending, "GET").expect("a response");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"ab"[..]));
    assert!(pending.is_empty());
    seen.push(r.backend());
    // Round-robin over both servers, all on this one client connection.
    assert!(seen.windows(2).all(|w| w[0] != w[1]), "{seen:?}");
    let t = totals(p.admin.unwrap());
    // Two shared h2c connections carried the 40 requests (one per backend).
    assert_eq!(t["upstream_connects"], 2, "{t}");
    assert_eq!(t["accepted"], 1, "{t}");
    drop(s);
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    let proto = header.iter().position(|h| h == "protocol").unwrap();
    let up = header
        .iter()
        .position(|h| h == "upstream_protocol")
        .unwrap();
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    let ours: Vec<_> = rows
        .iter()
        .filter(|r| r[7].starts_with("/bytes/"))
        .collect();
    assert_eq!(ours.len(), 41);
    assert!(ours
        .iter()
        .all(|r| &r[proto] == "http1" && &r[up] == "h2c" && &r[3] == "200"));
}

#[test]
fn uploads_with_content_length_and_chunked_are_echoed_byte_exact() {
    let (a, b) = (h2c("A"), h2c("B"));
    let p = proxy(&[(&a, "h2c"), (&b, "h2c")], &[]);
    let dir = tempfile::tempdir().unwrap();
    let up = dir.path().join("up");
    let payload: Vec<u8> = (0..6_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&up, &payload).unwrap();
    let want = sha256(&up);
    let at = format!("@{}", up.display());
    for chunked in [false, true] {
        let down = dir.path().join(format!("down-{chunked}"));
        let mut args = vec!["--data-binary", &at, "-o", down.to_str().unwrap()];
        if chunked {
            args.extend(["-H", "Transfer-Encoding: chunked"]);
        }
        let u = url(&p, "/echo");
        args.push(&u);
        let started = Instant::now();
        let (code, _) = curl(&args);
        assert_eq!(code, 0, "chunked: {chunked}");
        assert_eq!(sha256(&down), want, "chunked: {chunked}");
        // curl sends `Expect: 100-continue` for such a body: corelb answers it at once
        // (curl would otherwise wait a second before sending).
        assert!(started.elapsed() < Duration::from_secs(10));
    }
    // A small POST with Content-Length on a raw socket, and an empty one.
    let r = common::raw(
        p.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!((r.status, r.body.as_slice()), (200, &b"hello"[..]));
    assert_eq!(r.header("Content-Length"), Some("5"));
    let r = common::raw(
        p.addr,
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n",
    )
    .unwrap();
    assert_eq!((r.status, r.body.len()), (200, 0));
}

#[test]
fn trailers_go_both_ways_as_chunked_trailer_sections() {
    let a = h2c("A");
    let p = proxy(&[(&a, "h2c")], &["--admin", "127.0.0.1:0"]);
    let admin = p.admin.unwrap();
    // The backend's trailers arrive in the chunked trailer section.
    let mut s = common::connect(p.addr);
    s.write_all(b"GET /trailers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8_lossy(&all).into_owned();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("Transfer-Encoding: chunked\r\n"), "{all}");
    let end = all.find("\r\n0\r\n").expect("last chunk");
    let section = &all[end + 5..];
    assert!(section.contains("x-trailer: yes\r\n"), "{all}");
    assert!(section.ends_with("\r\n\r\n"), "{all}");
    // Request trailers of a chunked upload go to the backend as HTTP/2 trailers; its echo
    // sends them back as response trailers.
    let mut s = common::connect(p.addr);
    s.write_all(
        b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\
          5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Sum: 42\r\n\r\n",
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let all = String::from_utf8_lossy(&all).into_owned();
    assert!(all.contains("hello world"), "{all}");
    let end = all.rfind("\r\n0\r\n").expect("last chunk");
    assert_eq!(&all[end..], "\r\n0\r\nx-sum: 42\r\n\r\n", "{all}");
    // An HTTP/1.0 client cannot take trailers: dropped and counted.
    assert_eq!(totals(admin)["trailers_dropped"], 0);
    let all = common::raw_all(p.addr, b"GET /trailers HTTP/1.0\r\n\r\n");
    let all = String::from_utf8_lossy(&all).into_owned();
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.contains("Connection: close\r\n") && !all.contains("x-trailer"));
    assert!(all.ends_with("trailers\n"), "{all}");
    assert!(common::eventually(Duration::from_secs(2), || {
        totals(admin)["trailers_dropped"].as_u64() >= Some(1)
    }));
}

#[test]
fn a_large_download_is_byte_exact() {
    let (a, b) = (h2c("A"), h2c("B"));
    let p = proxy(&[(&a, "h2c"), (&b, "h2c")], &[]);
    for path in ["/bytes/30000000", "/bytes/3000000?chunked=1"] {
        let (code, body) = curl(&[&url(&p, path)]);
        assert_eq!(code, 0, "{path}");
        let n: usize = path[7..].split('?').next().unwrap().parse().unwrap();
        assert_eq!(body.len(), n, "{path}");
        assert!(is_pattern(&body, 0), "{path}");
    }
}

#[test]
fn a_backend_reset_mid_response_is_a_truncation() {
    let a = h2c("A");
    let p = proxy(&[(&a, "h2c")], &[]);
    // The head and a few bytes, then RST_STREAM: curl sees the body cut short.
    let (code, _) = curl(&[&url(&p, "/reset")]);
    assert_eq!(code, 18, "curl: partial transfer");
    let got = common::raw_all(p.addr, b"GET /reset HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&got).into_owned();
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(!text.ends_with("0\r\n\r\n"), "no last chunk: {text}");
    // The shared connection serves the next requests.
    for _ in 0..3 {
        let r = common::get(p.addr, "/bytes/5");
        assert_eq!((r.status, r.body.as_slice()), (200, &b"abcde"[..]));
    }
}

#[test]
fn refused_streams_are_retried_on_another_server() {
    // A refuses `/refuse` (RST_STREAM REFUSED_STREAM); B speaks HTTP/1.1 and answers it.
    // A body sent with a refused stream was kept: the request goes elsewhere whole.
    let a = h2c("A");
    let b = Backend::start("B", "fast", &[]);
    let requests = [
        &b"GET /refuse HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
        b"POST /refuse HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\
          5\r\nhello\r\n0\r\n\r\n",
    ];
    for req in requests {
        // A fresh corelb each time: passive health soon keeps A out of the rotation.
        let p = proxy(&[(&a, "h2c"), (&b, "http1")], &["--admin", "127.0.0.1:0"]);
        let mut s = common::connect(p.addr);
        let mut pending = Vec::new();
        for _ in 0..6 {
            s.write_all(req).unwrap();
            let method = if req.starts_with(b"GET") {
                "GET"
            } else {
                "POST"
            };
            let r = common::read_response(&mut s, &mut pending, method).expect("a response");
            assert!(r.status < 500, "{r:?}");
            assert_eq!(r.backend(), "B");
        }
        let t = totals(p.admin.unwrap());
        assert!(t["retries"].as_u64().unwrap() >= 1, "{t}");
    }
    // Both servers unable to serve it: a 502 after the retries.
    let (a2, b2) = (h2c("A"), h2c("B"));
    let p = proxy(&[(&a2, "h2c"), (&b2, "h2c")], &[]);
    let r = common::get(p.addr, "/refuse");
    assert_eq!(r.status, 502);
}

#[test]
fn a_gigabyte_through_one_connection_in_bounded_memory() {
    let a = h2c("A");
    // No active checks: on a loaded machine a 1 s check behind a backend busy with a
    // gigabyte can time out three times over, and the follow-up request would get 503.
    let p = proxy(&[(&a, "h2c")], &["--health-check", "off"]);
    let mut s = common::connect(p.addr);
    const N: u64 = 1 << 30;
    let started = Instant::now();
    s.write_all(format!("GET /bytes/{N} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut head = Vec::new();
    let mut got: u64 = 0;
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        head.extend_from_slice(&buf[..n]);
    }
    let at = head.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let text = String::from_utf8_lossy(&head[..at]).into_owned();
    assert!(text.contains(&format!("Content-Length: {N}\r\n")), "{text}");
    assert!(is_pattern(&head[at..], 0));
    got += (head.len() - at) as u64;
    while got < N {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got} bytes");
        // Spot checks keep the test fast in debug builds.
        assert_eq!(buf[0], b'a' + (got % 26) as u8);
        got += n as u64;
    }
    assert_eq!(got, N);
    let rss = p.peak_rss_kib();
    eprintln!(
        "1 GiB in {:?}, corelb peak RSS {rss} KiB",
        started.elapsed()
    );
    assert!(rss < 100 * 1024, "peak RSS {rss} KiB");
    assert!(started.elapsed() < Duration::from_secs(20));
    // The connection is still good for another request.
    s.write_all(b"GET /bytes/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = common::read_response(&mut s, &mut Vec::new(), "GET").unwrap();
    assert_eq!(r.body, b"abc");
}

#[test]
fn unreachable_and_slow_backends() {
    // A server that refuses connections: the request goes to the other one.
    let a = h2c("A");
    let servers = [("D", common::dead_port(), "h2c"), ("A", a.port(), "h2c")];
    let p = proxy_on(&servers, &[]);
    for _ in 0..6 {
        let r = common::get(p.addr, "/bytes/4");
        assert_eq!((r.status, r.backend().as_str()), (200, "A"));
    }
    // A backend that does not answer in time: a POST (not replayed) gets a 504, and the
    // shared connections serve on.
    let b = h2c("B");
    let p = proxy(
        &[(&a, "h2c"), (&b, "h2c")],
        &["--upstream-timeout", "400ms"],
    );
    let started = Instant::now();
    let r = common::raw(
        p.addr,
        b"POST /hang HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc",
    )
    .unwrap();
    assert_eq!(r.status, 504);
    assert!(started.elapsed() < Duration::from_secs(5));
    let r = common::get(p.addr, "/bytes/4");
    assert_eq!((r.status, r.body.as_slice()), (200, &b"abcd"[..]));
}

#[test]
fn sigterm_finishes_exchanges_in_flight_then_closes() {
    let a = h2c("A");
    let mut p = proxy(&[(&a, "h2c")], &["--drain-timeout", "5"]);
    let mut s = common::connect(p.addr);
    s.write_all(b"GET /delay/600 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    // Let the request reach the backend, then drain.
    std::thread::sleep(Duration::from_millis(200));
    p.signal("TERM");
    let mut pending = Vec::new();
    let r = common::read_response(&mut s, &mut pending, "GET").expect("the answer");
    assert_eq!(r.status, 200, "{r:?}");
    assert_eq!(r.header("Connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(s.read_to_end(&mut rest).unwrap_or(0), 0, "closed after it");
    assert!(p.wait_exit(Duration::from_secs(10)).is_some());
}

/// h2c server A, which refuses `/refuse`, and HTTP/1.1 server B, round robin, with a
/// retry policy for POSTs keeping at most `replay_bytes` of body: the config and both.
fn refusing_h2c_and_http1(replay_bytes: usize) -> (Backend, Backend, String) {
    let a = h2c("A");
    let b = Backend::start("B", "fast", &[]);
    let cfg = format!(
        r#"{{"mode": "round-robin", "healthCheck": {{"enabled": false}},
            "retryPolicy": {{"retryOn": ["reset"], "methods": ["POST"], "replayBufferBytes": {replay_bytes}}},
            "servers": [{{"name": "A", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}},
                        {{"name": "B", "address": "127.0.0.1", "port": {}}}]}}"#,
        a.port(),
        b.port()
    );
    (a, b, cfg)
}

#[test]
fn a_refused_stream_is_replayed_only_within_the_replay_buffer() {
    // A refuses `/refuse` after taking the request's body; B (HTTP/1.1) answers it. With a
    // 1 KiB replay buffer, a 500-byte body is kept and goes to B whole; a 5,000-byte one
    // outgrows it (counted) and its refusal is a 502, as for every other protocol pair.
    let (_a, b, cfg) = refusing_h2c_and_http1(1024);
    for (size, kept) in [(500, true), (5000, false)] {
        let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
        let before = b.requests();
        let body = "x".repeat(size);
        let req = format!(
            "POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n{body}"
        );
        let statuses: Vec<u16> = (0..4)
            .map(|_| {
                common::raw(p.addr, req.as_bytes())
                    .expect("a response")
                    .status
            })
            .collect();
        let ok = statuses.iter().filter(|&&s| s == 200).count() as u64;
        assert_eq!(
            b.requests() - before,
            ok,
            "B got only whole requests: {statuses:?}"
        );
        let t = totals(p.admin.unwrap());
        if kept {
            assert_eq!(ok, 4, "{statuses:?}");
            assert_eq!(t["replay_overflows"], 0, "{t}");
        } else {
            assert!(
                ok < 4 && statuses.iter().all(|&s| s == 200 || s == 502),
                "{statuses:?}"
            );
            assert_eq!(t["replay_overflows"], 4, "every big POST outgrew it: {t}");
        }
    }
}

/// A body that takes many reads of the client is kept as it is sent, in the replay buffer
/// every pair uses (before, reading more of it gave the replay up): a stream refused after
/// some of it went is replayed whole on another server.
#[test]
fn a_refused_stream_with_a_body_of_many_reads_is_replayed_whole() {
    let (_a, b, cfg) = refusing_h2c_and_http1(1048576);
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let size = 300_000;
    let body: Vec<u8> = (0..size).map(|i| b'a' + (i % 26) as u8).collect();
    for _ in 0..4 {
        let before = b.requests();
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "POST /refuse HTTP/1.1\r\nHost: t\r\nContent-Length: {size}\r\nConnection: close\r\n\r\n"
        );
        s.write_all(head.as_bytes()).unwrap();
        for piece in body.chunks(16 * 1024) {
            s.write_all(piece).unwrap();
        }
        let mut answer = Vec::new();
        let _ = s.read_to_end(&mut answer);
        let text = String::from_utf8_lossy(&answer);
        // Round robin sends every other POST to B first: those are simply answered.
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert_eq!(b.requests() - before, 1, "B got the request once, whole");
    }
    let t = totals(p.admin.unwrap());
    assert_eq!(t["replay_overflows"], 0, "{t}");
    assert!(
        t["retries"].as_u64().unwrap_or(0) >= 2,
        "A refused half of them: {t}"
    );
}

//! Proxy core, end to end: the real `corelb` in front of real `corelb-backend`s.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::Duration;

fn fast(id: &str) -> Backend {
    Backend::start(id, "fast", &[])
}

#[test]
fn get_is_answered_by_the_backend() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--workers", "1"]);
    let r = get(p.addr, "/hello");
    assert_eq!(r.status, 200);
    assert_eq!(r.backend(), "A");
    assert_eq!(r.text(), "Response from server A after 0 ms\n");
    assert_eq!(r.header("Via"), Some("1.1 corelb"));
}

#[test]
fn post_body_reaches_the_backend_and_echo_comes_back() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let body = "x".repeat(100_000);
    let req = format!(
        "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let r = raw(p.addr, req.as_bytes()).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.body.len(), body.len());
    assert_eq!(r.text(), body);
}

#[test]
fn chunked_request_and_response_pass_through() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let req = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nX-Trailer: yes\r\n\r\n";
    let r = raw(p.addr, req).unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hello world");
    let r = get(p.addr, "/bytes/100000?chunked=1");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Transfer-Encoding"), Some("chunked"));
    assert_eq!(r.body.len(), 100_000);
    assert!(r
        .body
        .iter()
        .enumerate()
        .all(|(i, &b)| b == b'a' + (i % 26) as u8));
}

#[test]
fn curl_chunked_upload_and_download() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let url = format!("http://{}/echo", p.addr);
    let (code, out) = curl(&[
        "-H",
        "Transfer-Encoding: chunked",
        "--data-binary",
        "streamed by curl",
        &url,
    ]);
    assert_eq!(code, 0);
    assert_eq!(out, b"streamed by curl");
    let (code, out) = curl(&[&format!("http://{}/bytes/70000?chunked=1", p.addr)]);
    assert_eq!(code, 0);
    assert_eq!(out.len(), 70_000);
}

#[test]
fn http10_client_gets_a_dechunked_body_and_close() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let out = raw_all(p.addr, b"GET /bytes/5000?chunked=1 HTTP/1.0\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    let (head, body) = text.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(head.contains("Connection: close"));
    assert_eq!(body.len(), 5000);
    // HTTP/1.0 with keep-alive and a Content-Length response stays open.
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for _ in 0..3 {
        s.write_all(b"GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap();
        let r = read_response(&mut s, &mut pending, "GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.header("Connection"), Some("keep-alive"));
    }
}

#[test]
fn hop_by_hop_headers_are_removed_and_forwarding_headers_added() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let r = raw(
        p.addr,
        b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: X-Private, close\r\nX-Private: secret\r\nKeep-Alive: 300\r\nProxy-Connection: keep-alive\r\nTE: trailers\r\nUpgrade: h2c\r\nX-Forwarded-For: 203.0.113.9\r\nX-Kept: yes\r\n\r\n",
    )
    .unwrap();
    let seen = r.text().to_ascii_lowercase();
    for gone in [
        "x-private",
        "keep-alive",
        "proxy-connection",
        "te:",
        "upgrade",
        "connection: x-private",
    ] {
        assert!(!seen.contains(gone), "{gone} reached the backend:\n{seen}");
    }
    assert!(seen.contains("x-kept: yes"));
    assert!(
        seen.contains("x-forwarded-for: 203.0.113.9, 127.0.0.1\r\n"),
        "{seen}"
    );
    assert!(seen.contains("via: 1.1 corelb"));
}

#[test]
fn persistent_mode_reuses_one_upstream_connection() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--workers", "2", "--upstream", "persistent"]);
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for _ in 0..20 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        assert_eq!(
            read_response(&mut s, &mut pending, "GET").unwrap().status,
            200
        );
    }
    let (requests, connections, _) = a.stats();
    assert_eq!(requests, 20);
    assert_eq!(
        connections, 1,
        "20 sequential requests must share one upstream connection"
    );
    // Separate client connections, one after another, still reuse it on each worker.
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/").status, 200);
    }
    let (requests, connections, _) = a.stats();
    assert_eq!(requests, 30);
    assert!(
        connections <= 2,
        "one upstream connection per worker, got {connections}"
    );
}

#[test]
fn per_request_mode_opens_one_connection_per_request() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--upstream", "per-request"]);
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for _ in 0..15 {
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        let r = read_response(&mut s, &mut pending, "GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.header("Connection"),
            None,
            "the client connection stays keep-alive"
        );
    }
    let (requests, connections, _) = a.stats();
    assert_eq!((requests, connections), (15, 15));
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let mut s = connect(p.addr);
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.extend_from_slice(
            format!("GET /status/{} HTTP/1.1\r\nHost: t\r\n\r\n", 200 + i).as_bytes(),
        );
    }
    batch.extend_from_slice(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n\r\nabc");
    batch.extend_from_slice(b"GET /delay/30 HTTP/1.1\r\nHost: t\r\n\r\n");
    s.write_all(&batch).unwrap();
    let mut pending = Vec::new();
    for i in 0..10 {
        let r = read_response(&mut s, &mut pending, "GET").unwrap();
        assert_eq!(r.status, 200 + i);
    }
    assert_eq!(
        read_response(&mut s, &mut pending, "POST").unwrap().text(),
        "abc"
    );
    let r = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!(r.header("X-Latency-Ms"), Some("30"));
}

#[test]
fn head_204_and_304_have_no_body() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    s.write_all(b"HEAD /bytes/1000 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, "HEAD").unwrap();
    assert_eq!((r.status, r.header("Content-Length")), (200, Some("1000")));
    s.write_all(b"GET /status/204 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(
        read_response(&mut s, &mut pending, "GET").unwrap().status,
        204
    );
    s.write_all(b"GET /status/304 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let r = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!(r.status, 304);
    // The connection is still in sync: nothing stray was left after the bodiless answers.
    s.write_all(b"GET /hi HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let r = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!(r.status, 200);
    assert!(pending.is_empty());
}

#[test]
fn round_robin_cycles_a_b_c() {
    let (a, b, c) = (fast("A"), fast("B"), fast("C"));
    let p = Proxy::start(&[&a, &b, &c], &["--workers", "2"]);
    let order: Vec<String> = (0..9).map(|_| get(p.addr, "/").backend()).collect();
    assert_eq!(order, ["A", "B", "C", "A", "B", "C", "A", "B", "C"]);
}

#[test]
fn backend_down_gives_502() {
    // A port nothing listens on: bind, read the port, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let cfg =
        format!(r#"{{"servers": [{{"name": "dead", "address": "127.0.0.1", "port": {port}}}]}}"#);
    let p = Proxy::with_config(&cfg, &[]);
    let r = get(p.addr, "/");
    assert_eq!(r.status, 502);
    assert_eq!(r.text(), "bad gateway\n");
}

#[test]
fn backend_hang_gives_504() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--upstream-timeout", "300ms"]);
    let t = std::time::Instant::now();
    let r = get(p.addr, "/hang");
    assert_eq!(r.status, 504);
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn malformed_backend_response_gives_502() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    assert_eq!(get(p.addr, "/garbage").status, 502);
    // The proxy keeps serving.
    assert_eq!(get(p.addr, "/").status, 200);
}

#[test]
fn truncated_response_closes_the_client_connection() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &[]);
    let out = raw_all(p.addr, b"GET /close HTTP/1.1\r\nHost: t\r\n\r\n");
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let body = text.split_once("\r\n\r\n").unwrap().1;
    assert_eq!(
        body.len(),
        10,
        "what arrived is forwarded, then the connection closes"
    );
}

#[test]
fn slow_request_head_gets_408() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--client-timeout", "300ms"]);
    let mut s = connect(p.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: slow").unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 408"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    assert_eq!(a.requests(), 0);
}

#[test]
fn idle_keep_alive_connection_is_closed_silently() {
    let a = fast("A");
    let p = Proxy::start(&[&a], &["--idle-timeout", "300ms"]);
    let mut s = connect(p.addr);
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
    let mut pending = Vec::new();
    assert_eq!(
        read_response(&mut s, &mut pending, "GET").unwrap().status,
        200
    );
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(out.is_empty());
}

#[test]
fn ctrl_c_drains_and_exits_zero() {
    let a = fast("A");
    let mut p = Proxy::start(&[&a], &[]);
    // An exchange in flight when the signal arrives still completes.
    let addr = p.addr;
    let inflight = std::thread::spawn(move || get(addr, "/delay/500"));
    std::thread::sleep(Duration::from_millis(150));
    p.signal("INT");
    let r = inflight.join().unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "listener closed"
    );
}

#[test]
fn sigterm_exits_zero() {
    let a = fast("A");
    let mut p = Proxy::start(&[&a], &[]);
    assert_eq!(get(p.addr, "/").status, 200);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

//! Strict input: every malformed request gets the right 4xx/5xx and never reaches a backend.

mod common;

use common::*;

const CASES: &[(&str, &[u8], u16)] = &[
    ("CL and TE", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("differing CL", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 400),
    ("CL +5", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: +5\r\n\r\nhello", 400),
    ("CL -1", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400),
    ("CL 0x5", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 0x5\r\n\r\nhello", 400),
    ("CL list", b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 5, 5\r\n\r\nhello", 400),
    ("TE last not chunked", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
    ("TE chunked twice", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked, chunked\r\n\r\n0\r\n\r\n", 400),
    ("TE on HTTP/1.0", b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400),
    ("missing Host", b"GET / HTTP/1.1\r\n\r\n", 400),
    ("duplicate Host", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
    ("space before colon", b"GET / HTTP/1.1\r\nHost : t\r\n\r\n", 400),
    ("obs-fold", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: 1\r\n  more\r\n\r\n", 400),
    ("bare CR", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\rb\r\n\r\n", 400),
    ("control byte", b"GET / HTTP/1.1\r\nHost: t\r\nX-A: a\x01b\r\n\r\n", 400),
    ("empty chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n\r\nabc\r\n0\r\n\r\n", 400),
    ("non-hex chunk size", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\nabc\r\n0\r\n\r\n", 400),
    ("17 hex digits", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n00000000000000003\r\nabc\r\n0\r\n\r\n", 400),
    ("bare LF in extension", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a\nb\r\nabc\r\n0\r\n\r\n", 400),
    ("NUL in extension", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;a\x00b\r\nabc\r\n0\r\n\r\n", 400),
    ("chunk data without CRLF", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabcX\r\n0\r\n\r\n", 400),
    ("unknown coding", b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: foo, chunked\r\n\r\n0\r\n\r\n", 501),
    ("CONNECT", b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n", 405),
];

#[test]
fn malformed_requests_get_the_right_status_and_are_never_forwarded() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    for (name, req, want) in CASES {
        let out = raw_all(p.addr, req);
        let text = String::from_utf8_lossy(&out);
        let status: u16 = text.get(9..12).and_then(|s| s.parse().ok()).unwrap_or(0);
        assert_eq!(status, *want, "{name}: got {text:?}");
        assert!(
            text.contains("Connection: close"),
            "{name}: the connection closes"
        );
    }
    let (requests, connections, accepted) = a.stats();
    assert_eq!(
        (requests, connections),
        (0, 0),
        "the backend saw none of them"
    );
    assert_eq!(
        accepted, 1,
        "only our own /stats connection reached the backend"
    );
}

#[test]
fn extension_longer_than_4k_is_refused() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let mut req = b"POST / HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n3;".to_vec();
    req.extend(std::iter::repeat_n(b'x', 5000));
    req.extend_from_slice(b"\r\nabc\r\n0\r\n\r\n");
    let out = raw_all(p.addr, &req);
    assert!(out.starts_with(b"HTTP/1.1 400"));
    assert_eq!(a.stats().0, 0);
}

#[test]
fn oversized_head_and_too_many_headers_get_431() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let mut big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', 70 * 1024));
    big.extend_from_slice(b"\r\n\r\n");
    assert!(raw_all(p.addr, &big).starts_with(b"HTTP/1.1 431"));
    let mut many = b"GET / HTTP/1.1\r\nHost: t\r\n".to_vec();
    for i in 0..200 {
        many.extend_from_slice(format!("X-H{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(raw_all(p.addr, &many).starts_with(b"HTTP/1.1 431"));
    // A large but legal head (40 KiB) is forwarded.
    let mut ok = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: ".to_vec();
    ok.extend(std::iter::repeat_n(b'a', 40 * 1024));
    ok.extend_from_slice(b"\r\n\r\n");
    assert!(raw_all(p.addr, &ok).starts_with(b"HTTP/1.1 200"));
    assert_eq!(a.stats().0, 1);
}

#[test]
fn bad_chunk_in_a_streamed_body_aborts_without_completing_the_request() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let mut s = connect(p.addr);
    use std::io::{Read, Write};
    s.write_all(
        b"POST /sink HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
    )
    .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    s.write_all(b"zz\r\n").unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    let text = String::from_utf8_lossy(&out);
    assert!(out.is_empty() || text.starts_with("HTTP/1.1 400"), "{text}");
    assert_eq!(a.stats().0, 0, "the backend never saw a complete request");
}

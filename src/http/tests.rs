//! Unit tests for head parsing, validation and rewriting.

use super::*;
use std::net::{IpAddr, Ipv4Addr};

fn req(raw: &[u8]) -> Result<Option<(BodyKind, bool, String)>, Reject> {
    // The fuzz property holds for every head here too (its index among it).
    super::fuzzing::request_head(raw);
    let mut h = header_array();
    parse_request(raw, &mut h).map(|r| {
        r.map(|r| {
            let mut out = Vec::new();
            r.write_upstream(
                &mut out,
                &mut HeadIndex::default(),
                &Forward {
                    client_ip: IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)),
                    close: false,
                    host: b"127.0.0.1:8081",
                    proto: None,
                },
            );
            (r.body, r.keep_alive, String::from_utf8(out).unwrap())
        })
    })
}

fn status(raw: &[u8]) -> u16 {
    match req(raw) {
        Ok(Some(_)) => 200,
        Ok(None) => 0,
        Err(e) => e.status(),
    }
}

#[test]
fn simple_get_is_rewritten() {
    let (body, ka, out) = req(b"GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(body, BodyKind::None);
    assert!(ka);
    assert_eq!(
        out,
        "GET /a?b HTTP/1.1\r\nHost: x\r\nAccept: */*\r\nX-Forwarded-For: 10.1.2.3\r\nVia: 1.1 corelb\r\n\r\n"
    );
}

#[test]
fn partial_head_asks_for_more() {
    assert_eq!(status(b"GET / HTTP/1.1\r\nHost: x\r\n"), 0);
}

#[test]
fn hop_by_hop_and_connection_named_headers_are_removed() {
    let (_, ka, out) = req(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close, X-Secret\r\nX-Secret: 1\r\nKeep-Alive: 5\r\nProxy-Connection: k\r\nTE: trailers\r\nTrailer: X\r\nUpgrade: h2c\r\nX-Keep: y\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!ka);
    for gone in [
        "Connection",
        "X-Secret",
        "Keep-Alive",
        "Proxy-Connection",
        "TE:",
        "Trailer",
        "Upgrade",
    ] {
        assert!(!out.contains(gone), "{gone} leaked: {out}");
    }
    assert!(out.contains("X-Keep: y\r\n"));
}

#[test]
fn x_forwarded_for_is_appended() {
    let (_, _, out) = req(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 1.1.1.1, 2.2.2.2\r\nX-Forwarded-For: 3.3.3.3\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(
        out.contains("X-Forwarded-For: 1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3\r\n"),
        "{out}"
    );
    assert_eq!(out.matches("X-Forwarded-For").count(), 1);
}

#[test]
fn http10_gets_host_and_keep_alive_rules() {
    let (_, ka, out) = req(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!ka);
    assert!(out.starts_with("GET / HTTP/1.1\r\nHost: 127.0.0.1:8081\r\n"));
    assert!(out.contains("Via: 1.0 corelb"));
    let (_, ka, _) = req(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(ka);
}

#[test]
fn bodies_are_framed() {
    let (b, _, out) = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(b, BodyKind::Length(5));
    assert!(out.contains("Content-Length: 5\r\n"));
    let (b, _, out) =
        req(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(b, BodyKind::Chunked);
    assert!(out.contains("Transfer-Encoding: gzip, chunked\r\n"));
    let (b, _, _) =
        req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 7\r\nContent-Length: 7\r\n\r\n")
            .unwrap()
            .unwrap();
    assert_eq!(b, BodyKind::Length(7));
    let (b, _, _) = req(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!(b, BodyKind::None);
}

#[test]
fn smuggling_vectors_are_refused() {
    let cases: &[(&[u8], u16)] = &[
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0x5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5, 5\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked;x=1\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: \r\n\r\n", 400),
        (b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", 400),
        (b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: foo, chunked\r\n\r\n", 501),
        (b"GET / HTTP/1.1\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost : x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x7fb\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\r\nHost: x\r\n\r\n", 400),
        (b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n", 405),
    ];
    for (raw, want) in cases {
        assert_eq!(status(raw), *want, "{}", String::from_utf8_lossy(raw));
    }
}

#[test]
fn oversized_heads_get_431() {
    let mut big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
    assert_eq!(status(&big), 431);
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(status(&many), 431);
}

fn resp(
    raw: &[u8],
    head: bool,
    reply: Reply,
) -> Result<(u16, BodyKind, bool, String), BadResponse> {
    let mut h = header_array();
    let r = parse_response(raw, &mut h, head)?.expect("complete");
    let mut out = Vec::new();
    r.write_client(&mut out, &reply);
    Ok((
        r.status,
        r.body,
        r.keep_alive,
        String::from_utf8(out).unwrap(),
    ))
}

const KEEP: Reply = Reply {
    http10: false,
    close: false,
    dechunk: false,
};

#[test]
fn response_framing() {
    let (s, b, ka, out) = resp(
        b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nKeep-Alive: timeout=5\r\n\r\nabc",
        false,
        KEEP,
    )
    .unwrap();
    assert_eq!((s, b, ka), (200, BodyKind::Length(3), true));
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nVia: 1.1 corelb\r\n\r\n"
    );
    let (_, b, ka, _) = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n", true, KEEP).unwrap();
    assert_eq!((b, ka), (BodyKind::None, true));
    for code in ["204 No Content", "304 Not Modified", "100 Continue"] {
        let raw = format!("HTTP/1.1 {code}\r\nContent-Length: 3\r\n\r\n");
        assert_eq!(resp(raw.as_bytes(), false, KEEP).unwrap().1, BodyKind::None);
    }
    let (_, b, ka, _) = resp(b"HTTP/1.1 200 OK\r\n\r\n", false, KEEP).unwrap();
    assert_eq!((b, ka), (BodyKind::UntilClose, false));
    let (_, b, _, _) = resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert_eq!(b, BodyKind::Chunked);
    let (_, _, ka, _) = resp(
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert!(!ka);
    let (_, _, ka, _) = resp(b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n", false, KEEP).unwrap();
    assert!(!ka);
}

#[test]
fn response_head_for_http10_client_dechunks_and_closes() {
    let reply = Reply {
        http10: true,
        close: true,
        dechunk: true,
    };
    let (_, _, _, out) = resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nX-A: b\r\n\r\n",
        false,
        reply,
    )
    .unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 200 OK\r\nX-A: b\r\nVia: 1.1 corelb\r\nConnection: close\r\n\r\n"
    );
}

#[test]
fn malformed_responses_are_refused() {
    for raw in [
        &b"HTTX/1.1 200 OK\r\n\r\n"[..],
        b"HTTP/1.1 2OO OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\n\r\n",
    ] {
        assert!(
            resp(raw, false, KEEP).is_err(),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
}

#[test]
fn body_advance_stops_at_message_end() {
    let mut b = Body::new(BodyKind::Length(3));
    assert_eq!(b.advance(b"abcdef").unwrap(), 3);
    assert!(b.is_done());
    let mut b = Body::new(BodyKind::Chunked);
    assert_eq!(b.advance(b"1\r\na\r\n0\r\n\r\nGET").unwrap(), 11);
    assert!(b.is_done());
    assert!(Body::new(BodyKind::Chunked).advance(b"zz\r\n").is_err());
}

#[test]
fn opaque_bytes_are_a_length_bodys_rest_or_a_chunks_data() {
    let mut b = Body::new(BodyKind::Length(10));
    assert_eq!(b.opaque_left(), 10);
    b.skip_opaque(4);
    assert_eq!(b, Body::Length(6));
    b.skip_opaque(6);
    assert!(b.is_done(), "a Content-Length body ends with its last byte");
    assert_eq!(b.opaque_left(), 0);
    let mut b = Body::new(BodyKind::Chunked);
    assert_eq!(b.opaque_left(), 0, "at a size line");
    assert_eq!(b.advance(b"5\r\nab").unwrap(), 5);
    assert_eq!(b.opaque_left(), 3);
    b.skip_opaque(3);
    assert_eq!(b.opaque_left(), 0, "at the CRLF after the data");
    assert!(
        !b.is_done(),
        "a chunked body ends in its last chunk, parsed"
    );
    assert_eq!(b.advance(b"\r\n0\r\n\r\n").unwrap(), 7);
    assert!(b.is_done());
    assert_eq!(Body::UntilClose.opaque_left(), 0, "never spliced");
}

#[test]
fn canned_lengths_match_bodies() {
    for c in [
        BAD_REQUEST,
        METHOD_NOT_ALLOWED,
        REQUEST_TIMEOUT,
        HEAD_TOO_LARGE,
        NOT_IMPLEMENTED,
        BAD_GATEWAY,
        SERVICE_UNAVAILABLE,
        GATEWAY_TIMEOUT,
        VERSION_NOT_SUPPORTED,
    ] {
        for raw in [c.close, c.keep_alive] {
            let mut h = header_array();
            let r = parse_response(raw, &mut h, false).unwrap().unwrap();
            assert_eq!(r.status, c.status);
            assert_eq!(r.body, BodyKind::Length((raw.len() - r.head_len) as u64));
        }
    }
}

fn forwarded(raw: &[u8]) -> String {
    req(raw)
        .unwrap_or_else(|e| panic!("{e:?}: {}", String::from_utf8_lossy(raw)))
        .expect("complete")
        .2
}

#[test]
fn connection_cannot_strip_framing_or_host() {
    // The body is relayed whatever Connection says, so its framing goes with it.
    let out = forwarded(
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: Content-Length\r\n\r\n",
    );
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    let out = forwarded(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nConnection: close, content-length, host\r\n\r\n");
    assert!(
        out.contains("Content-Length: 5\r\n") && out.contains("Host: x\r\n"),
        "{out}"
    );
    let out = forwarded(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n\r\n");
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    let out = forwarded(b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!(out.matches("Transfer-Encoding").count(), 1, "{out}");
    assert!(
        out.contains("Transfer-Encoding: gzip, chunked\r\n"),
        "{out}"
    );
    // Content-Length: 0 is kept; a duplicate identical length is sent once.
    let out = forwarded(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n");
    assert!(out.contains("Content-Length: 0\r\n"), "{out}");
    let out =
        forwarded(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\ncontent-length: 3\r\n\r\n");
    assert_eq!(
        out.to_ascii_lowercase().matches("content-length").count(),
        1
    );
    // Connection-named end-to-end fields still go, X-Forwarded-For included.
    let out = forwarded(b"GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: 6.6.6.6\r\nConnection: x-forwarded-for\r\n\r\n");
    assert!(out.contains("X-Forwarded-For: 10.1.2.3\r\n"), "{out}");
}

#[test]
fn host_must_be_uri_host_and_port() {
    for good in [
        "a.test",
        "a.test:8080",
        "A-b_c~d.test",
        "127.0.0.1:1",
        "[::1]",
        "[::1]:80",
        "[2001:db8::1]:443",
        "a.test:",
        "%41.test",
        "",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {good}\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 200, "{good:?}");
    }
    for bad in [
        "a.test, b.test",
        "a.test,b.test",
        "a b",
        "user@a.test",
        "a.test/x",
        "a.test:99x",
        "a.test:123456",
        "a.test:65536",
        "a.test:80:80",
        "[::1",
        "[::g]",
        "[::1]x",
        "a.test?x",
        "a.test#x",
        "%4.test",
        "a\\b",
        "\"a\"",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {bad}\r\n\r\n");
        assert_eq!(status(raw.as_bytes()), 400, "{bad:?}");
    }
}

#[test]
fn absolute_form_replaces_host_and_is_sent_in_origin_form() {
    let out = forwarded(b"GET http://other.test/x?y HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert!(
        out.starts_with("GET /x?y HTTP/1.1\r\nHost: other.test\r\n"),
        "{out}"
    );
    let out = forwarded(b"GET HTTPS://other.test:8443 HTTP/1.1\r\nHost: example.test\r\n\r\n");
    assert!(
        out.starts_with("GET / HTTP/1.1\r\nHost: other.test:8443\r\n"),
        "{out}"
    );
    let out = forwarded(b"GET http://other.test?q HTTP/1.1\r\nHost: o\r\n\r\n");
    assert!(out.starts_with("GET /?q HTTP/1.1\r\n"), "{out}");
    // HTTP/1.0 without Host: the authority becomes the Host.
    let out = forwarded(b"GET http://other.test/ HTTP/1.0\r\n\r\n");
    assert!(out.contains("Host: other.test\r\n"), "{out}");
    assert_eq!(out.matches("Host").count(), 1);
    for bad in [
        &b"GET http://user@other.test/ HTTP/1.1\r\nHost: o\r\n\r\n"[..],
        b"GET http:///x HTTP/1.1\r\nHost: o\r\n\r\n",
        b"GET http://:80/x HTTP/1.1\r\nHost: o\r\n\r\n",
        b"GET http:/x HTTP/1.1\r\nHost: o\r\n\r\n",
        b"GET ftp://other.test/ HTTP/1.1\r\nHost: o\r\n\r\n",
        b"GET http://a b/ HTTP/1.1\r\nHost: o\r\n\r\n",
        b"GET http://other.test/ HTTP/1.1\r\nHost: a b\r\n\r\n",
        b"GET http://other.test/ HTTP/1.1\r\n\r\n",
    ] {
        assert_eq!(status(bad), 400, "{}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn request_line_and_target_forms() {
    let cases: &[(&[u8], u16)] = &[
        (b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET * HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET x HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET a.test:80 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /a%2F HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET /\xc3\xa9 HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400),
        (b"GET /\tHTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"G(T / HTTP/1.1\r\nHost: x\r\n\r\n", 400),
        (b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET / http/1.1\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/1.2\r\nHost: x\r\n\r\n", 400),
        (b"GET / HTTP/2.0\r\nHost: x\r\n\r\n", 505),
        (b"GET / HTTP/3.0\r\nHost: x\r\n\r\n", 505),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", 505),
        (b"GET / HTTP/11.1\r\nHost: x\r\n\r\n", 400),
        (b"GET /\r\n\r\n", 400),
        (b"GET / HTTP/1.1\nHost: x\n\n", 200),
        (b"\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n", 200),
        (b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\nHo\"st: x\r\n\r\n", 400),
        (b"GET / HTTP/1.1\r\n: x\r\nHost: x\r\n\r\n", 400),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: xchunked\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: identity\r\n\r\n",
            501,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length:\r\n\r\n",
            400,
        ),
        (
            b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1 2\r\n\r\n",
            400,
        ),
    ];
    for (raw, want) in cases {
        assert_eq!(status(raw), *want, "{}", String::from_utf8_lossy(raw));
    }
    let mut many = b"GET / HTTP/1.1\r\nHost: x\r\nConnection: ".to_vec();
    for i in 0..=16 {
        many.extend_from_slice(format!("x-{i}, ").as_bytes());
    }
    many.extend_from_slice(b"\r\n\r\n");
    assert_eq!(status(&many), 400);
}

#[test]
fn upgrade_requests_are_flagged_and_forwarded_only_when_complete() {
    let mut h = header_array();
    let raw = b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade, x-y\r\nX-Y: 1\r\n\r\n";
    let r = parse_request(raw, &mut h).unwrap().unwrap();
    assert!(r.upgrade);
    let out = forwarded(raw);
    assert!(out.contains("\r\nUpgrade: websocket\r\n"), "{out}");
    assert!(out.ends_with("\r\nConnection: upgrade\r\n\r\n"), "{out}");
    assert!(!out.contains("X-Y") && !out.contains("x-y"), "{out}");
    // Upgrade without `Connection: upgrade`, the reverse, or in HTTP/1.0: stripped.
    for raw in [
        &b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n"[..],
        b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n",
        b"GET / HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ] {
        let mut h = header_array();
        assert!(!parse_request(raw, &mut h).unwrap().unwrap().upgrade);
        let out = forwarded(raw);
        assert!(!out.contains("pgrade"), "{out}");
    }
}

#[test]
fn a_101_is_accepted_only_for_an_upgrade_request() {
    let raw = b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: abc\r\n\r\nxyz";
    let mut h = header_array();
    assert!(parse_response(raw, &mut h, false).is_err());
    let mut h = header_array();
    let r = parse_response_with(raw, &mut h, false, true)
        .unwrap()
        .unwrap();
    assert!(r.switching() && !r.informational() && !r.keep_alive);
    assert_eq!((r.body, r.head_len), (BodyKind::None, raw.len() - 3));
    let mut out = Vec::new();
    r.write_client(&mut out, &KEEP);
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nSec-WebSocket-Accept: abc\r\n\
         Via: 1.1 corelb\r\nConnection: upgrade\r\n\r\n"
    );
    // A 101 must say what it switches to.
    let mut h = header_array();
    let bare = b"HTTP/1.1 101 Switching Protocols\r\nConnection: upgrade\r\n\r\n";
    assert!(parse_response_with(bare, &mut h, false, true).is_err());
    // Other answers to an upgrade request are ordinary responses.
    let mut h = header_array();
    let ok = b"HTTP/1.1 200 OK\r\nUpgrade: websocket\r\nContent-Length: 0\r\n\r\n";
    let r = parse_response_with(ok, &mut h, false, true)
        .unwrap()
        .unwrap();
    let mut out = Vec::new();
    r.write_client(&mut out, &KEEP);
    assert!(!String::from_utf8(out).unwrap().contains("pgrade"));
}

#[test]
fn response_framing_is_generated() {
    // A backend cannot strip its own framing with Connection.
    let (_, b, ka, out) = resp(
        b"HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello",
        false,
        KEEP,
    )
    .unwrap();
    assert_eq!((b, ka), (BodyKind::Length(5), true));
    assert!(out.contains("Content-Length: 5\r\n"), "{out}");
    let (_, _, _, out) = resp(
        b"HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
    // Content-Length: 0 keeps the connection usable.
    let (_, b, _, out) =
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", false, KEEP).unwrap();
    assert_eq!(b, BodyKind::None);
    assert!(out.contains("Content-Length: 0\r\n"), "{out}");
    // HEAD and 304 relay the length of the body a GET would get; 204 and 1xx carry none.
    let (_, b, _, out) =
        resp(b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", true, KEEP).unwrap();
    assert_eq!(b, BodyKind::None);
    assert!(out.contains("Content-Length: 42\r\n"), "{out}");
    let (_, _, _, out) = resp(
        b"HTTP/1.1 304 Not Modified\r\nContent-Length: 42\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert!(out.contains("Content-Length: 42\r\n"), "{out}");
    let (_, b, _, out) = resp(
        b"HTTP/1.1 204 No Content\r\nContent-Length: 42\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert_eq!(b, BodyKind::None);
    assert!(!out.contains("Content-Length"), "{out}");
    let (_, _, _, out) = resp(
        b"HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n",
        false,
        KEEP,
    )
    .unwrap();
    assert_eq!(
        out,
        "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\nVia: 1.1 corelb\r\n\r\n"
    );
    let (_, b, _, out) = resp(
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        true,
        KEEP,
    )
    .unwrap();
    assert_eq!(b, BodyKind::None);
    assert!(out.contains("Transfer-Encoding: chunked\r\n"), "{out}");
}

#[test]
fn strict_responses() {
    for raw in [
        &b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: 1, 1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked, identity\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\0b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX : a\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX\x01: a\r\n\r\n",
        b"HTTP/1.1 099 Low\r\n\r\n",
        b"HTTP/1.1 600 High\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 2000 OK\r\n\r\n",
        b"HTTP/2.0 200 OK\r\n\r\n",
        b"HTTP/1.1  200 OK\r\n\r\n",
        b"http/1.1 200 OK\r\n\r\n",
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
    ] {
        assert!(
            resp(raw, false, KEEP).is_err(),
            "{}",
            String::from_utf8_lossy(raw)
        );
    }
    let mut big = b"HTTP/1.1 200 OK\r\nX-Big: ".to_vec();
    big.extend(std::iter::repeat_n(b'a', MAX_HEAD));
    let mut h = header_array();
    assert!(parse_response(&big, &mut h, false).is_err());
    // Bare LF is accepted (and re-serialised with CRLF).
    let (_, b, _, out) = resp(b"HTTP/1.1 200 OK\nContent-Length: 2\n\nok", false, KEEP).unwrap();
    assert_eq!(b, BodyKind::Length(2));
    assert!(out.ends_with("\r\n\r\n") && !out.contains("\n\n"), "{out}");
}

#[test]
fn forwarded_for_formats_both_address_families() {
    use std::net::IpAddr;
    for (ip, want) in [
        ("10.0.255.7", "X-Forwarded-For: 10.0.255.7\r\n"),
        ("::1", "X-Forwarded-For: ::1\r\n"),
    ] {
        let mut headers = header_array();
        let req = parse_request(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", &mut headers)
            .unwrap()
            .unwrap();
        let mut out = Vec::new();
        req.write_upstream(
            &mut out,
            &mut HeadIndex::default(),
            &Forward {
                client_ip: ip.parse::<IpAddr>().unwrap(),
                close: false,
                host: b"a",
                proto: None,
            },
        );
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains(want), "{text}");
    }
}

/// Found by fuzzing: an empty Transfer-Encoding field let a later field's unknown coding
/// through as chunked (and the rewritten head was then refused with 501).
#[test]
fn an_empty_transfer_encoding_field_is_refused_wherever_it_stands() {
    for req in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:,\r\nTransfer-Encoding: x, chunked\r\n\r\n"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: , \r\n\r\n",
    ] {
        let mut h = header_array();
        assert_eq!(
            parse_request(req, &mut h).err().map(|r| r.status()),
            Some(400),
            "{}",
            String::from_utf8_lossy(req)
        );
    }
    let mut h = header_array();
    let resp = b"HTTP/1.1 200 OK\r\nTransfer-Encoding:\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(parse_response(resp, &mut h, false).is_err());
}

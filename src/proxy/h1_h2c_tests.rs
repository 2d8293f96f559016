//! Unit tests of `proxy/h1_h2c` (kept apart so the module stays readable).
use super::*;
use crate::http::HeadIndex;

/// The HTTP/2 fields an h2c backend gets for client request head `raw` (from 10.0.0.1).
fn pairs_of(raw: &[u8], scheme: &[u8], te: bool) -> Vec<(String, String)> {
    let mut h = http::header_array();
    let req = http::parse_request(raw, &mut h).unwrap().unwrap();
    let (mut head, mut idx) = (Vec::new(), HeadIndex::default());
    let fwd = http::Forward {
        client_ip: std::net::Ipv4Addr::new(10, 0, 0, 1).into(),
        close: true,
        host: b"backend:80",
        proto: None,
    };
    req.write_upstream(&mut head, &mut idx, &fwd);
    let mut names = Vec::new();
    request_pairs(&head, &idx, scheme, te, &mut names, |p| {
        p.iter()
            .map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            })
            .collect()
    })
    .unwrap()
}

#[test]
fn request_head_becomes_http2_fields() {
    let raw = b"POST /up?x=1 HTTP/1.1\r\nHost: example.com\r\nX-Kept: Yes\r\n\
        Content-Length: 5\r\nExpect: 100-continue\r\nX-Forwarded-For: 192.0.2.1\r\n\
        TE: trailers\r\nConnection: TE\r\n\r\n";
    let p = pairs_of(raw, b"http", true);
    let want = [
        (":method", "POST"),
        (":scheme", "http"),
        (":authority", "example.com"),
        (":path", "/up?x=1"),
        ("x-kept", "Yes"),
        ("content-length", "5"),
        ("x-forwarded-for", "192.0.2.1, 10.0.0.1"),
        ("via", "1.1 corelb"),
        ("te", "trailers"),
    ];
    let want: Vec<(String, String)> = want
        .iter()
        .map(|(n, v)| (n.to_string(), v.to_string()))
        .collect();
    assert_eq!(p, want);
    // A chunked body's Transfer-Encoding and corelb's Connection stay HTTP/1.1's; an
    // HTTP/1.0 request without Host gets the backend's; a TLS client's scheme is https.
    let p = pairs_of(
        b"OPTIONS * HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"https",
        false,
    );
    let names: Vec<&str> = p.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        names,
        [
            ":method",
            ":scheme",
            ":authority",
            ":path",
            "x-forwarded-for",
            "via"
        ]
    );
    assert_eq!((p[1].1.as_str(), p[3].1.as_str()), ("https", "*"));
    let p = pairs_of(b"GET /x HTTP/1.0\r\n\r\n", b"http", false);
    assert_eq!(p[2], (":authority".into(), "backend:80".into()));
    assert_eq!(p[5], ("via".into(), "1.0 corelb".into()));
}

#[test]
fn response_framing() {
    assert_eq!(
        framing(200, true, Some(5), false, false),
        ClientFraming::Bodiless
    );
    assert_eq!(
        framing(204, false, None, true, false),
        ClientFraming::Bodiless
    );
    assert_eq!(
        framing(304, false, Some(5), true, false),
        ClientFraming::Bodiless
    );
    assert_eq!(
        framing(200, false, Some(5), false, false),
        ClientFraming::Length
    );
    assert_eq!(framing(200, false, None, true, true), ClientFraming::Length);
    assert_eq!(
        framing(200, false, None, false, false),
        ClientFraming::Chunked
    );
    assert_eq!(framing(200, false, None, false, true), ClientFraming::Close);
}

#[test]
fn response_head_lines() {
    let f = Fields::of(&[
        (":status", "200"),
        ("content-type", "text/plain"),
        ("content-length", "7"),
        ("set-cookie", "a=1"),
        ("set-cookie", "b=2"),
    ]);
    let mut out = Vec::new();
    response_head(
        &f,
        200,
        ClientFraming::Length,
        Some(7),
        false,
        true,
        &mut out,
    );
    assert_eq!(
        String::from_utf8(out).unwrap(),
        "HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\nset-cookie: a=1\r\nset-cookie: b=2\r\n\
         Content-Length: 7\r\nVia: 2 corelb\r\n\r\n"
    );
    let mut out = Vec::new();
    response_head(
        &f,
        299,
        ClientFraming::Chunked,
        None,
        false,
        false,
        &mut out,
    );
    let s = String::from_utf8(out).unwrap();
    assert!(s.starts_with("HTTP/1.1 299 \r\n"), "{s}");
    assert!(s.contains("Transfer-Encoding: chunked\r\n") && !s.contains("Content-Length"));
    assert!(s.ends_with("Connection: close\r\n\r\n"));
    let mut out = Vec::new();
    response_head(
        &f,
        204,
        ClientFraming::Bodiless,
        Some(7),
        true,
        true,
        &mut out,
    );
    let s = String::from_utf8(out).unwrap();
    assert!(!s.contains("Content-Length") && s.contains("Connection: keep-alive"));
}

#[test]
fn chunks_and_the_end_of_a_body() {
    let mut line = [0u8; 24];
    let n = chunk_line(false, 255, &mut line);
    assert_eq!(&line[..n], b"ff\r\n");
    let n = chunk_line(true, 16, &mut line);
    assert_eq!(&line[..n], b"\r\n10\r\n");
    let t = Fields::of(&[("x-checksum", "42"), ("content-length", "1")]);
    let mut leg = H2cLeg {
        framing: ClientFraming::Chunked,
        any_chunk: true,
        ..H2cLeg::default()
    };
    let mut out = Vec::new();
    assert_eq!(end_of_body(&leg, Some(&t), &mut out), 1);
    assert_eq!(out, b"\r\n0\r\nx-checksum: 42\r\n\r\n");
    leg.framing = ClientFraming::Length;
    out.clear();
    assert_eq!(end_of_body(&leg, Some(&t), &mut out), 2);
    assert!(out.is_empty());
}

#[test]
fn request_trailer_lines_become_pairs() {
    let mut names = Vec::new();
    let (got, dropped) = trailer_pairs(b"X-Sum: 1\r\nGrpc-Status:  0 \r\n\r", &mut names, |p| {
        p.iter()
            .map(|(n, v)| (n.to_vec(), v.to_vec()))
            .collect::<Vec<_>>()
    });
    assert_eq!(dropped, 0);
    assert_eq!(
        got,
        vec![
            (b"x-sum".to_vec(), b"1".to_vec()),
            (b"grpc-status".to_vec(), b"0".to_vec())
        ]
    );
}

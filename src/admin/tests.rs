//! Unit tests of the admin listener: request parsing, routing and the event stream.
use super::*;

#[test]
fn parse_reads_keep_alive_and_bodies() {
    let (n, h) = parse(b"GET /stats?x=1 HTTP/1.1\r\nHost: a\r\n\r\nGET")
        .unwrap()
        .unwrap();
    assert_eq!(n, 36);
    assert_eq!((h.method, h.path.as_str()), (Method::Get, "/stats?x=1"));
    assert!(h.keep_alive && !h.http10 && !h.has_body);
    let (_, h) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nConnection: Keep-Alive, close\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.keep_alive);
    let (_, h) = parse(b"GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
    assert!(!h.keep_alive && h.http10);
    let (_, h) = parse(b"HEAD / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(h.keep_alive && h.method == Method::Head);
    let (_, h) = parse(b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc")
        .unwrap()
        .unwrap();
    assert!(h.has_body && h.method == Method::Post && h.body_len == Some(3));
    let (_, h) = parse(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\n\r\n")
        .unwrap()
        .unwrap();
    assert!(!h.has_body);
    let (_, h) = parse(b"PUT /servers/x HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap()
        .unwrap();
    assert_eq!((h.method, h.body_len), (Method::Put, None));
    assert_eq!(h.auth.as_deref(), Some("Bearer t"));
    assert_eq!(percent_decode("api%231"), "api#1");
    assert_eq!(percent_decode("a%2"), "a%2");
}

#[test]
fn parse_rejects_bad_heads() {
    assert!(matches!(parse(b"GET / HTTP/1.1\r\nHost"), Ok(None)));
    // HTTP/2 and above are answered 505 by the proxy's parser (RFC 9110 §15.6.6).
    assert_eq!(parse(b"GET / HTTP/9.9\r\n\r\n").err(), Some(505));
    assert_eq!(
        parse(b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: x\r\n\r\n").err(),
        Some(400)
    );
    let many: String = (0..200).map(|i| format!("X-{i}: v\r\n")).collect();
    let req = format!("GET / HTTP/1.1\r\n{many}\r\n");
    assert_eq!(parse(req.as_bytes()).err(), Some(431));
}

#[test]
fn events_are_one_data_line() {
    let e = String::from_utf8(event(&render::sample())).unwrap();
    assert!(e.starts_with("data: {"));
    assert!(e.ends_with("}\n\n"));
    assert_eq!(e.matches('\n').count(), 2);
}

//! Malformed frames and messages, each answered with the right connection or stream error.

use super::*;
use crate::h2::frame::{FLAG_END_HEADERS as EH, FLAG_END_STREAM as ES, FLAG_PADDED};

const P: ErrorCode = ErrorCode::PROTOCOL_ERROR;

/// A server with stream 1 open (request head received, body expected).
fn with_open_stream() -> (Connection, Encoder<'static>) {
    let mut sv = server();
    let mut enc = Encoder::new();
    let b = get_block(&mut enc, "/");
    feed(&mut sv, &raw(1, EH, 1, &b)).unwrap();
    events(&mut sv);
    (sv, enc)
}

#[test]
fn bad_preface() {
    let mut sv = Connection::server(Settings::default(), Limits::default());
    take_output(&mut sv);
    expect_conn_error(&mut sv, b"GET / HTTP/1.1\r\n", P);
    // A preface split anywhere is fine.
    let mut sv = Connection::server(Settings::default(), Limits::default());
    assert_eq!(sv.recv(&PREFACE[..5], t0()), Ok(5));
    assert_eq!(sv.recv(&PREFACE[5..], t0()), Ok(19));
}

#[test]
fn first_frame_must_be_settings() {
    let mut sv = Connection::server(Settings::default(), Limits::default());
    take_output(&mut sv);
    let mut bytes = PREFACE.to_vec();
    bytes.extend(raw(6, 0, 0, &[0; 8]));
    expect_conn_error(&mut sv, &bytes, P);
}

#[test]
fn connection_errors_on_stream_zero_and_sizes() {
    let cases: Vec<(Vec<u8>, ErrorCode)> = vec![
        (raw(0, 0, 0, b"x"), P),                                       // DATA on 0
        (raw(1, EH, 0, &[0x82]), P),                                   // HEADERS on 0
        (raw(2, 0, 0, &[0, 0, 0, 1, 1]), P),                           // PRIORITY on 0
        (raw(3, 0, 0, &[0; 4]), P),                                    // RST_STREAM on 0
        (raw(4, 0, 1, &[]), P),                                        // SETTINGS on a stream
        (raw(4, 0, 0, &[0; 5]), ErrorCode::FRAME_SIZE_ERROR),          // SETTINGS length
        (raw(4, 1, 0, &[0; 6]), ErrorCode::FRAME_SIZE_ERROR),          // ACK with payload
        (raw(5, EH, 1, &[0, 0, 0, 2]), P),                             // PUSH_PROMISE
        (raw(6, 0, 1, &[0; 8]), P),                                    // PING on a stream
        (raw(6, 0, 0, &[0; 7]), ErrorCode::FRAME_SIZE_ERROR),          // PING length
        (raw(7, 0, 1, &[0; 8]), P),                                    // GOAWAY on a stream
        (raw(7, 0, 0, &[0; 7]), ErrorCode::FRAME_SIZE_ERROR),          // GOAWAY length
        (raw(8, 0, 0, &[0; 4]), P),                                    // WINDOW_UPDATE 0
        (raw(8, 0, 0, &[0; 3]), ErrorCode::FRAME_SIZE_ERROR),          // WINDOW_UPDATE length
        (raw(9, EH, 1, &[0x82]), P),                                   // CONTINUATION alone
        (raw(3, 0, 1, &[0; 4]), P),                                    // RST_STREAM on idle
        (raw(8, 0, 1, &[0, 0, 0, 1]), P),                              // WINDOW_UPDATE on idle
        (raw(0, 0, 1, b"x"), P),                                       // DATA on idle
        (raw(3, 0, 1, &[0; 5]), ErrorCode::FRAME_SIZE_ERROR),          // RST_STREAM length
        (raw(1, EH, 2, &[0x82]), P),                                   // even id from a client
        (raw(1, EH, 1, &[0xff, 0x7f]), ErrorCode::COMPRESSION_ERROR),  // bad HPACK
        (raw(0, 0, 1, &vec![0; 16_385]), ErrorCode::FRAME_SIZE_ERROR), // too big
        (raw(4, 0, 0, &[0, 2, 0, 0, 0, 2]), P),                        // ENABLE_PUSH 2
        (raw(4, 0, 0, &[0, 5, 0, 0, 0x10, 0]), P),                     // MAX_FRAME_SIZE 4096
        (
            raw(4, 0, 0, &[0, 4, 0x80, 0, 0, 0]),
            ErrorCode::FLOW_CONTROL_ERROR,
        ),
    ];
    for (bytes, code) in cases {
        let mut sv = server();
        let err = sv.recv(&bytes, t0()).expect_err("connection error");
        assert_eq!(err.code, code, "{err} for {bytes:02x?}");
        assert_eq!(goaway_code(&mut sv), Some(code));
    }
}

#[test]
fn padding_errors() {
    let (mut sv, _) = with_open_stream();
    // Pad length equal to the payload length.
    expect_conn_error(&mut sv, &raw(0, FLAG_PADDED, 1, &[2, 0]), P);
    let (mut sv, _) = with_open_stream();
    expect_conn_error(
        &mut sv,
        &raw(0, FLAG_PADDED, 1, &[]),
        ErrorCode::FRAME_SIZE_ERROR,
    );
    let mut sv = server();
    expect_conn_error(&mut sv, &raw(1, FLAG_PADDED | EH, 1, &[5, 0x82]), P);
}

#[test]
fn headers_interrupted_by_another_frame() {
    let mut sv = server();
    let mut enc = Encoder::new();
    let b = get_block(&mut enc, "/");
    let mut bytes = raw(1, 0, 1, &b[..2]);
    bytes.extend(raw(9, EH, 3, &b[2..]));
    expect_conn_error(&mut sv, &bytes, P);
}

#[test]
fn decreasing_stream_id_and_closed_stream() {
    let mut sv = server();
    let mut enc = Encoder::new();
    let b5 = get_block(&mut enc, "/");
    feed(&mut sv, &raw(1, EH | ES, 5, &b5)).unwrap();
    let b3 = get_block(&mut enc, "/");
    expect_conn_error(&mut sv, &raw(1, EH | ES, 3, &b3), ErrorCode::STREAM_CLOSED);
}

#[test]
fn stream_errors() {
    // DATA after END_STREAM: STREAM_CLOSED.
    let mut sv = server();
    let mut enc = Encoder::new();
    let b = get_block(&mut enc, "/");
    feed(&mut sv, &raw(1, EH | ES, 1, &b)).unwrap();
    expect_stream_error(&mut sv, &raw(0, 0, 1, b"late"), 1, ErrorCode::STREAM_CLOSED);
    // The stream is gone; more DATA in flight is ignored (recently reset).
    feed(&mut sv, &raw(0, 0, 1, b"more")).unwrap();
    assert!(resets(&mut sv).is_empty());

    // PRIORITY with a bad length, or depending on itself.
    let (mut sv, _) = with_open_stream();
    expect_stream_error(
        &mut sv,
        &raw(2, 0, 1, &[0; 4]),
        1,
        ErrorCode::FRAME_SIZE_ERROR,
    );
    let (mut sv, _) = with_open_stream();
    expect_stream_error(&mut sv, &raw(2, 0, 1, &[0, 0, 0, 1, 9]), 1, P);

    // WINDOW_UPDATE of 0 on a stream.
    let (mut sv, _) = with_open_stream();
    expect_stream_error(&mut sv, &raw(8, 0, 1, &[0; 4]), 1, P);
    assert!(events(&mut sv).contains(&Ev::Reset(1, P, false)));

    // HEADERS depending on itself.
    let mut sv = server();
    let mut enc = Encoder::new();
    let mut payload = vec![0, 0, 0, 1, 16];
    payload.extend(get_block(&mut enc, "/"));
    expect_stream_error(&mut sv, &raw(1, EH | 0x20, 1, &payload), 1, P);
}

#[test]
fn malformed_requests_are_stream_errors() {
    let bad: Vec<Vec<(&str, &str)>> = vec![
        vec![(":method", "GET"), (":path", "/")],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("Host", "x"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("connection", "x"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("te", "gzip"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            ("a", "b"),
            (":path", "/"),
        ],
        vec![
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":status", "200"),
        ],
        vec![
            (":method", "GET"),
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
        ],
    ];
    for fields in bad {
        let mut sv = server();
        let mut enc = Encoder::new();
        let b = block(&mut enc, &fields);
        expect_stream_error(&mut sv, &raw(1, EH | ES, 1, &b), 1, P);
        assert!(app_events(&mut sv).is_empty(), "{fields:?} not delivered");
        assert_eq!(sv.counters().stream_errors, 1);
        // The connection goes on: the next stream works.
        let b = get_block(&mut enc, "/ok");
        feed(&mut sv, &raw(1, EH | ES, 3, &b)).unwrap();
        assert_eq!(app_events(&mut sv).len(), 1);
    }
}

#[test]
fn content_length_mismatch() {
    let cl = |n: &'static str| {
        vec![
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/"),
            ("content-length", n),
        ]
    };
    // Too much DATA.
    let mut sv = server();
    let mut enc = Encoder::new();
    feed(&mut sv, &raw(1, EH, 1, &block(&mut enc, &cl("2")))).unwrap();
    expect_stream_error(&mut sv, &raw(0, 0, 1, b"abc"), 1, P);
    // Too little at END_STREAM.
    let mut sv = server();
    let mut enc = Encoder::new();
    feed(&mut sv, &raw(1, EH, 1, &block(&mut enc, &cl("4")))).unwrap();
    expect_stream_error(&mut sv, &raw(0, ES, 1, b"abc"), 1, P);
    // Trailers before the announced length.
    let mut sv = server();
    let mut enc = Encoder::new();
    feed(&mut sv, &raw(1, EH, 1, &block(&mut enc, &cl("4")))).unwrap();
    feed(&mut sv, &raw(0, 0, 1, b"abc")).unwrap();
    let t = block(&mut enc, &[("x-t", "1")]);
    expect_stream_error(&mut sv, &raw(1, EH | ES, 1, &t), 1, P);
    // Headers with END_STREAM but a non-zero length.
    let mut sv = server();
    let mut enc = Encoder::new();
    expect_stream_error(
        &mut sv,
        &raw(1, EH | ES, 1, &block(&mut enc, &cl("4"))),
        1,
        P,
    );
    // Exact length is fine.
    let mut sv = server();
    let mut enc = Encoder::new();
    feed(&mut sv, &raw(1, EH, 1, &block(&mut enc, &cl("3")))).unwrap();
    feed(&mut sv, &raw(0, ES, 1, b"abc")).unwrap();
    assert!(resets(&mut sv).is_empty());
}

#[test]
fn bad_trailers() {
    // Trailers without END_STREAM, and trailers with a pseudo-header.
    for (fields, flags) in [
        (vec![("x-t", "1")], EH),
        (vec![(":path", "/"), ("x-t", "1")], EH | ES),
        (vec![("Upper", "1")], EH | ES),
    ] {
        let (mut sv, mut enc) = with_open_stream();
        let t = block(&mut enc, &fields);
        expect_stream_error(&mut sv, &raw(1, flags, 1, &t), 1, P);
    }
    // Good trailers are delivered.
    let (mut sv, mut enc) = with_open_stream();
    let t = block(&mut enc, &[("x-t", "1")]);
    feed(&mut sv, &raw(1, EH | ES, 1, &t)).unwrap();
    assert_eq!(
        events(&mut sv),
        vec![Ev::Trailers(1, vec![("x-t".into(), "1".into())])]
    );
}

#[test]
fn client_side_errors() {
    let (mut c, _sv) = pair();
    // HEADERS on a stream the client never opened (a push without PUSH_PROMISE).
    let mut enc = Encoder::new();
    let b = block(&mut enc, &[(":status", "200")]);
    expect_conn_error(&mut c, &raw(1, EH, 2, &b), P);
    // HEADERS on an idle client stream.
    let (mut c, _sv) = pair();
    expect_conn_error(&mut c, &raw(1, EH, 1, &b), P);
    // ENABLE_PUSH=1 from a server.
    let (mut c, _sv) = pair();
    expect_conn_error(&mut c, &raw(4, 0, 0, &[0, 2, 0, 0, 0, 1]), P);
    // A response without :status, and DATA before the response head.
    let (mut c, _sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(
        id,
        &[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
        ],
        true,
    )
    .unwrap();
    take_output(&mut c);
    let mut enc = Encoder::new();
    let b = block(&mut enc, &[("x", "y")]);
    expect_stream_error(&mut c, &raw(1, EH, id, &b), id, P);
    assert_eq!(events(&mut c), vec![Ev::Reset(id, P, false)]);
    let id = c.open_stream().unwrap();
    c.send_headers(
        id,
        &[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
        ],
        true,
    )
    .unwrap();
    take_output(&mut c);
    expect_stream_error(&mut c, &raw(0, 0, id, b"x"), id, P);
}

//! Abuse limits and their counters, concurrency limits, and the property that any split
//! of the input yields the same events.

use super::*;
use crate::h2::frame::{FLAG_END_HEADERS as EH, FLAG_END_STREAM as ES};

const CALM: ErrorCode = ErrorCode::ENHANCE_YOUR_CALM;

#[test]
fn rapid_reset_is_answered_with_goaway() {
    let limits = Limits {
        max_resets: 10,
        reset_window: Duration::from_secs(1),
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    let mut enc = Encoder::new();
    let mut id = 1;
    let mut open_and_reset = |sv: &mut Connection, now| {
        let mut bytes = raw(1, EH, id, &get_block(&mut enc, "/"));
        bytes.extend(raw(3, 0, id, &ErrorCode::CANCEL.0.to_be_bytes()));
        id += 2;
        sv.recv(&bytes, now).map(|_| ())
    };
    for i in 0..10 {
        open_and_reset(&mut sv, at(i)).unwrap();
    }
    // A new window starts after a second.
    for i in 0..10 {
        open_and_reset(&mut sv, at(1000 + i)).unwrap();
    }
    let err = open_and_reset(&mut sv, at(1500)).unwrap_err();
    assert_eq!(err.code, CALM);
    assert_eq!(goaway_code(&mut sv), Some(CALM));
    assert_eq!(sv.counters().rapid_resets, 1);
    assert_eq!(sv.counters().resets_received, 21);
}

#[test]
fn refused_streams_count_as_resets_and_are_refused() {
    let settings = Settings {
        max_concurrent_streams: 2,
        ..Settings::default()
    };
    let limits = Limits {
        max_resets: 3,
        ..Limits::default()
    };
    let mut sv = server_with(settings, limits);
    let mut enc = Encoder::new();
    for id in [1, 3] {
        feed(&mut sv, &raw(1, EH, id, &get_block(&mut enc, "/"))).unwrap();
    }
    for id in [5, 7, 9] {
        feed(&mut sv, &raw(1, EH, id, &get_block(&mut enc, "/"))).unwrap();
        assert_eq!(resets(&mut sv), vec![(id, ErrorCode::REFUSED_STREAM)]);
    }
    assert_eq!(sv.counters().refused_streams, 3);
    assert_eq!(sv.active_streams(), 2);
    let err = sv
        .recv(&raw(1, EH, 11, &get_block(&mut enc, "/")), t0())
        .unwrap_err();
    assert_eq!(err.code, CALM);
}

#[test]
fn continuation_flood() {
    let limits = Limits {
        max_continuations: 4,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    let mut bytes = raw(1, 0, 1, &[0x82]);
    for _ in 0..4 {
        bytes.extend(raw(9, 0, 1, &[]));
    }
    feed(&mut sv, &bytes).unwrap();
    expect_conn_error(&mut sv, &raw(9, 0, 1, &[]), CALM);
    assert_eq!(sv.counters().continuation_floods, 1);

    // Total block size.
    let limits = Limits {
        max_header_block: 20_000,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    feed(&mut sv, &raw(1, 0, 1, &[0u8; 16_000])).unwrap();
    expect_conn_error(&mut sv, &raw(9, 0, 1, &[0u8; 5_000]), CALM);
    assert_eq!(sv.counters().continuation_floods, 1);
}

#[test]
fn header_list_too_large_and_hpack_bomb() {
    let settings = Settings {
        max_header_list_size: 1000,
        ..Settings::default()
    };
    // A list a little over the limit: the stream is reset, the connection goes on.
    let mut sv = server_with(settings, Limits::default());
    let mut enc = Encoder::new();
    let big = "v".repeat(1000);
    let b = block(
        &mut enc,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("x", &big),
        ],
    );
    expect_stream_error(
        &mut sv,
        &raw(1, EH | ES, 1, &b),
        1,
        ErrorCode::PROTOCOL_ERROR,
    );
    assert_eq!(sv.counters().header_lists_too_large, 1);
    feed(&mut sv, &raw(1, EH | ES, 3, &get_block(&mut enc, "/"))).unwrap();
    assert_eq!(app_events(&mut sv).len(), 1);

    // A bomb: one 3000-byte entry in the dynamic table, then referenced many times with
    // one byte each. Decoded size explodes; the connection is closed.
    let mut sv = server_with(settings, Limits::default());
    let mut enc = Encoder::new();
    let huge = "h".repeat(3000);
    let mut b = block(
        &mut enc,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            ("x-b", &huge),
        ],
    );
    // The entry got index 62; reference it 100 times.
    b.extend(std::iter::repeat_n(0x80 | 62, 100));
    expect_conn_error(&mut sv, &raw(1, EH | ES, 1, &b), CALM);
    assert_eq!(sv.counters().hpack_bombs, 1);
}

#[test]
fn settings_flood() {
    let limits = Limits {
        max_settings: 5,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    // The handshake's SETTINGS counted once.
    for _ in 0..4 {
        feed(&mut sv, &raw(4, 0, 0, &[])).unwrap();
    }
    expect_conn_error(&mut sv, &raw(4, 0, 0, &[]), CALM);
    assert_eq!(sv.counters().settings_floods, 1);
}

#[test]
fn ping_flood_by_rate_and_by_unread_acks() {
    let limits = Limits {
        max_pings: 5,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    for _ in 0..5 {
        feed(&mut sv, &raw(6, 0, 0, &[0; 8])).unwrap();
    }
    expect_conn_error(&mut sv, &raw(6, 0, 0, &[0; 8]), CALM);
    assert_eq!(sv.counters().ping_floods, 1);

    // The peer does not read our ACKs: queued answers are bounded.
    let limits = Limits {
        max_queued_control: 8,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    let pings: Vec<u8> = (0..8).flat_map(|_| raw(6, 0, 0, &[1; 8])).collect();
    feed(&mut sv, &pings).unwrap();
    // Draining the output resets the count.
    take_output(&mut sv);
    feed(&mut sv, &pings).unwrap();
    expect_conn_error(&mut sv, &raw(6, 0, 0, &[1; 8]), CALM);
    assert_eq!(sv.counters().ping_floods, 1);
}

#[test]
fn client_respects_peer_max_concurrent_streams() {
    let one = Settings {
        max_concurrent_streams: 1,
        ..Settings::default()
    };
    let (mut c, mut sv) = pair_with(Settings::default(), one);
    let a = c.open_stream().unwrap();
    assert!(c.open_stream().is_none());
    assert!(!c.can_open_stream());
    c.send_headers(
        a,
        &[
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/"),
        ],
        true,
    )
    .unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    sv.send_headers(a, &[(b":status", b"200")], true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut c);
    assert_eq!(c.open_stream(), Some(3));
}

/// xorshift for the split property, deterministic.
fn next(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

/// A conversation from a client, as bytes the server receives.
fn client_bytes() -> Vec<u8> {
    let mut c = Connection::client(Settings::default(), Limits::default());
    let mut out = Vec::new();
    for i in 0..20u8 {
        let id = c.open_stream().unwrap();
        let path = format!("/p{i}");
        let fields: [(&[u8], &[u8]); 4] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":authority", b"example"),
            (b":path", path.as_bytes()),
        ];
        c.send_headers(id, &fields, false).unwrap();
        c.send_data(id, &vec![i; 1000 * i as usize], false).unwrap();
        c.ping([i; 8]);
        c.send_trailers(id, &[(b"x-i", path.as_bytes())]).unwrap();
        out.extend_from_slice(c.pending_output());
        let n = c.pending_output().len();
        c.advance_output(n);
    }
    out
}

#[test]
fn any_split_gives_the_same_events() {
    let bytes = client_bytes();
    let whole = {
        let mut sv = Connection::server(Settings::default(), Limits::default());
        feed(&mut sv, &bytes).unwrap();
        events(&mut sv)
    };
    assert_eq!(
        whole
            .iter()
            .filter(|e| matches!(e, Ev::Trailers(..)))
            .count(),
        20
    );
    let mut rng = 0x1234_5678_9abc_def0u64;
    for round in 0..50 {
        let mut sv = Connection::server(Settings::default(), Limits::default());
        let mut buf = Vec::new();
        let mut got = Vec::new();
        let mut pos = 0;
        while pos < bytes.len() {
            let max = if round % 2 == 0 { 7 } else { 3000 };
            let n = (1 + next(&mut rng) % max) as usize;
            let end = (pos + n).min(bytes.len());
            buf.extend_from_slice(&bytes[pos..end]);
            pos = end;
            let used = sv.recv(&buf, t0()).unwrap();
            buf.drain(..used);
            got.extend(events(&mut sv));
        }
        assert!(buf.is_empty());
        assert_eq!(got, whole, "round {round}");
    }
}

#[test]
fn arbitrary_bytes_never_panic() {
    let mut rng = 42u64;
    let base = client_bytes();
    for _ in 0..300 {
        let mut bytes = base.clone();
        for _ in 0..(1 + next(&mut rng) % 8) {
            let i = (next(&mut rng) as usize) % bytes.len();
            bytes[i] = next(&mut rng) as u8;
        }
        let mut sv = Connection::server(Settings::default(), Limits::default());
        let _ = sv.recv(&bytes, t0());
        events(&mut sv);
    }
}

/// MadeYouReset (CVE-2025-8671): the peer makes us reset its streams (a WINDOW_UPDATE of
/// 0, DATA after END_STREAM, DATA past the content-length). Those resets count toward the
/// same budget as its own, so the connection ends with ENHANCE_YOUR_CALM.
#[test]
fn resets_the_peer_makes_us_send_count_toward_the_limit() {
    let limits = Limits {
        max_resets: 30,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    let mut enc = Encoder::new();
    let mut id = 1;
    let mut tripped = None;
    for wave in 0..20 {
        let mut bytes = Vec::new();
        for k in 0..3 {
            match k {
                // WINDOW_UPDATE with increment 0 on an open stream.
                0 => {
                    bytes.extend(raw(1, EH, id, &get_block(&mut enc, "/")));
                    bytes.extend(raw(8, 0, id, &[0, 0, 0, 0]));
                }
                // DATA after END_STREAM.
                1 => {
                    bytes.extend(raw(1, EH | ES, id, &get_block(&mut enc, "/")));
                    bytes.extend(raw(0, 0, id, b"x"));
                }
                // DATA longer than the content-length.
                _ => {
                    let b = block(
                        &mut enc,
                        &[
                            (":method", "POST"),
                            (":scheme", "http"),
                            (":authority", "a"),
                            (":path", "/"),
                            ("content-length", "1"),
                        ],
                    );
                    bytes.extend(raw(1, EH, id, &b));
                    bytes.extend(raw(0, 0, id, b"xy"));
                }
            }
            id += 2;
        }
        if let Err(e) = sv.recv(&bytes, at(wave)) {
            tripped = Some((wave, e.code));
            break;
        }
        take_output(&mut sv);
    }
    let (wave, code) = tripped.expect("the budget trips");
    assert_eq!(code, CALM);
    assert_eq!(wave, 10, "31 stream errors in the 11th wave of 3");
    assert_eq!(sv.counters().rapid_resets, 1);
    assert_eq!(sv.counters().resets_received, 0);
}

/// RFC 9113 §5.1: after the peer's own RST_STREAM, any frame but PRIORITY on that stream
/// is a stream error STREAM_CLOSED; only after one of ours are late frames ignored.
#[test]
fn frames_after_the_peers_reset_are_stream_closed_errors() {
    let mut sv = server();
    let mut enc = Encoder::new();
    feed(&mut sv, &raw(1, EH, 1, &get_block(&mut enc, "/"))).unwrap();
    events(&mut sv);
    feed(&mut sv, &raw(3, 0, 1, &ErrorCode::CANCEL.0.to_be_bytes())).unwrap();
    events(&mut sv);
    expect_stream_error(&mut sv, &raw(0, 0, 1, b"late"), 1, ErrorCode::STREAM_CLOSED);
    expect_stream_error(
        &mut sv,
        &raw(8, 0, 1, &[0, 0, 0, 1]),
        1,
        ErrorCode::STREAM_CLOSED,
    );
    let late = raw(1, EH, 1, &get_block(&mut enc, "/"));
    expect_stream_error(&mut sv, &late, 1, ErrorCode::STREAM_CLOSED);
    // A stream we reset: what the peer sent before it saw that is ignored.
    feed(&mut sv, &raw(1, EH, 3, &get_block(&mut enc, "/"))).unwrap();
    events(&mut sv);
    sv.reset(3, ErrorCode::CANCEL);
    take_output(&mut sv);
    feed(&mut sv, &raw(0, 0, 3, b"in flight")).unwrap();
    assert_eq!(resets(&mut sv), vec![]);
    assert!(!sv.is_finished());
}

/// A stream reset in the same read as its HEADERS never reaches the application, so it
/// is never forwarded or connected for; its DATA is skipped, other streams' is intact.
#[test]
fn a_stream_reset_before_it_was_seen_is_taken_back() {
    let mut sv = server();
    let mut enc = Encoder::new();
    let post = block(
        &mut enc,
        &[
            (":method", "POST"),
            (":scheme", "http"),
            (":authority", "a"),
            (":path", "/"),
        ],
    );
    let mut bytes = raw(1, EH, 1, &post);
    bytes.extend(raw(1, EH, 3, &post));
    bytes.extend(raw(0, 0, 1, b"one"));
    bytes.extend(raw(0, 0, 3, b"three"));
    bytes.extend(raw(3, 0, 1, &ErrorCode::CANCEL.0.to_be_bytes()));
    bytes.extend(raw(0, ES, 3, b"!"));
    feed(&mut sv, &bytes).unwrap();
    let ev = events(&mut sv);
    assert!(matches!(&ev[0], Ev::Headers(3, _, false)), "{ev:?}");
    assert_eq!(
        ev[1..],
        [
            Ev::Data(3, b"three".to_vec(), false),
            Ev::Data(3, b"!".to_vec(), true)
        ]
    );
    assert_eq!(sv.counters().resets_unforwarded, 1);
    assert_eq!(sv.counters().resets_received, 1);
}

/// Stream churn: the peer's `max_streams`-th stream is served, and a graceful GOAWAY
/// sends the rest to a new connection.
#[test]
fn the_stream_limit_ends_the_connection_gracefully() {
    let limits = Limits {
        max_streams: 3,
        ..Limits::default()
    };
    let mut sv = server_with(Settings::default(), limits);
    let mut enc = Encoder::new();
    for id in [1, 3] {
        feed(&mut sv, &raw(1, EH | ES, id, &get_block(&mut enc, "/"))).unwrap();
    }
    assert_eq!(goaway_code(&mut sv), None);
    feed(&mut sv, &raw(1, EH | ES, 5, &get_block(&mut enc, "/"))).unwrap();
    assert_eq!(goaway_code(&mut sv), Some(ErrorCode::NO_ERROR));
    assert_eq!(sv.counters().stream_limit_goaways, 1);
    let heads = events(&mut sv)
        .iter()
        .filter(|e| matches!(e, Ev::Headers(..)))
        .count();
    assert_eq!(heads, 3, "the third stream is served");
}

//! Round trips between a client and a server `Connection`, and raw frames of every type.

use super::*;
use crate::h2::frame::{FLAG_END_HEADERS, FLAG_END_STREAM, FLAG_PADDED, FLAG_PRIORITY};
use crate::h2::SendError;

fn s(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

const GET: [(&[u8], &[u8]); 4] = [
    (b":method", b"GET"),
    (b":scheme", b"http"),
    (b":authority", b"example"),
    (b":path", b"/x"),
];

#[test]
fn request_response_with_body_and_trailers() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    assert_eq!(id, 1);
    let mut post = GET.to_vec();
    post[0].1 = b"POST";
    post.push((b"content-length", b"5"));
    c.send_headers(id, &post, false).unwrap();
    assert_eq!(c.send_data(id, b"hello", true), Ok(5));
    assert_eq!(c.send_data(id, b"more", false), Err(SendError::Closed));
    pump(&mut c, &mut sv);
    let ev = app_events(&mut sv);
    assert_eq!(
        ev,
        vec![
            Ev::Headers(
                1,
                s(&[
                    (":method", "POST"),
                    (":scheme", "http"),
                    (":authority", "example"),
                    (":path", "/x"),
                    ("content-length", "5")
                ]),
                false
            ),
            Ev::Data(1, b"hello".to_vec(), true),
        ]
    );
    sv.release(1, 5);
    sv.send_headers(1, &[(b":status", b"200")], false).unwrap();
    assert_eq!(sv.send_data(1, b"world", false), Ok(5));
    sv.send_trailers(1, &[(b"grpc-status", b"0")]).unwrap();
    assert_eq!(sv.active_streams(), 0);
    pump(&mut c, &mut sv);
    assert_eq!(
        app_events(&mut c),
        vec![
            Ev::Headers(1, s(&[(":status", "200")]), false),
            Ev::Data(1, b"world".to_vec(), false),
            Ev::Trailers(1, s(&[("grpc-status", "0")])),
        ]
    );
    c.release(1, 5);
    assert_eq!(c.active_streams(), 0);
    assert_eq!(c.counters().streams_completed, 1);
    assert_eq!(sv.counters().streams_completed, 1);
}

#[test]
fn informational_then_final_head() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &GET, true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    assert_eq!(
        sv.send_headers(id, &[(b":status", b"103")], true),
        Err(SendError::BadOrder)
    );
    sv.send_headers(id, &[(b":status", b"103"), (b"link", b"</a>")], false)
        .unwrap();
    sv.send_headers(id, &[(b":status", b"204")], true).unwrap();
    pump(&mut c, &mut sv);
    let ev = app_events(&mut c);
    assert_eq!(ev.len(), 2);
    assert!(matches!(&ev[1], Ev::Headers(1, _, true)));
}

#[test]
fn large_head_uses_continuation() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    let big = vec![b'v'; 40_000];
    let mut fields = GET.to_vec();
    fields.push((b"x-big", &big));
    c.send_headers(id, &fields, true).unwrap();
    let out = take_output(&mut c);
    let kinds: Vec<_> = frames(&out).iter().map(|(h, _)| h.kind).collect();
    assert_eq!(kinds[0], FrameType::Headers);
    assert!(kinds[1..].iter().all(|k| *k == FrameType::Continuation));
    assert_eq!(kinds.len(), 3);
    feed(&mut sv, &out).unwrap();
    match &app_events(&mut sv)[..] {
        [Ev::Headers(1, f, true)] => assert_eq!(f[4].1.len(), 40_000),
        other => panic!("{other:?}"),
    }
}

#[test]
fn raw_padded_priority_headers_and_padded_data() {
    let mut sv = server();
    let mut enc = Encoder::new();
    let block = get_block(&mut enc, "/p");
    let mut payload = vec![3u8];
    payload.extend_from_slice(&[0, 0, 0, 0, 16]); // depends on stream 0, weight 16
    payload.extend_from_slice(&block);
    payload.extend_from_slice(&[0, 0, 0]);
    let flags = FLAG_PADDED | FLAG_PRIORITY | FLAG_END_HEADERS;
    feed(&mut sv, &raw(1, flags, 1, &payload)).unwrap();
    let mut data = vec![2u8];
    data.extend_from_slice(b"abc\0\0");
    feed(&mut sv, &raw(0, FLAG_PADDED | FLAG_END_STREAM, 1, &data)).unwrap();
    let ev = app_events(&mut sv);
    assert!(matches!(&ev[0], Ev::Headers(1, f, false) if f[3].1 == "/p"));
    assert_eq!(ev[1], Ev::Data(1, b"abc".to_vec(), true));
    // Padding is released by the codec: only the 3 payload bytes are outstanding.
    assert_eq!(sv.unreleased, 3);
}

#[test]
fn raw_continuation_and_priority_and_unknown_frames() {
    let mut sv = server();
    let mut enc = Encoder::new();
    let block = get_block(&mut enc, "/c");
    let (a, _) = block.split_at(3);
    let mut bytes = raw(1, FLAG_END_STREAM, 1, a);
    bytes.extend(raw(0xfe, 0xff, 1, b"ignored")); // would be an error inside a block
    let err = sv.recv(&bytes, t0()).unwrap_err();
    assert_eq!(err.code, ErrorCode::PROTOCOL_ERROR);

    let mut sv = server();
    let mut enc = Encoder::new();
    let block = get_block(&mut enc, "/c");
    let (a, b) = block.split_at(3);
    let mut bytes = raw(0xfe, 0xff, 0, b"unknown frames are ignored");
    bytes.extend(raw(2, 0, 1, &[0, 0, 0, 3, 200])); // PRIORITY on an idle stream
    bytes.extend(raw(1, FLAG_END_STREAM, 1, a));
    bytes.extend(raw(9, 0, 1, &b[..1]));
    bytes.extend(raw(9, FLAG_END_HEADERS, 1, &b[1..]));
    feed(&mut sv, &bytes).unwrap();
    assert!(matches!(
        &app_events(&mut sv)[..],
        [Ev::Headers(1, _, true)]
    ));
    assert!(take_output(&mut sv).is_empty(), "nothing to answer");
}

#[test]
fn ping_settings_goaway_window_update_rst_round_trip() {
    let (mut c, mut sv) = pair();
    c.ping(*b"12345678");
    pump(&mut c, &mut sv);
    assert_eq!(events(&mut c), vec![Ev::PingAck(*b"12345678")]);

    // A SETTINGS change reaches the peer, which acks it.
    let mut settings = raw(4, 0, 0, &[0, 3, 0, 0, 0, 7]);
    settings.extend(raw(4, 0, 0, &[0, 5, 0, 0, 0x80, 0])); // MAX_FRAME_SIZE 32768
    feed(&mut c, &settings).unwrap();
    assert_eq!(c.peer_settings().max_concurrent_streams, 7);
    assert_eq!(c.peer_settings().max_frame_size, 32_768);
    let acks = frames(&take_output(&mut c));
    assert_eq!(acks.len(), 2);
    assert!(acks
        .iter()
        .all(|(h, p)| h.kind == FrameType::Settings && h.flags == 1 && p.is_empty()));
    events(&mut c);

    let id = c.open_stream().unwrap();
    c.send_headers(id, &GET, false).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    // WINDOW_UPDATE on the stream and the connection.
    let before = sv.send_capacity(id);
    let mut wu = raw(8, 0, id, &100u32.to_be_bytes());
    wu.extend(raw(8, 0, 0, &100u32.to_be_bytes()));
    feed(&mut sv, &wu).unwrap();
    assert_eq!(
        events(&mut sv),
        vec![Ev::WindowOpened(id), Ev::WindowOpened(0)]
    );
    assert!(sv.send_capacity(id) >= before);

    c.reset(id, ErrorCode::CANCEL);
    pump(&mut c, &mut sv);
    assert_eq!(
        events(&mut sv),
        vec![Ev::Reset(id, ErrorCode::CANCEL, true)]
    );
    assert_eq!(sv.counters().resets_received, 1);

    sv.go_away(ErrorCode::NO_ERROR);
    pump(&mut c, &mut sv);
    assert_eq!(events(&mut c), vec![Ev::GoAway(1, ErrorCode::NO_ERROR)]);
    assert!(c.open_stream().is_none());
    assert!(c.is_finished() && sv.is_finished());
}

#[test]
fn goaway_refuses_streams_above_last_id() {
    let (mut c, mut sv) = pair();
    let a = c.open_stream().unwrap();
    c.send_headers(a, &GET, true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    let b = c.open_stream().unwrap();
    c.send_headers(b, &GET, true).unwrap();
    // The server says goodbye before it sees stream 3.
    sv.go_away(ErrorCode::NO_ERROR);
    let to_client = take_output(&mut sv);
    feed(&mut c, &to_client).unwrap();
    assert_eq!(
        app_events(&mut c),
        vec![
            Ev::Reset(b, ErrorCode::REFUSED_STREAM, true),
            Ev::GoAway(a, ErrorCode::NO_ERROR)
        ]
    );
    // Stream 3 arriving after our GOAWAY is refused.
    let to_server = take_output(&mut c);
    feed(&mut sv, &to_server).unwrap();
    assert_eq!(resets(&mut sv), vec![(b, ErrorCode::REFUSED_STREAM)]);
    assert_eq!(sv.counters().refused_streams, 1);
}

#[test]
fn graceful_goaway_in_two_steps() {
    let (mut c, mut sv) = pair();
    let a = c.open_stream().unwrap();
    c.send_headers(a, &GET, true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    sv.go_away_graceful();
    let step1 = frames(sv.pending_output());
    assert_eq!(step1[0].0.kind, FrameType::GoAway);
    assert_eq!(&step1[0].1[..4], &0x7fff_ffffu32.to_be_bytes());
    assert_eq!(step1[1].0.kind, FrameType::Ping);
    // A stream opened in flight is still accepted during step 1.
    let b = c.open_stream().unwrap();
    c.send_headers(b, &GET, true).unwrap();
    let from_client = take_output(&mut c);
    feed(&mut sv, &from_client).unwrap();
    assert!(matches!(
        &app_events(&mut sv)[..],
        [Ev::Headers(3, _, true)]
    ));
    assert!(!sv.is_finished());
    pump(&mut c, &mut sv);
    // The client saw both GOAWAYs; the final one names stream 3.
    let ev = events(&mut c);
    assert_eq!(ev.last(), Some(&Ev::GoAway(3, ErrorCode::NO_ERROR)));
    assert!(!sv.is_finished(), "streams 1 and 3 still need answers");
    for id in [a, b] {
        sv.send_headers(id, &[(b":status", b"200")], true).unwrap();
    }
    assert!(sv.is_finished());
}

#[test]
fn head_response_ignores_content_length() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    let mut head = GET.to_vec();
    head[0].1 = b"HEAD";
    c.send_headers(id, &head, true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    sv.send_headers(
        id,
        &[(b":status", b"200"), (b"content-length", b"10")],
        true,
    )
    .unwrap();
    pump(&mut c, &mut sv);
    assert!(matches!(&app_events(&mut c)[..], [Ev::Headers(1, _, true)]));
}

#[test]
fn peer_header_table_size_zero_is_honoured() {
    let (mut c, mut sv) = pair();
    feed(&mut c, &raw(4, 0, 0, &[0, 1, 0, 0, 0, 0])).unwrap();
    take_output(&mut c);
    for _ in 0..3 {
        let id = c.open_stream().unwrap();
        c.send_headers(
            id,
            &[
                GET[0],
                GET[1],
                GET[2],
                (b":path", b"/custom"),
                (b"x-a", b"b"),
            ],
            true,
        )
        .unwrap();
        pump(&mut c, &mut sv);
        assert!(matches!(&app_events(&mut sv)[..], [Ev::Headers(_, f, true)] if f[4].0 == "x-a"));
    }
}

#[test]
fn send_errors() {
    let (mut c, mut sv) = pair();
    assert_eq!(c.send_headers(1, &GET, true), Err(SendError::UnknownStream));
    let id = c.open_stream().unwrap();
    assert_eq!(c.send_data(id, b"x", false), Err(SendError::BadOrder));
    assert_eq!(c.send_trailers(id, &[]), Err(SendError::BadOrder));
    c.send_headers(id, &GET, false).unwrap();
    assert_eq!(c.send_headers(id, &GET, false), Err(SendError::BadOrder));
    assert!(sv.open_stream().is_none(), "servers do not open streams");
    c.go_away(ErrorCode::INTERNAL_ERROR);
    assert_eq!(
        c.send_data(id, b"x", false),
        Err(SendError::ConnectionClosed)
    );
    assert_eq!(goaway_code(&mut c), Some(ErrorCode::INTERNAL_ERROR));
}

//! Flow-control arithmetic: send windows, release-driven WINDOW_UPDATEs, overflow, and
//! INITIAL_WINDOW_SIZE changes applied to open streams.

use super::*;
use crate::h2::frame::{FLAG_END_HEADERS as EH, FLAG_END_STREAM as ES};
use crate::h2::{DEFAULT_WINDOW, MAX_WINDOW};

const POST: [(&[u8], &[u8]); 3] = [
    (b":method", b"POST"),
    (b":scheme", b"http"),
    (b":path", b"/"),
];

fn window_updates(out: &[u8]) -> Vec<(StreamId, u32)> {
    frames(out)
        .iter()
        .filter(|(h, _)| h.kind == FrameType::WindowUpdate)
        .map(|(h, p)| (h.stream, u32::from_be_bytes([p[0], p[1], p[2], p[3]])))
        .collect()
}

#[test]
fn send_data_stops_at_the_windows() {
    // The server announces 256 KiB stream windows, but the connection window starts at
    // 65 535 and grows only by its 1 MiB WINDOW_UPDATE.
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    let big = vec![7u8; 2 * 1024 * 1024];
    let n = c.send_data(id, &big, true).unwrap();
    assert_eq!(n, 256 * 1024, "stream window");
    assert_eq!(c.send_data(id, &big[n..], true), Ok(0));
    assert_eq!(c.send_capacity(id), 0);
    let out = take_output(&mut c);
    let data: Vec<_> = frames(&out)
        .into_iter()
        .filter(|(h, _)| h.kind == FrameType::Data)
        .collect();
    assert_eq!(data.len(), 16, "16 KiB frames");
    assert!(data.iter().all(|(h, _)| h.len == 16_384 && h.flags == 0));
    feed(&mut sv, &out).unwrap();
    let got: usize = app_events(&mut sv)
        .iter()
        .map(|e| match e {
            Ev::Data(_, d, _) => d.len(),
            _ => 0,
        })
        .sum();
    assert_eq!(got, n);
    // Nothing is released yet: no WINDOW_UPDATE.
    assert!(window_updates(&take_output(&mut sv)).is_empty());
    // Releasing half a stream window sends a stream WINDOW_UPDATE; the connection one
    // waits for half of 1 MiB.
    sv.release(id, 128 * 1024);
    assert_eq!(
        window_updates(&take_output(&mut sv)),
        vec![(id, 128 * 1024)]
    );
    sv.release(id, 128 * 1024);
    let wu = window_updates(&take_output(&mut sv));
    assert_eq!(wu, vec![(id, 128 * 1024)]);
    sv.release(id, 1); // more than was received is ignored
    assert!(window_updates(&take_output(&mut sv)).is_empty());
}

#[test]
fn slow_reader_holds_the_window() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    let chunk = vec![1u8; 64 * 1024];
    let mut sent = 0;
    for _ in 0..10 {
        let n = c.send_data(id, &chunk, false).unwrap();
        sent += n;
        pump(&mut c, &mut sv);
        app_events(&mut sv); // read but never release
    }
    assert_eq!(
        sent,
        256 * 1024,
        "no more than one stream window without releases"
    );
    sv.release(id, sent);
    pump(&mut c, &mut sv);
    assert!(events(&mut c).contains(&Ev::WindowOpened(id)));
    assert_eq!(c.send_capacity(id), 256 * 1024);
}

#[test]
fn connection_window_is_shared() {
    let small = Settings {
        connection_window: DEFAULT_WINDOW,
        initial_window_size: DEFAULT_WINDOW,
        ..Settings::default()
    };
    let (mut c, mut sv) = pair_with(Settings::default(), small);
    let a = c.open_stream().unwrap();
    let b = c.open_stream().unwrap();
    c.send_headers(a, &POST, false).unwrap();
    c.send_headers(b, &POST, false).unwrap();
    let buf = vec![0u8; 50_000];
    assert_eq!(c.send_data(a, &buf, false), Ok(50_000));
    assert_eq!(c.send_data(b, &buf, false), Ok(15_535));
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    sv.release(a, 50_000);
    let wu = window_updates(sv.pending_output());
    assert_eq!(wu, vec![(a, 50_000), (0, 50_000)]);
    pump(&mut c, &mut sv);
    assert_eq!(c.send_capacity(b), 50_000, "stream b: 65 535 - 15 535");
}

#[test]
fn overflowing_window_updates() {
    let (mut c, _sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    take_output(&mut c);
    // Stream window: 65 535 + (2^31 - 1) overflows: stream error.
    expect_stream_error(
        &mut c,
        &raw(8, 0, id, &MAX_WINDOW.to_be_bytes()),
        id,
        ErrorCode::FLOW_CONTROL_ERROR,
    );
    // Connection window overflow: connection error.
    let (mut c, _sv) = pair();
    expect_conn_error(
        &mut c,
        &raw(8, 0, 0, &MAX_WINDOW.to_be_bytes()),
        ErrorCode::FLOW_CONTROL_ERROR,
    );
}

#[test]
fn receiving_more_than_the_windows() {
    // The stream window: a stream error.
    let small = Settings {
        initial_window_size: DEFAULT_WINDOW,
        ..Settings::default()
    };
    let mut sv = server_with(small, Limits::default());
    let mut enc = Encoder::new();
    let b = block(
        &mut enc,
        &[(":method", "POST"), (":scheme", "http"), (":path", "/")],
    );
    feed(&mut sv, &raw(1, EH, 1, &b)).unwrap();
    let frame = raw(0, 0, 1, &[0u8; 16_384]);
    for _ in 0..3 {
        feed(&mut sv, &frame).unwrap();
    }
    feed(&mut sv, &raw(0, 0, 1, &[0u8; 16_383])).unwrap();
    assert!(resets(&mut sv).is_empty(), "exactly the window");
    expect_stream_error(
        &mut sv,
        &raw(0, ES, 1, b"x"),
        1,
        ErrorCode::FLOW_CONTROL_ERROR,
    );

    // The connection window: a connection error.
    let tiny = Settings {
        connection_window: DEFAULT_WINDOW,
        ..Settings::default()
    };
    let mut sv = server_with(tiny, Limits::default());
    let mut enc = Encoder::new();
    for id in [1, 3] {
        let b = block(
            &mut enc,
            &[(":method", "POST"), (":scheme", "http"), (":path", "/")],
        );
        feed(&mut sv, &raw(1, EH, id, &b)).unwrap();
    }
    feed(&mut sv, &raw(0, 0, 1, &[0u8; 16_384])).unwrap();
    feed(&mut sv, &raw(0, 0, 3, &[0u8; 16_384])).unwrap();
    feed(&mut sv, &raw(0, 0, 1, &[0u8; 16_384])).unwrap();
    feed(&mut sv, &raw(0, 0, 3, &[0u8; 16_383])).unwrap();
    expect_conn_error(
        &mut sv,
        &raw(0, 0, 1, &[0u8; 1]),
        ErrorCode::FLOW_CONTROL_ERROR,
    );
}

#[test]
fn initial_window_size_change_adjusts_open_streams() {
    let (mut c, _sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    assert_eq!(c.send_data(id, &[0u8; 60_000], false), Ok(60_000));
    // The server shrinks the initial window to 1000: the stream's window goes negative.
    feed(&mut c, &raw(4, 0, 0, &[0, 4, 0, 0, 0x03, 0xe8])).unwrap();
    assert_eq!(c.send_capacity(id), 0);
    assert_eq!(c.streams[&id].send_window, 1000 - 65_535 + 5_535);
    // Growing it back to 100 000 is retroactive too.
    feed(&mut c, &raw(4, 0, 0, &[0, 4, 0, 1, 0x86, 0xa0])).unwrap();
    assert_eq!(c.streams[&id].send_window, 100_000 - 60_000);
    assert!(events(&mut c).contains(&Ev::WindowOpened(0)));
    // A new stream starts with the new value.
    let id2 = c.open_stream().unwrap();
    assert_eq!(c.streams[&id2].send_window, 100_000);
    // An increase that overflows an open stream's window: FLOW_CONTROL_ERROR.
    feed(
        &mut c,
        &raw(8, 0, id2, &(MAX_WINDOW - 100_000).to_be_bytes()),
    )
    .unwrap();
    expect_conn_error(
        &mut c,
        &raw(4, 0, 0, &[0, 4, 0, 1, 0x86, 0xa1]),
        ErrorCode::FLOW_CONTROL_ERROR,
    );
}

#[test]
fn reset_stream_data_is_released_by_the_codec() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    c.send_data(id, &[1u8; 40_000], false).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    assert_eq!(sv.unreleased, 40_000);
    sv.reset(id, ErrorCode::CANCEL);
    assert_eq!(sv.unreleased, 0);
    assert_eq!(sv.release_pending, 40_000, "below half of 1 MiB: batched");
    // Data in flight for the reset stream still counts, and is released too.
    feed(&mut sv, &raw(0, 0, id, &[0u8; 1000])).unwrap();
    assert_eq!(sv.release_pending, 41_000);
    assert!(app_events(&mut sv).is_empty());
}

#[test]
fn closed_stream_is_kept_until_released() {
    let (mut c, mut sv) = pair();
    let id = c.open_stream().unwrap();
    c.send_headers(id, &POST, false).unwrap();
    c.send_data(id, b"abc", true).unwrap();
    pump(&mut c, &mut sv);
    app_events(&mut sv);
    sv.send_headers(id, &[(b":status", b"200")], true).unwrap();
    assert_eq!(sv.active_streams(), 0);
    assert!(sv.streams.contains_key(&id), "3 bytes unreleased");
    sv.release(id, 3);
    assert!(!sv.streams.contains_key(&id));
}

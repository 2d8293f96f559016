//! Tests of the HTTP/2 codec: helpers to build raw frames, pump bytes between a client and
//! a server `Connection`, and collect events as owned values.

mod errors;
mod flow;
mod limits;
mod roundtrip;

use std::time::{Duration, Instant};

use loona_hpack::Encoder;

use super::frame::{Head, HEADER_LEN, PREFACE};
use super::{Connection, ErrorCode, Event, Fields, FrameType, Limits, Settings, StreamId};

/// An owned copy of an [`Event`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ev {
    Headers(StreamId, Vec<(String, String)>, bool),
    Data(StreamId, Vec<u8>, bool),
    Trailers(StreamId, Vec<(String, String)>),
    Reset(StreamId, ErrorCode, bool),
    GoAway(StreamId, ErrorCode),
    WindowOpened(StreamId),
    Settings,
    PingAck([u8; 8]),
}

fn owned(f: &Fields) -> Vec<(String, String)> {
    f.iter()
        .map(|(n, v)| {
            (
                String::from_utf8_lossy(n).into_owned(),
                String::from_utf8_lossy(v).into_owned(),
            )
        })
        .collect()
}

/// Drains every queued event.
pub fn events(c: &mut Connection) -> Vec<Ev> {
    let mut out = Vec::new();
    while let Some(e) = c.poll_event() {
        out.push(match e {
            Event::Headers {
                stream,
                fields,
                end_stream,
            } => Ev::Headers(stream, owned(&fields), end_stream),
            Event::Data {
                stream,
                data,
                end_stream,
            } => Ev::Data(stream, data.to_vec(), end_stream),
            Event::Trailers { stream, fields } => Ev::Trailers(stream, owned(&fields)),
            Event::Reset {
                stream,
                code,
                remote,
            } => Ev::Reset(stream, code, remote),
            Event::GoAway {
                last_stream_id,
                code,
            } => Ev::GoAway(last_stream_id, code),
            Event::WindowOpened { stream } => Ev::WindowOpened(stream),
            Event::Settings => Ev::Settings,
            Event::PingAck { payload } => Ev::PingAck(payload),
        });
    }
    out
}

/// Events without the housekeeping ones (Settings, WindowOpened).
pub fn app_events(c: &mut Connection) -> Vec<Ev> {
    events(c)
        .into_iter()
        .filter(|e| !matches!(e, Ev::Settings | Ev::WindowOpened(_)))
        .collect()
}

pub fn t0() -> Instant {
    use std::sync::OnceLock;
    static T: OnceLock<Instant> = OnceLock::new();
    *T.get_or_init(Instant::now)
}

pub fn at(ms: u64) -> Instant {
    t0() + Duration::from_millis(ms)
}

/// Takes everything `c` wants to send.
pub fn take_output(c: &mut Connection) -> Vec<u8> {
    let out = c.pending_output().to_vec();
    c.advance_output(out.len());
    out
}

/// Feeds all of `bytes` (must be whole frames).
pub fn feed(c: &mut Connection, bytes: &[u8]) -> Result<(), super::ConnError> {
    let n = c.recv(bytes, t0())?;
    assert_eq!(n, bytes.len(), "whole frames are consumed");
    Ok(())
}

/// Moves bytes both ways until neither side has output.
pub fn pump(a: &mut Connection, b: &mut Connection) {
    for _ in 0..100 {
        let x = take_output(a);
        let y = take_output(b);
        if x.is_empty() && y.is_empty() {
            return;
        }
        feed(b, &x).expect("b accepts a's bytes");
        feed(a, &y).expect("a accepts b's bytes");
    }
    panic!("pump does not settle");
}

/// A client and a server that exchanged prefaces and SETTINGS (events drained).
pub fn pair_with(cs: Settings, ss: Settings) -> (Connection, Connection) {
    let mut c = Connection::client(cs, Limits::default());
    let mut s = Connection::server(ss, Limits::default());
    pump(&mut c, &mut s);
    events(&mut c);
    events(&mut s);
    (c, s)
}

pub fn pair() -> (Connection, Connection) {
    pair_with(Settings::default(), Settings::default())
}

/// A raw frame.
pub fn raw(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    let l = (payload.len() as u32).to_be_bytes();
    out.extend_from_slice(&[l[1], l[2], l[3], kind, flags]);
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// A server with `limits` that has seen the preface and an empty SETTINGS, its output and
/// events drained.
pub fn server_with(settings: Settings, limits: Limits) -> Connection {
    let mut s = Connection::server(settings, limits);
    let mut hello = PREFACE.to_vec();
    hello.extend(raw(4, 0, 0, &[]));
    feed(&mut s, &hello).unwrap();
    take_output(&mut s);
    events(&mut s);
    s
}

pub fn server() -> Connection {
    server_with(Settings::default(), Limits::default())
}

/// A plain GET for `path` as a header block.
pub fn get_block(enc: &mut Encoder<'static>, path: &str) -> Vec<u8> {
    block(
        enc,
        &[
            (":method", "GET"),
            (":scheme", "http"),
            (":authority", "x"),
            (":path", path),
        ],
    )
}

pub fn block(enc: &mut Encoder<'static>, fields: &[(&str, &str)]) -> Vec<u8> {
    enc.encode(fields.iter().map(|(n, v)| (n.as_bytes(), v.as_bytes())))
}

/// Frames in `bytes` as (header, payload).
pub fn frames(bytes: &[u8]) -> Vec<(Head, Vec<u8>)> {
    let mut out = Vec::new();
    let mut rest = bytes;
    while rest.len() >= HEADER_LEN {
        let h = Head::parse(rest[..HEADER_LEN].try_into().unwrap());
        out.push((h, rest[HEADER_LEN..HEADER_LEN + h.len].to_vec()));
        rest = &rest[HEADER_LEN + h.len..];
    }
    out
}

/// The error code of the GOAWAY in `c`'s output, if any.
pub fn goaway_code(c: &mut Connection) -> Option<ErrorCode> {
    let out = take_output(c);
    frames(&out)
        .iter()
        .rev()
        .find(|(h, _)| h.kind == FrameType::GoAway)
        .map(|(_, p)| ErrorCode(u32::from_be_bytes([p[4], p[5], p[6], p[7]])))
}

/// RST_STREAMs in `c`'s output, as (stream, code).
pub fn resets(c: &mut Connection) -> Vec<(StreamId, ErrorCode)> {
    let out = take_output(c);
    frames(&out)
        .iter()
        .filter(|(h, _)| h.kind == FrameType::RstStream)
        .map(|(h, p)| {
            (
                h.stream,
                ErrorCode(u32::from_be_bytes([p[0], p[1], p[2], p[3]])),
            )
        })
        .collect()
}

/// Feeds `bytes` to `s` and expects a connection error with `code`, announced by GOAWAY.
pub fn expect_conn_error(s: &mut Connection, bytes: &[u8], code: ErrorCode) {
    let err = s.recv(bytes, t0()).expect_err("a connection error");
    assert_eq!(err.code, code, "{err}");
    assert_eq!(goaway_code(s), Some(code));
    assert!(s.is_finished());
    assert!(s.recv(b"", t0()).is_err(), "stays failed");
}

/// Feeds `bytes` to `s` and expects exactly one RST_STREAM on `stream` with `code`.
pub fn expect_stream_error(s: &mut Connection, bytes: &[u8], stream: StreamId, code: ErrorCode) {
    feed(s, bytes).expect("a stream error only");
    assert_eq!(resets(s), vec![(stream, code)]);
}

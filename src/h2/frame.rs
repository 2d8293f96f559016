//! Frame layout (RFC 9113 §4.1, §6): the 9-byte header, types, flags, and writers that
//! append whole frames to an output buffer.

use super::{ErrorCode, StreamId};

/// The client connection preface (§3.4).
pub const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
pub const HEADER_LEN: usize = 9;

pub const FLAG_END_STREAM: u8 = 0x1;
pub const FLAG_ACK: u8 = 0x1;
pub const FLAG_END_HEADERS: u8 = 0x4;
pub const FLAG_PADDED: u8 = 0x8;
pub const FLAG_PRIORITY: u8 = 0x20;

pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;
/// RFC 8441: the server accepts extended CONNECT (`:protocol`, e.g. WebSocket).
pub const SETTINGS_ENABLE_CONNECT_PROTOCOL: u16 = 0x8;

/// Frame types (§6); anything else is `Unknown` and ignored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameType {
    Data,
    Headers,
    Priority,
    RstStream,
    Settings,
    PushPromise,
    Ping,
    GoAway,
    WindowUpdate,
    Continuation,
    Unknown(u8),
}

impl FrameType {
    pub fn from_u8(t: u8) -> Self {
        match t {
            0x0 => FrameType::Data,
            0x1 => FrameType::Headers,
            0x2 => FrameType::Priority,
            0x3 => FrameType::RstStream,
            0x4 => FrameType::Settings,
            0x5 => FrameType::PushPromise,
            0x6 => FrameType::Ping,
            0x7 => FrameType::GoAway,
            0x8 => FrameType::WindowUpdate,
            0x9 => FrameType::Continuation,
            t => FrameType::Unknown(t),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            FrameType::Data => 0x0,
            FrameType::Headers => 0x1,
            FrameType::Priority => 0x2,
            FrameType::RstStream => 0x3,
            FrameType::Settings => 0x4,
            FrameType::PushPromise => 0x5,
            FrameType::Ping => 0x6,
            FrameType::GoAway => 0x7,
            FrameType::WindowUpdate => 0x8,
            FrameType::Continuation => 0x9,
            FrameType::Unknown(t) => t,
        }
    }
}

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Head {
    pub len: usize,
    pub kind: FrameType,
    pub flags: u8,
    pub stream: StreamId,
}

impl Head {
    pub fn parse(b: &[u8; HEADER_LEN]) -> Head {
        Head {
            len: (b[0] as usize) << 16 | (b[1] as usize) << 8 | b[2] as usize,
            kind: FrameType::from_u8(b[3]),
            flags: b[4],
            // The reserved bit is ignored on receipt (§4.1).
            stream: u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff,
        }
    }

    pub fn has(&self, flag: u8) -> bool {
        self.flags & flag != 0
    }
}

pub fn u32_at(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Appends a frame header.
pub fn put_head(out: &mut Vec<u8>, len: usize, kind: FrameType, flags: u8, stream: StreamId) {
    debug_assert!(len < 1 << 24);
    let l = (len as u32).to_be_bytes();
    let s = (stream & 0x7fff_ffff).to_be_bytes();
    out.extend_from_slice(&[
        l[1],
        l[2],
        l[3],
        kind.to_u8(),
        flags,
        s[0],
        s[1],
        s[2],
        s[3],
    ]);
}

/// Appends a SETTINGS frame with the given parameters (an ACK when `params` is empty and
/// `ack`).
pub fn put_settings(out: &mut Vec<u8>, params: &[(u16, u32)], ack: bool) {
    let flags = if ack { FLAG_ACK } else { 0 };
    put_head(out, params.len() * 6, FrameType::Settings, flags, 0);
    for &(id, v) in params {
        out.extend_from_slice(&id.to_be_bytes());
        out.extend_from_slice(&v.to_be_bytes());
    }
}

pub fn put_ping(out: &mut Vec<u8>, payload: [u8; 8], ack: bool) {
    put_head(out, 8, FrameType::Ping, if ack { FLAG_ACK } else { 0 }, 0);
    out.extend_from_slice(&payload);
}

pub fn put_rst(out: &mut Vec<u8>, stream: StreamId, code: ErrorCode) {
    put_head(out, 4, FrameType::RstStream, 0, stream);
    out.extend_from_slice(&code.0.to_be_bytes());
}

pub fn put_goaway(out: &mut Vec<u8>, last: StreamId, code: ErrorCode) {
    put_head(out, 8, FrameType::GoAway, 0, 0);
    out.extend_from_slice(&(last & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(&code.0.to_be_bytes());
}

pub fn put_window_update(out: &mut Vec<u8>, stream: StreamId, inc: u32) {
    put_head(out, 4, FrameType::WindowUpdate, 0, stream);
    out.extend_from_slice(&(inc & 0x7fff_ffff).to_be_bytes());
}

/// Appends DATA frames carrying `data`, each at most `max_frame` long; END_STREAM on the
/// last one if `end_stream`.
pub fn put_data(
    out: &mut Vec<u8>,
    stream: StreamId,
    data: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let mut chunks = data.chunks(max_frame.max(1)).peekable();
    if chunks.peek().is_none() {
        let flags = if end_stream { FLAG_END_STREAM } else { 0 };
        put_head(out, 0, FrameType::Data, flags, stream);
        return;
    }
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none();
        let flags = if last && end_stream {
            FLAG_END_STREAM
        } else {
            0
        };
        put_head(out, chunk.len(), FrameType::Data, flags, stream);
        out.extend_from_slice(chunk);
    }
}

/// Appends a header block as HEADERS plus as many CONTINUATION frames as `max_frame`
/// requires.
pub fn put_header_block(
    out: &mut Vec<u8>,
    stream: StreamId,
    block: &[u8],
    end_stream: bool,
    max_frame: usize,
) {
    let max_frame = max_frame.max(1);
    let first = block.len().min(max_frame);
    let mut flags = if end_stream { FLAG_END_STREAM } else { 0 };
    if first == block.len() {
        flags |= FLAG_END_HEADERS;
    }
    put_head(out, first, FrameType::Headers, flags, stream);
    out.extend_from_slice(&block[..first]);
    let mut rest = &block[first..];
    while !rest.is_empty() {
        let n = rest.len().min(max_frame);
        let flags = if n == rest.len() { FLAG_END_HEADERS } else { 0 };
        put_head(out, n, FrameType::Continuation, flags, stream);
        out.extend_from_slice(&rest[..n]);
        rest = &rest[n..];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_round_trip() {
        let mut out = Vec::new();
        put_head(
            &mut out,
            0x01_02_03,
            FrameType::Unknown(0xfa),
            0x5,
            0x8000_0007,
        );
        let h = Head::parse(out[..9].try_into().unwrap());
        assert_eq!(h.len, 0x01_02_03);
        assert_eq!(h.kind, FrameType::Unknown(0xfa));
        assert_eq!(h.flags, 5);
        // The reserved bit is cleared.
        assert_eq!(h.stream, 7);
        for t in 0..=10u8 {
            assert_eq!(FrameType::from_u8(t).to_u8(), t);
        }
    }

    #[test]
    fn header_block_is_split_into_continuations() {
        let mut out = Vec::new();
        put_header_block(&mut out, 1, &[7u8; 25], true, 10);
        let h1 = Head::parse(out[..9].try_into().unwrap());
        assert_eq!((h1.kind, h1.len, h1.flags), (FrameType::Headers, 10, 1));
        let h2 = Head::parse(out[19..28].try_into().unwrap());
        assert_eq!(
            (h2.kind, h2.len, h2.flags),
            (FrameType::Continuation, 10, 0)
        );
        let h3 = Head::parse(out[38..47].try_into().unwrap());
        assert_eq!((h3.kind, h3.len, h3.flags), (FrameType::Continuation, 5, 4));
        assert_eq!(out.len(), 3 * 9 + 25);
    }

    #[test]
    fn data_is_split_by_max_frame() {
        let mut out = Vec::new();
        put_data(&mut out, 3, &[1u8; 5], true, 2);
        assert_eq!(out.len(), 3 * 9 + 5);
        let last = Head::parse(out[22..31].try_into().unwrap());
        assert_eq!((last.len, last.flags), (1, FLAG_END_STREAM));
        out.clear();
        put_data(&mut out, 3, &[], true, 2);
        assert_eq!(out.len(), 9);
    }
}

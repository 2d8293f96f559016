//! An HTTP/1.1 exchange's h2c leg, without I/O: the request's facts HTTP/2 needs
//! (`H2Facts`), an attempt's stream state (`H2cLeg`), and the translation between the
//! exchange and the stream: the HTTP/2
//! request fields from corelb's rewritten HTTP/1.1 head, chunked request trailers as HTTP/2
//! pairs, the HTTP/1.1 status line and head from HTTP/2 response fields, and the framing
//! and chunk lines of the response body. Bounds follow `http::MAX_SECTION_FIELDS`.

use crate::h2::{is_connection_specific, Fields};
use crate::http;
use crate::http::chunked::ChunkedDecoder;
use crate::http::HeadIndex;

/// Most fields in one translated section (the one truncation rule).
const MAX_PAIRS: usize = http::MAX_SECTION_FIELDS;
/// Most request trailer fields sent on (more are dropped and counted).
const MAX_TRAILERS: usize = http::MAX_SECTION_FIELDS;

/// The facts of an HTTP/1.1 request an HTTP/2 hop needs, from its parsed head.
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct H2Facts {
    /// The request said `TE: trailers`.
    pub(super) te_trailers: bool,
    /// The request body is chunked (its validated bytes carry the framing).
    pub(super) chunked: bool,
    /// The client came over TLS: `:scheme` is https (as an HTTP/2 client's says).
    pub(super) https: bool,
}

impl H2Facts {
    pub fn new(te_trailers: bool, chunked: bool, https: bool) -> H2Facts {
        H2Facts {
            te_trailers,
            chunked,
            https,
        }
    }
}

/// An attempt's stream on an h2c connection: how far the request and the response went.
/// Made afresh for each attempt (`Hop::H2c`).
#[derive(Debug, Default)]
pub(crate) struct H2cLeg {
    /// HEADERS went out; END_STREAM (or the trailers) went out.
    pub(super) opened: bool,
    pub(super) up_end: bool,
    /// Walks the validated chunked body for its data and trailers.
    pub(super) dec: ChunkedDecoder,
    /// The chunked request's trailer field lines as received (empty: none).
    pub(super) trailers: Vec<u8>,
    pub(super) framing: ClientFraming,
    /// Chunked response: data bytes of the chunk being written; any chunk begun.
    pub(super) chunk_left: usize,
    pub(super) any_chunk: bool,
    /// The end of the response (last chunk, trailers) is queued in `Exchange::out`.
    pub(super) end_queued: bool,
}

/// How a response body is framed for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) enum ClientFraming {
    /// No response head yet.
    #[default]
    Unset,
    /// No body (HEAD, 204, 304).
    Bodiless,
    /// The content-length the backend gave (or 0 for a head with END_STREAM).
    Length,
    Chunked,
    /// Until the connection closes (an HTTP/1.0 client and no content-length).
    Close,
}

/// How the response body goes to the client: none for HEAD, 1xx, 204 and 304; its
/// content-length if it has one; 0 for a head that ended the stream; else chunked, or
/// until close for an HTTP/1.0 client.
pub(super) fn framing(
    status: u16,
    head_request: bool,
    length: Option<u64>,
    ended: bool,
    http10: bool,
) -> ClientFraming {
    if head_request || status < 200 || status == 204 || status == 304 {
        ClientFraming::Bodiless
    } else if length.is_some() || ended {
        ClientFraming::Length
    } else if http10 {
        ClientFraming::Close
    } else {
        ClientFraming::Chunked
    }
}

/// The status line and head for an HTTP/1.1 client from HTTP/2 response fields `head`
/// (validated by the codec: lowercase names, no connection-specific field, no CR or LF in
/// values), framed as `framing` says.
pub(super) fn response_head(
    head: &Fields,
    status: u16,
    framing: ClientFraming,
    length: Option<u64>,
    http10: bool,
    keep_alive: bool,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(&[
        b'0' + (status / 100 % 10) as u8,
        b'0' + (status / 10 % 10) as u8,
        b'0' + (status % 10) as u8,
        b' ',
    ]);
    // HTTP/2 carries no reason phrase; an empty one is valid.
    out.extend_from_slice(crate::http::known_reason(status).unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in head.regular() {
        if name == b"content-length" || is_connection_specific(name) {
            continue;
        }
        out.extend_from_slice(name);
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    let length = match framing {
        // HEAD and 304 describe the body a GET would get; 204 has none.
        ClientFraming::Bodiless if status != 204 => length,
        ClientFraming::Length => Some(length.unwrap_or(0)),
        _ => None,
    };
    if let Some(n) = length {
        out.extend_from_slice(b"Content-Length: ");
        out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if framing == ClientFraming::Chunked {
        out.extend_from_slice(b"Transfer-Encoding: chunked\r\n");
    }
    out.extend_from_slice(b"Via: 2 corelb\r\n");
    if !keep_alive {
        out.extend_from_slice(b"Connection: close\r\n");
    } else if http10 {
        out.extend_from_slice(b"Connection: keep-alive\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// The line before a chunk's `len` data bytes (with the CRLF ending the previous chunk)
/// into `line`; returns its length.
pub(super) fn chunk_line(after_chunk: bool, len: usize, line: &mut [u8; 24]) -> usize {
    use std::io::Write;
    let mut w = &mut line[..];
    if after_chunk {
        let _ = w.write_all(b"\r\n");
    }
    let _ = write!(w, "{len:x}\r\n");
    24 - w.len()
}

/// Calls `f` with the HTTP/2 request fields for the rewritten HTTP/1.1 head `head`, whose
/// parts `idx` says where they are (lower case names built in `names`): `:scheme` is
/// `scheme`, `:authority` the Host corelb wrote. `None` if the head has no Host or more
/// fields than a section carries.
pub(super) fn request_pairs<R>(
    head: &[u8],
    idx: &HeadIndex,
    scheme: &[u8],
    te_trailers: bool,
    names: &mut Vec<u8>,
    f: impl FnOnce(&[(&[u8], &[u8])]) -> R,
) -> Option<R> {
    names.clear();
    let mut host = None;
    let mut spans: [(usize, usize, &[u8]); MAX_PAIRS] = [(0, 0, &[]); MAX_PAIRS];
    let mut n = 0;
    for (name, value) in idx.fields(head) {
        if name.eq_ignore_ascii_case(b"host") {
            host = host.or(Some(value));
            continue;
        }
        let skip = name.eq_ignore_ascii_case(b"te")
            || name.eq_ignore_ascii_case(b"expect")
            || is_connection_specific(name);
        if skip {
            continue;
        }
        if n == MAX_PAIRS {
            // Not expected (a head has at most `MAX_HEADERS` fields and corelb adds a
            // few): the one truncation rule refuses what cannot go whole.
            return None;
        }
        let start = names.len();
        names.extend(name.iter().map(u8::to_ascii_lowercase));
        spans[n] = (start, name.len(), value);
        n += 1;
    }
    let mut pairs: [(&[u8], &[u8]); MAX_PAIRS + 5] = [(&[], &[]); MAX_PAIRS + 5];
    pairs[0] = (b":method", idx.method(head));
    pairs[1] = (b":scheme", scheme);
    pairs[2] = (b":authority", host?);
    pairs[3] = (b":path", idx.target(head));
    let mut k = 4;
    for &(s, l, v) in &spans[..n] {
        pairs[k] = (&names[s..s + l], v);
        k += 1;
    }
    if te_trailers {
        pairs[k] = (b"te", b"trailers");
        k += 1;
    }
    Some(f(&pairs[..k]))
}

/// Calls `f` with request trailer field lines `lines` (as validated by the chunked
/// decoder: `name: value` CRLF-terminated, the last CR perhaps without its LF) as HTTP/2
/// pairs, names lowercased in `names`. Returns `f`'s result and the fields dropped (past
/// [`MAX_TRAILERS`]).
pub(super) fn trailer_pairs<R>(
    lines: &[u8],
    names: &mut Vec<u8>,
    f: impl FnOnce(&[(&[u8], &[u8])]) -> R,
) -> (R, u64) {
    names.clear();
    let mut spans: [(usize, usize, &[u8]); MAX_TRAILERS] = [(0, 0, &[]); MAX_TRAILERS];
    let (mut n, mut dropped) = (0, 0);
    for line in lines.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            continue;
        };
        if n == MAX_TRAILERS {
            dropped += 1;
            continue;
        }
        let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
        let start = names.len();
        names.extend(name.iter().map(u8::to_ascii_lowercase));
        spans[n] = (start, name.len(), value);
        n += 1;
    }
    let mut pairs: [(&[u8], &[u8]); MAX_TRAILERS] = [(&[], &[]); MAX_TRAILERS];
    for (p, &(s, l, v)) in pairs.iter_mut().zip(&spans[..n]) {
        *p = (&names[s..s + l], v);
    }
    (f(&pairs[..n]), dropped)
}

//! The message model the parser and writer share: size limits, header arrays, how a body
//! is delimited (`BodyKind`) and where one stands (`Body`), methods, and why a request
//! head is refused (`Reject`).

use std::mem::MaybeUninit;

use super::canned::{
    Canned, BAD_REQUEST, HEAD_TOO_LARGE, METHOD_NOT_ALLOWED, NOT_IMPLEMENTED, VERSION_NOT_SUPPORTED,
};
use super::chunked;

/// Largest request or response head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;
/// Most fields corelb forwards in one field section, head or trailers, on any path: the
/// parser's [`MAX_HEADERS`] plus HTTP/2's pseudo-fields and what corelb appends
/// (X-Forwarded-For, Via). The one truncation rule: a request head with more than
/// [`MAX_HEADERS`] fields gets 431 on every front end; a response head over this bound is
/// malformed (502, or a stream error); trailer fields past it are dropped and counted
/// (`trailers_dropped`).
pub const MAX_SECTION_FIELDS: usize = MAX_HEADERS + 8;

/// A fixed, uninitialised header array for one parse.
pub type HeaderArray<'b> = [MaybeUninit<httparse::Header<'b>>; MAX_HEADERS];

/// A header array ready to be filled by [`parse_request`] or [`parse_response`].
pub fn header_array<'b>() -> HeaderArray<'b> {
    [const { MaybeUninit::uninit() }; MAX_HEADERS]
}

/// How a message body is delimited (RFC 9112 §6.3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyKind {
    None,
    Length(u64),
    Chunked,
    /// Response delimited by the server closing the connection.
    UntilClose,
}

/// Why a request head was refused; each maps to a status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    /// 400, with a short reason for logs.
    BadRequest(&'static str),
    /// 405: CONNECT is not served by a reverse proxy.
    MethodNotAllowed,
    /// 431: head over [`MAX_HEAD`] or more than [`MAX_HEADERS`] fields.
    HeadTooLarge,
    /// 501: a transfer coding we do not know.
    NotImplemented,
    /// 505: a well-formed HTTP version whose major number is not 1 (`HTTP/2.0`, `HTTP/3.0`).
    VersionNotSupported,
}

impl Reject {
    pub fn status(self) -> u16 {
        self.canned().status
    }

    pub fn canned(self) -> Canned {
        match self {
            Reject::BadRequest(_) => BAD_REQUEST,
            Reject::MethodNotAllowed => METHOD_NOT_ALLOWED,
            Reject::HeadTooLarge => HEAD_TOO_LARGE,
            Reject::NotImplemented => NOT_IMPLEMENTED,
            Reject::VersionNotSupported => VERSION_NOT_SUPPORTED,
        }
    }
}

/// Request methods the proxy treats specially; the rest are `Other`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Options,
    Trace,
    Patch,
    Connect,
    Other,
}

impl Method {
    pub(super) fn parse(m: &str) -> Method {
        // Methods are case-sensitive (RFC 9110 §9.1): `get` is some other method.
        match m {
            "GET" => Method::Get,
            "HEAD" => Method::Head,
            "POST" => Method::Post,
            "PUT" => Method::Put,
            "DELETE" => Method::Delete,
            "OPTIONS" => Method::Options,
            "TRACE" => Method::Trace,
            "PATCH" => Method::Patch,
            "CONNECT" => Method::Connect,
            _ => Method::Other,
        }
    }

    /// The method named by `m` (an HTTP/2 `:method`, say).
    pub fn of(m: &[u8]) -> Method {
        std::str::from_utf8(m).map_or(Method::Other, Method::parse)
    }

    /// Idempotent per RFC 9110 §9.2.2: safe to retry when no response byte arrived.
    pub fn idempotent(self) -> bool {
        matches!(
            self,
            Method::Get
                | Method::Head
                | Method::Put
                | Method::Delete
                | Method::Options
                | Method::Trace
        )
    }
}

/// Progress of a message body being forwarded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// Content-Length bytes still to come.
    Length(u64),
    Chunked(chunked::ChunkedDecoder),
    UntilClose,
    Done,
}

impl Body {
    pub fn new(kind: BodyKind) -> Body {
        match kind {
            BodyKind::None | BodyKind::Length(0) => Body::Done,
            BodyKind::Length(n) => Body::Length(n),
            BodyKind::Chunked => Body::Chunked(chunked::ChunkedDecoder::new()),
            BodyKind::UntilClose => Body::UntilClose,
        }
    }

    #[inline]
    pub fn is_done(&self) -> bool {
        // A pattern, not `==`: comparing would compare the whole chunk decoder too.
        matches!(self, Body::Done)
    }

    /// Body bytes that may be moved from here on without being looked at: the rest of a
    /// Content-Length body, or the rest of the current chunk's data (0 at a chunk-size
    /// line, a CRLF or trailers, which are validated as they pass).
    #[inline]
    pub fn opaque_left(&self) -> u64 {
        match self {
            Body::Length(n) => *n,
            Body::Chunked(d) => d.data_left(),
            Body::UntilClose | Body::Done => 0,
        }
    }

    /// Records `n` (at most [`opaque_left`](Body::opaque_left)) bytes moved without being
    /// looked at. A chunked body never ends here: its last chunk and trailers are parsed.
    pub fn skip_opaque(&mut self, n: u64) {
        match self {
            Body::Length(left) => {
                debug_assert!(n <= *left);
                *left -= n.min(*left);
                if *left == 0 {
                    *self = Body::Done;
                }
            }
            Body::Chunked(d) => d.skip_data(n),
            Body::UntilClose | Body::Done => debug_assert_eq!(n, 0),
        }
    }

    /// Validates the body bytes at the start of `input` and returns how many belong to this
    /// message; bytes after that belong to the next one.
    pub fn advance(&mut self, input: &[u8]) -> Result<usize, chunked::ChunkError> {
        match self {
            Body::Length(left) => {
                let n = (*left).min(input.len() as u64);
                *left -= n;
                if *left == 0 {
                    *self = Body::Done;
                }
                Ok(n as usize)
            }
            Body::Chunked(d) => {
                let n = d.validate(input)?;
                if d.is_done() {
                    *self = Body::Done;
                }
                Ok(n)
            }
            Body::UntilClose => Ok(input.len()),
            Body::Done => Ok(0),
        }
    }
}

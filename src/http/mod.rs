//! HTTP/1.1 message framing: strict head parsing, validation and rewriting (RFC 9112).
//!
//! Heads are parsed in place by httparse into a caller-provided fixed header array; a
//! parsed head is validated (framing, Host, hop-by-hop headers) and then rewritten into an
//! output buffer for the next hop. Body framing state lives in [`Body`]; chunked bodies are
//! checked by [`chunked::ChunkedDecoder`]. This module does no I/O.

pub mod chunked;

use std::io::Write;
use std::mem::MaybeUninit;
use std::net::IpAddr;

/// Largest request or response head accepted, in bytes.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 128;
/// Most header names one `Connection` header may list for removal.
const MAX_CONN_TOKENS: usize = 16;

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
}

impl Reject {
    pub fn status(self) -> u16 {
        match self {
            Reject::BadRequest(_) => 400,
            Reject::MethodNotAllowed => 405,
            Reject::HeadTooLarge => 431,
            Reject::NotImplemented => 501,
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
    fn parse(m: &str) -> Method {
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

/// Header names the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hdr {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`: always removed.
    HopByHop,
    XForwardedFor,
    Expect,
    Other,
}

fn classify(name: &str) -> Hdr {
    let eq = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if eq("te") => Hdr::HopByHop,
        4 if eq("host") => Hdr::Host,
        6 if eq("expect") => Hdr::Expect,
        7 if eq("trailer") || eq("upgrade") => Hdr::HopByHop,
        10 if eq("connection") || eq("keep-alive") => {
            if eq("connection") {
                Hdr::Connection
            } else {
                Hdr::HopByHop
            }
        }
        14 if eq("content-length") => Hdr::ContentLength,
        15 if eq("x-forwarded-for") => Hdr::XForwardedFor,
        16 if eq("proxy-connection") => Hdr::HopByHop,
        17 if eq("transfer-encoding") => Hdr::TransferEncoding,
        _ => Hdr::Other,
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements.
fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&b| b == b',')
        .map(|s| s.trim_ascii())
        .filter(|s| !s.is_empty())
}

/// Parses a Content-Length value: 1*DIGIT, no sign, no list, no overflow.
fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, d| n * 10 + (d - b'0') as u64))
}

/// What the framing headers of one head said.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    /// Transfer-Encoding present; `chunked_last` when its final coding is `chunked`.
    te: bool,
    chunked_last: bool,
    chunked_count: u8,
    /// `chunked` with parameters (`chunked;x=1`): it has none, so this is malformed.
    chunked_params: bool,
    unknown_coding: bool,
    bad_length: bool,
    /// `Connection: close` / `keep-alive` seen.
    close: bool,
    keep_alive: bool,
    hosts: u8,
    expect_continue: bool,
}

/// Scans the framing-related headers; the names `Connection` lists go into `conn`.
fn scan<'b>(
    headers: &[httparse::Header<'b>],
    conn: &mut [&'b [u8]; MAX_CONN_TOKENS],
    n_conn: &mut usize,
) -> Framing {
    let mut f = Framing::default();
    for h in headers {
        match classify(h.name) {
            Hdr::Host => f.hosts = f.hosts.saturating_add(1),
            Hdr::ContentLength => {
                // A list ("5, 5") or differing repeated values are refused; identical
                // repeated lines are accepted as one (RFC 9110 §8.6).
                match parse_length(h.value) {
                    Some(n) if f.length.is_none_or(|m| m == n) => f.length = Some(n),
                    _ => f.bad_length = true,
                }
            }
            Hdr::TransferEncoding => {
                f.te = true;
                let mut any = false;
                for coding in list(h.value) {
                    any = true;
                    // Parameters (";q=1") are not part of the coding name.
                    let name = coding
                        .split(|&b| b == b';')
                        .next()
                        .unwrap_or(coding)
                        .trim_ascii();
                    if name.eq_ignore_ascii_case(b"chunked") {
                        f.chunked_params |= name.len() != coding.len();
                        f.chunked_count = f.chunked_count.saturating_add(1);
                        f.chunked_last = true;
                    } else {
                        f.chunked_last = false;
                        if !KNOWN_CODINGS.iter().any(|k| name.eq_ignore_ascii_case(k)) {
                            f.unknown_coding = true;
                        }
                    }
                }
                if !any {
                    f.chunked_last = false;
                }
            }
            Hdr::Connection => {
                for token in list(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else if *n_conn < MAX_CONN_TOKENS {
                        conn[*n_conn] = token;
                        *n_conn += 1;
                    }
                }
            }
            Hdr::Expect if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
                f.expect_continue = true;
            }
            _ => {}
        }
    }
    f
}

const KNOWN_CODINGS: [&[u8]; 6] = [
    b"gzip",
    b"x-gzip",
    b"deflate",
    b"compress",
    b"x-compress",
    b"br",
];

fn named_by_connection(name: &str, conn: &[&[u8]]) -> bool {
    conn.iter().any(|t| name.as_bytes().eq_ignore_ascii_case(t))
}

/// A parsed and validated request head, borrowing the read buffer.
pub struct Request<'h, 'b> {
    req: httparse::Request<'h, 'b>,
    conn: [&'b [u8]; MAX_CONN_TOKENS],
    n_conn: usize,
    /// Bytes of the head, including the final CRLF.
    pub head_len: usize,
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The client asked to keep the connection open after this exchange.
    pub keep_alive: bool,
    pub body: BodyKind,
    pub expect_continue: bool,
}

/// What [`Request::write_upstream`] needs to know about the hop.
pub struct Forward<'a> {
    pub client_ip: IpAddr,
    /// Ask the backend to close after this response (per-request upstream mode).
    pub close: bool,
    /// `Host` value to add when an HTTP/1.0 request has none.
    pub host: &'a [u8],
}

/// Parses and validates one request head at the start of `buf`.
///
/// `Ok(None)` means the head is incomplete and fits in [`MAX_HEAD`]: read more.
pub fn parse_request<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderArray<'b>,
) -> Result<Option<Request<'h, 'b>>, Reject> {
    let mut req = httparse::Request::new(&mut []);
    let status =
        httparse::ParserConfig::default().parse_request_with_uninit_headers(&mut req, buf, headers);
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(Reject::HeadTooLarge)
            } else {
                Ok(None)
            }
        }
        Err(httparse::Error::TooManyHeaders) => return Err(Reject::HeadTooLarge),
        Err(e) => return Err(Reject::BadRequest(parse_error(e))),
    };
    if head_len > MAX_HEAD {
        return Err(Reject::HeadTooLarge);
    }
    let minor = req.version.unwrap_or(1);
    let method = Method::parse(req.method.unwrap_or(""));
    let mut conn = [&b""[..]; MAX_CONN_TOKENS];
    let mut n_conn = 0;
    let f = scan(req.headers, &mut conn, &mut n_conn);

    if method == Method::Connect {
        return Err(Reject::MethodNotAllowed);
    }
    if f.bad_length {
        return Err(Reject::BadRequest("invalid Content-Length"));
    }
    if f.hosts > 1 {
        return Err(Reject::BadRequest("duplicate Host"));
    }
    if minor == 1 && f.hosts == 0 {
        return Err(Reject::BadRequest("missing Host"));
    }
    let body = if f.te {
        if minor == 0 {
            return Err(Reject::BadRequest("Transfer-Encoding in HTTP/1.0"));
        }
        if f.length.is_some() {
            return Err(Reject::BadRequest(
                "both Content-Length and Transfer-Encoding",
            ));
        }
        if f.unknown_coding {
            return Err(Reject::NotImplemented);
        }
        if !f.chunked_last || f.chunked_count != 1 || f.chunked_params {
            return Err(Reject::BadRequest(
                "Transfer-Encoding must end in one chunked",
            ));
        }
        BodyKind::Chunked
    } else {
        match f.length {
            Some(0) | None => BodyKind::None,
            Some(n) => BodyKind::Length(n),
        }
    };
    let keep_alive = if minor == 1 {
        !f.close
    } else {
        f.keep_alive && !f.close
    };
    Ok(Some(Request {
        req,
        conn,
        n_conn,
        head_len,
        method,
        minor,
        keep_alive,
        body,
        expect_continue: f.expect_continue,
    }))
}

fn parse_error(e: httparse::Error) -> &'static str {
    match e {
        httparse::Error::HeaderName => "invalid header name",
        httparse::Error::HeaderValue => "invalid header value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status => "invalid status",
        httparse::Error::Token => "invalid token",
        httparse::Error::TooManyHeaders => "too many headers",
        httparse::Error::Version => "invalid HTTP version",
    }
}

impl<'h, 'b> Request<'h, 'b> {
    pub fn path(&self) -> &'b str {
        self.req.path.unwrap_or("")
    }

    pub fn method_str(&self) -> &'b str {
        self.req.method.unwrap_or("")
    }

    /// Writes the head to send upstream into `out`: HTTP/1.1, hop-by-hop fields and the
    /// fields `Connection` names removed, `X-Forwarded-For` extended and `Via` added.
    pub fn write_upstream(&self, out: &mut Vec<u8>, fwd: &Forward<'_>) {
        let r = &self.req;
        out.extend_from_slice(r.method.unwrap_or("GET").as_bytes());
        out.push(b' ');
        out.extend_from_slice(r.path.unwrap_or("/").as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let conn = &self.conn[..self.n_conn];
        let mut has_host = false;
        for h in r.headers.iter() {
            match classify(h.name) {
                Hdr::Connection | Hdr::HopByHop | Hdr::XForwardedFor => continue,
                Hdr::Host => has_host = true,
                _ if named_by_connection(h.name, conn) => continue,
                _ => {}
            }
            put_header(out, h.name.as_bytes(), h.value);
        }
        if !has_host {
            put_header(out, b"Host", fwd.host);
        }
        out.extend_from_slice(b"X-Forwarded-For: ");
        for h in r.headers.iter() {
            if classify(h.name) == Hdr::XForwardedFor {
                for v in list(h.value) {
                    out.extend_from_slice(v);
                    out.extend_from_slice(b", ");
                }
            }
        }
        let _ = write!(out, "{}", fwd.client_ip);
        out.extend_from_slice(if self.minor == 0 {
            b"\r\nVia: 1.0 corelb\r\n"
        } else {
            b"\r\nVia: 1.1 corelb\r\n"
        });
        if fwd.close {
            out.extend_from_slice(b"Connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// Why a response head from a backend was refused (the client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// A parsed and validated response head, borrowing the upstream read buffer.
pub struct Response<'h, 'b> {
    resp: httparse::Response<'h, 'b>,
    conn: [&'b [u8]; MAX_CONN_TOKENS],
    n_conn: usize,
    pub head_len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// The backend will keep the connection open after this response.
    pub keep_alive: bool,
}

/// Parses one response head at the start of `buf`. `head_request` says the request was HEAD
/// (so the response has no body whatever it announces).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderArray<'b>,
    head_request: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    let mut resp = httparse::Response::new(&mut []);
    let status = httparse::ParserConfig::default()
        .parse_response_with_uninit_headers(&mut resp, buf, headers);
    let head_len = match status {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() >= MAX_HEAD {
                Err(BadResponse("response head too large"))
            } else {
                Ok(None)
            }
        }
        Err(e) => return Err(BadResponse(parse_error(e))),
    };
    let code = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    if !(100..=999).contains(&code) {
        return Err(BadResponse("invalid status code"));
    }
    if code == 101 {
        return Err(BadResponse("protocol upgrade not supported"));
    }
    let mut conn = [&b""[..]; MAX_CONN_TOKENS];
    let mut n_conn = 0;
    let f = scan(resp.headers, &mut conn, &mut n_conn);
    if f.bad_length {
        return Err(BadResponse("invalid Content-Length"));
    }
    if f.te && f.length.is_some() {
        return Err(BadResponse("both Content-Length and Transfer-Encoding"));
    }
    if f.te && (f.chunked_count > 1 || f.chunked_params) {
        return Err(BadResponse("chunked applied twice or with parameters"));
    }
    let body = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        BodyKind::None
    } else if f.te {
        if f.chunked_last {
            BodyKind::Chunked
        } else {
            BodyKind::UntilClose
        }
    } else {
        match f.length {
            Some(0) => BodyKind::None,
            Some(n) => BodyKind::Length(n),
            None => BodyKind::UntilClose,
        }
    };
    let persistent = if minor == 1 {
        !f.close
    } else {
        f.keep_alive && !f.close
    };
    Ok(Some(Response {
        resp,
        conn,
        n_conn,
        head_len,
        status: code,
        body,
        keep_alive: persistent && body != BodyKind::UntilClose,
    }))
}

/// What [`Response::write_client`] needs to know about the client side.
pub struct Reply {
    /// The client spoke HTTP/1.0.
    pub http10: bool,
    /// The proxy will close the client connection after this response.
    pub close: bool,
    /// The chunked body will be decoded for an HTTP/1.0 client.
    pub dechunk: bool,
}

impl Response<'_, '_> {
    /// Informational (1xx) response: forwarded, then another head follows.
    pub fn informational(&self) -> bool {
        self.status < 200
    }

    /// Writes the head to send to the client into `out`.
    pub fn write_client(&self, out: &mut Vec<u8>, reply: &Reply) {
        let r = &self.resp;
        out.extend_from_slice(b"HTTP/1.1 ");
        let code = self.status;
        out.extend_from_slice(&[
            b'0' + (code / 100) as u8,
            b'0' + (code / 10 % 10) as u8,
            b'0' + (code % 10) as u8,
            b' ',
        ]);
        out.extend_from_slice(r.reason.unwrap_or("").as_bytes());
        out.extend_from_slice(b"\r\n");
        let conn = &self.conn[..self.n_conn];
        for h in r.headers.iter() {
            match classify(h.name) {
                Hdr::Connection | Hdr::HopByHop => continue,
                Hdr::TransferEncoding if reply.dechunk => continue,
                _ if named_by_connection(h.name, conn) => continue,
                _ => {}
            }
            put_header(out, h.name.as_bytes(), h.value);
        }
        out.extend_from_slice(match r.version {
            Some(0) => b"Via: 1.0 corelb\r\n",
            _ => b"Via: 1.1 corelb\r\n",
        });
        if self.informational() {
            // Nothing else belongs on a 1xx.
        } else if reply.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if reply.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
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

    pub fn is_done(&self) -> bool {
        *self == Body::Done
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

/// A locally generated response: status and the bytes to send, closing or keeping the
/// connection (the lengths are checked by a unit test).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Canned {
    pub status: u16,
    pub close: &'static [u8],
    pub keep_alive: &'static [u8],
}

macro_rules! canned_pair {
    ($name:ident, $status:literal, $reason:literal, $len:literal, $body:literal) => {
        pub const $name: Canned = Canned {
            status: $status,
            close: concat!(
                "HTTP/1.1 ",
                $status,
                " ",
                $reason,
                "\r\nContent-Type: text/plain\r\n",
                "Content-Length: ",
                $len,
                "\r\nConnection: close\r\n\r\n",
                $body
            )
            .as_bytes(),
            keep_alive: concat!(
                "HTTP/1.1 ",
                $status,
                " ",
                $reason,
                "\r\nContent-Type: text/plain\r\n",
                "Content-Length: ",
                $len,
                "\r\n\r\n",
                $body
            )
            .as_bytes(),
        };
    };
}

canned_pair!(BAD_REQUEST, 400, "Bad Request", "12", "bad request\n");
canned_pair!(
    METHOD_NOT_ALLOWED,
    405,
    "Method Not Allowed",
    "19",
    "method not allowed\n"
);
canned_pair!(
    REQUEST_TIMEOUT,
    408,
    "Request Timeout",
    "16",
    "request timeout\n"
);
canned_pair!(
    HEAD_TOO_LARGE,
    431,
    "Request Header Fields Too Large",
    "32",
    "request header fields too large\n"
);
canned_pair!(
    NOT_IMPLEMENTED,
    501,
    "Not Implemented",
    "16",
    "not implemented\n"
);
canned_pair!(BAD_GATEWAY, 502, "Bad Gateway", "12", "bad gateway\n");
canned_pair!(
    SERVICE_UNAVAILABLE,
    503,
    "Service Unavailable",
    "20",
    "no server available\n"
);
canned_pair!(
    GATEWAY_TIMEOUT,
    504,
    "Gateway Timeout",
    "16",
    "gateway timeout\n"
);

impl Reject {
    pub fn canned(self) -> Canned {
        match self {
            Reject::BadRequest(_) => BAD_REQUEST,
            Reject::MethodNotAllowed => METHOD_NOT_ALLOWED,
            Reject::HeadTooLarge => HEAD_TOO_LARGE,
            Reject::NotImplemented => NOT_IMPLEMENTED,
        }
    }
}

#[cfg(test)]
mod tests;

//! Head parsing and validation: request line and target forms, Host, framing headers and
//! `Connection` (RFC 9112 §2-§7, RFC 9110 §5, §7.2, §7.6).
//!
//! httparse does the tokenising (it already refuses bare CR, NUL and other control bytes,
//! whitespace before a colon, obs-fold and multiple spaces in the start line); what it lets
//! through that matters to a proxy is checked here: the request-target form, the Host
//! grammar, every combination of Content-Length and Transfer-Encoding, versions other
//! than 1.x, and the response rules (status range, 1xx/204/304/HEAD have no body).
//! Bare LF line endings are accepted (RFC 9112 §2.2 lets a recipient do so) because the
//! head is re-serialised with CRLF before it goes anywhere: the next hop never sees them.

use super::message::{BodyKind, HeaderArray, Method, Reject, MAX_HEAD};

/// Most connection options one message may list (other than `close` and `keep-alive`);
/// a message with more is refused rather than forwarded with some of them still in.
pub(super) const MAX_CONN_TOKENS: usize = 16;

/// Header names the proxy acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hdr {
    Host,
    ContentLength,
    TransferEncoding,
    Connection,
    /// `Keep-Alive`, `Proxy-Connection`, `TE`, `Trailer`, `Upgrade`: removed (`Upgrade` is
    /// kept on an upgrade request and its 101).
    HopByHop,
    XForwardedFor,
    XForwardedProto,
    Expect,
    Other,
}

pub(super) fn classify(name: &str) -> Hdr {
    let eq = |s: &str| name.eq_ignore_ascii_case(s);
    match name.len() {
        2 if eq("te") => Hdr::HopByHop,
        4 if eq("host") => Hdr::Host,
        6 if eq("expect") => Hdr::Expect,
        7 if eq("trailer") || eq("upgrade") => Hdr::HopByHop,
        10 if eq("connection") => Hdr::Connection,
        10 if eq("keep-alive") => Hdr::HopByHop,
        14 if eq("content-length") => Hdr::ContentLength,
        15 if eq("x-forwarded-for") => Hdr::XForwardedFor,
        16 if eq("proxy-connection") => Hdr::HopByHop,
        17 if eq("transfer-encoding") => Hdr::TransferEncoding,
        17 if eq("x-forwarded-proto") => Hdr::XForwardedProto,
        _ => Hdr::Other,
    }
}

/// Splits a comma-separated field value into trimmed, non-empty elements.
pub(super) fn list(value: &[u8]) -> impl Iterator<Item = &[u8]> {
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

/// Transfer codings other than chunked that may precede it; anything else is unknown
/// (501 for a request, 502 for a response). `identity` was removed by RFC 7230.
const KNOWN_CODINGS: [&[u8]; 6] = [
    b"gzip",
    b"x-gzip",
    b"deflate",
    b"compress",
    b"x-compress",
    b"br",
];

/// What the framing-related headers of one head said.
#[derive(Default)]
struct Framing {
    length: Option<u64>,
    bad_length: bool,
    /// Transfer-Encoding present; `chunked_last` when its final coding is `chunked`.
    te: bool,
    chunked_last: bool,
    chunked_count: u8,
    /// `chunked` with parameters (`chunked;x=1`): it has none, so this is malformed.
    chunked_params: bool,
    unknown_coding: bool,
    te_empty: bool,
    /// `Connection: close` / `keep-alive` seen.
    close: bool,
    keep_alive: bool,
    /// `Connection: upgrade` seen.
    conn_upgrade: bool,
    too_many_conn: bool,
    hosts: u8,
    /// An `Upgrade` field seen.
    upgrade: bool,
    expect_continue: bool,
    /// A `TE` field listing `trailers`.
    te_trailers: bool,
}

/// The connection options a head listed, borrowed from the read buffer.
pub(super) struct ConnTokens<'b> {
    tokens: [&'b [u8]; MAX_CONN_TOKENS],
    n: usize,
}

impl<'b> ConnTokens<'b> {
    fn new() -> Self {
        ConnTokens {
            tokens: [&b""[..]; MAX_CONN_TOKENS],
            n: 0,
        }
    }

    /// `Connection` named this field, so it is not forwarded (RFC 9110 §7.6.1).
    pub(super) fn names(&self, name: &str) -> bool {
        self.tokens[..self.n]
            .iter()
            .any(|t| name.as_bytes().eq_ignore_ascii_case(t))
    }
}

/// Scans the framing-related headers; the options `Connection` lists go into `conn`.
fn scan<'b>(headers: &[httparse::Header<'b>], conn: &mut ConnTokens<'b>) -> (Framing, &'b [u8]) {
    let mut f = Framing::default();
    let mut host: &'b [u8] = b"";
    for h in headers {
        match classify(h.name) {
            Hdr::Host => {
                f.hosts = f.hosts.saturating_add(1);
                host = h.value;
            }
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
                    // An empty Transfer-Encoding is not "no coding": it is malformed.
                    f.chunked_last = false;
                    f.te_empty = true;
                }
            }
            Hdr::Connection => {
                for token in list(h.value) {
                    if token.eq_ignore_ascii_case(b"close") {
                        f.close = true;
                    } else if token.eq_ignore_ascii_case(b"keep-alive") {
                        f.keep_alive = true;
                    } else {
                        f.conn_upgrade |= token.eq_ignore_ascii_case(b"upgrade");
                        if conn.n < MAX_CONN_TOKENS {
                            conn.tokens[conn.n] = token;
                            conn.n += 1;
                        } else {
                            f.too_many_conn = true;
                        }
                    }
                }
            }
            Hdr::HopByHop if h.name.eq_ignore_ascii_case("upgrade") => f.upgrade = true,
            Hdr::HopByHop if h.name.eq_ignore_ascii_case("te") => {
                f.te_trailers |= list(h.value).any(|t| t.eq_ignore_ascii_case(b"trailers"));
            }
            Hdr::Expect if h.value.trim_ascii().eq_ignore_ascii_case(b"100-continue") => {
                f.expect_continue = true;
            }
            _ => {}
        }
    }
    (f, host)
}

/// `uri-host [":" port]` (RFC 9112 §3.2, RFC 3986 §3.2.2). Stricter than the RFC in one
/// way: a comma, legal in a reg-name, is refused, since a downstream that reads Host as a
/// list would see two hosts. Empty is allowed here (the caller decides).
pub(super) fn valid_authority(v: &[u8]) -> bool {
    let (host, port) = if v.first() == Some(&b'[') {
        // IP-literal: only IPv6 address characters between the brackets.
        let Some(end) = v.iter().position(|&b| b == b']') else {
            return false;
        };
        let inner = &v[1..end];
        if inner.len() < 2
            || !inner
                .iter()
                .all(|&b| b.is_ascii_hexdigit() || b == b':' || b == b'.')
        {
            return false;
        }
        match &v[end + 1..] {
            [] => return true,
            [b':', port @ ..] => (&v[..0], port),
            _ => return false,
        }
    } else {
        match v.iter().position(|&b| b == b':') {
            Some(i) => (&v[..i], &v[i + 1..]),
            None => (v, &v[..0]),
        }
    };
    let mut i = 0;
    while i < host.len() {
        match host[i] {
            b'%' => {
                if !(host.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && host.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 2;
            }
            b if b.is_ascii_alphanumeric() || b"-._~!$&'()*+;=".contains(&b) => {}
            _ => return false,
        }
        i += 1;
    }
    // port = *DIGIT; at most 65535.
    port.len() <= 5
        && port.iter().all(u8::is_ascii_digit)
        && port
            .iter()
            .fold(0u32, |n, d| n * 10 + (d - b'0') as u32)
            .le(&65535)
}

/// Path and query characters: RFC 3986 pchar, "/" and "?", with `%` followed by two hex
/// digits. Visible ASCII the RFC excludes but clients do send unescaped (`"<>\^`{|}`) is
/// passed through as NGINX does; a fragment (`#`) and non-ASCII bytes are refused.
fn valid_path(p: &[u8]) -> bool {
    let mut i = 0;
    while i < p.len() {
        match p[i] {
            b'%' => {
                if !(p.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                    && p.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
                {
                    return false;
                }
                i += 2;
            }
            b'#' => return false,
            0x21..=0x7e => {}
            _ => return false,
        }
        i += 1;
    }
    true
}

/// The request-target, split into what is forwarded.
struct Target<'b> {
    /// Origin-form target to forward (a leading "/" is added when missing), or `*`.
    origin: &'b str,
    /// Authority of an absolute-form target: it replaces Host (RFC 9112 §3.2.2).
    authority: Option<&'b [u8]>,
}

/// Classifies the request-target (RFC 9112 §3.2): origin-form, absolute-form (`http` or
/// `https`, no userinfo, non-empty host) or asterisk-form for OPTIONS. Authority-form is
/// for CONNECT, which is refused before this.
fn parse_target(method: Method, t: &str) -> Result<Target<'_>, Reject> {
    let b = t.as_bytes();
    if b == b"*" {
        return if method == Method::Options {
            Ok(Target {
                origin: t,
                authority: None,
            })
        } else {
            Err(Reject::BadRequest("asterisk-form target outside OPTIONS"))
        };
    }
    if b.first() == Some(&b'/') {
        if !valid_path(b) {
            return Err(Reject::BadRequest("invalid request-target"));
        }
        return Ok(Target {
            origin: t,
            authority: None,
        });
    }
    let scheme_len = match b.iter().position(|&c| c == b':') {
        Some(4) if b[..4].eq_ignore_ascii_case(b"http") => 4,
        Some(5) if b[..5].eq_ignore_ascii_case(b"https") => 5,
        _ => return Err(Reject::BadRequest("invalid request-target")),
    };
    let rest = &t[scheme_len + 1..];
    let Some(rest) = rest.strip_prefix("//") else {
        return Err(Reject::BadRequest("invalid request-target"));
    };
    let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let (authority, origin) = rest.split_at(end);
    if authority.contains('@') {
        return Err(Reject::BadRequest("userinfo in request-target"));
    }
    if authority.is_empty()
        || authority.starts_with(':')
        || !valid_authority(authority.as_bytes())
        || !valid_path(origin.as_bytes())
    {
        return Err(Reject::BadRequest("invalid request-target"));
    }
    Ok(Target {
        origin,
        authority: Some(authority.as_bytes()),
    })
}

/// httparse refuses every version but `HTTP/1.0` and `HTTP/1.1` the same way; RFC 9110
/// §15.6.6 wants 505 for a well-formed one with another major number. This looks at the
/// last word of the request line.
fn version_reject(buf: &[u8]) -> Reject {
    let line_end = buf
        .iter()
        .position(|&b| b == b'\r' || b == b'\n')
        .unwrap_or(buf.len());
    let line = &buf[..line_end];
    let version = line.rsplit(|&b| b == b' ').next().unwrap_or(b"");
    match version {
        [b'H', b'T', b'T', b'P', b'/', major, b'.', minor]
            if major.is_ascii_digit() && minor.is_ascii_digit() && *major != b'1' =>
        {
            Reject::VersionNotSupported
        }
        _ => Reject::BadRequest("invalid HTTP version"),
    }
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

/// A parsed and validated request head, borrowing the read buffer.
pub struct Request<'h, 'b> {
    pub(super) req: httparse::Request<'h, 'b>,
    pub(super) conn: ConnTokens<'b>,
    /// Bytes of the head, including the final CRLF.
    pub head_len: usize,
    pub method: Method,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor: u8,
    /// The client asked to keep the connection open after this exchange.
    pub keep_alive: bool,
    pub body: BodyKind,
    pub expect_continue: bool,
    /// The client asked to switch protocols (`Upgrade` and `Connection: upgrade`, in
    /// HTTP/1.1: RFC 9110 §7.8 has an HTTP/1.0 upgrade ignored). Only then are `Upgrade`
    /// and `Connection: upgrade` forwarded, and a 101 accepted by [`parse_response_with`].
    pub upgrade: bool,
    /// `TE: trailers`: the client accepts trailers. Not forwarded to HTTP/1.1 (TE is
    /// hop-by-hop); an HTTP/2 hop is told `te: trailers` (gRPC servers need it).
    pub te_trailers: bool,
    /// Host to forward: the absolute-form authority, else the Host field (None: an
    /// HTTP/1.0 request without one).
    pub(super) host: Option<&'b [u8]>,
    /// Target to forward in origin-form ("/" is prepended when it does not start so).
    pub(super) target: &'b str,
    /// The Content-Length received (kept so that `Content-Length: 0` is forwarded).
    pub(super) length: Option<u64>,
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
        Err(httparse::Error::Version) => return Err(version_reject(buf)),
        Err(e) => return Err(Reject::BadRequest(parse_error(e))),
    };
    if head_len > MAX_HEAD {
        return Err(Reject::HeadTooLarge);
    }
    let minor = req.version.unwrap_or(1);
    let method = Method::parse(req.method.unwrap_or(""));
    if method == Method::Connect {
        return Err(Reject::MethodNotAllowed);
    }
    let target = parse_target(method, req.path.unwrap_or(""))?;
    let mut conn = ConnTokens::new();
    let (f, host) = scan(req.headers, &mut conn);

    if f.bad_length {
        return Err(Reject::BadRequest("invalid Content-Length"));
    }
    if f.hosts > 1 {
        return Err(Reject::BadRequest("duplicate Host"));
    }
    if minor == 1 && f.hosts == 0 {
        return Err(Reject::BadRequest("missing Host"));
    }
    // Validated even when an absolute-form target replaces it (RFC 9112 §3.2: 400 for "a
    // Host header field with an invalid field value").
    if f.hosts == 1 && !valid_authority(host) {
        return Err(Reject::BadRequest("invalid Host"));
    }
    if f.too_many_conn {
        return Err(Reject::BadRequest("too many Connection options"));
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
        // An empty Transfer-Encoding field is malformed wherever it stands: a later field
        // must not make it, or an unknown coding beside it, pass (found by fuzzing).
        if f.te_empty {
            return Err(Reject::BadRequest("empty Transfer-Encoding"));
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
        head_len,
        method,
        minor,
        keep_alive,
        body,
        expect_continue: f.expect_continue,
        upgrade: f.upgrade && f.conn_upgrade && minor == 1,
        te_trailers: f.te_trailers,
        host: target.authority.or((f.hosts == 1).then_some(host)),
        target: target.origin,
        length: f.length,
    }))
}

impl<'b> Request<'_, 'b> {
    /// The request-target as received (for logs).
    pub fn path(&self) -> &'b str {
        self.req.path.unwrap_or("")
    }

    pub fn method_str(&self) -> &'b str {
        self.req.method.unwrap_or("")
    }

    /// The host the request is for: the absolute-form authority or the Host field.
    pub fn host(&self) -> Option<&'b [u8]> {
        self.host
    }

    /// The value of the first field named `name` (ASCII case-insensitive).
    pub fn field(&self, name: &str) -> Option<&'b [u8]> {
        self.req
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}

/// Why a response head from a backend was refused (the client gets a 502).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadResponse(pub &'static str);

/// A parsed and validated response head, borrowing the upstream read buffer.
pub struct Response<'h, 'b> {
    pub(super) resp: httparse::Response<'h, 'b>,
    pub(super) conn: ConnTokens<'b>,
    pub head_len: usize,
    pub status: u16,
    pub body: BodyKind,
    /// The backend will keep the connection open after this response.
    pub keep_alive: bool,
    /// The request was HEAD: Content-Length and Transfer-Encoding describe the body a GET
    /// would have had and are relayed as such.
    pub(super) head_request: bool,
    pub(super) length: Option<u64>,
    pub(super) te: bool,
}

/// Parses one response head at the start of `buf`. `head_request` says the request was HEAD
/// (so the response has no body whatever it announces).
///
/// A 101 is refused: the request asked for no upgrade, so the backend was not asked to
/// switch protocols (RFC 9110 §15.2.2 lets a server send 101 only when asked).
pub fn parse_response<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderArray<'b>,
    head_request: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    parse_response_with(buf, headers, head_request, false)
}

/// As [`parse_response`], for a request that asked to switch protocols when `upgrade`: a
/// 101 is then accepted if it names the protocol in `Upgrade` (RFC 9110 §7.8); it has no
/// body and the connection is the upgraded protocol's from its last byte.
pub fn parse_response_with<'h, 'b>(
    buf: &'b [u8],
    headers: &'h mut HeaderArray<'b>,
    head_request: bool,
    upgrade: bool,
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
    if head_len > MAX_HEAD {
        return Err(BadResponse("response head too large"));
    }
    let code = resp.code.unwrap_or(0);
    let minor = resp.version.unwrap_or(1);
    // RFC 9110 §15: three digits, 100 to 599.
    if !(100..=599).contains(&code) {
        return Err(BadResponse("invalid status code"));
    }
    if code == 101 && !upgrade {
        return Err(BadResponse("101 to a request that asked for no upgrade"));
    }
    let mut conn = ConnTokens::new();
    let (f, _) = scan(resp.headers, &mut conn);
    if code == 101 && (!f.upgrade || minor == 0) {
        return Err(BadResponse("101 without Upgrade"));
    }
    if f.bad_length {
        return Err(BadResponse("invalid Content-Length"));
    }
    if f.too_many_conn {
        return Err(BadResponse("too many Connection options"));
    }
    if f.te {
        // RFC 9112 §6.1 and §6.3: ambiguous framing is an error, not something to guess
        // at. Only "[known codings,] chunked" is relayed; a body that ends when the
        // connection does is announced by leaving Transfer-Encoding out.
        if minor == 0 {
            return Err(BadResponse("Transfer-Encoding in HTTP/1.0"));
        }
        if f.length.is_some() {
            return Err(BadResponse("both Content-Length and Transfer-Encoding"));
        }
        if f.te_empty
            || f.unknown_coding
            || !f.chunked_last
            || f.chunked_count != 1
            || f.chunked_params
        {
            return Err(BadResponse("Transfer-Encoding must end in one chunked"));
        }
    }
    let body = if head_request || (100..200).contains(&code) || code == 204 || code == 304 {
        BodyKind::None
    } else if f.te {
        BodyKind::Chunked
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
        head_len,
        status: code,
        body,
        keep_alive: persistent && body != BodyKind::UntilClose && code != 101,
        head_request,
        length: f.length,
        te: f.te,
    }))
}

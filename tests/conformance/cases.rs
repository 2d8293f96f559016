//! The conformance cases (RFC 9112, RFC 9110 §5, §6, §7, §8), shared by the cargo test
//! (corelb only) and `make conformance` (corelb, NGINX and HAProxy side by side).
//!
//! A request case sends raw bytes and says what a user must see: refused with one of some
//! statuses and nothing reaching the backend, or forwarded as exactly one request with the
//! given body (no smuggled second one). A response case sends `METHOD /r/NAME`; the
//! scripted backend answers with the case's raw bytes; the client must get the response
//! relayed whole (and the connection stay in step), or a 502, or a cut-off body.
//! `{70000}` in a request or script stands for 70000 bytes of `a` (oversized heads).
//! `known_fail` marks a case that needs a change outside src/http; the cargo test skips it.

/// A complete request the smuggling cases hide in a body.
const SMUGGLED: &str = "GET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n";

pub struct Case {
    /// Kebab-case; response cases are requested as `/r/NAME`.
    pub name: &'static str,
    /// Raw request bytes; `None`: `METHOD /r/NAME HTTP/1.1` with `Host: t.test`.
    pub send: Option<&'static [u8]>,
    pub method: &'static str,
    /// The backend's raw answer to `/r/NAME`, and whether it closes after it.
    pub script: Option<(&'static [u8], bool)>,
    pub expect: Expect,
    pub known_fail: Option<&'static str>,
}

/// How the backend must see a forwarded request.
pub struct Fwd {
    pub target: Option<&'static str>,
    pub host: Option<&'static str>,
    pub body: &'static [u8],
    /// The proxy must close the client connection afterwards.
    pub close: bool,
}

/// The response the client must get.
pub struct Rel {
    pub status: u16,
    pub body: &'static [u8],
    /// 1xx statuses that must be forwarded before it.
    pub interim: &'static [u16],
}

pub enum Expect {
    Reject(&'static [u16]),
    Forward(Fwd),
    /// The RFC allows either (a MAY, or a SHOULD with an alternative).
    RejectOrForward(&'static [u16], Fwd),
    BadGateway,
    Relay(Rel),
    RelayOr502(Rel),
    /// Relayed, 502, or cut off (a proxy may refuse what it finds mid-body).
    RelayOrTruncated(Rel),
    /// A body broken mid-way: 502, or the head and a cut-off body, then a close.
    Truncated,
}

const fn req(name: &'static str, send: &'static str, expect: Expect) -> Case {
    Case {
        name,
        send: Some(send.as_bytes()),
        method: "GET",
        script: None,
        expect,
        known_fail: None,
    }
}

const fn resp(name: &'static str, script: &'static str, expect: Expect) -> Case {
    Case {
        name,
        send: None,
        method: "GET",
        script: Some((script.as_bytes(), false)),
        expect,
        known_fail: None,
    }
}

impl Case {
    /// The backend closes the connection after its answer.
    const fn then_close(mut self) -> Case {
        if let Some((s, _)) = self.script {
            self.script = Some((s, true));
        }
        self
    }

    const fn method(mut self, m: &'static str) -> Case {
        self.method = m;
        self
    }

    #[allow(dead_code)]
    const fn known_fail(mut self, why: &'static str) -> Case {
        self.known_fail = Some(why);
        self
    }
}

const fn fwd(body: &'static str) -> Fwd {
    Fwd {
        target: None,
        host: None,
        body: body.as_bytes(),
        close: false,
    }
}

const fn fwd_to(target: &'static str, host: &'static str) -> Fwd {
    Fwd {
        target: Some(target),
        host: Some(host),
        body: b"",
        close: false,
    }
}

const fn rel(status: u16, body: &'static str) -> Rel {
    Rel {
        status,
        body: body.as_bytes(),
        interim: &[],
    }
}

/// RFC 9112 §6.1: a request with both CL and TE may be refused, or processed by TE alone
/// and the connection closed after it.
const BY_TE_THEN_CLOSE: Expect = Expect::RejectOrForward(
    &[400],
    Fwd {
        target: None,
        host: None,
        body: b"",
        close: true,
    },
);
const R400: Expect = Expect::Reject(&[400]);
const R400_501: Expect = Expect::Reject(&[400, 501]);

macro_rules! post {
    ($headers:expr, $body:expr) => {
        concat!(
            "POST /in HTTP/1.1\r\nHost: t.test\r\n",
            $headers,
            "\r\n",
            $body
        )
    };
}

macro_rules! get {
    ($headers:expr) => {
        concat!("GET /in HTTP/1.1\r\n", $headers, "\r\n")
    };
}

macro_rules! chunked {
    ($body:expr) => {
        post!("Transfer-Encoding: chunked\r\n", $body)
    };
}

pub const CASES: &[Case] = &[
    // --- Content-Length and Transfer-Encoding (RFC 9112 §6) ---
    req("post-content-length", post!("Content-Length: 5\r\n", "hello"), Expect::Forward(fwd("hello"))),
    req("post-chunked", chunked!("5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\n\r\n"), Expect::Forward(fwd("hello"))),
    req("cl-leading-zeros", post!("Content-Length: 005\r\n", "hello"), Expect::Forward(fwd("hello"))),
    req("cl-and-te", post!("Content-Length: 45\r\nTransfer-Encoding: chunked\r\n", concat!("0\r\n\r\n", "GET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n")), BY_TE_THEN_CLOSE),
    req("te-and-cl", post!("Transfer-Encoding: chunked\r\nContent-Length: 3\r\n", "0\r\n\r\n"), BY_TE_THEN_CLOSE),
    req("cl-differing", post!("Content-Length: 5\r\nContent-Length: 45\r\n", concat!("hello", "GET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n")), R400),
    req("cl-repeated-same", post!("Content-Length: 5\r\nContent-Length: 5\r\n", "hello"), Expect::RejectOrForward(&[400], fwd("hello"))),
    req("cl-list-same", post!("Content-Length: 5, 5\r\n", "hello"), Expect::RejectOrForward(&[400], fwd("hello"))),
    req("cl-plus", post!("Content-Length: +5\r\n", "hello"), R400),
    req("cl-negative", post!("Content-Length: -5\r\n", "hello"), R400),
    req("cl-hex", post!("Content-Length: 0x5\r\n", "hello"), R400),
    req("cl-inner-space", post!("Content-Length: 1 2\r\n", "hello"), R400),
    req("cl-overflow", post!("Content-Length: 99999999999999999999\r\n", "hello"), Expect::Reject(&[400, 413])),
    req("te-chunked-identity", post!("Transfer-Encoding: chunked, identity\r\n", "5\r\nhello\r\n0\r\n\r\n"), R400_501),
    req("te-identity", post!("Transfer-Encoding: identity\r\nContent-Length: 5\r\n", "hello"), R400_501),
    req("te-xchunked", post!("Transfer-Encoding: xchunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), R400_501),
    req("te-chunked-twice", post!("Transfer-Encoding: chunked, chunked\r\n", "5\r\nhello\r\n0\r\n\r\n"), R400_501),
    req("te-chunked-then-gzip", post!("Transfer-Encoding: chunked, gzip\r\n", "5\r\nhello\r\n0\r\n\r\n"), R400_501),
    req("te-space-before-colon", post!("Transfer-Encoding : chunked\r\nContent-Length: 5\r\n", "hello"), R400),
    req("te-vertical-tab", post!("Transfer-Encoding:\x0bchunked\r\n", "0\r\n\r\n"), R400_501),
    req("te-obs-fold", post!("Transfer-Encoding:\r\n chunked\r\n", "0\r\n\r\n"), R400),
    req("te-in-http10", concat!("POST /in HTTP/1.0\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n", "hello"), R400),
    req("te-http10-no-cl", concat!("POST /in HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", "0\r\n\r\n"), R400),
    // --- Connection options naming framing or routing fields (RFC 9110 §7.6.1) ---
    req("connection-content-length", post!("Content-Length: 40\r\nConnection: Content-Length\r\n", "GET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n"), Expect::RejectOrForward(&[400], fwd(SMUGGLED))),
    req("connection-close-content-length", post!("Content-Length: 40\r\nConnection: close, Content-Length\r\n", "GET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n"), Expect::RejectOrForward(&[400], fwd(SMUGGLED))),
    req("connection-transfer-encoding", post!("Transfer-Encoding: chunked\r\nConnection: Transfer-Encoding\r\n", "28\r\nGET /SMUGGLED HTTP/1.1\r\nHost: t.test\r\n\r\n\r\n0\r\n\r\n"), Expect::RejectOrForward(&[400], fwd(SMUGGLED))),
    req("connection-host", get!("Host: t.test\r\nConnection: Host\r\n"), Expect::RejectOrForward(&[400], Fwd { target: None, host: Some("t.test"), body: b"", close: false })),
    // --- Field syntax (RFC 9112 §5, RFC 9110 §5) ---
    req("space-before-colon", get!("Host: t.test\r\nX-A : 1\r\n"), R400),
    req("host-space-before-colon", "GET /in HTTP/1.1\r\nHost : t.test\r\n\r\n", R400),
    req("obs-fold", get!("Host: t.test\r\nX-A: 1\r\n  2\r\n"), R400),
    req("bare-cr-in-value", get!("Host: t.test\r\nX-A: a\rb\r\n"), R400),
    req("nul-in-value", get!("Host: t.test\r\nX-A: a\x00b\r\n"), R400),
    req("bad-char-in-name", get!("Host: t.test\r\nX\"A: 1\r\n"), R400),
    req("space-in-name", get!("Host: t.test\r\nX A: 1\r\n"), R400),
    req("empty-name", get!("Host: t.test\r\n: 1\r\n"), R400),
    req("leading-space-first-field", "GET /in HTTP/1.1\r\n Host: t.test\r\n\r\n", R400),
    req("bare-lf-line-ends", "GET /in HTTP/1.1\nHost: t.test\n\n", Expect::RejectOrForward(&[400], fwd(""))),
    req("oversized-head", "GET /in HTTP/1.1\r\nHost: t.test\r\nX-Big: {70000}\r\n\r\n", Expect::Reject(&[400, 431])),
    // --- Host (RFC 9112 §3.2) ---
    req("host-missing", get!(""), R400),
    req("host-duplicate", get!("Host: t.test\r\nHost: u.test\r\n"), R400),
    req("host-list", get!("Host: a.test, b.test\r\n"), R400),
    req("host-space", get!("Host: a b\r\n"), R400),
    req("host-userinfo", get!("Host: user@a.test\r\n"), R400),
    req("host-path", get!("Host: a.test/x\r\n"), R400),
    req("host-bad-port", get!("Host: a.test:99x\r\n"), R400),
    req("host-http10-missing", "GET /in HTTP/1.0\r\n\r\n", Expect::Forward(fwd(""))),
    req("host-ipv6", get!("Host: [::1]:8080\r\n"), Expect::Forward(fwd(""))),
    // --- Request line and target (RFC 9112 §3) ---
    req("absolute-form", "GET http://other.test/x HTTP/1.1\r\nHost: example.test\r\n\r\n", Expect::Forward(fwd_to("/x", "other.test"))),
    req("absolute-form-userinfo", "GET http://u@other.test/x HTTP/1.1\r\nHost: other.test\r\n\r\n", R400),
    req("asterisk-not-options", "GET * HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("relative-target", "GET in HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("fragment-in-target", "GET /in#frag HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("double-space", "GET  /in HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("tab-separator", "GET\t/in HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("bad-method-char", "G(T /in HTTP/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("lowercase-version", "GET /in http/1.1\r\nHost: t.test\r\n\r\n", R400),
    req("http09", "GET /in\r\n\r\n", R400),
    req("http2-version", "GET /in HTTP/2.0\r\nHost: t.test\r\n\r\n", Expect::Reject(&[505])),
    req("http3-version", "GET /in HTTP/3.0\r\nHost: t.test\r\n\r\n", Expect::Reject(&[505])),
    req("connect-method", "CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n", Expect::Reject(&[400, 405, 501])),
    // --- Chunked bodies (RFC 9112 §7.1) ---
    req("chunk-size-17-digits", chunked!("00000000000000005\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-overflow", chunked!("10000000000000005\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-empty", chunked!("\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-not-hex", chunked!("5g\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-0x", chunked!("0x5\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-leading-space", chunked!(" 5\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-size-bare-lf", chunked!("5\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-ext-bare-lf", chunked!("5;a\nb\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-ext-nul", chunked!("5;a\x00\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-ext-bad-char", chunked!("5;a@b\r\nhello\r\n0\r\n\r\n"), R400),
    req("chunk-ext-valid", chunked!("5 ; a = \"b c\" ;d\r\nhello\r\n0\r\n\r\n"), Expect::Forward(fwd("hello"))),
    req("chunk-data-no-crlf", chunked!("5\r\nhelloXX0\r\n\r\n"), R400),
    req("chunk-data-bare-lf", chunked!("5\r\nhello\n0\r\n\r\n"), R400),
    req("chunk-data-too-long", chunked!("3\r\nhello\r\n0\r\n\r\n"), R400),
    req("trailer-content-length", chunked!("5\r\nhello\r\n0\r\nContent-Length: 40\r\n\r\n"), Expect::RejectOrForward(&[400], fwd("hello"))),
    req("trailer-transfer-encoding", chunked!("5\r\nhello\r\n0\r\nTransfer-Encoding: chunked\r\n\r\n"), Expect::RejectOrForward(&[400], fwd("hello"))),
    req("trailer-bad-name", chunked!("5\r\nhello\r\n0\r\nBad Name: 1\r\n\r\n"), R400),
    req("trailer-obs-fold", chunked!("5\r\nhello\r\n0\r\nX-A: 1\r\n 2\r\n\r\n"), R400),
    // --- Responses (RFC 9112 §4, §6; RFC 9110 §15) ---
    resp("resp-content-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Expect::Relay(rel(200, "hello"))),
    resp("resp-chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\n\r\n", Expect::Relay(rel(200, "hello"))),
    resp("resp-connection-content-length", "HTTP/1.1 200 OK\r\nConnection: content-length\r\nContent-Length: 5\r\n\r\nhello", Expect::RelayOr502(rel(200, "hello"))),
    resp("resp-connection-transfer-encoding", "HTTP/1.1 200 OK\r\nConnection: transfer-encoding\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::RelayOr502(rel(200, "hello"))),
    resp("resp-cl-and-te", "HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::RelayOr502(rel(200, "hello"))).then_close(),
    resp("resp-cl-differing", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 3\r\n\r\nhello", Expect::BadGateway),
    resp("resp-cl-invalid", "HTTP/1.1 200 OK\r\nContent-Length: 5x\r\n\r\nhello", Expect::BadGateway),
    resp("resp-cl-plus", "HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-te-unknown", "HTTP/1.1 200 OK\r\nTransfer-Encoding: xchunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::BadGateway).then_close(),
    resp("resp-te-in-http10", "HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", Expect::RelayOr502(rel(200, "hello"))).then_close(),
    resp("resp-bad-status-line", "HTTP/1.1 2OO OK\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-status-600", "HTTP/1.1 600 Odd\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-http2-version", "HTTP/2.0 200 OK\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-bare-cr", "HTTP/1.1 200 OK\r\nX-A: a\rb\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-nul", "HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-obs-fold", "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 5\r\n\r\nhello", Expect::RelayOr502(rel(200, "hello"))),
    resp("resp-space-before-colon", "HTTP/1.1 200 OK\r\nContent-Length : 5\r\n\r\nhello", Expect::RelayOr502(rel(200, "hello"))).then_close(),
    resp("resp-oversized-head", "HTTP/1.1 200 OK\r\nX-Big: {70000}\r\nContent-Length: 5\r\n\r\nhello", Expect::BadGateway),
    resp("resp-bare-lf", "HTTP/1.1 200 OK\nContent-Length: 5\n\nhello", Expect::RelayOr502(rel(200, "hello"))),
    resp("resp-101-unasked", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\nhello", Expect::BadGateway),
    resp("resp-103-forwarded", "HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", Expect::Relay(Rel { status: 200, body: b"hello", interim: &[103] })),
    resp("resp-head-with-length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", Expect::Relay(rel(200, ""))).method("HEAD"),
    resp("resp-204-with-length", "HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n", Expect::Relay(rel(204, ""))),
    resp("resp-304-with-length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n", Expect::Relay(rel(304, ""))),
    resp("resp-close-delimited", "HTTP/1.1 200 OK\r\n\r\nhello", Expect::Relay(rel(200, "hello"))).then_close(),
    resp("resp-extra-after-body", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\nevil", Expect::Relay(rel(200, "hello"))),
    resp("resp-chunk-bad-size", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\nzz\r\nworld\r\n0\r\n\r\n", Expect::Truncated).then_close(),
    resp("resp-chunk-no-crlf", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX5\r\nworld\r\n0\r\n\r\n", Expect::Truncated).then_close(),
    resp("resp-chunk-ext-lf", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;a\nb\r\nhello\r\n0\r\n\r\n", Expect::Truncated).then_close(),
    resp("resp-trailer-content-length", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nContent-Length: 9\r\n\r\n", Expect::RelayOrTruncated(rel(200, "hello"))),
];

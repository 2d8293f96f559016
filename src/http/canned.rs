//! Locally generated answers (errors the proxy itself sends), as static bytes.

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
    PLAIN_HTTP_TO_TLS,
    400,
    "Bad Request",
    "38",
    "plain HTTP request sent to a TLS port\n"
);
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
canned_pair!(
    VERSION_NOT_SUPPORTED,
    505,
    "HTTP Version Not Supported",
    "27",
    "http version not supported\n"
);

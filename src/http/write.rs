//! Head writing: a validated head rewritten for the next hop.
//!
//! Hop-by-hop fields and the fields `Connection` names are dropped; `Content-Length` and
//! `Transfer-Encoding` are never copied but generated from the [`BodyKind`] corelb frames
//! the body by (as pingora's HTTP/1 client picks its body writer from the headers it
//! sends), so a `Connection: Content-Length` cannot strip the framing from a body that is
//! still relayed. Host is likewise generated from the validated authority. Connection
//! options naming Content-Length, Transfer-Encoding or Host therefore change nothing:
//! those fields are the proxy's to write for the next hop, not the sender's.

use super::head::{classify, list, Hdr, Request, Response};
use super::message::BodyKind;
use std::io::Write;
use std::net::IpAddr;

/// What [`Request::write_upstream`] needs to know about the hop.
pub struct Forward<'a> {
    pub client_ip: IpAddr,
    /// Ask the backend to close after this response (per-request upstream mode).
    pub close: bool,
    /// `Host` value to add when an HTTP/1.0 request has none.
    pub host: &'a [u8],
    /// `X-Forwarded-Proto` to set in place of the client's; `None` keeps the client's.
    pub proto: Option<&'static [u8]>,
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

/// Where the parts of a request head sit in the bytes [`Request::write_upstream`] wrote,
/// recorded as they are written: a hop in another protocol (an h2c stream) takes the
/// method, target and fields from here instead of parsing corelb's own head again.
#[derive(Debug, Default)]
pub struct HeadIndex {
    /// The request target's start and end.
    target: (u32, u32),
    /// Each field line's start and its colon, in order.
    lines: Vec<(u32, u32)>,
    /// Where the empty line ending the head starts.
    end: u32,
}

impl HeadIndex {
    /// The method of `head`, the bytes this index was recorded for.
    pub fn method<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[..(self.target.0 as usize).saturating_sub(1)]
    }

    /// The origin-form target (or `*`) of `head`.
    pub fn target<'h>(&self, head: &'h [u8]) -> &'h [u8] {
        &head[self.target.0 as usize..self.target.1 as usize]
    }

    /// The fields of `head` as name and value, in order (Host and corelb's framing,
    /// X-Forwarded-For, Via and Connection lines among them).
    pub fn fields<'a>(&'a self, head: &'a [u8]) -> impl Iterator<Item = (&'a [u8], &'a [u8])> {
        let next = self.lines.iter().skip(1).map(|l| l.0).chain([self.end]);
        self.lines
            .iter()
            .zip(next)
            .map(move |(&(start, colon), next)| {
                let value = &head[colon as usize + 1..next as usize - 2];
                (&head[start as usize..colon as usize], value.trim_ascii())
            })
    }

    /// A field line of `name_len` bytes of name starts at the end of `out`.
    fn line(&mut self, out: &[u8], name_len: usize) {
        let at = out.len() as u32;
        self.lines.push((at, at + name_len as u32));
    }
}

fn put_header(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// A field line of a request head, recorded in `idx`.
fn field(out: &mut Vec<u8>, idx: &mut HeadIndex, name: &[u8], value: &[u8]) {
    idx.line(out, name.len());
    put_header(out, name, value);
}

fn put_length(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(b"Content-Length: ");
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// The client's address, without `fmt` machinery for the common IPv4 case.
fn put_ip(out: &mut Vec<u8>, ip: std::net::IpAddr) {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let mut digits = itoa::Buffer::new();
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(digits.format(octet).as_bytes());
            }
        }
        v6 => {
            let _ = write!(out, "{v6}");
        }
    }
}

/// One `Transfer-Encoding` line holding every coding received, in order (validated to end
/// in a single `chunked`).
fn put_codings(out: &mut Vec<u8>, headers: &[httparse::Header<'_>]) {
    out.extend_from_slice(b"Transfer-Encoding: ");
    let mut first = true;
    for h in headers {
        if classify(h.name) == Hdr::TransferEncoding {
            for coding in list(h.value) {
                if !first {
                    out.extend_from_slice(b", ");
                }
                out.extend_from_slice(coding);
                first = false;
            }
        }
    }
    out.extend_from_slice(b"\r\n");
}

impl Request<'_, '_> {
    /// Writes the head to send upstream into `out` (empty), and where its parts are into
    /// `idx`: HTTP/1.1, origin-form target, Host from the validated authority, hop-by-hop
    /// fields and the fields `Connection` names removed, framing generated from
    /// [`Request::body`], `X-Forwarded-For` extended and `Via` added.
    pub fn write_upstream(&self, out: &mut Vec<u8>, idx: &mut HeadIndex, fwd: &Forward<'_>) {
        debug_assert!(out.is_empty());
        idx.lines.clear();
        let r = &self.req;
        out.extend_from_slice(r.method.unwrap_or("GET").as_bytes());
        out.push(b' ');
        let start = out.len() as u32;
        if !self.target.starts_with('/') && self.target != "*" {
            out.push(b'/');
        }
        out.extend_from_slice(self.target.as_bytes());
        idx.target = (start, out.len() as u32);
        out.extend_from_slice(b" HTTP/1.1\r\n");
        let mut has_host = false;
        for h in r.headers.iter() {
            match classify(h.name) {
                // An upgrade request keeps its `Upgrade` (and `Connection: upgrade`, below).
                Hdr::HopByHop if self.upgrade && h.name.eq_ignore_ascii_case("upgrade") => {}
                Hdr::Connection
                | Hdr::HopByHop
                | Hdr::XForwardedFor
                | Hdr::ContentLength
                | Hdr::TransferEncoding => continue,
                Hdr::XForwardedProto if fwd.proto.is_some() => continue,
                Hdr::Host => {
                    has_host = true;
                    field(out, idx, b"Host", self.host.unwrap_or(h.value));
                    continue;
                }
                _ if self.conn.names(h.name) => continue,
                _ => {}
            }
            field(out, idx, h.name.as_bytes(), h.value);
        }
        if !has_host {
            field(out, idx, b"Host", self.host.unwrap_or(fwd.host));
        }
        match self.body {
            BodyKind::Length(n) => {
                idx.line(out, "Content-Length".len());
                put_length(out, n)
            }
            BodyKind::Chunked => {
                idx.line(out, "Transfer-Encoding".len());
                put_codings(out, r.headers)
            }
            // `Content-Length: 0` is kept: some servers want a length on every POST.
            BodyKind::None | BodyKind::UntilClose => {
                if let Some(n) = self.length {
                    idx.line(out, "Content-Length".len());
                    put_length(out, n);
                }
            }
        }
        idx.line(out, "X-Forwarded-For".len());
        out.extend_from_slice(b"X-Forwarded-For: ");
        if !self.conn.names("x-forwarded-for") {
            for h in r.headers.iter() {
                if classify(h.name) == Hdr::XForwardedFor {
                    for v in list(h.value) {
                        out.extend_from_slice(v);
                        out.extend_from_slice(b", ");
                    }
                }
            }
        }
        put_ip(out, fwd.client_ip);
        out.extend_from_slice(b"\r\n");
        idx.line(out, "Via".len());
        out.extend_from_slice(if self.minor == 0 {
            b"Via: 1.0 corelb\r\n"
        } else {
            b"Via: 1.1 corelb\r\n"
        });
        if let Some(proto) = fwd.proto {
            field(out, idx, b"X-Forwarded-Proto", proto);
        }
        if self.upgrade {
            field(out, idx, b"Connection", b"upgrade");
        } else if fwd.close {
            field(out, idx, b"Connection", b"close");
        }
        idx.end = out.len() as u32;
        out.extend_from_slice(b"\r\n");
    }
}

impl<'b> Response<'_, 'b> {
    /// For an HTTP/2 client: the fields to relay, those `write_client` would copy (no
    /// hop-by-hop or connection-specific field, no framing), in order.
    pub fn each_field(&self, mut f: impl FnMut(&'b str, &'b [u8])) {
        for h in self.resp.headers.iter() {
            match classify(h.name) {
                Hdr::Connection | Hdr::HopByHop | Hdr::ContentLength | Hdr::TransferEncoding => {
                    continue
                }
                _ if self.conn.names(h.name) => continue,
                _ => f(h.name, h.value),
            }
        }
    }

    /// The validated Content-Length, if the response carried one.
    pub fn content_length(&self) -> Option<u64> {
        self.length
    }
}

impl Response<'_, '_> {
    /// Informational (1xx) response: forwarded, then another head follows. Not a 101,
    /// after which no head follows.
    pub fn informational(&self) -> bool {
        self.status < 200 && !self.switching()
    }

    /// 101 Switching Protocols (accepted only for an upgrade request): the connection
    /// carries the new protocol after this head.
    pub fn switching(&self) -> bool {
        self.status == 101
    }

    /// Writes the head to send to the client into `out`, framing generated from
    /// [`Response::body`] and `reply`.
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
        for h in r.headers.iter() {
            match classify(h.name) {
                Hdr::HopByHop if self.switching() && h.name.eq_ignore_ascii_case("upgrade") => {}
                Hdr::Connection | Hdr::HopByHop | Hdr::ContentLength | Hdr::TransferEncoding => {
                    continue
                }
                _ if self.conn.names(h.name) => continue,
                _ => {}
            }
            put_header(out, h.name.as_bytes(), h.value);
        }
        match self.body {
            BodyKind::Length(n) => put_length(out, n),
            BodyKind::Chunked if !reply.dechunk => put_codings(out, r.headers),
            // De-chunked for HTTP/1.0, or until close: the end of the body is the close.
            BodyKind::Chunked | BodyKind::UntilClose => {}
            // 1xx and 204 never carry framing (RFC 9110 §8.6, §6.1). For HEAD and 304 the
            // fields describe the body a GET would get and are relayed; a 200 with
            // `Content-Length: 0` keeps its length so the connection stays usable.
            BodyKind::None if code < 200 || code == 204 => {}
            BodyKind::None => {
                if let Some(n) = self.length {
                    put_length(out, n);
                } else if self.te && !reply.http10 && (self.head_request || code == 304) {
                    put_codings(out, r.headers);
                }
            }
        }
        out.extend_from_slice(match r.version {
            Some(0) => b"Via: 1.0 corelb\r\n",
            _ => b"Via: 1.1 corelb\r\n",
        });
        if self.switching() {
            out.extend_from_slice(b"Connection: upgrade\r\n");
        } else if self.informational() {
            // Nothing else belongs on a 1xx.
        } else if reply.close {
            out.extend_from_slice(b"Connection: close\r\n");
        } else if reply.http10 {
            out.extend_from_slice(b"Connection: keep-alive\r\n");
        }
        out.extend_from_slice(b"\r\n");
    }
}

/// The standard reason phrase of `code`, if it has a common one.
pub fn known_reason(code: u16) -> Option<&'static str> {
    Some(match code {
        100 => "Continue",
        101 => "Switching Protocols",
        200 => "OK",
        201 => "Created",
        202 => "Accepted",
        204 => "No Content",
        206 => "Partial Content",
        301 => "Moved Permanently",
        302 => "Found",
        303 => "See Other",
        304 => "Not Modified",
        307 => "Temporary Redirect",
        308 => "Permanent Redirect",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        409 => "Conflict",
        413 => "Content Too Large",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => return None,
    })
}

/// The standard reason phrase of `code`, or a generic one per class.
pub fn reason_phrase(code: u16) -> &'static str {
    known_reason(code).unwrap_or(match code / 100 {
        1 => "Informational",
        2 => "Success",
        3 => "Redirection",
        4 => "Client Error",
        _ => "Server Error",
    })
}

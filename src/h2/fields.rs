//! Decoded field sections ([`Fields`]: one buffer plus an index, two allocations per
//! section) and their validation against RFC 9113 §8.2-§8.3 (pseudo-headers, lowercase
//! names, connection-specific fields, content-length).

/// Which section a field block is: it decides the pseudo-headers allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Request,
    Response,
    Trailers,
}

/// A decoded field section, in wire order (pseudo-headers first).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    buf: Vec<u8>,
    /// (start, name length, value length) into `buf`.
    idx: Vec<(u32, u32, u32)>,
}

impl std::fmt::Debug for Fields {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.iter().map(|(n, v)| {
                (
                    String::from_utf8_lossy(n).into_owned(),
                    String::from_utf8_lossy(v).into_owned(),
                )
            }))
            .finish()
    }
}

/// What validation learnt about a section.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Info {
    pub content_length: Option<u64>,
    pub status: Option<u16>,
    pub head_request: bool,
    /// An extended CONNECT (RFC 8441): `:protocol` with `:scheme`, `:path`, `:authority`.
    pub extended_connect: bool,
}

impl Fields {
    pub fn new() -> Self {
        Fields::default()
    }

    /// Room for `fields` fields of `bytes` bytes in all, so a typical section is decoded
    /// with one allocation per vector.
    pub fn with_capacity(bytes: usize, fields: usize) -> Self {
        Fields {
            buf: Vec::with_capacity(bytes),
            idx: Vec::with_capacity(fields),
        }
    }

    /// Makes room for `bytes` more bytes and `fields` more fields.
    pub fn reserve(&mut self, bytes: usize, fields: usize) {
        self.buf.reserve(bytes);
        self.idx.reserve(fields);
    }

    /// Bytes the section holds room for.
    pub fn capacity(&self) -> usize {
        self.buf.capacity() + self.idx.capacity() * std::mem::size_of::<(u32, u32, u32)>()
    }

    /// The fields `pairs`, in order (tests and tools build sections this way).
    pub fn of(pairs: &[(&str, &str)]) -> Self {
        let mut f = Fields::new();
        for (n, v) in pairs {
            f.push(n.as_bytes(), v.as_bytes());
        }
        f
    }

    pub fn push(&mut self, name: &[u8], value: &[u8]) {
        let start = self.buf.len() as u32;
        self.buf.extend_from_slice(name);
        self.buf.extend_from_slice(value);
        self.idx
            .push((start, name.len() as u32, value.len() as u32));
    }

    pub fn clear(&mut self) {
        self.buf.clear();
        self.idx.clear();
    }

    pub fn len(&self) -> usize {
        self.idx.len()
    }

    pub fn is_empty(&self) -> bool {
        self.idx.is_empty()
    }

    /// The `i`th field.
    pub fn at(&self, i: usize) -> (&[u8], &[u8]) {
        let (s, n, v) = self.idx[i];
        let (s, n, v) = (s as usize, n as usize, v as usize);
        (&self.buf[s..s + n], &self.buf[s + n..s + n + v])
    }

    /// All fields, pseudo-headers included.
    pub fn iter(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        (0..self.idx.len()).map(move |i| self.at(i))
    }

    /// Regular fields only.
    pub fn regular(&self) -> impl Iterator<Item = (&[u8], &[u8])> + '_ {
        self.iter().filter(|(n, _)| !n.starts_with(b":"))
    }

    /// The first value of `name` (lowercase).
    pub fn get(&self, name: &[u8]) -> Option<&[u8]> {
        self.iter().find(|(n, _)| *n == name).map(|(_, v)| v)
    }

    pub fn method(&self) -> Option<&[u8]> {
        self.get(b":method")
    }

    pub fn path(&self) -> Option<&[u8]> {
        self.get(b":path")
    }

    pub fn authority(&self) -> Option<&[u8]> {
        self.get(b":authority")
    }

    pub fn scheme(&self) -> Option<&[u8]> {
        self.get(b":scheme")
    }

    /// `:protocol` of an extended CONNECT (RFC 8441).
    pub fn protocol(&self) -> Option<&[u8]> {
        self.get(b":protocol")
    }

    /// `:status` as a number.
    pub fn status(&self) -> Option<u16> {
        parse_status(self.get(b":status")?)
    }

    /// Bytes an RFC-style header list of these fields weighs (names + values + 32 each).
    pub fn list_size(&self) -> usize {
        self.buf.len() + 32 * self.idx.len()
    }

    /// As `(name, value)` pairs for [`super::Connection::send_headers`].
    pub fn pairs(&self) -> Vec<(&[u8], &[u8])> {
        self.iter().collect()
    }
}

/// Connection-specific fields an HTTP/2 message must not carry (§8.2.2); `te` is allowed
/// only as `te: trailers`, checked separately.
pub fn is_connection_specific(name: &[u8]) -> bool {
    // Their lengths first: most names are none of them.
    matches!(name.len(), 7 | 10 | 16 | 17)
        && [
            &b"connection"[..],
            b"keep-alive",
            b"proxy-connection",
            b"transfer-encoding",
            b"upgrade",
        ]
        .iter()
        .any(|c| name.eq_ignore_ascii_case(c))
}

fn parse_status(v: &[u8]) -> Option<u16> {
    if v.len() != 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = v.iter().fold(0u16, |a, &d| a * 10 + (d - b'0') as u16);
    (100..=999).contains(&n).then_some(n)
}

fn parse_length(v: &[u8]) -> Option<u64> {
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |a, &d| a * 10 + (d - b'0') as u64))
}

/// §8.2.1: no uppercase, no controls, separators-free token characters.
fn valid_name(n: &[u8]) -> bool {
    !n.is_empty()
        && n.iter()
            .all(|&b| !matches!(b, 0x00..=0x20 | b'A'..=b'Z' | 0x7f..=0xff | b':'))
}

/// §8.2.1: no NUL, CR, LF; no leading or trailing whitespace.
fn valid_value(v: &[u8]) -> bool {
    let ws = |b: &u8| *b == b' ' || *b == b'\t';
    !v.iter().any(|&b| b == 0 || b == b'\r' || b == b'\n')
        && !v.first().is_some_and(ws)
        && !v.last().is_some_and(ws)
}

/// Checks a decoded section; `Err` means malformed (a stream error PROTOCOL_ERROR).
pub fn validate(fields: &Fields, kind: Kind) -> Result<Info, &'static str> {
    const METHOD: u8 = 1;
    const SCHEME: u8 = 2;
    const AUTHORITY: u8 = 4;
    const PATH: u8 = 8;
    const STATUS: u8 = 16;
    const PROTOCOL: u8 = 32;
    let mut seen = 0u8;
    let mut regular = false;
    let mut info = Info::default();
    let mut connect = false;
    for (name, value) in fields.iter() {
        if let Some(pseudo) = name.strip_prefix(b":") {
            if regular {
                return Err("pseudo-header after a regular field");
            }
            let bit = match (kind, pseudo) {
                (Kind::Request, b"method") => METHOD,
                (Kind::Request, b"scheme") => SCHEME,
                (Kind::Request, b"authority") => AUTHORITY,
                (Kind::Request, b"path") => PATH,
                (Kind::Request, b"protocol") => PROTOCOL,
                (Kind::Response, b"status") => STATUS,
                (Kind::Trailers, _) => return Err("pseudo-header in trailers"),
                _ => return Err("unknown or misplaced pseudo-header"),
            };
            if seen & bit != 0 {
                return Err("duplicate pseudo-header");
            }
            seen |= bit;
            if !valid_value(value) {
                return Err("invalid pseudo-header value");
            }
            match bit {
                METHOD => {
                    connect = value == b"CONNECT";
                    info.head_request = value == b"HEAD";
                    if value.is_empty() {
                        return Err("empty :method");
                    }
                }
                PATH | PROTOCOL if value.is_empty() => return Err("empty :path or :protocol"),
                STATUS => {
                    info.status = Some(parse_status(value).ok_or("bad :status")?);
                }
                _ => {}
            }
            continue;
        }
        regular = true;
        if !valid_name(name) {
            return Err("invalid field name (uppercase or forbidden character)");
        }
        if !valid_value(value) {
            return Err("invalid field value");
        }
        if is_connection_specific(name) {
            return Err("connection-specific field");
        }
        if name == b"te" && value != b"trailers" {
            return Err("te other than trailers");
        }
        if name == b"content-length" {
            let n = parse_length(value).ok_or("bad content-length")?;
            if info.content_length.is_some_and(|c| c != n) {
                return Err("conflicting content-length");
            }
            info.content_length = Some(n);
        }
    }
    let request = seen & (METHOD | SCHEME | PATH) == METHOD | SCHEME | PATH;
    let connect_ok = seen & (SCHEME | PATH) == 0 && seen & AUTHORITY != 0;
    info.extended_connect = seen & PROTOCOL != 0;
    match kind {
        Kind::Request if info.extended_connect && !connect => {
            return Err(":protocol on a request other than CONNECT")
        }
        Kind::Request if info.extended_connect && !(request && seen & AUTHORITY != 0) => {
            return Err("extended CONNECT needs :scheme, :path and :authority")
        }
        Kind::Request if connect && !info.extended_connect && !connect_ok => {
            return Err("CONNECT needs :authority and no :scheme or :path")
        }
        Kind::Request if !connect && !request => return Err("missing :method, :scheme or :path"),
        Kind::Response if seen & STATUS == 0 => return Err("missing :status"),
        _ => {}
    }
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(pairs: &[(&str, &str)]) -> Fields {
        let mut f = Fields::new();
        for (n, v) in pairs {
            f.push(n.as_bytes(), v.as_bytes());
        }
        f
    }

    const REQ: [(&str, &str); 4] = [
        (":method", "GET"),
        (":scheme", "http"),
        (":authority", "x"),
        (":path", "/"),
    ];

    fn req_with(extra: &[(&str, &str)]) -> Fields {
        let mut v = REQ.to_vec();
        v.extend_from_slice(extra);
        f(&v)
    }

    #[test]
    fn accessors() {
        let r = req_with(&[("content-length", "12"), ("a", "b")]);
        assert_eq!(r.method(), Some(&b"GET"[..]));
        assert_eq!(r.path(), Some(&b"/"[..]));
        assert_eq!(r.authority(), Some(&b"x"[..]));
        assert_eq!(r.scheme(), Some(&b"http"[..]));
        assert_eq!(r.get(b"a"), Some(&b"b"[..]));
        assert_eq!(r.regular().count(), 2);
        assert_eq!(
            validate(&r, Kind::Request).unwrap().content_length,
            Some(12)
        );
        let s = f(&[(":status", "204")]);
        assert_eq!(s.status(), Some(204));
        assert_eq!(validate(&s, Kind::Response).unwrap().status, Some(204));
    }

    #[test]
    fn good_sections() {
        assert!(validate(&req_with(&[("te", "trailers")]), Kind::Request).is_ok());
        let connect = f(&[(":method", "CONNECT"), (":authority", "h:1")]);
        assert!(validate(&connect, Kind::Request).is_ok());
        assert!(validate(&f(&[("grpc-status", "0")]), Kind::Trailers).is_ok());
        let head = f(&[(":method", "HEAD"), (":scheme", "http"), (":path", "/")]);
        assert!(validate(&head, Kind::Request).unwrap().head_request);
    }

    #[test]
    fn malformed_sections() {
        let cases: Vec<(Fields, Kind)> = vec![
            (f(&[(":method", "GET"), (":path", "/")]), Kind::Request),
            (f(&[(":method", "GET"), (":scheme", "http")]), Kind::Request),
            (req_with(&[(":path", "/again")]), Kind::Request),
            (req_with(&[(":status", "200")]), Kind::Request),
            (req_with(&[(":foo", "x")]), Kind::Request),
            (f(&[("a", "b"), (":method", "GET")]), Kind::Request),
            (req_with(&[("Upper", "x")]), Kind::Request),
            (req_with(&[("connection", "close")]), Kind::Request),
            (req_with(&[("keep-alive", "1")]), Kind::Request),
            (req_with(&[("proxy-connection", "x")]), Kind::Request),
            (req_with(&[("transfer-encoding", "chunked")]), Kind::Request),
            (req_with(&[("upgrade", "h2c")]), Kind::Request),
            (req_with(&[("te", "gzip")]), Kind::Request),
            (req_with(&[("content-length", "x")]), Kind::Request),
            (
                req_with(&[("content-length", "1"), ("content-length", "2")]),
                Kind::Request,
            ),
            (req_with(&[("a", " lead")]), Kind::Request),
            (req_with(&[("a", "cr\r")]), Kind::Request),
            (req_with(&[("a b", "x")]), Kind::Request),
            (req_with(&[("", "x")]), Kind::Request),
            (
                f(&[(":method", "GET"), (":scheme", "http"), (":path", "")]),
                Kind::Request,
            ),
            (
                f(&[(":method", "CONNECT"), (":authority", "h"), (":path", "/")]),
                Kind::Request,
            ),
            (f(&[("a", "b")]), Kind::Response),
            (f(&[(":status", "20")]), Kind::Response),
            (f(&[(":status", "200"), (":method", "GET")]), Kind::Response),
            (
                f(&[(":status", "200"), ("grpc-status", "0")]),
                Kind::Trailers,
            ),
        ];
        for (fields, kind) in cases {
            assert!(validate(&fields, kind).is_err(), "{fields:?} as {kind:?}");
        }
    }
}

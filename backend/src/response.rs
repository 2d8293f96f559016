//! Response bytes: status lines, headers, the `/bytes` pattern and byte sums; no I/O.

use std::io::Write;

/// Bytes of the repeating pattern `b'a' + (i % 26)` available in one slice.
pub const PATTERN_LEN: usize = 26 * 2522;
/// Largest run copied from [`PATTERN`] at once; any start offset in `0..26` fits.
pub const PATTERN_RUN: usize = PATTERN_LEN - 26;
/// Chunk size for `?chunked=1` responses.
pub const CHUNK: usize = 16 * 1024;
/// Sum of one full period of the pattern (`a..=z`).
const PERIOD_SUM: u64 = (b'a' as u64 + b'z' as u64) * 26 / 2;

/// `b'a' + (i % 26)` for every index, built at compile time.
pub static PATTERN: [u8; PATTERN_LEN] = {
    let mut p = [0u8; PATTERN_LEN];
    let mut i = 0;
    while i < PATTERN_LEN {
        p[i] = b'a' + (i % 26) as u8;
        i += 1;
    }
    p
};

/// The pattern bytes `start..start + len` (`len <= PATTERN_RUN`).
pub fn pattern(start: u64, len: usize) -> &'static [u8] {
    let off = (start % 26) as usize;
    &PATTERN[off..off + len]
}

/// Wrapping sum of the first `n` pattern bytes, in O(1).
pub fn pattern_sum(n: u64) -> u64 {
    let full = (n / 26).wrapping_mul(PERIOD_SUM);
    let rest = n % 26;
    // a + (a+1) + ... over `rest` bytes
    let partial = rest * b'a' as u64 + rest * rest.saturating_sub(1) / 2;
    full.wrapping_add(partial)
}

/// Wrapping sum of `data` as u64, vectorisable (u32 lanes cannot overflow within 16 MiB).
pub fn byte_sum(data: &[u8]) -> u64 {
    data.chunks(1 << 24).fold(0u64, |acc, c| {
        acc.wrapping_add(c.iter().map(|&b| b as u32).sum::<u32>() as u64)
    })
}

pub use corelb::http::reason_phrase as reason;

/// Statuses that never carry a body (RFC 9110 §6.4.1).
pub fn status_has_body(code: u16) -> bool {
    !matches!(code, 100..=199 | 204 | 304)
}

/// How the connection header of a response reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnHeader {
    /// HTTP/1.1 keep-alive: no header needed.
    None,
    /// HTTP/1.0 keep-alive.
    KeepAlive,
    /// The connection closes after this response.
    Close,
}

/// Framing header of a response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    Length(u64),
    Chunked,
    /// 1xx, 204 and 304: neither.
    NoBody,
}

/// Writes a status line, `X-Backend`, framing and the connection header; the caller adds
/// any other headers and then calls [`end_head`]. Writing into a `Vec` with spare
/// capacity does not allocate.
pub fn start_head(out: &mut Vec<u8>, code: u16, id: &str, framing: Framing, conn: ConnHeader) {
    let _ = write!(
        out,
        "HTTP/1.1 {code} {}\r\nX-Backend: {id}\r\n",
        reason(code)
    );
    match framing {
        Framing::Length(n) => {
            let _ = write!(out, "Content-Length: {n}\r\n");
        }
        Framing::Chunked => out.extend_from_slice(b"Transfer-Encoding: chunked\r\n"),
        Framing::NoBody => {}
    }
    match conn {
        ConnHeader::None => {}
        ConnHeader::KeepAlive => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        ConnHeader::Close => out.extend_from_slice(b"Connection: close\r\n"),
    }
}

pub fn end_head(out: &mut Vec<u8>) {
    out.extend_from_slice(b"\r\n");
}

/// A short body with a fixed-size buffer, so it is formatted without allocating.
pub struct SmallBody {
    buf: [u8; 256],
    len: usize,
}

impl SmallBody {
    pub fn new(args: std::fmt::Arguments<'_>) -> Self {
        let mut buf = [0u8; 256];
        let mut cur = std::io::Cursor::new(&mut buf[..]);
        let _ = cur.write_fmt(args); // truncated if over 256 bytes; ids are limited to 64
        let len = cur.position() as usize;
        SmallBody { buf, len }
    }

    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_and_its_sum() {
        let naive = |n: u64| (0..n).map(|i| (b'a' + (i % 26) as u8) as u64).sum::<u64>();
        for n in [0, 1, 2, 25, 26, 27, 51, 52, 1000, 65_537] {
            assert_eq!(pattern_sum(n), naive(n), "{n}");
        }
        assert_eq!(pattern(0, 3), b"abc");
        assert_eq!(pattern(27, 3), b"bcd");
        assert_eq!(pattern(25, PATTERN_RUN).len(), PATTERN_RUN);
        assert_eq!(PATTERN_RUN % 26, 0);
    }

    #[test]
    fn byte_sum_matches_naive() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let naive = data.iter().map(|&b| b as u64).sum::<u64>();
        assert_eq!(byte_sum(&data), naive);
        assert_eq!(byte_sum(&[]), 0);
        assert_eq!(byte_sum(&PATTERN[..52]), pattern_sum(52));
    }

    #[test]
    fn head_layout() {
        let mut out = Vec::new();
        start_head(&mut out, 200, "A", Framing::Length(3), ConnHeader::Close);
        out.extend_from_slice(b"Content-Type: text/plain\r\n");
        end_head(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 200 OK\r\nX-Backend: A\r\nContent-Length: 3\r\nConnection: close\r\n\
              Content-Type: text/plain\r\n\r\n"
        );
        out.clear();
        start_head(&mut out, 204, "B", Framing::NoBody, ConnHeader::KeepAlive);
        end_head(&mut out);
        assert_eq!(
            out,
            b"HTTP/1.1 204 No Content\r\nX-Backend: B\r\nConnection: keep-alive\r\n\r\n"
        );
    }

    #[test]
    fn bodyless_statuses() {
        assert!(!status_has_body(100));
        assert!(!status_has_body(204));
        assert!(!status_has_body(304));
        assert!(status_has_body(200));
        assert!(status_has_body(404));
        assert_eq!(reason(299), "Success");
    }

    #[test]
    fn small_body_formats_without_heap() {
        let b = SmallBody::new(format_args!(
            "Response from server {} after {} ms\n",
            "A", 10
        ));
        assert_eq!(b.bytes(), b"Response from server A after 10 ms\n");
    }
}

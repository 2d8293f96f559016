//! Message framing as pure byte logic: request header semantics, body consumption, and the
//! streamed `/bytes` body. No sockets; the connection state machine drives these.

use std::io::Write;

use corelb::http::chunked::{ChunkError, ChunkedDecoder};

use crate::response::{byte_sum, pattern, pattern_sum, CHUNK, PATTERN_RUN};

/// What the headers of a request say about framing and the connection.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HeadInfo {
    pub content_length: Option<u64>,
    pub chunked: bool,
    /// `Connection: close` was present.
    pub close: bool,
    /// `Connection: keep-alive` was present.
    pub keep_alive: bool,
    pub expect_continue: bool,
}

/// Reads the headers that matter; `Err` is the status to answer with before closing.
pub fn read_headers(headers: &[httparse::Header<'_>]) -> Result<HeadInfo, u16> {
    let mut info = HeadInfo::default();
    let mut te_seen = false;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            let v = parse_length(h.value).ok_or(400u16)?;
            if info.content_length.is_some_and(|prev| prev != v) {
                return Err(400);
            }
            info.content_length = Some(v);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            if te_seen {
                return Err(400);
            }
            te_seen = true;
            if !trim(h.value).eq_ignore_ascii_case(b"chunked") {
                return Err(501); // gzip, compress, or chunked not last
            }
            info.chunked = true;
        } else if name.eq_ignore_ascii_case("connection") {
            for token in h.value.split(|&b| b == b',') {
                let t = trim(token);
                info.close |= t.eq_ignore_ascii_case(b"close");
                info.keep_alive |= t.eq_ignore_ascii_case(b"keep-alive");
            }
        } else if name.eq_ignore_ascii_case("expect") {
            info.expect_continue |= trim(h.value).eq_ignore_ascii_case(b"100-continue");
        }
    }
    if info.chunked && info.content_length.is_some() {
        return Err(400); // RFC 9112 §6.3: a smuggling vector, refused outright
    }
    Ok(info)
}

fn trim(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !matches!(b, b' ' | b'\t'));
    let end = v.iter().rposition(|b| !matches!(b, b' ' | b'\t'));
    match (start, end) {
        (Some(s), Some(e)) => &v[s..=e],
        _ => &[],
    }
}

fn parse_length(v: &[u8]) -> Option<u64> {
    let v = trim(v);
    if v.is_empty() || v.len() > 19 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u64, |n, &d| n * 10 + (d - b'0') as u64))
}

/// How the rest of a request body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyFraming {
    /// Bytes still to come.
    Length(u64),
    Chunked(ChunkedDecoder),
}

/// What happens to request body data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyUse {
    Discard,
    /// Copied to the response, re-framed as chunks when `chunked`.
    Echo {
        chunked: bool,
    },
    /// Counted and summed.
    Sink {
        bytes: u64,
        sum: u64,
    },
    /// Counted only.
    Count {
        bytes: u64,
    },
}

/// Consumes body bytes from the front of `input`. Echoed data goes to `out` when `emit`.
/// Returns the bytes consumed and whether the body is complete; bytes after the body (a
/// pipelined request) are left alone.
pub fn body_step(
    framing: &mut BodyFraming,
    usage: &mut BodyUse,
    input: &[u8],
    out: &mut Vec<u8>,
    emit: bool,
) -> Result<(usize, bool), ChunkError> {
    match framing {
        BodyFraming::Length(remaining) => {
            let take = (*remaining).min(input.len() as u64) as usize;
            use_data(usage, &input[..take], out, emit);
            *remaining -= take as u64;
            Ok((take, *remaining == 0))
        }
        BodyFraming::Chunked(dec) => {
            let mut at = 0;
            while at < input.len() && !dec.is_done() {
                let p = dec.decode(&input[at..])?;
                use_data(usage, &input[at..][p.data], out, emit);
                at += p.consumed;
            }
            Ok((at, dec.is_done()))
        }
    }
}

fn use_data(usage: &mut BodyUse, data: &[u8], out: &mut Vec<u8>, emit: bool) {
    if data.is_empty() {
        return;
    }
    match usage {
        BodyUse::Discard => {}
        BodyUse::Sink { bytes, sum } => {
            *bytes += data.len() as u64;
            *sum = sum.wrapping_add(byte_sum(data));
        }
        BodyUse::Count { bytes } => *bytes += data.len() as u64,
        BodyUse::Echo { chunked: false } if emit => out.extend_from_slice(data),
        BodyUse::Echo { chunked: true } if emit => {
            let _ = write!(out, "{:x}\r\n", data.len());
            out.extend_from_slice(data);
            out.extend_from_slice(b"\r\n");
        }
        BodyUse::Echo { .. } => {}
    }
}

/// The part of a response body produced after the head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Nothing more to send.
    Done,
    /// Pattern bytes `next..end` of a `/bytes` (or `--size`) body.
    Pattern { next: u64, end: u64, chunked: bool },
}

/// Appends the next stretch of `src` (up to about 64 KiB) to `out` and advances it. A chunked
/// body ends with the last chunk and an `X-Checksum` trailer over all `end` bytes.
pub fn refill(out: &mut Vec<u8>, src: &mut Source) {
    let Source::Pattern {
        mut next,
        end,
        chunked,
    } = *src
    else {
        return;
    };
    if next == end {
        if chunked {
            let _ = write!(out, "0\r\nX-Checksum: {}\r\n\r\n", pattern_sum(end));
        }
        *src = Source::Done;
        return;
    }
    if chunked {
        while next < end && out.len() < PATTERN_RUN {
            let n = (end - next).min(CHUNK as u64) as usize;
            let _ = write!(out, "{n:x}\r\n");
            out.extend_from_slice(pattern(next, n));
            out.extend_from_slice(b"\r\n");
            next += n as u64;
        }
    } else {
        let n = (end - next).min(PATTERN_RUN as u64) as usize;
        out.extend_from_slice(pattern(next, n));
        next += n as u64;
    }
    *src = Source::Pattern { next, end, chunked };
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(raw: &[(&'static str, &'static str)]) -> Result<HeadInfo, u16> {
        let hs: Vec<httparse::Header<'static>> = raw
            .iter()
            .map(|(n, v)| httparse::Header {
                name: n,
                value: v.as_bytes(),
            })
            .collect();
        read_headers(&hs)
    }

    #[test]
    fn header_semantics() {
        let i = headers(&[
            ("Content-Length", " 12 "),
            ("connection", "Keep-Alive, Upgrade"),
            ("Expect", "100-Continue"),
        ])
        .unwrap();
        assert_eq!(i.content_length, Some(12));
        assert!(i.keep_alive && !i.close && i.expect_continue && !i.chunked);
        let i = headers(&[("Transfer-Encoding", "chunked"), ("Connection", "close")]).unwrap();
        assert!(i.chunked && i.close);
        assert_eq!(
            headers(&[("Content-Length", "5"), ("Content-Length", "5")])
                .unwrap()
                .content_length,
            Some(5)
        );
    }

    #[test]
    fn header_errors() {
        assert_eq!(
            headers(&[("Content-Length", "5"), ("Content-Length", "6")]),
            Err(400)
        );
        assert_eq!(headers(&[("Content-Length", "-1")]), Err(400));
        assert_eq!(headers(&[("Content-Length", "1 2")]), Err(400));
        assert_eq!(headers(&[("Content-Length", "")]), Err(400));
        assert_eq!(
            headers(&[("Transfer-Encoding", "chunked"), ("Content-Length", "3")]),
            Err(400)
        );
        assert_eq!(headers(&[("Transfer-Encoding", "gzip, chunked")]), Err(501));
        assert_eq!(
            headers(&[
                ("Transfer-Encoding", "chunked"),
                ("Transfer-Encoding", "chunked")
            ]),
            Err(400)
        );
    }

    #[test]
    fn length_body_stops_at_its_end() {
        let mut f = BodyFraming::Length(5);
        let mut u = BodyUse::Echo { chunked: false };
        let mut out = Vec::new();
        let r = body_step(&mut f, &mut u, b"helloGET /", &mut out, true).unwrap();
        assert_eq!(r, (5, true));
        assert_eq!(out, b"hello");
    }

    #[test]
    fn chunked_echo_reframes_each_piece() {
        let mut f = BodyFraming::Chunked(ChunkedDecoder::new());
        let mut u = BodyUse::Echo { chunked: true };
        let mut out = Vec::new();
        let input = b"3\r\nabc\r\n2;x=y\r\nde\r\n0\r\nT: v\r\n\r\nNEXT";
        let (n, done) = body_step(&mut f, &mut u, &input[..9], &mut out, true).unwrap();
        assert!(!done);
        let (m, done) = body_step(&mut f, &mut u, &input[n..], &mut out, true).unwrap();
        assert!(done);
        assert_eq!(&input[n + m..], b"NEXT");
        assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n");
    }

    #[test]
    fn sink_counts_and_sums() {
        let mut f = BodyFraming::Chunked(ChunkedDecoder::new());
        let mut u = BodyUse::Sink { bytes: 0, sum: 0 };
        let mut out = Vec::new();
        let r = body_step(
            &mut f,
            &mut u,
            b"2\r\n\x01\x02\r\n1\r\n\xff\r\n0\r\n\r\n",
            &mut out,
            true,
        );
        assert_eq!(r, Ok((18, true)));
        assert_eq!(u, BodyUse::Sink { bytes: 3, sum: 258 });
        assert!(out.is_empty());
    }

    #[test]
    fn count_only_counts() {
        let mut f = BodyFraming::Length(5);
        let mut u = BodyUse::Count { bytes: 0 };
        let mut out = Vec::new();
        let r = body_step(&mut f, &mut u, b"abcdeNEXT", &mut out, true);
        assert_eq!(r, Ok((5, true)));
        assert_eq!(u, BodyUse::Count { bytes: 5 });
        assert!(out.is_empty());
    }

    #[test]
    fn bad_chunked_body_is_an_error() {
        let mut f = BodyFraming::Chunked(ChunkedDecoder::new());
        let mut u = BodyUse::Discard;
        let r = body_step(&mut f, &mut u, b"zz\r\n", &mut Vec::new(), true);
        assert!(r.is_err());
    }

    fn drain(mut src: Source) -> Vec<u8> {
        let mut all = Vec::new();
        while src != Source::Done {
            let mut out = Vec::new();
            refill(&mut out, &mut src);
            assert!(out.len() <= PATTERN_RUN + 64);
            all.extend_from_slice(&out);
        }
        all
    }

    #[test]
    fn pattern_body_plain() {
        let n = 200_000u64;
        let all = drain(Source::Pattern {
            next: 0,
            end: n,
            chunked: false,
        });
        assert_eq!(all.len() as u64, n);
        assert!(all
            .iter()
            .enumerate()
            .all(|(i, &b)| b == b'a' + (i % 26) as u8));
    }

    #[test]
    fn pattern_body_chunked_with_checksum() {
        let n = 40_000u64;
        let all = drain(Source::Pattern {
            next: 0,
            end: n,
            chunked: true,
        });
        // Decode it back with the shared decoder.
        let mut f = BodyFraming::Chunked(ChunkedDecoder::new());
        let mut u = BodyUse::Sink { bytes: 0, sum: 0 };
        let (used, done) = body_step(&mut f, &mut u, &all, &mut Vec::new(), true).unwrap();
        assert!(done && used == all.len());
        assert_eq!(
            u,
            BodyUse::Sink {
                bytes: n,
                sum: pattern_sum(n)
            }
        );
        let tail = format!("0\r\nX-Checksum: {}\r\n\r\n", pattern_sum(n));
        assert!(all.ends_with(tail.as_bytes()));
        assert!(all.starts_with(b"4000\r\nabc"));
        assert_eq!(
            drain(Source::Pattern {
                next: 0,
                end: 0,
                chunked: true
            }),
            b"0\r\nX-Checksum: 0\r\n\r\n"
        );
    }
}

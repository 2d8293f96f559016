//! Strict incremental decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! It validates framing byte by byte and reports where the chunk data lies, so a caller can
//! either forward the validated bytes unchanged (pass-through) or keep only the data
//! (de-chunking for HTTP/1.0 peers). It rejects what `httparse::parse_chunk_size` lets
//! through: empty or non-hex sizes, more than 16 hex digits, bare LF or NUL in an extension,
//! over-long extensions, and chunk data that is not followed by CRLF. It owns no buffer.

use std::ops::Range;

/// Longest chunk extension accepted, in bytes.
pub const MAX_EXTENSION: u32 = 4096;
/// Most hex digits in a chunk size (16 digits fill a `u64`).
pub const MAX_SIZE_DIGITS: u8 = 16;
/// Largest trailer section accepted, in bytes.
pub const MAX_TRAILERS: u32 = 64 * 1024;

/// Why a chunked body was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkError {
    /// The size line had no hex digit.
    EmptySize,
    /// A byte that is not a hex digit where the size or its end was expected.
    BadSize,
    /// More than [`MAX_SIZE_DIGITS`] hex digits.
    SizeTooLong,
    /// A bare LF, NUL or other control byte in a chunk extension.
    BadExtension,
    /// An extension longer than [`MAX_EXTENSION`].
    ExtensionTooLong,
    /// A line that ended with something other than CRLF.
    BadLineEnd,
    /// Chunk data not followed by CRLF.
    MissingDataCrlf,
    /// A malformed trailer field line.
    BadTrailer,
    /// A trailer section over [`MAX_TRAILERS`].
    TrailersTooLong,
}

impl std::fmt::Display for ChunkError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let s = match self {
            ChunkError::EmptySize => "empty chunk size",
            ChunkError::BadSize => "invalid chunk size",
            ChunkError::SizeTooLong => "chunk size has more than 16 hex digits",
            ChunkError::BadExtension => "invalid byte in chunk extension",
            ChunkError::ExtensionTooLong => "chunk extension longer than 4 KiB",
            ChunkError::BadLineEnd => "chunk line not ended by CRLF",
            ChunkError::MissingDataCrlf => "chunk data not followed by CRLF",
            ChunkError::BadTrailer => "invalid trailer field",
            ChunkError::TrailersTooLong => "trailer section too long",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ChunkError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        digits: u8,
    },
    /// After the digits: optional whitespace and extensions up to CR.
    Ext {
        len: u32,
    },
    /// Saw the CR ending a size line.
    SizeLf,
    /// Inside chunk data; the bytes left are in `ChunkedDecoder::size`.
    Data,
    DataCr,
    DataLf,
    /// At the start of a trailer line (or the final empty line).
    TrailerStart {
        total: u32,
    },
    /// Inside a trailer field line.
    Trailer {
        total: u32,
        colon: bool,
    },
    TrailerLf {
        total: u32,
    },
    EndLf,
    Done,
}

/// Result of one [`ChunkedDecoder::decode`] call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Progress {
    /// Bytes of the input that were validated and consumed.
    pub consumed: usize,
    /// Chunk data within the consumed bytes (may be empty).
    pub data: Range<usize>,
}

/// Incremental, allocation-free validator of a chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkedDecoder {
    state: State,
    /// Size of the chunk whose size line is being read, then the data bytes left in it.
    size: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self::new()
    }
}

#[inline]
fn hex_val(b: u8) -> Option<u64> {
    match b {
        b'0'..=b'9' => Some((b - b'0') as u64),
        b'a'..=b'f' => Some((b - b'a' + 10) as u64),
        b'A'..=b'F' => Some((b - b'A' + 10) as u64),
        _ => None,
    }
}

#[inline]
pub(crate) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

impl ChunkedDecoder {
    pub const fn new() -> Self {
        ChunkedDecoder {
            state: State::Size { digits: 0 },
            size: 0,
        }
    }

    /// True once the last chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Validates framing from the start of `input`. Stops after the first stretch of chunk
    /// data (returned as `data`), at the end of the body, or at the end of the input, so
    /// call it again with the rest until `consumed == input.len()` or [`is_done`].
    ///
    /// [`is_done`]: ChunkedDecoder::is_done
    pub fn decode(&mut self, input: &[u8]) -> Result<Progress, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            if self.state == State::Data {
                let take = self.size.min((input.len() - i) as u64) as usize;
                self.size -= take as u64;
                if self.size == 0 {
                    self.state = State::DataCr;
                }
                return Ok(Progress {
                    consumed: i + take,
                    data: i..i + take,
                });
            }
            self.step(input[i])?;
            i += 1;
            if self.state == State::Done {
                break;
            }
        }
        Ok(Progress {
            consumed: i,
            data: i..i,
        })
    }

    /// Validates everything in `input` up to the end of the body; returns the bytes consumed.
    /// Used to pass a body through unchanged.
    pub fn validate(&mut self, input: &[u8]) -> Result<usize, ChunkError> {
        let mut at = 0;
        while at < input.len() && !self.is_done() {
            at += self.decode(&input[at..])?.consumed;
        }
        Ok(at)
    }

    /// Decodes in place: moves the chunk data of `buf` to its front. Returns
    /// `(consumed, data_len)`: `buf[..data_len]` is the data of the first `consumed` bytes.
    /// Used to de-chunk a body for an HTTP/1.0 client.
    pub fn decode_in_place(&mut self, buf: &mut [u8]) -> Result<(usize, usize), ChunkError> {
        let (mut at, mut out) = (0, 0);
        while at < buf.len() && !self.is_done() {
            let p = self.decode(&buf[at..])?;
            let (s, e) = (at + p.data.start, at + p.data.end);
            buf.copy_within(s..e, out);
            out += e - s;
            at += p.consumed;
        }
        Ok((at, out))
    }

    fn step(&mut self, b: u8) -> Result<(), ChunkError> {
        self.state = match self.state {
            State::Size { digits } => match hex_val(b) {
                Some(v) => {
                    if digits >= MAX_SIZE_DIGITS {
                        return Err(ChunkError::SizeTooLong);
                    }
                    self.size = (self.size << 4) | v;
                    State::Size { digits: digits + 1 }
                }
                None if digits == 0 => {
                    return Err(if matches!(b, b'\r' | b'\n' | b';' | b' ' | b'\t') {
                        ChunkError::EmptySize
                    } else {
                        ChunkError::BadSize
                    })
                }
                None => match b {
                    b'\r' => State::SizeLf,
                    b';' | b' ' | b'\t' => State::Ext { len: 1 },
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                },
            },
            State::Ext { len } => match b {
                b'\r' => State::SizeLf,
                b'\t' => Self::ext(len)?,
                0x00..=0x1f | 0x7f => return Err(ChunkError::BadExtension),
                _ => Self::ext(len)?,
            },
            State::SizeLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                if self.size == 0 {
                    State::TrailerStart { total: 0 }
                } else {
                    State::Data
                }
            }
            State::Data => unreachable!("data is consumed in bulk by decode"),
            State::DataCr => {
                if b != b'\r' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                State::DataLf
            }
            State::DataLf => {
                if b != b'\n' {
                    return Err(ChunkError::MissingDataCrlf);
                }
                State::Size { digits: 0 }
            }
            State::TrailerStart { total } => match b {
                b'\r' => State::EndLf,
                b if is_tchar(b) => State::Trailer {
                    total: total + 1,
                    colon: false,
                },
                _ => return Err(ChunkError::BadTrailer),
            },
            State::Trailer { total, colon } => {
                if total >= MAX_TRAILERS {
                    return Err(ChunkError::TrailersTooLong);
                }
                let total = total + 1;
                match b {
                    b'\r' if colon => State::TrailerLf { total },
                    b':' if !colon => State::Trailer { total, colon: true },
                    b if !colon && is_tchar(b) => State::Trailer { total, colon },
                    b'\t' | 0x20..=0x7e | 0x80..=0xff if colon => State::Trailer { total, colon },
                    _ => return Err(ChunkError::BadTrailer),
                }
            }
            State::TrailerLf { total } => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                State::TrailerStart { total }
            }
            State::EndLf => {
                if b != b'\n' {
                    return Err(ChunkError::BadLineEnd);
                }
                State::Done
            }
            State::Done => State::Done,
        };
        Ok(())
    }

    #[inline]
    fn ext(len: u32) -> Result<State, ChunkError> {
        if len >= MAX_EXTENSION {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(State::Ext { len: len + 1 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(input: &[u8]) -> Result<(bool, Vec<u8>), ChunkError> {
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        let mut at = 0;
        while at < input.len() && !d.is_done() {
            let p = d.decode(&input[at..])?;
            data.extend_from_slice(&input[at..][p.data]);
            at += p.consumed;
        }
        Ok((d.is_done(), data))
    }

    #[test]
    fn decodes_chunks_and_trailers() {
        let body = b"5\r\nhello\r\n6;name=val\r\n world\r\n0\r\nX-Sum: 1\r\n\r\n";
        assert_eq!(check(body).unwrap(), (true, b"hello world".to_vec()));
    }

    #[test]
    fn decodes_byte_by_byte() {
        let body = b"a\r\n0123456789\r\n0;x\r\n\r\n";
        let mut d = ChunkedDecoder::new();
        let mut data = Vec::new();
        for i in 0..body.len() {
            let p = d.decode(&body[i..i + 1]).unwrap();
            assert_eq!(p.consumed, 1);
            data.extend_from_slice(&body[i..i + 1][p.data]);
        }
        assert!(d.is_done());
        assert_eq!(data, b"0123456789");
    }

    #[test]
    fn stops_at_end_of_body() {
        let input = b"3\r\nabc\r\n0\r\n\r\nGET / HTTP/1.1\r\n";
        let mut d = ChunkedDecoder::new();
        let n = d.validate(input).unwrap();
        assert!(d.is_done());
        assert_eq!(&input[n..], b"GET / HTTP/1.1\r\n");
    }

    #[test]
    fn in_place_dechunk() {
        let mut buf = b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n".to_vec();
        let mut d = ChunkedDecoder::new();
        let (consumed, len) = d.decode_in_place(&mut buf).unwrap();
        assert_eq!(consumed, buf.len());
        assert_eq!(&buf[..len], b"abcde");
        assert!(d.is_done());
    }

    #[test]
    fn upper_case_hex_and_leading_zeros() {
        assert_eq!(
            check(b"000A\r\n0123456789\r\n0\r\n\r\n").unwrap().1,
            b"0123456789"
        );
    }

    #[test]
    fn rejects_bad_sizes() {
        assert_eq!(check(b"\r\nabc"), Err(ChunkError::EmptySize));
        assert_eq!(check(b";ext\r\n"), Err(ChunkError::EmptySize));
        assert_eq!(check(b"xyz\r\n"), Err(ChunkError::BadSize));
        assert_eq!(check(b"5x\r\n"), Err(ChunkError::BadSize));
        assert_eq!(check(b"+5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(check(b"0x5\r\n"), Err(ChunkError::BadSize));
        assert_eq!(
            check(b"00000000000000001\r\n"),
            Err(ChunkError::SizeTooLong)
        );
        assert!(check(b"0000000000000001\r\nx\r\n0\r\n\r\n").is_ok());
    }

    #[test]
    fn rejects_bad_extensions() {
        assert_eq!(check(b"1;a\nb\r\n"), Err(ChunkError::BadExtension));
        assert_eq!(check(b"1;a\0b\r\n"), Err(ChunkError::BadExtension));
        let mut long = b"1;".to_vec();
        long.extend(std::iter::repeat_n(b'a', 4096));
        long.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert_eq!(check(&long), Err(ChunkError::ExtensionTooLong));
        let mut ok = b"1;".to_vec();
        ok.extend(std::iter::repeat_n(b'a', 4000));
        ok.extend_from_slice(b"\r\nx\r\n0\r\n\r\n");
        assert!(check(&ok).is_ok());
    }

    #[test]
    fn rejects_bare_lf_size_line() {
        assert_eq!(check(b"5\nhello"), Err(ChunkError::BadLineEnd));
        assert_eq!(check(b"5\rhello"), Err(ChunkError::BadLineEnd));
    }

    #[test]
    fn rejects_data_without_crlf() {
        assert_eq!(check(b"3\r\nabcd\r\n"), Err(ChunkError::MissingDataCrlf));
        assert_eq!(check(b"3\r\nabc\rX"), Err(ChunkError::MissingDataCrlf));
        assert_eq!(
            check(b"3\r\nabc\n0\r\n\r\n"),
            Err(ChunkError::MissingDataCrlf)
        );
    }

    #[test]
    fn rejects_bad_trailers() {
        assert_eq!(
            check(b"0\r\nBad Name: x\r\n\r\n"),
            Err(ChunkError::BadTrailer)
        );
        assert_eq!(check(b"0\r\nNoColon\r\n\r\n"), Err(ChunkError::BadTrailer));
        assert_eq!(check(b"0\r\nA: b\0\r\n\r\n"), Err(ChunkError::BadTrailer));
        assert_eq!(check(b"0\r\n\r\r"), Err(ChunkError::BadLineEnd));
    }

    #[test]
    fn incomplete_is_not_done() {
        assert_eq!(check(b"5\r\nhel").unwrap(), (false, b"hel".to_vec()));
        assert!(!check(b"0\r\n").unwrap().0);
    }
}

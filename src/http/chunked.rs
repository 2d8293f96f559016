//! Strict incremental decoder for `Transfer-Encoding: chunked` bodies (RFC 9112 §7.1).
//!
//! It validates framing byte by byte and reports where the chunk data lies, so a caller can
//! either forward the validated bytes unchanged (pass-through) or keep only the data
//! (de-chunking for HTTP/1.0 peers). Because a passed-through body is read again by the
//! next hop, anything two parsers could read differently is refused: empty or non-hex
//! sizes, more than 16 hex digits, chunk extensions outside the RFC grammar
//! (`*( BWS ";" BWS token [ BWS "=" BWS ( token / quoted-string ) ] )`, so no bare LF, NUL
//! or stray byte), over-long extensions, chunk data not followed by CRLF, bare LF anywhere,
//! malformed trailer fields, trailer fields that would change framing or routing
//! (RFC 9110 §6.5.1) and over-long trailer sections. It owns no buffer and never allocates.
//! Chunk data is opaque: a caller that moves it without looking (splice) tells the decoder
//! with [`ChunkedDecoder::skip_data`], and everything around the data is still validated.

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
    /// A trailer field that only means something in a header section (framing, routing,
    /// connection management): a recipient that merged it could be steered by it.
    ForbiddenTrailer,
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
            ChunkError::ForbiddenTrailer => "framing or routing field in trailers",
        };
        f.write_str(s)
    }
}

impl std::error::Error for ChunkError {}

/// Where a chunk-size line's extension is (RFC 9112 §7.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ext {
    /// After the size, a name or a value: `;`, CR, or whitespace then `;`. `ws`: whitespace
    /// seen (CR may not follow it); `name`: after a name, so `=` may follow.
    End {
        ws: bool,
        name: bool,
    },
    /// After `;`: optional whitespace, then a token.
    NameStart,
    Name,
    /// After `=`: optional whitespace, then a token or a quoted-string.
    ValueStart,
    Value,
    Quoted,
    QuotedEscape,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading the hex digits of a chunk size.
    Size {
        digits: u8,
    },
    /// After the digits: extensions up to CR; `len` counts their bytes.
    Ext {
        len: u32,
        at: Ext,
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
    /// Inside a trailer field name; its first bytes are in `ChunkedDecoder::name`.
    TrailerName {
        total: u32,
        len: u8,
    },
    /// Inside a trailer field value.
    TrailerValue {
        total: u32,
    },
    TrailerLf {
        total: u32,
    },
    EndLf,
    Done,
}

/// Longest name in [`FORBIDDEN_TRAILERS`].
const NAME_BUF: usize = 17;

/// Fields refused in a trailer section (lower case): framing, routing and hop-by-hop.
const FORBIDDEN_TRAILERS: [&[u8]; 9] = [
    b"content-length",
    b"transfer-encoding",
    b"trailer",
    b"host",
    b"connection",
    b"keep-alive",
    b"proxy-connection",
    b"te",
    b"upgrade",
];

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
    /// The first bytes of the trailer field name being read, lower-cased.
    name: [u8; NAME_BUF],
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
            name: [0; NAME_BUF],
        }
    }

    /// True once the last chunk and the trailer section have been consumed.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Inside chunk data: [`ChunkedDecoder::decode`] returns the data as it comes.
    pub fn in_data(&self) -> bool {
        self.state == State::Data
    }

    /// After the last chunk, inside the trailer section (before its final CRLF): the next
    /// byte belongs to a trailer field line, or is the CR of the empty line ending them.
    pub fn in_trailers(&self) -> bool {
        matches!(
            self.state,
            State::TrailerStart { .. }
                | State::TrailerName { .. }
                | State::TrailerValue { .. }
                | State::TrailerLf { .. }
        )
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

    /// Chunk data bytes the current chunk still has to come, when the decoder stands inside
    /// chunk data (after its size line); 0 anywhere else. A caller may move that many bytes
    /// without showing them to the decoder (zero copy, with splice) and report them with
    /// [`skip_data`](ChunkedDecoder::skip_data): chunk data is opaque, so nothing in it needs
    /// validating. The CRLF after the data is validated by [`decode`](ChunkedDecoder::decode)
    /// again.
    #[inline]
    pub fn data_left(&self) -> u64 {
        if self.state == State::Data {
            self.size
        } else {
            0
        }
    }

    /// Records `n` bytes of chunk data moved past the decoder (at most
    /// [`data_left`](ChunkedDecoder::data_left)); after the chunk's last byte it expects the
    /// CRLF that ends the data.
    pub fn skip_data(&mut self, n: u64) {
        debug_assert!(n <= self.data_left(), "skipped past the chunk's data");
        let n = n.min(self.data_left());
        self.size -= n;
        if self.state == State::Data && self.size == 0 {
            self.state = State::DataCr;
        }
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
                    b';' | b' ' | b'\t' => Self::ext(
                        0,
                        Ext::End {
                            ws: false,
                            name: false,
                        },
                        b,
                    )?,
                    b'\n' => return Err(ChunkError::BadLineEnd),
                    _ => return Err(ChunkError::BadSize),
                },
            },
            State::Ext { len, at } => Self::ext(len, at, b)?,
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
                // No obs-fold, no whitespace before the name, no empty name.
                b if is_tchar(b) => {
                    self.name[0] = b.to_ascii_lowercase();
                    State::TrailerName {
                        total: Self::trailer_len(total)?,
                        len: 1,
                    }
                }
                _ => return Err(ChunkError::BadTrailer),
            },
            State::TrailerName { total, len } => {
                let total = Self::trailer_len(total)?;
                match b {
                    b':' => {
                        let name = &self.name[..(len as usize).min(NAME_BUF)];
                        if (len as usize) <= NAME_BUF && FORBIDDEN_TRAILERS.contains(&name) {
                            return Err(ChunkError::ForbiddenTrailer);
                        }
                        State::TrailerValue { total }
                    }
                    b if is_tchar(b) => {
                        if (len as usize) < NAME_BUF {
                            self.name[len as usize] = b.to_ascii_lowercase();
                        }
                        State::TrailerName {
                            total,
                            len: len.saturating_add(1),
                        }
                    }
                    _ => return Err(ChunkError::BadTrailer),
                }
            }
            State::TrailerValue { total } => {
                let total = Self::trailer_len(total)?;
                match b {
                    b'\r' => State::TrailerLf { total },
                    b'\t' | 0x20..=0x7e | 0x80..=0xff => State::TrailerValue { total },
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
    fn trailer_len(total: u32) -> Result<u32, ChunkError> {
        if total >= MAX_TRAILERS {
            return Err(ChunkError::TrailersTooLong);
        }
        Ok(total + 1)
    }

    /// One byte of a chunk extension (or the CR ending the size line).
    fn ext(len: u32, at: Ext, b: u8) -> Result<State, ChunkError> {
        let ws = matches!(b, b' ' | b'\t');
        let at = match at {
            Ext::End { ws: seen, name } => match b {
                b'\r' if !seen => return Ok(State::SizeLf),
                b';' => Ext::NameStart,
                b'=' if name => Ext::ValueStart,
                _ if ws => Ext::End { ws: true, name },
                _ => return Err(ChunkError::BadExtension),
            },
            Ext::NameStart if ws => Ext::NameStart,
            Ext::NameStart if is_tchar(b) => Ext::Name,
            Ext::NameStart => return Err(ChunkError::BadExtension),
            Ext::Name if is_tchar(b) => Ext::Name,
            Ext::Name => {
                return Self::ext(
                    len,
                    Ext::End {
                        ws: false,
                        name: true,
                    },
                    b,
                )
            }
            Ext::ValueStart if ws => Ext::ValueStart,
            Ext::ValueStart if b == b'"' => Ext::Quoted,
            Ext::ValueStart if is_tchar(b) => Ext::Value,
            Ext::ValueStart => return Err(ChunkError::BadExtension),
            Ext::Value if is_tchar(b) => Ext::Value,
            Ext::Value => {
                return Self::ext(
                    len,
                    Ext::End {
                        ws: false,
                        name: false,
                    },
                    b,
                )
            }
            Ext::Quoted => match b {
                b'"' => Ext::End {
                    ws: false,
                    name: false,
                },
                b'\\' => Ext::QuotedEscape,
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => Ext::Quoted,
                _ => return Err(ChunkError::BadExtension),
            },
            Ext::QuotedEscape => match b {
                b'\t' | b' ' | 0x21..=0x7e | 0x80..=0xff => Ext::Quoted,
                _ => return Err(ChunkError::BadExtension),
            },
        };
        if len >= MAX_EXTENSION {
            return Err(ChunkError::ExtensionTooLong);
        }
        Ok(State::Ext { len: len + 1, at })
    }
}

#[cfg(test)]
#[path = "chunked_tests.rs"]
mod tests;

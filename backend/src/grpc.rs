//! The gRPC side of `--protocol grpc`: protobuf messages of `proto/tts.proto` (declared by
//! hand with `prost` derives), gRPC message framing, status codes, and the process-wide
//! health flag. No I/O: `h2conn` drives the streams.
//!
//! Health: `grpc.health.v1.Health/Check` answers SERVING until a `tts.Control/SetServing`
//! call with `serving: false` flips the process-wide flag (and `serving: true` back).

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};

use prost::Message;

/// Largest request message accepted (as gRPC's default).
pub const MAX_MESSAGE: usize = 4 * 1024 * 1024;
/// Defaults when a request leaves them 0.
pub const DEFAULT_CHUNKS: u32 = 4;
pub const DEFAULT_CHUNK_BYTES: u32 = 1024;
/// Bounds, so a request cannot ask for gigabytes.
pub const MAX_CHUNKS: u32 = 10_000;
pub const MAX_CHUNK_BYTES: u32 = 1024 * 1024;
pub const SAMPLE_RATE: u32 = 16_000;

static SERVING: AtomicBool = AtomicBool::new(true);

pub fn serving() -> bool {
    SERVING.load(Relaxed)
}

pub fn set_serving(on: bool) {
    SERVING.store(on, Relaxed);
}

/// gRPC status codes used here.
pub mod code {
    pub const OK: u32 = 0;
    pub const INVALID_ARGUMENT: u32 = 3;
    pub const NOT_FOUND: u32 = 5;
    pub const RESOURCE_EXHAUSTED: u32 = 8;
    pub const UNIMPLEMENTED: u32 = 12;
}

#[derive(Clone, PartialEq, Message)]
pub struct SynthesizeRequest {
    #[prost(string, tag = "1")]
    pub text: String,
    #[prost(string, tag = "2")]
    pub voice: String,
    /// Audio chunks (streaming) or the audio size in chunks (unary); 0 means 4.
    #[prost(uint32, tag = "3")]
    pub chunks: u32,
    /// Bytes per chunk; 0 means 1024.
    #[prost(uint32, tag = "4")]
    pub chunk_bytes: u32,
    /// Pause between streamed chunks.
    #[prost(uint32, tag = "5")]
    pub chunk_interval_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct SynthesizeResponse {
    #[prost(bytes = "vec", tag = "1")]
    pub audio: Vec<u8>,
    #[prost(uint32, tag = "2")]
    pub sample_rate: u32,
    #[prost(string, tag = "3")]
    pub backend: String,
    #[prost(uint32, tag = "4")]
    pub latency_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
pub struct AudioChunk {
    #[prost(uint32, tag = "1")]
    pub seq: u32,
    #[prost(bytes = "vec", tag = "2")]
    pub audio: Vec<u8>,
    #[prost(bool, tag = "3")]
    pub last: bool,
    #[prost(string, tag = "4")]
    pub backend: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    pub service: String,
}

/// `status`: 0 UNKNOWN, 1 SERVING, 2 NOT_SERVING, 3 SERVICE_UNKNOWN.
#[derive(Clone, PartialEq, Message)]
pub struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    pub status: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct SetServingRequest {
    #[prost(bool, tag = "1")]
    pub serving: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct SetServingResponse {
    #[prost(bool, tag = "1")]
    pub serving: bool,
}

/// The methods served.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Synthesize,
    SynthesizeStream,
    HealthCheck,
    SetServing,
}

impl Method {
    pub fn of(path: &[u8]) -> Option<Method> {
        match path {
            b"/tts.TTS/Synthesize" => Some(Method::Synthesize),
            b"/tts.TTS/SynthesizeStream" => Some(Method::SynthesizeStream),
            b"/grpc.health.v1.Health/Check" => Some(Method::HealthCheck),
            b"/tts.Control/SetServing" => Some(Method::SetServing),
            _ => None,
        }
    }

    /// Counted in `/stats`-style totals (health and control calls are not).
    pub fn counted(self) -> bool {
        matches!(self, Method::Synthesize | Method::SynthesizeStream)
    }
}

/// Appends one length-prefixed, uncompressed gRPC message.
pub fn frame_message(msg: &impl Message, out: &mut Vec<u8>) {
    let len = msg.encoded_len();
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    msg.encode(out).expect("a Vec grows");
}

/// The single message of a unary or server-streaming request body.
pub fn unframe(body: &[u8]) -> Result<&[u8], (u32, &'static str)> {
    if body.len() < 5 {
        return Err((code::INVALID_ARGUMENT, "missing request message"));
    }
    if body[0] != 0 {
        return Err((code::UNIMPLEMENTED, "compressed messages are not supported"));
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err((code::INVALID_ARGUMENT, "one request message expected"));
    }
    Ok(&body[5..])
}

/// Deterministic audio: the backend's byte pattern from `offset`.
pub fn audio(offset: u64, len: usize, out: &mut Vec<u8>) {
    let mut done = 0;
    while done < len {
        let n = (len - done).min(crate::response::PATTERN_RUN);
        out.extend_from_slice(crate::response::pattern(offset + done as u64, n));
        done += n;
    }
}

/// Percent-encodes a grpc-message value (RFC 3986 unreserved and space-free ASCII kept).
pub fn encode_message(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_round_trip() {
        let req = SynthesizeRequest {
            text: "hello".into(),
            voice: "v".into(),
            chunks: 3,
            chunk_bytes: 10,
            chunk_interval_ms: 0,
        };
        let mut body = Vec::new();
        frame_message(&req, &mut body);
        assert_eq!(body[0], 0);
        let msg = unframe(&body).unwrap();
        assert_eq!(SynthesizeRequest::decode(msg).unwrap(), req);
        assert!(unframe(&body[..4]).is_err());
        body[0] = 1;
        assert_eq!(unframe(&body).unwrap_err().0, code::UNIMPLEMENTED);
    }

    #[test]
    fn methods_and_messages() {
        assert_eq!(Method::of(b"/tts.TTS/Synthesize"), Some(Method::Synthesize));
        assert_eq!(Method::of(b"/tts.TTS/Nope"), None);
        assert!(!Method::HealthCheck.counted());
        assert_eq!(encode_message("bad 100%\n"), "bad 100%25%0A");
        let mut a = Vec::new();
        audio(0, 30, &mut a);
        assert_eq!(&a[..3], b"abc");
        assert_eq!(a[26], b'a');
    }
}

//! The gRPC active check, sans-IO: one `grpc.health.v1.Health/Check` call over an h2c
//! client [`Connection`] (prior knowledge), fed with the bytes the checker reads and
//! drained of the bytes it writes, and judged when the call ends. The two one-field
//! protobuf messages (`HealthCheckRequest{string service = 1}` and
//! `HealthCheckResponse{ServingStatus status = 1}`) are encoded and decoded by hand.
//!
//! A check passes only on `:status 200`, a `content-type` of `application/grpc...`, one
//! uncompressed message saying SERVING (1) and `grpc-status: 0` in the trailers.
//! NOT_SERVING, SERVICE_UNKNOWN, any other grpc-status, a reset, a GOAWAY, a connection
//! error or the connection closing first fail it; each has its short reason.

use std::time::Instant;

use crate::h2::{Connection, Event, Fields, Limits, Settings, StreamId};

/// The health method's path.
pub const PATH: &[u8] = b"/grpc.health.v1.Health/Check";
/// Largest response message read; health answers are a few bytes.
const MAX_RESPONSE: usize = 1024;

/// `HealthCheckResponse.status` values.
pub const UNKNOWN: u64 = 0;
pub const SERVING: u64 = 1;
pub const NOT_SERVING: u64 = 2;
pub const SERVICE_UNKNOWN: u64 = 3;

// The reasons a gRPC check gives (indexed by `health::reason_index`).
pub const OK_SERVING: &str = "grpc SERVING";
pub const R_NOT_SERVING: &str = "grpc NOT_SERVING";
pub const R_SERVICE_UNKNOWN: &str = "grpc SERVICE_UNKNOWN";
pub const R_UNKNOWN: &str = "grpc status UNKNOWN";
pub const R_BAD_STATUS: &str = "grpc bad health status";
pub const R_HTTP_STATUS: &str = "grpc http status not 200";
pub const R_CONTENT_TYPE: &str = "grpc bad content-type";
pub const R_BAD_MESSAGE: &str = "grpc bad response message";
pub const R_NO_STATUS: &str = "grpc no grpc-status";
pub const R_RESET: &str = "grpc stream reset";
pub const R_GOAWAY: &str = "grpc goaway";
pub const R_CLOSED: &str = "grpc connection closed";
pub const R_PROTOCOL: &str = "grpc protocol error";
pub const R_TOO_LARGE: &str = "grpc response too large";
pub const R_REFUSED: &str = "grpc stream refused";

/// The reason for a call that ended with a non-zero grpc-status (codes past 16 share one).
pub fn status_reason(code: u32) -> &'static str {
    const BY_CODE: [&str; 17] = [
        "grpc-status 0 OK",
        "grpc-status 1 CANCELLED",
        "grpc-status 2 UNKNOWN",
        "grpc-status 3 INVALID_ARGUMENT",
        "grpc-status 4 DEADLINE_EXCEEDED",
        "grpc-status 5 NOT_FOUND",
        "grpc-status 6 ALREADY_EXISTS",
        "grpc-status 7 PERMISSION_DENIED",
        "grpc-status 8 RESOURCE_EXHAUSTED",
        "grpc-status 9 FAILED_PRECONDITION",
        "grpc-status 10 ABORTED",
        "grpc-status 11 OUT_OF_RANGE",
        "grpc-status 12 UNIMPLEMENTED",
        "grpc-status 13 INTERNAL",
        "grpc-status 14 UNAVAILABLE",
        "grpc-status 15 DATA_LOSS",
        "grpc-status 16 UNAUTHENTICATED",
    ];
    BY_CODE
        .get(code as usize)
        .copied()
        .unwrap_or("grpc-status out of range")
}

/// Every reason [`Call`] can give, for the shared reason table.
pub const REASONS: [&str; 15] = [
    OK_SERVING,
    R_NOT_SERVING,
    R_SERVICE_UNKNOWN,
    R_UNKNOWN,
    R_BAD_STATUS,
    R_HTTP_STATUS,
    R_CONTENT_TYPE,
    R_BAD_MESSAGE,
    R_NO_STATUS,
    R_RESET,
    R_GOAWAY,
    R_CLOSED,
    R_PROTOCOL,
    R_TOO_LARGE,
    R_REFUSED,
];

/// Appends `v` as a protobuf varint.
pub fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

/// Reads a varint at the start of `buf`: (value, bytes used).
pub fn get_varint(buf: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, &b) in buf.iter().enumerate().take(10) {
        v |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

/// `HealthCheckRequest{service}` framed as one gRPC message (flag 0, 4-byte length).
pub fn request_message(service: &str) -> Vec<u8> {
    let mut msg = Vec::with_capacity(service.len() + 8);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited); proto3 leaves an empty string out.
        msg.push(0x0a);
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut framed = Vec::with_capacity(5 + msg.len());
    framed.push(0);
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(&msg);
    framed
}

/// `HealthCheckResponse.status` from a message body (without the gRPC prefix): unknown
/// fields are skipped, a missing status is UNKNOWN (0), the last one wins.
pub fn decode_status(mut msg: &[u8]) -> Option<u64> {
    let mut status = UNKNOWN;
    while !msg.is_empty() {
        let (key, n) = get_varint(msg)?;
        msg = &msg[n..];
        let (field, wire) = (key >> 3, key & 7);
        match wire {
            0 => {
                let (v, n) = get_varint(msg)?;
                msg = &msg[n..];
                if field == 1 {
                    // An int32 enum: negative values are sign-extended to 64 bits.
                    status = v;
                }
            }
            1 => msg = msg.get(8..)?,
            2 => {
                let (len, n) = get_varint(msg)?;
                let end = n.checked_add(usize::try_from(len).ok()?)?;
                msg = msg.get(end..)?;
            }
            5 => msg = msg.get(4..)?,
            _ => return None,
        }
    }
    Some(status)
}

/// One health call on its own client connection.
pub struct Call {
    conn: Connection,
    stream: StreamId,
    /// Bytes read and not yet consumed by the codec (a partial frame).
    inbuf: Vec<u8>,
    /// The response body (gRPC-framed messages) so far.
    body: Vec<u8>,
    /// The response head arrived.
    head: bool,
}

impl Call {
    /// Queues the preface, SETTINGS, and the request for `service` to `authority`
    /// (`host:port`).
    pub fn new(authority: &str, service: &str) -> Call {
        let settings = Settings {
            max_concurrent_streams: 0,
            initial_window_size: 64 * 1024,
            connection_window: 64 * 1024,
            ..Settings::default()
        };
        let mut conn = Connection::client(settings, Limits::default());
        let stream = conn.open_stream().expect("a new connection opens a stream");
        let head: [(&[u8], &[u8]); 7] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", PATH),
            (b":authority", authority.as_bytes()),
            (b"content-type", b"application/grpc"),
            (b"te", b"trailers"),
            (b"user-agent", b"corelb-health"),
        ];
        conn.send_headers(stream, &head, false)
            .expect("a new stream takes headers");
        let msg = request_message(service);
        // Far below the initial windows (65 535), so it all goes at once.
        let sent = conn.send_data(stream, &msg, true).expect("stream open");
        debug_assert_eq!(sent, msg.len());
        Call {
            conn,
            stream,
            inbuf: Vec::new(),
            body: Vec::new(),
            head: false,
        }
    }

    /// Bytes to write to the server.
    pub fn output(&self) -> &[u8] {
        self.conn.pending_output()
    }

    /// Drops `n` written bytes.
    pub fn advance_output(&mut self, n: usize) {
        self.conn.advance_output(n);
    }

    /// Feeds bytes read from the server; `Some((passed, reason))` once the call is over.
    /// Output may be queued either way (SETTINGS ACK, WINDOW_UPDATE).
    pub fn feed(&mut self, input: &[u8], now: Instant) -> Option<(bool, &'static str)> {
        self.inbuf.extend_from_slice(input);
        let used = match self.conn.recv(&self.inbuf, now) {
            Ok(n) => n,
            Err(_) => return Some((false, R_PROTOCOL)),
        };
        self.inbuf.drain(..used);
        while let Some(ev) = self.conn.poll_event() {
            let verdict = match ev {
                Event::Headers {
                    stream,
                    fields,
                    end_stream,
                } if stream == self.stream => {
                    match fields.status() {
                        // Informational heads are skipped.
                        Some(s) if (100..200).contains(&s) => None,
                        Some(200) => {
                            let grpc = fields
                                .get(b"content-type")
                                .is_some_and(|v| v.starts_with(b"application/grpc"));
                            if !grpc {
                                Some((false, R_CONTENT_TYPE))
                            } else if end_stream {
                                // Trailers-Only: the status is in the head.
                                Some(self.judge(&fields))
                            } else {
                                self.head = true;
                                None
                            }
                        }
                        _ => Some((false, R_HTTP_STATUS)),
                    }
                }
                Event::Data {
                    stream,
                    data,
                    end_stream,
                } if stream == self.stream => {
                    let n = data.len();
                    if self.body.len() + n > MAX_RESPONSE {
                        Some((false, R_TOO_LARGE))
                    } else {
                        self.body.extend_from_slice(data);
                        self.conn.release(stream, n);
                        // A body without trailers has no grpc-status.
                        end_stream.then_some((false, R_NO_STATUS))
                    }
                }
                Event::Trailers { stream, fields } if stream == self.stream => {
                    Some(self.judge(&fields))
                }
                Event::Reset { stream, code, .. } if stream == self.stream => {
                    if code == crate::h2::ErrorCode::REFUSED_STREAM {
                        Some((false, R_REFUSED))
                    } else {
                        Some((false, R_RESET))
                    }
                }
                Event::GoAway { .. } => Some((false, R_GOAWAY)),
                _ => None,
            };
            if verdict.is_some() {
                return verdict;
            }
        }
        None
    }

    /// The connection closed (EOF) before the call ended.
    pub fn closed(&self) -> (bool, &'static str) {
        (false, R_CLOSED)
    }

    /// The verdict once the trailers (or the Trailers-Only head) arrived.
    fn judge(&self, trailers: &Fields) -> (bool, &'static str) {
        let code = trailers
            .get(b"grpc-status")
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|v| v.parse::<u32>().ok());
        match code {
            None => return (false, R_NO_STATUS),
            Some(0) => {}
            Some(c) => return (false, status_reason(c)),
        }
        if !self.head {
            // grpc-status 0 without a message: no answer to judge.
            return (false, R_BAD_MESSAGE);
        }
        let b = &self.body;
        if b.len() < 5 || b[0] != 0 {
            return (false, R_BAD_MESSAGE);
        }
        let len = u32::from_be_bytes([b[1], b[2], b[3], b[4]]) as usize;
        if b.len() != 5 + len {
            return (false, R_BAD_MESSAGE);
        }
        match decode_status(&b[5..]) {
            Some(SERVING) => (true, OK_SERVING),
            Some(NOT_SERVING) => (false, R_NOT_SERVING),
            Some(SERVICE_UNKNOWN) => (false, R_SERVICE_UNKNOWN),
            Some(UNKNOWN) => (false, R_UNKNOWN),
            Some(_) => (false, R_BAD_STATUS),
            None => (false, R_BAD_MESSAGE),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::h2::ErrorCode;

    #[test]
    fn varints_and_messages() {
        for v in [0u64, 1, 127, 128, 300, 16_384, u32::MAX as u64, u64::MAX] {
            let mut b = Vec::new();
            put_varint(&mut b, v);
            assert_eq!(get_varint(&b), Some((v, b.len())), "{v}");
        }
        assert_eq!(get_varint(&[0x80, 0x80]), None, "truncated");
        assert_eq!(request_message(""), [0, 0, 0, 0, 0]);
        assert_eq!(
            request_message("tts.TTS"),
            b"\x00\x00\x00\x00\x09\x0a\x07tts.TTS"
        );
        let long = "s".repeat(200);
        let m = request_message(&long);
        assert_eq!(
            &m[5..8],
            &[0x0a, 0xc8, 0x01],
            "length 200 as a 2-byte varint"
        );
        assert_eq!(decode_status(&[0x08, 0x01]), Some(SERVING));
        assert_eq!(decode_status(&[0x08, 0x02]), Some(NOT_SERVING));
        assert_eq!(decode_status(&[]), Some(UNKNOWN), "proto3 default");
        // Unknown fields of every wire type are skipped; the last status wins.
        let msg = [
            0x10, 0x05, // field 2 varint
            0x1a, 0x02, b'h', b'i', // field 3 bytes
            0x21, 1, 2, 3, 4, 5, 6, 7, 8, // field 4 fixed64
            0x2d, 1, 2, 3, 4, // field 5 fixed32
            0x08, 0x03, 0x08, 0x01,
        ];
        assert_eq!(decode_status(&msg), Some(SERVING));
        assert_eq!(decode_status(&[0x1a, 0x05, b'x']), None, "short bytes");
        assert_eq!(decode_status(&[0x0b]), None, "group wire type");
    }

    /// A server end answering one call with `answer`, pumped against a [`Call`].
    fn run(service: &str, answer: impl Fn(&mut Connection, StreamId)) -> (bool, &'static str) {
        let now = Instant::now();
        let mut call = Call::new("127.0.0.1:1", service);
        let mut server = Connection::server(Settings::default(), Limits::default());
        let out = call.output().to_vec();
        call.advance_output(out.len());
        server.recv(&out, now).unwrap();
        let mut stream = None;
        let mut got = Vec::new();
        while let Some(ev) = server.poll_event() {
            match ev {
                Event::Headers {
                    stream: s, fields, ..
                } => {
                    assert_eq!(fields.path(), Some(PATH));
                    assert_eq!(fields.method(), Some(&b"POST"[..]));
                    assert_eq!(fields.get(b"te"), Some(&b"trailers"[..]));
                    assert_eq!(fields.get(b"content-type"), Some(&b"application/grpc"[..]));
                    stream = Some(s);
                }
                Event::Data { data, .. } => got.extend_from_slice(data),
                _ => {}
            }
        }
        assert_eq!(got, request_message(service));
        answer(&mut server, stream.expect("request head"));
        let bytes = server.pending_output().to_vec();
        // Byte by byte: partial frames must be kept across reads.
        for (i, b) in bytes.iter().enumerate() {
            if let Some(r) = call.feed(std::slice::from_ref(b), now) {
                assert_eq!(i + 1, bytes.len(), "the verdict comes with the last frame");
                return r;
            }
        }
        call.closed()
    }

    fn reply(status: u64, grpc_status: &'static [u8]) -> impl Fn(&mut Connection, StreamId) {
        move |c, s| {
            c.send_headers(
                s,
                &[(b":status", b"200"), (b"content-type", b"application/grpc")],
                false,
            )
            .unwrap();
            let mut msg = Vec::new();
            msg.push(0x08);
            put_varint(&mut msg, status);
            let mut framed = vec![0, 0, 0, 0, msg.len() as u8];
            framed.extend_from_slice(&msg);
            c.send_data(s, &framed, false).unwrap();
            c.send_trailers(s, &[(b"grpc-status", grpc_status)])
                .unwrap();
        }
    }

    #[test]
    fn serving_passes_and_everything_else_fails_with_its_reason() {
        assert_eq!(run("", reply(SERVING, b"0")), (true, OK_SERVING));
        assert_eq!(
            run("tts.TTS", reply(NOT_SERVING, b"0")),
            (false, R_NOT_SERVING)
        );
        assert_eq!(
            run("x", reply(SERVICE_UNKNOWN, b"0")),
            (false, R_SERVICE_UNKNOWN)
        );
        assert_eq!(run("", reply(UNKNOWN, b"0")), (false, R_UNKNOWN));
        assert_eq!(run("", reply(7, b"0")), (false, R_BAD_STATUS));
        assert_eq!(
            run("", reply(SERVING, b"14")),
            (false, "grpc-status 14 UNAVAILABLE"),
            "a SERVING message does not excuse a failed call"
        );
        assert_eq!(run("", reply(SERVING, b"x")), (false, R_NO_STATUS));
    }

    #[test]
    fn trailers_only_resets_goaways_and_bad_heads_fail() {
        let trailers_only = |c: &mut Connection, s| {
            let h: [(&[u8], &[u8]); 3] = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"5"),
            ];
            c.send_headers(s, &h, true).unwrap();
        };
        assert_eq!(
            run("nope", trailers_only),
            (false, "grpc-status 5 NOT_FOUND")
        );
        let ok_without_message = |c: &mut Connection, s| {
            let h: [(&[u8], &[u8]); 3] = [
                (b":status", b"200"),
                (b"content-type", b"application/grpc"),
                (b"grpc-status", b"0"),
            ];
            c.send_headers(s, &h, true).unwrap();
        };
        assert_eq!(run("", ok_without_message), (false, R_BAD_MESSAGE));
        assert_eq!(
            run("", |c, s| c.reset(s, ErrorCode::INTERNAL_ERROR)),
            (false, R_RESET)
        );
        assert_eq!(
            run("", |c, s| c.reset(s, ErrorCode::REFUSED_STREAM)),
            (false, R_REFUSED)
        );
        assert_eq!(
            run("", |c, _| c.go_away(ErrorCode::NO_ERROR)),
            (false, R_GOAWAY)
        );
        assert_eq!(
            run("", |c, s| c
                .send_headers(s, &[(b":status", b"503")], true)
                .unwrap()),
            (false, R_HTTP_STATUS)
        );
        assert_eq!(
            run("", |c, s| c
                .send_headers(
                    s,
                    &[(b":status", b"200"), (b"content-type", b"text/plain")],
                    true
                )
                .unwrap()),
            (false, R_CONTENT_TYPE)
        );
        assert_eq!(run("", |_, _| {}), (false, R_CLOSED), "no answer, then EOF");
        // Garbage instead of frames is a protocol error.
        let mut call = Call::new("h:1", "");
        assert_eq!(
            call.feed(&[0xff; 64], Instant::now()),
            Some((false, R_PROTOCOL))
        );
    }

    #[test]
    fn every_reason_is_in_the_table() {
        for code in 0..=17 {
            let r = status_reason(code);
            assert!(r.starts_with("grpc-status"), "{r}");
        }
        let mut all = REASONS.to_vec();
        all.sort();
        all.dedup();
        assert_eq!(all.len(), REASONS.len());
    }
}

//! gRPC over the HTTP/2 front end: recognising a call, its `grpc-timeout`, the
//! `grpc-status` of its answer, and the Trailers-Only answers corelb makes itself (so a
//! gRPC client sees a gRPC error, not an HTTP one).

use std::time::Duration;

use crate::h2::{Connection, ErrorCode, Fields};

pub(super) const OK: u32 = 0;
pub(super) const CANCELLED: u32 = 1;
pub(super) const UNKNOWN: u32 = 2;
pub(super) const DEADLINE_EXCEEDED: u32 = 4;
pub(super) const UNIMPLEMENTED: u32 = 12;
pub(super) const INTERNAL: u32 = 13;
pub(super) const UNAVAILABLE: u32 = 14;
/// The server is out of a resource (a quota, memory): a retry policy may try elsewhere.
pub(super) const RESOURCE_EXHAUSTED: u32 = 8;

/// A request is a gRPC call when its content-type is `application/grpc` or a subtype
/// (`application/grpc+proto`, `application/grpc-web` is not: it is HTTP/1-shaped).
pub(super) fn is_call(fields: &Fields) -> bool {
    fields.get(b"content-type").is_some_and(|ct| {
        ct.len() >= 16
            && ct[..16].eq_ignore_ascii_case(b"application/grpc")
            && matches!(ct.get(16), None | Some(b'+') | Some(b';'))
    })
}

/// Parses `grpc-timeout` (at most 8 digits and a unit: H, M, S, m, u, n).
pub(super) fn timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |a, &d| a * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// The `grpc-status` of a trailer section (or a Trailers-Only head).
pub(super) fn status(fields: &Fields) -> Option<u32> {
    let v = fields.get(b"grpc-status")?;
    if v.is_empty() || v.len() > 3 || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    Some(v.iter().fold(0u32, |a, &d| a * 10 + u32::from(d - b'0')))
}

/// The gRPC status for an HTTP status corelb would have answered itself.
pub(super) fn for_http(status: u16) -> u32 {
    match status {
        504 => DEADLINE_EXCEEDED,
        502 | 503 => UNAVAILABLE,
        405 | 501 => UNIMPLEMENTED,
        _ => INTERNAL,
    }
}

/// Answers stream `id` with a Trailers-Only response: `:status 200`, the gRPC
/// content-type, `grpc-status` and `grpc-message`. If the client was still sending, the
/// stream is then reset with NO_ERROR (RFC 9113 §8.1).
pub(super) fn answer(conn: &mut Connection, id: u32, code: u32, message: &str, done: bool) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(code).as_bytes();
    let fields: [(&[u8], &[u8]); 4] = [
        (b":status", b"200"),
        (b"content-type", b"application/grpc"),
        (b"grpc-status", text),
        (b"grpc-message", message.as_bytes()),
    ];
    let _ = conn.send_headers(id, &fields, true);
    if !done {
        conn.reset(id, ErrorCode::NO_ERROR);
    }
}

/// Ends a call whose response head already went out with trailers carrying `code`.
pub(super) fn end_with(conn: &mut Connection, id: u32, code: u32, message: &str) {
    let mut digits = itoa::Buffer::new();
    let text = digits.format(code).as_bytes();
    let fields: [(&[u8], &[u8]); 2] = [
        (b"grpc-status", text),
        (b"grpc-message", message.as_bytes()),
    ];
    let _ = conn.send_trailers(id, &fields);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_recognised_by_content_type() {
        assert!(is_call(&Fields::of(&[(
            "content-type",
            "application/grpc"
        )])));
        assert!(is_call(&Fields::of(&[(
            "content-type",
            "application/grpc+proto"
        )])));
        assert!(!is_call(&Fields::of(&[(
            "content-type",
            "application/grpc-web"
        )])));
        assert!(!is_call(&Fields::of(&[(
            "content-type",
            "application/json"
        )])));
        assert!(!is_call(&Fields::of(&[])));
    }

    #[test]
    fn timeouts_parse_every_unit_and_refuse_the_rest() {
        assert_eq!(timeout(b"1H"), Some(Duration::from_secs(3600)));
        assert_eq!(timeout(b"2M"), Some(Duration::from_secs(120)));
        assert_eq!(timeout(b"3S"), Some(Duration::from_secs(3)));
        assert_eq!(timeout(b"250m"), Some(Duration::from_millis(250)));
        assert_eq!(
            timeout(b"99999999u"),
            Some(Duration::from_micros(99_999_999))
        );
        assert_eq!(timeout(b"5n"), Some(Duration::from_nanos(5)));
        for bad in [&b""[..], b"m", b"123456789m", b"10x", b"-1S", b"1.5S"] {
            assert_eq!(timeout(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn status_and_codes() {
        assert_eq!(status(&Fields::of(&[("grpc-status", "14")])), Some(14));
        assert_eq!(status(&Fields::of(&[("grpc-status", "x")])), None);
        assert_eq!(status(&Fields::of(&[])), None);
        assert_eq!(for_http(503), UNAVAILABLE);
        assert_eq!(for_http(504), DEADLINE_EXCEEDED);
    }
}

//! An HTTP/1.1 server's response, read the same way whichever front end forwards it (an
//! HTTP/1.1 client in `relay.rs`, an HTTP/2 stream in `h2/h1_leg.rs`): the head at the
//! front of the exchange's read buffer parsed ([`parse`]) and sorted ([`kind`]), what
//! taking the final
//! head changes in the exchange ([`took_final`]), and the body's framing checked, or taken
//! off, in place ([`body`]). Only how a head and its data are forwarded is the front end's.

use crate::buffer::BufPool;
use crate::http::chunked::ChunkError;
use crate::http::{self, BadResponse, Body, BodyKind, HeaderArray, Method, Response};

use super::decide::Failure;
use super::exchange::{Exchange, Resp};
use super::h2_translate::dechunk_keep_tail;

/// What a response head from an HTTP/1.1 server is to the front end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A 1xx head other than 101: forwarded where the client takes them, then the next
    /// head is read.
    Interim,
    /// 101, to a request that may switch protocols: the connection is the new protocol's
    /// from the head's last byte.
    Switch,
    /// A 502/503/504 head the exchange's retry policy replays (it stays in the buffer).
    Replay(u16),
    /// The final head.
    Final,
}

/// The head at the front of `bytes`, the answer to `ex`'s request (`upgrade`: one that may
/// switch protocols), if complete. `Err` for a malformed head (`Failure::BadResponse`).
#[inline]
pub(crate) fn parse<'h, 'b>(
    bytes: &'b [u8],
    headers: &'h mut HeaderArray<'b>,
    ex: &Exchange,
    upgrade: bool,
) -> Result<Option<Response<'h, 'b>>, BadResponse> {
    // (The parser's own result, not mapped: a response head is too large to copy.)
    http::parse_response_with(bytes, headers, ex.method == Method::Head, upgrade)
}

/// What head `r` is to `ex`'s front end. `replay`: a 502/503/504 the retry policy names
/// may still be replayed (no head has gone to the client, and this one was not refused a
/// replay already).
#[inline]
pub(crate) fn kind(r: &Response<'_, '_>, ex: &Exchange, replay: bool) -> Kind {
    if replay && ex.retry_on.has_status(r.status) {
        Kind::Replay(r.status)
    } else if r.switching() {
        Kind::Switch
    } else if r.informational() {
        Kind::Interim
    } else {
        Kind::Final
    }
}

/// The exchange once the server's final head (`status`; a 101 counts) was taken: the time
/// to it, whether the connection may carry another request (`keep`), the request head
/// given back if it went whole and the body no longer kept for a replay (a response is
/// under way), and the body to read, framed as `body` says.
#[inline]
pub(crate) fn took_final(
    ex: &mut Exchange,
    bufs: &mut BufPool,
    status: u16,
    keep: bool,
    body: BodyKind,
) {
    ex.keep = keep;
    ex.took_head(status, bufs);
    ex.give_up_replay(bufs);
    ex.resp = Resp::Body(Body::new(body));
}

/// What becomes of a response body's framing.
pub(crate) enum Unframe<'t> {
    /// Kept, checked (an HTTP/1.1 client gets the body as the server framed it).
    Keep,
    /// Taken off a chunked body (an HTTP/1.0 client).
    Dechunk,
    /// Taken off a chunked body, its last chunk and trailer section kept in the vector
    /// (an HTTP/2 stream, whose trailers go as HEADERS).
    KeepTail(&'t mut Vec<u8>),
}

/// Checks the body bytes that came after the `ex.ready` ones in the read buffer and makes
/// their data ready too. Bytes past the body's end are dropped, and the connection is then
/// not reused. `Err` for malformed framing.
#[inline]
pub(crate) fn body(ex: &mut Exchange, how: Unframe<'_>) -> Result<(), Failure> {
    let Resp::Body(mut body) = ex.resp else {
        return Ok(());
    };
    let buf = ex.resp_buf.as_mut().expect("response bytes");
    let fresh = &mut buf.bytes_mut()[ex.ready..];
    let total = fresh.len();
    let res = match (&mut body, how) {
        (Body::Chunked(d), Unframe::Dechunk) => d.decode_in_place(fresh),
        (Body::Chunked(d), Unframe::KeepTail(tail)) => dechunk_keep_tail(d, fresh, tail),
        (b, _) => b.advance(fresh).map(|n| (n, n)),
    };
    let (consumed, data) = res.map_err(|e| Failure::BadResponse(chunk_err(e)))?;
    if let Body::Chunked(d) = &body {
        if d.is_done() {
            body = Body::Done;
        }
    }
    ex.ready += data;
    if consumed < total {
        ex.keep = false;
    }
    if data < total {
        // Framing taken off, or bytes past the end of the response.
        buf.truncate(ex.ready);
    }
    ex.resp = if body.is_done() {
        Resp::Done
    } else {
        Resp::Body(body)
    };
    Ok(())
}

fn chunk_err(e: ChunkError) -> &'static str {
    match e {
        ChunkError::MissingDataCrlf => "chunk data not followed by CRLF",
        _ => "invalid chunked framing",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::types::RetryOn;

    /// A GET's exchange whose server sent `bytes` so far.
    fn answered(pool: &mut BufPool, bytes: &[u8]) -> Exchange {
        let mut ex = Exchange::test_get(pool);
        let mut buf = pool.get();
        buf.space()[..bytes.len()].copy_from_slice(bytes);
        buf.filled(bytes.len());
        ex.resp_buf = Some(buf);
        ex
    }

    /// Reads heads until the final one, as a front end does: its kind and length.
    fn next_head(ex: &Exchange, replay: bool) -> Option<(Kind, usize)> {
        let mut headers = http::header_array();
        let bytes = ex.resp_buf.as_ref().expect("bytes").bytes();
        let r = parse(bytes, &mut headers, ex, false).expect("well-formed")?;
        Some((kind(&r, ex, replay), r.head_len))
    }

    #[test]
    fn heads_are_sorted_and_bytes_past_the_body_are_dropped_with_the_connection() {
        let mut pool = BufPool::new(4);
        let mut ex = answered(
            &mut pool,
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloEXTRA",
        );
        let (k, n) = next_head(&ex, true).expect("complete");
        assert_eq!(k, Kind::Interim);
        ex.resp_buf.as_mut().unwrap().consume(n);
        let (k, n) = next_head(&ex, true).expect("complete");
        assert_eq!(k, Kind::Final);
        ex.resp_buf.as_mut().unwrap().consume(n);
        took_final(&mut ex, &mut pool, 200, true, BodyKind::Length(5));
        assert!(ex.head.is_none(), "the request head went back");
        assert!(ex.replay_lost, "no replay once a response is under way");
        body(&mut ex, Unframe::Keep).expect("well-framed");
        assert_eq!(ex.resp, Resp::Done);
        assert_eq!(ex.ready, 5);
        assert_eq!(ex.resp_buf.as_ref().unwrap().bytes(), b"hello");
        assert!(
            !ex.keep,
            "a server that sent more than its body is not reused"
        );
    }

    #[test]
    fn a_status_the_policy_names_is_replayed_once_then_final() {
        let mut pool = BufPool::new(4);
        let mut ex = answered(&mut pool, b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(next_head(&ex, true).map(|h| h.0), Some(Kind::Final));
        ex.retry_on = RetryOn::STATUS_503;
        assert_eq!(next_head(&ex, true).map(|h| h.0), Some(Kind::Replay(503)));
        assert_eq!(next_head(&ex, false).map(|h| h.0), Some(Kind::Final));
        let partial = answered(&mut pool, b"HTTP/1.1 200 OK\r\nContent-Le");
        assert!(next_head(&partial, true).is_none());
    }

    #[test]
    fn a_chunked_body_is_checked_in_place_or_unframed_keeping_its_trailers() {
        let chunked = b"5\r\nhello\r\n3\r\n, w\r\n0\r\nx-t: 1\r\n\r\n";
        let mut pool = BufPool::new(4);
        for how in ["keep", "dechunk", "tail"] {
            let mut ex = answered(&mut pool, chunked);
            ex.resp = Resp::Body(Body::new(BodyKind::Chunked));
            ex.keep = true;
            let mut tail = Vec::new();
            let unframe = match how {
                "keep" => Unframe::Keep,
                "dechunk" => Unframe::Dechunk,
                _ => Unframe::KeepTail(&mut tail),
            };
            body(&mut ex, unframe).expect("well-framed");
            assert_eq!(ex.resp, Resp::Done, "{how}");
            assert!(ex.keep, "{how}: nothing past the body");
            let got = ex.resp_buf.as_ref().unwrap().bytes();
            match how {
                "keep" => assert_eq!(got, chunked, "as the server framed it"),
                _ => assert_eq!(got, b"hello, w", "{how}"),
            }
            if how == "tail" {
                assert!(tail.windows(6).any(|w| w == b"x-t: 1"), "{tail:?}");
            }
        }
        let mut bad = answered(&mut pool, b"5\r\nhelloXX");
        bad.resp = Resp::Body(Body::new(BodyKind::Chunked));
        assert_eq!(
            body(&mut bad, Unframe::Keep),
            Err(Failure::BadResponse("chunk data not followed by CRLF"))
        );
    }
}

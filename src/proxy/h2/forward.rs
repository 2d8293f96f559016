//! A stream's response body to the HTTP/2 client, from either kind of back end (through
//! `proxy/back.rs`'s `ResponseBody`): DATA within the client's windows while the session's
//! output is below its high mark, then the end: the trailers as HEADERS (a call's
//! grpc-status read from them, fields past the bound counted) or an empty END_STREAM.

use crate::h2::Connection;

use super::super::back::{Next, ResponseBody};
use super::super::decide::Failure;
use super::super::grpc;
use super::super::h2_session::OUT_HIGH;
use super::super::h2_translate as translate;

/// The stream the body goes to.
pub(super) struct To<'a> {
    pub id: u32,
    /// A gRPC call: its status is read from the trailers.
    pub grpc: bool,
    pub end_sent: &'a mut bool,
    pub grpc_status: &'a mut Option<u32>,
}

/// What one forward did.
#[derive(Default)]
pub(super) struct Forwarded {
    pub moved: bool,
    /// Data bytes the client's codec took.
    pub bytes: u64,
    /// Trailer fields dropped (the back end's, and past the bound here).
    pub dropped: u64,
    /// The back end lost the stream before the body was whole (what came went out first).
    pub lost: Option<Failure>,
}

/// Moves `body` to stream `to` as far as the client's windows allow.
#[inline]
pub(super) fn forward(
    conn: &mut Connection,
    to: To<'_>,
    body: &mut impl ResponseBody,
) -> Forwarded {
    let mut f = Forwarded::default();
    while !*to.end_sent {
        match body.next() {
            Next::Wait => break,
            Next::Data(data, last) => {
                if conn.pending_output().len() >= OUT_HIGH {
                    break;
                }
                let len = data.len();
                match conn.send_data(to.id, data, last) {
                    Ok(0) => break,
                    Ok(n) => {
                        body.taken(n);
                        f.bytes += n as u64;
                        f.moved = true;
                        *to.end_sent = last && n == len;
                        if n < len {
                            break;
                        }
                    }
                    // The client reset the stream: nothing more goes to it.
                    Err(_) => *to.end_sent = true,
                }
            }
            Next::End(trailers) => {
                match trailers {
                    Some(t) => {
                        if to.grpc {
                            *to.grpc_status = grpc::status(t);
                        }
                        // The same bound and count as every path (http::MAX_SECTION_FIELDS).
                        let send = |p: &[(&[u8], &[u8])]| conn.send_trailers(to.id, p);
                        f.dropped += translate::with_pairs(t, &[], send).1;
                    }
                    None => {
                        let _ = conn.send_data(to.id, &[], true);
                    }
                }
                f.dropped += body.dropped();
                body.finish();
                *to.end_sent = true;
                f.moved = true;
            }
            Next::Lost(why) => {
                f.lost = Some(why);
                break;
            }
        }
    }
    f
}

//! HTTP/1.1 message framing: strict head parsing, validation and rewriting (RFC 9112).
//!
//! Heads are parsed in place by httparse into a caller-provided fixed header array; a
//! parsed head is validated ([`head`]: request line, Host, framing, hop-by-hop headers) and
//! then rewritten into an output buffer for the next hop ([`write`]). The framing headers
//! of a forwarded head (`Content-Length`, `Transfer-Encoding`) are never copied: they are
//! generated from the [`BodyKind`] corelb decided on, so what the next hop reads is always
//! what corelb relays. Body framing state lives in [`Body`]; chunked bodies are checked by
//! [`chunked::ChunkedDecoder`]; locally generated answers are in [`canned`]. This module
//! does no I/O and imports nothing else from the crate.

mod canned;
pub mod chunked;
#[doc(hidden)]
pub mod fuzzing;
mod head;
mod message;
mod write;

pub use canned::*;
pub use head::{
    parse_request, parse_response, parse_response_with, BadResponse, Request, Response,
};
pub use message::*;
pub use write::{known_reason, reason_phrase, Forward, HeadIndex, Reply};

#[cfg(test)]
mod tests;

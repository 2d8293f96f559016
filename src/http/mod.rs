//! HTTP/1.1 message framing: strict head parsing and rewriting, and body framing.

pub mod chunked;

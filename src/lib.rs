//! corelb: a thread-per-core HTTP/1.1 reverse proxy and load balancer.
//!
//! The binary in `main.rs` only parses flags; everything else lives in these modules.

pub mod http;

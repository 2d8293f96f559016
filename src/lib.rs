//! corelb: a thread-per-core HTTP/1.1 and HTTP/2 (h2c, gRPC) reverse proxy and load balancer.
//!
//! The binary in `main.rs` only parses flags; everything else lives in these modules.

pub mod access_log;
pub mod admin;
pub mod balancer;
pub mod buffer;
pub mod config;
pub mod control;
pub mod dns;
pub mod h2;
pub mod health;
pub mod http;
pub mod log;
pub mod metrics;
pub mod proxy;
pub mod retry;
pub mod rng;
pub mod server;
pub mod shared;
pub mod timer;
pub mod tls;
pub mod transport;
pub mod worker;

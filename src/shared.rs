//! What the workers, the health checker and the admin listener share: the validated
//! configuration, the balancer, the health state, the stop flag and the counters. All of
//! it is read-only or atomics, so no worker ever waits for another.

use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Arc;
use std::time::Instant;

use crate::balancer::Balancer;
use crate::config::Config;
use crate::health::{Health, Monitored};

/// Counters all workers add to (read by the main thread and the admin listener).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub rejected: AtomicU64,
    /// Requests tried again on another server (or on a fresh connection).
    pub retries: AtomicU64,
    pub active_clients: AtomicU64,
    /// Exchanges the client gave up on before the response was complete.
    pub client_aborts: AtomicU64,
    /// Panics caught in an exchange.
    pub panics: AtomicU64,
    /// Worker threads restarted after dying.
    pub worker_restarts: AtomicU64,
    /// Body bytes relayed with splice(2), both directions.
    pub spliced_bytes: AtomicU64,
    /// Upgraded connections (tunnels after a 101): open now, started since start, and
    /// the bytes they carried from the client and from the backend.
    pub tunnels_open: AtomicU64,
    pub tunnels: AtomicU64,
    pub tunnel_bytes_up: AtomicU64,
    pub tunnel_bytes_down: AtomicU64,
    /// HTTP/2 front end, summed from the codec's per-connection counters: abuse limits
    /// tripped (rapid resets, CONTINUATION floods, HPACK bombs and oversized header lists,
    /// SETTINGS/PING floods), streams refused, resets received, protocol errors (stream
    /// and connection), streams opened.
    pub h2_rapid_resets: AtomicU64,
    pub h2_continuation_floods: AtomicU64,
    pub h2_hpack_bombs: AtomicU64,
    pub h2_control_floods: AtomicU64,
    pub h2_refused_streams: AtomicU64,
    pub h2_resets_received: AtomicU64,
    pub h2_protocol_errors: AtomicU64,
    pub h2_streams: AtomicU64,
    /// Gauges, each the sum of the workers' values, published by each worker once per
    /// loop iteration as a wrapping delta: upstream connections open (busy and pooled),
    /// of which pooled idle, buffers held by connections, buffers pooled.
    pub upstream_open: AtomicU64,
    pub upstream_idle: AtomicU64,
    pub buffers_in_use: AtomicU64,
    pub buffers_pooled: AtomicU64,
}

/// State shared by every worker: configuration, balancer, stop flag.
pub struct Shared {
    pub cfg: Config,
    pub balancer: Arc<Balancer>,
    pub health: Health,
    pub stop: AtomicBool,
    pub counters: Counters,
    /// When the proxy started (uptime).
    pub started: Instant,
    /// CSV records dropped because the log queue was full (0 when logging is off).
    pub log_dropped: Arc<AtomicU64>,
}

impl Monitored for Shared {
    fn health(&self) -> &Health {
        &self.health
    }

    fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

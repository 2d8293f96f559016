//! What the workers, the health checker and the admin listener share: the validated
//! configuration, the balancer, the health state, the stop flag and the counters. All of
//! it is read-only or atomics, so no worker ever waits for another.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use crate::balancer::Balancer;
use crate::config::Config;
use crate::health::checker::Monitored;
use crate::health::Health;

/// Why requests are retried, as `/stats` `retries_by_reason` and `/metrics`
/// `corelb_retries_by_reason_total{reason}` name them (`proxy::decide::Failure::label`).
pub const RETRY_REASONS: [&str; 11] = [
    "connect-failure",
    "connect-timeout",
    "reset",
    "timeout",
    "bad-response",
    "refused-stream",
    "per-try-timeout",
    "502",
    "503",
    "504",
    "stale-connection",
];

/// Counters all workers add to (read by the main thread and the admin listener).
#[derive(Debug, Default)]
pub struct Counters {
    pub accepted: AtomicU64,
    pub requests: AtomicU64,
    pub upstream_connects: AtomicU64,
    pub rejected: AtomicU64,
    /// Requests tried again on another server (or on a fresh connection).
    pub retries: AtomicU64,
    /// The same retries by what failed, indexed as [`RETRY_REASONS`].
    pub retry_reasons: [AtomicU64; RETRY_REASONS.len()],
    /// Of those, the ones only a retry policy allowed (the request may have been
    /// processed: `retryPolicy`, `--retry-on`).
    pub policy_retries: AtomicU64,
    /// Hedges sent (`hedgingPolicy`), and those that answered first.
    pub hedges: AtomicU64,
    pub hedge_wins: AtomicU64,
    /// Attempts of a hedged request cancelled because another answered first (or took
    /// their place): counted here, never as errors.
    pub hedges_cancelled: AtomicU64,
    /// Requests a retry policy covers whose body outgrew the replay buffer (or went by
    /// splice): they can no longer be replayed.
    pub replay_overflows: AtomicU64,
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
    pub h2_stream_limit_goaways: AtomicU64,
    pub h2_resets_unforwarded: AtomicU64,
    pub h2_send_timeouts: AtomicU64,
    /// TLS to clients: handshakes completed (of which resumed), by version and by ALPN
    /// protocol; failures by reason (in `TlsFailure::ALL` order); handshakes that timed
    /// out; connections closed at accept over the per-worker handshake cap.
    pub tls_handshakes: AtomicU64,
    pub tls_resumed: AtomicU64,
    pub tls_v13: AtomicU64,
    pub tls_v12: AtomicU64,
    pub tls_alpn_h2: AtomicU64,
    pub tls_alpn_http11: AtomicU64,
    pub tls_alpn_none: AtomicU64,
    pub tls_failures: [AtomicU64; 6],
    pub tls_handshake_timeouts: AtomicU64,
    pub tls_refused: AtomicU64,
    /// Trailer fields dropped because the HTTP/1.1 message they belonged to could not
    /// carry them (a Content-Length body, or an HTTP/1.0 client).
    pub trailers_dropped: AtomicU64,
    /// Gauges, each the sum of the workers' values, published by each worker once per
    /// loop iteration as a wrapping delta: upstream connections open (busy and pooled),
    /// of which pooled idle, buffers held by connections, buffers pooled.
    pub upstream_open: AtomicU64,
    pub upstream_idle: AtomicU64,
    pub buffers_in_use: AtomicU64,
    pub buffers_pooled: AtomicU64,
    /// Configuration reloads applied, and refused (the running configuration kept).
    pub reloads: AtomicU64,
    pub reload_failures: AtomicU64,
    /// Servers that started draining (removed, or drained on request), and drains done.
    pub drains: AtomicU64,
    pub drains_done: AtomicU64,
}

/// One operational event (reload, server added, drain started or done), for /stats and
/// the dashboard.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Event {
    pub unix_ms: u64,
    /// `reload`, `reload-failed`, `add`, `change`, `drain`, `drained`, `restart-needed`,
    /// `dns`.
    pub kind: &'static str,
    pub message: String,
}

/// The most recent events, oldest first. Written by control threads (reload, admin, DNS),
/// read by the admin listener: never touched by a worker.
#[derive(Debug, Default)]
pub struct Events {
    ring: Mutex<VecDeque<Event>>,
}

impl Events {
    /// Events kept.
    pub const KEEP: usize = 100;

    pub fn push(&self, kind: &'static str, message: impl Into<String>) {
        let unix_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        if ring.len() == Self::KEEP {
            ring.pop_front();
        }
        ring.push_back(Event {
            unix_ms,
            kind,
            message: message.into(),
        });
    }

    /// The most recent `n` events, oldest first.
    pub fn recent(&self, n: usize) -> Vec<Event> {
        let ring = self.ring.lock().unwrap_or_else(|e| e.into_inner());
        ring.iter()
            .skip(ring.len().saturating_sub(n))
            .cloned()
            .collect()
    }
}

/// State shared by every worker: configuration, balancer, stop flag.
pub struct Shared {
    /// TLS to clients: the certificates new handshakes use; `None` without TLS listeners.
    pub tls: Option<crate::tls::TlsFront>,
    pub cfg: Config,
    pub balancer: Arc<Balancer>,
    pub health: Health,
    pub stop: AtomicBool,
    pub counters: Counters,
    /// When the proxy started (uptime).
    pub started: Instant,
    /// CSV records dropped because the log queue was full (0 when logging is off).
    pub log_dropped: Arc<AtomicU64>,
    /// Recent reloads, additions and drains.
    pub events: Events,
}

impl Monitored for Shared {
    fn health(&self) -> &Health {
        &self.health
    }

    fn balancer(&self) -> &Balancer {
        &self.balancer
    }
}

//! The HTTP/2 front end's counters for `/stats` (an `h2` object in `totals`) and
//! `/metrics` (`corelb_h2_*_total`): abuse limits the codec tripped, refused and reset
//! streams, protocol errors, streams opened, stream-limit GOAWAYs. Read from `Shared`'s sums.

use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::shared::Counters;

#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct H2Stats {
    /// Connections closed with ENHANCE_YOUR_CALM for too many stream resets.
    pub rapid_resets: u64,
    /// Header blocks over the CONTINUATION limits.
    pub continuation_floods: u64,
    /// Header lists too large, HPACK bombs included.
    pub hpack_bombs: u64,
    /// SETTINGS and PING floods.
    pub control_floods: u64,
    /// Streams refused (above MAX_CONCURRENT_STREAMS or after GOAWAY).
    pub refused_streams: u64,
    /// Streams the clients reset.
    pub resets_received: u64,
    /// Stream and connection errors answered (malformed frames or messages).
    pub protocol_errors: u64,
    /// Streams opened by clients.
    pub streams: u64,
    /// Connections ended gracefully at the per-connection stream limit.
    pub stream_limit_goaways: u64,
    /// Streams the clients reset before corelb saw their request: never forwarded.
    pub resets_unforwarded: u64,
    /// Responses abandoned because the client took none of their bytes for the send
    /// timeout (a window kept shut, a socket not read), alone or with their connection.
    pub send_timeouts: u64,
}

impl H2Stats {
    pub fn read(c: &Counters) -> H2Stats {
        H2Stats {
            rapid_resets: c.h2_rapid_resets.load(Relaxed),
            continuation_floods: c.h2_continuation_floods.load(Relaxed),
            hpack_bombs: c.h2_hpack_bombs.load(Relaxed),
            control_floods: c.h2_control_floods.load(Relaxed),
            refused_streams: c.h2_refused_streams.load(Relaxed),
            resets_received: c.h2_resets_received.load(Relaxed),
            protocol_errors: c.h2_protocol_errors.load(Relaxed),
            streams: c.h2_streams.load(Relaxed),
            stream_limit_goaways: c.h2_stream_limit_goaways.load(Relaxed),
            resets_unforwarded: c.h2_resets_unforwarded.load(Relaxed),
            send_timeouts: c.h2_send_timeouts.load(Relaxed),
        }
    }

    /// The Prometheus counters: (name, help, value).
    pub fn metrics(&self) -> [(&'static str, &'static str, u64); 11] {
        [
            (
                "corelb_h2_rapid_resets_total",
                "HTTP/2 connections closed for rapid stream resets (CVE-2023-44487).",
                self.rapid_resets,
            ),
            (
                "corelb_h2_continuation_floods_total",
                "HTTP/2 header blocks over the CONTINUATION limits (CVE-2024-27316).",
                self.continuation_floods,
            ),
            (
                "corelb_h2_hpack_bombs_total",
                "HTTP/2 header lists over the size limit, HPACK bombs included.",
                self.hpack_bombs,
            ),
            (
                "corelb_h2_control_floods_total",
                "HTTP/2 SETTINGS and PING floods.",
                self.control_floods,
            ),
            (
                "corelb_h2_refused_streams_total",
                "HTTP/2 streams refused with REFUSED_STREAM.",
                self.refused_streams,
            ),
            (
                "corelb_h2_resets_received_total",
                "HTTP/2 streams reset by clients.",
                self.resets_received,
            ),
            (
                "corelb_h2_protocol_errors_total",
                "HTTP/2 stream and connection errors answered to clients.",
                self.protocol_errors,
            ),
            (
                "corelb_h2_streams_total",
                "HTTP/2 streams opened by clients.",
                self.streams,
            ),
            (
                "corelb_h2_stream_limit_goaways_total",
                "HTTP/2 connections ended gracefully at the per-connection stream limit.",
                self.stream_limit_goaways,
            ),
            (
                "corelb_h2_resets_unforwarded_total",
                "HTTP/2 streams clients reset before their request was read: never forwarded.",
                self.resets_unforwarded,
            ),
            (
                "corelb_h2_send_timeouts_total",
                "HTTP/2 responses abandoned after the send timeout, alone or with their connection.",
                self.send_timeouts,
            ),
        ]
    }
}

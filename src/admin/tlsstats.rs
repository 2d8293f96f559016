//! TLS to clients, for `/stats` (a `tls` object in `totals`), `/metrics`
//! (`corelb_tls_*_total`, by kind, version, ALPN protocol and failure reason) and the
//! dashboard. Read from `Shared`'s sums.

use std::fmt::Write;
use std::sync::atomic::Ordering::Relaxed;

use serde::Serialize;

use crate::shared::Counters;

/// The failure reasons, in the order of `Counters::tls_failures`.
pub const FAILURE_REASONS: [&str; 6] = [
    "protocol",
    "incompatible",
    "alert",
    "certificate",
    "plain_http",
    "eof",
];

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct Failures {
    /// Malformed records or handshake messages.
    pub protocol: u64,
    /// No version, cipher suite, group or ALPN protocol in common.
    pub incompatible: u64,
    /// The client sent a fatal alert.
    pub alert: u64,
    /// A certificate refused (upstream side).
    pub certificate: u64,
    /// Plain HTTP sent to a TLS port (answered 400).
    pub plain_http: u64,
    /// Closed before the handshake completed.
    pub eof: u64,
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq, Eq)]
pub struct TlsStats {
    /// Handshakes completed, full and resumed (session tickets).
    pub handshakes: u64,
    pub resumed: u64,
    pub tls1_3: u64,
    pub tls1_2: u64,
    /// ALPN protocol chosen.
    pub alpn_h2: u64,
    pub alpn_http1_1: u64,
    pub alpn_none: u64,
    pub failures: Failures,
    /// Handshakes not done within the handshake timeout.
    pub handshake_timeouts: u64,
    /// Connections closed at accept: the worker had as many handshakes in progress as
    /// allowed.
    pub refused: u64,
}

impl TlsStats {
    pub fn read(c: &Counters) -> TlsStats {
        let f = |i: usize| c.tls_failures[i].load(Relaxed);
        TlsStats {
            handshakes: c.tls_handshakes.load(Relaxed),
            resumed: c.tls_resumed.load(Relaxed),
            tls1_3: c.tls_v13.load(Relaxed),
            tls1_2: c.tls_v12.load(Relaxed),
            alpn_h2: c.tls_alpn_h2.load(Relaxed),
            alpn_http1_1: c.tls_alpn_http11.load(Relaxed),
            alpn_none: c.tls_alpn_none.load(Relaxed),
            failures: Failures {
                protocol: f(0),
                incompatible: f(1),
                alert: f(2),
                certificate: f(3),
                plain_http: f(4),
                eof: f(5),
            },
            handshake_timeouts: c.tls_handshake_timeouts.load(Relaxed),
            refused: c.tls_refused.load(Relaxed),
        }
    }

    fn failures(&self) -> [u64; 6] {
        let f = &self.failures;
        [
            f.protocol,
            f.incompatible,
            f.alert,
            f.certificate,
            f.plain_http,
            f.eof,
        ]
    }

    /// The Prometheus families, each with its labelled samples.
    pub fn write_metrics(&self, o: &mut String, family: impl Fn(&mut String, &str, &str, &str)) {
        // (family, help, label, samples)
        type Family<'a> = (&'a str, &'a str, &'a str, Vec<(&'a str, u64)>);
        let labelled: [Family<'_>; 4] = [
            (
                "corelb_tls_handshakes_total",
                "TLS handshakes completed with clients, by kind (full, or resumed from a session ticket).",
                "kind",
                vec![
                    ("full", self.handshakes - self.resumed.min(self.handshakes)),
                    ("resumed", self.resumed),
                ],
            ),
            (
                "corelb_tls_versions_total",
                "TLS handshakes completed with clients, by protocol version.",
                "version",
                vec![("TLSv1.3", self.tls1_3), ("TLSv1.2", self.tls1_2)],
            ),
            (
                "corelb_tls_alpn_total",
                "TLS handshakes completed with clients, by ALPN protocol (none: no ALPN).",
                "protocol",
                vec![
                    ("h2", self.alpn_h2),
                    ("http/1.1", self.alpn_http1_1),
                    ("none", self.alpn_none),
                ],
            ),
            (
                "corelb_tls_handshake_failures_total",
                "TLS handshakes with clients that failed, by reason.",
                "reason",
                FAILURE_REASONS.iter().copied().zip(self.failures()).collect(),
            ),
        ];
        for (name, help, label, samples) in labelled {
            family(o, name, "counter", help);
            for (value, n) in samples {
                let _ = writeln!(o, "{name}{{{label}=\"{value}\"}} {n}");
            }
        }
        for (name, help, n) in [
            (
                "corelb_tls_handshake_timeouts_total",
                "TLS handshakes with clients not completed within the handshake timeout.",
                self.handshake_timeouts,
            ),
            (
                "corelb_tls_refused_total",
                "Client connections closed at accept over the per-worker cap on handshakes in progress.",
                self.refused,
            ),
        ] {
            family(o, name, "counter", help);
            let _ = writeln!(o, "{name} {n}");
        }
    }
}

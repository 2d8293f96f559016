//! The Prometheus text format of the admin `/metrics` endpoint: one function per group of
//! families, over the [`Stats`] that `render` gathers.

use std::fmt::Write;

use crate::config::grpc_status_name;

use super::render::{BackendStats, Buckets, Stats, BUCKETS_S};

/// Escapes a Prometheus label value.
fn label(v: &str) -> String {
    let mut s = String::with_capacity(v.len());
    for ch in v.chars() {
        match ch {
            '\\' => s.push_str("\\\\"),
            '"' => s.push_str("\\\""),
            '\n' => s.push_str("\\n"),
            c => s.push(c),
        }
    }
    s
}

/// Writes the HELP and TYPE lines of one metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// Prometheus float: integral values without a fraction, `+Inf` for infinity.
fn num(v: f64) -> String {
    if v.is_infinite() {
        if v > 0.0 { "+Inf" } else { "-Inf" }.to_string()
    } else {
        format!("{v}")
    }
}

fn histogram(out: &mut String, name: &str, labels: &str, b: &Buckets) {
    let sep = if labels.is_empty() { "" } else { "," };
    let mut cumulative = 0;
    for (bound, n) in BUCKETS_S.iter().zip(b.per_bound) {
        cumulative += n;
        let _ = writeln!(
            out,
            "{name}_bucket{{{labels}{sep}le=\"{}\"}} {cumulative}",
            num(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {}", b.count);
    let braces = |l: &str| {
        if l.is_empty() {
            String::new()
        } else {
            format!("{{{l}}}")
        }
    };
    let _ = writeln!(out, "{name}_sum{} {}", braces(labels), num(b.sum_s));
    let _ = writeln!(out, "{name}_count{} {}", braces(labels), b.count);
}

/// The Prometheus text exposition (format 0.0.4).
pub fn prometheus(s: &Stats) -> String {
    let mut o = String::with_capacity(8192 + s.backends.len() * 4096);
    let names: Vec<String> = s.backends.iter().map(|b| label(&b.name)).collect();
    process(&mut o, s);
    counters(&mut o, s);
    requests(&mut o, s, &names);
    grpc_calls(&mut o, s, &names);
    per_backend(&mut o, s, &names);
    latencies(&mut o, s, &names);
    o
}

/// The proxy itself: info, workers, uptime, draining, and the gauges of what it holds open.
fn process(o: &mut String, s: &Stats) {
    let t = &s.totals;
    family(
        o,
        "corelb_info",
        "gauge",
        "The running corelb: version, routing mode, upstream mode.",
    );
    let _ = writeln!(
        o,
        "corelb_info{{version=\"{}\",mode=\"{}\",upstream=\"{}\"}} 1",
        label(s.version),
        label(&s.mode),
        label(&s.upstream)
    );
    let gauges: [(&str, &str, f64); 3] = [
        ("corelb_workers", "Worker threads.", s.workers as f64),
        (
            "corelb_uptime_seconds",
            "Seconds since the proxy started.",
            s.uptime_s,
        ),
        (
            "corelb_draining",
            "1 while the proxy drains before it stops.",
            s.stopping as u8 as f64,
        ),
    ];
    for (name, help, v) in gauges {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {}", num(v));
    }
    family(
        o,
        "corelb_active_connections",
        "gauge",
        "Client connections open now.",
    );
    let _ = writeln!(o, "corelb_active_connections {}", t.active_connections);
    let leaks: [(&str, &str, u64); 5] = [
        (
            "corelb_tunnels_open",
            "Upgraded connections (WebSocket and others, after a 101) open now.",
            t.tunnels_open,
        ),
        (
            "corelb_upstream_connections_open",
            "Upstream connections open now, busy and pooled.",
            t.upstream_connections_open,
        ),
        (
            "corelb_upstream_connections_idle",
            "Upstream connections idle in the keep-alive pools now.",
            t.upstream_connections_idle,
        ),
        (
            "corelb_buffers_in_use",
            "I/O buffers held by connections now.",
            t.buffers_in_use,
        ),
        (
            "corelb_buffers_pooled",
            "I/O buffers waiting in the workers' pools now.",
            t.buffers_pooled,
        ),
    ];
    for (name, help, v) in leaks {
        family(o, name, "gauge", help);
        let _ = writeln!(o, "{name} {v}");
    }
}

/// Totals counted since start.
fn counters(o: &mut String, s: &Stats) {
    let t = &s.totals;
    let counters: [(&str, &str, u64); 22] = [
        (
            "corelb_tunnels_total",
            "Upgraded connections opened.",
            t.tunnels,
        ),
        (
            "corelb_tunnel_client_bytes_total",
            "Bytes tunnels carried from clients to backends.",
            t.tunnel_bytes_up,
        ),
        (
            "corelb_tunnel_backend_bytes_total",
            "Bytes tunnels carried from backends to clients.",
            t.tunnel_bytes_down,
        ),
        (
            "corelb_connections_accepted_total",
            "Client connections accepted.",
            t.accepted,
        ),
        (
            "corelb_upstream_connections_total",
            "Connections opened to backends.",
            t.upstream_connects,
        ),
        (
            "corelb_rejected_requests_total",
            "Malformed requests answered by the proxy and never forwarded.",
            t.rejected,
        ),
        (
            "corelb_retries_total",
            "Requests tried again on another server or a fresh connection.",
            t.retries,
        ),
        (
            "corelb_policy_retries_total",
            "Retries only the retry policy allowed: the request may have been processed.",
            t.policy_retries,
        ),
        (
            "corelb_hedges_total",
            "Hedged requests sent: a second copy to another server after the hedging delay.",
            t.hedges,
        ),
        (
            "corelb_hedge_wins_total",
            "Hedges that answered before the first attempt (which was cancelled).",
            t.hedge_wins,
        ),
        (
            "corelb_hedges_cancelled_total",
            "Attempts of hedged requests cancelled because another attempt answered first.",
            t.hedges_cancelled,
        ),
        (
            "corelb_replay_overflows_total",
            "Requests a retry policy covers whose body outgrew the replay buffer (not replayable).",
            t.replay_overflows,
        ),
        (
            "corelb_client_aborts_total",
            "Exchanges the client gave up on before the response was complete.",
            t.client_aborts,
        ),
        (
            "corelb_trailers_dropped_total",
            "Trailer fields dropped because the HTTP/1.1 message could not carry them.",
            t.trailers_dropped,
        ),
        (
            "corelb_panics_total",
            "Panics caught in an exchange; only that exchange's connections were closed.",
            t.panics,
        ),
        (
            "corelb_worker_restarts_total",
            "Worker threads restarted after dying.",
            t.worker_restarts,
        ),
        (
            "corelb_spliced_bytes_total",
            "Body bytes relayed with splice(2), both directions.",
            t.spliced_bytes,
        ),
        (
            "corelb_log_dropped_total",
            "CSV log records dropped because the log queue was full.",
            t.log_dropped,
        ),
        (
            "corelb_reloads_total",
            "Configuration reloads applied (SIGHUP or POST /reload).",
            t.reloads,
        ),
        (
            "corelb_reload_failures_total",
            "Configuration reloads refused (invalid configuration; the running one was kept).",
            t.reload_failures,
        ),
        (
            "corelb_drains_started_total",
            "Servers that started draining (removed, replaced, or drained on request).",
            t.drains,
        ),
        (
            "corelb_drains_completed_total",
            "Drains completed (nothing left in flight).",
            t.drains_done,
        ),
    ];
    for (name, help, v) in counters.into_iter().chain(t.h2.metrics()) {
        family(o, name, "counter", help);
        let _ = writeln!(o, "{name} {v}");
    }
    t.tls.write_metrics(o, family);
}

/// Responses by backend and status code; the proxy's own answers under `backend="none"`.
fn requests(o: &mut String, s: &Stats, names: &[String]) {
    let t = &s.totals;
    family(
        o,
        "corelb_requests_total",
        "counter",
        "Responses sent to clients by backend (\"none\": answered by the proxy itself) and status code.",
    );
    for (b, name) in s.backends.iter().zip(names) {
        for (code, n) in &b.codes {
            let _ = writeln!(
                o,
                "corelb_requests_total{{backend=\"{name}\",code=\"{code}\"}} {n}"
            );
        }
    }
    let mut local = t.codes.clone();
    for b in &s.backends {
        for (code, n) in &b.codes {
            if let Some(v) = local.get_mut(code) {
                *v = v.saturating_sub(*n);
            }
        }
    }
    for (code, n) in local.iter().filter(|(_, &n)| n > 0) {
        let _ = writeln!(
            o,
            "corelb_requests_total{{backend=\"none\",code=\"{code}\"}} {n}"
        );
    }
    family(
        o,
        "corelb_retries_by_reason_total",
        "counter",
        "Retries by what failed (stale-connection: a pooled connection the backend had closed).",
    );
    for (reason, n) in &t.retries_by_reason {
        let _ = writeln!(
            o,
            "corelb_retries_by_reason_total{{reason=\"{reason}\"}} {n}"
        );
    }
}

/// gRPC calls by backend, method and grpc-status.
fn grpc_calls(o: &mut String, s: &Stats, names: &[String]) {
    family(
        o,
        "corelb_grpc_calls_total",
        "counter",
        "gRPC calls by backend, method (at most 64 names, then \"other\") and grpc-status (status: the number, code: its name).",
    );
    for (b, name) in s.backends.iter().zip(names) {
        for (method, statuses) in &b.grpc.methods {
            for (status, n) in statuses {
                let code = status
                    .parse()
                    .ok()
                    .and_then(grpc_status_name)
                    .unwrap_or("UNKNOWN");
                let _ = writeln!(
                    o,
                    "corelb_grpc_calls_total{{backend=\"{name}\",method=\"{}\",status=\"{status}\",code=\"{code}\"}} {n}",
                    label(method)
                );
            }
        }
    }
}

/// One gauge or counter per backend: health, tier, weight, in flight, errors.
fn per_backend(o: &mut String, s: &Stats, names: &[String]) {
    type Per = fn(&BackendStats) -> f64;
    let per_backend: [(&str, &str, &str, Per); 8] = [
        (
            "corelb_backend_up",
            "gauge",
            "1 while the backend takes traffic (health checks pass, not ejected).",
            |b| b.health.view.up as u8 as f64,
        ),
        (
            "corelb_backend_ejected",
            "gauge",
            "1 while passive checks have ejected the backend.",
            |b| b.health.view.ejected as u8 as f64,
        ),
        (
            "corelb_backend_ejections_total",
            "counter",
            "Times passive checks ejected the backend.",
            |b| b.health.view.ejections as f64,
        ),
        (
            "corelb_backend_last_change_timestamp_seconds",
            "gauge",
            "Unix time of the backend's last up/down change.",
            |b| b.health.view.changed_at_unix_ms as f64 / 1000.0,
        ),
        (
            "corelb_backend_tier",
            "gauge",
            "The backend's tier (config priority; lower takes traffic first).",
            |b| b.tier as f64,
        ),
        (
            "corelb_backend_weight",
            "gauge",
            "The backend's relative share within its tier (config load).",
            |b| b.weight,
        ),
        (
            "corelb_backend_inflight",
            "gauge",
            "Requests sent to the backend and not yet answered.",
            |b| b.inflight as f64,
        ),
        (
            "corelb_backend_errors_total",
            "counter",
            "Exchanges with the backend that failed at the transport or protocol level.",
            |b| b.errors as f64,
        ),
    ];
    for (name, kind, help, f) in per_backend {
        family(o, name, kind, help);
        for (b, label) in s.backends.iter().zip(names) {
            let _ = writeln!(o, "{name}{{backend=\"{label}\"}} {}", num(f(b)));
        }
    }
}

/// The estimators' latencies and the latency histograms.
fn latencies(o: &mut String, s: &Stats, names: &[String]) {
    family(
        o,
        "corelb_backend_latency_estimate_seconds",
        "gauge",
        "The routing estimators' current latency per backend: sma, ewma, peak_ewma.",
    );
    for (b, label) in s.backends.iter().zip(names) {
        for (est, v) in [
            ("sma", b.sma_ms),
            ("ewma", b.ewma_ms),
            ("peak_ewma", b.peak_ewma_ms),
        ] {
            let _ = writeln!(
                o,
                "corelb_backend_latency_estimate_seconds{{backend=\"{label}\",estimator=\"{est}\"}} {}",
                num(v / 1000.0)
            );
        }
    }
    family(
        o,
        "corelb_upstream_latency_seconds",
        "histogram",
        "Time from sending a request upstream to the response head, per backend, since start.",
    );
    for (i, label) in names.iter().enumerate() {
        if let Some(h) = s.hists.get(i + 1) {
            histogram(
                o,
                "corelb_upstream_latency_seconds",
                &format!("backend=\"{label}\""),
                h,
            );
        }
    }
    family(
        o,
        "corelb_request_duration_seconds",
        "histogram",
        "Time from a request's arrival to the end of its response, all requests, since start.",
    );
    if let Some(h) = s.hists.first() {
        histogram(o, "corelb_request_duration_seconds", "", h);
    }
}

//! Unit tests of `admin/render` (kept apart so the module stays readable).
use super::*;
use crate::admin::prometheus::prometheus;
use crate::metrics::histogram;

#[test]
fn buckets_are_per_bound_with_sum_and_count() {
    let mut h = histogram();
    for us in [100, 1000, 1001, 80_000, 100_000, 7_000_000, 900_000_000] {
        h.saturating_record(us);
    }
    let b = buckets(&h);
    assert_eq!(b.count, 7);
    assert_eq!(b.per_bound[0], 1, "100 us <= 0.5 ms");
    assert_eq!(b.per_bound[1], 1, "exactly 1 ms counts under le=0.001");
    assert_eq!(b.per_bound[2], 1, "1.001 ms");
    assert_eq!(b.per_bound[7], 2, "80 and 100 ms under le=0.1");
    assert_eq!(b.per_bound[13], 1, "7 s under le=10");
    assert_eq!(
        b.per_bound.iter().sum::<u64>(),
        6,
        "15 minutes only under +Inf"
    );
    let exact = (100 + 1000 + 1001 + 80_000 + 100_000 + 7_000_000 + 900_000_000) as f64 / 1e6;
    assert!(
        (b.sum_s - exact).abs() / exact < 0.001,
        "{} vs {exact}",
        b.sum_s
    );
}

#[test]
fn prometheus_text_has_families_labels_and_local_answers() {
    let text = prometheus(&sample());
    assert!(text.contains("# TYPE corelb_requests_total counter\n"));
    assert!(text.contains("corelb_requests_total{backend=\"A\",code=\"200\"} 3\n"));
    assert!(text.contains("corelb_requests_total{backend=\"we\\\"ird\\\\\",code=\"200\"} 3\n"));
    assert!(text.contains("corelb_requests_total{backend=\"none\",code=\"503\"} 2\n"));
    assert!(!text.contains("backend=\"none\",code=\"200\""));
    assert!(
        text.contains("corelb_upstream_latency_seconds_bucket{backend=\"A\",le=\"0.0025\"} 1\n")
    );
    assert!(text.contains("corelb_upstream_latency_seconds_bucket{backend=\"A\",le=\"+Inf\"} 1\n"));
    assert!(text.contains("corelb_request_duration_seconds_count 1\n"));
    assert!(text.contains(
        "corelb_backend_latency_estimate_seconds{backend=\"A\",estimator=\"peak_ewma\"} 0.01225\n"
    ));
    assert!(text.contains("corelb_uptime_seconds 1.5\n"));
    assert!(text.contains("# TYPE corelb_buffers_in_use gauge\ncorelb_buffers_in_use 2\n"));
    assert!(text.contains("corelb_upstream_connections_open 3\n"));
    assert!(text.contains("# TYPE corelb_grpc_calls_total counter\n"));
    assert!(text.contains("corelb_grpc_calls_total{backend=\"A\",method=\"/tts.TTS/Synthesize\",status=\"0\",code=\"OK\"} 5\n"));
    assert!(text.contains("corelb_grpc_calls_total{backend=\"A\",method=\"/tts.TTS/Synthesize\",status=\"14\",code=\"UNAVAILABLE\"} 2\n"));
    assert!(text.contains("corelb_grpc_calls_total{backend=\"A\",method=\"other\",status=\"13\",code=\"INTERNAL\"} 1\n"));
    assert!(!text.contains("corelb_grpc_calls_total{backend=\"we"));
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, v) = line.rsplit_once(' ').unwrap();
        assert!(v == "+Inf" || v.parse::<f64>().is_ok(), "{line}");
    }
}

/// The gRPC table end to end without the data path: worker tables fed as the data path
/// will feed them, handed to the real aggregator, gathered with the shared state and
/// rendered.
#[test]
fn grpc_calls_from_worker_tables_reach_stats_and_metrics() {
    use crate::balancer::Balancer;
    use crate::config::Config;
    use crate::health::Health;
    use crate::metrics::{Aggregator, WorkerHists};
    use std::sync::atomic::AtomicBool;
    use std::sync::Arc;
    let cfg = Config::from_json(
        "t.json",
        r#"{"servers": [
            {"name": "A", "address": "127.0.0.1", "port": 1, "protocol": "h2c"},
            {"name": "B", "address": "127.0.0.1", "port": 2}]}"#,
    )
    .unwrap();
    let shared = Shared {
        tls: None,
        balancer: Arc::new(Balancer::new(&cfg)),
        health: Health::new(cfg.health.clone(), cfg.outlier.clone(), 2, false),
        events: Default::default(),
        cfg,
        stop: AtomicBool::new(false),
        counters: Default::default(),
        started: std::time::Instant::now(),
        log_dropped: Arc::new(Default::default()),
    };
    let agg = Aggregator::start(2, None).unwrap();
    for worker in 0..2 {
        let mut w = WorkerHists::new(2);
        for _ in 0..10 {
            w.record_grpc(0, b"/tts.TTS/Synthesize", 0);
        }
        w.record_grpc(0, b"/tts.TTS/SynthesizeStream", 14);
        w.record_grpc(1, b"/tts.TTS/Synthesize", 8);
        agg.tx
            .send(w.take(
                worker,
                std::time::Instant::now(),
                &crossbeam_channel::never(),
            ))
            .unwrap();
    }
    let summary = agg.summary.clone();
    agg.finish().unwrap();
    let stats = gather(&shared, &summary);
    let a = &stats.backends[0].grpc;
    assert_eq!((a.calls, a.errors), (22, 2));
    assert_eq!(a.statuses["0"], 20);
    assert_eq!(a.methods["/tts.TTS/SynthesizeStream"]["14"], 2);
    let b = &stats.backends[1].grpc;
    assert_eq!((b.calls, b.errors), (2, 2));
    assert_eq!(stats.backends[0].health.view.check, "grpc");
    assert_eq!(stats.backends[1].health.view.check, "tcp");
    assert_eq!(stats.backends[0].health.view.last_check, "not checked yet");
    let text = prometheus(&stats);
    assert!(text.contains("corelb_grpc_calls_total{backend=\"A\",method=\"/tts.TTS/Synthesize\",status=\"0\",code=\"OK\"} 20\n"), "{text}");
    assert!(text.contains("corelb_grpc_calls_total{backend=\"B\",method=\"/tts.TTS/Synthesize\",status=\"8\",code=\"RESOURCE_EXHAUSTED\"} 2\n"));
    let json = serde_json::to_value(&stats).unwrap();
    assert_eq!(json["backends"][0]["grpc"]["errors"], 2);
}

#[test]
fn stats_json_schema() {
    let v = serde_json::to_value(sample()).unwrap();
    assert_eq!(v["mode"], "round-robin");
    assert_eq!(v["totals"]["rps_1s"], 8.0);
    assert_eq!(v["totals"]["upstream_connections_open"], 3);
    assert_eq!(v["totals"]["buffers_in_use"], 2);
    assert_eq!(v["backends"][0]["health"]["state"], "up");
    assert_eq!(v["backends"][0]["codes"]["200"], 3);
    assert!(v["backends"][0]["latency_ms"]["last"]["p99"].is_null());
    assert!(v.get("hists").is_none());
    let g = &v["backends"][0]["grpc"];
    assert_eq!(
        (g["calls"].as_u64(), g["errors"].as_u64()),
        (Some(8), Some(3))
    );
    assert_eq!(g["statuses"]["14"], 2);
    assert_eq!(g["methods"]["/tts.TTS/Synthesize"]["0"], 5);
    assert_eq!(v["backends"][1]["grpc"]["calls"], 0);
    assert_eq!(v["backends"][0]["health"]["check"], "grpc");
    assert_eq!(v["backends"][0]["health"]["last_check"], "grpc SERVING");
}

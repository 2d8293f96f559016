//! The admin listener through the real binary: `/stats`, `/metrics` (parsed with a real
//! Prometheus text parser), `/events`, `/health`, the dashboard page and HTTP edge cases.

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;

const ADMIN: [&str; 2] = ["--admin", "127.0.0.1:0"];

fn stats(admin: SocketAddr) -> Value {
    let r = get(admin, "/stats");
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Content-Type"), Some("application/json"));
    serde_json::from_slice(&r.body).expect("/stats is JSON")
}

fn send(proxy: &Proxy, n: usize) {
    for _ in 0..n {
        assert_eq!(get(proxy.addr, "/").status, 200);
    }
}

#[test]
fn stats_match_the_traffic_sent() {
    let a = Backend::start("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let p = Proxy::start(&[&a, &b], &[&ADMIN[..], &["--workers", "2"]].concat());
    let admin = p.admin.expect("admin address");
    send(&p, 30);
    // Per-backend counts are live; totals and percentiles follow within a second or two
    // (workers hand over once a second, the aggregator publishes once a second).
    let mut s = Value::Null;
    let settled = eventually(Duration::from_secs(6), || {
        s = stats(admin);
        s["totals"]["requests"] == 30
    });
    assert!(settled, "{s:#}");
    assert_eq!(s["mode"], "round-robin");
    assert_eq!(s["upstream"], "persistent");
    assert_eq!(s["workers"], 2);
    assert!(s["uptime_s"].as_f64().unwrap() > 0.0);
    assert_eq!(s["stopping"], false);
    let t = &s["totals"];
    assert_eq!(t["local"], 0);
    assert_eq!(t["codes"]["200"], 30);
    assert!(t["accepted"].as_u64().unwrap() >= 30);
    assert!(t["active_connections"].is_u64());
    assert!(
        t["rps_1s"].is_f64() && t["rps_10s"].as_f64().unwrap() > 0.0,
        "{t}"
    );
    assert_eq!(t["retries"], 0);
    assert_eq!(t["log_dropped"], 0);
    assert_eq!(t["latency_ms"]["since_start"]["count"], 30);
    let backends = s["backends"].as_array().unwrap();
    assert_eq!(backends.len(), 2);
    for (be, srv) in backends.iter().zip([&a, &b]) {
        assert_eq!(be["name"], srv.id.as_str());
        assert_eq!(be["address"], srv.addr.to_string());
        assert_eq!(be["tier"], 0);
        assert_eq!(be["weight"], 1.0);
        assert_eq!(be["health"]["state"], "up");
        assert_eq!(be["health"]["up"], true);
        assert!(be["health"]["changed_at_unix_ms"].as_u64().unwrap() > 1_600_000_000_000);
        assert_eq!(be["inflight"], 0);
        assert_eq!(be["requests"], 15, "{be}");
        assert_eq!(be["errors"], 0);
        assert_eq!(be["codes"]["200"], 15);
        for est in ["sma_ms", "ewma_ms", "peak_ewma_ms"] {
            assert!(be[est].as_f64().unwrap() > 0.0, "{est}: {be}");
        }
        let lat = &be["latency_ms"]["since_start"];
        assert_eq!(lat["count"], 15);
        let (p50, p90, p99) = (
            lat["p50"].as_f64().unwrap(),
            lat["p90"].as_f64().unwrap(),
            lat["p99"].as_f64().unwrap(),
        );
        assert!(0.0 < p50 && p50 <= p90 && p90 <= p99, "{lat}");
        assert!(be["latency_ms"]["last"]["count"].is_u64());
    }
    assert_eq!(a.requests(), 15);
}

/// One histogram series: (le, cumulative count) per bucket, and `_count`.
type Series = (Vec<(f64, f64)>, Option<f64>);

/// Checks the text exposition format line by line, strictly: what the lenient parser
/// would skip fails here.
fn check_exposition(text: &str) {
    let name_ok = |n: &str| {
        !n.is_empty()
            && !n.starts_with(|c: char| c.is_ascii_digit())
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
    };
    let mut help = HashSet::new();
    let mut types: HashMap<String, String> = HashMap::new();
    let mut done: HashSet<String> = HashSet::new();
    let mut current = String::new();
    let mut hist: BTreeMap<(String, String), Series> = BTreeMap::new();
    assert!(text.ends_with('\n'));
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, doc) = rest.split_once(' ').expect(line);
            assert!(name_ok(name) && !doc.is_empty(), "{line}");
            assert!(help.insert(name.to_string()), "second HELP: {line}");
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, ty) = rest.split_once(' ').expect(line);
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&ty),
                "{line}"
            );
            assert!(help.contains(name), "TYPE without HELP: {line}");
            assert!(types.insert(name.into(), ty.into()).is_none(), "{line}");
            continue;
        }
        assert!(
            !line.starts_with('#') && !line.is_empty(),
            "stray line {line:?}"
        );
        let (series, value) = line.rsplit_once(' ').expect(line);
        let v: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("bad value: {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, l.strip_suffix('}').expect(line)),
            None => (series, ""),
        };
        assert!(name_ok(name), "{line}");
        let mut pairs = Vec::new();
        let mut rest = labels;
        while !rest.is_empty() {
            let (k, after) = rest.split_once("=\"").expect(line);
            assert!(name_ok(k), "{line}");
            let mut end = None;
            let mut escaped = false;
            for (i, c) in after.char_indices() {
                match (escaped, c) {
                    (true, '\\' | '"' | 'n') => escaped = false,
                    (true, _) => panic!("bad escape: {line}"),
                    (false, '\\') => escaped = true,
                    (false, '"') => {
                        end = Some(i);
                        break;
                    }
                    _ => {}
                }
            }
            let end = end.expect(line);
            pairs.push((k.to_string(), after[..end].to_string()));
            rest = after[end + 1..]
                .strip_prefix(',')
                .unwrap_or(&after[end + 1..]);
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| {
                name.strip_suffix(s)
                    .filter(|f| types.get(*f).is_some_and(|t| t == "histogram"))
            })
            .unwrap_or(name);
        assert!(types.contains_key(family), "sample without TYPE: {line}");
        if family != current {
            assert!(!done.contains(family), "family split up: {line}");
            done.insert(std::mem::replace(&mut current, family.to_string()));
        }
        if types[family] == "counter" {
            assert!(name.ends_with("_total") && v >= 0.0, "{line}");
        }
        if types[family] == "histogram" {
            let le = pairs
                .iter()
                .find(|(k, _)| k == "le")
                .map(|(_, v)| v.clone());
            let key: Vec<String> = pairs
                .iter()
                .filter(|(k, _)| k != "le")
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let e = hist.entry((family.to_string(), key.join(","))).or_default();
            if name.ends_with("_bucket") {
                let le = le.expect(line);
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().expect(line)
                };
                e.0.push((bound, v));
            } else if name.ends_with("_count") {
                e.1 = Some(v);
            }
        }
    }
    assert!(!hist.is_empty());
    for ((family, labels), (buckets, count)) in hist {
        let what = format!("{family}{{{labels}}}");
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{what}"
        );
        let last = buckets.last().expect(&what);
        assert!(last.0.is_infinite(), "{what}: no +Inf bucket");
        assert_eq!(Some(last.1), count, "{what}: +Inf bucket is not _count");
    }
}

#[test]
fn metrics_parse_and_count_the_requests() {
    let a = Backend::start("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let p = Proxy::start(&[&a, &b], &ADMIN);
    let admin = p.admin.unwrap();
    send(&p, 20);
    // One malformed request, answered by the proxy itself.
    let bad = raw(p.addr, b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n").unwrap();
    assert_eq!(bad.status, 400);

    let mut text = String::new();
    let settled = eventually(Duration::from_secs(6), || {
        text = get(admin, "/metrics").text();
        text.contains("corelb_requests_total{backend=\"none\",code=\"400\"} 1\n")
            && text.contains("corelb_upstream_latency_seconds_count{backend=\"B\"} 10\n")
    });
    assert!(settled, "{text}");
    let r = get(admin, "/metrics");
    assert_eq!(
        r.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    check_exposition(&text);

    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_string()))).unwrap();
    let sample = |metric: &str, labels: &[(&str, &str)]| {
        scrape
            .samples
            .iter()
            .find(|s| {
                s.metric == metric
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no {metric} {labels:?}"))
            .value
            .clone()
    };
    use prometheus_parse::Value as V;
    let counter = |metric, labels: &[(&str, &str)]| match sample(metric, labels) {
        V::Counter(v) => v,
        v => panic!("{metric}: {v:?} is not a counter"),
    };
    let gauge = |metric, labels: &[(&str, &str)]| match sample(metric, labels) {
        V::Gauge(v) => v,
        v => panic!("{metric}: {v:?} is not a gauge"),
    };
    let requests = |backend, code| {
        counter(
            "corelb_requests_total",
            &[("backend", backend), ("code", code)],
        )
    };
    assert_eq!(requests("A", "200"), 10.0);
    assert_eq!(requests("B", "200"), 10.0);
    assert_eq!(requests("none", "400"), 1.0);
    let all: f64 = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "corelb_requests_total")
        .map(|s| match s.value {
            V::Counter(v) => v,
            _ => 0.0,
        })
        .sum();
    assert_eq!(all, 21.0);
    assert_eq!(counter("corelb_rejected_requests_total", &[]), 1.0);
    assert_eq!(counter("corelb_retries_total", &[]), 0.0);
    assert_eq!(counter("corelb_log_dropped_total", &[]), 0.0);
    assert!(counter("corelb_connections_accepted_total", &[]) >= 21.0);
    assert!(gauge("corelb_active_connections", &[]) >= 0.0);
    for name in ["A", "B"] {
        let l = [("backend", name)];
        assert_eq!(gauge("corelb_backend_up", &l), 1.0);
        assert_eq!(gauge("corelb_backend_inflight", &l), 0.0);
        assert_eq!(gauge("corelb_backend_tier", &l), 0.0);
        assert_eq!(counter("corelb_backend_errors_total", &l), 0.0);
        let est = gauge(
            "corelb_backend_latency_estimate_seconds",
            &[("backend", name), ("estimator", "peak_ewma")],
        );
        assert!(est > 0.0 && est < 1.0, "{est}");
        match sample("corelb_upstream_latency_seconds", &l) {
            V::Histogram(buckets) => {
                let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
                assert_eq!(inf.count, 10.0);
                let one_s = buckets.iter().find(|b| b.less_than == 1.0).unwrap();
                assert_eq!(one_s.count, 10.0, "a fast backend answers within 1 s");
            }
            v => panic!("not a histogram: {v:?}"),
        }
    }
    match sample("corelb_request_duration_seconds", &[]) {
        V::Histogram(buckets) => {
            assert_eq!(buckets.last().unwrap().count, 21.0);
        }
        v => panic!("not a histogram: {v:?}"),
    }
    assert!(scrape.docs.contains_key("corelb_requests_total"));
    assert!(scrape.docs.contains_key("corelb_upstream_latency_seconds"));
}

/// Reads one `data:` event from an event stream, with what was read so far in `pending`.
fn next_event(s: &mut std::net::TcpStream, pending: &mut Vec<u8>) -> Value {
    let mut buf = [0u8; 16384];
    loop {
        if let Some(i) = pending.windows(2).position(|w| w == b"\n\n") {
            let block: Vec<u8> = pending.drain(..i + 2).collect();
            let text = String::from_utf8(block).unwrap();
            if let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) {
                return serde_json::from_str(data).expect("event data is JSON");
            }
            continue;
        }
        let n = s.read(&mut buf).expect("read event stream");
        assert!(n > 0, "event stream closed");
        pending.extend_from_slice(&buf[..n]);
    }
}

#[test]
fn events_stream_an_update_every_second() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &ADMIN);
    let admin = p.admin.unwrap();
    let mut streams: Vec<_> = (0..3)
        .map(|_| {
            let mut s = connect(admin);
            s.write_all(b"GET /events HTTP/1.1\r\nHost: t\r\nAccept: text/event-stream\r\n\r\n")
                .unwrap();
            s
        })
        .collect();
    let start = Instant::now();
    let mut pending: Vec<Vec<u8>> = vec![Vec::new(); streams.len()];
    for (s, pend) in streams.iter_mut().zip(&mut pending) {
        let mut buf = [0u8; 4096];
        while !pend.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut buf).unwrap();
            assert!(n > 0);
            pend.extend_from_slice(&buf[..n]);
        }
        let head = String::from_utf8_lossy(pend).into_owned();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/event-stream\r\n"),
            "{head}"
        );
        let i = pend.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        pend.drain(..i + 4);
    }
    send(&p, 5);
    // All three clients get updates; a slow reader does not hold the others up.
    let mut seen = vec![Vec::new(); streams.len()];
    for round in 0..3 {
        for (k, (s, pend)) in streams.iter_mut().zip(&mut pending).enumerate() {
            if k == 2 && round < 2 {
                continue;
            }
            let e = next_event(s, pend);
            assert_eq!(e["backends"][0]["name"], "A");
            assert_eq!(e["mode"], "round-robin");
            seen[k].push(e["time_unix_ms"].as_u64().unwrap());
        }
    }
    assert!(
        start.elapsed() < Duration::from_secs(4),
        "{:?}",
        start.elapsed()
    );
    for times in &seen[..2] {
        assert!(
            times.windows(2).all(|w| w[0] <= w[1]) && times[0] < times[2],
            "{times:?}"
        );
    }
    // The updates carry the traffic.
    let mut s = streams.pop().unwrap();
    let mut pend = pending.pop().unwrap();
    let live = (0..4).any(|_| next_event(&mut s, &mut pend)["backends"][0]["requests"] == 5);
    assert!(live);
}

#[test]
fn health_is_ok_while_running_and_503_while_draining() {
    let slow = Backend::start("A", "fixed:1500", &[]);
    let mut p = Proxy::start(&[&slow], &[&ADMIN[..], &["--drain-timeout", "5s"]].concat());
    let admin = p.admin.unwrap();
    let r = get(admin, "/health");
    assert_eq!((r.status, r.text().as_str()), (200, "ok\n"));
    let addr = p.addr;
    let inflight = std::thread::spawn(move || get(addr, "/").status);
    assert!(eventually(Duration::from_secs(2), || {
        stats(admin)["backends"][0]["inflight"] == 1
    }));
    p.signal("TERM");
    assert!(eventually(Duration::from_secs(2), || get(admin, "/health")
        .status
        == 503));
    assert_eq!(stats(admin)["stopping"], true);
    assert_eq!(inflight.join().unwrap(), 200);
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
}

#[test]
fn admin_http_basics() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &ADMIN);
    let admin = p.admin.unwrap();

    let page = get(admin, "/");
    assert_eq!(page.status, 200);
    assert_eq!(
        page.header("Content-Type"),
        Some("text/html; charset=utf-8")
    );
    let html = page.text();
    assert!(html.contains("src=\"/assets/uplot.js\"") && html.contains("/events"));
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN"
    );
    let js = get(admin, "/assets/uplot.js");
    assert_eq!(js.status, 200);
    assert!(js.text().contains("uPlot"));
    assert_eq!(get(admin, "/assets/uplot.css").status, 200);

    assert_eq!(get(admin, "/nope").status, 404);
    let post = raw(
        admin,
        b"POST /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(post.status, 405);
    assert_eq!(post.header("Allow"), Some("GET, HEAD"));
    assert_eq!(raw(admin, b"GARBAGE\r\n\r\n").unwrap().status, 400);
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(9000));
    assert_eq!(raw(admin, huge.as_bytes()).unwrap().status, 431);
    let body = raw(
        admin,
        b"GET /stats HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\nhi",
    )
    .unwrap();
    assert_eq!(body.status, 400);

    // Keep-alive and pipelining: three answers on one connection, in order.
    let mut s = connect(admin);
    s.write_all(
        b"GET /health HTTP/1.1\r\nHost: t\r\n\r\nHEAD /stats HTTP/1.1\r\nHost: t\r\n\r\n\
          GET /stats HTTP/1.1\r\nHost: t\r\n\r\n",
    )
    .unwrap();
    let mut pending = Vec::new();
    let r1 = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!((r1.status, r1.text().as_str()), (200, "ok\n"));
    let r2 = read_response(&mut s, &mut pending, "HEAD").unwrap();
    assert!(r2.body.is_empty() && r2.header("Content-Length").unwrap() != "0");
    let r3 = read_response(&mut s, &mut pending, "GET").unwrap();
    let v: Value = serde_json::from_slice(&r3.body).unwrap();
    assert_eq!(v["backends"][0]["name"], "A");
    // Connection: close is honoured.
    s.write_all(b"GET /health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let r4 = read_response(&mut s, &mut pending, "GET").unwrap();
    assert_eq!(r4.header("Connection"), Some("close"));
    let mut rest = Vec::new();
    assert_eq!(
        s.read_to_end(&mut rest).unwrap(),
        0,
        "closed after the answer"
    );
}

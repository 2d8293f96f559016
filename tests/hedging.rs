//! Hedged requests (`hedgingPolicy`, `--hedge-delay`) through the real binaries: a request
//! the policy covers that has no answer after the delay is sent to another server, the
//! first answer wins, and what the policy does not cover is never sent twice.

mod common;

use common::h2client::{header, synthesize, H2};
use common::*;
use std::time::{Duration, Instant};

/// A slow server (`S`, 400 ms) and a fast one (`F`), round robin, hedging `extra`.
fn slow_and_fast(extra: &[&str]) -> (Backend, Backend, Proxy) {
    let slow = Backend::start("S", "fixed:400", &[]);
    let fast = Backend::start("F", "fixed:1", &[]);
    let mut args = vec![
        "--workers",
        "1",
        "--mode",
        "round-robin",
        "--health-check",
        "off",
        "--admin",
        "127.0.0.1:0",
    ];
    args.extend_from_slice(extra);
    let p = Proxy::start(&[&slow, &fast], &args);
    (slow, fast, p)
}

#[test]
fn a_get_with_no_answer_after_the_delay_is_hedged_and_the_first_answer_wins() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let csv_arg = csv.to_str().unwrap();
    let (slow, fast, p) = slow_and_fast(&["--hedge-delay", "20ms", "--log-csv", csv_arg]);
    // Nothing waited for S's 400 ms.
    let hedged = six_gets_that_f_wins(&p, false);
    assert_eq!(fast.requests(), 6, "F answered every request");
    assert!(eventually(Duration::from_secs(5), || slow.requests() == hedged));
    // The CSV says which requests took two attempts: the hedged ones, answered by F.
    let attempts = |text: &str| -> Vec<(String, String)> {
        let mut lines = text.lines();
        let head: Vec<&str> = lines.next().unwrap_or("").split(',').collect();
        let col = |name| head.iter().position(|c| *c == name).unwrap();
        let (url, n) = (col("backend_url"), col("attempts"));
        lines
            .map(|l| l.split(',').collect::<Vec<_>>())
            .map(|f| (f[url].to_string(), f[n].to_string()))
            .collect()
    };
    let mut rows = Vec::new();
    assert!(eventually(Duration::from_secs(5), || {
        rows = attempts(&std::fs::read_to_string(&csv).unwrap_or_default());
        rows.len() == 6
    }));
    let two = rows.iter().filter(|(_, n)| n == "2").count() as u64;
    assert_eq!(two, hedged, "{rows:?}");
    let f_url = format!("http://127.0.0.1:{}", fast.port());
    assert!(rows.iter().all(|(u, _)| *u == f_url), "{rows:?}");
}

/// GET `/` through `p` on a new connection, over HTTP/2 if `http2`: the status and the
/// backend that answered.
fn get_over(p: &Proxy, http2: bool) -> (u16, String) {
    if !http2 {
        let r = get(p.addr, "/");
        return (r.status, r.backend());
    }
    let mut client = H2::connect(p.addr);
    let id = client.request("GET", "/", &[], true);
    let g = client.wait(id, Duration::from_secs(5));
    (g.status, header(&g, "x-backend").unwrap_or("").to_string())
}

/// Six GETs (over HTTP/2 if `http2`) to S (slow) and F (fast), hedged after 20 ms: F
/// answers each, soon; the hedges (those round robin gave S first) all won. Returns how
/// many went out.
fn six_gets_that_f_wins(p: &Proxy, http2: bool) -> u64 {
    let mut worst = Duration::ZERO;
    for _ in 0..6 {
        let t = Instant::now();
        let answer = get_over(p, http2);
        worst = worst.max(t.elapsed());
        assert_eq!(answer, (200, "F".to_string()));
    }
    // Each GET round robin gave S went to F too after 20 ms, and F's answer came first.
    assert!(worst < Duration::from_millis(300), "{worst:?}");
    let hedged = stat(p, "hedges");
    assert!(hedged >= 3, "hedges {hedged}");
    assert_eq!(stat(p, "hedge_wins"), hedged);
    hedged
}

#[test]
fn an_http2_get_to_http1_servers_is_hedged_and_the_first_answer_wins() {
    let (slow, fast, p) = slow_and_fast(&["--hedge-delay", "20ms"]);
    let hedged = six_gets_that_f_wins(&p, true);
    assert_eq!(
        stat(&p, "hedges_cancelled"),
        hedged,
        "each loser was cancelled"
    );
    assert_eq!(fast.requests(), 6, "F answered every request");
    assert!(eventually(Duration::from_secs(5), || slow.requests() == hedged));
    // Each loser's connection was closed, not pooled: S had a new one for each GET, and
    // only F's one connection is left.
    assert_eq!(stat(&p, "upstream_connects"), hedged + 1);
    assert!(eventually(Duration::from_secs(5), || {
        stat(&p, "upstream_connections_open") == 1
    }));
}

/// Requests h2c backend `b` received, from its `/stats` (asked over HTTP/2).
fn h2c_requests(b: &Backend) -> u64 {
    let mut client = H2::connect(b.addr);
    let id = client.request("GET", "/stats", &[], true);
    let g = client.wait(id, Duration::from_secs(5));
    let v: serde_json::Value = serde_json::from_slice(&g.body).expect("stats JSON");
    v["requests"].as_u64().expect("requests")
}

#[test]
fn an_http1_get_to_h2c_servers_is_hedged_on_another_stream_and_the_first_answer_wins() {
    let slow = Backend::start("S", "fixed:400", &["--protocol", "h2c"]);
    let fast = Backend::start("F", "fixed:1", &["--protocol", "h2c"]);
    let cfg = format!(
        r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "20ms", "methods": ["GET"]}}}}"#,
        entry(&slow, true),
        entry(&fast, true)
    );
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let hedged = six_gets_that_f_wins(&p, false);
    assert_eq!(h2c_requests(&fast), 6, "F answered every request");
    assert!(eventually(Duration::from_secs(5), || h2c_requests(&slow) == hedged));
    // The losers were streams, reset on S's one connection: one connection per server.
    assert_eq!(stat(&p, "upstream_connects"), 2);
}

#[test]
fn requests_the_policy_does_not_cover_are_never_hedged() {
    let (slow, fast, p) = slow_and_fast(&["--hedge-delay", "20ms"]);
    // POST is not covered (the flag covers GET and HEAD): each is sent once and waits for
    // its server.
    let post = b"POST / HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi";
    let mut slow_ones = 0;
    for _ in 0..4 {
        let t = Instant::now();
        let r = raw(p.addr, post).unwrap();
        assert_eq!(r.status, 200);
        if r.backend() == "S" {
            slow_ones += 1;
            assert!(
                t.elapsed() >= Duration::from_millis(350),
                "{:?}",
                t.elapsed()
            );
        }
    }
    assert!(slow_ones >= 1);
    assert_eq!(
        slow.requests() + fast.requests(),
        4,
        "each POST reached one server once"
    );
    assert_eq!(stat(&p, "hedges"), 0);
}

#[test]
fn without_a_hedging_policy_a_slow_server_is_waited_for() {
    let (slow, fast, p) = slow_and_fast(&[]);
    let answers: Vec<String> = (0..4).map(|_| get(p.addr, "/").backend()).collect();
    assert!(answers.iter().any(|b| b == "S"), "{answers:?}");
    assert_eq!(slow.requests() + fast.requests(), 4);
    assert_eq!(stat(&p, "hedges"), 0);
}

#[test]
fn a_hedging_policy_in_the_file_hedges_after_the_servers_p95() {
    let slow = Backend::start("S", "fixed:400", &[]);
    let fast = Backend::start("F", "fixed:1", &[]);
    let cfg = format!(
        r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "p95", "methods": ["GET"]}}}}"#,
        server_json("S", slow.port(), 0),
        server_json("F", fast.port(), 0)
    );
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    // The delay is S's recent p95 as the balancer knows it (a hedged attempt that lost
    // gives no sample): S's requests are hedged to F, whose answer wins.
    for _ in 0..6 {
        let r = get(p.addr, "/");
        assert_eq!(r.status, 200);
    }
    assert!(stat(&p, "hedges") >= 1);
    assert_eq!(slow.requests() + fast.requests(), 6 + stat(&p, "hedges"));
}

/// Slow (`S`, 400 ms) and fast (`F`, with `fast_args`) gRPC servers over h2c, round
/// robin (S first), hedging `/tts.TTS/*` after 30 ms with `extra` in the policy.
fn grpc_slow_and_fast(fast_args: &[&str], extra: &str) -> (Backend, Backend, Proxy) {
    grpc_servers(fast_args, extra, false)
}

/// As [`grpc_slow_and_fast`], F first in the list when `fast_first`: round robin gives
/// every call to the first server first (its hedge takes the next pick).
fn grpc_servers(fast_args: &[&str], extra: &str, fast_first: bool) -> (Backend, Backend, Proxy) {
    let slow = Backend::start("S", "fixed:400", &["--protocol", "grpc"]);
    let mut args = vec!["--protocol", "grpc"];
    args.extend_from_slice(fast_args);
    let fast = Backend::start("F", "fixed:1", &args);
    let server = |b: &Backend| {
        format!(
            r#"{{"name": "{}", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}}"#,
            b.id,
            b.port()
        )
    };
    let (a, b) = if fast_first {
        (&fast, &slow)
    } else {
        (&slow, &fast)
    };
    let cfg = format!(
        r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "30ms",
                               "methods": ["/tts.TTS/*"]{extra}}}}}"#,
        server(a),
        server(b)
    );
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    (slow, fast, p)
}

#[test]
fn a_grpc_call_with_no_answer_after_the_delay_is_hedged_on_another_h2c_server() {
    let (_slow, _fast, p) = grpc_slow_and_fast(&[], "");
    let mut client = H2::connect(p.addr);
    let mut worst = Duration::ZERO;
    for _ in 0..6 {
        let (g, status, took) = synthesize(&mut client, "hello");
        assert_eq!(g.status, 200, "{:?}", g.headers);
        worst = worst.max(took);
        assert_eq!(status, "0", "{:?}", g.trailers);
        assert_eq!(header(&g, "x-backend"), Some("F"), "{took:?}");
    }
    // The calls round robin gave S went to F too after 30 ms; F's answer won and S's
    // stream was cancelled: nothing waited for S's 400 ms.
    assert!(worst < Duration::from_millis(300), "{worst:?}");
    let hedged = stat(&p, "hedges");
    assert!(hedged >= 3, "hedges {hedged}");
    assert_eq!(stat(&p, "hedge_wins"), hedged);
    assert_eq!(stat(&p, "hedges_cancelled"), hedged);
    // A lost race is no error, and gives S back: S completed nothing, failed nothing, and
    // has nothing in flight.
    let r = get(p.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let s = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == "S")
        .unwrap();
    assert_eq!(
        (s["requests"].as_u64(), s["errors"].as_u64()),
        (Some(0), Some(0)),
        "{s}"
    );
    assert_eq!(s["inflight"].as_u64(), Some(0), "{s}");
}

#[test]
fn a_non_fatal_status_lets_the_other_attempt_answer() {
    // F fails every call with RESOURCE_EXHAUSTED (8) after 1 ms; S answers in 400 ms.
    // Round robin gives every call the first listed server first. By default F's answer
    // is final: a call F has first ends with it at once, and one S has first too (its
    // hedge on F answers before S). Once the policy calls the status non-fatal, neither
    // ends with it: a call S has first waits for S, one F has first is hedged to S at once.
    let fails = ["--error-rate", "1", "--grpc-error", "8"];
    let non_fatal = r#", "nonFatalStatusCodes": ["RESOURCE_EXHAUSTED"]"#;
    for fast_first in [false, true] {
        for (extra, s_answers) in [("", false), (non_fatal, true)] {
            let (_slow, _fast, p) = grpc_servers(&fails, extra, fast_first);
            let mut client = H2::connect(p.addr);
            for _ in 0..2 {
                let (g, status, took) = synthesize(&mut client, "hi");
                let case = format!("F first {fast_first}, {extra}: {status} in {took:?}");
                if s_answers {
                    assert_eq!(
                        (status.as_str(), header(&g, "x-backend")),
                        ("0", Some("S")),
                        "{case}"
                    );
                    assert!(took >= Duration::from_millis(350), "{case}");
                } else {
                    assert_eq!(status, "8", "{case}");
                    assert!(took < Duration::from_millis(300), "{case}");
                }
            }
            // Every call was hedged once, but for a call F answered first without the
            // policy (then the next call is S's, round robin having moved on by one).
            let want = if fast_first && !s_answers { 1 } else { 2 };
            assert_eq!(stat(&p, "hedges"), want, "F first {fast_first}, {extra}");
        }
    }
}

#[test]
fn a_hedge_that_takes_over_keeps_its_own_per_try_timeout() {
    // S never answers in time; M answers in 180 ms. A call S has first is hedged to M at
    // 50 ms; at 200 ms S's per-try timeout ends S's attempt and M's carries the call on:
    // M's own timeout runs from its own request, so M's answer at about 230 ms is the
    // call's (not a second per-try timeout at once).
    let slow = Backend::start("S", "fixed:3000", &["--protocol", "grpc"]);
    let mid = Backend::start("M", "fixed:180", &["--protocol", "grpc"]);
    let server = |b: &Backend| {
        format!(
            r#"{{"name": "{}", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}}"#,
            b.id,
            b.port()
        )
    };
    let cfg = format!(
        r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "50ms", "methods": ["/tts.TTS/*"]}},
            "retryPolicy": {{"maxAttempts": 2, "perTryTimeout": "200ms",
                             "retryOn": ["per-try-timeout"], "methods": ["/tts.TTS/*"]}}}}"#,
        server(&slow),
        server(&mid)
    );
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let mut client = H2::connect(p.addr);
    for _ in 0..2 {
        let (g, status, took) = synthesize(&mut client, "hi");
        assert_eq!(
            (status.as_str(), header(&g, "x-backend")),
            ("0", Some("M")),
            "{took:?}"
        );
        assert!(took < Duration::from_millis(1500), "{took:?}");
    }
    assert!(stat(&p, "hedges") >= 1);
}

/// Requests backend `b` (an h2c one if `h2c`) received.
fn served(b: &Backend, h2c: bool) -> u64 {
    if h2c {
        h2c_requests(b)
    } else {
        b.requests()
    }
}

/// Backend `b` as a config's server entry, speaking h2c if `h2c`.
fn entry(b: &Backend, h2c: bool) -> String {
    let protocol = if h2c { "h2c" } else { "http1" };
    format!(
        r#"{{"name": "{}", "address": "127.0.0.1", "port": {}, "protocol": "{protocol}"}}"#,
        b.id,
        b.port()
    )
}

/// The protocol pairs hedging covers: (HTTP/2 client, h2c servers).
const PAIRS: [(bool, bool); 4] = [(false, false), (true, false), (false, true), (true, true)];

#[test]
fn a_503_while_a_hedge_runs_lets_the_hedge_answer_on_every_protocol_pair() {
    // U answers 503 after 40 ms, G answers after 100 ms; GETs are hedged after 20 ms and a
    // 503 is replayed. A GET U has first: its hedge on G is running when U's 503 comes,
    // and carries the request on (no third attempt, and G sees it once). A GET G has
    // first: its hedge on U gets the 503, which does not win; G answers.
    for (http2, h2c) in PAIRS {
        let proto: &[&str] = if h2c { &["--protocol", "h2c"] } else { &[] };
        let mut args = vec!["--error-rate", "1", "--error-status", "503"];
        args.extend_from_slice(proto);
        let u = Backend::start("U", "fixed:40", &args);
        let g = Backend::start("G", "fixed:100", proto);
        let cfg = format!(
            r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
                "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "20ms", "methods": ["GET"]}},
                "retryPolicy": {{"maxAttempts": 2, "retryOn": ["503"], "methods": ["GET"]}}}}"#,
            entry(&u, h2c),
            entry(&g, h2c)
        );
        let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
        let pair = format!("http2 {http2}, h2c {h2c}");
        for _ in 0..6 {
            assert_eq!(get_over(&p, http2), (200, "G".to_string()), "{pair}");
        }
        assert_eq!(served(&g, h2c), 6, "{pair}: each GET reached G once");
        assert!(served(&u, h2c) >= 1, "{pair}");
        assert!(stat(&p, "hedges") >= 3, "{pair}");
        assert_eq!(
            stat(&p, "retries"),
            0,
            "{pair}: the hedges answered; nothing was retried"
        );
    }
}

#[test]
fn a_hedge_that_takes_over_keeps_its_own_per_try_timeout_on_every_protocol_pair() {
    // As for gRPC calls above, with GETs: S never answers in time, M answers in 180 ms. A
    // GET S has first is hedged to M at 50 ms; S's per-try timeout ends S's attempt at
    // 200 ms and M's attempt carries the GET on with its own timeout (until about 250 ms),
    // so M's answer at about 230 ms is the client's.
    for (http2, h2c) in PAIRS {
        let (_slow, mid, p) = hedged_with_per_try(("S", "fixed:3000"), ("M", "fixed:180"), h2c);
        let pair = format!("http2 {http2}, h2c {h2c}");
        for _ in 0..4 {
            let t = Instant::now();
            assert_eq!(get_over(&p, http2), (200, "M".to_string()), "{pair}");
            let took = t.elapsed();
            assert!(took < Duration::from_millis(1500), "{pair}: {took:?}");
        }
        assert!(stat(&p, "hedges") >= 2, "{pair}");
        assert_eq!(served(&mid, h2c), 4, "{pair}: each GET reached M once");
    }
}

#[test]
fn a_hedge_that_takes_over_and_stalls_too_ends_at_its_own_per_try_timeout_on_every_pair() {
    // Both servers answer only after 3 s. A GET is hedged at 50 ms; the first attempt's
    // per-try timeout (200 ms) hands the GET to the hedge, whose own per-try timeout ends
    // it at about 250 ms: a 504 well before either server answers. (An HTTP/1.1 hedge
    // promoted on an HTTP/1.1 client's exchange once ran on without one, to the 3 s answer.)
    for (http2, h2c) in PAIRS {
        let (_a, _b, p) = hedged_with_per_try(("A", "fixed:3000"), ("B", "fixed:3000"), h2c);
        let pair = format!("http2 {http2}, h2c {h2c}");
        let t = Instant::now();
        let (status, _) = get_over(&p, http2);
        let took = t.elapsed();
        assert_eq!(status, 504, "{pair}");
        assert!(took < Duration::from_millis(2000), "{pair}: {took:?}");
        assert!(stat(&p, "hedges") >= 1, "{pair}");
    }
}

/// Two servers (id and latency profile each; h2c if `h2c`) behind round robin, GETs hedged
/// after 50 ms and each attempt given a 200 ms per-try timeout, after which it moves on.
fn hedged_with_per_try(a: (&str, &str), b: (&str, &str), h2c: bool) -> (Backend, Backend, Proxy) {
    let proto: &[&str] = if h2c { &["--protocol", "h2c"] } else { &[] };
    let (a, b) = (
        Backend::start(a.0, a.1, proto),
        Backend::start(b.0, b.1, proto),
    );
    let cfg = format!(
        r#"{{"servers": [{}, {}], "mode": "round-robin", "healthCheck": {{"enabled": false}},
            "hedgingPolicy": {{"maxAttempts": 2, "hedgingDelay": "50ms", "methods": ["GET"]}},
            "retryPolicy": {{"maxAttempts": 2, "perTryTimeout": "200ms",
                             "retryOn": ["per-try-timeout"], "methods": ["GET"]}}}}"#,
        entry(&a, h2c),
        entry(&b, h2c)
    );
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    (a, b, p)
}

//! Hedged requests (`hedgingPolicy`, `--hedge-delay`) through the real binaries: a request
//! the policy covers that has no answer after the delay is sent to another server, the
//! first answer wins, and what the policy does not cover is never sent twice.

mod common;

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
    let mut worst = Duration::ZERO;
    for _ in 0..6 {
        let t = Instant::now();
        let r = get(p.addr, "/");
        worst = worst.max(t.elapsed());
        assert_eq!((r.status, r.backend()), (200, "F".to_string()), "{r:?}");
    }
    // Each request round robin gave S went to F too after 20 ms, and F's answer came
    // first: nothing waited for S's 400 ms.
    assert!(worst < Duration::from_millis(300), "{worst:?}");
    let hedged = stat(&p, "hedges");
    assert!(hedged >= 3, "hedges {hedged}");
    assert_eq!(stat(&p, "hedge_wins"), hedged);
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

//! Availability: health checks with hysteresis, retries, ejection, tier failover, and no
//! failed request when a backend dies, through the real binaries.

mod common;

use common::*;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Keep-alive clients sending GETs until `stop`; counts (ok, failed) and who answered.
struct Load {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    by: Arc<Mutex<Vec<(Instant, String)>>>,
}

impl Load {
    fn start(addr: std::net::SocketAddr, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let by = Arc::new(Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, by) = (stop.clone(), ok.clone(), failed.clone(), by.clone());
                std::thread::spawn(move || {
                    let deadline = Instant::now() + Duration::from_secs(30);
                    while !stop.load(SeqCst) && Instant::now() < deadline {
                        let mut s = connect(addr);
                        let mut pending = Vec::new();
                        for _ in 0..50 {
                            if stop.load(SeqCst) {
                                return;
                            }
                            if s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").is_err() {
                                failed.lock().unwrap().push("write failed".into());
                                break;
                            }
                            match read_response(&mut s, &mut pending, "GET") {
                                Some(r) if r.status == 200 => {
                                    ok.fetch_add(1, SeqCst);
                                    by.lock().unwrap().push((Instant::now(), r.backend()));
                                }
                                Some(r) => {
                                    failed.lock().unwrap().push(format!("status {}", r.status))
                                }
                                None => {
                                    failed.lock().unwrap().push("connection closed".into());
                                    break;
                                }
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            threads,
            ok,
            failed,
            by,
        }
    }

    fn finish(self) -> (usize, Vec<String>, Vec<(Instant, String)>) {
        self.stop.store(true, SeqCst);
        for t in self.threads {
            t.join().unwrap();
        }
        let by = std::mem::take(&mut *self.by.lock().unwrap());
        let failed = std::mem::take(&mut *self.failed.lock().unwrap());
        (self.ok.load(SeqCst), failed, by)
    }
}

/// Checks every 0.2 s. The timeout is longer: a dead server is seen at once (connection
/// refused), and a loaded CI machine must not time out healthy ones.
fn config(servers: &[String], extra: &str) -> String {
    format!(
        r#"{{"heartbeatInterval": 0.2, "heartbeatTimeout": 1 {extra}, "servers": [{}]}}"#,
        servers.join(", ")
    )
}

fn count_from(by: &[(Instant, String)], since: Instant, name: &str) -> usize {
    by.iter().filter(|(t, b)| *t >= since && b == name).count()
}

#[test]
fn killing_and_restarting_a_backend_fails_no_request() {
    for upstream in ["persistent", "per-request"] {
        let a = Backend::start("A", "fast", &[]);
        let mut b = Backend::start("B", "fast", &[]);
        let c = Backend::start("C", "fast", &[]);
        let b_port = b.port();
        let cfg = config(
            &[
                server_json("A", a.port(), 0),
                server_json("B", b_port, 0),
                server_json("C", c.port(), 0),
            ],
            "",
        );
        let mut p = Proxy::with_config(&cfg, &["--upstream", upstream, "-d"]);
        let load = Load::start(p.addr, 8);
        std::thread::sleep(Duration::from_millis(700));
        let killed = Instant::now();
        b.kill();
        std::thread::sleep(Duration::from_millis(1200));
        let b2 = Backend::start_on("B", "fast", b_port, &[]);
        let restarted = Instant::now();
        std::thread::sleep(Duration::from_millis(1500));
        let (ok, failed, by) = load.finish();
        assert!(
            failed.is_empty(),
            "{upstream}: {} failed requests: {:?}",
            failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok > 500, "{upstream}: only {ok} requests");
        // B got nothing while it was down (after the health check noticed) and traffic again
        // once it was back up.
        let down_window = by
            .iter()
            .filter(|(t, name)| {
                name == "B" && *t > killed + Duration::from_millis(200) && *t < restarted
            })
            .count();
        assert_eq!(down_window, 0, "{upstream}: B answered while dead?");
        assert!(
            count_from(&by, restarted, "B") > 0,
            "{upstream}: B never came back"
        );
        p.signal("INT");
        assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
        let log = p.stderr_text();
        assert!(
            log.contains(&format!(
                "server B (127.0.0.1:{b_port}, priority 0) is DOWN"
            )),
            "{log}"
        );
        assert!(
            log.contains(&format!(
                "server B (127.0.0.1:{b_port}, priority 0) is UP: 2 consecutive"
            )),
            "{log}"
        );
        drop(b2);
    }
}

#[test]
fn a_flapping_backend_does_not_flap_its_state() {
    let a = Backend::start("A", "fast", &[]);
    let cfg = config(
        &[server_json("A", a.port(), 0)],
        r#", "healthCheck": {"type": "http", "path": "/flap"}"#,
    );
    let mut p = Proxy::with_config(&cfg, &["-d"]);
    std::thread::sleep(Duration::from_millis(1500));
    for _ in 0..20 {
        assert_eq!(get(p.addr, "/").status, 200);
    }
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let log = p.stderr_text();
    assert!(
        log.contains("heartbeat status"),
        "debug prints the heartbeat table: {log}"
    );
    assert!(!log.contains("is DOWN"), "{log}");
    // The same backend with a failing check path does go down, after `fall` checks.
    let cfg = config(
        &[server_json("A", a.port(), 0)],
        r#", "healthCheck": {"type": "http", "path": "/status/500", "fall": 3}"#,
    );
    let mut p = Proxy::with_config(&cfg, &[]);
    assert!(eventually(Duration::from_secs(5), || get(p.addr, "/")
        .status
        == 503));
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    assert!(p
        .stderr_text()
        .contains("is DOWN: 3 consecutive failed checks (unexpected http status)"));
}

#[test]
fn connect_refused_is_retried_on_another_server() {
    let a = Backend::start("A", "fast", &[]);
    let cfg = config(
        &[
            server_json("dead", dead_port(), 0),
            server_json("A", a.port(), 0),
        ],
        "",
    );
    // No health checks and no ejection: every other request meets the dead server first.
    let p = Proxy::with_config(
        &cfg,
        &[
            "--health-check",
            "off",
            "--eject-after",
            "0",
            "--retry-budget",
            "100",
        ],
    );
    for i in 0..20 {
        let r = if i % 2 == 0 {
            get(p.addr, "/")
        } else {
            raw(p.addr, b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi").unwrap()
        };
        assert_eq!(r.status, 200, "request {i}");
        assert_eq!(r.backend(), "A");
    }
    assert_eq!(a.requests(), 20);
}

#[test]
fn a_stale_pooled_connection_is_retried_transparently() {
    // The backend answers the first request on a connection, then closes the connection
    // when the second arrives: the keep-alive race, every time.
    let mini = MiniServer::start(|_, n, _| {
        if n == 0 {
            Act::Reply("fresh")
        } else {
            Act::Close
        }
    });
    let cfg = config(&[server_json("M", mini.port(), 0)], "");
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--health-check", "off"]);
    for _ in 0..5 {
        let r = get(p.addr, "/");
        assert_eq!((r.status, r.text()), (200, "fresh".to_string()));
    }
    // Every request after the first met a stale connection and was replayed on a new one.
    assert_eq!(mini.connections.load(SeqCst), 5);
    assert_eq!(mini.requests.load(SeqCst), 9);
}

/// Two servers that read the whole request and then drop the connection, behind a proxy
/// with no health checks and no ejection (so every request meets them).
fn two_dropping_servers() -> (MiniServer, MiniServer, Proxy) {
    let m1 = MiniServer::start(|_, _, _| Act::Close);
    let m2 = MiniServer::start(|_, _, _| Act::Close);
    let cfg = config(
        &[
            server_json("M1", m1.port(), 0),
            server_json("M2", m2.port(), 0),
        ],
        "",
    );
    let p = Proxy::with_config(&cfg, &["--health-check", "off", "--eject-after", "0"]);
    (m1, m2, p)
}

#[test]
fn a_post_whose_body_was_sent_is_not_retried() {
    let (m1, m2, p) = two_dropping_servers();
    let r = raw(
        p.addr,
        b"POST /order HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(
        m1.requests.load(SeqCst) + m2.requests.load(SeqCst),
        1,
        "the POST reached exactly one server once"
    );
    // An idempotent GET meeting the same failure is retried on the other server.
    let r = get(p.addr, "/");
    assert_eq!(r.status, 502, "both servers drop it");
    assert_eq!(
        m1.requests.load(SeqCst) + m2.requests.load(SeqCst),
        3,
        "the GET was tried on both"
    );
}

#[test]
fn all_servers_down_gives_503() {
    let cfg = config(
        &[
            server_json("X", dead_port(), 0),
            server_json("Y", dead_port(), 1),
        ],
        "",
    );
    let p = Proxy::with_config(&cfg, &[]);
    assert!(eventually(Duration::from_secs(5), || get(p.addr, "/")
        .status
        == 503));
    let r = get(p.addr, "/");
    assert_eq!(
        (r.status, r.text()),
        (503, "no server available\n".to_string())
    );
}

#[test]
fn traffic_fails_over_to_the_next_tier_and_returns() {
    let mut a = Backend::start("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let c = Backend::start("C", "fast", &[]);
    let a_port = a.port();
    let cfg = config(
        &[
            server_json("A", a_port, 0),
            server_json("B", b.port(), 1),
            server_json("C", c.port(), 2),
        ],
        "",
    );
    let mut p = Proxy::with_config(&cfg, &["-d"]);
    let load = Load::start(p.addr, 4);
    std::thread::sleep(Duration::from_millis(500));
    // Before the kill: requests in flight at that moment finish on B after it.
    let killed = Instant::now();
    a.kill();
    std::thread::sleep(Duration::from_millis(1000));
    let a2 = Backend::start_on("A", "fast", a_port, &[]);
    let restarted = Instant::now();
    std::thread::sleep(Duration::from_millis(1200));
    let (ok, failed, by) = load.finish();
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(ok > 200);
    let before: Vec<_> = by
        .iter()
        .filter(|(t, _)| *t < killed)
        .map(|(_, b)| b.as_str())
        .collect();
    if !before.iter().all(|b| *b == "A") {
        // Say why in the failure: the proxy's debug log has every state change and retry.
        p.signal("INT");
        let _ = p.wait_exit(Duration::from_secs(10));
        let log = p.stderr_text();
        let why: Vec<&str> = log
            .lines()
            .filter(|l| !l.starts_with("  ") && !l.contains("heartbeat status"))
            .collect();
        panic!("tier 0 takes all traffic; proxy log:\n{}", why.join("\n"));
    }
    // Within one check interval (0.2 s, plus fall=3 checks) traffic moved to tier 1 only.
    let during: Vec<_> = by
        .iter()
        .filter(|(t, _)| *t > killed + Duration::from_millis(800) && *t < restarted)
        .map(|(_, b)| b.as_str())
        .collect();
    assert!(
        !during.is_empty() && during.iter().all(|b| *b == "B"),
        "{during:?}"
    );
    // After `rise` checks it returns to tier 0.
    let after: Vec<_> = by
        .iter()
        .filter(|(t, _)| *t > restarted + Duration::from_millis(800))
        .map(|(_, b)| b.as_str())
        .collect();
    assert!(
        !after.is_empty() && after.iter().all(|b| *b == "A"),
        "{:?}",
        &after[..after.len().min(10)]
    );
    assert_eq!(c.requests(), 0);
    drop(a2);
}

#[test]
fn an_early_answer_mid_upload_is_the_only_answer() {
    // A backend that answers 413 after the head and closes without reading the body, as
    // many servers do for an upload they refuse. The proxy's next write fails; the client
    // must get the 413 alone, never a 502 after it.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        use std::io::Read;
        for s in l.incoming().take(3) {
            let Ok(mut s) = s else { continue };
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") && s.read(&mut b).unwrap_or(0) == 1 {
                head.push(b[0]);
            }
            let _ = s.write_all(b"HTTP/1.1 413 Payload Too Large\r\nContent-Length: 9\r\nConnection: close\r\n\r\ntoo large");
            // Give the proxy time to read the answer, then drop the socket with the body
            // unread: the kernel resets the connection and the proxy's next write fails.
            // (Reset at once, the answer itself can be lost in the kernel: then a 502 is
            // all any proxy can say.)
            std::thread::sleep(Duration::from_millis(300));
        }
    });
    let cfg = config(&[server_json("M", port, 0)], "");
    let p = Proxy::with_config(&cfg, &["--health-check", "off"]);
    let mut s = connect(p.addr);
    let body = vec![b'x'; 8 << 20];
    s.write_all(
        format!(
            "POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )
    .unwrap();
    // The upload may be cut short by the proxy closing: that is fine.
    let _ = s.write_all(&body);
    let mut all = Vec::new();
    use std::io::Read;
    let _ = s.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert_eq!(
        text.matches("HTTP/1.1 ").count(),
        1,
        "exactly one answer: {text}"
    );
    assert!(text.ends_with("too large"), "{text}");
}

#[test]
fn a_bodyless_post_written_whole_is_not_replayed() {
    // It may have been processed before the connection broke.
    let (m1, m2, p) = two_dropping_servers();
    let r = raw(p.addr, b"POST /orders/1/cancel HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n").unwrap();
    assert_eq!(r.status, 502);
    assert_eq!(m1.requests.load(SeqCst) + m2.requests.load(SeqCst), 1);
}

/// One worker, no health checks, no ejection (every request meets its servers), and the
/// admin API on, for the retry-policy tests.
const QUIET: [&str; 8] = [
    "--workers",
    "1",
    "--health-check",
    "off",
    "--eject-after",
    "0",
    "--admin",
    "127.0.0.1:0",
];

/// `C`, which reads every request and drops the connection, and `G`, which answers
/// "done", behind a proxy (config `extra`) with no health checks, no ejection and its
/// admin API on.
fn closer_and_good(extra: &str) -> (MiniServer, MiniServer, Proxy) {
    let closer = MiniServer::start(|_, _, _| Act::Close);
    let good = MiniServer::start(|_, _, _| Act::Reply("done"));
    let servers = [
        server_json("C", closer.port(), 0),
        server_json("G", good.port(), 0),
    ];
    let p = Proxy::with_config(&config(&servers, extra), &QUIET);
    (closer, good, p)
}

/// A request without a body that two servers treat differently: `C` reads it and drops
/// the connection (it may have been processed), `G` answers it.
const CANCEL: &[u8] =
    b"POST /jobs/7/cancel HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n";

#[test]
fn a_retry_policy_replays_a_dropped_post_it_covers_and_nothing_else() {
    let policy =
        r#", "retryPolicy": {"maxAttempts": 2, "retryOn": ["reset"], "methods": ["POST"]}"#;
    let (closer, good, p) = closer_and_good(policy);
    for _ in 0..6 {
        let r = raw(p.addr, CANCEL).unwrap();
        assert_eq!((r.status, r.text()), (200, "done".to_string()));
    }
    // Round robin gives C first attempts (each retry's pick moves it on too); each one
    // C dropped went to G once, and only once.
    let dropped = closer.requests.load(SeqCst);
    assert!(dropped >= 3, "C saw {dropped}");
    assert_eq!(good.requests.load(SeqCst), 6);
    assert_eq!(stat(&p, "policy_retries"), dropped as u64);
    // A PATCH (not idempotent) the policy does not cover meets the same failure: sent
    // once, answered 502.
    let (c0, g0) = (closer.requests.load(SeqCst), good.requests.load(SeqCst));
    let mut bad = 0;
    for _ in 0..4 {
        let r = raw(
            p.addr,
            b"PATCH /jobs/7 HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
        bad += usize::from(r.status == 502);
    }
    let (c1, g1) = (closer.requests.load(SeqCst), good.requests.load(SeqCst));
    assert_eq!(
        (c1 - c0) + (g1 - g0),
        4,
        "each PATCH reached one server once"
    );
    assert!(c1 > c0, "C saw some");
    assert_eq!(bad, c1 - c0, "the ones C dropped were answered 502");
    assert_eq!(stat(&p, "policy_retries"), dropped as u64);
}

#[test]
fn without_a_retry_policy_a_dropped_post_is_never_sent_twice() {
    let (closer, good, p) = closer_and_good("");
    let statuses: Vec<u16> = (0..6)
        .map(|_| raw(p.addr, CANCEL).unwrap().status)
        .collect();
    let (c, g) = (closer.requests.load(SeqCst), good.requests.load(SeqCst));
    assert_eq!(
        c + g,
        6,
        "every POST reached exactly one server once: {statuses:?}"
    );
    assert!(c > 0, "C saw some");
    assert_eq!(statuses.iter().filter(|&&s| s == 502).count(), c);
    assert_eq!(stat(&p, "policy_retries"), 0);
}

#[test]
fn in_a_full_outage_retries_stay_within_the_budget() {
    // Every server drops every request; a policy and a high retry count would replay each
    // GET many times: the budget (20% of requests, plus 10 a second) caps the extra load.
    let m1 = MiniServer::start(|_, _, _| Act::Close);
    let m2 = MiniServer::start(|_, _, _| Act::Close);
    let cfg = config(
        &[
            server_json("M1", m1.port(), 0),
            server_json("M2", m2.port(), 0),
        ],
        "",
    );
    let args = [
        "--workers",
        "1",
        "--health-check",
        "off",
        "--eject-after",
        "0",
        "--retries",
        "10",
        "--retry-on",
        "reset",
    ];
    let p = Proxy::with_config(&cfg, &args);
    let n = 300;
    let start = Instant::now();
    for _ in 0..n {
        assert_eq!(get(p.addr, "/").status, 502);
    }
    let secs = start.elapsed().as_secs_f64();
    let attempts = m1.requests.load(SeqCst) + m2.requests.load(SeqCst);
    // The budget's start (10), its share (0.2 a request) and its floor (10 a second).
    let cap = n as f64 * 1.2 + 10.0 + 10.0 * secs.ceil();
    assert!(attempts > n, "some retries were made: {attempts}");
    assert!(
        (attempts as f64) <= cap,
        "{attempts} backend attempts for {n} requests in {secs:.1} s (cap {cap:.0})"
    );
}

/// `C`, which reads every request and drops the connection, and the echo server `E`,
/// behind a proxy with config `extra` (no health checks, no ejection, admin API on).
fn closer_and_echo(extra: &str) -> (MiniServer, Backend, Proxy) {
    let closer = MiniServer::start(|_, _, _| Act::Close);
    let echo = Backend::start("E", "fast", &[]);
    let servers = [
        server_json("C", closer.port(), 0),
        server_json("E", echo.port(), 0),
    ];
    let p = Proxy::with_config(&config(&servers, extra), &QUIET);
    (closer, echo, p)
}

#[test]
fn a_retry_policy_replays_a_dropped_post_with_its_body() {
    // C reads the whole POST and drops the connection; the echo server gets it again,
    // body and all, from the copy corelb kept (the body was sent, so without a policy
    // this would be a 502).
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"]}"#;
    let (closer, echo, p) = closer_and_echo(policy);
    let statuses = post_echo(&p, &"x".repeat(20_000), 4);
    assert!(statuses.iter().all(|&s| s == 200), "{statuses:?}");
    let dropped = closer.requests.load(SeqCst) as u64;
    assert!(dropped >= 2, "C saw {dropped}");
    assert_eq!(echo.requests(), 4, "each POST reached the echo server once");
    assert_eq!(stat(&p, "policy_retries"), dropped);
    assert_eq!(stat(&p, "replay_overflows"), 0);
}

/// Regression: an HTTP/2 request without a content-length goes chunked to an HTTP/1.1
/// server. Its head was built again for a retry, and if the client had ended its stream
/// meanwhile it framed no body at all, with the replayed body written after it raw: a
/// second request to the server, and an empty echo to the client. A retry keeps the
/// framing chosen when the stream opened.
#[test]
fn a_replayed_http2_post_without_a_length_keeps_its_chunked_framing() {
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"]}"#;
    let (closer, echo, p) = closer_and_echo(policy);
    let mut client = common::h2client::H2::connect(p.addr);
    let body = vec![b'c'; 3_000];
    for _ in 0..6 {
        assert_chunked_echo(&mut client, &body);
    }
    assert!(closer.requests.load(SeqCst) >= 2);
    assert_eq!(
        echo.requests(),
        6,
        "one request each, no smuggled second one"
    );
}

/// An HTTP/2 stream keeps what it sent for a replay in its own body, whichever server kind
/// takes it, within the same replay buffer as an HTTP/1.1 client's: a body that outgrows
/// it is counted and not replayed (a 502 where C dropped it); one that fits is.
#[test]
fn an_http2_post_outgrowing_the_replay_buffer_is_counted_and_not_replayed() {
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"],
                     "replayBufferBytes": 1024}"#;
    let (closer, echo, p) = closer_and_echo(policy);
    let mut client = common::h2client::H2::connect(p.addr);
    let big = vec![b'x'; 20_000];
    let statuses: Vec<u16> = (0..4).map(|_| h2_post_echo(&mut client, &big).0).collect();
    let dropped = closer.requests.load(SeqCst) as u64;
    assert!(dropped >= 1, "{statuses:?}");
    let failed = statuses.iter().filter(|&&s| s == 502).count() as u64;
    assert_eq!(failed, dropped, "{statuses:?}");
    // Every POST C dropped had outgrown the buffer (E may answer before it does).
    let overflows = stat(&p, "replay_overflows");
    assert!(overflows >= dropped, "{overflows} < {dropped}");
    assert_eq!(stat(&p, "policy_retries"), 0);
    let small = vec![b'y'; 500];
    for _ in 0..4 {
        assert_echoed_whole(&mut client, &small);
    }
    assert_eq!(stat(&p, "replay_overflows"), overflows, "a small body fits");
    assert!(echo.requests() >= 4);
}

/// `U` answers every request 503 (`--error-rate 1 --error-status 503`), `G` answers it;
/// round robin, with config `extra`.
fn unavailable_and_good(extra: &str) -> (Backend, Backend, Proxy) {
    let u = Backend::start("U", "fast", &["--error-rate", "1", "--error-status", "503"]);
    let g = Backend::start("G", "fast", &[]);
    let servers = [server_json("U", u.port(), 0), server_json("G", g.port(), 0)];
    let p = Proxy::with_config(&config(&servers, extra), &QUIET);
    (u, g, p)
}

const SUBMIT: &[u8] =
    b"POST /submit HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello";

#[test]
fn a_retry_policy_replays_a_503_elsewhere_and_forwards_the_last_one_as_it_is() {
    let policy = r#", "retryPolicy": {"maxAttempts": 3, "retryOn": ["503"], "methods": ["POST"]}"#;
    let (u, g, p) = unavailable_and_good(policy);
    for _ in 0..6 {
        let r = raw(p.addr, SUBMIT).unwrap();
        assert_eq!(
            (r.status, r.backend()),
            (200, "G".to_string()),
            "{}",
            r.text()
        );
    }
    // Each POST round robin gave U first went to G once more (its body with it).
    let replayed = u.requests();
    assert!(replayed >= 3, "U saw {replayed}");
    assert_eq!(g.requests(), 6);
    assert_eq!(stat(&p, "policy_retries"), replayed);
    // Counted by reason, in /stats and /metrics.
    let admin = p.admin.unwrap();
    let v: serde_json::Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
    assert_eq!(
        v["totals"]["retries_by_reason"]["503"], replayed,
        "{}",
        v["totals"]
    );
    assert_eq!(v["totals"]["retries_by_reason"]["reset"], 0);
    let metrics = get(admin, "/metrics").text();
    let line = format!("corelb_retries_by_reason_total{{reason=\"503\"}} {replayed}");
    assert!(metrics.lines().any(|l| l == line), "{line}");
    // A GET the policy does not cover: U's own 503 reaches the client, sent once.
    let (u0, g0) = (u.requests(), g.requests());
    let answers: Vec<Resp> = (0..4).map(|_| get(p.addr, "/")).collect();
    let from_u = answers.iter().filter(|r| r.backend() == "U").count() as u64;
    assert!(from_u > 0);
    assert!(answers
        .iter()
        .all(|r| (r.status == 503) == (r.backend() == "U")));
    assert_eq!((u.requests() - u0, g.requests() - g0), (from_u, 4 - from_u));
}

#[test]
fn when_every_server_answers_503_the_client_gets_the_last_503_not_a_502() {
    let u1 = Backend::start(
        "U1",
        "fast",
        &["--error-rate", "1", "--error-status", "503"],
    );
    let u2 = Backend::start(
        "U2",
        "fast",
        &["--error-rate", "1", "--error-status", "503"],
    );
    let servers = [
        server_json("U1", u1.port(), 0),
        server_json("U2", u2.port(), 0),
    ];
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "retryOn": ["503"]}"#;
    let p = Proxy::with_config(&config(&servers, policy), &QUIET);
    let r = get(p.addr, "/");
    assert_eq!(r.status, 503);
    // The server's own answer (its head and body), not one corelb made.
    assert!(r.backend().starts_with('U'), "{}", r.text());
    assert!(r.text().contains("from server U"), "{}", r.text());
    // Both servers were tried, once each.
    assert_eq!(u1.requests() + u2.requests(), 2);
}

/// `S` answers after 400 ms, `F` at once; round robin, with config `extra`.
fn slow_and_fast(extra: &str) -> (Backend, Backend, Proxy) {
    let s = Backend::start("S", "fixed:400", &[]);
    let f = Backend::start("F", "fast", &[]);
    let servers = [server_json("S", s.port(), 0), server_json("F", f.port(), 0)];
    let p = Proxy::with_config(&config(&servers, extra), &QUIET);
    (s, f, p)
}

#[test]
fn a_per_try_timeout_moves_a_post_the_policy_covers_to_another_server() {
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "perTryTimeout": "80ms",
                     "retryOn": ["per-try-timeout"], "methods": ["POST"]}"#;
    per_try_moves_four(policy, "policy_retries", |p| {
        let r = raw(p.addr, SUBMIT).unwrap();
        (r.status, r.backend())
    });
}

#[test]
fn a_per_try_timeout_moves_an_http2_get_to_another_http1_server() {
    // The stream's request goes whole in one write; the per-try timeout must still start
    // then. (It once started only if a later write moved bytes, so a GET waited for S.)
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "perTryTimeout": "80ms",
                     "retryOn": ["per-try-timeout"], "methods": ["GET"]}"#;
    let mut client = None;
    // (A GET is replayed as safe: counted in `retries`.)
    per_try_moves_four(policy, "retries", |p| {
        let c = client.get_or_insert_with(|| common::h2client::H2::connect(p.addr));
        let id = c.request("GET", "/", &[], true);
        let r = c.wait(id, Duration::from_secs(5));
        let backend = common::h2client::header(&r, "x-backend").unwrap_or("");
        (r.status, backend.to_string())
    });
}

/// Four requests, each sent by `send`, through S and F (`slow_and_fast(policy)`): F
/// answers each within 350 ms, the per-try timeout having moved those S had on, each
/// move counted in the proxy's `counter`.
fn per_try_moves_four(policy: &str, counter: &str, mut send: impl FnMut(&Proxy) -> (u16, String)) {
    let (s, f, p) = slow_and_fast(policy);
    for _ in 0..4 {
        let t = Instant::now();
        assert_eq!(send(&p), (200, "F".to_string()));
        let took = t.elapsed();
        assert!(took < Duration::from_millis(350), "{took:?}");
    }
    assert!(s.requests() >= 2);
    assert_eq!(f.requests(), 4);
    assert_eq!(stat(&p, counter), s.requests());
}

#[test]
fn a_per_try_timeout_without_per_try_timeout_in_retry_on_is_a_504_for_a_post() {
    // The timeout bounds each attempt; only `per-try-timeout` lets a POST go elsewhere.
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "perTryTimeout": "80ms",
                     "retryOn": ["reset"], "methods": ["POST"]}"#;
    let (s, f, p) = slow_and_fast(policy);
    let answers: Vec<(u16, Duration)> = (0..4)
        .map(|_| {
            let t = Instant::now();
            (raw(p.addr, SUBMIT).unwrap().status, t.elapsed())
        })
        .collect();
    let timed_out = answers.iter().filter(|(s, _)| *s == 504).count() as u64;
    assert!(timed_out >= 1, "{answers:?}");
    assert!(answers
        .iter()
        .all(|(st, t)| *st == 200 || (*st == 504 && *t < Duration::from_millis(350))));
    // Each POST reached one server once.
    assert_eq!(s.requests() + f.requests(), 4);
    assert_eq!(s.requests(), timed_out);
}

#[test]
fn a_retry_policy_with_a_backoff_waits_a_jittered_time_before_each_retry() {
    // Up to 200 ms with full jitter: each retry waits a random time within it.
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "retryOn": ["503"], "methods": ["POST"],
                     "initialBackoff": "200ms", "maxBackoff": "200ms"}"#;
    let (u, g, p) = unavailable_and_good(policy);
    let mut retried = Vec::new();
    for _ in 0..16 {
        let before = u.requests();
        let t = Instant::now();
        let r = raw(p.addr, SUBMIT).unwrap();
        let took = t.elapsed();
        assert_eq!((r.status, r.backend()), (200, "G".to_string()));
        if u.requests() > before {
            retried.push(took);
        }
    }
    assert!(retried.len() >= 8, "{retried:?}");
    assert_eq!(g.requests(), 16);
    // None waited past the ceiling (plus a loaded machine's slack); some waited a while
    // (all eight under 30 ms by chance: about 1 in 4 million).
    let longest = *retried.iter().max().unwrap();
    assert!(longest > Duration::from_millis(30), "{retried:?}");
    assert!(longest < Duration::from_millis(700), "{retried:?}");
}

/// POSTs `body` to /echo through `p` `n` times: the statuses, each echo checked whole.
fn post_echo(p: &Proxy, body: &str, n: usize) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let req = format!(
                "POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let r = raw(p.addr, req.as_bytes()).expect("an answer");
            if r.status == 200 {
                assert_eq!(r.body, body.as_bytes(), "the echo is the body, whole");
            }
            r.status
        })
        .collect()
}

#[test]
fn the_replay_buffer_bounds_what_a_policy_replays_and_overflows_are_counted() {
    let closer = MiniServer::start(|_, _, _| Act::Close);
    let echo = Backend::start("E", "fast", &[]);
    let servers = [
        server_json("C", closer.port(), 0),
        server_json("E", echo.port(), 0),
    ];
    // A 1 KiB buffer: a 20 KB body outgrows it, a 500-byte one fits.
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"],
                     "replayBufferBytes": 1024}"#;
    let p = Proxy::with_config(&config(&servers, policy), &QUIET);
    let big = post_echo(&p, &"x".repeat(20_000), 4);
    let dropped = closer.requests.load(SeqCst) as u64;
    assert!(dropped >= 2, "{big:?}");
    assert_eq!(
        big.iter().filter(|&&s| s == 502).count() as u64,
        dropped,
        "{big:?}"
    );
    assert_eq!(stat(&p, "replay_overflows"), 4, "every big POST outgrew it");
    assert_eq!(stat(&p, "policy_retries"), 0);
    let small = post_echo(&p, &"y".repeat(500), 4);
    assert!(small.iter().all(|&s| s == 200), "{small:?}");
    assert_eq!(stat(&p, "replay_overflows"), 4);

    // A 1 MiB buffer keeps a 300 KB body whole (no splice while it fits): replayed.
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"],
                     "replayBufferBytes": 1048576}"#;
    let p = Proxy::with_config(&config(&servers, policy), &QUIET);
    let before = closer.requests.load(SeqCst) as u64;
    let large = post_echo(&p, &"z".repeat(300_000), 4);
    assert!(large.iter().all(|&s| s == 200), "{large:?}");
    assert!(closer.requests.load(SeqCst) as u64 > before);
    assert_eq!(stat(&p, "replay_overflows"), 0);
}

#[test]
fn a_per_try_timeout_starts_once_the_whole_request_went_out() {
    // A client that takes 400 ms to upload its body is not the server's fault: an
    // 80 ms per-try timeout counts from the end of the body. (The server reads the whole
    // request before it answers.)
    let policy = r#", "retryPolicy": {"maxAttempts": 2, "perTryTimeout": "80ms",
                     "retryOn": ["per-try-timeout"], "methods": ["POST"]}"#;
    let server = MiniServer::start(|_, _, _| Act::Reply("done"));
    let servers = [server_json("M", server.port(), 0)];
    let p = Proxy::with_config(&config(&servers, policy), &QUIET);
    let mut s = connect(p.addr);
    s.write_all(
        b"POST /upload HTTP/1.1\r\nHost: t\r\nContent-Length: 8\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    for part in [b"sl", b"ow", b"ly", b"!!"] {
        std::thread::sleep(Duration::from_millis(100));
        s.write_all(part).unwrap();
    }
    let r = read_response(&mut s, &mut Vec::new(), "POST").expect("an answer");
    assert_eq!((r.status, r.text()), (200, "done".to_string()));
    assert_eq!(server.requests.load(SeqCst), 1);
}

/// POSTs `body` to /echo as an HTTP/2 stream on `client`: (status, the echoed body).
fn h2_post_echo(client: &mut common::h2client::H2, body: &[u8]) -> (u16, Vec<u8>) {
    let len = body.len().to_string();
    let id = client.request("POST", "/echo", &[("content-length", len.as_str())], false);
    client.data(id, body, true);
    let g = client.wait(id, Duration::from_secs(10));
    (g.status, g.body)
}

/// POSTs `body` to `/echo` over `client` without a content-length (so it goes chunked to
/// an HTTP/1.1 server): the answer is 200 and the echo is the body, whole.
fn assert_chunked_echo(client: &mut common::h2client::H2, body: &[u8]) {
    let id = client.request("POST", "/echo", &[], false);
    client.data(id, body, true);
    let g = client.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200, "{g:?}");
    assert!(
        g.body == body,
        "the echo is the body ({} bytes)",
        g.body.len()
    );
}

/// POSTs `body` to `/echo` over `client`: the answer is 200 and the echo is the body, whole.
fn assert_echoed_whole(client: &mut common::h2client::H2, body: &[u8]) {
    let (status, echoed) = h2_post_echo(client, body);
    assert_eq!(status, 200);
    assert!(
        echoed == body,
        "the echo is the body, whole ({} bytes)",
        echoed.len()
    );
}

#[test]
fn a_retry_policy_replays_an_http2_post_to_http1_servers_with_its_body() {
    // C reads the whole POST and drops the connection; the echo server gets it again from
    // what the stream kept of the body it sent.
    let policy = r#", "retryPolicy": {"retryOn": ["reset"], "methods": ["POST"]}"#;
    let (closer, echo, p) = closer_and_echo(policy);
    let mut client = common::h2client::H2::connect(p.addr);
    let body = vec![b'h'; 20_000];
    for _ in 0..4 {
        assert_echoed_whole(&mut client, &body);
    }
    let dropped = closer.requests.load(SeqCst) as u64;
    assert!(dropped >= 2, "C saw {dropped}");
    assert_eq!(echo.requests(), 4, "each POST reached the echo server once");
    assert_eq!(stat(&p, "policy_retries"), dropped);
}

#[test]
fn a_stream_an_h2c_server_refused_goes_to_an_http1_server_body_and_all() {
    // R refuses every stream (REFUSED_STREAM: not processed), possibly after corelb sent
    // some of its body and released it to the client's window; the retry on the HTTP/1.1
    // echo server sends it all again, and releases none of it twice.
    let refuser = Backend::start("R", "fast", &["--protocol", "h2c", "--refuse-rate", "1"]);
    let echo = Backend::start("E", "fast", &[]);
    let servers = [
        format!(
            r#"{{"name": "R", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}}"#,
            refuser.port()
        ),
        server_json("E", echo.port(), 0),
    ];
    let p = Proxy::with_config(&config(&servers, ""), &QUIET);
    let mut client = common::h2client::H2::connect(p.addr);
    let body = vec![b'r'; 30_000];
    for _ in 0..6 {
        assert_echoed_whole(&mut client, &body);
    }
    assert_eq!(echo.requests(), 6);
    assert!(stat(&p, "retries") >= 3);
    // Without a content-length the body goes chunked to the HTTP/1.1 server, as it would
    // have on a first attempt there (decided when the stream opened).
    for _ in 0..4 {
        assert_chunked_echo(&mut client, &body);
    }
    assert_eq!(
        echo.requests(),
        10,
        "one request each, no smuggled second one"
    );
}

/// Sends one GET through `p` over HTTP/1.1 or HTTP/2 and leaves (resets the connection)
/// once the proxy has decided to retry it elsewhere (its 503 from U), while the retry
/// waits out its backoff. Returns false if G answered instead (it had the first attempt,
/// or the jittered backoff ended before the client left).
fn leave_during_backoff(p: &Proxy, g: &Backend, http2: bool) -> bool {
    let (retries, answered) = (stat(p, "policy_retries"), g.requests());
    let h1 = (!http2).then(|| {
        let mut s = std::net::TcpStream::connect(p.addr).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
        s
    });
    let h2 = http2.then(|| {
        let mut h = h2client::H2::connect(p.addr);
        h.request("GET", "/", &[], true);
        h
    });
    let decided = eventually(Duration::from_secs(5), || {
        stat(p, "policy_retries") > retries || g.requests() > answered
    });
    assert!(decided, "no answer and no retry");
    // Gone for good (a reset, not a FIN: a half-closed client still gets its answer).
    let sock = h1.as_ref().or(h2.as_ref().map(|h| &h.sock)).unwrap();
    socket2::SockRef::from(sock)
        .set_linger(Some(Duration::ZERO))
        .unwrap();
    drop((h1, h2));
    g.requests() == answered
}

#[test]
fn a_client_that_leaves_during_a_retry_backoff_is_a_client_abort_on_both_protocols() {
    // Round robin gives U every first attempt (each retry's pick moves the rotation on to
    // G). A 5 s ceiling with full jitter: the client is gone before the retry would go.
    let policy = r#", "mode": "round-robin", "retryPolicy": {"maxAttempts": 2,
                     "retryOn": ["503"], "methods": ["GET"],
                     "initialBackoff": "5s", "maxBackoff": "5s"}"#;
    let (_u, g, p) = unavailable_and_good(policy);
    for http2 in [false, true] {
        let mut left = 0;
        for _ in 0..3 {
            let aborts = stat(&p, "client_aborts");
            let answered = g.requests();
            if !leave_during_backoff(&p, &g, http2) {
                continue;
            }
            left += 1;
            let counted = eventually(Duration::from_secs(5), || {
                stat(&p, "client_aborts") == aborts + 1
            });
            assert!(
                counted,
                "http2 {http2}: leaving mid-backoff is a client abort"
            );
            // The retry never went out: its pick was given back.
            assert_eq!(g.requests(), answered, "http2 {http2}");
        }
        assert!(
            left >= 2,
            "http2 {http2}: the client left mid-backoff {left} times of 3"
        );
    }
}

//! A panic in one exchange closes that exchange only: the worker's other connections
//! finish, the panic is counted, the exchange's pick of a server is given back, and the
//! worker keeps serving. The panic is injected with the test-only hook
//! `CORELB_TEST_PANIC_PATH` (a request for exactly that path panics once its server is
//! picked). Both tests set it to the same path, so running them at once is safe.

mod common;

use common::h2client::H2;
use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::time::Duration;

#[test]
fn a_panic_closes_only_its_own_exchange() {
    std::env::set_var("CORELB_TEST_PANIC_PATH", "/boom");
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = p.admin.expect("admin");

    // Three slow exchanges in flight on the one worker.
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = p.addr;
            std::thread::spawn(move || {
                let mut s = connect(addr);
                s.write_all(b"GET /delay/600 HTTP/1.1\r\nHost: t\r\n\r\n")
                    .unwrap();
                let mut pending = Vec::new();
                let first = read_response(&mut s, &mut pending, "GET").map(|r| r.status);
                // The same connection goes on serving after the panic.
                s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n").unwrap();
                let second = read_response(&mut s, &mut pending, "GET").map(|r| r.status);
                (first, second)
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(150));

    // The panicking request: its connection is closed without an answer.
    let mut s = connect(p.addr);
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /boom HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let _ = s.read_to_end(&mut got);
    assert!(
        got.is_empty(),
        "the panicking exchange got an answer: {got:?}"
    );

    for t in slow {
        assert_eq!(t.join().unwrap(), (Some(200), Some(200)));
    }
    assert_eq!(get(p.addr, "/").status, 200, "the worker still serves");
    let stats: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
    assert_eq!(stats["totals"]["panics"], 1, "{stats}");
    assert_eq!(stats["totals"]["worker_restarts"], 0);
    // Accounted just after the last response left: waited for, not raced.
    assert!(
        eventually(Duration::from_secs(5), || {
            let s: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
            s["backends"][0]["inflight"] == 0
        }),
        "the pick was given back"
    );
    assert!(eventually(Duration::from_secs(2), || {
        let s: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
        // The admin request's own connection is not a proxy client.
        s["totals"]["active_connections"] == 0
    }));
    let metrics = get(admin, "/metrics").text();
    assert!(metrics.contains("corelb_panics_total 1"), "{metrics}");
}

#[test]
fn a_panic_in_an_http2_stream_closes_its_session_only_and_gives_its_pick_back() {
    std::env::set_var("CORELB_TEST_PANIC_PATH", "/boom");
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = p.admin.expect("admin");
    let inflight = || {
        let s: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
        s["backends"][0]["inflight"].as_u64().unwrap_or(u64::MAX)
    };

    // Another session's stream, in flight at the server.
    let mut other = H2::connect(p.addr);
    let slow = other.request("GET", "/delay/600", &[], true);
    other.flush();
    assert!(eventually(Duration::from_secs(5), || inflight() == 1));

    // The panicking stream's session is closed without an answer; its pick (taken before
    // the panic) is given back.
    let mut h = H2::connect(p.addr);
    let id = h.request("GET", "/boom", &[], true);
    h.flush();
    let got = h.wait(id, Duration::from_secs(5));
    assert!(h.closed, "the panicking session was closed");
    assert_eq!(got.status, 0, "{got:?}");

    let got = other.wait(slow, Duration::from_secs(5));
    assert_eq!(got.status, 200, "the other session's stream finished");
    assert!(
        eventually(Duration::from_secs(5), || inflight() == 0),
        "every pick was given back"
    );
    let stats: Value = serde_json::from_slice(&get(admin, "/stats").body).unwrap();
    assert_eq!(stats["totals"]["panics"], 1, "{stats}");
    assert_eq!(get(p.addr, "/").status, 200, "the worker still serves");
}

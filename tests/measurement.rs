//! Measurement: the per-request CSV log and the HDR histogram dumps, through the real
//! binaries, and a log that cannot keep up never slowing a worker down.

mod common;

use common::*;
use std::io::{Read, Write};
use std::time::{Duration, Instant};

fn keep_alive_gets(p: &Proxy, n: usize, path: &str) {
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for _ in 0..n {
        s.write_all(format!("GET {path} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .unwrap();
        assert_eq!(
            read_response(&mut s, &mut pending, "GET").unwrap().status,
            200
        );
    }
}

#[test]
fn csv_has_one_row_per_request_with_the_seed_columns_first() {
    let (a, b) = (
        Backend::start("A", "fast", &[]),
        Backend::start("B", "fast", &[]),
    );
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let mut p = Proxy::start(
        &[&a, &b],
        &["--log-csv", csv.to_str().unwrap(), "--workers", "2"],
    );
    keep_alive_gets(&p, 40, "/some/path?q=1");
    for _ in 0..10 {
        assert_eq!(get(p.addr, "/x").status, 200);
    }
    // One local answer (malformed) is logged too.
    assert!(raw_all(p.addr, b"GET / HTTP/1.1\r\n\r\n").starts_with(b"HTTP/1.1 400"));
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let err = p.stderr_text();
    assert!(err.contains("51 records written, 0 dropped"), "{err}");

    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let header: Vec<String> = rdr.headers().unwrap().iter().map(String::from).collect();
    assert_eq!(
        header,
        [
            "timestamp",
            "backend_url",
            "latency_ms",
            "status_code",
            "routing_mode",
            "worker",
            "method",
            "path",
            "request_bytes",
            "response_bytes",
            "upstream_latency_us",
            "total_latency_us",
            "reused",
            "client_addr",
            "protocol",
            "upstream_protocol",
            "grpc_status",
            "tls",
            "attempts"
        ]
    );
    let rows: Vec<csv::StringRecord> = rdr.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), 51);
    let (mut to_a, mut to_b, mut bad) = (0, 0, 0);
    for r in &rows {
        match &r[1] {
            u if u == format!("http://{}", a.addr) => to_a += 1,
            u if u == format!("http://{}", b.addr) => to_b += 1,
            "" => {
                bad += 1;
                assert_eq!(&r[3], "400");
                continue;
            }
            other => panic!("unexpected backend_url {other}"),
        }
        assert_eq!(&r[3], "200");
        assert_eq!(&r[4], "round-robin");
        assert_eq!(&r[6], "GET");
        assert!(["/some/path?q=1", "/x"].contains(&&r[7]));
        let ts: f64 = r[0].parse().unwrap();
        assert!(ts > 1.6e9);
        let ms: f64 = r[2].parse().unwrap();
        let total: u64 = r[11].parse().unwrap();
        assert!((ms * 1000.0 - total as f64).abs() <= 1.0);
        assert!(r[9].parse::<u64>().unwrap() > 0, "response bytes");
        assert!(r[13].starts_with("127.0.0.1:"));
        assert_eq!(&r[18], "1", "one attempt each");
    }
    assert_eq!((to_a, to_b, bad), (25, 25, 1));
    // The keep-alive requests after the first reuse their upstream connection.
    assert!(rows.iter().filter(|r| &r[12] == "1").count() >= 38);
}

#[test]
fn hdr_dumps_are_written_on_ctrl_c_and_count_every_request() {
    let (a, b) = (
        Backend::start("A", "fast", &[]),
        Backend::start("B", "fixed:2", &[]),
    );
    let dir = tempfile::tempdir().unwrap();
    let hdr = dir.path().join("hdr");
    let mut p = Proxy::start(
        &[&a, &b],
        &["--hdr-dir", hdr.to_str().unwrap(), "--mode", "round-robin"],
    );
    keep_alive_gets(&p, 30, "/");
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let count = |name: &str| -> u64 {
        let text =
            std::fs::read_to_string(hdr.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        let line = text
            .lines()
            .find(|l| l.contains("Total count"))
            .expect("footer");
        line.split("Total count    =")
            .nth(1)
            .unwrap()
            .trim()
            .trim_end_matches(']')
            .trim()
            .parse()
            .unwrap()
    };
    assert_eq!(count("round-robin_persistent_total.hgrm"), 30);
    assert_eq!(count("round-robin_persistent_backend-A.hgrm"), 15);
    assert_eq!(count("round-robin_persistent_backend-B.hgrm"), 15);
    // B's 2 ms shows in its percentiles (milliseconds in the file).
    let b_text =
        std::fs::read_to_string(hdr.join("round-robin_persistent_backend-B.hgrm")).unwrap();
    let median: f64 = b_text
        .lines()
        .find(|l| l.contains(" 0.500000000000 "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap()
        .parse()
        .unwrap();
    assert!(median >= 2.0, "B's median {median} ms");
    let hlog = std::fs::read_to_string(hdr.join("round-robin_persistent.hlog")).unwrap();
    assert!(hlog.contains("Tag=total,") && hlog.contains("Tag=backend-B,"));
}

#[test]
fn a_full_log_queue_drops_records_and_never_blocks_a_worker() {
    let a = Backend::start("A", "fast", &[]);
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("log.fifo");
    assert!(std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    // Hold the read end open without reading: the logger's writes stall once the pipe fills.
    use std::os::unix::fs::OpenOptionsExt;
    const O_NONBLOCK: i32 = 0o4000;
    let reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let mut p = Proxy::start(
        &[&a],
        &[
            "--log-csv",
            fifo.to_str().unwrap(),
            "--log-queue",
            "16",
            "--workers",
            "1",
        ],
    );

    let n = 5000;
    let t = Instant::now();
    keep_alive_gets(&p, n, "/");
    let took = t.elapsed();
    assert!(
        took < Duration::from_secs(30),
        "{n} requests took {took:?} with a stalled log"
    );
    assert_eq!(a.requests(), n as u64);

    // Drain the pipe so the logger can finish, then stop.
    let drain = std::thread::spawn(move || {
        let mut r = reader;
        let mut all = Vec::new();
        let mut buf = [0u8; 65536];
        let end = Instant::now() + Duration::from_secs(20);
        while Instant::now() < end {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => all.extend_from_slice(&buf[..k]),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        all
    });
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let err = p.stderr_text();
    let line = err
        .lines()
        .find(|l| l.contains("records written"))
        .expect(&err);
    let nums: Vec<u64> = line
        .split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect();
    let (written, dropped) = (nums[nums.len() - 2], nums[nums.len() - 1]);
    assert!(dropped > 0, "{line}");
    assert_eq!(written + dropped, n as u64, "{line}");
    let text = drain.join().unwrap();
    assert_eq!(
        text.iter().filter(|&&c| c == b'\n').count() as u64,
        written + 1
    );
}

/// A client that gives up is neither a success nor a failure of the backend: it is logged
/// as 499, counted in `client_aborts`, and leaves no latency sample, no error and no
/// failure streak behind (a black hole whose clients give up must not look fast or well).
#[test]
fn client_aborts_are_499_and_not_the_backends_success() {
    let a = Backend::start("A", "fast", &[]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let mut p = Proxy::start(
        &[&a],
        &["--log-csv", csv.to_str().unwrap(), "--admin", "127.0.0.1:0"],
    );
    let admin = p.admin.unwrap();
    for _ in 0..5 {
        let mut s = connect(p.addr);
        s.write_all(b"GET /delay/3000 HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        // A client that gives up resets its connection (linger 0).
        socket2::SockRef::from(&s)
            .set_linger(Some(Duration::ZERO))
            .unwrap();
        drop(s);
    }
    let stats =
        || -> serde_json::Value { serde_json::from_slice(&get(admin, "/stats").body).unwrap() };
    assert!(eventually(Duration::from_secs(3), || stats()["totals"]
        ["client_aborts"]
        == 5));
    let s = stats();
    let b = &s["backends"][0];
    assert_eq!(b["inflight"], 0, "{s}");
    assert_eq!(b["errors"], 0, "{s}");
    assert_eq!(
        b["requests"], 0,
        "no completed exchange, no latency sample: {s}"
    );
    assert_eq!(b["health"]["state"], "up");
    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let mut rdr = csv::Reader::from_path(&csv).unwrap();
    let statuses: Vec<String> = rdr.records().map(|r| r.unwrap()[3].to_string()).collect();
    assert_eq!(statuses, vec!["499"; 5]);
}

//! Upgrade tunnels end to end: a real WebSocket client (the `tungstenite` crate) through
//! the real `corelb` to `corelb-backend`'s `/ws` echo, and raw byte tunnels to its
//! `/upgrade-echo`: frames both ways, ping/pong, closes from each side, half-close,
//! backpressure, the tunnel timeout, a 101 nobody asked for, accounting, and the memory
//! of 1,000 idle tunnels.

mod common;

use common::*;
use serde_json::Value;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::time::{Duration, Instant};
use tungstenite::protocol::frame::coding::CloseCode;
use tungstenite::{Error as WsError, Message};

fn stats(admin: SocketAddr) -> Value {
    let r = get(admin, "/stats");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).expect("/stats is JSON")
}

fn total(admin: SocketAddr, key: &str) -> u64 {
    stats(admin)["totals"][key].as_u64().expect(key)
}

type Ws = tungstenite::WebSocket<TcpStream>;

fn ws_connect(addr: SocketAddr) -> (Ws, tungstenite::handshake::client::Response) {
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    tungstenite::client(format!("ws://{addr}/ws"), s).expect("WebSocket handshake")
}

/// Reads until the peer's close completes; returns the close frame received, if any.
fn read_to_close(ws: &mut Ws) -> Option<tungstenite::protocol::CloseFrame> {
    let mut frame = None;
    loop {
        match ws.read() {
            Ok(Message::Close(f)) => frame = f,
            Ok(m) => panic!("unexpected {m:?}"),
            Err(WsError::ConnectionClosed) => return frame,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Sends an upgrade request for `/upgrade-echo` and reads the 101 head; returns the
/// stream and the bytes that followed the head.
fn raw_upgrade(addr: SocketAddr, extra: &[u8]) -> (TcpStream, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut req =
        b"GET /upgrade-echo HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n"
            .to_vec();
    req.extend_from_slice(extra);
    s.write_all(&req).unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    let end = loop {
        if let Some(i) = got.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "EOF before the 101 head");
        got.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&got[..end]).into_owned();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(head.contains("\r\nUpgrade: echo\r\n"), "{head}");
    assert!(head.contains("\r\nConnection: upgrade\r\n"), "{head}");
    (s, got[end..].to_vec())
}

#[test]
fn websocket_frames_ping_and_a_client_close_pass_through() {
    let a = Backend::start("A", "fast", &[]);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let csv_s = csv.to_str().unwrap();
    let p = Proxy::start(
        &[&a],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--log-csv",
            csv_s,
        ],
    );
    let admin = p.admin.unwrap();
    let (mut ws, resp) = ws_connect(p.addr);
    assert_eq!(resp.status(), 101);
    assert_eq!(resp.headers()["x-backend"], "A");
    assert_eq!(resp.headers()["via"], "1.1 corelb");
    // (The tunnel starts just after the 101 head is written.)
    assert!(eventually(Duration::from_secs(5), || total(
        admin,
        "tunnels_open"
    ) == 1));

    ws.send(Message::text("hello")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("hello"));
    let blob: Vec<u8> = (0..50_000u32).map(|i| (i * 7) as u8).collect();
    ws.send(Message::binary(blob.clone())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::binary(blob.clone()));
    ws.send(Message::Ping(b"p1".to_vec().into())).unwrap();
    assert_eq!(ws.read().unwrap(), Message::Pong(b"p1".to_vec().into()));
    // Many small messages in flight at once come back in order.
    for i in 0..200 {
        ws.write(Message::text(format!("m{i}"))).unwrap();
    }
    ws.flush().unwrap();
    for i in 0..200 {
        assert_eq!(ws.read().unwrap(), Message::text(format!("m{i}")));
    }

    ws.close(None).unwrap();
    read_to_close(&mut ws);
    // The backend closed after echoing the close; corelb passed its EOF on. The tunnel
    // ends when the client's side is done too.
    drop(ws);
    assert!(eventually(Duration::from_secs(5), || total(
        admin,
        "tunnels_open"
    ) == 0));
    let t = &stats(admin)["totals"];
    assert_eq!(t["tunnels"], 1);
    assert!(t["tunnel_bytes_up"].as_u64().unwrap() > 50_000, "{t}");
    assert!(t["tunnel_bytes_down"].as_u64().unwrap() > 50_000, "{t}");
    // Accounted once, as a 101 (histograms reach /stats once a second).
    assert!(eventually(Duration::from_secs(5), || stats(admin)
        ["totals"]["codes"]["101"]
        == 1));
    let metrics = get(admin, "/metrics").text();
    assert!(metrics.contains("\ncorelb_tunnels_open 0\n"), "{metrics}");
    assert!(metrics.contains("\ncorelb_tunnels_total 1\n"), "{metrics}");

    // One CSV line for the tunnel, written when it ended: status 101, bytes each way.
    let line = (0..50)
        .find_map(|_| {
            let text = std::fs::read_to_string(&csv).unwrap_or_default();
            let line = text.lines().find(|l| l.contains(",101,"));
            if line.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            line.map(str::to_string)
        })
        .expect("a CSV line with status 101");
    let header = std::fs::read_to_string(&csv).unwrap();
    let cols: Vec<&str> = header.lines().next().unwrap().split(',').collect();
    let vals: Vec<&str> = line.split(',').collect();
    let col = |name: &str| vals[cols.iter().position(|c| *c == name).unwrap()];
    assert_eq!(col("status_code"), "101");
    assert_eq!(col("path"), "/ws");
    assert!(col("request_bytes").parse::<u64>().unwrap() > 50_000);
    assert!(col("response_bytes").parse::<u64>().unwrap() > 50_000);
    let upstream_us: u64 = col("upstream_latency_us").parse().unwrap();
    let total_us: u64 = col("total_latency_us").parse().unwrap();
    assert!(upstream_us < total_us, "{line}");
}

#[test]
fn websocket_close_initiated_by_the_server() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let (mut ws, _) = ws_connect(p.addr);
    ws.send(Message::text("before")).unwrap();
    assert_eq!(ws.read().unwrap(), Message::text("before"));
    // The backend closes first on "/close"; tungstenite answers its close frame.
    ws.send(Message::text("/close")).unwrap();
    let frame = read_to_close(&mut ws).expect("the server's close frame");
    assert_eq!(frame.code, CloseCode::Normal);
    assert_eq!(frame.reason.as_str(), "bye");
    drop(ws);
    let admin = p.admin.unwrap();
    assert!(eventually(Duration::from_secs(5), || {
        let t = &stats(admin)["totals"];
        t["tunnels_open"] == 0 && t["upstream_connections_open"] == 0
    }));
}

#[test]
fn raw_upgrade_echo_with_half_close_and_backpressure() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1"]);
    // Bytes sent right behind the request head are the new protocol's: they are kept.
    let (mut s, mut got) = raw_upgrade(p.addr, b"early:");
    let data: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let mut w = s.try_clone().unwrap();
    let sent = data.clone();
    // Written from another thread while this one reads: the echo must not deadlock,
    // and memory stays bounded since each side reads only as the other takes.
    let writer = std::thread::spawn(move || {
        w.write_all(&sent).unwrap();
        // Half-close: the echo keeps coming after our EOF, then the backend's EOF.
        w.shutdown(Shutdown::Write).unwrap();
    });
    s.read_to_end(&mut got).unwrap();
    writer.join().unwrap();
    assert_eq!(got.len(), 6 + data.len());
    assert_eq!(&got[..6], b"early:");
    assert!(got[6..] == data[..], "echo differs");
}

#[test]
fn a_101_without_an_upgrade_request_is_a_502() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1"]);
    for req in [
        &b"GET /upgrade-echo HTTP/1.1\r\nHost: t\r\n\r\n"[..],
        b"GET /upgrade-echo HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\n\r\n",
        b"GET /upgrade-echo HTTP/1.1\r\nHost: t\r\nConnection: upgrade\r\n\r\n",
        b"GET /upgrade-echo HTTP/1.0\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n",
    ] {
        let r = raw(p.addr, req).expect("an answer");
        assert_eq!(r.status, 502, "{}", String::from_utf8_lossy(req));
    }
    // Another answer to an upgrade request is an ordinary response, and the client
    // connection (which may have sent the new protocol's bytes) is not reused.
    let r = raw(
        p.addr,
        b"GET /hello HTTP/1.1\r\nHost: t\r\nUpgrade: echo\r\nConnection: upgrade\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200);
    assert_eq!(r.header("Connection"), Some("close"));
    assert_eq!(r.header("Upgrade"), None);
    // CONNECT stays refused.
    let r = raw(p.addr, b"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n").unwrap();
    assert_eq!(r.status, 405);
}

#[test]
fn the_tunnel_timeout_closes_both_sides() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(
        &[&a],
        &[
            "--workers",
            "1",
            "--admin",
            "127.0.0.1:0",
            "--tunnel-timeout",
            "1s",
            // Longer than the test: only the tunnel timeout may close it.
            "--idle-timeout",
            "60s",
            "--upstream-timeout",
            "60s",
        ],
    );
    let admin = p.admin.unwrap();
    let (mut s, _) = raw_upgrade(p.addr, b"");
    // Traffic keeps it open past the timeout.
    let start = Instant::now();
    let mut buf = [0u8; 16];
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        s.write_all(b"x").unwrap();
        s.read_exact(&mut buf[..1]).unwrap();
    }
    assert!(start.elapsed() > Duration::from_millis(1500));
    // Then silence: closed after about a second.
    let idle = Instant::now();
    assert_eq!(s.read(&mut buf).unwrap(), 0, "EOF from corelb");
    let waited = idle.elapsed();
    assert!(
        waited >= Duration::from_millis(800) && waited < Duration::from_secs(4),
        "{waited:?}"
    );
    assert!(eventually(Duration::from_secs(3), || {
        let t = &stats(admin)["totals"];
        t["tunnels_open"] == 0 && t["upstream_connections_open"] == 0
    }));
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("VmRSS")
}

#[test]
fn a_thousand_idle_tunnels_through_one_worker() {
    const N: usize = 1000;
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let admin = p.admin.unwrap();
    let start = Instant::now();
    // Warm up (buffers, slab growth of a first batch) before the baseline.
    let mut warm: Vec<TcpStream> = (0..20).map(|_| raw_upgrade(p.addr, b"").0).collect();
    for s in &mut warm {
        s.write_all(b"w").unwrap();
        let mut b = [0u8; 1];
        s.read_exact(&mut b).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = rss_kib(p.pid());
    let mut tunnels = Vec::with_capacity(N);
    for i in 0..N {
        let (mut s, _) = raw_upgrade(p.addr, b"");
        let msg = format!("t{i};");
        s.write_all(msg.as_bytes()).unwrap();
        let mut b = vec![0u8; msg.len()];
        s.read_exact(&mut b).unwrap();
        assert_eq!(b, msg.as_bytes());
        tunnels.push(s);
    }
    let open = (N + warm.len()) as u64;
    assert!(eventually(Duration::from_secs(5), || total(
        admin,
        "tunnels_open"
    ) == open));
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_kib(p.pid());
    let per = (after.saturating_sub(before) * 1024) as f64 / N as f64;
    eprintln!(
        "corelb RSS: {before} KiB before, {after} KiB with {N} more idle tunnels: \
         {per:.0} B per tunnel (set up in {:?})",
        start.elapsed()
    );
    // Idle tunnels hold no buffer: well under one 16 KiB buffer each.
    assert!(per < 4096.0, "{per} B per idle tunnel");
    // Every one still works.
    for (i, s) in tunnels.iter_mut().enumerate().step_by(97) {
        s.write_all(b"again").unwrap();
        let mut b = [0u8; 5];
        s.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"again", "tunnel {i}");
    }
    drop(tunnels);
    drop(warm);
    assert!(eventually(Duration::from_secs(10), || total(
        admin,
        "tunnels_open"
    ) == 0));
    assert!(start.elapsed() < Duration::from_secs(60));
}

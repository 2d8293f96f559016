//! WebSocket over HTTP/2 (RFC 8441) end to end: corelb announces
//! SETTINGS_ENABLE_CONNECT_PROTOCOL, takes an extended CONNECT with `:protocol websocket`
//! as an HTTP/1.1 `Upgrade: websocket` to a real WebSocket backend (corelb-backend's `/ws`
//! echo), answers the stream 200 once the backend's 101 carries the right accept value, and
//! relays the frames both ways until either side ends. Raw frames on corelb's own codec.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::h2client::{frame, read_frame, H2};
use common::*;

/// A masked client frame (RFC 6455 §5.2): FIN, `opcode`, `payload`.
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

/// The server's unmasked frame for `opcode` and `payload`.
fn server_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(n as u8),
        n if n <= 0xffff => {
            f.push(126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(payload);
    f
}

/// Pumps until stream `id`'s body holds at least `n` bytes (or `limit` passes).
fn body_at_least(h: &mut H2, id: u32, n: usize, limit: Duration) -> Vec<u8> {
    let end = Instant::now() + limit;
    while Instant::now() < end && h.got.get(&id).is_none_or(|g| g.body.len() < n) && !h.closed {
        h.pump();
    }
    h.got.get(&id).map(|g| g.body.clone()).unwrap_or_default()
}

#[test]
fn settings_announce_extended_connect() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &[]);
    let mut s = TcpStream::connect(p.addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").unwrap();
    s.write_all(&frame(4, 0, 0, &[])).unwrap();
    let (_, _, payload) = read_frame(&mut s, &[4]).expect("the server's SETTINGS");
    let params: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(params.contains(&(0x8, 1)), "{params:?}");
}

#[test]
fn a_websocket_over_http2_reaches_an_http11_backend_and_echoes_both_ways() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--admin", "127.0.0.1:0"]);
    let mut h = H2::connect(p.addr);
    let id = h.request(
        "CONNECT",
        "/ws",
        &[(":protocol", "websocket"), ("sec-websocket-version", "13")],
        false,
    );
    let end = Instant::now() + Duration::from_secs(10);
    while Instant::now() < end && h.got.get(&id).is_none_or(|g| g.status == 0) {
        h.pump();
    }
    let got = h.got[&id].clone();
    assert_eq!(got.status, 200, "{got:?}");
    assert!(!got.done, "the stream stays open for the tunnel");
    let mut want = Vec::new();
    for msg in [&b"hello"[..], &[b'x'; 40_000][..], b"over h2"] {
        h.data(id, &client_frame(1, msg), false);
        want.extend(server_frame(1, msg));
        let body = body_at_least(&mut h, id, want.len(), Duration::from_secs(10));
        assert!(
            body == want,
            "{} bytes back, {} expected",
            body.len(),
            want.len()
        );
    }
    // A close from the client: the backend echoes it and closes; the stream ends.
    h.data(id, &client_frame(8, &[0x03, 0xe8]), false);
    want.extend(server_frame(8, &[0x03, 0xe8]));
    let got = h.wait(id, Duration::from_secs(10));
    assert!(got.done, "{got:?}");
    assert_eq!(got.body, want);
    // END_STREAM, then at most a NO_ERROR reset (the client's side never ended: RFC 9113
    // §8.1 lets the server tell it to stop sending).
    assert!(
        got.reset
            .is_none_or(|c| c == corelb::h2::ErrorCode::NO_ERROR),
        "{got:?}"
    );
    assert_eq!(stat(&p, "tunnels"), 1);
    // The backend saw an HTTP/1.1 upgrade, and the connection served only the tunnel.
    let r = get(p.addr, "/");
    assert_eq!(r.status, 200);
}

#[test]
fn the_backend_sees_an_http11_websocket_upgrade() {
    // A backend that prints the request head it got, then answers a correct 101.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 4096];
        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = c.read(&mut b).unwrap();
            if n == 0 {
                return;
            }
            head.extend_from_slice(&b[..n]);
        }
        let text = String::from_utf8_lossy(&head).to_string();
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap_or("")
            .trim()
            .to_string();
        let accept = {
            use base64::Engine;
            use sha1::{Digest, Sha1};
            let mut h = Sha1::new();
            h.update(key.as_bytes());
            h.update(b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11");
            base64::engine::general_purpose::STANDARD.encode(h.finalize())
        };
        let _ = tx.send(text);
        let _ = c.write_all(
            format!("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\nSec-WebSocket-Protocol: chat\r\n\r\nfirst").as_bytes(),
        );
        std::thread::sleep(Duration::from_millis(200));
    });
    let json =
        format!(r#"{{"servers": [{{"name": "W", "address": "127.0.0.1", "port": {port}}}]}}"#);
    let p = Proxy::with_config(&json, &["--health-check", "off"]);
    let mut h = H2::connect(p.addr);
    let id = h.request(
        "CONNECT",
        "/chat?room=1",
        &[
            (":protocol", "websocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-protocol", "chat, superchat"),
            ("origin", "https://corelb.test"),
        ],
        false,
    );
    let head = rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let first = head.lines().next().unwrap();
    assert_eq!(first, "GET /chat?room=1 HTTP/1.1", "{head}");
    for line in [
        "Host: corelb.test",
        "Upgrade: websocket",
        "Connection: Upgrade",
        "sec-websocket-version: 13",
        "sec-websocket-protocol: chat, superchat",
        "origin: https://corelb.test",
    ] {
        assert!(head.lines().any(|l| l == line), "{line}: {head}");
    }
    assert!(
        !head.contains("Content-Length") && !head.contains("chunked"),
        "{head}"
    );
    let body = body_at_least(&mut h, id, 5, Duration::from_secs(10));
    let got = h.got[&id].clone();
    assert_eq!(got.status, 200);
    assert_eq!(header_of(&got, "sec-websocket-protocol"), Some("chat"));
    assert_eq!(
        header_of(&got, "sec-websocket-accept"),
        None,
        "an HTTP/1.1 detail"
    );
    assert_eq!(body, b"first", "bytes after the 101 are the tunnel's");
    // The backend closes: the stream ends cleanly.
    let got = h.wait(id, Duration::from_secs(10));
    assert!(got.done, "{got:?}");
    assert!(
        got.reset
            .is_none_or(|c| c == corelb::h2::ErrorCode::NO_ERROR),
        "{got:?}"
    );
}

fn header_of<'a>(g: &'a common::h2client::Got, name: &str) -> Option<&'a str> {
    g.headers
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.as_str())
}

#[test]
fn a_wrong_accept_value_is_a_502_and_other_protocols_and_plain_connect_are_refused() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = l.accept() {
            let mut b = [0u8; 4096];
            let _ = c.read(&mut b);
            let _ = c.write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: bm90IHRoZSByaWdodCBvbmU=\r\n\r\n");
            std::thread::sleep(Duration::from_millis(500));
        }
    });
    let json =
        format!(r#"{{"servers": [{{"name": "W", "address": "127.0.0.1", "port": {port}}}]}}"#);
    let p = Proxy::with_config(&json, &["--health-check", "off"]);
    let mut h = H2::connect(p.addr);
    let id = h.request("CONNECT", "/ws", &[(":protocol", "websocket")], false);
    let got = h.wait(id, Duration::from_secs(10));
    assert_eq!(got.status, 502, "{got:?}");
    let id = h.request("CONNECT", "/x", &[(":protocol", "webtransport")], false);
    assert_eq!(h.wait(id, Duration::from_secs(10)).status, 501);
    let id = h.raw_headers(
        &[(":method", "CONNECT"), (":authority", "example.com:443")],
        false,
    );
    assert_eq!(h.wait(id, Duration::from_secs(10)).status, 405);
    // :protocol without CONNECT is malformed: a stream error.
    let id = h.request("GET", "/", &[(":protocol", "websocket")], true);
    let got = h.wait(id, Duration::from_secs(10));
    assert!(got.reset.is_some(), "{got:?}");
}

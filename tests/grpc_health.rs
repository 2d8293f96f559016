//! gRPC active health checks against the real `corelb-backend --protocol grpc`: an h2c
//! server is checked with `grpc.health.v1.Health/Check` by default, goes down within `fall`
//! checks once it says NOT_SERVING and comes back within `rise` once it says SERVING again;
//! a wrong service name fails; an HTTP/1.1 server keeps its TCP check. State, check kind
//! and the last check's reason are read from `/stats`, and the `-d` table shows them.
//! The same check against grpcio's reference health servicer (tests/grpc/tts_server.py)
//! runs when the gRPC venv exists (tests/grpc/setup.sh), and says it skipped otherwise.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::*;
use corelb::h2::{Connection, Event, Limits, Settings};

/// One unary gRPC call over a fresh h2c connection (blocking): the grpc-status and the
/// response body (framed messages).
fn grpc_unary(addr: SocketAddr, path: &str, msg: &[u8]) -> (u32, Vec<u8>) {
    let mut sock = TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut c = Connection::client(Settings::default(), Limits::default());
    let id = c.open_stream().unwrap();
    let authority = addr.to_string();
    let head: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":path", path.as_bytes()),
        (b":authority", authority.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    c.send_headers(id, &head, false).unwrap();
    let mut framed = vec![0];
    framed.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    framed.extend_from_slice(msg);
    assert_eq!(c.send_data(id, &framed, true).unwrap(), framed.len());
    let (mut inbuf, mut body, mut status) = (Vec::new(), Vec::new(), None);
    loop {
        let out = c.pending_output().to_vec();
        sock.write_all(&out).unwrap();
        c.advance_output(out.len());
        if let Some(s) = status {
            return (s, body);
        }
        let mut chunk = [0u8; 16384];
        let n = sock.read(&mut chunk).unwrap();
        assert!(n > 0, "connection closed before the call ended");
        inbuf.extend_from_slice(&chunk[..n]);
        let used = c.recv(&inbuf, Instant::now()).unwrap();
        inbuf.drain(..used);
        while let Some(ev) = c.poll_event() {
            let grpc_status = |f: &corelb::h2::Fields| {
                f.get(b"grpc-status")
                    .map(|v| std::str::from_utf8(v).unwrap().parse::<u32>().unwrap())
            };
            match ev {
                Event::Headers {
                    fields, end_stream, ..
                } if end_stream => status = grpc_status(&fields),
                Event::Data { stream, data, .. } => {
                    body.extend_from_slice(data);
                    let n = data.len();
                    c.release(stream, n);
                }
                Event::Trailers { fields, .. } => status = grpc_status(&fields),
                Event::Reset { .. } | Event::GoAway { .. } => panic!("call failed: {ev:?}"),
                _ => {}
            }
        }
    }
}

/// `tts.Control/SetServing{serving}` on the backend: what its health check answers next.
fn set_serving(b: &Backend, on: bool) {
    let msg: &[u8] = if on { &[0x08, 0x01] } else { &[] };
    let (status, _) = grpc_unary(b.addr, "/tts.Control/SetServing", msg);
    assert_eq!(status, 0, "SetServing");
}

fn grpc_backend(id: &str) -> Backend {
    Backend::start(id, "fast", &["--protocol", "grpc"])
}

fn server(name: &str, port: u16, protocol: &str) -> String {
    format!(
        r#"{{"name": "{name}", "address": "127.0.0.1", "port": {port}, "protocol": "{protocol}"}}"#
    )
}

/// Checks every 0.2 s, rise 2, fall 2.
fn config(servers: &[String], extra: &str) -> String {
    format!(
        r#"{{"heartbeatInterval": 0.2, "heartbeatTimeout": 0.5, "servers": [{}],
            "healthCheck": {{"rise": 2, "fall": 2 {extra}}}}}"#,
        servers.join(", ")
    )
}

/// The `/stats` health of backend `name`: (state, check kind, last check).
fn health(p: &Proxy, name: &str) -> (String, String, String) {
    let r = get(p.admin.expect("admin on"), "/stats");
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let b = v["backends"]
        .as_array()
        .unwrap()
        .iter()
        .find(|b| b["name"] == name)
        .unwrap_or_else(|| panic!("no backend {name}"));
    let h = &b["health"];
    let s = |k: &str| h[k].as_str().unwrap_or_default().to_string();
    (s("state"), s("check"), s("last_check"))
}

/// Waits until backend `name`'s health is `want` (state, last check); returns how long.
#[track_caller]
fn wait_for(p: &Proxy, name: &str, state: &str, last: &str, limit: Duration) -> Duration {
    let start = Instant::now();
    let mut seen = health(p, name);
    let ok = eventually(limit, || {
        seen = health(p, name);
        seen.0 == state && seen.2 == last
    });
    assert!(ok, "{name}: wanted {state} / {last}, still {seen:?}");
    start.elapsed()
}

#[test]
fn not_serving_goes_down_within_fall_checks_and_back_within_rise() {
    let g = grpc_backend("G");
    let a = Backend::start("A", "fast", &[]);
    let cfg = config(
        &[server("A", a.port(), "http1"), server("G", g.port(), "h2c")],
        "",
    );
    let mut p = Proxy::with_config(&cfg, &["-d", "--admin", "127.0.0.1:0"]);
    // No check type chosen: the h2c server gets the gRPC check, the HTTP/1.1 one TCP.
    wait_for(&p, "G", "up", "grpc SERVING", Duration::from_secs(3));
    wait_for(&p, "A", "up", "tcp connect ok", Duration::from_secs(3));
    assert_eq!(health(&p, "G").1, "grpc");
    assert_eq!(health(&p, "A").1, "tcp");
    // A SERVING server stays up.
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(health(&p, "G").0, "up");

    set_serving(&g, false);
    // fall = 2 checks 0.2 s apart (±10% jitter), plus one check already under way.
    let down = wait_for(&p, "G", "down", "grpc NOT_SERVING", Duration::from_secs(3));
    assert!(down < Duration::from_millis(1500), "down after {down:?}");
    assert_eq!(health(&p, "A").0, "up", "A is not affected");
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(health(&p, "G").0, "down", "stays down while NOT_SERVING");

    set_serving(&g, true);
    let up = wait_for(&p, "G", "up", "grpc SERVING", Duration::from_secs(3));
    assert!(up < Duration::from_millis(1500), "up after {up:?}");

    p.signal("INT");
    assert_eq!(p.wait_exit(Duration::from_secs(10)), Some(0));
    let log = p.stderr_text();
    assert!(
        log.contains("is DOWN: 2 consecutive failed checks (grpc NOT_SERVING)"),
        "{log}"
    );
    assert!(
        log.contains("is UP: 2 consecutive successful checks"),
        "{log}"
    );
    let row = log
        .lines()
        .find(|l| l.trim_start().starts_with("G ") && l.contains("grpc "))
        .unwrap_or_else(|| panic!("no table row for G: {log}"));
    assert!(row.contains(&g.addr.to_string()), "{row}");
    assert!(
        log.lines()
            .any(|l| l.trim_start().starts_with("A ") && l.contains(" tcp ")),
        "{log}"
    );
}

#[test]
fn a_wrong_service_name_fails_and_the_right_one_passes() {
    let g = grpc_backend("G");
    let h = grpc_backend("H");
    let cfg = config(
        &[server("G", g.port(), "h2c"), server("H", h.port(), "h2c")],
        "",
    );
    // The flag chooses the service for every server.
    let p = Proxy::with_config(
        &cfg,
        &["--health-check", "grpc:nope", "--admin", "127.0.0.1:0"],
    );
    // The backend answers an unknown service with grpc-status NOT_FOUND.
    wait_for(
        &p,
        "G",
        "down",
        "grpc-status 5 NOT_FOUND",
        Duration::from_secs(3),
    );
    wait_for(
        &p,
        "H",
        "down",
        "grpc-status 5 NOT_FOUND",
        Duration::from_secs(3),
    );
    drop(p);
    let cfg = config(
        &[server("G", g.port(), "h2c")],
        r#", "type": "grpc", "service": "tts.TTS""#,
    );
    let p = Proxy::with_config(&cfg, &["--admin", "127.0.0.1:0"]);
    wait_for(&p, "G", "up", "grpc SERVING", Duration::from_secs(3));
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        health(&p, "G"),
        ("up".into(), "grpc".into(), "grpc SERVING".into())
    );
}

#[test]
fn a_grpc_check_on_a_dead_or_http1_server_fails() {
    let a = Backend::start("A", "fast", &[]);
    let dead = dead_port();
    let g = grpc_backend("G");
    let cfg = config(
        &[
            server("A", a.port(), "h2c"),
            server("D", dead, "h2c"),
            server("G", g.port(), "h2c"),
        ],
        "",
    );
    let p = Proxy::with_config(&cfg, &["--admin", "127.0.0.1:0"]);
    // An HTTP/1.1 server declared h2c does not speak HTTP/2: its check fails.
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut seen = health(&p, "A");
    while Instant::now() < deadline && seen.0 != "down" {
        std::thread::sleep(Duration::from_millis(50));
        seen = health(&p, "A");
    }
    assert_eq!(seen.0, "down", "{seen:?}");
    eprintln!("REASON {seen:?}");
    assert!(
        seen.2.starts_with("grpc ") || seen.2.contains("reset"),
        "{seen:?}"
    );
    wait_for(
        &p,
        "D",
        "down",
        "connection refused",
        Duration::from_secs(3),
    );
    wait_for(&p, "G", "up", "grpc SERVING", Duration::from_secs(3));
}

/// grpcio's own health servicer (tests/grpc/tts_server.py, the reference implementation)
/// on a free port, killed on drop; `None` when the venv is missing.
struct RefServer(std::process::Child, SocketAddr);

impl RefServer {
    fn start() -> Option<RefServer> {
        use std::io::BufRead;
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let python = common::venv_python()?;
        let mut child = std::process::Command::new(python)
            .arg(root.join("tests/grpc/tts_server.py"))
            .args(["--port", "0", "--id", "R", "--workers", "4"])
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start tts_server.py");
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let line = lines
            .next()
            .expect("tts_server.py printed nothing")
            .unwrap();
        let addr = line
            .rsplit(' ')
            .next()
            .and_then(|a| a.parse().ok())
            .unwrap_or_else(|| panic!("unexpected line {line:?}"));
        Some(RefServer(child, addr))
    }
}

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn grpcio_reference_health_servicer_is_understood() {
    let Some(r) = RefServer::start() else {
        return;
    };
    let cfg = config(&[server("R", r.1.port(), "h2c")], "");
    let p = Proxy::with_config(&cfg, &["--admin", "127.0.0.1:0"]);
    wait_for(&p, "R", "up", "grpc SERVING", Duration::from_secs(5));
    let (status, _) = grpc_unary(r.1, "/tts.Control/SetServing", &[]);
    assert_eq!(status, 0);
    wait_for(&p, "R", "down", "grpc NOT_SERVING", Duration::from_secs(5));
    let (status, _) = grpc_unary(r.1, "/tts.Control/SetServing", &[0x08, 0x01]);
    assert_eq!(status, 0);
    wait_for(&p, "R", "up", "grpc SERVING", Duration::from_secs(5));
    drop(p);
    let cfg = config(
        &[server("R", r.1.port(), "h2c")],
        r#", "type": "grpc", "service": "nope""#,
    );
    let p = Proxy::with_config(&cfg, &["--admin", "127.0.0.1:0"]);
    wait_for(
        &p,
        "R",
        "down",
        "grpc-status 5 NOT_FOUND",
        Duration::from_secs(5),
    );
}

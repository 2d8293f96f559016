//! The real `corelb-backend` binary in `--protocol h2c` and `grpc` on a free loopback port,
//! talked to with real clients: curl --http2-prior-knowledge, nghttp, h2load, and a small
//! blocking gRPC client built on corelb's h2 codec and prost. A test whose tool is missing
//! says so and passes.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use corelb::h2::{Connection, ErrorCode, Event, Limits, Settings};
use prost::Message;

struct Backend {
    child: Child,
    port: u16,
}

impl Backend {
    fn start(protocol: &str, extra: &[&str]) -> Backend {
        let mut child = Command::new(env!("CARGO_BIN_EXE_corelb-backend"))
            .args([
                "--port",
                "0",
                "--id",
                "A",
                "--profile",
                "fast",
                "--protocol",
                protocol,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("backend starts");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let addr = line.split(" listening on ").nth(1).unwrap();
        let port = addr
            .split_whitespace()
            .next()
            .unwrap()
            .rsplit(':')
            .next()
            .unwrap();
        Backend {
            child,
            port: port.parse().unwrap(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        eprintln!("{tool} is not installed: skipped");
    }
    ok
}

/// Runs a tool with a time bound; (exit code, stdout).
fn run(tool: &str, args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new("timeout")
        .arg("20")
        .arg(tool)
        .args(args)
        .output()
        .expect("runs");
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// curl over h2c; (exit code, body, http code).
fn curl(b: &Backend, path: &str, extra: &[&str]) -> (i32, Vec<u8>, String) {
    let url = b.url(path);
    let mut args = vec![
        "-s",
        "--http2-prior-knowledge",
        "-w",
        "\n%{http_code} %{http_version}",
    ];
    args.extend_from_slice(extra);
    args.push(&url);
    let (rc, mut out) = run("curl", &args);
    let nl = out.iter().rposition(|&c| c == b'\n').unwrap_or(0);
    let tail = String::from_utf8_lossy(&out[nl + 1..]).into_owned();
    out.truncate(nl);
    (rc, out, tail)
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| b'a' + (i % 26) as u8).collect()
}

#[test]
fn curl_routes_over_h2c() {
    if !have("curl") {
        return;
    }
    let b = Backend::start("h2c", &[]);
    let (rc, body, code) = curl(&b, "/", &[]);
    assert_eq!((rc, code.as_str()), (0, "200 2"));
    assert_eq!(body, b"Response from server A after 0 ms\n");
    let (_, body, code) = curl(&b, "/bytes/100000", &[]);
    assert_eq!(code, "200 2");
    assert_eq!(body, pattern(100_000));
    // A body larger than the stream window: the echo flows back as it is released.
    let file = std::env::temp_dir().join(format!("h2c-curl-{}", std::process::id()));
    std::fs::write(&file, pattern(300_000)).unwrap();
    let at_file = format!("@{}", file.display());
    let (_, body, code) = curl(&b, "/echo", &["--data-binary", &at_file]);
    let _ = std::fs::remove_file(&file);
    assert_eq!(code, "200 2");
    assert_eq!(body, pattern(300_000));
    let (_, body, _) = curl(&b, "/sink", &["--data-binary", "abc"]);
    assert_eq!(body, br#"{"bytes":3,"sum":294}"#);
    let (_, body, code) = curl(&b, "/status/404", &[]);
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"status 404\n"[..], "404 2")
    );
    let (_, _, code) = curl(&b, "/status/204", &[]);
    assert_eq!(code, "204 2");
    let (_, body, _) = curl(&b, "/headers", &["-H", "x-test: yes"]);
    assert!(String::from_utf8_lossy(&body).contains("x-test: yes\n"));
    let (_, body, code) = curl(&b, "/goaway", &[]);
    assert_eq!(
        (body.as_slice(), code.as_str()),
        (&b"goaway\n"[..], "200 2")
    );
    // Refused and reset streams fail the transfer.
    assert_ne!(curl(&b, "/refuse", &[]).0, 0);
    assert_ne!(curl(&b, "/reset", &[]).0, 0);
    assert_ne!(curl(&b, "/close", &[]).0, 0);
    // The server still answers afterwards.
    assert_eq!(curl(&b, "/health", &[]).1, b"ok\n");
}

#[test]
fn nghttp_trailers_and_echoed_trailers() {
    if !have("nghttp") {
        return;
    }
    let b = Backend::start("h2c", &[]);
    let (rc, out) = run("nghttp", &["-v", &b.url("/bytes/30?chunked=1")]);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("x-checksum: 3241"), "{text}");
    assert!(text.contains("abcdefghijklmnopqrstuvwxyzabcd"), "{text}");
    let (_, out) = run("nghttp", &["-v", &b.url("/trailers")]);
    assert!(String::from_utf8_lossy(&out).contains("x-trailer: yes"));
    let file = std::env::temp_dir().join(format!("h2c-echo-{}", std::process::id()));
    std::fs::write(&file, b"hello trailers").unwrap();
    let (rc, out) = run(
        "nghttp",
        &[
            "-v",
            "-d",
            file.to_str().unwrap(),
            "--trailer",
            "x-req: 42",
            &b.url("/echo"),
        ],
    );
    let _ = std::fs::remove_file(&file);
    let text = String::from_utf8_lossy(&out);
    assert_eq!(rc, 0, "{text}");
    assert!(text.contains("hello trailers"), "{text}");
    // The request trailer comes back as a response trailer.
    assert!(
        text.matches("x-req: 42").count() >= 2,
        "sent and received: {text}"
    );
}

#[test]
fn h2load_bounded_run() {
    if !have("h2load") {
        return;
    }
    let b = Backend::start("h2c", &[]);
    let (rc, out) = run(
        "h2load",
        &["-n", "2000", "-c", "4", "-m", "16", &b.url("/")],
    );
    let text = String::from_utf8_lossy(&out);
    assert_eq!(rc, 0, "{text}");
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    let (_, out) = run(
        "h2load",
        &["-n", "200", "-c", "2", "-m", "8", &b.url("/bytes/50000")],
    );
    let text = String::from_utf8_lossy(&out);
    assert!(text.contains("200 succeeded"), "{text}");
}

// ---- gRPC ----

#[derive(Clone, PartialEq, Message)]
struct SynthesizeRequest {
    #[prost(string, tag = "1")]
    text: String,
    #[prost(string, tag = "2")]
    voice: String,
    #[prost(uint32, tag = "3")]
    chunks: u32,
    #[prost(uint32, tag = "4")]
    chunk_bytes: u32,
    #[prost(uint32, tag = "5")]
    chunk_interval_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
struct SynthesizeResponse {
    #[prost(bytes = "vec", tag = "1")]
    audio: Vec<u8>,
    #[prost(uint32, tag = "2")]
    sample_rate: u32,
    #[prost(string, tag = "3")]
    backend: String,
    #[prost(uint32, tag = "4")]
    latency_ms: u32,
}

#[derive(Clone, PartialEq, Message)]
struct AudioChunk {
    #[prost(uint32, tag = "1")]
    seq: u32,
    #[prost(bytes = "vec", tag = "2")]
    audio: Vec<u8>,
    #[prost(bool, tag = "3")]
    last: bool,
    #[prost(string, tag = "4")]
    backend: String,
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckRequest {
    #[prost(string, tag = "1")]
    service: String,
}

#[derive(Clone, PartialEq, Message)]
struct HealthCheckResponse {
    #[prost(int32, tag = "1")]
    status: i32,
}

#[derive(Clone, PartialEq, Message)]
struct SetServingRequest {
    #[prost(bool, tag = "1")]
    serving: bool,
}

/// What one call returned.
#[derive(Debug, Default)]
struct Reply {
    messages: Vec<Vec<u8>>,
    /// grpc-status from the trailers (or the Trailers-Only head).
    status: Option<String>,
    reset: Option<ErrorCode>,
}

/// One blocking gRPC call over a fresh h2c connection.
fn call(port: u16, path: &str, msg: &impl Message) -> Reply {
    let mut sock = TcpStream::connect(("127.0.0.1", port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut h2 = Connection::client(Settings::default(), Limits::default());
    let id = h2.open_stream().unwrap();
    let fields: [(&[u8], &[u8]); 6] = [
        (b":method", b"POST"),
        (b":scheme", b"http"),
        (b":authority", b"backend"),
        (b":path", path.as_bytes()),
        (b"content-type", b"application/grpc"),
        (b"te", b"trailers"),
    ];
    h2.send_headers(id, &fields, false).unwrap();
    let mut body = vec![0];
    body.extend_from_slice(&(msg.encoded_len() as u32).to_be_bytes());
    msg.encode(&mut body).unwrap();
    assert_eq!(h2.send_data(id, &body, true), Ok(body.len()));
    let mut reply = Reply::default();
    let mut data = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut have = 0;
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut done = false;
    while !done && Instant::now() < deadline {
        sock.write_all(h2.pending_output()).unwrap();
        let n = h2.pending_output().len();
        h2.advance_output(n);
        let r = sock.read(&mut buf[have..]).unwrap();
        assert!(r > 0, "backend closed early");
        have += r;
        let used = h2.recv(&buf[..have], Instant::now()).unwrap();
        buf.copy_within(used..have, 0);
        have -= used;
        while let Some(ev) = h2.poll_event() {
            match ev {
                Event::Headers {
                    fields, end_stream, ..
                } => {
                    assert_eq!(fields.status(), Some(200));
                    if end_stream {
                        reply.status = fields
                            .get(b"grpc-status")
                            .map(|s| String::from_utf8_lossy(s).into());
                        done = true;
                    }
                }
                Event::Data {
                    stream, data: d, ..
                } => {
                    data.extend_from_slice(d);
                    let n = d.len();
                    h2.release(stream, n);
                }
                Event::Trailers { fields, .. } => {
                    reply.status = fields
                        .get(b"grpc-status")
                        .map(|s| String::from_utf8_lossy(s).into());
                    done = true;
                }
                Event::Reset { code, .. } => {
                    reply.reset = Some(code);
                    done = true;
                }
                _ => {}
            }
        }
    }
    assert!(done, "the call finished in time");
    let mut rest = &data[..];
    while rest.len() >= 5 {
        let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
        reply.messages.push(rest[5..5 + len].to_vec());
        rest = &rest[5 + len..];
    }
    assert!(rest.is_empty(), "whole messages");
    reply
}

fn synth(text: &str, chunks: u32, chunk_bytes: u32) -> SynthesizeRequest {
    SynthesizeRequest {
        text: text.into(),
        voice: "v".into(),
        chunks,
        chunk_bytes,
        chunk_interval_ms: 0,
    }
}

#[test]
fn grpc_unary_and_streaming() {
    let b = Backend::start("grpc", &[]);
    let r = call(b.port, "/tts.TTS/Synthesize", &synth("hello", 3, 100));
    assert_eq!(r.status.as_deref(), Some("0"));
    assert_eq!(r.messages.len(), 1);
    let resp = SynthesizeResponse::decode(&r.messages[0][..]).unwrap();
    assert_eq!(resp.audio, pattern(300));
    assert_eq!((resp.backend.as_str(), resp.sample_rate), ("A", 16_000));

    let mut req = synth("stream me", 5, 2000);
    req.chunk_interval_ms = 5;
    let r = call(b.port, "/tts.TTS/SynthesizeStream", &req);
    assert_eq!(r.status.as_deref(), Some("0"));
    let chunks: Vec<AudioChunk> = r
        .messages
        .iter()
        .map(|m| AudioChunk::decode(&m[..]).unwrap())
        .collect();
    assert_eq!(chunks.len(), 5);
    let all: Vec<u8> = chunks.iter().flat_map(|c| c.audio.clone()).collect();
    assert_eq!(all, pattern(10_000));
    assert!(chunks.iter().enumerate().all(|(i, c)| c.seq == i as u32));
    assert!(chunks[4].last && !chunks[3].last);

    // Errors come as Trailers-Only responses.
    let r = call(b.port, "/tts.TTS/Synthesize", &synth("", 1, 1));
    assert_eq!((r.status.as_deref(), r.messages.len()), (Some("3"), 0));
    let r = call(b.port, "/tts.TTS/Nope", &synth("x", 1, 1));
    assert_eq!(r.status.as_deref(), Some("12"));
}

#[test]
fn grpc_health_switches_at_run_time() {
    let b = Backend::start("grpc", &[]);
    let check = |service: &str| {
        let r = call(
            b.port,
            "/grpc.health.v1.Health/Check",
            &HealthCheckRequest {
                service: service.into(),
            },
        );
        (
            r.status.clone(),
            r.messages
                .first()
                .map(|m| HealthCheckResponse::decode(&m[..]).unwrap().status),
        )
    };
    assert_eq!(check(""), (Some("0".into()), Some(1)));
    let r = call(
        b.port,
        "/tts.Control/SetServing",
        &SetServingRequest { serving: false },
    );
    assert_eq!(r.status.as_deref(), Some("0"));
    assert_eq!(check("tts.TTS"), (Some("0".into()), Some(2)));
    call(
        b.port,
        "/tts.Control/SetServing",
        &SetServingRequest { serving: true },
    );
    assert_eq!(check(""), (Some("0".into()), Some(1)));
    assert_eq!(check("other").0.as_deref(), Some("5"));
}

#[test]
fn grpc_injected_failures() {
    let b = Backend::start("grpc", &["--error-rate", "1"]);
    let r = call(b.port, "/tts.TTS/Synthesize", &synth("x", 1, 1));
    assert_eq!(r.status.as_deref(), Some("14"));
    let b = Backend::start("grpc", &["--close-rate", "1"]);
    let r = call(b.port, "/tts.TTS/SynthesizeStream", &synth("x", 4, 10));
    assert_eq!(r.reset, Some(ErrorCode::INTERNAL_ERROR));
    assert_eq!(r.messages.len(), 2, "cut halfway");
}

#[test]
fn stall_delays_h2c_and_grpc_answers() {
    // `--stall 1:300`: every default-route answer and TTS call waits 300 ms more.
    let b = Backend::start("grpc", &["--stall", "1:300"]);
    let t0 = Instant::now();
    let r = call(b.port, "/tts.TTS/Synthesize", &synth("hello", 1, 10));
    assert_eq!(r.status.as_deref(), Some("0"));
    assert!(
        t0.elapsed() >= Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    let resp = SynthesizeResponse::decode(&r.messages[0][..]).unwrap();
    assert_eq!(resp.latency_ms, 300);
    // Health checks are not stalled.
    let t0 = Instant::now();
    let r = call(
        b.port,
        "/grpc.health.v1.Health/Check",
        &HealthCheckRequest::default(),
    );
    assert_eq!(r.status.as_deref(), Some("0"));
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    if !have("curl") {
        return;
    }
    let b = Backend::start("h2c", &["--stall", "1:300"]);
    let (rc, body, tail) = curl(&b, "/", &[]);
    assert_eq!((rc, tail.as_str()), (0, "200 2"));
    assert_eq!(body, b"Response from server A after 300 ms\n");
}

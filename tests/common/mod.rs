//! Shared helpers for integration tests: start the real `corelb` and `corelb-backend`
//! binaries on free loopback ports, speak raw HTTP to them, and clean up on drop.
#![allow(dead_code)]

pub mod h2client;
pub mod tls;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::mpsc;
use std::sync::Once;
use std::time::{Duration, Instant};

pub const PROXY: &str = env!("CARGO_BIN_EXE_corelb");

/// Path of the `corelb-backend` binary, built next to `corelb` (built on demand).
pub fn backend_bin() -> PathBuf {
    static BUILD: Once = Once::new();
    let path = PathBuf::from(PROXY).with_file_name("corelb-backend");
    BUILD.call_once(|| {
        if !path.exists() {
            let release = PROXY.contains("/release/");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-p", "corelb-backend"]);
            if release {
                cmd.arg("--release");
            }
            assert!(
                cmd.status().expect("cargo build").success(),
                "building corelb-backend failed"
            );
        }
    });
    path
}

/// Reads a child's stdout until a line containing "listening on ADDR"; returns ADDR.
fn wait_listening(child: &mut Child, what: &str) -> SocketAddr {
    wait_addresses(child, what).0
}

/// As [`wait_listening`]; also returns where a later `corelb admin on http://ADDR/` line's
/// ADDR arrives.
fn wait_addresses(
    child: &mut Child,
    what: &str,
) -> (SocketAddr, mpsc::Receiver<String>, mpsc::Receiver<String>) {
    let out = child.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    let (admin_tx, admin_rx) = mpsc::channel();
    let (tls_tx, tls_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut lines = BufReader::new(out).lines();
        let mut sent = false;
        while let Some(Ok(line)) = lines.next() {
            if !sent {
                if let Some(rest) = line.split("listening on ").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_string();
                    let _ = tx.send(addr);
                    sent = true;
                }
            }
            if let Some(rest) = line.strip_prefix("corelb listening for TLS on ") {
                let _ = tls_tx.send(rest.trim().to_string());
            }
            if let Some(rest) = line.strip_prefix("corelb admin on http://") {
                let _ = admin_tx.send(rest.trim_end_matches('/').to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(20))
        .unwrap_or_else(|_| panic!("{what} did not report its listening address"));
    let addr = addr
        .parse()
        .unwrap_or_else(|_| panic!("{what}: bad address {addr}"));
    (addr, admin_rx, tls_rx)
}

/// A running `corelb-backend`, killed on drop.
pub struct Backend {
    pub child: Child,
    pub addr: SocketAddr,
    pub id: String,
}

impl Backend {
    /// Starts backend `id` with `profile` and extra flags, on a free port.
    pub fn start(id: &str, profile: &str, extra: &[&str]) -> Backend {
        Self::start_on(id, profile, 0, extra)
    }

    pub fn start_on(id: &str, profile: &str, port: u16, extra: &[&str]) -> Backend {
        let mut child = Command::new(backend_bin())
            .args([
                "--id",
                id,
                "--port",
                &port.to_string(),
                "--profile",
                profile,
            ])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start corelb-backend");
        let addr = wait_listening(&mut child, "corelb-backend");
        Backend {
            child,
            addr,
            id: id.to_string(),
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// The backend's counters: (requests, connections that carried a request, accepted).
    pub fn stats(&self) -> (u64, u64, u64) {
        let r = get(self.addr, "/stats");
        assert_eq!(r.status, 200, "backend /stats");
        let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats json");
        (
            v["requests"].as_u64().unwrap(),
            v["connections"].as_u64().unwrap(),
            v["accepted"].as_u64().unwrap(),
        )
    }

    pub fn requests(&self) -> u64 {
        self.stats().0
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A running `corelb`, killed on drop unless stopped.
pub struct Proxy {
    pub child: Child,
    pub addr: SocketAddr,
    /// The admin listener, when the test started one (`--admin 127.0.0.1:0`).
    pub admin: Option<SocketAddr>,
    /// The first TLS listener, when the test started one (`--tls-listen 127.0.0.1:0`).
    pub tls: Option<SocketAddr>,
    pub stderr: Option<ChildStderr>,
    _config: Option<tempfile::TempPath>,
}

/// Writes a config naming `backends` (name = id, all priority 0, load 1).
pub fn config_for(backends: &[&Backend]) -> String {
    let weighted: Vec<(&Backend, f64)> = backends.iter().map(|b| (*b, 1.0)).collect();
    config_weighted(&weighted)
}

/// A config naming `servers` as (backend, load), all priority 0.
pub fn config_weighted(servers: &[(&Backend, f64)]) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(b, load)| {
            format!(
                r#"{{"priority": 0, "name": "{}", "address": "127.0.0.1", "port": {}, "load": {load}}}"#,
                b.id,
                b.port()
            )
        })
        .collect();
    format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "servers": [{}]}}"#,
        list.join(", ")
    )
}

impl Proxy {
    /// Starts corelb in front of `backends` with extra flags.
    pub fn start(backends: &[&Backend], extra: &[&str]) -> Proxy {
        Self::with_config(&config_for(backends), extra)
    }

    /// Starts corelb with a config file holding `json`.
    pub fn with_config(json: &str, extra: &[&str]) -> Proxy {
        let mut f = tempfile::NamedTempFile::new().expect("temp config");
        f.write_all(json.as_bytes()).unwrap();
        let path = f.into_temp_path();
        let mut cmd = Command::new(PROXY);
        cmd.arg("--config")
            .arg(&*path)
            .args(["--listen", "127.0.0.1:0"]);
        // Tests write no CSV unless they ask for one.
        if !extra.contains(&"--log-csv") {
            cmd.args(["--log-csv", "off"]);
        }
        // Parallel tests cannot all have the dashboard on 5002.
        if !extra.contains(&"--admin") {
            cmd.args(["--admin", "off"]);
        }
        let mut child = cmd
            .args(extra)
            .env_remove("PROXY_SERVER_PORT")
            .env_remove("PROXY_SERVER_CONFIG")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start corelb");
        let (addr, admin_rx, tls_rx) = wait_addresses(&mut child, "corelb");
        let admin_on = extra
            .iter()
            .position(|a| *a == "--admin")
            .and_then(|i| extra.get(i + 1))
            .is_some_and(|v| *v != "off");
        let admin = admin_on.then(|| {
            let a = admin_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("corelb did not report its admin address");
            a.parse()
                .unwrap_or_else(|_| panic!("bad admin address {a}"))
        });
        let tls_on = extra.contains(&"--tls-listen")
            || serde_json::from_str::<serde_json::Value>(json)
                .is_ok_and(|v| !v["tls"]["listen"].is_null());
        let tls = tls_on.then(|| {
            let a = tls_rx
                .recv_timeout(Duration::from_secs(5))
                .expect("corelb did not report its TLS address");
            a.parse().unwrap_or_else(|_| panic!("bad TLS address {a}"))
        });
        let stderr = child.stderr.take();
        Proxy {
            child,
            addr,
            admin,
            tls,
            stderr,
            _config: Some(path),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The config file the proxy was started with (a test may rewrite it and reload).
    pub fn config_path(&self) -> &std::path::Path {
        self._config.as_deref().expect("started with a config file")
    }

    /// Sends `sig` (e.g. "INT", "TERM") to the proxy.
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &self.pid().to_string()])
            .status()
            .expect("kill")
            .success();
        assert!(ok, "kill -{sig} failed");
    }

    /// Waits up to `limit` for the proxy to exit; returns its exit code.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let end = Instant::now() + limit;
        while Instant::now() < end {
            if let Some(st) = self.child.try_wait().expect("try_wait") {
                return st.code();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the proxy wrote to stderr (call after it exited).
    pub fn stderr_text(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Peak resident set size of the proxy (VmHWM), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find(|l| l.starts_with("VmHWM:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .expect("VmHWM")
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A parsed HTTP response.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Bytes of the whole response as received.
    pub raw_len: usize,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn backend(&self) -> String {
        self.header("X-Backend").unwrap_or("").to_string()
    }
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

/// Reads one response from `s` (whose request was `method`), leaving any following bytes
/// in `pending` for the next call.
pub fn read_response(s: &mut impl Read, pending: &mut Vec<u8>, method: &str) -> Option<Resp> {
    let mut buf = [0u8; 65536];
    loop {
        let mut headers = [httparse::EMPTY_HEADER; 128];
        let mut r = httparse::Response::new(&mut headers);
        if let Ok(httparse::Status::Complete(n)) = r.parse(pending) {
            let status = r.code.unwrap();
            let hs: Vec<(String, String)> = r
                .headers
                .iter()
                .map(|h| {
                    (
                        h.name.to_string(),
                        String::from_utf8_lossy(h.value).into_owned(),
                    )
                })
                .collect();
            let get = |k: &str| {
                hs.iter()
                    .find(|(n, _)| n.eq_ignore_ascii_case(k))
                    .map(|(_, v)| v.clone())
            };
            pending.drain(..n);
            if (100..200).contains(&status) {
                continue;
            }
            let mut body = Vec::new();
            let no_body = method == "HEAD" || status == 204 || status == 304;
            if no_body {
            } else if get("Transfer-Encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
            {
                body = read_chunked(s, pending);
            } else if let Some(cl) = get("Content-Length") {
                let len: usize = cl.trim().parse().unwrap();
                while pending.len() < len {
                    let k = s.read(&mut buf).ok()?;
                    if k == 0 {
                        break;
                    }
                    pending.extend_from_slice(&buf[..k]);
                }
                let take = len.min(pending.len());
                body = pending.drain(..take).collect();
            } else {
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => pending.extend_from_slice(&buf[..k]),
                    }
                }
                body = std::mem::take(pending);
            }
            return Some(Resp {
                status,
                headers: hs,
                raw_len: n + body.len(),
                body,
            });
        }
        let k = s.read(&mut buf).ok()?;
        if k == 0 {
            return None;
        }
        pending.extend_from_slice(&buf[..k]);
    }
}

fn read_chunked(s: &mut impl Read, pending: &mut Vec<u8>) -> Vec<u8> {
    let mut d = corelb::http::chunked::ChunkedDecoder::new();
    let mut body = Vec::new();
    let mut buf = [0u8; 65536];
    loop {
        let mut at = 0;
        while at < pending.len() && !d.is_done() {
            let p = d.decode(&pending[at..]).expect("valid chunked response");
            body.extend_from_slice(&pending[at..][p.data]);
            at += p.consumed;
        }
        pending.drain(..at);
        if d.is_done() {
            return body;
        }
        let k = s.read(&mut buf).expect("read chunked");
        assert!(k > 0, "EOF inside chunked body");
        pending.extend_from_slice(&buf[..k]);
    }
}

/// Sends raw bytes on a new connection and reads one response.
pub fn raw(addr: SocketAddr, req: &[u8]) -> Option<Resp> {
    let mut s = connect(addr);
    s.write_all(req).unwrap();
    let method = std::str::from_utf8(req)
        .ok()
        .and_then(|r| r.split(' ').next())
        .unwrap_or("GET")
        .to_string();
    read_response(&mut s, &mut Vec::new(), &method)
}

/// Sends raw bytes and returns everything received until the server closes.
pub fn raw_all(addr: SocketAddr, req: &[u8]) -> Vec<u8> {
    let mut s = connect(addr);
    s.write_all(req).unwrap();
    let _ = s.shutdown(std::net::Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

/// GET `path` on a new connection.
pub fn get(addr: SocketAddr, path: &str) -> Resp {
    raw(
        addr,
        format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap_or_else(|| panic!("no response to GET {path}"))
}

/// Runs curl with `args`; returns (exit code, stdout).
pub fn curl(args: &[&str]) -> (i32, Vec<u8>) {
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "60"])
        .args(args)
        .output()
        .expect("curl is installed (apt-get install curl)");
    (out.status.code().unwrap_or(-1), out.stdout)
}

/// A counter of corelb's admin `/stats` (top level or under `totals`).
pub fn stat(p: &Proxy, name: &str) -> u64 {
    let r = get(p.admin.expect("started with --admin"), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).expect("stats JSON");
    v[name]
        .as_u64()
        .or_else(|| v["totals"][name].as_u64())
        .unwrap_or_else(|| panic!("no {name} in /stats: {v}"))
}

/// `n` header fields `x-fK: v` (K from 0), as name-value pairs.
pub fn many_fields(prefix: &str, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|k| (format!("{prefix}{k}"), "v".to_string()))
        .collect()
}

/// Whether `tool` runs here. When it does not, the calling test is recorded as skipped
/// (see [`skip`]) and should return.
pub fn have(tool: &str) -> bool {
    let ok = Command::new(tool).arg("--version").output().is_ok();
    if !ok {
        skip(&format!("{tool} is not installed"));
    }
    ok
}

/// The gRPC venv's python (made by scripts/deps.sh through tests/grpc/setup.sh), or `None`
/// with the calling test recorded as skipped.
pub fn venv_python() -> Option<PathBuf> {
    let py = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/grpc-venv/bin/python");
    if py.exists() {
        return Some(py);
    }
    skip(&format!("{} is missing", py.display()));
    None
}

/// Records that the current test skips for `why`: a line in the file named by
/// `CORELB_SKIP_LOG`, which `make test` counts at the end. With `CORELB_STRICT_SKIPS=1`
/// (set by `make test` when scripts/deps.sh found every tool) a skip is a failure instead.
pub fn skip(why: &str) {
    let name = std::thread::current()
        .name()
        .unwrap_or("unnamed test")
        .to_string();
    if std::env::var("CORELB_STRICT_SKIPS").is_ok_and(|v| v == "1") {
        panic!("{name} would skip ({why}), but scripts/deps.sh reported every tool present");
    }
    eprintln!("SKIPPED: {name}: {why} (scripts/deps.sh test installs it)");
    if let Ok(path) = std::env::var("CORELB_SKIP_LOG") {
        use std::io::Write as _;
        if let Ok(mut f) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
        {
            let _ = writeln!(f, "{name}: {why}");
        }
    }
}

/// Polls `f` until it returns true or `limit` passes.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    f()
}

/// A scripted raw-TCP backend for failure cases the real backend cannot produce on cue.
/// `handler(conn_index, request_index, head, body)` returns what to do.
pub struct MiniServer {
    pub addr: SocketAddr,
    pub connections: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    pub requests: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What a [`MiniServer`] does with one request.
pub enum Act {
    /// Answer 200 with this body, keeping the connection open.
    Reply(&'static str),
    /// Close the connection without answering.
    Close,
}

impl MiniServer {
    pub fn start(
        handler: impl Fn(usize, usize, &str) -> Act + Send + Sync + 'static,
    ) -> MiniServer {
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
        use std::sync::Arc;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (c2, r2, s2) = (connections.clone(), requests.clone(), stop.clone());
        let handler = Arc::new(handler);
        std::thread::spawn(move || {
            while !s2.load(SeqCst) {
                let Ok((mut s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let conn = c2.fetch_add(1, SeqCst);
                let (r3, h) = (r2.clone(), handler.clone());
                std::thread::spawn(move || {
                    s.set_nonblocking(false).unwrap();
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut buf = Vec::new();
                    let mut n = 0;
                    loop {
                        let mut chunk = [0u8; 4096];
                        // Read one full request (head + Content-Length body).
                        let (head_end, body_len) = loop {
                            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                                let head = String::from_utf8_lossy(&buf[..i]).to_ascii_lowercase();
                                let cl = head
                                    .lines()
                                    .find_map(|l| l.strip_prefix("content-length:"))
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                                    .unwrap_or(0);
                                if buf.len() >= i + 4 + cl {
                                    break (i + 4, cl);
                                }
                            }
                            match s.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(k) => buf.extend_from_slice(&chunk[..k]),
                            }
                        };
                        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
                        buf.drain(..head_end + body_len);
                        r3.fetch_add(1, SeqCst);
                        match h(conn, n, &head) {
                            Act::Reply(body) => {
                                let resp = format!(
                                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nX-Backend: mini\r\n\r\n{body}",
                                    body.len()
                                );
                                if s.write_all(resp.as_bytes()).is_err() {
                                    return;
                                }
                            }
                            Act::Close => return,
                        }
                        n += 1;
                    }
                });
            }
        });
        MiniServer {
            addr,
            connections,
            requests,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for MiniServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A JSON server entry.
pub fn server_json(name: &str, port: u16, priority: u32) -> String {
    format!(
        r#"{{"name": "{name}", "address": "127.0.0.1", "port": {port}, "priority": {priority}}}"#
    )
}

/// A port nothing listens on, for as long as the test process runs: a socket stays bound
/// to it without listening, so a connect is refused and no other test's server (a backend
/// restarted on a freed port, say) can take the port while this test counts on it.
pub fn dead_port() -> u16 {
    use socket2::{Domain, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, None).expect("socket");
    let any: SocketAddr = "127.0.0.1:0".parse().expect("address");
    s.bind(&any.into()).expect("bind");
    let port = s
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("bound")
        .port();
    std::mem::forget(s);
    port
}

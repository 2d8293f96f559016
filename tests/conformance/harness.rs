//! Conformance harness: a scripted raw backend that records exactly what it received, a
//! raw client, the proxies under test (corelb, and NGINX and HAProxy with generated
//! configs) and the judgement of one case.

use super::cases::{Case, Expect, Fwd, Rel, CASES};
use crate::common::{server_json, Proxy};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the backend does when it has no script for a path.
const DEFAULT_REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

/// One request as the scripted backend parsed it.
#[derive(Debug, Clone, Default)]
pub struct Seen {
    /// The method (or, for bytes that never formed a head, those bytes).
    #[allow(dead_code)]
    pub method: String,
    pub target: String,
    pub host: Option<String>,
    pub body: Vec<u8>,
    /// The framing was ambiguous: CL with TE, several CL, or several Host fields.
    pub ambiguous: bool,
    /// The whole message arrived (not cut by a close).
    pub complete: bool,
}

/// The scripted backend: answers each request with the raw bytes scripted for its
/// `/r/NAME` path (closing afterwards when the script says so) and records everything.
pub struct ScriptedBackend {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    bytes: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

type Scripts = HashMap<String, (Vec<u8>, bool)>;

/// Expands `{70000}` into that many bytes of `a`.
pub fn expand(raw: &[u8]) -> Vec<u8> {
    let marker = b"{70000}";
    match find(raw, marker) {
        Some(i) => {
            let mut v = raw[..i].to_vec();
            v.extend(std::iter::repeat_n(b'a', 70000));
            v.extend_from_slice(&raw[i + marker.len()..]);
            v
        }
        None => raw.to_vec(),
    }
}

impl ScriptedBackend {
    pub fn start() -> ScriptedBackend {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let scripts: Arc<Scripts> = Arc::new(
            CASES
                .iter()
                .filter_map(|c| {
                    c.script
                        .map(|(s, close)| (c.name.to_string(), (expand(s), close)))
                })
                .collect(),
        );
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bytes = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (seen2, bytes2, stop2) = (seen.clone(), bytes.clone(), stop.clone());
        std::thread::spawn(move || {
            while !stop2.load(SeqCst) {
                let Ok((s, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                let (seen, bytes, scripts) = (seen2.clone(), bytes2.clone(), scripts.clone());
                std::thread::spawn(move || serve(s, &seen, &bytes, &scripts));
            }
        });
        ScriptedBackend {
            addr,
            seen,
            bytes,
            stop,
        }
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Forgets what was recorded.
    pub fn reset(&self) {
        self.seen.lock().unwrap().clear();
        self.bytes.store(0, SeqCst);
    }

    /// What arrived since the last reset: parsed requests and raw byte count.
    pub fn seen(&self) -> (Vec<Seen>, usize) {
        (self.seen.lock().unwrap().clone(), self.bytes.load(SeqCst))
    }
}

impl Drop for ScriptedBackend {
    fn drop(&mut self) {
        self.stop.store(true, SeqCst);
    }
}

/// Reads requests off one connection, leniently but framing-aware (RFC 9112 §6.3: TE
/// chunked wins over CL), so a body forwarded without its framing shows up as a second,
/// smuggled request.
fn serve(mut s: TcpStream, seen: &Mutex<Vec<Seen>>, bytes: &AtomicUsize, scripts: &Scripts) {
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = Vec::new();
    let mut fill = |s: &mut TcpStream, buf: &mut Vec<u8>| -> bool {
        let mut chunk = [0u8; 8192];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(k) => {
                bytes.fetch_add(k, SeqCst);
                buf.extend_from_slice(&chunk[..k]);
                true
            }
        }
    };
    loop {
        let head_end = loop {
            if let Some(i) = find(&buf, b"\r\n\r\n") {
                break i + 4;
            }
            if !fill(&mut s, &mut buf) {
                if !buf.is_empty() {
                    seen.lock().unwrap().push(Seen {
                        method: String::from_utf8_lossy(&buf).into_owned(),
                        ..Seen::default()
                    });
                }
                return;
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        buf.drain(..head_end);
        let mut lines = head.split("\r\n");
        let mut start = lines.next().unwrap_or("").split(' ');
        let mut req = Seen {
            method: start.next().unwrap_or("").to_string(),
            target: start.next().unwrap_or("").to_string(),
            ..Seen::default()
        };
        let (mut lengths, mut chunked, mut hosts) = (Vec::new(), false, 0);
        for line in lines.filter(|l| !l.is_empty()) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.to_ascii_lowercase(), value.trim());
            match name.as_str() {
                "content-length" => lengths.push(value.to_string()),
                "transfer-encoding" => chunked |= value.to_ascii_lowercase().contains("chunked"),
                "host" => {
                    hosts += 1;
                    req.host = Some(value.to_string());
                }
                _ => {}
            }
        }
        req.ambiguous = hosts > 1
            || (chunked && !lengths.is_empty())
            || lengths.iter().any(|l| l != &lengths[0]);
        req.complete = true;
        if chunked {
            // size [ext] CRLF data CRLF ... 0 CRLF trailers CRLF
            loop {
                let Some(eol) = wait_for(&mut s, &mut buf, b"\r\n", &mut fill) else {
                    req.complete = false;
                    break;
                };
                let line = String::from_utf8_lossy(&buf[..eol]).into_owned();
                buf.drain(..eol + 2);
                let size = usize::from_str_radix(line.split(';').next().unwrap_or("").trim(), 16)
                    .unwrap_or(0);
                if size == 0 {
                    while let Some(eol) = wait_for(&mut s, &mut buf, b"\r\n", &mut fill) {
                        buf.drain(..eol + 2);
                        if eol == 0 {
                            break;
                        }
                    }
                    break;
                }
                while buf.len() < size + 2 {
                    if !fill(&mut s, &mut buf) {
                        req.complete = false;
                        break;
                    }
                }
                let take = buf.len().min(size);
                req.body.extend(buf.drain(..take));
                buf.drain(..buf.len().min(2));
                if !req.complete {
                    break;
                }
            }
        } else if let Some(n) = lengths.first().and_then(|l| l.parse::<usize>().ok()) {
            while buf.len() < n {
                if !fill(&mut s, &mut buf) {
                    req.complete = false;
                    break;
                }
            }
            let take = buf.len().min(n);
            req.body.extend(buf.drain(..take));
        }
        let complete = req.complete;
        let name = req
            .target
            .split("/r/")
            .nth(1)
            .map(|r| r.split(['/', '?']).next().unwrap_or("").to_string());
        seen.lock().unwrap().push(req);
        if !complete {
            return;
        }
        let (reply, close) = name
            .and_then(|n| scripts.get(&n))
            .map(|(s, c)| (&s[..], *c))
            .unwrap_or((DEFAULT_REPLY, false));
        if s.write_all(reply).is_err() || close {
            let _ = s.shutdown(Shutdown::Both);
            return;
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn wait_for(
    s: &mut TcpStream,
    buf: &mut Vec<u8>,
    needle: &[u8],
    fill: &mut impl FnMut(&mut TcpStream, &mut Vec<u8>) -> bool,
) -> Option<usize> {
    loop {
        if let Some(i) = find(buf, needle) {
            return Some(i);
        }
        if !fill(s, buf) {
            return None;
        }
    }
}

/// What the client saw.
#[derive(Debug, Default)]
pub struct Got {
    /// Interim (1xx) statuses before the final one.
    pub interim: Vec<u16>,
    /// Final status; 0 when none arrived.
    pub status: u16,
    pub body: Vec<u8>,
    /// The final response arrived whole (its framing said where it ended).
    pub complete: bool,
    /// The connection was closed by the proxy.
    pub closed: bool,
    /// Bytes after the end of the response (a second, unrequested response).
    pub extra: Vec<u8>,
}

/// Sends `req` and reads one response, then watches the connection for a moment: extra
/// bytes or a close. `head` says the request was HEAD.
pub fn exchange(s: &mut TcpStream, req: &[u8], head: bool) -> Got {
    let mut got = Got::default();
    if s.write_all(req).is_err() {
        got.closed = true;
        return got;
    }
    let deadline = Instant::now() + Duration::from_secs(4);
    let mut buf = Vec::new();
    let mut eof = false;
    let mut read_more = |buf: &mut Vec<u8>, until: Instant| -> bool {
        let left = until.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return false;
        }
        s.set_read_timeout(Some(left)).unwrap();
        let mut chunk = [0u8; 16384];
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => false,
            Ok(k) => {
                buf.extend_from_slice(&chunk[..k]);
                true
            }
        }
    };
    // Heads: skip 1xx, stop at the final one.
    let (status, mut framing) = loop {
        let Some(end) = find(&buf, b"\r\n\r\n") else {
            if !read_more(&mut buf, deadline) {
                got.closed = true;
                return got;
            }
            continue;
        };
        let head_text = String::from_utf8_lossy(&buf[..end]).into_owned();
        buf.drain(..end + 4);
        let status: u16 = head_text
            .get(9..12)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        if (100..200).contains(&status) {
            got.interim.push(status);
            continue;
        }
        let mut framing = None;
        for line in head_text.split("\r\n").skip(1) {
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
            if name == "transfer-encoding" && value.to_ascii_lowercase().ends_with("chunked") {
                framing = Some(usize::MAX);
            } else if name == "content-length" && framing != Some(usize::MAX) {
                framing = value.parse().ok();
            }
        }
        if head || status == 204 || status == 304 {
            framing = Some(0);
        }
        break (status, framing);
    };
    got.status = status;
    // Body.
    match framing.take() {
        Some(usize::MAX) => loop {
            // Decode chunked; stop at the last chunk and its (empty) trailer section.
            match decode_chunked(&buf) {
                Some((body, used)) => {
                    got.body = body;
                    buf.drain(..used);
                    got.complete = true;
                    break;
                }
                None => {
                    if !read_more(&mut buf, deadline) {
                        eof = true;
                        break;
                    }
                }
            }
        },
        Some(n) => {
            while buf.len() < n {
                if !read_more(&mut buf, deadline) {
                    eof = true;
                    break;
                }
            }
            let take = buf.len().min(n);
            got.body = buf.drain(..take).collect();
            got.complete = got.body.len() == n;
        }
        None => {
            // Until close.
            while read_more(&mut buf, deadline) {}
            got.body = std::mem::take(&mut buf);
            eof = true;
            got.complete = Instant::now() < deadline;
        }
    }
    if eof {
        got.closed = true;
        got.extra = buf;
        return got;
    }
    // Watch for a moment: anything else is unrequested.
    let until = Instant::now() + Duration::from_millis(120);
    while read_more(&mut buf, until) {}
    if Instant::now() < until {
        got.closed = true;
    }
    got.extra = buf;
    got
}

/// Decodes a complete chunked body at the start of `buf`: (data, bytes used).
fn decode_chunked(buf: &[u8]) -> Option<(Vec<u8>, usize)> {
    let mut at = 0;
    let mut body = Vec::new();
    loop {
        let eol = find(&buf[at..], b"\r\n")?;
        let line = std::str::from_utf8(&buf[at..at + eol]).ok()?;
        let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
        at += eol + 2;
        if size == 0 {
            loop {
                let eol = find(&buf[at..], b"\r\n")?;
                at += eol + 2;
                if eol == 0 {
                    return Some((body, at));
                }
            }
        }
        if buf.len() < at + size + 2 {
            return None;
        }
        body.extend_from_slice(&buf[at..at + size]);
        at += size + 2;
    }
}

/// A proxy under test, in front of the scripted backend.
pub enum Under {
    Corelb(Proxy),
    Other {
        child: Child,
        addr: SocketAddr,
        _dir: tempfile::TempDir,
    },
}

impl Under {
    pub fn addr(&self) -> SocketAddr {
        match self {
            Under::Corelb(p) => p.addr,
            Under::Other { addr, .. } => *addr,
        }
    }

    /// corelb with one worker, no health checks, retries or ejections, so that every case
    /// reaches the one backend exactly as the client sent it.
    pub fn corelb(backend: &ScriptedBackend) -> Under {
        let json = format!(
            r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "servers": [{}]}}"#,
            server_json("S", backend.port(), 0)
        );
        Under::Corelb(Proxy::with_config(
            &json,
            &[
                "--workers",
                "1",
                "--no-pin",
                "--health-check",
                "off",
                "--retries",
                "0",
                "--eject-after",
                "0",
                "--upstream-timeout",
                "2s",
            ],
        ))
    }

    /// NGINX as a plain reverse proxy with upstream keep-alive; `Host` set from `$host`
    /// (the absolute-form authority when there is one), as its documentation suggests.
    pub fn nginx(backend: &ScriptedBackend) -> Option<Under> {
        let bin = which(&["/usr/sbin/nginx", "/usr/bin/nginx"])?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let d = dir.path().display();
        let conf = format!(
            "daemon off;\nmaster_process off;\nworker_processes 1;\npid {d}/nginx.pid;\n\
             error_log {d}/error.log warn;\nevents {{ worker_connections 256; }}\n\
             http {{\n  access_log off;\n  client_body_temp_path {d}/body;\n  proxy_temp_path {d}/proxy;\n\
               fastcgi_temp_path {d}/fcgi;\n  uwsgi_temp_path {d}/uwsgi;\n  scgi_temp_path {d}/scgi;\n\
               upstream be {{ server 127.0.0.1:{bp}; keepalive 8; }}\n\
               server {{\n    listen 127.0.0.1:{port};\n    location / {{\n\
                   proxy_pass http://be;\n      proxy_http_version 1.1;\n\
                   proxy_set_header Connection \"\";\n      proxy_set_header Host $host;\n\
                   proxy_read_timeout 2s;\n    }}\n  }}\n}}\n",
            bp = backend.port()
        );
        let path = dir.path().join("nginx.conf");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Self::other(child, port, dir)
    }

    /// HAProxy in HTTP mode with keep-alive on both sides and default (strict) parsing.
    pub fn haproxy(backend: &ScriptedBackend) -> Option<Under> {
        let bin = which(&["/usr/sbin/haproxy", "/usr/bin/haproxy"])?;
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let conf = format!(
            "global\n  maxconn 256\ndefaults\n  mode http\n  timeout connect 2s\n\
             timeout client 10s\n  timeout server 2s\n  option http-keep-alive\n\
             frontend fe\n  bind 127.0.0.1:{port}\n  default_backend be\n\
             backend be\n  server s1 127.0.0.1:{bp}\n",
            bp = backend.port()
        );
        let path = dir.path().join("haproxy.cfg");
        std::fs::write(&path, conf).unwrap();
        let child = Command::new(bin)
            .arg("-db")
            .arg("-f")
            .arg(&path)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        Self::other(child, port, dir)
    }

    fn other(mut child: Child, port: u16, dir: tempfile::TempDir) -> Option<Under> {
        let addr: SocketAddr = ([127, 0, 0, 1], port).into();
        let end = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(addr).is_err() {
            if Instant::now() > end || child.try_wait().ok().flatten().is_some() {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Some(Under::Other {
            child,
            addr,
            _dir: dir,
        })
    }
}

impl Drop for Under {
    fn drop(&mut self) {
        if let Under::Other { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn which(paths: &[&'static str]) -> Option<&'static str> {
    paths
        .iter()
        .copied()
        .find(|p| std::path::Path::new(p).exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The request a response case sends.
fn request_for(case: &Case) -> Vec<u8> {
    match case.send {
        Some(raw) => expand(raw),
        None => format!(
            "{} /r/{} HTTP/1.1\r\nHost: t.test\r\n\r\n",
            case.method, case.name
        )
        .into_bytes(),
    }
}

/// Runs one case against the proxy at `addr`; `Ok(())` or what went wrong.
pub fn run_case(case: &Case, addr: SocketAddr, backend: &ScriptedBackend) -> Result<(), String> {
    backend.reset();
    let mut s = TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?;
    s.set_nodelay(true).unwrap();
    let head = case.method == "HEAD";
    let got = exchange(&mut s, &request_for(case), head);
    // Whatever was forwarded has arrived by now.
    std::thread::sleep(Duration::from_millis(60));
    let (seen, bytes) = backend.seen();
    let verdict = judge(&case.expect, &got, &seen, bytes);
    if verdict.is_ok()
        && !got.closed
        && matches!(
            case.expect,
            Expect::Relay(_) | Expect::RelayOr502(_) | Expect::RelayOrTruncated(_)
        )
    {
        // The connection must still be in step: the next request gets its own answer.
        let next = exchange(
            &mut s,
            b"GET /r/followup HTTP/1.1\r\nHost: t.test\r\n\r\n",
            false,
        );
        if next.status != 200 || next.body != b"ok" || !next.extra.is_empty() {
            return Err(format!(
                "connection out of step afterwards: follow-up got {next:?}"
            ));
        }
    }
    verdict.map_err(|e| format!("{e}; client got {got:?}; backend saw {seen:?} ({bytes} B)"))
}

fn forwarded_ok(f: &Fwd, got: &Got, seen: &[Seen]) -> Result<(), String> {
    if seen.len() != 1 {
        return Err(format!("backend saw {} requests", seen.len()));
    }
    let r = &seen[0];
    if !r.complete || r.ambiguous {
        return Err("backend saw an incomplete or ambiguous request".into());
    }
    if f.target.is_some_and(|t| t != r.target) {
        return Err(format!("target {:?}, expected {:?}", r.target, f.target));
    }
    if f.host.is_some_and(|h| Some(h) != r.host.as_deref()) {
        return Err(format!("Host {:?}, expected {:?}", r.host, f.host));
    }
    if r.body != f.body {
        return Err(format!("body {:?}", String::from_utf8_lossy(&r.body)));
    }
    if got.status != 200 || got.body != b"ok" || !got.extra.is_empty() {
        return Err("client did not get exactly the backend's answer".into());
    }
    if f.close && !got.closed {
        return Err("connection left open after ambiguous framing".into());
    }
    Ok(())
}

fn rejected_ok(codes: &[u16], got: &Got, seen: &[Seen], bytes: usize) -> Result<(), String> {
    if bytes > 0 || !seen.is_empty() {
        return Err(format!("backend received {bytes} bytes"));
    }
    if !codes.contains(&got.status) {
        return Err(format!("status {}, expected one of {codes:?}", got.status));
    }
    if !got.extra.is_empty() {
        return Err("bytes after the answer".into());
    }
    Ok(())
}

fn relayed_ok(r: &Rel, got: &Got) -> Result<(), String> {
    if got.status != r.status || got.body != r.body || !got.complete || !got.extra.is_empty() {
        return Err(format!(
            "expected {} {:?} whole and nothing after",
            r.status,
            String::from_utf8_lossy(r.body)
        ));
    }
    if let Some(missing) = r.interim.iter().find(|c| !got.interim.contains(c)) {
        return Err(format!("interim {missing} not forwarded"));
    }
    Ok(())
}

fn bad_gateway_ok(got: &Got) -> Result<(), String> {
    if got.status != 502 || !got.extra.is_empty() {
        return Err("expected 502".into());
    }
    Ok(())
}

fn judge(e: &Expect, got: &Got, seen: &[Seen], bytes: usize) -> Result<(), String> {
    match e {
        Expect::Reject(codes) => rejected_ok(codes, got, seen, bytes),
        Expect::Forward(f) => forwarded_ok(f, got, seen),
        Expect::RejectOrForward(codes, f) => rejected_ok(codes, got, seen, bytes).or_else(|a| {
            forwarded_ok(f, got, seen)
                .map_err(|b| format!("not rejected ({a}), not forwarded ({b})"))
        }),
        Expect::BadGateway => bad_gateway_ok(got),
        Expect::Relay(r) => relayed_ok(r, got),
        Expect::RelayOr502(r) => relayed_ok(r, got).or_else(|_| bad_gateway_ok(got)),
        Expect::RelayOrTruncated(r) => {
            relayed_ok(r, got).or_else(|_| judge(&Expect::Truncated, got, seen, bytes))
        }
        Expect::Truncated => {
            if got.status == 502 || (got.closed && !got.complete) {
                Ok(())
            } else {
                Err("a broken body was relayed as complete".into())
            }
        }
    }
}

//! The heartbeat thread: active health checks (TCP connect, an HTTP GET, or a gRPC
//! `grpc.health.v1.Health/Check` over h2c) on its own mio loop, jittered per backend, each
//! server with its own check, feeding the rise/fall hysteresis, expiring passive
//! ejections, and printing the `-d` status table.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token, Waker};

use crate::balancer::Balancer;
use crate::config::{Check, HealthSettings};
use crate::rng::XorShift;
use crate::transport::{TlsFailure, Transport};

use super::grpc::Call;
use super::{reason_index, Health, Hysteresis};

const WAKE: Token = Token(usize::MAX);

enum ProbeState {
    Idle,
    Connecting(Transport),
    /// A TLS server's handshake, before (or as) its check.
    Handshaking(Transport),
    Writing(Transport, usize),
    Reading(Transport, Vec<u8>),
    /// A gRPC health call in progress on its own HTTP/2 connection.
    Grpc(Transport, Box<Call>),
}

impl ProbeState {
    /// Takes this probe's socket, if any, out of the poll.
    fn deregister(&mut self, reg: &mio::Registry) {
        match self {
            ProbeState::Connecting(sock)
            | ProbeState::Handshaking(sock)
            | ProbeState::Writing(sock, _)
            | ProbeState::Reading(sock, _)
            | ProbeState::Grpc(sock, _) => {
                let _ = reg.deregister(sock.tcp_mut());
            }
            ProbeState::Idle => {}
        }
    }
}

struct Probe {
    addr: SocketAddr,
    /// This server's check.
    check: Check,
    /// `:authority` of the gRPC checks: the address and port as configured.
    authority: String,
    state: ProbeState,
    due: Instant,
    deadline: Instant,
    hyst: Hysteresis,
    last: &'static str,
    rng: XorShift,
}

/// What the checker thread watches and updates, held by a higher layer.
pub trait Monitored: Send + Sync + 'static {
    fn health(&self) -> &Health;
    fn balancer(&self) -> &Balancer;
}

/// The health-check thread.
pub struct Checker {
    waker: Arc<Waker>,
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl Checker {
    /// Starts the checker thread on what `owner` holds (the workers' `Shared`): the
    /// checker sees only the health state and the balancer, so it needs no higher layer.
    pub fn start<S: Monitored>(owner: Arc<S>) -> io::Result<Checker> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let thread = std::thread::Builder::new()
            .name("corelb-health".into())
            .spawn(move || check_loop(poll, owner, s2))?;
        Ok(Checker {
            waker,
            stop,
            thread,
        })
    }

    pub fn stop(self) {
        self.stop.store(true, Relaxed);
        let _ = self.waker.wake();
        let _ = self.thread.join();
    }
}

/// `base` shifted by up to ±10%, so probes of many servers do not synchronise.
fn jittered(base: Duration, rng: &mut XorShift) -> Duration {
    base.mul_f64(0.9 + 0.2 * rng.next_f64())
}

fn check_loop<S: Monitored>(mut poll: Poll, owner: Arc<S>, stop: Arc<AtomicBool>) {
    let (health, bal) = (owner.health(), owner.balancer());
    let s = health.settings.clone();
    let start = Instant::now();
    let new_probe = |i: usize, at: Instant| {
        let mut rng = XorShift::new(i as u64);
        // First probes spread over the first interval.
        let offset = s.interval.mul_f64(rng.next_f64());
        let b = bal.backend(i);
        Probe {
            addr: b.addr,
            check: health.check(bal, i),
            authority: String::from_utf8_lossy(&b.host).into_owned(),
            state: ProbeState::Idle,
            due: at + offset,
            deadline: at,
            hyst: Hysteresis::new(),
            last: "not checked yet",
            rng,
        }
    };
    // One probe per slot that is active or drained on request (a drained server is still
    // checked, so it comes back as it is); none for removed ones.
    let mut probes: Vec<Option<Probe>> = Vec::new();
    let mut seen_generation = None;
    let mut events = Events::with_capacity(64);
    let mut next_table = start + s.interval;
    while !stop.load(Relaxed) {
        let now = Instant::now();
        let generation = bal.generation();
        if seen_generation != Some(generation) {
            seen_generation = Some(generation);
            sync_probes(&mut probes, bal, poll.registry(), |i| new_probe(i, now));
        }
        let mut wake_at = now + Duration::from_millis(500);
        if s.enabled {
            for p in probes.iter().flatten() {
                let t = if matches!(p.state, ProbeState::Idle) {
                    p.due
                } else {
                    p.deadline
                };
                wake_at = wake_at.min(t);
            }
        }
        if let Some(until) = health.expire_ejections(bal, health.now_ms()) {
            let in_ms = until.saturating_sub(health.now_ms());
            wake_at = wake_at.min(now + Duration::from_millis(in_ms));
        }
        let timeout = wake_at.saturating_duration_since(now);
        if poll.poll(&mut events, Some(timeout)).is_err() {
            continue;
        }
        if !s.enabled {
            continue;
        }
        // Progress probes with events, then start due ones and time out late ones.
        for ev in events.iter() {
            if ev.token() == WAKE {
                continue;
            }
            let i = ev.token().0;
            let Some(Some(p)) = probes.get_mut(i) else {
                continue;
            };
            if let Some((ok, why)) = advance(p) {
                finish(p, i, ok, why, health, bal, &s, poll.registry());
            }
        }
        let now = Instant::now();
        for (i, p) in probes.iter_mut().enumerate() {
            let Some(p) = p else { continue };
            match p.state {
                ProbeState::Idle if now >= p.due => match open(p.addr, &bal.backend(i).tls) {
                    Ok(mut sock) => {
                        if poll
                            .registry()
                            .register(
                                sock.tcp_mut(),
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            )
                            .is_ok()
                        {
                            p.state = ProbeState::Connecting(sock);
                            p.deadline = now + s.timeout;
                        }
                    }
                    Err(why) => finish(p, i, false, why, health, bal, &s, poll.registry()),
                },
                ProbeState::Idle => {}
                _ if now >= p.deadline => {
                    finish(p, i, false, "timed out", health, bal, &s, poll.registry())
                }
                _ => {}
            }
        }
        if health.debug && now >= next_table {
            next_table = now + s.interval;
            print_table(&probes, health, bal);
        }
    }
}

/// Makes `probes` hold one probe per slot that is active or drained on request, and none
/// for other slots (a removed server's probe is dropped, its socket deregistered).
fn sync_probes(
    probes: &mut Vec<Option<Probe>>,
    bal: &Balancer,
    reg: &mio::Registry,
    mut new_probe: impl FnMut(usize) -> Probe,
) {
    use crate::balancer::SlotState;
    if probes.len() < bal.len() {
        probes.resize_with(bal.len(), || None);
    }
    for (i, p) in probes.iter_mut().enumerate() {
        let wanted = matches!(bal.backend(i).state(), SlotState::Active | SlotState::Drain);
        match (wanted, p.is_some()) {
            (true, false) => *p = Some(new_probe(i)),
            (false, true) => {
                if let Some(mut old) = p.take() {
                    old.state.deregister(reg);
                }
            }
            _ => {}
        }
    }
}

/// Starts a connect to `addr`, in TLS when the server has it.
fn open(
    addr: SocketAddr,
    tls: &Option<Result<crate::tls::Upstream, String>>,
) -> Result<Transport, &'static str> {
    let tcp = TcpStream::connect(addr).map_err(|_| "connect failed")?;
    match tls {
        None => Ok(Transport::Tcp(tcp)),
        Some(Ok(t)) => Transport::tls_client(tcp, t.config.clone(), t.name.clone())
            .map_err(|_| "tls settings unusable"),
        Some(Err(_)) => Err("tls settings unusable"),
    }
}

/// The reason a failed TLS handshake gives.
fn tls_failed(sock: &Transport) -> &'static str {
    match sock.failure() {
        Some(TlsFailure::Certificate) => "tls certificate refused",
        _ => "tls handshake failed",
    }
}

/// The HTTP check's request.
fn http_request(path: &str, host: &str) -> Vec<u8> {
    format!("GET {path} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: corelb-health\r\nConnection: close\r\n\r\n").into_bytes()
}

/// Moves a probe along after a readiness event; `Some((ok, why))` when it has a result.
fn advance(p: &mut Probe) -> Option<(bool, &'static str)> {
    loop {
        match std::mem::replace(&mut p.state, ProbeState::Idle) {
            ProbeState::Idle => return None,
            ProbeState::Connecting(sock) => {
                match sock.tcp().take_error() {
                    Ok(Some(_)) | Err(_) => return Some((false, "connection refused")),
                    Ok(None) => {}
                }
                match sock.tcp().peer_addr() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::NotConnected => {
                        p.state = ProbeState::Connecting(sock);
                        return None;
                    }
                    Err(_) => return Some((false, "connection refused")),
                }
                p.state = ProbeState::Handshaking(sock);
            }
            ProbeState::Handshaking(mut sock) => {
                match sock.handshake() {
                    Ok(_) => {}
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.state = ProbeState::Handshaking(sock);
                        return None;
                    }
                    Err(_) => return Some((false, tls_failed(&sock))),
                }
                match &p.check {
                    Check::Tcp if sock.is_tls() => return Some((true, "tls handshake ok")),
                    Check::Tcp => return Some((true, "tcp connect ok")),
                    Check::Http { .. } => p.state = ProbeState::Writing(sock, 0),
                    Check::Grpc { service } => {
                        let call = Call::new(&p.authority, service);
                        p.state = ProbeState::Grpc(sock, Box::new(call));
                    }
                }
            }
            ProbeState::Grpc(mut sock, mut call) => {
                let r = drive_grpc(&mut sock, &mut call);
                if r.is_none() {
                    p.state = ProbeState::Grpc(sock, call);
                }
                return r;
            }
            ProbeState::Writing(mut sock, off) => {
                let Check::Http { path, .. } = &p.check else {
                    return Some((false, "other"));
                };
                let req = http_request(path, &p.addr.to_string());
                match sock.write2(&req[off..], &[]) {
                    Ok(n) if off + n == req.len() => {
                        p.state = ProbeState::Reading(sock, Vec::new())
                    }
                    Ok(n) => {
                        p.state = ProbeState::Writing(sock, off + n);
                        return None;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.state = ProbeState::Writing(sock, off);
                        return None;
                    }
                    Err(_) => return Some((false, "reset while sending check")),
                }
            }
            ProbeState::Reading(mut sock, mut buf) => {
                let mut chunk = [0u8; 1024];
                match sock.read(&mut chunk) {
                    Ok(0) => return Some(status_result(&buf, &p.check, true)),
                    Ok(n) => {
                        buf.extend_from_slice(&chunk[..n]);
                        let r = status_result(&buf, &p.check, false);
                        if r.1 != "incomplete" {
                            return Some(r);
                        }
                        if buf.len() > 16 * 1024 {
                            return Some((false, "check response head too large"));
                        }
                        p.state = ProbeState::Reading(sock, buf);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        p.state = ProbeState::Reading(sock, buf);
                        return None;
                    }
                    Err(_) if sock.failure().is_some() => return Some((false, tls_failed(&sock))),
                    Err(_) => return Some((false, "reset while reading check")),
                }
            }
        }
    }
}

/// Writes what the gRPC call has queued and reads what the server sent, until the socket
/// would block (edge-triggered readiness) or the call is over.
fn drive_grpc(sock: &mut Transport, call: &mut Call) -> Option<(bool, &'static str)> {
    let mut chunk = [0u8; 4096];
    loop {
        while !call.output().is_empty() {
            match sock.write2(call.output(), &[]) {
                Ok(0) => return Some(call.closed()),
                Ok(n) => call.advance_output(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return Some((false, "reset while sending check")),
            }
        }
        match sock.read(&mut chunk) {
            Ok(0) => return Some(call.closed()),
            Ok(n) => {
                if let Some(r) = call.feed(&chunk[..n], Instant::now()) {
                    return Some(r);
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) if sock.failure().is_some() => return Some((false, tls_failed(sock))),
            Err(_) => return Some((false, "reset while reading check")),
        }
    }
}

fn status_result(buf: &[u8], check: &Check, eof: bool) -> (bool, &'static str) {
    let Check::Http { expect, .. } = check else {
        return (true, "ok");
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(buf) {
        Ok(_) if r.code.is_some() => {
            if r.code == Some(*expect) {
                (true, "http status ok")
            } else {
                (false, "unexpected http status")
            }
        }
        Ok(_) if !eof => (false, "incomplete"),
        _ => (false, "malformed http response"),
    }
}

#[allow(clippy::too_many_arguments)]
fn finish(
    p: &mut Probe,
    i: usize,
    ok: bool,
    why: &'static str,
    health: &Health,
    bal: &Balancer,
    s: &HealthSettings,
    reg: &mio::Registry,
) {
    // The old state (and its socket) is dropped once out of the poll.
    std::mem::replace(&mut p.state, ProbeState::Idle).deregister(reg);
    p.last = why;
    health.cells[i].last.store(reason_index(why), Relaxed);
    p.due = Instant::now() + jittered(s.interval, &mut p.rng);
    if let Some(up) = p.hyst.feed(ok, s.rise, s.fall) {
        let cell = &health.cells[i];
        cell.checked_down.store(!up, Relaxed);
        if up {
            // Recovered by active checks: an ejection from while it was dead ends too (as
            // Envoy's outlier detection does on a successful active check), and latency
            // estimates from before the outage are forgotten, so it is probed at once.
            cell.ejected_until.store(0, Relaxed);
            cell.failures.store(0, Relaxed);
            bal.backend(i).stats.est.forget();
        }
        let changed = health.publish(bal, i, health.now_ms());
        let b = bal.backend(i);
        let verb = if up { "UP" } else { "DOWN" };
        let (succ, fail) = p.hyst.streak();
        let streak = if up {
            format!("{succ} consecutive successful checks")
        } else {
            format!("{fail} consecutive failed checks ({why})")
        };
        if health.debug || changed.is_some() {
            eprintln!(
                "corelb: server {} ({}, priority {}) is {verb}: {streak}",
                b.name,
                b.addr,
                b.priority()
            );
        }
    }
}

fn print_table(probes: &[Option<Probe>], health: &Health, bal: &Balancer) {
    let mut out = String::from("corelb: heartbeat status\n  server           address                priority  state     check  last check\n");
    for (i, p) in probes.iter().enumerate() {
        let Some(p) = p else { continue };
        let b = bal.backend(i);
        let v = health.view(bal, i);
        let state = if v.ejected {
            "EJECTED"
        } else if v.up {
            "UP"
        } else {
            "DOWN"
        };
        out.push_str(&format!(
            "  {:<16} {:<22} {:>8}  {:<9} {:<6} {}\n",
            b.name,
            b.addr.to_string(),
            b.priority(),
            state,
            p.check.kind(),
            p.last
        ));
    }
    eprint!("{out}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_specs() {
        assert_eq!(Check::parse("tcp"), Some(Check::Tcp));
        assert_eq!(
            Check::parse("http"),
            Some(Check::Http {
                path: "/health".into(),
                expect: 200
            })
        );
        assert_eq!(
            Check::parse("http:/ping"),
            Some(Check::Http {
                path: "/ping".into(),
                expect: 200
            })
        );
        assert_eq!(
            Check::parse("http:/ping:204"),
            Some(Check::Http {
                path: "/ping".into(),
                expect: 204
            })
        );
        assert_eq!(Check::parse("http:ping"), None);
        assert_eq!(Check::parse("udp"), None);
        assert_eq!(
            Check::parse("grpc"),
            Some(Check::Grpc { service: "".into() })
        );
        assert_eq!(
            Check::parse("grpc:tts.TTS"),
            Some(Check::Grpc {
                service: "tts.TTS".into()
            })
        );
        assert_eq!(Check::parse("grpc:a b"), None);
        assert_eq!(Check::parse("grpcx"), None);
        assert_eq!(
            Check::parse("grpc:tts.TTS").unwrap().to_string(),
            "grpc:tts.TTS"
        );
    }

    #[test]
    fn status_results() {
        let c = Check::Http {
            path: "/".into(),
            expect: 200,
        };
        assert!(status_result(b"HTTP/1.1 200 OK\r\n", &c, false).0);
        assert!(!status_result(b"HTTP/1.1 503 X\r\n", &c, false).0);
        assert_eq!(status_result(b"HTTP/1.1", &c, false).1, "incomplete");
        assert!(!status_result(b"garbage!", &c, true).0);
    }
}

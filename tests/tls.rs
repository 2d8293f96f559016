//! TLS to clients, end to end: corelb with `--tls-listen` in front of real backends,
//! reached by curl, h2load and a rustls client. What a user sees: HTTPS and HTTP/2 by
//! ALPN, the certificate SNI picks, X-Forwarded-Proto, plain HTTP answered 400, slow and
//! malformed handshakes closed without harm to others, resumption, reloads that swap the
//! certificate without dropping connections, and `--check` on the certificate files.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::tls::{Pki, TlsClient};
use common::*;

/// corelb with one TLS listener serving `certs` (the first is the default) in front of
/// `backends`.
fn tls_proxy(backends: &[&Backend], certs: &[&common::tls::Issued], extra: &[&str]) -> Proxy {
    Proxy::start(backends, &tls_flags(certs, extra))
}

/// The flags of one TLS listener serving `certs`, an admin listener, and `extra`.
fn tls_flags<'a>(certs: &[&'a common::tls::Issued], extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["--tls-listen", "127.0.0.1:0", "--admin", "127.0.0.1:0"];
    for c in certs {
        args.extend(["--tls-cert", c.cert_str(), "--tls-key", c.key_str()]);
    }
    args.extend(extra);
    args
}

/// curl (`flag`: its HTTP version) for `path` over HTTPS to TLS listener `tls` as
/// localhost, trusting `pki`'s CA, with `extra` arguments: its exit code and output,
/// which ends with a line of the status code and HTTP version.
fn curl_https(tls: SocketAddr, pki: &Pki, flag: &str, path: &str, extra: &[&str]) -> (i32, String) {
    let url = format!("https://localhost:{}{path}", tls.port());
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let ca = pki.ca_path();
    let mut args = vec![
        flag,
        "--cacert",
        ca.to_str().unwrap(),
        "--resolve",
        &resolve,
    ];
    args.extend(extra);
    args.extend(["-w", "\n%{http_code} %{http_version}", &url]);
    let (code, out) = curl(&args);
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// Backend A behind corelb with one TLS listener serving a localhost certificate from a
/// fresh CA (the `Pki`, for clients to trust), with `extra` flags.
fn localhost_proxy(extra: &[&str]) -> (Backend, Pki, Proxy) {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let p = tls_proxy(&[&a], &[&cert], extra);
    (a, pki, p)
}

fn tls_stats(p: &Proxy) -> serde_json::Value {
    let r = get(p.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["totals"]["tls"].clone()
}

#[test]
fn https_and_http2_by_alpn_reach_the_backend_with_x_forwarded_proto() {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost", "127.0.0.1"], 30);
    let p = tls_proxy(&[&a], &[&cert], &[]);
    let tls = p.tls.unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let spoof = ["-H", "X-Forwarded-Proto: gopher"];
        let (code, text) = curl_https(tls, &pki, flag, "/headers", &spoof);
        assert_eq!(code, 0, "curl {flag}: {text}");
        assert!(
            text.ends_with(&format!("\n200 {version}")),
            "{flag}: {text}"
        );
        let head = text.to_ascii_lowercase();
        assert!(
            head.contains("x-forwarded-proto: https\r\n"),
            "{flag}: the backend is told https: {text}"
        );
        assert!(
            !head.contains("gopher"),
            "{flag}: the client's own is dropped"
        );
    }
    // The cleartext listener of the same proxy says http, whatever the client claims.
    let r = raw(
        p.addr,
        b"GET /headers HTTP/1.1\r\nHost: t\r\nX-Forwarded-Proto: https\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    let body = r.text().to_ascii_lowercase();
    assert!(body.contains("x-forwarded-proto: http\r\n"), "{body}");
    assert!(!body.contains("x-forwarded-proto: https"), "{body}");
    let t = tls_stats(&p);
    assert_eq!(t["handshakes"], 2, "{t}");
    assert_eq!(
        (t["alpn_h2"].as_u64(), t["alpn_http1_1"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(t["tls1_3"], 2, "{t}");
}

/// One exchange, one head: an h2c backend is told the scheme the client used, whichever
/// protocol the client spoke (before, an HTTP/1.1 client over TLS was forwarded as http).
#[test]
fn an_h2c_backend_gets_scheme_https_from_tls_clients_of_either_protocol() {
    let a = Backend::start("A", "fast", &["--protocol", "h2c"]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let json = format!(
        r#"{{"servers": [{{"name": "A", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}}]}}"#,
        a.port()
    );
    let p = Proxy::with_config(&json, &tls_flags(&[&cert], &[]));
    let tls = p.tls.unwrap();
    for (flag, version) in [("--http1.1", "1.1"), ("--http2", "2")] {
        let (code, text) = curl_https(tls, &pki, flag, "/headers", &[]);
        assert_eq!(code, 0, "curl {flag}: {text}");
        assert!(
            text.ends_with(&format!("\n200 {version}")),
            "{flag}: {text}"
        );
        assert!(text.contains(":scheme: https\n"), "{flag}: {text}");
        assert!(
            text.contains(&format!(":authority: localhost:{}\n", tls.port())),
            "{flag}: {text}"
        );
        assert!(
            text.contains("x-forwarded-proto: https\n"),
            "{flag}: {text}"
        );
    }
    // The cleartext listener of the same proxy says http.
    let r = raw(
        p.addr,
        b"GET /headers HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.text().contains(":scheme: http\n"), "{}", r.text());
    assert!(
        r.text().contains("x-forwarded-proto: http\n"),
        "{}",
        r.text()
    );
}

#[test]
fn sni_picks_the_certificate_by_its_names_and_defaults_to_the_first() {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let first = pki.issue(&["first.test"], 30);
    let exact = pki.issue(&["a.test"], 30);
    let wild = pki.issue(&["*.b.test"], 30);
    let p = tls_proxy(&[&a], &[&first, &exact, &wild], &[]);
    let addr = p.tls.unwrap();
    let client = pki.client(&["http/1.1"]);
    let served = |sni: &str| TlsClient::connect(&client, addr, sni).map(|c| c.served());
    assert_eq!(served("a.test").unwrap(), exact.der);
    assert_eq!(
        served("A.TEST").unwrap(),
        exact.der,
        "names match without case"
    );
    assert_eq!(served("x.b.test").unwrap(), wild.der);
    assert_eq!(served("first.test").unwrap(), first.der);
    // No match, or no SNI at all (an IP address): the first certificate, which the
    // client then refuses for that name.
    assert!(served("other.test").is_err());
    let mut insecure = rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(corelb::tls::unverified())
        .with_no_client_auth();
    insecure.alpn_protocols = vec![b"http/1.1".to_vec()];
    let insecure = std::sync::Arc::new(insecure);
    for sni in ["other.test", "127.0.0.1", "c.a.b.test"] {
        let c = TlsClient::connect(&insecure, addr, sni).unwrap();
        assert_eq!(c.served(), first.der, "{sni}");
    }
    let mut c = TlsClient::connect(&client, addr, "a.test").unwrap();
    assert_eq!(c.alpn().as_deref(), Some("http/1.1"));
    assert_eq!(c.get("/").unwrap().status, 200);
}

#[test]
fn plain_http_to_the_tls_port_gets_a_400_and_nothing_is_forwarded() {
    let (a, _pki, p) = localhost_proxy(&["--health-check", "off"]);
    let before = a.requests();
    let r = raw(
        p.tls.unwrap(),
        b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello",
    )
    .unwrap();
    assert_eq!(r.status, 400);
    assert_eq!(r.text(), "plain HTTP request sent to a TLS port\n");
    assert_eq!(r.header("connection"), Some("close"));
    assert_eq!(a.requests(), before, "nothing reached the backend");
    assert_eq!(tls_stats(&p)["failures"]["plain_http"], 1);
}

/// Reads until EOF or an error; `true` when the peer closed within `limit`.
fn closed_within(s: &mut TcpStream, limit: Duration) -> bool {
    s.set_read_timeout(Some(limit)).unwrap();
    let mut b = [0u8; 4096];
    let end = Instant::now() + limit;
    while Instant::now() < end {
        match s.read(&mut b) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return false,
            Err(_) => return true,
        }
    }
    false
}

#[test]
fn a_trickled_client_hello_times_out_and_malformed_ones_harm_no_one() {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let p = tls_proxy(
        &[&a],
        &[&cert],
        &["--tls-handshake-timeout", "500ms", "--workers", "1"],
    );
    let addr = p.tls.unwrap();
    let client = pki.client(&["http/1.1"]);
    // A ClientHello trickled: the record header, then nothing more.
    let mut slow = TcpStream::connect(addr).unwrap();
    slow.write_all(&[0x16, 0x03, 0x01]).unwrap();
    let started = Instant::now();
    assert!(closed_within(&mut slow, Duration::from_secs(10)));
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(400), "closed after {took:?}");
    // Malformed records and ClientHellos: each closes its own connection only.
    let mut rng = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut good = TlsClient::connect(&client, addr, "localhost").unwrap();
    for i in 0..2000 {
        let mut s = TcpStream::connect(addr).unwrap();
        let len = (next() % 300) as usize;
        let mut rec = vec![0x16, 0x03, (next() % 4) as u8, (len >> 8) as u8, len as u8];
        if i % 3 == 0 {
            // A handshake message header claiming a ClientHello, then noise.
            rec.extend([0x01, 0x00, (len >> 8) as u8, len as u8, 0x03, 0x03]);
        }
        rec.extend((0..len).map(|_| next() as u8));
        if i % 5 == 0 {
            rec[0] = (next() % 256) as u8 | 0x80; // not a record type at all
        }
        let _ = s.write_all(&rec);
        let _ = s.shutdown(std::net::Shutdown::Write);
        assert!(
            closed_within(&mut s, Duration::from_secs(10)),
            "attempt {i}"
        );
        if i % 200 == 0 {
            assert_eq!(good.get("/").unwrap().status, 200, "after attempt {i}");
        }
    }
    assert_eq!(good.get("/").unwrap().status, 200);
    let t = tls_stats(&p);
    assert_eq!(t["handshake_timeouts"], 1, "{t}");
    let failed: u64 = ["protocol", "incompatible", "alert", "eof", "plain_http"]
        .iter()
        .map(|k| t["failures"][k].as_u64().unwrap())
        .sum();
    assert!(failed >= 1900, "{t}");
    assert_eq!(stat(&p, "panics"), 0);
}

#[test]
fn sessions_resume_from_tickets_on_any_worker() {
    let (_a, pki, p) = localhost_proxy(&["--workers", "2"]);
    let addr = p.tls.unwrap();
    let client = pki.client(&["http/1.1"]);
    let mut first = TlsClient::connect(&client, addr, "localhost").unwrap();
    assert!(!first.resumed());
    // TLS 1.3 tickets arrive after the handshake: read a response to have them.
    assert_eq!(first.get("/").unwrap().status, 200);
    let mut resumed = 0;
    for _ in 0..8 {
        let mut c = TlsClient::connect(&client, addr, "localhost").unwrap();
        assert_eq!(c.get("/").unwrap().status, 200);
        resumed += c.resumed() as u32;
    }
    assert_eq!(
        resumed, 8,
        "every later connection resumed, whichever worker took it"
    );
    let t = tls_stats(&p);
    assert_eq!(
        (t["handshakes"].as_u64(), t["resumed"].as_u64()),
        (Some(9), Some(8))
    );
}

/// corelb whose one certificate is read from files the test may rewrite before a reload:
/// the proxy, the files' directory, the certificate and key paths.
fn swappable(
    a: &Backend,
    first: &common::tls::Issued,
) -> (
    Proxy,
    tempfile::TempDir,
    std::path::PathBuf,
    std::path::PathBuf,
) {
    let dir = tempfile::tempdir().unwrap();
    let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
    std::fs::copy(&first.cert, &cert).unwrap();
    std::fs::copy(&first.key, &key).unwrap();
    let json = format!(
        r#"{{"servers": [{{"name": "A", "address": "127.0.0.1", "port": {}}}],
            "tls": {{"listen": ["127.0.0.1:0"], "certificates": [{{"cert": "{}", "key": "{}"}}]}}}}"#,
        a.port(),
        cert.display(),
        key.display()
    );
    let p = Proxy::with_config(&json, &["--admin", "127.0.0.1:0"]);
    (p, dir, cert, key)
}

/// `POST /reload` on the proxy's admin listener.
fn reload(p: &Proxy) -> Resp {
    let mut s = connect(p.admin.unwrap());
    s.write_all(
        b"POST /reload HTTP/1.1\r\nHost: a\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .unwrap();
    read_response(&mut s, &mut Vec::new(), "POST").unwrap()
}

#[test]
fn a_reload_swaps_the_certificate_for_new_handshakes_and_keeps_established_ones() {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let one = pki.issue(&["localhost"], 30);
    let (p, _dir, cert, key) = swappable(&a, &one);
    let addr = p.tls.unwrap();
    let client = pki.client(&["http/1.1"]);
    let mut old = TlsClient::connect(&client, addr, "localhost").unwrap();
    assert_eq!(old.served(), one.der);
    assert_eq!(old.get("/").unwrap().status, 200);
    let two = pki.issue_to(&["localhost"], 60, &cert, &key);
    let r = reload(&p);
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(
        r.text().contains("TLS certificates read again: 1"),
        "{}",
        r.text()
    );
    // The swap is done when /reload answers: the next full handshake gets the new one
    // (a fresh client: a resumed session keeps the certificate it was made with).
    let mut new = TlsClient::connect(&pki.client(&["http/1.1"]), addr, "localhost").unwrap();
    assert!(!new.resumed());
    assert_eq!(new.served(), two.der);
    assert_eq!(new.get("/").unwrap().status, 200);
    assert_eq!(
        old.get("/").unwrap().status,
        200,
        "the established one still works"
    );
    // A bad file: refused, and the running certificate stays.
    std::fs::write(&cert, "not a certificate").unwrap();
    let r = reload(&p);
    assert_ne!(r.status, 200);
    let text = r.text();
    assert!(text.contains("tls.certificates[0].cert"), "{text}");
    assert_eq!(stat(&p, "reload_failures"), 1);
    let c = TlsClient::connect(&pki.client(&["http/1.1"]), addr, "localhost").unwrap();
    assert_eq!(c.served(), two.der);
    assert_eq!(old.get("/").unwrap().status, 200);
}

fn check(args: &[&str]) -> (i32, String) {
    let out = std::process::Command::new(PROXY)
        .args(["--check", "--admin", "off", "--log-csv", "off"])
        .args(args)
        .env_remove("PROXY_SERVER_PORT")
        .env_remove("PROXY_SERVER_CONFIG")
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_validates_each_certificate_and_key() {
    let mut pki = Pki::new();
    let good = pki.issue(&["localhost"], 30);
    let other = pki.issue(&["localhost"], 30);
    let soon = pki.issue(&["soon.test"], 5);
    let expired = pki.issue(&["old.test"], -3);
    let tls = |c: &str, k: &str| {
        vec![
            "--tls-listen".to_string(),
            "127.0.0.1:0".to_string(),
            "--tls-cert".to_string(),
            c.to_string(),
            "--tls-key".to_string(),
            k.to_string(),
        ]
    };
    let run = |v: Vec<String>| check(&v.iter().map(String::as_str).collect::<Vec<_>>());
    let (code, text) = run(tls(good.cert_str(), good.key_str()));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("tls 127.0.0.1:0 (1 certificate(s))"),
        "{text}"
    );
    let (code, text) = run(tls(good.cert_str(), other.key_str()));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("command line: --tls-key #1: ")
            && text.contains("does not match the certificate"),
        "{text}"
    );
    assert_eq!(text.lines().count(), 1, "one line: {text}");
    let (code, text) = run(tls(expired.cert_str(), expired.key_str()));
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("--tls-cert #1: expired on"), "{text}");
    let (code, text) = run(tls(soon.cert_str(), soon.key_str()));
    assert_eq!(code, 0, "{text}");
    assert!(
        text.contains("warning: command line: --tls-cert #1:")
            && text.contains("expires in 4 day(s)"),
        "{text}"
    );
    let (code, text) = run(tls("/nonexistent.pem", good.key_str()));
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--tls-cert #1: cannot read /nonexistent.pem"),
        "{text}"
    );
    let (code, text) = check(&["--tls-listen", "127.0.0.1:0"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--tls-listen: a TLS listener needs a certificate"),
        "{text}"
    );
    let (code, text) = check(&["--tls-cert", good.cert_str()]);
    assert_eq!(code, 2, "{text}");
    assert!(text.contains("give them in pairs"), "{text}");
    let (code, text) = check(&["--listen", "off"]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("--listen: off, and no TLS listener"),
        "{text}"
    );
    // The file form names the file and the field.
    let f = pki.dir.path().join("c.json");
    std::fs::write(
        &f,
        format!(
            r#"{{"servers": [{{"name": "A", "address": "127.0.0.1", "port": 1}}],
                "tls": {{"listen": "127.0.0.1:0", "alpn": ["h3"], "certificates": [{{"cert": "{}", "key": "{}"}}]}}}}"#,
            good.cert.display(),
            good.key.display()
        ),
    )
    .unwrap();
    let (code, text) = check(&["--config", f.to_str().unwrap()]);
    assert_eq!(code, 2, "{text}");
    assert!(
        text.contains("c.json: tls.alpn: unknown protocol \"h3\""),
        "{text}"
    );
}

#[test]
fn large_bodies_go_both_ways_over_tls_intact() {
    let (_a, pki, p) = localhost_proxy(&[]);
    let tls = p.tls.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..3_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let up = dir.path().join("up.bin");
    std::fs::write(&up, &body).unwrap();
    let resolve = format!("localhost:{}:127.0.0.1", tls.port());
    let url = format!("https://localhost:{}/echo", tls.port());
    let ca = pki.ca_path();
    for flag in ["--http1.1", "--http2"] {
        let at = format!("@{}", up.display());
        let (code, out) = curl(&[
            flag,
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &resolve,
            "--data-binary",
            &at,
            &url,
        ]);
        assert_eq!(code, 0, "{flag}");
        assert!(
            out == body,
            "{flag}: {} bytes back, not the same",
            out.len()
        );
    }
}

#[test]
fn h2load_over_tls_gets_every_response() {
    if !have("h2load") {
        return skip("h2load not installed (scripts/deps.sh test)");
    }
    let a = Backend::start("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let p = tls_proxy(&[&a, &b], &[&cert], &[]);
    let out = std::process::Command::new("h2load")
        .args(["-n", "2000", "-c", "4", "-m", "16", "-t", "1"])
        .arg(format!("https://127.0.0.1:{}/", p.tls.unwrap().port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Application protocol: h2"), "{text}");
    assert!(
        text.contains("2000 succeeded, 0 failed, 0 errored"),
        "{text}"
    );
    assert!(text.contains("status codes: 2000 2xx"), "{text}");
    assert!(a.requests() > 0 && b.requests() > 0, "both backends served");
}

#[test]
fn grpc_calls_over_tls_are_balanced_per_call() {
    let Some(python) = venv_python() else {
        return skip("grpcio venv missing (scripts/deps.sh grpc)");
    };
    let a = Backend::start("A", "fast", &["--protocol", "grpc"]);
    let b = Backend::start("B", "fast", &["--protocol", "grpc"]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let p = tls_proxy(&[&a, &b], &[&cert], &["--upstream-protocol", "h2c"]);
    let out = std::process::Command::new("timeout")
        .arg("60")
        .arg(&python)
        .arg(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/grpc/tts_client.py"))
        .args(["--calls", "200", "--concurrency", "8", "--json", "--ca"])
        .arg(pki.ca_path())
        .args(["--server-name", "localhost", "--target"])
        .arg(format!("127.0.0.1:{}", p.tls.unwrap().port()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(text.trim()).unwrap();
    assert_eq!(report["ok"], 200, "{report}");
    assert_eq!(
        report["servers"]["A"], 100,
        "one channel, balanced per call: {report}"
    );
    assert_eq!(report["servers"]["B"], 100, "{report}");
    assert_eq!(
        tls_stats(&p)["alpn_h2"],
        1,
        "one TLS connection, h2 by ALPN"
    );
}

#[test]
fn websocket_tunnels_run_over_tls() {
    let (_a, pki, p) = localhost_proxy(&[]);
    let c = TlsClient::connect(&pki.client(&["http/1.1"]), p.tls.unwrap(), "localhost").unwrap();
    let (mut ws, resp) =
        tungstenite::client("wss://localhost/ws", c.s).expect("WebSocket handshake");
    assert_eq!(resp.status(), 101);
    // Three 50 KB messages in flight at once (the test backend echoes frames up to 64 KiB):
    // more than rustls buffers either way.
    let msgs: Vec<String> = (0..3u8)
        .map(|i| ((b'a' + i) as char).to_string().repeat(50_000))
        .chain(["hello".to_string()])
        .collect();
    for m in &msgs {
        ws.send(tungstenite::Message::text(m.as_str())).unwrap();
    }
    for m in &msgs {
        match ws.read().unwrap() {
            tungstenite::Message::Text(t) => assert!(t.as_str() == m.as_str(), "{} bytes", t.len()),
            other => panic!("{other:?}"),
        }
    }
    ws.close(None).unwrap();
    assert_eq!(stat(&p, "tunnels"), 1);
}

#[test]
fn the_csv_log_says_which_requests_came_over_tls() {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let cert = pki.issue(&["localhost"], 30);
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("log.csv");
    let mut p = tls_proxy(&[&a], &[&cert], &["--log-csv", csv.to_str().unwrap()]);
    let mut c =
        TlsClient::connect(&pki.client(&["http/1.1"]), p.tls.unwrap(), "localhost").unwrap();
    assert_eq!(c.get("/tls").unwrap().status, 200);
    assert_eq!(get(p.addr, "/plain").status, 200);
    p.signal("TERM");
    assert_eq!(p.wait_exit(Duration::from_secs(20)), Some(0));
    let text = std::fs::read_to_string(&csv).unwrap();
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = header
        .iter()
        .position(|h| *h == "tls")
        .expect("a tls column");
    let path = header.iter().position(|h| *h == "path").unwrap();
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split(',').collect()).collect();
    let tls_of = |p: &str| rows.iter().find(|r| r[path] == p).map(|r| r[col]);
    assert_eq!(tls_of("/tls"), Some("TLSv1.3"));
    assert_eq!(tls_of("/plain"), Some(""));
}

#[test]
fn wrk_over_https_sees_no_error_while_the_certificate_is_swapped_ten_times() {
    if !have("wrk") {
        return skip("wrk not installed (scripts/deps.sh test)");
    }
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let one = pki.issue(&["localhost"], 30);
    let (p, dir, cert, key) = swappable(&a, &one);
    // Half the connections close after each response, so handshakes go on throughout.
    let script = dir.path().join("close.lua");
    std::fs::write(
        &script,
        "local n = 0\nrequest = function()\n  n = n + 1\n  if n % 2 == 0 then\n    return wrk.format(\"GET\", \"/\", {[\"Connection\"] = \"close\"})\n  end\n  return wrk.format(\"GET\", \"/\")\nend\n",
    )
    .unwrap();
    let url = format!("https://127.0.0.1:{}/", p.tls.unwrap().port());
    let wrk = std::process::Command::new("wrk")
        .args(["-t1", "-c8", "-d6s", "-s"])
        .arg(&script)
        .arg(&url)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    for i in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        pki.issue_to(&["localhost"], 30 + i, &cert, &key);
        let r = reload(&p);
        assert_eq!(r.status, 200, "reload {i}: {}", r.text());
    }
    let out = wrk.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(!text.contains("Socket errors"), "{text}");
    assert!(!text.contains("Non-2xx"), "{text}");
    let done: u64 = text
        .lines()
        .find_map(|l| {
            l.trim()
                .split(" requests in")
                .next()
                .filter(|_| l.contains(" requests in"))
        })
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0);
    assert!(done > 100, "{text}");
    assert_eq!(stat(&p, "reloads"), 10);
    assert_eq!(stat(&p, "reload_failures"), 0);
}

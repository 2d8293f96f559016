//! TLS to backends, end to end: a server with `"tls"` in the configuration is reached over
//! HTTPS (or HTTP/2 over TLS by ALPN with `"protocol": "h2"`), verified against the CA
//! given, health-checked over TLS, with pooled connections reused; a wrong CA gives 502 and
//! the server goes down by its check; an nginx that requires a client certificate gets
//! corelb's. The TLS backends are a second corelb terminating TLS, and nginx for mTLS.

mod common;

use std::time::Duration;

use common::tls::Pki;
use common::*;

/// A TLS-terminating corelb (the "backend" the proxy under test speaks TLS to), in front
/// of `b`, with a certificate for localhost and 127.0.0.1.
fn tls_server(b: &Backend, pki: &mut Pki) -> Proxy {
    let cert = pki.issue(&["localhost", "127.0.0.1"], 30);
    Proxy::start(
        &[b],
        &[
            "--tls-listen",
            "127.0.0.1:0",
            "--tls-cert",
            cert.cert_str(),
            "--tls-key",
            cert.key_str(),
            "--admin",
            "127.0.0.1:0",
        ],
    )
}

/// A's TLS server, and corelb in front of it speaking `protocol` over TLS that trusts
/// `ca` (the TLS server's own CA, or another) with `sni`, health-checked by `check`.
struct Rig {
    a: Backend,
    t: Proxy,
    p: Proxy,
}

fn rig(protocol: &str, trust_own_ca: bool, check: &str, extra: &[&str]) -> Rig {
    let a = Backend::start("A", "fast", &[]);
    let mut pki = Pki::new();
    let t = tls_server(&a, &mut pki);
    let other = Pki::new();
    let ca = if trust_own_ca { &pki } else { &other };
    let tls = format!(
        r#"{{"ca": "{}", "sni": "localhost"}}"#,
        ca.ca_path().display()
    );
    let json = config(t.tls.unwrap().port(), protocol, &tls, check);
    let p = Proxy::with_config(&json, extra);
    Rig { a, t, p }
}

fn config(port: u16, protocol: &str, tls: &str, check: &str) -> String {
    format!(
        r#"{{"heartbeatInterval": 0.2, "heartbeatTimeout": 1,
            "healthCheck": {{"type": "{check}", "rise": 1, "fall": 1}},
            "servers": [{{"name": "T", "address": "127.0.0.1", "port": {port},
                          "protocol": "{protocol}", "tls": {tls}}}]}}"#
    )
}

fn backend_stats(p: &Proxy) -> serde_json::Value {
    let r = get(p.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["backends"][0].clone()
}

fn handshakes(p: &Proxy) -> u64 {
    let r = get(p.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    v["totals"]["tls"]["handshakes"].as_u64().unwrap()
}

#[test]
fn an_https_backend_is_verified_checked_over_tls_and_its_connections_reused() {
    let Rig { a: _a, t, p } = rig(
        "http1",
        true,
        "http",
        &["--admin", "127.0.0.1:0", "--workers", "1"],
    );
    assert!(
        eventually(Duration::from_secs(10), || backend_stats(&p)["health"]
            ["last_check"]
            == "http status ok"),
        "{}",
        backend_stats(&p)
    );
    let checks = handshakes(&t);
    let mut s = connect(p.addr);
    let mut pending = Vec::new();
    for i in 0..20 {
        use std::io::Write;
        s.write_all(format!("GET /headers?{i} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
            .unwrap();
        let r = read_response(&mut s, &mut pending, "GET").unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "A", "through the TLS server to A");
        // The TLS server tells A the request came over TLS.
        assert!(r
            .text()
            .to_ascii_lowercase()
            .contains("x-forwarded-proto: https"));
    }
    // 20 requests on one client connection: one pooled TLS connection (the health checks
    // make their own, one per check).
    let used = handshakes(&t) - checks;
    assert!(used <= 2, "{used} handshakes for 20 requests");
}

#[test]
fn a_wrong_ca_gives_502_and_the_tls_check_marks_the_server_down() {
    let Rig { a, t: _t, p } = rig("http1", false, "tcp", &["--admin", "127.0.0.1:0"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            let b = backend_stats(&p);
            b["health"]["state"] == "down" && b["health"]["last_check"] == "tls certificate refused"
        }),
        "{}",
        backend_stats(&p)
    );
    let r = get(p.addr, "/");
    assert!(r.status == 502 || r.status == 503, "{}", r.status);
    assert_eq!(a.requests(), 0, "nothing went past the failed handshake");
}

#[test]
fn a_wrong_ca_answers_502_while_the_server_is_still_up() {
    let Rig { a, t: _t, p } = rig("http1", false, "tcp", &["--health-check", "off"]);
    let r = get(p.addr, "/");
    assert_eq!(r.status, 502, "{}", r.text());
    assert_eq!(a.requests(), 0);
}

#[test]
fn http2_over_tls_by_alpn_to_a_backend() {
    let Rig { a: _a, t, p } = rig(
        "h2",
        true,
        "tcp",
        &["--admin", "127.0.0.1:0", "--workers", "1"],
    );
    for _ in 0..10 {
        let r = get(p.addr, "/");
        assert_eq!(r.status, 200);
        assert_eq!(r.backend(), "A");
    }
    let r = get(t.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let tls = &v["totals"]["tls"];
    assert!(tls["alpn_h2"].as_u64().unwrap() >= 1, "{tls}");
    assert!(v["totals"]["h2"]["streams"].as_u64().unwrap() >= 10, "{v}");
}

#[test]
fn a_backend_requiring_a_client_certificate_gets_corelbs() {
    if !have("nginx") && !std::path::Path::new("/usr/sbin/nginx").exists() {
        return skip("nginx not installed (scripts/deps.sh test)");
    }
    let mut pki = Pki::new();
    let server = pki.issue(&["localhost"], 30);
    let client = pki.issue(&["corelb-client"], 30);
    let dir = tempfile::tempdir().unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;
events {{ worker_connections 64; }}
http {{
  access_log off;
  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};
  server {{
    listen 127.0.0.1:{port} ssl;
    ssl_certificate {cert}; ssl_certificate_key {key};
    ssl_client_certificate {ca}; ssl_verify_client on;
    location / {{ add_header X-Backend mtls; return 200 \"client $ssl_client_s_dn\\n\"; }}
  }}
}}
",
            d = dir.path().display(),
            cert = server.cert.display(),
            key = server.key.display(),
            ca = pki.ca_path().display(),
        ),
    )
    .unwrap();
    let nginx = if have("nginx") {
        "nginx"
    } else {
        "/usr/sbin/nginx"
    };
    let mut ng = std::process::Command::new(nginx)
        .args(["-c", conf.to_str().unwrap(), "-e", "stderr"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let up = eventually(Duration::from_secs(10), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
    });
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert!(up, "nginx did not start");
        let with = format!(
            r#"{{"ca": "{}", "sni": "localhost", "cert": "{}", "key": "{}"}}"#,
            pki.ca_path().display(),
            client.cert.display(),
            client.key.display()
        );
        let p = Proxy::with_config(&config(port, "http1", &with, "tcp"), &[]);
        let r = get(p.addr, "/");
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(r.header("x-backend"), Some("mtls"));
        assert!(r.text().contains("CN=corelb-client"), "{}", r.text());
        drop(p);
        let without = format!(
            r#"{{"ca": "{}", "sni": "localhost"}}"#,
            pki.ca_path().display()
        );
        let p = Proxy::with_config(&config(port, "http1", &without, "tcp"), &[]);
        let r = get(p.addr, "/");
        assert_eq!(
            r.status, 400,
            "nginx refuses a request without a client certificate"
        );
        assert!(
            r.text().contains("No required SSL certificate"),
            "{}",
            r.text()
        );
    }));
    // TERM: the master stops its workers (a killed master would leave them running).
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &ng.id().to_string()])
        .status();
    if !eventually(Duration::from_secs(10), || {
        ng.try_wait().is_ok_and(|s| s.is_some())
    }) {
        let _ = ng.kill();
    }
    let _ = ng.wait();
    if let Err(e) = result {
        std::panic::resume_unwind(e);
    }
}

/// `corelb --check` on a config file `f` naming one server with this `tls` object: the exit
/// code and what it wrote to stderr.
fn check(f: &std::path::Path, tls: &str) -> (Option<i32>, String) {
    std::fs::write(
        f,
        format!(
            r#"{{"servers": [{{"name": "T", "address": "127.0.0.1", "port": 1, "tls": {tls}}}]}}"#
        ),
    )
    .unwrap();
    let out = std::process::Command::new(PROXY)
        .args(["--check", "--config", f.to_str().unwrap()])
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_backend_tls_settings_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("c.json");
    let cases = [
        (
            r#"{"ca": "/nonexistent/ca.pem"}"#,
            "servers[0].tls.ca: cannot read /nonexistent/ca.pem",
        ),
        (
            r#"{"verify": "no"}"#,
            "servers[0].tls.verify: expected true or false",
        ),
        (
            r#"{"cert": "/x.pem"}"#,
            "servers[0].tls.key: a client certificate needs both cert and key",
        ),
        (r#"{"caa": "x"}"#, "servers[0].tls.caa: unknown field"),
        (
            r#"{"sni": "not a name!"}"#,
            "servers[0].tls.sni: \"not a name!\" is not a DNS name",
        ),
    ];
    for (tls, want) in cases {
        let (code, text) = check(&f, tls);
        assert_eq!(code, Some(2), "{tls}: {text}");
        assert!(text.contains(want), "{tls}: {text}");
        assert_eq!(text.lines().count(), 1, "{text}");
    }
    let (code, text) = check(&f, r#"{"verify": false}"#);
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("warning:") && text.contains("servers[0].tls.verify: false"),
        "{text}"
    );
}

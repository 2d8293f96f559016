//! Configuration sources and errors, through the real binary.

mod common;

use common::*;
use std::process::Command;

fn run_with(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(PROXY);
    cmd.args(args)
        .env_remove("PROXY_SERVER_PORT")
        .env_remove("PROXY_SERVER_CONFIG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_prints_one_line_and_exits_2() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(
        &path,
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": "8081"}]}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, err) = run_with(&["--config", p], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert_eq!(
        err.trim_end(),
        format!("corelb: {p}: servers[0].port: expected an integer 1..65535, got \"8081\"")
    );
    // The same through PROXY_SERVER_CONFIG.
    let (code, err) = run_with(&[], &[("PROXY_SERVER_CONFIG", p)]);
    assert_eq!(code, Some(2));
    assert!(err.contains("servers[0].port"));
}

#[test]
fn missing_file_and_bad_flags_exit_2() {
    let (code, err) = run_with(&["--config", "/nonexistent/corelb.json"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.starts_with("corelb: /nonexistent/corelb.json: (file): cannot read"),
        "{err}"
    );
    let (code, err) = run_with(&["fastest"], &[]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("command line: --mode: unknown mode \"fastest\""),
        "{err}"
    );
    let (code, _) = run_with(&["--upstream-timeout", "soon"], &[]);
    assert_eq!(code, Some(2));
    for flag in ["--avg-span", "--peak-ewma-tau"] {
        let (code, err) = run_with(&[flag, "soon"], &[]);
        assert_eq!(code, Some(2), "{flag}");
        assert!(
            err.contains(&format!("command line: {flag}: expected a duration")),
            "{err}"
        );
    }
}

#[test]
fn a_bad_value_reads_the_same_from_file_flag_and_environment() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("rise.json");
    std::fs::write(
        &path,
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 8081}],
            "healthCheck": {"rise": 0}}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, err) = run_with(&["--config", p], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        format!("corelb: {p}: healthCheck.rise: expected an integer 1..1000, got 0")
    );
    // Refused by the flag's value parser, before the file is read: one line too.
    let (code, err) = run_with(&["--rise", "0", "--config", p], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        "corelb: command line: --rise: expected an integer 1..1000, got 0"
    );
    let (code, err) = run_with(&[], &[("PROXY_SERVER_PORT", "nope")]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        "corelb: environment: PROXY_SERVER_PORT: expected off, PORT or HOST:PORT, got \"nope\""
    );
    let (code, err) = run_with(&["--listen", "nope"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        "corelb: command line: --listen: expected off, PORT or HOST:PORT, got \"nope\""
    );
}

#[test]
fn grpc_settings_are_refused_in_one_line_and_accepted_by_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grpc.json");
    std::fs::write(
        &path,
        r#"{"servers": [{"name": "G", "address": "127.0.0.1", "port": 50051, "protocol": "h2c"}],
            "outlierDetection": {"grpcStatuses": [14, 99]}}"#,
    )
    .unwrap();
    let p = path.to_str().unwrap();
    let (code, err) = run_with(&["--config", p], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        format!(
            "corelb: {p}: outlierDetection.grpcStatuses: expected gRPC status codes 1..16, got 99"
        )
    );
    let (code, err) = run_with(&["--eject-grpc-statuses", "14,x"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(
        err.trim_end(),
        "corelb: command line: --eject-grpc-statuses: expected gRPC status codes 1..16, got \"x\""
    );
    let (code, err) = run_with(&["--health-check", "grpc:two words"], &[]);
    assert_eq!(code, Some(2));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("corelb: command line: --health-check: expected a gRPC service name"),
        "{err}"
    );
    let (code, err) = run_with(
        &[
            "--config",
            p,
            "--eject-grpc-statuses",
            "14,8",
            "--health-check",
            "grpc:tts.TTS",
            "--check",
        ],
        &[],
    );
    assert_eq!(code, Some(0), "{err}");
}

#[test]
fn env_port_is_used_and_flag_overrides_it() {
    let a = Backend::start("A", "fast", &[]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    std::fs::write(&path, config_for(&[&a])).unwrap();
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(PROXY)
        .env("PROXY_SERVER_CONFIG", &path)
        .env("PROXY_SERVER_PORT", free.to_string())
        .args(["round-robin", "--admin", "off", "--log-csv", "off"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{free}").parse().unwrap();
    assert!(eventually(std::time::Duration::from_secs(10), || {
        std::net::TcpStream::connect(addr).is_ok()
    }));
    assert_eq!(get(addr, "/").backend(), "A");
    let _ = child.kill();
    let _ = child.wait();
    // --listen beats PROXY_SERVER_PORT: the env names a port that is taken.
    let busy = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy_port = busy.local_addr().unwrap().port().to_string();
    let out = Command::new(PROXY)
        .env("PROXY_SERVER_CONFIG", &path)
        .env("PROXY_SERVER_PORT", &busy_port)
        .args([
            "--listen",
            "127.0.0.1:0",
            "--workers",
            "1",
            "--admin",
            "off",
            "--log-csv",
            "off",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut child = out;
    let mut line = String::new();
    use std::io::BufRead;
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("corelb listening on 127.0.0.1:"), "{line}");
    assert!(!line.contains(&format!(":{busy_port} ")), "{line}");
    let _ = child.kill();
    let _ = child.wait();
}

fn run_out(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(PROXY)
        .args(args)
        .env_remove("PROXY_SERVER_PORT")
        .env_remove("PROXY_SERVER_CONFIG")
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn check_validates_without_binding() {
    let dir = tempfile::tempdir().unwrap();
    // A port in use does not matter to --check: nothing is bound.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let good = dir.path().join("good.json");
    std::fs::write(
        &good,
        format!(
            r#"{{"servers": [{{"name": "A", "address": "127.0.0.1", "port": 8081}},
                            {{"name": "B", "address": "127.0.0.1", "port": 8082}}],
                "listen": "127.0.0.1:{port}", "admin": "127.0.0.1:{port}",
                "timeouts": {{"tunnel": 30}}}}"#
        ),
    )
    .unwrap();
    let g = good.to_str().unwrap();
    let (code, out, err) = run_out(&["--check", "--config", g, "--tunnel-timeout", "5s"]);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(out.trim_end().lines().count(), 1, "{out}");
    assert!(out.starts_with("corelb: configuration OK: "), "{out}");
    assert!(out.contains(g) && out.contains("2 server(s)"), "{out}");
    assert!(out.contains(&format!("listen 127.0.0.1:{port}")), "{out}");
    assert!(err.is_empty(), "{err}");

    let bad = dir.path().join("bad.json");
    std::fs::write(
        &bad,
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 8081}],
            "timeouts": {"tunnel": -3}}"#,
    )
    .unwrap();
    let b = bad.to_str().unwrap();
    let (code, out, err) = run_out(&["--check", "--config", b]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty(), "{out}");
    assert_eq!(
        err.trim_end(),
        format!("corelb: {b}: timeouts.tunnel: expected seconds >= 0, got -3")
    );
    // Flags are checked too, after the file.
    let (code, _, err) = run_out(&["--check", "--config", g, "--tunnel-timeout", "soon"]);
    assert_eq!(code, Some(2));
    assert!(err.contains("command line: --tunnel-timeout:"), "{err}");
    drop(taken);
}

#[test]
fn a_bad_retry_policy_is_one_line_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = r#""servers": [{"name": "A", "address": "127.0.0.1", "port": 8081}]"#;
    let cases = [
        (
            r#"{"retryOn": ["reset", "teapot"]}"#,
            "retryPolicy.retryOn: unknown condition \"teapot\": expected connect-failure, \
             refused-stream, reset, unavailable, resource-exhausted, 502, 503, 504, \
             per-try-timeout",
        ),
        (
            r#"{"retryOn": ["reset"], "maxAttempts": 9}"#,
            "retryPolicy.maxAttempts: expected a whole number from 2 to 5, got 9",
        ),
        (
            r#"{"retryOn": ["reset"], "perTryTimeout": "soon"}"#,
            "retryPolicy.perTryTimeout: expected a duration like \"200ms\", got \"soon\"",
        ),
        (
            r#"{"retryOn": ["per-try-timeout"]}"#,
            "retryPolicy.retryOn: per-try-timeout needs a perTryTimeout",
        ),
        (
            r#"{"retryOn": ["reset"], "replayBufferBytes": "lots"}"#,
            "retryPolicy.replayBufferBytes: expected a number of bytes up to 16777216, got \"lots\"",
        ),
        (
            r#"{"retryOn": ["503"], "maxBackoff": "1s"}"#,
            "retryPolicy.maxBackoff: needs an initialBackoff",
        ),
        (
            r#"{"retryOn": ["503"], "initialBackoff": "1s", "maxBackoff": "10ms"}"#,
            "retryPolicy.maxBackoff: shorter than initialBackoff",
        ),
        (
            r#"{"retryOn": ["503"], "initialBackoff": "10ms", "backoffMultiplier": 0}"#,
            "retryPolicy.backoffMultiplier: expected a number from 1 to 10, got 0",
        ),
        (
            r#"{"retryOn": ["reset"], "methods": ["get"]}"#,
            "retryPolicy.methods[0]: \"get\": expected a method (GET) or a path \
             (/pkg.Service/Method, /pkg.Service/*)",
        ),
        (r#"{"maxAttempts": 2}"#, "retryPolicy.retryOn: missing"),
    ];
    for (i, (policy, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("p{i}.json"));
        std::fs::write(&path, format!(r#"{{{server}, "retryPolicy": {policy}}}"#)).unwrap();
        let p = path.to_str().unwrap();
        let (code, err) = run_with(&["--config", p, "--check"], &[]);
        assert_eq!(code, Some(2), "{policy}: {err}");
        assert_eq!(err.trim_end(), format!("corelb: {p}: {want}"), "{policy}");
    }
    // A good one passes the check; a bad --retry-on beside it does not.
    let path = dir.path().join("good.json");
    let policy = r#"{"maxAttempts": 3, "retryOn": ["reset", "unavailable", "503", "per-try-timeout"], "methods": ["POST", "/tts.TTS/*"], "perTryTimeout": "200ms", "initialBackoff": "10ms", "maxBackoff": "200ms", "backoffMultiplier": 2}"#;
    std::fs::write(&path, format!(r#"{{{server}, "retryPolicy": {policy}}}"#)).unwrap();
    let good = path.to_str().unwrap();
    let (code, err) = run_with(&["--config", good, "--check"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run_with(
        &["--config", good, "--check", "--retry-on", "sometimes"],
        &[],
    );
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("--retry-on: unknown condition \"sometimes\""),
        "{err}"
    );
}

#[test]
fn a_bad_hedging_policy_is_one_line_naming_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let server = r#""servers": [{"name": "A", "address": "127.0.0.1", "port": 8081}]"#;
    let cases = [
        (
            r#"{"hedgingDelay": "soon"}"#,
            "hedgingPolicy.hedgingDelay: expected a delay like \"20ms\" or \"p95\", got \"soon\"",
        ),
        (
            r#"{"maxAttempts": 9}"#,
            "hedgingPolicy.maxAttempts: expected a whole number from 2 to 5, got 9",
        ),
        (
            r#"{"nonFatalStatusCodes": ["UNAVAILABLE", "SLOW"]}"#,
            "hedgingPolicy.nonFatalStatusCodes: \"SLOW\": expected gRPC status names like [\"UNAVAILABLE\"] or codes 1 to 16",
        ),
        (
            r#"{"nonFatalStatusCodes": [0]}"#,
            "hedgingPolicy.nonFatalStatusCodes: 0: expected gRPC status names like [\"UNAVAILABLE\"] or codes 1 to 16",
        ),
    ];
    for (i, (policy, want)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("h{i}.json"));
        std::fs::write(&path, format!(r#"{{{server}, "hedgingPolicy": {policy}}}"#)).unwrap();
        let p = path.to_str().unwrap();
        let (code, err) = run_with(&["--config", p, "--check"], &[]);
        assert_eq!(code, Some(2), "{policy}: {err}");
        assert_eq!(err.trim_end(), format!("corelb: {p}: {want}"), "{policy}");
    }
    let path = dir.path().join("good.json");
    let policy = r#"{"maxAttempts": 2, "hedgingDelay": "20ms", "methods": ["GET", "/tts.TTS/*"], "nonFatalStatusCodes": ["RESOURCE_EXHAUSTED", 13]}"#;
    std::fs::write(&path, format!(r#"{{{server}, "hedgingPolicy": {policy}}}"#)).unwrap();
    let good = path.to_str().unwrap();
    let (code, err) = run_with(&["--config", good, "--check"], &[]);
    assert_eq!(code, Some(0), "{err}");
    let (code, err) = run_with(&["--config", good, "--check", "--hedge-delay", "-1"], &[]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--hedge-delay"), "{err}");
}

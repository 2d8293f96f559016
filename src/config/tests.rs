//! Configuration tests: the file format, flags over the file, and that a bad value gets
//! the same problem from the file and from a flag.

use std::time::Duration;

use super::*;

fn err(text: &str) -> String {
    Config::from_json("c.json", text).unwrap_err().to_string()
}

#[test]
fn embedded_default_is_valid() {
    let c = Config::from_json("d", DEFAULT_CONFIG).unwrap();
    assert_eq!(c.servers.len(), 3);
    assert_eq!(c.servers[1].name, "B");
    assert_eq!(c.servers[2].addr, "127.0.0.1:8083".parse().unwrap());
    assert_eq!(c.listen.unwrap().port(), DEFAULT_PORT);
    assert_eq!(c.mode, Mode::RoundRobin);
    assert_eq!(c.upstream, UpstreamMode::Persistent);
}

#[test]
fn seed_file_format_is_read_as_is() {
    let seed = r#"{"heartbeatInterval": 10, "heartbeatTimeout": 5, "_note": "x",
      "servers": [
        {"priority": 0, "name": "tts@container1", "address": "localhost", "port": 50051, "load": 0.5},
        {"priority": 1, "name": "tts@container2", "address": "127.0.0.1", "port": 50052, "load": 0.3}
      ]}"#;
    let c = Config::from_json("seed.json", seed).unwrap();
    assert_eq!(c.heartbeat_interval, Duration::from_secs(10));
    assert_eq!(c.heartbeat_timeout, Duration::from_secs(5));
    assert_eq!(c.servers[0].load, 0.5);
    assert_eq!(c.servers[1].priority, 1);
    assert_eq!(c.servers[0].addr.port(), 50051);
}

#[test]
fn default_log_name_is_the_seeds() {
    let name = |m, u| default_log_name(m, u);
    assert_eq!(
        name(Mode::AdaptiveEwma, UpstreamMode::Persistent),
        "adaptive_ewma_persistent.csv"
    );
    assert_eq!(
        name(Mode::AdaptiveSma, UpstreamMode::PerRequest),
        "adaptive_sma_per-request.csv"
    );
    assert_eq!(
        name(Mode::RoundRobin, UpstreamMode::Persistent),
        "round-robin_persistent.csv"
    );
}

#[test]
fn routing_block_sets_every_tuning_knob() {
    let c = Config::from_json(
        "r.json",
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}],
            "routing": {"smaWindow": 64, "ewmaAlpha": 0.01, "avgSpan": 0.25,
                        "idleDecay": 3, "peakEwmaTau": 5, "loadBias": 0.3,
                        "choices": 3, "adaptiveChoices": 2}}"#,
    )
    .unwrap();
    let r = c.routing;
    assert_eq!(
        (r.sma_window, r.ewma_alpha, r.adaptive_bias),
        (64, 0.01, 0.3)
    );
    assert_eq!(r.avg_span, Duration::from_millis(250));
    assert_eq!(r.idle_decay, Duration::from_secs(3));
    assert_eq!(r.peak_ewma_tau, Duration::from_secs(5));
    assert_eq!((r.choices, r.adaptive_choices), (3, 2));
    assert_eq!(
        err(
            r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}],
                "routing": {"avgSpan": 0}}"#
        ),
        "c.json: routing: avg_span: must be greater than 0"
    );
}

#[test]
fn errors_name_file_field_and_problem() {
    assert_eq!(
        err(r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 70000}]}"#),
        "c.json: servers[0].port: expected an integer 1..65535, got 70000"
    );
    assert_eq!(
        err(r#"{"servers": [{"name": "A", "address": "127.0.0.1"}]}"#),
        "c.json: servers[0].port: missing (required)"
    );
    assert_eq!(
        err(r#"{"servers": []}"#),
        "c.json: servers: empty: list at least one server"
    );
    assert!(err(r#"{"heartbeatIntervall": 1, "servers": []}"#)
        .starts_with("c.json: heartbeatIntervall: unknown field"));
    assert!(err("{").starts_with("c.json: (json): invalid JSON at line 1"));
    assert_eq!(
        err(r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1, "load": 0}]}"#),
        "c.json: servers[0].load: must be a number greater than 0, got 0"
    );
    assert_eq!(
        err(
            r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1},
                            {"name": "A", "address": "127.0.0.1", "port": 2}]}"#
        ),
        "c.json: servers[1].name: \"A\" is already used by servers[0]"
    );
    assert_eq!(
        err(r#"{"servers": [{"name": "A", "address": "no.such.host.invalid", "port": 1}]}"#),
        "c.json: servers[0].address: cannot resolve \"no.such.host.invalid\""
    );
    assert_eq!(
        err(
            r#"{"mode": "fastest", "servers": [{"name": "A", "address": "127.0.0.1", "port": 1}]}"#
        ),
        "c.json: mode: unknown mode \"fastest\"; known: round-robin, weighted, least-request, adaptive-sma, adaptive-ewma, peak-ewma"
    );
    assert_eq!(
        err(r#"{"heartbeatInterval": "2", "servers": []}"#),
        "c.json: heartbeatInterval: expected a number, got \"2\""
    );
}

#[test]
fn overrides_win_over_the_file() {
    let c = Config::from_args([
        "corelb",
        "--listen",
        "0",
        "--workers",
        "3",
        "round_robin",
        "--upstream",
        "per-request",
        "--connect-timeout",
        "250ms",
    ])
    .unwrap();
    assert_eq!(c.listen, Some("127.0.0.1:0".parse().unwrap()));
    assert_eq!(c.workers, 3);
    assert_eq!(c.upstream, UpstreamMode::PerRequest);
    assert_eq!(c.timeouts.connect, Duration::from_millis(250));
    let e = Config::from_args(["corelb", "--upstream", "sometimes"]).unwrap_err();
    assert_eq!(
        e.to_string(),
        "command line: --upstream: expected persistent or per-request, got \"sometimes\""
    );
}

#[test]
fn durations_and_listen_addresses() {
    assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
    assert_eq!(parse_duration("2"), Some(Duration::from_secs(2)));
    assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
    assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
    assert_eq!(parse_duration("-1"), None);
    assert_eq!(parse_duration("soon"), None);
    assert_eq!(
        parse_listen("9090"),
        Some("127.0.0.1:9090".parse().unwrap())
    );
    assert_eq!(parse_listen(":80"), Some("127.0.0.1:80".parse().unwrap()));
    assert_eq!(
        parse_listen("0.0.0.0:80"),
        Some("0.0.0.0:80".parse().unwrap())
    );
    assert_eq!(parse_listen("[::1]:80"), Some("[::1]:80".parse().unwrap()));
    assert_eq!(parse_listen("nope"), None);
}

/// A file with one backend and `extra` top-level keys.
fn file_with(extra: &str) -> String {
    let sep = if extra.is_empty() { "" } else { ", " };
    format!(r#"{{"servers": [{{"name": "A", "address": "127.0.0.1", "port": 1}}]{sep}{extra}}}"#)
}

fn file_error(extra: &str) -> ConfigError {
    Config::from_json("c.json", &file_with(extra)).unwrap_err()
}

fn flag_error(flags: &[&str]) -> ConfigError {
    let argv = std::iter::once("corelb").chain(flags.iter().copied());
    Config::from_args(argv).unwrap_err()
}

/// `extra` in the file and `flags` on the command line are refused with the same problem,
/// the file naming `file_field` and the command line `flag_field`.
#[track_caller]
fn same_problem(extra: &str, file_field: &str, flags: &[&str], flag_field: &str) -> String {
    let (f, c) = (file_error(extra), flag_error(flags));
    assert_eq!(
        (f.origin.as_str(), f.field.as_str()),
        ("c.json", file_field)
    );
    assert_eq!(
        (c.origin.as_str(), c.field.as_str()),
        ("command line", flag_field)
    );
    assert_eq!(f.problem, c.problem, "{f} / {c}");
    f.problem
}

#[test]
fn bounded_settings_refuse_a_bad_value_alike_from_the_file_and_from_a_flag() {
    let hc = "healthCheck.";
    for (key, flag) in [("rise", "--rise"), ("fall", "--fall")] {
        for (json, text) in [("0", "0"), ("1001", "1001"), ("1.5", "1.5"), ("\"x\"", "x")] {
            let extra = format!(r#""healthCheck": {{"{key}": {json}}}"#);
            let p = same_problem(&extra, &format!("{hc}{key}"), &[flag, text], flag);
            assert!(p.starts_with("expected an integer 1..1000, got "), "{p}");
        }
    }
    for (value, problem) in [
        ("1000001", "expected an integer 0..1000000, got 1000001"),
        ("-1", "expected an integer 0..1000000, got -1"),
    ] {
        let extra = format!(r#""outlierDetection": {{"consecutiveFailures": {value}}}"#);
        let field = "outlierDetection.consecutiveFailures";
        let p = same_problem(&extra, field, &["--eject-after", value], "--eject-after");
        assert_eq!(p, problem);
    }
    let p = same_problem(
        r#""maxIdlePerBackend": 1048577"#,
        "maxIdlePerBackend",
        &["--max-idle-per-backend", "1048577"],
        "--max-idle-per-backend",
    );
    assert_eq!(p, "expected an integer 0..1048576, got 1048577");
    for n in ["0", "1025"] {
        let extra = format!(r#""workers": {n}"#);
        let p = same_problem(&extra, "workers", &["--workers", n], "--workers");
        assert_eq!(p, format!("expected an integer 1..1024, got {n}"));
    }
    let p = same_problem(
        r#""retries": {"count": 11}"#,
        "retries.count",
        &["--retries", "11"],
        "--retries",
    );
    assert_eq!(p, "expected an integer 0..10, got 11");
    let p = same_problem(
        r#""retries": {"budgetPercent": 150}"#,
        "retries.budgetPercent",
        &["--retry-budget", "150"],
        "--retry-budget",
    );
    assert_eq!(p, "expected 0..100, got 150");
    let p = same_problem(
        r#""h2MaxResets": 0"#,
        "h2MaxResets",
        &["--h2-max-resets", "0"],
        "--h2-max-resets",
    );
    assert_eq!(p, "expected an integer 1..4294967295, got 0");
    let p = same_problem(
        r#""h2MaxStreams": -1"#,
        "h2MaxStreams",
        &["--h2-max-streams", "-1"],
        "--h2-max-streams",
    );
    assert_eq!(p, "expected an integer 0..4294967295, got -1");
}

#[test]
fn h2_limits_come_from_the_file_or_a_flag_with_defaults() {
    let c = Config::from_json(
        "c.json",
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}], "h2MaxResets": 50, "h2MaxStreams": 1000}"#,
    )
    .unwrap();
    assert_eq!((c.h2_max_resets, c.h2_max_streams), (50, 1000));
    let c = Config::from_json(
        "c.json",
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}]}"#,
    )
    .unwrap();
    assert_eq!(
        (c.h2_max_resets, c.h2_max_streams),
        (DEFAULT_H2_MAX_RESETS, DEFAULT_H2_MAX_STREAMS)
    );
    assert_eq!(c.timeouts.send, DEFAULT_SEND_TIMEOUT);
    let c = Config::from_json(
        "c.json",
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1}], "timeouts": {"send": 5}}"#,
    )
    .unwrap();
    assert_eq!(c.timeouts.send, Duration::from_secs(5));
}

#[test]
fn addresses_and_names_are_refused_alike_from_the_file_and_from_a_flag() {
    for port in ["70000", "nope"] {
        let extra = format!(r#""listen": "{port}""#);
        let p = same_problem(&extra, "listen", &["--listen", port], "--listen");
        assert_eq!(
            p,
            format!("expected off, PORT or HOST:PORT, got \"{port}\"")
        );
        let extra = format!(r#""admin": "{port}""#);
        let p = same_problem(&extra, "admin", &["--admin", port], "--admin");
        assert_eq!(
            p,
            format!("expected off, PORT or HOST:PORT, got \"{port}\"")
        );
    }
    same_problem(
        r#""mode": "fastest""#,
        "mode",
        &["--mode", "fastest"],
        "--mode",
    );
    same_problem(r#""mode": "fastest""#, "mode", &["fastest"], "--mode");
    same_problem(
        r#""upstream": "sometimes""#,
        "upstream",
        &["--upstream", "sometimes"],
        "--upstream",
    );
}

#[test]
fn routing_params_are_refused_alike_from_the_file_and_from_a_flag() {
    let p = same_problem(
        r#""routing": {"smaWindow": 0}"#,
        "routing.smaWindow",
        &["--sma-window", "0"],
        "--sma-window",
    );
    assert_eq!(p, "expected an integer 1..65536, got 0");
    // The block's own check names the parameter after `routing`, for both origins.
    let p = same_problem(
        r#""routing": {"ewmaAlpha": 2}"#,
        "routing",
        &["--ewma-alpha", "2"],
        "routing",
    );
    assert_eq!(p, "ewma_alpha: expected a number in (0, 1], got 2");
    for (key, flag, name) in [
        ("avgSpan", "--avg-span", "avg_span"),
        ("peakEwmaTau", "--peak-ewma-tau", "peak_ewma_tau"),
    ] {
        let extra = format!(r#""routing": {{"{key}": 0}}"#);
        let p = same_problem(&extra, "routing", &[flag, "0"], "routing");
        assert_eq!(p, format!("{name}: must be greater than 0"));
        let extra = format!(r#""routing": {{"{key}": -1}}"#);
        let field = format!("routing.{key}");
        let p = same_problem(&extra, &field, &[flag, "-1"], flag);
        assert_eq!(p, "expected seconds >= 0, got -1");
    }
    // Values other sources leave alone keep theirs; the block is checked as merged.
    let c = Config::load(
        &Args::parse_argv(["corelb", "--sma-window", "64", "--ewma-alpha", "0.5"]).unwrap(),
    )
    .unwrap();
    assert_eq!((c.routing.sma_window, c.routing.ewma_alpha), (64, 0.5));
}

#[test]
fn durations_are_refused_alike_from_the_file_and_from_a_flag() {
    for (key, flag) in [
        ("connect", "--connect-timeout"),
        ("client", "--client-timeout"),
        ("upstream", "--upstream-timeout"),
        ("idle", "--idle-timeout"),
        ("poolIdle", "--pool-idle-timeout"),
        ("drain", "--drain-timeout"),
        ("tunnel", "--tunnel-timeout"),
    ] {
        let extra = format!(r#""timeouts": {{"{key}": -1}}"#);
        let field = format!("timeouts.{key}");
        let p = same_problem(&extra, &field, &[flag, "-1"], flag);
        assert_eq!(p, "expected seconds >= 0, got -1");
        let extra = format!(r#""timeouts": {{"{key}": 1e12}}"#);
        same_problem(&extra, &field, &[flag, "1e12"], flag);
    }
    let p = same_problem(
        r#""hdrInterval": 0"#,
        "hdrInterval",
        &["--hdr-interval", "0s"],
        "--hdr-interval",
    );
    assert_eq!(p, "must be greater than 0");
    same_problem(
        r#""healthCheck": {"slowStart": -2}"#,
        "healthCheck.slowStart",
        &["--slow-start=-2"],
        "--slow-start",
    );
    same_problem(
        r#""outlierDetection": {"baseEjectionTime": -2}"#,
        "outlierDetection.baseEjectionTime",
        &["--eject-time=-2000ms"],
        "--eject-time",
    );
    // A flag takes units; a file takes seconds as a number.
    assert_eq!(
        flag_error(&["--drain-timeout", "soon"]).to_string(),
        "command line: --drain-timeout: expected a duration like 500ms, 5s or 2m, got \"soon\""
    );
    assert_eq!(
        file_error(r#""timeouts": {"drain": "5s"}"#).to_string(),
        "c.json: timeouts.drain: expected a number, got \"5s\""
    );
}

#[test]
fn health_check_parts_are_refused_alike_from_the_file_and_from_a_flag() {
    let p = same_problem(
        r#""healthCheck": {"type": "http", "expectStatus": 600}"#,
        "healthCheck.expectStatus",
        &["--health-check", "http:/ping:600"],
        "--health-check",
    );
    assert_eq!(p, "expected an integer 100..599, got 600");
    let p = same_problem(
        r#""healthCheck": {"type": "http", "path": "ping"}"#,
        "healthCheck.path",
        &["--health-check", "http:ping"],
        "--health-check",
    );
    assert_eq!(p, "must start with /, got \"ping\"");
    let p = same_problem(
        r#""healthCheck": {"type": "udp"}"#,
        "healthCheck.type",
        &["--health-check", "udp"],
        "--health-check",
    );
    assert_eq!(p, "expected tcp, http or grpc, got \"udp\"");
    let p = same_problem(
        r#""healthCheck": {"type": "grpc", "service": "a b"}"#,
        "healthCheck.service",
        &["--health-check", "grpc:a b"],
        "--health-check",
    );
    assert!(p.starts_with("expected a gRPC service name"), "{p}");
}

#[test]
fn grpc_checks_are_chosen_or_follow_each_servers_protocol() {
    let servers = r#""servers": [
        {"name": "A", "address": "127.0.0.1", "port": 1},
        {"name": "G", "address": "127.0.0.1", "port": 2, "protocol": "h2c"}]"#;
    let c = Config::from_json("g.json", &format!("{{{servers}}}")).unwrap();
    assert_eq!(c.health.check, None, "nothing chosen");
    assert_eq!(c.health.check_for(c.servers[0].protocol), Check::Tcp);
    assert_eq!(
        c.health.check_for(c.servers[1].protocol),
        Check::Grpc { service: "".into() }
    );
    let c = Config::from_json(
        "g.json",
        &format!(r#"{{{servers}, "healthCheck": {{"type": "grpc", "service": "tts.TTS"}}}}"#),
    )
    .unwrap();
    let chosen = Check::Grpc {
        service: "tts.TTS".into(),
    };
    assert_eq!(c.health.check_for(c.servers[0].protocol), chosen);
    assert_eq!(c.health.check_for(c.servers[1].protocol), chosen);
    let c = Config::from_json(
        "g.json",
        &format!(r#"{{{servers}, "healthCheck": {{"type": "tcp"}}}}"#),
    )
    .unwrap();
    assert_eq!(c.health.check_for(c.servers[1].protocol), Check::Tcp);
    assert_eq!(
        err(&format!(
            r#"{{{servers}, "healthCheck": {{"type": "grpc", "service": 5}}}}"#
        )),
        "c.json: healthCheck.service: expected a string, got 5"
    );
}

#[test]
fn grpc_ejection_statuses_from_the_file_and_the_flag() {
    let c = Config::from_json("c.json", &file_with("")).unwrap();
    assert_eq!(c.outlier.grpc_statuses.codes(), [8, 13, 14]);
    assert!(c.outlier.grpc_status_is_failure(14));
    assert!(!c.outlier.grpc_status_is_failure(0));
    assert!(!c.outlier.grpc_status_is_failure(4));
    assert!(!c.outlier.grpc_status_is_failure(u32::MAX));
    let c = Config::from_json(
        "c.json",
        &file_with(r#""outlierDetection": {"grpcStatuses": [4, 14]}"#),
    )
    .unwrap();
    assert_eq!(c.outlier.grpc_statuses.codes(), [4, 14]);
    assert!(c.outlier.grpc_status_is_failure(4));
    assert!(!c.outlier.grpc_status_is_failure(13));
    let c = Config::from_json(
        "c.json",
        &file_with(r#""outlierDetection": {"grpcStatuses": []}"#),
    )
    .unwrap();
    assert!(!c.outlier.grpc_status_is_failure(14));
    let c = Config::from_args(["corelb", "--eject-grpc-statuses", "2,12"]).unwrap();
    assert_eq!(c.outlier.grpc_statuses.to_string(), "2,12");
    let c = Config::from_args(["corelb", "--eject-grpc-statuses", "none"]).unwrap();
    assert!(c.outlier.grpc_statuses.codes().is_empty());
    let p = same_problem(
        r#""outlierDetection": {"grpcStatuses": [14, 17]}"#,
        "outlierDetection.grpcStatuses",
        &["--eject-grpc-statuses", "14,17"],
        "--eject-grpc-statuses",
    );
    assert_eq!(p, "expected gRPC status codes 1..16, got 17");
    let p = same_problem(
        r#""outlierDetection": {"grpcStatuses": [0]}"#,
        "outlierDetection.grpcStatuses",
        &["--eject-grpc-statuses", "0"],
        "--eject-grpc-statuses",
    );
    assert_eq!(p, "expected gRPC status codes 1..16, got 0");
    assert_eq!(
        file_error(r#""outlierDetection": {"grpcStatuses": 14}"#).to_string(),
        "c.json: outlierDetection.grpcStatuses: expected a list of gRPC status codes like [14, 8, 13], got 14"
    );
}

#[test]
fn health_check_flag_replaces_the_files_check() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.json");
    let extra = r#""healthCheck": {"type": "http", "path": "/x", "expectStatus": 204, "rise": 7}"#;
    std::fs::write(&path, file_with(extra)).unwrap();
    let p = path.to_str().unwrap();
    let load = |flags: &[&str]| {
        let argv = ["corelb", "--config", p]
            .into_iter()
            .chain(flags.iter().copied());
        Config::from_args(argv).unwrap().health
    };
    let h = load(&[]);
    let x = Check::Http {
        path: "/x".into(),
        expect: 204,
    };
    let x = Some(x);
    assert_eq!((&h.check, h.rise, h.enabled), (&x, 7, true));
    let h = load(&["--health-check", "off"]);
    assert_eq!((&h.check, h.enabled), (&x, false));
    let h = load(&["--health-check", "http", "--rise", "3"]);
    let default = Some(Check::Http {
        path: "/health".into(),
        expect: 200,
    });
    assert_eq!((&h.check, h.rise), (&default, 3));
    assert_eq!(load(&["--health-check", "TCP"]).check, Some(Check::Tcp));
    let grpc = |service: &str| {
        Some(Check::Grpc {
            service: service.into(),
        })
    };
    assert_eq!(load(&["--health-check", "grpc"]).check, grpc(""));
    assert_eq!(
        load(&["--health-check", "grpc:tts.TTS"]).check,
        grpc("tts.TTS")
    );
}

#[test]
fn switches_and_log_names_merge_over_the_file() {
    let c = Config::from_args(["corelb", "-d", "--no-pin", "adaptive_ewma"]).unwrap();
    assert!(c.debug && !c.pin);
    assert_eq!(c.log_csv.as_deref(), Some("adaptive_ewma_persistent.csv"));
    let c = Config::from_args(["corelb", "--log-csv", "off", "--log-queue", "5"]).unwrap();
    assert_eq!((c.log_csv, c.log_queue), (None, 5));
    assert_eq!(
        flag_error(&["--log-queue", "0"]).to_string(),
        "command line: --log-queue: expected an integer >= 1, got 0"
    );
    assert_eq!(
        flag_error(&["weighted", "--mode", "rr"]).to_string(),
        "command line: MODE: \"weighted\" conflicts with --mode \"rr\""
    );
}

#[test]
fn defaults_fill_what_no_source_gives() {
    let c = Config::from_json("d", DEFAULT_CONFIG).unwrap();
    assert_eq!(c.timeouts, Timeouts::default());
    assert_eq!(c.health, HealthSettings::default());
    assert_eq!(c.outlier, OutlierSettings::default());
    assert_eq!(c.retry, RetrySettings::default());
    assert_eq!(c.routing, RoutingParams::default());
    assert_eq!(c.max_idle_per_backend, DEFAULT_MAX_IDLE_PER_BACKEND);
    assert_eq!(c.log_queue, DEFAULT_LOG_QUEUE);
    assert_eq!(c.splice_min, DEFAULT_SPLICE_MIN);
    assert_eq!(c.notsent_lowat, DEFAULT_NOTSENT_LOWAT);
    assert_eq!(c.log_csv.as_deref(), Some("round-robin_persistent.csv"));
    assert_eq!(c.admin, parse_listen(DEFAULT_ADMIN));
    assert_eq!((c.hdr_dir, c.hdr_interval), (None, None));
    assert_eq!(
        (c.workers, c.pin, c.debug),
        (default_workers(), true, false)
    );
}

#[test]
fn every_file_key_and_flag_lands_in_its_field() {
    let s = |n: u64| Duration::from_secs(n);
    let c = Config::from_json(
        "all.json",
        &file_with(
            r#""listen": "127.0.0.1:7000", "workers": 3, "mode": "peak-ewma",
               "upstream": "per-request", "maxIdlePerBackend": 4, "logCsv": "x.csv",
               "hdrDir": "h", "hdrInterval": 5, "admin": "off",
               "timeouts": {"connect": 1, "client": 2, "upstream": 3, "idle": 4,
                            "poolIdle": 5, "drain": 6, "tunnel": 13},
               "healthCheck": {"type": "http", "path": "/p", "expectStatus": 204,
                               "rise": 7, "fall": 8, "slowStart": 9, "enabled": false},
               "outlierDetection": {"consecutiveFailures": 10, "baseEjectionTime": 11,
                                    "maxEjectionTime": 12, "on5xx": true},
               "retries": {"count": 3, "budgetPercent": 50}"#,
        ),
    )
    .unwrap();
    assert_eq!(c.listen, Some("127.0.0.1:7000".parse().unwrap()));
    assert_eq!(
        (c.workers, c.mode, c.upstream),
        (3, Mode::PeakEwma, UpstreamMode::PerRequest)
    );
    assert_eq!(
        (c.max_idle_per_backend, c.log_csv.as_deref()),
        (4, Some("x.csv"))
    );
    assert_eq!(
        (c.hdr_dir.as_deref(), c.hdr_interval, c.admin),
        (Some("h"), Some(s(5)), None)
    );
    let t = c.timeouts;
    assert_eq!(
        [
            t.connect,
            t.client,
            t.upstream,
            t.idle,
            t.pool_idle,
            t.drain,
            t.tunnel
        ],
        [s(1), s(2), s(3), s(4), s(5), s(6), s(13)]
    );
    let h = &c.health;
    let check = Some(Check::Http {
        path: "/p".into(),
        expect: 204,
    });
    assert_eq!(
        (&h.check, h.rise, h.fall, h.slow_start, h.enabled),
        (&check, 7, 8, s(9), false)
    );
    let o = &c.outlier;
    assert_eq!(
        (o.consecutive, o.base, o.max, o.on_5xx),
        (10, s(11), s(12), true)
    );
    assert_eq!((c.retry.count, c.retry.budget), (3, 0.5));

    let c = Config::from_args([
        "corelb",
        "--client-timeout",
        "2s",
        "--upstream-timeout",
        "3s",
        "--idle-timeout",
        "4s",
        "--pool-idle-timeout",
        "5s",
        "--drain-timeout",
        "6s",
        "--tunnel-timeout",
        "7s",
        "--max-idle-per-backend",
        "4",
        "--hdr-dir",
        "h",
        "--hdr-interval",
        "5",
        "--admin",
        "7001",
        "--fall",
        "8",
        "--slow-start",
        "9",
        "--eject-after",
        "10",
        "--eject-time",
        "11",
        "--retries",
        "3",
        "--retry-budget",
        "50",
        "--avg-span",
        "250ms",
        "--peak-ewma-tau",
        "5",
    ])
    .unwrap();
    let t = c.timeouts;
    assert_eq!(
        [
            t.connect,
            t.client,
            t.upstream,
            t.idle,
            t.pool_idle,
            t.drain,
            t.tunnel
        ],
        [DEFAULT_CONNECT_TIMEOUT, s(2), s(3), s(4), s(5), s(6), s(7)]
    );
    assert_eq!(
        (c.max_idle_per_backend, c.hdr_dir.as_deref()),
        (4, Some("h"))
    );
    assert_eq!(
        (c.hdr_interval, c.admin),
        (Some(s(5)), parse_listen("7001"))
    );
    assert_eq!((c.health.fall, c.health.slow_start), (8, s(9)));
    assert_eq!((c.outlier.consecutive, c.outlier.base), (10, s(11)));
    assert_eq!((c.retry.count, c.retry.budget), (3, 0.5));
    let r = c.routing;
    assert_eq!(
        (r.avg_span, r.peak_ewma_tau),
        (Duration::from_millis(250), s(5))
    );
}

#[test]
fn protocol_per_server_and_for_all() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("p.json");
    std::fs::write(
        &f,
        r#"{"servers": [
            {"name": "A", "address": "127.0.0.1", "port": 1},
            {"name": "B", "address": "127.0.0.1", "port": 2, "protocol": "h2c"}]}"#,
    )
    .unwrap();
    let path = f.to_str().unwrap();
    let cfg = Config::from_args(["corelb", "--config", path]).unwrap();
    let protos: Vec<Protocol> = cfg.servers.iter().map(|s| s.protocol).collect();
    assert_eq!(protos, [Protocol::Http1, Protocol::H2c]);
    let cfg =
        Config::from_args(["corelb", "--config", path, "--upstream-protocol", "h2c"]).unwrap();
    assert!(cfg.servers.iter().all(|s| s.protocol == Protocol::H2c));
    let e = Config::from_args(["corelb", "--config", path, "--upstream-protocol", "h3"])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "command line: --upstream-protocol: expected http1 or h2c, got \"h3\""
    );
    std::fs::write(
        &f,
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": 1, "protocol": "spdy"}]}"#,
    )
    .unwrap();
    let e = Config::from_args(["corelb", "--config", path])
        .unwrap_err()
        .to_string();
    assert!(
        e.ends_with("servers[0].protocol: expected http1 or h2c, got \"spdy\""),
        "{e}"
    );
}

#[test]
fn splice_min_and_notsent_lowat_take_bytes_or_off_alike_from_the_file_and_from_a_flag() {
    type Field = fn(&Config) -> u64;
    let settings: [(&str, &str, Field, u64); 2] = [
        ("spliceMin", "--splice-min", |c| c.splice_min, 1 << 30),
        (
            "notsentLowat",
            "--notsent-lowat",
            |c| c.notsent_lowat,
            64 << 20,
        ),
    ];
    for (key, flag, field, max) in settings {
        for (json, text, want) in [
            ("0", "0", 0),
            ("\"off\"", "off", 0),
            ("4096", "4096", 4096),
            ("\"256KiB\"", "256KiB", 256 << 10),
            ("\"1M\"", "1M", 1 << 20),
        ] {
            let c = Config::from_json("s.json", &file_with(&format!(r#""{key}": {json}"#)));
            assert_eq!(field(&c.unwrap()), want, "file {key} {json}");
            let c = Config::load(&Args::parse_argv(["corelb", flag, text]).unwrap()).unwrap();
            assert_eq!(field(&c), want, "flag {flag} {text}");
        }
        let expected = format!("expected bytes 0..{max} (e.g. 65536, 64KiB) or off, got ");
        for (json, text) in [
            ("-1", "-1"),
            ("1.5", "1.5"),
            ("\"lots\"", "lots"),
            ("2147483648", "2147483648"),
        ] {
            let extra = format!(r#""{key}": {json}"#);
            let p = same_problem(&extra, key, &[flag, text], flag);
            assert!(p.starts_with(&expected), "{p}");
        }
        assert_eq!(
            flag_error(&[flag, "lots"]).to_string(),
            format!("command line: {flag}: {expected}\"lots\"")
        );
    }
}

#[test]
fn operations_settings_and_their_errors() {
    let c = Config::from_json(
        "o.json",
        &file_with(r#""maxServers": 10, "dnsRefresh": 2.5, "resolver": "127.0.0.1:5353""#),
    )
    .unwrap();
    assert_eq!(c.max_servers, Some(10));
    assert_eq!(c.dns_refresh, Some(Duration::from_millis(2500)));
    assert_eq!(c.resolver, Some("127.0.0.1:5353".parse().unwrap()));
    let p = same_problem(
        r#""maxServers": 0"#,
        "maxServers",
        &["--max-servers", "0"],
        "--max-servers",
    );
    assert_eq!(p, "expected an integer 1..4096, got 0");
    let p = same_problem(
        r#""resolver": "dns.example""#,
        "resolver",
        &["--resolver", "dns.example"],
        "--resolver",
    );
    assert_eq!(p, "expected IP:PORT of a DNS server, got \"dns.example\"");
    let two = r#"{"maxServers": 1, "servers": [{"name": "A", "address": "127.0.0.1", "port": 1},
        {"name": "B", "address": "127.0.0.1", "port": 2}]}"#;
    assert_eq!(
        err(two),
        "c.json: maxServers: 1 is fewer than the 2 servers listed"
    );
    // With discovery on, a DNS name is left to the discovery thread (not resolved here).
    let c = Config::from_json(
        "d.json",
        r#"{"dnsRefresh": 5, "servers": [{"name": "api", "address": "no-such-host.invalid", "port": 80}]}"#,
    )
    .unwrap();
    assert!(c.servers[0].addr.ip().is_unspecified());
    assert!(err(
        r#"{"servers": [{"name": "api", "address": "no-such-host.invalid", "port": 80}]}"#
    )
    .contains("cannot resolve"));
}

#[test]
fn a_retry_policy_carries_its_per_try_timeout_and_backoff() {
    use crate::config::types::RetryOn;
    let c = Config::from_json(
        "c.json",
        &file_with(
            r#""retryPolicy": {"retryOn": ["503", "per-try-timeout"], "perTryTimeout": "150ms",
                "initialBackoff": "10ms", "backoffMultiplier": 3}"#,
        ),
    )
    .unwrap();
    let p = c.retry.policy.expect("a policy");
    assert!(p.on.has_status(503) && !p.on.has_status(502) && !p.on.has_status(500));
    assert!(p.on.has(RetryOn::PER_TRY_TIMEOUT));
    assert_eq!(p.per_try, Some(Duration::from_millis(150)));
    let b = p.backoff.expect("a backoff");
    // maxBackoff defaults to ten times initialBackoff; each retry's ceiling grows by the
    // multiplier up to it.
    assert_eq!(b.max, Duration::from_millis(100));
    let ms = |n| b.ceiling(n).as_secs_f64() * 1000.0;
    assert!((ms(1) - 10.0).abs() < 1e-6 && (ms(2) - 30.0).abs() < 1e-6);
    assert!((ms(3) - 90.0).abs() < 1e-6 && (ms(4) - 100.0).abs() < 1e-6);
    // Without an initialBackoff, no backoff: retries go out at once.
    let c = Config::from_json(
        "c.json",
        &file_with(r#""retryPolicy": {"retryOn": ["reset"]}"#),
    )
    .unwrap();
    assert_eq!(c.retry.policy.expect("a policy").backoff, None);
}

#[test]
fn a_hedging_policy_carries_its_non_fatal_statuses() {
    let c = Config::from_json(
        "c.json",
        &file_with(r#""hedgingPolicy": {"nonFatalStatusCodes": ["UNAVAILABLE", 8]}"#),
    )
    .unwrap();
    let h = c.retry.hedging.expect("a policy");
    assert_eq!(h.non_fatal.codes(), [8, 14]);
}

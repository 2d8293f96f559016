//! h2c backends through the real binaries on loopback: HTTP/2 clients (corelb's test
//! codec, h2load) through corelb to `corelb-backend --protocol h2c` servers. Streams are
//! balanced one by one over few multiplexed upstream connections; the backend's
//! MAX_CONCURRENT_STREAMS is respected; refused and GOAWAY'd streams are retried; a
//! backend lost mid-response resets the stream; memory stays bounded for big transfers.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Command;
use std::time::Duration;

use common::h2client::{header, H2};
use common::{get, have, Backend, Proxy};
use corelb::h2::ErrorCode;

fn h2c(id: &str, profile: &str, extra: &[&str]) -> Backend {
    let mut args = vec!["--protocol", "h2c"];
    args.extend_from_slice(extra);
    Backend::start(id, profile, &args)
}

/// A config naming `backends` as h2c servers.
fn config(backends: &[&Backend]) -> String {
    let list: Vec<String> = backends
        .iter()
        .map(|b| {
            format!(
                r#"{{"name": "{}", "address": "127.0.0.1", "port": {}, "protocol": "h2c"}}"#,
                b.id,
                b.port()
            )
        })
        .collect();
    format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "healthCheck": {{"type": "tcp"}}, "servers": [{}]}}"#,
        list.join(", ")
    )
}

fn proxy(backends: &[&Backend], extra: &[&str]) -> Proxy {
    let mut args = vec!["--workers", "1", "--admin", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    Proxy::with_config(&config(backends), &args)
}

fn stats(p: &Proxy) -> serde_json::Value {
    let r = get(p.admin.expect("admin"), "/stats");
    serde_json::from_slice(&r.body).expect("stats JSON")
}

fn counter(p: &Proxy, name: &str) -> u64 {
    common::stat(p, name)
}

/// Opens `n` streams at once on `c` (GET `path`), waits for all; returns (status, backend)
/// of each.
fn batch(c: &mut H2, path: &str, n: usize) -> Vec<(u16, String)> {
    let ids: Vec<u32> = (0..n).map(|_| c.request("GET", path, &[], true)).collect();
    ids.iter()
        .map(|&id| {
            let g = c.wait(id, Duration::from_secs(20));
            let b = header(&g, "x-backend").unwrap_or("").to_string();
            c.got.remove(&id);
            (g.status, b)
        })
        .collect()
}

#[test]
fn streams_of_one_connection_spread_over_few_upstream_connections() {
    let (a, b, c) = (
        h2c("A", "fast", &[]),
        h2c("B", "fast", &[]),
        h2c("C", "fast", &[]),
    );
    let p = proxy(&[&a, &b, &c], &[]);
    let mut client = H2::connect(p.addr);
    let mut per: HashMap<String, usize> = HashMap::new();
    for _ in 0..6 {
        for (status, backend) in batch(&mut client, "/", 50) {
            assert_eq!(status, 200);
            *per.entry(backend).or_default() += 1;
        }
    }
    // Round-robin over one worker: every stream a pick of its own.
    assert_eq!(per.len(), 3, "{per:?}");
    assert!(per.values().all(|&n| n == 100), "{per:?}");
    // 50 streams at a time fit one connection per backend (limit 256 at the backend).
    let connects = counter(&p, "upstream_connects");
    assert_eq!(connects, 3, "one multiplexed connection per backend");
}

#[test]
fn backend_max_concurrent_streams_is_respected_with_more_connections() {
    // Slow enough that all 64 are in flight at once.
    let a = h2c("A", "fixed:1000", &["--max-streams", "4"]);
    let p = proxy(&[&a], &[]);
    let mut client = H2::connect(p.addr);
    let got = batch(&mut client, "/", 64);
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    let connects = counter(&p, "upstream_connects");
    // 64 concurrent streams at 4 per connection: 16 connections, none refused (a stream
    // over the limit would be refused by the backend and retried).
    assert!(
        connects >= 16,
        "{connects} upstream connections for 64 streams at 4 each"
    );
    assert_eq!(
        counter(&p, "retries"),
        0,
        "no stream went over the backend's limit"
    );
    // The connections stay pooled and are reused by the next batch.
    let got = batch(&mut client, "/", 64);
    assert!(got.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        counter(&p, "upstream_connects"),
        connects,
        "pooled connections reused"
    );
}

#[test]
fn refused_streams_are_retried_on_another_server() {
    let a = h2c("A", "fast", &["--refuse-rate", "1"]);
    let b = h2c("B", "fast", &[]);
    let p = proxy(&[&a, &b], &["--retry-budget", "100"]);
    let mut client = H2::connect(p.addr);
    let mut ok = 0;
    for _ in 0..40 {
        // POST with a body: not idempotent, yet safe to replay, since it was refused
        // unprocessed.
        let id = client.request("POST", "/echo", &[("content-length", "5")], false);
        client.data(id, b"hello", true);
        let g = client.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(header(&g, "x-backend"), Some("B"));
        assert_eq!(g.body, b"hello");
        ok += 1;
    }
    assert_eq!(ok, 40);
    // Refused streams were retried until A, failing every one, was ejected.
    let v = stats(&p);
    assert!(v["totals"]["retries"].as_u64().unwrap() >= 5, "{v}");
    assert_eq!(v["backends"][0]["health"]["state"], "ejected", "{v}");
}

#[test]
fn a_refused_stream_on_the_only_server_goes_to_a_fresh_connection() {
    let a = h2c("A", "fast", &["--refuse-rate", "0.5", "--seed", "7"]);
    let p = proxy(&[&a], &["--retry-budget", "100", "--retries", "5"]);
    let mut client = H2::connect(p.addr);
    let got = batch(&mut client, "/", 40);
    let ok = got.iter().filter(|(s, _)| *s == 200).count();
    // Each stream has 6 tries at 1/2: nearly all get through.
    assert!(ok >= 38, "{ok} of 40 answered: {got:?}");
}

#[test]
fn goaway_from_a_backend_moves_new_streams_to_a_new_connection() {
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let mut client = H2::connect(p.addr);
    assert!(batch(&mut client, "/", 5).iter().all(|(s, _)| *s == 200));
    let id = client.request("GET", "/goaway", &[], true);
    let g = client.wait(id, Duration::from_secs(5));
    assert!(g.done, "the /goaway stream ended: {g:?}");
    // The backend's connection takes no new streams; these go to a new one.
    let got = batch(&mut client, "/", 20);
    assert!(got.iter().all(|(s, _)| *s == 200), "{got:?}");
    assert!(counter(&p, "upstream_connects") >= 2);
}

#[test]
fn per_request_mode_opens_one_connection_per_stream() {
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &["--upstream", "per-request"]);
    let mut client = H2::connect(p.addr);
    for _ in 0..10 {
        assert!(batch(&mut client, "/", 2).iter().all(|(s, _)| *s == 200));
    }
    assert_eq!(counter(&p, "upstream_connects"), 20);
}

#[test]
fn response_trailers_and_request_bodies_pass_through() {
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let mut client = H2::connect(p.addr);
    let id = client.request("GET", "/trailers", &[], true);
    let g = client.wait(id, Duration::from_secs(5));
    assert_eq!(g.status, 200);
    assert!(!g.trailers.is_empty(), "trailers forwarded: {g:?}");
    // A 3 MB upload echoed back byte for byte, with request trailers echoed as trailers.
    let payload: Vec<u8> = (0..3_000_000u32).map(|i| (i * 13 % 251) as u8).collect();
    let id = client.request("POST", "/echo", &[], false);
    client.data(id, &payload, false);
    client
        .conn
        .send_trailers(id, &[(&b"x-sum"[..], &b"42"[..])])
        .unwrap();
    client.flush();
    let g = client.wait(id, Duration::from_secs(20));
    assert_eq!(g.status, 200);
    assert!(
        g.body == payload,
        "echo is byte-exact ({} bytes)",
        g.body.len()
    );
    assert!(
        g.trailers.iter().any(|(n, v)| n == "x-sum" && v == "42"),
        "{:?}",
        g.trailers
    );
}

/// Regression: a refused stream's replay went without the request trailers, which the
/// first attempt had already sent (and let go). They are now kept, as the body is, until
/// the response head comes.
#[test]
fn a_refused_stream_is_replayed_with_its_request_trailers() {
    let a = h2c("A", "fast", &["--refuse-rate", "1"]);
    let b = h2c("B", "fast", &[]);
    let p = proxy(&[&a, &b], &["--retry-budget", "100"]);
    let mut client = H2::connect(p.addr);
    for i in 0..10 {
        let id = client.request("POST", "/echo", &[("te", "trailers")], false);
        client.data(id, b"hello", false);
        let sum = format!("{i}");
        client
            .conn
            .send_trailers(id, &[(&b"x-sum"[..], sum.as_bytes())])
            .unwrap();
        client.flush();
        let g = client.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 200, "{g:?}");
        assert_eq!(header(&g, "x-backend"), Some("B"));
        assert_eq!(g.body, b"hello");
        assert!(
            g.trailers.iter().any(|(n, v)| n == "x-sum" && *v == sum),
            "request {i}: {:?}",
            g.trailers
        );
    }
    let v = stats(&p);
    assert!(v["totals"]["retries"].as_u64().unwrap() >= 1, "{v}");
}

/// Regression: an HTTP/2 client's own Via was dropped on the way to an HTTP/1.1 server,
/// while the three other protocol pairs kept it. Every pair now forwards the client's Via
/// and X-Forwarded-For, each extended with corelb's hop, whatever the two sides speak.
#[test]
fn every_protocol_pair_extends_the_clients_via_and_x_forwarded_for() {
    let a = h2c("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let to_h2c = proxy(&[&a], &[]);
    let to_http1 = Proxy::start(&[&b], &["--workers", "1"]);
    for (server, p) in [("h2c", &to_h2c), ("http1", &to_http1)] {
        for http2 in [false, true] {
            let pair = format!("http2 client {http2}, {server} server");
            let seen = if http2 {
                let mut c = H2::connect(p.addr);
                let extra = [("via", "1.1 edge"), ("x-forwarded-for", "192.0.2.9")];
                let id = c.request("GET", "/headers", &extra, true);
                let g = c.wait(id, Duration::from_secs(10));
                assert_eq!(g.status, 200, "{pair}: {g:?}");
                String::from_utf8_lossy(&g.body).to_ascii_lowercase()
            } else {
                let r = common::raw(
                    p.addr,
                    b"GET /headers HTTP/1.1\r\nHost: t\r\nVia: 1.1 edge\r\n\
                      X-Forwarded-For: 192.0.2.9\r\nConnection: close\r\n\r\n",
                )
                .expect("an answer");
                assert_eq!(r.status, 200, "{pair}: {}", r.text());
                r.text().to_ascii_lowercase()
            };
            let vias: Vec<&str> = seen
                .lines()
                .filter_map(|l| l.trim_end().strip_prefix("via: "))
                .collect();
            assert_eq!(vias.len(), 2, "{pair}: {seen}");
            assert_eq!(vias[0], "1.1 edge", "{pair}: the client's comes first");
            assert!(vias[1].ends_with(" corelb"), "{pair}: {seen}");
            let xff = "x-forwarded-for: 192.0.2.9, 127.0.0.1";
            assert!(seen.lines().any(|l| l.trim_end() == xff), "{pair}: {seen}");
        }
    }
}

/// Regression: h2 -> h2c dropped fields past 128, X-Forwarded-For and Via (appended last)
/// first, while h2 -> HTTP/1.1 forwarded them all. One rule now (http::MAX_SECTION_FIELDS):
/// a head within the bound is forwarded whole on both (124 fields here: with Host, XFF
/// and Via, as many as an HTTP/1.1 backend takes), one over it gets 431 on both, as
/// an HTTP/1.1 client's does.
#[test]
fn a_head_is_forwarded_whole_or_refused_with_431_on_every_path() {
    let a = h2c("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let to_h2c = proxy(&[&a], &[]);
    let to_http1 = Proxy::start(&[&b], &["--workers", "1", "--admin", "127.0.0.1:0"]);
    for (label, p) in [("h2c", &to_h2c), ("http1", &to_http1)] {
        let mut c = H2::connect(p.addr);
        let fields = common::many_fields("x-f", 124);
        let extra: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let id = c.request("GET", "/headers", &extra, true);
        let g = c.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 200, "{label}: {g:?}");
        let seen = String::from_utf8_lossy(&g.body).to_ascii_lowercase();
        for want in [
            "x-f0: v",
            "x-f123: v",
            "x-forwarded-for: 127.0.0.1",
            "via: 2 corelb",
        ] {
            assert!(seen.contains(want), "{label}: {want:?} missing from {seen}");
        }
        let before = p_requests(p);
        let fields = common::many_fields("x-f", 129);
        let extra: Vec<(&str, &str)> = fields.iter().map(|(n, v)| (&n[..], &v[..])).collect();
        let id = c.request("GET", "/headers", &extra, true);
        let g = c.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 431, "{label}: {g:?}");
        assert_eq!(
            p_requests(p),
            before,
            "{label}: the refused head reached no backend"
        );
        // An HTTP/1.1 client with as many fields gets the same answer.
        let mut req = String::from("GET /headers HTTP/1.1\r\nHost: t\r\n");
        for (n, v) in &common::many_fields("x-f", 129) {
            req.push_str(&format!("{n}: {v}\r\n"));
        }
        req.push_str("Connection: close\r\n\r\n");
        let r = common::raw(p.addr, req.as_bytes()).expect("an answer");
        assert_eq!(r.status, 431, "{label}: HTTP/1.1 client");
    }
}

/// Requests corelb forwarded, from /stats.
fn p_requests(p: &Proxy) -> u64 {
    counter(p, "requests")
}

/// Regression: request trailers past 128 were dropped on h2 -> h2c without a count. Now
/// both directions keep http::MAX_SECTION_FIELDS (136) and count the rest.
#[test]
fn request_trailers_past_the_bound_are_dropped_and_counted() {
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let mut c = H2::connect(p.addr);
    let id = c.request("POST", "/echo", &[("te", "trailers")], false);
    c.data(id, b"hello", false);
    c.trailers(id, &common::many_fields("x-t", 140));
    let g = c.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(g.body, b"hello");
    // The backend echoes the 136 it got as its own trailers.
    assert_eq!(g.trailers.len(), 136, "{:?}", g.trailers.len());
    assert!(g.trailers.iter().any(|(n, _)| n == "x-t135"));
    assert_eq!(counter(&p, "trailers_dropped"), 4);
}

#[test]
fn backend_lost_mid_response_resets_the_stream_and_others_go_on() {
    let mut a = h2c("A", "fast", &[]);
    let b = h2c("B", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let mut client = H2::connect(p.addr);
    let id = client.request("GET", "/bytes/400000000", &[], true);
    // Read some of the body, then kill the backend.
    for _ in 0..50 {
        client.pump();
        if client.got.get(&id).is_some_and(|g| g.body.len() > 100_000) {
            break;
        }
    }
    assert_eq!(client.got[&id].status, 200);
    a.kill();
    let g = client.wait(id, Duration::from_secs(10));
    assert!(g.reset.is_some(), "the stream was reset: {:?}", g.reset);
    assert!(g.body.len() < 400_000_000);
    // The client connection still works (for a stream that fails cleanly: 502).
    let id = client.request("GET", "/", &[], true);
    let g = client.wait(id, Duration::from_secs(10));
    assert_eq!(g.status, 502);
    drop(b);
    assert!(client.goaway.is_none() || client.goaway == Some(ErrorCode::NO_ERROR));
}

fn h2load(addr: SocketAddr, args: &[&str], path: &str) -> String {
    let out = Command::new("timeout")
        .arg("60")
        .arg("h2load")
        .args(args)
        .arg(format!("http://{addr}{path}"))
        .output()
        .expect("h2load");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn one_gib_each_way_through_one_stream_in_bounded_memory() {
    if !have("h2load") {
        return;
    }
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let out = h2load(p.addr, &["-n", "1", "-c", "1"], "/bytes/1073741824");
    assert!(out.contains("1 succeeded"), "{out}");
    assert!(out.contains("1 2xx"), "{out}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("up");
    let f = std::fs::File::create(&file).unwrap();
    f.set_len(1 << 30).unwrap();
    let d = file.to_str().unwrap();
    let out = h2load(p.addr, &["-n", "1", "-c", "1", "-d", d], "/discard");
    assert!(out.contains("1 succeeded"), "{out}");
    let rss = p.peak_rss_kib();
    eprintln!("corelb peak RSS after 1 GiB down and 1 GiB up: {rss} KiB");
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB");
}

#[test]
fn hundred_streams_of_ten_mib_in_bounded_memory() {
    if !have("h2load") {
        return;
    }
    let (a, b) = (h2c("A", "fast", &[]), h2c("B", "fast", &[]));
    let p = proxy(&[&a, &b], &[]);
    let out = h2load(
        p.addr,
        &["-n", "100", "-c", "1", "-m", "100"],
        "/bytes/10485760",
    );
    assert!(out.contains("100 succeeded"), "{out}");
    let rss = p.peak_rss_kib();
    eprintln!("corelb peak RSS after 100 concurrent 10 MiB streams: {rss} KiB");
    // Each stream buffers at most its window (256 KiB upstream, 64 KiB to the client).
    assert!(rss < 128 * 1024, "peak RSS {rss} KiB");
}

/// A gRPC call's `grpc-timeout` is corelb's deadline too: with a backend slower than it,
/// corelb cancels the upstream stream and answers DEADLINE_EXCEEDED (Trailers-Only) at
/// the deadline, whatever the client does.
#[test]
fn grpc_timeout_is_enforced_by_corelb() {
    let a = Backend::start("A", "fixed:3000", &["--protocol", "grpc"]);
    let p = proxy(&[&a], &[]);
    let mut client = H2::connect(p.addr);
    // tts.SynthesizeRequest{text: "x"}: field 1, length 1.
    let msg = [0u8, 0, 0, 0, 3, 0x0a, 1, b'x'];
    let start = std::time::Instant::now();
    let id = client.request(
        "POST",
        "/tts.TTS/Synthesize",
        &[
            ("content-type", "application/grpc"),
            ("te", "trailers"),
            ("grpc-timeout", "300m"),
        ],
        false,
    );
    client.data(id, &msg, true);
    let g = client.wait(id, Duration::from_secs(5));
    let took = start.elapsed();
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(header(&g, "grpc-status"), Some("4"), "{g:?}");
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // Without a backend to answer, a call is UNAVAILABLE (14), not an HTTP 503.
    drop(a);
    let (g, _, _) = common::h2client::synthesize(&mut client, "x");
    assert_eq!(g.status, 200, "{g:?}");
    assert_eq!(header(&g, "grpc-status"), Some("14"), "{g:?}");
    assert!(header(&g, "grpc-message").is_some_and(|m| !m.is_empty()));
}

/// Clients that stop reading hold back their own streams only: the upstream connection
/// they share with others keeps moving (its window has room for every stream's).
#[test]
fn stalled_readers_do_not_stall_the_shared_upstream_connection() {
    let a = h2c("A", "fast", &[]);
    let p = proxy(&[&a], &[]);
    let mut stalled = Vec::new();
    for _ in 0..8 {
        let mut c = H2::connect(p.addr);
        c.request("GET", "/bytes/50000000", &[], true);
        // Read a little, then never again.
        c.pump();
        stalled.push(c);
    }
    std::thread::sleep(Duration::from_millis(300));
    let mut active = H2::connect(p.addr);
    for _ in 0..5 {
        let id = active.request("GET", "/bytes/2000000", &[], true);
        let g = active.wait(id, Duration::from_secs(10));
        assert_eq!(g.status, 200);
        assert_eq!(g.body.len(), 2_000_000, "the transfer finished");
        active.got.remove(&id);
    }
    assert_eq!(
        counter(&p, "upstream_connects"),
        1,
        "all on one shared connection"
    );
    drop(stalled);
}

/// A retry policy over h2c: a 503 it names is replayed on another server, and a call
/// with no response head within the per-try timeout goes elsewhere.
#[test]
fn an_h2c_503_the_policy_names_is_replayed_on_another_server() {
    let u = h2c("U", "fast", &["--error-rate", "1", "--error-status", "503"]);
    let g = h2c("G", "fast", &[]);
    let p = proxy(&[&u, &g], &["--mode", "round-robin", "--retry-on", "503"]);
    let mut client = H2::connect(p.addr);
    let answers = batch(&mut client, "/", 6);
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "G"),
        "{answers:?}"
    );
    let replayed = counter(&p, "policy_retries");
    assert!(replayed >= 1, "{answers:?}");
    // Without the policy, U's 503 is the answer.
    let p = proxy(&[&u, &g], &["--mode", "round-robin"]);
    let mut client = H2::connect(p.addr);
    let answers = batch(&mut client, "/", 6);
    assert!(
        answers.iter().any(|(s, b)| *s == 503 && b == "U"),
        "{answers:?}"
    );
}

#[test]
fn a_grpc_call_past_its_per_try_timeout_goes_to_another_server() {
    let s = Backend::start("S", "fixed:3000", &["--protocol", "grpc"]);
    let f = Backend::start("F", "fixed:1", &["--protocol", "grpc"]);
    let policy = r#""mode": "round-robin", "retryPolicy": {"maxAttempts": 2, "perTryTimeout": "80ms",
        "retryOn": ["per-try-timeout"], "methods": ["/tts.TTS/*"]}, "#;
    let cfg = config(&[&s, &f]).replacen('{', &format!("{{{policy}"), 1);
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let mut client = H2::connect(p.addr);
    for _ in 0..4 {
        let (g, status, took) = common::h2client::synthesize(&mut client, "x");
        assert_eq!(status, "0", "{:?}", g.headers);
        assert_eq!(header(&g, "x-backend"), Some("F"));
        assert!(took < Duration::from_millis(1000), "{took:?}");
    }
    assert!(counter(&p, "policy_retries") >= 2);
}

#[test]
fn an_http1_503_the_policy_names_is_replayed_for_an_http2_client() {
    let u = Backend::start("U", "fast", &["--error-rate", "1", "--error-status", "503"]);
    let g = Backend::start("G", "fast", &[]);
    let args = [
        "--workers",
        "1",
        "--admin",
        "127.0.0.1:0",
        "--mode",
        "round-robin",
        "--retry-on",
        "503",
    ];
    let p = Proxy::start(&[&u, &g], &args);
    let mut client = H2::connect(p.addr);
    let answers = batch(&mut client, "/", 6);
    assert!(
        answers.iter().all(|(s, b)| *s == 200 && b == "G"),
        "{answers:?}"
    );
    assert_eq!(u.requests(), counter(&p, "policy_retries"));
    assert!(u.requests() >= 1);
}

#[test]
fn an_h2c_retry_waits_out_the_policys_backoff() {
    let u = h2c("U", "fast", &["--error-rate", "1", "--error-status", "503"]);
    let g = h2c("G", "fast", &[]);
    let policy = r#""mode": "round-robin", "retryPolicy": {"maxAttempts": 2, "retryOn": ["503"],
        "initialBackoff": "300ms", "maxBackoff": "300ms"}, "#;
    let cfg = config(&[&u, &g]).replacen('{', &format!("{{{policy}"), 1);
    let p = Proxy::with_config(&cfg, &["--workers", "1", "--admin", "127.0.0.1:0"]);
    let mut client = H2::connect(p.addr);
    let mut waits = Vec::new();
    for _ in 0..10 {
        let start = std::time::Instant::now();
        let id = client.request("GET", "/", &[], true);
        let g = client.wait(id, Duration::from_secs(5));
        assert_eq!((g.status, header(&g, "x-backend")), (200, Some("G")));
        waits.push(start.elapsed());
    }
    let retried = counter(&p, "policy_retries");
    assert!(retried >= 5, "{retried}");
    let longest = *waits.iter().max().unwrap();
    // Five or more retries all under 30 ms by chance: about 1 in 100,000.
    assert!(longest > Duration::from_millis(30), "{waits:?}");
    assert!(longest < Duration::from_millis(900), "{waits:?}");
}

#[test]
fn a_grpc_call_sent_again_says_how_many_attempts_went_before() {
    // R refuses every stream unprocessed; each call goes on to E, whose /headers shows
    // what it received: grpc-previous-rpc-attempts 1 (gRPC's retry design). A call E
    // gets at its first attempt carries none.
    let r = h2c("R", "fast", &["--refuse-rate", "1"]);
    let e = h2c("E", "fast", &[]);
    let call = |p: &Proxy| {
        let mut client = H2::connect(p.addr);
        let id = client.request(
            "POST",
            "/headers",
            &[("content-type", "application/grpc"), ("te", "trailers")],
            true,
        );
        let g = client.wait(id, Duration::from_secs(5));
        assert_eq!((g.status, header(&g, "x-backend")), (200, Some("E")));
        String::from_utf8_lossy(&g.body).into_owned()
    };
    // Round robin gives R every call first (each retry's pick moves it on once more).
    let p = proxy(&[&r, &e], &["--mode", "round-robin"]);
    for _ in 0..3 {
        let text = call(&p);
        assert!(text.contains("grpc-previous-rpc-attempts: 1\n"), "{text}");
    }
    assert_eq!(counter(&p, "retries"), 3);
    let p = proxy(&[&e], &[]);
    let text = call(&p);
    assert!(!text.contains("grpc-previous-rpc-attempts"), "{text}");
}

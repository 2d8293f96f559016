//! Zero-downtime operations: reloads under load (no request lost, shares following the new
//! weights), removal draining slow in-flight requests, an invalid reload kept out and
//! counted, settings needing a restart reported, and the admin API's server changes with
//! its token rules.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One admin call: `METHOD path` with an optional JSON body and bearer token.
fn admin(
    proxy: &Proxy,
    method: &str,
    path: &str,
    body: &str,
    token: Option<&str>,
) -> (u16, serde_json::Value) {
    let addr = proxy.admin.expect("admin on");
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: admin\r\nConnection: close\r\n{auth}Content-Length: {}\r\n\r\n{body}",
        body.len()
    );
    let r = raw(addr, req.as_bytes()).unwrap_or_else(|| panic!("no answer to {method} {path}"));
    let v = serde_json::from_slice(&r.body).unwrap_or(serde_json::Value::Null);
    (r.status, v)
}

fn stats(proxy: &Proxy) -> serde_json::Value {
    let r = get(proxy.admin.expect("admin on"), "/stats");
    serde_json::from_slice(&r.body).expect("stats json")
}

/// A config in the seed's format naming `(name, port, load)`.
fn config(servers: &[(&str, u16, f64)], extra: &str) -> String {
    let list: Vec<String> = servers
        .iter()
        .map(|(n, port, load)| {
            format!(r#"{{"name": "{n}", "address": "127.0.0.1", "port": {port}, "load": {load}}}"#)
        })
        .collect();
    format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, {extra} "servers": [{}]}}"#,
        list.join(", ")
    )
}

/// What wrk reported: requests, socket errors, non-2xx/3xx answers.
fn wrk_summary(out: &str) -> (u64, u64, u64) {
    let requests = out
        .lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let errors = out
        .lines()
        .find(|l| l.contains("Socket errors:"))
        .map(|l| {
            l.split(|c: char| !c.is_ascii_digit())
                .filter_map(|n| n.parse::<u64>().ok())
                .sum()
        })
        .unwrap_or(0);
    let non2xx = out
        .lines()
        .find(|l| l.contains("Non-2xx"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    (requests, errors, non2xx)
}

#[test]
fn twenty_reloads_under_load_lose_nothing_and_shares_follow_the_weights() {
    if !common::have("wrk") {
        return;
    }
    // 20 ms per request: a steady rate that two shared cores keep up with.
    let b: Vec<Backend> = ["A", "B", "C", "D"]
        .iter()
        .map(|id| Backend::start(id, "fixed:20", &[]))
        .collect();
    let port = |i: usize| b[i].port();
    let (a, bb, c, d) = (port(0), port(1), port(2), port(3));
    // Adding, removing and reweighting; "B" moving to D's port is a removal plus an addition.
    let plans: Vec<Vec<(&str, u16, f64)>> = vec![
        vec![("A", a, 1.0), ("B", bb, 1.0), ("C", c, 1.0)],
        vec![("A", a, 3.0), ("B", bb, 1.0)],
        vec![("A", a, 1.0), ("B", bb, 1.0), ("C", c, 2.0), ("D", d, 1.0)],
        vec![("B", bb, 2.0), ("D", d, 1.0)],
        vec![("A", a, 1.0), ("B", d, 1.0), ("C", c, 3.0)],
    ];
    let mut proxy = Proxy::with_config(
        &config(&plans[0], ""),
        &[
            "--mode",
            "weighted",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
    );
    let url = format!("http://{}/", proxy.addr);
    let rounds = 20;
    let wrk = Command::new("wrk")
        .args(["-t2", "-c64", "-d18s", "--timeout", "5s", &url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wrk");
    std::thread::sleep(Duration::from_millis(700));
    let started = Instant::now();
    let mut worst: f64 = 0.0;
    for round in 1..=rounds {
        let plan = &plans[round % plans.len()];
        std::fs::write(proxy.config_path(), config(plan, "")).unwrap();
        let (status, report) = admin(&proxy, "POST", "/reload", "", None);
        assert_eq!(status, 200, "round {round}: {report}");
        assert_eq!(report["ok"], true, "round {round}: {report}");
        // Requests already on their way finish where they were sent; then measure.
        std::thread::sleep(Duration::from_millis(150));
        let before: Vec<u64> = b.iter().map(Backend::requests).collect();
        std::thread::sleep(Duration::from_millis(450));
        let after: Vec<u64> = b.iter().map(Backend::requests).collect();
        let got: Vec<f64> = after
            .iter()
            .zip(&before)
            .map(|(x, y)| (x - y) as f64)
            .collect();
        let total: f64 = got.iter().sum();
        assert!(total > 100.0, "round {round}: too little traffic {got:?}");
        let weight_sum: f64 = plan.iter().map(|s| s.2).sum();
        for (i, be) in b.iter().enumerate() {
            let want: f64 = plan
                .iter()
                .filter(|s| s.1 == be.port())
                .map(|s| s.2)
                .sum::<f64>()
                / weight_sum;
            let share = got[i] / total;
            worst = worst.max((share - want).abs());
            assert!(
                (share - want).abs() <= 0.05,
                "round {round}: backend {} got {share:.3} of {total}, want {want:.3} ({plan:?}, {got:?})",
                be.id
            );
        }
    }
    let reload_time = started.elapsed();
    let out = wrk.wait_with_output().expect("wrk");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (requests, errors, non2xx) = wrk_summary(&text);
    eprintln!(
        "{rounds} reloads in {reload_time:?}; wrk: {requests} requests, {errors} socket errors, {non2xx} non-2xx; worst share error {worst:.3}"
    );
    assert!(requests > 1000, "wrk ran: {text}");
    assert_eq!((errors, non2xx), (0, 0), "no request lost:\n{text}");
    let s = stats(&proxy);
    assert_eq!(s["totals"]["reloads"], rounds as u64);
    assert_eq!(s["totals"]["reload_failures"], 0);
    let events = s["events"].as_array().unwrap();
    assert!(events.iter().any(|e| e["kind"] == "reload"));
    assert!(events.iter().any(|e| e["kind"] == "drained"));
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(15)), Some(0));
}

#[test]
fn a_removed_server_finishes_its_slow_requests_then_closes() {
    let slow = Backend::start("S", "fast", &[]);
    let fast = Backend::start("F", "fast", &[]);
    let proxy = Proxy::with_config(
        &config(&[("S", slow.port(), 1.0), ("F", fast.port(), 1.0)], ""),
        &[
            "--mode",
            "round-robin",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "2",
        ],
    );
    // Eight 1.5 s requests: round robin puts about half on S.
    let addr = proxy.addr;
    let slow_ones: Vec<_> = (0..8)
        .map(|_| std::thread::spawn(move || get(addr, "/delay/1500")))
        .collect();
    let on_s = || {
        let (_, v) = admin(&proxy, "GET", "/servers", "", None);
        v.as_array()
            .unwrap()
            .iter()
            .find(|s| s["name"] == "S")
            .map_or(0, |s| s["inflight"].as_u64().unwrap())
    };
    assert!(
        eventually(Duration::from_secs(5), || on_s() >= 2),
        "requests in flight on S"
    );
    let (status, v) = admin(&proxy, "DELETE", "/servers/S", "", None);
    assert_eq!(status, 200, "{v}");
    // Drained, not dropped: listed as drain while its requests run, taking no new ones.
    let (_, list) = admin(&proxy, "GET", "/servers", "", None);
    let s = list
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == "S")
        .cloned()
        .expect("S listed while draining");
    assert_eq!(s["state"], "drain");
    for _ in 0..20 {
        assert_eq!(get(addr, "/").backend(), "F", "no new request goes to S");
    }
    let mut finished_on_s = 0;
    for t in slow_ones {
        let r = t.join().unwrap();
        assert_eq!(r.status, 200, "a slow request finished: {}", r.text());
        finished_on_s += usize::from(r.backend() == "S");
    }
    assert!(finished_on_s >= 2, "S finished its in-flight requests");
    // The drain ends: S disappears from the list and its pooled connections close.
    assert!(
        eventually(Duration::from_secs(5), || {
            let (_, v) = admin(&proxy, "GET", "/servers", "", None);
            !v.as_array().unwrap().iter().any(|s| s["name"] == "S")
        }),
        "S's drain completed"
    );
    let st = stats(&proxy);
    assert_eq!(st["totals"]["drains_done"], 1);
    assert!(st["totals"]["upstream_connections_idle"].as_u64().unwrap() > 0);
    // Removing F too: once drained, every pooled connection is closed.
    assert_eq!(admin(&proxy, "DELETE", "/servers/F", "", None).0, 200);
    assert!(
        eventually(Duration::from_secs(5), || {
            stats(&proxy)["totals"]["upstream_connections_open"] == 0
        }),
        "pooled connections of drained servers close: {}",
        stats(&proxy)["totals"]
    );
    assert_eq!(get(addr, "/").status, 503, "no server left");
    assert!(st["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "drained" && e["message"].as_str().unwrap().starts_with("S ")));
}

#[test]
fn an_invalid_reload_keeps_serving_and_is_counted() {
    let a = Backend::start("A", "fast", &[]);
    let json = config(&[("A", a.port(), 1.0)], "");
    let mut proxy = Proxy::with_config(&json, &["--admin", "127.0.0.1:0", "--workers", "1"]);
    let path = proxy.config_path().to_path_buf();
    std::fs::write(
        &path,
        r#"{"servers": [{"name": "A", "address": "127.0.0.1", "port": "8081"}]}"#,
    )
    .unwrap();
    let (status, v) = admin(&proxy, "POST", "/reload", "", None);
    assert_eq!(status, 422, "{v}");
    assert_eq!(v["ok"], false);
    let err = v["error"].as_str().unwrap();
    assert!(
        err.ends_with(": servers[0].port: expected an integer 1..65535, got \"8081\""),
        "{err}"
    );
    // SIGHUP takes the same path.
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || stats(&proxy)
        ["totals"]["reload_failures"]
        == 2));
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").backend(), "A", "still serving");
    }
    let metrics = get(proxy.admin.unwrap(), "/metrics").text();
    assert!(
        metrics.contains("corelb_reload_failures_total 2"),
        "{metrics}"
    );
    // A valid reload that changes a setting needing a restart says so and keeps it.
    let connects = stats(&proxy)["totals"]["upstream_connects"]
        .as_u64()
        .unwrap();
    let served = |p: &Proxy| {
        let (_, v) = admin(p, "GET", "/servers", "", None);
        v[0]["requests"].as_u64().unwrap()
    };
    // Counts are published as exchanges are accounted, just after their responses left.
    assert!(eventually(Duration::from_secs(10), || served(&proxy) >= 5));
    let served_before = served(&proxy);
    std::fs::write(
        &path,
        config(&[("A", a.port(), 2.0)], r#""maxIdlePerBackend": 7,"#),
    )
    .unwrap();
    let (status, v) = admin(&proxy, "POST", "/reload", "", None);
    assert_eq!(status, 200, "{v}");
    let restart = v["restart_needed"].as_array().unwrap();
    assert_eq!(restart.len(), 1, "{v}");
    assert!(restart[0]
        .as_str()
        .unwrap()
        .starts_with("maxIdlePerBackend changed (128 -> 7): needs a restart"));
    assert_eq!(v["changes"][0], "A: load 1 -> 2, priority 0 -> 0");
    // A kept its slot: its counts go on, and its pooled connection serves on.
    assert!(served(&proxy) >= served_before);
    for _ in 0..5 {
        assert_eq!(get(proxy.addr, "/").backend(), "A");
    }
    assert_eq!(
        stats(&proxy)["totals"]["upstream_connects"]
            .as_u64()
            .unwrap(),
        connects,
        "no new upstream connection after the reload"
    );
    // SIGHUP applies a valid file the same way.
    std::fs::write(
        &path,
        config(&[("A", a.port(), 2.0), ("A2", a.port(), 1.0)], ""),
    )
    .unwrap();
    proxy.signal("HUP");
    assert!(eventually(Duration::from_secs(5), || {
        stats(&proxy)["totals"]["reloads"] == 2
    }));
    let (_, list) = admin(&proxy, "GET", "/servers", "", None);
    assert_eq!(list[1]["name"], "A2");
    proxy.signal("TERM");
    assert_eq!(proxy.wait_exit(Duration::from_secs(10)), Some(0));
    let err = proxy.stderr_text();
    let line = err
        .lines()
        .find(|l| l.contains("reload failed"))
        .expect("one line per failed reload");
    assert!(
        line.contains(&format!(
            "{}: servers[0].port: expected an integer 1..65535, got \"8081\"",
            path.display()
        )),
        "{line}"
    );
    assert!(
        err.contains("corelb: reload: maxIdlePerBackend changed"),
        "{err}"
    );
}

#[test]
fn admin_server_changes_and_their_token() {
    let a = Backend::start("A", "fast", &[]);
    let b = Backend::start("B", "fast", &[]);
    let proxy = Proxy::with_config(
        &config(&[("A", a.port(), 1.0)], ""),
        &[
            "--mode",
            "weighted",
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    );
    // Add B with load 3: three requests in four go there.
    let body = format!(
        r#"{{"address": "127.0.0.1", "port": {}, "load": 3}}"#,
        b.port()
    );
    let (status, v) = admin(&proxy, "PUT", "/servers/B", &body, None);
    assert_eq!(status, 201, "{v}");
    let picks: Vec<String> = (0..8).map(|_| get(proxy.addr, "/").backend()).collect();
    assert_eq!(picks.iter().filter(|p| *p == "B").count(), 6, "{picks:?}");
    // Drain A by state, then bring it back with another weight.
    let (status, _) = admin(&proxy, "PUT", "/servers/A", r#"{"state": "drain"}"#, None);
    assert_eq!(status, 200);
    assert!((0..6).all(|_| get(proxy.addr, "/").backend() == "B"));
    let (_, list) = admin(&proxy, "GET", "/servers", "", None);
    assert_eq!(list[0]["name"], "A");
    assert_eq!(list[0]["state"], "drain");
    let (status, _) = admin(
        &proxy,
        "PUT",
        "/servers/A",
        r#"{"state": "up", "load": 1}"#,
        None,
    );
    assert_eq!(status, 200);
    assert!((0..8).any(|_| get(proxy.addr, "/").backend() == "A"));
    // Mistakes are 400 with the field named; unknown servers 404.
    let (status, v) = admin(&proxy, "PUT", "/servers/C", r#"{"port": 1}"#, None);
    assert_eq!(status, 400, "{v}");
    let (status, v) = admin(&proxy, "PUT", "/servers/A", r#"{"load": -1}"#, None);
    assert_eq!(
        (status, v["error"].as_str().unwrap()),
        (400, "load: expected a number > 0, got -1")
    );
    let (status, _) = admin(&proxy, "PUT", "/servers/A", r#"{"weight": 2}"#, None);
    assert_eq!(status, 400);
    let (status, _) = admin(&proxy, "DELETE", "/servers/nope", "", None);
    assert_eq!(status, 404);
    let (status, _) = admin(&proxy, "GET", "/reload", "", None);
    assert_eq!(status, 405);
    let (status, _) = admin(&proxy, "DELETE", "/servers/B", "", None);
    assert_eq!(status, 200);
    assert!((0..6).all(|_| get(proxy.addr, "/").backend() == "A"));
    drop(proxy);

    // Off loopback: changes need the token; without one they are refused.
    let open = Proxy::with_config(
        &config(&[("A", a.port(), 1.0)], ""),
        &["--admin", "0.0.0.0:0", "--workers", "1"],
    );
    let (status, v) = admin(&open, "DELETE", "/servers/A", "", None);
    assert_eq!(status, 403, "{v}");
    assert!(v["error"].as_str().unwrap().contains("--admin-token"));
    let (status, _) = admin(&open, "GET", "/servers", "", None);
    assert_eq!(status, 200, "reading needs no token");
    drop(open);
    let guarded = Proxy::with_config(
        &config(&[("A", a.port(), 1.0)], ""),
        &[
            "--admin",
            "0.0.0.0:0",
            "--workers",
            "1",
            "--admin-token",
            "s3cret",
        ],
    );
    let (status, _) = admin(&guarded, "POST", "/reload", "", None);
    assert_eq!(status, 401);
    let (status, _) = admin(&guarded, "POST", "/reload", "", Some("wrong"));
    assert_eq!(status, 401);
    let (status, v) = admin(&guarded, "POST", "/reload", "", Some("s3cret"));
    assert_eq!(status, 200, "{v}");
}

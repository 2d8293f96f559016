//! HTTP/1.1 conformance of the proxy as a whole: raw clients, a scripted raw backend that
//! records what reached it, and the case list in tests/conformance/cases.rs.
//!
//! `cargo test --test conformance` checks corelb on every case not marked `known_fail`.
//! `make conformance` also runs the list against NGINX and HAProxy (plain reverse proxies
//! with generated configs, in front of the same backend) and prints the scores side by side.

#[path = "conformance/cases.rs"]
mod cases;
mod common;
#[path = "conformance/harness.rs"]
mod harness;

use cases::CASES;
use harness::{run_case, ScriptedBackend, Under};

#[test]
fn corelb_passes_every_case() {
    let backend = ScriptedBackend::start();
    let proxy = Under::corelb(&backend);
    let mut failed = Vec::new();
    for case in CASES.iter().filter(|c| c.known_fail.is_none()) {
        if let Err(why) = run_case(case, proxy.addr(), &backend) {
            failed.push(format!("{}: {why}", case.name));
        }
    }
    assert!(
        failed.is_empty(),
        "{} cases failed:\n{}",
        failed.len(),
        failed.join("\n")
    );
}

#[test]
fn case_names_are_unique() {
    let mut names: Vec<&str> = CASES.iter().map(|c| c.name).collect();
    names.sort_unstable();
    let before = names.len();
    names.dedup();
    assert_eq!(before, names.len());
}

/// `make conformance`: corelb, NGINX and HAProxy on every case, per-case table and scores.
#[test]
#[ignore = "runs NGINX and HAProxy; use make conformance"]
fn compare_with_nginx_and_haproxy() {
    let backend = ScriptedBackend::start();
    let proxies: Vec<(&str, Option<Under>)> = vec![
        ("corelb", Some(Under::corelb(&backend))),
        ("nginx", Under::nginx(&backend)),
        ("haproxy", Under::haproxy(&backend)),
    ];
    let mut scores = vec![0usize; proxies.len()];
    let mut details = Vec::new();
    println!(
        "\n{:<36} {:>8} {:>8} {:>8}",
        "case", "corelb", "nginx", "haproxy"
    );
    for case in CASES {
        let mut row = format!("{:<36}", case.name);
        for (i, (name, p)) in proxies.iter().enumerate() {
            let cell = match p {
                None => "n/a".to_string(),
                Some(p) => match run_case(case, p.addr(), &backend) {
                    Ok(()) => {
                        scores[i] += 1;
                        "pass".to_string()
                    }
                    Err(why) => {
                        details.push(format!("{name} {}: {why}", case.name));
                        "FAIL".to_string()
                    }
                },
            };
            row.push_str(&format!(" {cell:>8}"));
        }
        if let Some(why) = case.known_fail {
            row.push_str(&format!("  (known_fail: {why})"));
        }
        println!("{row}");
    }
    println!(
        "\n{:<36} {:>8} {:>8} {:>8}",
        format!("score (of {})", CASES.len()),
        scores[0],
        scores[1],
        scores[2]
    );
    if std::env::var_os("CONFORMANCE_DETAILS").is_some() {
        println!("\nfailures:\n{}", details.join("\n"));
    }
}

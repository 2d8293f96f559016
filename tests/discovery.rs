//! DNS discovery: a server whose address is a DNS name becomes one backend per address
//! (`NAME#k`), re-resolved every `--dns-refresh` from the `--resolver` given. A small DNS
//! server on loopback (tests/dns/dns_server.py, Python's dnslib from the venv that
//! tests/grpc/setup.sh makes) answers from a file the test rewrites; traffic follows.

mod common;

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;

fn venv_python() -> Option<PathBuf> {
    let py = common::venv_python()?;
    let ok = Command::new(&py)
        .args(["-c", "import dnslib"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        common::skip("the venv has no dnslib");
    }
    ok.then_some(py)
}

/// The DNS server, killed on drop.
struct Dns {
    child: Child,
    addr: String,
    records: tempfile::NamedTempFile,
}

impl Dns {
    fn start(py: &PathBuf, ips: &[&str]) -> Dns {
        let records = tempfile::NamedTempFile::new().unwrap();
        let mut dns = Dns {
            child: Command::new(py)
                .arg(concat!(
                    env!("CARGO_MANIFEST_DIR"),
                    "/tests/dns/dns_server.py"
                ))
                .arg(records.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .spawn()
                .expect("start the DNS server"),
            addr: String::new(),
            records,
        };
        dns.set(ips);
        let mut line = String::new();
        BufReader::new(dns.child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        dns.addr = line
            .trim()
            .strip_prefix("dns listening on ")
            .unwrap_or_else(|| panic!("DNS server said {line:?}"))
            .to_string();
        dns
    }

    /// The addresses `backends.test` has from now on.
    fn set(&self, ips: &[&str]) {
        let list: Vec<String> = ips.iter().map(|ip| format!("\"{ip}\"")).collect();
        let json = format!(r#"{{"backends.test.": [{}]}}"#, list.join(", "));
        std::fs::write(self.records.path(), json).unwrap();
    }
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn servers(proxy: &Proxy) -> Vec<(String, String, String)> {
    let r = get(proxy.admin.unwrap(), "/servers");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    let mut out: Vec<(String, String, String)> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            let f = |k: &str| s[k].as_str().unwrap().to_string();
            (f("name"), f("addr"), f("state"))
        })
        .collect();
    out.sort();
    out
}

/// Which backends answer `n` requests.
fn answered_by(proxy: &Proxy, n: usize) -> Vec<String> {
    let mut ids: Vec<String> = (0..n).map(|_| get(proxy.addr, "/").backend()).collect();
    ids.sort();
    ids.dedup();
    ids
}

#[test]
fn dns_names_become_instances_that_follow_the_records() {
    let Some(py) = venv_python() else {
        return;
    };
    // Three backends on one port of three loopback addresses.
    let a = Backend::start("A", "fast", &[]);
    let port = a.port();
    let b = Backend::start_on("B", "fast", port, &["--host", "127.0.0.2"]);
    let c = Backend::start_on("C", "fast", port, &["--host", "127.0.0.3"]);
    let dns = Dns::start(&py, &["127.0.0.1", "127.0.0.2"]);
    let json = format!(
        r#"{{"heartbeatInterval": 1, "heartbeatTimeout": 1, "dnsRefresh": 0.3,
            "servers": [{{"name": "api", "address": "backends.test", "port": {port}}}]}}"#
    );
    let proxy = Proxy::with_config(
        &json,
        &[
            "--resolver",
            &dns.addr,
            "--admin",
            "127.0.0.1:0",
            "--workers",
            "1",
        ],
    );
    let a_addr = format!("127.0.0.1:{port}");
    let b_addr = format!("127.0.0.2:{port}");
    let c_addr = format!("127.0.0.3:{port}");
    assert_eq!(
        servers(&proxy),
        [
            ("api#1".into(), a_addr.clone(), "up".into()),
            ("api#2".into(), b_addr.clone(), "up".into()),
        ]
    );
    assert_eq!(answered_by(&proxy, 12), ["A", "B"]);

    // The records change: 127.0.0.1 leaves (drained), 127.0.0.3 comes (a new name; B's
    // instance keeps its own).
    dns.set(&["127.0.0.2", "127.0.0.3"]);
    assert!(
        eventually(Duration::from_secs(10), || {
            servers(&proxy)
                == [
                    ("api#2".to_string(), b_addr.clone(), "up".to_string()),
                    ("api#3".to_string(), c_addr.clone(), "up".to_string()),
                ]
        }),
        "instances follow the records: {:?}",
        servers(&proxy)
    );
    assert_eq!(answered_by(&proxy, 12), ["B", "C"]);
    let c_before = c.requests();
    assert!(c_before > 0);
    drop((a, b));

    // A failed lookup keeps what there is.
    std::fs::write(dns.records.path(), "{}").unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let left = servers(&proxy);
    assert!(left.iter().any(|s| s.0 == "api#3"), "{left:?}");
    let r = get(proxy.admin.unwrap(), "/stats");
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert!(v["events"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["kind"] == "dns"));
}

//! Bodies stream through with bounded memory: 1 GiB up and 1 GiB down.

mod common;

use common::*;
use std::io::{Read, Write};

const GIB: u64 = 1 << 30;

fn pattern(i: u64) -> u8 {
    b'a' + (i % 26) as u8
}

#[test]
fn one_gib_upload_and_download_stream_with_bounded_memory() {
    let a = Backend::start("A", "fast", &[]);
    let p = Proxy::start(&[&a], &["--workers", "1"]);

    // Upload: 1 GiB with Content-Length to /sink, which returns the byte count and sum.
    let mut s = connect(p.addr);
    // Generous: 1 GiB each way on a loaded 2-core machine.
    s.set_read_timeout(Some(std::time::Duration::from_secs(120)))
        .unwrap();
    s.write_all(
        format!("POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: {GIB}\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let chunk: Vec<u8> = (0..1u64 << 20).map(pattern).collect();
    let mut sum = 0u64;
    for _ in 0..1024 {
        s.write_all(&chunk).unwrap();
    }
    for &b in &chunk {
        sum = sum.wrapping_add(b as u64);
    }
    let sum = sum.wrapping_mul(1024);
    let r = read_response(&mut s, &mut Vec::new(), "POST").unwrap();
    assert_eq!(r.status, 200);
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["bytes"].as_u64(), Some(GIB));
    assert_eq!(v["sum"].as_u64(), Some(sum));

    // Download: 1 GiB from /bytes, checked as it streams.
    s.write_all(format!("GET /bytes/{GIB} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 200"));
    let mut got = 0u64;
    let mut buf = vec![0u8; 1 << 20];
    while got < GIB {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0, "EOF after {got} bytes");
        for (k, &b) in buf[..n].iter().enumerate() {
            if b != pattern(got + k as u64) {
                panic!("corrupt byte at {}", got + k as u64);
            }
        }
        got += n as u64;
    }
    assert_eq!(got, GIB);

    let rss = p.peak_rss_kib();
    assert!(rss < 64 * 1024, "peak RSS {rss} KiB is not under 64 MiB");
    eprintln!("proxy peak RSS after 2 GiB streamed: {rss} KiB");
}

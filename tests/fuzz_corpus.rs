//! Replays the fuzz corpus (fuzz/corpus/NAME, including crash regressions) through the
//! properties the fuzz targets check, so `cargo test` covers them without nightly.

use std::path::Path;

fn replay(name: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(name);
    let mut n = 0;
    for entry in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let r = std::panic::catch_unwind(|| check(&data));
        assert!(r.is_ok(), "{} fails its property", path.display());
        n += 1;
    }
    assert!(n > 0, "no corpus in {}", dir.display());
}

#[test]
fn request_head_corpus() {
    replay("request_head", corelb::http::fuzzing::request_head);
}

#[test]
fn response_head_corpus() {
    replay("response_head", corelb::http::fuzzing::response_head);
}

#[test]
fn chunked_corpus() {
    replay("chunked", corelb::http::fuzzing::chunked);
}

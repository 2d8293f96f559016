//! Runs the Python gRPC interop suite (tests/grpc, pytest with grpcio from
//! target/grpc-venv) against the real `corelb-backend` and asserts it passed. Skips, saying
//! so, only when the venv is missing: `tests/grpc/setup.sh` makes it (CI's .ci/run does).

mod common;

use std::path::Path;
use std::process::Command;

/// Bound on the whole suite (it takes about 15 s).
const SUITE_SECONDS: &str = "180";

#[test]
fn grpcio_interop_suite() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let Some(python) = common::venv_python() else {
        return;
    };
    let out = Command::new("timeout")
        .arg(SUITE_SECONDS)
        .arg(&python)
        .args(["-m", "pytest", "-q", "-p", "no:cacheprovider", "."])
        .current_dir(root.join("tests/grpc"))
        .env("CORELB_BACKEND", common::backend_bin())
        .env("CORELB_BIN", common::PROXY)
        .env("PYTHONDONTWRITEBYTECODE", "1")
        .output()
        .expect("run pytest");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "gRPC interop suite failed: {:?}",
        out.status
    );
    assert!(text.contains(" passed"), "pytest ran no test");
}

//! The crate's import direction: every `crate::` path in `src/` must point to a module of
//! a lower layer (or to the module itself), so there is no import cycle. The table below
//! is the README's architecture section; changing one means changing the other.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layers, lowest first. A module may import only from layers below its own.
const LAYERS: &[&[&str]] = &[
    // L0: no imports from the crate.
    &[
        "log",
        "rng",
        "buffer",
        "timer",
        "http",
        "h2",
        "config::types",
        "dns",
        "transport",
    ],
    // L1: configuration, measurement, the retry budget.
    &["config", "metrics", "access_log", "retry"],
    // L2: TLS settings made into rustls configs (certificates, backends' trust).
    &["tls"],
    // L3: backends and their shared stats.
    &["balancer"],
    // L4: health state and the checker.
    &["health"],
    // L5: what the workers share.
    &["shared"],
    // L6: the per-worker proxy.
    &["proxy", "control"],
    // L7: the worker loop and the admin listener.
    &["worker", "admin"],
    // L8: starting and stopping.
    &["server"],
];

fn layer_of(module: &str) -> Option<usize> {
    LAYERS.iter().position(|l| l.contains(&module))
}

/// The module a source file belongs to: `src/proxy/relay.rs` is `proxy`,
/// `src/config/types.rs` is `config::types` (named in the table on its own).
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.len() == 1 && (parts[0] == "lib" || parts[0] == "main") {
        return None;
    }
    if parts.len() >= 2 {
        let sub = format!("{}::{}", parts[0], parts[1]);
        if layer_of(&sub).is_some() {
            return Some(sub);
        }
    }
    Some(parts[0].clone())
}

/// The modules named by `crate::` paths in `text` (`crate::config::types::X` is
/// `config::types` when the table names it, else `config`).
fn imports(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap_or("");
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            // `$crate::` in macros names the crate root the same way.
            let after = &rest[i + "crate::".len()..];
            let name: String = after
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let tail = &after[name.len()..];
            let mut module = name.clone();
            if let Some(t) = tail.strip_prefix("::") {
                let sub: String = t
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let full = format!("{name}::{sub}");
                if layer_of(&full).is_some() {
                    module = full;
                }
            }
            if !name.is_empty() && name != "debug" {
                out.insert(module);
            }
            rest = after;
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("read src") {
        let path = entry.expect("entry").path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level module of a table entry (`config::types` belongs to `config`).
fn top(m: &str) -> &str {
    m.split("::").next().unwrap_or(m)
}

#[test]
fn every_import_points_down_the_layers() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut problems = Vec::new();
    for file in &files {
        let Some(module) = module_of(&src, file) else {
            continue;
        };
        let Some(own) = layer_of(&module) else {
            problems.push(format!(
                "{}: module `{module}` is in no layer of tests/layers.rs",
                file.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(file).expect("read");
        for dep in imports(&text) {
            if dep == module || (top(&dep) == top(&module) && !dep.contains("::")) {
                continue;
            }
            match layer_of(&dep) {
                Some(l) if l < own => {}
                Some(l) => problems.push(format!(
                    "{}: `{module}` (L{own}) imports `{dep}` (L{l}): imports must point to a lower layer",
                    file.display()
                )),
                None => problems.push(format!(
                    "{}: `{module}` imports `{dep}`, which is in no layer",
                    file.display()
                )),
            }
            graph.entry(module.clone()).or_default().insert(dep);
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    // With every edge pointing down, there can be no cycle; check that the graph agrees.
    for (m, deps) in &graph {
        for d in deps {
            assert!(
                !graph.get(d).is_some_and(|dd| dd.contains(m)),
                "import cycle: {m} <-> {d}"
            );
        }
    }
}

#[test]
fn the_import_scanner_sees_use_lines_and_inline_paths() {
    let text = "use crate::http::{self, Body};\nlet x = crate::health::Outcome::Ok; // crate::admin\nuse crate::config::types::Mode;\n";
    let got: Vec<String> = imports(text).into_iter().collect();
    assert_eq!(got, ["config::types", "health", "http"]);
}

/// No source file of the crate is over 800 lines (a module that grows past it gets split
/// along its parts); files that hold only a module's tests are not counted.
#[test]
fn no_source_file_is_over_800_lines() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let tests_only = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name == "tests.rs" || name.ends_with("_tests.rs")
    };
    let long: Vec<String> = files
        .iter()
        .filter(|p| !tests_only(p))
        .filter_map(|p| {
            let n = std::fs::read_to_string(p).ok()?.lines().count();
            (n > 800).then(|| format!("{} ({n} lines)", p.display()))
        })
        .collect();
    assert!(long.is_empty(), "over 800 lines: {long:?}");
    assert!(files.len() > 50, "the scan found the sources");
}

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

/// The paths a file names (`crate::`, `super::` and `self::`), each made absolute: a list
/// of segments from the crate root. `use` trees with braces are expanded; the inline test
/// module at a file's end (`#[cfg(test)]`) is left out, since its `super::` is the file.
fn named_paths(
    module: &[String],
    is_mod: bool,
    kids: &BTreeSet<String>,
    text: &str,
) -> Vec<Vec<String>> {
    // The code before the tests, comments stripped.
    let mut code = String::new();
    for line in text.lines() {
        if line.trim_start().starts_with("#[cfg(test)]") {
            break;
        }
        code.push_str(line.split("//").next().unwrap_or(""));
        code.push('\n');
    }
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    // This file's module (`a/b.rs` is a::b, `a/mod.rs` is a); `super` is the one above.
    let here: Vec<String> = module.to_vec();
    let parent_of = |m: &[String]| m[..m.len().saturating_sub(1)].to_vec();
    let resolve = |segs: &[String]| -> Option<Vec<String>> {
        let mut base: Vec<String>;
        let mut i = 0;
        match segs.first()?.as_str() {
            "crate" => {
                base = Vec::new();
                i = 1;
            }
            "self" => {
                base = here.clone();
                i = 1;
            }
            "super" => {
                base = here.clone();
                while segs.get(i).is_some_and(|s| s == "super") {
                    base = parent_of(&base);
                    i += 1;
                }
            }
            // A `mod.rs` names its own children without a prefix.
            first if is_mod && kids.contains(first) => {
                base = here.clone();
            }
            _ => return None,
        }
        base.extend(segs[i..].iter().cloned());
        Some(base)
    };
    let mut out = Vec::new();
    // `use` statements, braces expanded.
    fn expand(prefix: &[String], tree: &str, out: &mut Vec<Vec<String>>) {
        let tree = tree.trim();
        if tree.is_empty() {
            return;
        }
        if let Some(open) = tree.find('{') {
            let head: Vec<String> = tree[..open]
                .split("::")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
            let mut p = prefix.to_vec();
            p.extend(head);
            // Split `inner` at top-level commas.
            let (mut depth, mut start) = (0, 0);
            for (k, ch) in inner.char_indices() {
                match ch {
                    '{' => depth += 1,
                    '}' => depth -= 1,
                    ',' if depth == 0 => {
                        expand(&p, &inner[start..k], out);
                        start = k + 1;
                    }
                    _ => {}
                }
            }
            expand(&p, &inner[start..], out);
            return;
        }
        let name = tree.split(" as ").next().unwrap_or(tree);
        let mut p = prefix.to_vec();
        p.extend(
            name.split("::")
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty() && s != "self" || prefix.is_empty()),
        );
        out.push(p);
    }
    let mut rest = code.as_str();
    while let Some(i) = rest.find("use ") {
        let before_ok = i == 0 || !ident(rest[..i].chars().last().unwrap_or(' '));
        let after = &rest[i + 4..];
        let end = after.find(';').unwrap_or(after.len());
        if before_ok {
            let mut trees = Vec::new();
            expand(&[], &after[..end], &mut trees);
            for t in trees {
                if let Some(p) = resolve(&t) {
                    out.push(p);
                }
            }
            rest = &after[end..];
        } else {
            rest = after;
        }
    }
    // Inline paths: `super::x::y(...)`, `crate::a::B`, and a `mod.rs`'s `child::f()`.
    let mut starts: Vec<String> = ["crate::", "super::", "self::"].map(String::from).to_vec();
    if is_mod {
        starts.extend(kids.iter().map(|k| format!("{k}::")));
    }
    for start in &starts {
        let start = start.as_str();
        let mut rest = code.as_str();
        while let Some(i) = rest.find(start) {
            let ok = i == 0 || !ident(rest[..i].chars().last().unwrap_or(' '));
            let tail = &rest[i..];
            let len = tail
                .char_indices()
                .find(|&(_, c)| !(ident(c) || c == ':'))
                .map_or(tail.len(), |(k, _)| k);
            // `pub(in crate::x)` is a visibility, not an import.
            let visibility = rest[..i].ends_with("(in ");
            if ok && !visibility && !rest[..i].ends_with('$') && !rest[..i].ends_with("::") {
                let segs: Vec<String> = tail[..len]
                    .split("::")
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect();
                if let Some(p) = resolve(&segs) {
                    out.push(p);
                }
            }
            rest = &tail[len.max(1)..];
        }
    }
    out
}

type Graph = BTreeMap<String, BTreeSet<String>>;

/// The import graph inside each folder of `src/`, by folder path: its nodes are the
/// folder's files and subfolders ("mod" is its own `mod.rs`); a subfolder's node carries
/// the edges of every file in it.
fn folder_graphs() -> BTreeMap<Vec<String>, Graph> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    // Children (modules) of each folder, by folder path.
    let mut children: BTreeMap<Vec<String>, BTreeSet<String>> = BTreeMap::new();
    let module_path = |p: &Path| -> (Vec<String>, bool) {
        let rel = p.strip_prefix(&src).expect("under src");
        let mut parts: Vec<String> = rel
            .iter()
            .map(|s| s.to_string_lossy().trim_end_matches(".rs").to_string())
            .collect();
        let is_mod = parts.last().is_some_and(|l| l == "mod");
        if is_mod || parts.last().is_some_and(|l| l == "lib" || l == "main") {
            parts.pop();
            return (parts, true);
        }
        (parts, false)
    };
    for f in &files {
        // A file is a child of its folder; a `mod.rs`'s folder is a child of the one above.
        let (m, _) = module_path(f);
        if let Some((last, folder)) = m.split_last() {
            children
                .entry(folder.to_vec())
                .or_default()
                .insert(last.clone());
        }
    }
    // Edges per folder: node -> node ("mod" is the folder's own mod.rs).
    let mut graphs: BTreeMap<Vec<String>, Graph> = BTreeMap::new();
    let tests_only = |p: &Path| {
        let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
        name == "tests.rs"
            || name.ends_with("_tests.rs")
            || p.components().any(|c| c.as_os_str() == "tests")
    };
    for f in files.iter().filter(|f| !tests_only(f)) {
        let (m, is_mod) = module_path(f);
        let text = std::fs::read_to_string(f).expect("read");
        let none = BTreeSet::new();
        let kids = if is_mod {
            children.get(&m).unwrap_or(&none)
        } else {
            &none
        };
        for target in named_paths(&m, is_mod, kids, &text) {
            // The folder both sit in: their longest common prefix.
            let common = m.iter().zip(&target).take_while(|(a, b)| a == b).count();
            let folder = m[..common].to_vec();
            let Some(kids) = children.get(&folder) else {
                continue;
            };
            let from = m.get(common).cloned().unwrap_or_else(|| "mod".into());
            let to = match target.get(common) {
                Some(t) if kids.contains(t) => t.clone(),
                _ => "mod".into(),
            };
            if from != to {
                graphs
                    .entry(folder)
                    .or_default()
                    .entry(from)
                    .or_default()
                    .insert(to);
            }
        }
    }
    graphs
}

/// Inside every folder of `src/`, the files and subfolders import each other without a
/// cycle (a folder's `mod.rs` is a node of its own: its children may use its items only
/// if it uses none of theirs back).
#[test]
fn no_import_cycle_inside_any_folder() {
    let graphs = folder_graphs();
    let mut cycles = Vec::new();
    for (folder, g) in &graphs {
        // Strongly connected components by reachability (the graphs are small).
        let nodes: BTreeSet<&String> = g.keys().chain(g.values().flatten()).collect();
        let reach = |from: &String| -> BTreeSet<String> {
            let mut seen = BTreeSet::new();
            let mut todo = vec![from.clone()];
            while let Some(n) = todo.pop() {
                for d in g.get(&n).into_iter().flatten() {
                    if seen.insert(d.clone()) {
                        todo.push(d.clone());
                    }
                }
            }
            seen
        };
        let mut done = BTreeSet::new();
        for n in &nodes {
            if done.contains(*n) {
                continue;
            }
            let r = reach(n);
            if !r.contains(*n) {
                continue;
            }
            let scc: Vec<String> = r
                .iter()
                .filter(|m| reach(m).contains(*n))
                .cloned()
                .collect();
            done.extend(scc.iter().cloned());
            let name = if folder.is_empty() {
                "src".to_string()
            } else {
                format!("src/{}", folder.join("/"))
            };
            let edges: Vec<String> = scc
                .iter()
                .flat_map(|a| {
                    g.get(a)
                        .into_iter()
                        .flatten()
                        .filter(|b| scc.contains(b))
                        .map(move |b| format!("{a}->{b}"))
                })
                .collect();
            cycles.push(format!("{name}: cycle among {scc:?}: {}", edges.join(" ")));
        }
    }
    assert!(cycles.is_empty(), "\n{}", cycles.join("\n"));
}

/// The files of `src/proxy/`, lowest first (the README's architecture section and
/// `proxy/mod.rs` list them the same way). The model (P0-P6) never names `Proxy`; what
/// moves an exchange (P7) is `impl Proxy` over the model; the front ends (P8) take client
/// connections; the dispatch (P9) hands them events.
const PROXY_LAYERS: &[&[&str]] = &[
    // P0: reading and writing a connection.
    &["io"],
    // P1: decisions, pipes, and translations without state.
    &["decide", "pipe", "grpc", "h2_translate", "h1_h2c_translate"],
    // P2: one request and its response.
    &["exchange"],
    // P3: the worker's context; an h2c upstream connection's state; an HTTP/1.1 server's
    // response read for either front end.
    &["context", "h2c_conn", "h1_response"],
    // P4: an exchange's course for every protocol pair; the back-end interface.
    &["lifecycle", "back"],
    // P5: an HTTP/2 client connection's state.
    &["h2_session"],
    // P6: the worker's connections and `Proxy`.
    &["conns"],
    // P7: back ends and the exchange's course (may use each other, without a cycle).
    &[
        "upstream", "h2c_pool", "relay", "splice", "hedge", "end", "h1_h2c", "h1_step", "tunnel",
    ],
    // P8: front ends.
    &["handshake", "client", "h2"],
    // P9: dispatch.
    &["mod", "membership"],
];

#[test]
fn proxy_files_import_only_their_own_layer_or_lower() {
    let graphs = folder_graphs();
    let g = &graphs[&vec!["proxy".to_string()]];
    let layer = |m: &str| PROXY_LAYERS.iter().position(|l| l.contains(&m));
    let mut problems = Vec::new();
    let proxy = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/proxy");
    for entry in std::fs::read_dir(&proxy).expect("read src/proxy") {
        let path = entry.expect("entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or("")
            .to_string();
        if !name.ends_with("_tests") && layer(&name).is_none() {
            problems.push(format!("src/proxy/{name}: in no layer of PROXY_LAYERS"));
        }
    }
    for (from, tos) in g {
        let Some(lf) = layer(from) else { continue };
        for to in tos {
            match layer(to) {
                // The model's layers are strict; above them, a file may use its peers.
                Some(lt) if lt < lf || (lt == lf && lf >= 7) => {}
                Some(lt) => problems.push(format!(
                    "proxy/{from} (P{lf}) imports proxy/{to} (P{lt}): imports point down"
                )),
                None => problems.push(format!("proxy/{from} imports proxy/{to}, in no layer")),
            }
        }
    }
    assert!(problems.is_empty(), "\n{}", problems.join("\n"));
    assert!(g.len() > 15, "the scan found proxy's files");
}

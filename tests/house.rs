//! The layering of `docs/architecture.md`, checked against the code: every `crate::` path in `src/`
//! (outside comments) is an import from one top-level module to another; it must not point to a higher
//! layer (unless the page lists it under *Upward imports*) and the imports must not form a cycle.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Layer of each top-level module, from the page's table (1 = the top).
fn layers(page: &str) -> BTreeMap<String, usize> {
    let table = between(page, "<!-- layers: begin -->", "<!-- layers: end -->");
    let mut out = BTreeMap::new();
    for row in table.lines().filter(|l| l.starts_with("| ")) {
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        let Some(layer) = cells
            .get(1)
            .and_then(|c| c.split_whitespace().next())
            .and_then(|n| n.parse::<usize>().ok())
        else {
            continue; // the header
        };
        for m in cells[2].split_whitespace() {
            out.insert(m.trim_matches('`').to_string(), layer);
        }
    }
    out
}

/// The allowed upward imports: `- \`from\` → \`to\`: reason` lines.
fn allowed(page: &str) -> BTreeSet<(String, String)> {
    between(page, "<!-- upward: begin -->", "<!-- upward: end -->")
        .lines()
        .filter_map(|l| {
            let l = l.strip_prefix("- `")?;
            let (from, rest) = l.split_once("` → `")?;
            let (to, _) = rest.split_once('`')?;
            Some((from.to_string(), to.to_string()))
        })
        .collect()
}

fn between<'a>(s: &'a str, a: &str, b: &str) -> &'a str {
    let i = s
        .find(a)
        .unwrap_or_else(|| panic!("docs/architecture.md lacks {a}"))
        + a.len();
    let j = s[i..]
        .find(b)
        .unwrap_or_else(|| panic!("docs/architecture.md lacks {b}"));
    &s[i..i + j]
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module of a file under src/ (`src/run/trainer.rs` → `run`); None for lib.rs.
fn module_of(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).unwrap();
    let first = rel
        .components()
        .next()?
        .as_os_str()
        .to_string_lossy()
        .to_string();
    let m = first.trim_end_matches(".rs").to_string();
    (m != "lib").then_some(m)
}

/// The names lib.rs re-exports at the crate root (`pub use error::{Error, Result};`) → their module.
fn root_exports(src: &Path) -> BTreeMap<String, String> {
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in lib.lines() {
        let Some(rest) = line.trim().strip_prefix("pub use ") else {
            continue;
        };
        let Some((module, names)) = rest.trim_end_matches(';').split_once("::") else {
            continue;
        };
        for name in names.trim_matches(|c| c == '{' || c == '}').split(',') {
            out.insert(name.trim().to_string(), module.to_string());
        }
    }
    out
}

/// Every (from module, to module, file:line) import among top-level modules.
fn imports(src: &Path) -> Vec<(String, String, String)> {
    let exports = root_exports(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let Some(from) = module_of(src, &f) else {
            continue;
        };
        let text = std::fs::read_to_string(&f).unwrap();
        for (i, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or("");
            for (pos, _) in code.match_indices("crate::") {
                let to: String = code[pos + 7..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                let to = exports.get(&to).cloned().unwrap_or(to);
                if !to.is_empty() && to != from {
                    out.push((from.clone(), to, format!("{}:{}", f.display(), i + 1)));
                }
            }
        }
    }
    out
}

/// The violations of `page`'s layering by the crate in `src` (empty when it holds).
fn violations(page: &str, src: &Path) -> Vec<String> {
    let layer = layers(page);
    let ok = allowed(page);
    let mut bad = Vec::new();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (from, to, at) in imports(src) {
        let (Some(&lf), Some(&lt)) = (layer.get(&from), layer.get(&to)) else {
            bad.push(format!(
                "{at}: {from} → {to}: a module missing from the layer table"
            ));
            continue;
        };
        if lt < lf && !ok.contains(&(from.clone(), to.clone())) {
            bad.push(format!(
                "{at}: {from} (layer {lf}) imports {to} (layer {lt}), which is above it"
            ));
        }
        graph.entry(from).or_default().insert(to);
    }
    if let Some(cycle) = find_cycle(&graph) {
        bad.push(format!("import cycle: {}", cycle.join(" → ")));
    }
    bad
}

/// A cycle of the graph, if there is one (depth-first search with colours).
fn find_cycle(graph: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        n: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        state: &mut BTreeMap<String, u8>,
        stack: &mut Vec<String>,
    ) -> Option<Vec<String>> {
        state.insert(n.to_string(), 1);
        stack.push(n.to_string());
        for m in graph.get(n).into_iter().flatten() {
            match state.get(m.as_str()).copied().unwrap_or(0) {
                1 => {
                    let start = stack.iter().position(|s| s == m).unwrap();
                    let mut c = stack[start..].to_vec();
                    c.push(m.clone());
                    return Some(c);
                }
                0 => {
                    if let Some(c) = visit(m, graph, state, stack) {
                        return Some(c);
                    }
                }
                _ => {}
            }
        }
        stack.pop();
        state.insert(n.to_string(), 2);
        None
    }
    let mut state = BTreeMap::new();
    for n in graph.keys() {
        if state.get(n.as_str()).copied().unwrap_or(0) == 0 {
            let mut stack = Vec::new();
            if let Some(c) = visit(n, graph, &mut state, &mut stack) {
                return Some(c);
            }
        }
    }
    None
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn imports_point_down_the_layers_of_the_architecture_page() {
    let page = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let bad = violations(&page, &root().join("src"));
    assert!(
        bad.is_empty(),
        "the layering does not hold:\n{}",
        bad.join("\n")
    );
}

/// The checker finds what it is for: an upward import and a cycle planted in a copy of the crate.
#[test]
fn the_layer_check_catches_an_upward_import_and_a_cycle() {
    let page = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("rotadam-house-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join("src").join(name), text).unwrap();
    write("lib.rs", "pub mod config; pub mod sweep; pub mod data;");
    write("sweep.rs", "use crate::config::RunConfig;");
    write("config.rs", "use crate::sweep::SweepOptions; // planted\n");
    write("data.rs", "use crate::tensors::read; // fine: same layer\n");
    let bad = violations(&page, &dir.join("src"));
    assert!(
        bad.iter()
            .any(|b| b.contains("config (layer 7) imports sweep (layer 2)")),
        "{bad:?}"
    );
    assert!(bad.iter().any(|b| b.contains("import cycle")), "{bad:?}");
    assert!(!bad.iter().any(|b| b.contains("data")), "{bad:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

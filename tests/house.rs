//! The layering of `docs/architecture.md`, checked against the code: every `crate::` path in `src/`
//! (outside comments and strings; each item of a `crate::{…}` group) and every `super::` path that leaves
//! its top-level module is an import from one top-level module to another; it must not point to a higher
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

/// The module path of a file under src/ (`src/run/trainer.rs` → [run, trainer], `src/run/mod.rs` → [run]);
/// empty for lib.rs.
fn module_path(src: &Path, file: &Path) -> Vec<String> {
    let rel = file.strip_prefix(src).unwrap().with_extension("");
    let mut path: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().to_string())
        .collect();
    if matches!(path.last().map(String::as_str), Some("mod" | "lib")) {
        path.pop();
    }
    path
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

/// A token of Rust source: an identifier (with `$crate` as `crate`) or one punctuation character (`::`
/// as one token); comments, strings and character literals are dropped. Each with its line.
fn tokens(text: &str) -> Vec<(String, usize)> {
    let c: Vec<char> = text.chars().collect();
    let (mut i, mut line, mut out) = (0, 1, Vec::new());
    // skips to the closing quote of a string whose body starts at i (escapes unless raw, with `hashes`)
    let skip_string = |i: &mut usize, line: &mut usize, raw: bool, hashes: usize| {
        while *i < c.len() {
            match c[*i] {
                '\\' if !raw => {
                    *i += 1;
                    *line += (c.get(*i) == Some(&'\n')) as usize;
                }
                '"' if c[*i + 1..]
                    .iter()
                    .take(hashes)
                    .filter(|&&h| h == '#')
                    .count()
                    == hashes =>
                {
                    *i += 1 + hashes;
                    return;
                }
                '\n' => *line += 1,
                _ => {}
            }
            *i += 1;
        }
    };
    while i < c.len() {
        let ch = c[i];
        let next = c.get(i + 1).copied().unwrap_or(' ');
        if ch == '\n' {
            line += 1;
            i += 1;
        } else if ch == '/' && next == '/' {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && next == '*' {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    line += (c[i] == '\n') as usize;
                    i += 1;
                }
            }
        } else if ch == '"' {
            i += 1;
            skip_string(&mut i, &mut line, false, 0);
        } else if ch == '\'' {
            // a character literal ('x', '\n', '\'', '{'), else a lifetime or label ('a)
            if next == '\\' {
                i += 3;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            let word: String = c[start..i].iter().collect();
            let (hashes, quote) = {
                let h = c[i..].iter().take_while(|&&h| h == '#').count();
                (h, c.get(i + h) == Some(&'"'))
            };
            if quote && matches!(word.as_str(), "r" | "br" | "cr") {
                i += hashes + 1;
                skip_string(&mut i, &mut line, true, hashes);
            } else if quote && matches!(word.as_str(), "b" | "c") && hashes == 0 {
                i += 1;
                skip_string(&mut i, &mut line, false, 0);
            } else {
                out.push((word, line));
            }
        } else if ch == ':' && next == ':' {
            out.push(("::".into(), line));
            i += 2;
        } else if ch.is_whitespace() {
            i += 1;
        } else {
            out.push((ch.to_string(), line));
            i += 1;
        }
    }
    out
}

/// The top-level modules a path from the crate root names, `at` being the token after the root
/// (`crate::`, or enough `super::` to reach it): its first segment, or each item's first segment for a
/// group `{a::X, b::{Y, Z}}`.
fn heads(toks: &[(String, usize)], at: usize) -> Vec<(String, usize)> {
    let mut out = Vec::new();
    match toks.get(at).map(|(t, _)| t.as_str()) {
        Some("{") => {
            let mut depth = 0;
            let mut item_start = true;
            for (t, line) in &toks[at..] {
                match t.as_str() {
                    "{" => {
                        depth += 1;
                        item_start = depth == 1;
                        continue;
                    }
                    "}" => {
                        depth -= 1;
                        if depth == 0 {
                            break;
                        }
                    }
                    "," if depth == 1 => {
                        item_start = true;
                        continue;
                    }
                    w if item_start && depth == 1 && is_ident(w) && w != "self" => {
                        out.push((w.to_string(), *line));
                    }
                    _ => {}
                }
                item_start = false;
            }
        }
        Some(w) if is_ident(w) => out.push((w.to_string(), toks[at].1)),
        _ => {}
    }
    out
}

fn is_ident(w: &str) -> bool {
    w.starts_with(|c: char| c.is_alphabetic() || c == '_')
}

/// Every (from module, to module, file:line) import among top-level modules: `crate::` paths, grouped or
/// not, and `super::` paths resolved from the file's module path (inline `mod x { … }` included).
fn imports(src: &Path) -> Vec<(String, String, String)> {
    let exports = root_exports(src);
    let mut files = Vec::new();
    rust_files(src, &mut files);
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let file_path = module_path(src, &f);
        let Some(from) = file_path.first().cloned() else {
            continue; // lib.rs
        };
        let toks = tokens(&std::fs::read_to_string(&f).unwrap());
        // inline modules: (name, brace depth inside them)
        let mut inline: Vec<(String, usize)> = Vec::new();
        let mut depth = 0;
        for (k, (t, _)) in toks.iter().enumerate() {
            let word = |j: usize| toks.get(j).map(|(t, _)| t.as_str());
            match t.as_str() {
                "{" => {
                    depth += 1;
                    if k >= 2 && word(k - 2) == Some("mod") {
                        inline.push((toks[k - 1].0.clone(), depth));
                    }
                    continue;
                }
                "}" => {
                    if inline.last().is_some_and(|(_, d)| *d == depth) {
                        inline.pop();
                    }
                    depth -= 1;
                    continue;
                }
                _ => {}
            }
            let starts = (t == "crate" || t == "super")
                && word(k + 1) == Some("::")
                && (k == 0 || word(k - 1) != Some("::"));
            if !starts {
                continue;
            }
            let mut module: Vec<String> = file_path.clone();
            module.extend(inline.iter().map(|(n, _)| n.clone()));
            let mut at = k;
            if t == "crate" {
                module.clear();
                at += 2;
            } else {
                while word(at) == Some("super") && word(at + 1) == Some("::") {
                    module.pop();
                    at += 2;
                }
            }
            let targets = match module.first() {
                Some(top) => vec![(top.clone(), toks[k].1)],
                None => heads(&toks, at),
            };
            for (to, line) in targets {
                let to = exports.get(&to).cloned().unwrap_or(to);
                if to != from {
                    out.push((from.clone(), to, format!("{}:{line}", f.display())));
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

/// Grouped imports (each item's first segment is a module, across lines too) and relative `super::`
/// paths (resolved from the file's module path, inline modules included) are imports like any other.
#[test]
fn the_layer_check_sees_grouped_and_relative_imports() {
    let page = std::fs::read_to_string(root().join("docs/architecture.md")).unwrap();
    let dir = std::env::temp_dir().join(format!("rotadam-house-groups-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("src/model")).unwrap();
    std::fs::create_dir_all(dir.join("src/run")).unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.join("src").join(name), text).unwrap();
    write(
        "lib.rs",
        "pub mod plot; pub mod model; pub mod run; pub mod config;",
    );
    // plot (layer 7) → sweep (layer 2), inside a group
    write(
        "plot.rs",
        "use crate::{tensors::read, sweep::report}; // planted\n",
    );
    // model (layer 5) → diagnose (layer 2), in a group spread over lines, nested
    write(
        "model/mod.rs",
        "pub mod hf;\nuse crate::{\n    config::{ModelConfig, Scope},\n    diagnose::{hvp, rows},\n};\n",
    );
    // model (layer 5) → run (layer 3), two levels up from model::hf
    write(
        "model/hf.rs",
        "use super::super::run::train; // planted\nuse super::Gpt2;\n",
    );
    // run → run (its own module), and an inline module's super:: is the file's module
    write(
        "run/trainer.rs",
        "use super::checkpoint;\nmod tests {\n    use super::helper;\n    use super::super::checkpoint::load;\n}\n",
    );
    write(
        "config.rs",
        "pub fn f() -> String { format!(\"{{crate::sweep}} // {}\", 1) }\n",
    );
    let bad = violations(&page, &dir.join("src"));
    for want in [
        "plot (layer 7) imports sweep (layer 2)",
        "model (layer 5) imports diagnose (layer 2)",
        "model (layer 5) imports run (layer 3)",
    ] {
        assert!(bad.iter().any(|b| b.contains(want)), "{want}: {bad:?}");
    }
    assert!(bad.iter().any(|b| b.contains("hf.rs:1")), "{bad:?}");
    // no false imports: not `tensors`/`config` (downward), not `helper`/`checkpoint` (run's own), not
    // what a string says
    assert_eq!(bad.len(), 3, "{bad:?}");
    std::fs::remove_dir_all(&dir).unwrap();
}

//! The kernel sources as the rest of the build sees them: each `kernels/*.cu` flattened (local includes
//! inlined), its `extern "C" __global__` kernels with their parameter lists, and the structs those
//! parameters use.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

/// One kernel file: one op family, one CUDA module.
pub struct Module {
    /// The file stem, e.g. `adamw`.
    pub stem: String,
    /// The flattened source in OUT_DIR.
    pub flat: PathBuf,
    pub kernels: Vec<Kernel>,
}

/// One `extern "C" __global__` function.
pub struct Kernel {
    pub name: String,
    pub params: Vec<Param>,
    /// The parameter list as written (for the generated docs).
    pub signature: String,
}

/// One kernel parameter: a pointer to `base` (`const` when the kernel only reads it) or a value.
pub struct Param {
    pub name: String,
    pub base: String,
    pub pointer: bool,
    /// For a pointer: the pointee is `const` (`const float* p`, `float const* p`); a `const` after the
    /// `*` (`float* const p`) makes only the pointer itself read-only and does not count. For a value:
    /// declared `const` (no effect on the launcher).
    pub is_const: bool,
}

/// A plain struct of scalars passed by value to kernels (`struct AdamCoeffs { float a, b; };`).
pub struct CStruct {
    pub name: String,
    /// (C type, field name), in order.
    pub fields: Vec<(String, String)>,
}

/// Reads every `kernels/*.cu`, writes its flattened source into `flat_dir`, and parses its kernels.
pub fn modules(kdir: &Path, flat_dir: &Path) -> Vec<Module> {
    let mut cus: Vec<PathBuf> = fs::read_dir(kdir)
        .expect("kernels/ directory")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "cu"))
        .collect();
    cus.sort();
    let mut seen = HashSet::new();
    let mut out = Vec::new();
    for cu in &cus {
        let stem = cu.file_stem().unwrap().to_str().unwrap().to_string();
        let flat = flatten(cu, &mut HashSet::new());
        let kernels = kernels(&flat, &format!("kernels/{stem}.cu"));
        assert!(
            !kernels.is_empty(),
            "{}: no `extern \"C\" __global__` kernel found",
            cu.display()
        );
        for k in &kernels {
            assert!(
                seen.insert(k.name.clone()),
                "{}: kernel `{}` is defined in two modules (extern \"C\" names must be unique)",
                cu.display(),
                k.name
            );
        }
        let flat_path = flat_dir.join(format!("{stem}.cu"));
        super::write_if_changed(&flat_path, &flat);
        out.push(Module {
            stem,
            flat: flat_path,
            kernels,
        });
    }
    out
}

/// `path` with its local `#include "..."` lines replaced by the included files (recursively, each once).
pub fn flatten(path: &Path, once: &mut HashSet<PathBuf>) -> String {
    let canon = path
        .canonicalize()
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    if !once.insert(canon.clone()) {
        return String::new();
    }
    let text =
        fs::read_to_string(&canon).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    let dir = canon.parent().unwrap();
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with("#pragma once") {
            continue;
        }
        if let Some(rest) = t.strip_prefix("#include \"") {
            let name = rest
                .split('"')
                .next()
                .unwrap_or_else(|| panic!("{}: malformed include: {line}", path.display()));
            writeln!(out, "// ---- {name} (flattened by build.rs) ----").unwrap();
            out.push_str(&flatten(&dir.join(name), once));
            writeln!(out, "// ---- end of {name} ----").unwrap();
        } else {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

/// The `extern "C" __global__` functions of `src`, in order, with their parameters.
pub fn kernels(src: &str, file: &str) -> Vec<Kernel> {
    let mut out = Vec::new();
    for (pos, _) in src.match_indices("__global__") {
        if !src[..pos].trim_end().ends_with("extern \"C\"") {
            continue;
        }
        let mut rest = src[pos + "__global__".len()..].trim_start();
        rest = rest
            .strip_prefix("void")
            .unwrap_or_else(|| panic!("{file}: a kernel must return void near {}", head(rest)))
            .trim_start();
        if let Some(r) = rest.strip_prefix("__launch_bounds__") {
            rest = r[matching_paren(r, file)..].trim_start();
        }
        let open = rest
            .find('(')
            .unwrap_or_else(|| panic!("{file}: no parameter list near {}", head(rest)));
        let name = rest[..open].trim().to_string();
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "{file}: cannot read the kernel name near {}",
            head(rest)
        );
        let close = open + matching_paren(&rest[open..], file);
        let signature = squash(&rest[open + 1..close - 1]);
        let params = split_params(&signature)
            .iter()
            .map(|p| param(p, &name, file))
            .collect();
        out.push(Kernel {
            name,
            params,
            signature,
        });
    }
    out
}

/// The structs `struct NAME { TYPE a, b; TYPE c; };` of `src` (those of scalar fields only).
pub fn structs(src: &str) -> Vec<CStruct> {
    let mut out = Vec::new();
    let mut at = 0;
    while let Some(i) = src[at..].find("struct ") {
        let start = at + i + "struct ".len();
        at = start;
        let Some(brace) = src[start..].find('{') else {
            break;
        };
        let name = src[start..start + brace].trim();
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let body_start = start + brace + 1;
        let Some(end) = src[body_start..].find("};") else {
            break;
        };
        let body = &src[body_start..body_start + end];
        let mut fields = Vec::new();
        let mut plain = true;
        for decl in body.split(';').map(str::trim).filter(|d| !d.is_empty()) {
            let decl = squash(decl);
            let Some((ty, names)) = decl.split_once(' ') else {
                plain = false;
                break;
            };
            if !matches!(ty, "float" | "int" | "double") || names.contains(['[', '(', '*']) {
                plain = false;
                break;
            }
            for n in names.split(',') {
                fields.push((ty.to_string(), n.trim().to_string()));
            }
        }
        if plain && !fields.is_empty() {
            out.push(CStruct {
                name: name.to_string(),
                fields,
            });
        }
    }
    out
}

/// The index just past the parenthesis that closes the one `s` starts with.
fn matching_paren(s: &str, file: &str) -> usize {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
    }
    panic!("{file}: unbalanced parentheses near {}", head(s))
}

fn split_params(list: &str) -> Vec<String> {
    if list.trim().is_empty() || list.trim() == "void" {
        return Vec::new();
    }
    list.split(',').map(|p| p.trim().to_string()).collect()
}

/// One parameter declaration, e.g. `const unsigned int* __restrict__ index`.
fn param(decl: &str, kernel: &str, file: &str) -> Param {
    let pointer = decl.contains('*');
    // The pointee's qualifiers are those before the first `*` ([`Param::is_const`]).
    let pointee = decl.split('*').next().unwrap_or_default();
    let is_const = pointee.split_whitespace().any(|w| w == "const");
    let spaced = decl.replace('*', " ");
    let mut words: Vec<&str> = spaced
        .split_whitespace()
        .filter(|w| *w != "__restrict__")
        .collect();
    words.retain(|w| *w != "const");
    let name = words
        .pop()
        .unwrap_or_else(|| panic!("{file}: {kernel}: cannot read parameter `{decl}`"));
    assert!(
        !words.is_empty(),
        "{file}: {kernel}: parameter `{decl}` has no type"
    );
    Param {
        name: name.to_string(),
        base: words.join(" "),
        pointer,
        is_const,
    }
}

/// Whitespace runs (newlines included) as one space.
fn squash(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn head(s: &str) -> &str {
    &s[..s.len().min(80)]
}

//! Module dependency rules (DESIGN.md section 3, kernel contract layer): `gpu/` and `cpu/`
//! share layouts, parameters and host steps through `kernel/` only. `gpu/` never names
//! `crate::cpu` or `crate::backend`; `cpu/` never names `crate::gpu` or `crate::backend`;
//! `kernel/` names none of the three, nor wgpu (the CPU-only build compiles it). Checked on
//! the source text, comments included, with grouped imports (`crate::{cpu, ..}`) expanded.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// The top-level modules a source names through `crate::x` or `crate::{x, ..}` (and
/// `super::super::x`, which reaches the crate root from a module's child).
fn crate_modules(src: &str) -> Vec<String> {
    let mut out = Vec::new();
    for prefix in ["crate::", "super::super::"] {
        let mut rest = src;
        while let Some(i) = rest.find(prefix) {
            rest = &rest[i + prefix.len()..];
            if let Some(group) = rest.strip_prefix('{') {
                // Top-level names of the group: depth-0 items before `::`, `,` or `}`.
                let (mut depth, mut item) = (0usize, String::new());
                for c in group.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            out.push(std::mem::take(&mut item));
                        }
                        _ if depth == 0 => item.push(c),
                        _ => {}
                    }
                }
                out.push(item);
            } else {
                out.push(
                    rest.chars()
                        .take_while(|c| c.is_alphanumeric() || *c == '_')
                        .collect(),
                );
            }
        }
    }
    out.iter()
        .map(|s| s.trim().split("::").next().unwrap_or("").trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

fn check(dir: &str, forbidden: &[&str], forbidden_text: &[&str]) -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src").join(dir);
    let mut files = Vec::new();
    rust_files(&root, &mut files);
    assert!(!files.is_empty(), "no sources under src/{dir}");
    let mut bad = Vec::new();
    for f in files {
        let src = std::fs::read_to_string(&f).unwrap();
        for m in crate_modules(&src) {
            if forbidden.contains(&m.as_str()) {
                bad.push(format!("{} names crate::{m}", f.display()));
            }
        }
        for t in forbidden_text {
            if src.contains(t) {
                bad.push(format!("{} mentions {t}", f.display()));
            }
        }
    }
    bad
}

#[test]
fn gpu_never_imports_cpu_or_backend() {
    let bad = check(
        "gpu",
        &["cpu", "backend"],
        &["crate::cpu", "crate::backend"],
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn cpu_never_imports_gpu_or_backend() {
    let bad = check(
        "cpu",
        &["gpu", "backend"],
        &["crate::gpu", "crate::backend"],
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

#[test]
fn kernel_imports_neither_path_nor_backend_nor_wgpu() {
    let bad = check(
        "kernel",
        &["cpu", "gpu", "backend", "methods", "data"],
        &[
            "crate::cpu",
            "crate::gpu",
            "crate::backend",
            "wgpu::",
            "pollster::",
        ],
    );
    assert!(bad.is_empty(), "{}", bad.join("\n"));
}

/// The scanner itself: direct paths, grouped imports, nested groups.
#[test]
fn crate_modules_finds_grouped_imports() {
    let src = "use crate::cpu::x;\nuse crate::{error::Result, gpu::{a, b}};\nfn f() { crate::backend::y() }\nuse super::super::data;";
    let mut got = crate_modules(src);
    got.sort();
    assert_eq!(got, ["backend", "cpu", "data", "error", "gpu"]);
}

/// Every shader has a kernel contract module: its own name, or `radix_sort` for the three
/// radix kernels.
#[test]
fn every_shader_has_a_kernel_module() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/kernel");
    for name in conformal_gpu::shaders::NAMES {
        let module = if name.starts_with("radix_") {
            "radix_sort"
        } else {
            name
        };
        assert!(
            dir.join(format!("{module}.rs")).exists(),
            "shaders/{name}.wgsl has no src/kernel/{module}.rs"
        );
    }
}

//! The module graph check (a test): dependencies between the top-level
//! modules of `src/` run one way. It reads every `crate::NAME` path in the
//! sources (unit-test code excepted: `tests.rs` files and what follows a
//! `#[cfg(test)]` module), and fails on any cycle, on any import of the
//! composition root `app`, and on the transport or the webhook receiver
//! importing the request pipeline.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Files of `dir`, recursively.
fn sources(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src/ is readable").flatten() {
        let p = entry.path();
        if p.is_dir() {
            sources(&p, out);
        } else if p.extension().is_some_and(|e| e == "rs") {
            out.push(p);
        }
    }
}

/// The top-level module a file belongs to (`src/proxy/steps.rs` → `proxy`).
fn top_module(src: &Path, file: &Path) -> Option<String> {
    let rel = file.strip_prefix(src).ok()?;
    let first = rel.components().next()?.as_os_str().to_str()?;
    Some(first.trim_end_matches(".rs").to_string())
}

/// The code of a file without its unit tests.
fn non_test_code(file: &Path) -> String {
    if file.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    let text = std::fs::read_to_string(file).expect("source readable");
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}

/// Every `crate::NAME` in `code`, and `use crate::{a, b::c}` groups.
fn referenced(code: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let ident = |s: &str| -> String {
        s.chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect()
    };
    for (i, _) in code.match_indices("crate::") {
        let rest = &code[i + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let end = group.find('}').unwrap_or(group.len());
            for item in group[..end].split(',') {
                let name = ident(item.trim());
                if !name.is_empty() {
                    out.insert(name);
                }
            }
        } else {
            let name = ident(rest);
            if !name.is_empty() {
                out.insert(name);
            }
        }
    }
    out
}

/// module → the other top-level modules it refers to.
pub(crate) fn graph() -> BTreeMap<String, BTreeSet<String>> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let modules: BTreeSet<String> = files.iter().filter_map(|f| top_module(&src, f)).collect();
    let mut g: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for f in &files {
        let Some(m) = top_module(&src, f) else { continue };
        if m == "lib" || m == "main" || m == "module_graph" {
            continue;
        }
        let deps = g.entry(m.clone()).or_default();
        for d in referenced(&non_test_code(f)) {
            if d != m && modules.contains(&d) {
                deps.insert(d);
            }
        }
    }
    g
}

/// One cycle of `g`, if any (depth-first search).
fn find_cycle(g: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        g: &BTreeMap<String, BTreeSet<String>>,
        node: &str,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|p| p == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in g.get(node).into_iter().flatten() {
            if let Some(c) = visit(g, next, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in g.keys() {
        if let Some(c) = visit(g, node, &mut Vec::new(), &mut done) {
            return Some(c);
        }
    }
    None
}

#[test]
fn top_level_modules_form_no_cycle() {
    let g = graph();
    assert!(g.len() > 10, "the scan found the modules: {g:?}");
    if let Some(cycle) = find_cycle(&g) {
        panic!("module cycle: {}", cycle.join(" -> "));
    }
}

#[test]
fn nothing_imports_the_composition_root() {
    for (m, deps) in graph() {
        assert!(!deps.contains("app"), "{m} imports app, the composition root");
    }
}

#[test]
fn the_transport_and_the_receiver_do_not_import_the_pipeline() {
    let g = graph();
    for m in ["upstream", "webhook", "listener", "sign", "config", "headers"] {
        assert!(
            !g.get(m).is_some_and(|d| d.contains("proxy")),
            "{m} imports proxy: {:?}",
            g.get(m)
        );
    }
}

#[test]
fn the_scan_sees_groups_and_paths() {
    let r = referenced("use crate::{audit::Slot, state};\nlet x = crate::metrics::NO_ROUTE;");
    assert_eq!(r.into_iter().collect::<Vec<_>>(), ["audit", "metrics", "state"]);
    let cyclic: BTreeMap<String, BTreeSet<String>> = [
        ("a".to_string(), BTreeSet::from(["b".to_string()])),
        ("b".to_string(), BTreeSet::from(["a".to_string()])),
    ]
    .into();
    assert!(find_cycle(&cyclic).is_some());
}

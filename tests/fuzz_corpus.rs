//! Replays every seed of every fuzz corpus (`fuzz/corpus/<target>/`) through
//! the same property check the cargo-fuzz target runs, on stable, as part of
//! `cargo test`. A missing or empty corpus directory fails the test.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::Path;

use signgate::fuzzing::TARGETS;

fn replay(target: &str, check: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.expect("corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    let mut failed = Vec::new();
    for path in &files {
        let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        if catch_unwind(AssertUnwindSafe(|| check(&data))).is_err() {
            // Right after the panic message, so each message names its file.
            eprintln!("  ^ {target}: {} failed", path.display());
            failed.push(path.display().to_string());
        }
    }
    assert!(
        failed.is_empty(),
        "{target}: {} of {} corpus files failed (each panic message above names its file):\n{}",
        failed.len(),
        files.len(),
        failed.join("\n")
    );
    eprintln!("{target}: {} corpus files replayed", files.len());
}

#[test]
fn canonical_corpus() {
    replay("canonical", signgate::fuzzing::canonical);
}

#[test]
fn template_corpus() {
    replay("template", signgate::fuzzing::template);
}

#[test]
fn config_corpus() {
    replay("config", signgate::fuzzing::config);
}

#[test]
fn webhook_corpus() {
    replay("webhook", signgate::fuzzing::webhook);
}

/// Every target has its test above, and every corpus directory a target.
#[test]
fn every_corpus_has_a_target() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for entry in std::fs::read_dir(&root).unwrap_or_else(|e| panic!("{}: {e}", root.display())) {
        let name = entry.expect("corpus entry").file_name();
        let name = name.to_string_lossy();
        assert!(TARGETS.contains(&name.as_ref()), "fuzz/corpus/{name} has no target");
    }
    assert_eq!(TARGETS, ["canonical", "template", "config", "webhook"]);
}

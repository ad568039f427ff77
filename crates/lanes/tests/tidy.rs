//! House rules no compiler checks: every Rust file opens with a `//!` line saying what it is for,
//! and every test file opens with two such lines (what it covers and how). Walks `crates/`.

use std::path::{Path, PathBuf};

fn rust_files(dir: &Path, found: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if path.file_name().is_some_and(|name| name == "target") {
                continue;
            }
            rust_files(&path, found);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            found.push(path);
        }
    }
}

#[test]
fn every_file_says_what_it_is_for() {
    let crates = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    rust_files(&crates, &mut files);
    assert!(
        files.len() > 20,
        "found only {} files under {}",
        files.len(),
        crates.display()
    );
    let mut offenders = Vec::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let mut lines = text.lines();
        let is_test_file = file.parent().is_some_and(|dir| dir.ends_with("tests"));
        let wanted = if is_test_file { 2 } else { 1 };
        if !(0..wanted).all(|_| lines.next().is_some_and(|line| line.starts_with("//!"))) {
            offenders.push(file.display().to_string());
        }
    }
    assert!(
        offenders.is_empty(),
        "files missing their opening //! lines: {offenders:#?}"
    );
}

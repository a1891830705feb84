//! Every example config in `deploy/examples/` loads (the same check as `weir validate`, with the
//! certificate and token files it names).

use std::path::Path;

#[test]
fn every_example_config_loads() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot list {}: {e}", dir.display()))
        .map(|entry| entry.expect("a folder entry").path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 4,
        "expected the example configs in {}, found {files:?}",
        dir.display()
    );
    let mut problems = Vec::new();
    for file in &files {
        if let Err(error) = weir_control::reload::load(file) {
            problems.push(format!(
                "{}:\n  {}",
                file.display(),
                error.problems().join("\n  ")
            ));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

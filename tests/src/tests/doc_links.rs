//! Every relative link in README.md, `docs/*.md` and `deploy/README.md` points to a file that
//! exists, and every `#anchor` into a Markdown file to one of its headings (GitHub's slugs) or an
//! explicit `<a id="…">`: the README was split into docs/, and a moved section must not leave a
//! dead link behind.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// GitHub's heading slug: lower case, punctuation other than `-` and `_` dropped, spaces to `-`.
fn slug(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter(|c| c.is_alphanumeric() || matches!(c, '-' | '_' | ' '))
        .map(|c| if c == ' ' { '-' } else { c })
        .collect()
}

fn anchors(markdown: &str) -> BTreeSet<String> {
    let heading = regex::Regex::new(r"(?m)^#+\s+(.*)$").expect("a valid regex");
    let explicit = regex::Regex::new(r#"<a id="([^"]+)""#).expect("a valid regex");
    let mut in_code = false;
    let mut out = BTreeSet::new();
    for line in markdown.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            continue;
        }
        if in_code {
            continue;
        }
        if let Some(m) = heading.captures(line) {
            out.insert(slug(&m[1]));
        }
        for m in explicit.captures_iter(line) {
            out.insert(m[1].to_string());
        }
    }
    out
}

#[test]
fn relative_links_in_the_docs_resolve() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files: Vec<PathBuf> = vec![root.join("README.md"), root.join("deploy/README.md")];
    for entry in std::fs::read_dir(root.join("docs")).expect("docs/ exists") {
        let path = entry.expect("a folder entry").path();
        if path.extension().is_some_and(|e| e == "md") {
            files.push(path);
        }
    }
    files.sort();
    let link = regex::Regex::new(r"\]\(([^)\s]+)\)").expect("a valid regex");
    let (mut checked, mut problems) = (0, Vec::new());
    for file in &files {
        let text = std::fs::read_to_string(file)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", file.display()));
        for m in link.captures_iter(&text) {
            let target = &m[1];
            if target.contains("://") || target.starts_with("mailto:") {
                continue;
            }
            checked += 1;
            let (path, anchor) = target.split_once('#').unwrap_or((target, ""));
            let resolved = if path.is_empty() {
                file.clone()
            } else {
                file.parent().expect("a folder").join(path)
            };
            if !resolved.exists() {
                problems.push(format!("{}: {target}: no such file", file.display()));
                continue;
            }
            if !anchor.is_empty() && resolved.extension().is_some_and(|e| e == "md") {
                let text = std::fs::read_to_string(&resolved).expect("a readable file");
                if !anchors(&text).contains(anchor) {
                    problems.push(format!("{}: {target}: no such heading", file.display()));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
    assert!(
        checked > 50,
        "only {checked} links found: is the pattern right?"
    );
    eprintln!(
        "{checked} relative links in {} Markdown files resolve",
        files.len()
    );
}

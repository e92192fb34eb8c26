//! docs/DESIGN.md's layout section matches the tree: every path it names exists, and
//! every module under src/ is named there (itself or through its folder).

use std::path::Path;

fn layout() -> Vec<String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let design = std::fs::read_to_string(root.join("docs/DESIGN.md")).unwrap();
    let section = design
        .split("## Layout")
        .nth(1)
        .expect("DESIGN.md has a Layout section");
    let block = section
        .split("```")
        .nth(1)
        .expect("the Layout section has a code block");
    block
        .lines()
        // A named path starts its line; continuation lines are indented.
        .filter(|l| !l.starts_with(' ') && !l.trim().is_empty())
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .collect()
}

#[test]
fn every_path_the_layout_names_exists() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths = layout();
    assert!(paths.len() > 20, "{paths:?}");
    for p in &paths {
        let full = root.join(p);
        assert!(
            full.exists(),
            "docs/DESIGN.md names {p}, which does not exist"
        );
        assert_eq!(
            p.ends_with('/'),
            full.is_dir(),
            "{p}: folders end with / in the layout, files do not"
        );
    }
}

#[test]
fn every_module_under_src_is_named_in_the_layout() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let paths = layout();
    let mut unnamed = Vec::new();
    let mut stack = vec![root.join("src")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
                continue;
            }
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let named = paths
                .iter()
                .any(|p| rel == *p || (p.ends_with('/') && rel.starts_with(p.as_str())));
            if !named {
                unnamed.push(rel);
            }
        }
    }
    unnamed.sort();
    assert!(
        unnamed.is_empty(),
        "docs/DESIGN.md's layout does not name: {unnamed:?}"
    );
}

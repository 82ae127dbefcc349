//! Modules depend one way, in the order of a webhook's path and of startup: each top-level
//! module of `src/` may use (through `crate::` paths) only the modules listed before it.
//! A cycle, or a module reaching up, fails here.

use std::collections::BTreeMap;
use std::path::Path;

/// Bottom to top.
const LAYERS: &[&str] = &[
    "locks",
    "conditions",
    "config",
    "telemetry",
    "omnichat",
    // The seam's vocabulary (a `Record`, a `Refused`) is what events are made into, so it sits
    // below them; the seam itself knows nothing of events.
    "publish",
    "event",
    "redrive",
    "spool",
    "backend",
    "ops",
    "http",
    "shutdown",
    "startup",
    "drain",
    "cli",
];

/// The `crate::<module>` paths in a file's code, tests and comments aside.
fn uses(source: &str) -> Vec<String> {
    let code = source.split("#[cfg(test)]").next().unwrap_or_default();
    let mut found = Vec::new();
    for line in code.lines() {
        let line = line.split("//").next().unwrap_or_default();
        for (at, _) in line.match_indices("crate::") {
            let name: String = line[at + 7..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            found.push(name);
        }
    }
    found
}

fn sources(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("src").flatten() {
        let path = entry.path();
        if path.is_dir() {
            sources(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    sources(&src, &mut files);
    let mut reaching_up: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in files {
        let relative = file.strip_prefix(&src).expect("under src");
        let top = relative
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|name| name.trim_end_matches(".rs").to_owned())
            .expect("a name");
        if top == "lib" || top == "main" || relative.ends_with("tests.rs") {
            continue;
        }
        let layer = LAYERS
            .iter()
            .position(|l| *l == top)
            .unwrap_or_else(|| panic!("src/{top} is in no layer: add it to LAYERS"));
        let source = std::fs::read_to_string(&file).expect("readable");
        for used in uses(&source) {
            let below = LAYERS.iter().position(|l| *l == used);
            if used != top && below.is_none_or(|b| b > layer) {
                reaching_up
                    .entry(format!("{}", relative.display()))
                    .or_default()
                    .push(used);
            }
        }
    }
    assert!(
        reaching_up.is_empty(),
        "modules that use one above them (order: {LAYERS:?}): {reaching_up:?}"
    );
}

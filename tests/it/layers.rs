//! The code's layers stay acyclic: the config building blocks (`settings`) stand on nothing of
//! callsync's config, sources or HTTP client; `http` stands on `settings` alone; no source
//! reaches up into `config`. A `use` that breaks this fails here, naming the file and line.

use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir` (or `dir` itself when it is a file).
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    if dir.is_file() {
        return vec![dir.to_path_buf()];
    }
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).expect("read src dir") {
        let path = entry.expect("dir entry").path();
        if path.is_dir() {
            out.extend(rust_files(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out
}

/// The lines under `part` (a folder or file of `src/`) that name one of `forbidden`.
fn reaches(part: &str, forbidden: &[&str]) -> Vec<String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let root = src.join(part);
    assert!(root.exists(), "{} does not exist", root.display());
    let mut found = Vec::new();
    for file in rust_files(&root) {
        let text = std::fs::read_to_string(&file).expect("read source");
        for (n, line) in text.lines().enumerate() {
            let code = line.split("//").next().unwrap_or_default();
            for module in forbidden {
                if code.contains(&format!("crate::{module}::"))
                    || code.contains(&format!("crate::{module};"))
                    || code.contains(&format!("crate::{module}{{"))
                {
                    found.push(format!(
                        "{}:{}: {}",
                        file.strip_prefix(&src).unwrap_or(&file).display(),
                        n + 1,
                        line.trim()
                    ));
                }
            }
        }
    }
    found
}

#[test]
fn config_building_blocks_stand_below_config_sources_and_http() {
    let found = reaches("settings", &["config", "sources", "http"]);
    assert!(
        found.is_empty(),
        "settings reaches up:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_http_client_stands_on_settings_alone() {
    let found = reaches("http.rs", &["config", "sources"]);
    assert!(found.is_empty(), "http reaches up:\n{}", found.join("\n"));
}

#[test]
fn no_source_reaches_up_into_config() {
    let found = reaches("sources", &["config"]);
    assert!(
        found.is_empty(),
        "sources reach config:\n{}",
        found.join("\n")
    );
}

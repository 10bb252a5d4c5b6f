//! The README and docs/ cannot drift from the code: every link and anchor they use
//! resolves, every repository path they name exists, every flag they give a labmq program
//! is in that program's `--help`, and every config key and `LABMQ_*` variable they name is
//! one the programs read.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;

const PROGRAMS: [(&str, &str); 5] = [
    ("labmq-server", env!("CARGO_BIN_EXE_labmq-server")),
    ("labmq-consumer", env!("CARGO_BIN_EXE_labmq-consumer")),
    ("labmq-web", env!("CARGO_BIN_EXE_labmq-web")),
    ("labmq-produce", env!("CARGO_BIN_EXE_labmq-produce")),
    ("labmq-call", env!("CARGO_BIN_EXE_labmq-call")),
];

/// Top-level folders whose paths the docs may name.
const REPO_DIRS: [&str; 9] = [
    "src/",
    "tests/",
    "packaging/",
    "docs/",
    "systemd/",
    "examples/",
    "proto/",
    ".ci/",
    "target/",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// README.md and every Markdown file under docs/, as (path relative to the root, text).
fn documents() -> Vec<(String, String)> {
    let mut files = vec!["README.md".to_owned()];
    let mut stack = vec![root().join("docs")];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read docs/") {
            let path = entry.expect("docs entry").path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "md") {
                let relative = path.strip_prefix(root()).expect("under the root");
                files.push(relative.to_string_lossy().into_owned());
            }
        }
    }
    files
        .into_iter()
        .map(|file| {
            let text = std::fs::read_to_string(root().join(&file))
                .unwrap_or_else(|e| panic!("read {file}: {e}"));
            (file, text)
        })
        .collect()
}

/// GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens.
fn anchor(heading: &str) -> String {
    heading
        .trim()
        .to_lowercase()
        .chars()
        .filter_map(|c| match c {
            ' ' => Some('-'),
            c if c.is_alphanumeric() || c == '-' || c == '_' => Some(c),
            _ => None,
        })
        .collect()
}

fn anchors(text: &str) -> BTreeSet<String> {
    let mut in_code = false;
    let mut found = BTreeSet::new();
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
        } else if !in_code && line.starts_with('#') {
            found.insert(anchor(line.trim_start_matches('#')));
        }
    }
    found
}

/// The Markdown link targets of `text`: `[label](target)`.
fn links(text: &str) -> Vec<String> {
    let mut targets = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("](") {
        rest = &rest[start + 2..];
        if let Some(end) = rest.find(')') {
            targets.push(rest[..end].to_owned());
        }
    }
    targets
}

/// Inline code spans and the lines of fenced code blocks, except the blocks that copy a
/// capture (`<!-- capture: … -->`): those record what a past run printed, e.g. a log
/// record's `CODE_FILE`, and `embedded_copies_match_their_files` keeps them honest.
fn code_spans(text: &str) -> Vec<String> {
    let mut spans = Vec::new();
    let mut in_code = false;
    let mut in_capture = false;
    let mut after_capture_marker = false;
    for line in text.lines() {
        if line.trim_start().starts_with("```") {
            in_code = !in_code;
            in_capture = in_code && after_capture_marker;
            after_capture_marker = false;
            continue;
        }
        after_capture_marker = line.starts_with("<!-- capture: ");
        if in_capture {
            continue;
        }
        if in_code {
            spans.push(line.to_owned());
            continue;
        }
        let mut parts = line.split('`');
        parts.next();
        while let Some(code) = parts.next() {
            spans.push(code.to_owned());
            parts.next();
        }
    }
    spans
}

fn help(program: &str) -> String {
    let output = Command::new(program)
        .arg("--help")
        .output()
        .unwrap_or_else(|e| panic!("run {program} --help: {e}"));
    assert!(output.status.success(), "{program} --help failed");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The config keys of each program, from its config type's defaults.
fn config_keys() -> BTreeMap<&'static str, BTreeSet<String>> {
    fn keys(value: serde_json::Value) -> BTreeSet<String> {
        value
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default()
    }
    BTreeMap::from([
        (
            "SERVER",
            keys(serde_json::to_value(labmq::server::ServerConfig::default()).expect("json")),
        ),
        (
            "CONSUMER",
            keys(serde_json::to_value(labmq::consumer::ConsumerConfig::default()).expect("json")),
        ),
        (
            "WEB",
            keys(serde_json::to_value(labmq::web::WebConfig::default()).expect("json")),
        ),
        (
            "PRODUCE",
            keys(
                serde_json::to_value(labmq::cli::produce::ProduceConfig::default()).expect("json"),
            ),
        ),
    ])
}

#[test]
fn links_and_anchors_resolve() {
    let documents = documents();
    let mut broken = Vec::new();
    for (file, text) in &documents {
        let dir = Path::new(file).parent().unwrap_or(Path::new(""));
        for target in links(text) {
            if target.starts_with("http://") || target.starts_with("https://") {
                continue;
            }
            let (path, fragment) = match target.split_once('#') {
                Some((path, fragment)) => (path, Some(fragment)),
                None => (target.as_str(), None),
            };
            let linked_text = if path.is_empty() {
                Some(text.clone())
            } else {
                let resolved = root().join(dir).join(path);
                if !resolved.exists() {
                    broken.push(format!("{file}: link to missing {target}"));
                    continue;
                }
                std::fs::read_to_string(&resolved).ok()
            };
            if let (Some(fragment), Some(linked)) = (fragment, linked_text)
                && !anchors(&linked).contains(fragment)
            {
                broken.push(format!("{file}: link to missing anchor {target}"));
            }
        }
    }
    assert!(broken.is_empty(), "broken links:\n{}", broken.join("\n"));
}

#[test]
fn repository_paths_exist() {
    let mut missing = BTreeSet::new();
    for (file, text) in documents() {
        for span in code_spans(&text) {
            for word in span.split(|c: char| c.is_whitespace() || "\"'(),;=<>|".contains(c)) {
                // A compose volume (`./src:/dest:ro`) names its source before the colon.
                let word = word.split(':').next().unwrap_or(word).trim_end_matches('.');
                let path = word.strip_prefix("./").unwrap_or(word);
                let names_repo_file = REPO_DIRS.iter().any(|dir| path.starts_with(dir))
                    || [
                        "demo",
                        "bench",
                        "docker-compose.yml",
                        "docker-compose.cluster.yml",
                        "Cargo.toml",
                        ".env.example",
                    ]
                    .contains(&path);
                // Globs and placeholders (target/debian/labmq-*_*.deb, src/<x>) are patterns.
                if !names_repo_file || path.contains(['*', '<', '{', '$']) {
                    continue;
                }
                // Build outputs exist only after a build; their folder must be one we make.
                if path.starts_with("target/") {
                    continue;
                }
                if !root().join(path).exists() {
                    missing.insert(format!("{file}: {path}"));
                }
            }
        }
    }
    assert!(
        missing.is_empty(),
        "paths named in the docs that do not exist:\n{}",
        missing.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn flags_given_to_labmq_programs_exist() {
    let helps: BTreeMap<&str, String> = PROGRAMS
        .iter()
        .map(|(name, path)| (*name, help(path)))
        .collect();
    let mut unknown = BTreeSet::new();
    for (file, text) in documents() {
        for span in code_spans(&text) {
            // A command line: the flags after a program's name, up to the next command.
            for command in span.split(['|', ';']).flat_map(|c| c.split("&&")) {
                let words: Vec<&str> = command.split_whitespace().collect();
                let Some(at) = words.iter().position(|w| helps.contains_key(w)) else {
                    continue;
                };
                let program = words[at];
                for word in &words[at + 1..] {
                    let Some(flag) = word.strip_prefix("--") else {
                        continue;
                    };
                    let flag = flag.split(['=', ')', ',', '`']).next().unwrap_or_default();
                    if flag.is_empty() || !flag.chars().all(|c| c.is_ascii_lowercase() || c == '-')
                    {
                        continue;
                    }
                    if !helps[program].contains(&format!("--{flag}")) {
                        unknown.insert(format!("{file}: {program} --{flag}"));
                    }
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "flags the docs give that the programs do not have:\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

#[test]
fn config_keys_and_environment_variables_exist() {
    let keys = config_keys();
    let every_key: BTreeSet<&String> = keys.values().flatten().collect();
    // Variables that are not `LABMQ_<PROGRAM>_<KEY>`: each must be read somewhere.
    let sources: String = ["src", "tests", "packaging", "systemd", "examples", ".ci"]
        .iter()
        .flat_map(|dir| walk(&root().join(dir)))
        .chain(
            [
                "demo",
                "bench",
                "docker-compose.yml",
                "docker-compose.cluster.yml",
                ".env.example",
            ]
            .iter()
            .map(|f| root().join(f)),
        )
        .filter_map(|path| std::fs::read_to_string(path).ok())
        .collect();
    let mut unknown = BTreeSet::new();
    for (file, text) in documents() {
        for span in code_spans(&text) {
            // `key = value` and `key` in a config table.
            if let Some((key, _)) = span.split_once(" = ")
                && is_key(key.trim_start_matches("# "))
                && !every_key.contains(&key.trim_start_matches("# ").to_owned())
            {
                unknown.insert(format!("{file}: key {key}"));
            }
            for word in span.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                let Some(rest) = word.strip_prefix("LABMQ_") else {
                    continue;
                };
                let program_key = keys.iter().find_map(|(program, program_keys)| {
                    rest.strip_prefix(program)
                        .and_then(|r| r.strip_prefix('_'))
                        .map(|key| (program_keys, key.to_lowercase()))
                });
                let known = match program_key {
                    Some((program_keys, key)) if !key.is_empty() => program_keys.contains(&key),
                    _ => rest.is_empty() || sources.contains(word),
                };
                if !known {
                    unknown.insert(format!("{file}: {word}"));
                }
            }
        }
    }
    assert!(
        unknown.is_empty(),
        "config keys or variables the programs do not read:\n{}",
        unknown.into_iter().collect::<Vec<_>>().join("\n")
    );
}

fn is_key(word: &str) -> bool {
    word.contains('_')
        && word
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return files;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// Every `<!-- capture: PATH -->` / `<!-- include: PATH -->` block is the file it names
/// (`docs/embed` copies them; `docs/capture` runs it).
#[test]
fn embedded_copies_match_their_files() {
    let mut stale = Vec::new();
    for (file, text) in documents() {
        let lines: Vec<&str> = text.lines().collect();
        for (at, line) in lines.iter().enumerate() {
            let Some(path) = line
                .strip_prefix("<!-- capture: ")
                .or_else(|| line.strip_prefix("<!-- include: "))
                .and_then(|rest| rest.strip_suffix(" -->"))
            else {
                continue;
            };
            let Some(block) = lines.get(at + 2..).map(|rest| {
                rest.iter()
                    .take_while(|l| **l != "```")
                    .copied()
                    .collect::<Vec<_>>()
                    .join("\n")
            }) else {
                stale.push(format!("{file}: {line} has no code block"));
                continue;
            };
            match std::fs::read_to_string(root().join(path)) {
                Ok(content) if content.trim_end_matches('\n') == block => {}
                Ok(_) => stale.push(format!(
                    "{file}: the copy of {path} is stale (run docs/embed)"
                )),
                Err(e) => stale.push(format!("{file}: {path}: {e}")),
            }
        }
    }
    assert!(stale.is_empty(), "{}", stale.join("\n"));
}

/// Scripts that cite a README section (`README "Heading"`) cite one that exists.
#[test]
fn scripts_cite_existing_readme_sections() {
    let readme = std::fs::read_to_string(root().join("README.md")).expect("README.md");
    let headings = anchors(&readme);
    let scripts = ["demo", "bench", "tests/run", ".ci/run", "docs/capture"]
        .iter()
        .map(|f| root().join(f))
        .chain(walk(&root().join("packaging")));
    let mut missing = Vec::new();
    for path in scripts {
        let Ok(text) = std::fs::read_to_string(&path) else {
            continue;
        };
        let mut rest = text.as_str();
        while let Some(at) = rest.find("README \"") {
            rest = &rest[at + 8..];
            let Some(end) = rest.find('"') else { break };
            if !headings.contains(&anchor(&rest[..end])) {
                missing.push(format!("{}: README \"{}\"", path.display(), &rest[..end]));
            }
        }
    }
    assert!(
        missing.is_empty(),
        "sections cited but not in the README:\n{}",
        missing.join("\n")
    );
}

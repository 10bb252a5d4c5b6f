//! The packaging scripts refuse a bad argument or environment variable before they build,
//! download or install anything: exit status 2 (or 1 for check-reproducible) and a message
//! naming the value and what would have been accepted. The scripts' real work is tested by
//! `tests/run` (packaging/e2e, check-arm64, check-repo, check-reproducible).

use std::path::PathBuf;
use std::process::{Command, Output};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `packaging/SCRIPT ARGS` with the variables set and everything else of the
/// environment kept.
fn run(script: &str, args: &[&str], vars: &[(&str, &str)]) -> Output {
    let mut command = Command::new(root().join("packaging").join(script));
    command.args(args);
    for (name, value) in vars {
        command.env(name, value);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("cannot run packaging/{script}: {e}"))
}

fn refused(script: &str, args: &[&str], vars: &[(&str, &str)], status: i32, words: &[&str]) {
    let output = run(script, args, vars);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.code(),
        Some(status),
        "packaging/{script} {args:?} {vars:?}: status {:?}, stderr:\n{stderr}",
        output.status
    );
    for word in words {
        assert!(
            stderr.contains(word),
            "packaging/{script} {args:?} {vars:?}: stderr lacks {word:?}:\n{stderr}"
        );
    }
}

#[test]
fn unknown_arguments_print_the_usage() {
    for script in ["build-debs", "build-repo", "check-arm64"] {
        refused(
            script,
            &["--bogus"],
            &[],
            2,
            &[&format!("usage: packaging/{script}")],
        );
    }
    refused("e2e", &["solaris"], &[], 2, &["unknown SYSTEM solaris"]);
}

#[test]
fn build_debs_names_an_unknown_architecture_or_package() {
    refused(
        "build-debs",
        &[],
        &[("LABMQ_ARCHES", "amd64 sparc")],
        2,
        &["LABMQ_ARCHES", "'sparc'", "amd64", "arm64"],
    );
    refused(
        "build-debs",
        &[],
        &[("LABMQ_ARCHES", "  ")],
        2,
        &["LABMQ_ARCHES is empty"],
    );
    refused(
        "build-debs",
        &[],
        &[("LABMQ_PACKAGES", "server serverr")],
        2,
        &[
            "LABMQ_PACKAGES",
            "'serverr'",
            "server",
            "consumer",
            "web",
            "tools",
        ],
    );
}

#[test]
fn build_debs_prints_the_release_rustflags() {
    let output = run("build-debs", &["--print-rustflags"], &[("RUSTFLAGS", "")]);
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success(), "{output:?}");
    let root = root();
    for flag in [
        format!("--remap-path-prefix={}=/build/labmq", root.display()),
        "-C strip=symbols".to_owned(),
    ] {
        assert!(stdout.contains(&flag), "{flag:?} missing from {stdout:?}");
    }
}

#[test]
fn check_reproducible_names_an_unknown_architecture() {
    refused(
        "check-reproducible",
        &[],
        &[("LABMQ_ARCHES", "sparc")],
        1,
        &["unknown architecture sparc"],
    );
}

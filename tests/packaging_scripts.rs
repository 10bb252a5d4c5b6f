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

/// packaging/e2e knows the systems of its table (packaging/e2e-systems.sh), `all` and
/// `matrix`, and names them when it refuses one; a bad one among good ones is refused
/// before anything runs.
#[test]
fn e2e_names_the_systems_it_knows() {
    let known = [
        "focal", "jammy", "noble", "resolute", "bookworm", "trixie", "all", "matrix", "cluster",
    ];
    refused("e2e", &["solaris"], &[], 2, &known);
    refused(
        "e2e",
        &["focal", "bionic"],
        &[],
        2,
        &["unknown SYSTEM bionic"],
    );
    refused("e2e", &["matrix", "sid"], &[], 2, &["unknown SYSTEM sid"]);
    // bullseye stood in for focal when the Ubuntu archive could not be reached; every
    // system is now a row of the table, and bullseye is not one.
    refused("e2e", &["bullseye"], &[], 2, &["unknown SYSTEM bullseye"]);
    refused("e2e", &[], &[], 2, &["Usage: packaging/e2e SYSTEM"]);
    for parallel in ["0", "two", "-1"] {
        refused(
            "e2e",
            &["all"],
            &[("LABMQ_E2E_PARALLEL", parallel)],
            2,
            &["LABMQ_E2E_PARALLEL"],
        );
    }
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

//! Writes a man page and bash/zsh completions for every labmq binary, from the clap
//! definitions in the library, so the packages document exactly what the binaries parse.
//!
//! Usage: `cargo run --example gen-docs -- OUTDIR`, which writes
//! `OUTDIR/man/<bin>.1`, `OUTDIR/bash/<bin>` and `OUTDIR/zsh/_<bin>` (packaging/build-debs
//! gzips the pages and installs the lot).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Command, CommandFactory};
use clap_complete::Shell;

/// The commented configuration file a daemon's package ships: every key with its default
/// and what it means. The man page carries it whole, so the key reference lives in one
/// place (the file) and is read in two (`man`, `/etc/labmq`).
fn shipped_config(name: &str) -> Option<(&'static str, &'static str)> {
    match name {
        "labmq-server" => Some((
            "/etc/labmq/server.toml",
            include_str!("../packaging/etc/server.toml"),
        )),
        "labmq-consumer" => Some((
            "/etc/labmq/consumer.toml",
            include_str!("../packaging/etc/consumer.toml"),
        )),
        "labmq-web" => Some((
            "/etc/labmq/web.toml",
            include_str!("../packaging/etc/web.toml"),
        )),
        _ => None,
    }
}

/// `text` as a roff no-fill block: backslashes escaped, no line read as a request.
fn roff_verbatim(text: &str) -> String {
    let mut out = String::from(".nf\n");
    for line in text.lines() {
        let line = line.replace('\\', "\\e");
        if line.starts_with(['.', '\'']) {
            out.push_str("\\&");
        }
        out.push_str(&line);
        out.push('\n');
    }
    out.push_str(".fi\n");
    out
}

/// Every binary's command. A new binary adds its `Args` type here.
fn commands() -> Vec<Command> {
    vec![
        labmq::server::ServerArgs::command(),
        labmq::cli::call::CallArgs::command(),
        labmq::consumer::ConsumerArgs::command(),
        labmq::cli::produce::ProduceArgs::command(),
        labmq::web::WebArgs::command(),
    ]
}

fn write(outdir: &Path, mut command: Command) -> std::io::Result<()> {
    let name = command.get_name().to_owned();
    command.build();

    let mut page = Vec::new();
    clap_mangen::Man::new(command.clone())
        .section("1")
        .manual("labmq manual")
        .source(format!("labmq {}", env!("CARGO_PKG_VERSION")))
        .render(&mut page)?;
    if let Some((path, content)) = shipped_config(&name) {
        page.extend_from_slice(
            format!(
                ".SH CONFIGURATION\nEvery key of \\fI{path}\\fR, as the package installs it: \
                 commented out, with its default and its meaning.\n.PP\n{}",
                roff_verbatim(content)
            )
            .as_bytes(),
        );
    }
    std::fs::write(outdir.join("man").join(format!("{name}.1")), page)?;

    // File names as bash-completion and zsh look them up: `<bin>` and `_<bin>`.
    for (shell, path) in [
        (Shell::Bash, outdir.join("bash").join(&name)),
        (Shell::Zsh, outdir.join("zsh").join(format!("_{name}"))),
    ] {
        let mut script = Vec::new();
        clap_complete::generate(shell, &mut command, &name, &mut script);
        std::fs::write(path, script)?;
    }
    println!("gen-docs: {name}: man page, bash and zsh completions");
    Ok(())
}

fn main() -> ExitCode {
    let Some(outdir) = std::env::args_os().nth(1).map(PathBuf::from) else {
        eprintln!("usage: gen-docs OUTDIR");
        return ExitCode::from(2);
    };
    for dir in ["man", "bash", "zsh"] {
        if let Err(e) = std::fs::create_dir_all(outdir.join(dir)) {
            eprintln!(
                "gen-docs: cannot create {}: {e}",
                outdir.join(dir).display()
            );
            return ExitCode::FAILURE;
        }
    }
    for command in commands() {
        let name = command.get_name().to_owned();
        if let Err(e) = write(&outdir, command) {
            eprintln!("gen-docs: {name}: {e}");
            return ExitCode::FAILURE;
        }
    }
    ExitCode::SUCCESS
}

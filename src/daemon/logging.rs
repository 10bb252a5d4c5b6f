//! Logging: structured journald records when stderr is the journal, readable text on
//! stderr otherwise. The level comes from config unless `RUST_LOG` is set, and can be
//! changed at run time (SIGHUP re-reads it).

use std::io::IsTerminal;
use std::os::unix::fs::MetadataExt;
use tracing_subscriber::{
    EnvFilter, Registry, layer::SubscriberExt, reload, util::SubscriberInitExt,
};

#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    #[error("invalid log level {level:?}")]
    Level {
        level: String,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
    #[error("cannot change the log level")]
    Reload(#[from] reload::Error),
    #[error("logging already initialised")]
    AlreadySet,
}

/// Lets a daemon change its log filter after start.
#[derive(Clone)]
pub struct LogControl {
    handle: reload::Handle<EnvFilter, Registry>,
    env_override: bool,
}

impl LogControl {
    /// Applies `level` unless `RUST_LOG` pinned the filter at start.
    pub fn set_level(&self, level: &str) -> Result<(), LoggingError> {
        if self.env_override {
            return Ok(());
        }
        let filter = parse_filter(level)?;
        Ok(self.handle.reload(filter)?)
    }
}

/// The filter of `level`, with lapin's own records off unless `level` names lapin: they
/// repeat what labmq logs itself with its cause (every broker failure), and lapin calls
/// ERROR what is expected (a channel the broker closes after a passive declare of a
/// queue that is gone, a channel closing while its connection closes).
/// `log_level = "info,lapin=debug"` shows them.
fn parse_filter(level: &str) -> Result<EnvFilter, LoggingError> {
    let directives = if level.contains("lapin") {
        level.to_owned()
    } else {
        format!("{level},lapin=off")
    };
    EnvFilter::builder()
        .parse(&directives)
        .map_err(|source| LoggingError::Level {
            level: level.to_owned(),
            source,
        })
}

/// True when systemd connected our stderr to the journal (`JOURNAL_STREAM` names the
/// device and inode of that stream, see systemd.exec(5)).
pub fn stderr_is_journal() -> bool {
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = stream.split_once(':') else {
        return false;
    };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

/// Installs the global subscriber. `level` is the configured level; `RUST_LOG` wins.
pub fn init(level: &str) -> Result<LogControl, LoggingError> {
    let env_filter = std::env::var("RUST_LOG").ok().filter(|v| !v.is_empty());
    let env_override = env_filter.is_some();
    let filter = parse_filter(env_filter.as_deref().unwrap_or(level))?;
    let (filter, handle) = reload::Layer::new(filter);
    let registry = tracing_subscriber::registry().with(filter);

    let journald = if stderr_is_journal() {
        // Plain upper-case field names (TASK_ID=, KIND=), as operators type them in
        // `journalctl TASK_ID=…`; the crate's default prefixes them with F_. None of ours
        // is one of journald's own fields (MESSAGE, PRIORITY, CODE_*, _*).
        tracing_journald::layer()
            .ok()
            .map(|layer| layer.with_field_prefix(None))
    } else {
        None
    };
    let result = match journald {
        Some(journald) => registry.with(journald).try_init(),
        None => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(std::io::stderr)
                    // Colour only on a terminal: escape codes corrupt log files and pipes.
                    .with_ansi(std::io::stderr().is_terminal())
                    .with_target(false),
            )
            .try_init(),
    };
    result.map_err(|_| LoggingError::AlreadySet)?;
    Ok(LogControl {
        handle,
        env_override,
    })
}

/// A quiet stderr logger for command-line tools: warnings and errors only, unless
/// `RUST_LOG` asks for more.
pub fn init_cli() {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn,lapin=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .try_init();
}

/// An error with its causes on one line, `outer: cause: root cause`, for log fields and
/// messages (a `{}` of the outer error alone is often vague).
pub fn error_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their source in their own message; say it once.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lapin_is_off_unless_the_level_names_it() {
        let quiet = parse_filter("info").unwrap().to_string();
        assert!(quiet.contains("lapin=off"), "{quiet}");
        let chatty = parse_filter("info,lapin=debug").unwrap().to_string();
        assert!(!chatty.contains("lapin=off"), "{chatty}");
        assert!(chatty.contains("lapin=debug"), "{chatty}");
    }
}

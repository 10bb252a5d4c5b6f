//! Configuration in layers: built-in defaults < TOML file < `LABMQ_<PROGRAM>_*` environment
//! < command-line flags. Unknown keys are rejected and every error names its key and source.
//!
//! Each program has its own environment prefix (`LABMQ_SERVER_`, `LABMQ_CONSUMER_`, …) so a
//! variable meant for one program can never be read as an unknown key by another. Keys a
//! [`Service`] lists in `RAW_ENV_KEYS` (secrets) are taken from the environment as they are,
//! never parsed as TOML values: a password `12345678` stays a string and never reaches an
//! error message.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use figment::{
    Figment,
    providers::{Env, Format, Serialized, Toml},
    value::{Dict, Value},
};
use serde::Serialize;

use super::service::{ConfigError, Service};

/// For loaders without command-line overrides.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct NoOverrides {}

/// Where the TOML layer comes from: the program's default path, which may be absent, or a
/// path given with `--config`, which must exist.
#[derive(Debug, Clone)]
pub struct ConfigFile {
    pub path: PathBuf,
    pub required: bool,
}

impl ConfigFile {
    pub fn new(explicit: Option<PathBuf>, default_path: &str) -> Self {
        match explicit {
            Some(path) => Self {
                path,
                required: true,
            },
            None => Self {
                path: PathBuf::from(default_path),
                required: false,
            },
        }
    }

    /// The path, with a note when it is absent, for `--check-config` output.
    pub fn describe(&self) -> String {
        if Path::new(&self.path).exists() {
            self.path.display().to_string()
        } else {
            format!(
                "{} (absent; defaults and environment only)",
                self.path.display()
            )
        }
    }
}

/// Loads `S` from all layers; `overrides` holds the command-line flags that were given
/// (fields left `None` must be skipped when serialised).
pub fn load<S: Service>(file: &ConfigFile, overrides: impl Serialize) -> Result<S, ConfigError> {
    let mut figment = Figment::from(Serialized::defaults(S::default()))
        .merge(toml_layer(file)?)
        .merge(
            Env::prefixed(S::ENV_PREFIX)
                .split("__")
                .ignore(S::RAW_ENV_KEYS),
        );
    for key in S::RAW_ENV_KEYS {
        // Matched without regard to case, as figment matches the other variables.
        let wanted = format!("{}{key}", S::ENV_PREFIX);
        let found = std::env::vars_os().find(|(name, _)| {
            name.to_str()
                .is_some_and(|name| name.eq_ignore_ascii_case(&wanted))
        });
        if let Some((name, value)) = found {
            let value = value.into_string().map_err(|_| ConfigError::Invalid {
                key,
                message: format!("{} is not valid UTF-8", name.to_string_lossy()),
            })?;
            figment = figment.merge(Serialized::default(key, value));
        }
    }
    figment = figment.merge(Serialized::defaults(overrides));
    reject_unknown_keys::<S>(&figment)?;
    let config: S = figment.extract()?;
    config.validate()?;
    Ok(config)
}

/// The keys `S` knows are the ones its defaults serialise to; shared settings flattened
/// into a program's config (`#[serde(flatten)]`, where serde's `deny_unknown_fields` does
/// not work) are covered too.
fn reject_unknown_keys<S: Service>(figment: &Figment) -> Result<(), ConfigError> {
    let known: BTreeSet<String> = as_dict(&S::default()).into_keys().collect();
    let present: Dict = figment.extract()?;
    let Some(key) = present.keys().find(|key| !known.contains(*key)) else {
        return Ok(());
    };
    let origin = figment
        .find_metadata(key)
        .map(|metadata| match &metadata.source {
            Some(source) => format!("{} {source}", metadata.name),
            None => metadata.name.to_string(),
        })
        .unwrap_or_else(|| "the configuration".into());
    Err(ConfigError::UnknownKey {
        key: key.clone(),
        origin,
    })
}

fn toml_layer(file: &ConfigFile) -> Result<figment::providers::Data<Toml>, ConfigError> {
    match std::fs::metadata(&file.path) {
        Ok(_) => {
            // Read it ourselves so a permission problem is reported, not skipped silently.
            std::fs::read_to_string(&file.path).map_err(|source| ConfigError::File {
                path: file.path.clone(),
                source,
            })?;
            Ok(Toml::file_exact(&file.path))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !file.required => {
            Ok(Toml::string(""))
        }
        Err(source) => Err(ConfigError::File {
            path: file.path.clone(),
            source,
        }),
    }
}

/// A configuration as a dictionary of its top-level keys.
pub fn as_dict<S: Serialize>(config: &S) -> Dict {
    match Value::serialize(config) {
        Ok(Value::Dict(_, dict)) => dict,
        _ => Dict::new(),
    }
}

/// The top-level keys whose values differ between two configurations, for the reload
/// log line (values are never printed: some are secrets).
pub fn changed_keys(old: &Dict, new: &Dict) -> Vec<String> {
    new.iter()
        .filter(|(key, value)| old.get(*key) != Some(*value))
        .map(|(key, _)| key.clone())
        .collect()
}

#[cfg(test)]
// figment's Jail closures return figment::Error, which is large; fine in tests.
#[allow(clippy::result_large_err)]
pub(crate) mod tests {
    use super::*;
    use crate::daemon::service::{check_log_level, check_positive};
    use figment::Jail;
    use serde::Deserialize;

    /// A small service to test the loader without any program's config.
    #[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
    #[serde(default)]
    struct Toy {
        listen: std::net::SocketAddr,
        count: u64,
        secret: String,
        log_level: String,
    }

    impl Default for Toy {
        fn default() -> Self {
            Self {
                listen: "127.0.0.1:1".parse().unwrap(),
                count: 1,
                secret: String::new(),
                log_level: "info".into(),
            }
        }
    }

    impl Service for Toy {
        const NAME: &'static str = "labmq-toy";
        const CONFIG_PATH: &'static str = "/etc/labmq/toy.toml";
        const ENV_PREFIX: &'static str = "LABMQ_TOY_";
        const RAW_ENV_KEYS: &'static [&'static str] = &["secret"];
        fn validate(&self) -> Result<(), ConfigError> {
            check_log_level(&self.log_level)?;
            check_positive("count", self.count)
        }
        fn log_level(&self) -> &str {
            &self.log_level
        }
    }

    fn load_toy(path: &str) -> Result<Toy, ConfigError> {
        load::<Toy>(
            &ConfigFile {
                path: path.into(),
                required: false,
            },
            NoOverrides {},
        )
    }

    #[test]
    fn unknown_keys_are_named_with_their_source() {
        Jail::expect_with(|jail| {
            jail.create_file("toy.toml", "cont = 3\n")?;
            let err = load_toy("toy.toml").unwrap_err().to_string();
            assert!(err.contains("cont") && err.contains("toy.toml"), "{err}");
            jail.create_file("toy.toml", "")?;
            jail.set_env("LABMQ_TOY_BOGUS", "1");
            let err = load_toy("toy.toml").unwrap_err().to_string();
            assert!(err.contains("bogus") && err.contains("LABMQ_TOY_"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn raw_env_keys_are_never_parsed() {
        Jail::expect_with(|jail| {
            for raw in ["12345678", "true", " spaced \"quoted\" ", "[1, 2]"] {
                jail.set_env("LABMQ_TOY_SECRET", raw);
                assert_eq!(load_toy("absent.toml").unwrap().secret, raw);
            }
            Ok(())
        });
    }

    #[test]
    fn changed_keys_name_only_what_changed() {
        let old = Toy::default();
        let new = Toy {
            count: 2,
            secret: "x".into(),
            ..Toy::default()
        };
        let (old, new) = (as_dict(&old), as_dict(&new));
        assert_eq!(changed_keys(&old, &new), vec!["count", "secret"]);
        assert!(changed_keys(&old, &old).is_empty());
    }

    /// The shipped /etc files list every key, commented out, with its real default.
    pub(crate) fn shipped_file_matches_defaults<S: Service + std::fmt::Debug>(shipped: &str) {
        let uncommented: String = shipped
            .lines()
            .filter_map(|line| line.strip_prefix("# "))
            .filter(|line| {
                line.split_once(" = ")
                    .is_some_and(|(key, _)| key.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
            })
            .map(|line| format!("{line}\n"))
            .collect();
        let from_file: S = Figment::from(Toml::string(&uncommented))
            .extract()
            .unwrap_or_else(|e| panic!("{e}\n{uncommented}"));
        let as_json = |config: &S| serde_json::to_value(config).unwrap();
        assert_eq!(as_json(&from_file), as_json(&S::default()));
        let keys = serde_json::to_value(S::default()).unwrap();
        for key in keys.as_object().unwrap().keys() {
            assert!(
                uncommented.contains(&format!("{key} = ")),
                "key {key} missing from the shipped file"
            );
        }
    }
}

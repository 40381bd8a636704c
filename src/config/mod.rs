//! Configuration: `gateway.toml` + `SIGNGATE__SECTION__KEY` overrides, parsed
//! into typed structs and validated once. `raw.rs` mirrors the file, `load.rs`
//! reads it (collecting unknown keys and type errors per section), and
//! `validate.rs` turns it into [`Config`], collecting every semantic error.

mod bypass;
mod error;
mod load;
mod raw;
mod types;
mod validate;

use std::path::Path;

pub use error::{ConfigError, ConfigErrors};
pub use load::{ENV_PREFIX, ENV_SEPARATOR};
pub use types::*;
pub use validate::parse_cidr;

impl Config {
    /// Load `path` with the process environment's overrides and validate it.
    pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
        finish(load::read_file(path)?, path.parent())
    }

    /// Load `path` with an explicit set of environment variables (names with
    /// the `SIGNGATE__` prefix), ignoring the process environment.
    pub fn load_with_env<I, K, V>(path: &Path, vars: I) -> Result<Config, ConfigErrors>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let map = vars.into_iter().map(|(k, v)| (k.into(), v.into())).collect();
        finish(load::read_file_with_env(path, Some(map))?, path.parent())
    }

    /// Parse and validate a TOML string; relative paths resolve against the
    /// current directory. No environment overrides are applied.
    pub fn from_toml_str(toml: &str) -> Result<Config, ConfigErrors> {
        finish(load::read_str(toml)?, None)
    }
}

/// Validate what was read even when reading found errors, so one run reports
/// everything; errors caused only by a key already reported (a wrong type is
/// read as absent) are left out.
fn finish((raw, read_errors): load::Loaded, base: Option<&Path>) -> Result<Config, ConfigErrors> {
    match validate::validate(raw, base) {
        Ok(config) if read_errors.is_empty() => Ok(config),
        Ok(_) => Err(ConfigErrors(read_errors)),
        Err(ConfigErrors(more)) => {
            let mut all = read_errors;
            let reported: Vec<String> = all
                .iter()
                .filter(|e| matches!(e, ConfigError::WrongType { .. }))
                .map(|e| e.key().to_string())
                .collect();
            all.extend(more.into_iter().filter(|e| {
                !reported.iter().any(|k| {
                    e.key() == k || e.key().starts_with(&format!("{k}.")) || e.key().starts_with(&format!("{k}["))
                })
            }));
            Err(ConfigErrors(all))
        }
    }
}

#[cfg(test)]
mod tests;

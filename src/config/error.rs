//! Configuration errors: every one names the key, the bad value where there is
//! one, and what is expected. They are collected, never short-circuited, so an
//! operator sees every problem of a file in one run of `signgate check`.

use std::fmt;

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// The file (or an override) could not be read or parsed as TOML at all.
    #[error("{source_name}: {detail}")]
    Unreadable { source_name: String, detail: String },
    /// A key that the schema does not know (typo or wrong section).
    #[error("{key}: unknown key")]
    UnknownKey { key: String },
    /// A value of the wrong TOML type (e.g. a string where a number is expected).
    #[error("{key}: {detail}")]
    WrongType { key: String, detail: String },
    /// A required key is absent.
    #[error("{key}: missing; expected {expected}")]
    Missing { key: String, expected: String },
    /// A file the configuration names cannot be used as it is (missing,
    /// unreadable, not PEM, a key that does not match its certificate, a
    /// directory that cannot be written): found by `preflight`, not by
    /// validation, which never touches the file system.
    #[error("{key}: {path}: {detail}")]
    File { key: String, path: String, detail: String },
    /// A value that has the right type but is not acceptable.
    #[error("{key}: invalid value {value:?}; expected {expected}")]
    Invalid {
        key: String,
        value: String,
        expected: String,
    },
}

impl ConfigError {
    pub fn key(&self) -> &str {
        match self {
            ConfigError::Unreadable { source_name, .. } => source_name,
            ConfigError::UnknownKey { key }
            | ConfigError::WrongType { key, .. }
            | ConfigError::Missing { key, .. }
            | ConfigError::File { key, .. }
            | ConfigError::Invalid { key, .. } => key,
        }
    }

    pub(crate) fn invalid(key: impl Into<String>, value: impl fmt::Display, expected: impl Into<String>) -> Self {
        ConfigError::Invalid {
            key: key.into(),
            value: value.to_string(),
            expected: expected.into(),
        }
    }

    pub(crate) fn file(key: impl Into<String>, path: &std::path::Path, detail: impl fmt::Display) -> Self {
        ConfigError::File {
            key: key.into(),
            path: path.display().to_string(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn missing(key: impl Into<String>, expected: impl Into<String>) -> Self {
        ConfigError::Missing {
            key: key.into(),
            expected: expected.into(),
        }
    }
}

/// All problems found in one configuration, in file order where possible.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.0.len();
        writeln!(f, "{n} configuration error{}:", if n == 1 { "" } else { "s" })?;
        for e in &self.0 {
            writeln!(f, "  - {e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

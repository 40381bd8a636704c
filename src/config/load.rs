//! Reading configuration: the TOML file, then `SIGNGATE__SECTION__KEY`
//! environment overrides, through the `config` crate; then each section is
//! deserialized on its own into the serde mirror (`raw.rs`) so that unknown
//! keys and type errors of *every* section are reported together.

use std::collections::BTreeMap;
use std::path::Path;

use config::{Environment, File, FileFormat, Map, Value};
use serde::de::DeserializeOwned;

use super::error::{ConfigError, ConfigErrors};
use super::raw::RawConfig;

/// Environment prefix; the double underscore keeps Kubernetes' automatic
/// `SIGNGATE_SERVICE_PORT`-style variables from being read as configuration.
pub const ENV_PREFIX: &str = "SIGNGATE";
pub const ENV_SEPARATOR: &str = "__";

/// Keys whose environment override is a comma-separated list.
const ENV_LIST_KEYS: &[&str] = &["access.allow"];

fn environment(vars: Option<Map<String, String>>) -> Environment {
    let mut env = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(",")
        .source(vars);
    for key in ENV_LIST_KEYS {
        env = env.with_list_parse_key(key);
    }
    env
}

/// Read `path` plus the process environment's `SIGNGATE__*` overrides.
pub fn read_file(path: &Path) -> Result<RawConfig, ConfigErrors> {
    read_file_with_env(path, None)
}

/// Like [`read_file`] but with an explicit environment (tests).
pub fn read_file_with_env(
    path: &Path,
    vars: Option<Map<String, String>>,
) -> Result<RawConfig, ConfigErrors> {
    if !path.is_file() {
        return Err(ConfigErrors(vec![ConfigError::Unreadable {
            source_name: path.display().to_string(),
            detail: "no such file (give another one with --config)".into(),
        }]));
    }
    let builder = config::Config::builder()
        .add_source(File::from(path).format(FileFormat::Toml).required(true))
        .add_source(environment(vars));
    from_builder(builder, &path.display().to_string())
}

/// Parse a TOML string, without environment overrides (tests, `demo`).
pub fn read_str(toml: &str) -> Result<RawConfig, ConfigErrors> {
    let builder = config::Config::builder().add_source(File::from_str(toml, FileFormat::Toml));
    from_builder(builder, "<inline config>")
}

fn from_builder(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    source_name: &str,
) -> Result<RawConfig, ConfigErrors> {
    let unreadable = |e: config::ConfigError| {
        ConfigErrors(vec![ConfigError::Unreadable {
            source_name: source_name.to_string(),
            detail: e.to_string(),
        }])
    };
    let root: Map<String, Value> = builder
        .build()
        .map_err(unreadable)?
        .try_deserialize()
        .map_err(unreadable)?;
    let mut errors = Vec::new();
    let mut raw = RawConfig::default();
    for (key, value) in root {
        match key.as_str() {
            "listener" => section(&key, value, &mut errors).map(|v| raw.listener = v),
            "admin" => section(&key, value, &mut errors).map(|v| raw.admin = v),
            "access" => section(&key, value, &mut errors).map(|v| raw.access = Some(v)),
            "limits" => section(&key, value, &mut errors).map(|v| raw.limits = v),
            "egress" => section(&key, value, &mut errors).map(|v| raw.egress = v),
            "audit" => section(&key, value, &mut errors).map(|v| raw.audit = v),
            "state" => section(&key, value, &mut errors).map(|v| raw.state = v),
            "credentials" => named_tables(&key, value, &mut errors).map(|v| raw.credentials = v),
            "scheme" => named_tables(&key, value, &mut errors).map(|v| raw.schemes = v),
            "route" => array_of_tables(&key, value, &mut errors).map(|v| raw.routes = v),
            "webhook" => array_of_tables(&key, value, &mut errors).map(|v| raw.webhooks = v),
            _ => {
                errors.push(ConfigError::UnknownKey { key });
                None
            }
        };
    }
    if errors.is_empty() {
        Ok(raw)
    } else {
        Err(ConfigErrors(errors))
    }
}

/// Deserialize one table, recording every unknown key and the first type error
/// (with its full path) instead of stopping the whole load.
fn section<T: DeserializeOwned>(prefix: &str, value: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    let mut unknown = Vec::new();
    let mut record = |path: serde_ignored::Path<'_>| unknown.push(format!("{prefix}.{path}"));
    let de = serde_ignored::Deserializer::new(value, &mut record);
    let result: Result<T, _> = serde_path_to_error::deserialize(de);
    errors.extend(unknown.into_iter().map(|key| ConfigError::UnknownKey { key }));
    match result {
        Ok(v) => Some(v),
        Err(e) => {
            let path = e.path().to_string();
            let key = if path == "." || path.is_empty() {
                prefix.to_string()
            } else {
                format!("{prefix}.{path}")
            };
            errors.push(ConfigError::WrongType {
                key,
                detail: e.into_inner().to_string(),
            });
            None
        }
    }
}

/// `[credentials.NAME]` / `[scheme.NAME]`: a table of tables, each checked on its own.
fn named_tables<T: DeserializeOwned>(
    prefix: &str,
    value: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<BTreeMap<String, T>> {
    let table = match value.into_table() {
        Ok(t) => t,
        Err(e) => {
            errors.push(ConfigError::WrongType {
                key: prefix.to_string(),
                detail: format!("{e}; expected a table of named tables like [{prefix}.NAME]"),
            });
            return None;
        }
    };
    let mut out = BTreeMap::new();
    for (name, v) in table {
        if let Some(parsed) = section(&format!("{prefix}.{name}"), v, errors) {
            out.insert(name, parsed);
        }
    }
    Some(out)
}

/// `[[route]]` / `[[webhook]]`: an array of tables, each checked on its own.
fn array_of_tables<T: DeserializeOwned>(
    prefix: &str,
    value: Value,
    errors: &mut Vec<ConfigError>,
) -> Option<Vec<T>> {
    let items = match value.into_array() {
        Ok(a) => a,
        Err(e) => {
            errors.push(ConfigError::WrongType {
                key: prefix.to_string(),
                detail: format!("{e}; expected an array of tables like [[{prefix}]]"),
            });
            return None;
        }
    };
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.into_iter().enumerate() {
        if let Some(parsed) = section(&format!("{prefix}[{i}]"), v, errors) {
            out.push(parsed);
        }
    }
    Some(out)
}

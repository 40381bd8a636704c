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
pub fn read_file(path: &Path) -> Result<Loaded, ConfigErrors> {
    read_file_with_env(path, None)
}

/// Like [`read_file`] but with an explicit environment (tests).
pub fn read_file_with_env(path: &Path, vars: Option<Map<String, String>>) -> Result<Loaded, ConfigErrors> {
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
pub fn read_str(toml: &str) -> Result<Loaded, ConfigErrors> {
    let builder = config::Config::builder().add_source(File::from_str(toml, FileFormat::Toml));
    from_builder(builder, "<inline config>")
}

fn from_builder(
    builder: config::ConfigBuilder<config::builder::DefaultState>,
    source_name: &str,
) -> Result<Loaded, ConfigErrors> {
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
            "log" => section(&key, value, &mut errors).map(|v| raw.log = v),
            "listener" => section(&key, value, &mut errors).map(|v| raw.listener = v),
            "admin" => section(&key, value, &mut errors).map(|v| raw.admin = v),
            "access" => section(&key, value, &mut errors).map(|v| raw.access = Some(v)),
            "limits" => section(&key, value, &mut errors).map(|v| raw.limits = v),
            "egress" => section(&key, value, &mut errors).map(|v| raw.egress = v),
            "audit" => section(&key, value, &mut errors).map(|v| raw.audit = v),
            "state" => section(&key, value, &mut errors).map(|v| raw.state = v),
            "tracing" => section(&key, value, &mut errors).map(|v| raw.tracing = Some(v)),
            "fleet" => section(&key, value, &mut errors).map(|v| raw.fleet = Some(v)),
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
    Ok((raw, errors))
}

/// What was read, plus the unknown keys and type errors found while reading.
pub type Loaded = (RawConfig, Vec<ConfigError>);

/// Most type errors reported for one section before giving up on it.
const MAX_TYPE_ERRORS_PER_SECTION: usize = 64;

/// Deserialize one table, recording every unknown key and every type error
/// (each with its full path) instead of stopping at the first: a key with the
/// wrong type is reported, removed, and the section is deserialized again.
fn section<T: DeserializeOwned>(prefix: &str, mut value: Value, errors: &mut Vec<ConfigError>) -> Option<T> {
    let join = |path: &str| {
        if path == "." || path.is_empty() {
            prefix.to_string()
        } else {
            format!("{prefix}.{path}")
        }
    };
    for _ in 0..MAX_TYPE_ERRORS_PER_SECTION {
        let mut unknown = Vec::new();
        let mut record = |path: serde_ignored::Path<'_>| unknown.push(format!("{prefix}{}", ignored_key(&path)));
        let de = serde_ignored::Deserializer::new(value.clone(), &mut record);
        let result: Result<T, _> = serde_path_to_error::deserialize(de);
        match result {
            Ok(v) => {
                errors.extend(unknown.into_iter().map(|key| ConfigError::UnknownKey { key }));
                return Some(v);
            }
            Err(e) => {
                let key = join(&e.path().to_string());
                let removed = remove_path(&mut value, e.path());
                errors.push(ConfigError::WrongType {
                    key,
                    detail: e.into_inner().to_string(),
                });
                if !removed {
                    return None;
                }
            }
        }
    }
    None
}

/// An unknown key's path as the other errors write keys: `.key` for a
/// table, `[N]` for a list entry, nothing for an optional value
/// (`credential_map[0].cred`, not serde_ignored's `credential_map.?.0.cred`).
fn ignored_key(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path;
    match path {
        Path::Root => String::new(),
        Path::Seq { parent, index } => format!("{}[{index}]", ignored_key(parent)),
        Path::Map { parent, key } => format!("{}.{key}", ignored_key(parent)),
        Path::Some { parent } | Path::NewtypeStruct { parent } | Path::NewtypeVariant { parent } => ignored_key(parent),
    }
}

/// Remove the value at `path` so the rest of the section can still be checked.
fn remove_path(value: &mut Value, path: &serde_path_to_error::Path) -> bool {
    use config::ValueKind;
    use serde_path_to_error::Segment;
    let segments: Vec<&Segment> = path.iter().collect();
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = value;
    for seg in parents {
        cur = match (seg, &mut cur.kind) {
            (Segment::Map { key }, ValueKind::Table(t)) => match t.get_mut(key.as_str()) {
                Some(v) => v,
                None => return false,
            },
            (Segment::Seq { index }, ValueKind::Array(a)) => match a.get_mut(*index) {
                Some(v) => v,
                None => return false,
            },
            _ => return false,
        };
    }
    match (last, &mut cur.kind) {
        (Segment::Map { key }, ValueKind::Table(t)) => t.remove(key.as_str()).is_some(),
        (Segment::Seq { index }, ValueKind::Array(a)) if *index < a.len() => {
            // Drop the whole list: a partial list (e.g. of CIDRs) must never validate.
            a.clear();
            true
        }
        _ => false,
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
fn array_of_tables<T: DeserializeOwned>(prefix: &str, value: Value, errors: &mut Vec<ConfigError>) -> Option<Vec<T>> {
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

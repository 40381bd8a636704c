//! `source = "file"`: a TOML or JSON file holding the API key and secret
//! fields, re-read when it changes. Vault Agent and Kubernetes hand secrets
//! over this way, replacing the file atomically by rename, so a change is
//! detected by the file's identity and mtime, not by watching writes. A file
//! that disappears after a good load keeps the last good secret serving.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::{LoadError, Material, Poll, SecretBytes, Source};

/// Largest credential file read (a credential file is a few hundred bytes).
const MAX_FILE_BYTES: u64 = 64 * 1024;

pub struct FileSource {
    path: PathBuf,
    api_key_field: String,
    secret_field: String,
    poll: Duration,
    last: Option<Stamp>,
    version: u64,
}

/// What identifies one version of the file on disk.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    len: u64,
    modified: Option<SystemTime>,
    #[cfg(unix)]
    ino: u64,
    #[cfg(unix)]
    dev: u64,
}

fn stamp(path: &Path) -> std::io::Result<Stamp> {
    let md = std::fs::metadata(path)?;
    #[cfg(unix)]
    use std::os::unix::fs::MetadataExt;
    Ok(Stamp {
        len: md.len(),
        modified: md.modified().ok(),
        #[cfg(unix)]
        ino: md.ino(),
        #[cfg(unix)]
        dev: md.dev(),
    })
}

impl FileSource {
    pub fn new(path: &Path, api_key_field: &str, secret_field: &str, poll: Duration) -> Self {
        FileSource {
            path: path.to_path_buf(),
            api_key_field: api_key_field.to_string(),
            secret_field: secret_field.to_string(),
            poll,
            last: None,
            version: 0,
        }
    }

    fn read(&mut self) -> Result<Poll, LoadError> {
        let shown = self.path.display();
        let st = match stamp(&self.path) {
            Ok(st) => st,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LoadError::Missing {
                    hint: format!(
                        "create the file {shown} with the fields {} and {} (TOML or JSON)",
                        self.api_key_field, self.secret_field
                    ),
                })
            }
            Err(e) => {
                return Err(LoadError::Unreachable {
                    reason: format!("cannot read {shown}: {}", e.kind()),
                })
            }
        };
        if self.last.as_ref() == Some(&st) {
            return Ok(Poll::Unchanged);
        }
        if st.len > MAX_FILE_BYTES {
            return Err(LoadError::Invalid {
                reason: format!("{shown} is larger than {MAX_FILE_BYTES} bytes; not a credential file"),
            });
        }
        let bytes = SecretBytes::new(std::fs::read(&self.path).map_err(|e| LoadError::Unreachable {
            reason: format!("cannot read {shown}: {}", e.kind()),
        })?);
        let text = std::str::from_utf8(bytes.expose()).map_err(|_| LoadError::Invalid {
            reason: format!("{shown} is not UTF-8 text"),
        })?;
        let picked = parse_fields(text, &self.api_key_field, &self.secret_field).map_err(|why| LoadError::Invalid {
            reason: format!("{shown}: {why}"),
        })?;
        let (Some(api_key), Some(secret)) = picked else {
            let (k, s) = picked;
            let missing: Vec<&str> = [(&self.api_key_field, k.is_none()), (&self.secret_field, s.is_none())]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(f, _)| f.as_str())
                .collect();
            return Err(LoadError::Invalid {
                reason: format!("{shown}: missing string field {}", missing.join(" and ")),
            });
        };
        self.last = Some(st);
        self.version += 1;
        Ok(Poll::Changed(Material::secret(api_key, secret, Some(self.version))))
    }
}

impl Source for FileSource {
    async fn poll(&mut self) -> Result<Poll, LoadError> {
        self.read()
    }

    fn next_poll(&self, _last_ok: bool, _failures: u32) -> Option<Duration> {
        Some(self.poll)
    }
}

type Picked = (Option<SecretBytes>, Option<SecretBytes>);

/// Extract the two string fields from TOML or JSON without keeping any other
/// value and without error messages that could quote the content.
fn parse_fields(text: &str, key_field: &str, secret_field: &str) -> Result<Picked, &'static str> {
    let seed = Picker {
        key_field,
        secret_field,
    };
    if text.trim_start().starts_with('{') {
        let mut de = serde_json::Deserializer::from_str(text);
        let picked = seed
            .deserialize(&mut de)
            .map_err(|_| "not a valid JSON object with string fields")?;
        de.end().map_err(|_| "trailing data after the JSON object")?;
        Ok(picked)
    } else {
        let de = toml::Deserializer::parse(text).map_err(|_| "not valid TOML (or JSON)")?;
        seed.deserialize(de)
            .map_err(|_| "not a valid TOML table with string fields")
    }
}

struct Picker<'a> {
    key_field: &'a str,
    secret_field: &'a str,
}

impl<'de> DeserializeSeed<'de> for Picker<'_> {
    type Value = Picked;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Picked, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for Picker<'_> {
    type Value = Picked;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of credential fields")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Picked, A::Error> {
        let mut out: Picked = (None, None);
        while let Some(k) = map.next_key::<String>()? {
            if k == self.key_field {
                out.0 = Some(SecretBytes::from(map.next_value::<String>()?));
            } else if k == self.secret_field {
                out.1 = Some(SecretBytes::from(map.next_value::<String>()?));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(out)
    }
}

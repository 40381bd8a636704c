//! `source = "env"`: API key and secret from two environment variables, read
//! once at start-up (a process cannot see its environment change).
//!
//! `signgate run` takes the secret variables out of its environment at
//! start-up (`hygiene`: they would otherwise stay readable in
//! `/proc/PID/environ` for the life of the process) and keeps their values
//! here, in zeroizing memory, for the life of the process: [`var`] reads the
//! kept value first and the environment second, so credential reloads see
//! the same values the process started with.

use std::collections::BTreeMap;
use std::sync::OnceLock;
use std::time::Duration;

use super::{LoadError, Material, Poll, SecretBytes, Source};

/// Secret variables taken out of the environment at start-up, by name.
static KEPT: OnceLock<BTreeMap<String, SecretBytes>> = OnceLock::new();

/// Keep these values for [`var`]; the first call wins (once per process).
pub fn keep(values: BTreeMap<String, SecretBytes>) -> bool {
    KEPT.set(values).is_ok()
}

/// The names of the kept variables (never their values).
pub fn kept_names() -> Vec<String> {
    KEPT.get().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// A secret variable: the value kept at start-up, else the environment's.
/// `None` when neither has it.
pub fn var(name: &str) -> Option<SecretBytes> {
    if let Some(v) = KEPT.get().and_then(|m| m.get(name)) {
        return Some(v.clone());
    }
    std::env::var_os(name).map(|v| {
        use std::os::unix::ffi::OsStringExt as _;
        SecretBytes::new(v.into_vec())
    })
}

pub struct EnvSource {
    api_key_env: String,
    secret_env: String,
}

impl EnvSource {
    pub fn new(api_key_env: &str, secret_env: &str) -> Self {
        EnvSource {
            api_key_env: api_key_env.to_string(),
            secret_env: secret_env.to_string(),
        }
    }

    fn read(&self) -> Result<Material, LoadError> {
        let get = |name: &str| var(name).filter(|v| !v.is_empty());
        let (key, secret) = (get(&self.api_key_env), get(&self.secret_env));
        if key.is_none() || secret.is_none() {
            let missing: Vec<&str> = [(&self.api_key_env, key.is_none()), (&self.secret_env, secret.is_none())]
                .into_iter()
                .filter(|(_, m)| *m)
                .map(|(v, _)| v.as_str())
                .collect();
            return Err(LoadError::Missing {
                hint: format!(
                    "set the environment variable{} {} ({} = API key, {} = secret key) and restart signgate",
                    if missing.len() > 1 { "s" } else { "" },
                    missing.join(" and "),
                    self.api_key_env,
                    self.secret_env
                ),
            });
        }
        let to_bytes = |v: SecretBytes, var: &str| {
            if std::str::from_utf8(v.expose()).is_ok() {
                Ok(v)
            } else {
                Err(LoadError::Invalid {
                    reason: format!("environment variable {var} is not valid UTF-8"),
                })
            }
        };
        Ok(Material::secret(
            to_bytes(key.unwrap_or_default(), &self.api_key_env)?,
            to_bytes(secret.unwrap_or_default(), &self.secret_env)?,
            Some(1),
        ))
    }
}

impl Source for EnvSource {
    async fn poll(&mut self) -> Result<Poll, LoadError> {
        self.read().map(Poll::Changed)
    }

    fn next_poll(&self, _last_ok: bool, _failures: u32) -> Option<Duration> {
        None
    }
}

//! `source = "env"`: API key and secret from two environment variables, read
//! once at start-up (a process cannot see its environment change).

use std::time::Duration;

use super::{LoadError, Material, Poll, SecretBytes, Source};

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
        let get = |var: &str| std::env::var_os(var).filter(|v| !v.is_empty());
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
        let to_bytes = |v: std::ffi::OsString, var: &str| {
            v.into_string().map(SecretBytes::from).map_err(|_| LoadError::Invalid {
                reason: format!("environment variable {var} is not valid UTF-8"),
            })
        };
        Ok(Material {
            api_key: to_bytes(key.unwrap_or_default(), &self.api_key_env)?,
            secret: to_bytes(secret.unwrap_or_default(), &self.secret_env)?,
            version: Some(1),
        })
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

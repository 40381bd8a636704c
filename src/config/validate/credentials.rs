//! `[credentials.NAME]`: where a secret lives (env, file, Vault/OpenBao),
//! never the secret itself.

use super::*;

fn file_fields(r: &RawCredential) -> (String, String) {
    (
        r.api_key_field.clone().unwrap_or_else(|| DEFAULT_API_KEY_FIELD.into()),
        r.secret_field.clone().unwrap_or_else(|| DEFAULT_SECRET_FIELD.into()),
    )
}

pub(super) fn credential(v: &mut V, name: &str, r: RawCredential) -> Option<SecretSource> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // Keys that belong to another source are a sign of a mix-up: say so.
    let env_keys = [
        ("api_key_env", r.api_key_env.is_some()),
        ("secret_env", r.secret_env.is_some()),
    ];
    let file_keys = [("path", r.path.is_some()), ("poll_ms", r.poll_ms.is_some())];
    let field_keys = [
        ("api_key_field", r.api_key_field.is_some()),
        ("secret_field", r.secret_field.is_some()),
    ];
    let vault_keys = [
        ("vault_addr", r.vault_addr.is_some()),
        ("vault_mount", r.vault_mount.is_some()),
        ("vault_path", r.vault_path.is_some()),
        ("vault_auth", r.vault_auth.is_some()),
        ("vault_role_id_file", r.vault_role_id_file.is_some()),
        ("vault_secret_id_file", r.vault_secret_id_file.is_some()),
        ("vault_token_file", r.vault_token_file.is_some()),
        ("vault_ca_file", r.vault_ca_file.is_some()),
        ("vault_max_stale_secs", r.vault_max_stale_secs.is_some()),
        ("vault_timeout_ms", r.vault_timeout_ms.is_some()),
        ("refresh_secs", r.refresh_secs.is_some()),
    ];
    let foreign = |v: &mut V, keys: &[(&str, bool)], source: &str| {
        for (k, set) in keys {
            if *set {
                v.push(ConfigError::invalid(
                    key(k),
                    "(set)",
                    format!("nothing for source = \"{source}\""),
                ));
            }
        }
    };
    match r.source.as_deref() {
        Some("env") => {
            foreign(v, &file_keys, "env");
            foreign(v, &field_keys, "env");
            foreign(v, &vault_keys, "env");
            let api_key_env = r.api_key_env.clone();
            let secret_env = r.secret_env.clone();
            if api_key_env.is_none() {
                v.push(ConfigError::missing(
                    key("api_key_env"),
                    "the name of the environment variable holding the API key",
                ));
            }
            if secret_env.is_none() {
                v.push(ConfigError::missing(
                    key("secret_env"),
                    "the name of the environment variable holding the secret key",
                ));
            }
            Some(SecretSource::Env {
                api_key_env: api_key_env?,
                secret_env: secret_env?,
            })
        }
        Some("file") => {
            foreign(v, &env_keys, "file");
            foreign(v, &vault_keys, "file");
            let (api_key_field, secret_field) = file_fields(&r);
            let Some(path) = r.path.as_deref() else {
                v.push(ConfigError::missing(
                    key("path"),
                    "the path of a TOML or JSON file holding the API key and secret fields",
                ));
                return None;
            };
            Some(SecretSource::File {
                path: v.path(path),
                api_key_field,
                secret_field,
                poll: v.millis(&key("poll_ms"), r.poll_ms, DEFAULT_FILE_POLL),
            })
        }
        Some("vault") => {
            foreign(v, &env_keys, "vault");
            foreign(v, &file_keys, "vault");
            let (api_key_field, secret_field) = file_fields(&r);
            let addr = match r.vault_addr.as_deref() {
                None => {
                    v.push(ConfigError::missing(
                        key("vault_addr"),
                        "the Vault/OpenBao address, e.g. https://vault.internal:8200",
                    ));
                    None
                }
                Some(a) => match a.parse::<Uri>() {
                    Ok(u) if u.scheme() == Some(&UriScheme::HTTPS) && u.authority().is_some() => Some(u),
                    Ok(u) if u.scheme() == Some(&UriScheme::HTTP) && u.host().is_some_and(host_is_loopback) => Some(u),
                    _ => {
                        v.push(ConfigError::invalid(
                            key("vault_addr"),
                            a,
                            "an https:// URL (http:// only for a loopback address)",
                        ));
                        None
                    }
                },
            };
            let auth = match r.vault_auth.as_deref() {
                None | Some("token") => {
                    for (k, set) in [
                        ("vault_role_id_file", r.vault_role_id_file.is_some()),
                        ("vault_secret_id_file", r.vault_secret_id_file.is_some()),
                    ] {
                        if set {
                            v.push(ConfigError::invalid(
                                key(k),
                                "(set)",
                                "nothing for vault_auth = \"token\"",
                            ));
                        }
                    }
                    Some(VaultAuth::Token {
                        token_file: r.vault_token_file.as_deref().map(|p| v.path(p)),
                    })
                }
                Some("approle") => match (&r.vault_role_id_file, &r.vault_secret_id_file) {
                    (Some(role), Some(secret)) => Some(VaultAuth::AppRole {
                        role_id_file: v.path(role),
                        secret_id_file: v.path(secret),
                    }),
                    (role, secret) => {
                        if role.is_none() {
                            v.push(ConfigError::missing(
                                key("vault_role_id_file"),
                                "the file holding the AppRole role_id",
                            ));
                        }
                        if secret.is_none() {
                            v.push(ConfigError::missing(
                                key("vault_secret_id_file"),
                                "the file holding the AppRole secret_id",
                            ));
                        }
                        None
                    }
                },
                Some(o) => {
                    v.push(ConfigError::invalid(key("vault_auth"), o, "\"token\" or \"approle\""));
                    None
                }
            };
            let mount = r.vault_mount.clone().unwrap_or_else(|| "secret".into());
            let Some(path) = r.vault_path.clone() else {
                v.push(ConfigError::missing(
                    key("vault_path"),
                    "the KV v2 path of the secret, e.g. kwikpaisa/prod",
                ));
                return None;
            };
            // They become the request path `/v1/{mount}/data/{path}`: a
            // value that cannot be a URL path (or would start a query) is
            // refused here rather than leaving the credential unloadable.
            for (k, value) in [("vault_mount", &mount), ("vault_path", &path)] {
                let usable = !value.contains(['?', '#', '%'])
                    && format!("/v1/{}", value.trim_matches('/'))
                        .parse::<http::uri::PathAndQuery>()
                        .is_ok();
                if !usable {
                    v.push(ConfigError::invalid(
                        key(k),
                        value,
                        "a KV path of URL path characters, without '?', '#', '%' or spaces",
                    ));
                }
            }
            let refresh = v.secs(&key("refresh_secs"), r.refresh_secs, DEFAULT_VAULT_REFRESH);
            let max_stale = r
                .vault_max_stale_secs
                .map(|s| v.secs(&key("vault_max_stale_secs"), Some(s), Duration::ZERO));
            let timeout = match r.vault_timeout_ms {
                Some(ms) if Duration::from_millis(ms) > MAX_VAULT_TIMEOUT => {
                    v.push(ConfigError::invalid(
                        key("vault_timeout_ms"),
                        ms,
                        format!("at most {} milliseconds", MAX_VAULT_TIMEOUT.as_millis()),
                    ));
                    DEFAULT_VAULT_TIMEOUT
                }
                ms => v.millis(&key("vault_timeout_ms"), ms, DEFAULT_VAULT_TIMEOUT),
            };
            Some(SecretSource::Vault(VaultSpec {
                addr: addr?,
                mount: mount.trim_matches('/').to_string(),
                path: path.trim_matches('/').to_string(),
                auth: auth?,
                ca_file: r.vault_ca_file.as_deref().map(|p| v.path(p)),
                api_key_field,
                secret_field,
                refresh,
                max_stale,
                timeout,
            }))
        }
        Some(o) => {
            v.push(ConfigError::invalid(key("source"), o, "\"env\", \"file\" or \"vault\""));
            None
        }
        None => {
            v.push(ConfigError::missing(key("source"), "\"env\", \"file\" or \"vault\""));
            None
        }
    }
}

pub(super) fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

//! `[credentials.NAME]`: where a secret lives (env, file, Vault/OpenBao KV,
//! Vault/OpenBao Transit), never the secret itself.

use super::*;

fn file_fields(r: &RawCredential) -> (String, String) {
    (
        r.api_key_field.clone().unwrap_or_else(|| DEFAULT_API_KEY_FIELD.into()),
        r.secret_field.clone().unwrap_or_else(|| DEFAULT_SECRET_FIELD.into()),
    )
}

/// The names of the sources, for "expected" texts.
const SOURCES: &str = "\"env\", \"file\", \"vault\" or \"vault_transit\"";

pub(super) fn credential(v: &mut V, name: &str, r: RawCredential) -> Option<SecretSource> {
    let key = |k: &str| format!("credentials.{name}.{k}");
    // Keys that belong to another source are a sign of a mix-up: say so.
    let api_key_env = [("api_key_env", r.api_key_env.is_some())];
    let secret_env = [("secret_env", r.secret_env.is_some())];
    let file_keys = [("path", r.path.is_some()), ("poll_ms", r.poll_ms.is_some())];
    let api_key_field = [("api_key_field", r.api_key_field.is_some())];
    let secret_field = [("secret_field", r.secret_field.is_some())];
    // The connection, auth and refresh keys both Vault sources take.
    let vault_conn_keys = [
        ("vault_addr", r.vault_addr.is_some()),
        ("vault_auth", r.vault_auth.is_some()),
        ("vault_role_id_file", r.vault_role_id_file.is_some()),
        ("vault_secret_id_file", r.vault_secret_id_file.is_some()),
        ("vault_token_file", r.vault_token_file.is_some()),
        ("vault_ca_file", r.vault_ca_file.is_some()),
        ("vault_timeout_ms", r.vault_timeout_ms.is_some()),
        ("refresh_secs", r.refresh_secs.is_some()),
    ];
    let kv_keys = [
        ("vault_mount", r.vault_mount.is_some()),
        ("vault_path", r.vault_path.is_some()),
    ];
    let max_stale = [("vault_max_stale_secs", r.vault_max_stale_secs.is_some())];
    let transit_keys = [
        ("transit_mount", r.transit_mount.is_some()),
        ("transit_key", r.transit_key.is_some()),
        ("transit_timeout_ms", r.transit_timeout_ms.is_some()),
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
            for keys in [
                &file_keys[..],
                &api_key_field,
                &secret_field,
                &vault_conn_keys,
                &kv_keys,
                &max_stale,
                &transit_keys,
            ] {
                foreign(v, keys, "env");
            }
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
            for keys in [
                &api_key_env[..],
                &secret_env,
                &vault_conn_keys,
                &kv_keys,
                &max_stale,
                &transit_keys,
            ] {
                foreign(v, keys, "file");
            }
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
            for keys in [&api_key_env[..], &secret_env, &file_keys, &transit_keys] {
                foreign(v, keys, "vault");
            }
            let (api_key_field, secret_field) = file_fields(&r);
            let conn = vault_conn(v, name, &r);
            let mount = r.vault_mount.clone().unwrap_or_else(|| "secret".into());
            let Some(path) = r.vault_path.clone() else {
                v.push(ConfigError::missing(
                    key("vault_path"),
                    "the KV v2 path of the secret, e.g. kwikpaisa/prod",
                ));
                return None;
            };
            kv_location(v, name, &mount, &path);
            let max_stale = r
                .vault_max_stale_secs
                .map(|s| v.secs(&key("vault_max_stale_secs"), Some(s), Duration::ZERO));
            let conn = conn?;
            Some(SecretSource::Vault(VaultSpec {
                addr: conn.addr,
                mount: mount.trim_matches('/').to_string(),
                path: path.trim_matches('/').to_string(),
                auth: conn.auth,
                ca_file: conn.ca_file,
                api_key_field,
                secret_field,
                refresh: conn.refresh,
                max_stale,
                timeout: conn.timeout,
            }))
        }
        Some("vault_transit") => {
            // The secret never leaves Vault, so there is no secret field,
            // and no "last good secret" to keep signing with.
            for keys in [&secret_env[..], &file_keys, &secret_field] {
                foreign(v, keys, "vault_transit");
            }
            if r.vault_max_stale_secs.is_some() {
                v.push(ConfigError::invalid(
                    key("vault_max_stale_secs"),
                    "(set)",
                    "nothing for source = \"vault_transit\": Transit signs only while Vault answers, there is no stale secret to limit",
                ));
            }
            let conn = vault_conn(v, name, &r);
            let transit_mount = r.transit_mount.clone().unwrap_or_else(|| DEFAULT_TRANSIT_MOUNT.into());
            if !path_segments_ok(&transit_mount) {
                v.push(ConfigError::invalid(
                    key("transit_mount"),
                    &transit_mount,
                    "a mount path of URL path characters, without '?', '#', '%' or spaces",
                ));
            }
            let transit_key = match r.transit_key.clone() {
                None => {
                    v.push(ConfigError::missing(
                        key("transit_key"),
                        "the name of the Transit key (type hmac) holding the provider's secret",
                    ));
                    None
                }
                Some(k)
                    if !k.is_empty()
                        && k.len() <= 128
                        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)) =>
                {
                    Some(k)
                }
                Some(k) => {
                    v.push(ConfigError::invalid(
                        key("transit_key"),
                        k,
                        "a Transit key name of 1-128 characters of A-Z a-z 0-9 - _ .",
                    ));
                    None
                }
            };
            let api_key = match (&r.api_key_env, &r.vault_path) {
                (Some(var), None) => {
                    for (k, set) in [
                        ("vault_mount", r.vault_mount.is_some()),
                        ("api_key_field", r.api_key_field.is_some()),
                    ] {
                        if set {
                            v.push(ConfigError::invalid(
                                key(k),
                                "(set)",
                                "nothing with api_key_env: it goes with vault_path (the API key from a KV secret)",
                            ));
                        }
                    }
                    Some(ApiKeySource::Env(var.clone()))
                }
                (None, Some(path)) => {
                    let mount = r.vault_mount.clone().unwrap_or_else(|| "secret".into());
                    kv_location(v, name, &mount, path);
                    Some(ApiKeySource::Kv {
                        mount: mount.trim_matches('/').to_string(),
                        path: path.trim_matches('/').to_string(),
                        field: r.api_key_field.clone().unwrap_or_else(|| DEFAULT_API_KEY_FIELD.into()),
                    })
                }
                (Some(_), Some(_)) => {
                    v.push(ConfigError::invalid(
                        key("api_key_env"),
                        "(set)",
                        "either api_key_env or vault_path (the API key from one place), not both",
                    ));
                    None
                }
                (None, None) => {
                    v.push(ConfigError::missing(
                        key("api_key_env"),
                        "where the API key comes from: api_key_env (an environment variable) or vault_path (a KV v2 secret with the field api_key_field)",
                    ));
                    None
                }
            };
            let sign_timeout = match r.transit_timeout_ms {
                Some(ms) if Duration::from_millis(ms) > MAX_VAULT_TIMEOUT => {
                    v.push(ConfigError::invalid(
                        key("transit_timeout_ms"),
                        ms,
                        format!("at most {} milliseconds", MAX_VAULT_TIMEOUT.as_millis()),
                    ));
                    DEFAULT_TRANSIT_TIMEOUT
                }
                ms => v.millis(&key("transit_timeout_ms"), ms, DEFAULT_TRANSIT_TIMEOUT),
            };
            let conn = conn?;
            Some(SecretSource::VaultTransit(TransitSpec {
                addr: conn.addr,
                auth: conn.auth,
                ca_file: conn.ca_file,
                mount: transit_mount.trim_matches('/').to_string(),
                key: transit_key?,
                api_key: api_key?,
                refresh: conn.refresh,
                timeout: conn.timeout,
                sign_timeout,
            }))
        }
        Some(o) => {
            v.push(ConfigError::invalid(key("source"), o, SOURCES));
            None
        }
        None => {
            v.push(ConfigError::missing(key("source"), SOURCES));
            None
        }
    }
}

/// The connection, auth and refresh settings both Vault sources share.
struct VaultConn {
    addr: Uri,
    auth: VaultAuth,
    ca_file: Option<PathBuf>,
    refresh: Duration,
    timeout: Duration,
}

fn vault_conn(v: &mut V, name: &str, r: &RawCredential) -> Option<VaultConn> {
    let key = |k: &str| format!("credentials.{name}.{k}");
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
    let refresh = v.secs(&key("refresh_secs"), r.refresh_secs, DEFAULT_VAULT_REFRESH);
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
    Some(VaultConn {
        addr: addr?,
        auth: auth?,
        ca_file: r.vault_ca_file.as_deref().map(|p| v.path(p)),
        refresh,
        timeout,
    })
}

/// `vault_mount` and `vault_path` become the request path
/// `/v1/{mount}/data/{path}`: a value that cannot be a URL path (or would
/// start a query) is refused here rather than leaving the credential
/// unloadable.
fn kv_location(v: &mut V, name: &str, mount: &str, path: &str) {
    for (k, value) in [("vault_mount", mount), ("vault_path", path)] {
        if !path_segments_ok(value) {
            v.push(ConfigError::invalid(
                format!("credentials.{name}.{k}"),
                value,
                "a KV path of URL path characters, without '?', '#', '%' or spaces",
            ));
        }
    }
}

/// Whether `value` can stand in a Vault API path.
fn path_segments_ok(value: &str) -> bool {
    !value.contains(['?', '#', '%'])
        && format!("/v1/{}", value.trim_matches('/'))
            .parse::<http::uri::PathAndQuery>()
            .is_ok()
}

pub(super) fn host_is_loopback(host: &str) -> bool {
    let h = host.trim_start_matches('[').trim_end_matches(']');
    h == "localhost" || h.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

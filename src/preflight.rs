//! Preflight: what `run` would trip over at start-up because of the
//! configuration, found without starting anything, so that `signgate check`
//! and `signgate run` agree on what is a bad configuration.
//!
//! Validation (`config::validate`) never touches the file system; this does.
//! It covers every file and directory that `app::start` opens before it
//! serves: the listener's certificate, key and client CA (`tls::server_config`),
//! the upstream trust roots and client certificate (`Upstream::new`, also
//! behind the webhook delivery client), each Vault credential's
//! `vault_ca_file` (`VaultSource::new`), the audit log (`audit::start`) and,
//! when webhooks are configured or it already exists (it holds the route
//! switches), the state database under `[state].dir` (`statedb::open`).
//! Each problem is a [`ConfigError::File`]
//! naming the key and the file, and all of them are reported together.
//!
//! Left to run time (exit 1, not 64): binding `listener.addr` and
//! `admin.addr` (a port in use now may be free in a second), whether
//! `egress.source_addr` is assigned to this host (it may arrive later, e.g. a
//! floating address), and credential sources (a file, a Vault server or an
//! environment variable that is missing makes its routes answer 503 until it
//! appears, without stopping the gateway).
//!
//! Writability is probed by creating and removing a uniquely named empty
//! file in the directory (or, for one that does not exist yet, in its nearest
//! existing ancestor): nothing is left behind, and no missing directory is
//! created.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::RootCertStore;

use crate::config::{AuditSink, Config, ConfigError, ConfigErrors, SecretSource};
use crate::tls;

/// Check everything `run` needs from the file system; every problem found.
pub fn preflight(config: &Config) -> Result<(), ConfigErrors> {
    let mut errors = Vec::new();
    listener_tls(config, &mut errors);
    egress_tls(config, &mut errors);
    audit(config, &mut errors);
    state(config, &mut errors);
    fleet(config, &mut errors);
    for (name, spec) in &config.credentials {
        let ca_file = match &spec.source {
            SecretSource::Vault(v) => v.ca_file.as_ref(),
            SecretSource::VaultTransit(t) => t.ca_file.as_ref(),
            _ => None,
        };
        if let Some(ca) = ca_file {
            let key = format!("credentials.{name}.vault_ca_file");
            if ca_roots(&key, ca, &mut errors) {
                if let Err(e) = tls::vault_client_config(Some(ca)) {
                    errors.push(ConfigError::file(key, ca, e.reason()));
                }
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(ConfigErrors(errors))
    }
}

/// `[fleet]`: the password file must be readable and hold a password (its
/// content is never shown), the CA file must hold certificates.
fn fleet(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(f) = &config.fleet else {
        return;
    };
    if let Some(crate::config::RedisPassword::File(path)) = &f.password {
        if let Err(e) = crate::fleet::read_password_file(path) {
            let detail = e.rsplit_once(": ").map_or(e.as_str(), |(_, d)| d).to_string();
            errors.push(ConfigError::file("fleet.redis_password_file", path, detail));
        }
    }
    if let Some(ca) = &f.ca_file {
        ca_roots("fleet.redis_ca_file", ca, errors);
    }
}

fn listener_tls(config: &Config, errors: &mut Vec<ConfigError>) {
    let Some(t) = &config.listener.tls else {
        return;
    };
    let before = errors.len();
    let certs = certs("listener.tls_cert", &t.cert, errors);
    let key = key("listener.tls_key", &t.key, errors);
    if let (Some(certs), Some(key)) = (certs, key) {
        key_matches(
            "listener.tls_cert",
            &t.cert,
            "listener.tls_key",
            &t.key,
            certs,
            key,
            errors,
        );
    }
    if let Some(ca) = &t.client_ca {
        ca_roots("listener.client_ca", ca, errors);
    }
    // What is left (e.g. a client CA rustls cannot build a verifier from):
    // the very builder `run` uses.
    if errors.len() == before {
        if let Err(e) = tls::server_config(t) {
            let (key, path) = match &e {
                tls::TlsError::Config { what, .. } if what.starts_with("listener.client_ca") => {
                    ("listener.client_ca", t.client_ca.as_deref().unwrap_or(&t.cert))
                }
                _ => ("listener.tls_cert", t.cert.as_path()),
            };
            errors.push(ConfigError::file(key, path, e.reason()));
        }
    }
}

fn egress_tls(config: &Config, errors: &mut Vec<ConfigError>) {
    let e = &config.egress;
    let before = errors.len();
    if let Some(ca) = &e.ca_file {
        ca_roots("egress.ca_file", ca, errors);
    }
    if let Some((cert_path, key_path)) = &e.client_cert {
        let certs = certs("egress.client_cert", cert_path, errors);
        let key = key("egress.client_key", key_path, errors);
        if let (Some(certs), Some(key)) = (certs, key) {
            key_matches(
                "egress.client_cert",
                cert_path,
                "egress.client_key",
                key_path,
                certs,
                key,
                errors,
            );
        }
    }
    if errors.len() == before {
        if let Err(err) = tls::client_config(e) {
            let (key, path) = match &e.client_cert {
                Some((c, _)) => ("egress.client_cert", c.clone()),
                None => ("egress.ca_file", e.ca_file.clone().unwrap_or_default()),
            };
            errors.push(ConfigError::file(key, &path, err.reason()));
        }
    }
}

fn audit(config: &Config, errors: &mut Vec<ConfigError>) {
    let AuditSink::File(path) = &config.audit.sink else {
        return;
    };
    match fs::metadata(path) {
        Ok(m) if m.is_dir() => {
            errors.push(ConfigError::file(
                "audit.path",
                path,
                "is a directory; expected the path of the log file",
            ));
            return;
        }
        // The writer reads the last line (to continue the chain) and appends.
        Ok(_) => {
            if let Err(e) = OpenOptions::new().read(true).append(true).open(path) {
                errors.push(ConfigError::file(
                    "audit.path",
                    path,
                    format!("cannot append to it: {}", io_reason(&e)),
                ));
            }
        }
        Err(e) if is_absent(&e) => {}
        Err(e) => errors.push(ConfigError::file("audit.path", path, io_reason(&e))),
    }
    // Rotation and the `.head` file create files next to it.
    if let Err(why) = writable_dir(&parent(path)) {
        errors.push(ConfigError::file("audit.path", path, why));
    }
}

fn state(config: &Config, errors: &mut Vec<ConfigError>) {
    // The database is opened at start-up only when a webhook or a
    // duplicate-guarded route (without `[fleet]`) needs it or it exists (as
    // `run` does); otherwise the first route switch makes it.
    let dir = &config.state.dir;
    if !crate::statedb::needed(config) && !crate::statedb::exists(dir) {
        return;
    }
    if let Err(why) = writable_dir(dir) {
        errors.push(ConfigError::file("state.dir", dir, why));
        return;
    }
    let db = dir.join(crate::statedb::DB_FILE);
    match fs::metadata(&db) {
        Ok(m) if !m.is_file() => errors.push(ConfigError::file("state.dir", &db, "is not a regular file")),
        // Opened, not locked: a running gateway holding it is no error here.
        Ok(_) => {
            if let Err(e) = OpenOptions::new().read(true).write(true).open(&db) {
                errors.push(ConfigError::file(
                    "state.dir",
                    &db,
                    format!("cannot open the state database for writing: {}", io_reason(&e)),
                ));
            }
        }
        Err(e) if is_absent(&e) => {}
        Err(e) => errors.push(ConfigError::file("state.dir", &db, io_reason(&e))),
    }
}

/// The certificates of a PEM file; `None` (and an error) when unusable.
fn certs(key: &str, path: &Path, errors: &mut Vec<ConfigError>) -> Option<Vec<CertificateDer<'static>>> {
    if let Err(e) = readable_file(key, path) {
        errors.push(e);
        return None;
    }
    match tls::load_certs(path) {
        Ok(c) => Some(c),
        Err(e) => {
            errors.push(ConfigError::file(key, path, e.reason()));
            None
        }
    }
}

fn key(key: &str, path: &Path, errors: &mut Vec<ConfigError>) -> Option<PrivateKeyDer<'static>> {
    if let Err(e) = readable_file(key, path) {
        errors.push(e);
        return None;
    }
    match tls::load_key(path) {
        Ok(k) => Some(k),
        Err(e) => {
            errors.push(ConfigError::file(key, path, e.reason()));
            None
        }
    }
}

/// A CA file every certificate of which can be a trust root; false after an error.
fn ca_roots(key: &str, path: &Path, errors: &mut Vec<ConfigError>) -> bool {
    let Some(certs) = self::certs(key, path, errors) else {
        return false;
    };
    let mut roots = RootCertStore::empty();
    for cert in certs {
        if let Err(e) = roots.add(cert) {
            errors.push(ConfigError::file(
                key,
                path,
                format!("not a usable CA certificate: {e}"),
            ));
            return false;
        }
    }
    true
}

/// The private key is the one the certificate was issued for.
fn key_matches(
    cert_key: &str,
    cert_path: &Path,
    key_key: &str,
    key_path: &Path,
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    errors: &mut Vec<ConfigError>,
) {
    use rustls::{Error, InconsistentKeys};
    match rustls::sign::CertifiedKey::from_der(certs, key, &tls::provider()) {
        Ok(_) => {}
        Err(Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => errors.push(ConfigError::file(
            key_key,
            key_path,
            format!(
                "does not match the certificate in {cert_key} ({}): the key of another certificate",
                cert_path.display()
            ),
        )),
        Err(e) => errors.push(ConfigError::file(
            key_key,
            key_path,
            format!(
                "cannot be used with the certificate in {cert_key} ({}): {e}",
                cert_path.display()
            ),
        )),
    }
}

fn readable_file(key: &str, path: &Path) -> Result<(), ConfigError> {
    match fs::metadata(path) {
        Err(e) => Err(ConfigError::file(key, path, format!("cannot read: {}", io_reason(&e)))),
        Ok(m) if !m.is_file() => Err(ConfigError::file(key, path, "cannot read: not a regular file")),
        Ok(_) => fs::File::open(path)
            .map(drop)
            .map_err(|e| ConfigError::file(key, path, format!("cannot read: {}", io_reason(&e)))),
    }
}

/// The directory a file path lives in (`.` for a bare file name).
fn parent(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

fn is_absent(e: &io::Error) -> bool {
    matches!(e.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory)
}

/// `dir` exists and takes new files, or can be created: its nearest existing
/// ancestor is a directory that takes new files. Probed with an empty file
/// that is removed at once; nothing is created otherwise.
pub fn writable_dir(dir: &Path) -> Result<(), String> {
    let mut existing = if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    };
    loop {
        match fs::metadata(existing) {
            Ok(m) if m.is_dir() => break,
            Ok(_) => return Err(format!("{} is not a directory", existing.display())),
            Err(e) if is_absent(&e) => match existing.parent() {
                Some(p) if !p.as_os_str().is_empty() => existing = p,
                _ => existing = Path::new("."),
            },
            Err(e) => return Err(format!("{}: {}", existing.display(), io_reason(&e))),
        }
    }
    let probe = existing.join(format!(
        ".signgate-preflight-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    ));
    let made = {
        use std::os::unix::fs::OpenOptionsExt as _;
        OpenOptions::new().write(true).create_new(true).mode(0o600).open(&probe)
    };
    match made {
        Ok(f) => {
            drop(f);
            let _ = fs::remove_file(&probe);
            Ok(())
        }
        Err(e) if existing == dir => Err(format!("cannot create files in it: {}", io_reason(&e))),
        Err(e) => Err(format!(
            "cannot be created: cannot create anything in {}: {}",
            existing.display(),
            io_reason(&e)
        )),
    }
}

fn io_reason(e: &io::Error) -> String {
    match e.kind() {
        ErrorKind::NotFound => "no such file or directory".into(),
        ErrorKind::PermissionDenied => "permission denied".into(),
        ErrorKind::ReadOnlyFilesystem => "read-only file system".into(),
        ErrorKind::NotADirectory => "a path component is not a directory".into(),
        _ => e.to_string(),
    }
}

#[cfg(test)]
mod tests;

//! The certificates in use, reloaded without a restart: the listener's
//! certificate and key, its client CA (mTLS), and towards the provider the
//! egress client certificate and key and the extra trust roots
//! (`egress.ca_file`). Each is one [`Piece`], labelled as in the metrics:
//! `listener`, `client_ca`, `egress_client`, `egress_ca`.
//!
//! A piece is re-read when its files change on disk (polled every second:
//! [`Certificates::poll`]) and on every reload (SIGHUP, `POST /reload`:
//! [`Certificates::reload`]). A new file that does not parse, or a key that
//! does not belong to its certificate, is rejected: the piece keeps what it
//! had, the failure is counted and logged once per version of the files.
//! A piece that did change rebuilds the listener's server config (new
//! connections take it; connections already open keep the session they
//! have) or the upstream's client config (a new pool for the requests that
//! start afterwards).
//!
//! **Why polling, not inotify.** Every second the files' metadata is read
//! through their paths, symlinks followed: device, inode, size, mtime and
//! ctime. That sees a file replaced by rename (Vault Agent, cert-manager's
//! CSI driver), rewritten in place, and a Kubernetes Secret volume's
//! `..data` symlink swap, where the watched path itself never changes and an
//! inotify watch on it sees nothing. It needs no extra dependency and works
//! on every file system (overlay, NFS); the cost is a few `stat` calls a
//! second. A change is acted on once the files have stayed the same for one
//! more poll, so a certificate and key written one after the other are read
//! together, not counted as a mismatch in between.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::RootCertStore;
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::config::{EgressConfig, ServerTlsConfig};
use crate::metrics::Metrics;
use crate::tls::{self, LiveServerConfig, TlsError};

/// How often certificate files are checked for changes.
pub const POLL_EVERY: Duration = Duration::from_secs(1);

/// The metric label of each piece.
pub const LISTENER: &str = "listener";
pub const CLIENT_CA: &str = "client_ca";
pub const EGRESS_CLIENT: &str = "egress_client";
pub const EGRESS_CA: &str = "egress_ca";

/// What one piece's reload did (a reload's answer lists them).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct CertReload {
    pub certificate: &'static str,
    /// `ok` (in use for new connections) or `error` (rejected; the previous one stays).
    pub result: &'static str,
    pub detail: String,
}

/// What identifies a version of a file without reading it: device, inode,
/// size, mtime and ctime of the file a path resolves to (or why it cannot
/// be read).
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileStamp {
    Seen {
        dev: u64,
        ino: u64,
        len: u64,
        mtime: (i64, i64),
        ctime: (i64, i64),
    },
    Missing(std::io::ErrorKind),
}

fn stamp(path: &Path) -> FileStamp {
    use std::os::unix::fs::MetadataExt as _;
    match std::fs::metadata(path) {
        Ok(m) => FileStamp::Seen {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        },
        Err(e) => FileStamp::Missing(e.kind()),
    }
}

/// A parsed certificate file set and what it was read from.
struct Piece<T> {
    label: &'static str,
    files: Vec<PathBuf>,
    value: T,
    /// SHA-256 over the files' contents when `value` was read: a reload
    /// that finds the same bytes changes nothing.
    digest: [u8; 32],
    /// The files' stamps when `value` was read (or found unchanged).
    stamps: Vec<FileStamp>,
    /// Stamps seen once, different from `stamps`: acted on when seen again.
    pending: Option<Vec<FileStamp>>,
    /// Stamps of files that were rejected: not tried again until they change.
    failed: Option<Vec<FileStamp>>,
    /// The earliest `notAfter` of `value`'s certificates (Unix seconds).
    expiry: Option<i64>,
}

/// How a piece's value is parsed from its files; returns the value and the
/// earliest expiry of its certificates.
type Parse<T> = fn(&[PathBuf]) -> Result<(T, Option<i64>), TlsError>;

fn digest(files: &[PathBuf]) -> Result<[u8; 32], TlsError> {
    let mut h = Sha256::new();
    for f in files {
        let bytes = std::fs::read(f).map_err(|e| TlsError::Config {
            what: "certificate files",
            detail: format!("cannot read {}: {e}", f.display()),
        })?;
        h.update((bytes.len() as u64).to_be_bytes());
        h.update(&bytes);
    }
    Ok(h.finalize().into())
}

impl<T> Piece<T> {
    /// Read at start-up (preflight has checked the files).
    fn load(label: &'static str, files: Vec<PathBuf>, parse: Parse<T>) -> Result<Self, TlsError> {
        let stamps = files.iter().map(|f| stamp(f)).collect();
        let digest = digest(&files)?;
        let (value, expiry) = parse(&files)?;
        Ok(Piece {
            expiry,
            label,
            files,
            value,
            digest,
            stamps,
            pending: None,
            failed: None,
        })
    }

    /// Re-read the files if they changed (`force`: whatever the stamps say).
    /// `Some` when something was tried: the new value is in place (`ok`) or
    /// the old one stays (`error`).
    fn refresh(&mut self, force: bool, parse: Parse<T>, metrics: &Metrics) -> Option<CertReload> {
        let now: Vec<FileStamp> = self.files.iter().map(|f| stamp(f)).collect();
        if !force {
            if now == self.stamps {
                self.pending = None;
                return None;
            }
            if self.failed.as_ref() == Some(&now) {
                return None;
            }
            if self.pending.as_ref() != Some(&now) {
                // Changed since the last poll: wait until it holds still.
                self.pending = Some(now);
                return None;
            }
        }
        self.pending = None;
        let read = digest(&self.files).and_then(|d| {
            if d == self.digest {
                Ok(None)
            } else {
                parse(&self.files).map(|v| Some((d, v)))
            }
        });
        let report = |result: &'static str, detail: String| {
            metrics
                .certificate_reloads
                .with_label_values(&[self.label, result])
                .inc();
            CertReload {
                certificate: self.label,
                result,
                detail,
            }
        };
        match read {
            Ok(None) => {
                // Touched, or changed and changed back: the same bytes.
                self.stamps = now;
                self.failed = None;
                None
            }
            Ok(Some((d, (value, expiry)))) => {
                self.value = value;
                self.expiry = expiry;
                self.digest = d;
                self.stamps = now;
                self.failed = None;
                set_expiry(metrics, self.label, expiry);
                let detail = format!("{}: in use for new connections", self.describe(expiry));
                tracing::info!(certificate = self.label, "certificate reloaded: {detail}");
                Some(report("ok", detail))
            }
            Err(e) => {
                self.failed = Some(now);
                let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
                let detail = format!(
                    "{}: {}; the previous certificate stays in use",
                    files.join(", "),
                    e.reason()
                );
                tracing::error!(certificate = self.label, "certificate rejected: {detail}");
                Some(report("error", detail))
            }
        }
    }

    fn describe(&self, expiry: Option<i64>) -> String {
        let files: Vec<String> = self.files.iter().map(|f| f.display().to_string()).collect();
        match expiry.and_then(|t| time::OffsetDateTime::from_unix_timestamp(t).ok()) {
            Some(t) => format!("{} (expires {t})", files.join(", ")),
            None => files.join(", "),
        }
    }
}

/// The expiry gauge of `label`: the piece's, or none when there is no piece.
fn publish<T>(metrics: &Metrics, label: &str, piece: Option<&Piece<T>>) {
    set_expiry(metrics, label, piece.and_then(|p| p.expiry));
}

fn set_expiry(metrics: &Metrics, label: &str, expiry: Option<i64>) {
    let g = &metrics.certificate_expiry;
    match expiry {
        Some(t) => g.with_label_values(&[label]).set(t),
        None => {
            let _ = g.remove_label_values(&[label]);
        }
    }
}

fn expiry_of(chain: &[CertificateDer<'_>]) -> Option<i64> {
    tls::earliest_expiry(chain)
}

fn parse_pair(files: &[PathBuf], what: &'static str) -> Result<(Arc<CertifiedKey>, Option<i64>), TlsError> {
    let (Some(cert), Some(key)) = (files.first(), files.get(1)) else {
        return Err(TlsError::Config {
            what,
            detail: "a certificate and a key are needed".into(),
        });
    };
    let ck = tls::certified_key(cert, key, what)?;
    // The leaf's expiry: the chain's intermediates are the CA's business.
    let expiry = expiry_of(&ck.cert[..1.min(ck.cert.len())]);
    Ok((ck, expiry))
}

fn parse_listener(files: &[PathBuf]) -> Result<(Arc<CertifiedKey>, Option<i64>), TlsError> {
    parse_pair(files, "listener.tls_cert/tls_key")
}

fn parse_egress_client(files: &[PathBuf]) -> Result<(Arc<CertifiedKey>, Option<i64>), TlsError> {
    parse_pair(files, "egress.client_cert/client_key")
}

fn parse_client_ca(files: &[PathBuf]) -> Result<(Arc<dyn ClientCertVerifier>, Option<i64>), TlsError> {
    let ca = files.first().ok_or(TlsError::Config {
        what: "listener.client_ca",
        detail: "no file".into(),
    })?;
    let verifier = tls::client_verifier(ca)?;
    Ok((verifier, expiry_of(&tls::load_certs(ca)?)))
}

fn parse_egress_ca(files: &[PathBuf]) -> Result<(Arc<RootCertStore>, Option<i64>), TlsError> {
    let ca = files.first().map(PathBuf::as_path);
    let roots = tls::upstream_roots(ca)?;
    let expiry = match ca {
        Some(ca) => expiry_of(&tls::load_certs(ca)?),
        None => None,
    };
    Ok((roots, expiry))
}

/// The listener's pieces and the server config built from them.
struct ListenerTls {
    cert: Piece<Arc<CertifiedKey>>,
    client_ca: Option<Piece<Arc<dyn ClientCertVerifier>>>,
    live: LiveServerConfig,
}

/// The upstream client's pieces (the webpki roots are always trusted).
pub(crate) struct EgressTls {
    ca: Option<Piece<Arc<RootCertStore>>>,
    client: Option<Piece<Arc<CertifiedKey>>>,
    /// Only the webpki roots (no `egress.ca_file`).
    webpki: Arc<RootCertStore>,
}

impl EgressTls {
    /// Read `egress`'s files (start-up, or a reload that changes `[egress]`).
    pub fn load(egress: &EgressConfig) -> Result<EgressTls, TlsError> {
        let ca = match &egress.ca_file {
            Some(f) => Some(Piece::load(EGRESS_CA, vec![f.clone()], parse_egress_ca)?),
            None => None,
        };
        let client = match &egress.client_cert {
            Some((c, k)) => Some(Piece::load(
                EGRESS_CLIENT,
                vec![c.clone(), k.clone()],
                parse_egress_client,
            )?),
            None => None,
        };
        Ok(EgressTls {
            ca,
            client,
            webpki: tls::upstream_roots(None)?,
        })
    }

    fn publish(&self, metrics: &Metrics) {
        publish(metrics, EGRESS_CA, self.ca.as_ref());
        publish(metrics, EGRESS_CLIENT, self.client.as_ref());
    }

    /// The upstream client config from the pieces in use.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let roots = self
            .ca
            .as_ref()
            .map_or_else(|| self.webpki.clone(), |p| p.value.clone());
        tls::client_config_from(roots, self.client.as_ref().map(|p| p.value.clone()))
    }
}

/// Every certificate the gateway serves or presents (see the module doc).
pub(crate) struct Certificates {
    metrics: Arc<Metrics>,
    listener: Option<ListenerTls>,
    egress: EgressTls,
}

/// What a refresh changed, for the caller to apply.
#[derive(Default)]
pub(crate) struct Refreshed {
    pub reports: Vec<CertReload>,
    /// A new upstream client config, when an egress piece changed.
    pub egress: Option<Arc<rustls::ClientConfig>>,
}

impl Certificates {
    /// Read every certificate file of the configuration (start-up).
    pub fn load(
        listener: Option<&ServerTlsConfig>,
        egress: &EgressConfig,
        metrics: Arc<Metrics>,
    ) -> Result<Certificates, TlsError> {
        let listener = match listener {
            Some(t) => {
                let cert = Piece::load(LISTENER, vec![t.cert.clone(), t.key.clone()], parse_listener)?;
                let client_ca = match &t.client_ca {
                    Some(ca) => Some(Piece::load(CLIENT_CA, vec![ca.clone()], parse_client_ca)?),
                    None => None,
                };
                publish(&metrics, LISTENER, Some(&cert));
                publish(&metrics, CLIENT_CA, client_ca.as_ref());
                let config = tls::server_config_from(cert.value.clone(), client_ca.as_ref().map(|p| p.value.clone()))?;
                Some(ListenerTls {
                    cert,
                    client_ca,
                    live: Arc::new(arc_swap::ArcSwap::new(config)),
                })
            }
            None => None,
        };
        let egress = EgressTls::load(egress)?;
        egress.publish(&metrics);
        Ok(Certificates {
            metrics,
            listener,
            egress,
        })
    }

    /// The listener's server config, which a reload updates in place.
    pub fn listener(&self) -> Option<LiveServerConfig> {
        self.listener.as_ref().map(|l| l.live.clone())
    }

    pub fn egress(&self) -> &EgressTls {
        &self.egress
    }

    /// Put `egress` in place of the current egress pieces (after a reload
    /// that changed `[egress]` has swapped in its new upstream client).
    pub fn replace_egress(&mut self, egress: EgressTls) {
        egress.publish(&self.metrics);
        self.egress = egress;
    }

    /// The files that changed and held still since the last poll.
    pub fn poll(&mut self) -> Refreshed {
        self.refresh(false)
    }

    /// Every file read again (a reload): whatever has new contents.
    pub fn reload(&mut self) -> Refreshed {
        self.refresh(true)
    }

    fn refresh(&mut self, force: bool) -> Refreshed {
        let m = &self.metrics;
        let mut out = Refreshed::default();
        if let Some(l) = &mut self.listener {
            let mut changed = false;
            for r in [
                l.cert.refresh(force, parse_listener, m),
                l.client_ca.as_mut().and_then(|p| p.refresh(force, parse_client_ca, m)),
            ]
            .into_iter()
            .flatten()
            {
                changed |= r.result == "ok";
                out.reports.push(r);
            }
            if changed {
                match tls::server_config_from(l.cert.value.clone(), l.client_ca.as_ref().map(|p| p.value.clone())) {
                    Ok(config) => l.live.store(config),
                    Err(e) => tracing::error!("listener TLS not rebuilt, the previous one stays: {e}"),
                }
            }
        }
        let e = &mut self.egress;
        let mut changed = false;
        for r in [
            e.ca.as_mut().and_then(|p| p.refresh(force, parse_egress_ca, m)),
            e.client.as_mut().and_then(|p| p.refresh(force, parse_egress_client, m)),
        ]
        .into_iter()
        .flatten()
        {
            changed |= r.result == "ok";
            out.reports.push(r);
        }
        if changed {
            match e.client_config() {
                Ok(config) => out.egress = Some(config),
                Err(err) => tracing::error!("upstream TLS not rebuilt, the previous one stays: {err}"),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devtools::pki::DevCa;

    fn write(path: &Path, contents: &str) {
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, contents).unwrap();
        std::fs::rename(&tmp, path).unwrap();
    }

    fn reloads(m: &Metrics, label: &str, result: &str) -> u64 {
        m.certificate_reloads.with_label_values(&[label, result]).get()
    }

    #[test]
    fn a_changed_pair_is_read_once_it_holds_still_and_a_broken_one_is_kept_out() {
        let dir = tempfile::tempdir().unwrap();
        let ca = DevCa::new("certs test CA").unwrap();
        let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
        let first = ca.server(&["localhost"]).unwrap();
        write(&cert, &first.cert_pem);
        write(&key, &first.key_pem);
        let metrics = Metrics::new();
        let tls = ServerTlsConfig {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: None,
        };
        let egress = crate::config::Config::from_toml_str("[access]\nallow = [\"127.0.0.1\"]\n")
            .unwrap()
            .egress;
        let mut certs = Certificates::load(Some(&tls), &egress, metrics.clone()).unwrap();
        let live = certs.listener().unwrap();
        let before = Arc::as_ptr(&live.load_full());
        assert!(certs.poll().reports.is_empty(), "nothing changed");

        let second = ca.server(&["localhost"]).unwrap();
        write(&cert, &second.cert_pem);
        write(&key, &second.key_pem);
        assert!(certs.poll().reports.is_empty(), "first sight: wait one poll");
        let r = certs.poll().reports;
        assert_eq!(r.len(), 1, "{r:?}");
        assert_eq!((r[0].certificate, r[0].result), (LISTENER, "ok"));
        assert_ne!(Arc::as_ptr(&live.load_full()), before, "a new server config");
        assert_eq!(reloads(&metrics, LISTENER, "ok"), 1);

        // A key from another certificate: rejected once, the config stays.
        let in_use = Arc::as_ptr(&live.load_full());
        write(&key, &first.key_pem);
        certs.poll();
        let r = certs.poll().reports;
        assert_eq!((r[0].result, r.len()), ("error", 1), "{r:?}");
        assert!(certs.poll().reports.is_empty(), "reported once per version");
        assert_eq!(reloads(&metrics, LISTENER, "error"), 1);
        assert_eq!(Arc::as_ptr(&live.load_full()), in_use);

        // A forced reload tries again; the key put back is fine again.
        assert_eq!(certs.reload().reports[0].result, "error");
        write(&key, &second.key_pem);
        let r = certs.reload().reports;
        assert!(r.is_empty(), "the same bytes as in use: nothing to do ({r:?})");
        assert_eq!(Arc::as_ptr(&live.load_full()), in_use);

        // Garbage in the certificate file.
        write(&cert, "not a certificate");
        let r = certs.reload().reports;
        assert!(r[0].detail.contains("cert.pem"), "{r:?}");
        assert_eq!(reloads(&metrics, LISTENER, "error"), 3);

        // A file that went away (a swap half done): the same.
        std::fs::remove_file(&key).unwrap();
        let r = certs.reload().reports;
        assert!(
            r[0].detail.contains("cannot read") && r[0].detail.contains("key.pem"),
            "{r:?}"
        );
        assert_eq!(Arc::as_ptr(&live.load_full()), in_use);
    }
}

//! Credentials: where the API key and HMAC secret come from, and the slot each
//! route reads them from.
//!
//! A [`Source`] (env, file, Vault/OpenBao KV, Vault/OpenBao Transit) produces
//! [`Material`]; a background task per credential installs it into a
//! [`CredentialSlot`] as an immutable [`Credential`] (API key + [`Key`]: a
//! MAC keyed in memory, or a handle on a Transit key that signs inside Vault)
//! that requests clone an `Arc` of: a new version takes effect for the next
//! request while in-flight requests keep the one they started with. Secret
//! bytes are zeroized on drop and never appear in `Debug`, logs, errors or
//! metrics.

pub mod env;
mod file;
mod runner;
mod vault;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use http::HeaderValue;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

pub use env::EnvSource;
pub use file::FileSource;
pub use vault::{Transit, TransitSource, VaultSource, BACKOFF_START, VAULT_POLL_TIMEOUT};

use crate::config::{CredentialSpec, SecretSource};
use crate::sign::{keyed_mac, HmacSha256};
use runner::start_source;

/// Shortest secret accepted from a source (128 bits of key material).
pub const MIN_SECRET_LEN: usize = 16;

/// Secret bytes: zeroized when dropped, redacted in `Debug`.
#[derive(Clone, Default)]
pub struct SecretBytes(Zeroizing<Vec<u8>>);

impl SecretBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        SecretBytes(Zeroizing::new(bytes))
    }

    pub fn expose(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for SecretBytes {
    fn from(s: String) -> Self {
        SecretBytes::new(s.into_bytes())
    }
}

impl fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SecretBytes([redacted])")
    }
}

/// What a source hands over: the API key, the key, and the version.
#[derive(Debug, Clone)]
pub struct Material {
    pub api_key: SecretBytes,
    pub key: KeyMaterial,
    /// Version at the source (Vault KV version, Transit key version; a
    /// change counter for files).
    pub version: Option<u64>,
}

impl Material {
    /// An API key and a secret held in memory.
    pub fn secret(api_key: SecretBytes, secret: SecretBytes, version: Option<u64>) -> Material {
        Material {
            api_key,
            key: KeyMaterial::Secret(secret),
            version,
        }
    }
}

/// The key a credential signs with.
#[derive(Debug, Clone)]
pub enum KeyMaterial {
    /// The secret itself, to key an HMAC in memory.
    Secret(SecretBytes),
    /// A Transit key: the HMAC is computed inside Vault.
    Transit(Arc<Transit>),
}

/// Why a credential could not be loaded. Messages name variables, files and
/// fields, never their contents.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// Nothing to load yet; `hint` says what to provide.
    #[error("{hint}")]
    Missing { hint: String },
    /// Something was found but is unusable (wrong type, too short…).
    #[error("{reason}")]
    Invalid { reason: String },
    /// The source could not be reached or read.
    #[error("{reason}")]
    Unreachable { reason: String },
}

/// A loaded credential, immutable; requests hold an `Arc` to it.
pub struct Credential {
    name: Arc<str>,
    api_key: HeaderValue,
    key: Key,
    version: Option<u64>,
    loaded_at: SystemTime,
    /// HMAC-SHA256 of a fixed label keyed with the secret, truncated: tells
    /// whether two credentials hold the same secret without keeping or
    /// showing the secret (`None` for Transit, whose secret is never here).
    fingerprint: Option<[u8; 16]>,
}

/// The label whose MAC fingerprints a secret ([`Credential::same_secret`]).
const FINGERPRINT_LABEL: &[u8] = b"signgate secret fingerprint v1";

/// How a credential signs.
pub enum Key {
    /// A MAC keyed once with the secret, cloned per signature (the hot path:
    /// no allocation, no await).
    Local(HmacSha256),
    /// Vault/OpenBao Transit computes the MAC (one call per signature).
    Transit(Arc<Transit>),
}

impl Credential {
    /// Validate material and key the MAC once.
    pub fn from_material(name: &str, m: &Material) -> Result<Credential, LoadError> {
        if m.api_key.is_empty() {
            return Err(LoadError::Invalid {
                reason: format!("credential {name}: the API key is empty"),
            });
        }
        let mut api_key = HeaderValue::from_bytes(m.api_key.expose()).map_err(|_| LoadError::Invalid {
            reason: format!("credential {name}: the API key contains characters not allowed in an HTTP header"),
        })?;
        api_key.set_sensitive(true);
        let key = match &m.key {
            KeyMaterial::Secret(secret) if secret.len() < MIN_SECRET_LEN => {
                return Err(LoadError::Invalid {
                    reason: format!(
                        "credential {name}: the secret key is too short ({} bytes; at least {MIN_SECRET_LEN} expected)",
                        secret.len()
                    ),
                });
            }
            KeyMaterial::Secret(secret) => Key::Local(keyed_mac(secret.expose())),
            KeyMaterial::Transit(t) => Key::Transit(t.clone()),
        };
        let fingerprint = match &key {
            Key::Local(mac) => {
                use hmac::Mac as _;
                let mut mac = mac.clone();
                mac.update(FINGERPRINT_LABEL);
                let full = mac.finalize().into_bytes();
                let mut fp = [0u8; 16];
                fp.copy_from_slice(&full[..16]);
                Some(fp)
            }
            Key::Transit(_) => None,
        };
        Ok(Credential {
            name: Arc::from(name),
            api_key,
            key,
            version: m.version,
            loaded_at: SystemTime::now(),
            fingerprint,
        })
    }

    /// Whether `other` signs with the same secret: the same local secret
    /// (compared by fingerprint), or for Transit the same credential name.
    pub fn same_secret(&self, other: &Credential) -> bool {
        match (self.fingerprint, other.fingerprint) {
            (Some(a), Some(b)) => a == b,
            _ => self.name == other.name,
        }
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn api_key(&self) -> &HeaderValue {
        &self.api_key
    }

    /// How this credential signs.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// The MAC keyed with the secret (clone it per signature); `None` for a
    /// Transit credential, whose secret the gateway never has.
    pub fn mac(&self) -> Option<&HmacSha256> {
        match &self.key {
            Key::Local(mac) => Some(mac),
            Key::Transit(_) => None,
        }
    }

    /// The Transit key that signs for this credential, if it is one.
    pub fn transit(&self) -> Option<&Arc<Transit>> {
        match &self.key {
            Key::Local(_) => None,
            Key::Transit(t) => Some(t),
        }
    }

    pub fn version(&self) -> Option<u64> {
        self.version
    }

    pub fn loaded_at(&self) -> SystemTime {
        self.loaded_at
    }
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("name", &self.name)
            .field("version", &self.version)
            .field(
                "secret",
                &match &self.key {
                    Key::Local(_) => "[redacted]".to_string(),
                    Key::Transit(t) => format!("in Vault Transit ({})", t.describe()),
                },
            )
            .finish()
    }
}

/// Result of one poll of a source.
#[derive(Debug)]
pub enum Poll {
    /// New material (first load or a new version).
    Changed(Material),
    /// Same as last time; nothing to do.
    Unchanged,
}

/// Where credentials come from. Env, file and Vault implement it; the runner
/// (`run_source`) owns the loop, logging and slot updates.
pub trait Source: Send + 'static {
    /// Read the source. Must be bounded in time.
    fn poll(&mut self) -> impl Future<Output = Result<Poll, LoadError>> + Send;
    /// How long to wait before polling again, given how the last poll went
    /// and how many consecutive failures there were; `None`: never poll again.
    fn next_poll(&self, last_ok: bool, failures: u32) -> Option<Duration>;
    /// How long the last good material may keep signing once polls fail,
    /// counted from the last successful poll; `None`: for ever.
    fn max_stale(&self) -> Option<Duration> {
        None
    }
    /// The slot was emptied (stale): hand the material over again next time,
    /// even if it did not change.
    fn forget(&mut self) {}
    /// Signalled when the credential's users saw the source fail (Transit:
    /// a refused or unanswered HMAC): poll again soon instead of at the
    /// next scheduled refresh.
    fn wake(&self) -> Option<Arc<tokio::sync::Notify>> {
        None
    }
    /// The key stays at the source and every signature needs it (Transit):
    /// a failing source then means the credential cannot sign, even with
    /// a credential loaded.
    fn signs_remotely(&self) -> bool {
        false
    }
}

/// Why a credential cannot sign right now. `reason` says what to provide or
/// what failed; it never carries secret material (safe for clients and logs).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unavailable {
    pub credential: String,
    /// Loaded once, then failed closed (`vault_max_stale_secs`).
    pub expired: bool,
    pub reason: String,
}

impl std::fmt::Display for Unavailable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// The current state of one credential, shared by all requests.
pub struct CredentialSlot {
    name: String,
    current: ArcSwapOption<Credential>,
    /// Why the credential is not (or no longer freshly) available.
    problem: ArcSwap<Option<String>>,
    /// Successful and failed polls of the source, read by the metrics
    /// (`signgate_credential_refresh_total{result}`).
    refresh_ok: AtomicU64,
    refresh_error: AtomicU64,
    /// Unix seconds of the last successful poll (0: never).
    last_ok: AtomicU64,
    /// The version replaced by the last rotation, and when (webhook grace).
    previous: ArcSwapOption<(Arc<Credential>, SystemTime)>,
    /// Failed closed after a successful load (cleared by the next install).
    expired: std::sync::atomic::AtomicBool,
    /// Set by the refresh task for a source that signs remotely (Transit):
    /// its last poll failed, so signing most likely fails too.
    remote_down: std::sync::atomic::AtomicBool,
}

impl CredentialSlot {
    fn new(name: &str) -> Self {
        CredentialSlot {
            name: name.to_string(),
            current: ArcSwapOption::empty(),
            problem: ArcSwap::from_pointee(Some(format!("credential {name} has not loaded yet"))),
            refresh_ok: AtomicU64::new(0),
            refresh_error: AtomicU64::new(0),
            last_ok: AtomicU64::new(0),
            previous: ArcSwapOption::empty(),
            expired: std::sync::atomic::AtomicBool::new(false),
            remote_down: std::sync::atomic::AtomicBool::new(false),
        }
    }

    /// The credential the last rotation replaced, and when it was replaced.
    pub fn previous(&self) -> Option<(Arc<Credential>, SystemTime)> {
        self.previous.load_full().map(|p| (p.0.clone(), p.1))
    }

    /// When the source last answered successfully (fresh or unchanged).
    pub fn last_ok(&self) -> Option<SystemTime> {
        match self.last_ok.load(Ordering::Relaxed) {
            0 => None,
            secs => Some(std::time::UNIX_EPOCH + Duration::from_secs(secs)),
        }
    }

    /// (successful, failed) polls of the source so far.
    pub fn refresh_counts(&self) -> (u64, u64) {
        (
            self.refresh_ok.load(Ordering::Relaxed),
            self.refresh_error.load(Ordering::Relaxed),
        )
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The credential to sign with, or why there is none.
    pub fn get(&self) -> Result<Arc<Credential>, Unavailable> {
        match self.current.load_full() {
            Some(c) => Ok(c),
            None => Err(Unavailable {
                credential: self.name.clone(),
                expired: self.expired.load(Ordering::Relaxed),
                reason: self
                    .problem
                    .load()
                    .as_ref()
                    .clone()
                    .unwrap_or_else(|| format!("credential {} is not loaded", self.name)),
            }),
        }
    }

    pub fn is_loaded(&self) -> bool {
        self.current.load().is_some()
    }

    /// Whether the credential can sign now, for readiness: loaded, and for
    /// a key that signs remotely (Transit), its source answered last time.
    pub fn ready(&self) -> Result<(), Unavailable> {
        self.get()?;
        if self.remote_down.load(Ordering::Relaxed) {
            return Err(Unavailable {
                credential: self.name.clone(),
                expired: false,
                reason: self
                    .problem()
                    .unwrap_or_else(|| format!("credential {}: Vault does not answer", self.name)),
            });
        }
        Ok(())
    }

    /// The last load problem, if the latest attempt failed.
    pub fn problem(&self) -> Option<String> {
        self.problem.load().as_ref().clone()
    }

    fn install(&self, c: Credential) {
        if let Some(old) = self.current.swap(Some(Arc::new(c))) {
            self.previous.store(Some(Arc::new((old, SystemTime::now()))));
        }
        self.problem.store(Arc::new(None));
        self.expired.store(false, Ordering::Relaxed);
    }

    fn fail(&self, why: String) {
        self.problem.store(Arc::new(Some(why)));
    }

    /// Fail closed: stop signing with the current credential (requests that
    /// already hold it finish with it) until a source hands one over again.
    fn expire(&self, why: String) {
        self.expired.store(true, Ordering::Relaxed);
        self.current.store(None);
        self.problem.store(Arc::new(Some(why)));
    }
}

/// All credentials of a configuration.
#[derive(Clone, Default)]
pub struct CredentialStore {
    slots: Arc<BTreeMap<String, Arc<CredentialSlot>>>,
}

enum AnySource {
    Env(EnvSource),
    File(FileSource),
    Vault(Box<VaultSource>),
    Transit(Box<TransitSource>),
}

impl CredentialStore {
    /// Build the slots, load every credential once (bounded), and start the
    /// background refreshers under `cancel`.
    pub async fn start(specs: &BTreeMap<String, CredentialSpec>, cancel: &CancellationToken) -> CredentialStore {
        let mut slots = BTreeMap::new();
        for (name, spec) in specs {
            let slot = Arc::new(CredentialSlot::new(name));
            let source = match &spec.source {
                SecretSource::Env {
                    api_key_env,
                    secret_env,
                } => AnySource::Env(EnvSource::new(api_key_env, secret_env)),
                SecretSource::File {
                    path,
                    api_key_field,
                    secret_field,
                    poll,
                } => AnySource::File(FileSource::new(path, api_key_field, secret_field, *poll)),
                SecretSource::Vault(spec) => match VaultSource::new(name, spec) {
                    Ok(s) => AnySource::Vault(Box::new(s)),
                    Err(e) => {
                        tracing::warn!(credential = %name, error = %e, "credential unavailable");
                        slot.fail(e.to_string());
                        slots.insert(name.clone(), slot);
                        continue;
                    }
                },
                SecretSource::VaultTransit(spec) => match TransitSource::new(name, spec) {
                    Ok(s) => AnySource::Transit(Box::new(s)),
                    Err(e) => {
                        tracing::warn!(credential = %name, error = %e, "credential unavailable");
                        slot.fail(e.to_string());
                        slots.insert(name.clone(), slot);
                        continue;
                    }
                },
            };
            match source {
                AnySource::Env(s) => start_source(slot.clone(), s, cancel.clone()).await,
                AnySource::File(s) => start_source(slot.clone(), s, cancel.clone()).await,
                AnySource::Vault(s) => start_source(slot.clone(), *s, cancel.clone()).await,
                AnySource::Transit(s) => start_source(slot.clone(), *s, cancel.clone()).await,
            }
            slots.insert(name.clone(), slot);
        }
        CredentialStore { slots: Arc::new(slots) }
    }

    /// The slots of `specs`, none of them loaded and nothing started: for
    /// tools that route without signing (`signgate explain`), which then
    /// load only the credential they need.
    pub fn unloaded(specs: &BTreeMap<String, CredentialSpec>) -> CredentialStore {
        let slots = specs
            .keys()
            .map(|name| (name.clone(), Arc::new(CredentialSlot::new(name))))
            .collect();
        CredentialStore { slots: Arc::new(slots) }
    }

    pub fn slot(&self, name: &str) -> Option<&Arc<CredentialSlot>> {
        self.slots.get(name)
    }

    pub fn slots(&self) -> impl Iterator<Item = &Arc<CredentialSlot>> {
        self.slots.values()
    }
}

#[cfg(test)]
mod tests;

//! `source = "vault"`: API key and secret from a Vault/OpenBao KV v2 secret over
//! HTTPS (HTTP on loopback), token or AppRole auth, re-read every `refresh_secs`
//! ± 10 %; a new KV version is the next request's credential. Failures back off
//! (1 s doubling to `refresh_secs`, ± 20 %) while the last good secret signs.
//! Tokens are renewed past 2/3 of their TTL; AppRole logs in again if not, or on 403.
//!
//! [`VaultClient`] is the connection and its authentication; the KV source
//! here and the Transit source (`transit.rs`, `source = "vault_transit"`:
//! the HMAC is computed inside Vault) both use it.

mod auth;
mod http;
mod parse;
#[cfg(test)]
mod tests;
pub mod transit;

use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwapOption;
use zeroize::Zeroizing;

use self::auth::Token;
use self::http::{Answer, CallError, VaultHttp};
use self::parse::Field;
use super::{Credential, LoadError, Material, Poll, Source};
use crate::config::{VaultAuth, VaultSpec};
use ::http::{Method, StatusCode, Uri};
use rand::Rng as _;
use tokio::time::Instant;
pub use transit::{Transit, TransitSource};

/// Default budget of one refresh, every call in it included (login, renewal,
/// read); `vault_timeout_ms` sets it per credential.
pub const VAULT_POLL_TIMEOUT: Duration = crate::config::DEFAULT_VAULT_TIMEOUT;
/// TCP connect plus TLS handshake to Vault.
pub const VAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// First retry delay after a failed refresh; doubles up to `refresh_secs`.
pub const BACKOFF_START: Duration = Duration::from_secs(1);
/// Spread of the refresh interval (± 10 %) and of backoff delays (± 20 %), so
/// many gateways do not hit Vault in step.
const REFRESH_JITTER: f64 = 0.10;
const BACKOFF_JITTER: f64 = 0.20;
/// Never poll more often than this.
const MIN_WAIT: Duration = Duration::from_millis(250);

/// A connection to Vault/OpenBao and its authentication, shared by the
/// KV source and the Transit source: the pooled client, the token (re-read,
/// renewed, or logged in again, see `auth.rs`) and the refresh budget.
pub(super) struct VaultClient {
    name: String,
    addr: Uri,
    auth: VaultAuth,
    http: Arc<VaultHttp>,
    login_uri: Uri,
    lookup_uri: Uri,
    renew_uri: Uri,
    token: Option<Token>,
    /// Budget of one refresh.
    timeout: Duration,
    /// Where the current token is published for calls made outside the
    /// refresh (Transit's HMACs, made while a request waits).
    published: Option<Arc<TokenCell>>,
}

/// The token a Transit credential signs with, as the refresh task last
/// authenticated it (`None`: not logged in, or rejected).
pub(super) type TokenCell = ArcSwapOption<Zeroizing<String>>;

impl VaultClient {
    /// `max_idle`: pooled idle connections to Vault (1 for a refresh now
    /// and then; more for Transit, which is called per request).
    pub(super) fn new(
        name: &str,
        addr: &Uri,
        auth: &VaultAuth,
        ca_file: Option<&std::path::Path>,
        timeout: Duration,
        max_idle: usize,
    ) -> Result<VaultClient, LoadError> {
        let invalid = |reason: String| LoadError::Invalid { reason };
        let tls = crate::tls::vault_client_config(ca_file).map_err(|e| invalid(format!("vault_ca_file: {e}")))?;
        let http = VaultHttp::new(addr, tls, VAULT_CONNECT_TIMEOUT, max_idle)
            .ok_or_else(|| invalid(format!("vault_addr {addr} has no scheme or host")))?;
        let uri = |p: &str| {
            http.uri(p)
                .ok_or_else(|| invalid(format!("vault_addr {addr} does not form a valid URL")))
        };
        Ok(VaultClient {
            login_uri: uri("auth/approle/login")?,
            lookup_uri: uri("auth/token/lookup-self")?,
            renew_uri: uri("auth/token/renew-self")?,
            name: name.to_string(),
            addr: addr.clone(),
            auth: auth.clone(),
            http: Arc::new(http),
            token: None,
            timeout,
            published: None,
        })
    }

    /// The URI of an API path below `/v1/`; `shown` names the configured
    /// keys when it cannot form one.
    pub(super) fn uri(&self, api_path: &str, shown: &str) -> Result<Uri, LoadError> {
        self.http.uri(api_path).ok_or_else(|| LoadError::Invalid {
            reason: format!("{shown} do not form a valid URL path"),
        })
    }

    /// Publish every token this client gets in `cell`.
    pub(super) fn publish_to(&mut self, cell: Arc<TokenCell>) {
        self.published = Some(cell);
    }

    pub(super) fn http(&self) -> &Arc<VaultHttp> {
        &self.http
    }

    fn set_token(&mut self, token: Option<Token>) {
        if let Some(cell) = &self.published {
            cell.store(token.as_ref().map(|t| Arc::new(t.value.clone())));
        }
        self.token = token;
    }

    /// `GET uri` with a valid token: authenticate first, and when the read
    /// is refused with 403, log in again once (AppRole) or say which token
    /// to provide. `what` completes "a token that can …" ("read secret/kp").
    pub(super) async fn get(&mut self, uri: &Uri, what: &str, deadline: Instant) -> Result<Answer, LoadError> {
        self.authenticate(deadline).await?;
        let answer = self.read(uri, deadline).await?;
        if answer.status != StatusCode::FORBIDDEN {
            return Ok(answer);
        }
        self.set_token(None);
        match &self.auth {
            VaultAuth::Token { token_file } => Err(LoadError::Missing {
                hint: match token_file {
                    Some(p) => format!(
                        "token rejected (403): provide a new token in {} (one that can {what})",
                        p.display(),
                    ),
                    None => format!(
                        "token rejected (403): provide a new token in VAULT_TOKEN and restart, or use vault_token_file (one that can {what})",
                    ),
                },
            }),
            VaultAuth::AppRole { .. } => {
                // Revoked or expired before we noticed: one fresh login, one more read.
                tracing::info!(credential = %self.name, "vault token rejected (403); logging in again with AppRole");
                self.login(deadline).await?;
                let again = self.read(uri, deadline).await?;
                if again.status == StatusCode::FORBIDDEN {
                    self.set_token(None);
                    return Err(LoadError::Invalid {
                        reason: format!("a fresh AppRole token cannot {what} (403): check the role's token policies"),
                    });
                }
                Ok(again)
            }
        }
    }

    async fn read(&self, uri: &Uri, deadline: Instant) -> Result<Answer, LoadError> {
        let token = self.token.as_ref().map(|t| t.value.as_str());
        self.http
            .call(Method::GET, uri, token, None, deadline)
            .await
            .map_err(|e| self.unreachable(e))
    }

    fn unreachable(&self, e: CallError) -> LoadError {
        let addr = &self.addr;
        LoadError::Unreachable {
            reason: match e {
                CallError::Timeout => format!(
                    "Vault at {addr} did not answer within the {} s refresh budget (vault_timeout_ms)",
                    self.timeout.as_secs_f32()
                ),
                CallError::Unreachable(d) => format!("cannot reach Vault at {addr}: {d}"),
                CallError::TooLarge => format!("Vault at {addr} sent an answer larger than 1 MiB"),
            },
        }
    }

    pub(super) fn status_error(&self, doing: &str, a: &Answer, secrets: &[&str]) -> LoadError {
        let detail = scrub(parse::errors(&a.body), secrets);
        let addr = &self.addr;
        let status = a.status.as_u16();
        LoadError::Unreachable {
            reason: if a.status == StatusCode::SERVICE_UNAVAILABLE {
                format!(
                    "Vault at {addr} is sealed or unavailable (503 while {doing}){}",
                    colon(&detail)
                )
            } else {
                format!("Vault at {addr} answered {status} while {doing}{}", colon(&detail))
            },
        }
    }

    /// When the token is due for renewal or a new login, if ever.
    pub(super) fn token_due(&self) -> Option<Instant> {
        self.token.as_ref().and_then(Token::due)
    }
}

pub struct VaultSource {
    client: VaultClient,
    spec: VaultSpec,
    kv_uri: Uri,
    /// `mount/path`, for messages.
    shown: String,
    /// KV version of the material last handed over.
    version: Option<u64>,
}

impl VaultSource {
    /// Build the client. Errors (a bad `vault_ca_file`, a path that cannot
    /// form a URL) are reasons for the slot, not panics.
    pub fn new(name: &str, spec: &VaultSpec) -> Result<VaultSource, LoadError> {
        let client = VaultClient::new(name, &spec.addr, &spec.auth, spec.ca_file.as_deref(), spec.timeout, 1)?;
        let shown = format!("{}/{}", spec.mount, spec.path);
        Ok(VaultSource {
            kv_uri: client.uri(
                &format!("{}/data/{}", spec.mount, spec.path),
                &format!("vault_mount/vault_path {shown}"),
            )?,
            client,
            spec: spec.clone(),
            shown,
            version: None,
        })
    }

    #[cfg(test)]
    fn with_timeout(mut self, timeout: Duration) -> Self {
        self.client.timeout = timeout;
        self
    }

    async fn refresh(&mut self, deadline: Instant) -> Result<Poll, LoadError> {
        let what = format!("read {}", self.shown);
        let answer = self.client.get(&self.kv_uri, &what, deadline).await?;
        self.secret(answer)
    }

    /// The KV answer to material, or why not.
    fn secret(&mut self, a: Answer) -> Result<Poll, LoadError> {
        let (kf, sf) = (&self.spec.api_key_field, &self.spec.secret_field);
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(LoadError::Missing {
                    hint: format!(
                        "no secret at {} in Vault at {}: put one with the fields {kf} and {sf} (KV version 2)",
                        self.shown, self.spec.addr
                    ),
                })
            }
            _ => return Err(self.client.status_error(&format!("reading {}", self.shown), &a, &[])),
        }
        let kv = parse::kv(&a.body, kf, Some(sf)).ok_or_else(|| LoadError::Invalid {
            reason: format!(
                "{} is not a KV version 2 secret (is {} a KV v2 mount?)",
                self.shown, self.spec.mount
            ),
        })?;
        if kv.version.is_some() && kv.version == self.version {
            return Ok(Poll::Unchanged);
        }
        let field = |f: Field, name: &str| match f {
            Field::Value(v) => Ok(v),
            Field::Absent => Err(format!("missing field {name}")),
            Field::NotString => Err(format!("field {name} is not a string")),
        };
        let (api_key, secret) = match (field(kv.api_key, kf), field(kv.secret, sf)) {
            (Ok(k), Ok(s)) => (k, s),
            (Err(e), Ok(_)) | (Ok(_), Err(e)) => {
                return Err(LoadError::Invalid {
                    reason: format!("Vault secret {}: {e}", self.shown),
                })
            }
            (Err(e1), Err(e2)) => {
                return Err(LoadError::Invalid {
                    reason: format!("Vault secret {}: {e1}; {e2}", self.shown),
                })
            }
        };
        let material = Material::secret(api_key, secret, kv.version);
        // Refuse unusable material here, so that the version is only
        // remembered once it could be installed.
        Credential::from_material(&self.client.name, &material)?;
        self.version = kv.version;
        Ok(Poll::Changed(material))
    }
}

impl Source for VaultSource {
    async fn poll(&mut self) -> Result<Poll, LoadError> {
        let deadline = Instant::now() + self.client.timeout;
        self.refresh(deadline).await
    }

    fn next_poll(&self, last_ok: bool, failures: u32) -> Option<Duration> {
        if !last_ok {
            let backoff = backoff(failures, self.spec.refresh);
            return Some(jitter(backoff, BACKOFF_JITTER).max(MIN_WAIT));
        }
        Some(refresh_wait(self.spec.refresh, self.client.token_due()))
    }

    fn max_stale(&self) -> Option<Duration> {
        self.spec.max_stale
    }

    fn forget(&mut self) {
        self.version = None;
    }
}

/// The wait after a good refresh: `refresh` ± 10 %, but wake up for the
/// token's renewal or re-login; one that is already overdue (a renewal
/// failed) is retried at the normal pace.
fn refresh_wait(refresh: Duration, token_due: Option<Instant>) -> Duration {
    let mut wait = jitter(refresh, REFRESH_JITTER);
    let until_due = token_due.map(|d| d.saturating_duration_since(Instant::now()));
    if let Some(until) = until_due.filter(|u| !u.is_zero()) {
        wait = wait.min(until);
    }
    wait.max(MIN_WAIT)
}

/// `BACKOFF_START` doubled per consecutive failure, capped at `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let doublings = failures.saturating_sub(1).min(20);
    BACKOFF_START.saturating_mul(1 << doublings).min(cap.max(BACKOFF_START))
}

/// `d` spread uniformly by ± `spread`.
fn jitter(d: Duration, spread: f64) -> Duration {
    d.mul_f64(rand::rng().random_range(1.0 - spread..=1.0 + spread))
}

fn colon(detail: &str) -> String {
    if detail.is_empty() {
        String::new()
    } else {
        format!(": {detail}")
    }
}

/// Remove known secret values from text that came back from Vault.
fn scrub(mut text: String, secrets: &[&str]) -> String {
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        text = text.replace(s, "[redacted]");
    }
    text
}

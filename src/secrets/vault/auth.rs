//! Vault/OpenBao authentication for the vault source: the token (re-read
//! from `vault_token_file` or `VAULT_TOKEN` on every refresh, looked up once
//! for its TTL, renewed past 2/3 of it) or an AppRole login (again when the
//! token is rejected, not renewable, or capped by its max TTL). Tokens and
//! ids live in zeroizing memory; errors name files and statuses only.

use std::path::Path;
use std::time::Duration;

use ::http::{Method, StatusCode};
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::{colon, parse, scrub, VaultSource};
use crate::config::VaultAuth;
use crate::secrets::LoadError;

/// A Vault token and what is known of its lifetime.
pub(super) struct Token {
    pub(super) value: Zeroizing<String>,
    since: Instant,
    /// `None`: the token does not expire (TTL 0) or its TTL is unknown.
    ttl: Option<Duration>,
    renewable: bool,
    /// The TTL AppRole granted at login; a renewal that returns less means the
    /// max TTL is near, so the next step is a fresh login.
    granted: Option<Duration>,
}

impl Token {
    /// When to renew or log in again: past 2/3 of the TTL.
    pub(super) fn due(&self) -> Option<Instant> {
        self.ttl.map(|t| self.since + t * 2 / 3)
    }
}

impl VaultSource {
    /// Have a usable token: (re)read it for token auth, log in or renew for
    /// AppRole.
    pub(super) async fn authenticate(&mut self, deadline: Instant) -> Result<(), LoadError> {
        let due = self
            .token
            .as_ref()
            .and_then(Token::due)
            .is_some_and(|d| Instant::now() >= d);
        match self.spec.auth.clone() {
            VaultAuth::Token { token_file } => {
                // Re-read every time: a new token file fixes a rejected token.
                let value = read_token(token_file.as_deref())?;
                if self.token.as_ref().is_some_and(|t| *t.value == *value) {
                    if due {
                        self.renew_token(deadline).await;
                    }
                    return Ok(());
                }
                let (ttl, renewable) = self.lookup(&value, deadline).await?;
                self.token = Some(Token {
                    value,
                    since: Instant::now(),
                    ttl,
                    renewable,
                    granted: ttl,
                });
                Ok(())
            }
            VaultAuth::AppRole { .. } => match &self.token {
                None => self.login(deadline).await,
                Some(t) if due => {
                    if t.renewable {
                        if let Ok(g) = self.renew(deadline).await {
                            if g.ttl > Duration::ZERO && t.granted.is_none_or(|granted| g.ttl >= granted) {
                                if let Some(t) = self.token.as_mut() {
                                    t.since = Instant::now();
                                    t.ttl = Some(g.ttl);
                                }
                                tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), "vault token renewed");
                                return Ok(());
                            }
                        }
                    }
                    // Not renewable, renewal refused, or capped by the max TTL.
                    self.login(deadline).await
                }
                Some(_) => Ok(()),
            },
        }
    }

    /// Token auth: extend the token if it can be; a failure shows up as the
    /// read's 403 once the token is really gone.
    async fn renew_token(&mut self, deadline: Instant) {
        let renewable = self.token.as_ref().is_some_and(|t| t.renewable);
        if !renewable {
            return;
        }
        if let Ok(g) = self.renew(deadline).await {
            if let Some(t) = self.token.as_mut() {
                t.since = Instant::now();
                t.ttl = (g.ttl > Duration::ZERO).then_some(g.ttl);
            }
            tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), "vault token renewed");
        }
    }

    async fn renew(&self, deadline: Instant) -> Result<parse::Grant, LoadError> {
        let token = self.token.as_ref().map(|t| t.value.as_str());
        let body = Zeroizing::new(b"{}".to_vec());
        let a = self
            .http
            .call(Method::POST, &self.renew_uri, token, Some(body), deadline)
            .await
            .map_err(|e| self.unreachable(e))?;
        match a.status {
            StatusCode::OK => parse::grant(&a.body).ok_or_else(|| LoadError::Invalid {
                reason: "token renewal answered without a token".into(),
            }),
            _ => Err(self.status_error("renewing the token", &a, &[])),
        }
    }

    async fn lookup(&self, token: &str, deadline: Instant) -> Result<(Option<Duration>, bool), LoadError> {
        let a = self
            .http
            .call(Method::GET, &self.lookup_uri, Some(token), None, deadline)
            .await
            .map_err(|e| self.unreachable(e))?;
        // A token without lookup rights may still read the secret: the read decides.
        let (ttl, renewable) = match a.status {
            StatusCode::OK => parse::lookup(&a.body).unwrap_or((Duration::ZERO, false)),
            _ => (Duration::ZERO, false),
        };
        Ok(((ttl > Duration::ZERO).then_some(ttl), renewable))
    }

    pub(super) async fn login(&mut self, deadline: Instant) -> Result<(), LoadError> {
        let VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
        } = &self.spec.auth
        else {
            return Ok(());
        };
        let role_id = read_secret_file(role_id_file, "vault_role_id_file")?;
        let secret_id = read_secret_file(secret_id_file, "vault_secret_id_file")?;
        let body = login_body(&role_id, &secret_id).ok_or_else(|| LoadError::Invalid {
            reason: format!(
                "{} or {} holds characters that are not allowed in an AppRole id",
                role_id_file.display(),
                secret_id_file.display()
            ),
        })?;
        let a = self
            .http
            .call(Method::POST, &self.login_uri, None, Some(body), deadline)
            .await
            .map_err(|e| self.unreachable(e))?;
        match a.status {
            StatusCode::OK => {
                let g = parse::grant(&a.body).ok_or_else(|| LoadError::Invalid {
                    reason: "AppRole login answered without a client token".into(),
                })?;
                let ttl = (g.ttl > Duration::ZERO).then_some(g.ttl);
                tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), renewable = g.renewable, "vault AppRole login");
                self.token = Some(Token {
                    value: g.token,
                    since: Instant::now(),
                    ttl,
                    renewable: g.renewable,
                    granted: ttl,
                });
                Ok(())
            }
            StatusCode::BAD_REQUEST | StatusCode::FORBIDDEN => {
                let detail = scrub(parse::errors(&a.body), &[&role_id, &secret_id]);
                Err(LoadError::Invalid {
                    reason: format!(
                        "AppRole login refused ({}){}: check {} and {}",
                        a.status.as_u16(),
                        colon(&detail),
                        role_id_file.display(),
                        secret_id_file.display()
                    ),
                })
            }
            _ => Err(self.status_error("logging in with AppRole", &a, &[&role_id, &secret_id])),
        }
    }
}

/// `{"role_id":"…","secret_id":"…"}` built in an exactly sized zeroizing
/// buffer; `None` if either id needs JSON escaping (ids are plain tokens).
pub(super) fn login_body(role_id: &str, secret_id: &str) -> Option<Zeroizing<Vec<u8>>> {
    let plain = |s: &str| s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\');
    if !plain(role_id) || !plain(secret_id) {
        return None;
    }
    let parts: [&[u8]; 5] = [
        b"{\"role_id\":\"",
        role_id.as_bytes(),
        b"\",\"secret_id\":\"",
        secret_id.as_bytes(),
        b"\"}",
    ];
    let mut body = Zeroizing::new(Vec::with_capacity(parts.iter().map(|p| p.len()).sum()));
    for p in parts {
        body.extend_from_slice(p);
    }
    Some(body)
}

fn read_token(file: Option<&Path>) -> Result<Zeroizing<String>, LoadError> {
    match file {
        Some(p) => read_secret_file(p, "vault_token_file"),
        None => match std::env::var("VAULT_TOKEN") {
            Ok(v) if !v.trim().is_empty() => Ok(Zeroizing::new(v.trim().to_string())),
            _ => Err(LoadError::Missing {
                hint: "no Vault token: set vault_token_file, or VAULT_TOKEN in signgate's environment".into(),
            }),
        },
    }
}

/// A small file holding one token or id, trimmed, in zeroizing memory.
fn read_secret_file(path: &Path, key: &str) -> Result<Zeroizing<String>, LoadError> {
    let shown = path.display();
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => LoadError::Missing {
            hint: format!("create {shown} ({key})"),
        },
        kind => LoadError::Unreachable {
            reason: format!("cannot read {shown} ({key}): {kind}"),
        },
    })?);
    let text = std::str::from_utf8(&bytes).map_err(|_| LoadError::Invalid {
        reason: format!("{shown} ({key}) is not UTF-8 text"),
    })?;
    let value = text.trim();
    if value.is_empty() {
        return Err(LoadError::Missing {
            hint: format!("{shown} ({key}) is empty"),
        });
    }
    Ok(Zeroizing::new(value.to_string()))
}

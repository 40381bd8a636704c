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

use super::{colon, parse, scrub, VaultClient};
use crate::config::VaultAuth;
use crate::secrets::LoadError;

/// A Vault token and what is known of its lifetime.
pub(super) struct Token {
    pub(super) value: Zeroizing<String>,
    since: Instant,
    /// `None`: the token does not expire (TTL 0) or its TTL is unknown.
    ttl: Option<Duration>,
    renewable: bool,
    /// The longest TTL seen (at login, lookup or renewal): a renewal that
    /// returns less has hit the token's max TTL.
    full_ttl: Option<Duration>,
    /// AppRole: when renewal cannot extend the token, log in again.
    relogin: bool,
    /// A failed renewal was logged already (once per token).
    renew_warned: bool,
}

impl Token {
    fn new(value: Zeroizing<String>, ttl: Duration, renewable: bool, relogin: bool) -> Token {
        let ttl = (ttl > Duration::ZERO).then_some(ttl);
        Token {
            value,
            since: Instant::now(),
            ttl,
            renewable,
            full_ttl: ttl,
            relogin,
            renew_warned: false,
        }
    }

    /// When to renew or log in again: past 2/3 of the TTL, if there is
    /// anything to do then.
    pub(super) fn due(&self) -> Option<Instant> {
        if !self.renewable && !self.relogin {
            return None;
        }
        self.ttl.map(|t| self.since + t * 2 / 3)
    }

    /// Take a renewal's TTL; false if it did not extend the token to its
    /// full TTL (the max TTL is near).
    fn renewed(&mut self, ttl: Duration) -> bool {
        let full = ttl > Duration::ZERO && self.full_ttl.is_none_or(|f| ttl >= f);
        self.since = Instant::now();
        self.ttl = (ttl > Duration::ZERO).then_some(ttl);
        self.full_ttl = self.full_ttl.max(self.ttl);
        full
    }
}

impl VaultClient {
    /// Have a usable token: (re)read it for token auth, log in or renew for
    /// AppRole.
    pub(super) async fn authenticate(&mut self, deadline: Instant) -> Result<(), LoadError> {
        let due = self
            .token
            .as_ref()
            .and_then(Token::due)
            .is_some_and(|d| Instant::now() >= d);
        match self.auth.clone() {
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
                self.set_token(Some(Token::new(value, ttl, renewable, false)));
                Ok(())
            }
            VaultAuth::AppRole { .. } => {
                let Some(t) = &self.token else {
                    return self.login(deadline).await;
                };
                if !due {
                    return Ok(());
                }
                if t.renewable {
                    if let Ok(g) = self.renew(deadline).await {
                        if self.token.as_mut().is_some_and(|t| t.renewed(g.ttl)) {
                            tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), "vault token renewed");
                            return Ok(());
                        }
                    }
                }
                // Not renewable, renewal refused, or capped by the max TTL:
                // a fresh login while the current token still works.
                self.login(deadline).await
            }
        }
    }

    /// Token auth: extend the token if it can be. A failure is retried at the
    /// next refresh and shows up as the read's 403 once the token is gone.
    async fn renew_token(&mut self, deadline: Instant) {
        if !self.token.as_ref().is_some_and(|t| t.renewable) {
            return;
        }
        let result = self.renew(deadline).await;
        let Some(t) = self.token.as_mut() else {
            return;
        };
        match result {
            Ok(g) if t.renewed(g.ttl) => {
                tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), "vault token renewed");
            }
            Ok(g) => {
                // Renewing again would only shorten the wait before each poll.
                t.renewable = false;
                tracing::warn!(
                    credential = %self.name,
                    expires_in_secs = g.ttl.as_secs(),
                    "the vault token reached its max TTL and cannot be renewed: provide a new token before it expires"
                );
            }
            Err(e) if !t.renew_warned => {
                t.renew_warned = true;
                tracing::warn!(credential = %self.name, error = %e, "vault token renewal failed; retrying at the next refresh");
            }
            Err(_) => {}
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

    /// The token's remaining TTL (zero: none) and whether it is renewable.
    async fn lookup(&self, token: &str, deadline: Instant) -> Result<(Duration, bool), LoadError> {
        let a = self
            .http
            .call(Method::GET, &self.lookup_uri, Some(token), None, deadline)
            .await
            .map_err(|e| self.unreachable(e))?;
        // A token without lookup rights may still read the secret: the read decides.
        Ok(match a.status {
            StatusCode::OK => parse::lookup(&a.body).unwrap_or((Duration::ZERO, false)),
            _ => (Duration::ZERO, false),
        })
    }

    pub(super) async fn login(&mut self, deadline: Instant) -> Result<(), LoadError> {
        let VaultAuth::AppRole {
            role_id_file,
            secret_id_file,
        } = &self.auth
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
                tracing::debug!(credential = %self.name, ttl_secs = g.ttl.as_secs(), renewable = g.renewable, "vault AppRole login");
                self.set_token(Some(Token::new(g.token, g.ttl, g.renewable, true)));
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
    let (token, from) = match file {
        Some(p) => (read_secret_file(p, "vault_token_file")?, p.display().to_string()),
        None => {
            // Kept at start-up by `run` (hygiene), else the environment.
            let env = crate::secrets::env::var("VAULT_TOKEN")
                .and_then(|v| {
                    std::str::from_utf8(v.expose())
                        .ok()
                        .map(|s| Zeroizing::new(s.to_string()))
                })
                .unwrap_or_default();
            if env.trim().is_empty() {
                return Err(LoadError::Missing {
                    hint: "no Vault token: set vault_token_file, or VAULT_TOKEN in signgate's environment".into(),
                });
            }
            (Zeroizing::new(env.trim().to_string()), "VAULT_TOKEN".to_string())
        }
    };
    // It goes into a header: refuse what cannot be one, without quoting it.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(LoadError::Invalid {
            reason: format!("{from} does not hold a Vault token (unexpected characters)"),
        });
    }
    Ok(token)
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

#[cfg(test)]
mod tests {
    use super::*;

    fn token(ttl: u64, renewable: bool, relogin: bool) -> Token {
        Token::new(
            Zeroizing::new("s.unit".into()),
            Duration::from_secs(ttl),
            renewable,
            relogin,
        )
    }

    #[test]
    fn tokens_are_due_at_two_thirds_of_their_ttl_when_there_is_something_to_do() {
        let t = token(30, true, false);
        assert_eq!(t.due(), Some(t.since + Duration::from_secs(20)));
        assert_eq!(
            token(30, false, false).due(),
            None,
            "token auth cannot act on a non-renewable token"
        );
        assert!(token(30, false, true).due().is_some(), "AppRole logs in again");
        assert_eq!(token(0, true, true).due(), None, "a token without TTL never expires");
    }

    #[test]
    fn a_renewal_below_the_full_ttl_means_the_max_ttl_is_near() {
        let mut t = token(30, true, true);
        assert!(t.renewed(Duration::from_secs(30)));
        assert!(!t.renewed(Duration::from_secs(12)), "capped by the max TTL");
        assert_eq!(t.ttl, Some(Duration::from_secs(12)));
        assert_eq!(t.full_ttl, Some(Duration::from_secs(30)));
        assert!(!t.renewed(Duration::ZERO));
    }
}

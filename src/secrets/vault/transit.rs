//! `source = "vault_transit"`: the provider's secret is a Vault/OpenBao
//! Transit key of type `hmac`, and never enters the gateway.
//!
//! [`TransitSource`] is the refresh task's side: it authenticates like the
//! KV source (the same [`VaultClient`]: token or AppRole, renewal, a new
//! login on 403), reads the key's metadata (`GET {mount}/keys/{key}`: it
//! must exist and be of type `hmac`; its `latest_version` is the
//! credential's version) and the API key (an environment variable, or a
//! field of a KV v2 secret), and publishes every token it gets. When the API
//! key's KV secret also holds `transit_key_version`, that version of the key
//! signs (not the latest): the API key and the key version then change
//! together, in one KV write, so a rotation never pairs the new secret with
//! the old API key.
//!
//! [`Transit`] is the request's side, held by the loaded credential: one
//! `POST {mount}/hmac/{key}/sha2-256` per signature (`{"input": base64}`,
//! answered `vault:vN:<base64 MAC>`), one `POST {mount}/verify/{key}/sha2-256`
//! per webhook check, each under `transit_timeout_ms`. Failures are reasons
//! for a 503, never secrets; a refusal (403) or an unreachable Vault wakes
//! the refresh task, so readiness and a new login follow at once.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use http::{Method, StatusCode, Uri};
use tokio::sync::Notify;
use tokio::time::Instant;
use zeroize::Zeroizing;

use super::http::{Answer, CallError, VaultHttp};
use super::parse::{self, Field};
use super::{backoff, colon, jitter, refresh_wait, scrub, TokenCell, VaultClient, BACKOFF_JITTER, MIN_WAIT};
use crate::config::{ApiKeySource, TransitSpec};
use crate::secrets::{KeyMaterial, LoadError, Material, Poll, SecretBytes, Source};

/// Idle connections kept to Vault for a Transit credential: it is called
/// once per signed request.
const TRANSIT_POOL_IDLE: usize = 64;

/// The field of the API key's KV secret that pins the key version.
pub const VERSION_FIELD: &str = "transit_key_version";

/// The request-time side of a Transit credential (see the module doc).
#[derive(Clone)]
pub struct Transit {
    http: Arc<VaultHttp>,
    hmac_uri: Uri,
    verify_uri: Uri,
    token: Arc<TokenCell>,
    /// `{mount}/keys/{key}`, for messages.
    key: String,
    /// `vault_addr`, for messages.
    addr: String,
    timeout: Duration,
    /// Wakes the refresh task after a refusal or an outage.
    wake: Arc<Notify>,
    /// The key version that signs (`transit_key_version` of the API key's
    /// KV secret); `None`: the latest.
    pinned: Option<u64>,
}

impl std::fmt::Debug for Transit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transit")
            .field("key", &self.key)
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl Transit {
    /// `{mount}/keys/{key}` at `vault_addr`: where the HMAC is computed.
    pub fn describe(&self) -> String {
        match self.pinned {
            Some(v) => format!("{} at {}, pinned to version {v}", self.key, self.addr),
            None => format!("{} at {}", self.key, self.addr),
        }
    }

    /// The MAC of `message` with the key's latest (or pinned) version, and
    /// that version. `Err` is a reason safe for a client and a log line.
    pub async fn hmac(&self, message: &[u8]) -> Result<(u64, [u8; 32]), String> {
        let mut body = String::with_capacity(message.len().div_ceil(3) * 4 + 48);
        body.push_str("{\"input\":\"");
        base64::engine::general_purpose::STANDARD.encode_string(message, &mut body);
        body.push('"');
        if let Some(v) = self.pinned {
            body.push_str(",\"key_version\":");
            body.push_str(&v.to_string());
        }
        body.push('}');
        let a = self.call(&self.hmac_uri, body, "computing the HMAC").await?;
        parse::transit_hmac(&a.body).ok_or_else(|| {
            format!(
                "Vault Transit answered the HMAC with {} without a vault:vN: value",
                self.key
            )
        })
    }

    /// Whether `mac` is the MAC of `message` with version `version` of the key.
    pub async fn verify(&self, message: &[u8], version: u64, mac: &[u8; 32]) -> Result<bool, String> {
        let engine = &base64::engine::general_purpose::STANDARD;
        let mut body = String::with_capacity(message.len().div_ceil(3) * 4 + 96);
        body.push_str("{\"input\":\"");
        engine.encode_string(message, &mut body);
        body.push_str("\",\"hmac\":\"vault:v");
        body.push_str(&version.to_string());
        body.push(':');
        engine.encode_string(mac, &mut body);
        body.push_str("\"}");
        let a = self.call(&self.verify_uri, body, "verifying an HMAC").await?;
        parse::transit_valid(&a.body).ok_or_else(|| {
            format!(
                "Vault Transit answered the verification with {} without data.valid",
                self.key
            )
        })
    }

    /// One call under `transit_timeout_ms`, its answer if 200.
    async fn call(&self, uri: &Uri, body: String, doing: &str) -> Result<Answer, String> {
        let token = self.token.load_full();
        let Some(token) = token else {
            self.wake.notify_one();
            return Err(format!(
                "no Vault token for Transit at {} yet (see the credential's refresh errors)",
                self.addr
            ));
        };
        let deadline = Instant::now() + self.timeout;
        let body = Zeroizing::new(body.into_bytes());
        let answer = self
            .http
            .call(Method::POST, uri, Some(token.as_str()), Some(body), deadline)
            .await
            .map_err(|e| {
                self.wake.notify_one();
                match e {
                    CallError::Timeout => format!(
                        "Vault Transit at {} did not answer within {} ms (transit_timeout_ms) while {doing}",
                        self.addr,
                        self.timeout.as_millis()
                    ),
                    CallError::Unreachable(d) => format!("cannot reach Vault at {}: {d}", self.addr),
                    CallError::TooLarge => format!("Vault at {} sent an answer larger than 1 MiB", self.addr),
                }
            })?;
        if answer.status == StatusCode::OK {
            return Ok(answer);
        }
        let detail = scrub(parse::errors(&answer.body), &[token.as_str()]);
        let status = answer.status.as_u16();
        Err(match answer.status {
            StatusCode::FORBIDDEN => {
                self.wake.notify_one();
                format!(
                    "Vault refused {doing} with transit key {} (403){}: the token needs the policy for it",
                    self.key,
                    colon(&detail)
                )
            }
            StatusCode::SERVICE_UNAVAILABLE => {
                self.wake.notify_one();
                format!(
                    "Vault at {} is sealed or unavailable (503 while {doing}){}",
                    self.addr,
                    colon(&detail)
                )
            }
            _ if detail.contains("key not found") => {
                self.wake.notify_one();
                format!(
                    "transit key {} not found in Vault at {} ({status})",
                    self.key, self.addr
                )
            }
            _ => format!(
                "Vault at {} answered {status} while {doing} with transit key {}{}",
                self.addr,
                self.key,
                colon(&detail)
            ),
        })
    }
}

/// The refresh task's side of a Transit credential (see the module doc).
pub struct TransitSource {
    client: VaultClient,
    spec: TransitSpec,
    keys_uri: Uri,
    /// The KV secret holding the API key, and its `mount/path` for messages.
    api_key_kv: Option<(Uri, String)>,
    handle: Arc<Transit>,
    /// What was handed over last: (the key version that signs, the API
    /// key's KV version).
    last: Option<(u64, Option<u64>)>,
}

impl TransitSource {
    pub fn new(name: &str, spec: &TransitSpec) -> Result<TransitSource, LoadError> {
        let mut client = VaultClient::new(
            name,
            &spec.addr,
            &spec.auth,
            spec.ca_file.as_deref(),
            spec.timeout,
            TRANSIT_POOL_IDLE,
        )?;
        let token = Arc::new(TokenCell::empty());
        client.publish_to(token.clone());
        let key = format!("{}/keys/{}", spec.mount, spec.key);
        let shown = format!("transit_mount/transit_key {}/{}", spec.mount, spec.key);
        let api_key_kv = match &spec.api_key {
            ApiKeySource::Env(_) => None,
            ApiKeySource::Kv { mount, path, .. } => Some((
                client.uri(
                    &format!("{mount}/data/{path}"),
                    &format!("vault_mount/vault_path {mount}/{path}"),
                )?,
                format!("{mount}/{path}"),
            )),
        };
        let handle = Arc::new(Transit {
            http: client.http().clone(),
            hmac_uri: client.uri(&format!("{}/hmac/{}/sha2-256", spec.mount, spec.key), &shown)?,
            verify_uri: client.uri(&format!("{}/verify/{}/sha2-256", spec.mount, spec.key), &shown)?,
            token,
            key: key.clone(),
            addr: spec.addr.to_string(),
            timeout: spec.sign_timeout,
            wake: Arc::new(Notify::new()),
            pinned: None,
        });
        Ok(TransitSource {
            keys_uri: client.uri(&key, &shown)?,
            client,
            spec: spec.clone(),
            api_key_kv,
            handle,
            last: None,
        })
    }

    /// The key's latest version, checking that it can sign.
    async fn key_version(&mut self, deadline: Instant) -> Result<u64, LoadError> {
        let key = &self.handle.key;
        let a = self
            .client
            .get(&self.keys_uri, &format!("read {key}"), deadline)
            .await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(LoadError::Missing {
                    hint: format!(
                        "no transit key {key} in Vault at {}: import the provider's secret as a key of type hmac (docs/signing.md)",
                        self.spec.addr
                    ),
                })
            }
            _ => return Err(self.client.status_error(&format!("reading {key}"), &a, &[])),
        }
        let (kind, version) = parse::transit_key(&a.body).ok_or_else(|| LoadError::Invalid {
            reason: format!("{key} is not a Transit key (is {} a Transit mount?)", self.spec.mount),
        })?;
        if kind != "hmac" {
            return Err(LoadError::Invalid {
                reason: format!(
                    "transit key {key} is of type {kind}: its HMAC key is not the provider's secret; import the secret as a key of type hmac"
                ),
            });
        }
        Ok(version)
    }

    /// The API key, the key version it goes with (`transit_key_version`, if
    /// its secret names one) and the version of the KV secret it came from.
    async fn api_key(&mut self, deadline: Instant) -> Result<(SecretBytes, Option<u64>, Option<u64>), LoadError> {
        let (field, mount) = match &self.spec.api_key {
            ApiKeySource::Env(var) => {
                return match crate::secrets::env::var(var).filter(|v| !v.is_empty()) {
                    Some(v) if std::str::from_utf8(v.expose()).is_ok() => Ok((v, None, None)),
                    Some(_) => Err(LoadError::Invalid {
                        reason: format!("environment variable {var} is not valid UTF-8"),
                    }),
                    None => Err(LoadError::Missing {
                        hint: format!("set the environment variable {var} (the API key) and restart signgate"),
                    }),
                };
            }
            ApiKeySource::Kv { field, mount, .. } => (field, mount),
        };
        let Some((uri, shown)) = &self.api_key_kv else {
            return Err(LoadError::Invalid {
                reason: "no KV path for the API key".into(),
            });
        };
        let a = self.client.get(uri, &format!("read {shown}"), deadline).await?;
        match a.status {
            StatusCode::OK => {}
            StatusCode::NOT_FOUND => {
                return Err(LoadError::Missing {
                    hint: format!(
                        "no secret at {shown} in Vault at {}: put one with the field {field} (KV version 2)",
                        self.spec.addr
                    ),
                })
            }
            _ => return Err(self.client.status_error(&format!("reading {shown}"), &a, &[])),
        }
        let kv = parse::kv(&a.body, field, Some(VERSION_FIELD)).ok_or_else(|| LoadError::Invalid {
            reason: format!("{shown} is not a KV version 2 secret (is {mount} a KV v2 mount?)"),
        })?;
        // A number, or a string of digits (`bao kv put` writes strings).
        let pinned = match kv.secret {
            Field::Absent => None,
            Field::Value(v) => match std::str::from_utf8(v.expose())
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
            {
                Some(n) if n > 0 => Some(n),
                _ => {
                    return Err(LoadError::Invalid {
                        reason: format!("Vault secret {shown}: field {VERSION_FIELD} is not a key version (1, 2, …)"),
                    })
                }
            },
            Field::NotString => {
                return Err(LoadError::Invalid {
                    reason: format!(
                    "Vault secret {shown}: field {VERSION_FIELD} is not a key version (1, 2, …) written as a string"
                ),
                })
            }
        };
        match kv.api_key {
            Field::Value(v) if !v.is_empty() => Ok((v, pinned, kv.version)),
            Field::Value(_) | Field::Absent => Err(LoadError::Invalid {
                reason: format!("Vault secret {shown}: missing field {field}"),
            }),
            Field::NotString => Err(LoadError::Invalid {
                reason: format!("Vault secret {shown}: field {field} is not a string"),
            }),
        }
    }
}

impl Source for TransitSource {
    async fn poll(&mut self) -> Result<Poll, LoadError> {
        let deadline = Instant::now() + self.client.timeout;
        let latest = self.key_version(deadline).await?;
        let (api_key, pinned, kv_version) = self.api_key(deadline).await?;
        if let Some(p) = pinned.filter(|p| *p > latest) {
            return Err(LoadError::Invalid {
                reason: format!(
                    "{VERSION_FIELD} = {p}, but {} has no version {p} yet (latest {latest}): import it first (bao transit import-version)",
                    self.handle.key
                ),
            });
        }
        // With a pin, a newer version imported meanwhile changes nothing.
        let stamp = (pinned.unwrap_or(latest), kv_version);
        if self.last == Some(stamp) {
            return Ok(Poll::Unchanged);
        }
        let mut handle = Transit::clone(&self.handle);
        handle.pinned = pinned;
        let material = Material {
            api_key,
            key: KeyMaterial::Transit(Arc::new(handle)),
            version: Some(pinned.unwrap_or(latest)),
        };
        crate::secrets::Credential::from_material(&self.client.name, &material)?;
        self.last = Some(stamp);
        Ok(Poll::Changed(material))
    }

    fn next_poll(&self, last_ok: bool, failures: u32) -> Option<Duration> {
        if !last_ok {
            let b = backoff(failures, self.spec.refresh);
            return Some(jitter(b, BACKOFF_JITTER).max(MIN_WAIT));
        }
        Some(refresh_wait(self.spec.refresh, self.client.token_due()))
    }

    fn forget(&mut self) {
        self.last = None;
    }

    fn wake(&self) -> Option<Arc<Notify>> {
        Some(self.handle.wake.clone())
    }

    fn signs_remotely(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transit_answers_are_parsed_strictly() {
        let (v, mac) =
            parse::transit_hmac(br#"{"data":{"hmac":"vault:v3:4ebKQ4ALqIuuXtXZtKCW8Bk3b1VmB81eWhjl/6ghPfs="}}"#)
                .unwrap();
        assert_eq!(v, 3);
        assert_eq!(
            base64::engine::general_purpose::STANDARD.encode(mac),
            "4ebKQ4ALqIuuXtXZtKCW8Bk3b1VmB81eWhjl/6ghPfs="
        );
        for bad in [
            &br#"{"data":{"hmac":"vault:v:4ebKQ4ALqIuuXtXZtKCW8Bk3b1VmB81eWhjl/6ghPfs="}}"#[..],
            br#"{"data":{"hmac":"vault:v1:4ebKQ4ALqIuu"}}"#,
            br#"{"data":{"hmac":"v1:4ebKQ4ALqIuuXtXZtKCW8Bk3b1VmB81eWhjl/6ghPfs="}}"#,
            br#"{"data":{"hmac":"vault:v-1:4ebKQ4ALqIuuXtXZtKCW8Bk3b1VmB81eWhjl/6ghPfs="}}"#,
            br#"{"data":{}}"#,
            b"<html>",
        ] {
            assert!(parse::transit_hmac(bad).is_none(), "{}", String::from_utf8_lossy(bad));
        }
        assert_eq!(parse::transit_valid(br#"{"data":{"valid":true}}"#), Some(true));
        assert_eq!(parse::transit_valid(br#"{"data":{"valid":false}}"#), Some(false));
        assert_eq!(parse::transit_valid(br#"{"errors":["x"]}"#), None);
        assert_eq!(
            parse::transit_key(br#"{"data":{"type":"hmac","latest_version":2,"keys":{}}}"#),
            Some(("hmac".to_string(), 2))
        );
    }
}

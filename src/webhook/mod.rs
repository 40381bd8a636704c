//! The webhook receiver: verifies the provider's signed events and hands only
//! genuine, de-duplicated ones to the internal app.
//!
//! `POST` on a webhook's exact `match_path`: the signature (`X-SIGNATURE`) is
//! checked in constant time over the raw body + `X-TIMESTAMP` with the
//! credential's secret (and the previous version during a rotation grace);
//! `verify_canonical` also accepts a signature over the canonical
//! re-encoding. Then the timestamp must be within `tolerance_secs` (replays),
//! the body must be JSON, and the event key (values at `dedup_keys`) must be
//! new within the window. A new event is committed to the on-disk inbox and
//! only then acknowledged with 200; [`deliver`] forwards it later. Refusals:
//! 401 `bad_signature`, 401 `stale_timestamp`, 400 `invalid_json`.

pub mod deliver;
pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;

use crate::allowlist::Allowlist;
use crate::canonical;
use crate::config::WebhookConfig;
use crate::proxy::GatewayError;
use crate::secrets::{Credential, CredentialSlot};
use crate::sign::{MessageInput, Scheme, TimestampUnit};
use store::{Accepted, Store};

/// A configured webhook, resolved against the snapshot's schemes and credentials.
pub struct Hook {
    pub config: WebhookConfig,
    pub scheme: Arc<Scheme>,
    pub credential: Arc<CredentialSlot>,
    /// `webhook.allow`, else `None` (then `[access].allow` applies).
    pub allow: Option<Allowlist>,
}

impl Hook {
    pub fn name(&self) -> &str {
        &self.config.name
    }
}

/// What the receiver decided (also the `result` metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Accepted(u64),
    Duplicate,
}

impl Outcome {
    pub fn label(self) -> &'static str {
        match self {
            Outcome::Accepted(_) => "accepted",
            Outcome::Duplicate => "duplicate",
        }
    }
}

/// The `result` label for a refused webhook.
pub fn refusal_label(e: &GatewayError) -> &'static str {
    match e {
        GatewayError::BadSignature => "bad_signature",
        GatewayError::StaleTimestamp => "stale",
        GatewayError::InvalidJson { .. } => "invalid_json",
        _ => "error",
    }
}

/// The credentials a signature may be made with now: the current one, and
/// the one a rotation replaced less than `grace` ago.
fn candidates(slot: &CredentialSlot, grace: Duration) -> Vec<Arc<Credential>> {
    let mut out = Vec::with_capacity(2);
    if let Ok(c) = slot.get() {
        out.push(c);
    }
    if let Some((prev, replaced_at)) = slot.previous() {
        if replaced_at.elapsed().is_ok_and(|age| age <= grace) {
            out.push(prev);
        }
    }
    out
}

/// The signature and timestamp headers of `scheme`, if both are present and
/// visible ASCII; otherwise the request is refused as `bad_signature`.
pub fn signed_headers<'h>(scheme: &Scheme, headers: &'h HeaderMap) -> Option<(&'h str, &'h str)> {
    let header = |name| headers.get(name).and_then(|v| v.to_str().ok());
    Some((header(&scheme.signature_header)?, header(&scheme.timestamp_header)?))
}

/// The checks of [`receive`] that need no I/O: the signature, then the
/// timestamp's freshness. Pure (the clock is passed in), so it can be fuzzed.
pub struct Verifier<'a> {
    pub scheme: &'a Scheme,
    pub config: &'a WebhookConfig,
    /// The credentials a signature may be made with: the current one, and the
    /// one a rotation replaced within the grace period.
    pub creds: &'a [Arc<Credential>],
}

impl Verifier<'_> {
    /// `Ok` for a genuine, fresh event; `bad_signature`, `stale_timestamp`,
    /// or `invalid_json` (a genuine signature over a body that is not JSON).
    pub fn verify(&self, signature: &str, timestamp: &str, raw: &[u8], now: SystemTime) -> Result<(), GatewayError> {
        let scheme = self.scheme;
        let with_key = |c: &Credential, body: &[u8]| {
            let input = MessageInput {
                api_key: c.api_key().as_bytes(),
                timestamp,
                method: "POST",
                path: &self.config.match_path,
                query: "",
                body,
            };
            scheme.verify(c.mac(), &input, signature.as_bytes())
        };
        // The raw bytes first, as the provider's rule says; the canonical
        // re-encoding only when configured (the provider's own sample re-encodes).
        let mut valid = self.creds.iter().any(|c| with_key(c, raw));
        let canonical = match canonical::canonicalize(raw, &scheme.canonical) {
            Ok(c) => Some(c),
            Err(e) if valid => {
                return Err(GatewayError::InvalidJson {
                    offset: e.offset,
                    reason: e.reason,
                })
            }
            Err(_) => None,
        };
        if !valid && self.config.verify_canonical {
            if let Some(c) = &canonical {
                valid = self.creds.iter().any(|cred| with_key(cred, c));
            }
        }
        if !valid {
            return Err(GatewayError::BadSignature);
        }
        // Genuine but old or from the future: a replay or a broken clock.
        let ts: u64 = timestamp.parse().map_err(|_| GatewayError::StaleTimestamp)?;
        let ts_secs = match scheme.timestamp_unit {
            TimestampUnit::Seconds => ts,
            TimestampUnit::Millis => ts / 1000,
        };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(ts_secs) > self.config.tolerance.as_secs() {
            return Err(GatewayError::StaleTimestamp);
        }
        Ok(())
    }
}

/// Verify, check freshness, de-duplicate and persist one webhook body.
pub async fn receive(
    hook: &Hook,
    store: &Arc<Store>,
    headers: &HeaderMap,
    raw: Bytes,
) -> Result<Outcome, GatewayError> {
    let Some((signature, timestamp)) = signed_headers(&hook.scheme, headers) else {
        return Err(GatewayError::BadSignature);
    };
    let creds = candidates(&hook.credential, hook.config.rotation_grace);
    if creds.is_empty() {
        return Err(GatewayError::CredentialUnavailable {
            credential: hook.config.credential.clone(),
            hint: hook.credential.get().err().unwrap_or_default(),
        });
    }
    let verifier = Verifier {
        scheme: &hook.scheme,
        config: &hook.config,
        creds: &creds,
    };
    let verified_at = SystemTime::now();
    verifier.verify(signature, timestamp, &raw, verified_at)?;
    let verified_at = verified_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let Ok(body) = std::str::from_utf8(&raw) else {
        return Err(GatewayError::InvalidJson {
            offset: 0,
            reason: "invalid UTF-8",
        });
    };
    let key = event_key(hook, &raw);
    let (store, name, window) = (
        store.clone(),
        hook.name().to_string(),
        hook.config.dedup_window.as_secs(),
    );
    let (ts, body) = (timestamp.to_string(), body.to_string());
    // The commit fsyncs: keep it off the async workers.
    let accepted = tokio::task::spawn_blocking(move || store.accept(&name, &key, &ts, &body, window, verified_at))
        .await
        .map_err(|_| GatewayError::Internal)?
        .map_err(|e| {
            tracing::error!(error = %e, "webhook event could not be stored");
            GatewayError::Internal
        })?;
    Ok(match accepted {
        Accepted::New(id) => Outcome::Accepted(id),
        Accepted::Duplicate => Outcome::Duplicate,
    })
}

/// `webhook|v1|v2|…` from the values at the configured JSON pointers
/// (strings as themselves, other values as JSON text, absent as `-`).
pub fn event_key(hook: &Hook, body: &[u8]) -> String {
    let v: serde_json::Value = serde_json::from_slice(body).unwrap_or(serde_json::Value::Null);
    let mut key = hook.name().to_string();
    for p in &hook.config.dedup_keys {
        key.push('|');
        match v.pointer(p) {
            Some(serde_json::Value::String(s)) => key.push_str(s),
            Some(serde_json::Value::Null) | None => key.push('-'),
            Some(other) => key.push_str(&other.to_string()),
        }
    }
    key
}

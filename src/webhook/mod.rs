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
//!
//! A `vault_transit` credential has no secret in the gateway: its signatures
//! are checked by Vault (`POST {mount}/verify/{key}/sha2-256` with
//! `vault:vN:` + the received MAC, N the credential's key version), in the
//! same order and with the same verdicts ([`verify_remote`]); a Vault that
//! cannot answer makes the event `503 credential_unavailable`, and the
//! provider sends it again.

pub mod store;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::HeaderMap;
use sha2::Digest as _;

use crate::allowlist::Allowlist;
use crate::canonical;
use crate::config::WebhookConfig;
use crate::fleet::{Claimed, Fleet, Source};
use crate::secrets::{Credential, CredentialSlot, Key, Unavailable};
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

/// Why the receiver refused an event. The request pipeline turns it into
/// its HTTP answer; the receiver knows nothing of HTTP responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// No valid signature (or the headers are missing).
    BadSignature,
    /// A genuine signature but a timestamp outside `tolerance_secs`.
    StaleTimestamp,
    /// A signature the gateway itself produced for an outbound request.
    ReflectedSignature,
    /// A genuine signature over a body that is not acceptable JSON.
    InvalidJson { offset: usize, reason: &'static str },
    /// No secret to verify with yet.
    CredentialUnavailable(crate::secrets::Unavailable),
    /// The inbox could not store the event (logged; the provider retries).
    Store,
    /// With `[fleet]`: another instance is storing this very event and has
    /// not finished yet (503; the provider's retry finds it stored).
    InProgress,
    /// With `[fleet]`: the webhook's secret also signs outbound requests and
    /// Redis cannot say whether another instance sent this signature (503;
    /// the provider retries later).
    ReflectionUnknown,
}

impl Refusal {
    /// The `result` label of `signgate_webhooks_total`.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::BadSignature => "bad_signature",
            Refusal::StaleTimestamp => "stale",
            Refusal::ReflectedSignature => "reflected_signature",
            Refusal::InvalidJson { .. } => "invalid_json",
            Refusal::CredentialUnavailable(_) | Refusal::Store => "error",
            Refusal::InProgress => "in_progress",
            Refusal::ReflectionUnknown => "reflection_unknown",
        }
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
    pub fn verify(&self, signature: &str, timestamp: &str, raw: &[u8], now: SystemTime) -> Result<(), Refusal> {
        let scheme = self.scheme;
        let with_key = |c: &Credential, body: &[u8]| {
            let input = self.input(c, timestamp, body);
            // A Transit credential is checked by `verify_remote`, never here.
            c.mac()
                .is_some_and(|mac| scheme.verify(mac, &input, signature.as_bytes()))
        };
        // The raw bytes first, as the provider's rule says; the canonical
        // re-encoding only when configured (the provider's own sample re-encodes).
        let mut valid = self.creds.iter().any(|c| with_key(c, raw));
        let canonical = canonical_form(raw, &scheme.canonical, valid)?;
        if !valid && self.config.verify_canonical {
            if let Some(c) = &canonical {
                valid = self.creds.iter().any(|cred| with_key(cred, c));
            }
        }
        if !valid {
            return Err(Refusal::BadSignature);
        }
        self.fresh(timestamp, now)
    }

    /// A genuine timestamp must still be within `tolerance_secs`.
    fn fresh(&self, timestamp: &str, now: SystemTime) -> Result<(), Refusal> {
        let scheme = self.scheme;
        // Genuine but old or from the future: a replay or a broken clock.
        let ts: u64 = timestamp.parse().map_err(|_| Refusal::StaleTimestamp)?;
        let ts_secs = match scheme.timestamp_unit {
            TimestampUnit::Seconds => ts,
            TimestampUnit::Millis => ts / 1000,
        };
        let now = now.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
        if now.abs_diff(ts_secs) > self.config.tolerance.as_secs() {
            return Err(Refusal::StaleTimestamp);
        }
        Ok(())
    }
}

impl<'a> Verifier<'a> {
    fn input<'b>(&'b self, c: &'b Credential, timestamp: &'b str, body: &'b [u8]) -> MessageInput<'b> {
        MessageInput {
            api_key: c.api_key().as_bytes(),
            timestamp,
            method: "POST",
            path: &self.config.match_path,
            query: "",
            body,
        }
    }

    /// [`Verifier::verify`] for candidates among which one signs in Vault
    /// Transit: the same checks in the same order, each signature check a
    /// call to Vault's verify endpoint (local candidates still verify in
    /// memory). A Vault that cannot answer is `CredentialUnavailable`.
    pub async fn verify_remote(
        &self,
        signature: &str,
        timestamp: &str,
        raw: &[u8],
        now: SystemTime,
    ) -> Result<(), Refusal> {
        // Undecodable (not hex, wrong length): a mismatch, Vault unasked.
        let Some(mac) = self.scheme.decode(signature.as_bytes()) else {
            return Err(Refusal::BadSignature);
        };
        let mut valid = self.any_valid(signature, &mac, timestamp, raw).await?;
        let canonical = canonical_form(raw, &self.scheme.canonical, valid)?;
        if !valid && self.config.verify_canonical {
            if let Some(c) = &canonical {
                valid = self.any_valid(signature, &mac, timestamp, c).await?;
            }
        }
        if !valid {
            return Err(Refusal::BadSignature);
        }
        self.fresh(timestamp, now)
    }

    /// Whether one candidate made `mac` over this body.
    async fn any_valid(&self, signature: &str, mac: &[u8; 32], timestamp: &str, body: &[u8]) -> Result<bool, Refusal> {
        for c in self.creds {
            let input = self.input(c, timestamp, body);
            let valid = match c.key() {
                Key::Local(keyed) => self.scheme.verify(keyed, &input, signature.as_bytes()),
                Key::Transit(t) => {
                    let Some(version) = c.version() else { continue };
                    t.verify(&self.scheme.message_bytes(&input), version, mac)
                        .await
                        .map_err(|reason| {
                            Refusal::CredentialUnavailable(Unavailable {
                                credential: c.name().to_string(),
                                expired: false,
                                reason,
                            })
                        })?
                }
            };
            if valid {
                return Ok(true);
            }
        }
        Ok(false)
    }
}

/// Verify, check freshness, de-duplicate and persist one webhook body. With
/// `fleet`, the event key is claimed in Redis first (see [`fleet_dedup`]);
/// the answer says where the de-duplication decision came from.
pub async fn receive(
    hook: &Hook,
    store: &Arc<Store>,
    headers: &HeaderMap,
    raw: Bytes,
    fleet: Option<&Arc<Fleet>>,
) -> Result<(Outcome, Option<Source>), Refusal> {
    let Some((signature, timestamp)) = signed_headers(&hook.scheme, headers) else {
        return Err(Refusal::BadSignature);
    };
    let creds = candidates(&hook.credential, hook.config.rotation_grace);
    if creds.is_empty() {
        return Err(match hook.credential.get() {
            Err(why) => Refusal::CredentialUnavailable(why),
            Ok(_) => Refusal::BadSignature,
        });
    }
    let verifier = Verifier {
        scheme: &hook.scheme,
        config: &hook.config,
        creds: &creds,
    };
    let verified_at = SystemTime::now();
    if creds.iter().any(|c| c.transit().is_some()) {
        verifier.verify_remote(signature, timestamp, &raw, verified_at).await?;
    } else {
        verifier.verify(signature, timestamp, &raw, verified_at)?;
    }
    let verified_at = verified_at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs();
    let Ok(body) = std::str::from_utf8(&raw) else {
        return Err(Refusal::InvalidJson {
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
    let event = Event {
        webhook: name,
        key,
        timestamp: timestamp.to_string(),
        body: body.to_string(),
        window_secs: window,
        verified_at,
    };
    match fleet {
        None => Ok((store_event(store, event, false).await?, None)),
        Some(f) => {
            // Claim, store and commit run as a task of their own: a provider
            // that hangs up half-way cannot leave the claim and the inbox
            // disagreeing.
            let task = fleet_dedup(f.clone(), store, event, hook.config.dedup_window);
            f.tasks().spawn(task).await.map_err(|_| Refusal::Store)?
        }
    }
}

/// One verified event on its way to the inbox.
struct Event {
    webhook: String,
    key: String,
    timestamp: String,
    body: String,
    window_secs: u64,
    verified_at: u64,
}

/// Commit the event to the inbox (fsync), off the async workers.
async fn store_event(store: Arc<Store>, ev: Event, dedup_local: bool) -> Result<Outcome, Refusal> {
    let accepted = tokio::task::spawn_blocking(move || {
        store.accept(
            &ev.webhook,
            &ev.key,
            &ev.timestamp,
            &ev.body,
            ev.window_secs,
            ev.verified_at,
            dedup_local,
        )
    })
    .await
    .map_err(|_| Refusal::Store)?
    .map_err(|e| {
        tracing::error!(error = %e, "webhook event could not be stored");
        Refusal::Store
    })?;
    Ok(match accepted {
        Accepted::New(id) => Outcome::Accepted(id),
        Accepted::Duplicate => Outcome::Duplicate,
    })
}

/// How long a claim on an event key lives while its instance stores it.
const SEEN_PENDING_TTL: Duration = Duration::from_secs(30);
/// How long an instance waits for another one that is storing the same event.
const SEEN_WAIT: Duration = Duration::from_secs(2);
const SEEN_POLL: Duration = Duration::from_millis(20);
/// The value of a stored event's key.
const SEEN_STORED: &str = "c";

/// The fleet's de-duplication: the event key `{PREFIX:wh:WEBHOOK}:HASH` is
/// claimed (`p:INSTANCE:TOKEN`, 30 s), the event is committed to this
/// instance's inbox, then the key is marked stored (`c`) for the window.
/// An instance that finds the key stored answers `duplicate`; one that finds
/// it claimed waits up to 2 s for it to be stored (then `duplicate`), else
/// refuses 503 so the provider retries. A failed commit releases the claim.
/// Redis not answering: the inbox alone de-duplicates (`Source::Local`).
async fn fleet_dedup(
    fleet: Arc<Fleet>,
    store: Arc<Store>,
    ev: Event,
    window: Duration,
) -> Result<(Outcome, Option<Source>), Refusal> {
    let key = fleet.key_seen(&ev.webhook, &ev.key);
    let ours = format!("p:{}", fleet.token());
    let waited = std::time::Instant::now();
    loop {
        match fleet.claim("webhook_seen", &key, &ours, SEEN_PENDING_TTL).await {
            Ok(Claimed::Ours) => break,
            Ok(Claimed::Held(v)) if v == SEEN_STORED => return Ok((Outcome::Duplicate, Some(Source::Redis))),
            Ok(Claimed::Held(_)) if waited.elapsed() < SEEN_WAIT => tokio::time::sleep(SEEN_POLL).await,
            Ok(Claimed::Held(_)) => return Err(Refusal::InProgress),
            Err(_) => {
                fleet.fallback("webhook_local");
                return Ok((store_event(store, ev, true).await?, Some(Source::Local)));
            }
        }
    }
    match store_event(store, ev, false).await {
        Ok(outcome) => {
            if fleet
                .settle("webhook_seen", &key, &ours, Some(SEEN_STORED), window)
                .await
                .is_err()
            {
                // Stored here; mark it for the others as soon as Redis takes it.
                let f = fleet.clone();
                fleet.spawn(async move {
                    let deadline = std::time::Instant::now() + SEEN_PENDING_TTL;
                    while f
                        .settle("webhook_seen", &key, &ours, Some(SEEN_STORED), window)
                        .await
                        .is_err()
                        && std::time::Instant::now() < deadline
                    {
                        tokio::time::sleep(Duration::from_millis(250)).await;
                    }
                });
            }
            Ok((outcome, Some(Source::Redis)))
        }
        Err(refusal) => {
            let _ = fleet.settle("webhook_seen", &key, &ours, None, window).await;
            Err(refusal)
        }
    }
}

/// The event's de-duplication key: `webhook|` then the canonical JSON
/// array of the values at `dedup_keys`, each wrapped so that a present value
/// `v` is `[v]` and an absent one is `[]` (absent, `null` and `"-"` stay
/// three different things; `"1"` and `1` stay two; no separator can be
/// forged from inside a value). An event that has none of the fields is
/// keyed by the SHA-256 of its canonical body instead — never by a constant,
/// which would answer every later such event "duplicate".
pub fn event_key(hook: &Hook, body: &[u8]) -> String {
    let opts = &hook.scheme.canonical;
    let mut parts = Vec::with_capacity(hook.config.dedup_keys.len());
    for p in &hook.config.dedup_keys {
        match canonical::pointer(body, p).and_then(|v| canonical::canonicalize(v.as_bytes(), opts).ok()) {
            Some(v) => {
                let mut item = Vec::with_capacity(v.len() + 2);
                item.push(b'[');
                item.extend_from_slice(&v);
                item.push(b']');
                parts.push(Some(item));
            }
            None => parts.push(None),
        }
    }
    let mut key = hook.name().to_string();
    key.push('|');
    if parts.iter().all(Option::is_none) {
        let canon = canonical::canonicalize(body, opts).unwrap_or_else(|_| body.to_vec());
        key.push_str("sha256:");
        key.push_str(&hex::encode(sha2::Sha256::digest(&canon)));
        return key;
    }
    let mut array = Vec::new();
    array.push(b'[');
    for (i, part) in parts.iter().enumerate() {
        if i > 0 {
            array.push(b',');
        }
        match part {
            Some(item) => array.extend_from_slice(item),
            None => array.extend_from_slice(b"[]"),
        }
    }
    array.push(b']');
    key.push_str(&String::from_utf8_lossy(&array));
    key
}

/// The body's canonical form, for a signature made over it and for the
/// inbox. Not JSON: a refusal if the raw bytes were signed validly (a
/// genuine event must be JSON), else `None` (the signature decides).
fn canonical_form(raw: &[u8], opts: &canonical::Options, valid: bool) -> Result<Option<Vec<u8>>, Refusal> {
    match canonical::canonicalize(raw, opts) {
        Ok(c) => Ok(Some(c)),
        Err(e) if valid => Err(Refusal::InvalidJson {
            offset: e.offset,
            reason: e.reason,
        }),
        Err(_) => Ok(None),
    }
}

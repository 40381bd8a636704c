//! The webhook branch of the pipeline: the provider's events come in on a
//! `[[webhook]]` path and take the same admission steps as a request (the
//! webhook's own allowlist, POST only, the client and global limits, the
//! bounded body), then the receiver: verify, freshness, de-duplication,
//! the durable inbox, 200.

use std::sync::Arc;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::request::Parts;
use http::{HeaderValue, Method, Response, StatusCode};

use super::response::ResponseBody;
use super::scope::Scope;
use super::{steps, GatewayError};
use crate::reflect::Seen;
use crate::webhook::{self, Hook, Outcome};

/// Admit, read and hand one event to the receiver; answer the provider.
pub(super) async fn receive(
    scope: &mut Scope,
    hook: &Arc<Hook>,
    parts: &Parts,
) -> Result<Response<ResponseBody>, GatewayError> {
    scope.rec.webhook = Some(hook.clone());
    let result = admit_and_receive(scope, hook, parts).await;
    let label = match &result {
        Ok(outcome) => outcome.label(),
        Err(Refused::Receiver(r)) => r.label(),
        Err(Refused::Admission(_)) => "error",
    };
    let metrics = scope.shared.metrics();
    metrics.webhooks.with_label_values(&[hook.name(), label]).inc();
    let body = match result? {
        Outcome::Accepted(id) => {
            scope.shared.wake_delivery();
            serde_json::json!({"status": "accepted", "id": id})
        }
        Outcome::Duplicate => serde_json::json!({"status": "duplicate"}),
    };
    let mut resp = ResponseBody::local(StatusCode::OK, Bytes::from(body.to_string()));
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(resp)
}

/// Refused by a shared admission step, or by the receiver itself.
enum Refused {
    Admission(GatewayError),
    Receiver(webhook::Refusal),
}

impl From<GatewayError> for Refused {
    fn from(e: GatewayError) -> Self {
        Refused::Admission(e)
    }
}

impl From<Refused> for GatewayError {
    fn from(r: Refused) -> Self {
        match r {
            Refused::Admission(e) => e,
            Refused::Receiver(r) => r.into(),
        }
    }
}

/// A signature this gateway produced (an outbound request replayed as an
/// event) is refused whatever else it would verify as. With `[fleet]`, one
/// any instance produced.
async fn not_reflected(scope: &mut Scope, hook: &Hook, parts: &Parts) -> Result<(), webhook::Refusal> {
    let Some((signature, _)) = webhook::signed_headers(&hook.scheme, &parts.headers) else {
        return Ok(());
    };
    let Some(mac) = hook.scheme.decode(signature.as_bytes()) else {
        return Ok(());
    };
    let (seen, source) = scope.shared.reflections().seen_by_fleet(&mac).await;
    if let Some(source) = source {
        scope.rec.note_fleet(source);
    }
    match seen {
        Seen::Yes => {}
        Seen::No => return Ok(()),
        // Redis cannot say whether another instance sent it. A secret that
        // also signs outbound requests fails closed (the provider retries
        // later); one of the webhook's own cannot carry our signatures.
        Seen::Unknown => {
            let fleet = scope.shared.fleet();
            if scope.snap.hook_shares_secret(hook) {
                fleet.inspect(|f| f.fallback("reflection_refused"));
                tracing::warn!(
                    request_id = scope.rid.as_str(),
                    webhook = hook.name(),
                    "webhook refused for now: Redis cannot say whether another instance sent this signature, and the webhook's secret also signs outbound requests"
                );
                return Err(webhook::Refusal::ReflectionUnknown);
            }
            fleet.inspect(|f| f.fallback("reflection_local"));
            return Ok(());
        }
    }
    tracing::warn!(
        request_id = scope.rid.as_str(),
        webhook = hook.name(),
        client = %scope.conn.peer,
        "webhook refused: it carries a signature this gateway produced for an outbound request"
    );
    Err(webhook::Refusal::ReflectedSignature)
}

async fn admit_and_receive(scope: &mut Scope, hook: &Hook, parts: &Parts) -> Result<Outcome, Refused> {
    // Webhooks come from the provider, not from internal callers: their own
    // allowlist applies (default `[access].allow`).
    let allow = hook.allow.as_ref().unwrap_or(&scope.snap.access);
    steps::peer_allowed(scope, allow)?;
    if parts.method != Method::POST {
        return Err(GatewayError::MethodNotAllowed {
            route: hook.name().to_string(),
            allowed: "POST".into(),
        }
        .into());
    }
    steps::limit(scope, None).await?;
    let raw = steps::read_body(scope, parts).await?;
    not_reflected(scope, hook, parts).await.map_err(Refused::Receiver)?;
    let inbox = scope.shared.inbox().ok_or(GatewayError::Internal)?.clone();
    let fleet = scope.shared.fleet().cloned();
    let (outcome, source) = webhook::receive(hook, &inbox, &parts.headers, raw.clone(), fleet.as_ref())
        .await
        .map_err(Refused::Receiver)?;
    if let Some(source) = source {
        scope.rec.note_fleet(source);
    }
    scope.rec.duplicate_key = Some(webhook::event_key(hook, &raw));
    Ok(outcome)
}

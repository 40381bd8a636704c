//! What one request did: the [`Record`] the steps fill in, and how it
//! becomes metrics and one audit record (allowed or denied, never the body,
//! the secret or the signature itself).

use std::sync::Arc;
use std::time::{Instant, SystemTime};

use http::header::CONTENT_LENGTH;
use http::{HeaderValue, Method, Response, StatusCode};

use super::response::ResponseBody;
use super::{GatewayError, RequestId};
use crate::audit::{redact_query, AuditLog, Entry};
use crate::listener::ConnInfo;
use crate::router::Route;
use crate::secrets::CredentialSlot;
use crate::state::Shared;
use crate::trace::{Outcome, RequestTrace};
use crate::webhook::Hook;

/// What happened to one request: filled in by the steps, then turned into
/// metrics by [`count`] and one audit record by [`audit_entry`].
pub(super) struct Record {
    pub started: Instant,
    pub route: Option<Arc<Route>>,
    pub webhook: Option<Arc<Hook>>,
    pub method: Method,
    /// The request target as received (a cheap, shared clone).
    pub uri: http::Uri,
    pub bytes_in: u64,
    pub upstream_status: Option<u16>,
    /// The credential chosen for the caller (`steps::pick_credential`).
    pub credential: Option<Arc<CredentialSlot>>,
    pub credential_version: Option<u64>,
    pub signature_fingerprint: Option<String>,
    pub duplicate_key: Option<String>,
    /// With `[fleet]`: where the shared decisions came from.
    pub fleet: Option<crate::fleet::Source>,
    /// The upstream exchange's failure, if it failed.
    pub upstream_error: Option<&'static str>,
    /// A route with `amount_guard`: the payout's amount (decimal text with
    /// the route's `minor_units`) and currency, once read.
    pub amount: Option<String>,
    pub currency: Option<String>,
}

impl Record {
    /// Note a decision's source: once any fell back, the record says `local`.
    pub fn note_fleet(&mut self, source: crate::fleet::Source) {
        if self.fleet != Some(crate::fleet::Source::Local) {
            self.fleet = Some(source);
        }
    }

    pub fn new(method: Method, uri: http::Uri) -> Record {
        Record {
            started: Instant::now(),
            route: None,
            webhook: None,
            method,
            uri,
            bytes_in: 0,
            upstream_status: None,
            credential: None,
            credential_version: None,
            signature_fingerprint: None,
            duplicate_key: None,
            fleet: None,
            upstream_error: None,
            amount: None,
            currency: None,
        }
    }
}

/// The `route` label: the route or webhook name, or `none`.
pub(super) fn route_label(rec: &Record) -> &str {
    match (&rec.route, &rec.webhook) {
        (Some(r), _) => r.name(),
        (None, Some(h)) => h.name(),
        (None, None) => crate::metrics::NO_ROUTE,
    }
}

/// Count the request: status, duration, and the refusal reason.
pub(super) fn count(shared: &Shared, rec: &Record, status: StatusCode, error: Option<&GatewayError>) {
    let m = shared.metrics();
    let route = route_label(rec);
    match &rec.route {
        // The route's series, resolved when its snapshot was built.
        Some(r) => {
            r.metrics.answered(&rec.method, status);
            r.metrics.request_duration.observe(rec.started.elapsed().as_secs_f64());
        }
        None => {
            m.requests
                .with_label_values(&[route, crate::metrics::method_label(&rec.method), status.as_str()])
                .inc();
            m.request_duration
                .with_label_values(&[route])
                .observe(rec.started.elapsed().as_secs_f64());
        }
    }
    if let Some(e) = error {
        m.denied.with_label_values(&[route, e.code()]).inc();
        if let GatewayError::Upstream(kind) = e {
            m.upstream_errors.with_label_values(&[route, kind.kind()]).inc();
        }
    }
}

/// End the request's trace (`[tracing]`): its spans are exported or dropped
/// together, by the head decision or because the request is an error.
pub(super) fn trace(
    shared: &Shared,
    trace: Option<RequestTrace>,
    rec: &Record,
    rid: &RequestId,
    status: StatusCode,
    error: Option<&GatewayError>,
) {
    let (Some(trace), Some(tracer)) = (trace, shared.tracer()) else {
        return;
    };
    tracer.end(
        trace,
        &Outcome {
            method: crate::metrics::method_label(&rec.method),
            route: route_label(rec),
            status: status.as_u16(),
            request_id: rid.as_str(),
            code: error.map(GatewayError::code),
            upstream_status: rec.upstream_status,
            sent: rec.signature_fingerprint.is_some(),
        },
    );
}

/// The audit record of an answered request.
pub(super) fn audit_entry(
    rec: &Record,
    rid: &RequestId,
    conn: &ConnInfo,
    resp: &Response<ResponseBody>,
    error: Option<&GatewayError>,
    log: &AuditLog,
) -> Entry {
    let bytes_out = resp
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    entry(rec, rid, conn, resp.status(), error, bytes_out, log)
}

pub(super) fn entry(
    rec: &Record,
    rid: &RequestId,
    conn: &ConnInfo,
    status: StatusCode,
    error: Option<&GatewayError>,
    bytes_out: Option<u64>,
    log: &AuditLog,
) -> Entry {
    let path = match rec.uri.query() {
        Some(q) if !q.is_empty() => format!("{}?{}", rec.uri.path(), redact_query(q, log.redact_keys())),
        _ => rec.uri.path().to_string(),
    };
    Entry {
        time: crate::audit::now_rfc3339(),
        request_id: rid.as_str().to_string(),
        client: conn.peer,
        route: rec
            .route
            .as_ref()
            .map(|r| r.name().to_string())
            .or_else(|| rec.webhook.as_ref().map(|h| h.name().to_string())),
        method: rec.method.as_str().to_string(),
        path,
        decision: if error.is_some() { "denied" } else { "allowed" },
        reason: error.map(GatewayError::code),
        status: status.as_u16(),
        upstream_status: rec.upstream_status,
        duration_ms: rec.started.elapsed().as_secs_f64() * 1000.0,
        bytes_in: rec.bytes_in,
        bytes_out,
        credential: rec
            .credential
            .as_ref()
            .map(|slot| slot.name().to_string())
            .or_else(|| {
                rec.route
                    .as_ref()
                    .and_then(|r| r.config.credential.single().map(str::to_string))
            })
            .or_else(|| rec.webhook.as_ref().map(|h| h.config.credential.clone())),
        secret_version: rec.credential_version,
        signature_fp: rec.signature_fingerprint.clone(),
        duplicate_key: rec.duplicate_key.clone(),
        fleet: rec.fleet.map(crate::fleet::Source::label),
        upstream_error: rec.upstream_error,
        note: None,
        amount: rec.amount.clone(),
        currency: rec.currency.clone(),
    }
}

/// Provider `Date` minus the local clock, in seconds (1 s resolution). A
/// drifting host clock is the usual cause of sudden 401 stale-timestamp errors.
pub(super) fn clock_skew(date: &HeaderValue) -> Option<f64> {
    let theirs = httpdate::parse_http_date(date.to_str().ok()?).ok()?;
    let now = SystemTime::now();
    Some(match theirs.duration_since(now) {
        Ok(ahead) => ahead.as_secs_f64().trunc(),
        Err(behind) => -behind.duration().as_secs_f64().trunc(),
    })
}

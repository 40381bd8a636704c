//! The upstream exchange: sign (last, after every other change to the
//! request), send, and retry at most once — only when the connection failed
//! before any byte was written, signed afresh with a new timestamp.
//!
//! The exchange runs as its own task, detached from the client's request:
//! once a byte may have reached the provider, a client that goes away does
//! not abort it. It finishes (up to `egress.request_timeout_ms`), settles
//! the duplicate-guard claim by its outcome and hands its result to the
//! request — or, if the client is gone, to the request's `Drop` bookkeeping.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use http::header::{DATE, RETRY_AFTER};
use http::{HeaderValue, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use super::record::{clock_skew, Record};
use super::scope::Scope;
use super::steps::Outgoing;
use super::{GatewayError, RequestId};
use crate::config::MAX_COOLDOWN;
use crate::dedup::{Claim, Outcome};
use crate::metrics::Metrics;
use crate::ratelimit::retry_after_header;
use crate::router::Route;
use crate::secrets::Credential;
use crate::sign::{MessageInput, Signature};
use crate::state::Shared;
use crate::upstream::{AttemptError, Fresh, Upstream, UpstreamFailure};

/// What the exchange task hands back.
pub(super) struct Exchanged {
    pub result: Result<Response<Incoming>, AttemptError>,
    /// The last signature sent (its fingerprint, for the audit record).
    pub fingerprint: Option<String>,
    /// The route's `max_inflight` slot, held on while the body streams.
    pub permit: OwnedSemaphorePermit,
}

impl Exchanged {
    /// Note the outcome in the request's record.
    pub fn note(&self, rec: &mut Record) {
        rec.signature_fingerprint.clone_from(&self.fingerprint);
        match &self.result {
            Ok(r) => rec.upstream_status = Some(r.status().as_u16()),
            Err(e) => rec.upstream_error = Some(GatewayError::Upstream(e.failure).code()),
        }
    }
}

/// Start the exchange and wait for its response head. The task is kept in
/// the scope while awaited, so a request dropped here leaves it running.
pub(super) async fn send(
    scope: &mut Scope,
    route: &Arc<Route>,
    cred: Arc<Credential>,
    out: Outgoing,
    claim: Option<Claim>,
) -> Result<(Response<Incoming>, OwnedSemaphorePermit), GatewayError> {
    let reflect = scope.snap.reflect_windows.get(&route.config.credential).copied();
    let task = exchange(
        scope.snap.upstream.clone(),
        scope.shared.clone(),
        reflect,
        route.clone(),
        cred,
        out,
        claim,
        scope.rid.clone(),
    );
    let handle = scope.shared.exchanges().spawn(task);
    let joined = scope.exchange.insert(handle).await;
    scope.exchange = None;
    let exchanged = joined.map_err(|_| GatewayError::Internal)?;
    exchanged.note(&mut scope.rec);
    match exchanged.result {
        Ok(resp) => Ok((resp, exchanged.permit)),
        Err(e) => Err(GatewayError::Upstream(e.failure)),
    }
}

/// `reflect`: how long the signatures must be remembered (the credential
/// also verifies webhooks).
#[allow(clippy::too_many_arguments)] // one task's inputs, moved in once
async fn exchange(
    upstream: Upstream,
    shared: Arc<Shared>,
    reflect: Option<Duration>,
    route: Arc<Route>,
    cred: Arc<Credential>,
    out: Outgoing,
    mut claim: Option<Claim>,
    rid: RequestId,
) -> Exchanged {
    let metrics = shared.metrics();
    let started = Instant::now();
    let mut retried = false;
    let mut fingerprint;
    let result = loop {
        let (req, sig) = signed_request(&route, &cred, &out);
        fingerprint = Some(sig.fingerprint());
        if let Some(window) = reflect {
            shared
                .reflections()
                .remember_sent(&route.config.credential, sig.mac(), window);
        }
        route.metrics.signatures.inc();
        if let Some(c) = claim.as_mut() {
            c.sending();
        }
        match upstream.send(req).await {
            Ok(r) => {
                if Fresh::first_use(&r) {
                    route.metrics.connections_opened.inc();
                }
                break Ok(r);
            }
            Err(e) if e.nothing_sent && !retried && e.failure == UpstreamFailure::Connect => {
                tracing::debug!(request_id = rid.as_str(), route = route.name(), error = %e.detail, "upstream connect failed; retrying once");
                metrics
                    .upstream_errors
                    .with_label_values(&[route.name(), e.failure.kind()])
                    .inc();
                retried = true;
            }
            Err(e) => {
                tracing::warn!(request_id = rid.as_str(), route = route.name(), kind = e.failure.kind(), error = %e.detail, "upstream request failed");
                break Err(e);
            }
        }
    };
    route.metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
    if let Ok(resp) = &result {
        observe_response(metrics, &route, resp);
        cool_down(&shared, &route, resp).await;
    }
    if let Some(claim) = claim {
        claim.finish(settle(&result)).await;
    }
    Exchanged {
        result,
        fingerprint,
        permit: out.permit,
    }
}

/// How the exchange settles a duplicate-guard claim: only a definite
/// failure releases it; a request that may have taken effect holds it.
fn settle(result: &Result<Response<Incoming>, AttemptError>) -> Outcome {
    match result {
        Ok(r) if r.status().is_success() => Outcome::Succeeded,
        // A timeout reported by the provider (or a proxy in front of it)
        // says nothing about whether the payment went through.
        Ok(r) if matches!(r.status().as_u16(), 408 | 504 | 522 | 524) => Outcome::Unknown,
        Ok(_) => Outcome::Failed,
        Err(e) if e.nothing_sent => Outcome::Failed,
        Err(_) => Outcome::Unknown,
    }
}

/// A provider 429/503 with `Retry-After` (seconds or an HTTP date, at most
/// `MAX_COOLDOWN`) puts the route in cooldown: here at once, and with
/// `[fleet]` on every instance (Redis, bounded by `timeout_ms`; not
/// answering, this instance still holds it).
async fn cool_down(shared: &Shared, route: &Route, resp: &Response<Incoming>) {
    let status = resp.status();
    if !route.config.honor_retry_after
        || !(status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE)
    {
        return;
    }
    let Some(wait) = resp
        .headers()
        .get(RETRY_AFTER)
        .and_then(|v| retry_after_header(v, SystemTime::now(), MAX_COOLDOWN))
    else {
        return;
    };
    route.cooldown.start(wait);
    shared
        .metrics()
        .provider_cooldown
        .with_label_values(&[route.name(), "started"])
        .inc();
    tracing::info!(
        route = route.name(),
        status = status.as_u16(),
        wait_ms = wait.as_millis() as u64,
        "provider asked to back off: route cooling down"
    );
    if let Some(fleet) = shared.fleet() {
        let _ = fleet.start_cooldown(&fleet.key_cooldown(route.name()), wait).await;
    }
}

/// Back-off answers and the provider's clock, seen on the response head.
fn observe_response(metrics: &Metrics, route: &Route, resp: &Response<Incoming>) {
    let status = resp.status();
    if status == StatusCode::TOO_MANY_REQUESTS || status == StatusCode::SERVICE_UNAVAILABLE {
        // The provider asks us to back off: pass it through, count it, never retry.
        metrics
            .upstream_passthrough_backoff
            .with_label_values(&[route.name(), status.as_str()])
            .inc();
    }
    if let Some(skew) = resp.headers().get(DATE).and_then(clock_skew) {
        route.metrics.clock_skew(skew);
    }
}

/// Sign last, after every other change to the request. Returns the request
/// and its signature.
fn signed_request(route: &Route, cred: &Credential, out: &Outgoing) -> (Request<Full<Bytes>>, Signature) {
    let scheme = &route.scheme;
    let ts = scheme.timestamp(SystemTime::now());
    let sig = scheme.sign(
        cred.mac(),
        &MessageInput {
            api_key: cred.api_key().as_bytes(),
            timestamp: ts.as_str(),
            method: out.method.as_str(),
            path: &out.upstream_path,
            query: out.uri.query().unwrap_or(""),
            body: &out.body,
        },
    );
    let mut headers = out.headers.clone();
    headers.insert(scheme.api_key_header.clone(), cred.api_key().clone());
    headers.insert(
        scheme.timestamp_header.clone(),
        HeaderValue::from_str(ts.as_str()).unwrap_or(HeaderValue::from_static("0")),
    );
    let mut sig_value = HeaderValue::from_bytes(sig.as_bytes()).unwrap_or(HeaderValue::from_static(""));
    sig_value.set_sensitive(true);
    headers.insert(scheme.signature_header.clone(), sig_value);
    let mut req = Request::new(Full::new(out.body.clone()));
    *req.method_mut() = out.method.clone();
    *req.uri_mut() = out.uri.clone();
    *req.headers_mut() = headers;
    (req, sig)
}

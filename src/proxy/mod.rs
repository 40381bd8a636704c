//! The request pipeline: one function, [`handle`], calls each stage in order.
//!
//! allowlist → path check → route → method → route allowlist → body (bounded)
//! → canonicalize → credential → sign → header hygiene → upstream (one retry
//! only if nothing was sent) → response hygiene. Every refusal is a
//! [`GatewayError`], answered as the contract's JSON error.

mod body;
mod context;
mod error;
pub mod headers;
mod record;

use std::convert::Infallible;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use bytes::Bytes;
use futures_util::FutureExt as _;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, DATE};
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full};
use hyper::body::Incoming;

pub use context::{ConnInfo, RequestId};
pub use error::{GatewayError, UpstreamFailure};
use headers::X_REQUEST_ID;
pub use record::Record;
use record::{audit_entry, clock_skew, finish, observe_upstream};

use crate::app::{Gateway, Snapshot};
use crate::canonical;
use crate::router::{path_is_safe, Route};
use crate::secrets::Credential;
use crate::sign::{BodyMode, EmptyBody, MessageInput, Scheme};
use crate::webhook::Hook;

pub use body::UpstreamBody;

pub type ResponseBody = Either<UpstreamBody, Full<Bytes>>;

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// Serve one request. Never fails: refusals become JSON error responses, and a
/// panic inside the pipeline becomes a 500 for that request only.
pub async fn handle(
    gw: Arc<Gateway>,
    conn: Arc<ConnInfo>,
    req: Request<Incoming>,
) -> Result<Response<ResponseBody>, Infallible> {
    let metrics = gw.metrics();
    metrics.inflight.inc();
    let rid = RequestId::parse_or_new(req.headers().get(&X_REQUEST_ID));
    let http1 = req.version() < http::Version::HTTP_2;
    let snap = gw.snapshot();
    let mut rec = Record {
        started: Instant::now(),
        route: None,
        webhook: None,
        method: req.method().clone(),
        uri: req.uri().clone(),
        bytes_in: 0,
        upstream_status: None,
        upstream_started: None,
        credential_version: None,
        signature_fingerprint: None,
        duplicate_key: None,
    };
    // No request proceeds without a reserved audit slot (fail closed).
    let slot = match gw.audit() {
        Some(log) => log.reserve().await.ok_or(GatewayError::AuditUnavailable),
        None => Err(GatewayError::ShuttingDown),
    };
    let result = match &slot {
        Err(e) => Err(e.clone()),
        Ok(_) => AssertUnwindSafe(pipeline(&gw, &snap, &conn, &rid, req, &mut rec))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| {
                tracing::error!(request_id = rid.as_str(), "panic while handling a request");
                Err(GatewayError::Internal)
            }),
    };
    let (mut resp, error) = match result {
        Ok(r) => (r, None),
        Err(e) => {
            tracing::debug!(request_id = rid.as_str(), client = %conn.peer, code = e.code(), "refused");
            (e.to_response(&rid).map(Either::Right), Some(e))
        }
    };
    resp.headers_mut().insert(X_REQUEST_ID.clone(), rid.header_value());
    if http1
        && matches!(
            error,
            Some(GatewayError::UriTooLong { .. } | GatewayError::UnsupportedTransferCoding)
        )
    {
        // Like hyper's own 431: a client sending oversized heads gets no keep-alive.
        resp.headers_mut()
            .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
    }
    finish(&gw, &rec, resp.status(), error.as_ref());
    match (slot, gw.audit()) {
        (Ok(slot), Some(log)) => {
            let entry = audit_entry(&rec, &rid, &conn, &resp, error.as_ref(), &log);
            match resp.body_mut() {
                // A streamed body may still be cut: its record is written when it ends.
                Either::Left(body) => body.audit_at_end(slot, entry),
                Either::Right(_) => slot.write(entry),
            }
        }
        _ => {
            gw.metrics().audit_records.with_label_values(&["refused"]).inc();
            tracing::error!(request_id = rid.as_str(), "request refused: no audit slot");
        }
    }
    metrics.inflight.dec();
    Ok(resp)
}

async fn pipeline(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    rid: &RequestId,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<Response<ResponseBody>, GatewayError> {
    // Webhooks come from the provider, not from internal callers: their own
    // allowlist applies, and they take their own path.
    if let Some(hook) = snap.webhooks.iter().find(|h| h.config.match_path == req.uri().path()) {
        rec.webhook = Some(hook.clone());
        let result = webhook(gw, snap, conn, hook, req, rec).await;
        let label = match &result {
            Ok(outcome) => outcome.label(),
            Err(e) => crate::webhook::refusal_label(e),
        };
        gw.metrics().webhooks.with_label_values(&[hook.name(), label]).inc();
        let outcome = result?;
        if let crate::webhook::Outcome::Accepted(_) = outcome {
            gw.wake_delivery();
        }
        let body = match outcome {
            crate::webhook::Outcome::Accepted(id) => serde_json::json!({"status": "accepted", "id": id}),
            crate::webhook::Outcome::Duplicate => serde_json::json!({"status": "duplicate"}),
        };
        let mut resp = Response::new(Either::Right(Full::new(Bytes::from(body.to_string()))));
        resp.headers_mut().insert(CONTENT_TYPE, APPLICATION_JSON.clone());
        return Ok(resp);
    }
    // Who may send at all: the TCP peer, before anything else is looked at.
    if !snap.access.allows(conn.ip()) {
        return Err(GatewayError::IpNotAllowed);
    }
    // A huge target costs routing and audit work: refuse it first (414).
    if req.uri().path_and_query().map_or(0, |pq| pq.as_str().len()) > snap.max_uri_bytes {
        return Err(GatewayError::UriTooLong {
            limit: snap.max_uri_bytes,
        });
    }
    // Refuse path tricks before routing, so no route sees them.
    let path = req.uri().path();
    if !path_is_safe(path) {
        return Err(GatewayError::InvalidPath);
    }
    let route = snap.router.find(path).ok_or(GatewayError::NoRoute)?.clone();
    rec.route = Some(route.clone());
    if !route.allows_method(req.method()) {
        return Err(GatewayError::MethodNotAllowed {
            route: route.name().to_string(),
            allowed: route.allow_methods.clone(),
        });
    }
    // Test builds only (feature `fault-injection`): a requested panic.
    crate::fault::inject(req.headers());
    // The route may narrow who may send (e.g. payouts from one subnet only).
    if let Some(allow) = &route.allow {
        if !allow.allows(conn.ip()) {
            return Err(GatewayError::IpNotAllowed);
        }
    }
    if let Some(allowed) = &route.config.allow_identities {
        let ok = conn.identities.as_deref().is_some_and(|have| allowed.matches(have));
        if !ok {
            return Err(GatewayError::IdentityNotAllowed);
        }
    }
    // Limits before the body is read: a refused client costs no buffering.
    snap.limits
        .check(conn.ip(), route.limit.as_ref())
        .map_err(|l| GatewayError::RateLimited {
            scope: l.scope.label(),
            retry_after: l.retry_after,
        })?;
    let (parts, body) = req.into_parts();
    // Never sign bytes other than those sent: compressed bodies are refused.
    if let Some(enc) = parts.headers.get(CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(GatewayError::UnsupportedEncoding);
        }
    }
    only_chunked(&parts.headers)?;
    let raw = read_body(body, &parts.headers, snap).await?;
    rec.bytes_in = raw.len() as u64;
    // The canonical bytes are the bytes signed and the bytes sent.
    let body = prepare_body(&route.scheme, raw)?;
    // A retried payment must not become a second payment.
    let claim = match (&route.duplicates, &route.config.duplicate_key) {
        (Some(store), Some(pointer)) => {
            let reference = crate::dedup::reference(&body, pointer).ok_or_else(|| GatewayError::MissingReference {
                pointer: pointer.clone(),
            })?;
            rec.duplicate_key = Some(reference.clone());
            store.begin(&reference, Instant::now()).map_err(|d| match d {
                crate::dedup::Duplicate::Full => GatewayError::DuplicateGuardFull,
                crate::dedup::Duplicate::InFlight | crate::dedup::Duplicate::Succeeded => {
                    GatewayError::DuplicateRequest
                }
            })?;
            Some(crate::dedup::Claim::new(store.as_ref(), reference))
        }
        _ => None,
    };
    let cred = route
        .credential
        .get()
        .map_err(|hint| GatewayError::CredentialUnavailable {
            credential: route.config.credential.clone(),
            hint,
        })?;
    rec.credential_version = cred.version();

    let upstream_path = route.upstream_path(parts.uri.path());
    let uri = route
        .upstream_uri(&upstream_path, parts.uri.query())
        .map_err(|_| GatewayError::InvalidPath)?;
    let mut headers = parts.headers;
    headers::sanitize_request(&mut headers, &route.scheme.headers());
    headers.insert(X_REQUEST_ID.clone(), rid.header_value());
    if route.scheme.body == BodyMode::CanonicalJson {
        headers.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));

    // A slow provider must not pile up unbounded requests (and connections):
    // wait a bounded time for a slot, else refuse before signing anything.
    let inflight = tokio::time::timeout(route.config.queue_timeout, route.inflight.clone().acquire_owned())
        .await
        .map_err(|_| GatewayError::UpstreamBusy)?
        .map_err(|_| GatewayError::Internal)?;
    // At most one retry, and only when the connection failed before any byte
    // was written; the retry is signed afresh (new timestamp).
    let metrics = snap.metrics.clone();
    let mut retried = false;
    rec.upstream_started = Some(Instant::now());
    let response = loop {
        let (req, fingerprint) = signed_request(
            &route,
            &cred,
            &parts.method,
            &uri,
            &upstream_path,
            headers.clone(),
            body.clone(),
        );
        metrics
            .signatures
            .with_label_values(&[route.name(), route.config.credential.as_str()])
            .inc();
        rec.signature_fingerprint = Some(fingerprint);
        match snap.upstream.send(req).await {
            Ok(r) => break r,
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
                observe_upstream(&metrics, &route, rec);
                return Err(GatewayError::Upstream(e.failure));
            }
        }
    };
    observe_upstream(&metrics, &route, rec);
    let (mut rparts, rbody) = response.into_parts();
    rec.upstream_status = Some(rparts.status.as_u16());
    if let Some(claim) = claim {
        // Only a 2xx locks the reference; a failure may be retried.
        claim.finish(rparts.status.is_success());
    }
    if rparts.status == StatusCode::TOO_MANY_REQUESTS || rparts.status == StatusCode::SERVICE_UNAVAILABLE {
        // The provider asks us to back off: pass it through, count it, never retry.
        metrics
            .upstream_passthrough_backoff
            .with_label_values(&[route.name(), rparts.status.as_str()])
            .inc();
    }
    if let Some(skew) = rparts.headers.get(DATE).and_then(clock_skew) {
        metrics.clock_skew.with_label_values(&[route.name()]).set(skew);
    }
    headers::sanitize_response(&mut rparts.headers);
    // Streamed, never buffered; the slot stays taken until the body is done.
    let rbody = UpstreamBody::new(
        rbody,
        snap.upstream.response_idle_timeout(),
        metrics,
        route.clone(),
        rid.clone(),
        inflight,
    );
    Ok(Response::from_parts(rparts, Either::Left(rbody)))
}

/// The webhook path: allowlist, POST only, limits, bounded body, then the
/// receiver (verify, freshness, de-duplication, durable store).
async fn webhook(
    gw: &Gateway,
    snap: &Snapshot,
    conn: &ConnInfo,
    hook: &Arc<Hook>,
    req: Request<Incoming>,
    rec: &mut Record,
) -> Result<crate::webhook::Outcome, GatewayError> {
    let allowed = match &hook.allow {
        Some(a) => a.allows(conn.ip()),
        None => snap.access.allows(conn.ip()),
    };
    if !allowed {
        return Err(GatewayError::IpNotAllowed);
    }
    if req.method() != Method::POST {
        return Err(GatewayError::MethodNotAllowed {
            route: hook.name().to_string(),
            allowed: "POST".into(),
        });
    }
    snap.limits
        .check(conn.ip(), None)
        .map_err(|l| GatewayError::RateLimited {
            scope: l.scope.label(),
            retry_after: l.retry_after,
        })?;
    let (parts, body) = req.into_parts();
    if parts
        .headers
        .get(CONTENT_ENCODING)
        .is_some_and(|e| !e.as_bytes().eq_ignore_ascii_case(b"identity"))
    {
        return Err(GatewayError::UnsupportedEncoding);
    }
    only_chunked(&parts.headers)?;
    let raw = read_body(body, &parts.headers, snap).await?;
    rec.bytes_in = raw.len() as u64;
    let store = gw.webhook_store().ok_or(GatewayError::Internal)?;
    let outcome = crate::webhook::receive(hook, store, &parts.headers, raw.clone()).await?;
    rec.duplicate_key = Some(crate::webhook::event_key(hook, &raw));
    Ok(outcome)
}

/// hyper decodes `chunked` and passes any other transfer coding through
/// undecoded (`gzip, chunked` would reach us still compressed): refuse them
/// (RFC 9112 §6.1, 501), so only the bytes the client meant are signed.
fn only_chunked(headers: &HeaderMap) -> Result<(), GatewayError> {
    let other = headers.get_all(http::header::TRANSFER_ENCODING).iter().any(|v| {
        v.to_str().map_or(true, |s| {
            s.split(',').any(|c| !c.trim().eq_ignore_ascii_case("chunked"))
        })
    });
    if other {
        return Err(GatewayError::UnsupportedTransferCoding);
    }
    Ok(())
}

/// Read the body under `max_body_bytes`, `body_timeout` (the whole body) and
/// `body_idle_timeout` (the longest pause between two pieces). A declared
/// Content-Length over the limit is refused without reading a byte; a
/// streamed body is cut off as soon as the running total passes the limit.
/// Trailers are read and dropped: they are never forwarded nor signed.
async fn read_body(mut body: Incoming, headers: &HeaderMap, snap: &Snapshot) -> Result<Bytes, GatewayError> {
    let limit = snap.max_body_bytes;
    let too_large = GatewayError::BodyTooLarge { limit };
    let mut declared = None;
    if let Some(cl) = headers.get(CONTENT_LENGTH) {
        let n: u64 = cl
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or(GatewayError::BadBody)?;
        if n > limit {
            return Err(too_large);
        }
        declared = Some(n);
    }
    let limit = usize::try_from(limit).unwrap_or(usize::MAX);
    let deadline = tokio::time::Instant::now() + snap.body_timeout;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut total = 0usize;
    loop {
        let gap = (tokio::time::Instant::now() + snap.body_idle_timeout).min(deadline);
        let frame = match tokio::time::timeout_at(gap, body.frame()).await {
            Err(_) => return Err(GatewayError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(GatewayError::BadBody),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        total = total.saturating_add(data.len());
        if total > limit {
            return Err(too_large);
        }
        // The common case, one frame, is kept without a copy.
        match first.take() {
            None if rest.is_empty() => first = Some(data),
            None => rest.extend_from_slice(&data),
            Some(f) => {
                let cap = declared.and_then(|d| usize::try_from(d).ok()).unwrap_or(0).min(limit);
                rest.reserve(cap.max(f.len() + data.len()));
                rest.extend_from_slice(&f);
                rest.extend_from_slice(&data);
            }
        }
    }
    Ok(first.unwrap_or_else(|| Bytes::from(rest)))
}

/// Apply the scheme's body rule: canonical JSON (or the configured empty
/// body), or the raw bytes as received.
pub fn prepare_body(scheme: &Scheme, raw: Bytes) -> Result<Bytes, GatewayError> {
    if raw.is_empty() {
        return Ok(match scheme.empty_body {
            EmptyBody::Empty => Bytes::new(),
            EmptyBody::EmptyObject => Bytes::from_static(b"{}"),
        });
    }
    match scheme.body {
        BodyMode::Raw => Ok(raw),
        BodyMode::CanonicalJson => {
            let mut out = Vec::with_capacity(raw.len());
            CANONICALIZER
                .with(|c| c.borrow_mut().encode(&raw, &scheme.canonical, &mut out))
                .map_err(|e| GatewayError::InvalidJson {
                    offset: e.offset,
                    reason: e.reason,
                })?;
            Ok(Bytes::from(out))
        }
    }
}

thread_local! {
    /// Per-worker scratch space so canonicalization does not allocate its
    /// tape on every request.
    static CANONICALIZER: std::cell::RefCell<canonical::Canonicalizer> =
        std::cell::RefCell::new(canonical::Canonicalizer::new());
}

/// Sign last, after every other change to the request. Returns the request
/// and the signature's fingerprint (for the audit record).
fn signed_request(
    route: &Route,
    cred: &Credential,
    method: &Method,
    uri: &http::Uri,
    upstream_path: &str,
    mut headers: HeaderMap,
    body: Bytes,
) -> (Request<Full<Bytes>>, String) {
    let scheme = &route.scheme;
    let ts = scheme.timestamp(SystemTime::now());
    let sig = scheme.sign(
        cred.mac(),
        &MessageInput {
            api_key: cred.api_key().as_bytes(),
            timestamp: ts.as_str(),
            method: method.as_str(),
            path: upstream_path,
            query: uri.query().unwrap_or(""),
            body: &body,
        },
    );
    headers.insert(scheme.api_key_header.clone(), cred.api_key().clone());
    headers.insert(
        scheme.timestamp_header.clone(),
        HeaderValue::from_str(ts.as_str()).unwrap_or(HeaderValue::from_static("0")),
    );
    let mut sig_value = HeaderValue::from_bytes(sig.as_bytes()).unwrap_or(HeaderValue::from_static(""));
    sig_value.set_sensitive(true);
    headers.insert(scheme.signature_header.clone(), sig_value);
    let mut req = Request::new(Full::new(body));
    *req.method_mut() = method.clone();
    *req.uri_mut() = uri.clone();
    *req.headers_mut() = headers;
    (req, sig.fingerprint())
}

//! The pipeline's steps before the upstream call, one function each, in the
//! order `pipeline` calls them. Each returns its refusal as a
//! [`GatewayError`] and notes what the audit record needs in the scope.

use std::sync::Arc;

use bytes::Bytes;
use http::header::{CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderValue, Method, Uri};
use http_body_util::BodyExt as _;
use hyper::body::Incoming;
use tokio::sync::OwnedSemaphorePermit;

use super::scope::Scope;
use super::GatewayError;
use crate::allowlist::Allowlist;
use crate::amount_guard::{Refusal, Reservation};
use crate::config::LimitsOnError;
use crate::dedup::{Claim, Duplicate, Refused};
use crate::fleet::{FleetLimit, LimitAnswer, Source};
use crate::headers::{self, X_REQUEST_ID};
use crate::permit::{acquire_within, NoSlot};
use crate::ratelimit::{retry_after_secs, Scope as RateScope};
use crate::router::{path_is_safe, Route};
use crate::secrets::{Credential, CredentialSlot};
use crate::sign::BodyMode;
use crate::trace::{Attr, Child, Kind};

static APPLICATION_JSON: HeaderValue = HeaderValue::from_static("application/json");

/// No request proceeds without a reserved audit slot (fail closed).
pub(super) async fn reserve_audit(scope: &mut Scope) -> Result<(), GatewayError> {
    let log = scope.shared.audit().ok_or(GatewayError::ShuttingDown)?;
    scope.slot = Some(log.reserve().await.ok_or(GatewayError::AuditUnavailable)?);
    Ok(())
}

/// Who may send at all (the TCP peer, before anything else is looked at),
/// then the target's length and the path's safety, before routing.
pub(super) fn admit(scope: &Scope, parts: &Parts) -> Result<(), GatewayError> {
    peer_allowed(scope, &scope.snap.access)?;
    // A huge target costs routing and audit work: refuse it first (414).
    let limit = scope.snap.config.listener.max_uri_bytes;
    if parts.uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > limit {
        return Err(GatewayError::UriTooLong { limit });
    }
    // Refuse path tricks before routing, so no route sees them.
    if !path_is_safe(parts.uri.path()) {
        return Err(GatewayError::InvalidPath);
    }
    Ok(())
}

pub(super) fn peer_allowed(scope: &Scope, allow: &Allowlist) -> Result<(), GatewayError> {
    if allow.allows(scope.conn.ip()) {
        Ok(())
    } else {
        Err(GatewayError::IpNotAllowed)
    }
}

/// The route (longest prefix) and whether it takes this method.
pub(super) fn route(scope: &mut Scope, parts: &Parts) -> Result<Arc<Route>, GatewayError> {
    let route = scope
        .snap
        .router
        .find(parts.uri.path())
        .ok_or(GatewayError::NoRoute)?
        .clone();
    scope.rec.route = Some(route.clone());
    if !route.allows_method(&parts.method) {
        return Err(GatewayError::MethodNotAllowed {
            route: route.name().to_string(),
            allowed: route.allow_methods.clone(),
        });
    }
    // Test builds only (feature `fault-injection`): a requested panic.
    crate::fault::inject(&parts.headers);
    Ok(route)
}

/// The route may narrow who may send (e.g. payouts from one subnet only),
/// by address and by mTLS identity.
pub(super) fn authorize(scope: &Scope, route: &Route) -> Result<(), GatewayError> {
    if let Some(allow) = &route.allow {
        peer_allowed(scope, allow)?;
    }
    if let Some(allowed) = &route.config.allow_identities {
        let ok = scope
            .conn
            .identities
            .as_deref()
            .is_some_and(|have| allowed.matches(have));
        if !ok {
            return Err(GatewayError::IdentityNotAllowed);
        }
    }
    Ok(())
}

/// The credential that signs for this caller: the route's one, or the first
/// `credential_map` entry matching the caller's address or certificate
/// identity (403 when none does: nothing is sent).
pub(super) fn pick_credential(scope: &mut Scope, route: &Route) -> Result<Arc<CredentialSlot>, GatewayError> {
    let slot = route
        .credential
        .pick(scope.conn.ip(), scope.conn.identities.as_deref())
        .ok_or(GatewayError::NoCredentialForCaller)?
        .clone();
    scope.rec.credential = Some(slot.clone());
    Ok(slot)
}

/// The route's kill switch: a route operators disabled refuses before its
/// limits are counted or its body is read, and nothing is claimed, signed
/// or sent. Checked once more just before sending (a request that waited
/// for an upstream slot while the route was disabled is refused too).
pub(super) fn enabled(scope: &Scope, route: &Route) -> Result<(), GatewayError> {
    if scope.shared.switches().is_disabled(route.name()) {
        return Err(GatewayError::RouteDisabled {
            route: route.name().to_string(),
        });
    }
    Ok(())
}

/// The provider's cooldown, then the rate limits, before the body is read:
/// a refused client costs no buffering, and no duplicate-guard claim exists
/// yet. Without `[fleet]` all of it is local (no `.await` is reached); with
/// it, the route's cooldown and every limit are checked in one Redis round
/// trip, falling back per `[fleet].limits_on_error`.
pub(super) async fn limit(scope: &mut Scope, route: Option<&Route>) -> Result<(), GatewayError> {
    let honored = route.filter(|r| r.config.honor_retry_after);
    if let Some(r) = honored {
        cooled(scope, r)?;
    }
    let Some(fleet) = scope.shared.fleet().cloned() else {
        return local_limit(scope, route);
    };
    let limits = &scope.snap.config.limits;
    let mut checks = Vec::with_capacity(3);
    let mut scopes = Vec::with_capacity(3);
    let mut add = |key: String, q: crate::config::Quota, s: RateScope| {
        checks.push(FleetLimit {
            key,
            rate: q.rate.get(),
            burst: q.burst.get(),
        });
        scopes.push(s);
    };
    // Most specific first, as the local limiter does.
    if let Some(q) = limits.per_client {
        add(fleet.key_client(scope.conn.ip()), q, RateScope::PerClient);
    }
    if let Some((r, q)) = route.and_then(|r| r.config.limit.map(|q| (r, q))) {
        add(fleet.key_route(r.name()), q, RateScope::Route);
    }
    if let Some(q) = limits.global {
        add(fleet.key_global(), q, RateScope::Global);
    }
    let cooldown_key = honored.map(|r| fleet.key_cooldown(r.name()));
    if checks.is_empty() && cooldown_key.is_none() {
        return Ok(());
    }
    match Box::pin(fleet.check_limits(cooldown_key.as_deref(), &checks)).await {
        Ok(LimitAnswer::Allowed) => {
            scope.rec.note_fleet(Source::Redis);
            Ok(())
        }
        Ok(LimitAnswer::Cooldown(left)) => {
            scope.rec.note_fleet(Source::Redis);
            let r = honored.ok_or(GatewayError::Internal)?;
            // Known here too: it holds while Redis cannot answer.
            r.cooldown.start(left);
            cooled(scope, r)
        }
        Ok(LimitAnswer::Limited { index, wait }) => {
            scope.rec.note_fleet(Source::Redis);
            Err(GatewayError::RateLimited {
                scope: scopes.get(index).copied().unwrap_or(RateScope::Global).label(),
                retry_after: retry_after_secs(wait),
            })
        }
        // Only the cooldown was asked: the local one was checked above.
        Err(_) if checks.is_empty() => {
            scope.rec.note_fleet(Source::Local);
            Ok(())
        }
        Err(_) => {
            scope.rec.note_fleet(Source::Local);
            match fleet.limits_on_error() {
                LimitsOnError::Local => {
                    fleet.fallback("limits_local");
                    local_limit(scope, route)
                }
                LimitsOnError::Deny => {
                    fleet.fallback("limits_denied");
                    Err(GatewayError::RateLimitUnavailable)
                }
            }
        }
    }
}

/// This instance's limiters: the whole quotas, or with `[fleet]` (Redis not
/// answering) this instance's share of them.
fn local_limit(scope: &Scope, route: Option<&Route>) -> Result<(), GatewayError> {
    scope
        .snap
        .limits
        .check(scope.conn.ip(), route.and_then(|r| r.limit.as_ref()))
        .map_err(|l| GatewayError::RateLimited {
            scope: l.scope.label(),
            retry_after: l.retry_after,
        })
}

/// Refuse while the route's provider cooldown runs (as this instance knows it).
pub(super) fn cooled(scope: &Scope, route: &Route) -> Result<(), GatewayError> {
    if !route.config.honor_retry_after {
        return Ok(());
    }
    match route.cooldown.left() {
        None => Ok(()),
        Some(left) => {
            scope
                .shared
                .metrics()
                .provider_cooldown
                .with_label_values(&[route.name(), "refused"])
                .inc();
            Err(GatewayError::ProviderCooldown {
                retry_after: retry_after_secs(left),
            })
        }
    }
}

/// Read the body under `max_body_bytes`, `body_timeout` (the whole body) and
/// `body_idle_timeout` (the longest pause between two pieces). Compressed
/// bodies and transfer codings other than chunked are refused first; a
/// declared Content-Length over the limit is refused without reading a byte
/// (so an `Expect: 100-continue` client never gets its 100); a streamed body
/// is cut off as soon as the running total passes the limit. Trailers are
/// read and dropped: they are never forwarded nor signed. A body that is
/// refused stays in the scope for the answer's linger, unless it was refused
/// for being too slow (`body_timeout`): then it is dropped with the answer.
pub(super) async fn read_body(scope: &mut Scope, parts: &Parts) -> Result<Bytes, GatewayError> {
    // Never sign bytes other than those sent: compressed bodies are refused.
    if let Some(enc) = parts.headers.get(CONTENT_ENCODING) {
        if !enc.as_bytes().eq_ignore_ascii_case(b"identity") {
            return Err(GatewayError::UnsupportedEncoding);
        }
    }
    only_chunked(&parts.headers)?;
    let listener = &scope.snap.config.listener;
    let limit = listener.max_body_bytes;
    let declared = declared_length(&parts.headers, limit)?;
    let (total, idle) = (listener.body_timeout, listener.body_idle_timeout);
    let body = scope.unread.as_mut().ok_or(GatewayError::Internal)?;
    let raw = collect(
        body,
        declared,
        usize::try_from(limit).unwrap_or(usize::MAX),
        total,
        idle,
    )
    .await
    .inspect_err(|e| {
        // A client too slow for the body timers gets no linger: reading on
        // would give it the time the timers just took away.
        if matches!(e, GatewayError::BodyTimeout) {
            scope.unread = None;
        }
    })?;
    scope.unread = None;
    scope.rec.bytes_in = raw.len() as u64;
    Ok(raw)
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

/// A declared Content-Length, refused when over `limit`.
fn declared_length(headers: &HeaderMap, limit: u64) -> Result<Option<u64>, GatewayError> {
    let Some(cl) = headers.get(CONTENT_LENGTH) else {
        return Ok(None);
    };
    let n: u64 = cl
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(GatewayError::BadBody)?;
    if n > limit {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    Ok(Some(n))
}

/// Gather the body's data frames under the size limit and both timers.
async fn collect(
    body: &mut Incoming,
    declared: Option<u64>,
    limit: usize,
    total: std::time::Duration,
    idle: std::time::Duration,
) -> Result<Bytes, GatewayError> {
    let deadline = tokio::time::Instant::now() + total;
    let mut first: Option<Bytes> = None;
    let mut rest: Vec<u8> = Vec::new();
    let mut size = 0usize;
    loop {
        let gap = (tokio::time::Instant::now() + idle).min(deadline);
        let frame = match tokio::time::timeout_at(gap, body.frame()).await {
            Err(_) => return Err(GatewayError::BodyTimeout),
            Ok(None) => break,
            Ok(Some(Err(_))) => return Err(GatewayError::BadBody),
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        size = size.saturating_add(data.len());
        if size > limit {
            return Err(GatewayError::BodyTooLarge { limit: limit as u64 });
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

/// The canonical bytes are the bytes signed and the bytes sent.
pub(super) fn canonicalize(route: &Route, raw: Bytes) -> Result<Bytes, GatewayError> {
    crate::sign::prepare_body(&route.scheme, raw).map_err(|e| GatewayError::InvalidJson {
        offset: e.offset,
        reason: e.reason,
    })
}

/// A retried payment must not become a second payment: claim the route's
/// transaction reference, per endpoint (method and upstream path), so that
/// a status call never locks a create and a create spelled differently is
/// still the same create (endpoints compared as [`crate::dedup::endpoint`]
/// does). With `[fleet]` the claim is taken in Redis, and refused (fail
/// closed) while Redis cannot answer.
pub(super) async fn claim(
    scope: &mut Scope,
    route: &Route,
    parts: &Parts,
    body: &[u8],
) -> Result<Option<Claim>, GatewayError> {
    let (Some(guard), Some(pointer)) = (&route.duplicates, &route.config.duplicate_key) else {
        return Ok(None);
    };
    let reference = crate::dedup::reference(body, pointer).ok_or_else(|| GatewayError::MissingReference {
        pointer: pointer.clone(),
    })?;
    scope.rec.duplicate_key = Some(reference.clone());
    let endpoint = format!(
        "{} {}",
        parts.method,
        crate::dedup::endpoint(&route.upstream_path(parts.uri.path()))
    );
    // Boxed, here and for the other guards' stores: only routes that use
    // them pay for their futures; the pipeline's own stays small (it is
    // moved, whole, into the connection's task for every request).
    let claimed = Box::pin(guard.begin(&endpoint, &reference)).await;
    if let Some(source) = guard.source() {
        let unavailable = matches!(claimed, Err(Refused::Unavailable));
        scope.rec.note_fleet(if unavailable { Source::Local } else { source });
    }
    claimed.map(Some).map_err(|r| match r {
        Refused::Duplicate(Duplicate::Full) => GatewayError::DuplicateGuardFull,
        Refused::Duplicate(Duplicate::InFlight | Duplicate::Succeeded) => {
            GatewayError::DuplicateRequest { unknown: false }
        }
        Refused::Duplicate(Duplicate::Unknown) => GatewayError::DuplicateRequest { unknown: true },
        Refused::Unavailable => GatewayError::DuplicateGuardUnavailable,
    })
}

/// A payout within the route's caps: its amount (and currency) read
/// exactly from the canonical body, the per-request cap checked, then its
/// share of the caller's (or, with `per = "route"`, the route's) UTC day
/// reserved, on this host or with `[fleet]` in Redis (refused, fail closed,
/// when Redis cannot answer). The reservation is settled by the exchange's
/// outcome; dropped before anything is sent, it is released.
pub(super) async fn reserve_amount(
    scope: &mut Scope,
    route: &Route,
    body: &[u8],
) -> Result<Option<Reservation>, GatewayError> {
    let Some(guard) = &route.amounts else {
        return Ok(None);
    };
    let payout = guard.payout(body)?;
    scope.rec.amount = Some(guard.format(payout.amount));
    scope.rec.currency = (!payout.currency.is_empty()).then(|| payout.currency.clone());
    let caller = guard.caller(|| caller(scope, route));
    let reserved = Box::pin(guard.reserve(caller, &payout)).await;
    if guard.source() == "redis" {
        let unavailable = matches!(reserved, Err(Refusal::Unavailable));
        scope
            .rec
            .note_fleet(if unavailable { Source::Local } else { Source::Redis });
    }
    reserved.map(Some).map_err(GatewayError::from)
}

/// Who is paying out, for `per = "client"`: the mTLS identity that admits
/// the caller on this route (the first one the route allows, else the
/// certificate's first), else the caller's address. Never anything the
/// request body says.
fn caller(scope: &Scope, route: &Route) -> String {
    let ids = scope.conn.identities.as_deref().unwrap_or_default();
    let allowed = route.config.allow_identities.as_ref();
    let chosen = match allowed {
        Some(a) => ids
            .iter()
            .find(|id| a.matches(std::slice::from_ref(*id)))
            .or_else(|| ids.first()),
        None => ids.first(),
    };
    chosen.map_or_else(|| scope.conn.ip().to_string(), ToString::to_string)
}

/// The secret to sign with; a request keeps the version it started with.
pub(super) fn credential(scope: &mut Scope, slot: &CredentialSlot) -> Result<Arc<Credential>, GatewayError> {
    let span = scope.trace.as_ref().map(|_| Child::start("credential", Kind::Internal));
    let got = slot.get().map_err(GatewayError::CredentialUnavailable);
    if let (Some(trace), Some(mut span)) = (scope.trace.as_mut(), span) {
        span.set(Attr::new("signgate.credential", slot.name().to_string()));
        match &got {
            Ok(cred) => {
                if let Some(v) = cred.version() {
                    span.set(Attr::new(
                        "signgate.credential.version",
                        i64::try_from(v).unwrap_or(i64::MAX),
                    ));
                }
            }
            Err(e) => span.fail(e.code()),
        }
        trace.add(span.end());
    }
    let cred = got?;
    scope.rec.credential_version = cred.version();
    Ok(cred)
}

/// A request ready to be signed and sent.
pub(super) struct Outgoing {
    pub method: Method,
    pub uri: Uri,
    /// The path the scheme signs (`{path}`).
    pub upstream_path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    /// The route's `max_inflight` slot, held until the response body ends.
    pub permit: OwnedSemaphorePermit,
}

/// Header hygiene and the upstream URI; then a slot among the route's
/// `max_inflight` upstream calls: a slow provider must not pile up
/// unbounded requests (and connections), so a request waits a bounded time
/// and is refused before anything is signed.
pub(super) async fn prepare(scope: &Scope, route: &Route, parts: Parts, body: Bytes) -> Result<Outgoing, GatewayError> {
    let upstream_path = route.upstream_path(parts.uri.path());
    let uri = route
        .upstream_uri(&upstream_path, parts.uri.query())
        .map_err(|_| GatewayError::InvalidPath)?;
    let mut headers = parts.headers;
    headers::sanitize_request(&mut headers, &route.scheme.headers());
    headers.insert(X_REQUEST_ID.clone(), scope.rid.header_value());
    if route.scheme.body == BodyMode::CanonicalJson {
        headers.insert(CONTENT_TYPE, APPLICATION_JSON.clone());
    }
    headers.insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    let permit = acquire_within(&route.inflight, route.config.queue_timeout)
        .await
        .map_err(|e| match e {
            NoSlot::TimedOut => GatewayError::UpstreamBusy,
            NoSlot::Closed => GatewayError::Internal,
        })?;
    Ok(Outgoing {
        method: parts.method,
        uri,
        upstream_path,
        headers,
        body,
        permit,
    })
}

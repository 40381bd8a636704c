//! The upstream exchange: sign (last, after every other change to the
//! request), send, and retry at most once — only when the connection failed
//! before any byte was written, signed afresh with a new timestamp.
//!
//! A credential held in memory signs synchronously (no allocation, no
//! await); a Vault Transit credential signs with one HMAC call to Vault, and
//! a failed call sends nothing (`503 credential_unavailable`).
//!
//! The exchange runs as its own task, detached from the client's request:
//! once a byte may have reached the provider, a client that goes away does
//! not abort it. It finishes (up to `egress.request_timeout_ms`), settles
//! what the request holds ([`Holds`]: the duplicate-guard claim, the amount
//! reservation) by its outcome and hands its result to the request — or, if
//! the client is gone, to the request's `Drop` bookkeeping.

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
use super::GatewayError;
use crate::amount_guard::Reservation;
use crate::config::MAX_COOLDOWN;
use crate::dedup::{Claim, Outcome};
use crate::metrics::Metrics;
use crate::ratelimit::retry_after_header;
use crate::router::Route;
use crate::secrets::{Credential, Key, Unavailable};
use crate::sign::{MessageInput, Signature, Timestamp};
use crate::state::Shared;
use crate::trace::{self, Attr, Child, Kind, Parent};
use crate::upstream::{AttemptError, Fresh, Upstream, UpstreamFailure};

/// What a request holds until its outcome is known: the duplicate guard's
/// claim and the amount guard's reservation. Both are settled by the same
/// [`Outcome`]; each settles itself in `Drop` if the exchange never ends
/// (released if nothing was sent, kept as unknown once it may have been).
#[derive(Default)]
pub(super) struct Holds {
    pub claim: Option<Claim>,
    pub reservation: Option<Reservation>,
}

impl Holds {
    /// From now on bytes may reach the provider.
    fn sending(&mut self) {
        if let Some(c) = self.claim.as_mut() {
            c.sending();
        }
        if let Some(r) = self.reservation.as_mut() {
            r.sending();
        }
    }

    /// Settle both by the outcome (each done, or handed to a retrying task,
    /// when this returns).
    async fn finish(self, outcome: Outcome) {
        let claim = async {
            if let Some(c) = self.claim {
                c.finish(outcome).await;
            }
        };
        let reservation = async {
            if let Some(r) = self.reservation {
                r.finish(outcome).await;
            }
        };
        futures_util::future::join(claim, reservation).await;
    }
}

/// Why the exchange got no response.
pub(super) enum Failure {
    /// The upstream call failed.
    Upstream(AttemptError),
    /// The credential could not sign (Vault Transit failed): nothing was sent.
    Unsigned(Unavailable),
}

/// What the exchange task hands back.
pub(super) struct Exchanged {
    pub result: Result<Response<Incoming>, Failure>,
    /// The last signature sent (its fingerprint, for the audit record).
    pub fingerprint: Option<String>,
    /// The key version that made the last signature, when the signer said
    /// (Transit's `vault:vN:`).
    pub version: Option<u64>,
    /// The route's `max_inflight` slot, held on while the body streams.
    pub permit: OwnedSemaphorePermit,
    /// The spans of each signing and upstream attempt (`[tracing]` only).
    pub spans: Vec<Child>,
}

impl Exchanged {
    /// Note the outcome in the request's record.
    pub fn note(&self, rec: &mut Record) {
        rec.signature_fingerprint.clone_from(&self.fingerprint);
        if self.version.is_some() {
            rec.credential_version = self.version;
        }
        match &self.result {
            Ok(r) => rec.upstream_status = Some(r.status().as_u16()),
            Err(Failure::Upstream(e)) => rec.upstream_error = Some(GatewayError::Upstream(e.failure).code()),
            Err(Failure::Unsigned(_)) => {}
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
    holds: Holds,
) -> Result<(Response<Incoming>, OwnedSemaphorePermit), GatewayError> {
    let reflect = scope.snap.reflect_window(&cred);
    let task = exchange(
        scope.snap.upstream.clone(),
        scope.shared.clone(),
        reflect,
        route.clone(),
        cred,
        out,
        holds,
        scope.rid.as_str().to_string(),
        scope.trace.as_ref().map(trace::RequestTrace::parent),
    );
    // Boxed: the task is a few KiB, and a boxed future moves into the
    // spawned task as one pointer rather than by copying it (callgrind).
    let handle = scope.shared.exchanges().spawn(Box::pin(task));
    let joined = scope.exchange.insert(handle).await;
    scope.exchange = None;
    let mut exchanged = joined.map_err(|_| GatewayError::Internal)?;
    exchanged.note(&mut scope.rec);
    if let Some(t) = scope.trace.as_mut() {
        t.extend(std::mem::take(&mut exchanged.spans));
    }
    match exchanged.result {
        Ok(resp) => Ok((resp, exchanged.permit)),
        Err(Failure::Upstream(e)) => Err(GatewayError::Upstream(e.failure)),
        Err(Failure::Unsigned(why)) => Err(GatewayError::CredentialUnavailable(why)),
    }
}

/// `reflect`: how long the signatures must be remembered (the credential
/// also verifies webhooks). `trace`: the request's trace, whose child spans
/// this task records (parented explicitly: it runs apart from the request).
#[allow(clippy::too_many_arguments)] // one task's inputs, moved in once
async fn exchange(
    upstream: Upstream,
    shared: Arc<Shared>,
    reflect: Option<Duration>,
    route: Arc<Route>,
    cred: Arc<Credential>,
    out: Outgoing,
    mut holds: Holds,
    rid: String,
    trace: Option<Parent>,
) -> Exchanged {
    let metrics = shared.metrics();
    let started = Instant::now();
    let mut retried = false;
    let mut fingerprint = None;
    let mut version = None;
    let mut spans = Spans {
        trace,
        done: Vec::new(),
    };
    let result = loop {
        let attempt = 1 + i64::from(retried);
        // The upstream span's id is chosen first: a forwarded traceparent names it.
        let call_id = trace.map(|_| trace::new_span_id());
        let traceparent = match (trace, call_id) {
            (Some(t), Some(id)) if route.config.forward_traceparent => Some(t.traceparent(id)),
            _ => None,
        };
        let signing = spans.start("sign", Kind::Internal);
        let signed = sign(&route, &cred, &out, &rid).await;
        spans.end_sign(signing, &route, attempt);
        let (ts, sig) = match signed {
            Ok((ts, sig, v)) => {
                version = v.or(version);
                (ts, sig)
            }
            Err(why) => break Err(why),
        };
        let req = signed_request(&route, &cred, &out, &ts, &sig, traceparent);
        fingerprint = Some(sig.fingerprint());
        // Remembered (durably, with the state database) before it is sent.
        if let Some(window) = reflect {
            Box::pin(shared.reflections().remember_sent(sig.mac(), window)).await;
        }
        match &route.metrics.signatures {
            Some((name, counter)) if name == cred.name() => counter.inc(),
            _ => metrics.signatures.with_label_values(&[route.name(), cred.name()]).inc(),
        }
        holds.sending();
        let call = call_id.map(|id| Child::start_with_id("upstream", Kind::Client, id));
        let sent = upstream.send(req).await;
        spans.end_call(call, &route, attempt, &sent);
        match sent {
            Ok(r) => {
                if Fresh::first_use(&r) {
                    route.metrics.connections_opened.inc();
                }
                break Ok(r);
            }
            // Nothing of it was written: the connection failed, or closed
            // before the request was started on it.
            Err(e)
                if e.nothing_sent
                    && !retried
                    && matches!(e.failure, UpstreamFailure::Connect | UpstreamFailure::Reset) =>
            {
                tracing::debug!(request_id = rid, route = route.name(), error = %e.detail, "upstream request not sent; retrying once");
                metrics
                    .upstream_errors
                    .with_label_values(&[route.name(), e.failure.kind()])
                    .inc();
                retried = true;
            }
            Err(e) => {
                tracing::warn!(request_id = rid, route = route.name(), kind = e.failure.kind(), error = %e.detail, "upstream request failed");
                break Err(Failure::Upstream(e));
            }
        }
    };
    conclude(&shared, &route, started, &result, holds).await;
    Exchanged {
        result,
        fingerprint,
        version,
        permit: out.permit,
        spans: spans.done,
    }
}

/// After the last attempt: its duration, what the response says (clock
/// skew, status, a provider cooldown), and the holds (duplicate-guard claim,
/// amount reservation) settled by the outcome.
async fn conclude(
    shared: &Shared,
    route: &Route,
    started: Instant,
    result: &Result<Response<Incoming>, Failure>,
    holds: Holds,
) {
    route.metrics.upstream_duration.observe(started.elapsed().as_secs_f64());
    if let Ok(resp) = result {
        observe_response(shared.metrics(), route, resp);
        // Boxed: rarely awaited (a 429/503 with Retry-After on such a route).
        if route.config.honor_retry_after {
            Box::pin(cool_down(shared, route, resp)).await;
        }
    }
    // Boxed: only requests holding a claim or a reservation pay for the
    // stores' futures (the task is moved whole when it is spawned).
    if holds.claim.is_some() || holds.reservation.is_some() {
        Box::pin(holds.finish(settle(result))).await;
    }
}

/// Sign one attempt: with the secret in memory, or through Vault Transit
/// (then also the key version that signed). A Transit failure is
/// `Unsigned`: nothing is sent.
async fn sign(
    route: &Route,
    cred: &Credential,
    out: &Outgoing,
    rid: &str,
) -> Result<(Timestamp, Signature, Option<u64>), Failure> {
    let scheme = &route.scheme;
    let ts = scheme.timestamp(SystemTime::now());
    let input = message_input(cred, &ts, out);
    let (sig, version) = match cred.key() {
        Key::Local(mac) => (scheme.sign(mac, &input), None),
        Key::Transit(transit) => match Box::pin(transit.hmac(&scheme.message_bytes(&input))).await {
            Ok((v, mac)) => (scheme.signature(mac), Some(v)),
            Err(reason) => {
                tracing::warn!(request_id = rid, route = route.name(), credential = cred.name(), error = %reason, "signing through Vault Transit failed; nothing sent");
                return Err(Failure::Unsigned(Unavailable {
                    credential: cred.name().to_string(),
                    expired: false,
                    reason,
                }));
            }
        },
    };
    Ok((ts, sig, version))
}

/// The exchange's spans: none without a trace.
struct Spans {
    trace: Option<Parent>,
    done: Vec<Child>,
}

impl Spans {
    fn start(&self, name: &'static str, kind: Kind) -> Option<Child> {
        self.trace.map(|_| Child::start(name, kind))
    }

    fn end_sign(&mut self, span: Option<Child>, route: &Route, attempt: i64) {
        if let Some(mut s) = span {
            s.set(Attr::new("signgate.scheme", route.config.scheme.clone()));
            s.set(Attr::new("signgate.attempt", attempt));
            self.done.push(s.end());
        }
    }

    fn end_call(
        &mut self,
        span: Option<Child>,
        route: &Route,
        attempt: i64,
        sent: &Result<Response<Incoming>, AttemptError>,
    ) {
        let Some(mut s) = span else { return };
        let target = &route.config.upstream;
        s.set(Attr::new("server.address", target.authority.host().to_string()));
        let port = target
            .authority
            .port_u16()
            .unwrap_or(if target.scheme == http::uri::Scheme::HTTPS {
                443
            } else {
                80
            });
        s.set(Attr::new("server.port", i64::from(port)));
        s.set(Attr::new("signgate.attempt", attempt));
        match sent {
            Ok(r) => {
                s.set(Attr::new("http.response.status_code", i64::from(r.status().as_u16())));
                if r.status().is_server_error() {
                    s.fail(r.status().as_str().to_string());
                }
            }
            Err(e) => {
                s.set(Attr::new("error.type", e.failure.kind()));
                s.fail(e.failure.kind());
            }
        }
        self.done.push(s.end());
    }
}

/// How the exchange settles a duplicate-guard claim and an amount
/// reservation: only a definite failure releases them (a Transit signing
/// failure sends nothing); a request that may have taken effect holds them.
fn settle(result: &Result<Response<Incoming>, Failure>) -> Outcome {
    match result {
        Ok(r) if r.status().is_success() => Outcome::Succeeded,
        // A timeout reported by the provider (or a proxy in front of it)
        // says nothing about whether the payment went through.
        Ok(r) if matches!(r.status().as_u16(), 408 | 504 | 522 | 524) => Outcome::Unknown,
        Ok(_) => Outcome::Failed,
        Err(Failure::Unsigned(_)) => Outcome::Failed,
        Err(Failure::Upstream(e)) if e.nothing_sent => Outcome::Failed,
        Err(Failure::Upstream(_)) => Outcome::Unknown,
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

/// What the scheme's message is made of for this request.
fn message_input<'a>(cred: &'a Credential, ts: &'a Timestamp, out: &'a Outgoing) -> MessageInput<'a> {
    MessageInput {
        api_key: cred.api_key().as_bytes(),
        timestamp: ts.as_str(),
        method: out.method.as_str(),
        path: &out.upstream_path,
        query: out.uri.query().unwrap_or(""),
        body: &out.body,
    }
}

/// The request with the scheme's headers: signed last, after every other
/// change to the request. The gateway's own `traceparent`
/// (`forward_traceparent`) is added with the scheme's headers; no scheme
/// signs it.
fn signed_request(
    route: &Route,
    cred: &Credential,
    out: &Outgoing,
    ts: &Timestamp,
    sig: &Signature,
    traceparent: Option<HeaderValue>,
) -> Request<Full<Bytes>> {
    let scheme = &route.scheme;
    let mut headers = out.headers.clone();
    if let Some(tp) = traceparent {
        headers.insert(trace::TRACEPARENT, tp);
    }
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
    req
}

//! The answer on its way to the client: the `respond` step, and the two
//! kinds of response body.
//!
//! An upstream body ([`UpstreamBody`]) is streamed frame by frame (never
//! buffered) under a gap timer: when the upstream sends nothing for
//! `egress.response_idle_timeout_ms` the stream is cut (the client sees an
//! incomplete response), counted as `signgate_upstream_errors_total{kind=
//! "response_idle"}` (and `signgate_denied_total{reason=
//! "upstream_response_idle"}`) and recorded in the audit record. A body the
//! upstream breaks off counts as `kind="reset"` (reason `upstream_failed`).
//! The route's `max_inflight` slot is held until the body is done, and the
//! request's audit record is written when it ends.
//!
//! A local body (a refusal, a webhook acknowledgement) may carry the request
//! body the gateway never read. It is read and discarded for at most
//! `listener.linger_ms` / `linger_bytes`, and no longer than the client
//! keeps sending (a pause over `body_idle_timeout_ms` ends it; a body refused
//! for its timers is not lingered on at all) (nginx's lingering close), so the
//! client reads its answer instead of a reset: on HTTP/1.1 a close with
//! unread data resets the connection; on HTTP/2 a client still sending when
//! its stream is reset may report the reset instead of the answer (curl
//! does). On HTTP/1.1 the answer goes out first and the body is read after
//! it. On HTTP/2 the answer first waits for the rest of the body, for at
//! most half of `linger_ms` and within `linger_bytes` (not when the client
//! waits for `100 Continue`, nor when its declared length is over
//! `linger_bytes`), and what is left of the bounds applies after it: a
//! client that sees a refusal while it is still sending may end its stream
//! short of its declared length (curl 7.88: "HTTP error before end of send,
//! stop sending"), which HTTP/2 treats as a malformed request (RFC 9113
//! §8.1.1, stream error PROTOCOL_ERROR), and that reset can overtake the
//! answer's DATA frame. The answer still goes out by half of `linger_ms`,
//! so a client that stops sending when it reads its refusal (curl) is not
//! kept waiting for a large upload. Past the bounds the body is dropped:
//! HTTP/1.1 closes the connection, HTTP/2 resets the stream with NO_ERROR
//! after END_STREAM (RFC 9113 §8.1, "stop sending").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Response, StatusCode};
use http_body_util::{BodyExt as _, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::scope::Scope;
use super::{GatewayError, RequestId};
use crate::audit::{Entry, Slot};
use crate::config::ListenerConfig;
use crate::headers;
use crate::listener::InFlight;
use crate::metrics::Metrics;
use crate::router::Route;
use crate::upstream::UpstreamFailure;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The last step: response hygiene, and the body streams back with the
/// route's in-flight slot.
pub(super) fn respond(
    scope: &Scope,
    route: &Arc<Route>,
    (response, permit): (Response<Incoming>, OwnedSemaphorePermit),
) -> Response<ResponseBody> {
    let (mut parts, body) = response.into_parts();
    headers::sanitize_response(&mut parts.headers);
    let body = UpstreamBody::new(
        body,
        scope.snap.upstream.response_idle_timeout(),
        scope.shared.metrics().clone(),
        route.clone(),
        scope.rid.clone(),
        permit,
    );
    Response::from_parts(parts, ResponseBody::Upstream(body))
}

/// What the listener sends back for one request.
#[allow(clippy::large_enum_variant)] // one per response, moved once: not worth an allocation
pub enum ResponseBody {
    Upstream(UpstreamBody),
    Local(LocalBody),
}

impl ResponseBody {
    /// A JSON answer built by the gateway itself.
    pub(super) fn local(status: StatusCode, body: Bytes) -> Response<ResponseBody> {
        let mut resp = Response::new(ResponseBody::Local(LocalBody {
            inner: Full::new(body),
            linger: None,
        }));
        *resp.status_mut() = status;
        resp
    }

    /// The contract's JSON error for `e`.
    pub(super) fn refusal(e: &GatewayError, rid: &RequestId) -> Response<ResponseBody> {
        e.to_response(rid)
            .map(|inner| ResponseBody::Local(LocalBody { inner, linger: None }))
    }

    /// Write the request's audit record: now for a local answer, when the
    /// body ends for a streamed one (so a cut stream is recorded as such).
    pub(super) fn audit(&mut self, slot: Slot, entry: Entry) {
        match self {
            ResponseBody::Upstream(b) => b.audit = Some((slot, entry)),
            ResponseBody::Local(_) => slot.write(entry),
        }
    }

    /// Hand over the unread request body, read and discarded after the
    /// answer, or before it when `first` (HTTP/2; see the module doc).
    /// `in_flight` (the listener's mark of the request) is held to the end
    /// of the linger: the body's bytes are not a next request's head.
    pub(super) fn linger(
        &mut self,
        unread: Incoming,
        in_flight: Option<InFlight>,
        listener: &ListenerConfig,
        first: bool,
    ) {
        if let ResponseBody::Local(b) = self {
            b.linger = Some(Linger {
                body: unread,
                time: listener.linger,
                bytes: listener.linger_bytes,
                idle: listener.body_idle_timeout,
                first,
                _in_flight: in_flight,
            });
        }
    }

    /// Before an HTTP/2 answer goes out: read and discard the rest of the
    /// request body, for at most half of the linger time and within its
    /// bytes (module doc). A body whose declared length is over the bytes is
    /// left for after the answer, which then cuts it at once.
    pub(super) async fn discard_first(&mut self) {
        let ResponseBody::Local(b) = self else { return };
        let Some(l) = b.linger.as_mut() else { return };
        if !l.first
            || l.time.is_zero()
            || l.bytes == 0
            || l.body.is_end_stream()
            || l.body.size_hint().lower() > l.bytes
        {
            return;
        }
        if l.discard(l.time / 2).await {
            b.linger = None;
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            ResponseBody::Upstream(b) => Pin::new(b).poll_frame(cx),
            ResponseBody::Local(b) => Pin::new(&mut b.inner).poll_frame(cx).map_err(|never| match never {}),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ResponseBody::Upstream(b) => b.is_end_stream(),
            ResponseBody::Local(b) => b.inner.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ResponseBody::Upstream(b) => b.size_hint(),
            ResponseBody::Local(b) => b.inner.size_hint(),
        }
    }
}

/// A body built by the gateway, with the request body it never read.
pub struct LocalBody {
    inner: Full<Bytes>,
    linger: Option<Linger>,
}

struct Linger {
    body: Incoming,
    /// What is left of the bounds.
    time: Duration,
    bytes: u64,
    /// The longest pause between two pieces (`body_idle_timeout`): a client
    /// that stops sending is not waited for.
    idle: Duration,
    /// Read before the answer (HTTP/2), not only after it.
    first: bool,
    _in_flight: Option<InFlight>,
}

impl Linger {
    /// Read and discard what the client still sends, for at most `within`
    /// (of the time left): `true` at the body's end (or once the client
    /// reset or closed it), `false` when more than `bytes` came or the time
    /// is up; what was spent is taken off the bounds. A body of exactly
    /// `bytes` is read to its end (on HTTP/2 the end is often an empty DATA
    /// frame after the last byte; stopping before it would reset a stream
    /// the client is about to close).
    async fn discard(&mut self, within: Duration) -> bool {
        let started = Instant::now();
        let deadline = started + within.min(self.time);
        let ended = loop {
            let gap = (Instant::now() + self.idle).min(deadline);
            match tokio::time::timeout_at(gap, self.body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let n = frame.data_ref().map_or(0, |d| d.len() as u64);
                    if n > self.bytes {
                        self.bytes = 0;
                        break false;
                    }
                    self.bytes -= n;
                }
                Ok(None | Some(Err(_))) => break true,
                Err(_) => break false,
            }
        };
        self.time = self.time.saturating_sub(started.elapsed());
        ended
    }
}

impl Drop for LocalBody {
    /// The answer is out (or the connection is gone): release the request body.
    fn drop(&mut self) {
        let Some(mut l) = self.linger.take() else { return };
        // Without linger, or its bounds spent: dropped now (HTTP/2 resets
        // the stream with NO_ERROR after END_STREAM; HTTP/1.1 closes the
        // connection).
        if l.time.is_zero() || l.bytes == 0 || l.body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let left = l.time;
                l.discard(left).await;
            });
        }
    }
}

/// An upstream response body with a gap timer (see the module doc).
pub struct UpstreamBody {
    inner: Incoming,
    idle: Duration,
    /// Armed when the body starts waiting on the upstream, not while the
    /// client is slow to take what was already sent.
    timer: Pin<Box<Sleep>>,
    waiting: bool,
    done: bool,
    metrics: Arc<Metrics>,
    route: Arc<Route>,
    rid: RequestId,
    /// The request's audit record, written when the body ends (or is cut).
    audit: Option<(Slot, Entry)>,
    _inflight: OwnedSemaphorePermit,
}

impl UpstreamBody {
    fn new(
        inner: Incoming,
        idle: Duration,
        metrics: Arc<Metrics>,
        route: Arc<Route>,
        rid: RequestId,
        inflight: OwnedSemaphorePermit,
    ) -> Self {
        UpstreamBody {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            waiting: false,
            done: false,
            metrics,
            route,
            rid,
            audit: None,
            _inflight: inflight,
        }
    }

    fn cut(&mut self, failure: UpstreamFailure, detail: &str) {
        self.done = true;
        let code = GatewayError::Upstream(failure).code();
        self.metrics
            .upstream_errors
            .with_label_values(&[self.route.name(), failure.kind()])
            .inc();
        // A failed request, like its audit record says (its status was
        // already counted when the head went out).
        self.metrics.denied.with_label_values(&[self.route.name(), code]).inc();
        tracing::warn!(
            request_id = self.rid.as_str(),
            route = self.route.name(),
            kind = failure.kind(),
            error = detail,
            "upstream response body cut"
        );
        if let Some((slot, mut entry)) = self.audit.take() {
            entry.decision = "denied";
            entry.reason = Some(code);
            slot.write(entry);
        }
    }
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        if this.done {
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                this.waiting = false;
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => {
                this.cut(UpstreamFailure::Reset, &e.to_string());
                Poll::Ready(Some(Err(e.into())))
            }
            Poll::Ready(None) => {
                this.done = true;
                Poll::Ready(None)
            }
            Poll::Pending => {
                if !this.waiting {
                    this.waiting = true;
                    this.timer.as_mut().reset(Instant::now() + this.idle);
                }
                match this.timer.as_mut().poll(cx) {
                    Poll::Pending => Poll::Pending,
                    Poll::Ready(()) => {
                        let detail = format!("no body data within {} ms", this.idle.as_millis());
                        this.cut(UpstreamFailure::ResponseIdle, &detail);
                        Poll::Ready(Some(Err(
                            std::io::Error::new(std::io::ErrorKind::TimedOut, detail).into()
                        )))
                    }
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for UpstreamBody {
    /// Completed, or the client went away before the end of the body: the
    /// record as it was at the head (with reason `client_gone` if it was not
    /// all delivered; the provider's status is in it either way).
    fn drop(&mut self) {
        if let Some((slot, mut entry)) = self.audit.take() {
            if !(self.done || self.inner.is_end_stream()) {
                entry.reason = Some(GatewayError::ClientGone.code());
                self.metrics
                    .client_gone
                    .with_label_values(&[self.route.name(), "sent"])
                    .inc();
            }
            slot.write(entry);
        }
    }
}

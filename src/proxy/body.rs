//! The upstream response body on its way to the client. Streamed frame by
//! frame (never buffered), under a gap timer: when the upstream sends nothing
//! for `egress.response_idle_timeout_ms` the stream is cut (the client sees
//! an incomplete response), counted as `signgate_upstream_errors_total{kind=
//! "response_idle"}` (and `signgate_denied_total{reason=
//! "upstream_response_idle"}`) and recorded in the audit record. A body the
//! upstream breaks off counts as `kind="reset"` (reason `upstream_failed`). The route's `max_inflight` slot is
//! held until the body is done, so concurrency towards the upstream stays
//! bounded while bodies stream.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::OwnedSemaphorePermit;
use tokio::time::{Instant, Sleep};

use super::{GatewayError, RequestId, UpstreamFailure};
use crate::audit::{Entry, Slot};
use crate::metrics::Metrics;
use crate::router::Route;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

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
    pub(super) fn new(
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

    /// Hold the request's audit record until the body is over, so that a cut
    /// stream is recorded with its reason (still one record per request).
    pub(super) fn audit_at_end(&mut self, slot: Slot, entry: Entry) {
        self.audit = Some((slot, entry));
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
    /// Completed, or the client went away: the record as it was at the head.
    fn drop(&mut self) {
        if let Some((slot, entry)) = self.audit.take() {
            slot.write(entry);
        }
    }
}

//! The request scope: one value that owns a request's bookkeeping — the
//! in-flight gauge, the record that becomes its metrics and its one audit
//! line, the reserved audit slot, the unread request body and an upstream
//! exchange in flight — and finishes it whatever ends the request.
//!
//! [`Scope::finish`] is the normal end: the answer is built, counted and
//! audited (a streamed answer is audited when its body ends). Any `.await`
//! of the pipeline can instead be the last: the client closes, HTTP/2 resets
//! the stream, the drain deadline drops the connection. Then `Drop` records
//! the request as `client_gone`; if an upstream exchange had started, its
//! record waits for the exchange (which carries on without the client) and
//! carries the provider's status.

use std::sync::Arc;

use http::{HeaderValue, Request, Response, Version};
use hyper::body::Incoming;

use super::exchange::{Exchanged, Failure};
use super::record::{self, Record};
use super::response::ResponseBody;
use super::{GatewayError, RequestId};
use crate::audit::Slot;
use crate::headers::X_REQUEST_ID;
use crate::listener::{ConnInfo, InFlight};
use crate::state::{Shared, Snapshot};
use crate::trace::RequestTrace;

pub(super) struct Scope {
    pub shared: Arc<Shared>,
    /// The snapshot this request started with; kept to its end.
    pub snap: Arc<Snapshot>,
    pub conn: Arc<ConnInfo>,
    pub rid: RequestId,
    pub version: Version,
    pub rec: Record,
    /// The reserved audit slot (none: refused as `audit_unavailable`).
    pub slot: Option<Slot>,
    /// The request body while it is unread: kept until the answer is sent,
    /// so an early refusal reaches the client before the body is dropped.
    pub unread: Option<Incoming>,
    /// The listener's mark of this request in progress, kept while an
    /// unread body lingers after the answer.
    pub in_flight: Option<InFlight>,
    /// The client sent `Expect: 100-continue`: it holds its body back.
    pub expects_continue: bool,
    /// The upstream exchange in flight; it outlives the request if the
    /// client goes away.
    pub exchange: Option<tokio::task::JoinHandle<Exchanged>>,
    /// The request's span and its children (`[tracing]` only).
    pub trace: Option<RequestTrace>,
    finished: bool,
}

impl Scope {
    pub fn open(shared: Arc<Shared>, conn: Arc<ConnInfo>, req: &Request<Incoming>) -> Scope {
        shared.metrics().inflight.inc();
        Scope {
            snap: shared.snapshot(),
            rid: RequestId::parse_or_new(req.headers().get(&X_REQUEST_ID)),
            version: req.version(),
            rec: Record::new(req.method().clone(), req.uri().clone()),
            trace: shared.tracer().map(|t| t.begin(req.headers())),
            shared,
            conn,
            slot: None,
            unread: None,
            in_flight: None,
            expects_continue: false,
            exchange: None,
            finished: false,
        }
    }

    /// Keep the body in the scope (see `unread`); the steps see the head.
    pub fn take_body(&mut self, req: Request<Incoming>) -> http::request::Parts {
        let (mut parts, body) = req.into_parts();
        self.unread = Some(body);
        self.in_flight = parts.extensions.remove::<InFlight>();
        self.expects_continue = parts
            .headers
            .get(http::header::EXPECT)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"100-continue"));
        parts
    }

    pub fn http1(&self) -> bool {
        self.version < Version::HTTP_2
    }

    /// The normal end: build the answer, count it, audit it.
    pub fn finish(mut self, result: Result<Response<ResponseBody>, GatewayError>) -> Response<ResponseBody> {
        self.finished = true;
        let (mut resp, error) = match result {
            Ok(r) => (r, None),
            Err(e) => {
                tracing::debug!(request_id = self.rid.as_str(), client = %self.conn.peer, code = e.code(), "refused");
                (ResponseBody::refusal(&e, &self.rid), Some(e))
            }
        };
        resp.headers_mut().insert(X_REQUEST_ID.clone(), self.rid.header_value());
        if self.http1()
            && matches!(
                error,
                Some(GatewayError::UriTooLong { .. } | GatewayError::UnsupportedTransferCoding)
            )
        {
            // Like hyper's own 431: a client sending oversized heads gets no keep-alive.
            resp.headers_mut()
                .insert(http::header::CONNECTION, HeaderValue::from_static("close"));
        }
        // A body never read is read and discarded after the answer (before
        // it on HTTP/2, see `response`), the request still in progress for
        // the listener's timers meanwhile.
        if let Some(unread) = self.unread.take() {
            let first = !self.http1() && !self.expects_continue;
            resp.body_mut()
                .linger(unread, self.in_flight.take(), &self.snap.config.listener, first);
        }
        record::count(&self.shared, &self.rec, resp.status(), error.as_ref());
        record::trace(
            &self.shared,
            self.trace.take(),
            &self.rec,
            &self.rid,
            resp.status(),
            error.as_ref(),
        );
        match (self.slot.take(), self.shared.audit()) {
            (Some(slot), Some(log)) => {
                let entry = record::audit_entry(&self.rec, &self.rid, &self.conn, &resp, error.as_ref(), &log);
                resp.body_mut().audit(slot, entry);
            }
            _ => {
                self.shared
                    .metrics()
                    .audit_records
                    .with_label_values(&["refused"])
                    .inc();
                tracing::error!(request_id = self.rid.as_str(), "request refused: no audit slot");
            }
        }
        resp
    }

    /// The request ended without an answer: record it as `client_gone`.
    fn abandon(&mut self) {
        let gone = Abandoned {
            shared: self.shared.clone(),
            conn: self.conn.clone(),
            rid: self.rid.clone(),
            rec: std::mem::replace(&mut self.rec, Record::new(http::Method::GET, http::Uri::default())),
            slot: self.slot.take(),
            trace: self.trace.take(),
        };
        match (self.exchange.take(), tokio::runtime::Handle::try_current()) {
            (Some(exchange), Ok(_)) => {
                tracing::info!(
                    request_id = gone.rid.as_str(),
                    "client went away; the upstream exchange completes and is audited"
                );
                self.shared.exchanges().spawn(async move {
                    let exchanged = exchange.await.ok();
                    gone.record(exchanged);
                });
            }
            _ => gone.record(None),
        }
    }
}

impl Drop for Scope {
    fn drop(&mut self) {
        self.shared.metrics().inflight.dec();
        if !self.finished {
            self.abandon();
        }
    }
}

/// The bookkeeping of a request whose client went away.
struct Abandoned {
    shared: Arc<Shared>,
    conn: Arc<ConnInfo>,
    rid: RequestId,
    rec: Record,
    slot: Option<Slot>,
    trace: Option<RequestTrace>,
}

impl Abandoned {
    /// Count and audit it; with the finished exchange, with the provider's
    /// status (its response body is dropped unread).
    fn record(mut self, exchanged: Option<Exchanged>) {
        if let Some(mut ex) = exchanged {
            ex.note(&mut self.rec);
            if let Some(t) = self.trace.as_mut() {
                t.extend(std::mem::take(&mut ex.spans));
            }
            // The upstream failed (a timeout, a reset) whether or not its
            // client waited for it: count it like any upstream error.
            if let Err(Failure::Upstream(e)) = &ex.result {
                self.shared
                    .metrics()
                    .upstream_errors
                    .with_label_values(&[record::route_label(&self.rec), e.failure.kind()])
                    .inc();
            }
        }
        let error = GatewayError::ClientGone;
        let status = error.status();
        record::count(&self.shared, &self.rec, status, Some(&error));
        record::trace(
            &self.shared,
            self.trace.take(),
            &self.rec,
            &self.rid,
            status,
            Some(&error),
        );
        self.shared
            .metrics()
            .client_gone
            .with_label_values(&[
                record::route_label(&self.rec),
                if self.rec.upstream_status.is_some() || self.rec.signature_fingerprint.is_some() {
                    "sent"
                } else {
                    "not_sent"
                },
            ])
            .inc();
        if let (Some(slot), Some(log)) = (self.slot.take(), self.shared.audit()) {
            let mut entry = record::entry(&self.rec, &self.rid, &self.conn, status, Some(&error), None, &log);
            entry.decision = if self.rec.signature_fingerprint.is_some() {
                "allowed"
            } else {
                "abandoned"
            };
            slot.write(entry);
        }
    }
}

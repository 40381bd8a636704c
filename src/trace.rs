//! Request traces (`[tracing]`): one span per request, with child spans for
//! the credential, each signing and each upstream attempt, exported over
//! OTLP/HTTP (protobuf) by the OpenTelemetry SDK's batch span processor.
//!
//! **Off by default, free when off.** Without `[tracing]` no [`Tracer`]
//! exists: the pipeline carries an empty `Option` and nothing is recorded,
//! allocated or parsed (a caller's `traceparent` is not even read).
//!
//! **Spans are data until the outcome is known.** A request's spans are not
//! SDK span objects: the request's scope records them (ids, times,
//! attributes) as plain values, the upstream exchange (its own task) records
//! its spans under the ids it was handed ([`Parent`]) and hands them back
//! with its result. When the request ends, [`Tracer::end`] decides once for
//! the whole request and either gives every span to the batch processor or
//! drops them all. A trace is never exported in part, and no state is shared
//! between requests to decide it.
//!
//! **The decision.** The head decision is the SDK's
//! `ParentBased(TraceIdRatioBased(sample_ratio))` sampler: a caller's
//! `traceparent` decides with its sampled flag, otherwise the trace id's
//! low bits against the ratio (the same rule as every OpenTelemetry SDK,
//! so services sampling by ratio agree on a trace). It is overruled for
//! errors ([`is_error`]): a request that ended in an error is always
//! exported, whatever the ratio (even 0).
//!
//! **What spans carry.** Route, status, request id, method (the bounded
//! label), error code, credential name and version, scheme, attempt,
//! upstream host and status. Never a secret, a body, a signature, a path or
//! a query.

mod client;
mod export;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator as _;
use opentelemetry::trace::{SpanContext, SpanId, SpanKind, Status, TraceContextExt as _, TraceFlags, TraceId};
use opentelemetry::{Context, InstrumentationScope, KeyValue};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_otlp::{Protocol, WithExportConfig as _, WithHttpConfig as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, IdGenerator as _, RandomIdGenerator, Sampler, SamplingDecision,
    ShouldSample as _, SpanData, SpanEvents, SpanLinks, SpanProcessor as _,
};
use opentelemetry_sdk::Resource;

use crate::config::TracingConfig;

pub(crate) use opentelemetry::trace::SpanKind as Kind;
pub(crate) use opentelemetry::KeyValue as Attr;

/// The W3C trace-context header the gateway forwards its own span in
/// (`forward_traceparent`); a caller's is never forwarded (`headers`).
pub const TRACEPARENT: &str = "traceparent";

/// How long one export (a batch) may take, connection included.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for the last spans to be exported.
pub const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why the tracer could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("the OTLP exporter: {0}")]
    Exporter(String),
    #[error("no tokio runtime to send exports on")]
    NoRuntime,
}

/// A gateway's tracer: the sampler, the batch processor and its exporter.
pub(crate) struct Tracer {
    processor: BatchSpanProcessor,
    sampler: Sampler,
    propagator: TraceContextPropagator,
    scope: InstrumentationScope,
}

impl std::fmt::Debug for Tracer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tracer")
            .field("sampler", &self.sampler)
            .finish_non_exhaustive()
    }
}

impl Tracer {
    /// Build the exporter (OTLP/HTTP protobuf to `config.otlp_endpoint`,
    /// through [`client::ExportClient`]) and its batch processor, whose
    /// thread exports every 5 s or 512 spans (the SDK's defaults, which the
    /// standard `OTEL_BSP_*` variables change). Call inside the runtime.
    /// `spans` counts what the exporter sent (`signgate_trace_spans_total`).
    pub fn start(config: &TracingConfig, spans: prometheus::IntCounterVec) -> Result<Tracer, TraceError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| TraceError::NoRuntime)?;
        let client =
            client::ExportClient::new(runtime, EXPORT_TIMEOUT).map_err(|e| TraceError::Exporter(e.to_string()))?;
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(config.otlp_endpoint.to_string())
            .with_timeout(EXPORT_TIMEOUT)
            .with_http_client(client)
            .build()
            .map_err(|e| TraceError::Exporter(e.to_string()))?;
        let exporter = export::Counted::new(exporter, spans, config.otlp_endpoint.to_string());
        let mut processor = BatchSpanProcessor::builder(exporter)
            .with_batch_config(BatchConfigBuilder::default().build())
            .build();
        let resource = Resource::builder()
            .with_service_name(config.service_name.clone())
            .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
            .build();
        processor.set_resource(&resource);
        Ok(Tracer {
            processor,
            sampler: Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(config.sample_ratio))),
            propagator: TraceContextPropagator::new(),
            scope: InstrumentationScope::builder("signgate")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        })
    }

    /// Open a request's span: continue the caller's W3C trace context when
    /// its `traceparent` is well-formed, else start a trace; take the head
    /// decision.
    pub fn begin(&self, headers: &HeaderMap) -> RequestTrace {
        let cx = self
            .propagator
            .extract_with_context(&Context::new(), &HeaderExtractor(headers));
        let remote = cx.span().span_context().clone();
        let ids = RandomIdGenerator::default();
        let (trace_id, parent) = if remote.is_valid() {
            (remote.trace_id(), Some(remote.span_id()))
        } else {
            (ids.new_trace_id(), None)
        };
        let head = self
            .sampler
            .should_sample(Some(&cx), trace_id, "request", &SpanKind::Server, &[], &[]);
        let flags = if head.decision == SamplingDecision::RecordAndSample {
            TraceFlags::SAMPLED
        } else {
            TraceFlags::default()
        };
        RequestTrace {
            context: SpanContext::new(trace_id, ids.new_span_id(), flags, false, head.trace_state),
            parent,
            start: SystemTime::now(),
            children: Vec::new(),
        }
    }

    /// The request ended: export all of its spans if it was sampled or is an
    /// error, else drop them all.
    pub fn end(&self, trace: RequestTrace, outcome: &Outcome<'_>) {
        let error = is_error(outcome);
        let sampled = trace.context.is_sampled();
        if !(sampled || error) {
            return;
        }
        let end = SystemTime::now();
        let RequestTrace {
            context,
            parent,
            start,
            children,
        } = trace;
        let exported = |span_id: SpanId| {
            SpanContext::new(
                context.trace_id(),
                span_id,
                TraceFlags::SAMPLED,
                false,
                context.trace_state().clone(),
            )
        };
        for child in children {
            self.processor.on_end(SpanData {
                span_context: exported(child.span_id),
                parent_span_id: context.span_id(),
                parent_span_is_remote: false,
                span_kind: child.kind,
                name: Cow::Borrowed(child.name),
                start_time: child.start,
                end_time: child.end.unwrap_or(end),
                attributes: child.attributes,
                dropped_attributes_count: 0,
                events: SpanEvents::default(),
                links: SpanLinks::default(),
                status: child.status,
                instrumentation_scope: self.scope.clone(),
            });
        }
        let mut attributes = vec![
            KeyValue::new("http.request.method", outcome.method.to_string()),
            KeyValue::new("http.response.status_code", i64::from(outcome.status)),
            KeyValue::new("signgate.route", outcome.route.to_string()),
            KeyValue::new("signgate.request_id", outcome.request_id.to_string()),
            KeyValue::new("signgate.trace.reason", if sampled { "sampled" } else { "error" }),
        ];
        if let Some(code) = outcome.code {
            attributes.push(KeyValue::new("signgate.code", code));
        }
        let status = if error {
            Status::error(outcome.code.unwrap_or("upstream_error"))
        } else {
            Status::Unset
        };
        self.processor.on_end(SpanData {
            span_context: exported(context.span_id()),
            parent_span_id: parent.unwrap_or(SpanId::INVALID),
            parent_span_is_remote: parent.is_some(),
            span_kind: SpanKind::Server,
            name: Cow::Owned(format!("{} {}", outcome.method, outcome.route)),
            start_time: start,
            end_time: end,
            attributes,
            dropped_attributes_count: 0,
            events: SpanEvents::default(),
            links: SpanLinks::default(),
            status,
            instrumentation_scope: self.scope.clone(),
        });
    }

    /// Export what is queued and stop the exporter (shutdown; blocks up to
    /// [`FLUSH_TIMEOUT`] on a blocking thread, never on the runtime).
    pub async fn flush(self: Arc<Self>) {
        let done = tokio::task::spawn_blocking(move || self.processor.shutdown_with_timeout(FLUSH_TIMEOUT)).await;
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("traces: the last spans could not be exported: {e}"),
            Err(e) => tracing::warn!("traces: flushing failed: {e}"),
        }
    }
}

/// What the request span says about its end, and what decides an error.
pub(crate) struct Outcome<'a> {
    /// The bounded method label (`POST`, `other`…).
    pub method: &'a str,
    /// The route or webhook name, or `none`.
    pub route: &'a str,
    /// What the client got (499 when it went away).
    pub status: u16,
    pub request_id: &'a str,
    /// The refusal or failure code, if any.
    pub code: Option<&'static str>,
    /// What the provider answered, if it did.
    pub upstream_status: Option<u16>,
    /// Whether the request had been sent upstream (signed at least once).
    pub sent: bool,
}

/// The requests whose traces are always exported, whatever the ratio:
/// - an answer of 500 or more (the gateway's own failures, such as
///   `audit_unavailable`, `credential_unavailable`, `upstream_busy`,
///   upstream connect/TLS/timeout failures, and the provider's 5xx);
/// - the provider's 401 or 403: a signature, key or timestamp it refused;
/// - `client_gone` after the request was sent: the provider was called but
///   the caller did not wait for the answer.
///
/// The gateway's own 4xx refusals (404, 405, 403 by allowlist, 413, 429…)
/// are not errors here: a misbehaving or hostile client can produce them at
/// any rate, and they are counted in `signgate_denied_total` anyway.
pub(crate) fn is_error(o: &Outcome<'_>) -> bool {
    o.status >= 500 || matches!(o.upstream_status, Some(401 | 403)) || (o.code == Some("client_gone") && o.sent)
}

/// A request's span while the request runs: its context (trace id, span
/// id, the head decision as the sampled flag, the caller's trace state),
/// the caller's span id, and the child spans recorded so far.
pub(crate) struct RequestTrace {
    context: SpanContext,
    parent: Option<SpanId>,
    start: SystemTime,
    children: Vec<Child>,
}

impl RequestTrace {
    /// The ids the request's child spans need (copied into the exchange task).
    pub fn parent(&self) -> Parent {
        Parent {
            trace_id: self.context.trace_id(),
            sampled: self.context.is_sampled(),
        }
    }

    pub fn add(&mut self, child: Child) {
        self.children.push(child);
    }

    pub fn extend(&mut self, children: Vec<Child>) {
        self.children.extend(children);
    }

    #[cfg(test)]
    pub fn trace_id(&self) -> TraceId {
        self.context.trace_id()
    }
}

/// What a child span recorded elsewhere (the exchange task) needs to know of
/// its request: the trace and the head decision. The parent span id is the
/// request's, filled in when the request ends.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Parent {
    trace_id: TraceId,
    sampled: bool,
}

impl Parent {
    /// The `traceparent` naming the gateway's span `span_id` of this trace
    /// (`forward_traceparent`), sampled flag from the head decision: a
    /// provider that traces sees the gateway's upstream call as its parent.
    pub fn traceparent(&self, span_id: SpanId) -> HeaderValue {
        let flags = if self.sampled { "01" } else { "00" };
        HeaderValue::from_str(&format!("00-{}-{span_id}-{flags}", self.trace_id))
            .unwrap_or(HeaderValue::from_static(""))
    }
}

/// A fresh span id.
pub(crate) fn new_span_id() -> SpanId {
    RandomIdGenerator::default().new_span_id()
}

/// One child span, recorded as data: name, kind, its own id, times,
/// attributes and status.
pub(crate) struct Child {
    name: &'static str,
    kind: SpanKind,
    span_id: SpanId,
    start: SystemTime,
    end: Option<SystemTime>,
    attributes: Vec<KeyValue>,
    status: Status,
}

impl Child {
    /// Start a child span now.
    pub fn start(name: &'static str, kind: SpanKind) -> Child {
        Child::start_with_id(name, kind, new_span_id())
    }

    /// Start a child span now, with an id chosen before (one a
    /// `traceparent` already names).
    pub fn start_with_id(name: &'static str, kind: SpanKind, span_id: SpanId) -> Child {
        Child {
            name,
            kind,
            span_id,
            start: SystemTime::now(),
            end: None,
            attributes: Vec::new(),
            status: Status::Unset,
        }
    }

    #[cfg(test)]
    pub fn span_id(&self) -> SpanId {
        self.span_id
    }

    pub fn set(&mut self, attribute: KeyValue) {
        self.attributes.push(attribute);
    }

    pub fn fail(&mut self, description: impl Into<Cow<'static, str>>) {
        self.status = Status::error(description);
    }

    /// End it now.
    pub fn end(mut self) -> Child {
        self.end = Some(SystemTime::now());
        self
    }
}

#[cfg(test)]
mod tests;

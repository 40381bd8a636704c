//! The OTLP exporter, counted: every batch's spans are counted as exported
//! or failed (`signgate_trace_spans_total`), and a failing collector is
//! logged once when exports start failing and once when they work again,
//! not once per batch.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SpanData, SpanExporter};
use opentelemetry_sdk::Resource;
use prometheus::IntCounterVec;

#[derive(Debug)]
pub(super) struct Counted<E> {
    inner: E,
    spans: IntCounterVec,
    endpoint: String,
    failing: AtomicBool,
}

impl<E> Counted<E> {
    pub fn new(inner: E, spans: IntCounterVec, endpoint: String) -> Self {
        Counted {
            inner,
            spans,
            endpoint,
            failing: AtomicBool::new(false),
        }
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let n = batch.len() as u64;
        let result = self.inner.export(batch).await;
        let failed = result.is_err();
        self.spans
            .with_label_values(&[if failed { "failed" } else { "exported" }])
            .inc_by(n);
        if self.failing.swap(failed, Ordering::Relaxed) != failed {
            match &result {
                Err(e) => tracing::warn!(
                    endpoint = %self.endpoint,
                    error = %e,
                    "traces cannot be exported; spans are dropped until the collector answers"
                ),
                Ok(()) => tracing::info!(endpoint = %self.endpoint, "traces are exported again"),
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

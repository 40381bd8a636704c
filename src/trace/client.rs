//! The HTTP client the OTLP exporter sends through: the gateway's own
//! pooled hyper-util client over its rustls connector ([`Upstream`], as the
//! webhook delivery worker uses it), so tracing adds no second HTTP or TLS
//! stack. `https://` collectors are verified against the webpki roots.
//!
//! The SDK's batch processor exports from its own thread with a plain
//! `block_on`; hyper needs the tokio runtime, so each export is spawned on
//! the gateway's runtime and awaited from that thread.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt as _, Full, Limited};
use opentelemetry_http::{HttpClient, HttpError};
use tokio::runtime::Handle;

use crate::config::{EgressConfig, DEFAULT_CONNECT_TIMEOUT};
use crate::upstream::Upstream;

/// A collector's answer is a small protobuf; more is refused.
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

pub(crate) struct ExportClient {
    client: Upstream,
    runtime: Handle,
    timeout: Duration,
}

impl std::fmt::Debug for ExportClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportClient")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

impl ExportClient {
    /// `timeout` bounds one export: connect, request and response body.
    pub fn new(runtime: Handle, timeout: Duration) -> Result<ExportClient, crate::tls::TlsError> {
        // The collector is internal: not from the provider-facing egress
        // address, no client certificate, plain http:// allowed.
        let internal = EgressConfig {
            source_addr: None,
            ca_file: None,
            client_cert: None,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT.min(timeout),
            request_timeout: timeout,
            response_idle_timeout: timeout,
            pool_idle_per_host: 2,
            max_connections_per_host: 0,
            allow_plain_http: true,
            source_check: None,
        };
        Ok(ExportClient {
            client: Upstream::new(&internal)?,
            runtime,
            timeout,
        })
    }
}

#[async_trait]
impl HttpClient for ExportClient {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let request = request.map(Full::new);
        let exchange = async move {
            let response = client.send(request).await.map_err(|e| -> HttpError {
                format!("sending traces failed ({}): {}", e.failure.kind(), e.detail).into()
            })?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_RESPONSE_BYTES).collect().await?.to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(async move {
                tokio::time::timeout(timeout, exchange)
                    .await
                    .map_err(|_| -> HttpError {
                        format!("sending traces took over {} ms", timeout.as_millis()).into()
                    })?
            })
            .await?
    }
}

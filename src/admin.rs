//! The admin listener, separate from traffic (loopback by default):
//! `GET /metrics` (Prometheus text), `GET /healthz` (the process is alive),
//! `GET /readyz` (200 only when the listener accepts, the gateway is not
//! draining and every credential a route uses has loaded; otherwise 503 with
//! a JSON body naming what is missing), `POST /reload` (same as SIGHUP),
//! `GET /webhooks[?failed=true]` and `POST /webhooks/retry?id=N|all_failed=true`
//! (the inbox, for `signgate webhooks`).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::listener::{self, ConnInfo, Handler};
use crate::state::{ReloadHandle, Shared};

/// At most this many admin connections at once: a flood of idle admin
/// connections cannot take the file descriptors the traffic listener needs.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// An admin request head must arrive within this.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle admin connection is closed after this.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// What the admin endpoints may see and do: read the shared state, and ask
/// the composition root for a reload.
#[derive(Clone)]
pub(crate) struct Admin {
    shared: Arc<Shared>,
    reload: ReloadHandle,
}

impl Admin {
    pub fn new(shared: Arc<Shared>, reload: ReloadHandle) -> Self {
        Admin { shared, reload }
    }
}

impl Handler for Admin {
    type Body = Full<Bytes>;

    fn call(
        self,
        req: Request<Incoming>,
        _conn: Arc<ConnInfo>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static {
        respond(self, req)
    }
}

/// The admin listener's limits: its own connection cap and timers, the
/// accept back-off of the traffic listener (the same accept loop).
fn settings() -> listener::Settings {
    listener::Settings {
        header_timeout: ADMIN_HEADER_TIMEOUT,
        idle_timeout: ADMIN_IDLE_TIMEOUT,
        max_headers: 64,
        max_header_bytes: 16 * 1024,
        max_connections: ADMIN_MAX_CONNECTIONS,
        write_idle_timeout: Duration::from_secs(30),
        h2_max_concurrent_streams: 16,
        h2_max_pending_resets: crate::config::DEFAULT_H2_MAX_PENDING_RESETS,
    }
}

/// Serve the admin endpoints until `stop`.
pub(crate) async fn serve(l: TcpListener, admin: Admin, stop: CancellationToken) {
    let metrics = admin.shared.metrics().admin_connections.clone();
    listener::serve(l, None, admin, metrics, settings(), stop, Duration::from_secs(1)).await;
}

fn reply(status: StatusCode, content_type: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    r
}

async fn respond(admin: Admin, req: Request<Incoming>) -> Response<Full<Bytes>> {
    const JSON: &str = "application/json";
    let gw = &admin.shared;
    match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let snap = gw.snapshot();
            gw.metrics().observe_credentials(&snap.credentials);
            gw.metrics()
                .ratelimit_clients
                .set(i64::try_from(snap.limits.tracked_clients()).unwrap_or(i64::MAX));
            for route in snap.router.routes() {
                if let Some(store) = &route.duplicates {
                    gw.metrics()
                        .duplicate_guard_size
                        .with_label_values(&[route.name()])
                        .set(store.len() as i64);
                }
            }
            reply(StatusCode::OK, "text/plain; version=0.0.4", gw.metrics().render())
        }
        (&Method::GET, "/healthz") => reply(StatusCode::OK, JSON, r#"{"status":"alive"}"#),
        (&Method::GET, "/readyz") => {
            let missing = gw.readiness();
            if missing.is_empty() {
                reply(StatusCode::OK, JSON, r#"{"status":"ready"}"#)
            } else {
                let body = serde_json::json!({"status": "not_ready", "missing": missing});
                reply(StatusCode::SERVICE_UNAVAILABLE, JSON, body.to_string())
            }
        }
        (&Method::GET, "/webhooks") => {
            let failed_only = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "failed=true"));
            webhooks_list(gw, failed_only).await
        }
        (&Method::POST, "/webhooks/retry") => {
            let query = req.uri().query().unwrap_or("");
            let id = query
                .split('&')
                .find_map(|p| p.strip_prefix("id="))
                .and_then(|v| v.parse::<u64>().ok());
            let all = query.split('&').any(|p| p == "all_failed=true");
            if id.is_none() && !all {
                reply(
                    StatusCode::BAD_REQUEST,
                    JSON,
                    r#"{"error":{"code":"bad_request","message":"give id=N or all_failed=true"}}"#,
                )
            } else {
                webhooks_retry(gw, id).await
            }
        }
        (&Method::POST, "/reload") => match admin.reload.reload().await {
            Ok(summary) => reply(
                StatusCode::OK,
                JSON,
                serde_json::json!({"status": "reloaded", "summary": summary.to_string()}).to_string(),
            ),
            Err(why) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                JSON,
                serde_json::json!({"error": {"code": "reload_rejected", "message": why.to_string()}}).to_string(),
            ),
        },
        (_, "/metrics" | "/healthz" | "/readyz" | "/reload" | "/webhooks" | "/webhooks/retry") => reply(
            StatusCode::METHOD_NOT_ALLOWED,
            JSON,
            r#"{"error":{"code":"method_not_allowed","message":"GET /metrics /healthz /readyz, POST /reload"}}"#,
        ),
        _ => reply(
            StatusCode::NOT_FOUND,
            JSON,
            r#"{"error":{"code":"no_route","message":"admin endpoints: /metrics /healthz /readyz /reload"}}"#,
        ),
    }
}

async fn webhooks_list(gw: &Shared, failed_only: bool) -> Response<Full<Bytes>> {
    let Some(store) = gw.inbox().cloned() else {
        return reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"no_webhooks","message":"no [[webhook]] is configured"}}"#,
        );
    };
    match tokio::task::spawn_blocking(move || store.list(failed_only)).await {
        Ok(Ok(events)) => {
            let rows: Vec<serde_json::Value> = events.iter().map(crate::webhook::store::summary).collect();
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "events": rows }).to_string(),
            )
        }
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            r#"{"error":{"code":"internal_error","message":"webhook inbox unreadable"}}"#,
        ),
    }
}

async fn webhooks_retry(gw: &Shared, id: Option<u64>) -> Response<Full<Bytes>> {
    let Some(store) = gw.inbox().cloned() else {
        return reply(
            StatusCode::NOT_FOUND,
            "application/json",
            r#"{"error":{"code":"no_webhooks","message":"no [[webhook]] is configured"}}"#,
        );
    };
    match tokio::task::spawn_blocking(move || store.retry(id)).await {
        Ok(Ok(n)) => {
            gw.wake_delivery();
            reply(
                StatusCode::OK,
                "application/json",
                serde_json::json!({ "requeued": n }).to_string(),
            )
        }
        _ => reply(
            StatusCode::INTERNAL_SERVER_ERROR,
            "application/json",
            r#"{"error":{"code":"internal_error","message":"webhook inbox unreadable"}}"#,
        ),
    }
}

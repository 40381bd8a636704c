//! The admin listener, separate from traffic (loopback by default):
//! `GET /metrics` (Prometheus text), `GET /healthz` (the process is alive),
//! `GET /readyz` (200 only when the listener accepts, the gateway is not
//! draining and every credential a route uses has loaded; otherwise 503 with
//! a JSON body naming what is missing), `POST /reload` (same as SIGHUP),
//! `GET /webhooks[?failed=true]` and `POST /webhooks/retry?id=N|all_failed=true`
//! (the inbox, for `signgate webhooks`).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::app::Gateway;

/// Serve the admin endpoints until `stop`.
pub async fn serve(listener: TcpListener, gw: Arc<Gateway>, stop: CancellationToken) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(5));
    let builder = Arc::new(builder);
    loop {
        let (stream, _) = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => match a {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "admin accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let gw = gw.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| respond(gw.clone(), req));
            tokio::select! {
                _ = builder.serve_connection(TokioIo::new(stream), svc) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
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

async fn respond(gw: Arc<Gateway>, req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    const JSON: &str = "application/json";
    let resp = match (req.method(), req.uri().path()) {
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
            let missing = gw.readiness_problems();
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
            webhooks_list(&gw, failed_only).await
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
                webhooks_retry(&gw, id).await
            }
        }
        (&Method::POST, "/reload") => match gw.reload().await {
            Ok(summary) => reply(
                StatusCode::OK,
                JSON,
                serde_json::json!({"status": "reloaded", "summary": summary}).to_string(),
            ),
            Err(why) => reply(
                StatusCode::UNPROCESSABLE_ENTITY,
                JSON,
                serde_json::json!({"error": {"code": "reload_rejected", "message": why}}).to_string(),
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
    };
    Ok(resp)
}

async fn webhooks_list(gw: &Gateway, failed_only: bool) -> Response<Full<Bytes>> {
    let Some(store) = gw.webhook_store().cloned() else {
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

async fn webhooks_retry(gw: &Gateway, id: Option<u64>) -> Response<Full<Bytes>> {
    let Some(store) = gw.webhook_store().cloned() else {
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

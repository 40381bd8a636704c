//! The admin listener, separate from traffic (loopback by default), on the
//! same accept loop as the traffic listener with its own connection cap and
//! timers. Open to anyone who reaches it: `GET /metrics` (Prometheus text),
//! `GET /healthz` (the process is alive), `GET /readyz` (200 only when the
//! listener accepts, the gateway is not draining, the audit log writes and
//! every credential a route uses has loaded; otherwise 503 with a JSON body
//! naming what is missing). Every other endpoint changes state or returns
//! data and needs `Authorization: Bearer <token>` ([`auth`]): `POST /reload`
//! (same as SIGHUP), `GET /webhooks[?failed=true]` and
//! `POST /webhooks/retry?id=N|all_failed=true` (the inbox), `POST
//! /guard/release` (the duplicate guard), `GET /guard/status` (the amount
//! guard's totals today), `GET`/`PUT /log-level` (the log filter,
//! [`loglevel`]), `GET /routes` and `POST /routes/{name}/disable|enable`
//! (the routes' kill switches, [`routes`]).

mod auth;
mod guard;
mod inbox;
mod loglevel;
mod routes;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Full, Limited};
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::AdminConfig;
use crate::listener::{self, ConnInfo, Handler};
use crate::logging::FilterHandle;
use crate::state::{ReloadHandle, ReloadReport, Shared};
pub(crate) use auth::TokenError;

/// At most this many admin connections at once: a flood of idle admin
/// connections cannot take the file descriptors the traffic listener needs.
pub const ADMIN_MAX_CONNECTIONS: usize = 64;
/// An admin request head must arrive within this.
pub const ADMIN_HEADER_TIMEOUT: Duration = Duration::from_secs(5);
/// An idle admin connection is closed after this.
pub const ADMIN_IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest admin request body (JSON commands).
const MAX_ADMIN_BODY: usize = 16 * 1024;

const JSON: &str = "application/json";

/// What the admin endpoints may see and do: read the shared state, and ask
/// the composition root for a reload.
#[derive(Clone)]
pub(crate) struct Admin {
    shared: Arc<Shared>,
    reload: ReloadHandle,
    token: Arc<auth::Token>,
    /// The process's log filter (`None` in-process: `/log-level` answers 501).
    log_filter: Option<FilterHandle>,
}

impl Admin {
    /// Fails when `admin.token_file` is set but holds no usable token.
    pub fn new(
        shared: Arc<Shared>,
        reload: ReloadHandle,
        log_filter: Option<FilterHandle>,
        config: &AdminConfig,
    ) -> Result<Self, TokenError> {
        Ok(Admin {
            shared,
            reload,
            token: Arc::new(auth::Token::load(config.token_file.clone())?),
            log_filter,
        })
    }
}

impl Handler for Admin {
    type Body = Full<Bytes>;

    fn call(
        self,
        req: Request<Incoming>,
        conn: Arc<ConnInfo>,
    ) -> impl std::future::Future<Output = Response<Full<Bytes>>> + Send + 'static {
        respond(self, req, conn.peer)
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

/// A JSON error in the shape of the traffic listener's.
/// An audit slot for an operator's change, or the 503 that refuses the
/// change (`nothing`: what the message says was not done). A change is
/// audited or not made at all.
async fn audit_slot(gw: &Shared, nothing: &str) -> Result<crate::audit::Slot, Response<Full<Bytes>>> {
    let slot = match gw.audit() {
        Some(log) => log.reserve().await,
        None => None,
    };
    slot.ok_or_else(|| {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            "audit_unavailable",
            &format!("the audit log cannot record the {nothing}"),
        )
    })
}

fn error(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    reply(
        status,
        JSON,
        serde_json::json!({"error": {"code": code, "message": message}}).to_string(),
    )
}

/// The endpoints open to anyone who reaches the admin address.
const OPEN: [&str; 3] = ["/metrics", "/healthz", "/readyz"];
/// Every path served, for 405 vs 404.
const PATHS: [&str; 9] = [
    "/metrics",
    "/healthz",
    "/readyz",
    "/reload",
    "/webhooks",
    "/webhooks/retry",
    "/guard/release",
    "/guard/status",
    "/log-level",
];

async fn respond(admin: Admin, req: Request<Incoming>, peer: SocketAddr) -> Response<Full<Bytes>> {
    let path = req.uri().path();
    if !OPEN.contains(&path) && (PATHS.contains(&path) || routes::covers(path)) {
        if let Err(why) = admin.token.check(req.headers()) {
            admin.shared.metrics().admin_unauthorized.inc();
            tracing::warn!(%peer, path, "admin request refused: {why}");
            let mut r = error(StatusCode::UNAUTHORIZED, "unauthorized", why);
            r.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return r;
        }
    }
    if routes::covers(path) {
        let path = path.to_string();
        return routes::serve(admin.shared.clone(), req, &path, peer).await;
    }
    let gw = &admin.shared;
    match (req.method().clone(), path) {
        (Method::GET, "/metrics") => metrics(gw).await,
        (Method::GET, "/healthz") => reply(StatusCode::OK, JSON, r#"{"status":"alive"}"#),
        (Method::GET, "/readyz") => {
            let missing = gw.readiness();
            if missing.is_empty() {
                reply(StatusCode::OK, JSON, r#"{"status":"ready"}"#)
            } else {
                let body = serde_json::json!({"status": "not_ready", "missing": missing});
                reply(StatusCode::SERVICE_UNAVAILABLE, JSON, body.to_string())
            }
        }
        (Method::GET, "/webhooks") => {
            let failed_only = req
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "failed=true"));
            inbox::list(gw, failed_only).await
        }
        (Method::POST, "/webhooks/retry") => inbox::retry(gw, req.uri().query().unwrap_or("")).await,
        (Method::POST, "/reload") => reloaded(admin.reload.reload().await),
        (Method::POST, "/guard/release") => match json_body(req).await {
            Ok(cmd) => guard::release(gw, &cmd, peer).await,
            Err(r) => r,
        },
        (Method::GET, "/guard/status") => guard::status(gw, req.uri().query().unwrap_or("")).await,
        (Method::GET, "/log-level") => loglevel::get(admin.log_filter.as_ref()),
        (Method::PUT, "/log-level") => loglevel::put(admin.log_filter.as_ref(), req, peer).await,
        (_, p) if PATHS.contains(&p) => error(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            "GET /metrics /healthz /readyz /webhooks /guard/status /log-level /routes; POST /reload /webhooks/retry /guard/release /routes/{name}/disable /routes/{name}/enable; PUT /log-level",
        ),
        _ => error(
            StatusCode::NOT_FOUND,
            "no_route",
            "admin endpoints: /metrics /healthz /readyz /reload /webhooks /webhooks/retry /guard/release /guard/status /log-level /routes /routes/{name}/disable /routes/{name}/enable",
        ),
    }
}

/// The answer to `POST /reload`: 200 when the configuration was applied and
/// no certificate was rejected; 422 `reload_rejected` when the configuration
/// was not applied; 422 `certificate_rejected` when it was, but a new
/// certificate file was not (the previous certificate stays in use). The
/// body lists every certificate whose files had new contents.
fn reloaded(report: ReloadReport) -> Response<Full<Bytes>> {
    let certificates = serde_json::to_value(&report.certificates).unwrap_or_default();
    let rejected: Vec<&str> = report
        .certificates
        .iter()
        .filter(|c| c.result != "ok")
        .map(|c| c.certificate)
        .collect();
    let (status, body) = match (&report.config, rejected.is_empty()) {
        (Ok(summary), true) => (
            StatusCode::OK,
            serde_json::json!({"status": "reloaded", "summary": summary.to_string(), "certificates": certificates}),
        ),
        (Ok(summary), false) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": {"code": "certificate_rejected", "message": format!(
                "configuration reloaded ({summary}); certificate(s) rejected, the previous ones stay in use: {}",
                rejected.join(", ")
            )}, "certificates": certificates}),
        ),
        (Err(why), _) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            serde_json::json!({"error": {"code": "reload_rejected", "message": why.to_string()}, "certificates": certificates}),
        ),
    };
    reply(status, JSON, body.to_string())
}

async fn metrics(gw: &Shared) -> Response<Full<Bytes>> {
    let snap = gw.snapshot();
    for route in snap.router.routes() {
        // Today's largest share of each day cap (a store read, or with
        // [fleet] one Redis call; on a failure the last value stays).
        if let Some(guard) = &route.amounts {
            if let Ok(shares) = guard.day_use().await {
                for (cap, share) in shares {
                    gw.metrics()
                        .amount_guard_day_used
                        .with_label_values(&[route.name(), cap])
                        .set(share);
                }
            }
        }
    }
    gw.metrics().observe_credentials(&snap.credentials);
    gw.metrics()
        .ratelimit_clients
        .set(i64::try_from(snap.limits.tracked_clients()).unwrap_or(i64::MAX));
    for route in snap.router.routes() {
        // A fleet's claims live in Redis: not counted here.
        if let Some(len) = route.duplicates.as_ref().and_then(|g| g.len()) {
            gw.metrics()
                .duplicate_guard_size
                .with_label_values(&[route.name()])
                .set(len as i64);
        }
    }
    gw.switches().observe(snap.router.routes().map(|r| r.name()));
    let reflections = gw.reflections();
    let m = gw.metrics();
    m.reflection_signatures
        .set(i64::try_from(reflections.len()).unwrap_or(i64::MAX));
    let early = reflections.early_rotations.load(std::sync::atomic::Ordering::Relaxed);
    m.reflection_early_rotations
        .inc_by(early.saturating_sub(m.reflection_early_rotations.get()));
    let failed = reflections.persist_errors.load(std::sync::atomic::Ordering::Relaxed);
    m.reflection_persist_errors
        .inc_by(failed.saturating_sub(m.reflection_persist_errors.get()));
    m.reflection_pending
        .set(i64::try_from(reflections.pending()).unwrap_or(i64::MAX));
    let snap = gw.snapshot();
    for hook in &snap.webhooks {
        m.webhook_secret_shared
            .with_label_values(&[hook.name()])
            .set(i64::from(snap.hook_shares_secret(hook)));
    }
    reply(StatusCode::OK, "text/plain; version=0.0.4", m.render())
}

/// A small command body (at most `MAX_ADMIN_BODY`), or the error answer.
async fn small_body(req: Request<Incoming>) -> Result<Bytes, Response<Full<Bytes>>> {
    Ok(Limited::new(req.into_body(), MAX_ADMIN_BODY)
        .collect()
        .await
        .map_err(|_| {
            error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                "the request body could not be read (at most 16 KiB)",
            )
        })?
        .to_bytes())
}

/// A small JSON command body, or the error answer.
async fn json_body(req: Request<Incoming>) -> Result<serde_json::Value, Response<Full<Bytes>>> {
    let bytes = small_body(req).await?;
    serde_json::from_slice(&bytes)
        .map_err(|e| error(StatusCode::BAD_REQUEST, "invalid_json", &format!("request body: {e}")))
}
